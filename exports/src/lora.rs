//! LoRA adapters in PEFT's format: `adapter_config.json` + `adapter_model.safetensors` with
//! PEFT's tensor names (`base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`, `[r, in]`;
//! `….lora_B.weight`, `[out, r]`; a reward head saved whole as `base_model.model.score.weight`, as
//! PEFT's `modules_to_save` for `SEQ_CLS`), and merging them into a base checkpoint on the host:
//! `W ← W + scaling · B @ A`, scaling `lora_alpha / r` (`lora_alpha / √r` with `use_rslora`).
//!
//! Training writes adapters (`training fit --lora-r …`); `exports onnx --adapter` and
//! `training merge` merge them here, with no libtorch.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::checkpoint::{Checkpoint, HostTensor};
use crate::error::{Error, IoContext, Result};
use crate::fsutil;

pub const ADAPTER_CONFIG_FILE: &str = "adapter_config.json";
pub const ADAPTER_WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// PEFT's prefix of every saved tensor name (`PeftModel.base_model.model` is the wrapped model).
pub const PEFT_PREFIX: &str = "base_model.model.";
/// The Llama family's projections, the default targets (attention and MLP).
pub const DEFAULT_TARGETS: &[&str] = &[
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];
/// The PEFT version whose `adapter_config.json` keys we write.
pub const PEFT_VERSION: &str = "0.21.2";

/// PEFT's `task_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskType {
    /// `CAUSAL_LM`: an LM head, adapters only.
    CausalLm,
    /// `SEQ_CLS`: a reward head, adapters plus the whole `score` matrix (`modules_to_save`).
    SeqCls,
}

impl TaskType {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskType::CausalLm => "CAUSAL_LM",
            TaskType::SeqCls => "SEQ_CLS",
        }
    }
}

/// How `lora_A` starts (`B` always starts at zero, so the adapted model starts as the base).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
#[derive(clap::ValueEnum)]
pub enum LoraInit {
    /// PEFT's default (`init_lora_weights=True`): kaiming-uniform with `a = √5`, i.e.
    /// uniform(±1/√in), as `nn.Linear`.
    Kaiming,
    /// PEFT's `init_lora_weights="gaussian"`: normal with std `1/r`.
    Gaussian,
}

impl LoraInit {
    fn to_json(self) -> Value {
        match self {
            LoraInit::Kaiming => json!(true),
            LoraInit::Gaussian => json!("gaussian"),
        }
    }
}

/// The settings of `adapter_config.json` that change the math.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterConfig {
    pub r: usize,
    pub lora_alpha: f64,
    pub lora_dropout: f64,
    /// Module names (last path component) that carry adapters.
    pub target_modules: Vec<String>,
    pub base_model_name_or_path: Option<String>,
    pub task_type: TaskType,
    pub use_rslora: bool,
    pub init: LoraInit,
}

impl AdapterConfig {
    /// The factor of `B @ A`: `lora_alpha / r`, or `lora_alpha / √r` with rsLoRA.
    pub fn scaling(&self) -> f64 {
        if self.use_rslora {
            self.lora_alpha / (self.r as f64).sqrt()
        } else {
            self.lora_alpha / self.r as f64
        }
    }

    /// `adapter_config.json` with every key PEFT writes (PEFT ignores none of them and warns on
    /// none), so `peft.PeftModel.from_pretrained` loads the folder.
    pub fn to_json(&self) -> Value {
        let alpha = if self.lora_alpha.fract() == 0.0 && self.lora_alpha.abs() < 1e15 {
            json!(self.lora_alpha as i64)
        } else {
            json!(self.lora_alpha)
        };
        let modules_to_save = match self.task_type {
            TaskType::CausalLm => Value::Null,
            TaskType::SeqCls => json!(["classifier", "score"]),
        };
        let entries: Vec<(&str, Value)> = vec![
            ("alora_invocation_tokens", Value::Null),
            ("alpha_pattern", json!({})),
            ("arrow_config", Value::Null),
            ("auto_mapping", Value::Null),
            (
                "base_model_name_or_path",
                json!(self.base_model_name_or_path),
            ),
            ("bias", json!("none")),
            ("corda_config", Value::Null),
            ("ensure_weight_tying", json!(false)),
            ("eva_config", Value::Null),
            ("exclude_modules", Value::Null),
            ("fan_in_fan_out", json!(false)),
            ("inference_mode", json!(true)),
            ("init_lora_weights", self.init.to_json()),
            ("kasa_config", Value::Null),
            ("layer_replication", Value::Null),
            ("layers_pattern", Value::Null),
            ("layers_to_transform", Value::Null),
            ("loftq_config", json!({})),
            ("lora_alpha", alpha),
            ("lora_bias", json!(false)),
            ("lora_dropout", json!(self.lora_dropout)),
            ("lora_ga_config", Value::Null),
            ("megatron_config", Value::Null),
            ("megatron_core", json!("megatron.core")),
            ("modules_to_save", modules_to_save),
            ("monteclora_config", Value::Null),
            ("peft_type", json!("LORA")),
            ("peft_version", json!(PEFT_VERSION)),
            ("qalora_group_size", json!(16)),
            ("r", json!(self.r)),
            ("rank_pattern", json!({})),
            ("revision", Value::Null),
            ("target_modules", json!(self.target_modules)),
            ("target_parameters", Value::Null),
            ("task_type", json!(self.task_type.as_str())),
            ("trainable_token_indices", Value::Null),
            ("use_bdlora", Value::Null),
            ("use_dora", json!(false)),
            ("use_qalora", json!(false)),
            ("use_rslora", json!(self.use_rslora)),
            ("velora_config", Value::Null),
        ];
        Value::Object(
            entries
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        )
    }

    /// Read PEFT's `adapter_config.json`; a setting that changes the math and is not implemented
    /// here (DoRA, per-module ranks, biases, fan-in-fan-out, other PEFT types, …) is an error
    /// naming the field.
    pub fn from_json(v: &Value, path: &Path) -> Result<Self> {
        let bad = |field: &str, message: String| Error::Config {
            path: path.to_path_buf(),
            field: field.into(),
            message,
        };
        let obj = v
            .as_object()
            .ok_or_else(|| bad("(root)", "must be a JSON object".into()))?;
        let get = |k: &str| obj.get(k).filter(|x| !x.is_null());
        match get("peft_type").and_then(Value::as_str) {
            Some("LORA") => {}
            other => {
                return Err(bad(
                    "peft_type",
                    format!("only LORA adapters are supported, got {other:?}"),
                ))
            }
        }
        let r = get("r")
            .and_then(Value::as_u64)
            .filter(|&r| r > 0)
            .ok_or_else(|| bad("r", "must be a positive integer".into()))? as usize;
        let lora_alpha = match get("lora_alpha") {
            None => 8.0, // PEFT's default
            Some(a) => a
                .as_f64()
                .ok_or_else(|| bad("lora_alpha", "must be a number".into()))?,
        };
        let lora_dropout = get("lora_dropout").and_then(Value::as_f64).unwrap_or(0.0);
        let flag = |k: &str| get(k).and_then(Value::as_bool).unwrap_or(false);
        for k in [
            "use_dora",
            "fan_in_fan_out",
            "lora_bias",
            "use_qalora",
            "use_bdlora",
        ] {
            if flag(k) {
                return Err(bad(k, "is not supported (it changes the math)".into()));
            }
        }
        if let Some(b) = get("bias").and_then(Value::as_str).filter(|&b| b != "none") {
            return Err(bad(
                "bias",
                format!("only \"none\" is supported, got {b:?}"),
            ));
        }
        for k in ["rank_pattern", "alpha_pattern"] {
            if get(k)
                .and_then(Value::as_object)
                .is_some_and(|m| !m.is_empty())
            {
                return Err(bad(k, "per-module ranks/alphas are not supported".into()));
            }
        }
        for k in [
            "layers_to_transform",
            "layer_replication",
            "target_parameters",
        ] {
            if get(k).is_some() {
                return Err(bad(k, "is not supported".into()));
            }
        }
        let target_modules = match get("target_modules") {
            Some(Value::Array(a)) => a
                .iter()
                .map(|x| {
                    x.as_str().map(String::from).ok_or_else(|| {
                        bad("target_modules", "must be a list of module names".into())
                    })
                })
                .collect::<Result<Vec<_>>>()?,
            // A regex or "all-linear": the saved tensors say which modules carry adapters.
            Some(Value::String(s)) => vec![s.clone()],
            _ => Vec::new(),
        };
        let task_type = match get("task_type").and_then(Value::as_str) {
            None | Some("CAUSAL_LM") => TaskType::CausalLm,
            Some("SEQ_CLS") => TaskType::SeqCls,
            Some(other) => {
                return Err(bad(
                    "task_type",
                    format!("CAUSAL_LM or SEQ_CLS are supported, got {other:?}"),
                ))
            }
        };
        if let Some(m) = get("modules_to_save") {
            let names: Vec<&str> = m
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            if let Some(n) = names
                .iter()
                .find(|n| !matches!(**n, "score" | "classifier"))
            {
                return Err(bad(
                    "modules_to_save",
                    format!("only the reward head (`score`) may be saved whole, got `{n}`"),
                ));
            }
        }
        let init = match get("init_lora_weights") {
            Some(Value::String(s)) if s == "gaussian" => LoraInit::Gaussian,
            _ => LoraInit::Kaiming,
        };
        Ok(AdapterConfig {
            r,
            lora_alpha,
            lora_dropout,
            target_modules,
            base_model_name_or_path: get("base_model_name_or_path")
                .and_then(Value::as_str)
                .map(String::from),
            task_type,
            use_rslora: flag("use_rslora"),
            init,
        })
    }

    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join(ADAPTER_CONFIG_FILE);
        let text = std::fs::read_to_string(&path).at(&path)?;
        let v: Value = serde_json::from_str(&text).map_err(|error| Error::Json {
            path: path.clone(),
            error,
        })?;
        Self::from_json(&v, &path)
    }

    pub fn save(&self, dir: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(&self.to_json()).expect("JSON serializes");
        fsutil::write_atomic(&dir.join(ADAPTER_CONFIG_FILE), text.as_bytes())
    }
}

/// True when `dir` holds a PEFT adapter.
pub fn is_adapter_dir(dir: &Path) -> bool {
    dir.join(ADAPTER_CONFIG_FILE).is_file()
}

/// PEFT's name of `lora_A` of module `module` (`model.layers.0.self_attn.q_proj`).
pub fn lora_a_name(module: &str) -> String {
    format!("{PEFT_PREFIX}{module}.lora_A.weight")
}

/// PEFT's name of `lora_B` of module `module`.
pub fn lora_b_name(module: &str) -> String {
    format!("{PEFT_PREFIX}{module}.lora_B.weight")
}

/// PEFT's name of a whole saved tensor (`score.weight` → `base_model.model.score.weight`).
pub fn saved_name(tensor: &str) -> String {
    format!("{PEFT_PREFIX}{tensor}")
}

/// One adapted module.
#[derive(Debug, Clone)]
pub struct AdaptedModule {
    /// The module path in the base model (`model.layers.0.self_attn.q_proj`).
    pub module: String,
    /// `[r, in]`.
    pub a: HostTensor,
    /// `[out, r]`.
    pub b: HostTensor,
}

/// An adapter folder, read and checked.
#[derive(Debug, Clone)]
pub struct Adapter {
    pub dir: PathBuf,
    pub config: AdapterConfig,
    pub modules: Vec<AdaptedModule>,
    /// Whole tensors that replace the base's (`score.weight`), by base name.
    pub saved: Vec<(String, HostTensor)>,
}

impl Adapter {
    /// Read `dir/adapter_config.json` and `dir/adapter_model.safetensors`; every tensor must be a
    /// `lora_A`/`lora_B` pair of rank `r` or a saved `score` head.
    pub fn load(dir: &Path) -> Result<Self> {
        let config = AdapterConfig::load(dir)?;
        let weights = dir.join(ADAPTER_WEIGHTS_FILE);
        if !weights.is_file() {
            return Err(Error::Invalid(format!(
                "{}: no {ADAPTER_WEIGHTS_FILE} (only safetensors adapters are read)",
                dir.display()
            )));
        }
        let ckpt = Checkpoint::load(&weights)?;
        let file_err = |m: String| Error::Invalid(format!("{}: {m}", weights.display()));
        let mut modules: Vec<AdaptedModule> = Vec::new();
        let mut saved = Vec::new();
        let mut bs = std::collections::BTreeMap::new();
        for (name, t) in &ckpt.tensors {
            let Some(rest) = name.strip_prefix(PEFT_PREFIX) else {
                return Err(file_err(format!(
                    "tensor `{name}` does not start with `{PEFT_PREFIX}`"
                )));
            };
            // PEFT drops the adapter name ("default") when saving; accept it if present.
            let rest = rest
                .replace(".lora_A.default.", ".lora_A.")
                .replace(".lora_B.default.", ".lora_B.");
            if let Some(m) = rest.strip_suffix(".lora_A.weight") {
                modules.push(AdaptedModule {
                    module: m.to_string(),
                    a: t.clone(),
                    b: HostTensor::from_f32(vec![0], &[]),
                });
            } else if let Some(m) = rest.strip_suffix(".lora_B.weight") {
                bs.insert(m.to_string(), t.clone());
            } else if rest == "score.weight" || rest == "score.modules_to_save.weight" {
                saved.push(("score.weight".to_string(), t.clone()));
            } else {
                return Err(file_err(format!(
                    "tensor `{name}` is neither a lora_A/lora_B weight nor the score head"
                )));
            }
        }
        let r = config.r;
        for m in &mut modules {
            let b = bs.remove(&m.module).ok_or_else(|| {
                file_err(format!(
                    "no `{}` for `{}`",
                    lora_b_name(&m.module),
                    lora_a_name(&m.module)
                ))
            })?;
            m.b = b;
            if m.a.shape.len() != 2 || m.a.shape[0] != r {
                return Err(file_err(format!(
                    "`{}` has shape {:?}, expected [r = {r}, in]",
                    lora_a_name(&m.module),
                    m.a.shape
                )));
            }
            if m.b.shape.len() != 2 || m.b.shape[1] != r {
                return Err(file_err(format!(
                    "`{}` has shape {:?}, expected [out, r = {r}]",
                    lora_b_name(&m.module),
                    m.b.shape
                )));
            }
        }
        if let Some(m) = bs.keys().next() {
            return Err(file_err(format!("`{}` has no lora_A", lora_b_name(m))));
        }
        Ok(Adapter {
            dir: dir.to_path_buf(),
            config,
            modules,
            saved,
        })
    }

    /// The base model folder: `base` if given, else `base_model_name_or_path` (a folder; a hub id
    /// cannot be fetched here).
    pub fn base_dir(&self, base: Option<&Path>) -> Result<PathBuf> {
        if let Some(b) = base {
            return Ok(b.to_path_buf());
        }
        match &self.config.base_model_name_or_path {
            Some(p) if Path::new(p).is_dir() => Ok(PathBuf::from(p)),
            Some(p) => Err(Error::Invalid(format!(
                "{}: base_model_name_or_path `{p}` is not a folder here; pass the base model with --model",
                self.dir.join(ADAPTER_CONFIG_FILE).display()
            ))),
            None => Err(Error::Invalid(format!(
                "{}: no base_model_name_or_path; pass the base model with --model",
                self.dir.join(ADAPTER_CONFIG_FILE).display()
            ))),
        }
    }
}

/// What [`merge`] changed.
#[derive(Debug, Clone, PartialEq)]
pub struct MergeSummary {
    pub modules: usize,
    pub replaced: usize,
}

/// `W ← W + scaling · B @ A` for every adapted module of `base` (each merged weight becomes f32),
/// and the adapter's saved tensors replace (or add) the base's. Every module must exist in `base`
/// with a weight of shape `[out, in]` matching `B`'s rows and `A`'s columns.
pub fn merge(base: &mut Checkpoint, adapter: &Adapter) -> Result<MergeSummary> {
    let s = adapter.config.scaling();
    let r = adapter.config.r;
    let src = adapter.dir.join(ADAPTER_WEIGHTS_FILE);
    for m in &adapter.modules {
        let wname = format!("{}.weight", m.module);
        let w = base.tensors.get(&wname).ok_or_else(|| {
            Error::Invalid(format!(
                "{}: `{}` adapts `{wname}`, which the base model {} does not have",
                src.display(),
                lora_a_name(&m.module),
                base.source.display()
            ))
        })?;
        let (out, inp) = match w.shape[..] {
            [o, i] => (o, i),
            _ => {
                return Err(Error::Invalid(format!(
                    "base tensor `{wname}` has shape {:?}, not a matrix",
                    w.shape
                )))
            }
        };
        if m.a.shape != [r, inp] || m.b.shape != [out, r] {
            return Err(Error::Invalid(format!(
                "{}: `{}` {:?} and `{}` {:?} do not fit `{wname}` {:?} of {}",
                src.display(),
                lora_a_name(&m.module),
                m.a.shape,
                lora_b_name(&m.module),
                m.b.shape,
                w.shape,
                base.source.display()
            )));
        }
        let mut wv = w.to_f32()?;
        let a = m.a.to_f32()?;
        let b = m.b.to_f32()?;
        let mut row = vec![0f64; inp];
        for o in 0..out {
            row.iter_mut().for_each(|x| *x = 0.0);
            for k in 0..r {
                let bk = b[o * r + k] as f64;
                if bk == 0.0 {
                    continue;
                }
                for (x, &av) in row.iter_mut().zip(&a[k * inp..(k + 1) * inp]) {
                    *x += bk * av as f64;
                }
            }
            for (wv, x) in wv[o * inp..(o + 1) * inp].iter_mut().zip(&row) {
                *wv = (*wv as f64 + s * x) as f32;
            }
        }
        base.insert(wname, HostTensor::from_f32(vec![out, inp], &wv));
    }
    for (name, t) in &adapter.saved {
        if let Some(old) = base.tensors.get(name) {
            if old.shape != t.shape {
                return Err(Error::Invalid(format!(
                    "{}: `{}` has shape {:?}, the base's `{name}` {:?}",
                    src.display(),
                    saved_name(name),
                    t.shape,
                    old.shape
                )));
            }
        }
        base.insert(
            name.clone(),
            HostTensor::from_f32(t.shape.clone(), &t.to_f32()?),
        );
    }
    Ok(MergeSummary {
        modules: adapter.modules.len(),
        replaced: adapter.saved.len(),
    })
}

/// The files of a model folder besides its weights that a merged folder copies from the base.
const FOLDER_FILES: &[&str] = &[
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "vocab.json",
    "merges.txt",
];

/// Merge the adapter in `adapter_dir` into the base model folder (`base`, else the adapter's
/// `base_model_name_or_path`) and write a Hugging Face folder `out` (fp32 merged weights; the
/// config and tokenizer of the base; a `SEQ_CLS` adapter's folder is a sequence-classification
/// model with one label). Written atomically.
pub fn merge_folder(adapter_dir: &Path, base: Option<&Path>, out: &Path) -> Result<MergeSummary> {
    let adapter = Adapter::load(adapter_dir)?;
    let base_dir = adapter.base_dir(base)?;
    let model = crate::ModelConfig::load(&base_dir)?;
    let mut ckpt = Checkpoint::load(&base_dir)?;
    let summary = merge(&mut ckpt, &adapter)?;
    fsutil::write_dir_atomic(out, |dir| {
        ckpt.save(dir, None)?;
        for name in FOLDER_FILES {
            let from = base_dir.join(name);
            if from.is_file() {
                let bytes = std::fs::read(&from).at(&from)?;
                fsutil::write_atomic(&dir.join(name), &bytes)?;
            }
        }
        if adapter.config.task_type == TaskType::SeqCls {
            let mut cfg = model.clone();
            cfg.num_labels = Some(1);
            cfg.save(dir, model.model_type.sequence_classification_class())?;
        }
        Ok(())
    })?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> AdapterConfig {
        AdapterConfig {
            r: 2,
            lora_alpha: 4.0,
            lora_dropout: 0.0,
            target_modules: vec!["q_proj".into()],
            base_model_name_or_path: Some("base".into()),
            task_type: TaskType::CausalLm,
            use_rslora: false,
            init: LoraInit::Kaiming,
        }
    }

    #[test]
    fn config_round_trips_and_refuses_dora() {
        let c = cfg();
        let v = c.to_json();
        assert_eq!(v["lora_alpha"], json!(4));
        assert_eq!(v["peft_type"], "LORA");
        assert_eq!(
            AdapterConfig::from_json(&v, Path::new("a.json")).unwrap(),
            c
        );
        let mut d = v.clone();
        d["use_dora"] = json!(true);
        let e = AdapterConfig::from_json(&d, Path::new("a.json")).unwrap_err();
        assert!(e.to_string().contains("use_dora"), "{e}");
        assert_eq!(c.scaling(), 2.0);
        assert_eq!(
            AdapterConfig {
                use_rslora: true,
                ..c
            }
            .scaling(),
            4.0 / 2f64.sqrt()
        );
    }

    #[test]
    fn merge_adds_scaled_b_times_a() {
        // W [3, 2], A [2, 2], B [3, 2], scaling 2 — worked by hand:
        // B @ A = [[1*1+0*3, 1*2+0*4], [0*1+1*3, 0*2+1*4], [1*1+1*3, 1*2+1*4]]
        //       = [[1, 2], [3, 4], [4, 6]]
        let mut base = Checkpoint::new();
        base.insert(
            "m.q_proj.weight",
            HostTensor::from_f32(vec![3, 2], &[1.0; 6]),
        );
        let adapter = Adapter {
            dir: PathBuf::from("adapter"),
            config: cfg(),
            modules: vec![AdaptedModule {
                module: "m.q_proj".into(),
                a: HostTensor::from_f32(vec![2, 2], &[1.0, 2.0, 3.0, 4.0]),
                b: HostTensor::from_f32(vec![3, 2], &[1.0, 0.0, 0.0, 1.0, 1.0, 1.0]),
            }],
            saved: vec![],
        };
        merge(&mut base, &adapter).unwrap();
        let w = base.get("m.q_proj.weight").unwrap().to_f32().unwrap();
        assert_eq!(w, vec![3.0, 5.0, 7.0, 9.0, 9.0, 13.0]);
        let mut wrong = Checkpoint::new();
        wrong.insert(
            "m.q_proj.weight",
            HostTensor::from_f32(vec![2, 3], &[1.0; 6]),
        );
        let e = merge(&mut wrong, &adapter).unwrap_err().to_string();
        assert!(e.contains("do not fit `m.q_proj.weight`"), "{e}");
    }
}
