//! Chat templates: the Jinja template of `tokenizer_config.json` (or `chat_template.jinja`),
//! rendered with minijinja under Hugging Face's conventions — `trim_blocks` and `lstrip_blocks`
//! on, `messages`, `add_generation_prompt`, `bos_token`/`eos_token` in scope, `raise_exception`,
//! `strftime_now`, and Python string methods (`.strip()`, `.startswith()`, …).

use minijinja::{Environment, ErrorKind};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::records::Message;

const NAME: &str = "chat_template";

pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
    source: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("source", &self.source)
            .finish()
    }
}

#[derive(Serialize)]
struct Context<'a> {
    messages: &'a [Message],
    add_generation_prompt: bool,
    bos_token: &'a str,
    eos_token: &'a str,
}

impl ChatTemplate {
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self> {
        let mut env = Environment::new();
        env.set_syntax(
            minijinja::syntax::SyntaxConfig::builder()
                .trim_blocks(true)
                .lstrip_blocks(true)
                .build()
                .expect("the default delimiters are valid"),
        );
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
            },
        );
        env.add_function("strftime_now", |fmt: String| -> String {
            // Templates use this for "today's date" in system prompts. Rendering must be
            // reproducible, so the date is fixed to the Unix epoch rather than the wall clock.
            let _ = fmt;
            "01 Jan 1970".to_string()
        });
        env.add_template_owned(NAME, source.to_string())
            .map_err(|e| Error::Template(format!("cannot parse: {e:#}")))?;
        Ok(ChatTemplate {
            env,
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
            source: source.to_string(),
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let tmpl = self
            .env
            .get_template(NAME)
            .expect("added in new(); this is a bug");
        tmpl.render(minijinja::Value::from(minijinja::value::Serde(Context {
            messages,
            add_generation_prompt,
            bos_token: &self.bos_token,
            eos_token: &self.eos_token,
        })))
        .map_err(|e| Error::Template(format!("{e:#}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SmolLM2-135M-Instruct's template, as shipped in its GGUF metadata.
    pub const SMOLLM2: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    fn msg(role: &str, content: &str) -> Message {
        Message::new(role, content)
    }

    #[test]
    fn smollm2_template_renders_like_transformers() {
        let t = ChatTemplate::new(SMOLLM2, "<|im_start|>", "<|im_end|>").unwrap();
        let out = t.render(&[msg("user", "Hi there")], true).unwrap();
        // transformers.apply_chat_template(..., tokenize=False, add_generation_prompt=True)
        assert_eq!(
            out,
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"
        );
        let out = t
            .render(&[msg("system", "Be brief."), msg("user", "Hi")], false)
            .unwrap();
        assert_eq!(
            out,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        );
    }

    #[test]
    fn block_trimming_bos_and_python_methods_follow_hf() {
        // trim_blocks removes the newline after a block tag; lstrip_blocks the indentation before it.
        let src = "{{ bos_token }}\n{% for m in messages %}\n  {% if m.role == 'user' %}\n[{{ m.content.strip() | upper }}]\n  {% endif %}\n{% endfor %}{{ eos_token }}";
        let t = ChatTemplate::new(src, "<s>", "</s>").unwrap();
        let out = t
            .render(&[msg("user", "  hello "), msg("assistant", "x")], false)
            .unwrap();
        assert_eq!(out, "<s>\n[HELLO]\n</s>");
    }

    #[test]
    fn raise_exception_becomes_an_error_with_its_message() {
        let src = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('Conversation must start with user') }}{% endif %}ok";
        let t = ChatTemplate::new(src, "", "").unwrap();
        assert_eq!(t.render(&[msg("user", "a")], true).unwrap(), "ok");
        let e = t
            .render(&[msg("assistant", "a")], true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("Conversation must start with user"), "{e}");
    }

    #[test]
    fn a_messages_extra_keys_reach_the_template() {
        // As transformers passes each message dict whole: `name` is there when given.
        let src = "{% for m in messages %}{{ m.role }}{% if m.name is defined %}({{ m.name }}){% endif %}: {{ m.content }}\n{% endfor %}";
        let t = ChatTemplate::new(src, "", "").unwrap();
        let mut named = msg("user", "hi");
        named.extra.insert("name".into(), "ann".into());
        let out = t.render(&[named, msg("assistant", "yo")], false).unwrap();
        assert_eq!(out, "user(ann): hi\nassistant: yo\n");
    }

    #[test]
    fn a_broken_template_is_reported_at_load() {
        assert!(ChatTemplate::new("{% for %}", "", "").is_err());
    }
}
