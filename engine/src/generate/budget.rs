//! `--batch-size auto`: as many cache slots as a memory budget holds.
//!
//! A slot holds one sequence's keys and values: `2 · layers · kv_heads · head_dim` elements of the
//! graph's cache type per position, for up to `longest prompt + max_new_tokens` positions (the
//! cache starts small and grows geometrically, but never past that length, so this is its
//! largest size). The budget is `--memory-budget`, or by default a share ([`DEFAULT_SHARE`]) of
//! what the device has left once the weights are loaded: `MemAvailable` of `/proc/meminfo`
//! (bounded by the cgroup's limit) on CPU, the free memory CUDA reports (bounded by
//! `--cuda-mem-limit`) on a GPU. The slots are then capped by [`cap`] (where more rows stop
//! paying on that device) and by the number of sequences the job has. Output does not depend on
//! the slot count (see the batch-invariance tests), so this is a speed choice only.

use std::fmt;
use std::str::FromStr;

use anyhow::{bail, Context, Result};

use crate::session::Device;

/// `--batch-size`: `auto` (see the module docs) or exactly this many slots per device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BatchSize {
    #[default]
    Auto,
    Fixed(usize),
}

impl From<usize> for BatchSize {
    fn from(n: usize) -> Self {
        BatchSize::Fixed(n)
    }
}

impl FromStr for BatchSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        if t.eq_ignore_ascii_case("auto") {
            return Ok(BatchSize::Auto);
        }
        match t.parse::<usize>() {
            Ok(0) => Err("--batch-size must be at least 1 (or `auto`)".into()),
            Ok(n) => Ok(BatchSize::Fixed(n)),
            Err(_) => Err(format!("--batch-size `{s}`: expected `auto` or a number")),
        }
    }
}

impl fmt::Display for BatchSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BatchSize::Auto => write!(f, "auto"),
            BatchSize::Fixed(n) => write!(f, "{n}"),
        }
    }
}

/// Share of the device's available memory the cache may take by default: the rest is for the
/// activations of a step (and of a batched prefill), other processes and the allocator's slack.
pub const DEFAULT_SHARE: f64 = 0.5;

/// The most slots `auto` gives a device. On CPU, tokens/s of SmolLM2-135M at 2 threads rose from
/// batch 16 to 64 and no further (BENCHMARKS.md, "Batch size"): past that, a decode step is
/// GEMM-bound and more rows only lengthen each step. A GPU keeps gaining well past that (not
/// measured here), so its cap is higher.
pub fn cap(device: Device) -> usize {
    match device {
        Device::Cpu => 64,
        Device::Cuda(_) => 256,
    }
}

/// What the job asks of the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Demand {
    /// Longest sequence a slot holds: longest (truncated) prompt + max new tokens.
    pub seq_len: usize,
    /// Sequences the job generates (prompts × samples, or × beams).
    pub sequences: usize,
    /// Fewest slots that work (the beams of one prompt).
    pub min_slots: usize,
}

/// Where the budget came from.
#[derive(Debug, Clone, PartialEq)]
pub enum BudgetSource {
    /// `--memory-budget`.
    Flag,
    /// [`DEFAULT_SHARE`] of what the device had available (bytes).
    Available(u64),
}

/// What bounded the chosen size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Memory,
    Cap,
    Sequences,
}

/// The chosen slot count and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub slots: usize,
    pub bytes_per_token: u64,
    pub seq_len: usize,
    pub budget: u64,
    pub source: BudgetSource,
    pub limit: Limit,
}

impl Plan {
    /// The cache's largest size at this slot count.
    pub fn cache_bytes(&self) -> u64 {
        self.slots as u64 * self.seq_len as u64 * self.bytes_per_token
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
        let why = match self.limit {
            Limit::Memory => "as many as the memory budget holds",
            Limit::Cap => "the cap for this device",
            Limit::Sequences => "one per sequence of the job",
        };
        write!(
            f,
            "batch size auto: {} slots ({why}); KV cache ≤ {:.0} MiB = {} slots × {} positions × {} B, budget {:.0} MiB",
            self.slots,
            mib(self.cache_bytes()),
            self.slots,
            self.seq_len,
            self.bytes_per_token,
            mib(self.budget)
        )?;
        match self.source {
            BudgetSource::Flag => write!(f, " (--memory-budget)"),
            BudgetSource::Available(a) => write!(
                f,
                " ({:.0} % of {:.0} MiB available)",
                DEFAULT_SHARE * 100.0,
                mib(a)
            ),
        }
    }
}

/// KV bytes per cached position of one sequence.
pub fn kv_bytes_per_token(layers: usize, kv_heads: usize, head_dim: usize, elem: usize) -> u64 {
    (2 * layers * kv_heads * head_dim * elem) as u64
}

/// The slot count for `demand` within `budget` bytes, at most `cap`.
pub fn choose(
    bytes_per_token: u64,
    demand: Demand,
    budget: u64,
    source: BudgetSource,
    cap: usize,
) -> Result<Plan> {
    let per_slot = bytes_per_token * demand.seq_len.max(1) as u64;
    let fit = usize::try_from(budget / per_slot.max(1)).unwrap_or(usize::MAX);
    if fit < demand.min_slots.max(1) {
        bail!(
            "--memory-budget: {:.1} MiB holds {fit} cache slots of {} positions × {bytes_per_token} B, this job needs at least {}; raise --memory-budget, lower --max-new-tokens or pass --batch-size",
            budget as f64 / (1u64 << 20) as f64,
            demand.seq_len,
            demand.min_slots.max(1)
        );
    }
    let want = demand.sequences.max(demand.min_slots).max(1);
    let (mut slots, mut limit) = (fit, Limit::Memory);
    if cap < slots {
        (slots, limit) = (cap, Limit::Cap);
    }
    if want < slots {
        (slots, limit) = (want, Limit::Sequences);
    }
    // The beams of one prompt need their slots even past the cap (the budget holds them).
    let slots = slots.max(demand.min_slots);
    Ok(Plan {
        slots,
        bytes_per_token,
        seq_len: demand.seq_len,
        budget,
        source,
        limit,
    })
}

/// The budget for `device`: `flag` when given, else [`DEFAULT_SHARE`] of what it has available.
pub fn budget(
    device: Device,
    flag: Option<usize>,
    cuda_mem_limit: Option<usize>,
) -> Result<(u64, BudgetSource)> {
    if let Some(b) = flag {
        return Ok((b as u64, BudgetSource::Flag));
    }
    let available = match device {
        Device::Cpu => host_available()?,
        Device::Cuda(id) => {
            let free = cuda_free(id).with_context(|| {
                format!("{device}: the free GPU memory is unknown; pass --memory-budget or --batch-size")
            })?;
            // The allocator cannot go past its arena limit, whatever the GPU has free.
            cuda_mem_limit.map_or(free, |l| free.min(l as u64))
        }
    };
    Ok((
        (available as f64 * DEFAULT_SHARE) as u64,
        BudgetSource::Available(available),
    ))
}

/// `MemAvailable` of `/proc/meminfo`, bounded by the cgroup's memory limit (a container's
/// `memory.max` minus its usage) where one is set.
pub fn host_available() -> Result<u64> {
    let text = std::fs::read_to_string("/proc/meminfo")
        .context("reading /proc/meminfo for the memory budget; pass --memory-budget")?;
    let available = meminfo_available(&text)
        .context("/proc/meminfo has no MemAvailable line; pass --memory-budget")?;
    Ok(cgroup_room().map_or(available, |room| available.min(room)))
}

/// `MemAvailable` in bytes from the text of `/proc/meminfo`.
pub fn meminfo_available(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Room left under the cgroup v2 limit (`memory.max` − `memory.current`), if there is a limit.
fn cgroup_room() -> Option<u64> {
    let read = |f: &str| std::fs::read_to_string(format!("/sys/fs/cgroup/{f}")).ok();
    let max: u64 = read("memory.max")?.trim().parse().ok()?; // "max" (no limit) does not parse
    let current: u64 = read("memory.current")?.trim().parse().ok()?;
    Some(max.saturating_sub(current))
}

/// Free memory of CUDA device `id` (`cudaMemGetInfo` of the runtime library ONNX Runtime's CUDA
/// execution provider has already loaded into the process).
fn cuda_free(id: usize) -> Result<u64> {
    type SetDevice = unsafe extern "C" fn(i32) -> i32;
    type GetDevice = unsafe extern "C" fn(*mut i32) -> i32;
    type MemGetInfo = unsafe extern "C" fn(*mut usize, *mut usize) -> i32;
    let names = [
        "libcudart.so.12",
        "libcudart.so.13",
        "libcudart.so.11.0",
        "libcudart.so",
    ];
    // SAFETY: loading the CUDA runtime runs no initialiser with preconditions; the symbols are
    // called with the signatures of the CUDA runtime API, and the previous device is restored.
    unsafe {
        let lib = names
            .iter()
            .find_map(|&n| libloading::Library::new(n).ok())
            .context("no CUDA runtime library (libcudart) could be loaded")?;
        let set: libloading::Symbol<SetDevice> = lib.get(b"cudaSetDevice")?;
        let get: libloading::Symbol<GetDevice> = lib.get(b"cudaGetDevice")?;
        let info: libloading::Symbol<MemGetInfo> = lib.get(b"cudaMemGetInfo")?;
        let mut before = 0i32;
        let had = get(&mut before) == 0;
        if set(id as i32) != 0 {
            bail!("cudaSetDevice({id}) failed");
        }
        let (mut free, mut total) = (0usize, 0usize);
        let status = info(&mut free, &mut total);
        if had {
            set(before);
        }
        if status != 0 {
            bail!("cudaMemGetInfo failed with status {status}");
        }
        Ok(free as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn demand(seq_len: usize, sequences: usize) -> Demand {
        Demand {
            seq_len,
            sequences,
            min_slots: 1,
        }
    }

    /// SmolLM2-135M: 30 layers, 3 KV heads of 64, fp32 → 2·30·3·64·4 = 46 080 B per position.
    #[test]
    fn slots_are_what_the_budget_holds_then_capped() {
        let bpt = kv_bytes_per_token(30, 3, 64, 4);
        assert_eq!(bpt, 46_080);
        // 300 positions → 13 824 000 B a slot; 100 MB holds 7 of them (7 × 13.824 MB = 96.8 MB).
        let p = choose(bpt, demand(300, 1000), 100_000_000, BudgetSource::Flag, 64).unwrap();
        assert_eq!((p.slots, p.limit), (7, Limit::Memory));
        assert!(p.cache_bytes() <= 100_000_000);
        let p = choose(
            bpt,
            demand(300, 1000),
            10_000_000_000,
            BudgetSource::Flag,
            64,
        )
        .unwrap();
        assert_eq!((p.slots, p.limit), (64, Limit::Cap));
        let p = choose(bpt, demand(300, 20), 10_000_000_000, BudgetSource::Flag, 64).unwrap();
        assert_eq!((p.slots, p.limit), (20, Limit::Sequences));
        // Half-precision caches hold twice the slots.
        let half = kv_bytes_per_token(30, 3, 64, 2);
        let p = choose(half, demand(300, 1000), 100_000_000, BudgetSource::Flag, 64).unwrap();
        assert_eq!(p.slots, 14);
    }

    #[test]
    fn a_budget_below_the_fewest_slots_is_refused_by_name() {
        let e = choose(1000, demand(100, 4), 50_000, BudgetSource::Flag, 64).unwrap_err();
        assert!(e.to_string().contains("--memory-budget"), "{e}");
        let beams = Demand {
            min_slots: 4,
            ..demand(100, 1)
        };
        assert!(choose(1000, beams, 350_000, BudgetSource::Flag, 64).is_err());
        assert_eq!(
            choose(1000, beams, 400_000, BudgetSource::Flag, 64)
                .unwrap()
                .slots,
            4
        );
    }

    #[test]
    fn batch_size_parses_auto_or_a_positive_number() {
        assert_eq!("auto".parse::<BatchSize>().unwrap(), BatchSize::Auto);
        assert_eq!("64".parse::<BatchSize>().unwrap(), BatchSize::Fixed(64));
        assert!("0".parse::<BatchSize>().is_err());
        assert!("x".parse::<BatchSize>().is_err());
        assert_eq!(BatchSize::Fixed(5).to_string(), "5");
    }

    #[test]
    fn meminfo_available_reads_kib() {
        let text = "MemTotal:       24000000 kB\nMemFree:  100 kB\nMemAvailable:   22000000 kB\n";
        assert_eq!(meminfo_available(text), Some(22_000_000 * 1024));
        assert_eq!(meminfo_available("MemTotal: 1 kB\n"), None);
    }
}
