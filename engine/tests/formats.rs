//! Prompt files as benchmarks ship them, through `engine generate`, `engine label` and
//! `engine pair`: extra fields kept and carried, Parquet input (written by pyarrow, see
//! `scripts/reference/trl_formats_fixture.py`), and the whole file checked before the model loads.

mod generate_common;

use std::io::Write;
use std::path::{Path, PathBuf};

use engine::label::{LabelConfig, RewardSpec};
use engine::pair::PairConfig;
use exports::records::{read_jsonl, PairRecord, PromptRecord};
use generate_common::{config, greedy, models, read, run, runtime};
use serde_json::{json, Value};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../exports/tests/fixtures/formats")
        .join(name)
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The keys of a prompt-file record that are not ours.
fn extras(v: &Value) -> Value {
    let mut o = v.as_object().unwrap().clone();
    for k in [
        "id",
        "prompt",
        "messages",
        "reference",
        "responses",
        "seconds",
    ] {
        o.remove(k);
    }
    Value::Object(o)
}

#[test]
fn generation_keeps_every_extra_field_of_jsonl_and_parquet_prompts_and_pairs_carry_them() {
    let m = models(21);
    let input = lines(&fixture("prompts_extra.jsonl"));
    for file in ["prompts_extra.jsonl", "prompts_extra.parquet"] {
        let out = m.dir.path().join(format!("{file}.out.jsonl"));
        let mut c = config(&m.ort, &fixture(file), &out);
        c.n = 2;
        let s = run(&c);
        assert_eq!(s.prompts, input.len(), "{file}: {s}");
        let got = lines(&out);
        assert_eq!(got.len(), input.len());
        for (g, want) in got.iter().zip(&input) {
            assert_eq!(g["id"], want["id"], "{file}");
            assert_eq!(extras(g), extras(want), "{file}: {g}");
            // Nested objects and lists survive as they were.
            assert!(g["meta"]["tags"].is_array(), "{g}");
        }
        // The message's own extra key reaches the output too.
        assert_eq!(got[0]["messages"][0]["name"], "ann");
    }

    // engine label and engine pair nest the prompt's fields under `meta`, so its `source` does
    // not collide with the pair's own `source`.
    let gens = m.dir.path().join("prompts_extra.jsonl.out.jsonl");
    let pairs = m.dir.path().join("pairs.jsonl");
    let mut records = read(&gens);
    // Make every record's two responses differ in reward: the second repeats its context.
    for r in &mut records {
        r.responses[0].text = "a fresh answer".into();
        r.responses[1].text = "again again again again".into();
    }
    exports::records::write_jsonl(&gens, &records).unwrap();
    let s = engine::label::run(&LabelConfig {
        generations: gens.clone(),
        out: pairs.clone(),
        reward: RewardSpec::Repetition { n: 1 },
        min_gap: 0.0,
        scores_out: None,
        binary: None,
    })
    .unwrap();
    assert_eq!(s.pairs, input.len());
    let got = lines(&pairs);
    for (p, want) in got.iter().zip(&input) {
        assert_eq!(p["source"], "repetition:1");
        assert_eq!(p["meta"], extras(want), "{p}");
    }
    // Training reads such pairs (the nested fields are extra data there).
    let parsed = read_jsonl::<PairRecord>(&pairs).unwrap();
    assert_eq!(parsed[0].extra["meta"]["category"], "writing");

    let out = m.dir.path().join("joined.jsonl");
    let rejected = m.dir.path().join("rejected.jsonl");
    let mut worse = records.clone();
    for r in &mut worse {
        r.responses.swap(0, 1);
    }
    exports::records::write_jsonl(&rejected, &worse).unwrap();
    engine::pair::run(&PairConfig {
        chosen: gens,
        rejected,
        out: out.clone(),
        require_repeat: None,
    })
    .unwrap();
    for (p, want) in lines(&out).iter().zip(&input) {
        assert_eq!(p["meta"], extras(want), "{p}");
    }
}

/// A model folder with the tokenizer files only: loading the model from it fails, so an error
/// about the prompt file proves the file was checked before the model was loaded.
fn tokenizer_only(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for f in [
        "tokenizer.json",
        "tokenizer_config.json",
        "config.json",
        "generation_config.json",
    ] {
        std::fs::copy(from.join(f), to.join(f)).unwrap();
    }
}

#[test]
fn a_bad_line_deep_in_a_large_prompt_file_is_reported_before_the_model_loads() {
    let m = models(22);
    let no_model = m.dir.path().join("no-model");
    tokenizer_only(&m.ort, &no_model);
    let path = m.dir.path().join("big.jsonl");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    for i in 1..=20_000 {
        if i == 15_000 {
            writeln!(f, "{{\"id\":\"p{i}\",\"prompt\":\"unterminated}}").unwrap();
        } else {
            writeln!(
                f,
                "{}",
                json!({"id": format!("p{i}"), "prompt": "The cat", "category": "x"})
            )
            .unwrap();
        }
    }
    drop(f);
    let out = m.dir.path().join("out.jsonl");
    let c = config(&no_model, &path, &out);
    let e = format!(
        "{:#}",
        engine::generate::run_with(runtime(), &c).unwrap_err()
    );
    assert!(e.starts_with(&format!("{}:15000: ", path.display())), "{e}");
    assert!(!out.exists());
}

#[test]
fn duplicate_ids_name_both_lines_and_skip_invalid_skips_the_later_one() {
    let m = models(23);
    let path = m.dir.path().join("dup.jsonl");
    let rows = [
        json!({"id": "a", "prompt": "one"}),
        json!({"id": "b", "prompt": "two"}),
        json!({"id": "a", "prompt": "three"}),
        json!({"id": "c", "prompt": "four", "responses": []}),
        json!({"id": "d", "promt": "typo"}),
    ];
    std::fs::write(
        &path,
        rows.iter().map(|r| format!("{r}\n")).collect::<String>(),
    )
    .unwrap();
    let out = m.dir.path().join("out.jsonl");
    let mut c = config(&m.ort, &path, &out);
    greedy(&mut c);
    let e = format!(
        "{:#}",
        engine::generate::run_with(runtime(), &c).unwrap_err()
    );
    assert_eq!(
        e,
        format!("{}:3: duplicate id `a` (first at line 1)", path.display())
    );
    c.skip_invalid = true;
    let s = run(&c);
    // Line 3 repeats `a`; line 4 uses a key of the output record; line 5 has no prompt.
    assert_eq!((s.prompts, s.invalid), (2, 3), "{s}");
    let ids: Vec<String> = read(&out).into_iter().map(|r| r.id).collect();
    assert_eq!(ids, ["a", "b"]);
    let first = read_jsonl::<PromptRecord>(&path).unwrap_err().to_string();
    assert!(
        first.contains(
            ":5: missing field `prompt` (or `messages`); this record has keys `id`, `promt`"
        ),
        "{first}"
    );
}
