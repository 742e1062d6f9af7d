//! The Hugging Face tensor names and shapes of each supported architecture. Training builds its
//! parameters from this list, the ONNX writer reads initializers by it, and `init` fills it with
//! random values — one list, so the three cannot drift apart.

use crate::config::ModelConfig;

/// Which head sits on the backbone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Head {
    /// Causal LM: `lm_head.weight` (absent when tied to the input embedding).
    Lm,
    /// Reward model: `score.weight` `[1, hidden]` on the last non-padding token.
    Reward,
}

/// What kind of values a tensor holds, so initialisation can pick a sensible distribution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Matrix,
    Bias,
    NormWeight,
    NormBias,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub role: Role,
}

fn spec(name: String, shape: Vec<usize>, role: Role) -> TensorSpec {
    TensorSpec { name, shape, role }
}

/// Every tensor of a checkpoint of `cfg` with `head`, in a stable order.
pub fn tensors(cfg: &ModelConfig, head: Head) -> Vec<TensorSpec> {
    let h = cfg.hidden_size;
    let v = cfg.vocab_size;
    let mut out = Vec::new();
    if cfg.model_type.is_llama_family() {
        let q = cfg.num_attention_heads * cfg.head_dim;
        let kv = cfg.num_key_value_heads * cfg.head_dim;
        let i = cfg.intermediate_size;
        out.push(spec(
            "model.embed_tokens.weight".into(),
            vec![v, h],
            Role::Matrix,
        ));
        for l in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{l}");
            out.push(spec(
                format!("{p}.input_layernorm.weight"),
                vec![h],
                Role::NormWeight,
            ));
            out.push(spec(
                format!("{p}.self_attn.q_proj.weight"),
                vec![q, h],
                Role::Matrix,
            ));
            out.push(spec(
                format!("{p}.self_attn.k_proj.weight"),
                vec![kv, h],
                Role::Matrix,
            ));
            out.push(spec(
                format!("{p}.self_attn.v_proj.weight"),
                vec![kv, h],
                Role::Matrix,
            ));
            if cfg.qkv_bias {
                out.push(spec(
                    format!("{p}.self_attn.q_proj.bias"),
                    vec![q],
                    Role::Bias,
                ));
                out.push(spec(
                    format!("{p}.self_attn.k_proj.bias"),
                    vec![kv],
                    Role::Bias,
                ));
                out.push(spec(
                    format!("{p}.self_attn.v_proj.bias"),
                    vec![kv],
                    Role::Bias,
                ));
            }
            out.push(spec(
                format!("{p}.self_attn.o_proj.weight"),
                vec![h, q],
                Role::Matrix,
            ));
            if cfg.o_bias {
                out.push(spec(
                    format!("{p}.self_attn.o_proj.bias"),
                    vec![h],
                    Role::Bias,
                ));
            }
            if cfg.qk_norm {
                for n in ["q_norm", "k_norm"] {
                    out.push(spec(
                        format!("{p}.self_attn.{n}.weight"),
                        vec![cfg.head_dim],
                        Role::NormWeight,
                    ));
                }
            }
            out.push(spec(
                format!("{p}.post_attention_layernorm.weight"),
                vec![h],
                Role::NormWeight,
            ));
            out.push(spec(
                format!("{p}.mlp.gate_proj.weight"),
                vec![i, h],
                Role::Matrix,
            ));
            out.push(spec(
                format!("{p}.mlp.up_proj.weight"),
                vec![i, h],
                Role::Matrix,
            ));
            out.push(spec(
                format!("{p}.mlp.down_proj.weight"),
                vec![h, i],
                Role::Matrix,
            ));
        }
        out.push(spec("model.norm.weight".into(), vec![h], Role::NormWeight));
    } else {
        let i = cfg.intermediate_size;
        out.push(spec(
            "transformer.wte.weight".into(),
            vec![v, h],
            Role::Matrix,
        ));
        out.push(spec(
            "transformer.wpe.weight".into(),
            vec![cfg.max_position_embeddings, h],
            Role::Matrix,
        ));
        for l in 0..cfg.num_hidden_layers {
            let p = format!("transformer.h.{l}");
            out.push(spec(format!("{p}.ln_1.weight"), vec![h], Role::NormWeight));
            out.push(spec(format!("{p}.ln_1.bias"), vec![h], Role::NormBias));
            // GPT-2 uses Conv1D: weights are stored [in, out].
            out.push(spec(
                format!("{p}.attn.c_attn.weight"),
                vec![h, 3 * h],
                Role::Matrix,
            ));
            out.push(spec(
                format!("{p}.attn.c_attn.bias"),
                vec![3 * h],
                Role::Bias,
            ));
            out.push(spec(
                format!("{p}.attn.c_proj.weight"),
                vec![h, h],
                Role::Matrix,
            ));
            out.push(spec(format!("{p}.attn.c_proj.bias"), vec![h], Role::Bias));
            out.push(spec(format!("{p}.ln_2.weight"), vec![h], Role::NormWeight));
            out.push(spec(format!("{p}.ln_2.bias"), vec![h], Role::NormBias));
            out.push(spec(
                format!("{p}.mlp.c_fc.weight"),
                vec![h, i],
                Role::Matrix,
            ));
            out.push(spec(format!("{p}.mlp.c_fc.bias"), vec![i], Role::Bias));
            out.push(spec(
                format!("{p}.mlp.c_proj.weight"),
                vec![i, h],
                Role::Matrix,
            ));
            out.push(spec(format!("{p}.mlp.c_proj.bias"), vec![h], Role::Bias));
        }
        out.push(spec(
            "transformer.ln_f.weight".into(),
            vec![h],
            Role::NormWeight,
        ));
        out.push(spec(
            "transformer.ln_f.bias".into(),
            vec![h],
            Role::NormBias,
        ));
    }
    match head {
        Head::Lm if !cfg.tie_word_embeddings => {
            out.push(spec("lm_head.weight".into(), vec![v, h], Role::Matrix))
        }
        Head::Lm => {}
        Head::Reward => out.push(spec("score.weight".into(), vec![1, h], Role::Matrix)),
    }
    out
}

/// The name of the input embedding matrix (also the output head when tied).
pub fn embedding_name(cfg: &ModelConfig) -> &'static str {
    if cfg.model_type.is_llama_family() {
        "model.embed_tokens.weight"
    } else {
        "transformer.wte.weight"
    }
}
