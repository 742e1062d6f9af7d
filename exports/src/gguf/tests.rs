//! End-to-end tests of the GGUF reader and importer on small files written by `test_writer`.

use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::checkpoint::{Checkpoint, HostTensor};
use crate::config::{Activation, ModelConfig, ModelType, RopeScaling};
use crate::error::Error;
use crate::gguf::import::import_gguf;
use crate::gguf::permute::permute_rows;
use crate::gguf::reader::{GgufFile, Value};
use crate::gguf::test_writer::{f16_bytes, f32_bytes, q8_0_bytes, GgufWriter};
use crate::init::{tiny_tokenizer, TINY_CHAT_TEMPLATE};
use crate::layout::{self, Head};
use crate::tokenizer::{TokenId, Tokenizer, TokenizerConfig};

fn s(v: &str) -> Value {
    Value::String(v.to_string())
}

#[test]
fn every_metadata_type_and_a_custom_alignment_round_trip() {
    let kvs = vec![
        ("general.alignment", Value::U32(64)),
        ("u8", Value::U8(200)),
        ("i8", Value::I8(-7)),
        ("u16", Value::U16(65000)),
        ("i16", Value::I16(-30000)),
        ("u32", Value::U32(4_000_000_000)),
        ("i32", Value::I32(-2_000_000_000)),
        ("f32", Value::F32(1e-5)),
        ("bool", Value::Bool(true)),
        ("str", s("naïve ✓")),
        ("u64", Value::U64(u64::MAX)),
        ("i64", Value::I64(i64::MIN)),
        ("f64", Value::F64(-2.5e300)),
        ("strs", Value::Array(vec![s("a b"), s(""), s("Ġthe")])),
        (
            "nested",
            Value::Array(vec![
                Value::Array(vec![Value::I32(1)]),
                Value::Array(vec![]),
            ]),
        ),
        ("empty", Value::Array(vec![])),
    ];
    let mut w = GgufWriter::new();
    for (k, v) in &kvs {
        w.kv(k, v.clone());
    }
    w.tensor("a", &[3], "F32", f32_bytes(&[1.0, 2.0, 3.0]));
    w.tensor("b", &[2, 2], "F16", f16_bytes(&[0.5, -1.0, 2.0, 4.0]));
    let bytes = w.to_bytes();
    let g = GgufFile::from_bytes(Path::new("mem.gguf"), bytes).unwrap();
    assert_eq!(g.version, 3);
    assert_eq!(g.alignment, 64);
    assert_eq!(g.data_offset % 64, 0);
    for (k, v) in &kvs {
        assert_eq!(g.get(k), Some(v), "{k}");
    }
    // The empty nested array was written with item type u8; it reads back empty either way.
    assert_eq!(g.get_f64_opt("f32").unwrap(), Some(1e-5f32 as f64));
    let b = g.tensor("b").unwrap();
    assert_eq!(
        b.offset, 64,
        "the second tensor starts at the next 64-byte boundary"
    );
    assert_eq!(b.shape(), vec![2, 2]);
    assert_eq!(g.dequantize(b).unwrap(), [0.5, -1.0, 2.0, 4.0]);
    assert_eq!(
        g.dequantize(g.tensor("a").unwrap()).unwrap(),
        [1.0, 2.0, 3.0]
    );
    let e = g.get_usize("str").unwrap_err().to_string();
    assert!(
        e.contains("mem.gguf") && e.contains("`str`") && e.contains("expected an unsigned integer"),
        "{e}"
    );
}

/// The tiny model of these tests: 2 layers, hidden 64, 4 heads of 16, 2 KV heads, FFN 96.
fn tiny_config(vocab: usize, tied: bool) -> ModelConfig {
    ModelConfig {
        model_type: ModelType::Llama,
        vocab_size: vocab,
        hidden_size: 64,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: 16,
        intermediate_size: 96,
        max_position_embeddings: 128,
        norm_eps: 1e-5f32 as f64,
        rope_theta: 100000.0,
        rope_scaling: None,
        qkv_bias: false,
        o_bias: false,
        qk_norm: false,
        nope_layers: vec![],
        tie_word_embeddings: tied,
        activation: Activation::Silu,
        bos_token_id: Some(1),
        eos_token_ids: vec![2],
        pad_token_id: Some(2),
        sliding_window: None,
        num_labels: None,
        extra: serde_json::Map::new(),
    }
}

/// The GGUF name of an HF tensor name (the inverse of the importer's map, written out here).
fn gguf_name(hf: &str) -> String {
    let fixed = [
        ("model.embed_tokens.weight", "token_embd.weight"),
        ("model.norm.weight", "output_norm.weight"),
        ("lm_head.weight", "output.weight"),
    ];
    if let Some((_, g)) = fixed.iter().find(|(h, _)| *h == hf) {
        return g.to_string();
    }
    let rest = hf.strip_prefix("model.layers.").unwrap();
    let (layer, leaf) = rest.split_once('.').unwrap();
    let g = match leaf {
        "input_layernorm.weight" => "attn_norm",
        "self_attn.q_proj.weight" => "attn_q",
        "self_attn.k_proj.weight" => "attn_k",
        "self_attn.v_proj.weight" => "attn_v",
        "self_attn.o_proj.weight" => "attn_output",
        "post_attention_layernorm.weight" => "ffn_norm",
        "mlp.gate_proj.weight" => "ffn_gate",
        "mlp.up_proj.weight" => "ffn_up",
        "mlp.down_proj.weight" => "ffn_down",
        "self_attn.q_norm.weight" => "attn_q_norm",
        "self_attn.k_norm.weight" => "attn_k_norm",
        other => panic!("unmapped {other}"),
    };
    format!("blk.{layer}.{g}.weight")
}

struct Synthetic {
    bytes: Vec<u8>,
    hf: Checkpoint,
    config: ModelConfig,
    vocab: Vec<String>,
}

/// A tiny Llama written the way llama.cpp's converter does: Q/K rows permuted, norms F32, the
/// other matrices Q8_0 or F16 (values chosen exactly representable, so the expected import is
/// exactly the HF tensors we started from).
fn synthetic(tied: bool) -> Synthetic {
    synthetic_arch(tied, "llama", &[])
}

/// `synthetic` for `general.architecture = arch` (`llama` or `qwen3`: q/k norms, head_dim 32 ≠
/// hidden / heads, no Q/K permutation), with `extra` F32 tensors added as they are.
fn synthetic_arch(tied: bool, arch: &str, extra: &[(&str, Vec<f32>)]) -> Synthetic {
    let bpe = tiny_tokenizer();
    let mut vocab = bpe.vocab.clone();
    vocab.push("<think>".into()); // a user-defined token
    let mut config = tiny_config(vocab.len(), tied);
    let qwen3 = arch == "qwen3";
    if qwen3 {
        config.model_type = ModelType::Qwen3;
        config.qk_norm = true;
        config.head_dim = 32;
    }
    let k = |key: &str| format!("{arch}.{key}");
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let mut hf = Checkpoint::new();
    let mut w = GgufWriter::new();
    let mut types = vec![1i32; vocab.len()];
    types[0..3].fill(3);
    *types.last_mut().unwrap() = 4;
    w.kv("general.architecture", s(arch))
        .kv("general.name", s("tiny"))
        .kv(&k("context_length"), Value::U32(128))
        .kv(&k("embedding_length"), Value::U32(64))
        .kv(&k("block_count"), Value::U32(2))
        .kv(&k("feed_forward_length"), Value::U32(96))
        .kv(&k("attention.head_count"), Value::U32(4))
        .kv(&k("attention.head_count_kv"), Value::U32(2))
        .kv(&k("rope.freq_base"), Value::F32(100000.0))
        .kv(&k("attention.layer_norm_rms_epsilon"), Value::F32(1e-5))
        .kv(
            &k("rope.dimension_count"),
            Value::U32(config.head_dim as u32),
        )
        .kv("tokenizer.ggml.model", s("gpt2"))
        .kv("tokenizer.ggml.pre", s("smollm"))
        .kv(
            "tokenizer.ggml.tokens",
            Value::Array(vocab.iter().map(|t| s(t)).collect()),
        )
        .kv(
            "tokenizer.ggml.token_type",
            Value::Array(types.into_iter().map(Value::I32).collect()),
        )
        .kv(
            "tokenizer.ggml.merges",
            Value::Array(
                bpe.merges
                    .iter()
                    .map(|(a, b)| s(&format!("{a} {b}")))
                    .collect(),
            ),
        )
        .kv("tokenizer.ggml.bos_token_id", Value::U32(1))
        .kv("tokenizer.ggml.eos_token_id", Value::U32(2))
        .kv("tokenizer.ggml.unknown_token_id", Value::U32(0))
        .kv("tokenizer.ggml.padding_token_id", Value::U32(2))
        .kv("tokenizer.ggml.add_bos_token", Value::Bool(false))
        .kv("tokenizer.chat_template", s(TINY_CHAT_TEMPLATE));
    if qwen3 {
        w.kv(&k("attention.key_length"), Value::U32(32));
    }
    for (name, v) in extra {
        w.tensor(name, &[v.len() as u64], "F32", f32_bytes(v));
    }
    for (i, t) in layout::tensors(&config, Head::Lm).into_iter().enumerate() {
        let n: usize = t.shape.iter().product();
        let ne: Vec<u64> = t.shape.iter().rev().map(|&d| d as u64).collect();
        let name = gguf_name(&t.name);
        if t.shape.len() == 1 {
            let v: Vec<f32> = (0..n)
                .map(|_| 1.0 + rng.random_range(-0.2f32..0.2))
                .collect();
            w.tensor(&name, &ne, "F32", f32_bytes(&v));
            hf.insert(t.name, HostTensor::from_f32(t.shape, &v));
            continue;
        }
        // Integers times 2^-8: exact in f16 (|x| < 0.5 needs 7 bits) and in Q8_0 with d = 2^-8.
        let v: Vec<f32> = (0..n)
            .map(|_| rng.random_range(-127i32..=127) as f32 / 256.0)
            .collect();
        let (rows, cols) = (t.shape[0], t.shape[1]);
        let stored = if qwen3 {
            v.clone()
        } else if t.name.ends_with("q_proj.weight") {
            permute_rows(&v, rows, cols, config.num_attention_heads).unwrap()
        } else if t.name.ends_with("k_proj.weight") {
            permute_rows(&v, rows, cols, config.num_key_value_heads).unwrap()
        } else {
            v.clone()
        };
        if i % 2 == 0 {
            w.tensor(&name, &ne, "Q8_0", q8_0_bytes(&stored));
        } else {
            w.tensor(&name, &ne, "F16", f16_bytes(&stored));
        }
        hf.insert(t.name, HostTensor::from_f32(t.shape, &v));
    }
    Synthetic {
        bytes: w.to_bytes(),
        hf,
        config,
        vocab,
    }
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn synthetic_llama_imports_exactly() {
    for tied in [true, false] {
        let tmp = tempfile::tempdir().unwrap();
        let syn = synthetic(tied);
        let gguf = write(tmp.path(), "tiny.gguf", &syn.bytes);
        let out = tmp.path().join("model");
        let summary = import_gguf(&gguf, &out).unwrap();
        assert_eq!(summary.config, syn.config);
        assert_eq!(ModelConfig::load(&out).unwrap(), syn.config);
        let back = Checkpoint::load(&out).unwrap();
        assert_eq!(
            back.tensors.keys().collect::<Vec<_>>(),
            syn.hf.tensors.keys().collect::<Vec<_>>()
        );
        for (name, t) in &syn.hf.tensors {
            assert_eq!(
                &back.tensors[name], t,
                "tied={tied}: {name} differs after import"
            );
        }
        assert_eq!(back.tensors.contains_key("lm_head.weight"), !tied);
        let (q8, f16n) = (summary.source_types["Q8_0"], summary.source_types["F16"]);
        assert!(
            q8 > 0 && f16n > 0 && summary.source_types["F32"] == 5,
            "{:?}",
            summary.source_types
        );

        let gen: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(out.join("generation_config.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(
            gen,
            serde_json::json!({"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2})
        );
        let tc = TokenizerConfig::load(&out).unwrap();
        assert_eq!(tc.bos_token.as_deref(), Some("<|im_start|>"));
        assert_eq!(tc.eos_token.as_deref(), Some("<|im_end|>"));
        assert_eq!(tc.pad_token.as_deref(), Some("<|im_end|>"));
        assert_eq!(tc.unk_token.as_deref(), Some("<|endoftext|>"));
        assert_eq!(tc.chat_template.as_deref(), Some(TINY_CHAT_TEMPLATE));
        assert_eq!(tc.model_max_length, Some(128));
    }
}

#[test]
fn synthetic_tokenizer_gives_hand_computed_ids() {
    let tmp = tempfile::tempdir().unwrap();
    let syn = synthetic(true);
    let gguf = write(tmp.path(), "tiny.gguf", &syn.bytes);
    let out = tmp.path().join("model");
    import_gguf(&gguf, &out).unwrap();
    let tok = Tokenizer::load(&out).unwrap();
    let id = |t: &str| TokenId(syn.vocab.iter().position(|v| v == t).unwrap() as u32);
    // "user" -> u, s, er (the only merge among its pairs); " the" -> Ġt + he -> Ġthe;
    // " cat" -> Ġc, at; "  12": the GPT-2 regex gives the first space alone and " 12" to the
    // number, and no merge touches digits.
    let text = "<|im_start|>user\n the cat  12<|im_end|>";
    let want: Vec<TokenId> = vec![
        TokenId(1),
        id("u"),
        id("s"),
        id("er"),
        id("Ċ"),
        id("Ġthe"),
        id("Ġc"),
        id("at"),
        id("Ġ"),
        id("Ġ"),
        id("1"),
        id("2"),
        TokenId(2),
    ];
    assert_eq!(
        tok.encode(text, true).unwrap(),
        want,
        "no BOS is added (add_bos_token = false)"
    );
    assert_eq!(tok.decode(&want, false).unwrap(), text);
    // The user-defined token is matched whole but is not special.
    let think = id("<think>");
    assert_eq!(
        tok.encode("a<think>b", false).unwrap(),
        vec![id("a"), think, id("b")]
    );
    assert_eq!(tok.decode(&[TokenId(1), think], true).unwrap(), "<think>");
    assert_eq!(tok.vocab_size(), syn.vocab.len());
}

/// Import `bytes` and return the error, checking that nothing at all was written.
fn import_err(bytes: &[u8]) -> Error {
    let tmp = tempfile::tempdir().unwrap();
    let gguf = write(tmp.path(), "bad.gguf", bytes);
    let out = tmp.path().join("out");
    let e = import_gguf(&gguf, &out).unwrap_err();
    assert!(!out.exists(), "{e}: the output folder must not exist");
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        left,
        vec![std::ffi::OsString::from("bad.gguf")],
        "{e}: no temporary left behind"
    );
    assert!(matches!(e, Error::Gguf { .. }), "{e:?}");
    assert!(e.to_string().contains("bad.gguf"), "{e}");
    e
}

#[test]
fn truncated_files_are_refused_without_output() {
    let good = synthetic(true).bytes;
    let tensor_data_start = {
        let g = GgufFile::from_bytes(Path::new("x"), good.clone()).unwrap();
        g.data_offset as usize
    };
    // Cut inside the magic, the counts, the metadata, the tensor table, and the data.
    for cut in [
        2,
        12,
        100,
        tensor_data_start - 10,
        tensor_data_start + 100,
        good.len() - 1,
    ] {
        let e = import_err(&good[..cut]).to_string();
        assert!(e.contains("truncated"), "cut at {cut}: {e}");
    }
}

#[test]
fn wrong_magic_and_version_are_refused() {
    let mut bytes = synthetic(true).bytes;
    bytes[3] = b'X';
    let e = import_err(&bytes).to_string();
    assert!(e.contains("not a GGUF file"), "{e}");
    let mut bytes = synthetic(true).bytes;
    bytes[4..8].copy_from_slice(&4u32.to_le_bytes());
    let e = import_err(&bytes).to_string();
    assert!(e.contains("unsupported GGUF version 4"), "{e}");
    bytes[4..8].copy_from_slice(&3u32.to_be_bytes());
    let e = import_err(&bytes).to_string();
    assert!(e.contains("big-endian"), "{e}");
}

#[test]
fn unsupported_tensor_types_are_refused_without_output() {
    // A known type the importer cannot dequantize (Q5_0: 22 bytes per 32 values).
    let mut w = GgufWriter::new();
    w.kv("general.architecture", s("llama"));
    w.tensor("blk.0.attn_v.weight", &[32, 2], "F32", vec![0; 256]);
    w.tensors[0].type_id = 6;
    w.tensors[0].bytes = vec![0; 44];
    let g = GgufFile::from_bytes(Path::new("q5.gguf"), w.to_bytes()).unwrap();
    let e = g.dequantize(&g.tensors[0]).unwrap_err().to_string();
    assert!(
        e.contains("q5.gguf")
            && e.contains("blk.0.attn_v.weight")
            && e.contains("unsupported tensor type Q5_0"),
        "{e}"
    );

    // Through the importer: the whole synthetic model with one tensor relabelled Q5_0.
    let syn = synthetic(true);
    let g = GgufFile::from_bytes(Path::new("x"), syn.bytes.clone()).unwrap();
    let victim = g
        .tensors
        .iter()
        .position(|t| t.ggml_type.name == "Q8_0")
        .unwrap();
    let name = g.tensors[victim].name.clone();
    let patched = patch_type(&syn.bytes, &g, &name, 6);
    let e = import_err(&patched).to_string();
    assert!(
        e.contains(&name) && e.contains("unsupported tensor type Q5_0"),
        "{e}"
    );

    // A type id no GGUF defines.
    let patched = patch_type(&syn.bytes, &g, &name, 99);
    let e = import_err(&patched).to_string();
    assert!(
        e.contains(&name) && e.contains("unsupported tensor type id 99"),
        "{e}"
    );
}

/// Rewrite the type id of tensor `name` in a GGUF's tensor table (Q8_0 and Q5_0 both take fewer
/// bytes than the padded slot of a Q8_0 tensor, so the file stays in bounds).
fn patch_type(bytes: &[u8], g: &GgufFile, name: &str, new_type: u32) -> Vec<u8> {
    let t = g.tensor(name).unwrap().clone();
    // The table entry is: name (8 + len), n_dims (4), ne (8 each), type (4), offset (8).
    let mut needle = (name.len() as u64).to_le_bytes().to_vec();
    needle.extend(name.as_bytes());
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap();
    let type_at = at + needle.len() + 4 + 8 * t.ne.len();
    let mut out = bytes.to_vec();
    out[type_at..type_at + 4].copy_from_slice(&new_type.to_le_bytes());
    out
}

#[test]
fn wrong_metadata_is_named() {
    let syn = synthetic(true);
    let g = GgufFile::from_bytes(Path::new("m.gguf"), syn.bytes).unwrap();
    // Swap in a different architecture by re-writing a minimal file.
    let mut w = GgufWriter::new();
    for (k, v) in &g.metadata {
        let v = if k == "general.architecture" {
            s("falcon")
        } else {
            v.clone()
        };
        w.kv(k, v);
    }
    let e = import_err(&w.to_bytes()).to_string();
    assert!(e.contains("`falcon` is not supported"), "{e}");
}

/// `bytes` re-written with metadata `key` set to `value` (added when absent), tensors unchanged.
fn with_metadata(bytes: &[u8], key: &str, value: Value) -> Vec<u8> {
    let g = GgufFile::from_bytes(Path::new("x"), bytes.to_vec()).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in &g.metadata {
        w.kv(k, if k == key { value.clone() } else { v.clone() });
    }
    if g.get(key).is_none() {
        w.kv(key, value);
    }
    for t in &g.tensors {
        w.tensor(&t.name, &t.ne, t.ggml_type.name, g.tensor_bytes(t).to_vec());
    }
    w.to_bytes()
}

#[test]
fn add_bos_and_eos_flags_become_the_post_processor() {
    let tmp = tempfile::tempdir().unwrap();
    let plain = synthetic(true).bytes;
    let bos = with_metadata(&plain, "tokenizer.ggml.add_bos_token", Value::Bool(true));
    let both = with_metadata(&bos, "tokenizer.ggml.add_eos_token", Value::Bool(true));
    let encode = |bytes: &[u8], name: &str, special: bool| {
        let out = tmp.path().join(name);
        import_gguf(&write(tmp.path(), &format!("{name}.gguf"), bytes), &out).unwrap();
        Tokenizer::load(&out)
            .unwrap()
            .encode("at", special)
            .unwrap()
    };
    let at = TokenId(
        tiny_tokenizer()
            .vocab
            .iter()
            .position(|v| v == "at")
            .unwrap() as u32,
    );
    assert_eq!(encode(&plain, "plain", true), vec![at]);
    assert_eq!(encode(&bos, "bos", true), vec![TokenId(1), at]);
    assert_eq!(encode(&bos, "bos2", false), vec![at]);
    assert_eq!(
        encode(&both, "both", true),
        vec![TokenId(1), at, TokenId(2)]
    );
}

#[test]
fn an_existing_output_folder_survives_a_failed_import() {
    let tmp = tempfile::tempdir().unwrap();
    let good = synthetic(true).bytes;
    let out = tmp.path().join("model");
    import_gguf(&write(tmp.path(), "good.gguf", &good), &out).unwrap();
    let before = std::fs::read(out.join("model.safetensors")).unwrap();
    let bad = with_metadata(&good, "tokenizer.ggml.model", s("llama"));
    let e = import_gguf(&write(tmp.path(), "bad.gguf", &bad), &out)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("tokenizer.ggml.model = `llama` is not supported"),
        "{e}"
    );
    assert_eq!(
        std::fs::read(out.join("model.safetensors")).unwrap(),
        before
    );
}

#[test]
fn synthetic_qwen3_imports_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let syn = synthetic_arch(true, "qwen3", &[]);
    let gguf = write(tmp.path(), "qwen3.gguf", &syn.bytes);
    let out = tmp.path().join("model");
    let summary = import_gguf(&gguf, &out).unwrap();
    assert_eq!(summary.config.model_type, ModelType::Qwen3);
    assert_eq!(summary.config.head_dim, 32);
    assert_eq!(ModelConfig::load(&out).unwrap(), syn.config);
    let back = Checkpoint::load(&out).unwrap();
    assert!(back
        .tensors
        .contains_key("model.layers.1.self_attn.k_norm.weight"));
    for (name, t) in &syn.hf.tensors {
        assert_eq!(&back.tensors[name], t, "{name} differs after import");
    }
}

/// What llama.cpp's `convert_hf_to_gguf.py` (LlamaModel.generate_extra_tensors) writes as
/// `rope_freqs.weight` for a llama3 `rope_scaling`, transcribed from it.
fn converter_rope_factors(
    theta: f64,
    dim: usize,
    factor: f64,
    low: f64,
    high: f64,
    old: f64,
) -> Vec<f32> {
    (0..dim / 2)
        .map(|j| {
            let freq = 1.0 / theta.powf((2 * j) as f64 / dim as f64);
            let wavelen = 2.0 * std::f64::consts::PI / freq;
            let (low_w, high_w) = (old / low, old / high);
            (if wavelen < high_w {
                1.0
            } else if wavelen > low_w {
                factor
            } else {
                let smooth = (old / wavelen - low) / (high - low);
                1.0 / ((1.0 - smooth) / factor + smooth)
            }) as f32
        })
        .collect()
}

#[test]
fn llama3_rope_freqs_tensor_becomes_llama3_scaling_or_is_refused() {
    // head_dim 16, theta 1e5: wavelengths 6.3 … 3.1e4 straddle 8192/4 and 8192.
    let factors = converter_rope_factors(100000.0, 16, 32.0, 1.0, 4.0, 8192.0);
    assert!(factors.contains(&1.0) && factors.contains(&32.0));
    let syn = synthetic_arch(true, "llama", &[("rope_freqs.weight", factors)]);
    let tmp = tempfile::tempdir().unwrap();
    let gguf = write(tmp.path(), "l3.gguf", &syn.bytes);
    let summary = import_gguf(&gguf, &tmp.path().join("m")).unwrap();
    assert_eq!(
        summary.config.rope_scaling,
        Some(RopeScaling::Llama3 {
            factor: 32.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192
        })
    );
    // Divisors from other band edges cannot be told apart from the GGUF: refused, named.
    let odd = converter_rope_factors(100000.0, 16, 32.0, 2.0, 8.0, 8192.0);
    let syn = synthetic_arch(true, "llama", &[("rope_freqs.weight", odd)]);
    let e = import_err(&syn.bytes).to_string();
    assert!(
        e.contains("rope_freqs.weight") && e.contains("low_freq_factor"),
        "{e}"
    );
}
