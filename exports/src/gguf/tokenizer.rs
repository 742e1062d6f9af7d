//! The tokenizer a GGUF describes in its `tokenizer.ggml.*` metadata, rebuilt as `tokenizer.json`
//! and `tokenizer_config.json` so that it gives the token ids transformers gives for the same
//! file: `AutoTokenizer.from_pretrained(dir, gguf_file=...)`, transformers 5.x
//! `integrations/gguf/gguf_tokenizer_mapping.py`.
//!
//! Only byte-level BPE (`tokenizer.ggml.model = gpt2`) is supported.
//!
//! Pre-tokenizer. llama.cpp names the pre-tokenizer in `tokenizer.ggml.pre`; for SmolLM2 it is
//! `smollm`, llama.cpp's GPT-2 regex preceded by a split into single digits, which is also what
//! the original SmolLM2 `tokenizer.json` does (`Digits(individual_digits)` + `ByteLevel`).
//! transformers' GGUF converter has no entry for `smollm` and uses plain `ByteLevel` (GPT-2 regex).
//! The two differ on whitespace runs before a digit: `"a  1"` is `[a, ĠĠ, 1]` with digit
//! splitting and `[a, Ġ, Ġ, 1]` without, because the GPT-2 regex gives the last space to the
//! number (` ?\p{N}+`) and SmolLM2 has no token joining a space and a digit. Everything else
//! agrees, because SmolLM2's vocabulary has no multi-digit token and no merge with a digit.
//! We match transformers (no digit split): the acceptance check of this importer is equality with
//! transformers' ids, and a folder whose tokenizer disagreed with the GGUF loader would make the
//! two paths to the same model tokenize differently. `scripts/reference/check_import.py` measures
//! both variants on tricky strings.

use std::collections::HashSet;
use std::path::Path;

use serde_json::{json, Value};

use crate::error::Result;
use crate::gguf::reader::GgufFile;
use crate::tokenizer::{bytes_to_unicode, ByteLevelBpe, TokenizerConfig};

/// llama.cpp token types (`llama_token_type`).
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// `tokenizer.ggml.pre` values for which transformers installs its own split regex instead of the
/// GPT-2 one (`GGUF_PRE_TOKENIZER_SPLITS`). We do not rebuild those regexes, so we refuse them
/// rather than tokenize differently.
const PRE_WITH_OWN_REGEX: &[&str] = &[
    "llama3",
    "llama-v3",
    "llama-bpe",
    "falcon3",
    "falcon-h1",
    "pixtral",
    "midm-2.0",
    "lfm2",
    "jina-v5-nano",
    "dbrx",
    "smaug-bpe",
    "tekken",
    "qwen2",
    "deepseek-r1-qwen",
    "kormo",
    "f2llmv2",
    "megrez",
    "qwen35",
    "gpt-4o",
    "llama4",
    "kanana2",
    "talkie",
    "minimax-m2",
];

/// A tokenizer rebuilt from GGUF metadata.
#[derive(Debug, Clone)]
pub struct GgufTokenizer {
    /// Vocabulary, merges and control tokens (special added tokens).
    pub bpe: ByteLevelBpe,
    /// User-defined tokens: matched whole in text like specials, but not special (not skipped
    /// when decoding with `skip_special_tokens`).
    pub user_defined_ids: Vec<u32>,
    pub add_bos: bool,
    pub add_eos: bool,
    pub config: TokenizerConfig,
}

impl GgufTokenizer {
    /// Read the tokenizer of `g`; `model_max_length` goes to `tokenizer_config.json`.
    pub fn from_gguf(g: &GgufFile, model_max_length: usize) -> Result<Self> {
        let model = g.get_str("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(g.err(format!(
                "tokenizer.ggml.model = `{model}` is not supported (only byte-level BPE, `gpt2`)"
            )));
        }
        if let Some(pre) = g.get_str_opt("tokenizer.ggml.pre")? {
            if PRE_WITH_OWN_REGEX.contains(&pre) {
                return Err(g.err(format!(
                    "tokenizer.ggml.pre = `{pre}` needs its own split regex, which this importer does not build"
                )));
            }
        }
        let tokens = g.get_str_array("tokenizer.ggml.tokens")?;
        let types = g.get_i64_array_opt("tokenizer.ggml.token_type")?;
        if let Some(t) = &types {
            if t.len() != tokens.len() {
                return Err(g.err(format!(
                    "tokenizer.ggml.token_type has {} entries for {} tokens",
                    t.len(),
                    tokens.len()
                )));
            }
        }
        let spelling = bytes_to_unicode();
        let alphabet: HashSet<char> = spelling.iter().copied().collect();
        let in_alphabet = |t: &str| t.chars().all(|c| alphabet.contains(&c));
        // Tokens outside the byte alphabet (a GGUF may store raw text) are respelled byte by
        // byte, as transformers' `byte_level_tokenizer` does.
        let vocab: Vec<String> = tokens
            .iter()
            .map(|t| {
                if in_alphabet(t) {
                    t.to_string()
                } else {
                    t.bytes().map(|b| spelling[b as usize]).collect()
                }
            })
            .collect();
        let mut seen = HashSet::new();
        for (i, t) in vocab.iter().enumerate() {
            if !seen.insert(t.as_str()) {
                return Err(g.err(format!(
                    "tokenizer.ggml.tokens[{i}] = `{t}` appears twice in the vocabulary"
                )));
            }
        }
        let merges = g
            .get_str_array("tokenizer.ggml.merges")?
            .iter()
            .enumerate()
            .map(|(i, m)| match m.split(' ').collect::<Vec<_>>().as_slice() {
                [a, b] => Ok((a.to_string(), b.to_string())),
                _ => Err(g.err(format!(
                    "tokenizer.ggml.merges[{i}] = `{m}` is not two tokens separated by one space"
                ))),
            })
            .collect::<Result<Vec<_>>>()?;
        let of_type = |ty: i64| -> Vec<u32> {
            let Some(types) = &types else { return vec![] };
            // transformers skips control tokens outside the byte alphabet: in a byte-level
            // vocabulary they are llama.cpp mislabels, and adding them would grow the vocabulary.
            (0..tokens.len())
                .filter(|&i| types[i] == ty && in_alphabet(tokens[i]))
                .map(|i| i as u32)
                .collect()
        };
        let special_ids = of_type(TOKEN_TYPE_CONTROL);
        let user_defined_ids = of_type(TOKEN_TYPE_USER_DEFINED);

        let token_of = |key: &str| -> Result<Option<String>> {
            match g.get_usize_opt(key)? {
                None => Ok(None),
                Some(id) => vocab.get(id).cloned().map(Some).ok_or_else(|| {
                    g.err(format!(
                        "{key} = {id} is outside the vocabulary of {}",
                        vocab.len()
                    ))
                }),
            }
        };
        let config = TokenizerConfig {
            bos_token: token_of("tokenizer.ggml.bos_token_id")?,
            eos_token: token_of("tokenizer.ggml.eos_token_id")?,
            pad_token: token_of("tokenizer.ggml.padding_token_id")?,
            unk_token: token_of("tokenizer.ggml.unknown_token_id")?,
            chat_template: g.get_str_opt("tokenizer.chat_template")?.map(String::from),
            model_max_length: Some(model_max_length),
        };
        let add_bos = g
            .get_bool_opt("tokenizer.ggml.add_bos_token")?
            .unwrap_or(false);
        let add_eos = g
            .get_bool_opt("tokenizer.ggml.add_eos_token")?
            .unwrap_or(false);
        if add_bos && config.bos_token.is_none() {
            return Err(g.err(
                "tokenizer.ggml.add_bos_token is set but there is no tokenizer.ggml.bos_token_id",
            ));
        }
        if add_eos && config.eos_token.is_none() {
            return Err(g.err(
                "tokenizer.ggml.add_eos_token is set but there is no tokenizer.ggml.eos_token_id",
            ));
        }
        Ok(GgufTokenizer {
            bpe: ByteLevelBpe {
                vocab,
                merges,
                special_ids,
                split_digits: false,
            },
            user_defined_ids,
            add_bos,
            add_eos,
            config,
        })
    }

    /// transformers' post-processor for a GGUF tokenizer (`update_post_processor`): BOS/EOS
    /// around each sequence as `add_bos_token`/`add_eos_token` say.
    fn post_processor(&self) -> Value {
        let mut specials = serde_json::Map::new();
        let mut wrap = |seqs: &[(&str, u32)]| -> Vec<Value> {
            let mut out = vec![];
            for &(name, type_id) in seqs {
                if self.add_bos {
                    out.push(self.special_piece(&self.config.bos_token, type_id, &mut specials));
                }
                out.push(json!({"Sequence": {"id": name, "type_id": type_id}}));
                if self.add_eos {
                    out.push(self.special_piece(&self.config.eos_token, type_id, &mut specials));
                }
            }
            out
        };
        let single = wrap(&[("A", 0)]);
        let pair = wrap(&[("A", 0), ("B", 1)]);
        json!({"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": specials})
    }

    /// One BOS/EOS piece of the template, registering the token in `specials`.
    fn special_piece(
        &self,
        tok: &Option<String>,
        type_id: u32,
        specials: &mut serde_json::Map<String, Value>,
    ) -> Value {
        // Both are checked to exist in `from_gguf` when their flag is set.
        let t = tok.clone().unwrap_or_default();
        let id = self.bpe.vocab.iter().position(|v| *v == t);
        specials.insert(t.clone(), json!({"id": t, "ids": [id], "tokens": [t]}));
        json!({"SpecialToken": {"id": t, "type_id": type_id}})
    }

    /// The `tokenizer.json` document.
    pub fn to_json(&self) -> Value {
        let mut doc = self.bpe.to_json();
        if let Some(Value::Array(added)) = doc.get_mut("added_tokens") {
            for &id in &self.user_defined_ids {
                added.push(
                    json!({"id": id, "content": self.bpe.vocab[id as usize], "single_word": false,
                    "lstrip": false, "rstrip": false, "normalized": false, "special": false}),
                );
            }
            added.sort_by_key(|t| t["id"].as_u64());
        }
        doc["post_processor"] = self.post_processor();
        doc
    }

    /// Write `tokenizer.json` and `tokenizer_config.json` into `dir`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let text = serde_json::to_string(&self.to_json()).expect("a JSON value serializes");
        crate::fsutil::write_atomic(&dir.join("tokenizer.json"), text.as_bytes())?;
        self.config.save(dir)
    }
}
