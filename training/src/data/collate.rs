//! One micro-batch of examples → right-padded tensors in the row order of
//! [`crate::objectives::Layout`]: `[rejected of pairs | negatives | chosen of pairs | positives]`.

use anyhow::{bail, Result};
use exports::tokenizer::Example;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::{Device, Tensor};

use super::plan::mix;
use super::Item;
use crate::objectives::{Layout, Objective, RefLogps};

/// What collation needs besides the examples.
#[derive(Debug, Clone)]
pub struct CollateConfig {
    pub objective: Objective,
    pub pad: i64,
    pub device: Device,
    /// Run seed and global step: the cringe draws of a step come from these.
    pub seed: u64,
    pub step: u64,
    /// Count prompt tokens in every sum too (`--train-on-prompt`).
    pub train_on_prompt: bool,
}

/// A micro-batch ready for the model.
pub struct MicroBatch {
    pub input_ids: Tensor,
    pub attention_mask: Tensor,
    /// 1 where the token at that position is summed over (response tokens), `[R, T]` int64.
    pub response_mask: Tensor,
    pub layout: Layout,
    /// Uniform draws for the cringe candidates of the leading `layout.cringe_rows()` rows.
    pub uniforms: Option<Tensor>,
    /// Reference log-probs of the pairs (DPO).
    pub reference: Option<RefLogps>,
    /// Non-padding tokens.
    pub tokens: usize,
}

/// The random stream of the cringe draws of the example at `position` of step `step`'s batch.
/// Keyed by the example's place in the optimizer batch (not in the micro-batch), so splitting a
/// batch into micro-batches does not change any draw.
pub fn cringe_stream(seed: u64, step: u64, position: usize) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(mix(seed ^ mix(step)));
    rng.set_stream(position as u64);
    rng
}

struct Row<'a> {
    example: &'a Example,
    /// Position of the example in its optimizer batch (cringe rows only).
    draw_position: Option<usize>,
}

/// Build the tensors of `items`, each given with its position in the optimizer batch.
pub fn collate(items: &[(usize, &Item)], cfg: &CollateConfig) -> Result<MicroBatch> {
    if items.is_empty() {
        bail!("empty micro-batch; this is a bug");
    }
    let mut rejected = Vec::new();
    let mut negatives = Vec::new();
    let mut chosen = Vec::new();
    let mut positives = Vec::new();
    let mut refs = (Vec::new(), Vec::new());
    for &(pos, item) in items {
        match item {
            Item::Pair {
                chosen: c,
                rejected: r,
                reference,
            } => {
                rejected.push(Row {
                    example: r,
                    draw_position: Some(pos),
                });
                chosen.push(Row {
                    example: c,
                    draw_position: None,
                });
                if cfg.objective == Objective::Dpo {
                    let Some((rc, rr)) = reference else {
                        bail!(
                            "pair {pos} of step {} has no reference log-probs; this is a bug",
                            cfg.step
                        );
                    };
                    refs.0.push(*rc as f32);
                    refs.1.push(*rr as f32);
                }
            }
            Item::Binary {
                example,
                label: false,
            } => negatives.push(Row {
                example,
                draw_position: Some(pos),
            }),
            Item::Binary {
                example,
                label: true,
            } => positives.push(Row {
                example,
                draw_position: None,
            }),
        }
    }
    let layout = Layout {
        pairs: chosen.len(),
        negatives: negatives.len(),
        positives: positives.len(),
    };
    let rows: Vec<Row> = rejected
        .into_iter()
        .chain(negatives)
        .chain(chosen)
        .chain(positives)
        .collect();
    let t = rows.iter().map(|r| r.example.ids.len()).max().unwrap_or(0);
    if t < 2 {
        bail!("a micro-batch of sequences shorter than 2 tokens has nothing to predict");
    }
    let n = rows.len();
    let mut ids = vec![cfg.pad; n * t];
    let mut attn = vec![0i64; n * t];
    let mut resp = vec![0i64; n * t];
    let mut tokens = 0;
    for (i, row) in rows.iter().enumerate() {
        let ex = row.example;
        let start = if cfg.train_on_prompt {
            1
        } else {
            ex.response_start
        };
        for (j, id) in ex.ids.iter().enumerate() {
            ids[i * t + j] = id.as_i64();
            attn[i * t + j] = 1;
            resp[i * t + j] = i64::from(j >= start);
        }
        tokens += ex.ids.len();
    }
    let shape = [n as i64, t as i64];
    let to = |v: &[i64]| Tensor::from_slice(v).view(shape).to_device(cfg.device);
    let uniforms = if cfg.objective.uses_cringe() {
        let c = layout.cringe_rows();
        let mut u = vec![0.5f32; c * (t - 1)];
        for (i, row) in rows[..c].iter().enumerate() {
            let pos = row
                .draw_position
                .expect("cringe rows carry a draw position; this is a bug");
            let mut rng = cringe_stream(cfg.seed, cfg.step, pos);
            for j in 0..row.example.ids.len() - 1 {
                u[i * (t - 1) + j] = rng.random::<f32>();
            }
        }
        Some(
            Tensor::from_slice(&u)
                .view([c as i64, t as i64 - 1])
                .to_device(cfg.device),
        )
    } else {
        None
    };
    let reference = (cfg.objective == Objective::Dpo).then(|| RefLogps {
        chosen: Tensor::from_slice(&refs.0).to_device(cfg.device),
        rejected: Tensor::from_slice(&refs.1).to_device(cfg.device),
    });
    Ok(MicroBatch {
        input_ids: to(&ids),
        attention_mask: to(&attn),
        response_mask: to(&resp),
        layout,
        uniforms,
        reference,
        tokens,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use exports::TokenId;

    fn ex(ids: &[u32], response_start: usize) -> Example {
        Example {
            ids: ids.iter().map(|&i| TokenId(i)).collect(),
            response_start,
            truncated: 0,
        }
    }

    #[test]
    fn rows_follow_the_layout_and_masks_cover_responses() {
        let items = [
            Item::Binary {
                example: ex(&[5, 6, 7], 1),
                label: true,
            },
            Item::Pair {
                chosen: ex(&[1, 2, 3, 4], 2),
                rejected: ex(&[1, 2, 9], 2),
                reference: None,
            },
            Item::Binary {
                example: ex(&[8, 8], 1),
                label: false,
            },
        ];
        let refs: Vec<(usize, &Item)> = items.iter().enumerate().collect();
        let cfg = CollateConfig {
            objective: Objective::PairwiseCringe,
            pad: 0,
            device: Device::Cpu,
            seed: 3,
            step: 7,
            train_on_prompt: false,
        };
        let mb = collate(&refs, &cfg).unwrap();
        assert_eq!(
            mb.layout,
            Layout {
                pairs: 1,
                negatives: 1,
                positives: 1
            }
        );
        let ids = Vec::<i64>::try_from(mb.input_ids.view([-1])).unwrap();
        assert_eq!(ids, [1, 2, 9, 0, 8, 8, 0, 0, 1, 2, 3, 4, 5, 6, 7, 0]);
        let resp = Vec::<i64>::try_from(mb.response_mask.view([-1])).unwrap();
        assert_eq!(resp, [0, 0, 1, 0, 0, 1, 0, 0, 0, 0, 1, 1, 0, 1, 1, 0]);
        let attn = Vec::<i64>::try_from(mb.attention_mask.view([-1])).unwrap();
        assert_eq!(attn, [1, 1, 1, 0, 1, 1, 0, 0, 1, 1, 1, 1, 1, 1, 1, 0]);
        assert_eq!(mb.tokens, 12);
        // Draws depend on (seed, step, position in the optimizer batch) only.
        let u = mb.uniforms.unwrap();
        assert_eq!(u.size(), [2, 3]);
        let mut rng = cringe_stream(3, 7, 1);
        let want: Vec<f32> = (0..2).map(|_| rng.random::<f32>()).collect();
        assert_eq!(
            Vec::<f32>::try_from(u.get(0).narrow(0, 0, 2)).unwrap(),
            want
        );
        let alone = collate(&refs[1..2], &cfg).unwrap().uniforms.unwrap();
        assert_eq!(
            Vec::<f32>::try_from(alone.get(0).narrow(0, 0, 2)).unwrap(),
            want
        );
    }
}
