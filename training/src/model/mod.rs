//! The trainable models: the Llama family (Llama, Mistral, Qwen2) and GPT-2, each with a causal-LM
//! head or a scalar reward head, computing what Hugging Face transformers computes in fp32.
//!
//! Every parameter is declared in the `VarStore` under its Hugging Face name, in
//! `exports::layout::tensors` order (`model.layers.0.self_attn.q_proj.weight`, ...), so a checkpoint
//! loads and saves by name with no rename table (see `crate::weights`).
//!
//! Weight decay groups (`nn::Path::set_group`), for `Optimizer::set_weight_decay_group`:
//! * [`DECAY_GROUP`] (0): matrices — projections, embeddings (and the output/score heads).
//!   Embeddings are decayed as in transformers' `Trainer`, which exempts only biases and norms.
//! * [`NO_DECAY_GROUP`] (1): biases and norm weights/biases.
//!
//! Padding may be on either side. Position ids are `cumsum(mask) - 1` clamped at 0 (so a
//! left-padded row's first real token is at position 0, as in `generate`), and attention is causal
//! and never looks at padding keys.

mod checkpoint;
mod gpt2;
mod layers;
mod llama;
pub mod lora;

pub use checkpoint::Recompute;

use std::collections::HashMap;

use anyhow::{bail, Context};
use exports::layout::{self, Role};
use exports::{Head, ModelConfig};
use tch::{Kind, Tensor};

use layers::{positions_from_mask, AttnMask};
pub use lora::LoraConfig;

/// The optimizer group of decayed parameters (matrices and embeddings).
pub const DECAY_GROUP: usize = 0;
/// The optimizer group of parameters exempt from weight decay (biases and norms).
pub const NO_DECAY_GROUP: usize = 1;

/// One declared parameter.
pub struct Param {
    /// The Hugging Face tensor name (`model.norm.weight`).
    pub name: String,
    /// The name in the `VarStore` (the HF name under the root path given to [`Model::new`]).
    pub var_name: String,
    pub tensor: Tensor,
}

/// Declared tensors by HF name, handed out once each to the architecture's constructor.
pub(crate) struct Params {
    map: HashMap<String, Tensor>,
}

impl Params {
    pub fn take(&mut self, name: &str) -> anyhow::Result<Tensor> {
        self.map.remove(name).with_context(|| {
            format!("tensor `{name}` is not in this architecture's layout; this is a bug")
        })
    }
}

enum Backbone {
    Llama(llama::Llama),
    Gpt2(gpt2::Gpt2),
}

/// A Llama-family or GPT-2 model with an LM or reward head.
pub struct Model {
    cfg: ModelConfig,
    head: Head,
    backbone: Backbone,
    /// `lm_head.weight` (the embedding when tied) or `score.weight`, `[V or 1, H]`.
    head_weight: Tensor,
    params: Vec<Param>,
    /// The LoRA adapters, when [`Model::add_lora`] attached them.
    lora: Option<Adapters>,
}

/// The adapters of a model: settings, the switch they share, and their tensors by PEFT name.
struct Adapters {
    config: LoraConfig,
    switch: std::sync::Arc<lora::LoraSwitch>,
    /// `(PEFT name, tensor)`: `lora_A` then `lora_B` of each module, in layer order.
    tensors: Vec<(String, Tensor)>,
}

/// The group a tensor of `role` belongs to.
pub fn decay_group(role: Role) -> usize {
    match role {
        Role::Matrix => DECAY_GROUP,
        Role::Bias | Role::NormWeight | Role::NormBias => NO_DECAY_GROUP,
    }
}

impl Model {
    /// Declare every parameter under `root` with Hugging Face names (exports::layout::tensors
    /// order), so VarStore names equal HF names: `model.layers.0.self_attn.q_proj.weight` ...
    ///
    /// Parameters start as placeholders (norm weights 1, everything else 0) until
    /// `weights::load_model` fills them from a checkpoint.
    pub fn new(root: &tch::nn::Path, cfg: &ModelConfig, head: Head) -> anyhow::Result<Model> {
        let mut params = Vec::new();
        let mut map = HashMap::new();
        for spec in layout::tensors(cfg, head) {
            let mut parts: Vec<&str> = spec.name.split('.').collect();
            let leaf = parts.pop().context("empty tensor name; this is a bug")?;
            let mut path = root.set_group(decay_group(spec.role));
            for part in parts {
                path = path.sub(part);
            }
            let var_name = path.path(leaf);
            if path.get(leaf).is_some() {
                bail!(
                    "variable `{var_name}` is already declared in this VarStore; build each model under its own path"
                );
            }
            let dims: Vec<i64> = spec.shape.iter().map(|&d| d as i64).collect();
            let tensor = match spec.role {
                Role::NormWeight => path.f_ones(leaf, &dims),
                _ => path.f_zeros(leaf, &dims),
            }
            .with_context(|| format!("declaring `{var_name}` {dims:?}"))?;
            map.insert(spec.name.clone(), tensor.shallow_clone());
            params.push(Param {
                name: spec.name,
                var_name,
                tensor,
            });
        }
        let mut taken = Params { map };
        let backbone = if cfg.model_type.is_llama_family() {
            Backbone::Llama(llama::Llama::new(&mut taken, cfg)?)
        } else {
            Backbone::Gpt2(gpt2::Gpt2::new(&mut taken, cfg)?)
        };
        let head_weight = match head {
            Head::Lm if cfg.tie_word_embeddings => match &backbone {
                Backbone::Llama(m) => m.embedding().shallow_clone(),
                Backbone::Gpt2(m) => m.embedding().shallow_clone(),
            },
            Head::Lm => taken.take("lm_head.weight")?,
            Head::Reward => taken.take("score.weight")?,
        };
        if let Some(name) = taken.map.keys().next() {
            bail!("tensor `{name}` of the layout is used by no layer; this is a bug");
        }
        Ok(Model {
            cfg: cfg.clone(),
            head,
            backbone,
            head_weight,
            params,
            lora: None,
        })
    }

    /// Attach LoRA adapters (see [`lora`]) to the projections named in `cfg.targets` and freeze
    /// every base parameter; a reward head's `score.weight` stays trainable (PEFT's
    /// `modules_to_save` for `SEQ_CLS`). `A` is drawn from `seed`, `B` is zero.
    pub fn add_lora(&mut self, cfg: &LoraConfig, seed: u64) -> anyhow::Result<()> {
        cfg.validate()?;
        if !cfg.enabled() {
            bail!("add_lora needs r > 0");
        }
        if self.lora.is_some() {
            bail!("this model already has LoRA adapters");
        }
        let Backbone::Llama(m) = &mut self.backbone else {
            bail!(
                "LoRA is implemented for the Llama family (q/k/v/o and MLP projections); {} is not",
                self.cfg.model_type.as_str()
            );
        };
        let switch = lora::LoraSwitch::new(cfg.dropout);
        let scaling = cfg.scaling();
        let mut tensors = Vec::new();
        for (index, (module, lin)) in m.projections_mut().into_iter().enumerate() {
            let leaf = module.rsplit('.').next().unwrap_or_default();
            if !cfg.targets.iter().any(|t| t == leaf) {
                continue;
            }
            let size = lin.weight.size();
            let (out, inp) = (size[0], size[1]);
            let r = cfg.r as i64;
            let opts = (Kind::Float, lin.weight.device());
            let a = Tensor::from_slice(&lora::init_a(
                cfg.init,
                cfg.r,
                inp as usize,
                seed,
                index as u64,
            ))
            .view([r, inp])
            .to_device(opts.1)
            .set_requires_grad(true);
            let b = Tensor::zeros([out, r], opts).set_requires_grad(true);
            tensors.push((exports::lora::lora_a_name(&module), a.shallow_clone()));
            tensors.push((exports::lora::lora_b_name(&module), b.shallow_clone()));
            lin.lora = Some(lora::Lora {
                a,
                b,
                scaling,
                switch: switch.clone(),
            });
        }
        for p in &self.params {
            let train = self.head == Head::Reward && p.name == "score.weight";
            let _ = p.tensor.set_requires_grad(train);
        }
        self.lora = Some(Adapters {
            config: cfg.clone(),
            switch,
            tensors,
        });
        Ok(())
    }

    /// The LoRA settings, when the model has adapters.
    pub fn lora(&self) -> Option<&LoraConfig> {
        self.lora.as_ref().map(|l| &l.config)
    }

    /// The tensors training updates, by name: every parameter (HF names), or with LoRA the
    /// adapters (PEFT names) and a reward head's `score.weight` (`base_model.model.score.weight`).
    pub fn trainable(&self) -> Vec<(String, Tensor)> {
        match &self.lora {
            None => self
                .params
                .iter()
                .map(|p| (p.name.clone(), p.tensor.shallow_clone()))
                .collect(),
            Some(l) => {
                let mut v: Vec<(String, Tensor)> = l
                    .tensors
                    .iter()
                    .map(|(n, t)| (n.clone(), t.shallow_clone()))
                    .collect();
                if self.head == Head::Reward {
                    v.push((
                        exports::lora::saved_name("score.weight"),
                        self.head_weight.shallow_clone(),
                    ));
                }
                v
            }
        }
    }

    /// Run `f` with the adapters off (the base model); a model without adapters just runs `f`.
    pub fn without_adapters<R>(&self, f: impl FnOnce() -> R) -> R {
        let Some(l) = &self.lora else {
            return f();
        };
        struct On<'a>(&'a lora::LoraSwitch);
        impl Drop for On<'_> {
            fn drop(&mut self) {
                self.0.set_enabled(true);
            }
        }
        l.switch.set_enabled(false);
        let _on = On(&l.switch);
        f()
    }

    /// Adapter dropout acts only while this is on (`training fit` turns it on for its steps).
    pub fn set_training(&self, on: bool) {
        if let Some(l) = &self.lora {
            l.switch.set_training(on);
        }
    }

    /// The trainable tensors of an adapter model as PEFT saves them (fp32, PEFT names).
    pub fn adapter_checkpoint(&self) -> anyhow::Result<exports::Checkpoint> {
        if self.lora.is_none() {
            bail!("this model has no LoRA adapters");
        }
        let mut ckpt = exports::Checkpoint::new();
        for (name, t) in self.trainable() {
            ckpt.insert(
                name.clone(),
                crate::weights::tensor_to_host(&t).with_context(|| format!("reading `{name}`"))?,
            );
        }
        Ok(ckpt)
    }

    /// `adapter_config.json` of this model's adapters, with `base` as `base_model_name_or_path`.
    pub fn adapter_config(
        &self,
        base: &std::path::Path,
    ) -> anyhow::Result<exports::lora::AdapterConfig> {
        let Some(l) = &self.lora else {
            bail!("this model has no LoRA adapters");
        };
        Ok(exports::lora::AdapterConfig {
            r: l.config.r,
            lora_alpha: l.config.alpha,
            lora_dropout: l.config.dropout,
            target_modules: l.config.targets.clone(),
            base_model_name_or_path: Some(base.display().to_string()),
            task_type: match self.head {
                Head::Lm => exports::lora::TaskType::CausalLm,
                Head::Reward => exports::lora::TaskType::SeqCls,
            },
            use_rslora: l.config.rslora,
            init: l.config.init,
        })
    }

    /// Copy the adapter tensors of `adapter` into this model's adapters (attached with the same
    /// settings); every tensor must be present with its shape, and nothing else.
    pub fn load_adapter(&self, adapter: &exports::lora::Adapter) -> anyhow::Result<()> {
        let src = adapter.dir.join(exports::lora::ADAPTER_WEIGHTS_FILE);
        let mut given = std::collections::BTreeMap::new();
        for m in &adapter.modules {
            given.insert(exports::lora::lora_a_name(&m.module), &m.a);
            given.insert(exports::lora::lora_b_name(&m.module), &m.b);
        }
        for (name, t) in &adapter.saved {
            given.insert(exports::lora::saved_name(name), t);
        }
        let _guard = tch::no_grad_guard();
        let mut missing = Vec::new();
        for (name, t) in self.trainable() {
            let Some(h) = given.remove(&name) else {
                missing.push(name);
                continue;
            };
            let want: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
            if h.shape != want {
                bail!(
                    "{}: `{name}` has shape {:?}, expected {want:?}",
                    src.display(),
                    h.shape
                );
            }
            let mut dst = t.shallow_clone();
            dst.f_copy_(&crate::weights::host_to_tensor(&name, h)?.to_device(t.device()))?;
        }
        if !missing.is_empty() || !given.is_empty() {
            bail!(
                "{}: the adapter does not match this model's adapters (missing: {}; unexpected: {})",
                src.display(),
                if missing.is_empty() { "none".into() } else { missing.join(", ") },
                if given.is_empty() { "none".into() } else { given.keys().cloned().collect::<Vec<_>>().join(", ") }
            );
        }
        Ok(())
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    pub fn head(&self) -> Head {
        self.head
    }

    /// The head matrix: `lm_head.weight` (the embedding when tied) `[V, H]` or `score.weight`
    /// `[1, H]`; `forward` is `hidden_states(..).linear(head_weight())`.
    pub fn head_weight(&self) -> &Tensor {
        &self.head_weight
    }

    /// Every parameter in `exports::layout::tensors` order (a tied head is not listed twice).
    pub fn parameters(&self) -> &[Param] {
        &self.params
    }

    /// Check shapes, kinds and token range of a batch; `forward` and friends panic with this
    /// message on bad input, callers that prefer an error can check first.
    pub fn check_inputs(&self, input_ids: &Tensor, attention_mask: &Tensor) -> anyhow::Result<()> {
        let ids = input_ids.size();
        if ids.len() != 2 || ids[1] == 0 {
            bail!("input_ids must be [batch, seq] with seq > 0, got {ids:?}");
        }
        if input_ids.kind() != Kind::Int64 {
            bail!("input_ids must be int64, got {:?}", input_ids.kind());
        }
        if attention_mask.size() != ids {
            bail!(
                "attention_mask {:?} must have the shape of input_ids {ids:?}",
                attention_mask.size()
            );
        }
        if !matches!(
            attention_mask.kind(),
            Kind::Int64 | Kind::Int | Kind::Bool | Kind::Uint8
        ) {
            bail!(
                "attention_mask must be an integer tensor, got {:?}",
                attention_mask.kind()
            );
        }
        let max_pos = self.cfg.max_position_embeddings as i64;
        if !self.cfg.model_type.is_llama_family() && ids[1] > max_pos {
            bail!(
                "sequence length {} exceeds GPT-2's {max_pos} learned positions",
                ids[1]
            );
        }
        let (lo, hi) = (
            input_ids.min().int64_value(&[]),
            input_ids.max().int64_value(&[]),
        );
        if lo < 0 || hi >= self.cfg.vocab_size as i64 {
            bail!(
                "token ids must lie in [0, {}), got range [{lo}, {hi}]",
                self.cfg.vocab_size
            );
        }
        Ok(())
    }

    fn checked(&self, input_ids: &Tensor, attention_mask: &Tensor) {
        if let Err(e) = self.check_inputs(input_ids, attention_mask) {
            panic!("{e:#}");
        }
    }

    /// Final hidden states `[B, T, H]` (after the final norm).
    ///
    /// # Panics
    /// On inputs that [`Model::check_inputs`] rejects.
    pub fn hidden_states(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Tensor {
        self.checked(input_ids, attention_mask);
        let mask = attention_mask.to_kind(Kind::Int64);
        let positions = positions_from_mask(&mask);
        let attn = AttnMask::new(&mask, self.cfg.sliding_window);
        match &self.backbone {
            Backbone::Llama(m) => m.hidden_states(input_ids, &positions, &attn),
            Backbone::Gpt2(m) => m.hidden_states(input_ids, &positions, &attn),
        }
    }

    /// [`Model::hidden_states`] with gradient checkpointing: the same values, with only each
    /// block's input kept for the backward pass. After backpropagating a loss built from the
    /// result, call [`Recompute::backward`] to carry the gradient through the blocks (see
    /// `checkpoint`'s module docs).
    ///
    /// # Panics
    /// On inputs that [`Model::check_inputs`] rejects.
    pub fn hidden_states_checkpointed(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
    ) -> (Tensor, Recompute<'_>) {
        self.checked(input_ids, attention_mask);
        let mask = attention_mask.to_kind(Kind::Int64);
        let positions = positions_from_mask(&mask);
        let attn = AttnMask::new(&mask, self.cfg.sliding_window);
        match &self.backbone {
            Backbone::Llama(m) => {
                let (cos, sin) = m.rotary(&positions);
                checkpoint::checkpointed(
                    m.embed(input_ids),
                    m.num_blocks(),
                    Box::new(move |i, x| m.block(i, x, &cos, &sin, &attn)),
                    |x| m.finish(x),
                )
            }
            Backbone::Gpt2(m) => checkpoint::checkpointed(
                m.embed(input_ids, &positions),
                m.num_blocks(),
                Box::new(move |i, x| m.block(i, x, &attn)),
                |x| m.finish(x),
            ),
        }
    }

    /// The head applied at every position: logits `[B, T, V]` for `Head::Lm`, per-token reward
    /// scores `[B, T, 1]` for `Head::Reward`.
    ///
    /// # Panics
    /// On inputs that [`Model::check_inputs`] rejects.
    pub fn forward(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Tensor {
        self.hidden_states(input_ids, attention_mask)
            .linear(&self.head_weight, None::<Tensor>)
    }

    /// Reward score `[B]` from `score.weight` on the last non-padding token of each row (the
    /// `*ForSequenceClassification` convention with `num_labels = 1`). The last token is found
    /// from the attention mask, so it works with left or right padding and with a pad id that
    /// equals EOS (transformers looks for the pad id in `input_ids` instead, which skips a
    /// trailing EOS in that case).
    ///
    /// # Panics
    /// If the head is not `Head::Reward`, or on inputs that [`Model::check_inputs`] rejects.
    pub fn score(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Tensor {
        assert!(
            self.head == Head::Reward,
            "Model::score needs a reward head (Head::Reward); this model has {:?}",
            self.head
        );
        self.score_of(
            &self.hidden_states(input_ids, attention_mask),
            attention_mask,
        )
    }

    /// [`Model::score`] from hidden states already computed (e.g. checkpointed).
    ///
    /// # Panics
    /// If the head is not `Head::Reward`.
    pub fn score_of(&self, hidden: &Tensor, attention_mask: &Tensor) -> Tensor {
        assert!(
            self.head == Head::Reward,
            "Model::score needs a reward head (Head::Reward); this model has {:?}",
            self.head
        );
        let last = last_token_index(attention_mask);
        let (b, h) = (hidden.size()[0], hidden.size()[2]);
        let index = last.view([b, 1, 1]).expand([b, 1, h], false);
        hidden
            .gather(1, &index, false)
            .squeeze_dim(1)
            .linear(&self.head_weight, None::<Tensor>)
            .squeeze_dim(-1)
    }
}

/// Index `[B]` of the last position whose mask is nonzero (0 for an all-padding row).
pub fn last_token_index(attention_mask: &Tensor) -> Tensor {
    let t = attention_mask.size()[1];
    let mask = attention_mask.ne(0).to_kind(Kind::Int64);
    let idx = Tensor::arange(t, (Kind::Int64, attention_mask.device()));
    (mask * idx).argmax(-1, false)
}
