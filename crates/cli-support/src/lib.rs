//! What every binary of the workspace does the same way: a `tracing` subscriber on stderr
//! (filtered by `RUST_LOG`, default `info`, colours only on a terminal so logs piped into files
//! stay plain), a failure printed as `error: <whole context chain>` with exit status 1 (each
//! reason once, [`error_chain`]), and the process's peak memory for the summaries benchmarks read.

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
            eprintln!("error: {}", error_chain(&err));
            ExitCode::FAILURE
        }
    }
}

/// `err` and its causes joined by `": "`, like anyhow's `{:#}`, except that a cause whose
/// message its parent's message already ends with is left out. Error types that show their
/// source in their own message (`#[error("{path}: {source}")]`, so a plain `{}` is complete)
/// would otherwise print the same reason twice.
pub fn error_chain(err: &anyhow::Error) -> String {
    let mut out = String::new();
    let mut previous = String::new();
    for cause in err.chain() {
        let message = cause.to_string();
        if !previous.is_empty() && previous.ends_with(&message) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&message);
        previous = message;
    }
    out
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

/// The process's peak resident memory in MiB (Linux `VmHWM` of `/proc/self/status`); `None`
/// where that file is missing or unreadable (other systems).
pub fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error that shows its source in its own message and also exposes it as its source,
    /// what `#[error("{path}: {source}")]` with thiserror gives.
    #[derive(Debug)]
    struct WithSource(std::io::Error);

    impl std::fmt::Display for WithSource {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "/x/checksums.sha256: {}", self.0)
        }
    }

    impl std::error::Error for WithSource {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn error_chain_names_each_reason_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file");
        let err = anyhow::Error::new(WithSource(io)).context("exporting 1 entry");
        assert_eq!(error_chain(&err), "exporting 1 entry: /x/checksums.sha256: No such file");
        // Causes that add something are all kept.
        let err = anyhow::anyhow!("inner").context("middle").context("outer");
        assert_eq!(error_chain(&err), "outer: middle: inner");
    }
}
