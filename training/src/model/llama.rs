//! The Llama family (Llama, Mistral, Qwen2) on libtorch, following transformers'
//! `modeling_llama.py`: pre-norm blocks of RMSNorm → attention with rotary positions and
//! grouped-query heads → residual, RMSNorm → SwiGLU MLP → residual; a final RMSNorm.
//!
//! Qwen2 differs only by biases on q/k/v (and Llama's optional `attention_bias` adds o_proj's);
//! Qwen3 adds a per-head RMSNorm of q and k (`q_norm`, `k_norm`, `[head_dim]`) after the
//! projections and before the rotary embedding, as `modeling_qwen3.py` does; SmolLM3 skips the
//! rotary embedding on its NoPE layers (`no_rope_layers`);
//! Mistral's sliding window is applied in the attention mask.

use tch::Tensor;

use super::layers::{
    apply_rotary, merge_heads, repeat_kv, split_heads, AttnMask, Linear, RmsNorm, Rotary,
};
use super::Params;
use exports::ModelConfig;

struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    /// Qwen3's per-head norms of q and k.
    qk_norm: Option<(RmsNorm, RmsNorm)>,
    /// False on SmolLM3's NoPE layers.
    rope: bool,
    heads: i64,
    kv_heads: i64,
    head_dim: i64,
}

impl Attention {
    fn forward(&self, x: &Tensor, cos: &Tensor, sin: &Tensor, mask: &AttnMask) -> Tensor {
        let q = split_heads(&self.q_proj.forward(x), self.heads, self.head_dim);
        let k = split_heads(&self.k_proj.forward(x), self.kv_heads, self.head_dim);
        let v = split_heads(&self.v_proj.forward(x), self.kv_heads, self.head_dim);
        let (q, k) = match &self.qk_norm {
            Some((qn, kn)) => (qn.forward(&q), kn.forward(&k)),
            None => (q, k),
        };
        let (q, k) = if self.rope {
            (apply_rotary(&q, cos, sin), apply_rotary(&k, cos, sin))
        } else {
            (q, k)
        };
        let groups = self.heads / self.kv_heads;
        let k = repeat_kv(&k, groups);
        let v = repeat_kv(&v, groups);
        let scale = (self.head_dim as f64).powf(-0.5);
        let out = mask.attend(&q, &k, &v, scale);
        self.o_proj.forward(&merge_heads(&out))
    }
}

struct Mlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

impl Mlp {
    fn forward(&self, x: &Tensor) -> Tensor {
        self.down_proj
            .forward(&(self.gate_proj.forward(x).silu() * self.up_proj.forward(x)))
    }
}

struct Block {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
}

impl Block {
    // `x + h`, not `x += h`: tch's `+=` adds in place, which would overwrite a tensor that
    // autograd saved for the backward pass of the previous norm.
    fn forward(&self, x: &Tensor, cos: &Tensor, sin: &Tensor, mask: &AttnMask) -> Tensor {
        let h = self
            .self_attn
            .forward(&self.input_layernorm.forward(x), cos, sin, mask);
        let x = x + h;
        let h = self.mlp.forward(&self.post_attention_layernorm.forward(&x));
        x + h
    }
}

pub(crate) struct Llama {
    embed_tokens: Tensor,
    layers: Vec<Block>,
    norm: RmsNorm,
    rotary: Rotary,
}

impl Llama {
    /// Take this architecture's tensors out of `params` (declared from `exports::layout::tensors`).
    pub fn new(params: &mut Params, cfg: &ModelConfig) -> anyhow::Result<Self> {
        let eps = cfg.norm_eps;
        let linear = |params: &mut Params, name: &str, bias: bool| -> anyhow::Result<Linear> {
            Ok(Linear {
                weight: params.take(&format!("{name}.weight"))?,
                bias: if bias {
                    Some(params.take(&format!("{name}.bias"))?)
                } else {
                    None
                },
                lora: None,
            })
        };
        let embed_tokens = params.take("model.embed_tokens.weight")?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for l in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{l}");
            let a = format!("{p}.self_attn");
            let m = format!("{p}.mlp");
            layers.push(Block {
                input_layernorm: RmsNorm {
                    weight: params.take(&format!("{p}.input_layernorm.weight"))?,
                    eps,
                },
                self_attn: Attention {
                    q_proj: linear(params, &format!("{a}.q_proj"), cfg.qkv_bias)?,
                    k_proj: linear(params, &format!("{a}.k_proj"), cfg.qkv_bias)?,
                    v_proj: linear(params, &format!("{a}.v_proj"), cfg.qkv_bias)?,
                    o_proj: linear(params, &format!("{a}.o_proj"), cfg.o_bias)?,
                    qk_norm: if cfg.qk_norm {
                        let norm = |params: &mut Params, n: &str| -> anyhow::Result<RmsNorm> {
                            Ok(RmsNorm {
                                weight: params.take(&format!("{a}.{n}.weight"))?,
                                eps,
                            })
                        };
                        Some((norm(params, "q_norm")?, norm(params, "k_norm")?))
                    } else {
                        None
                    },
                    rope: !cfg.nope_layers.contains(&l),
                    heads: cfg.num_attention_heads as i64,
                    kv_heads: cfg.num_key_value_heads as i64,
                    head_dim: cfg.head_dim as i64,
                },
                post_attention_layernorm: RmsNorm {
                    weight: params.take(&format!("{p}.post_attention_layernorm.weight"))?,
                    eps,
                },
                mlp: Mlp {
                    gate_proj: linear(params, &format!("{m}.gate_proj"), false)?,
                    up_proj: linear(params, &format!("{m}.up_proj"), false)?,
                    down_proj: linear(params, &format!("{m}.down_proj"), false)?,
                },
            });
        }
        let norm = RmsNorm {
            weight: params.take("model.norm.weight")?,
            eps,
        };
        let rotary = Rotary::new(&cfg.rope_inv_freq(), embed_tokens.device());
        Ok(Llama {
            embed_tokens,
            layers,
            norm,
            rotary,
        })
    }

    /// Every projection with its module path (`model.layers.0.self_attn.q_proj`), in layer order,
    /// for attaching LoRA adapters.
    pub fn projections_mut(&mut self) -> Vec<(String, &mut Linear)> {
        let mut out = Vec::new();
        for (l, b) in self.layers.iter_mut().enumerate() {
            let a = &mut b.self_attn;
            let m = &mut b.mlp;
            for (name, lin) in [
                ("self_attn.q_proj", &mut a.q_proj),
                ("self_attn.k_proj", &mut a.k_proj),
                ("self_attn.v_proj", &mut a.v_proj),
                ("self_attn.o_proj", &mut a.o_proj),
                ("mlp.gate_proj", &mut m.gate_proj),
                ("mlp.up_proj", &mut m.up_proj),
                ("mlp.down_proj", &mut m.down_proj),
            ] {
                out.push((format!("model.layers.{l}.{name}"), lin));
            }
        }
        out
    }

    /// The input embedding matrix (the output head too when tied).
    pub fn embedding(&self) -> &Tensor {
        &self.embed_tokens
    }

    /// Final-norm hidden states `[B, T, H]`; `positions` `[B, T]`.
    pub fn hidden_states(&self, input_ids: &Tensor, positions: &Tensor, mask: &AttnMask) -> Tensor {
        let (cos, sin) = self.rotary(positions);
        let mut x = self.embed(input_ids);
        for block in &self.layers {
            x = block.forward(&x, &cos, &sin, mask);
        }
        self.finish(&x)
    }

    /// The rotary tables `(cos, sin)` of `positions`, shared by every block.
    pub fn rotary(&self, positions: &Tensor) -> (Tensor, Tensor) {
        self.rotary.cos_sin(positions)
    }

    /// The residual stream entering block 0.
    pub fn embed(&self, input_ids: &Tensor) -> Tensor {
        Tensor::embedding(&self.embed_tokens, input_ids, -1, false, false)
    }

    pub fn num_blocks(&self) -> usize {
        self.layers.len()
    }

    /// Block `i` on the residual stream `x`.
    pub fn block(
        &self,
        i: usize,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: &AttnMask,
    ) -> Tensor {
        self.layers[i].forward(x, cos, sin, mask)
    }

    /// The final norm.
    pub fn finish(&self, x: &Tensor) -> Tensor {
        self.norm.forward(x)
    }
}
