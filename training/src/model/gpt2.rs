//! GPT-2 on libtorch, following transformers' `modeling_gpt2.py`: token + learned position
//! embeddings, pre-norm blocks of LayerNorm → attention (fused `c_attn` split into q, k, v) →
//! residual, LayerNorm → MLP with `gelu_new` → residual, and a final LayerNorm. Projections are
//! `Conv1D` (weights stored `[in, out]`).

use tch::Tensor;

use super::layers::{merge_heads, split_heads, AttnMask, Conv1D, LayerNorm};
use super::Params;
use exports::ModelConfig;

struct Attention {
    c_attn: Conv1D,
    c_proj: Conv1D,
    heads: i64,
    head_dim: i64,
}

impl Attention {
    fn forward(&self, x: &Tensor, mask: &AttnMask) -> Tensor {
        let hidden = self.heads * self.head_dim;
        let qkv = self.c_attn.forward(x).split(hidden, 2);
        let q = split_heads(&qkv[0], self.heads, self.head_dim);
        let k = split_heads(&qkv[1], self.heads, self.head_dim);
        let v = split_heads(&qkv[2], self.heads, self.head_dim);
        let scale = (self.head_dim as f64).powf(-0.5);
        let out = mask.attend(&q, &k, &v, scale);
        self.c_proj.forward(&merge_heads(&out))
    }
}

struct Mlp {
    c_fc: Conv1D,
    c_proj: Conv1D,
}

impl Mlp {
    fn forward(&self, x: &Tensor) -> Tensor {
        // `gelu_new` is GELU's tanh approximation; libtorch's fused kernel computes the same
        // formula (differences are at float rounding level).
        self.c_proj.forward(&self.c_fc.forward(x).gelu("tanh"))
    }
}

struct Block {
    ln_1: LayerNorm,
    attn: Attention,
    ln_2: LayerNorm,
    mlp: Mlp,
}

impl Block {
    // `x + a`, not `x += a`: tch's `+=` adds in place, which would overwrite a tensor that
    // autograd saved for the backward pass of the previous norm.
    fn forward(&self, x: &Tensor, mask: &AttnMask) -> Tensor {
        let a = self.attn.forward(&self.ln_1.forward(x), mask);
        let x = x + a;
        let m = self.mlp.forward(&self.ln_2.forward(&x));
        x + m
    }
}

pub(crate) struct Gpt2 {
    wte: Tensor,
    wpe: Tensor,
    h: Vec<Block>,
    ln_f: LayerNorm,
}

impl Gpt2 {
    /// Take this architecture's tensors out of `params` (declared from `exports::layout::tensors`).
    pub fn new(params: &mut Params, cfg: &ModelConfig) -> anyhow::Result<Self> {
        let eps = cfg.norm_eps;
        let conv = |params: &mut Params, name: &str| -> anyhow::Result<Conv1D> {
            Ok(Conv1D {
                weight: params.take(&format!("{name}.weight"))?,
                bias: params.take(&format!("{name}.bias"))?,
            })
        };
        let norm = |params: &mut Params, name: &str| -> anyhow::Result<LayerNorm> {
            Ok(LayerNorm {
                weight: params.take(&format!("{name}.weight"))?,
                bias: params.take(&format!("{name}.bias"))?,
                eps,
            })
        };
        let wte = params.take("transformer.wte.weight")?;
        let wpe = params.take("transformer.wpe.weight")?;
        let mut h = Vec::with_capacity(cfg.num_hidden_layers);
        for l in 0..cfg.num_hidden_layers {
            let p = format!("transformer.h.{l}");
            h.push(Block {
                ln_1: norm(params, &format!("{p}.ln_1"))?,
                attn: Attention {
                    c_attn: conv(params, &format!("{p}.attn.c_attn"))?,
                    c_proj: conv(params, &format!("{p}.attn.c_proj"))?,
                    heads: cfg.num_attention_heads as i64,
                    head_dim: cfg.head_dim as i64,
                },
                ln_2: norm(params, &format!("{p}.ln_2"))?,
                mlp: Mlp {
                    c_fc: conv(params, &format!("{p}.mlp.c_fc"))?,
                    c_proj: conv(params, &format!("{p}.mlp.c_proj"))?,
                },
            });
        }
        let ln_f = norm(params, "transformer.ln_f")?;
        Ok(Gpt2 { wte, wpe, h, ln_f })
    }

    /// The token embedding matrix (the output head too when tied).
    pub fn embedding(&self) -> &Tensor {
        &self.wte
    }

    /// Final-norm hidden states `[B, T, H]`; `positions` `[B, T]` index the learned positions.
    pub fn hidden_states(&self, input_ids: &Tensor, positions: &Tensor, mask: &AttnMask) -> Tensor {
        let mut x = self.embed(input_ids, positions);
        for block in &self.h {
            x = block.forward(&x, mask);
        }
        self.finish(&x)
    }

    /// The residual stream entering block 0: token plus position embeddings.
    pub fn embed(&self, input_ids: &Tensor, positions: &Tensor) -> Tensor {
        Tensor::embedding(&self.wte, input_ids, -1, false, false)
            + Tensor::embedding(&self.wpe, positions, -1, false, false)
    }

    pub fn num_blocks(&self) -> usize {
        self.h.len()
    }

    /// Block `i` on the residual stream `x`.
    pub fn block(&self, i: usize, x: &Tensor, mask: &AttnMask) -> Tensor {
        self.h[i].forward(x, mask)
    }

    /// The final layer norm.
    pub fn finish(&self, x: &Tensor) -> Tensor {
        self.ln_f.forward(x)
    }
}
