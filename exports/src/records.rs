//! JSON Lines records of `DATA.md`: prompts, preference pairs, binary feedback and generations.
//!
//! Reading is strict: an unknown field, a missing field, a wrong type or an empty required string is
//! an error that names the file, the line and the problem. Writers produce exactly the documented
//! fields, so that what one stage writes the next one reads.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Message {
    pub role: String,
    pub content: String,
}

/// A prompt: raw text to continue, or chat messages rendered by the model's chat template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    Text(String),
    Messages(Vec<Message>),
}

impl Prompt {
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
            Prompt::Messages(m) if m.is_empty() => Err("`messages` must not be empty".into()),
            Prompt::Messages(m) => {
                for (i, msg) in m.iter().enumerate() {
                    if !matches!(msg.role.as_str(), "system" | "user" | "assistant" | "tool") {
                        return Err(format!(
                            "message {i}: role `{}` is not one of system, user, assistant, tool",
                            msg.role
                        ));
                    }
                }
                Ok(())
            }
        }
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

/// A prompt record: `{"id", "prompt"}` or `{"id", "messages"}`, optional `"reference"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromptRecord {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages: Option<Vec<Message>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
}

impl PromptRecord {
    pub fn text(id: impl Into<String>, prompt: impl Into<String>) -> Self {
        PromptRecord {
            id: id.into(),
            prompt: Some(prompt.into()),
            messages: None,
            reference: None,
        }
    }

    /// The prompt as one value (exactly one of `prompt`/`messages` is set after validation).
    pub fn to_prompt(&self) -> Prompt {
        match (&self.prompt, &self.messages) {
            (Some(p), _) => Prompt::Text(p.clone()),
            (None, Some(m)) => Prompt::Messages(m.clone()),
            (None, None) => Prompt::Text(String::new()),
        }
    }
}

impl Record for PromptRecord {
    fn validate(&self) -> std::result::Result<(), String> {
        non_empty("id", &self.id)?;
        match (&self.prompt, &self.messages) {
            (Some(_), Some(_)) => {
                Err("has both `prompt` and `messages`; expected exactly one".into())
            }
            (None, None) => Err("missing field `prompt` (or `messages`)".into()),
            (Some(_), None) => Ok(()),
            (None, Some(m)) => Prompt::Messages(m.clone()).validate(),
        }
    }
}

/// A preference pair (the TRL / OpenRLHF convention).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PairRecord {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub prompt: Prompt,
    pub chosen: String,
    pub rejected: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chosen_reward: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected_reward: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Why each response ended, when it came from `engine generate` (an extension of the
    /// TRL convention). `length` means the text was cut by the token limit: LM objectives then
    /// train it without the closing EOS, since the response did not end there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chosen_finish_reason: Option<FinishReason>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected_finish_reason: Option<FinishReason>,
}

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

/// Binary feedback: one response labelled good (`true`) or bad (`false`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BinaryRecord {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub prompt: Prompt,
    pub response: String,
    pub label: bool,
    /// As in [`PairRecord`]: `length` = cut by the token limit, trained without the closing EOS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish_reason: Option<FinishReason>,
}

impl Record for BinaryRecord {
    fn validate(&self) -> std::result::Result<(), String> {
        self.prompt.validate()
    }
}

/// A training example: pairs and binary feedback may be mixed in one file.
///
/// The kind is chosen by its keys (`chosen`/`rejected` → pair, `response`/`label` → binary) and then
/// parsed strictly as that kind, so a broken line says which field is wrong instead of serde's
/// "did not match any variant".
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum TrainRecord {
    Pair(PairRecord),
    Binary(BinaryRecord),
}

impl<'de> Deserialize<'de> for TrainRecord {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        use serde::de::Error as _;
        let v = serde_json::Value::deserialize(d)?;
        let obj = v
            .as_object()
            .ok_or_else(|| D::Error::custom("expected a JSON object"))?;
        let is_pair = obj.contains_key("chosen") || obj.contains_key("rejected");
        let is_binary = obj.contains_key("response") || obj.contains_key("label");
        match (is_pair, is_binary) {
            (true, false) => serde_json::from_value(v).map(TrainRecord::Pair).map_err(D::Error::custom),
            (false, true) => serde_json::from_value(v).map(TrainRecord::Binary).map_err(D::Error::custom),
            (true, true) => Err(D::Error::custom(
                "mixes pair fields (`chosen`, `rejected`) with binary-feedback fields (`response`, `label`)",
            )),
            (false, false) => Err(D::Error::custom(
                "expected a pair {prompt, chosen, rejected} or binary feedback {prompt, response, label}",
            )),
        }
    }
}

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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Response {
    pub text: String,
    /// Number of generated tokens.
    pub tokens: usize,
    pub finish_reason: FinishReason,
}

/// One line of `engine generate` output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerationRecord {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages: Option<Vec<Message>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    pub responses: Vec<Response>,
    pub seconds: f64,
}

impl GenerationRecord {
    pub fn to_prompt(&self) -> Prompt {
        match (&self.prompt, &self.messages) {
            (Some(p), _) => Prompt::Text(p.clone()),
            (None, Some(m)) => Prompt::Messages(m.clone()),
            (None, None) => Prompt::Text(String::new()),
        }
    }
}

impl Record for GenerationRecord {
    fn validate(&self) -> std::result::Result<(), String> {
        non_empty("id", &self.id)?;
        match (&self.prompt, &self.messages) {
            (Some(_), Some(_)) => {
                Err("has both `prompt` and `messages`; expected exactly one".into())
            }
            (None, None) => Err("missing field `prompt` (or `messages`)".into()),
            _ => Ok(()),
        }
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
    pub lr: f64,
    pub grad_norm: f64,
    pub tokens_per_s: f64,
}

impl Record for TrainMetrics {}

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

/// Read every record of a JSONL file. Blank lines are skipped; the first bad line is an error
/// naming the file and the 1-based line number.
pub fn read_jsonl<T: Record>(path: &Path) -> Result<Vec<T>> {
    let mut out = Vec::new();
    for_each_jsonl(path, |_, r| {
        out.push(r);
        Ok(())
    })?;
    Ok(out)
}

/// Stream a JSONL file record by record; `f` receives the 1-based line number.
pub fn for_each_jsonl<T: Record>(
    path: &Path,
    mut f: impl FnMut(usize, T) -> Result<()>,
) -> Result<()> {
    let file = fs::File::open(path).at(path)?;
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line.at(path)?;
        if line.trim().is_empty() {
            continue;
        }
        let record = parse_line::<T>(&line).map_err(|message| Error::Record {
            path: path.to_path_buf(),
            line: i + 1,
            message,
        })?;
        f(i + 1, record)?;
    }
    Ok(())
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
mod tests {
    use super::*;

    fn write(lines: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(lines.as_bytes()).unwrap();
        f
    }

    #[test]
    fn errors_name_file_line_and_problem() {
        let f = write("{\"prompt\":\"a\",\"chosen\":\"b\",\"rejected\":\"c\"}\n\n{\"prompt\":\"a\",\"chosen\":\"b\"}\n");
        let e = read_jsonl::<PairRecord>(f.path()).unwrap_err().to_string();
        let p = f.path().display().to_string();
        assert!(e.starts_with(&format!("{p}:3: ")), "{e}");
        assert!(e.contains("missing field `rejected`"), "{e}");
    }

    #[test]
    fn unknown_fields_wrong_types_and_bad_roles_are_rejected() {
        let cases = [
            (
                "{\"id\":\"1\",\"prompt\":\"a\",\"extra\":1}",
                "unknown field `extra`",
            ),
            ("{\"id\":\"1\",\"prompt\":3}", "invalid type"),
            ("{\"id\":\"1\"}", "missing field `prompt`"),
            ("{\"id\":\"\",\"prompt\":\"x\"}", "`id` must not be empty"),
            ("{\"id\":\"1\",\"prompt\":\"x\",\"messages\":[]}", "both"),
            (
                "{\"id\":\"1\",\"messages\":[{\"role\":\"robot\",\"content\":\"x\"}]}",
                "role `robot`",
            ),
            ("not json", "expected"),
        ];
        for (line, want) in cases {
            let e = parse_line::<PromptRecord>(line).unwrap_err();
            assert!(e.contains(want), "{line}: {e}");
        }
    }

    #[test]
    fn pairs_and_binary_records_mix_and_round_trip_exactly() {
        let text = concat!(
            "{\"id\":\"p1\",\"prompt\":[{\"role\":\"user\",\"content\":\"hi\"}],\"chosen\":\"hello\",\"rejected\":\"go\",\"chosen_reward\":1.5,\"rejected_reward\":-0.25,\"source\":\"label\"}\n",
            "{\"prompt\":\"The cat\",\"response\":\" sat.\",\"label\":false}\n"
        );
        let f = write(text);
        let records = read_jsonl::<TrainRecord>(f.path()).unwrap();
        assert!(matches!(records[0], TrainRecord::Pair(_)));
        assert!(matches!(&records[1], TrainRecord::Binary(b) if !b.label));
        let out = tempfile::NamedTempFile::new().unwrap();
        write_jsonl(out.path(), &records).unwrap();
        assert_eq!(fs::read_to_string(out.path()).unwrap(), text);
    }

    #[test]
    fn a_broken_training_record_names_the_missing_field() {
        let e = parse_line::<TrainRecord>("{\"prompt\":\"a\",\"chosen\":\"b\"}").unwrap_err();
        assert!(e.contains("missing field `rejected`"), "{e}");
        let e = parse_line::<TrainRecord>("{\"prompt\":\"a\",\"response\":\"b\"}").unwrap_err();
        assert!(e.contains("missing field `label`"), "{e}");
        let e = parse_line::<TrainRecord>("{\"prompt\":\"a\"}").unwrap_err();
        assert!(e.contains("expected a pair"), "{e}");
    }

    #[test]
    fn identical_chosen_and_rejected_is_an_error() {
        let e = parse_line::<PairRecord>("{\"prompt\":\"a\",\"chosen\":\"b\",\"rejected\":\"b\"}")
            .unwrap_err();
        assert!(e.contains("equals"), "{e}");
    }

    #[test]
    fn appender_drops_a_torn_last_line() {
        let f = write("{\"id\":\"a\",\"prompt\":\"x\"}\n{\"id\":\"b\",\"pro");
        let mut a = JsonlAppender::open(f.path()).unwrap();
        a.append(&PromptRecord::text("c", "y")).unwrap();
        let ids: Vec<String> = read_jsonl::<PromptRecord>(f.path())
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(ids, ["a", "c"]);
    }
}
