//! The exported ONNX graphs compute the trainer's function: ONNX Runtime logits and reward scores
//! equal the libtorch model's for the same weights, in every flavor.

use engine::session::{DecoderSession, SessionOptions};
use exports::onnx::{export, Flavor, OnnxExportConfig};
use exports::Head;
use tch::{Device, Kind, Tensor};
use tests::{max_masked_diff, runtime, smollm2, tiny_model, VARIANTS};

/// A batch of 3 rows of length `t`: full, and two shorter rows padded on the `left` or right.
fn batch(vocab: i64, t: usize, left: bool) -> (Vec<i64>, Vec<i64>) {
    let lens = [t, t - 3, t - 5];
    let mut ids = Vec::new();
    let mut mask = Vec::new();
    for (r, &len) in lens.iter().enumerate() {
        let real: Vec<i64> = (0..len)
            .map(|i| (3 + 7 * i as i64 + 11 * r as i64) % vocab)
            .collect();
        let pad = t - len;
        let (row, m): (Vec<i64>, Vec<i64>) = if left {
            (
                (0..pad).map(|_| 2).chain(real).collect(),
                (0..t).map(|i| (i >= pad) as i64).collect(),
            )
        } else {
            (
                real.into_iter().chain((0..pad).map(|_| 2)).collect(),
                (0..t).map(|i| (i < len) as i64).collect(),
            )
        };
        ids.extend(row);
        mask.extend(m);
    }
    (ids, mask)
}

fn tch_logits(dir: &std::path::Path, ids: &[i64], mask: &[i64], b: usize, t: usize) -> Vec<f32> {
    let (_vs, model) =
        training::weights::load_model(dir, Device::Cpu, Head::Lm).expect("load tch model");
    let x = Tensor::from_slice(ids).view([b as i64, t as i64]);
    let m = Tensor::from_slice(mask).view([b as i64, t as i64]);
    let logits = tch::no_grad(|| model.forward(&x, &m))
        .to_kind(Kind::Float)
        .contiguous();
    Vec::<f32>::try_from(logits.view([-1])).expect("to vec")
}

fn onnx_logits(dir: &std::path::Path, ids: &[i64], mask: &[i64], b: usize, t: usize) -> Vec<f32> {
    let mut s =
        DecoderSession::load(runtime(), dir, &SessionOptions::default()).expect("load onnx");
    let mut cache = s.new_cache(b).expect("cache");
    s.forward(ids, b, t, mask, &mut cache).expect("run").data
}

#[test]
fn onnx_logits_equal_tch_logits_for_every_tiny_variant_and_flavor() {
    for v in VARIANTS {
        let tmp = tempfile::tempdir().unwrap();
        let hf = tmp.path().join("hf");
        let cfg = tiny_model(&hf, *v, Head::Lm, 11);
        let flavors: &[Flavor] = if cfg.model_type.is_llama_family() {
            &[Flavor::Portable, Flavor::Ort]
        } else {
            &[Flavor::Portable]
        };
        for &flavor in flavors {
            let out = tmp.path().join(flavor.as_str());
            let mut ec = OnnxExportConfig::new(&hf, &out);
            ec.flavor = Some(flavor);
            export(&ec).expect("export");
            // GroupQueryAttention expects right padding; the portable graph takes any.
            let left = flavor == Flavor::Portable;
            let (b, t) = (3, 12);
            let (ids, mask) = batch(cfg.vocab_size as i64, t, left);
            let a = tch_logits(&hf, &ids, &mask, b, t);
            let o = onnx_logits(&out, &ids, &mask, b, t);
            let d = max_masked_diff(&a, &o, &mask, cfg.vocab_size);
            assert!(
                d <= 1e-4,
                "{} {}: max |Δ logit| = {d:e}",
                v.name,
                flavor.as_str()
            );
        }
    }
}

#[test]
fn onnx_reward_scores_equal_tch_scores() {
    for v in VARIANTS {
        let tmp = tempfile::tempdir().unwrap();
        let hf = tmp.path().join("hf");
        let cfg = tiny_model(&hf, *v, Head::Reward, 5);
        let out = tmp.path().join("onnx");
        let mut ec = OnnxExportConfig::new(&hf, &out);
        ec.head = Head::Reward;
        ec.flavor = Some(Flavor::Portable);
        export(&ec).expect("export reward");
        let (b, t) = (3, 10);
        let (ids, mask) = batch(cfg.vocab_size as i64, t, false);
        let (_vs, model) = training::weights::load_model(&hf, Device::Cpu, Head::Reward).unwrap();
        let x = Tensor::from_slice(&ids).view([b as i64, t as i64]);
        let m = Tensor::from_slice(&mask).view([b as i64, t as i64]);
        let want = Vec::<f32>::try_from(tch::no_grad(|| model.score(&x, &m)).to_kind(Kind::Float))
            .unwrap();
        let mut s = DecoderSession::load(runtime(), &out, &SessionOptions::default()).unwrap();
        let got = s.scores(&ids, b, t, &mask).unwrap();
        for (w, g) in want.iter().zip(&got) {
            assert!((w - g).abs() <= 1e-4, "{}: score {g} vs tch {w}", v.name);
        }
    }
}

#[test]
fn smollm2_onnx_logits_equal_tch_logits_in_both_flavors() {
    let Some(hf) = smollm2() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let tok = exports::Tokenizer::load(&hf).unwrap();
    let texts = [
        "The State of the Union is strong, and",
        "In 1862, Congress passed 3 acts:",
    ];
    let rows: Vec<Vec<i64>> = texts
        .iter()
        .map(|t| exports::tokenizer::ids_to_i64(&tok.encode(t, true).unwrap()))
        .collect();
    let t = rows.iter().map(Vec::len).max().unwrap();
    let b = rows.len();
    let mut ids = Vec::new();
    let mut mask = Vec::new();
    for r in &rows {
        ids.extend(r.iter().copied().chain(std::iter::repeat_n(2, t - r.len())));
        mask.extend((0..t).map(|i| (i < r.len()) as i64));
    }
    let want = tch_logits(&hf, &ids, &mask, b, t);
    for flavor in [Flavor::Ort, Flavor::Portable] {
        let out = tmp.path().join(flavor.as_str());
        let mut ec = OnnxExportConfig::new(&hf, &out);
        ec.flavor = Some(flavor);
        export(&ec).unwrap();
        let got = onnx_logits(&out, &ids, &mask, b, t);
        let d = max_masked_diff(&want, &got, &mask, 49152);
        eprintln!("SmolLM2 {}: max |Δ logit| vs tch = {d:e}", flavor.as_str());
        assert!(
            d <= 1e-3,
            "SmolLM2 {}: max |Δ logit| = {d:e}",
            flavor.as_str()
        );
    }
}
