//! What every binary of the pipeline does around its command: tracing to stderr (level from
//! `RUST_LOG`, default `info`), and one `error: …` line with the whole context chain on failure.

use std::process::ExitCode;

/// Run a binary's command with the project's logging and error reporting.
pub fn main_with(run: impl FnOnce() -> anyhow::Result<()>) -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
