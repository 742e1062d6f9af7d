//! The folder layout of a `scripts/pco` run: the one definition that the driver (`pco`, which
//! writes it) and `engine report` (which reads it) share, so neither spells a path of its own.
//!
//! ```text
//! RUN/run.toml                     the effective settings of the run
//! RUN/data/{train,unlabeled,test}.jsonl
//! RUN/sft/onnx/  RUN/sft/eval/{test.gen.jsonl,metrics.json}
//! RUN/pref/{beam,greedy,pairs}.jsonl
//! RUN/reward/{train.jsonl,heldout.jsonl,train/,onnx/,accuracy.json}    (reward = "trained" / "model:…")
//! RUN/<method>/iter<k>/train/{final/,metrics.jsonl}
//! RUN/<method>/iter<k>/onnx/  RUN/<method>/iter<k>/eval/{test.gen.jsonl,metrics.json}
//! RUN/<method>/iter<k>/{unlabeled.gen.jsonl,new_pairs.jsonl,scores.jsonl}  (pairs iteration k+1 adds)
//! RUN/heldback/…                   scripts/eval-heldback (eval.heldback_out)
//! RUN/.stages/{<stage>.done,<stage>.started,times.tsv}
//! ```

use std::path::{Path, PathBuf};

/// The methods a run can train, in the order reports list them.
pub const METHODS: [&str; 3] = ["pairwise-cringe", "binary-cringe", "dpo"];

/// A run folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunLayout {
    pub root: PathBuf,
}

/// One iteration folder of one method.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IterLayout {
    pub dir: PathBuf,
    pub method: String,
    pub iteration: u32,
}

impl RunLayout {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        RunLayout { root: root.into() }
    }
    pub fn settings(&self) -> PathBuf {
        self.root.join("run.toml")
    }
    pub fn data_dir(&self) -> PathBuf {
        self.root.join("data")
    }
    /// `train`, `unlabeled` or `test`.
    pub fn split(&self, name: &str) -> PathBuf {
        self.data_dir().join(format!("{name}.jsonl"))
    }
    pub fn sft_onnx(&self) -> PathBuf {
        self.root.join("sft/onnx")
    }
    pub fn sft_eval(&self) -> EvalLayout {
        EvalLayout {
            dir: self.root.join("sft/eval"),
        }
    }
    pub fn pref(&self, name: &str) -> PathBuf {
        self.root.join("pref").join(format!("{name}.jsonl"))
    }
    pub fn pref_pairs(&self) -> PathBuf {
        self.pref("pairs")
    }
    pub fn reward_dir(&self) -> PathBuf {
        self.root.join("reward")
    }
    /// PREF pairs the reward model trains on, and the held-out ones its accuracy is measured on.
    pub fn reward_train_pairs(&self) -> PathBuf {
        self.reward_dir().join("train.jsonl")
    }
    pub fn reward_heldout_pairs(&self) -> PathBuf {
        self.reward_dir().join("heldout.jsonl")
    }
    pub fn reward_train(&self) -> PathBuf {
        self.reward_dir().join("train")
    }
    pub fn reward_onnx(&self) -> PathBuf {
        self.reward_dir().join("onnx")
    }
    /// `training eval --objective reward --json` on the held-out pairs.
    pub fn reward_accuracy(&self) -> PathBuf {
        self.reward_dir().join("accuracy.json")
    }
    pub fn method_dir(&self, method: &str) -> PathBuf {
        self.root.join(method)
    }
    pub fn iter(&self, method: &str, iteration: u32) -> IterLayout {
        IterLayout {
            dir: self.method_dir(method).join(format!("iter{iteration}")),
            method: method.to_string(),
            iteration,
        }
    }
    /// A held-back evaluation's folder (`heldback` by default; one per corpus / length).
    pub fn heldback_dir(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }
    pub fn stages_dir(&self) -> PathBuf {
        self.root.join(".stages")
    }
    pub fn stage_done(&self, stage: &str) -> PathBuf {
        self.stages_dir().join(format!("{stage}.done"))
    }
    pub fn stage_started(&self, stage: &str) -> PathBuf {
        self.stages_dir().join(format!("{stage}.started"))
    }
    /// Stage name, tab, seconds; one line per finished stage (the latest run of it).
    pub fn stage_times(&self) -> PathBuf {
        self.stages_dir().join("times.tsv")
    }
    pub fn logs_dir(&self) -> PathBuf {
        self.root.join("logs")
    }

    /// Every method folder with at least one evaluated iteration, and its evaluated iterations in
    /// order (any number of them): what a report reads. Methods are listed in [`METHODS`] order,
    /// then any other method folder by name.
    pub fn evaluated(&self) -> Vec<(String, Vec<IterLayout>)> {
        let mut names: Vec<String> = std::fs::read_dir(&self.root)
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.path().is_dir())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort_by_key(|n| {
            (
                METHODS.iter().position(|m| m == n).unwrap_or(METHODS.len()),
                n.clone(),
            )
        });
        let mut out = Vec::new();
        for name in names {
            let mut its: Vec<u32> = std::fs::read_dir(self.method_dir(&name))
                .map(|rd| {
                    rd.flatten()
                        .filter_map(|e| {
                            let n = e.file_name().to_string_lossy().into_owned();
                            n.strip_prefix("iter")?.parse::<u32>().ok()
                        })
                        .collect()
                })
                .unwrap_or_default();
            its.sort_unstable();
            let its: Vec<IterLayout> = its
                .into_iter()
                .map(|k| self.iter(&name, k))
                .filter(|it| it.eval().metrics().is_file())
                .collect();
            if !its.is_empty() {
                out.push((name, its));
            }
        }
        out
    }
}

impl IterLayout {
    pub fn train(&self) -> PathBuf {
        self.dir.join("train")
    }
    /// The Hugging Face folder the fit wrote last.
    pub fn final_model(&self) -> PathBuf {
        self.train().join("final")
    }
    pub fn train_metrics(&self) -> PathBuf {
        self.train().join("metrics.jsonl")
    }
    /// [`TrainData`]: the files the fit trained on, written beside its output.
    pub fn train_data(&self) -> PathBuf {
        self.train().join("data.json")
    }
    pub fn onnx(&self) -> PathBuf {
        self.dir.join("onnx")
    }
    /// The quantized export new pairs are sampled from when `sample.weights = "int8"` or
    /// `sample.kv_cache = "int8"`.
    pub fn onnx_int8(&self) -> PathBuf {
        self.dir.join("onnx-int8")
    }
    /// The int8 KV cache's scales, measured on [`Self::onnx`] (`engine kv-scales`).
    pub fn kv_scales(&self) -> PathBuf {
        self.dir.join("kv-scales.safetensors")
    }
    pub fn eval(&self) -> EvalLayout {
        EvalLayout {
            dir: self.dir.join("eval"),
        }
    }
    /// Samples of this iteration's model on the unlabeled prompts.
    pub fn unlabeled_generations(&self) -> PathBuf {
        self.dir.join("unlabeled.gen.jsonl")
    }
    /// The pairs labeled from [`Self::unlabeled_generations`]: new data for later iterations.
    pub fn new_pairs(&self) -> PathBuf {
        self.dir.join("new_pairs.jsonl")
    }
    /// Binary feedback from the responses left out of [`Self::new_pairs`] (`feedback.from_samples`).
    pub fn new_binary(&self) -> PathBuf {
        self.dir.join("new_binary.jsonl")
    }
    pub fn scores(&self) -> PathBuf {
        self.dir.join("scores.jsonl")
    }
    /// The stage-name prefix of this iteration, e.g. `pairwise-cringe-iter2`.
    pub fn stage_prefix(&self) -> String {
        format!("{}-iter{}", self.method, self.iteration)
    }
}

/// An evaluation folder: greedy generations on the test split and their metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvalLayout {
    pub dir: PathBuf,
}

impl EvalLayout {
    pub fn generations(&self) -> PathBuf {
        self.dir.join("test.gen.jsonl")
    }
    /// `engine eval --json` of [`Self::generations`].
    pub fn metrics(&self) -> PathBuf {
        self.dir.join("metrics.json")
    }
}

/// What one fit trained on: its data files (relative to the run folder when inside it) and the
/// count of records in them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TrainData {
    pub files: Vec<String>,
    pub records: usize,
}

/// `path` relative to `root` when it lies inside, for messages and keys that must not depend on
/// where the run folder sits.
pub fn relative_to<'a>(path: &'a Path, root: &Path) -> &'a Path {
    path.strip_prefix(root).unwrap_or(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evaluated_lists_any_number_of_iterations_in_method_order() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunLayout::new(dir.path());
        for (m, k) in [("dpo", 1), ("pairwise-cringe", 10), ("pairwise-cringe", 2)] {
            let e = run.iter(m, k).eval();
            std::fs::create_dir_all(&e.dir).unwrap();
            std::fs::write(e.metrics(), "{}").unwrap();
        }
        // Not evaluated yet: listed nowhere.
        std::fs::create_dir_all(run.iter("pairwise-cringe", 3).train()).unwrap();
        std::fs::create_dir_all(run.root.join("data")).unwrap();
        let got: Vec<(String, Vec<u32>)> = run
            .evaluated()
            .into_iter()
            .map(|(m, its)| (m, its.iter().map(|i| i.iteration).collect()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("pairwise-cringe".to_string(), vec![2, 10]),
                ("dpo".to_string(), vec![1])
            ]
        );
        assert_eq!(
            run.iter("dpo", 3).new_pairs(),
            dir.path().join("dpo/iter3/new_pairs.jsonl")
        );
        assert_eq!(run.iter("dpo", 3).stage_prefix(), "dpo-iter3");
    }
}
