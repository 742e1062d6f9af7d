//! Repeat@n and F1 against the independent Python implementation of METRICS.md
//! (`scripts/reference/metrics_reference.py`, which wrote `fixtures/metrics_reference.json`).

use engine::metrics::{f1, repeat_at_n, words};
use serde_json::Value;

fn fixture() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/metrics_reference.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).expect("fixture exists"))
        .expect("fixture is JSON")
}

#[test]
fn every_case_matches_python() {
    let fx = fixture();
    let cases = fx["cases"].as_array().unwrap();
    assert!(cases.len() >= 30, "{} cases", cases.len());
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let (c, g, r) = (
            case["context"].as_str().unwrap(),
            case["generation"].as_str().unwrap(),
            case["reference"].as_str().unwrap(),
        );
        let want_words: Vec<&str> = case["words"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w.as_str().unwrap())
            .collect();
        assert_eq!(words(g), want_words, "{name}: words");
        for (n, want) in case["repeat"].as_object().unwrap() {
            let n: usize = n.parse().unwrap();
            assert_eq!(
                repeat_at_n(c, g, n) as u64,
                want.as_u64().unwrap(),
                "{name}: repeat@{n}"
            );
        }
        let want = case["f1"].as_f64().unwrap();
        assert!(
            (f1(g, r) - want).abs() <= 1e-9,
            "{name}: f1 {} vs {want}",
            f1(g, r)
        );
    }
}

#[test]
fn corpus_means_match_python() {
    let fx = fixture();
    let cases = fx["cases"].as_array().unwrap();
    let k = cases.len() as f64;
    let text = |c: &Value, f: &str| c[f].as_str().unwrap().to_owned();
    for n in 1..=4 {
        let mean = cases
            .iter()
            .map(|c| repeat_at_n(&text(c, "context"), &text(c, "generation"), n) as f64)
            .sum::<f64>()
            / k;
        let want = fx["means"][format!("repeat@{n}")].as_f64().unwrap();
        assert!((mean - want).abs() <= 1e-9, "repeat@{n}: {mean} vs {want}");
    }
    let mean = cases
        .iter()
        .map(|c| f1(&text(c, "generation"), &text(c, "reference")))
        .sum::<f64>()
        / k;
    let want = fx["means"]["f1"].as_f64().unwrap();
    assert!((mean - want).abs() <= 1e-9, "f1: {mean} vs {want}");
}
