//! Datasets as people have them: TRL's explicit- and implicit-prompt conversational pairs, KTO's
//! unpaired form, Parquet written by pyarrow, prompt files with extra fields. Every expected token
//! id comes from `scripts/reference/trl_formats_fixture.py` (TRL's `maybe_extract_prompt` and
//! `maybe_apply_chat_template`, transformers' tokenizer), never from this crate.

use std::path::{Path, PathBuf};

use exports::init::{init, InitConfig};
use exports::records::{read_jsonl, BinaryRecord, Prompt, PromptRecord, TrainRecord};
use exports::{Completion, ModelType, TokenId, Tokenizer};
use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/formats")
        .join(name)
}

fn expected() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("expected_ids.json")).unwrap()).unwrap()
}

fn ids_of(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn raw(ids: Vec<TokenId>) -> Vec<u32> {
    ids.into_iter().map(|t| t.0).collect()
}

fn tiny_tokenizer() -> (tempfile::TempDir, Tokenizer) {
    let dir = tempfile::tempdir().unwrap();
    init(&InitConfig::tiny(ModelType::Llama, 1), dir.path()).unwrap();
    let tok = Tokenizer::load(dir.path()).unwrap();
    (dir, tok)
}

/// (prompt, response) ids of every record of a training file, in order.
fn encoded(tok: &Tokenizer, file: &str) -> Vec<(Vec<u32>, Vec<Vec<u32>>)> {
    read_jsonl::<TrainRecord>(&fixture(file))
        .unwrap()
        .into_iter()
        .map(|r| {
            let (prompt, responses): (Prompt, Vec<Completion>) = match r {
                TrainRecord::Pair(p) => (p.prompt, vec![p.chosen, p.rejected]),
                TrainRecord::Binary(b) => (b.prompt, vec![b.response]),
            };
            let p = raw(tok.prompt_ids(&prompt).unwrap());
            let rs = responses
                .iter()
                .map(|c| raw(tok.completion_ids(&prompt, c).unwrap()))
                .collect();
            (p, rs)
        })
        .collect()
}

fn expected_pairs() -> Vec<(Vec<u32>, Vec<Vec<u32>>)> {
    expected()["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                ids_of(&e["prompt"]),
                vec![ids_of(&e["chosen"]), ids_of(&e["rejected"])],
            )
        })
        .collect()
}

#[test]
fn trl_conversational_pairs_give_trls_token_ids_in_every_form() {
    let (_dir, tok) = tiny_tokenizer();
    let want = expected_pairs();
    for file in [
        "pairs_trl_explicit.jsonl",
        "pairs_trl_implicit.jsonl",
        "pairs_trl_explicit.parquet",
    ] {
        assert_eq!(encoded(&tok, file), want, "{file}");
    }
    // Our string form of the same data: identical ids.
    assert_eq!(encoded(&tok, "pairs_string.jsonl"), want, "string form");
}

#[test]
fn responses_of_several_messages_are_what_follows_the_prompt_up_to_the_first_eos() {
    let (_dir, tok) = tiny_tokenizer();
    let want: Vec<_> = expected()["several_messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                ids_of(&e["prompt"]),
                vec![ids_of(&e["chosen"]), ids_of(&e["rejected"])],
            )
        })
        .collect();
    assert_eq!(encoded(&tok, "pairs_trl_several_messages.jsonl"), want);
}

#[test]
fn kto_unpaired_records_are_binary_feedback_with_trls_ids() {
    let (_dir, tok) = tiny_tokenizer();
    let kto = expected()["kto"].as_array().unwrap().clone();
    let want: Vec<_> = kto
        .iter()
        .map(|e| (ids_of(&e["prompt"]), vec![ids_of(&e["completion"])]))
        .collect();
    // TRL's order: every chosen response (label true), then every rejected one.
    for file in ["kto_trl.jsonl", "kto_string.jsonl", "kto_string.parquet"] {
        assert_eq!(encoded(&tok, file), want, "{file}");
        let labels: Vec<bool> = read_jsonl::<BinaryRecord>(&fixture(file))
            .unwrap()
            .iter()
            .map(|b| b.label)
            .collect();
        assert_eq!(
            labels,
            [true, true, true, true, false, false, false, false],
            "{file}"
        );
    }
}

#[test]
fn parquet_rows_become_the_same_records_as_json_lines() {
    let from_jsonl = read_jsonl::<PromptRecord>(&fixture("prompts_extra.jsonl")).unwrap();
    let from_parquet = read_jsonl::<PromptRecord>(&fixture("prompts_extra.parquet")).unwrap();
    assert_eq!(from_parquet, from_jsonl);
    let first = &from_parquet[0];
    assert_eq!(first.extra["category"], "writing");
    assert_eq!(
        first.extra["meta"],
        serde_json::json!({"turn": 1, "tags": ["a"]})
    );
    // A message's own extra key (`name`) is kept.
    assert_eq!(first.messages.as_ref().unwrap()[0].extra["name"], "ann");
}

#[test]
fn a_bad_parquet_row_names_file_row_group_and_row() {
    let path = fixture("pairs_bad_row.parquet");
    let e = read_jsonl::<TrainRecord>(&path).unwrap_err().to_string();
    let want = format!(
        "{}: row group 1, row 1 (row 3 of the file): ",
        path.display()
    );
    assert!(e.starts_with(&want), "{e}");
    assert!(e.contains("missing field `rejected`"), "{e}");
}

#[test]
fn a_file_that_is_not_parquet_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.parquet");
    std::fs::write(&path, "{\"prompt\": \"a\"}\n").unwrap();
    let e = read_jsonl::<TrainRecord>(&path).unwrap_err().to_string();
    assert!(
        e.starts_with(&format!("{}: Parquet: ", path.display())),
        "{e}"
    );
}
