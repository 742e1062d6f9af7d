//! Building blocks shared by the Llama family and GPT-2: projections, norms, rotary embeddings and
//! masked attention. Each one computes what its Hugging Face counterpart computes in fp32, with the
//! same libtorch kernels where there is one (`F.linear`, `F.layer_norm`, `addmm`, SDPA), so the
//! results agree to rounding.

use tch::{Kind, Tensor};

/// `nn.Linear` with Hugging Face's weight layout `[out, in]`, optionally with a LoRA adapter
/// (PEFT's `lora.Linear`: the base output plus the adapter's, see `super::lora`).
pub(crate) struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub lora: Option<super::lora::Lora>,
}

impl Linear {
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let y = x.linear(&self.weight, self.bias.as_ref());
        match self.lora.as_ref().and_then(|l| l.delta(x)) {
            Some(d) => y + d,
            None => y,
        }
    }
}

/// GPT-2's `Conv1D`: a linear layer whose weight is stored `[in, out]`, computed as
/// `addmm(bias, x, weight)` exactly as transformers does.
pub(crate) struct Conv1D {
    pub weight: Tensor,
    pub bias: Tensor,
}

impl Conv1D {
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let mut out_shape = x.size();
        let n_in = *out_shape
            .last()
            .expect("Conv1D input has a feature dimension; this is a bug");
        *out_shape.last_mut().expect("non-empty shape") = self.weight.size()[1];
        self.bias
            .addmm(&x.reshape([-1, n_in]), &self.weight)
            .view(out_shape.as_slice())
    }
}

/// `LlamaRMSNorm`: `w * (x * rsqrt(mean(x^2) + eps))`, with the statistics in fp32.
pub(crate) struct RmsNorm {
    pub weight: Tensor,
    pub eps: f64,
}

impl RmsNorm {
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let kind = x.kind();
        let x32 = x.to_kind(Kind::Float);
        let variance = x32.square().mean_dim(-1, true, Kind::Float);
        let normed = (x32 * (variance + self.eps).rsqrt()).to_kind(kind);
        &self.weight * normed
    }
}

/// `nn.LayerNorm` over the last dimension.
pub(crate) struct LayerNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub eps: f64,
}

impl LayerNorm {
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let h = self.weight.size()[0];
        x.layer_norm([h], Some(&self.weight), Some(&self.bias), self.eps, true)
    }
}

/// Rotary position embedding in Hugging Face's rotate-half layout: dimension `j` pairs with
/// `j + head_dim/2`, both rotated by `position * inv_freq[j]`.
pub(crate) struct Rotary {
    /// `[head_dim / 2]`, fp32, from `ModelConfig::rope_inv_freq` (the one shared implementation).
    inv_freq: Tensor,
}

impl Rotary {
    pub fn new(inv_freq: &[f64], device: tch::Device) -> Self {
        let f: Vec<f32> = inv_freq.iter().map(|&v| v as f32).collect();
        Rotary {
            inv_freq: Tensor::from_slice(&f).to_device(device),
        }
    }

    /// `(cos, sin)`, each `[B, 1, T, head_dim]`, for integer `positions` `[B, T]`.
    pub fn cos_sin(&self, positions: &Tensor) -> (Tensor, Tensor) {
        // transformers computes `inv_freq @ positions` with an inner dimension of 1, which is the
        // plain product below, bit for bit.
        let freqs = positions.to_kind(Kind::Float).unsqueeze(-1) * &self.inv_freq;
        let emb = Tensor::cat(&[&freqs, &freqs], -1).unsqueeze(1);
        (emb.cos(), emb.sin())
    }
}

/// `x * cos + rotate_half(x) * sin` for `x` `[B, H, T, D]`.
pub(crate) fn apply_rotary(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
    let half = x.size()[3] / 2;
    let x1 = x.narrow(3, 0, half);
    let x2 = x.narrow(3, half, half);
    let rotated = Tensor::cat(&[&x2.neg(), &x1], 3);
    x * cos + rotated * sin
}

/// Position ids from the attention mask: `cumsum(mask) - 1`, clamped at 0, so a left-padded row
/// starts its real tokens at position 0 (what `generate` does; padding positions get 0).
pub(crate) fn positions_from_mask(mask: &Tensor) -> Tensor {
    (mask.cumsum(-1, Kind::Int64) - 1).clamp_min(0)
}

/// The attention pattern of one batch: causal, and no attention to padding keys.
pub(crate) enum AttnMask {
    /// No padding anywhere: SDPA's own causal path (what transformers uses in that case too).
    Causal,
    /// `[B, 1, T, T]` boolean, true = may attend.
    Explicit(Tensor),
}

impl AttnMask {
    /// Build the mask for `mask` `[B, T]` (1 = token, 0 = padding). A padding query would have no
    /// key left to attend to and SDPA would return NaN for it, which poisons gradients even when
    /// the position is masked out of the loss; so every query may also attend to itself. For a real
    /// token the diagonal is already allowed, so real positions are unaffected.
    ///
    /// With a sliding `window` (Mistral), query `i` sees keys `j` with `i - window < j ≤ i`, as
    /// transformers' `sliding_window_overlay` (by index, like its cache positions).
    pub fn new(mask: &Tensor, window: Option<usize>) -> AttnMask {
        let keep = mask.ne(0);
        let t = mask.size()[1];
        let window = window.filter(|&w| (w as i64) < t);
        if window.is_none() && keep.all().to_kind(Kind::Int64).int64_value(&[]) != 0 {
            return AttnMask::Causal;
        }
        let opts = (Kind::Bool, mask.device());
        let mut causal = Tensor::ones([t, t], opts).tril(0);
        if let Some(w) = window {
            causal =
                causal.logical_and(&Tensor::ones([t, t], opts).tril(-(w as i64)).logical_not());
        }
        let eye = Tensor::eye(t, opts);
        let keys = keep.unsqueeze(1).unsqueeze(1); // [B, 1, 1, T]
        AttnMask::Explicit(causal.logical_and(&keys).logical_or(&eye))
    }

    /// Scaled dot-product attention over `[B, H, T, D]` queries/keys/values with `scale`.
    pub fn attend(&self, q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Tensor {
        match self {
            AttnMask::Causal => Tensor::scaled_dot_product_attention(
                q,
                k,
                v,
                None::<Tensor>,
                0.0,
                true,
                scale,
                false,
            ),
            AttnMask::Explicit(m) => {
                Tensor::scaled_dot_product_attention(q, k, v, Some(m), 0.0, false, scale, false)
            }
        }
    }
}

/// `[B, T, H*D]` → `[B, H, T, D]`.
pub(crate) fn split_heads(x: &Tensor, heads: i64, head_dim: i64) -> Tensor {
    let (b, t) = (x.size()[0], x.size()[1]);
    x.view([b, t, heads, head_dim]).transpose(1, 2)
}

/// `[B, H, T, D]` → `[B, T, H*D]`.
pub(crate) fn merge_heads(x: &Tensor) -> Tensor {
    let s = x.size();
    x.transpose(1, 2)
        .contiguous()
        .view([s[0], s[2], s[1] * s[3]])
}

/// Grouped-query attention: repeat each key/value head `groups` times, head `h` using KV head
/// `h / groups` (transformers' `repeat_kv`).
pub(crate) fn repeat_kv(x: &Tensor, groups: i64) -> Tensor {
    if groups == 1 {
        return x.shallow_clone();
    }
    let s = x.size();
    x.unsqueeze(2)
        .expand([s[0], s[1], groups, s[2], s[3]], false)
        .reshape([s[0], s[1] * groups, s[2], s[3]])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_count_real_tokens_from_the_left() {
        let mask = Tensor::from_slice(&[0i64, 0, 1, 1, 1, 1, 1, 0]).view([2, 4]);
        let p = positions_from_mask(&mask);
        let got: Vec<i64> = Vec::try_from(p.flatten(0, -1)).unwrap();
        assert_eq!(got, vec![0, 0, 0, 1, 0, 1, 2, 2]);
    }

    #[test]
    fn rotate_half_rotates_pairs_j_and_j_plus_half() {
        // One head of dim 4 at angle theta for both pairs: (x0, x2) and (x1, x3) rotate.
        let x = Tensor::from_slice(&[1f32, 2.0, 3.0, 4.0]).view([1, 1, 1, 4]);
        let theta = 0.5f32;
        let cos = Tensor::from_slice(&[theta.cos(); 4]).view([1, 1, 1, 4]);
        let sin = Tensor::from_slice(&[theta.sin(); 4]).view([1, 1, 1, 4]);
        let y: Vec<f32> = Vec::try_from(apply_rotary(&x, &cos, &sin).flatten(0, -1)).unwrap();
        let (c, s) = (theta.cos(), theta.sin());
        let want = [
            1.0 * c - 3.0 * s,
            2.0 * c - 4.0 * s,
            3.0 * c + 1.0 * s,
            4.0 * c + 2.0 * s,
        ];
        for (a, b) in y.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{y:?} vs {want:?}");
        }
    }

    #[test]
    fn padding_queries_attend_to_themselves_only() {
        let mask = Tensor::from_slice(&[0i64, 1, 1]).view([1, 3]);
        let AttnMask::Explicit(m) = AttnMask::new(&mask, None) else {
            panic!("padding needs an explicit mask")
        };
        let got: Vec<bool> = Vec::try_from(m.flatten(0, -1)).unwrap();
        #[rustfmt::skip]
        let want = vec![true, false, false,
                        false, true, false,
                        false, true, true];
        assert_eq!(got, want);
        assert!(matches!(
            AttnMask::new(&Tensor::ones([2, 3], (Kind::Int64, tch::Device::Cpu)), None),
            AttnMask::Causal
        ));
    }

    #[test]
    fn repeat_kv_maps_query_head_h_to_kv_head_h_over_groups() {
        let x = Tensor::from_slice(&[10f32, 20.0]).view([1, 2, 1, 1]);
        let y: Vec<f32> = Vec::try_from(repeat_kv(&x, 3).flatten(0, -1)).unwrap();
        assert_eq!(y, vec![10.0, 10.0, 10.0, 20.0, 20.0, 20.0]);
    }
}
