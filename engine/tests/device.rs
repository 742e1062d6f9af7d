//! The generation backend's device paths: the copy counter and fixed-shape decoding on the CPU
//! execution provider (always run), and generation and reward scoring on another device compared
//! with the CPU (run when `PCO_TEST_DEVICE` names one, e.g. `cuda:0`, as `scripts/gpu-check`
//! sets it; `PCO_TEST_DEVICE=cpu` runs them CPU against CPU, as its dry run does). Those tests are
//! `#[ignore]`d, so a plain `cargo test` counts them as ignored instead of passing them; run them
//! with `-- --include-ignored` and the variable set (they fail when it is missing).

mod generate_common;

use engine::generate::backend::{Backend, BackendConfig, StepRow};
use engine::generate::device::MoverChoice;
use engine::session::{Device, SessionOptions};
use exports::{TokenId, Tokenizer};
use generate_common::*;

/// The device under test, named by `PCO_TEST_DEVICE`; a device-gated test run without it fails.
fn device_under_test(test: &str) -> Device {
    match std::env::var("PCO_TEST_DEVICE") {
        Ok(d) => d.parse().unwrap_or_else(|e| panic!("PCO_TEST_DEVICE: {e}")),
        Err(_) => panic!(
            "{test} needs PCO_TEST_DEVICE (e.g. cuda:0, or cpu for the dry run); scripts/gpu-check sets it"
        ),
    }
}

fn argmax(row: &[f32]) -> TokenId {
    let mut best = 0;
    for (i, x) in row.iter().enumerate() {
        if *x > row[best] {
            best = i;
        }
    }
    TokenId(best as u32)
}

/// Greedy decoding of three prompts side by side, by hand; returns every step's logits and, per
/// step, the copy counter of that step.
fn greedy_steps(
    b: &mut Backend,
    prompts: &[Vec<TokenId>],
    steps: usize,
) -> (Vec<Vec<f32>>, Vec<engine::generate::backend::Transfers>) {
    let v = b.vocab();
    let mut rows: Vec<Option<StepRow>> = Vec::new();
    let mut logits = Vec::new();
    for (slot, p) in prompts.iter().enumerate() {
        let l = b.prefill(slot, p).unwrap().to_vec();
        rows.push(Some(StepRow {
            token: argmax(&l),
            pos: p.len(),
        }));
        logits.push(l);
    }
    let mut counts = Vec::new();
    for _ in 0..steps {
        let out = b.decode(&rows).unwrap().to_vec();
        counts.push(b.transfers().last_decode);
        for (i, r) in rows.iter_mut().enumerate() {
            let r = r.as_mut().unwrap();
            r.token = argmax(&out[i * v..(i + 1) * v]);
            r.pos += 1;
        }
        logits.push(out);
    }
    (logits, counts)
}

fn three_prompts(m: &Models) -> Vec<Vec<TokenId>> {
    let tok = Tokenizer::load(&m.ort).unwrap();
    prompts(3)
        .iter()
        .map(|p| tok.prompt_ids(&p.to_prompt()).unwrap())
        .collect()
}

#[test]
fn steady_state_decode_moves_only_ids_and_logits_rows() {
    let m = models(41);
    let prompts = three_prompts(&m);
    let rows = prompts.len() as u64;
    let mut b = backend(&m.ort, Device::Cpu, 4, true);
    let v = b.vocab() as u64;
    let (_, counts) = greedy_steps(&mut b, &prompts, 6);
    for (step, t) in counts.iter().enumerate().skip(1) {
        // Per moving row: its new id (8 bytes) and one mask entry turned on (8 bytes); nothing
        // of the cache; the logits rows asked for (f32).
        assert!(
            t.to_device <= rows * 16,
            "step {step}: {} bytes in, more than ids + one mask entry per row ({})",
            t.to_device,
            rows * 16
        );
        assert_eq!(t.from_device, rows * v * 4, "step {step}: logits rows out");
        assert_eq!(t.cache, 0, "step {step}: the cache is device memory on CPU");
    }
    // The variable-shape step sends the whole mask, [rows, longest + 1] i64, and the ids.
    let mut b = backend(&m.ort, Device::Cpu, 4, false);
    let (_, counts) = greedy_steps(&mut b, &prompts, 3);
    let longest = prompts.iter().map(|p| p.len()).max().unwrap() as u64;
    let last = counts[2];
    assert_eq!(last.to_device, rows * 8 + rows * (longest + 3) * 8);
    assert_eq!(last.from_device, rows * v * 4);
    assert_eq!(last.cache, 0);
}

#[test]
fn fixed_shape_decode_gives_the_same_logits_bit_for_bit() {
    let m = models(42);
    let prompts = three_prompts(&m);
    let mut fixed = backend(&m.ort, Device::Cpu, 4, true);
    let mut variable = backend(&m.ort, Device::Cpu, 4, false);
    // The GPU's way: ids, mask and logits moved by the copy graph.
    let mut graph = backend_with(&m.ort, Device::Cpu, 4, true, MoverChoice::Graph);
    let (a, _) = greedy_steps(&mut fixed, &prompts, 8);
    let (b, _) = greedy_steps(&mut variable, &prompts, 8);
    let (c, _) = greedy_steps(&mut graph, &prompts, 8);
    assert_eq!(a.len(), b.len());
    assert!(
        a == c,
        "fixed-shape logits differ between the host and the graph mover"
    );
    for (step, (x, y)) in a.iter().zip(&b).enumerate() {
        let same = x.len() == y.len() && x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits());
        assert!(
            same,
            "step {step}: fixed-shape logits differ from variable-shape ones"
        );
    }
}

#[test]
#[ignore = "needs a device: PCO_TEST_DEVICE=cuda:0 (scripts/gpu-check runs it)"]
fn generation_on_the_device_matches_the_cpu() {
    let device = device_under_test("generation_on_the_device_matches_the_cpu");
    let m = models(43);
    let prompts = three_prompts(&m);
    let mut cpu = backend(&m.ort, Device::Cpu, 4, false);
    let mut dev = backend(&m.ort, device, 4, false);
    let (a, _) = greedy_steps(&mut cpu, &prompts, 8);
    let (b, _) = greedy_steps(&mut dev, &prompts, 8);
    let mut max = 0f32;
    for (x, y) in a.iter().zip(&b) {
        for (p, q) in x.iter().zip(y) {
            max = max.max((p - q).abs());
        }
    }
    // fp32 on both (TF32 off): kernels differ only in summation order.
    assert!(
        max <= 1e-3,
        "{device} vs cpu: max |Δ logit| = {max:e} > 1e-3"
    );
    eprintln!("{device} vs cpu: max |Δ logit| = {max:e} over 8 greedy steps of 3 prompts");
    let t = dev.transfers();
    eprintln!("{device}: {t}");
}

#[test]
#[ignore = "needs a device: PCO_TEST_DEVICE=cuda:0 (scripts/gpu-check runs it)"]
fn full_step_session_on_the_device_matches_the_cpu() {
    let device = device_under_test("full_step_session_on_the_device_matches_the_cpu");
    let m = models(44);
    let mut cpu =
        engine::session::DecoderSession::load(runtime(), &m.portable, &SessionOptions::default())
            .unwrap();
    let mut dev = engine::session::DecoderSession::load(
        runtime(),
        &m.portable,
        &SessionOptions {
            device,
            ..SessionOptions::default()
        },
    )
    .unwrap();
    let prompts = three_prompts(&m);
    let mut max = 0f32;
    for p in &prompts {
        let ids: Vec<i64> = p.iter().map(|t| t.as_i64()).collect();
        let mask = vec![1i64; ids.len()];
        let mut c1 = cpu.new_cache(1).unwrap();
        let mut c2 = dev.new_cache(1).unwrap();
        let a = cpu.forward(&ids, 1, ids.len(), &mask, &mut c1).unwrap();
        let b = dev.forward(&ids, 1, ids.len(), &mask, &mut c2).unwrap();
        for (x, y) in a.data.iter().zip(&b.data) {
            max = max.max((x - y).abs());
        }
    }
    assert!(
        max <= 1e-3,
        "{device} vs cpu full-sequence logits: max |Δ| = {max:e} > 1e-3"
    );
    eprintln!("{device} vs cpu (the session reward scoring and verify use): max |Δ| = {max:e}");
}

/// The moves a GPU makes (the copy graph: `Identity` nodes on the session's execution provider)
/// give the same bytes as host `memcpy`: prefix copies, a stash and its restore, and a re-layout
/// to a larger capacity, then decoding on from the copies.
#[test]
fn copies_through_the_device_graph_equal_host_copies() {
    let m = models(45);
    let prompts = three_prompts(&m);
    let run = |model: &std::path::Path, mover: MoverChoice| {
        let mut b = Backend::load(
            runtime(),
            &BackendConfig {
                model: model.to_path_buf(),
                session: SessionOptions {
                    threads: 1,
                    ..SessionOptions::default()
                },
                slots: 6,
                max_len: 256,
                fixed_shape: false,
                mover,
            },
        )
        .unwrap();
        assert_eq!(b.copies_on_device_graph(), mover == MoverChoice::Graph);
        let (mut logits, _) = greedy_steps(&mut b, &prompts, 3);
        // Slot 3 ← slot 0's prompt + 3 steps; slot 4 ← a stash of slot 1; then grow past 64.
        let len0 = prompts[0].len() + 3;
        b.copy_prefix(0, 3, len0);
        let len1 = prompts[1].len() + 3;
        let stash = b.stash(1, len1);
        b.unstash(&stash, 4);
        b.ensure_capacity(200).unwrap();
        let v = b.vocab();
        let last = logits.last().unwrap().clone();
        let tok = |row: usize| argmax(&last[row * v..(row + 1) * v]);
        // Slots 0 and 1 decode their own next step beside their copies in slots 3 and 4.
        let r0 = Some(StepRow {
            token: tok(0),
            pos: len0,
        });
        let r1 = Some(StepRow {
            token: tok(1),
            pos: len1,
        });
        let rows = vec![r0, r1, None, r0, r1];
        logits.push(b.decode(&rows).unwrap().to_vec());
        logits
    };
    // The concat form (portable export) gathers and scatters with moves on every step.
    let portable_host = run(&m.portable, MoverChoice::Auto);
    let portable_graph = run(&m.portable, MoverChoice::Graph);
    let host = run(&m.ort, MoverChoice::Auto);
    let graph = run(&m.ort, MoverChoice::Graph);
    for (a, b) in [(&host, &graph), (&portable_host, &portable_graph)] {
        assert_eq!(a.len(), b.len());
        for (step, (x, y)) in a.iter().zip(b).enumerate() {
            let same =
                x.len() == y.len() && x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits());
            assert!(
                same,
                "step {step}: the copy graph's bytes differ from memcpy's"
            );
        }
    }
    // The copies decode exactly as their sources (rows of a step are independent).
    let v = host[0].len();
    let copied = host.last().unwrap();
    assert!(
        copied[..v] == copied[3 * v..4 * v],
        "slot 3 does not continue slot 0"
    );
    assert!(
        copied[v..2 * v] == copied[4 * v..5 * v],
        "slot 4 does not continue slot 1"
    );
}

/// Generate with a half-precision export on `device` and compare each incremental step's
/// logits with a full recomputation of the sequence by the same graph (no cache reuse); returns
/// the largest |Δ|.
fn half_precision_gap(m: &Models, elem: exports::onnx::Elem, device: Device) -> f32 {
    use exports::onnx::{export, Flavor, OnnxExportConfig};
    let prompts = three_prompts(m);
    let dir = m.dir.path().join(format!("{elem:?}"));
    if !dir.exists() {
        let mut e = OnnxExportConfig::new(&m.hf, &dir);
        e.flavor = Some(Flavor::Ort);
        e.last_logits_only = true;
        e.dtype = elem;
        export(&e).unwrap();
    }
    let mut b = backend(&dir, device, 4, false);
    let v = b.vocab();
    let (steps, _) = greedy_steps(&mut b, &prompts, 4);
    let opts = SessionOptions {
        device,
        ..SessionOptions::default()
    };
    let mut full = engine::session::DecoderSession::load(runtime(), &dir, &opts).unwrap();
    let mut seqs: Vec<Vec<TokenId>> = prompts.clone();
    let mut max = 0f32;
    // steps[row] is row's prefill; steps[3 + j] the j-th decode step over all rows.
    for (k, step) in steps.iter().enumerate().skip(prompts.len()) {
        for (row, seq) in seqs.iter_mut().enumerate() {
            let prev = if k == prompts.len() {
                &steps[row][..]
            } else {
                &steps[k - 1][row * v..(row + 1) * v]
            };
            seq.push(argmax(prev));
            let ids: Vec<i64> = seq.iter().map(|t| t.as_i64()).collect();
            let mut c = full.new_cache(1).unwrap();
            let want = full
                .forward(&ids, 1, ids.len(), &vec![1; ids.len()], &mut c)
                .unwrap();
            for (g, w) in step[row * v..(row + 1) * v].iter().zip(want.at(0, 0)) {
                let d = (g - w).abs();
                max = if d.is_nan() {
                    f32::INFINITY
                } else {
                    max.max(d)
                };
            }
        }
    }
    max
}

/// fp16 exports (`exports onnx --dtype fp16`) generate with an fp16 cache: incremental steps
/// match a full recomputation.
#[test]
fn fp16_cache_decodes_like_a_full_recomputation() {
    let m = models(46);
    let max = half_precision_gap(&m, exports::onnx::Elem::F16, Device::Cpu);
    assert!(max <= 2e-2, "fp16: max |Δ logit| = {max:e} > 2e-2");
    eprintln!("fp16 on cpu: incremental vs full recomputation, max |Δ logit| = {max:e}");
}

/// The same on the device, in fp16 and bf16 (ONNX Runtime's CPU provider has no bf16 kernels,
/// so bf16 runs only on a GPU).
#[test]
#[ignore = "needs a device: PCO_TEST_DEVICE=cuda:0 (scripts/gpu-check runs it)"]
fn half_precision_caches_on_the_device() {
    let device = device_under_test("half_precision_caches_on_the_device");
    let m = models(47);
    let mut elems = vec![(exports::onnx::Elem::F16, 2e-2f32)];
    if device == Device::Cpu {
        eprintln!("bf16 not checked on cpu: ONNX Runtime's CPU provider has no bf16 kernels");
    } else {
        elems.push((exports::onnx::Elem::BF16, 1.5e-1));
    }
    for (elem, bound) in elems {
        let max = half_precision_gap(&m, elem, device);
        assert!(
            max <= bound,
            "{elem:?} on {device}: max |Δ logit| = {max:e} > {bound:e}"
        );
        eprintln!(
            "{elem:?} on {device}: incremental vs full recomputation, max |Δ logit| = {max:e}"
        );
    }
}
