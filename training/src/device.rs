//! The `--device` option: `cpu`, `cuda` (device 0) or `cuda:N`.

use anyhow::{bail, Context};
use tch::Device;

/// Parse a device name, checking that a requested CUDA device exists.
pub fn parse_device(s: &str) -> anyhow::Result<Device> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("cpu") {
        return Ok(Device::Cpu);
    }
    let index = match s.to_ascii_lowercase().as_str() {
        "cuda" => 0,
        other => match other.strip_prefix("cuda:") {
            Some(n) => n
                .parse::<usize>()
                .with_context(|| format!("device `{s}`: `{n}` is not a CUDA device index"))?,
            None => bail!("device `{s}` is not one of cpu, cuda, cuda:N"),
        },
    };
    if !tch::Cuda::is_available() {
        bail!("device `{s}`: CUDA is not available to libtorch here (no GPU, driver, or CUDA build); use --device cpu");
    }
    let count = tch::Cuda::device_count() as usize;
    if index >= count {
        bail!(
            "device `{s}`: only {count} CUDA device(s) visible (cuda:0..cuda:{})",
            count - 1
        );
    }
    Ok(Device::Cuda(index))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_parses_and_bad_names_are_explained() {
        assert_eq!(parse_device("cpu").unwrap(), Device::Cpu);
        assert_eq!(parse_device(" CPU ").unwrap(), Device::Cpu);
        let e = parse_device("tpu").unwrap_err().to_string();
        assert!(
            e.contains("`tpu`") && e.contains("cpu, cuda, cuda:N"),
            "{e}"
        );
        let e = parse_device("cuda:x").unwrap_err().to_string();
        assert!(e.contains("not a CUDA device index"), "{e}");
    }

    #[test]
    fn cuda_is_refused_clearly_when_absent_or_out_of_range() {
        if tch::Cuda::is_available() {
            assert_eq!(parse_device("cuda").unwrap(), Device::Cuda(0));
            let e = parse_device("cuda:999").unwrap_err().to_string();
            assert!(e.contains("only"), "{e}");
        } else {
            let e = parse_device("cuda:0").unwrap_err().to_string();
            assert!(e.contains("CUDA is not available"), "{e}");
        }
    }
}
