//! What every binary of the workspace does the same way: a `tracing` subscriber on stderr
//! (filtered by `RUST_LOG`, default `info`, colours only on a terminal so logs piped into files
//! stay plain), and a failure printed as `error: <whole context chain>` with exit status 1.

use std::io::IsTerminal;
use std::process::ExitCode;

/// Installs the stderr subscriber. Call once, first thing in `main`.
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// The exit code for a finished `run`: its own code on success, 1 after printing the error chain.
pub fn exit_code(result: anyhow::Result<ExitCode>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// `main` for a binary whose `run` returns `Result<()>`: logging, run, exit code.
pub fn main(run: impl FnOnce() -> anyhow::Result<()>) -> ExitCode {
    init_logging();
    exit_code(run().map(|()| ExitCode::SUCCESS))
}

/// Exit status of a training stage stopped on purpose (`--stop-after-steps`) with its state
/// checkpointed, distinct from success (0) and errors (1).
pub const STOPPED: u8 = 3;

/// `main` for a resumable stage whose `run` returns whether it finished (`false`: stopped on
/// purpose, exit status [`STOPPED`]).
pub fn main_resumable(run: impl FnOnce() -> anyhow::Result<bool>) -> ExitCode {
    init_logging();
    exit_code(
        run().map(|finished| if finished { ExitCode::SUCCESS } else { ExitCode::from(STOPPED) }),
    )
}
