//! Finding and starting ONNX Runtime. `ort` is built with `load-dynamic`, so the library is
//! located at run time, in this order:
//! 1. the `--ort-lib` flag,
//! 2. the `ORT_DYLIB_PATH` environment variable,
//! 3. the project's `.venv` (the `onnxruntime` wheel that `scripts/setup.sh` installs), looked up
//!    beside the running binary's ancestors and beside the source tree it was built from.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use anyhow::{bail, Context, Result};

/// The started runtime. Sessions are created from it; one per process.
pub struct Runtime {
    pub env: ort::environment::Environment,
    pub library: PathBuf,
}

/// `.venv/ortlib` is a link that set-up makes to the wheel's `onnxruntime/capi` folder.
fn venv_library(root: &Path) -> Option<PathBuf> {
    let capi = root.join(".venv").join("ortlib");
    let dir = std::fs::read_dir(&capi).ok()?;
    let mut found: Vec<PathBuf> = dir
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                n.starts_with("libonnxruntime.so") || n.starts_with("libonnxruntime.dylib")
            })
        })
        .collect();
    // Prefer the fully versioned name (`libonnxruntime.so.1.31.1`).
    found.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    found.into_iter().next()
}

fn candidate_roots() -> Vec<PathBuf> {
    let mut roots = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        roots.extend(exe.ancestors().skip(1).map(Path::to_path_buf));
    }
    if let Ok(cwd) = std::env::current_dir() {
        roots.extend(cwd.ancestors().map(Path::to_path_buf));
    }
    // The workspace this binary was built from.
    roots.push(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."));
    roots
}

/// Where the ONNX Runtime library is, by the documented precedence.
pub fn locate_library(flag: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = flag {
        if !p.is_file() {
            bail!("--ort-lib {}: no such file", p.display());
        }
        return Ok(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        let p = PathBuf::from(p);
        if !p.is_file() {
            bail!("ORT_DYLIB_PATH={}: no such file", p.display());
        }
        return Ok(p);
    }
    for root in candidate_roots() {
        if let Some(p) = venv_library(&root) {
            return Ok(p);
        }
    }
    bail!(
        "ONNX Runtime library not found: pass --ort-lib PATH, set ORT_DYLIB_PATH, or run \
         scripts/setup.sh so that the project's .venv holds the onnxruntime wheel (.venv/ortlib/libonnxruntime.so.*)"
    )
}

/// ONNX Runtime allows one environment per process ("only one environment is allowed per
/// process"), so everything a process runs — generation, verification, reward scoring, or many
/// tests in one test binary — shares the first one started. This is the one piece of process-wide
/// state in the engine, and it mirrors a constraint of the library rather than a choice.
static RUNTIME: OnceLock<Runtime> = OnceLock::new();
static RUNTIME_START: Mutex<()> = Mutex::new(());

impl Runtime {
    /// The process's runtime, started on first use from `flag` (or the default search). A later
    /// call with another `flag` gets the runtime already loaded.
    pub fn shared(flag: Option<&Path>) -> Result<&'static Runtime> {
        let _guard = RUNTIME_START
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(rt) = RUNTIME.get() {
            if let Some(f) = flag.filter(|f| *f != rt.library.as_path()) {
                tracing::warn!(
                    "ONNX Runtime already loaded from {}; ignoring --ort-lib {}",
                    rt.library.display(),
                    f.display()
                );
            }
            return Ok(rt);
        }
        let rt = Runtime::start(flag)?;
        Ok(RUNTIME.get_or_init(|| rt))
    }

    /// Load the library and create an environment. Use [`Runtime::shared`] unless this is the
    /// only runtime the process will ever start.
    pub fn start(flag: Option<&Path>) -> Result<Self> {
        let library = locate_library(flag)?;
        let env = ort::init_from(&library)
            .with_context(|| format!("loading ONNX Runtime from {}", library.display()))?
            .with_name("pco-engine")
            .build()
            .with_context(|| format!("starting ONNX Runtime from {}", library.display()))?;
        Ok(Runtime { env, library })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_flag_path_is_named() {
        let e = locate_library(Some(Path::new("/nonexistent/libonnxruntime.so"))).unwrap_err();
        assert!(e.to_string().contains("--ort-lib /nonexistent"), "{e}");
    }
}
