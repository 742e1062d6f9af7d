//! `engine generate --decoding greedy` equals a greedy loop over the libtorch model (full
//! recomputation each step, no cache) for the same weights.

use engine::generate::{run_with, GenerateConfig};
use engine::sampling::Decoding;
use exports::onnx::{export, Flavor, OnnxExportConfig};
use exports::records::{read_jsonl, FinishReason, GenerationRecord, PromptRecord};
use exports::{Head, TokenId, Tokenizer};
use tch::{Device, Tensor};
use tests::{runtime, tiny_model, VARIANTS};

const MAX_NEW: usize = 12;

/// Greedy tokens of the tch model: argmax (first maximum) of the last position, until EOS or MAX_NEW.
fn tch_greedy(
    model: &training::Model,
    prompt: &[TokenId],
    eos: TokenId,
) -> (Vec<TokenId>, FinishReason) {
    let mut ids: Vec<i64> = prompt.iter().map(|t| t.as_i64()).collect();
    let mut out = Vec::new();
    for _ in 0..MAX_NEW {
        let n = ids.len() as i64;
        let x = Tensor::from_slice(&ids).view([1, n]);
        let m = Tensor::ones([1, n], (tch::Kind::Int64, Device::Cpu));
        let logits = tch::no_grad(|| model.forward(&x, &m))
            .select(1, n - 1)
            .view([-1]);
        let row = Vec::<f32>::try_from(logits).unwrap();
        let next = TokenId(engine::sampling::argmax(&row) as u32);
        out.push(next);
        if next == eos {
            return (out, FinishReason::Eos);
        }
        ids.push(next.as_i64());
    }
    (out, FinishReason::Length)
}

#[test]
fn engine_greedy_equals_the_tch_greedy_loop() {
    let tmp = tempfile::tempdir().unwrap();
    let hf = tmp.path().join("hf");
    tiny_model(&hf, VARIANTS[0], Head::Lm, 21);
    let onnx = tmp.path().join("onnx");
    let mut ec = OnnxExportConfig::new(&hf, &onnx);
    ec.flavor = Some(Flavor::Ort);
    ec.last_logits_only = true;
    export(&ec).unwrap();
    let prompts = tmp.path().join("prompts.jsonl");
    let texts = [
        "The cat sat on",
        "In 1862 the",
        "Hello, world! This is a longer prompt of text",
    ];
    let records: Vec<PromptRecord> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| PromptRecord::text(format!("p{i}"), *t))
        .collect();
    exports::records::write_jsonl(&prompts, &records).unwrap();
    let out = tmp.path().join("gen.jsonl");
    let mut cfg = GenerateConfig::new(&onnx, &prompts, &out);
    cfg.max_new_tokens = MAX_NEW;
    cfg.sampling.decoding = Decoding::Greedy;
    cfg.batch_size = 3.into();
    cfg.progress = false;
    run_with(runtime(), &cfg).unwrap();
    let got = read_jsonl::<GenerationRecord>(&out).unwrap();

    let tok = Tokenizer::load(&hf).unwrap();
    let (_vs, model) = training::weights::load_model(&hf, Device::Cpu, Head::Lm).unwrap();
    for (rec, text) in got.iter().zip(texts) {
        let prompt = tok.encode(text, true).unwrap();
        let (tokens, reason) = tch_greedy(&model, &prompt, tok.eos());
        let r = &rec.responses[0];
        assert_eq!(r.finish_reason, reason, "{text}");
        assert_eq!(r.tokens, tokens.len(), "{text}");
        let body = if reason == FinishReason::Eos {
            &tokens[..tokens.len() - 1]
        } else {
            &tokens[..]
        };
        assert_eq!(r.text, tok.decode(body, true).unwrap(), "{text}");
    }
}
