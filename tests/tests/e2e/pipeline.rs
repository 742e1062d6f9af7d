//! The stages chained through the real binaries: train → export → verify.

use std::fs;

use exports::Head;
use tests::{run_err, run_ok, tiny_model, VARIANTS};

#[test]
fn fit_export_verify_through_the_binaries() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("base");
    tiny_model(&base, VARIANTS[0], Head::Lm, 3);
    let data = tmp.path().join("pairs.jsonl");
    let mut lines = String::new();
    for i in 0..8 {
        lines.push_str(&format!(
            "{{\"prompt\":\"Item {i}: the\",\"chosen\":\" cat sat on the mat.\",\"rejected\":\" the the the the\"}}\n"
        ));
    }
    fs::write(&data, lines).unwrap();
    let out = tmp.path().join("run");
    let p = |p: &std::path::Path| p.to_str().unwrap().to_string();
    run_ok(
        "training",
        &[
            "fit",
            "--model",
            &p(&base),
            "--data",
            &p(&data),
            "--objective",
            "pairwise-cringe",
            "--out",
            &p(&out),
            "--max-steps",
            "2",
            "--batch-size",
            "4",
            "--lr",
            "1e-3",
            "--seed",
            "1",
        ],
    );
    let model = find_model_dir(&out);
    let probe = model.join("probe.safetensors");
    assert!(
        probe.is_file(),
        "training must save probe.safetensors beside the checkpoint"
    );
    let onnx = tmp.path().join("onnx");
    run_ok(
        "exports",
        &["onnx", "--model", &p(&model), "--out", &p(&onnx)],
    );
    let ok = run_ok(
        "engine",
        &["verify", "--onnx", &p(&onnx), "--probe", &p(&probe)],
    );
    let text =
        String::from_utf8_lossy(&ok.stdout).to_string() + &String::from_utf8_lossy(&ok.stderr);
    assert!(
        text.contains("max"),
        "verify should report the max |Δ|: {text}"
    );
    // A graph exported from a different model (the untrained base) must fail the trained probe.
    let stale = tmp.path().join("stale");
    run_ok(
        "exports",
        &["onnx", "--model", &p(&base), "--out", &p(&stale)],
    );
    let err = run_err(
        "engine",
        &["verify", "--onnx", &p(&stale), "--probe", &p(&probe)],
    );
    assert!(err.contains("max"), "{err}");
}

/// A LoRA run through the binaries: `training fit --lora-r` writes a PEFT adapter folder,
/// `exports onnx --adapter` merges it into the graph, which `engine verify` checks against the
/// adapted model's probe; `training merge` writes a folder whose export passes the same probe; and
/// a graph of the base alone fails it.
#[test]
fn lora_fit_export_verify_and_merge_through_the_binaries() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("base");
    tiny_model(&base, VARIANTS[0], Head::Lm, 3);
    let data = tmp.path().join("pairs.jsonl");
    let mut lines = String::new();
    for i in 0..8 {
        lines.push_str(&format!(
            "{{\"prompt\":\"Item {i}: the\",\"chosen\":\" cat sat on the mat.\",\"rejected\":\" the the the the\"}}\n"
        ));
    }
    fs::write(&data, lines).unwrap();
    let out = tmp.path().join("run");
    let p = |p: &std::path::Path| p.to_str().unwrap().to_string();
    run_ok(
        "training",
        &[
            "fit",
            "--model",
            &p(&base),
            "--data",
            &p(&data),
            "--objective",
            "dpo",
            "--out",
            &p(&out),
            "--max-steps",
            "3",
            "--batch-size",
            "4",
            "--lr",
            "2e-2",
            "--seed",
            "1",
            "--lora-r",
            "4",
            "--lora-alpha",
            "8",
            "--lora-targets",
            "q_proj,v_proj,down_proj",
        ],
    );
    let adapter = out.join("final");
    assert!(adapter.join("adapter_config.json").is_file());
    assert!(!adapter.join("model.safetensors").exists());
    let probe = adapter.join("probe.safetensors");
    let onnx = tmp.path().join("onnx");
    run_ok(
        "exports",
        &[
            "onnx",
            "--model",
            &p(&base),
            "--adapter",
            &p(&adapter),
            "--out",
            &p(&onnx),
        ],
    );
    run_ok(
        "engine",
        &["verify", "--onnx", &p(&onnx), "--probe", &p(&probe)],
    );
    let merged = tmp.path().join("merged");
    run_ok(
        "training",
        &["merge", "--adapter", &p(&adapter), "--out", &p(&merged)],
    );
    let onnx2 = tmp.path().join("onnx2");
    run_ok(
        "exports",
        &["onnx", "--model", &p(&merged), "--out", &p(&onnx2)],
    );
    run_ok(
        "engine",
        &["verify", "--onnx", &p(&onnx2), "--probe", &p(&probe)],
    );
    let stale = tmp.path().join("stale");
    run_ok(
        "exports",
        &["onnx", "--model", &p(&base), "--out", &p(&stale)],
    );
    let err = run_err(
        "engine",
        &["verify", "--onnx", &p(&stale), "--probe", &p(&probe)],
    );
    assert!(err.contains("max"), "{err}");
    // A wrong adapter is refused before any graph is written.
    let err = run_err(
        "exports",
        &[
            "onnx",
            "--model",
            &p(&base),
            "--adapter",
            &p(&base),
            "--out",
            &p(&tmp.path().join("x")),
        ],
    );
    assert!(err.contains("adapter_config.json"), "{err}");
}

/// The final Hugging Face folder a fit run wrote (the folder holding config.json + probe).
fn find_model_dir(out: &std::path::Path) -> std::path::PathBuf {
    let mut stack = vec![out.to_path_buf()];
    let mut found = Vec::new();
    while let Some(d) = stack.pop() {
        if d.join("config.json").is_file() && d.join("probe.safetensors").is_file() {
            found.push(d.clone());
        }
        for e in fs::read_dir(&d).unwrap().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            }
        }
    }
    found.sort();
    found
        .pop()
        .unwrap_or_else(|| panic!("no checkpoint folder under {}", out.display()))
}

#[test]
fn bad_inputs_give_one_clear_error_naming_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("base");
    tiny_model(&base, VARIANTS[0], Head::Lm, 3);
    let data = tmp.path().join("pairs.jsonl");
    fs::write(&data, "{\"prompt\":\"a\",\"chosen\":\"b\",\"rejected\":\"c\"}\n{\"prompt\":\"a\",\"chosen\":\"b\"}\n").unwrap();
    let p = |p: &std::path::Path| p.to_str().unwrap().to_string();
    let err = run_err(
        "training",
        &[
            "fit",
            "--model",
            &p(&base),
            "--data",
            &p(&data),
            "--objective",
            "sft",
            "--out",
            &p(&tmp.path().join("o")),
        ],
    );
    assert!(
        err.contains(&format!("{}:2", data.display())) && err.contains("rejected"),
        "{err}"
    );
    assert!(
        !tmp.path().join("o").exists()
            || fs::read_dir(tmp.path().join("o")).unwrap().next().is_none()
    );
}
