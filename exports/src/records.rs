//! The records of `DATA.md` and the README's "Record formats": prompts, preference pairs (ours and
//! TRL's explicit- and implicit-prompt forms), binary feedback (ours and TRL's KTO form) and
//! generations, read from JSON Lines or Parquet (chosen by extension, see [`for_each_record`]).
//!
//! Strict about what changes the math, lenient about bookkeeping: a known field with a wrong type,
//! a missing required field or an empty id is an error naming the file, the line (or Parquet row)
//! and the problem; a key we do not know is data, kept in the record's `extra` map and written
//! back out. A record with none of the keys that identify its kind names the keys it has, so a
//! typo in ours (`promt`) is still caught.

use std::fmt;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Error, IoContext, Result};

/// Keys of a record we do not interpret, in file order: carried through, never an error.
pub type Extra = Map<String, Value>;

/// One chat message. Keys beyond `role` and `content` (`name`, `tool_calls`, …) are kept and
/// passed to the chat template with the message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
    #[serde(flatten)]
    pub extra: Extra,
}

impl Message {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Message {
            role: role.into(),
            content: content.into(),
            extra: Extra::new(),
        }
    }
}

fn validate_messages(field: &str, m: &[Message]) -> std::result::Result<(), String> {
    if m.is_empty() {
        return Err(format!("`{field}` must not be an empty list of messages"));
    }
    for (i, msg) in m.iter().enumerate() {
        if !matches!(msg.role.as_str(), "system" | "user" | "assistant" | "tool") {
            return Err(format!(
                "`{field}` message {i}: role `{}` is not one of system, user, assistant, tool",
                msg.role
            ));
        }
    }
    Ok(())
}

/// A string, or a list of messages: how TRL writes every text field (prompt, chosen, …).
/// Parsed by hand so that a bad value says which of the two it expected.
fn text_or_messages(field: &str, v: Value) -> std::result::Result<TextOrMessages, String> {
    match v {
        Value::String(s) => Ok(TextOrMessages::Text(s)),
        Value::Array(_) => parse_messages(field, v).map(TextOrMessages::Messages),
        other => Err(format!(
            "`{field}`: expected a string or a list of messages, got {}",
            kind_of(&other)
        )),
    }
}

/// A list of messages. An extra key whose value is null is dropped: in Parquet every message of a
/// column has every key of the column's struct, and null there means "this message has none".
fn parse_messages(field: &str, v: Value) -> std::result::Result<Vec<Message>, String> {
    let mut m = serde_json::from_value::<Vec<Message>>(v).map_err(|e| {
        format!("`{field}`: {e} (expected a list of {{\"role\", \"content\"}} messages)")
    })?;
    for msg in &mut m {
        msg.extra.retain(|_, v| !v.is_null());
    }
    Ok(m)
}

enum TextOrMessages {
    Text(String),
    Messages(Vec<Message>),
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// The keys of a record, for "this record has keys …" messages.
fn keys_of(obj: &Map<String, Value>) -> String {
    if obj.is_empty() {
        return "no keys".into();
    }
    let keys: Vec<String> = obj.keys().map(|k| format!("`{k}`")).collect();
    format!("keys {}", keys.join(", "))
}

/// A prompt: raw text to continue, or chat messages rendered by the model's chat template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Prompt {
    Text(String),
    Messages(Vec<Message>),
}

impl<'de> Deserialize<'de> for Prompt {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        use serde::de::Error as _;
        match text_or_messages("prompt", Value::deserialize(d)?).map_err(D::Error::custom)? {
            TextOrMessages::Text(t) => Ok(Prompt::Text(t)),
            TextOrMessages::Messages(m) => Ok(Prompt::Messages(m)),
        }
    }
}

impl Prompt {
    /// A record's prompt from its `prompt`/`messages` fields (exactly one is set after parsing;
    /// text wins if both were).
    fn of(prompt: &Option<String>, messages: &Option<Vec<Message>>) -> Prompt {
        match (prompt, messages) {
            (Some(p), _) => Prompt::Text(p.clone()),
            (None, Some(m)) => Prompt::Messages(m.clone()),
            (None, None) => Prompt::Text(String::new()),
        }
    }

    /// The text a repetition metric treats as the context: the raw prompt, or the last message.
    pub fn context_text(&self) -> &str {
        match self {
            Prompt::Text(t) => t,
            Prompt::Messages(m) => m.last().map(|m| m.content.as_str()).unwrap_or(""),
        }
    }

    fn validate(&self) -> std::result::Result<(), String> {
        match self {
            Prompt::Text(_) => Ok(()),
            Prompt::Messages(m) => validate_messages("prompt", m),
        }
    }
}

/// A response to a prompt in a training record: a string, or (TRL's conversational form) a list
/// of messages. How either becomes token ids is [`crate::encode`]'s one rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Completion {
    Text(String),
    Messages(Vec<Message>),
}

impl From<&str> for Completion {
    fn from(s: &str) -> Self {
        Completion::Text(s.to_owned())
    }
}

impl From<String> for Completion {
    fn from(s: String) -> Self {
        Completion::Text(s)
    }
}

impl Completion {
    /// The string of a plain-text response.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Completion::Text(t) => Some(t),
            Completion::Messages(_) => None,
        }
    }

    /// The response as plain text: the string, or the content of its messages joined by newlines
    /// (for metrics and logs; never for token ids).
    pub fn text(&self) -> std::borrow::Cow<'_, str> {
        match self {
            Completion::Text(t) => t.as_str().into(),
            Completion::Messages(m) if m.len() == 1 => m[0].content.as_str().into(),
            Completion::Messages(m) => m
                .iter()
                .map(|m| m.content.as_str())
                .collect::<Vec<_>>()
                .join("\n")
                .into(),
        }
    }

    fn parse(field: &str, v: Value) -> std::result::Result<Self, String> {
        Ok(match text_or_messages(field, v)? {
            TextOrMessages::Text(t) => Completion::Text(t),
            TextOrMessages::Messages(m) => {
                validate_messages(field, &m)?;
                Completion::Messages(m)
            }
        })
    }
}

impl<'de> Deserialize<'de> for Completion {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        use serde::de::Error as _;
        Completion::parse("completion", Value::deserialize(d)?).map_err(D::Error::custom)
    }
}

/// A record that can check invariants serde cannot express.
pub trait Record: DeserializeOwned + Serialize {
    fn validate(&self) -> std::result::Result<(), String> {
        Ok(())
    }
}

fn non_empty(field: &str, v: &str) -> std::result::Result<(), String> {
    if v.is_empty() {
        Err(format!("`{field}` must not be empty"))
    } else {
        Ok(())
    }
}

/// Take a known key out of a record's object and parse it; what is left becomes `extra`.
fn take<T: DeserializeOwned>(
    obj: &mut Map<String, Value>,
    key: &str,
) -> std::result::Result<Option<T>, String> {
    match obj.shift_remove(key) {
        // A Parquet column that is null in this row means the field is absent.
        None | Some(Value::Null) => Ok(None),
        Some(v) => serde_json::from_value(v)
            .map(Some)
            .map_err(|e| format!("`{key}`: {e}")),
    }
}

/// `prompt`: a string, or a list of messages.
fn take_prompt(obj: &mut Map<String, Value>) -> std::result::Result<Option<Prompt>, String> {
    match obj.shift_remove("prompt") {
        None | Some(Value::Null) => Ok(None),
        Some(v) => Ok(Some(match text_or_messages("prompt", v)? {
            TextOrMessages::Text(t) => Prompt::Text(t),
            TextOrMessages::Messages(m) => Prompt::Messages(m),
        })),
    }
}

/// Ids are strings; a benchmark's integer ids (`"id": 81`) are taken as their decimal text.
fn take_id(obj: &mut Map<String, Value>) -> std::result::Result<Option<String>, String> {
    match obj.shift_remove("id") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => Ok(Some(n.to_string())),
        Some(other) => Err(format!(
            "`id`: expected a string or an integer, got {}",
            kind_of(&other)
        )),
    }
}

fn object(v: Value) -> std::result::Result<Map<String, Value>, String> {
    match v {
        Value::Object(o) => Ok(o),
        other => Err(format!("expected a JSON object, got {}", kind_of(&other))),
    }
}

macro_rules! deserialize_via {
    ($ty:ty, $parse:path) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(
                d: D,
            ) -> std::result::Result<Self, D::Error> {
                use serde::de::Error as _;
                let v = Value::deserialize(d)?;
                $parse(object(v).map_err(D::Error::custom)?).map_err(D::Error::custom)
            }
        }
    };
}

/// A prompt record: `{"id", "prompt"}` or `{"id", "messages"}`, optional `"reference"`; any other
/// key is kept in `extra` (and copied into the generation record by `engine generate`). TRL's
/// prompt-only conversational form, `"prompt": [messages]`, is read as `messages`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PromptRecord {
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub messages: Option<Vec<Message>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

impl PromptRecord {
    pub fn text(id: impl Into<String>, prompt: impl Into<String>) -> Self {
        PromptRecord {
            id: id.into(),
            prompt: Some(prompt.into()),
            messages: None,
            reference: None,
            extra: Extra::new(),
        }
    }

    /// The prompt as one value (exactly one of `prompt`/`messages` is set after parsing).
    pub fn to_prompt(&self) -> Prompt {
        Prompt::of(&self.prompt, &self.messages)
    }

    fn parse(mut obj: Map<String, Value>) -> std::result::Result<Self, String> {
        let has = keys_of(&obj);
        let id = take_id(&mut obj)?;
        let (prompt, mut messages) = match obj.shift_remove("prompt") {
            None | Some(Value::Null) => (None, None),
            Some(v) => match text_or_messages("prompt", v)? {
                TextOrMessages::Text(t) => (Some(t), None),
                TextOrMessages::Messages(m) => (None, Some(m)),
            },
        };
        let messages_value = obj.shift_remove("messages").filter(|v| !v.is_null());
        if let Some(m) = messages_value
            .map(|v| parse_messages("messages", v))
            .transpose()?
        {
            if prompt.is_some() || messages.is_some() {
                return Err("has both `prompt` and `messages`; expected exactly one".into());
            }
            messages = Some(m);
        }
        if prompt.is_none() && messages.is_none() {
            return Err(format!(
                "missing field `prompt` (or `messages`); this record has {has}"
            ));
        }
        let Some(id) = id else {
            return Err(format!("missing field `id`; this record has {has}"));
        };
        let reference = take::<String>(&mut obj, "reference")?;
        Ok(PromptRecord {
            id,
            prompt,
            messages,
            reference,
            extra: obj,
        })
    }
}

deserialize_via!(PromptRecord, PromptRecord::parse);

impl Record for PromptRecord {
    fn validate(&self) -> std::result::Result<(), String> {
        non_empty("id", &self.id)?;
        match &self.messages {
            Some(m) => validate_messages("messages", m),
            None => Ok(()),
        }
    }
}

/// A preference pair. Read from our form `{"prompt", "chosen", "rejected"}` (strings), TRL's
/// explicit-prompt conversational form (message lists), or TRL's implicit-prompt form (no
/// `prompt`; `chosen` and `rejected` share their prompt as a prefix, which is split off as TRL's
/// `extract_prompt` does). Unknown keys are kept in `extra`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PairRecord {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub prompt: Prompt,
    pub chosen: Completion,
    pub rejected: Completion,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chosen_reward: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rejected_reward: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Why each response ended, when it came from `engine generate` (an extension of the
    /// TRL convention). `length` means the text was cut by the token limit: LM objectives then
    /// train it without the closing EOS, since the response did not end there.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chosen_finish_reason: Option<FinishReason>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rejected_finish_reason: Option<FinishReason>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// TRL's `extract_prompt`: the longest shared prefix of `chosen` and `rejected` is the prompt
/// (whole messages for conversations; characters for strings, minus one space that TRL leaves
/// with the responses).
fn split_implicit_prompt(
    chosen: Completion,
    rejected: Completion,
) -> std::result::Result<(Prompt, Completion, Completion), String> {
    fn shared<T: PartialEq>(a: &[T], b: &[T]) -> usize {
        a.iter().zip(b).take_while(|(x, y)| x == y).count()
    }
    let split = match (chosen, rejected) {
        (Completion::Messages(c), Completion::Messages(r)) => {
            let n = shared(&c, &r);
            if n == c.len() || n == r.len() {
                return Err("implicit prompt: one of `chosen`/`rejected` is a prefix of the other, so one response would be empty".into());
            }
            (
                Prompt::Messages(c[..n].to_vec()),
                Completion::Messages(c[n..].to_vec()),
                Completion::Messages(r[n..].to_vec()),
            )
        }
        (Completion::Text(c), Completion::Text(r)) => {
            let mut n = c
                .char_indices()
                .zip(r.chars())
                .find(|((_, x), y)| x != y)
                .map(|((i, _), _)| i)
                .ok_or("implicit prompt: one of `chosen`/`rejected` is a prefix of the other, so one response would be empty")?;
            if c[..n].ends_with(' ') {
                n -= 1;
            }
            (
                Prompt::Text(c[..n].to_owned()),
                Completion::Text(c[n..].to_owned()),
                Completion::Text(r[n..].to_owned()),
            )
        }
        _ => {
            return Err("implicit prompt: `chosen` and `rejected` must both be strings or both be message lists".into())
        }
    };
    let empty = match &split.0 {
        Prompt::Text(t) => t.is_empty(),
        Prompt::Messages(m) => m.is_empty(),
    };
    if empty {
        return Err("no `prompt`, and `chosen` and `rejected` share no prefix to take as the implicit prompt".into());
    }
    Ok(split)
}

impl PairRecord {
    fn parse(mut obj: Map<String, Value>) -> std::result::Result<Self, String> {
        let has = keys_of(&obj);
        let id = take_id(&mut obj)?;
        let prompt = take_prompt(&mut obj)?;
        let mut side = |key: &str| -> std::result::Result<Completion, String> {
            match obj.shift_remove(key) {
                None | Some(Value::Null) => {
                    Err(format!("missing field `{key}`; this record has {has}"))
                }
                Some(v) => Completion::parse(key, v),
            }
        };
        let chosen = side("chosen")?;
        let rejected = side("rejected")?;
        let (prompt, chosen, rejected) = match prompt {
            Some(p) => (p, chosen, rejected),
            None => split_implicit_prompt(chosen, rejected)?,
        };
        Ok(PairRecord {
            id,
            prompt,
            chosen,
            rejected,
            chosen_reward: take(&mut obj, "chosen_reward")?,
            rejected_reward: take(&mut obj, "rejected_reward")?,
            source: take(&mut obj, "source")?,
            chosen_finish_reason: take(&mut obj, "chosen_finish_reason")?,
            rejected_finish_reason: take(&mut obj, "rejected_finish_reason")?,
            extra: obj,
        })
    }
}

deserialize_via!(PairRecord, PairRecord::parse);

impl Record for PairRecord {
    fn validate(&self) -> std::result::Result<(), String> {
        self.prompt.validate()?;
        if self.chosen == self.rejected {
            return Err(
                "`chosen` equals `rejected`; a pair must prefer one response over another".into(),
            );
        }
        Ok(())
    }
}

/// Binary feedback: one response labelled good (`true`) or bad (`false`). Read from our form
/// `{"prompt", "response", "label"}` or TRL's unpaired-preference (KTO) form
/// `{"prompt", "completion", "label"}`, string or conversational; written with `response`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BinaryRecord {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub prompt: Prompt,
    pub response: Completion,
    pub label: bool,
    /// As in [`PairRecord`]: `length` = cut by the token limit, trained without the closing EOS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finish_reason: Option<FinishReason>,
    #[serde(flatten)]
    pub extra: Extra,
}

impl BinaryRecord {
    fn parse(mut obj: Map<String, Value>) -> std::result::Result<Self, String> {
        let has = keys_of(&obj);
        let missing = |key: &str| format!("missing field `{key}`; this record has {has}");
        let id = take_id(&mut obj)?;
        let prompt = take_prompt(&mut obj)?.ok_or_else(|| missing("prompt"))?;
        let response = match (obj.shift_remove("response"), obj.shift_remove("completion")) {
            (Some(_), Some(_)) => {
                return Err(
                    "has both `response` and `completion` (TRL's name for it); expected one".into(),
                )
            }
            (Some(v), None) => Completion::parse("response", v)?,
            (None, Some(v)) => Completion::parse("completion", v)?,
            (None, None) => return Err(missing("response` (or `completion")),
        };
        let label = take::<bool>(&mut obj, "label")?.ok_or_else(|| missing("label"))?;
        Ok(BinaryRecord {
            id,
            prompt,
            response,
            label,
            finish_reason: take(&mut obj, "finish_reason")?,
            extra: obj,
        })
    }
}

deserialize_via!(BinaryRecord, BinaryRecord::parse);

impl Record for BinaryRecord {
    fn validate(&self) -> std::result::Result<(), String> {
        self.prompt.validate()
    }
}

/// A training example: pairs and binary feedback may be mixed in one file.
///
/// The kind is chosen by its keys (`chosen`/`rejected` → pair; `response`/`completion`/`label` →
/// binary) and then parsed strictly as that kind, so a broken line says which field is wrong
/// instead of serde's "did not match any variant".
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum TrainRecord {
    Pair(PairRecord),
    Binary(BinaryRecord),
}

impl TrainRecord {
    fn parse(obj: Map<String, Value>) -> std::result::Result<Self, String> {
        let is_pair = obj.contains_key("chosen") || obj.contains_key("rejected");
        let is_binary = ["response", "completion", "label"]
            .iter()
            .any(|k| obj.contains_key(*k));
        match (is_pair, is_binary) {
            (true, false) => PairRecord::parse(obj).map(TrainRecord::Pair),
            (false, true) => BinaryRecord::parse(obj).map(TrainRecord::Binary),
            (true, true) => Err(
                "mixes pair fields (`chosen`, `rejected`) with binary-feedback fields (`response`/`completion`, `label`)".into(),
            ),
            (false, false) => Err(format!(
                "expected a pair {{prompt, chosen, rejected}} or binary feedback {{prompt, response (or completion), label}}; this record has {}",
                keys_of(&obj)
            )),
        }
    }
}

deserialize_via!(TrainRecord, TrainRecord::parse);

impl Record for TrainRecord {
    fn validate(&self) -> std::result::Result<(), String> {
        match self {
            TrainRecord::Pair(p) => p.validate(),
            TrainRecord::Binary(b) => b.validate(),
        }
    }
}

/// Why a response ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// The model emitted an EOS token.
    Eos,
    /// A `--stop` string appeared.
    Stop,
    /// `--max-new-tokens` was reached.
    Length,
}

impl FinishReason {
    /// Whether the response really ended (DATA.md's closing EOS belongs to it): false only
    /// for text cut by the token limit. Records without a reason count as ended.
    pub fn ended(reason: Option<FinishReason>) -> bool {
        reason != Some(FinishReason::Length)
    }
}

/// One response of a generation record. Unknown keys are kept in `extra`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub text: String,
    /// Number of generated tokens.
    pub tokens: usize,
    pub finish_reason: FinishReason,
    #[serde(flatten)]
    pub extra: Extra,
}

/// One line of `engine generate` output: the prompt record's fields (its extra keys included,
/// at the top level as in the prompt file), then `responses` and `seconds`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GenerationRecord {
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub messages: Option<Vec<Message>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    pub responses: Vec<Response>,
    pub seconds: f64,
    #[serde(flatten)]
    pub extra: Extra,
}

/// The key under which `engine label` and `engine pair` nest a generation record's extra fields
/// in the pairs they write, so that a prompt's own `source` or `id`-like fields never collide
/// with the pair's.
pub const META_KEY: &str = "meta";

/// A pair's `extra` holding a generation record's extra fields under [`META_KEY`] (empty when
/// there are none).
pub fn nested_meta(extra: &Extra) -> Extra {
    let mut out = Extra::new();
    if !extra.is_empty() {
        out.insert(META_KEY.into(), Value::Object(extra.clone()));
    }
    out
}

/// Keys `engine generate` writes itself; a prompt record may not carry them as extra fields.
pub const GENERATION_KEYS: [&str; 2] = ["responses", "seconds"];

impl GenerationRecord {
    /// The generation record of `prompt` (its extra fields carried over).
    pub fn of(prompt: PromptRecord, responses: Vec<Response>, seconds: f64) -> Self {
        GenerationRecord {
            id: prompt.id,
            prompt: prompt.prompt,
            messages: prompt.messages,
            reference: prompt.reference,
            responses,
            seconds,
            extra: prompt.extra,
        }
    }

    /// The prompt as one value.
    pub fn to_prompt(&self) -> Prompt {
        Prompt::of(&self.prompt, &self.messages)
    }

    fn parse(mut obj: Map<String, Value>) -> std::result::Result<Self, String> {
        let has = keys_of(&obj);
        let responses = take::<Vec<Response>>(&mut obj, "responses")?
            .ok_or_else(|| format!("missing field `responses`; this record has {has}"))?;
        let seconds = take::<f64>(&mut obj, "seconds")?.unwrap_or(0.0);
        let p = PromptRecord::parse(obj)?;
        Ok(GenerationRecord::of(p, responses, seconds))
    }
}

deserialize_via!(GenerationRecord, GenerationRecord::parse);

impl Record for GenerationRecord {
    fn validate(&self) -> std::result::Result<(), String> {
        non_empty("id", &self.id)
    }
}

/// One line of `training fit`'s `metrics.jsonl`: every per-step field of `LOSSES.md` (null when the
/// objective has none).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainMetrics {
    /// Optimizer steps completed (1-based).
    pub step: u64,
    pub epoch: f64,
    pub examples: usize,
    pub tokens: usize,
    pub loss: f64,
    pub ce: Option<f64>,
    pub cringe: Option<f64>,
    pub gate: Option<f64>,
    pub margin: Option<f64>,
    pub chosen_logp: Option<f64>,
    pub rejected_logp: Option<f64>,
    pub accuracy: Option<f64>,
    /// Mean `-log(1 - p(stop))` of the guarded rows (`--stop-unlikelihood` runs only; absent in
    /// files written before it existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_unlikelihood: Option<f64>,
    pub lr: f64,
    pub grad_norm: f64,
    pub tokens_per_s: f64,
}

impl Record for TrainMetrics {}

/// Where a record sits in its file, for error messages and stable keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Location {
    /// 1-based line of a JSON Lines file.
    Line(usize),
    /// A Parquet row: its row group and its row within the group, and the row within the file
    /// (all 0-based, as pyarrow and pandas count them).
    Row {
        group: usize,
        row: usize,
        index: usize,
    },
}

impl Location {
    /// How the location reads inside a sentence: `line 7`, `row group 0, row 3`.
    pub fn describe(self) -> String {
        let s = self.to_string();
        match self {
            Location::Line(n) => format!("line {n}"),
            Location::Row { .. } => s.trim_start_matches(": ").to_string(),
        }
    }

    /// A 1-based position unique within the file (the line, or the file's row + 1).
    pub fn ordinal(self) -> usize {
        match self {
            Location::Line(n) => n,
            Location::Row { index, .. } => index + 1,
        }
    }
}

/// Written right after the path: `data.jsonl:3` or `data.parquet: row group 0, row 2`.
impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Line(n) => write!(f, ":{n}"),
            Location::Row { group, row, index } if index == row => {
                write!(f, ": row group {group}, row {row}")
            }
            Location::Row { group, row, index } => {
                write!(
                    f,
                    ": row group {group}, row {row} (row {index} of the file)"
                )
            }
        }
    }
}

/// The formats records are read from, chosen by the file's extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    /// JSON Lines (any extension other than `.parquet`).
    Jsonl,
    /// Apache Parquet (`.parquet`), the format the Hugging Face Hub serves datasets in.
    Parquet,
}

impl FileFormat {
    pub fn of(path: &Path) -> Self {
        match path.extension().and_then(|e| e.to_str()) {
            Some(e) if e.eq_ignore_ascii_case("parquet") => FileFormat::Parquet,
            _ => FileFormat::Jsonl,
        }
    }
}

/// Parse one JSONL line; `Err` holds the message without file and line.
pub fn parse_line<T: Record>(line: &str) -> std::result::Result<T, String> {
    let value: T = serde_json::from_str(line).map_err(|e| {
        // serde reports "… at line 1 column N" relative to the line; keep the column only.
        let msg = e.to_string();
        match msg.rfind(" at line 1 column ") {
            Some(i) => format!("{} (column {})", &msg[..i], &msg[i + 18..]),
            None => msg,
        }
    })?;
    value.validate()?;
    Ok(value)
}

/// Parse one record from a JSON value (a Parquet row); `Err` holds the message.
pub fn parse_value<T: Record>(value: Value) -> std::result::Result<T, String> {
    let record: T = serde_json::from_value(value).map_err(|e| e.to_string())?;
    record.validate()?;
    Ok(record)
}

/// Read every record of a JSONL or Parquet file (see [`for_each_record`]).
pub fn read_jsonl<T: Record>(path: &Path) -> Result<Vec<T>> {
    let mut out = Vec::new();
    for_each_record(path, |_, r| {
        out.push(r);
        Ok(())
    })?;
    Ok(out)
}

/// Stream the records of a JSONL or Parquet file (by extension) one by one, with where each
/// came from. The first bad record is an error naming the file and the line or row.
pub fn for_each_record<T: Record>(
    path: &Path,
    f: impl FnMut(Location, T) -> Result<()>,
) -> Result<()> {
    for_each_parsed(path, f, |at, message| {
        Err(Error::Record {
            path: path.to_path_buf(),
            at,
            message,
        })
    })
}

/// [`for_each_record`] that hands each bad record to `bad` (which may skip it by returning
/// `Ok(())`, or fail) instead of failing at once: for `--skip-invalid`.
pub fn for_each_parsed<T: Record>(
    path: &Path,
    mut f: impl FnMut(Location, T) -> Result<()>,
    mut bad: impl FnMut(Location, String) -> Result<()>,
) -> Result<()> {
    let mut one = |at: Location, parsed: std::result::Result<T, String>| match parsed {
        Ok(r) => f(at, r),
        Err(message) => bad(at, message),
    };
    match FileFormat::of(path) {
        FileFormat::Parquet => {
            crate::parquet_rows::for_each_row(path, |at, row| one(at, parse_value::<T>(row)))
        }
        FileFormat::Jsonl => {
            let file = fs::File::open(path).at(path)?;
            for (i, line) in BufReader::new(file).lines().enumerate() {
                let line = line.at(path)?;
                if line.trim().is_empty() {
                    continue;
                }
                one(Location::Line(i + 1), parse_line::<T>(&line))?;
            }
            Ok(())
        }
    }
}

/// [`for_each_record`] for callers that only take JSON Lines (`line` is the 1-based line).
pub fn for_each_jsonl<T: Record>(
    path: &Path,
    mut f: impl FnMut(usize, T) -> Result<()>,
) -> Result<()> {
    for_each_record(path, |at, r| f(at.ordinal(), r))
}

/// Write records atomically as one JSON object per line.
pub fn write_jsonl<T: Serialize>(path: &Path, records: &[T]) -> Result<()> {
    crate::fsutil::write_atomic_with(path, |w| {
        for r in records {
            serde_json::to_writer(&mut *w, r).map_err(std::io::Error::other)?;
            w.write_all(b"\n")?;
        }
        Ok(())
    })
}

/// An output that grows one flushed line at a time, for long jobs that must resume after a crash.
pub struct JsonlAppender {
    file: fs::File,
    path: std::path::PathBuf,
}

impl JsonlAppender {
    /// Open `path` for appending. A last line cut short by a crash (no trailing newline) is removed
    /// first, so resumed output is always whole lines.
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(parent).at(parent)?;
        }
        if path.exists() {
            let bytes = fs::read(path).at(path)?;
            if !bytes.is_empty() && bytes.last() != Some(&b'\n') {
                let keep = bytes
                    .iter()
                    .rposition(|&b| b == b'\n')
                    .map(|i| i + 1)
                    .unwrap_or(0);
                let f = fs::OpenOptions::new().write(true).open(path).at(path)?;
                f.set_len(keep as u64).at(path)?;
            }
        }
        let file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .at(path)?;
        Ok(JsonlAppender {
            file,
            path: path.to_path_buf(),
        })
    }

    /// Append one record and flush it to the OS.
    pub fn append<T: Serialize>(&mut self, record: &T) -> Result<()> {
        let mut line = serde_json::to_vec(record).map_err(|e| Error::Invalid(e.to_string()))?;
        line.push(b'\n');
        self.file.write_all(&line).at(&self.path)?;
        self.file.flush().at(&self.path)
    }
}

#[cfg(test)]
mod tests;
