//! `cargo xtask bench augment`: the seed generator's full augmentation on 150x150x3 images, our
//! `augment-bench` (release build; 1 and 2 threads) beside keras-preprocessing's
//! `ImageDataGenerator.random_transform` (crates/augment/bench/keras_reference.py, one core) on the
//! same number of images, in one run. Prints a table and a BENCHMARKS.md row to stdout.
//!
//! The Python side runs in the torch venv (`libtorch::ensure`), installing keras-preprocessing
//! there first if it is missing.

use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use clap::Parser;
use serde_json::Value;

/// Options after `cargo xtask bench augment --`.
#[derive(Parser)]
#[command(name = "cargo xtask bench augment")]
struct Args {
    /// Images per timed run, for both implementations.
    #[arg(long, default_value_t = 1000)]
    images: usize,
    /// Timed runs per configuration (medians are reported).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Image side in pixels.
    #[arg(long, default_value_t = 150)]
    size: usize,
}

pub fn run(args: &[String]) -> Result<()> {
    let args =
        Args::try_parse_from(std::iter::once("augment".to_owned()).chain(args.iter().cloned()))?;
    let root = crate::workspace_root();
    let common = [
        "--images".to_owned(),
        args.images.to_string(),
        "--runs".to_owned(),
        args.runs.to_string(),
        "--size".to_owned(),
        args.size.to_string(),
    ];

    let mut ours = Vec::new();
    for threads in [1, 2] {
        let mut cmd = crate::cargo();
        cmd.args(["run", "--release", "--quiet", "-p", "augment", "--bin", "augment-bench", "--"])
            .args(&common)
            .args(["--threads", &threads.to_string()])
            .current_dir(&root);
        tracing::info!(threads, "running augment-bench");
        ours.push(json_output(&mut cmd, "augment-bench")?);
    }

    let python = crate::libtorch::ensure()?.python.unwrap_or_else(|| "python3".into());
    ensure_keras_preprocessing(&python)?;
    let mut cmd = Command::new(&python);
    cmd.arg(root.join("crates/augment/bench/keras_reference.py"))
        .args(&common)
        .current_dir(&root)
        // This machine tunes OpenBLAS through these; the reference should run as shipped.
        .env_remove("OPENBLAS_CORETYPE")
        .env_remove("OPENBLAS_L2_SIZE");
    tracing::info!(python = %python.display(), "running the keras-preprocessing reference");
    let keras = json_output(&mut cmd, "keras_reference.py")?;

    let rate = |v: &Value| v["median_img_per_s"].as_f64().unwrap_or(f64::NAN);
    let (one, two, reference) = (rate(&ours[0]), rate(&ours[1]), rate(&keras));
    println!(
        "augmentation, seed generator (rotation 40, shifts 0.2, shear 0.2, zoom 0.2, hflip, \
         nearest fill, bilinear), {s}x{s}x3, {n} images x {r} runs, medians",
        s = args.size,
        n = args.images,
        r = args.runs
    );
    println!("| implementation | threads | img/s | vs keras-preprocessing |");
    println!("|---|---|---|---|");
    println!("| keras-preprocessing 1.1.2 (scipy.ndimage) | 1 | {reference:.0} | 1.0x |");
    println!("| augment (u8 in, f32 out) | 1 | {one:.0} | {:.1}x |", one / reference);
    println!("| augment (u8 in, f32 out) | 2 | {two:.0} | {:.1}x |", two / reference);
    println!("2-thread scaling: {:.2}x of 1 thread", two / one);
    println!(
        "BENCHMARKS.md row: | augment: seed generator, {s}x{s}x3 | `cargo xtask bench augment` | \
         {one:.0} img/s (1 thread), {two:.0} img/s (2 threads) | keras-preprocessing {reference:.0} \
         img/s (1 core) | {:.1}x per core, {:.2}x scaling to 2 threads |",
        one / reference,
        two / one,
        s = args.size
    );
    Ok(())
}

/// Runs `cmd` (stderr shown) and parses the last line of its stdout as JSON.
fn json_output(cmd: &mut Command, what: &str) -> Result<Value> {
    let out =
        cmd.stderr(Stdio::inherit()).output().with_context(|| format!("could not start {what}"))?;
    if !out.status.success() {
        bail!("{what} failed ({})", out.status);
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).with_context(|| format!("{what} printed no JSON line: {stdout:?}"))
}

/// Installs keras-preprocessing (and scipy) into `python`'s environment unless already importable.
fn ensure_keras_preprocessing(python: &std::path::Path) -> Result<()> {
    let probe = Command::new(python)
        .args(["-c", "import keras_preprocessing, scipy"])
        .stderr(Stdio::null())
        .status()
        .with_context(|| format!("could not run {}", python.display()))?;
    if probe.success() {
        return Ok(());
    }
    tracing::info!("installing keras-preprocessing and scipy for the reference");
    crate::run_checked(
        Command::new(python).args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "keras-preprocessing",
            "scipy",
        ]),
        "pip install keras-preprocessing scipy",
    )
}
