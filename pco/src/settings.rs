//! The run description: one TOML file (`run.toml`) that the local runner, the Slurm submitter and
//! the held-back evaluation all read. The built-in defaults are `default.toml`, embedded; a user
//! file only needs the keys it changes (it is merged over the defaults), and the effective settings
//! are written into the run folder. An unknown key is kept and carried (with a warning), never an
//! error; a value the loop cannot honour is refused, named, before any work starts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

pub const DEFAULT_TOML: &str = include_str!("default.toml");

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    PairwiseCringe,
    BinaryCringe,
    Dpo,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::PairwiseCringe => "pairwise-cringe",
            Method::BinaryCringe => "binary-cringe",
            Method::Dpo => "dpo",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NewPairs {
    All,
    Latest,
}

/// How new pairs are labeled (and who judges the win rate against SFT).
#[derive(Debug, Clone, PartialEq)]
pub enum Reward {
    /// `engine label --reward repetition:N`.
    Repetition(u32),
    /// A Bradley–Terry reward model trained on PREF by the run itself.
    Trained,
    /// A reward model given as a Hugging Face folder with a score head.
    Model(PathBuf),
}

impl Reward {
    fn parse(s: &str, root: &Path) -> Result<Reward> {
        if s == "trained" {
            return Ok(Reward::Trained);
        }
        if let Some(dir) = s.strip_prefix("model:") {
            return Ok(Reward::Model(resolve(root, Path::new(dir))));
        }
        if let Some(rest) = s.strip_prefix("repetition") {
            let n = match rest.strip_prefix(':') {
                None if rest.is_empty() => 3,
                Some(n) => n.parse::<u32>().ok().filter(|n| *n > 0).with_context(|| {
                    format!("reward = {s:?}: N of repetition:N must be a positive integer")
                })?,
                None => bail!("reward = {s:?}: expected repetition:N"),
            };
            return Ok(Reward::Repetition(n));
        }
        bail!("reward = {s:?}: expected \"repetition:N\", \"trained\" or \"model:DIR\"")
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Data {
    pub text_dir: PathBuf,
    pub context_sentences: u32,
    pub split: [f64; 3],
    pub train: u32,
    pub unlabeled: u32,
    pub test: u32,
    pub seed: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Pref {
    pub beams: u32,
    pub no_repeat_ngram: u32,
    pub require_repeat: u32,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Generation {
    pub max_new_tokens: u32,
    pub seed: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Sample {
    pub n: u32,
    pub temperature: f64,
    pub top_k: u32,
    pub min_new_tokens: u32,
    pub weights: SampleWeights,
    pub kv_cache: SampleKvCache,
}

/// `sample.kv_cache`: the sampling graph's KV cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SampleKvCache {
    Float,
    /// int8 with scales measured on the fp32 export over the unlabeled prompts.
    Int8,
}

/// `sample.weights`: the graph new pairs are sampled from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SampleWeights {
    Float,
    Int8,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Label {
    pub min_gap: f64,
}

/// Mixed feedback (the paper's conclusion): binary records (`label` true/false) trained beside
/// the pairs, each with its own loss: cross-entropy for positives, cringe for negatives.
#[derive(Debug, Clone, Deserialize)]
pub struct Feedback {
    /// Binary feedback files added to every iteration's training data.
    pub binary: Vec<PathBuf>,
    /// The sampled responses left out of the new pairs become binary feedback too
    /// (`engine label --binary-out`), trained on wherever those new pairs are.
    pub from_samples: bool,
    /// Reward at or above which such a response is a positive.
    pub threshold: f64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Train {
    pub epochs: u32,
    pub batch_size: u32,
    pub micro_batch_size: u32,
    pub lr: f64,
    pub warmup_steps: u32,
    pub max_length: u32,
    pub seed: u64,
    pub later_steps: LaterSteps,
    pub save_every: u32,
    /// `training fit --precision`; `auto` passes no flag (fp32 on CPU, bf16 on CUDA).
    pub precision: TrainPrecision,
    /// LoRA rank of the iterations' fits; 0 trains the whole model.
    pub lora_r: u32,
    pub lora_alpha: f64,
    pub lora_dropout: f64,
    pub lora_targets: Vec<String>,
}

/// `train.precision`: the numeric precision of the iterations' fits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TrainPrecision {
    /// `training fit`'s own default: bf16 autocast on CUDA, fp32 on CPU.
    Auto,
    Fp32,
    /// bf16 autocast on CPU too (fp32 weights, AdamW state and reductions).
    Bf16,
}

impl TrainPrecision {
    /// The flag's value, `None` for `auto` (no flag, so a run made before the setting existed
    /// keeps its stage keys).
    pub fn flag(self) -> Option<&'static str> {
        match self {
            TrainPrecision::Auto => None,
            TrainPrecision::Fp32 => Some("fp32"),
            TrainPrecision::Bf16 => Some("bf16"),
        }
    }
}

/// The optimizer steps of iterations after the first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LaterSteps {
    /// As many as iteration 1 (its epochs over PREF), however large the data has grown.
    #[serde(rename = "as-iteration-1")]
    AsIteration1,
    /// `epochs` over the iteration's whole data.
    Epochs,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RewardModel {
    pub heldout_every: u32,
    pub epochs: u32,
    pub batch_size: u32,
    pub lr: f64,
    pub warmup_steps: u32,
    pub max_length: u32,
    pub seed: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Eval {
    pub metrics: String,
    pub bootstrap_resamples: u32,
    pub heldback_count: u32,
    pub heldback_every: u32,
    pub heldback_text_dir: PathBuf,
    pub heldback_max_new_tokens: u32,
    pub heldback_out: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Devices {
    pub train: String,
    pub generate: String,
    pub threads: u32,
    pub generate_batch_size: GenerateBatchSize,
}

/// `devices.generate_batch_size`: `"auto"` (cache slots sized by memory, `engine generate
/// --batch-size auto`) or a number of slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GenerateBatchSize {
    Auto,
    Fixed(u32),
}

impl std::fmt::Display for GenerateBatchSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GenerateBatchSize::Auto => write!(f, "auto"),
            GenerateBatchSize::Fixed(n) => write!(f, "{n}"),
        }
    }
}

impl<'de> Deserialize<'de> for GenerateBatchSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(i64),
            Text(String),
        }
        use serde::de::Error;
        match Raw::deserialize(d)? {
            Raw::Text(t) if t == "auto" => Ok(GenerateBatchSize::Auto),
            Raw::Number(n) if n >= 1 && n <= u32::MAX as i64 => {
                Ok(GenerateBatchSize::Fixed(n as u32))
            }
            Raw::Number(n) => Err(D::Error::custom(format!(
                "generate_batch_size = {n}: expected \"auto\" or a number ≥ 1"
            ))),
            Raw::Text(t) => Err(D::Error::custom(format!(
                "generate_batch_size = {t:?}: expected \"auto\" or a number ≥ 1"
            ))),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Slurm {
    pub shards: u32,
    pub partition: String,
    pub gpu_partition: String,
    pub gres: String,
    pub cpus_per_task: u32,
    pub mem: String,
    pub train_mem: String,
    pub time: String,
}

/// The typed view of a settings table (after merging over the defaults).
#[derive(Debug, Clone, Deserialize)]
struct Raw {
    method: Method,
    iterations: u32,
    new_pairs: NewPairs,
    reward: String,
    scale: f64,
    model: PathBuf,
    data: Data,
    pref: Pref,
    generation: Generation,
    sample: Sample,
    label: Label,
    feedback: Feedback,
    train: Train,
    loss: BTreeMap<String, toml::Table>,
    reward_model: RewardModel,
    eval: Eval,
    devices: Devices,
    slurm: Slurm,
}

/// Validated settings, with paths resolved against the project root.
#[derive(Debug, Clone)]
pub struct Settings {
    pub method: Method,
    pub iterations: u32,
    pub new_pairs: NewPairs,
    pub reward: Reward,
    pub scale: f64,
    pub model: PathBuf,
    pub data: Data,
    pub pref: Pref,
    pub generation: Generation,
    pub sample: Sample,
    pub label: Label,
    pub feedback: Feedback,
    pub train: Train,
    /// The chosen method's `training fit` loss flags, e.g. `["--alpha", "0.5", …]`.
    pub loss_flags: Vec<String>,
    pub reward_model: RewardModel,
    pub eval: Eval,
    pub devices: Devices,
    pub slurm: Slurm,
    /// The merged table, unknown keys included: what `run.toml` holds.
    pub table: toml::Table,
}

fn resolve(root: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        root.join(p)
    }
}

/// `over` merged into `base`: tables recursively, any other value replaced.
pub fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// Keys of `t` that `reference` (the defaults) does not have, as dotted paths. `loss.<method>` may
/// hold any `training fit` flag, so its contents are not checked here (training checks them).
pub fn unknown_keys(t: &toml::Table, reference: &toml::Table, prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (k, v) in t {
        let path = format!("{prefix}{k}");
        match (reference.get(k), v) {
            (None, _) => out.push(path),
            (Some(toml::Value::Table(r)), toml::Value::Table(t)) if path != "loss" => {
                out.extend(unknown_keys(t, r, &format!("{path}.")))
            }
            _ => {}
        }
    }
    out
}

pub fn default_table() -> toml::Table {
    DEFAULT_TOML
        .parse::<toml::Table>()
        .expect("the built-in default.toml parses")
}

/// Parse a settings file's text (`origin` names it in errors) into a table.
pub fn parse_table(text: &str, origin: &str) -> Result<toml::Table> {
    text.parse::<toml::Table>()
        .map_err(|e| anyhow::anyhow!("{origin}: not valid TOML: {e}"))
}

/// One `KEY=VALUE` override (`--set train.lr=5e-5`): the value is TOML (`3`, `"x"`, `[1, 2]`),
/// or a bare string when it does not parse as TOML.
pub fn set_override(t: &mut toml::Table, assignment: &str) -> Result<()> {
    let (key, value) = assignment
        .split_once('=')
        .with_context(|| format!("--set {assignment:?}: expected KEY=VALUE"))?;
    let value: toml::Value = format!("v = {value}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_string()));
    let parts: Vec<&str> = key.trim().split('.').collect();
    let mut cur = t;
    for p in &parts[..parts.len() - 1] {
        let entry = cur
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = entry
            .as_table_mut()
            .with_context(|| format!("--set {key}: {p} is not a table"))?;
    }
    cur.insert(parts[parts.len() - 1].to_string(), value);
    Ok(())
}

impl Settings {
    /// Validate a merged table. `origin` names the file in errors.
    pub fn from_table(table: toml::Table, root: &Path, origin: &str) -> Result<Settings> {
        let raw: Raw = table
            .clone()
            .try_into()
            .map_err(|e| anyhow::anyhow!("{origin}: {e}"))?;
        let reward = Reward::parse(&raw.reward, root).with_context(|| origin.to_string())?;
        let refuse = |what: String| -> Result<Settings> { bail!("{origin}: {what}") };
        if raw.iterations == 0 {
            return refuse("iterations must be at least 1".into());
        }
        if !(raw.scale.is_finite() && raw.scale > 0.0) {
            return refuse(format!("scale must be positive, got {}", raw.scale));
        }
        if raw.train.lora_r > 0
            && (!(0.0..1.0).contains(&raw.train.lora_dropout)
                || !raw.train.lora_alpha.is_finite()
                || raw.train.lora_targets.is_empty())
        {
            return refuse(format!(
                "train.lora_*: with lora_r = {} lora_dropout must lie in [0, 1), lora_alpha be finite and lora_targets name a projection",
                raw.train.lora_r
            ));
        }
        if raw.slurm.shards == 0 {
            return refuse("slurm.shards must be at least 1".into());
        }
        if raw.sample.n < 2 {
            return refuse(format!(
                "sample.n = {}: labeling needs at least 2 responses per prompt",
                raw.sample.n
            ));
        }
        if raw.eval.heldback_out.is_empty()
            || raw.eval.heldback_out.contains('/')
            || raw.eval.heldback_out.starts_with('.')
        {
            return refuse(format!(
                "eval.heldback_out = {:?}: expected a plain folder name",
                raw.eval.heldback_out
            ));
        }
        if raw.reward_model.heldout_every < 2 {
            return refuse("reward_model.heldout_every must be at least 2".into());
        }
        for d in [&raw.devices.train, &raw.devices.generate] {
            if d != "cpu" && !d.starts_with("cuda") {
                return refuse(format!("devices: {d:?} is neither cpu nor cuda:N"));
            }
        }
        let method = raw.method;
        if method == Method::Dpo && (raw.feedback.from_samples || !raw.feedback.binary.is_empty()) {
            return refuse(
                "feedback: dpo trains on pairs only; binary feedback needs pairwise-cringe or binary-cringe"
                    .into(),
            );
        }
        if !raw.feedback.threshold.is_finite() {
            return refuse(format!(
                "feedback.threshold = {}: expected a finite number",
                raw.feedback.threshold
            ));
        }
        let mut loss_flags = Vec::new();
        if let Some(t) = raw.loss.get(method.as_str()) {
            for (k, v) in t {
                let flag = format!("--{}", k.replace('_', "-"));
                match v {
                    toml::Value::Boolean(true) => loss_flags.push(flag),
                    toml::Value::Boolean(false) => {}
                    toml::Value::String(s) => loss_flags.extend([flag, s.clone()]),
                    toml::Value::Integer(i) => loss_flags.extend([flag, i.to_string()]),
                    toml::Value::Float(f) => loss_flags.extend([flag, f.to_string()]),
                    other => {
                        return refuse(format!(
                            "loss.{}.{k} = {other}: expected a number, string or boolean",
                            method.as_str()
                        ))
                    }
                }
            }
        }
        Ok(Settings {
            method,
            iterations: raw.iterations,
            new_pairs: raw.new_pairs,
            reward,
            scale: raw.scale,
            model: resolve(root, &raw.model),
            data: Data {
                text_dir: resolve(root, &raw.data.text_dir),
                ..raw.data
            },
            pref: raw.pref,
            generation: raw.generation,
            sample: raw.sample,
            label: raw.label,
            feedback: Feedback {
                binary: raw
                    .feedback
                    .binary
                    .iter()
                    .map(|p| resolve(root, p))
                    .collect(),
                ..raw.feedback
            },
            train: raw.train,
            loss_flags,
            reward_model: raw.reward_model,
            eval: Eval {
                heldback_text_dir: if raw.eval.heldback_text_dir.as_os_str().is_empty() {
                    PathBuf::new()
                } else {
                    resolve(root, &raw.eval.heldback_text_dir)
                },
                ..raw.eval
            },
            devices: raw.devices,
            slurm: raw.slurm,
            table,
        })
    }

    /// The defaults, then `file` (when given), then `overrides` (`KEY=VALUE`). Returns the settings
    /// and the unknown keys found (kept in the table).
    pub fn load(
        file: Option<&Path>,
        overrides: &[String],
        root: &Path,
    ) -> Result<(Settings, Vec<String>)> {
        let defaults = default_table();
        let mut table = defaults.clone();
        let mut origin = "built-in settings".to_string();
        if let Some(f) = file {
            let text = std::fs::read_to_string(f)
                .with_context(|| format!("reading settings {}", f.display()))?;
            merge(&mut table, parse_table(&text, &f.display().to_string())?);
            origin = f.display().to_string();
        }
        for o in overrides {
            set_override(&mut table, o)?;
        }
        let unknown = unknown_keys(&table, &defaults, "");
        Ok((Settings::from_table(table, root, &origin)?, unknown))
    }

    /// The run.toml text: the effective settings, unknown keys included.
    pub fn to_toml(&self) -> String {
        let body = toml::to_string(&self.table).expect("a TOML table serializes");
        format!(
            "# Effective settings of this run (scripts/pco writes this file on every invocation).\n\
             # Edit it and rerun `scripts/pco --run DIR` to change the run: only the stages a\n\
             # change affects run again. `scripts/pco --print-default` shows every key explained.\n\n{body}"
        )
    }

    /// A size scaled by `scale`, at least 1.
    pub fn scaled(&self, n: u32) -> u32 {
        ((n as f64 * self.scale).round() as u32).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_text(text: &str, overrides: &[&str]) -> Result<(Settings, Vec<String>)> {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("s.toml");
        std::fs::write(&f, text).unwrap();
        let o: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
        Settings::load(Some(&f), &o, Path::new("/root"))
    }

    #[test]
    fn defaults_are_the_paper_run() {
        let (s, unknown) = Settings::load(None, &[], Path::new("/p")).unwrap();
        assert!(unknown.is_empty(), "{unknown:?}");
        assert_eq!(s.method, Method::PairwiseCringe);
        assert_eq!(s.iterations, 2);
        assert_eq!((s.data.train, s.data.unlabeled, s.data.test), (48, 96, 48));
        assert_eq!(s.reward, Reward::Repetition(3));
        assert_eq!(s.model, Path::new("/p/models/smollm2-135m-instruct"));
        assert_eq!(s.data.text_dir, Path::new("/p/data/sotu"));
        assert_eq!(
            s.loss_flags,
            [
                "--alpha",
                "1",
                "--b",
                "0",
                "--cringe-exclude-stop",
                "--cringe-k",
                "5",
                "--stop-unlikelihood",
                "10",
                "--tau",
                "5"
            ]
        );
        assert_eq!(s.sample.min_new_tokens, 8);
        assert_eq!(s.devices.generate_batch_size, GenerateBatchSize::Auto);
    }

    #[test]
    fn generate_batch_size_is_auto_or_a_positive_number() {
        let (s, _) = load_text("", &["devices.generate_batch_size=24"]).unwrap();
        assert_eq!(s.devices.generate_batch_size, GenerateBatchSize::Fixed(24));
        assert_eq!(s.devices.generate_batch_size.to_string(), "24");
        let (s, _) = load_text("[devices]\ngenerate_batch_size = \"auto\"\n", &[]).unwrap();
        assert_eq!(s.devices.generate_batch_size.to_string(), "auto");
        for bad in [
            "devices.generate_batch_size=0",
            "devices.generate_batch_size=big",
        ] {
            let e = format!("{:#}", load_text("", &[bad]).unwrap_err());
            assert!(e.contains("generate_batch_size"), "{e}");
        }
    }

    #[test]
    fn a_partial_file_merges_over_the_defaults_and_overrides_win() {
        let (s, unknown) = load_text(
            "iterations = 4\nmethod = \"dpo\"\n[train]\nlr = 5e-5\n[mystery]\nx = 1\n",
            &["train.epochs=4", "reward=trained", "data.text_dir=/corpus"],
        )
        .unwrap();
        assert_eq!(s.iterations, 4);
        assert_eq!(s.method, Method::Dpo);
        assert_eq!(s.train.lr, 5e-5);
        assert_eq!(s.train.epochs, 4);
        assert_eq!(s.train.batch_size, 8, "untouched keys keep their default");
        assert_eq!(s.loss_flags, ["--beta", "0.1"]);
        assert_eq!(s.reward, Reward::Trained);
        assert_eq!(s.data.text_dir, Path::new("/corpus"));
        // Unknown keys are reported and carried into run.toml, not dropped.
        assert_eq!(unknown, ["mystery"]);
        let again = parse_table(&s.to_toml(), "run.toml").unwrap();
        assert_eq!(again["mystery"]["x"].as_integer(), Some(1));
        assert_eq!(again["iterations"].as_integer(), Some(4));
        // And run.toml read back gives the same settings.
        let s2 = Settings::from_table(again, Path::new("/root"), "run.toml").unwrap();
        assert_eq!(s2.train.epochs, 4);
        assert_eq!(s2.loss_flags, s.loss_flags);
    }

    #[test]
    fn bad_values_are_refused_naming_the_file_and_key() {
        let e = load_text("iterations = 0\n", &[]).unwrap_err().to_string();
        assert!(e.contains("s.toml") && e.contains("iterations"), "{e}");
        let e = format!("{:#}", load_text("reward = \"bleu\"\n", &[]).unwrap_err());
        assert!(e.contains("reward") && e.contains("bleu"), "{e}");
        let e = load_text("method = \"ppo\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("ppo"), "{e}");
        let e = load_text("[train]\nlr = \"fast\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("lr"), "{e}");
        let e = load_text("iterations = [\n", &[]).unwrap_err().to_string();
        assert!(e.contains("not valid TOML"), "{e}");
        let e = load_text("[devices]\ntrain = \"tpu\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("tpu"), "{e}");
        let e = load_text("method = \"dpo\"\n[feedback]\nfrom_samples = true\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("feedback") && e.contains("dpo"), "{e}");
    }

    #[test]
    fn reward_specs() {
        let root = Path::new("/r");
        assert_eq!(
            Reward::parse("repetition:4", root).unwrap(),
            Reward::Repetition(4)
        );
        assert_eq!(
            Reward::parse("repetition", root).unwrap(),
            Reward::Repetition(3)
        );
        assert_eq!(
            Reward::parse("model:rm", root).unwrap(),
            Reward::Model("/r/rm".into())
        );
        assert!(Reward::parse("repetition:0", root).is_err());
    }
}
