//! `engine generate` end to end on tiny random models.

mod generate_common;

use std::path::Path;

use engine::session::{DecoderSession, Device, SessionOptions};
use exports::records::FinishReason;
use exports::{TokenId, Tokenizer};
use generate_common::*;

/// Greedy decoding by full recomputation: every step runs the whole sequence through the
/// portable graph with an empty cache and takes the argmax of the last position.
fn reference_greedy(
    session: &mut DecoderSession,
    prompt: &[TokenId],
    steps: usize,
    eos: TokenId,
) -> Vec<TokenId> {
    let mut seq: Vec<i64> = prompt.iter().map(|t| t.as_i64()).collect();
    let mut out = Vec::new();
    for _ in 0..steps {
        let mut cache = session.new_cache(1).unwrap();
        let mask = vec![1i64; seq.len()];
        let logits = session
            .forward(&seq, 1, seq.len(), &mask, &mut cache)
            .unwrap();
        let last = logits.at(0, seq.len() - 1);
        let tok = TokenId(engine::sampling::argmax(last) as u32);
        out.push(tok);
        if tok == eos {
            break;
        }
        seq.push(tok.as_i64());
    }
    out
}

#[test]
fn cached_greedy_decoding_equals_uncached_recomputation_in_both_flavors() {
    let m = models(11);
    let prompts_path = m.dir.path().join("prompts.jsonl");
    let records = prompts(6);
    write_prompts(&prompts_path, &records);
    let tok = Tokenizer::load(&m.hf).unwrap();
    let mut reference = reference_session(&m);
    for (name, model) in [("ort", &m.ort), ("portable", &m.portable)] {
        let out = m.dir.path().join(format!("{name}.jsonl"));
        let mut c = config(model, &prompts_path, &out);
        greedy(&mut c);
        c.batch_size = 3.into();
        run(&c);
        let got = read(&out);
        assert_eq!(got.len(), records.len());
        for (r, g) in records.iter().zip(&got) {
            assert_eq!(r.id, g.id, "input order");
            let ids = tok.prompt_ids(&r.to_prompt()).unwrap();
            let want = reference_greedy(&mut reference, &ids, c.max_new_tokens, tok.eos());
            let resp = &g.responses[0];
            eprintln!(
                "{name} {} {:?} {} {:?}",
                r.id, resp.text, resp.tokens, resp.finish_reason
            );
            let want_text = tok.decode(&want, true).unwrap();
            assert_eq!(resp.text, want_text, "{name} {}: text", r.id);
            assert_eq!(resp.tokens, want.len(), "{name} {}: token count", r.id);
            let reason = if want.last() == Some(&tok.eos()) {
                FinishReason::Eos
            } else {
                FinishReason::Length
            };
            assert_eq!(resp.finish_reason, reason);
            assert_eq!(g.reference, r.reference);
            assert_eq!(g.messages, r.messages);
        }
    }
}

/// Responses that end without a decode step (every sample's first token is its last) are
/// written, for every prompt: the last ones used to be dropped with the end of the input.
#[test]
fn responses_that_end_at_admission_are_all_written() {
    let m = models(17);
    let prompts_path = m.dir.path().join("prompts.jsonl");
    let records = prompts(5);
    write_prompts(&prompts_path, &records);
    let tok = Tokenizer::load(&m.hf).unwrap();
    let mut reference = reference_session(&m);
    for (max_new, n, batch) in [(1, 2, 4), (1, 1, 3), (0, 2, 4)] {
        let out = m
            .dir
            .path()
            .join(format!("first-{max_new}-{n}-{batch}.jsonl"));
        let mut c = config(&m.ort, &prompts_path, &out);
        greedy(&mut c);
        c.max_new_tokens = max_new;
        c.n = n;
        c.batch_size = batch.into();
        let summary = run(&c);
        let got = read(&out);
        assert_eq!(
            summary.prompts,
            records.len(),
            "max_new {max_new}, n {n}: written"
        );
        assert_eq!(got.len(), records.len(), "max_new {max_new}, n {n}: lines");
        assert_eq!(summary.new_tokens, (records.len() * n * max_new) as u64);
        for (r, g) in records.iter().zip(&got) {
            assert_eq!(r.id, g.id, "input order");
            assert_eq!(g.responses.len(), n);
            let ids = tok.prompt_ids(&r.to_prompt()).unwrap();
            let want = reference_greedy(&mut reference, &ids, max_new, tok.eos());
            for resp in &g.responses {
                assert_eq!(resp.tokens, want.len(), "{}: token count", r.id);
                assert_eq!(
                    resp.text,
                    tok.decode(&want, true).unwrap(),
                    "{}: text",
                    r.id
                );
            }
        }
    }
}

/// Sampling settings that make every token depend on the exact logits.
fn sampling(c: &mut engine::generate::GenerateConfig) {
    c.sampling.temperature = 1.3;
    c.sampling.top_k = 40;
    c.sampling.top_p = 0.95;
    c.n = 3;
    c.max_new_tokens = 16;
    c.seed = 5;
    c.timings = false;
}

#[test]
fn output_bytes_do_not_depend_on_batch_size_threads_or_resume_point() {
    let m = models(12);
    let prompts_path = m.dir.path().join("prompts.jsonl");
    write_prompts(&prompts_path, &prompts(9));
    let mut outputs = Vec::new();
    for (batch, threads) in [(1, 1), (3, 2), (16, 2), (5, 1)] {
        let out = m.dir.path().join(format!("b{batch}.jsonl"));
        let mut c = config(&m.ort, &prompts_path, &out);
        sampling(&mut c);
        c.batch_size = batch.into();
        c.threads = Some(threads);
        let s = run(&c);
        assert_eq!(s.prompts, 9);
        outputs.push(std::fs::read(&out).unwrap());
    }
    for o in &outputs[1..] {
        assert_eq!(o, &outputs[0], "output differs between batch sizes");
    }
    let text = String::from_utf8(outputs[0].clone()).unwrap();
    // Samples of one prompt differ from each other (their own streams).
    let first = &read(&m.dir.path().join("b1.jsonl"))[0];
    assert!(
        first
            .responses
            .iter()
            .any(|r| r.text != first.responses[0].text),
        "{text}"
    );

    // Interrupted run: keep two whole lines and half of the third, then resume.
    let cut = m.dir.path().join("cut.jsonl");
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let torn = format!(
        "{}{}{}",
        lines[0],
        lines[1],
        &lines[2][..lines[2].len() / 2]
    );
    std::fs::write(&cut, torn).unwrap();
    let mut c = config(&m.ort, &prompts_path, &cut);
    sampling(&mut c);
    c.resume = true;
    c.batch_size = 2.into();
    let s = run(&c);
    assert_eq!((s.prompts, s.resumed), (7, 2));
    assert_eq!(std::fs::read_to_string(&cut).unwrap(), text);
    // Without --resume an existing output is refused rather than appended to.
    c.resume = false;
    let e = engine::generate::run_with(runtime(), &c).unwrap_err();
    assert!(e.to_string().contains("--resume"), "{e}");
}

/// `--batch-size auto` (the default) takes one slot per sequence up to the cap when memory is
/// plentiful, and exactly what `--memory-budget` holds when it is not: the slot count computed
/// here by hand from the model's config and the longest prompt. The bytes equal a fixed batch size.
#[test]
fn auto_batch_size_follows_the_memory_budget_and_gives_the_fixed_bytes() {
    let m = models(12);
    let prompts_path = m.dir.path().join("prompts.jsonl");
    let records = prompts(9);
    write_prompts(&prompts_path, &records);
    let run_with = |name: &str, batch: engine::generate::BatchSize, budget: Option<usize>| {
        let out = m.dir.path().join(format!("{name}.jsonl"));
        let mut c = config(&m.ort, &prompts_path, &out);
        sampling(&mut c);
        c.batch_size = batch;
        c.memory_budget = budget;
        let s = run(&c);
        (s, std::fs::read(&out).unwrap())
    };
    let (fixed, want) = run_with("fixed", 4.into(), None);
    assert_eq!((fixed.batch_size, fixed.batch_auto), (4, false));
    // 9 prompts × n 3 = 27 sequences, under the CPU cap of 64: one slot each.
    let (auto, bytes) = run_with("auto", engine::generate::BatchSize::Auto, None);
    assert_eq!((auto.batch_size, auto.batch_auto), (27, true));
    assert!(auto.to_string().contains("batch size 27 (auto)"), "{auto}");
    assert_eq!(bytes, want, "auto batch size changed the output");
    // Per slot: 2 (K, V) × layers × kv heads × head_dim × 4 B × (longest prompt + 16 new tokens).
    let mc = exports::ModelConfig::load(&m.hf).unwrap();
    let tok = exports::Tokenizer::load(&m.ort).unwrap();
    let longest = records
        .iter()
        .map(|r| tok.prompt_ids(&r.to_prompt()).unwrap().len())
        .max()
        .unwrap();
    let per_slot =
        2 * mc.num_hidden_layers * mc.num_key_value_heads * mc.head_dim * 4 * (longest + 16);
    let (tight, bytes) = run_with(
        "tight",
        engine::generate::BatchSize::Auto,
        Some(per_slot * 5 / 2),
    );
    assert_eq!(tight.batch_size, 2, "a budget of 2.5 slots holds 2");
    assert_eq!(bytes, want, "a budget-sized batch changed the output");
    // A budget below one slot is refused, by flag name.
    let out = m.dir.path().join("none.jsonl");
    let mut c = config(&m.ort, &prompts_path, &out);
    c.batch_size = engine::generate::BatchSize::Auto;
    c.memory_budget = Some(per_slot / 2);
    let e = engine::generate::run_with(runtime(), &c).unwrap_err();
    assert!(format!("{e:#}").contains("--memory-budget"), "{e:#}");
}

#[test]
fn int8_output_bytes_do_not_depend_on_batch_size_or_threads() {
    // int8 activations are quantized per row, so a row's logits do not depend on the rows it
    // shares a batch with; one range per tensor (DynamicQuantizeLinear) would fail this. The same
    // with an int8 KV cache too: its scales are static, so a row's cached values are its own.
    let m = models(12);
    let prompts_path = m.dir.path().join("prompts.jsonl");
    write_prompts(&prompts_path, &prompts(9));
    for int8 in [int8_export(&m), int8_kv8_export(&m, &prompts_path)] {
        int8_bytes_are_batch_invariant(&m, &int8, &prompts_path);
    }
}

/// An int8-cache folder's prompts run through its float-cache twin (`prefill.onnx`): the first
/// token's logits are those of the int8-weights, float-cache folder (the same graph), bit for
/// bit, and the cache the engine quantizes equals what the int8 graph's GroupQueryAttention
/// writes itself, byte for byte, in layer 0 (the one layer whose inputs both graphs share: from
/// layer 1 on, the int8 graph's prompt attention has read its quantized cache).
#[test]
fn an_int8_cache_folder_prefills_through_its_float_twin() {
    let m = models(19);
    let prompts_path = m.dir.path().join("prompts.jsonl");
    let records = prompts(6);
    write_prompts(&prompts_path, &records);
    let (int8, kv8) = (int8_export(&m), int8_kv8_export(&m, &prompts_path));
    // The reference for the cache bytes: the same folder whose graph attends with ONNX Runtime's
    // GroupQueryAttention, which also runs prompts (the engine's operator runs decode steps only).
    let gqa = int8_kv8_export_with(&m, &prompts_path, exports::onnx::KvAttention::Ort);
    assert!(kv8.join(exports::onnx::PREFILL_FILE).is_file());
    // Its weights are the main graph's, read from `model.onnx.data`: no second copy on disk.
    assert!(!kv8
        .join(format!("{}.data", exports::onnx::PREFILL_FILE))
        .exists());
    let tok = Tokenizer::load(&m.hf).unwrap();
    let load = |model: &Path| backend(model, Device::Cpu, 3, false);
    let (mut b8, mut bf) = (load(&kv8), load(&int8));
    assert!(b8.prefills_in_float() && !bf.prefills_in_float());
    let mut own = DecoderSession::load(runtime(), &gqa, &SessionOptions::default()).unwrap();
    let layers = own.io().layers;
    let mut saturated = 0;
    for r in &records {
        let ids = tok.prompt_ids(&r.to_prompt()).unwrap();
        let p = ids.len();
        let got = b8.prefill(2, &ids).unwrap().to_vec();
        assert_eq!(
            got,
            bf.prefill(2, &ids).unwrap(),
            "{}: first-token logits",
            r.id
        );
        let mut cache = own.new_cache(1).unwrap();
        let seq: Vec<i64> = ids.iter().map(|t| t.as_i64()).collect();
        own.forward(&seq, 1, p, &vec![1; p], &mut cache).unwrap();
        let (k, v) = cache.layer_i8(0).unwrap();
        for (buffer, want) in [(0, k), (layers, v)] {
            let want: Vec<u8> = want.iter().map(|&x| x as u8).collect();
            assert_eq!(
                b8.slot_bytes(buffer, 2, p),
                want,
                "{}: layer 0, buffer {buffer}",
                r.id
            );
            saturated += want.iter().filter(|&&x| x == 127 || x == 128).count();
        }
    }
    eprintln!("{saturated} saturated values in layer 0");
    // Prompts prefilled together in groups of one (a scratch limit below one row) give the
    // logits and every cache byte of one group of all.
    let ids: Vec<Vec<TokenId>> = records[..3]
        .iter()
        .map(|r| tok.prompt_ids(&r.to_prompt()).unwrap())
        .collect();
    let rows: Vec<&[TokenId]> = ids.iter().map(Vec::as_slice).collect();
    let mut grouped = load(&kv8);
    grouped.limit_float_prefill_scratch(1);
    let whole = b8.prefill_rows(0, &rows).unwrap().to_vec();
    assert_eq!(whole, grouped.prefill_rows(0, &rows).unwrap());
    for (slot, r) in rows.iter().enumerate() {
        for buffer in 0..2 * layers {
            assert_eq!(
                b8.slot_bytes(buffer, slot, r.len()),
                grouped.slot_bytes(buffer, slot, r.len()),
                "slot {slot}, buffer {buffer}"
            );
        }
    }
}

/// The engine's int8-cache decode attention (`ai.pco:Int8CacheAttention`, the default of an
/// `--kv-cache int8` folder) against ONNX Runtime's GroupQueryAttention over the same cache
/// (`--kv-attention ort`): three prompts prefilled alike (both through the same float twin), then
/// eight decode steps teacher-forced with the same tokens (ONNX Runtime's greedy ones). Each
/// step's logits agree to float rounding, and the keys and values each writes into layer 0 (whose
/// inputs both graphs share exactly) are the same bytes.
#[test]
fn the_engines_int8_cache_attention_equals_onnx_runtimes() {
    use engine::generate::backend::StepRow;
    let m = models(23);
    let prompts_path = m.dir.path().join("prompts.jsonl");
    let records = prompts(6);
    write_prompts(&prompts_path, &records);
    let ours = int8_kv8_export(&m, &prompts_path);
    let gqa = int8_kv8_export_with(&m, &prompts_path, exports::onnx::KvAttention::Ort);
    let graph = std::fs::read(ours.join("model.onnx")).unwrap();
    let has = |op: &str| graph.windows(op.len()).any(|w| w == op.as_bytes());
    assert!(has("Int8CacheAttention") && !has("GroupQueryAttention"));
    let engine_ops = |dir: &Path| exports::onnx::uses_engine_ops(&dir.join("model.onnx")).unwrap();
    assert!(engine_ops(&ours) && !engine_ops(&gqa) && !engine_ops(&m.ort));
    // On a GPU such a folder is refused at load, with the export flag that fixes it.
    let err = engine::generate::backend::Backend::load(
        runtime(),
        &engine::generate::backend::BackendConfig {
            model: ours.clone(),
            session: SessionOptions {
                device: Device::Cuda(0),
                ..SessionOptions::default()
            },
            slots: 1,
            max_len: 64,
            fixed_shape: false,
            mover: engine::generate::device::MoverChoice::Auto,
        },
    )
    .err()
    .expect("a CUDA backend for the engine's CPU operator");
    assert!(format!("{err:#}").contains("--kv-attention ort"), "{err:#}");
    let tok = Tokenizer::load(&m.hf).unwrap();
    let (mut a, mut b) = (
        backend(&ours, Device::Cpu, 3, false),
        backend(&gqa, Device::Cpu, 3, false),
    );
    let layers = DecoderSession::load(runtime(), &gqa, &SessionOptions::default())
        .unwrap()
        .io()
        .layers;
    let mut rows = Vec::new();
    for (slot, r) in records[..3].iter().enumerate() {
        let ids = tok.prompt_ids(&r.to_prompt()).unwrap();
        let la = a.prefill(slot, &ids).unwrap().to_vec();
        assert_eq!(
            la,
            b.prefill(slot, &ids).unwrap(),
            "{}: prompt logits",
            r.id
        );
        rows.push(Some(StepRow {
            token: argmax(&la),
            pos: ids.len(),
        }));
    }
    let mut worst = 0.0f32;
    for step in 0..8 {
        let la = a.decode(&rows).unwrap().to_vec();
        let lb = b.decode(&rows).unwrap().to_vec();
        let scale = lb.iter().fold(1.0f32, |m, x| m.max(x.abs()));
        let diff = la
            .iter()
            .zip(&lb)
            .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(
            diff <= 1e-4 * scale,
            "step {step}: logits differ by {diff} (scale {scale})"
        );
        worst = worst.max(diff);
        let vocab = lb.len() / rows.len();
        for (row, logits) in rows.iter_mut().zip(lb.chunks(vocab)) {
            let r = row.as_mut().unwrap();
            r.token = argmax(logits);
            r.pos += 1;
        }
    }
    eprintln!("largest logit difference over 8 steps: {worst}");
    for (slot, r) in rows.iter().enumerate() {
        let len = r.unwrap().pos;
        for buffer in [0, layers] {
            assert_eq!(
                a.slot_bytes(buffer, slot, len),
                b.slot_bytes(buffer, slot, len),
                "slot {slot}, layer 0 buffer {buffer}"
            );
        }
    }
}

fn argmax(logits: &[f32]) -> TokenId {
    let best = logits
        .iter()
        .enumerate()
        .fold(0, |best, (i, &x)| if x > logits[best] { i } else { best });
    TokenId(best as u32)
}

fn int8_bytes_are_batch_invariant(m: &Models, int8: &Path, prompts_path: &Path) {
    let name = int8.file_name().unwrap().to_string_lossy();
    let mut outputs = Vec::new();
    for (batch, threads) in [(1, 1), (16, 2), (5, 1), (5, 2)] {
        let out = m
            .dir
            .path()
            .join(format!("{name}-b{batch}-t{threads}.jsonl"));
        let mut c = config(int8, prompts_path, &out);
        sampling(&mut c);
        c.batch_size = batch.into();
        c.threads = Some(threads);
        run(&c);
        outputs.push(std::fs::read(&out).unwrap());
    }
    for o in &outputs[1..] {
        assert_eq!(
            o, &outputs[0],
            "{name}: output differs between batch sizes or threads"
        );
    }
    // One sample per prompt: batched (right-padded) prefill equals one prompt at a time.
    let mut greedy_out = Vec::new();
    for batch in [1, 16] {
        let out = m.dir.path().join(format!("{name}-greedy-b{batch}.jsonl"));
        let mut c = config(int8, prompts_path, &out);
        greedy(&mut c);
        c.timings = false;
        c.batch_size = batch.into();
        run(&c);
        greedy_out.push(std::fs::read(&out).unwrap());
    }
    assert_eq!(
        greedy_out[0], greedy_out[1],
        "{name}: batched prefill changed the output"
    );
}

/// With one sample per prompt, the prompts admitted together are prefilled in one right-padded
/// run (`Backend::prefill_rows`); the bytes must equal one-prompt-at-a-time prefill (batch 1).
#[test]
fn batched_prefill_gives_the_same_bytes_as_one_prompt_at_a_time() {
    let m = models(13);
    let prompts_path = m.dir.path().join("prompts.jsonl");
    write_prompts(&prompts_path, &prompts(9));
    let mut outputs = Vec::new();
    for batch in [1, 4, 16] {
        let out = m.dir.path().join(format!("n1-b{batch}.jsonl"));
        let mut c = config(&m.ort, &prompts_path, &out);
        sampling(&mut c);
        c.n = 1;
        c.batch_size = batch.into();
        assert_eq!(run(&c).prompts, 9);
        outputs.push(std::fs::read(&out).unwrap());
    }
    for o in &outputs[1..] {
        assert_eq!(o, &outputs[0], "batched prefill changed the output");
    }
}

#[test]
fn shards_merged_equal_the_unsharded_run() {
    let m = models(13);
    let prompts_path = m.dir.path().join("prompts.jsonl");
    write_prompts(&prompts_path, &prompts(7));
    let whole = m.dir.path().join("whole.jsonl");
    let mut c = config(&m.ort, &prompts_path, &whole);
    sampling(&mut c);
    run(&c);
    let mut shards = Vec::new();
    for i in 0..2 {
        let out = m.dir.path().join(format!("shard{i}.jsonl"));
        let mut c = config(&m.ort, &prompts_path, &out);
        sampling(&mut c);
        c.shard = Some(engine::generate::Shard { index: i, count: 2 });
        c.batch_size = (2 + i).into();
        let s = run(&c);
        assert_eq!(s.prompts, if i == 0 { 4 } else { 3 });
        shards.push(out);
    }
    let merged = m.dir.path().join("merged.jsonl");
    let cfg = engine::generate::MergeConfig {
        prompts: prompts_path.clone(),
        shards,
        out: merged.clone(),
    };
    let s = engine::generate::merge(&cfg).unwrap();
    assert_eq!((s.records, s.missing), (7, 0));
    assert_eq!(
        std::fs::read(&merged).unwrap(),
        std::fs::read(&whole).unwrap()
    );
}

#[test]
fn the_portable_graph_gives_the_same_samples_as_the_ort_graph() {
    // Both graphs compute the same function; sampled tokens agree unless a draw lands within
    // float noise of a boundary, which 7 × 3 × 16 draws do not.
    let m = models(14);
    let prompts_path = m.dir.path().join("prompts.jsonl");
    write_prompts(&prompts_path, &prompts(7));
    let mut got = Vec::new();
    for (name, model) in [("ort", &m.ort), ("portable", &m.portable)] {
        let out = m.dir.path().join(format!("{name}.jsonl"));
        let mut c = config(model, &prompts_path, &out);
        sampling(&mut c);
        run(&c);
        got.push(untimed(&read(&out)));
    }
    assert_eq!(got[0], got[1]);
}

#[test]
fn malformed_lines_name_file_and_line_or_are_counted_and_long_prompts_are_truncated() {
    let m = models(15);
    let path = m.dir.path().join("bad.jsonl");
    let long = "word ".repeat(400);
    let text = format!(
        "{{\"id\":\"a\",\"prompt\":\"hello\"}}\n\n{{\"id\":\"b\",\"prompt\":3}}\n{{\"id\":\"c\",\"prompt\":\"{long}\"}}\n{{\"id\":\"d\",\"messages\":[{{\"role\":\"user\",\"content\":\"hi\"}}]}}\n"
    );
    std::fs::write(&path, text).unwrap();
    let out = m.dir.path().join("out.jsonl");
    let mut c = config(&m.ort, &path, &out);
    greedy(&mut c);
    let e = engine::generate::run_with(runtime(), &c).unwrap_err();
    assert!(
        format!("{e:#}").contains(&format!("{}:3:", path.display())),
        "{e:#}"
    );
    assert!(
        !out.exists(),
        "the prompt file is checked before any output is opened"
    );
    c.skip_invalid = true;
    c.chat_template = engine::generate::ChatTemplateMode::None;
    let s = run(&c);
    // Line 3 does not parse; line 5 has `messages` under --chat-template none.
    assert_eq!((s.prompts, s.invalid, s.truncated), (2, 2, 1), "{s}");
    let ids: Vec<String> = read(&out).into_iter().map(|r| r.id).collect();
    assert_eq!(ids, ["a", "c"]);
}
