//! `training eval` on the same preference data in every form it comes in: our string form, TRL's
//! explicit- and implicit-prompt conversational JSON Lines, TRL's Parquet (pyarrow), and KTO's
//! unpaired records. The token ids of each form are checked against TRL itself in
//! `exports/tests/formats.rs`; here the losses over those ids must agree exactly.

use std::path::{Path, PathBuf};

use exports::init::{init, InitConfig};
use exports::ModelType;
use training::fit::{self, EvalConfig};
use training::objectives::{Objective, ObjectiveConfig};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../exports/tests/fixtures/formats")
        .join(name)
}

fn eval(model: &Path, file: &str, objective: Objective) -> serde_json::Value {
    let cfg = EvalConfig {
        model: model.to_path_buf(),
        data: vec![fixture(file)],
        objective: ObjectiveConfig {
            // One cringe candidate: the top-1 token, no random draw (draws are keyed by an
            // example's position, which differs between a pair and its two unpaired records).
            cringe_k: 1,
            ..ObjectiveConfig::new(objective)
        },
        batch_size: 3,
        device: "cpu".into(),
        max_length: None,
        train_on_prompt: false,
        reference: None,
        seed: 0,
        precision: training::amp::Precision::Auto,
        adapter: None,
    };
    serde_json::to_value(fit::evaluate(&cfg).unwrap()).unwrap()
}

#[test]
fn string_trl_jsonl_and_trl_parquet_pairs_give_the_same_losses() {
    let tmp = tempfile::tempdir().unwrap();
    init(&InitConfig::tiny(ModelType::Llama, 3), tmp.path()).unwrap();
    for objective in [
        Objective::PairwiseCringe,
        Objective::BinaryCringe,
        Objective::Dpo,
    ] {
        let want = eval(tmp.path(), "pairs_string.jsonl", objective);
        assert_eq!(want["examples"], 4);
        for file in [
            "pairs_trl_explicit.jsonl",
            "pairs_trl_implicit.jsonl",
            "pairs_trl_explicit.parquet",
        ] {
            assert_eq!(
                eval(tmp.path(), file, objective),
                want,
                "{objective} {file}"
            );
        }
    }
}

#[test]
fn kto_unpaired_records_give_the_binary_cringe_loss_of_the_equivalent_pairs() {
    let tmp = tempfile::tempdir().unwrap();
    init(&InitConfig::tiny(ModelType::Llama, 4), tmp.path()).unwrap();
    let pairs = eval(tmp.path(), "pairs_string.jsonl", Objective::BinaryCringe);
    for file in ["kto_trl.jsonl", "kto_string.jsonl", "kto_string.parquet"] {
        let kto = eval(tmp.path(), file, Objective::BinaryCringe);
        assert_eq!(kto["examples"], 8, "{file}");
        for key in ["loss", "ce", "cringe"] {
            // The same terms, summed in batches of different shapes (3 pairs = 6 rows, or 3
            // unpaired rows): equal up to float32 rounding.
            let (a, b) = (kto[key].as_f64().unwrap(), pairs[key].as_f64().unwrap());
            assert!((a - b).abs() <= 1e-6 * b.abs(), "{file} {key}: {a} vs {b}");
        }
    }
}
