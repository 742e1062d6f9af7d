"""Reference rewards for engine/tests/reward_model.rs: text in, score out, with transformers.

Builds the tiny Llama reward model of the ONNX tests (`exports init --arch llama --hidden-size 64
--head reward --seed 16`, deterministic from its seed), turns each (prompt, response) into
`ids(prompt) ++ ids(response) ++ [eos]` by DATA.md's rule with the Hugging Face `tokenizers`
library (the plain prompt with the tokenizer's own special-token settings, the response without
special tokens), scores every sequence on its own (batch 1, no padding) with
`LlamaForSequenceClassification`'s backbone and `score` head in fp32 on the last token (EOS), and writes engine/tests/fixtures/reward_scores.json.

Run from the repository root: .venv/bin/python scripts/reference/reward_scores_reference.py
ITEMS must match the items in engine/tests/reward_model.rs.
"""

import json
import os
import subprocess
import tempfile

import torch
import transformers
from tokenizers import Tokenizer

ITEMS = [
    ("The cat sat on the", " mat."),
    ("The cat sat on the", " mat. The cat sat on the mat. The cat sat on the mat."),
    ("Once upon a time", ""),
    ("Fellow citizens of the Senate and House of Representatives:", " I have the honor to report that the state of the union is strong."),
    ("a", " b c d e f g"),
    ("In the", " end, there was only one answer to the question that mattered."),
]


def main():
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    with tempfile.TemporaryDirectory() as tmp:
        folder = os.path.join(tmp, "rm")
        subprocess.run(
            ["cargo", "run", "-q", "-p", "exports", "--", "init", "--arch", "llama", "--hidden-size", "64",
             "--head", "reward", "--seed", "16", "--out", folder],
            check=True, cwd=root,
        )
        tok = Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
        eos_token = json.load(open(os.path.join(folder, "tokenizer_config.json")))["eos_token"]
        eos = tok.token_to_id(eos_token)
        model = transformers.LlamaForSequenceClassification.from_pretrained(folder, dtype=torch.float32).eval()
        out = []
        for prompt, response in ITEMS:
            ids = tok.encode(prompt, add_special_tokens=True).ids
            ids += tok.encode(response, add_special_tokens=False).ids + [eos]
            # The head reads the last token (the EOS), as the training crate and the ONNX graph do.
            # LlamaForSequenceClassification itself would look for the pad id in input_ids, and
            # since pad == eos here it would read the token before the EOS instead.
            with torch.no_grad():
                hidden = model.model(input_ids=torch.tensor([ids])).last_hidden_state
                score = model.score(hidden[0, -1]).item()
            out.append({"prompt": prompt, "response": response, "tokens": len(ids), "score": score})
    path = os.path.join(root, "engine", "tests", "fixtures", "reward_scores.json")
    with open(path, "w") as f:
        json.dump({"generated_by": "scripts/reference/reward_scores_reference.py", "items": out}, f, indent=1)
        f.write("\n")
    for o in out:
        print(o["tokens"], o["score"])


if __name__ == "__main__":
    main()
