//! `engine generate` at the token level: the scheduler driven directly, compared with independent
//! loops over full recomputation; n-gram blocking, stop strings, EOS and beam search.

mod generate_common;

use std::path::Path;

use engine::generate::backend::{Backend, BackendConfig};
use engine::generate::beam::BeamSearch;
use engine::generate::scheduler::{Finished, Job, Scheduler, SchedulerConfig};
use engine::generate::stop::Stopper;
use engine::sampling::{Decoding, SamplingConfig};
use engine::session::{DecoderSession, SessionOptions};
use exports::records::FinishReason;
use exports::{PromptRecord, TokenId, Tokenizer};
use generate_common::*;

struct Run<'a> {
    model: &'a Path,
    tok: &'a Tokenizer,
    sampling: SamplingConfig,
    n: usize,
    slots: usize,
    max_new: usize,
    eos: Vec<TokenId>,
    stops: Vec<String>,
}

/// Drive the scheduler over `prompts` (as the run stage does, without channels).
fn generate(r: &Run<'_>, prompts: &[Vec<TokenId>]) -> Vec<Finished> {
    let backend = Backend::load(
        runtime(),
        &BackendConfig {
            model: r.model.to_path_buf(),
            session: SessionOptions {
                threads: 2,
                ..SessionOptions::default()
            },
            slots: r.slots,
            max_len: 256,
            fixed_shape: false,
            mover: Default::default(),
        },
    )
    .unwrap();
    let stopper = Stopper::new(r.tok, r.eos.clone(), false, r.stops.clone(), r.max_new);
    let cfg = SchedulerConfig {
        sampling: r.sampling.clone(),
        n: r.n,
        seed: 3,
        stopper,
    };
    let mut s = Scheduler::new(backend, cfg);
    let mut jobs = prompts.iter().enumerate().map(|(i, ids)| Job {
        index: i,
        record: PromptRecord::text(format!("p{i}"), "unused"),
        ids: ids.clone(),
    });
    let mut done = Vec::new();
    let mut open = true;
    loop {
        s.admit_waiting(&mut done);
        while open && s.can_admit() {
            match jobs.next() {
                Some(j) => s.admit(j, &mut done).unwrap(),
                None => open = false,
            }
        }
        if !s.busy() && !open {
            break;
        }
        s.step(&mut done).unwrap();
    }
    done.sort_by_key(|f| f.index);
    assert_eq!(done.len(), prompts.len());
    done
}

fn prompt_ids(tok: &Tokenizer, n: usize) -> Vec<Vec<TokenId>> {
    prompts(n)
        .iter()
        .map(|p| tok.prompt_ids(&p.to_prompt()).unwrap())
        .collect()
}

fn greedy_cfg() -> SamplingConfig {
    SamplingConfig {
        decoding: Decoding::Greedy,
        ..SamplingConfig::default()
    }
}

/// Last-position logits of `seq` by full recomputation (portable graph, empty cache).
fn full_logits(session: &mut DecoderSession, seq: &[TokenId]) -> Vec<f32> {
    let ids: Vec<i64> = seq.iter().map(|t| t.as_i64()).collect();
    let mut cache = session.new_cache(1).unwrap();
    let logits = session
        .forward(&ids, 1, ids.len(), &vec![1; ids.len()], &mut cache)
        .unwrap();
    logits.at(0, ids.len() - 1).to_vec()
}

#[test]
fn greedy_tokens_equal_an_uncached_greedy_loop_and_n_samples_share_a_prefill() {
    let m = models(21);
    let tok = Tokenizer::load(&m.hf).unwrap();
    let mut reference = reference_session(&m);
    let prompts = prompt_ids(&tok, 5);
    // n = 3 greedy samples on 4 slots: some samples wait for a slot and start from the stash.
    let r = Run {
        model: &m.ort,
        tok: &tok,
        sampling: greedy_cfg(),
        n: 3,
        slots: 4,
        max_new: 10,
        eos: vec![tok.eos()],
        stops: vec![],
    };
    for f in generate(&r, &prompts) {
        let mut seq = prompts[f.index].clone();
        let mut want = Vec::new();
        for _ in 0..r.max_new {
            let t = TokenId(engine::sampling::argmax(&full_logits(&mut reference, &seq)) as u32);
            want.push(t);
            seq.push(t);
            if t == tok.eos() {
                break;
            }
        }
        for s in &f.samples {
            assert_eq!(s.tokens, want, "prompt {}", f.index);
        }
    }
}

#[test]
fn no_repeat_ngram_never_emits_a_repeated_ngram() {
    // Tied embeddings make a random model repeat its input token, so the ban has work to do.
    let dir = tempfile::tempdir().unwrap();
    let hf = dir.path().join("hf");
    let mut cfg = exports::init::InitConfig::tiny(exports::ModelType::Llama, 4);
    (cfg.hidden_size, cfg.heads, cfg.kv_heads) = (64, 4, 2);
    exports::init::init(&cfg, &hf).unwrap();
    let onnx = dir.path().join("onnx");
    exports::onnx::export(&exports::onnx::OnnxExportConfig::new(&hf, &onnx)).unwrap();
    let tok = Tokenizer::load(&hf).unwrap();
    let prompts = prompt_ids(&tok, 4);
    for (decoding, n) in [
        (Decoding::Greedy, 1),
        (Decoding::Sample, 2),
        (Decoding::Beam { beams: 3 }, 1),
    ] {
        let unbanned = Run {
            model: &onnx,
            tok: &tok,
            sampling: SamplingConfig {
                decoding,
                temperature: 0.3,
                ..SamplingConfig::default()
            },
            n,
            slots: 6,
            max_new: 24,
            eos: vec![tok.eos()],
            stops: vec![],
        };
        // Whether an n-gram ending in the response occurred earlier (the prompt may repeat itself).
        let has_repeat = |prompt: &[TokenId], gen: &[TokenId], k: usize| {
            let seq = [prompt, gen].concat();
            let grams: Vec<&[TokenId]> = seq.windows(k).collect();
            (prompt.len().saturating_sub(k - 1)..grams.len())
                .any(|i| grams[..i].contains(&grams[i]))
        };
        let before = generate(&unbanned, &prompts);
        assert!(
            before.iter().any(|f| f.samples.iter().any(|s| has_repeat(
                &prompts[f.index],
                &s.tokens,
                3
            ))),
            "{decoding:?}: the model should repeat without the ban"
        );
        let banned = Run {
            sampling: SamplingConfig {
                no_repeat_ngram: 3,
                ..unbanned.sampling.clone()
            },
            ..unbanned
        };
        for f in generate(&banned, &prompts) {
            for s in &f.samples {
                assert!(
                    !has_repeat(&prompts[f.index], &s.tokens, 3),
                    "{decoding:?} prompt {}: {:?}",
                    f.index,
                    s.tokens
                );
                assert!(s.tokens.len() == 24 || s.finish == FinishReason::Eos);
            }
        }
    }
}

#[test]
fn eos_and_stop_strings_end_a_response_at_the_token_that_completes_them() {
    let m = models(22);
    let tok = Tokenizer::load(&m.hf).unwrap();
    let prompts = prompt_ids(&tok, 3);
    let free = Run {
        model: &m.ort,
        tok: &tok,
        sampling: greedy_cfg(),
        n: 1,
        slots: 2,
        max_new: 16,
        eos: vec![tok.eos()],
        stops: vec![],
    };
    let base = generate(&free, &prompts);
    let tokens = &base[0].samples[0].tokens;
    assert_eq!(tokens.len(), 16, "the random model runs to the budget");
    // EOS: declare the 4th generated token an EOS id; the response ends on it.
    let eos = Run {
        eos: vec![tok.eos(), tokens[3]],
        sampling: greedy_cfg(),
        ..free
    };
    let f = &generate(&eos, &prompts[..1])[0].samples[0];
    let first = tokens.iter().position(|t| *t == tokens[3]).unwrap();
    assert_eq!(f.tokens, tokens[..=first].to_vec());
    assert_eq!(f.finish, FinishReason::Eos);
    // Stop string: a character first produced by token t stops the response at token t, and
    // the text is cut just before it.
    let (t, ch) = (1..tokens.len())
        .find_map(|t| {
            let before = tok.decode(&tokens[..t], true).unwrap();
            let after = tok.decode(&tokens[..=t], true).unwrap();
            after[before.len().min(after.len())..]
                .chars()
                .find(|c| c.is_ascii_graphic() && !before.contains(*c))
                .map(|c| (t, c))
                .filter(|_| after.starts_with(&before))
        })
        .expect("some token adds a fresh ASCII character");
    let stops = vec![ch.to_string()];
    let stop = Run {
        stops: stops.clone(),
        ..free
    };
    let f = &generate(&stop, &prompts[..1])[0].samples[0];
    assert_eq!(f.finish, FinishReason::Stop);
    assert_eq!(f.tokens, tokens[..=t].to_vec());
    let text = engine::generate::stop::response_text(&tok, &f.tokens, f.finish, &stops).unwrap();
    let full = tok.decode(&tokens[..=t], true).unwrap();
    assert_eq!(text, full[..full.find(ch).unwrap()]);
}

#[test]
fn beam_search_with_slot_copies_equals_beam_search_over_full_recomputation() {
    let m = models(23);
    let tok = Tokenizer::load(&m.hf).unwrap();
    let mut reference = reference_session(&m);
    let prompts = prompt_ids(&tok, 4);
    let beams = 3;
    let cfg = SamplingConfig {
        decoding: Decoding::Beam { beams },
        no_repeat_ngram: 4,
        ..SamplingConfig::default()
    };
    // 7 slots: two groups at a time, the second in non-contiguous slots once the first moves on.
    let r = Run {
        model: &m.ort,
        tok: &tok,
        sampling: cfg.clone(),
        n: 1,
        slots: 7,
        max_new: 12,
        eos: vec![tok.eos()],
        stops: vec![],
    };
    let got = generate(&r, &prompts);
    for f in &got {
        let prompt = &prompts[f.index];
        let stopper = Stopper::new(&tok, r.eos.clone(), false, vec![], r.max_new);
        let mut search = BeamSearch::new(prompt.clone(), beams, 1);
        let first = full_logits(&mut reference, prompt);
        let mut rows: Vec<Vec<f32>> = vec![first; beams];
        loop {
            let refs: Vec<&[f32]> = rows.iter().map(|r| &r[..]).collect();
            if search.step(&refs, &cfg, &r.eos, &stopper).done {
                break;
            }
            rows = (0..beams)
                .map(|i| {
                    full_logits(
                        &mut reference,
                        &[&prompt[..], search.running_tokens(i)].concat(),
                    )
                })
                .collect();
        }
        let (want, reason) = search.best();
        assert_eq!(f.samples[0].tokens, want, "prompt {}", f.index);
        assert_eq!(f.samples[0].finish, reason);
    }
}
