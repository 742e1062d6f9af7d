//! Tokenizer, special tokens and chat template of a model folder. The rule that turns a record into
//! token ids, and the token policy (pad, EOS set, truncation), live in [`crate::encode`].

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::chat::ChatTemplate;
pub use crate::encode::Example;
use crate::encode::TokenPolicy;
use crate::error::{Error, IoContext, Result};
use crate::records::Message;

/// A vocabulary index. Kept apart from plain integers so that positions, lengths and token ids
/// cannot be mixed up in the data path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(transparent)]
pub struct TokenId(pub u32);

impl TokenId {
    pub fn as_i64(self) -> i64 {
        self.0 as i64
    }
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl From<TokenId> for i64 {
    fn from(t: TokenId) -> i64 {
        t.0 as i64
    }
}

/// Convert ids for a runtime that wants `i64` (ONNX Runtime, libtorch).
pub fn ids_to_i64(ids: &[TokenId]) -> Vec<i64> {
    ids.iter().map(|t| t.as_i64()).collect()
}

/// Special-token settings of `tokenizer_config.json`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TokenizerConfig {
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    pub pad_token: Option<String>,
    pub unk_token: Option<String>,
    pub chat_template: Option<String>,
    pub model_max_length: Option<usize>,
}

impl TokenizerConfig {
    fn token_field(v: &Value, key: &str) -> Option<String> {
        match v.get(key)? {
            Value::String(s) => Some(s.clone()),
            // transformers also writes AddedToken dicts: {"content": "...", ...}
            Value::Object(o) => o.get("content").and_then(Value::as_str).map(String::from),
            _ => None,
        }
    }

    /// Read `tokenizer_config.json` and `chat_template.jinja` from a model folder (both optional).
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer_config.json");
        let mut cfg = TokenizerConfig::default();
        if path.exists() {
            let text = fs::read_to_string(&path).at(&path)?;
            let v: Value = serde_json::from_str(&text).map_err(|error| Error::Json {
                path: path.clone(),
                error,
            })?;
            cfg.bos_token = Self::token_field(&v, "bos_token");
            cfg.eos_token = Self::token_field(&v, "eos_token");
            cfg.pad_token = Self::token_field(&v, "pad_token");
            cfg.unk_token = Self::token_field(&v, "unk_token");
            cfg.model_max_length = v
                .get("model_max_length")
                .and_then(Value::as_u64)
                .map(|n| n as usize);
            cfg.chat_template = match v.get("chat_template") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(s.clone()),
                // A list of named templates: use the one called "default".
                Some(Value::Array(items)) => items
                    .iter()
                    .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                    .and_then(|t| t.get("template"))
                    .and_then(Value::as_str)
                    .map(String::from),
                Some(other) => {
                    return Err(Error::Config {
                        path,
                        field: "chat_template".into(),
                        message: format!(
                            "expected a string or a list of named templates, got {other}"
                        ),
                    })
                }
            };
        }
        let jinja = dir.join("chat_template.jinja");
        if jinja.exists() {
            cfg.chat_template = Some(fs::read_to_string(&jinja).at(&jinja)?);
        }
        Ok(cfg)
    }

    pub fn to_json(&self) -> Value {
        let mut m = serde_json::Map::new();
        m.insert("tokenizer_class".into(), json!("PreTrainedTokenizerFast"));
        m.insert("clean_up_tokenization_spaces".into(), json!(false));
        m.insert("add_prefix_space".into(), json!(false));
        for (k, v) in [
            ("bos_token", &self.bos_token),
            ("eos_token", &self.eos_token),
            ("pad_token", &self.pad_token),
            ("unk_token", &self.unk_token),
        ] {
            if let Some(v) = v {
                m.insert(k.into(), json!(v));
            }
        }
        if let Some(n) = self.model_max_length {
            m.insert("model_max_length".into(), json!(n));
        }
        if let Some(t) = &self.chat_template {
            m.insert("chat_template".into(), json!(t));
        }
        Value::Object(m)
    }

    pub fn save(&self, dir: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(&self.to_json()).expect("serializes");
        crate::fsutil::write_atomic(&dir.join("tokenizer_config.json"), text.as_bytes())
    }
}

/// `tokenizer.json` + chat template + special tokens of one model folder.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    chat: Option<ChatTemplate>,
    policy: TokenPolicy,
    bos: Option<TokenId>,
    path: PathBuf,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("path", &self.path)
            .field("policy", &self.policy)
            .finish()
    }
}

impl Tokenizer {
    /// Load from a model folder, with its [`TokenPolicy`]: the EOS token from
    /// `tokenizer_config.json`, falling back to `config.json`'s `eos_token_id`; the EOS set adds
    /// `config.json`'s and `generation_config.json`'s `eos_token_id`; the pad id by
    /// [`crate::encode::pad_id`].
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        if !path.exists() {
            return Err(Error::Tokenizer {
                path,
                message: "file not found (a model folder needs tokenizer.json)".into(),
            });
        }
        let inner = tokenizers::Tokenizer::from_file(&path).map_err(|e| Error::Tokenizer {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let cfg = TokenizerConfig::load(dir)?;
        let lookup = |tok: &Option<String>, field: &str| -> Result<Option<TokenId>> {
            match tok {
                None => Ok(None),
                Some(t) => inner
                    .token_to_id(t)
                    .map(|id| Some(TokenId(id)))
                    .ok_or_else(|| Error::Config {
                        path: dir.join("tokenizer_config.json"),
                        field: field.into(),
                        message: format!("token `{t}` is not in the vocabulary"),
                    }),
            }
        };
        let model_cfg = read_json_opt(&dir.join("config.json"))?;
        let config_eos = eos_ids_of(model_cfg.as_ref());
        let config_pad = model_cfg
            .as_ref()
            .and_then(|v| v.get("pad_token_id"))
            .and_then(Value::as_u64)
            .map(|n| n as u32);
        let generation_eos =
            eos_ids_of(read_json_opt(&dir.join("generation_config.json"))?.as_ref());
        let eos = lookup(&cfg.eos_token, "eos_token")?
            .or(config_eos.first().copied())
            .ok_or_else(|| Error::Config {
                path: dir.join("tokenizer_config.json"),
                field: "eos_token".into(),
                message: "no EOS token in tokenizer_config.json or config.json".into(),
            })?;
        let mut stop: Vec<TokenId> = std::iter::once(eos)
            .chain(config_eos)
            .chain(generation_eos)
            .collect();
        stop.sort_unstable();
        stop.dedup();
        let bos = lookup(&cfg.bos_token, "bos_token")?;
        let pad =
            crate::encode::pad_id(lookup(&cfg.pad_token, "pad_token")?, config_pad, Some(eos));
        let chat = match &cfg.chat_template {
            Some(src) => Some(ChatTemplate::new(
                src,
                cfg.bos_token.as_deref().unwrap_or(""),
                cfg.eos_token.as_deref().unwrap_or(""),
            )?),
            None => None,
        };
        Ok(Tokenizer {
            inner,
            chat,
            policy: TokenPolicy { eos, stop, pad },
            bos,
            path,
        })
    }

    /// The pad id, EOS and EOS set every stage uses.
    pub fn policy(&self) -> &TokenPolicy {
        &self.policy
    }
    pub fn eos(&self) -> TokenId {
        self.policy.eos
    }
    pub fn bos(&self) -> Option<TokenId> {
        self.bos
    }
    pub fn pad(&self) -> TokenId {
        self.policy.pad
    }
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
    pub fn has_chat_template(&self) -> bool {
        self.chat.is_some()
    }
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    fn tok_err(&self, e: impl std::fmt::Display) -> Error {
        Error::Tokenizer {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }

    /// Token ids of `text`; `add_special_tokens` applies the tokenizer's post-processor.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<TokenId>> {
        let enc = self
            .inner
            .encode(text, add_special_tokens)
            .map_err(|e| self.tok_err(e))?;
        Ok(enc.get_ids().iter().map(|&i| TokenId(i)).collect())
    }

    pub fn decode(&self, ids: &[TokenId], skip_special_tokens: bool) -> Result<String> {
        let raw: Vec<u32> = ids.iter().map(|t| t.0).collect();
        self.inner
            .decode(&raw, skip_special_tokens)
            .map_err(|e| self.tok_err(e))
    }

    /// Render chat messages with the model's template (`add_generation_prompt = true`).
    pub fn render_chat(&self, messages: &[Message]) -> Result<String> {
        let chat = self.chat.as_ref().ok_or_else(|| Error::Tokenizer {
            path: self.path.clone(),
            message: "this model has no chat template, so `messages` prompts cannot be used".into(),
        })?;
        chat.render(messages, true)
    }

    /// A whole conversation rendered by the template, without a generation prompt (a prompt
    /// followed by its response messages).
    pub fn render_conversation(&self, messages: &[Message]) -> Result<String> {
        let chat = self.chat.as_ref().ok_or_else(|| Error::Tokenizer {
            path: self.path.clone(),
            message: "this model has no chat template, so conversational records cannot be used"
                .into(),
        })?;
        chat.render(messages, false)
    }
}

fn read_json_opt(path: &Path) -> Result<Option<Value>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = fs::read_to_string(path).at(path)?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|error| Error::Json {
            path: path.to_path_buf(),
            error,
        })
}

/// `eos_token_id` of a `config.json` / `generation_config.json`: one id or a list.
fn eos_ids_of(v: Option<&Value>) -> Vec<TokenId> {
    match v.and_then(|v| v.get("eos_token_id")) {
        Some(Value::Number(n)) => n.as_u64().map(|n| TokenId(n as u32)).into_iter().collect(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_u64)
            .map(|n| TokenId(n as u32))
            .collect(),
        _ => Vec::new(),
    }
}

/// GPT-2's byte-to-printable-character table used by byte-level BPE vocabularies.
pub fn bytes_to_unicode() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut n = 0u32;
    for b in 0..256u32 {
        let printable =
            (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
        table[b as usize] = if printable {
            char::from_u32(b).expect("valid")
        } else {
            n += 1;
            char::from_u32(255 + n).expect("valid")
        };
    }
    table
}

/// What a byte-level BPE `tokenizer.json` is built from.
#[derive(Debug, Clone)]
pub struct ByteLevelBpe {
    /// Token strings in id order (byte-level alphabet, e.g. `Ġthe`).
    pub vocab: Vec<String>,
    pub merges: Vec<(String, String)>,
    /// Ids of tokens matched verbatim in text before BPE (`<|im_start|>`, …).
    pub special_ids: Vec<u32>,
    /// Split digits into single-digit pieces before the byte-level regex.
    pub split_digits: bool,
}

impl ByteLevelBpe {
    /// The `tokenizer.json` document (format of the `tokenizers` library 0.2x).
    pub fn to_json(&self) -> Value {
        let vocab: serde_json::Map<String, Value> = self
            .vocab
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), json!(i)))
            .collect();
        let merges: Vec<Value> = self
            .merges
            .iter()
            .map(|(a, b)| json!(format!("{a} {b}")))
            .collect();
        let added: Vec<Value> = self
            .special_ids
            .iter()
            .map(|&id| {
                json!({"id": id, "content": self.vocab[id as usize], "single_word": false,
                       "lstrip": false, "rstrip": false, "normalized": false, "special": true})
            })
            .collect();
        let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
        let pre = if self.split_digits {
            json!({"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": true}, byte_level]})
        } else {
            byte_level
        };
        json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": null,
            "pre_tokenizer": pre,
            "post_processor": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                      "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                      "ignore_merges": false, "vocab": vocab, "merges": merges}
        })
    }

    pub fn save(&self, dir: &Path) -> Result<()> {
        let text = serde_json::to_string(&self.to_json()).expect("serializes");
        crate::fsutil::write_atomic(&dir.join("tokenizer.json"), text.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_table_matches_gpt2() {
        let b = bytes_to_unicode();
        assert_eq!(b[b' ' as usize], 'Ġ');
        assert_eq!(b[b'\n' as usize], 'Ċ');
        assert_eq!(b[b'a' as usize], 'a');
        assert_eq!(b[0], 'Ā');
        let mut all: Vec<char> = b.to_vec();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 256);
    }
}
