//! The ONNX export run by ONNX Runtime: tiny random models (exports::init) exported in every
//! flavor, checked against transformers' outputs (fixtures from scripts/reference/onnx_reference.py,
//! in the probe format that `engine verify` reads), against themselves across padding and KV-cache
//! use, and for the reward head.

use std::path::{Path, PathBuf};

use engine::runtime::Runtime;
use engine::session::{DecoderSession, SessionOptions};
use engine::verify::verify;
use exports::init::{init, InitConfig};
use exports::onnx::{
    export, Elem, Flavor, Fusions, KvCache, KvScales, OnnxExportConfig, WeightFormat,
};
use exports::{Checkpoint, Head, HostTensor, ModelType};

/// transformers (fp32) against ONNX Runtime (fp32): summation order differs, nothing else.
const REFERENCE_TOL: f32 = 1e-4;

/// The init settings of each fixture; must match CASES in scripts/reference/onnx_reference.py.
fn case(name: &str) -> InitConfig {
    let (ty, seed) = match name {
        "llama_gqa" => (ModelType::Llama, 11),
        "llama_bias_untied" => (ModelType::Llama, 12),
        "qwen2" => (ModelType::Qwen2, 13),
        "llama_hd8" => (ModelType::Llama, 14),
        "gpt2" => (ModelType::Gpt2, 15),
        "llama_reward" => (ModelType::Llama, 16),
        "gpt2_reward" => (ModelType::Gpt2, 17),
        other => panic!("unknown case {other}"),
    };
    let mut c = InitConfig::tiny(ty, seed);
    if ty.is_llama_family() && name != "llama_hd8" {
        // head_dim 16: the smallest that GroupQueryAttention's CPU kernel accepts.
        c.hidden_size = 64;
    }
    if name == "llama_bias_untied" {
        c.attention_bias = true;
        c.tied = false;
    }
    if name.ends_with("_reward") {
        c.head = Head::Reward;
    }
    c
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/onnx")
        .join(format!("{name}.safetensors"))
}

/// ONNX Runtime allows one environment per process; the tests share it.
fn runtime() -> &'static Runtime {
    Runtime::shared(None).expect("ONNX Runtime (run scripts/setup.sh)")
}

struct Exported {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
}

fn export_case(name: &str, flavor: Flavor, dtype: Elem, last_only: bool) -> Exported {
    export_with(name, flavor, dtype, last_only, None)
}

fn export_with(
    name: &str,
    flavor: Flavor,
    dtype: Elem,
    last_only: bool,
    fusions: Option<Fusions>,
) -> Exported {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("hf");
    let c = case(name);
    init(&c, &model).unwrap();
    let dir = tmp.path().join("onnx");
    let mut cfg = OnnxExportConfig::new(&model, &dir);
    cfg.flavor = Some(flavor);
    cfg.dtype = dtype;
    cfg.head = c.head;
    cfg.last_logits_only = last_only;
    cfg.fusions = fusions;
    export(&cfg).unwrap();
    Exported { _tmp: tmp, dir }
}

fn load(rt: &Runtime, e: &Exported) -> DecoderSession {
    DecoderSession::load(rt, &e.dir, &SessionOptions::default()).unwrap()
}

fn flavors(name: &str) -> Vec<Flavor> {
    if name.starts_with("gpt2") || name == "llama_hd8" {
        vec![Flavor::Portable]
    } else {
        vec![Flavor::Ort, Flavor::Portable]
    }
}

#[test]
fn logits_and_scores_match_transformers_in_every_flavor() {
    let rt = runtime();
    for name in [
        "llama_gqa",
        "llama_bias_untied",
        "qwen2",
        "llama_hd8",
        "gpt2",
        "llama_reward",
        "gpt2_reward",
    ] {
        for flavor in flavors(name) {
            let e = export_case(name, flavor, Elem::F32, false);
            let mut s = load(rt, &e);
            let r = verify(&mut s, &fixture(name), Some(REFERENCE_TOL))
                .unwrap_or_else(|err| panic!("{name} {flavor:?}: {err:#}"));
            assert!(
                r.compared > 0 && r.max_abs_diff <= REFERENCE_TOL,
                "{name} {flavor:?}: {r:?}"
            );
        }
    }
}

#[test]
fn each_fusion_alone_matches_transformers() {
    // The ort flavor's fusions one at a time (and GQA on separate Q/K/V), with q/k/v/o biases.
    let rt = runtime();
    let one = |packed_qkv, skip_norm, gqa| Fusions {
        packed_qkv,
        skip_norm,
        gqa,
    };
    for f in [
        one(true, false, false),
        one(false, true, false),
        one(false, false, true),
        one(true, false, true),
    ] {
        for name in ["llama_bias_untied", "llama_reward"] {
            let e = export_with(name, Flavor::Ort, Elem::F32, false, Some(f));
            let mut s = load(rt, &e);
            assert_eq!(s.needs_right_padding(), f.gqa);
            let r = verify(&mut s, &fixture(name), Some(REFERENCE_TOL))
                .unwrap_or_else(|err| panic!("{name} {f:?}: {err:#}"));
            assert!(r.max_abs_diff <= REFERENCE_TOL, "{name} {f:?}: {r:?}");
        }
    }
}

#[test]
fn last_logits_only_scores_each_rows_last_real_token() {
    let rt = runtime();
    for flavor in [Flavor::Ort, Flavor::Portable] {
        let e = export_case("llama_gqa", flavor, Elem::F32, true);
        let mut s = load(rt, &e);
        let r = verify(&mut s, &fixture("llama_gqa"), Some(REFERENCE_TOL)).unwrap();
        // One position per row of the 3-row probe.
        assert_eq!(r.compared, 3 * 279, "{flavor:?}");
    }
}

/// Reads the fixture batch as (ids, mask, logits, batch, seq, vocab).
fn fixture_batch(name: &str) -> (Vec<i64>, Vec<i64>, Vec<f32>, usize, usize, usize) {
    let c = Checkpoint::load(&fixture(name)).unwrap();
    let l = c.get("logits").unwrap();
    let (b, t, v) = (l.shape[0], l.shape[1], l.shape[2]);
    (
        c.get("input_ids").unwrap().to_i64().unwrap(),
        c.get("attention_mask").unwrap().to_i64().unwrap(),
        l.to_f32().unwrap(),
        b,
        t,
        v,
    )
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn portable_graph_takes_left_and_right_padding_as_is() {
    // The fixture batch mixes a full row, a left-padded row and a right-padded one; the portable
    // graph runs it unchanged, and each real position matches transformers.
    let rt = runtime();
    for name in ["llama_gqa", "gpt2"] {
        let e = export_case(name, Flavor::Portable, Elem::F32, false);
        let mut s = load(rt, &e);
        let (ids, mask, want, b, t, v) = fixture_batch(name);
        let mut cache = s.new_cache(b).unwrap();
        let got = s.forward(&ids, b, t, &mask, &mut cache).unwrap();
        for r in 0..b {
            for j in (0..t).filter(|&j| mask[r * t + j] == 1) {
                let w = &want[(r * t + j) * v..(r * t + j + 1) * v];
                let d = max_diff(got.at(r, j), w);
                assert!(d <= REFERENCE_TOL, "{name} row {r} pos {j}: {d}");
            }
        }
    }
}

#[test]
fn ort_graph_rows_are_unchanged_by_right_padding_and_refuse_left_padding() {
    let rt = runtime();
    let e = export_case("llama_gqa", Flavor::Ort, Elem::F32, false);
    let mut s = load(rt, &e);
    assert!(s.needs_right_padding());
    let rows: [&[i64]; 2] = [&[5, 9, 40, 7, 100, 3], &[11, 12, 13]];
    let t = 6;
    let mut ids = vec![2i64; 2 * t];
    let mut mask = vec![0i64; 2 * t];
    for (r, row) in rows.iter().enumerate() {
        ids[r * t..r * t + row.len()].copy_from_slice(row);
        mask[r * t..r * t + row.len()]
            .iter_mut()
            .for_each(|m| *m = 1);
    }
    let mut cache = s.new_cache(2).unwrap();
    let batch = s.forward(&ids, 2, t, &mask, &mut cache).unwrap();
    for (r, row) in rows.iter().enumerate() {
        let mut c1 = s.new_cache(1).unwrap();
        let alone = s
            .forward(row, 1, row.len(), &vec![1; row.len()], &mut c1)
            .unwrap();
        for j in 0..row.len() {
            let d = max_diff(batch.at(r, j), alone.at(0, j));
            assert!(d <= 1e-5, "row {r} pos {j}: {d}");
        }
    }
    let mut left = mask.clone();
    left[t..2 * t].copy_from_slice(&[0, 0, 0, 1, 1, 1]);
    let mut cache = s.new_cache(2).unwrap();
    let err = s
        .forward(&ids, 2, t, &left, &mut cache)
        .unwrap_err()
        .to_string();
    assert!(err.contains("right padding"), "{err}");
}

#[test]
fn prefill_then_decode_equals_one_full_forward() {
    // Row 0: 5 prompt tokens; row 1: 3 (padded on the side its flavor wants). Then 3 decode steps.
    let rt = runtime();
    for (name, flavor) in [
        ("llama_gqa", Flavor::Ort),
        ("llama_gqa", Flavor::Portable),
        ("llama_bias_untied", Flavor::Ort),
        ("gpt2", Flavor::Portable),
    ] {
        let e = export_case(name, flavor, Elem::F32, false);
        let mut s = load(rt, &e);
        let prompts: [Vec<i64>; 2] = [vec![7, 30, 4, 99, 250], vec![17, 8, 61]];
        let decode: [[i64; 3]; 2] = [[44, 5, 6], [120, 121, 3]];
        let n = 5;
        let right = s.needs_right_padding();
        let (mut ids, mut mask) = (vec![], vec![]);
        for p in &prompts {
            let pad = n - p.len();
            let (pi, pm) = (vec![2i64; pad], vec![0i64; pad]);
            let (ri, rm): (Vec<i64>, Vec<i64>) = (p.clone(), vec![1; p.len()]);
            if right {
                ids.extend(ri.iter().chain(&pi));
                mask.extend(rm.iter().chain(&pm));
            } else {
                ids.extend(pi.iter().chain(&ri));
                mask.extend(pm.iter().chain(&rm));
            }
        }
        let mut cache = s.new_cache(2).unwrap();
        s.forward(&ids, 2, n, &mask, &mut cache).unwrap();
        let mut steps = vec![];
        for (k, (a, b)) in decode[0].iter().zip(&decode[1]).enumerate() {
            let step_ids = [*a, *b];
            // Each step appends a 1-column after the prompt's mask (pads stay 0).
            let mut m = vec![];
            for r in 0..2 {
                m.extend_from_slice(&mask[r * n..(r + 1) * n]);
                m.extend(std::iter::repeat_n(1, k + 1));
            }
            steps.push(s.forward(&step_ids, 2, 1, &m, &mut cache).unwrap());
        }
        assert_eq!(cache.len(), n + 3);
        for r in 0..2 {
            let full: Vec<i64> = prompts[r].iter().chain(&decode[r]).copied().collect();
            let mut c1 = s.new_cache(1).unwrap();
            let want = s
                .forward(&full, 1, full.len(), &vec![1; full.len()], &mut c1)
                .unwrap();
            for (k, step) in steps.iter().enumerate() {
                let d = max_diff(step.at(r, 0), want.at(0, prompts[r].len() + k));
                assert!(
                    d <= REFERENCE_TOL,
                    "{name} {flavor:?} row {r} step {k}: {d}"
                );
            }
        }
    }
}

#[test]
fn half_precision_exports_stay_close_to_fp32() {
    let rt = runtime();
    for flavor in [Flavor::Ort, Flavor::Portable] {
        let e = export_case("llama_gqa", flavor, Elem::F16, false);
        let mut s = load(rt, &e);
        let r = verify(&mut s, &fixture("llama_gqa"), None)
            .unwrap_or_else(|err| panic!("{flavor:?}: {err:#}"));
        assert!(
            r.max_abs_diff <= 5e-2 && r.max_abs_diff > 0.0,
            "{flavor:?}: {r:?}"
        );
    }
}

/// int8 graph against its numpy/torch simulation (scripts/reference/int8_reference.py): the same
/// integer products, so only summation order of the float parts and, rarely, an activation that
/// lands on the other side of a rounding boundary separate them (measured: 2.4e-7).
const INT8_SIM_TOL: f32 = 1e-4;

#[test]
fn int8_export_matches_its_reference_and_stays_within_the_quantization_error_of_fp32() {
    let rt = runtime();
    let probe = Checkpoint::load(&fixture("llama_gqa_int8")).unwrap();
    // max |logit(simulated int8) − logit(transformers fp32)|, computed by the reference script.
    let gap = probe.get("fp32_gap").unwrap().to_f32().unwrap()[0];
    assert!(
        gap > 5.0 * INT8_SIM_TOL,
        "the fixture's gap {gap} is too small to tell"
    );
    for flavor in [Flavor::Ort, Flavor::Portable] {
        let tmp = tempfile::tempdir().unwrap();
        init(&case("llama_gqa"), &tmp.path().join("hf")).unwrap();
        let dir = tmp.path().join("onnx");
        let mut cfg = OnnxExportConfig::new(tmp.path().join("hf"), &dir);
        cfg.flavor = Some(flavor);
        cfg.weights = WeightFormat::Int8;
        export(&cfg).unwrap();
        let mut s = DecoderSession::load(rt, &dir, &SessionOptions::default()).unwrap();
        let sim = verify(&mut s, &fixture("llama_gqa_int8"), Some(INT8_SIM_TOL))
            .unwrap_or_else(|err| panic!("{flavor:?} vs the int8 simulation: {err:#}"));
        let fp = verify(&mut s, &fixture("llama_gqa"), Some(gap + INT8_SIM_TOL))
            .unwrap_or_else(|err| panic!("{flavor:?} vs fp32: {err:#}"));
        // Really quantized: it is as far from fp32 as the simulation is.
        assert!(
            fp.max_abs_diff > 0.5 * gap,
            "{flavor:?}: {fp:?} (gap {gap}, simulation {sim:?})"
        );
    }
}

#[test]
fn verify_fails_on_a_probe_that_differs() {
    let rt = runtime();
    let e = export_case("llama_gqa", Flavor::Portable, Elem::F32, false);
    let mut s = load(rt, &e);
    let mut probe = Checkpoint::load(&fixture("llama_gqa")).unwrap();
    let l = probe.get("logits").unwrap();
    let mut v = l.to_f32().unwrap();
    // Position (row 2, t 1) is real; a pad position (row 2, t 9) is not compared.
    let (t, vocab) = (l.shape[1], l.shape[2]);
    v[(2 * t + 9) * vocab] += 100.0;
    let shape = l.shape.clone();
    probe.insert("logits", HostTensor::from_f32(shape.clone(), &v));
    let dir = tempfile::tempdir().unwrap();
    probe.save(dir.path(), None).unwrap();
    let file = dir.path().join("model.safetensors");
    verify(&mut s, &file, None).expect("a change at a pad position is ignored");
    v[(2 * t + 1) * vocab + 3] += 0.01;
    probe.insert("logits", HostTensor::from_f32(shape, &v));
    probe.save(dir.path(), None).unwrap();
    let err = verify(&mut s, &file, None).unwrap_err().to_string();
    assert!(
        err.contains("max |Δ| = 1.0") && err.contains("> 1e-3"),
        "{err}"
    );
}

#[test]
fn ort_flavor_refuses_head_dim_8() {
    let tmp = tempfile::tempdir().unwrap();
    init(&case("llama_hd8"), &tmp.path().join("hf")).unwrap();
    let mut cfg = OnnxExportConfig::new(tmp.path().join("hf"), tmp.path().join("onnx"));
    cfg.flavor = Some(Flavor::Ort);
    let err = export(&cfg).unwrap_err().to_string();
    assert!(err.contains("multiple of 16"), "{err}");
}

/// Folders saved by transformers 5 (training/tests/fixtures/hf5, from
/// scripts/reference/hf5_reference.py): Qwen3 (q/k norms, head_dim ≠ hidden / heads, tied and
/// untied with biases), Llama 3.2-style (llama3 rope scaling, tied), Qwen2, Mistral (one with a
/// sliding window of 4, shorter than the rows), SmolLM3 (a NoPE layer). Each is
/// exported in both flavors and every real position of the reference batch (each row run alone)
/// matches transformers' logits at the fixture's vocabulary entries.
#[test]
fn transformers5_checkpoints_export_to_transformers_logits() {
    let hf5 = Path::new(env!("CARGO_MANIFEST_DIR")).join("../training/tests/fixtures/hf5");
    let rt = runtime();
    for name in [
        "qwen3_tied",
        "qwen3_untied_bias",
        "llama32_tied",
        "qwen2_tied",
        "mistral_untied",
        "mistral_window4",
        "smollm3_tied",
    ] {
        let fx = Checkpoint::load(&hf5.join(format!("{name}.safetensors"))).unwrap();
        let ids = fx.get("input_ids").unwrap().to_i64().unwrap();
        let mask = fx.get("attention_mask").unwrap().to_i64().unwrap();
        let index = fx.get("vocab_index").unwrap().to_i64().unwrap();
        let l = fx.get("logits").unwrap();
        let (b, t, k) = (l.shape[0], l.shape[1], l.shape[2]);
        let want = l.to_f32().unwrap();
        for flavor in [Flavor::Ort, Flavor::Portable] {
            let tmp = tempfile::tempdir().unwrap();
            let mut cfg = OnnxExportConfig::new(hf5.join(name), tmp.path().join("onnx"));
            cfg.flavor = Some(flavor);
            export(&cfg).unwrap_or_else(|e| panic!("{name} {flavor:?}: {e:#}"));
            let mut s =
                DecoderSession::load(rt, &tmp.path().join("onnx"), &SessionOptions::default())
                    .unwrap();
            let mut worst = 0.0f32;
            for r in 0..b {
                let real: Vec<usize> = (0..t).filter(|&j| mask[r * t + j] == 1).collect();
                let row: Vec<i64> = real.iter().map(|&j| ids[r * t + j]).collect();
                let mut cache = s.new_cache(1).unwrap();
                let got = s
                    .forward(&row, 1, row.len(), &vec![1; row.len()], &mut cache)
                    .unwrap();
                for (p, &j) in real.iter().enumerate() {
                    let logits = got.at(0, p);
                    for (c, &v) in index.iter().enumerate() {
                        let d = (logits[v as usize] - want[(r * t + j) * k + c]).abs();
                        worst = worst.max(d);
                    }
                }
            }
            println!("{name} {flavor:?}: max |onnx - transformers| = {worst:.3e}");
            assert!(worst <= REFERENCE_TOL, "{name} {flavor:?}: {worst}");
        }
    }
}

/// The Qwen3 reward model saved by transformers 5 (Qwen3ForSequenceClassification), exported with
/// the reward head in both flavors: scores equal transformers'.
#[test]
fn transformers5_qwen3_reward_model_exports_to_transformers_scores() {
    let hf5 = Path::new(env!("CARGO_MANIFEST_DIR")).join("../training/tests/fixtures/hf5");
    let rt = runtime();
    for flavor in [Flavor::Ort, Flavor::Portable] {
        let tmp = tempfile::tempdir().unwrap();
        let mut cfg = OnnxExportConfig::new(hf5.join("qwen3_reward"), tmp.path().join("onnx"));
        cfg.flavor = Some(flavor);
        cfg.head = Head::Reward;
        export(&cfg).unwrap();
        let mut s =
            DecoderSession::load(rt, &tmp.path().join("onnx"), &SessionOptions::default()).unwrap();
        let r = verify(
            &mut s,
            &hf5.join("qwen3_reward.safetensors"),
            Some(REFERENCE_TOL),
        )
        .unwrap_or_else(|e| panic!("{flavor:?}: {e:#}"));
        assert!(
            r.compared > 0 && r.max_abs_diff <= REFERENCE_TOL,
            "{flavor:?}: {r:?}"
        );
    }
}

/// The probe's rows as token-id sequences, pads dropped.
fn probe_rows(probe: &Checkpoint) -> Vec<(usize, Vec<i64>)> {
    let ids = probe.get("input_ids").unwrap();
    let t = ids.shape[1];
    let (ids, mask) = (
        ids.to_i64().unwrap(),
        probe.get("attention_mask").unwrap().to_i64().unwrap(),
    );
    (0..ids.len() / t)
        .map(|r| {
            let real = (0..t).filter(|&i| mask[r * t + i] == 1);
            let first = real.clone().next().unwrap();
            (first, real.map(|i| ids[r * t + i]).collect())
        })
        .collect()
}

/// Teacher-forced decoding of each row, one token per step from an empty cache; max |Δ| of every
/// step's logits against transformers' at the same position.
fn stepwise_gap(s: &mut DecoderSession, probe: &Checkpoint) -> f32 {
    let want = probe.get("logits").unwrap();
    let (t, vocab) = (want.shape[1], want.shape[2]);
    let want = want.to_f32().unwrap();
    let mut gap = 0f32;
    for (r, (first, row)) in probe_rows(probe).into_iter().enumerate() {
        let mut cache = s.new_cache(1).unwrap();
        for (k, &id) in row.iter().enumerate() {
            let got = s.forward(&[id], 1, 1, &vec![1; k + 1], &mut cache).unwrap();
            let at = (r * t + first + k) * vocab;
            gap = gap.max(max_diff(got.at(0, 0), &want[at..at + vocab]));
        }
    }
    gap
}

/// Measured on this fixture (2026-12-04): the int8 cache's steps are 0.0098 from transformers at
/// most, the fp32 cache's 4.3e-7; the bound is 5× the measured error.
const KV8_TOL: f32 = 0.05;

#[test]
fn int8_kv_cache_steps_stay_within_its_quantization_error_of_transformers() {
    let rt = runtime();
    let probe = Checkpoint::load(&fixture("llama_gqa")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let hf = tmp.path().join("hf");
    init(&case("llama_gqa"), &hf).unwrap();
    let fp32 = tmp.path().join("fp32");
    let mut cfg = OnnxExportConfig::new(&hf, &fp32);
    cfg.flavor = Some(Flavor::Ort);
    export(&cfg).unwrap();
    let mut s = DecoderSession::load(rt, &fp32, &SessionOptions::default()).unwrap();
    let fp32_gap = stepwise_gap(&mut s, &probe);
    assert!(fp32_gap <= REFERENCE_TOL, "fp32 cache: {fp32_gap}");
    // Scales from the probe's own sequences: no value saturates, so what is left is rounding.
    let rows: Vec<Vec<i64>> = probe_rows(&probe).into_iter().map(|(_, r)| r).collect();
    let (scales, positions) = engine::kv_scales::measure(&mut s, &rows).unwrap();
    assert_eq!(positions, rows.iter().map(Vec::len).sum::<usize>());
    let kv8 = tmp.path().join("kv8");
    let mut cfg = OnnxExportConfig::new(&hf, &kv8);
    cfg.flavor = Some(Flavor::Ort);
    cfg.kv_cache = KvCache::Int8(scales.clone());
    export(&cfg).unwrap();
    // The scales file round-trips, and refuses a model of another shape.
    let file = tmp.path().join("scales.safetensors");
    scales.write(&file).unwrap();
    let model = exports::ModelConfig::load(&hf).unwrap();
    assert_eq!(KvScales::read(&file, &model).unwrap(), scales);
    let mut s8 = DecoderSession::load(rt, &kv8, &SessionOptions::default()).unwrap();
    let gap = stepwise_gap(&mut s8, &probe);
    assert!(gap <= KV8_TOL, "int8 cache: {gap} > {KV8_TOL}");
    assert!(
        gap > 10.0 * fp32_gap.max(1e-6),
        "the int8 cache is not quantized: {gap} vs fp32 {fp32_gap}"
    );
    // The portable graph has no quantizing attention: refused, named.
    let mut cfg = OnnxExportConfig::new(&hf, tmp.path().join("p"));
    cfg.flavor = Some(Flavor::Portable);
    cfg.kv_cache = KvCache::Int8(scales);
    let e = export(&cfg).unwrap_err().to_string();
    assert!(
        e.contains("--kv-cache int8 needs the GroupQueryAttention graph"),
        "{e}"
    );
}
