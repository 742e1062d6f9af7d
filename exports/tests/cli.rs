//! The `exports` binary as a user runs it: exit codes and messages.

use std::process::Command;

fn exports(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_exports"))
        .args(args)
        .output()
        .expect("spawn exports")
}

#[test]
fn init_then_inspect_reports_the_parameter_count() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m");
    let o = exports(&[
        "init",
        "--arch",
        "llama",
        "--seed",
        "3",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let cfg = exports::ModelConfig::load(&out).unwrap();
    let o = exports(&["inspect", "--model", out.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains(&format!("parameters: {}", cfg.parameter_count())),
        "{text}"
    );
}

#[test]
fn a_bad_config_fails_with_the_field_named_and_a_nonzero_exit() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m");
    assert!(
        exports(&["init", "--arch", "gpt2", "--out", out.to_str().unwrap()])
            .status
            .success()
    );
    let cfg = out.join("config.json");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("\"n_head\": 4", "\"n_head\": 5");
    std::fs::write(&cfg, text).unwrap();
    let o = exports(&["inspect", "--model", out.to_str().unwrap()]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("config.json") && err.contains("`n_embd`"),
        "{err}"
    );
}
