//! The loop end to end with a tiny random model through the real binaries: three iterations
//! from one settings file, a rerun that recomputes nothing, a changed setting that reruns only
//! the stages downstream of it, and the trained-reward-model path.

use std::path::{Path, PathBuf};
use std::process::Command;

use exports::init::{init, InitConfig};
use exports::ModelType;

/// target/<profile>/<name>; `cargo test --workspace` builds every binary of the workspace.
fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap();
    let p = dir.join(name);
    assert!(
        p.is_file(),
        "{} is missing: run `cargo test --workspace` (which builds every binary)",
        p.display()
    );
    p
}

/// A small corpus of one-paragraph documents of short sentences (the tiny byte-level tokenizer
/// keeps 2-sentence contexts well under the tiny model's 256 positions).
fn corpus(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let words = [
        "the", "cat", "dog", "sat", "ran", "on", "mat", "rug", "and", "a", "big", "small", "red",
        "blue", "house", "tree", "park", "day", "night", "we",
    ];
    for d in 0..30usize {
        let mut text = String::new();
        for s in 0..6usize {
            let n = (d * 7 + s * 3) % 4 + 4;
            let sent: Vec<&str> = (0..n)
                .map(|w| words[(d * 31 + s * 17 + w * 13) % words.len()])
                .collect();
            let sent = sent.join(" ");
            text.push_str(&sent[..1].to_uppercase());
            text.push_str(&sent[1..]);
            text.push_str(". ");
        }
        std::fs::write(dir.join(format!("doc{d:02}.txt")), text.trim_end()).unwrap();
    }
}

fn setup(dir: &Path) -> PathBuf {
    let model = dir.join("model");
    let mut cfg = InitConfig::tiny(ModelType::Llama, 1);
    cfg.hidden_size = 64;
    init(&cfg, &model).unwrap();
    corpus(&dir.join("corpus"));
    let settings = dir.join("settings.toml");
    std::fs::write(
        &settings,
        format!(
            "model = {:?}\niterations = 3\n[data]\ntext_dir = {:?}\ntrain = 8\nunlabeled = 6\ntest = 6\n\
             [generation]\nmax_new_tokens = 12\n[sample]\nmin_new_tokens = 2\n\
             [train]\nepochs = 1\nbatch_size = 4\nmicro_batch_size = 2\nlr = 1e-3\nmax_length = 128\n\
             [reward_model]\nmax_length = 128\n[devices]\nthreads = 1\n",
            model.display().to_string(),
            dir.join("corpus").display().to_string()
        ),
    )
    .unwrap();
    settings
}

/// Run the driver; returns the names of the stages it ran (not skipped).
fn pco(args: &[&str]) -> Vec<String> {
    let out = Command::new(bin("pco")).args(args).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "pco {} failed:\n{err}",
        args.join(" ")
    );
    err.lines()
        .filter_map(|l| {
            let l = l.split("pco:\x1b[0m ").nth(1)?;
            let (name, what) = l.split_once(": ")?;
            (what == "running" || what.starts_with("resuming")).then(|| name.to_string())
        })
        .collect()
}

#[test]
fn three_iterations_rerun_nothing_and_a_setting_reruns_what_it_affects() {
    let tmp = tempfile::tempdir().unwrap();
    let settings = setup(tmp.path());
    let run = tmp.path().join("run");
    let (r, s) = (run.to_str().unwrap(), settings.to_str().unwrap());
    let ran = pco(&["--run", r, "--config", s]);
    assert_eq!(ran.len(), 7 + 3 * 4 + 2 * 2, "{ran:?}");
    let md = std::fs::read_to_string(run.join("results.md")).unwrap();
    for k in 1..=3 {
        assert!(
            md.contains(&format!("| pairwise-cringe, iteration {k} |")),
            "{md}"
        );
    }
    // Iteration 3 trained on PREF + the pairs labeled after iterations 1 and 2.
    let count = |p: PathBuf| std::fs::read_to_string(p).unwrap().lines().count();
    let data: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(run.join("pairwise-cringe/iter3/train/data.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        data["records"].as_u64().unwrap() as usize,
        count(run.join("pref/pairs.jsonl"))
            + count(run.join("pairwise-cringe/iter1/new_pairs.jsonl"))
            + count(run.join("pairwise-cringe/iter2/new_pairs.jsonl"))
    );
    let toml = std::fs::read_to_string(run.join("run.toml")).unwrap();
    assert!(toml.contains("iterations = 3"), "{toml}");
    // The verified full-logits graph is scratch: only the fast graph stays.
    for k in 1..=3 {
        let it = run.join(format!("pairwise-cringe/iter{k}"));
        assert!(it.join("onnx/model.onnx").is_file());
        assert!(!it.join("onnx.verify").exists());
    }

    // The same settings again (now from the run's own run.toml): nothing runs.
    assert!(pco(&["--run", r]).is_empty());

    // A sampling setting: the stages before the first sampling are untouched.
    let ran = pco(&["--run", r, "--set", "sample.temperature=0.9"]);
    assert_eq!(
        ran.first().map(String::as_str),
        Some("pairwise-cringe-iter1-generate"),
        "{ran:?}"
    );
    assert!(ran.contains(&"pairwise-cringe-iter2-generate".to_string()));
    let toml = std::fs::read_to_string(run.join("run.toml")).unwrap();
    assert!(toml.contains("temperature = 0.9"), "{toml}");
    // A resource-only setting: nothing.
    assert!(pco(&["--run", r, "--set", "devices.generate_batch_size=2"]).is_empty());
}

#[test]
fn a_trained_reward_model_labels_and_the_report_shows_its_accuracy_and_win_rates() {
    let tmp = tempfile::tempdir().unwrap();
    let settings = setup(tmp.path());
    let run = tmp.path().join("run");
    let ran = pco(&[
        "--run",
        run.to_str().unwrap(),
        "--config",
        settings.to_str().unwrap(),
        "--set",
        "reward=\"trained\"",
        "--iterations",
        "2",
    ]);
    for s in ["reward-fit", "reward-export", "reward-accuracy"] {
        assert!(ran.contains(&s.to_string()), "{ran:?}");
    }
    let md = std::fs::read_to_string(run.join("results.md")).unwrap();
    assert!(md.contains("held-out pair accuracy"), "{md}");
    // Every iteration row carries a win rate with its interval.
    for k in 1..=2 {
        let row = md
            .lines()
            .find(|l| l.starts_with(&format!("| pairwise-cringe, iteration {k} |")))
            .unwrap_or_else(|| panic!("{md}"));
        assert!(row.contains(" [") && row.contains("] |"), "{row}");
    }
    let acc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("reward/accuracy.json")).unwrap())
            .unwrap();
    let held = std::fs::read_to_string(run.join("reward/heldout.jsonl")).unwrap();
    assert_eq!(
        acc["examples"].as_u64().unwrap() as usize,
        held.lines().count()
    );
}
