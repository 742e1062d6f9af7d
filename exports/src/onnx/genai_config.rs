//! `genai_config.json`: the runtime configuration onnxruntime-genai reads beside `model.onnx`
//! (ORT-GENAI-GRAPH.md §8), so an exported folder also runs under `og.Model(dir)`.

use serde_json::{json, Value};

use crate::config::ModelConfig;

/// The config for a causal-LM graph of `cfg` written as `filename`; `gqa`: the graph attends with
/// GroupQueryAttention (no `position_ids`, KV buffers may be shared).
pub fn genai_config(cfg: &ModelConfig, gqa: bool, filename: &str) -> Value {
    let eos = match cfg.eos_token_ids.as_slice() {
        [one] => json!(one),
        many => json!(many),
    };
    let pad = cfg.pad_token_id.or(cfg.eos_token_id());
    // Llama-family types are known to onnxruntime-genai by their HF name; its `gpt2` type expects
    // combined `past_%d` tensors, so GPT-2 is declared as the generic `decoder`.
    let model_type = if cfg.model_type.is_llama_family() {
        cfg.model_type.as_str()
    } else {
        "decoder"
    };
    let mut inputs = json!({
        "input_ids": "input_ids",
        "attention_mask": "attention_mask",
        "past_key_names": "past_key_values.%d.key",
        "past_value_names": "past_key_values.%d.value"
    });
    if !gqa {
        inputs["position_ids"] = json!("position_ids");
    }
    json!({
        "model": {
            "bos_token_id": cfg.bos_token_id,
            "eos_token_id": eos,
            "pad_token_id": pad,
            "context_length": cfg.max_position_embeddings,
            "vocab_size": cfg.vocab_size,
            "type": model_type,
            "decoder": {
                "filename": filename,
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "head_size": cfg.head_dim,
                "hidden_size": cfg.hidden_size,
                "num_attention_heads": cfg.num_attention_heads,
                "num_key_value_heads": cfg.num_key_value_heads,
                "num_hidden_layers": cfg.num_hidden_layers,
                "inputs": inputs,
                "outputs": {
                    "logits": "logits",
                    "present_key_names": "present.%d.key",
                    "present_value_names": "present.%d.value"
                }
            }
        },
        "search": {
            "do_sample": false, "top_k": 50, "top_p": 1.0, "temperature": 1.0, "repetition_penalty": 1.0,
            "num_beams": 1, "num_return_sequences": 1, "max_length": cfg.max_position_embeddings,
            "min_length": 0, "no_repeat_ngram_size": 0, "length_penalty": 1.0, "diversity_penalty": 0.0,
            "early_stopping": true,
            // GQA writes new keys in place at `seqlens_k`, so past and present may share one buffer;
            // the concat graph returns a new, longer tensor each step.
            "past_present_share_buffer": gqa
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn ort_flavor_shares_buffers_and_has_no_position_ids() {
        let cfg = ModelConfig::from_json(
            &json!({"model_type": "llama", "vocab_size": 100, "hidden_size": 32, "num_hidden_layers": 2,
                "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 64,
                "max_position_embeddings": 128, "eos_token_id": [2, 3], "bos_token_id": 1}),
            Path::new("config.json"),
        )
        .unwrap();
        let v = genai_config(&cfg, true, "model.onnx");
        assert_eq!(v["search"]["past_present_share_buffer"], json!(true));
        assert_eq!(v["model"]["pad_token_id"], json!(2));
        assert_eq!(v["model"]["eos_token_id"], json!([2, 3]));
        assert_eq!(v["model"]["decoder"]["head_size"], json!(8));
        assert!(v["model"]["decoder"]["inputs"]
            .get("position_ids")
            .is_none());
        let p = genai_config(&cfg, false, "model.onnx");
        assert_eq!(
            p["model"]["decoder"]["inputs"]["position_ids"],
            json!("position_ids")
        );
        assert_eq!(p["search"]["past_present_share_buffer"], json!(false));
    }
}
