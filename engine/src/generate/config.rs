//! Settings of `engine generate` and `engine merge`, validated before any work starts.

use std::path::PathBuf;
use std::str::FromStr;

use anyhow::{bail, Result};

use crate::sampling::{Decoding, SamplingConfig};

pub use super::budget::BatchSize;
pub use crate::session::Device;

/// `cpu` or `cuda:0[,cuda:1…]` (one backend, with its own session and slots, per GPU).
pub fn parse_devices(s: &str) -> Result<Vec<Device>, String> {
    if s.trim() == "cpu" {
        return Ok(vec![Device::Cpu]);
    }
    let mut out = Vec::new();
    for part in s.split(',') {
        let device: Device = part.parse()?;
        if device == Device::Cpu {
            return Err(format!("--device `{s}`: `cpu` stands alone"));
        }
        if out.contains(&device) {
            return Err(format!("--device: {device} given twice"));
        }
        out.push(device);
    }
    Ok(out)
}

/// `--shard I/N`: keep prompts whose input index ≡ I (mod N).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    pub fn keeps(&self, input_index: usize) -> bool {
        input_index % self.count == self.index
    }
}

impl FromStr for Shard {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (i, n) = s
            .split_once('/')
            .ok_or_else(|| format!("--shard `{s}`: expected I/N, e.g. 0/4"))?;
        let index: usize = i
            .trim()
            .parse()
            .map_err(|_| format!("--shard `{s}`: I is not a number"))?;
        let count: usize = n
            .trim()
            .parse()
            .map_err(|_| format!("--shard `{s}`: N is not a number"))?;
        if count == 0 || index >= count {
            return Err(format!("--shard `{s}`: need 0 ≤ I < N"));
        }
        Ok(Shard { index, count })
    }
}

/// Whether `messages` prompts may go through the model's chat template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChatTemplateMode {
    /// Use the model's template for `messages` prompts.
    Auto,
    /// Refuse `messages` prompts (raw continuation only).
    None,
}

#[derive(Debug, Clone)]
pub struct GenerateConfig {
    /// Exported ONNX folder (`exports onnx`), with tokenizer files.
    pub model: PathBuf,
    pub prompts: PathBuf,
    pub out: PathBuf,
    /// Responses per prompt.
    pub n: usize,
    pub max_new_tokens: usize,
    pub ignore_eos: bool,
    /// Decoding, filters, penalties, n-gram ban and min-new-tokens.
    pub sampling: SamplingConfig,
    pub stop: Vec<String>,
    pub seed: u64,
    /// Cache slots per device (rows decoded together): `Auto` sizes them by memory
    /// ([`super::budget`]), `Fixed(n)` is exactly n.
    pub batch_size: BatchSize,
    /// Bytes the KV cache may take per device under `BatchSize::Auto` (default: a share of the
    /// device's available memory).
    pub memory_budget: Option<usize>,
    /// Intra-op threads; `None` or 0 = physical cores (`session::resolve_threads`).
    pub threads: Option<usize>,
    pub devices: Vec<Device>,
    /// CUDA execution provider options (CUDA graphs, the allocator's memory limit).
    pub cuda: crate::session::CudaOptions,
    /// Fixed-shape decode steps (implied by `cuda.cuda_graph`); see `backend::BackendConfig`.
    pub fixed_shape: bool,
    /// Add the copy counter (host↔device bytes per decode step) to the summary.
    pub verbose: bool,
    pub chat_template: ChatTemplateMode,
    pub resume: bool,
    pub skip_invalid: bool,
    pub shard: Option<Shard>,
    /// Record each prompt's wall time in `seconds` (off: 0, so runs compare byte for byte).
    pub timings: bool,
    pub ort_lib: Option<PathBuf>,
    /// Draw a progress bar (only when stderr is a terminal), and print the slot count
    /// `--batch-size auto` chose (and why) on stderr.
    pub progress: bool,
}

impl GenerateConfig {
    /// Defaults for everything but the three paths (sampling at T = 1, 256 new tokens, batch size
    /// auto).
    pub fn new(
        model: impl Into<PathBuf>,
        prompts: impl Into<PathBuf>,
        out: impl Into<PathBuf>,
    ) -> Self {
        GenerateConfig {
            model: model.into(),
            prompts: prompts.into(),
            out: out.into(),
            n: 1,
            max_new_tokens: 256,
            ignore_eos: false,
            sampling: SamplingConfig::default(),
            stop: Vec::new(),
            seed: 0,
            batch_size: BatchSize::Auto,
            memory_budget: None,
            threads: None,
            devices: vec![Device::Cpu],
            cuda: crate::session::CudaOptions::default(),
            fixed_shape: false,
            verbose: false,
            chat_template: ChatTemplateMode::Auto,
            resume: false,
            skip_invalid: false,
            shard: None,
            timings: true,
            ort_lib: None,
            progress: true,
        }
    }

    pub fn validate(&self) -> Result<()> {
        self.sampling.validate().map_err(anyhow::Error::msg)?;
        if self.n == 0 {
            bail!("--n must be at least 1");
        }
        if self.batch_size == BatchSize::Fixed(0) {
            bail!("--batch-size must be at least 1");
        }
        if self.memory_budget == Some(0) {
            bail!("--memory-budget must be positive");
        }
        if self.devices.is_empty() {
            bail!("--device names no device");
        }
        if let Decoding::Beam { beams } = self.sampling.decoding {
            if self.n != 1 {
                bail!(
                    "--decoding beam returns the best beam only: --n must be 1, got {}",
                    self.n
                );
            }
            if matches!(self.batch_size, BatchSize::Fixed(b) if beams > b) {
                bail!(
                    "--beams {beams} needs --batch-size ≥ {beams} (each beam holds a cache slot)"
                );
            }
        }
        if self.sampling.min_new_tokens > self.max_new_tokens {
            bail!(
                "--min-new-tokens {} exceeds --max-new-tokens {}",
                self.sampling.min_new_tokens,
                self.max_new_tokens
            );
        }
        Ok(())
    }

    pub fn threads(&self) -> usize {
        crate::session::resolve_threads(self.threads.unwrap_or(0))
    }
}

/// `engine merge`: shard outputs joined back into the prompts file's order.
#[derive(Debug, Clone)]
pub struct MergeConfig {
    pub prompts: PathBuf,
    pub shards: Vec<PathBuf>,
    pub out: PathBuf,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_and_devices_parse() {
        assert_eq!(
            "1/4".parse::<Shard>().unwrap(),
            Shard { index: 1, count: 4 }
        );
        assert!("4/4".parse::<Shard>().is_err());
        assert!("x".parse::<Shard>().is_err());
        assert_eq!(parse_devices("cpu").unwrap(), vec![Device::Cpu]);
        assert_eq!(
            parse_devices("cuda:0,cuda:1").unwrap(),
            vec![Device::Cuda(0), Device::Cuda(1)]
        );
        assert!(parse_devices("gpu").is_err());
        let s = Shard { index: 1, count: 3 };
        assert_eq!(
            (0..7).filter(|&i| s.keeps(i)).collect::<Vec<_>>(),
            vec![1, 4]
        );
    }
}
