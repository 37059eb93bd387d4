//! `cargo xtask gpu-check`: the CUDA check, packed so it runs where there is no Rust.
//!
//! The GPU machine has PyTorch 2.11.0 (CUDA 13.0) in a Python venv, no Rust toolchain and no
//! network. So `--prepare DIR` builds the stage binaries here in release mode against the same
//! torch 2.11.0 and packs a small bundle: the binaries (debug info stripped, a few MB each), a
//! few dozen demo images, `gpu_check.py` (Python standard library only) and `bundle.json`
//! (commit, binary digests, the glibc the binaries need, the digest of the seeded random weights
//! the script will generate there, so no 58 MB weights file travels). On the GPU machine one
//! command runs the check: `python3 DIR/gpu_check.py --out RESULTS` (it finds that machine's
//! torch library folder from its Python, or `--torch-lib` / `$TORCH_LIB`).
//!
//! The script spells no flag of our binaries: `bundle.json` carries the command lines it runs
//! (`commands`), made by the typed builders of [`crate::stage_args`] with `{name}` placeholders
//! for the values the script picks (paths in its scratch folder, sizes, devices).
//!
//! With no `--prepare`, it prepares `target/gpu-check` and runs the script here; without CUDA
//! the script runs its CPU half and exits 0. `cargo xtask test` runs that CPU half on the debug
//! binaries the tests built ([`cpu_half`]), so the script is exercised in CI.
//!
//! Like all of xtask, this never links libtorch: everything runs as child processes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::libtorch::Libtorch;
use crate::stage_args::{self, ExtractFeatures, FineTune, StageArgs, Vgg16Weights, flag};

/// The script, kept beside this file and written into every bundle.
const SCRIPT: &str = include_str!("gpu_check.py");
const SCRIPT_NAME: &str = "gpu_check.py";
const BUNDLE_FILE: &str = "bundle.json";
/// The binaries the script runs, with their packages.
const BINARIES: [(&str, &str); 3] = [
    ("extract-features", ExtractFeatures::BINARY),
    ("fine-tune", FineTune::BINARY),
    ("models", Vgg16Weights::BINARY),
];
/// Demo images packed per class: the script repeats them to the counts it times.
const TRAIN_PER_CLASS: usize = 32;
const VALIDATION_PER_CLASS: usize = 8;
const DEMO_DATA: &str = "data/fashion-mnist-small";
/// Seed of the random VGG16 weights the script generates (same as its default).
const WEIGHTS_SEED: u32 = 0;
/// The device tooling carries 64 MiB with the repository; the bundle stays well under.
const MAX_BUNDLE_BYTES: u64 = 40 << 20;

#[derive(Args, Debug)]
pub struct GpuCheckArgs {
    /// Only build the bundle into DIR (to copy to a GPU machine); do not run it.
    #[arg(long, value_name = "DIR")]
    prepare: Option<PathBuf>,
    /// Results folder of a local run [default: target/gpu-check-out].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Arguments passed on to gpu_check.py (e.g. `--cpu-only`, `--gpu-images 4096`).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    script_args: Vec<String>,
}

pub fn run(args: GpuCheckArgs, root: &Path) -> Result<()> {
    let torch = crate::libtorch::ensure()?;
    let target = crate::weights::target_dir(root);
    let bundle = args.prepare.clone().unwrap_or_else(|| target.join("gpu-check"));
    let size = prepare(&torch, root, &bundle)?;
    eprintln!(
        "gpu-check bundle ready: {} ({:.1} MiB)",
        bundle.display(),
        size as f64 / (1u64 << 20) as f64
    );
    if args.prepare.is_some() {
        eprintln!(
            "on the GPU machine: python3 {}/{SCRIPT_NAME} --out <results> [--torch-lib <torch>/lib]",
            bundle.display()
        );
        return Ok(());
    }
    let out = args.out.unwrap_or_else(|| target.join("gpu-check-out"));
    let mut cmd = script(&torch, &bundle.join(SCRIPT_NAME), &out);
    cmd.args(&args.script_args);
    crate::run_checked(&mut cmd, "gpu_check.py")
}

/// The script's CPU half on the debug binaries (what `cargo xtask test` builds anyway) and the
/// demo images in the repository: exercises the script end to end in about half a minute.
pub fn cpu_half(torch: &Libtorch, root: &Path) -> Result<()> {
    let mut build = crate::cargo();
    build.current_dir(root).args(["build", "--quiet"]);
    for (package, bin) in BINARIES {
        build.args(["-p", package, "--bin", bin]);
    }
    torch.configure(&mut build);
    crate::run_checked(&mut build, "cargo build (gpu-check binaries)")?;
    let target = crate::weights::target_dir(root);
    let script_path = target.join("gpu-check-ci").join(SCRIPT_NAME);
    run_folder::write_atomic(&script_path, SCRIPT.as_bytes())?;
    // The command lines only: no binaries or images travel here.
    let manifest = serde_json::json!({
        "made_by": "cargo xtask test (the CPU half)",
        "commands": commands()?,
    });
    run_folder::write_atomic(
        &target.join("gpu-check-ci").join(BUNDLE_FILE),
        serde_json::to_string_pretty(&manifest)?.as_bytes(),
    )?;
    let mut cmd = script(torch, &script_path, &target.join("gpu-check-ci").join("out"));
    cmd.arg("--cpu-only")
        .arg("--bin-dir")
        .arg(target.join("debug"))
        .arg("--data")
        .arg(root.join(DEMO_DATA));
    crate::run_checked(&mut cmd, "gpu_check.py --cpu-only")
}

/// `python gpu_check.py --out OUT --torch-lib LIB` with the venv's Python when we made it.
fn script(torch: &Libtorch, script: &Path, out: &Path) -> Command {
    let mut cmd = Command::new(torch.python.clone().unwrap_or_else(|| "python3".into()));
    cmd.arg(script).arg("--out").arg(out).arg("--torch-lib").arg(torch.torch_dir.join("lib"));
    cmd
}

/// Builds the release binaries and writes the bundle into `dir` (replacing an earlier bundle,
/// refusing any other non-empty folder). Returns the bundle's size in bytes.
pub fn prepare(torch: &Libtorch, root: &Path, dir: &Path) -> Result<u64> {
    let release = crate::build_release(torch, root)?;

    clear_bundle_dir(dir)?;
    let bin_dir = dir.join("bin");
    std::fs::create_dir_all(&bin_dir).with_context(|| format!("creating {}", bin_dir.display()))?;
    let mut binaries = BTreeMap::new();
    let mut glibc = None;
    for (_, bin) in BINARIES {
        let dest = bin_dir.join(bin);
        strip_copy(&release.join(bin), &dest)?;
        let bytes = std::fs::read(&dest).with_context(|| format!("reading {}", dest.display()))?;
        glibc = glibc.max(max_glibc(&bytes));
        binaries.insert(bin, run_folder::sha256_hex(&bytes));
    }
    run_folder::write_atomic(&dir.join(SCRIPT_NAME), SCRIPT.as_bytes())?;
    let images = copy_subset(
        &root.join(DEMO_DATA),
        &dir.join("data"),
        &[("train", TRAIN_PER_CLASS), ("validation", VALIDATION_PER_CLASS)],
    )?;

    // The digest the script should get when it makes the same weights on the GPU machine.
    let scratch = tempfile::tempdir().context("creating a temporary folder")?;
    let weights = scratch.path().join("random.safetensors");
    let output = Command::new(bin_dir.join(Vgg16Weights::BINARY))
        .args(Vgg16Weights::Random { seed: WEIGHTS_SEED, out: weights }.to_args())
        .output()
        .context("running vgg16-weights random")?;
    if !output.status.success() {
        bail!("vgg16-weights random failed: {}", String::from_utf8_lossy(&output.stderr).trim());
    }
    let weights_sha256 = String::from_utf8_lossy(&output.stdout).trim().to_owned();

    let manifest = serde_json::json!({
        "made_by": "cargo xtask gpu-check --prepare",
        "git_commit": git_commit(root),
        "libtorch": torch.torch_dir,
        "binaries_sha256": binaries,
        "glibc_required": glibc.map(|(major, minor)| format!("{major}.{minor}")),
        "images": images,
        "weights_seed": WEIGHTS_SEED,
        "weights_sha256": weights_sha256,
        "commands": commands()?,
    });
    run_folder::write_atomic(
        &dir.join(BUNDLE_FILE),
        serde_json::to_string_pretty(&manifest)?.as_bytes(),
    )?;
    let size = folder_size(dir)?;
    if size > MAX_BUNDLE_BYTES {
        bail!(
            "the bundle {} is {} MiB, over the {} MiB it may take",
            dir.display(),
            size >> 20,
            MAX_BUNDLE_BYTES >> 20
        );
    }
    Ok(size)
}

/// The command lines gpu_check.py runs, by name: `{"binary": ..., "args": [...]}`, each made by
/// the builder of its binary; an argument `{name}` is a value the script fills in. The script
/// runs `fine-tune` with each `fine-tune-*` command that exists (the base command's arguments
/// come first in each).
fn commands() -> Result<serde_json::Value> {
    let slot = |name: &str| format!("{{{name}}}");
    let command =
        |binary: &str, args: Vec<String>| serde_json::json!({ "binary": binary, "args": args });

    let extract = ExtractFeatures {
        splits: Some(vec![slot("splits")]),
        cache_dir: Some(slot("cache_dir").into()),
        input_size: Some(0),
        batch_size: Some(0),
        device: Some(slot("device")),
        precision: Some(slot("precision")),
        ..ExtractFeatures::new(slot("data"), slot("weights"), slot("out"))
    };
    let extract_slots = [(flag::INPUT_SIZE, "size"), (flag::BATCH_SIZE, "batch")];
    let extract_gpu = ExtractFeatures { cudnn_benchmark: Some(true), ..extract.clone() };
    let mut gpu_slots = extract_slots.to_vec();
    gpu_slots.push((flag::CUDNN_BENCHMARK, "benchmark"));

    // No head phase, the seed's block5 unfrozen; the numbers are the script's to choose.
    let fine_tune = FineTune {
        input_size: Some(0),
        head_epochs: Some(0),
        epochs: Some(0),
        steps_per_epoch: Some(0),
        batch_size: Some(0),
        device: Some(slot("device")),
        seed: Some(0),
        ..FineTune::new(slot("data"), slot("weights"), slot("out"))
    };
    let fine_tune_slots = [
        (flag::INPUT_SIZE, "size"),
        (flag::EPOCHS, "epochs"),
        (flag::STEPS_PER_EPOCH, "steps"),
        (flag::BATCH_SIZE, "batch"),
    ];
    let autocast = FineTune { autocast: true, ..fine_tune.clone() };

    let random = Vgg16Weights::Random { seed: 0, out: slot("out").into() };
    Ok(serde_json::json!({
        "devices": command(Vgg16Weights::BINARY, Vgg16Weights::Devices.to_strings()),
        "random-weights": command(
            Vgg16Weights::BINARY,
            stage_args::template(&random, &[(flag::SEED, "seed")])?,
        ),
        "extract": command(ExtractFeatures::BINARY, stage_args::template(&extract, &extract_slots)?),
        "extract-gpu": command(
            ExtractFeatures::BINARY,
            stage_args::template(&extract_gpu, &gpu_slots)?,
        ),
        "fine-tune": command(FineTune::BINARY, stage_args::template(&fine_tune, &fine_tune_slots)?),
        "fine-tune-autocast": command(
            FineTune::BINARY,
            stage_args::template(&autocast, &fine_tune_slots)?,
        ),
    }))
}

/// Empties `dir` for a new bundle: absent, empty, or an earlier bundle (it has bundle.json).
fn clear_bundle_dir(dir: &Path) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    let mut entries =
        std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    if entries.next().is_some() && !dir.join(BUNDLE_FILE).is_file() {
        bail!(
            "{} is not empty and holds no {BUNDLE_FILE}: refusing to replace it with a gpu-check bundle",
            dir.display()
        );
    }
    std::fs::remove_dir_all(dir)
        .with_context(|| format!("removing the earlier bundle {}", dir.display()))
}

/// Copies a binary without its debug info (the release profile keeps line tables: ~95 MB a
/// binary, ~5 MB without), with `strip` from binutils.
fn strip_copy(src: &Path, dest: &Path) -> Result<()> {
    if !src.is_file() {
        bail!("{} is missing after the build", src.display());
    }
    let status = Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(dest)
        .arg(src)
        .status()
        .context("running strip (binutils): it keeps the bundle small")?;
    if !status.success() {
        bail!("strip --strip-debug {} failed ({status})", src.display());
    }
    Ok(())
}

/// Copies the first `n` files (by name) of every class folder of each `(split, n)` from `src`
/// to `dest`; returns how many files were copied.
fn copy_subset(src: &Path, dest: &Path, splits: &[(&str, usize)]) -> Result<usize> {
    let mut copied = 0;
    for &(split, n) in splits {
        let split_dir = src.join(split);
        for class in sorted_entries(&split_dir)?.into_iter().filter(|p| p.is_dir()) {
            let files: Vec<PathBuf> =
                sorted_entries(&class)?.into_iter().filter(|p| p.is_file()).take(n).collect();
            if files.is_empty() {
                bail!("{} holds no images", class.display());
            }
            let to = dest.join(split).join(class.file_name().context("class folder name")?);
            std::fs::create_dir_all(&to).with_context(|| format!("creating {}", to.display()))?;
            for file in files {
                let target = to.join(file.file_name().context("file name")?);
                std::fs::copy(&file, &target).with_context(|| {
                    format!("copying {} to {}", file.display(), target.display())
                })?;
                copied += 1;
            }
        }
    }
    Ok(copied)
}

/// Entries of a folder, sorted by name, dot-entries left out.
fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
        if !entry.file_name().to_string_lossy().starts_with('.') {
            entries.push(entry.path());
        }
    }
    entries.sort();
    Ok(entries)
}

/// The newest `GLIBC_2.N` symbol version a binary names: the oldest glibc it runs on.
fn max_glibc(bytes: &[u8]) -> Option<(u32, u32)> {
    const TAG: &[u8] = b"GLIBC_";
    let mut best = None;
    let mut i = 0;
    while let Some(pos) = bytes[i..].windows(TAG.len()).position(|w| w == TAG) {
        let start = i + pos + TAG.len();
        let version: String = bytes[start..]
            .iter()
            .take_while(|b| b.is_ascii_digit() || **b == b'.')
            .map(|&b| b as char)
            .collect();
        let mut parts = version.split('.').map(str::parse::<u32>);
        if let (Some(Ok(major)), Some(Ok(minor))) = (parts.next(), parts.next()) {
            best = best.max(Some((major, minor)));
        }
        i = start;
    }
    best
}

fn folder_size(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry.with_context(|| format!("reading {}", dir.display()))?.path();
        total += if path.is_dir() {
            folder_size(&path)?
        } else {
            path.metadata().with_context(|| format!("{}", path.display()))?.len()
        };
    }
    Ok(total)
}

/// `git rev-parse HEAD`, with `-dirty` when the tree has changes; None without git.
fn git_commit(root: &Path) -> Option<String> {
    let out = Command::new("git").current_dir(root).args(["rev-parse", "HEAD"]).output().ok()?;
    let commit = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    let dirty = Command::new("git")
        .current_dir(root)
        .args(["status", "--porcelain", "--untracked-files=no"])
        .output()
        .ok()?;
    Some(if dirty.stdout.is_empty() { commit } else { format!("{commit}-dirty") })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_glibc(bytes: &[u8], expect: Option<(u32, u32)>) {
        assert_eq!(max_glibc(bytes), expect, "{}", String::from_utf8_lossy(bytes));
    }

    #[test]
    fn newest_glibc_version_wins() {
        check_glibc(b"\0GLIBC_2.2.5\0GLIBC_2.34\0GLIBC_2.17\0", Some((2, 34)));
        check_glibc(b"GLIBC_2.9\0GLIBC_2.10", Some((2, 10)));
        check_glibc(b"GLIBC_PRIVATE\0", None);
        check_glibc(b"no versions", None);
    }

    #[test]
    fn subset_takes_the_first_files_of_every_class() {
        let src = tempfile::tempdir().unwrap();
        for class in ["b", "a"] {
            let dir = src.path().join("train").join(class);
            std::fs::create_dir_all(&dir).unwrap();
            for name in ["3.png", "1.png", "2.png", ".hidden"] {
                std::fs::write(dir.join(name), name).unwrap();
            }
        }
        let dest = tempfile::tempdir().unwrap();
        assert_eq!(copy_subset(src.path(), dest.path(), &[("train", 2)]).unwrap(), 4);
        for class in ["a", "b"] {
            let names: Vec<String> = sorted_entries(&dest.path().join("train").join(class))
                .unwrap()
                .iter()
                .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
                .collect();
            assert_eq!(names, ["1.png", "2.png"]);
        }
        let err = copy_subset(src.path(), dest.path(), &[("validation", 2)]).unwrap_err();
        assert!(format!("{err:#}").contains("validation"), "{err:#}");
    }

    /// The script spells no flag of ours: every command line comes from the bundle.
    #[test]
    fn the_script_runs_the_bundled_command_lines() {
        let commands = commands().unwrap();
        let args = |name: &str| -> Vec<String> {
            serde_json::from_value(commands[name]["args"].clone()).unwrap()
        };
        let extract = args("extract");
        for placeholder in ["{data}", "{splits}", "{weights}", "{out}", "{cache_dir}", "{size}"] {
            assert!(extract.iter().any(|a| a == placeholder), "{placeholder} in {extract:?}");
        }
        assert_eq!(args("extract-gpu")[..extract.len()], extract);
        let fine_tune = args("fine-tune");
        assert_eq!(args("fine-tune-autocast")[..fine_tune.len()], fine_tune);
        assert_eq!(commands["devices"]["binary"], "vgg16-weights");
        // Outside its own options (argparse) and comments, the script has no `--flag` literal.
        for (n, line) in SCRIPT.lines().enumerate() {
            let code = line.split('#').next().unwrap_or_default();
            if !code.contains("add_argument") {
                assert!(!code.contains("\"--"), "gpu_check.py:{}: {line}", n + 1);
            }
        }
    }

    #[test]
    fn refuses_to_replace_a_folder_that_is_not_a_bundle() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("notes.txt"), "mine").unwrap();
        let err = clear_bundle_dir(dir.path()).unwrap_err();
        assert!(err.to_string().contains("refusing"), "{err}");
        assert!(dir.path().join("notes.txt").exists());
        std::fs::write(dir.path().join(BUNDLE_FILE), "{}").unwrap();
        clear_bundle_dir(dir.path()).unwrap();
        assert!(!dir.path().exists());
    }
}
