//! The Llama family (Llama, Mistral, Qwen2) as an ONNX decoder with a KV cache, after transformers'
//! `modeling_llama.py`: RMSNorm, rotary position embedding (`rotate_half` convention), grouped-query
//! attention, SwiGLU MLP.
//!
//! Two flavors:
//! * `Portable`: standard ONNX ops only; takes `position_ids` and builds an explicit causal +
//!   padding mask from `attention_mask`, so any padding (left or right) works.
//! * `Ort`: onnxruntime-genai's CPU form (ORT-GENAI-GRAPH.md §5): packed QKV `MatMul`, com.microsoft
//!   `GroupQueryAttention` with fused rotary from cos/sin caches, `SkipSimplifiedLayerNormalization`.
//!   No `position_ids`: GQA derives positions and lengths from `seqlens_k = Σ attention_mask − 1`,
//!   so batches must be RIGHT-padded (real tokens first), as onnxruntime-genai pads them.

use super::builder::{Elem, GraphBuilder, Model, Value};
use super::layers::{self, AttentionCtx, DecoderInputs, HeadKind, Weights};
use super::Flavor;
use crate::checkpoint::Checkpoint;
use crate::config::ModelConfig;
use crate::error::Result;

/// What to build.
pub struct LlamaSpec {
    pub flavor: Flavor,
    pub elem: Elem,
    pub head: HeadKind,
}

struct Ctx<'a> {
    cfg: &'a ModelConfig,
    w: Weights<'a>,
}

impl Ctx<'_> {
    fn hf(&self, layer: usize, rest: &str) -> String {
        format!("model.layers.{layer}.{rest}")
    }

    /// `model.layers.{l}.{module}` projection as a transposed MatMul weight (and optional bias).
    fn proj(
        &self,
        g: &mut GraphBuilder,
        l: usize,
        parts: &[(&str, usize)],
        cols: usize,
        onnx: &str,
        bias: bool,
    ) -> Result<(Value, Option<Value>)> {
        let names: Vec<String> = parts
            .iter()
            .map(|(m, _)| self.hf(l, &format!("{m}.weight")))
            .collect();
        let named: Vec<(&str, usize)> = names
            .iter()
            .zip(parts)
            .map(|(n, (_, r))| (n.as_str(), *r))
            .collect();
        let w = self.w.put_linear_t(
            g,
            &named,
            cols,
            &format!("model.layers.{l}.{onnx}.MatMul.weight"),
        )?;
        let b = if bias {
            let bnames: Vec<String> = parts
                .iter()
                .map(|(m, _)| self.hf(l, &format!("{m}.bias")))
                .collect();
            let bparts: Vec<(Option<&str>, usize)> = bnames
                .iter()
                .zip(parts)
                .map(|(n, (_, r))| (Some(n.as_str()), *r))
                .collect();
            Some(
                self.w
                    .put_bias(g, &bparts, &format!("model.layers.{l}.{onnx}.Add.bias"))?,
            )
        } else {
            None
        };
        Ok((w, b))
    }

    fn mlp(&self, g: &mut GraphBuilder, l: usize, x: &Value) -> Result<Value> {
        let (h, i) = (self.cfg.hidden_size, self.cfg.intermediate_size);
        g.set_scope(&format!("model/layers.{l}/mlp"));
        let (wg, _) = self.proj(g, l, &[("mlp.gate_proj", i)], h, "mlp.gate_proj", false)?;
        let (wu, _) = self.proj(g, l, &[("mlp.up_proj", i)], h, "mlp.up_proj", false)?;
        let (wd, _) = self.proj(g, l, &[("mlp.down_proj", h)], i, "mlp.down_proj", false)?;
        let gate = g.matmul(x, &wg);
        let up = g.matmul(x, &wu);
        let sig = g.op("Sigmoid", &[&gate]).build();
        let act = g.mul(&gate, &sig);
        let prod = g.mul(&act, &up);
        Ok(g.matmul(&prod, &wd))
    }

    fn o_proj(&self, g: &mut GraphBuilder, l: usize, x: &Value) -> Result<Value> {
        let (h, q) = (
            self.cfg.hidden_size,
            self.cfg.num_attention_heads * self.cfg.head_dim,
        );
        let (w, b) = self.proj(
            g,
            l,
            &[("self_attn.o_proj", h)],
            q,
            "attn.o_proj",
            self.cfg.o_bias,
        )?;
        Ok(layers::linear(g, x, &w, b.as_ref()))
    }

    fn norm_weight(&self, g: &mut GraphBuilder, hf: &str, onnx: &str) -> Result<Value> {
        self.w.put_vector(g, hf, self.cfg.hidden_size, onnx)
    }

    /// The output head's `[H, V]` (or `[H, 1]` for reward) MatMul weight; a tied head is duplicated,
    /// as onnxruntime-genai does, so the graph needs no Transpose.
    fn head_weight(&self, g: &mut GraphBuilder, head: HeadKind) -> Result<Value> {
        let (h, v) = (self.cfg.hidden_size, self.cfg.vocab_size);
        g.set_scope("lm_head");
        match head {
            HeadKind::Reward => {
                self.w
                    .put_linear_t(g, &[("score.weight", 1)], h, "score.MatMul.weight")
            }
            _ => {
                let name = if self.cfg.tie_word_embeddings {
                    "model.embed_tokens.weight"
                } else {
                    "lm_head.weight"
                };
                self.w
                    .put_linear_t(g, &[(name, v)], h, "lm_head.MatMul.weight")
            }
        }
    }

    fn embed(&self, g: &mut GraphBuilder, inputs: &DecoderInputs) -> Result<Value> {
        let (h, v) = (self.cfg.hidden_size, self.cfg.vocab_size);
        g.set_scope("model/embed_tokens");
        let m = self.w.matrix("model.embed_tokens.weight", v, h)?;
        let emb = g.weight_f32("model.embed_tokens.weight", self.w.elem, &[v, h], &m);
        Ok(g.op("Gather", &[&emb, &inputs.input_ids])
            .attr("axis", 0i64)
            .build())
    }
}

/// Build the graph of `cfg` from the weights in `ckpt`.
pub fn build(cfg: &ModelConfig, ckpt: &Checkpoint, spec: &LlamaSpec) -> Result<Model> {
    let ctx = Ctx {
        cfg,
        w: Weights {
            ckpt,
            elem: spec.elem,
        },
    };
    let mut g = GraphBuilder::new();
    let portable = spec.flavor == Flavor::Portable;
    let inputs = layers::decoder_inputs(&mut g, cfg, spec.elem, portable);
    let hidden = if portable {
        portable_body(&mut g, &ctx, &inputs)?
    } else {
        ort_body(&mut g, &ctx, &inputs)?
    };
    let (keys, values, hidden) = hidden;
    let head_w = ctx.head_weight(&mut g, spec.head)?;
    layers::emit_head(&mut g, spec.head, &hidden, &head_w, &inputs, cfg.vocab_size);
    layers::present_outputs(&mut g, cfg, &keys, &values);
    let opsets: &[(&str, i64)] = if portable {
        &[("", 21)]
    } else {
        &[("", 21), ("com.microsoft", 1)]
    };
    g.finish(opsets, super::IR_VERSION, super::PRODUCER)
}

type Body = (Vec<Value>, Vec<Value>, Value);

fn portable_body(g: &mut GraphBuilder, ctx: &Ctx, inputs: &DecoderInputs) -> Result<Body> {
    let cfg = ctx.cfg;
    let (h, hd, elem) = (cfg.hidden_size, cfg.head_dim, ctx.w.elem);
    let (nq, nkv) = (cfg.num_attention_heads, cfg.num_key_value_heads);
    let mut x = ctx.embed(g, inputs)?;
    g.set_scope("model/rotary_emb");
    let (cos_t, sin_t) = layers::rotary_tables(cfg);
    let max = cfg.max_position_embeddings;
    let cos_t = g.weight_f32("model.rotary_emb.cos_table", elem, &[max, hd], &cos_t);
    let sin_t = g.weight_f32("model.rotary_emb.sin_table", elem, &[max, hd], &sin_t);
    let pos = inputs
        .position_ids
        .as_ref()
        .expect("the portable graph takes position_ids");
    let cos = g.op("Gather", &[&cos_t, pos]).attr("axis", 0i64).build();
    let sin = g.op("Gather", &[&sin_t, pos]).attr("axis", 0i64).build();
    let cos = g.unsqueeze(&cos, &[2]);
    let sin = g.unsqueeze(&sin, &[2]);
    g.set_scope("model/attn_mask");
    let actx = AttentionCtx {
        allowed: layers::causal_padding_mask(g, inputs),
        rotary: Some((cos, sin)),
    };
    let (mut keys, mut values) = (vec![], vec![]);
    for l in 0..cfg.num_hidden_layers {
        g.set_scope(&format!("model/layers.{l}/input_layernorm"));
        let w = ctx.norm_weight(
            g,
            &ctx.hf(l, "input_layernorm.weight"),
            &format!("model.layers.{l}.input_layernorm.weight"),
        )?;
        let normed = layers::rms_norm(g, &x, &w, cfg.norm_eps);
        g.set_scope(&format!("model/layers.{l}/attn"));
        let bias = cfg.qkv_bias;
        let (wq, bq) = ctx.proj(
            g,
            l,
            &[("self_attn.q_proj", nq * hd)],
            h,
            "attn.q_proj",
            bias,
        )?;
        let (wk, bk) = ctx.proj(
            g,
            l,
            &[("self_attn.k_proj", nkv * hd)],
            h,
            "attn.k_proj",
            bias,
        )?;
        let (wv, bv) = ctx.proj(
            g,
            l,
            &[("self_attn.v_proj", nkv * hd)],
            h,
            "attn.v_proj",
            bias,
        )?;
        let q = layers::linear(g, &normed, &wq, bq.as_ref());
        let k = layers::linear(g, &normed, &wk, bk.as_ref());
        let v = layers::linear(g, &normed, &wv, bv.as_ref());
        let q = g.reshape(&q, &[0, 0, nq as i64, hd as i64]);
        let k = g.reshape(&k, &[0, 0, nkv as i64, hd as i64]);
        let v = g.reshape(&v, &[0, 0, nkv as i64, hd as i64]);
        let (cos, sin) = actx.rotary.as_ref().expect("set above");
        let q = layers::apply_rotary(g, &q, cos, sin, hd);
        let k = layers::apply_rotary(g, &k, cos, sin, hd);
        let a = layers::attention(
            g,
            cfg,
            [&q, &k, &v],
            [&inputs.past_keys[l], &inputs.past_values[l]],
            &actx,
        );
        let o = ctx.o_proj(g, l, &a.out)?;
        x = g.add(&x, &o);
        g.set_scope(&format!("model/layers.{l}/post_attention_layernorm"));
        let w = ctx.norm_weight(
            g,
            &ctx.hf(l, "post_attention_layernorm.weight"),
            &format!("model.layers.{l}.post_attention_layernorm.weight"),
        )?;
        let normed = layers::rms_norm(g, &x, &w, cfg.norm_eps);
        let m = ctx.mlp(g, l, &normed)?;
        x = g.add(&x, &m);
        keys.push(a.present_key);
        values.push(a.present_value);
    }
    g.set_scope("model/norm");
    let w = ctx.norm_weight(g, "model.norm.weight", "model.norm.weight")?;
    let hidden = layers::rms_norm(g, &x, &w, cfg.norm_eps);
    Ok((keys, values, hidden))
}

const MS: &str = "com.microsoft";

/// `SkipSimplifiedLayerNormalization(residual, skip, gamma)` → (normed, residual + skip).
fn skip_norm(
    g: &mut GraphBuilder,
    residual: &Value,
    skip: &Value,
    gamma: &Value,
    eps: f64,
) -> (Value, Value) {
    let mut outs = g
        .op("SkipSimplifiedLayerNormalization", &[residual, skip, gamma])
        .domain(MS)
        .attr("epsilon", eps as f32)
        .build_mask(&[true, false, false, true]);
    let sum = outs.pop().expect("two outputs");
    let normed = outs.pop().expect("two outputs");
    (normed, sum)
}

fn ort_body(g: &mut GraphBuilder, ctx: &Ctx, inputs: &DecoderInputs) -> Result<Body> {
    let cfg = ctx.cfg;
    let (h, hd, elem) = (cfg.hidden_size, cfg.head_dim, ctx.w.elem);
    let (nq, nkv) = (cfg.num_attention_heads, cfg.num_key_value_heads);
    g.set_scope("model/attn_mask_reformat/attn_mask_subgraph");
    let axes = g.ints(&[1]);
    let lens = g
        .op("ReduceSum", &[&inputs.attention_mask, &axes])
        .attr("keepdims", 0i64)
        .build();
    let one = g.int_scalar(1);
    let lens = g.sub(&lens, &one);
    let seqlens_k = g.cast(&lens, Elem::I32);
    let total = layers::dim_scalar(g, &inputs.attention_mask, 1);
    let total = g.cast(&total, Elem::I32);
    let x = ctx.embed(g, inputs)?;
    g.set_scope("model/rotary_emb");
    let inv = cfg.rope_inv_freq();
    let half = hd / 2;
    let max = cfg.max_position_embeddings;
    let (mut cos, mut sin) = (
        Vec::with_capacity(max * half),
        Vec::with_capacity(max * half),
    );
    for p in 0..max {
        for f in &inv {
            let a = p as f64 * f;
            cos.push(a.cos() as f32);
            sin.push(a.sin() as f32);
        }
    }
    let cos = g.weight_f32("cos_cache", elem, &[max, half], &cos);
    let sin = g.weight_f32("sin_cache", elem, &[max, half], &sin);
    let (mut keys, mut values) = (vec![], vec![]);
    let mut residual = x.clone();
    let mut pending: Option<Value> = None;
    for l in 0..cfg.num_hidden_layers {
        g.set_scope(&format!("model/layers.{l}/input_layernorm"));
        let w = ctx.norm_weight(
            g,
            &ctx.hf(l, "input_layernorm.weight"),
            &format!("model.layers.{l}.input_layernorm.weight"),
        )?;
        // Layer 0 has no skip input. `SimplifiedLayerNormalization` lives in the default domain
        // without being standard ONNX (onnx.checker rejects it), so layer 0 uses the standard-op
        // pattern, which ONNX Runtime fuses into that same kernel when it loads the graph.
        let normed = match pending.take() {
            None => layers::rms_norm(g, &residual, &w, cfg.norm_eps),
            Some(skip) => {
                let (n, r) = skip_norm(g, &residual, &skip, &w, cfg.norm_eps);
                residual = r;
                n
            }
        };
        g.set_scope(&format!("model/layers.{l}/attn"));
        let parts = [
            ("self_attn.q_proj", nq * hd),
            ("self_attn.k_proj", nkv * hd),
            ("self_attn.v_proj", nkv * hd),
        ];
        let (w, b) = ctx.proj(g, l, &parts, h, "attn.qkv_proj", cfg.qkv_bias)?;
        let qkv = layers::linear(g, &normed, &w, b.as_ref());
        let mut outs = g
            .op("GroupQueryAttention", &[&qkv])
            .domain(MS)
            .skip_input()
            .skip_input()
            .input(&inputs.past_keys[l])
            .input(&inputs.past_values[l])
            .input(&seqlens_k)
            .input(&total)
            .input(&cos)
            .input(&sin)
            .attr("num_heads", nq as i64)
            .attr("kv_num_heads", nkv as i64)
            .attr("scale", 1.0 / (hd as f32).sqrt())
            .attr("local_window_size", -1i64)
            .attr("do_rotary", 1i64)
            .attr("rotary_interleaved", 0i64)
            .build_n(3);
        let pv = outs.pop().expect("three outputs");
        let pk = outs.pop().expect("three outputs");
        let attn = outs.pop().expect("three outputs");
        let o = ctx.o_proj(g, l, &attn)?;
        g.set_scope(&format!("model/layers.{l}/post_attention_layernorm"));
        let w = ctx.norm_weight(
            g,
            &ctx.hf(l, "post_attention_layernorm.weight"),
            &format!("model.layers.{l}.post_attention_layernorm.weight"),
        )?;
        let (normed, r) = skip_norm(g, &residual, &o, &w, cfg.norm_eps);
        residual = r;
        pending = Some(ctx.mlp(g, l, &normed)?);
        keys.push(pk);
        values.push(pv);
    }
    g.set_scope(&format!(
        "model/layers.{}/final_norm_layernorm",
        cfg.num_hidden_layers
    ));
    let w = ctx.norm_weight(
        g,
        "model.norm.weight",
        &format!(
            "model.layers.{}.final_norm_layernorm.weight",
            cfg.num_hidden_layers
        ),
    )?;
    let skip = pending.expect("at least one layer");
    let (hidden, _) = skip_norm(g, &residual, &skip, &w, cfg.norm_eps);
    Ok((keys, values, hidden))
}
