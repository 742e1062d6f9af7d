//! `engine generate` end to end on tiny random models.

mod generate_common;

use engine::session::{DecoderSession, SessionOptions};
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
    let mut reference = DecoderSession::load(
        runtime(),
        &m.portable,
        &SessionOptions {
            threads: 1,
            optimize: true,
        },
    )
    .unwrap();
    for (name, model) in [("ort", &m.ort), ("portable", &m.portable)] {
        let out = m.dir.path().join(format!("{name}.jsonl"));
        let mut c = config(model, &prompts_path, &out);
        greedy(&mut c);
        c.batch_size = 3;
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
