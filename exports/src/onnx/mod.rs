//! `exports onnx`: write a Hugging Face model folder as an ONNX decoder with a KV cache
//! (`model.onnx` + `model.onnx.data`), with `genai_config.json` and the tokenizer files, so the
//! folder runs under plain ONNX Runtime sessions (the engine) and under onnxruntime-genai.
//!
//! Graph contract (Optimum / onnxruntime-genai names):
//! * inputs `input_ids` `[batch, seq]` i64, `attention_mask` `[batch, past + seq]` i64,
//!   `position_ids` `[batch, seq]` i64 (portable flavor only), `past_key_values.{i}.key|value`
//!   `[batch, kv_heads, past, head_dim]` (past = 0 for the prefill);
//! * outputs `logits` `[batch, seq | 1, vocab]` f32 (or `score` `[batch]` f32 for a reward head)
//!   and `present.{i}.key|value` `[batch, kv_heads, past + seq, head_dim]`.
//!
//! Padding: the portable graph accepts any padding given `position_ids = cumsum(mask) − 1`. The
//! `ort` graph (GroupQueryAttention) needs RIGHT padding: it takes each row's length from
//! `Σ attention_mask` and assumes the row's tokens are its first positions.

mod builder;
mod genai_config;
mod gpt2;
pub mod kv_scales;
mod layers;
mod llama;
mod proto;
pub mod quant;

use std::path::{Path, PathBuf};

pub use builder::Elem;
pub use kv_scales::{KvAttention, KvCache, KvScales, ENGINE_DOMAIN, INT8_CACHE_ATTENTION};
pub use layers::HeadKind;
pub use llama::Fusions;
pub use quant::WeightFormat;

use crate::checkpoint::Checkpoint;
use crate::config::ModelConfig;
use crate::error::{Error, IoContext, Result};
use crate::fsutil;
use crate::layout::Head;

/// ONNX Runtime 1.31 reads IR ≤ 13; 10 is what onnxruntime-genai writes and covers opset 21.
pub const IR_VERSION: i64 = 10;
pub const PRODUCER: &str = "pco-exports";
pub const MODEL_FILE: &str = "model.onnx";
/// With `--kv-cache int8`: the same graph and weights with a float cache, for prompts. ONNX
/// Runtime's int8 GroupQueryAttention attends over the quantized cache in the prompt too, about
/// 4.6× slower there than over a float one (BENCHMARKS.md); the engine runs prompts through this
/// graph and quantizes what it wrote with [`KV_SCALES_FILE`]'s scales, as the int8 graph would.
pub const PREFILL_FILE: &str = "prefill.onnx";
/// With `--kv-cache int8`: the scales written into the graph (see [`KvScales`]).
pub const KV_SCALES_FILE: &str = "kv_scales.safetensors";

/// Which operator set the graph uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// ONNX Runtime contrib ops in onnxruntime-genai's CPU form (Llama family only).
    Ort,
    /// Standard ONNX ops only (opset 21).
    Portable,
}

impl Flavor {
    pub fn as_str(self) -> &'static str {
        match self {
            Flavor::Ort => "ort",
            Flavor::Portable => "portable",
        }
    }
}

/// Settings of one export.
#[derive(Debug, Clone)]
pub struct OnnxExportConfig {
    /// Hugging Face model folder (config.json, safetensors, tokenizer files).
    pub model: PathBuf,
    /// Output folder; replaced atomically.
    pub out: PathBuf,
    /// `None`: `Ort` for the Llama family, `Portable` for GPT-2.
    pub flavor: Option<Flavor>,
    /// Weight and io type (F32, F16 or BF16); logits and scores are always f32.
    pub dtype: Elem,
    pub head: Head,
    /// Logits only at each row's last real token of the step (`[batch, 1, vocab]`).
    pub last_logits_only: bool,
    /// Llama family: override the flavor's fusions one by one (to time each against the plain
    /// graph); `None` takes all of them for `Ort` and none for `Portable`.
    pub fusions: Option<Fusions>,
    /// A PEFT LoRA adapter folder merged into the weights before the graph is built
    /// (`exports::lora::merge`).
    pub adapter: Option<PathBuf>,
    /// Llama family, f32 only: int8 projections and LM head (`--weights int8`).
    pub weights: WeightFormat,
    /// GroupQueryAttention graphs: the cache in int8 with static scales (`--kv-cache int8`).
    pub kv_cache: KvCache,
    /// The decode graph's attention over an int8 cache (`--kv-attention`).
    pub kv_attention: KvAttention,
}

impl OnnxExportConfig {
    pub fn new(model: impl Into<PathBuf>, out: impl Into<PathBuf>) -> Self {
        OnnxExportConfig {
            model: model.into(),
            out: out.into(),
            flavor: None,
            dtype: Elem::F32,
            head: Head::Lm,
            last_logits_only: false,
            fusions: None,
            adapter: None,
            weights: WeightFormat::Float,
            kv_cache: KvCache::Float,
            kv_attention: KvAttention::default(),
        }
    }
}

/// What an export wrote.
#[derive(Debug, Clone)]
pub struct ExportSummary {
    pub out: PathBuf,
    pub flavor: Flavor,
    pub fusions: Fusions,
    pub dtype: Elem,
    pub weights: WeightFormat,
    /// `float` or `int8`.
    pub kv_cache: &'static str,
    pub nodes: usize,
    pub weight_bytes: usize,
    pub files: Vec<String>,
}

/// Tokenizer and config files copied next to the graph when present.
const COPIED: &[&str] = &[
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "vocab.json",
    "merges.txt",
];

/// Export `cfg.model` to `cfg.out`.
/// Whether the graph in `model_file` uses the engine's own operators ([`ENGINE_DOMAIN`], which
/// only `engine` registers, on CPU); a file that does not parse as ONNX counts as not using them.
pub fn uses_engine_ops(model_file: &Path) -> Result<bool> {
    use prost::Message;
    let bytes = std::fs::read(model_file).at(model_file)?;
    Ok(proto::ModelOpsets::decode(bytes.as_slice())
        .is_ok_and(|m| m.opset_import.iter().any(|o| o.domain == ENGINE_DOMAIN)))
}

pub fn export(cfg: &OnnxExportConfig) -> Result<ExportSummary> {
    let model = ModelConfig::load(&cfg.model)?;
    let mut ckpt = Checkpoint::load(&cfg.model)?;
    if let Some(dir) = &cfg.adapter {
        let adapter = crate::lora::Adapter::load(dir)?;
        crate::lora::merge(&mut ckpt, &adapter)?;
    }
    let flavor = cfg.flavor.unwrap_or(if model.model_type.is_llama_family() {
        Flavor::Ort
    } else {
        Flavor::Portable
    });
    if !cfg.dtype.is_float() {
        return Err(Error::Invalid(format!(
            "--dtype must be a float type, got {:?}",
            cfg.dtype
        )));
    }
    let head = match (cfg.head, cfg.last_logits_only) {
        (Head::Reward, true) => {
            return Err(Error::Invalid(
                "--last-logits-only applies to the lm head only".into(),
            ));
        }
        (Head::Reward, false) => HeadKind::Reward,
        (Head::Lm, true) => HeadKind::LmLast,
        (Head::Lm, false) => HeadKind::Lm,
    };
    if cfg.weights != WeightFormat::Float {
        let w = cfg.weights.as_str();
        if !model.model_type.is_llama_family() {
            return Err(Error::Invalid(format!(
                "--weights {w} is implemented for the Llama family only, not {}",
                model.model_type.as_str()
            )));
        }
        if cfg.dtype != Elem::F32 {
            return Err(Error::Invalid(format!(
                "--weights {w} needs --dtype fp32 (activations stay f32), got {:?}",
                cfg.dtype
            )));
        }
    }
    let fused = cfg.fusions.is_some_and(|f| f != Fusions::default());
    if !model.model_type.is_llama_family() && (flavor == Flavor::Ort || fused) {
        return Err(Error::Invalid(
            "GPT-2 is exported with --flavor portable only".into(),
        ));
    }
    let fusions = match (model.model_type.is_llama_family(), cfg.fusions) {
        (false, _) => Fusions::default(),
        (true, Some(f)) => f,
        (true, None) => Fusions::of(flavor),
    };
    if fusions.gqa && model.head_dim % 16 != 0 {
        // ONNX Runtime's CPU GroupQueryAttention kernel refuses other head sizes at run time.
        return Err(Error::Invalid(format!(
            "GroupQueryAttention (--flavor ort) needs head_dim to be a multiple of 16 (GroupQueryAttention), got {}; use --flavor portable",
            model.head_dim
        )));
    }
    let kv_scales = match &cfg.kv_cache {
        KvCache::Float => None,
        KvCache::Int8(s) => {
            // Only GroupQueryAttention quantizes new keys and values into an int8 cache.
            if !fusions.gqa {
                return Err(Error::Invalid(
                    "--kv-cache int8 needs the GroupQueryAttention graph (--flavor ort)".into(),
                ));
            }
            let want = (
                model.num_hidden_layers,
                model.num_key_value_heads,
                model.head_dim,
            );
            if (s.layers(), s.kv_heads, s.head_dim) != want {
                return Err(Error::Invalid(format!(
                    "--kv-scales are for {} layers × {} kv heads × head_dim {}, the model has {} × {} × {}",
                    s.layers(),
                    s.kv_heads,
                    s.head_dim,
                    want.0,
                    want.1,
                    want.2
                )));
            }
            Some(s)
        }
    };
    let spec = |kv_scales| llama::LlamaSpec {
        fusions,
        elem: cfg.dtype,
        head,
        weights: cfg.weights,
        kv_scales,
        kv_attention: cfg.kv_attention,
    };
    let graph = if model.model_type.is_llama_family() {
        llama::build(&model, &ckpt, &spec(kv_scales))?
    } else {
        gpt2::build(&model, &ckpt, cfg.dtype, head)?
    };
    // Kept only for the prefill graph.
    let ckpt = kv_scales.is_some().then_some(ckpt);
    let nodes = graph.node_count();
    let weight_bytes = graph.weight_bytes();
    let mut files = vec![MODEL_FILE.to_string(), format!("{MODEL_FILE}.data")];
    let src = cfg.model.clone();
    fsutil::write_dir_atomic(&cfg.out, |dir| {
        let saved = graph.save(dir, MODEL_FILE)?;
        if let (Some(scales), Some(ckpt)) = (kv_scales, &ckpt) {
            // Built after the first is saved (`save` consumes it): one graph in memory at a time.
            // Its weights are the main graph's, so it points into `model.onnx.data`.
            let prefill = llama::build(&model, ckpt, &spec(None))?.save_beside(
                dir,
                PREFILL_FILE,
                Some(&saved),
            )?;
            files.push(PREFILL_FILE.to_string());
            if prefill.wrote_own_data() {
                files.push(format!("{PREFILL_FILE}.data"));
            }
            scales.write(&dir.join(KV_SCALES_FILE))?;
            files.push(KV_SCALES_FILE.to_string());
        }
        if head != HeadKind::Reward {
            let text = serde_json::to_string_pretty(&genai_config::genai_config(
                &model,
                fusions.gqa,
                MODEL_FILE,
            ))
            .expect("a JSON value always serializes");
            fsutil::write_atomic(&dir.join("genai_config.json"), text.as_bytes())?;
            files.push("genai_config.json".into());
        }
        for name in COPIED {
            let from = src.join(name);
            if from.is_file() {
                copy(&from, &dir.join(name))?;
                files.push((*name).to_string());
            }
        }
        Ok(())
    })?;
    Ok(ExportSummary {
        out: cfg.out.clone(),
        flavor,
        fusions,
        dtype: cfg.dtype,
        weights: cfg.weights,
        kv_cache: cfg.kv_cache.as_str(),
        nodes,
        weight_bytes,
        files,
    })
}

fn copy(from: &Path, to: &Path) -> Result<()> {
    let bytes = std::fs::read(from).at(from)?;
    fsutil::write_atomic(to, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::init::{init, InitConfig};
    use crate::ModelType;
    use prost::Message;

    fn exported(
        ty: ModelType,
        head: Head,
        flavor: Option<Flavor>,
    ) -> (tempfile::TempDir, Result<ExportSummary>) {
        let tmp = tempfile::tempdir().unwrap();
        let mut c = InitConfig::tiny(ty, 3);
        c.hidden_size = 64;
        c.head = head;
        init(&c, &tmp.path().join("hf")).unwrap();
        let mut cfg = OnnxExportConfig::new(tmp.path().join("hf"), tmp.path().join("onnx"));
        cfg.flavor = flavor;
        cfg.head = head;
        let r = export(&cfg);
        (tmp, r)
    }

    #[test]
    fn graph_has_ir_10_and_every_weight_in_the_data_file() {
        let (tmp, r) = exported(ModelType::Llama, Head::Lm, None);
        let s = r.unwrap();
        assert_eq!(s.fusions, Fusions::of(Flavor::Ort));
        let dir = tmp.path().join("onnx");
        let m = proto::ModelProto::decode(&*std::fs::read(dir.join(MODEL_FILE)).unwrap()).unwrap();
        assert!(m.ir_version <= 13);
        let opsets: Vec<(String, i64)> = m
            .opset_import
            .iter()
            .map(|o| (o.domain.clone(), o.version))
            .collect();
        assert_eq!(opsets, vec![("".into(), 21), ("com.microsoft".into(), 1)]);
        let graph = m.graph.unwrap();
        let data_len = std::fs::metadata(dir.join("model.onnx.data"))
            .unwrap()
            .len() as usize;
        let mut end = 0;
        for t in &graph.initializer {
            assert_eq!(t.data_location, proto::DATA_LOCATION_EXTERNAL, "{}", t.name);
            assert!(t.raw_data.is_empty(), "{}", t.name);
            let field = |k: &str| t.external(k).parse::<usize>().unwrap();
            end = end.max(field("offset") + field("length"));
        }
        assert_eq!(end, data_len);
        let inputs: Vec<&str> = graph.input.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(
            inputs,
            [
                "input_ids",
                "attention_mask",
                "past_key_values.0.key",
                "past_key_values.1.key",
                "past_key_values.0.value",
                "past_key_values.1.value"
            ]
        );
        assert!(
            s.files.contains(&"genai_config.json".to_string())
                && s.files.contains(&"tokenizer.json".to_string())
        );
        assert!(graph
            .node
            .iter()
            .any(|n| n.op_type == "GroupQueryAttention" && n.domain == "com.microsoft"));
    }

    #[test]
    fn reward_export_has_score_and_no_genai_config() {
        let (tmp, r) = exported(ModelType::Gpt2, Head::Reward, None);
        assert_eq!(r.unwrap().flavor, Flavor::Portable);
        let dir = tmp.path().join("onnx");
        assert!(!dir.join("genai_config.json").exists());
        let m = proto::ModelProto::decode(&*std::fs::read(dir.join(MODEL_FILE)).unwrap()).unwrap();
        let g = m.graph.unwrap();
        assert_eq!(g.output[0].name, "score");
        assert!(g.input.iter().any(|i| i.name == "position_ids"));
    }

    /// Every initializer of an exported folder: name → (dims, bytes).
    fn initializers(dir: &Path) -> std::collections::BTreeMap<String, (Vec<i64>, Vec<u8>)> {
        let m = proto::ModelProto::decode(&*std::fs::read(dir.join(MODEL_FILE)).unwrap()).unwrap();
        let data = std::fs::read(dir.join("model.onnx.data")).unwrap();
        m.graph
            .unwrap()
            .initializer
            .into_iter()
            .map(|t| {
                let field = |k: &str| t.external(k).parse::<usize>().unwrap();
                let (o, l) = (field("offset"), field("length"));
                (t.name.clone(), (t.dims.clone(), data[o..o + l].to_vec()))
            })
            .collect()
    }

    #[test]
    fn int8_weights_equal_an_independent_numpy_quantization() {
        // exports/tests/fixtures/int8/llama_gqa.safetensors: numpy's per-column int8 of every
        // projection and the tied LM head of onnx_reference.py's `llama_gqa` model
        // (scripts/reference/int8_reference.py), in the graph's [in, out] layout.
        let want = Checkpoint::load(
            &Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/int8/llama_gqa.safetensors"),
        )
        .unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let mut c = InitConfig::tiny(ModelType::Llama, 11);
        c.hidden_size = 64;
        init(&c, &tmp.path().join("hf")).unwrap();
        for flavor in [Flavor::Portable, Flavor::Ort] {
            let out = tmp.path().join(flavor.as_str());
            let mut cfg = OnnxExportConfig::new(tmp.path().join("hf"), &out);
            cfg.flavor = Some(flavor);
            cfg.weights = WeightFormat::Int8;
            export(&cfg).unwrap();
            let got = initializers(&out);
            let mut compared = 0;
            for (name, t) in &want.tensors {
                // The ort flavor packs q|k|v into one matrix: its columns are the three's.
                let packed = name.replace("attn.q_proj", "attn.qkv_proj");
                let bytes = if flavor == Flavor::Ort && name.contains("attn.q_proj") {
                    let part = |p: &str| &want.get(&name.replace("q_proj", p)).unwrap().data;
                    let (q, k, v) = (part("q_proj"), part("k_proj"), part("v_proj"));
                    if name.ends_with(".scales") {
                        [q.as_slice(), k, v].concat()
                    } else {
                        let rows = t.shape[0];
                        let (nq, nk) = (q.len() / rows, k.len() / rows);
                        (0..rows)
                            .flat_map(|r| {
                                [
                                    &q[r * nq..(r + 1) * nq],
                                    &k[r * nk..(r + 1) * nk],
                                    &v[r * nk..(r + 1) * nk],
                                ]
                                .concat()
                            })
                            .collect()
                    }
                } else if flavor == Flavor::Ort
                    && (name.contains("attn.k_proj") || name.contains("attn.v_proj"))
                {
                    continue;
                } else {
                    t.data.clone()
                };
                let key = if flavor == Flavor::Ort { &packed } else { name };
                let (_, have) = got
                    .get(key)
                    .unwrap_or_else(|| panic!("{flavor:?}: no initializer {key}"));
                assert!(have == &bytes, "{flavor:?}: {key} differs from numpy's");
                compared += 1;
            }
            // (2 layers × (q, k, v, o, gate, up, down) + lm head) × (q, scales); the ort flavor
            // compares k and v inside the packed qkv.
            let expect = if flavor == Flavor::Ort { 22 } else { 30 };
            assert_eq!(compared, expect, "{flavor:?}");
        }
    }

    #[test]
    fn int8_weights_are_refused_where_they_do_not_apply() {
        let tmp = tempfile::tempdir().unwrap();
        init(&InitConfig::tiny(ModelType::Gpt2, 1), &tmp.path().join("g")).unwrap();
        let mut cfg = OnnxExportConfig::new(tmp.path().join("g"), tmp.path().join("o"));
        cfg.weights = WeightFormat::Int8;
        let e = export(&cfg).unwrap_err().to_string();
        assert!(e.contains("Llama family only"), "{e}");
        let mut c = InitConfig::tiny(ModelType::Llama, 1);
        c.hidden_size = 64;
        init(&c, &tmp.path().join("l")).unwrap();
        let mut cfg = OnnxExportConfig::new(tmp.path().join("l"), tmp.path().join("o"));
        cfg.weights = WeightFormat::Int8;
        cfg.dtype = Elem::F16;
        let e = export(&cfg).unwrap_err().to_string();
        assert!(e.contains("--dtype fp32"), "{e}");
    }

    #[test]
    fn gpt2_refuses_the_ort_flavor() {
        let (_tmp, r) = exported(ModelType::Gpt2, Head::Lm, Some(Flavor::Ort));
        assert!(r.unwrap_err().to_string().contains("portable only"));
    }
}
