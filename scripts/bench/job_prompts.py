"""Write the real-job prompt file of `scripts/bench-generate --job`: 80 chat prompts of mixed
lengths, shaped like a public instruction benchmark (short questions, task instructions, and
long "read this passage, then ..." requests over State of the Union excerpts from data/sotu).
Deterministic; the output is committed (scripts/bench/job-prompts.jsonl), so the benchmark needs
no download at run time.

Usage: job_prompts.py DATA_SOTU_DIR OUT.jsonl
"""

import glob
import json
import os
import random
import sys

SHORT = [
    "What is the capital of Australia?", "Write a haiku about autumn leaves.",
    "Why do cats purr?", "Name three primary colors.", "What is 17 times 23?",
    "Give me a synonym for 'happy'.", "Who wrote Pride and Prejudice?",
    "How many legs does a spider have?", "What is the boiling point of water in Fahrenheit?",
    "Translate 'good morning' into Spanish.", "What does DNA stand for?",
    "Suggest a name for a pet goldfish.", "Is a tomato a fruit or a vegetable?",
    "What is the largest planet in our solar system?", "Tell me a joke about computers.",
    "What year did the first person walk on the Moon?", "Define the word 'ephemeral'.",
    "What is the square root of 144?", "List four musical instruments.",
    "What causes thunder?", "Write a one-sentence horror story.",
    "What is the chemical symbol for gold?", "How do bees make honey?",
    "Recommend a board game for a family of four.", "What is a noun?",
    "Why is the ocean salty?", "Give me a fun fact about penguins.",
    "What is the opposite of 'generous'?", "How long does it take light to reach Earth from the Sun?",
    "What language is spoken in Brazil?",
]

MEDIUM = [
    "I am planning a three-day trip to Rome on a tight budget. Suggest an itinerary that covers the main historical sites and tell me how to save money on food and transport.",
    "Explain the difference between a virus and a bacterium to a twelve-year-old, using one everyday comparison for each.",
    "Write a polite email to my landlord asking for the broken heating in my apartment to be repaired this week.",
    "My tomato plants have yellow leaves at the bottom and brown spots. What could be wrong, and what should I do about it?",
    "Compare renting and buying a home. Give two advantages and two disadvantages of each, in a short list.",
    "Write a short story of about one hundred words about a lighthouse keeper who finds a message in a bottle.",
    "I keep procrastinating on my studies. Give me a practical plan, with concrete steps, to build a daily study habit over the next month.",
    "Describe how a bill becomes a law in the United States, step by step, in plain language.",
    "What are the main causes of inflation, and what tools can a central bank use to bring it down?",
    "Write a limerick about a programmer who forgot to save their work before the power went out.",
    "Explain what a neural network is, how it learns from examples, and why it needs so much data.",
    "Give me a recipe for a vegetarian dinner for four people that takes less than thirty minutes to cook.",
    "I have an interview for a junior accountant position tomorrow. What questions should I expect, and how should I prepare tonight?",
    "Summarize the plot of Romeo and Juliet in five sentences, without spoiling the ending for the first three.",
    "What are the health benefits of regular walking, and how many steps a day do experts usually recommend?",
    "Write a product description for a reusable water bottle that keeps drinks cold for twenty-four hours.",
    "Explain the rules of chess for the knight and the bishop, and give a simple tip for using each well.",
    "My team disagrees about whether to use tabs or spaces. Write a short, humorous memo settling the argument.",
    "Describe the water cycle, naming each stage and what drives it, for a middle school science class.",
    "List five questions I could ask to start a good conversation with someone I just met at a party.",
    "Why did the Roman Empire decline? Give three commonly cited reasons and one sentence on each.",
    "Write a thank-you note to a teacher who helped me through a difficult school year.",
    "Explain how compound interest works with a worked example using 1,000 dollars at five percent for three years.",
    "What is the difference between weather and climate? Give an example of each.",
    "Create a weekly workout plan for a beginner who can exercise three times a week for forty minutes.",
]

LONG_TASKS = [
    "Summarize the following passage in three sentences.",
    "List the main topics the speaker raises in this passage.",
    "Rewrite this passage in modern, plain English.",
    "What is the speaker asking Congress to do in this passage? Answer briefly.",
    "Identify the tone of this passage and quote one sentence that shows it.",
]


def excerpts(sotu_dir, count, seed=14):
    rng = random.Random(seed)
    files = sorted(glob.glob(os.path.join(sotu_dir, "*.txt")))
    if not files:
        sys.exit(f"{sotu_dir}: no .txt speeches (data/sotu from scripts/setup.sh)")
    out = []
    for i in range(count):
        words = open(rng.choice(files)).read().split()
        n = rng.choice([60, 100, 150, 220, 300, 400])
        start = rng.randrange(0, max(1, len(words) - n))
        out.append(" ".join(words[start:start + n]))
    return out


def main():
    sotu_dir, out = sys.argv[1], sys.argv[2]
    texts = [(f"short-{i}", q) for i, q in enumerate(SHORT)]
    texts += [(f"medium-{i}", q) for i, q in enumerate(MEDIUM)]
    for i, passage in enumerate(excerpts(sotu_dir, 25)):
        texts.append((f"long-{i}", f"{LONG_TASKS[i % len(LONG_TASKS)]}\n\n{passage}"))
    # Interleave the lengths, as a benchmark file in its own order would be.
    random.Random(0).shuffle(texts)
    with open(out, "w") as f:
        for id_, text in texts:
            f.write(json.dumps({"id": id_, "messages": [{"role": "user", "content": text}]}) + "\n")
    print(f"{out}: {len(texts)} prompts")


if __name__ == "__main__":
    main()
