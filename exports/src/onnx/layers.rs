//! Graph pieces shared by the architectures: the decoder inputs, weights read from a checkpoint,
//! standard-op attention with a KV cache, norms, and the output heads.

use super::builder::{Dim, Elem, GraphBuilder, Value};
use super::quant::{self, WeightFormat};
use crate::checkpoint::Checkpoint;
use crate::config::ModelConfig;
use crate::error::Result;

/// Symbolic dimension names (those of onnxruntime-genai's builder).
pub const BATCH: &str = "batch_size";
pub const SEQ: &str = "sequence_length";
pub const TOTAL: &str = "total_sequence_length";
pub const PAST: &str = "past_sequence_length";

/// Which head the graph ends in, and how many positions it scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadKind {
    /// `logits` `[batch, seq, vocab]`.
    Lm,
    /// `logits` `[batch, 1, vocab]` at each row's last real token of this step.
    LmLast,
    /// `score` `[batch]` at each row's last real token.
    Reward,
}

/// The graph inputs of a decoder with a KV cache.
pub struct DecoderInputs {
    pub input_ids: Value,
    pub attention_mask: Value,
    pub position_ids: Option<Value>,
    pub past_keys: Vec<Value>,
    pub past_values: Vec<Value>,
}

/// Declare the inputs in onnxruntime-genai's order: ids, mask, [positions], all keys, all values.
pub fn decoder_inputs(
    g: &mut GraphBuilder,
    cfg: &ModelConfig,
    elem: Elem,
    position_ids: bool,
) -> DecoderInputs {
    let bs = [Dim::sym(BATCH), Dim::sym(SEQ)];
    let input_ids = g.input("input_ids", Elem::I64, &bs);
    let attention_mask = g.input(
        "attention_mask",
        Elem::I64,
        &[Dim::sym(BATCH), Dim::sym(TOTAL)],
    );
    let position_ids = position_ids.then(|| g.input("position_ids", Elem::I64, &bs));
    let kv = kv_dims(cfg, PAST);
    let past_keys = (0..cfg.num_hidden_layers)
        .map(|i| g.input(&format!("past_key_values.{i}.key"), elem, &kv))
        .collect();
    let past_values = (0..cfg.num_hidden_layers)
        .map(|i| g.input(&format!("past_key_values.{i}.value"), elem, &kv))
        .collect();
    DecoderInputs {
        input_ids,
        attention_mask,
        position_ids,
        past_keys,
        past_values,
    }
}

/// `[batch, kv_heads, {len}, head_dim]`.
pub fn kv_dims(cfg: &ModelConfig, len: &str) -> Vec<Dim> {
    vec![
        Dim::sym(BATCH),
        Dim::Fixed(cfg.num_key_value_heads),
        Dim::sym(len),
        Dim::Fixed(cfg.head_dim),
    ]
}

/// Declare `present.{i}.key|value` outputs.
pub fn present_outputs(g: &mut GraphBuilder, cfg: &ModelConfig, keys: &[Value], values: &[Value]) {
    let dims = kv_dims(cfg, TOTAL);
    for (i, k) in keys.iter().enumerate() {
        g.output(k, &format!("present.{i}.key"), &dims);
    }
    for (i, v) in values.iter().enumerate() {
        g.output(v, &format!("present.{i}.value"), &dims);
    }
}

/// Checkpoint tensors as f32 host values, in the layouts the graph wants.
pub struct Weights<'a> {
    pub ckpt: &'a Checkpoint,
    /// The element type weights are stored as.
    pub elem: Elem,
    /// How the projections and the LM head are stored ([`Weights::put_proj`]).
    pub format: WeightFormat,
}

/// The right operand of a projection `x · W`, `W` `[k, n]`, in the export's weight format.
pub enum LinearWeight {
    Float(Value),
    /// int8 `[k, n]` (7-bit values, [`quant::WEIGHT_QMAX`]) and f32 column scales `[n]`.
    Int8 {
        q: Value,
        scales: Value,
        /// Input width (the row length the activations are quantized over).
        k: usize,
    },
}

impl Weights<'_> {
    pub fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>> {
        self.ckpt.get_shaped(name, &[len])?.to_f32()
    }

    pub fn matrix(&self, name: &str, rows: usize, cols: usize) -> Result<Vec<f32>> {
        self.ckpt.get_shaped(name, &[rows, cols])?.to_f32()
    }

    /// A norm weight or bias as a graph weight named `onnx_name`.
    pub fn put_vector(
        &self,
        g: &mut GraphBuilder,
        name: &str,
        len: usize,
        onnx_name: &str,
    ) -> Result<Value> {
        let v = self.vector(name, len)?;
        Ok(g.weight_f32(onnx_name, self.elem, &[len], &v))
    }

    /// Stack PyTorch `Linear` weights `[out_k, in]` along the output dimension and store the
    /// transpose `[in, Σ out_k]`, the right operand of `MatMul`.
    pub fn put_linear_t(
        &self,
        g: &mut GraphBuilder,
        parts: &[(&str, usize)],
        cols: usize,
        onnx_name: &str,
    ) -> Result<Value> {
        let mut stacked = Vec::new();
        for (name, rows) in parts {
            stacked.extend(self.matrix(name, *rows, cols)?);
        }
        let rows: usize = parts.iter().map(|p| p.1).sum();
        let t = transpose(&stacked, rows, cols);
        Ok(g.weight_f32(onnx_name, self.elem, &[cols, rows], &t))
    }

    /// Like [`Weights::put_linear_t`], in the export's weight format (named `{onnx_name}` for
    /// floats; `{onnx_name}.q` and `{onnx_name}.scales` for int8).
    pub fn put_proj(
        &self,
        g: &mut GraphBuilder,
        parts: &[(&str, usize)],
        cols: usize,
        onnx_name: &str,
    ) -> Result<LinearWeight> {
        if self.format == WeightFormat::Float {
            return Ok(LinearWeight::Float(
                self.put_linear_t(g, parts, cols, onnx_name)?,
            ));
        }
        let mut stacked = Vec::new();
        for (name, rows) in parts {
            stacked.extend(self.matrix(name, *rows, cols)?);
        }
        let n: usize = parts.iter().map(|p| p.1).sum();
        let k = cols;
        Ok(match self.format {
            WeightFormat::Float => unreachable!("handled above"),
            WeightFormat::Int8 => {
                let t = transpose(&stacked, n, k);
                let qc = quant::per_column_int8(&t, k, n);
                let bytes = qc.q.iter().map(|v| *v as u8).collect();
                LinearWeight::Int8 {
                    q: g.weight(&format!("{onnx_name}.q"), Elem::I8, &[k, n], bytes),
                    scales: g.weight_f32(
                        &format!("{onnx_name}.scales"),
                        Elem::F32,
                        &[n],
                        &qc.scales,
                    ),
                    k,
                }
            }
        })
    }

    /// Concatenate bias vectors (`None` entries contribute zeros).
    pub fn put_bias(
        &self,
        g: &mut GraphBuilder,
        parts: &[(Option<&str>, usize)],
        onnx_name: &str,
    ) -> Result<Value> {
        let mut v = Vec::new();
        for (name, len) in parts {
            match name {
                Some(n) => v.extend(self.vector(n, *len)?),
                None => v.extend(std::iter::repeat_n(0.0, *len)),
            }
        }
        Ok(g.weight_f32(onnx_name, self.elem, &[v.len()], &v))
    }
}

/// Row-major `[rows, cols]` → `[cols, rows]`.
pub fn transpose(m: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0.0; m.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = m[r * cols + c];
        }
    }
    t
}

/// `dim(x, axis)` as an int64 scalar.
pub fn dim_scalar(g: &mut GraphBuilder, x: &Value, axis: i64) -> Value {
    let shape = g.op("Shape", &[x]).elem(Elem::I64).build();
    let idx = g.int_scalar(axis);
    g.op("Gather", &[&shape, &idx]).attr("axis", 0i64).build()
}

/// `x · W (+ b)`.
pub fn linear(g: &mut GraphBuilder, x: &Value, w: &Value, b: Option<&Value>) -> Value {
    let y = g.matmul(x, w);
    match b {
        Some(b) => g.add(&y, b),
        None => y,
    }
}

/// `x` `[.., k]` f32 quantized per row for an int8 product: `s = max|x| / 127` over the last axis
/// (kept as `[.., 1]`), `q = clamp(rint(x / s), -127, 127) + 128` as uint8 (zero point 128, the
/// u8 operand of ONNX Runtime's u8 × s8 kernels). Each row has its own scale, so a row's product
/// does not depend on the other rows of the batch (`DynamicQuantizeLinear` takes one range per
/// tensor, which would tie every row to the batch it runs in).
///
/// The rounding is one `QuantizeLinear` with a block of the whole row (opset 21's blocked form):
/// the same bytes as Div → Round → Add → Clip → Cast, about 3× faster in ONNX Runtime (one pass over
/// `x` instead of five). Blocked quantization wants a zero point of the scale's shape, hence the
/// `Expand`.
pub struct RowQuantized {
    pub q: Value,
    pub scale: Value,
}

pub fn quantize_rows(g: &mut GraphBuilder, x: &Value, k: usize) -> RowQuantized {
    let a = g.op("Abs", &[x]).build();
    let axes = g.ints(&[-1]);
    let amax = g
        .op("ReduceMax", &[&a, &axes])
        .attr("keepdims", 1i64)
        .build();
    let qmax = g.scalar(127.0, Elem::F32);
    let s = g.div(&amax, &qmax);
    // An all-zero row: any positive scale quantizes it to zeros.
    let tiny = g.scalar(f32::MIN_POSITIVE, Elem::F32);
    let scale = g.op("Max", &[&s, &tiny]).build();
    let zp = g.scalar_u8(128);
    let shape = g.op("Shape", &[&scale]).elem(Elem::I64).build();
    let zps = g.op("Expand", &[&zp, &shape]).elem(Elem::U8).build();
    let q = g
        .op("QuantizeLinear", &[x, &scale, &zps])
        .attr("axis", -1i64)
        .attr("block_size", k as i64)
        .elem(Elem::U8)
        .build();
    RowQuantized { q, scale }
}

/// `x · W (+ b)` for each weight, all on the same input: int8 weights share one row
/// quantization of `x`.
pub fn linear_many(
    g: &mut GraphBuilder,
    x: &Value,
    ws: &[(&LinearWeight, Option<&Value>)],
) -> Vec<Value> {
    let mut rows: Option<RowQuantized> = None;
    let mut out = Vec::with_capacity(ws.len());
    for (w, b) in ws {
        let y = match w {
            LinearWeight::Float(w) => g.matmul(x, w),
            LinearWeight::Int8 { q, scales, k } => {
                let rq = rows.get_or_insert_with(|| quantize_rows(g, x, *k));
                let zp = g.scalar_u8(128);
                // u8 × s8 (weights' zero point 0, left out).
                let acc = g
                    .op("MatMulInteger", &[&rq.q, q, &zp])
                    .elem(Elem::I32)
                    .build();
                let acc = g.cast(&acc, Elem::F32);
                let by_col = g.mul(&acc, scales);
                let scale = rq.scale.clone();
                g.mul(&by_col, &scale)
            }
        };
        out.push(match b {
            Some(b) => g.add(&y, b),
            None => y,
        });
    }
    out
}

/// [`linear_many`] of one weight.
pub fn linear_w(g: &mut GraphBuilder, x: &Value, w: &LinearWeight, b: Option<&Value>) -> Value {
    linear_many(g, x, &[(w, b)]).pop().expect("one output")
}

/// RMSNorm in the exact pattern (Pow → ReduceMean → Add → Sqrt → Div → Mul) that ONNX Runtime's
/// `SimplifiedLayerNormFusion` rewrites into one kernel, computed in f32 as transformers does.
pub fn rms_norm(g: &mut GraphBuilder, x: &Value, weight: &Value, eps: f64) -> Value {
    let xf = g.cast(x, Elem::F32);
    let two = g.scalar(2.0, Elem::F32);
    let sq = g.op("Pow", &[&xf, &two]).build();
    let axes = g.ints(&[-1]);
    let mean = g
        .op("ReduceMean", &[&sq, &axes])
        .attr("keepdims", 1i64)
        .build();
    let e = g.scalar(eps as f32, Elem::F32);
    let var = g.add(&mean, &e);
    let rms = g.op("Sqrt", &[&var]).build();
    let normed = g.div(&xf, &rms);
    let normed = g.cast(&normed, x.elem);
    g.mul(&normed, weight)
}

/// Values every portable attention layer shares: the boolean mask `[B,1,1,S,T]` (causal and
/// padding) and the rotary tables gathered at `position_ids`, `[B,S,1,hd]`.
pub struct AttentionCtx {
    pub allowed: Value,
    pub rotary: Option<(Value, Value)>,
}

/// `allowed[b,·,·,i,j] = attention_mask[b,j] = 1 ∧ j ≤ past + i`, where `past = T − S`; with a
/// sliding `window` also `j > past + i − window` (transformers' `sliding_window_overlay`, by
/// cache index).
pub fn causal_padding_mask(
    g: &mut GraphBuilder,
    inputs: &DecoderInputs,
    window: Option<usize>,
) -> Value {
    let t = dim_scalar(g, &inputs.attention_mask, 1);
    let s = dim_scalar(g, &inputs.input_ids, 1);
    let past = g.sub(&t, &s);
    let zero = g.int_scalar(0);
    let one = g.int_scalar(1);
    let keys = g.op("Range", &[&zero, &t, &one]).build();
    let queries = g.op("Range", &[&past, &t, &one]).build();
    let queries = g.unsqueeze(&queries, &[1]);
    let mut causal = g
        .op("LessOrEqual", &[&keys, &queries])
        .elem(Elem::Bool)
        .build();
    if let Some(w) = window {
        let w = g.int_scalar(w as i64);
        let lowest = g.sub(&queries, &w);
        let inside = g.op("Greater", &[&keys, &lowest]).elem(Elem::Bool).build();
        causal = g.op("And", &[&causal, &inside]).build();
    }
    let pad = g.cast(&inputs.attention_mask, Elem::Bool);
    let pad = g.unsqueeze(&pad, &[1, 2, 3]);
    g.op("And", &[&causal, &pad]).build()
}

/// Index `[B,1]` of each row's last real token among this step's `S` positions: the largest `j`
/// with `attention_mask[b, past + j] = 1` (0 when there is none). This is the last column for
/// left-padded rows and the last real token for right-padded ones.
pub fn last_real_index(g: &mut GraphBuilder, inputs: &DecoderInputs) -> Value {
    let t = g.dim(&inputs.attention_mask, 1);
    let s = g.dim(&inputs.input_ids, 1);
    let past = g.sub(&t, &s);
    let step_mask = g.slice(&inputs.attention_mask, &past, &t, 1);
    let one = g.int_scalar(1);
    let s1 = dim_scalar(g, &inputs.input_ids, 1);
    let limit = g.add(&s1, &one);
    let ranks = g.op("Range", &[&one, &limit, &one]).build();
    let weighted = g.mul(&step_mask, &ranks);
    g.op("ArgMax", &[&weighted])
        .attr("axis", 1i64)
        .attr("keepdims", 1i64)
        .build()
}

/// Rotary tables for standard ops: `cos[p] = cos(p·f)` over the full head dimension (halves
/// repeated, as transformers' `rotate_half` convention wants) and `sin` with the sign of the first
/// half folded in, so that `rope(x) = x·cos + swap_halves(x)·sin`.
pub fn rotary_tables(cfg: &ModelConfig) -> (Vec<f32>, Vec<f32>) {
    let inv = cfg.rope_inv_freq();
    let hd = cfg.head_dim;
    let half = hd / 2;
    let mut cos = Vec::with_capacity(cfg.max_position_embeddings * hd);
    let mut sin = Vec::with_capacity(cfg.max_position_embeddings * hd);
    for p in 0..cfg.max_position_embeddings {
        for j in 0..hd {
            let a = p as f64 * inv[j % half];
            cos.push(a.cos() as f32);
            let s = a.sin() as f32;
            sin.push(if j < half { -s } else { s });
        }
    }
    (cos, sin)
}

/// Apply rotary embedding to `x` `[B,S,N,hd]` with `cos`, `sin` `[B,S,1,hd]`.
pub fn apply_rotary(
    g: &mut GraphBuilder,
    x: &Value,
    cos: &Value,
    sin: &Value,
    head_dim: usize,
) -> Value {
    let h = (head_dim / 2) as i64;
    let halves = g.split(x, &[h, h], -1);
    let swapped = g.concat(&[&halves[1], &halves[0]], -1);
    let a = g.mul(x, cos);
    let b = g.mul(&swapped, sin);
    g.add(&a, &b)
}

/// Attention output, and the new cache of one layer.
pub struct AttentionOut {
    pub out: Value,
    pub present_key: Value,
    pub present_value: Value,
}

/// Scaled dot-product attention with standard ops. `q` `[B,S,Nq,hd]`, `k`/`v` `[B,S,Nkv,hd]`,
/// past `[B,Nkv,P,hd]`. Grouped-query attention is computed by viewing the query heads as
/// `[Nkv, groups]` and broadcasting each K/V head over its group (equal to repeating K/V, without
/// materialising the copies). Returns `[B,S,Nq·hd]`.
pub fn attention(
    g: &mut GraphBuilder,
    cfg: &ModelConfig,
    qkv: [&Value; 3],
    past: [&Value; 2],
    ctx: &AttentionCtx,
) -> AttentionOut {
    let [q, k, v] = qkv;
    let nkv = cfg.num_key_value_heads as i64;
    let groups = cfg.kv_groups() as i64;
    let hd = cfg.head_dim as i64;
    let q = g.reshape(q, &[0, 0, nkv, groups, hd]);
    let q = g.transpose(&q, &[0, 2, 3, 1, 4]);
    let k = g.transpose(k, &[0, 2, 1, 3]);
    let v = g.transpose(v, &[0, 2, 1, 3]);
    let present_key = g.concat(&[past[0], &k], 2);
    let present_value = g.concat(&[past[1], &v], 2);
    let kt = g.transpose(&present_key, &[0, 1, 3, 2]);
    let kt = g.unsqueeze(&kt, &[2]);
    let scores = g.matmul(&q, &kt);
    let scale = g.scalar(1.0 / (cfg.head_dim as f32).sqrt(), q.elem);
    let scores = g.mul(&scores, &scale);
    let lowest = g.scalar(q.elem.lowest(), q.elem);
    let scores = g
        .op("Where", &[&ctx.allowed, &scores, &lowest])
        .elem(q.elem)
        .build();
    let probs = g.op("Softmax", &[&scores]).attr("axis", -1i64).build();
    let v5 = g.unsqueeze(&present_value, &[2]);
    let out = g.matmul(&probs, &v5);
    let out = g.transpose(&out, &[0, 3, 1, 2, 4]);
    let out = g.reshape(&out, &[0, 0, -1]);
    AttentionOut {
        out,
        present_key,
        present_value,
    }
}

/// The output head on the final hidden states `[B,S,H]`: logits (all positions or the last real
/// one) through `lm_head` `[H,V]`, or the reward `score` `[B]` through `score` `[H,1]`. Outputs
/// are f32 whatever the io type.
pub fn emit_head(
    g: &mut GraphBuilder,
    kind: HeadKind,
    hidden: &Value,
    head_w: &LinearWeight,
    inputs: &DecoderInputs,
    vocab: usize,
) {
    match kind {
        HeadKind::Lm => {
            let logits = linear_w(g, hidden, head_w, None);
            let logits = g.cast(&logits, Elem::F32);
            g.output(
                &logits,
                "logits",
                &[Dim::sym(BATCH), Dim::sym(SEQ), Dim::Fixed(vocab)],
            );
        }
        HeadKind::LmLast | HeadKind::Reward => {
            let idx = last_real_index(g, inputs);
            let picked = g
                .op("GatherND", &[hidden, &idx])
                .attr("batch_dims", 1i64)
                .build();
            if kind == HeadKind::LmLast {
                let picked = g.unsqueeze(&picked, &[1]);
                let logits = linear_w(g, &picked, head_w, None);
                let logits = g.cast(&logits, Elem::F32);
                g.output(
                    &logits,
                    "logits",
                    &[Dim::sym(BATCH), Dim::Fixed(1), Dim::Fixed(vocab)],
                );
            } else {
                let score = linear_w(g, &picked, head_w, None);
                let score = g.reshape(&score, &[-1]);
                let score = g.cast(&score, Elem::F32);
                g.output(&score, "score", &[Dim::sym(BATCH)]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose_moves_rows_to_columns() {
        // [[1,2,3],[4,5,6]] → [[1,4],[2,5],[3,6]]
        assert_eq!(
            transpose(&[1., 2., 3., 4., 5., 6.], 2, 3),
            vec![1., 4., 2., 5., 3., 6.]
        );
    }
}
