//! `engine label`, `engine pair` and `engine eval` through their library calls, on small
//! generation files whose expected outputs are worked out by hand in the comments.

use std::io::Write;
use std::path::{Path, PathBuf};

use engine::bootstrap::BootstrapConfig;
use engine::eval::{EvalConfig, Metric, ResponseSelection, WinRateConfig};
use engine::label::{LabelConfig, LabelSummary, RewardSpec};
use engine::pair::{PairConfig, PairSummary};
use engine::reward::RewardModelConfig;
use exports::records::{read_jsonl, FinishReason, PairRecord, Prompt};
use serde_json::{json, Value};

/// A generation record line with a text prompt.
fn gen(id: &str, prompt: &str, reference: Option<&str>, responses: &[&str]) -> Value {
    let mut v = json!({
        "id": id,
        "prompt": prompt,
        "responses": responses
            .iter()
            .map(|t| json!({"text": t, "tokens": 1, "finish_reason": "eos"}))
            .collect::<Vec<_>>(),
        "seconds": 0.0,
    });
    if let Some(r) = reference {
        v["reference"] = json!(r);
    }
    v
}

fn write_lines(dir: &Path, name: &str, lines: &[Value]) -> PathBuf {
    let path = dir.join(name);
    let mut f = std::fs::File::create(&path).unwrap();
    for l in lines {
        writeln!(f, "{l}").unwrap();
    }
    path
}

fn read_values(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Rewards are −Repeat@2 with the prompt (or, for chat prompts, its last message) as context.
fn label_inputs(dir: &Path) -> PathBuf {
    let chat = json!({
        "id": "r5",
        "messages": [
            {"role": "system", "content": "one two"},
            {"role": "user", "content": "red blue"}
        ],
        // [red blue] is in the last message → −1; [one two] is only in the system message → 0.
        "responses": [
            {"text": "red blue green", "tokens": 3, "finish_reason": "eos"},
            {"text": "one two three", "tokens": 3, "finish_reason": "length"}
        ],
        "seconds": 0.5
    });
    write_lines(
        dir,
        "gens.jsonl",
        &[
            // −2 (two context bigrams), 0, −2 (two self repeats); a and c tie on reward and on
            // length (4 words), so the later one, c, is rejected.
            gen(
                "r1",
                "the cat sat",
                None,
                &["the cat sat down", "a dog ran", "go go go go"],
            ),
            // 0 and 0 (the empty response too): all tied, no pair.
            gen("r2", "hello", None, &["x y", ""]),
            // −1 ([a b] again) and 0: gap 1.
            gen("r3", "p", None, &["a b a b", "c d"]),
            // One response: no pair.
            gen("r4", "p", None, &["solo solo"]),
            chat,
            // 0 (1 word), 0 (3 words), −1: the longer of the tied best is chosen.
            gen("r7", "q", None, &["y", "x w v", "z z z"]),
        ],
    )
}

fn label(dir: &Path, min_gap: f64) -> (LabelSummary, Vec<PairRecord>, Vec<Value>) {
    let cfg = LabelConfig {
        generations: label_inputs(dir),
        out: dir.join("pairs.jsonl"),
        reward: "repetition:2".parse().unwrap(),
        min_gap,
        scores_out: Some(dir.join("scores.jsonl")),
        binary: None,
    };
    let summary = engine::label::run(&cfg).unwrap();
    let pairs = read_jsonl::<PairRecord>(&cfg.out).unwrap();
    (summary, pairs, read_values(&dir.join("scores.jsonl")))
}

#[test]
fn label_writes_the_responses_left_out_of_pairs_as_binary_feedback() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("binary.jsonl");
    let cfg = LabelConfig {
        generations: label_inputs(dir.path()),
        out: dir.path().join("pairs.jsonl"),
        reward: "repetition:2".parse().unwrap(),
        min_gap: 0.0,
        scores_out: None,
        binary: Some(engine::label::BinaryFeedback {
            out: out.clone(),
            threshold: -1.0,
        }),
    };
    let summary = engine::label::run(&cfg).unwrap();
    // Rewards −2 0 −2 | 0 0 | −1 0 | 0 | −1 0 | 0 0 −1 (see the test below). Pairs take r1's 2nd
    // and 3rd, both of r3 and r5, r7's 2nd and 3rd; what is left, labeled reward ≥ −1:
    let got: Vec<(String, String, bool, f64)> = read_values(&out)
        .iter()
        .map(|v| {
            (
                v["id"].as_str().unwrap().to_string(),
                v["response"].as_str().unwrap().to_string(),
                v["label"].as_bool().unwrap(),
                v["reward"].as_f64().unwrap(),
            )
        })
        .collect();
    let want: Vec<(String, String, bool, f64)> = [
        ("r1#0", "the cat sat down", false, -2.0),
        ("r2#0", "x y", true, 0.0),
        ("r2#1", "", true, 0.0),
        ("r4#0", "solo solo", true, 0.0),
        ("r7#0", "y", true, 0.0),
    ]
    .iter()
    .map(|&(a, b, c, d)| (a.to_string(), b.to_string(), c, d))
    .collect();
    assert_eq!(got, want);
    assert_eq!((summary.binary, summary.binary_positive), (5, 4));
    // They read back as binary feedback, the prompt with them.
    let records = read_jsonl::<exports::records::TrainRecord>(&out).unwrap();
    assert!(records
        .iter()
        .all(|r| matches!(r, exports::records::TrainRecord::Binary(_))));
}

#[test]
fn label_keeps_best_and_worst_with_the_documented_tie_rules() {
    let dir = tempfile::tempdir().unwrap();
    let (summary, pairs, scores) = label(dir.path(), 0.0);
    let got: Vec<(&str, &str, &str, f64, f64)> = pairs
        .iter()
        .map(|p| {
            (
                p.id.as_deref().unwrap(),
                p.chosen.as_str().unwrap(),
                p.rejected.as_str().unwrap(),
                p.chosen_reward.unwrap(),
                p.rejected_reward.unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("r1", "a dog ran", "go go go go", 0.0, -2.0),
            ("r3", "c d", "a b a b", 0.0, -1.0),
            ("r5", "one two three", "red blue green", 0.0, -1.0),
            ("r7", "x w v", "z z z", 0.0, -1.0),
        ]
    );
    assert!(pairs
        .iter()
        .all(|p| p.source.as_deref() == Some("repetition:2")));
    assert!(matches!(&pairs[2].prompt, Prompt::Messages(m) if m.len() == 2));
    // Each side keeps its response's finish reason (r5's chosen was cut by the token limit).
    assert_eq!(
        (
            pairs[2].chosen_finish_reason,
            pairs[2].rejected_finish_reason
        ),
        (Some(FinishReason::Length), Some(FinishReason::Eos))
    );
    assert_eq!(pairs[0].chosen_finish_reason, Some(FinishReason::Eos));
    assert_eq!(
        (summary.prompts, summary.responses, summary.pairs),
        (6, 13, 4)
    );
    assert_eq!((summary.all_tied, summary.too_few_responses), (1, 1));
    assert_eq!((summary.below_min_gap, summary.identical_text), (0, 0));
    // Rewards −2 0 −2 | 0 0 | −1 0 | 0 | −1 0 | 0 0 −1: sum −7, sum of squares 11, 13 values:
    // mean −7/13, population variance 11/13 − 49/169 = 94/169.
    assert!((summary.reward_mean - (-7.0 / 13.0)).abs() < 1e-12);
    assert!((summary.reward_std - 94f64.sqrt() / 13.0).abs() < 1e-12);
    assert_eq!(
        scores,
        [
            json!({"id": "r1", "scores": [-2.0, 0.0, -2.0]}),
            json!({"id": "r2", "scores": [0.0, 0.0]}),
            json!({"id": "r3", "scores": [-1.0, 0.0]}),
            json!({"id": "r4", "scores": [0.0]}),
            json!({"id": "r5", "scores": [-1.0, 0.0]}),
            json!({"id": "r7", "scores": [0.0, 0.0, -1.0]}),
        ]
    );
}

#[test]
fn label_min_gap_drops_close_pairs() {
    let dir = tempfile::tempdir().unwrap();
    let (summary, pairs, _) = label(dir.path(), 1.5);
    assert_eq!(pairs.len(), 1);
    assert_eq!(pairs[0].id.as_deref(), Some("r1"));
    assert_eq!(
        (summary.pairs, summary.below_min_gap, summary.all_tied),
        (1, 3, 1)
    );
}

#[test]
fn label_reports_bad_lines_and_bad_settings() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.jsonl");
    std::fs::write(
        &path,
        format!(
            "{}\n{{\"id\":\"x\",\"prompt\":\"p\"}}\n",
            gen("a", "p", None, &["x"])
        ),
    )
    .unwrap();
    let mut cfg = LabelConfig {
        generations: path.clone(),
        out: dir.path().join("pairs.jsonl"),
        reward: RewardSpec::Repetition { n: 3 },
        min_gap: 0.0,
        scores_out: None,
        binary: None,
    };
    let e = format!("{:#}", engine::label::run(&cfg).unwrap_err());
    assert!(e.contains(&format!("{}:2:", path.display())), "{e}");
    assert!(e.contains("missing field `responses`"), "{e}");
    assert!(!cfg.out.exists());
    cfg.min_gap = -1.0;
    let e = format!("{:#}", engine::label::run(&cfg).unwrap_err());
    assert!(e.contains("--min-gap"), "{e}");
}

fn pair_files(dir: &Path) -> (PathBuf, PathBuf) {
    let chosen = write_lines(
        dir,
        "beam.jsonl",
        &[
            gen("a", "we will build", None, &["a new road"]),
            gen("b", "only here", None, &["x"]),
            gen("c", "x", None, &["fine text"]),
            gen("d", "q", None, &["la la la la"]),
        ],
    );
    // Another order; `e` is only here.
    let rejected = write_lines(
        dir,
        "greedy.jsonl",
        &[
            gen("d", "q", None, &["la la la la"]),
            gen("e", "elsewhere", None, &["y"]),
            gen("c", "x", None, &["no repeats here"]),
            // Trigrams: [we will build] is in the context, the other four are new → Repeat@3 = 1.
            // Cut by the token limit: the pair must say so.
            {
                let mut v = gen(
                    "a",
                    "we will build",
                    None,
                    &["we will build a wall we will"],
                );
                v["responses"][0]["finish_reason"] = json!("length");
                v
            },
        ],
    );
    (chosen, rejected)
}

#[test]
fn pair_joins_by_id_in_any_order_and_requires_a_repeat() {
    let dir = tempfile::tempdir().unwrap();
    let (chosen, rejected) = pair_files(dir.path());
    let cfg = PairConfig {
        chosen,
        rejected,
        out: dir.path().join("pairs.jsonl"),
        require_repeat: Some(3),
    };
    let summary = engine::pair::run(&cfg).unwrap();
    assert_eq!(
        summary,
        PairSummary {
            chosen_records: 4,
            rejected_records: 4,
            joined: 3,
            only_in_chosen: 1,
            only_in_rejected: 1,
            // c's greedy response repeats nothing; d's texts are identical.
            no_repeat: 1,
            identical_text: 1,
            pairs: 1,
        }
    );
    let pairs = read_jsonl::<PairRecord>(&cfg.out).unwrap();
    assert_eq!(
        pairs,
        [PairRecord {
            id: Some("a".into()),
            prompt: Prompt::Text("we will build".into()),
            chosen: "a new road".into(),
            rejected: "we will build a wall we will".into(),
            chosen_reward: Some(0.0),
            rejected_reward: Some(-1.0),
            source: Some("pair:repeat@3".into()),
            chosen_finish_reason: Some(FinishReason::Eos),
            rejected_finish_reason: Some(FinishReason::Length),
            extra: Default::default(),
        }]
    );

    let cfg = PairConfig {
        require_repeat: None,
        ..cfg
    };
    let summary = engine::pair::run(&cfg).unwrap();
    assert_eq!(
        (summary.pairs, summary.no_repeat, summary.identical_text),
        (2, 0, 1)
    );
    let pairs = read_jsonl::<PairRecord>(&cfg.out).unwrap();
    let ids: Vec<_> = pairs.iter().map(|p| p.id.as_deref().unwrap()).collect();
    assert_eq!(ids, ["a", "c"]);
    assert!(pairs
        .iter()
        .all(|p| p.chosen_reward.is_none() && p.source.as_deref() == Some("pair")));
}

#[test]
fn pair_refuses_duplicate_ids_and_mismatched_prompts() {
    let dir = tempfile::tempdir().unwrap();
    let a = write_lines(dir.path(), "a.jsonl", &[gen("1", "p", None, &["x"])]);
    let dup = write_lines(
        dir.path(),
        "dup.jsonl",
        &[gen("1", "p", None, &["y"]), gen("1", "p", None, &["z"])],
    );
    let other = write_lines(
        dir.path(),
        "other.jsonl",
        &[gen("1", "not p", None, &["y"])],
    );
    let run = |chosen: &Path, rejected: &Path| {
        let cfg = PairConfig {
            chosen: chosen.to_path_buf(),
            rejected: rejected.to_path_buf(),
            out: dir.path().join("out.jsonl"),
            require_repeat: None,
        };
        format!("{:#}", engine::pair::run(&cfg).unwrap_err())
    };
    let e = run(&a, &dup);
    assert!(
        e.contains(&format!("{}:2: duplicate id 1", dup.display())),
        "{e}"
    );
    let e = run(&a, &other);
    assert!(e.contains("id 1: the prompt differs"), "{e}");
}

fn eval_inputs(dir: &Path) -> PathBuf {
    write_lines(
        dir,
        "eval.jsonl",
        &[
            gen(
                "e1",
                "the cat sat",
                Some("the cat sat on the mat"),
                &["the cat sat on a mat mat", "dog"],
            ),
            gen("e2", "hello there", Some("general kenobi"), &[""]),
        ],
    )
}

fn eval_cfg(generations: PathBuf) -> EvalConfig {
    EvalConfig {
        generations,
        metrics: Metric::parse_list("repeat@2,f1").unwrap(),
        responses: ResponseSelection::First,
        win_rate: None,
        bootstrap: BootstrapConfig::default(),
    }
}

#[test]
fn eval_means_over_first_or_all_responses() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = eval_cfg(eval_inputs(dir.path()));
    // e1: bigrams [the cat] [cat sat] come from the context → Repeat@2 = 2; content words
    // {cat sat on mat mat} vs {cat sat on mat}: P = 4/5, R = 1 → F1 = 8/9. e2 is empty: 0 and 0.
    let report = engine::eval::run(&cfg).unwrap();
    assert_eq!(report.examples, 2);
    assert_eq!(report.repeat, [(2, 1.0)]);
    assert!((report.f1.unwrap() - 4.0 / 9.0).abs() < 1e-12);
    let v = report.to_json();
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, ["examples", "repeat@2", "f1"]);

    // e1's second response "dog" adds an example with 0 and 0.
    let cfg = EvalConfig {
        responses: ResponseSelection::All,
        ..cfg
    };
    let report = engine::eval::run(&cfg).unwrap();
    assert_eq!(report.examples, 3);
    assert!((report.repeat[0].1 - 2.0 / 3.0).abs() < 1e-12);
    assert!((report.f1.unwrap() - 8.0 / 27.0).abs() < 1e-12);
}

#[test]
fn eval_f1_needs_a_reference_on_every_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_lines(
        dir.path(),
        "noref.jsonl",
        &[
            gen("a", "p", Some("r"), &["x"]),
            gen("b", "p", None, &["y"]),
        ],
    );
    let e = format!(
        "{:#}",
        engine::eval::run(&eval_cfg(path.clone())).unwrap_err()
    );
    assert!(
        e.contains(&format!("{}:2: id b: no `reference`", path.display())),
        "{e}"
    );
    // Without f1 the same file evaluates.
    let cfg = EvalConfig {
        metrics: vec![Metric::Repeat(3)],
        ..eval_cfg(path)
    };
    assert_eq!(engine::eval::run(&cfg).unwrap().examples, 2);
    // An empty file has no mean to report.
    let empty = write_lines(dir.path(), "empty.jsonl", &[]);
    let e = format!("{:#}", engine::eval::run(&eval_cfg(empty)).unwrap_err());
    assert!(e.contains("no generation records"), "{e}");
}

#[test]
fn eval_win_rate_against_another_file() {
    let dir = tempfile::tempdir().unwrap();
    let against = write_lines(
        dir.path(),
        "base.jsonl",
        &[
            // e1: −2 against the candidate's −2 → tie. e2: [hello there] twice from the context →
            // −2 against the candidate's 0 → win. e3 has no candidate.
            gen("e2", "hello there", None, &["hello there hello there"]),
            gen("e1", "the cat sat", None, &["the cat sat"]),
            gen("e3", "z", None, &["z"]),
        ],
    );
    let cfg = EvalConfig {
        win_rate: Some(WinRateConfig {
            reward: RewardSpec::Repetition { n: 2 },
            against,
        }),
        ..eval_cfg(eval_inputs(dir.path()))
    };
    let report = engine::eval::run(&cfg).unwrap();
    let w = report.win_rate.as_ref().unwrap();
    assert_eq!(
        (w.rate, w.prompts, w.wins, w.ties, w.losses),
        (75.0, 2, 1, 1, 0)
    );
    assert_eq!(report.unmatched, 1);
    // Resampling two prompts worth 50 and 100 gives means 50, 75 or 100 (p = ¼, ½, ¼), so the
    // 2.5% and 97.5% percentiles are the extremes.
    assert_eq!((w.interval.low, w.interval.high), (50.0, 100.0));
    let v = report.to_json();
    assert_eq!(v["win_rate"], json!(75.0));
    assert_eq!(v["win_rate_ci"], json!([50.0, 100.0]));
}

#[test]
fn reward_model_scoring_reports_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = LabelConfig {
        generations: label_inputs(dir.path()),
        out: dir.path().join("pairs.jsonl"),
        reward: RewardSpec::Model(RewardModelConfig::new(dir.path().join("no-such-model"))),
        min_gap: 0.0,
        scores_out: None,
        binary: None,
    };
    let e = format!("{:#}", engine::label::run(&cfg).unwrap_err());
    assert!(e.contains("no-such-model"), "{e}");
}
