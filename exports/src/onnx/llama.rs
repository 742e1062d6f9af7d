//! The Llama family (Llama, Mistral, Qwen2, Qwen3) as an ONNX decoder with a KV cache, after
//! transformers' `modeling_llama.py`: RMSNorm, rotary position embedding (`rotate_half`
//! convention), grouped-query attention, SwiGLU MLP; Qwen3's per-head q/k RMSNorm before the
//! rotary (with GQA: on `[B, S·N, head_dim]`, as onnxruntime-genai's builder places its
//! `SimplifiedLayerNormalization`; here written as the standard-op pattern ONNX Runtime fuses into
//! that kernel, so that onnx.checker accepts the graph); Mistral's sliding window in the mask
//! (portable) or GQA's `local_window_size`.
//!
//! Each fusion of onnxruntime-genai's CPU form (ORT-GENAI-GRAPH.md §5) can be switched on alone
//! ([`Fusions`]), so that each can be timed against the plain graph:
//! * none (the `portable` flavor): standard ONNX ops only; takes `position_ids` and builds an
//!   explicit causal + padding mask from `attention_mask`, so any padding (left or right) works;
//! * `packed_qkv`: one `MatMul` for Q|K|V (standard ops);
//! * `skip_norm`: residual add + RMSNorm as com.microsoft `SkipSimplifiedLayerNormalization`;
//! * `gqa`: com.microsoft `GroupQueryAttention` with fused rotary from cos/sin caches. No
//!   `position_ids`: GQA derives positions and lengths from `seqlens_k = Σ attention_mask − 1`, so
//!   batches must be RIGHT-padded (real tokens first), as onnxruntime-genai pads them.
//!
//! The `ort` flavor is all three.

use super::builder::{Elem, GraphBuilder, Model, Value};
use super::kv_scales::{KvAttention, KvScales, ENGINE_DOMAIN, INT8_CACHE_ATTENTION};
use super::layers::{self, AttentionCtx, DecoderInputs, HeadKind, LinearWeight, Weights};
use super::quant::WeightFormat;
use super::Flavor;
use crate::checkpoint::Checkpoint;
use crate::config::ModelConfig;
use crate::error::Result;

/// Which of onnxruntime-genai's fusions the graph uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Fusions {
    pub packed_qkv: bool,
    pub skip_norm: bool,
    pub gqa: bool,
}

impl Fusions {
    pub fn of(flavor: Flavor) -> Self {
        let on = flavor == Flavor::Ort;
        Fusions {
            packed_qkv: on,
            skip_norm: on,
            gqa: on,
        }
    }

    /// True when the graph uses com.microsoft operators.
    pub fn contrib(self) -> bool {
        self.skip_norm || self.gqa
    }
}

/// What to build.
pub struct LlamaSpec<'a> {
    pub fusions: Fusions,
    pub elem: Elem,
    pub head: HeadKind,
    /// Projections and LM head (the embeddings, norms, biases and a reward head stay `elem`).
    pub weights: WeightFormat,
    /// An int8 KV cache with these scales (GroupQueryAttention only); `None`: the cache is `elem`.
    pub kv_scales: Option<&'a KvScales>,
    /// Which operator attends over an int8 cache (ignored without `kv_scales`).
    pub kv_attention: KvAttention,
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
    ) -> Result<(LinearWeight, Option<Value>)> {
        let names: Vec<String> = parts
            .iter()
            .map(|(m, _)| self.hf(l, &format!("{m}.weight")))
            .collect();
        let named: Vec<(&str, usize)> = names
            .iter()
            .zip(parts)
            .map(|(n, (_, r))| (n.as_str(), *r))
            .collect();
        let w = self.w.put_proj(
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
        let [gate, up]: [Value; 2] = layers::linear_many(g, x, &[(&wg, None), (&wu, None)])
            .try_into()
            .expect("two outputs");
        let sig = g.op("Sigmoid", &[&gate]).build();
        let act = g.mul(&gate, &sig);
        let prod = g.mul(&act, &up);
        Ok(layers::linear_w(g, &prod, &wd, None))
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
        Ok(layers::linear_w(g, x, &w, b.as_ref()))
    }

    fn norm_weight(&self, g: &mut GraphBuilder, hf: &str, onnx: &str) -> Result<Value> {
        self.w.put_vector(g, hf, self.cfg.hidden_size, onnx)
    }

    /// The output head's `[H, V]` (or `[H, 1]` for reward) MatMul weight; a tied head is duplicated,
    /// as onnxruntime-genai does, so the graph needs no Transpose.
    fn head_weight(&self, g: &mut GraphBuilder, head: HeadKind) -> Result<LinearWeight> {
        let (h, v) = (self.cfg.hidden_size, self.cfg.vocab_size);
        g.set_scope("lm_head");
        match head {
            // One output column: nothing to gain from quantizing it.
            HeadKind::Reward => Ok(LinearWeight::Float(self.w.put_linear_t(
                g,
                &[("score.weight", 1)],
                h,
                "score.MatMul.weight",
            )?)),
            _ => {
                let name = if self.cfg.tie_word_embeddings {
                    "model.embed_tokens.weight"
                } else {
                    "lm_head.weight"
                };
                self.w.put_proj(g, &[(name, v)], h, "lm_head.MatMul.weight")
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
            format: spec.weights,
        },
    };
    let f = spec.fusions;
    let mut g = GraphBuilder::new();
    let kv_elem = if spec.kv_scales.is_some() {
        Elem::I8
    } else {
        spec.elem
    };
    let inputs = layers::decoder_inputs(&mut g, cfg, kv_elem, !f.gqa);
    // The engine's int8-cache attention where it applies (see `KvAttention::Engine`).
    let engine_attention = spec.kv_scales.is_some()
        && spec.kv_attention == KvAttention::Engine
        && spec.elem == Elem::F32
        && cfg.sliding_window.is_none()
        && cfg
            .num_attention_heads
            .is_multiple_of(cfg.num_key_value_heads)
        && cfg.num_attention_heads / cfg.num_key_value_heads <= 8
        && cfg.head_dim.is_multiple_of(16);
    let mut uses_engine_ops = false;
    let x = ctx.embed(&mut g, &inputs)?;
    let attn = if f.gqa {
        Attn::Gqa(gqa_inputs(&mut g, &ctx, &inputs))
    } else {
        Attn::Portable(portable_ctx(&mut g, &ctx, &inputs))
    };
    let mut residual = Residual {
        stream: x,
        pending: None,
        fused: f.skip_norm,
    };
    let (mut keys, mut values) = (vec![], vec![]);
    let (nq, nkv, hd, h) = (
        cfg.num_attention_heads,
        cfg.num_key_value_heads,
        cfg.head_dim,
        cfg.hidden_size,
    );
    for l in 0..cfg.num_hidden_layers {
        g.set_scope(&format!("model/layers.{l}/input_layernorm"));
        let w = ctx.norm_weight(
            &mut g,
            &ctx.hf(l, "input_layernorm.weight"),
            &format!("model.layers.{l}.input_layernorm.weight"),
        )?;
        let normed = residual.norm(&mut g, &w, cfg.norm_eps);
        g.set_scope(&format!("model/layers.{l}/attn"));
        let parts = [
            ("self_attn.q_proj", nq * hd),
            ("self_attn.k_proj", nkv * hd),
            ("self_attn.v_proj", nkv * hd),
        ];
        // With Qwen3's q/k norms the projections stay separate (as onnxruntime-genai's builder
        // does): each is normalised per head before the rotary.
        let qkv: Vec<Value> = if f.packed_qkv && !cfg.qk_norm {
            let (w, b) = ctx.proj(&mut g, l, &parts, h, "attn.qkv_proj", cfg.qkv_bias)?;
            let packed = layers::linear_w(&mut g, &normed, &w, b.as_ref());
            if f.gqa {
                vec![packed]
            } else {
                g.split(
                    &packed,
                    &[(nq * hd) as i64, (nkv * hd) as i64, (nkv * hd) as i64],
                    -1,
                )
            }
        } else {
            let mut ws = vec![];
            for (part, onnx) in parts
                .iter()
                .zip(["attn.q_proj", "attn.k_proj", "attn.v_proj"])
            {
                ws.push(ctx.proj(&mut g, l, &[*part], h, onnx, cfg.qkv_bias)?);
            }
            let ws: Vec<_> = ws.iter().map(|(w, b)| (w, b.as_ref())).collect();
            layers::linear_many(&mut g, &normed, &ws)
        };
        let qk_norms = if cfg.qk_norm {
            let mut w = vec![];
            for n in ["q_norm", "k_norm"] {
                w.push(ctx.w.put_vector(
                    &mut g,
                    &ctx.hf(l, &format!("self_attn.{n}.weight")),
                    hd,
                    &format!("model.layers.{l}.attn.{n}.weight"),
                )?);
            }
            Some(w)
        } else {
            None
        };
        let past = [&inputs.past_keys[l], &inputs.past_values[l]];
        let a = match &attn {
            Attn::Gqa(gi) => {
                let mut qkv = qkv;
                if let Some(w) = &qk_norms {
                    // [B, S, N·hd] → [B, S·N, hd] → RMSNorm → [B, S, N·hd], before GQA's rotary.
                    for (i, width) in [(0, nq * hd), (1, nkv * hd)] {
                        let heads = g.reshape(&qkv[i], &[0, -1, hd as i64]);
                        let normed = layers::rms_norm(&mut g, &heads, &w[i], cfg.norm_eps);
                        qkv[i] = g.reshape(&normed, &[0, -1, width as i64]);
                    }
                }
                let scales = spec.kv_scales.map(|s| {
                    let shape = [nkv, 1, hd];
                    [("k_scale", &s.key[l]), ("v_scale", &s.value[l])].map(|(name, v)| {
                        let name = format!("model.layers.{l}.attn.{name}");
                        g.weight_f32(&name, Elem::F32, &shape, v)
                    })
                });
                let rotary = !cfg.nope_layers.contains(&l);
                match scales.as_ref() {
                    Some(scales) if engine_attention && rotary && qkv.len() == 1 => {
                        uses_engine_ops = true;
                        int8_cache_attention(&mut g, cfg, &qkv[0], past, gi, scales)
                    }
                    scales => gqa(&mut g, cfg, &qkv, past, gi, rotary, scales),
                }
            }
            Attn::Portable(pc) => {
                let mut q = g.reshape(&qkv[0], &[0, 0, nq as i64, hd as i64]);
                let mut k = g.reshape(&qkv[1], &[0, 0, nkv as i64, hd as i64]);
                if let Some(w) = &qk_norms {
                    q = layers::rms_norm(&mut g, &q, &w[0], cfg.norm_eps);
                    k = layers::rms_norm(&mut g, &k, &w[1], cfg.norm_eps);
                }
                let v = g.reshape(&qkv[2], &[0, 0, nkv as i64, hd as i64]);
                let (cos, sin) = pc.rotary.as_ref().expect("llama has rotary");
                let (q, k) = if cfg.nope_layers.contains(&l) {
                    (q, k)
                } else {
                    (
                        layers::apply_rotary(&mut g, &q, cos, sin, hd),
                        layers::apply_rotary(&mut g, &k, cos, sin, hd),
                    )
                };
                layers::attention(&mut g, cfg, [&q, &k, &v], past, pc)
            }
        };
        let o = ctx.o_proj(&mut g, l, &a.out)?;
        residual.pending = Some(o);
        g.set_scope(&format!("model/layers.{l}/post_attention_layernorm"));
        let w = ctx.norm_weight(
            &mut g,
            &ctx.hf(l, "post_attention_layernorm.weight"),
            &format!("model.layers.{l}.post_attention_layernorm.weight"),
        )?;
        let normed = residual.norm(&mut g, &w, cfg.norm_eps);
        residual.pending = Some(ctx.mlp(&mut g, l, &normed)?);
        keys.push(a.present_key);
        values.push(a.present_value);
    }
    let last = cfg.num_hidden_layers;
    g.set_scope(&format!("model/layers.{last}/final_norm_layernorm"));
    let w = ctx.norm_weight(
        &mut g,
        "model.norm.weight",
        &format!("model.layers.{last}.final_norm_layernorm.weight"),
    )?;
    let hidden = residual.norm(&mut g, &w, cfg.norm_eps);
    let head_w = ctx.head_weight(&mut g, spec.head)?;
    layers::emit_head(&mut g, spec.head, &hidden, &head_w, &inputs, cfg.vocab_size);
    layers::present_outputs(&mut g, cfg, &keys, &values);
    let mut opsets: Vec<(&str, i64)> = vec![("", 21)];
    if f.contrib() {
        opsets.push((MS, 1));
    }
    if uses_engine_ops {
        opsets.push((ENGINE_DOMAIN, 1));
    }
    g.finish(&opsets, super::IR_VERSION, super::PRODUCER)
}

const MS: &str = "com.microsoft";

/// The residual stream with the branch output not yet added to it.
struct Residual {
    stream: Value,
    pending: Option<Value>,
    /// Add + norm as one `SkipSimplifiedLayerNormalization`.
    fused: bool,
}

impl Residual {
    /// Add the pending branch output and return RMSNorm of the new stream.
    fn norm(&mut self, g: &mut GraphBuilder, weight: &Value, eps: f64) -> Value {
        match self.pending.take() {
            // `SimplifiedLayerNormalization` lives in the default domain without being standard ONNX
            // (onnx.checker rejects it), so a norm without a skip input uses the standard-op
            // pattern, which ONNX Runtime fuses into that same kernel when it loads the graph.
            None => layers::rms_norm(g, &self.stream, weight, eps),
            Some(skip) if self.fused => {
                let mut outs = g
                    .op(
                        "SkipSimplifiedLayerNormalization",
                        &[&self.stream, &skip, weight],
                    )
                    .domain(MS)
                    .attr("epsilon", eps as f32)
                    .build_mask(&[true, false, false, true]);
                self.stream = outs.pop().expect("two outputs");
                outs.pop().expect("two outputs")
            }
            Some(skip) => {
                self.stream = g.add(&self.stream, &skip);
                layers::rms_norm(g, &self.stream, weight, eps)
            }
        }
    }
}

enum Attn {
    Portable(AttentionCtx),
    Gqa(GqaInputs),
}

/// The mask and rotary tables (gathered at `position_ids`) of the standard-op attention.
fn portable_ctx(g: &mut GraphBuilder, ctx: &Ctx, inputs: &DecoderInputs) -> AttentionCtx {
    let cfg = ctx.cfg;
    let (hd, max) = (cfg.head_dim, cfg.max_position_embeddings);
    g.set_scope("model/rotary_emb");
    let (cos_t, sin_t) = layers::rotary_tables(cfg);
    let cos_t = g.weight_f32("model.rotary_emb.cos_table", ctx.w.elem, &[max, hd], &cos_t);
    let sin_t = g.weight_f32("model.rotary_emb.sin_table", ctx.w.elem, &[max, hd], &sin_t);
    let pos = inputs
        .position_ids
        .as_ref()
        .expect("the standard-op graph takes position_ids");
    let cos = g.op("Gather", &[&cos_t, pos]).attr("axis", 0i64).build();
    let sin = g.op("Gather", &[&sin_t, pos]).attr("axis", 0i64).build();
    let cos = g.unsqueeze(&cos, &[2]);
    let sin = g.unsqueeze(&sin, &[2]);
    g.set_scope("model/attn_mask");
    AttentionCtx {
        allowed: layers::causal_padding_mask(g, inputs, cfg.sliding_window),
        rotary: Some((cos, sin)),
    }
}

/// GroupQueryAttention's shared inputs: `seqlens_k` `[B]` i32, `total_sequence_length` i32 scalar
/// and the cos/sin caches `[max_positions, head_dim/2]`.
struct GqaInputs {
    seqlens_k: Value,
    total: Value,
    cos: Value,
    sin: Value,
}

fn gqa_inputs(g: &mut GraphBuilder, ctx: &Ctx, inputs: &DecoderInputs) -> GqaInputs {
    let cfg = ctx.cfg;
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
    g.set_scope("model/rotary_emb");
    let inv = cfg.rope_inv_freq();
    let (half, max) = (cfg.head_dim / 2, cfg.max_position_embeddings);
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
    GqaInputs {
        seqlens_k,
        total,
        cos: g.weight_f32("cos_cache", ctx.w.elem, &[max, half], &cos),
        sin: g.weight_f32("sin_cache", ctx.w.elem, &[max, half], &sin),
    }
}

/// The engine's `ai.pco:Int8CacheAttention` on packed QKV over an int8 cache (decode steps; see
/// `engine::int8_attention`): GroupQueryAttention's inputs and outputs, less those it leaves empty.
fn int8_cache_attention(
    g: &mut GraphBuilder,
    cfg: &ModelConfig,
    qkv: &Value,
    past: [&Value; 2],
    gi: &GqaInputs,
    [ks, vs]: &[Value; 2],
) -> layers::AttentionOut {
    let outs = g
        .op(
            INT8_CACHE_ATTENTION,
            &[
                qkv,
                past[0],
                past[1],
                &gi.seqlens_k,
                &gi.total,
                &gi.cos,
                &gi.sin,
                ks,
                vs,
            ],
        )
        .domain(ENGINE_DOMAIN)
        .attr("num_heads", cfg.num_attention_heads as i64)
        .attr("kv_num_heads", cfg.num_key_value_heads as i64)
        .attr("scale", 1.0 / (cfg.head_dim as f32).sqrt())
        .build_n(3);
    attention_out(outs, true)
}

/// An attention node's `(output, present_key, present_value)`, the caches typed int8 when
/// `int8_cache` (the builder types outputs as floats).
fn attention_out(mut outs: Vec<Value>, int8_cache: bool) -> layers::AttentionOut {
    let mut present_value = outs.pop().expect("three outputs");
    let mut present_key = outs.pop().expect("three outputs");
    if int8_cache {
        present_key.elem = Elem::I8;
        present_value.elem = Elem::I8;
    }
    layers::AttentionOut {
        out: outs.pop().expect("three outputs"),
        present_key,
        present_value,
    }
}

/// com.microsoft `GroupQueryAttention` on packed QKV (one value) or separate Q, K, V; with
/// `kv_scales` (`[kv_heads, 1, head_dim]` for K and V) the cache is int8, quantized per channel
/// by the kernel itself (after rotary).
fn gqa(
    g: &mut GraphBuilder,
    cfg: &ModelConfig,
    qkv: &[Value],
    past: [&Value; 2],
    gi: &GqaInputs,
    rotary: bool,
    kv_scales: Option<&[Value; 2]>,
) -> layers::AttentionOut {
    let mut op = g.op("GroupQueryAttention", &[&qkv[0]]).domain(MS);
    op = match qkv {
        [_, k, v] => op.input(k).input(v),
        _ => op.skip_input().skip_input(),
    };
    op = op
        .input(past[0])
        .input(past[1])
        .input(&gi.seqlens_k)
        .input(&gi.total);
    // A NoPE layer (SmolLM3) attends without rotary: no caches, `do_rotary = 0`.
    if rotary {
        op = op.input(&gi.cos).input(&gi.sin);
    }
    if let Some([ks, vs]) = kv_scales {
        if !rotary {
            op = op.skip_input().skip_input();
        }
        // position_ids, attention_bias and head_sink stay empty; k_scale and v_scale follow.
        op = op
            .skip_input()
            .skip_input()
            .skip_input()
            .input(ks)
            .input(vs)
            .attr("k_quant_type", "PER_CHANNEL")
            .attr("v_quant_type", "PER_CHANNEL")
            .attr("kv_cache_bit_width", 8i64);
    }
    let outs = op
        .attr("num_heads", cfg.num_attention_heads as i64)
        .attr("kv_num_heads", cfg.num_key_value_heads as i64)
        .attr("scale", 1.0 / (cfg.head_dim as f32).sqrt())
        // The same window as transformers' (checked against it: `w` keys including the query's
        // own), as onnxruntime-genai's builder writes it.
        .attr(
            "local_window_size",
            cfg.sliding_window.map_or(-1, |w| w as i64),
        )
        .attr("do_rotary", i64::from(rotary))
        .attr("rotary_interleaved", 0i64)
        .build_n(3);
    attention_out(outs, kv_scales.is_some())
}
