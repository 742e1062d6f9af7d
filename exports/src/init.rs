//! `exports init`: a tiny random model folder with a small byte-level BPE tokenizer, for tests and
//! CI. Everything is derived from the seed, so two runs with the same arguments write identical files.

use std::path::Path;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::checkpoint::{Checkpoint, HostTensor};
use crate::config::{Activation, ModelConfig, ModelType};
use crate::error::Result;
use crate::layout::{self, Head, Role};
use crate::tokenizer::{bytes_to_unicode, ByteLevelBpe, TokenizerConfig};

/// A ChatML template in the style of SmolLM2's, so tiny models exercise the same chat path.
pub const TINY_CHAT_TEMPLATE: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

#[derive(Debug, Clone)]
pub struct InitConfig {
    pub model_type: ModelType,
    pub seed: u64,
    pub hidden_size: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    /// Per-head dimension; `None`: hidden / heads. Qwen3's preset sets 16 so that it differs from
    /// hidden / heads (as in the released Qwen3 sizes) and suits GroupQueryAttention.
    pub head_dim: Option<usize>,
    pub intermediate_size: usize,
    pub max_positions: usize,
    pub tied: bool,
    /// q/k/v (and o) projection biases for `llama`; implied for `qwen2`, always on for GPT-2.
    pub attention_bias: bool,
    pub head: Head,
}

impl InitConfig {
    /// The `tiny` preset: 2 layers, hidden 32, 4 heads (2 KV heads for the Llama family).
    pub fn tiny(model_type: ModelType, seed: u64) -> Self {
        InitConfig {
            model_type,
            seed,
            hidden_size: 32,
            layers: 2,
            heads: 4,
            kv_heads: if model_type == ModelType::Gpt2 { 4 } else { 2 },
            head_dim: (model_type == ModelType::Qwen3).then_some(16),
            intermediate_size: 64,
            max_positions: 256,
            tied: true,
            attention_bias: false,
            head: Head::Lm,
        }
    }
}

/// The tiny tokenizer: 3 ChatML specials, the 256 byte symbols, and a few English merges.
pub fn tiny_tokenizer() -> ByteLevelBpe {
    let bytes = bytes_to_unicode();
    let mut vocab: Vec<String> = vec![
        "<|endoftext|>".into(),
        "<|im_start|>".into(),
        "<|im_end|>".into(),
    ];
    vocab.extend(bytes.iter().map(|c| c.to_string()));
    let merges_src = [
        ("Ġ", "t"),
        ("h", "e"),
        ("Ġt", "he"),
        ("i", "n"),
        ("Ġ", "a"),
        ("e", "r"),
        ("o", "n"),
        ("r", "e"),
        ("a", "t"),
        ("Ġ", "s"),
        ("e", "n"),
        ("n", "d"),
        ("Ġ", "w"),
        ("o", "r"),
        ("Ġ", "o"),
        ("i", "s"),
        ("Ġa", "nd"),
        ("Ġ", "c"),
        ("e", "s"),
        ("i", "t"),
    ];
    let mut merges = Vec::new();
    for (a, b) in merges_src {
        merges.push((a.to_string(), b.to_string()));
        vocab.push(format!("{a}{b}"));
    }
    ByteLevelBpe {
        vocab,
        merges,
        special_ids: vec![0, 1, 2],
        split_digits: true,
    }
}

/// Write a random model folder: config, weights, tokenizer files and generation config.
pub fn init(cfg: &InitConfig, out: &Path) -> Result<ModelConfig> {
    let tok = tiny_tokenizer();
    let is_gpt2 = cfg.model_type == ModelType::Gpt2;
    // `attention_bias` exists for Llama and Qwen3 only (Qwen2's biases are fixed, Mistral has none).
    let own_bias = matches!(
        cfg.model_type,
        ModelType::Llama | ModelType::Qwen3 | ModelType::SmolLM3
    );
    let model = ModelConfig {
        model_type: cfg.model_type,
        vocab_size: tok.vocab.len(),
        hidden_size: cfg.hidden_size,
        num_hidden_layers: cfg.layers,
        num_attention_heads: cfg.heads,
        num_key_value_heads: if is_gpt2 { cfg.heads } else { cfg.kv_heads },
        head_dim: cfg.head_dim.unwrap_or(cfg.hidden_size / cfg.heads),
        intermediate_size: cfg.intermediate_size,
        max_position_embeddings: cfg.max_positions,
        norm_eps: 1e-5,
        rope_theta: if is_gpt2 { 0.0 } else { 10000.0 },
        rope_scaling: None,
        qkv_bias: is_gpt2 || cfg.model_type == ModelType::Qwen2 || (own_bias && cfg.attention_bias),
        o_bias: is_gpt2 || (own_bias && cfg.attention_bias),
        qk_norm: cfg.model_type == ModelType::Qwen3,
        nope_layers: if cfg.model_type == ModelType::SmolLM3 {
            (0..cfg.layers).filter(|l| (l + 1) % 4 == 0).collect()
        } else {
            vec![]
        },
        tie_word_embeddings: cfg.tied,
        activation: if is_gpt2 {
            Activation::GeluNew
        } else {
            Activation::Silu
        },
        bos_token_id: Some(1),
        eos_token_ids: vec![2],
        pad_token_id: Some(2),
        sliding_window: None,
        num_labels: (cfg.head == Head::Reward).then_some(1),
        extra: serde_json::Map::new(),
    };
    // Round-trip through JSON so that an inconsistent preset is caught by the same validation
    // that user configs get.
    let model = ModelConfig::from_json(
        &model.to_json(model.model_type.causal_lm_class()),
        Path::new("<init>"),
    )?;
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut ckpt = Checkpoint::new();
    for t in layout::tensors(&model, cfg.head) {
        let n: usize = t.shape.iter().product();
        // Norm weights and biases are perturbed away from 1 and 0 so that a model that forgets
        // to apply them computes a visibly different function.
        let values: Vec<f32> = (0..n)
            .map(|_| {
                let u: f32 = rng.random_range(-1.0..1.0);
                match t.role {
                    Role::Matrix => 0.08 * u,
                    Role::Bias => 0.05 * u,
                    Role::NormWeight => 1.0 + 0.2 * u,
                    Role::NormBias => 0.1 * u,
                }
            })
            .collect();
        ckpt.insert(t.name, HostTensor::from_f32(t.shape, &values));
    }
    std::fs::create_dir_all(out).map_err(|e| crate::Error::io(out, e))?;
    let arch = match cfg.head {
        Head::Lm => model.model_type.causal_lm_class(),
        Head::Reward => model.model_type.sequence_classification_class(),
    };
    model.save(out, arch)?;
    ckpt.save(out, None)?;
    tok.save(out)?;
    TokenizerConfig {
        bos_token: Some("<|im_start|>".into()),
        eos_token: Some("<|im_end|>".into()),
        pad_token: Some("<|im_end|>".into()),
        unk_token: Some("<|endoftext|>".into()),
        chat_template: Some(TINY_CHAT_TEMPLATE.into()),
        model_max_length: Some(cfg.max_positions),
    }
    .save(out)?;
    write_generation_config(out, &model)?;
    Ok(model)
}

/// `generation_config.json` with the special ids (greedy by default, as transformers assumes).
pub fn write_generation_config(out: &Path, model: &ModelConfig) -> Result<()> {
    let mut m = serde_json::Map::new();
    if let Some(b) = model.bos_token_id {
        m.insert("bos_token_id".into(), b.into());
    }
    if let Some(e) = model.eos_token_id() {
        m.insert("eos_token_id".into(), e.into());
    }
    if let Some(p) = model.pad_token_id {
        m.insert("pad_token_id".into(), p.into());
    }
    let text = serde_json::to_string_pretty(&serde_json::Value::Object(m)).expect("serializes");
    crate::fsutil::write_atomic(&out.join("generation_config.json"), text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenizer::{TokenId, Tokenizer};

    #[test]
    fn tiny_models_load_back_and_are_deterministic() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        for ty in [
            ModelType::Llama,
            ModelType::Qwen2,
            ModelType::Qwen3,
            ModelType::Gpt2,
        ] {
            let cfg = InitConfig::tiny(ty, 7);
            let m = init(&cfg, a.path()).unwrap();
            init(&cfg, b.path()).unwrap();
            assert_eq!(ModelConfig::load(a.path()).unwrap(), m);
            let wa = std::fs::read(a.path().join("model.safetensors")).unwrap();
            let wb = std::fs::read(b.path().join("model.safetensors")).unwrap();
            assert_eq!(wa, wb, "{ty:?}: same seed must give identical weights");
            let ckpt = Checkpoint::load(a.path()).unwrap();
            assert_eq!(ckpt.tensors.len(), layout::tensors(&m, Head::Lm).len());
        }
    }

    #[test]
    fn tiny_tokenizer_round_trips_text_and_keeps_specials_whole() {
        let dir = tempfile::tempdir().unwrap();
        init(&InitConfig::tiny(ModelType::Llama, 1), dir.path()).unwrap();
        let tok = Tokenizer::load(dir.path()).unwrap();
        assert_eq!(tok.eos(), TokenId(2));
        let text = "The cat sat on the mat, 2024 — naïve café!";
        let ids = tok.encode(text, false).unwrap();
        assert_eq!(tok.decode(&ids, false).unwrap(), text);
        // " the" is one merged token; digits are split one by one.
        assert!(ids.contains(&TokenId(tok.inner().token_to_id("Ġthe").unwrap())));
        let digits = tok.encode("2024", false).unwrap();
        assert_eq!(digits.len(), 4);
        let chat = tok.encode("<|im_start|>user\nhi<|im_end|>", false).unwrap();
        assert_eq!(chat.first(), Some(&TokenId(1)));
        assert_eq!(chat.last(), Some(&TokenId(2)));
    }
}
