//! GPT-2 as a portable ONNX decoder with a KV cache, after transformers' `modeling_gpt2.py`:
//! learned position embeddings, pre-LayerNorm blocks, fused `c_attn` projection (Conv1D weights
//! are already `[in, out]`), tanh-approximated GELU (`gelu_new`).

use super::builder::{Elem, GraphBuilder, Model, Value};
use super::layers::{self, AttentionCtx, HeadKind, LinearWeight, Weights};
use super::quant::WeightFormat;
use crate::checkpoint::Checkpoint;
use crate::config::ModelConfig;
use crate::error::Result;

/// A Conv1D weight `[in, out]` stored as is, and its bias.
fn conv1d(
    g: &mut GraphBuilder,
    w: &Weights,
    prefix: &str,
    rows: usize,
    cols: usize,
) -> Result<(Value, Value)> {
    let m = w.matrix(&format!("{prefix}.weight"), rows, cols)?;
    let weight = g.weight_f32(&format!("{prefix}.weight"), w.elem, &[rows, cols], &m);
    let bias = w.put_vector(
        g,
        &format!("{prefix}.bias"),
        cols,
        &format!("{prefix}.bias"),
    )?;
    Ok((weight, bias))
}

fn layer_norm(
    g: &mut GraphBuilder,
    w: &Weights,
    prefix: &str,
    x: &Value,
    cfg: &ModelConfig,
) -> Result<Value> {
    let h = cfg.hidden_size;
    let gamma = w.put_vector(
        g,
        &format!("{prefix}.weight"),
        h,
        &format!("{prefix}.weight"),
    )?;
    let beta = w.put_vector(g, &format!("{prefix}.bias"), h, &format!("{prefix}.bias"))?;
    Ok(g.op("LayerNormalization", &[x, &gamma, &beta])
        .attr("axis", -1i64)
        .attr("epsilon", cfg.norm_eps as f32)
        .attr("stash_type", 1i64)
        .build())
}

/// Build the graph of `cfg` (GPT-2) from `ckpt`, with io and weights in `elem`.
pub fn build(cfg: &ModelConfig, ckpt: &Checkpoint, elem: Elem, head: HeadKind) -> Result<Model> {
    let w = Weights {
        ckpt,
        elem,
        format: WeightFormat::Float,
    };
    let (h, v, n, hd) = (
        cfg.hidden_size,
        cfg.vocab_size,
        cfg.num_attention_heads,
        cfg.head_dim,
    );
    let mut g = GraphBuilder::new();
    let inputs = layers::decoder_inputs(&mut g, cfg, elem, true);
    let pos = inputs.position_ids.clone().expect("declared above");
    g.set_scope("transformer/wte");
    let wte = w.matrix("transformer.wte.weight", v, h)?;
    let wte_v = g.weight_f32("transformer.wte.weight", elem, &[v, h], &wte);
    let tok = g
        .op("Gather", &[&wte_v, &inputs.input_ids])
        .attr("axis", 0i64)
        .build();
    g.set_scope("transformer/wpe");
    let p = cfg.max_position_embeddings;
    let wpe = w.matrix("transformer.wpe.weight", p, h)?;
    let wpe = g.weight_f32("transformer.wpe.weight", elem, &[p, h], &wpe);
    let posv = g.op("Gather", &[&wpe, &pos]).attr("axis", 0i64).build();
    let mut x = g.add(&tok, &posv);
    g.set_scope("transformer/attn_mask");
    let actx = AttentionCtx {
        allowed: layers::causal_padding_mask(&mut g, &inputs, None),
        rotary: None,
    };
    let (mut keys, mut values) = (vec![], vec![]);
    for l in 0..cfg.num_hidden_layers {
        let pre = format!("transformer.h.{l}");
        g.set_scope(&format!("transformer/h.{l}/ln_1"));
        let normed = layer_norm(&mut g, &w, &format!("{pre}.ln_1"), &x, cfg)?;
        g.set_scope(&format!("transformer/h.{l}/attn"));
        let (wa, ba) = conv1d(&mut g, &w, &format!("{pre}.attn.c_attn"), h, 3 * h)?;
        let qkv = layers::linear(&mut g, &normed, &wa, Some(&ba));
        let parts = g.split(&qkv, &[h as i64; 3], -1);
        let heads: Vec<Value> = parts
            .iter()
            .map(|t| g.reshape(t, &[0, 0, n as i64, hd as i64]))
            .collect();
        let a = layers::attention(
            &mut g,
            cfg,
            [&heads[0], &heads[1], &heads[2]],
            [&inputs.past_keys[l], &inputs.past_values[l]],
            &actx,
        );
        let (wp, bp) = conv1d(&mut g, &w, &format!("{pre}.attn.c_proj"), h, h)?;
        let o = layers::linear(&mut g, &a.out, &wp, Some(&bp));
        x = g.add(&x, &o);
        g.set_scope(&format!("transformer/h.{l}/ln_2"));
        let normed = layer_norm(&mut g, &w, &format!("{pre}.ln_2"), &x, cfg)?;
        g.set_scope(&format!("transformer/h.{l}/mlp"));
        let i = cfg.intermediate_size;
        let (wf, bf) = conv1d(&mut g, &w, &format!("{pre}.mlp.c_fc"), h, i)?;
        let up = layers::linear(&mut g, &normed, &wf, Some(&bf));
        let act = g.op("Gelu", &[&up]).attr("approximate", "tanh").build();
        let (wp, bp) = conv1d(&mut g, &w, &format!("{pre}.mlp.c_proj"), i, h)?;
        let down = layers::linear(&mut g, &act, &wp, Some(&bp));
        x = g.add(&x, &down);
        keys.push(a.present_key);
        values.push(a.present_value);
    }
    g.set_scope("transformer/ln_f");
    let hidden = layer_norm(&mut g, &w, "transformer.ln_f", &x, cfg)?;
    g.set_scope("lm_head");
    let head_w = match head {
        HeadKind::Reward => {
            w.put_linear_t(&mut g, &[("score.weight", 1)], h, "score.MatMul.weight")?
        }
        _ => {
            let name = if cfg.tie_word_embeddings {
                "transformer.wte.weight"
            } else {
                "lm_head.weight"
            };
            w.put_linear_t(&mut g, &[(name, v)], h, "lm_head.MatMul.weight")?
        }
    };
    layers::emit_head(
        &mut g,
        head,
        &hidden,
        &LinearWeight::Float(head_w),
        &inputs,
        v,
    );
    layers::present_outputs(&mut g, cfg, &keys, &values);
    g.finish(&[("", 21)], super::IR_VERSION, super::PRODUCER)
}
