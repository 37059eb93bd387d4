//! `cargo xtask bench predict`: `predict` with a trained VGG16 model file beside
//! `extract-features` of the same base on the same images at the model's input size (both
//! release, f32, CPU, whole processes timed, alternating runs in one invocation), as images/s
//! medians and their ratio; then `predict`'s peak RSS on 1,000 and on 10,000 images (the same
//! images listed ten times), which must stay flat: images stream through in batches.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::Parser;

use super::extract::{list_images, median, timed, vgg16_gflop};
use crate::stage_args::{ExtractFeatures, StageArgs};

/// Options after `cargo xtask bench predict --`.
#[derive(Parser)]
#[command(name = "cargo xtask bench predict")]
struct Args {
    /// A model file of the demo's VGG16 (fine-tune's, from `cargo xtask pipeline`).
    #[arg(long, default_value = "runs/demo/fine-tune/model.safetensors")]
    model: PathBuf,
    /// Dataset whose splits are classified and extracted.
    #[arg(long, default_value = "data/cats-vs-dogs-small")]
    data: PathBuf,
    /// Splits to use (validation,test = 1,000 images of the demo).
    #[arg(long, default_value = "validation,test")]
    splits: String,
    /// Timed runs per program (medians are reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Leave out the peak-RSS runs (1,000 and 10,000 images).
    #[arg(long)]
    no_memory: bool,
}

/// What the model file's header says that the comparison needs.
#[derive(serde::Deserialize)]
struct Header {
    input_size: [u32; 2],
    base_weights_sha256: String,
    architecture: String,
}

/// The `transfer_kit_model` header of a model file (safetensors: an 8-byte little-endian length,
/// then the JSON header whose `__metadata__` holds it as a string).
fn read_header(path: &Path) -> Result<Header> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).with_context(|| {
        format!("{} (run `cargo xtask pipeline` first, or pass --model)", path.display())
    })?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len).with_context(|| format!("{}: not a model file", path.display()))?;
    let len = u64::from_le_bytes(len);
    if len > 100 << 20 {
        bail!("{}: not a model file (header of {len} bytes)", path.display());
    }
    let mut json = vec![0u8; len as usize];
    file.read_exact(&mut json).with_context(|| format!("{}: truncated", path.display()))?;
    let outer: serde_json::Value = serde_json::from_slice(&json)
        .with_context(|| format!("{}: not a safetensors file", path.display()))?;
    let inner = outer["__metadata__"]["transfer_kit_model"]
        .as_str()
        .with_context(|| format!("{}: not a model file (no transfer_kit_model)", path.display()))?;
    serde_json::from_str(inner).with_context(|| format!("{}: model header", path.display()))
}

pub fn run(args: &[String]) -> Result<()> {
    let args =
        Args::try_parse_from(std::iter::once("predict".to_owned()).chain(args.iter().cloned()))?;
    let root = crate::workspace_root();
    let absolute = |p: &Path| if p.is_absolute() { p.to_owned() } else { root.join(p) };
    let model = absolute(&args.model);
    let data = absolute(&args.data);
    let header = read_header(&model)?;
    if header.input_size[0] != header.input_size[1] {
        bail!(
            "{}: extract-features takes square sizes, not {:?}",
            model.display(),
            header.input_size
        );
    }
    let size = header.input_size[0];
    let torch = crate::libtorch::ensure()?;
    let weights = crate::weights::ensure_demo(&torch, crate::weights::Build::Release)?;
    let weights_sha = run_folder::file_sha256(&weights)?.sha256;
    if header.base_weights_sha256 != weights_sha {
        bail!(
            "{} was trained on base weights {}, not the demo's {weights_sha}: extraction would \
             run another network",
            model.display(),
            header.base_weights_sha256
        );
    }
    let release = crate::build_release(&torch, &root)?;
    let images = list_images(&data, &args.splits)?;
    let scratch = tempfile::tempdir()?;
    let list = scratch.path().join("images.txt");
    let lines: String = images.iter().map(|p| format!("{}\n", p.display())).collect();
    std::fs::write(&list, &lines)?;

    let (mut predict_rates, mut extract_rates) = (Vec::new(), Vec::new());
    for run in 0..args.runs {
        eprintln!("run {}/{}", run + 1, args.runs);
        let out = scratch.path().join(format!("extract-{run}"));
        let stage = ExtractFeatures {
            splits: Some(args.splits.split(',').map(String::from).collect()),
            input_size: Some(size),
            precision: Some("f32".into()),
            device: Some("cpu".into()),
            cache_dir: Some(out.join("cache")),
            ..ExtractFeatures::new(&data, &weights, &out)
        };
        let mut cmd = Command::new(release.join(ExtractFeatures::BINARY));
        cmd.args(stage.to_args());
        torch.configure(&mut cmd);
        extract_rates.push(images.len() as f64 / timed(&mut cmd, "extract-features")?.0);
        std::fs::remove_dir_all(&out).ok();

        let (seconds, _) = run_predict(&release, &torch, &model, &list, scratch.path())?;
        predict_rates.push(images.len() as f64 / seconds);
    }
    let (p, e) = (median(&mut predict_rates), median(&mut extract_rates));
    println!(
        "| model | size | images | predict img/s | extract-features img/s | ratio | predict GFLOP/s |"
    );
    println!("|---|---|---|---|---|---|---|");
    println!(
        "| {} | {size}x{size} | {} | {p:.1} | {e:.1} | {:.2}x | {:.0} |",
        header.architecture,
        images.len(),
        p / e,
        p * vgg16_gflop(size, 0..13)
    );

    if !args.no_memory {
        println!("\n| images classified | predict peak RSS |");
        println!("|---|---|");
        let base = images.iter().take(1000).map(|p| format!("{}\n", p.display()));
        let base: String = base.collect();
        for copies in [1, 10] {
            let n = images.len().min(1000) * copies;
            std::fs::write(&list, base.repeat(copies))?;
            eprintln!("peak RSS on {n} images");
            let (_, log) = run_predict(&release, &torch, &model, &list, scratch.path())?;
            let rss = log
                .lines()
                .rev()
                .find_map(|l| l.split("peak_rss_mb=").nth(1))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
                .context("predict logged no peak_rss_mb")?;
            println!("| {n} | {rss:.0} MB |");
        }
    }
    Ok(())
}

/// One `predict` process over `list` (CSV into `dir`): wall seconds and its stderr.
fn run_predict(
    release: &Path,
    torch: &crate::libtorch::Libtorch,
    model: &Path,
    list: &Path,
    dir: &Path,
) -> Result<(f64, String)> {
    let mut cmd = Command::new(release.join("predict"));
    cmd.env("NO_COLOR", "1")
        .args(["--device", "cpu", "--model"])
        .arg(model)
        .arg("--list")
        .arg(list)
        .arg("--out")
        .arg(dir.join("predictions.csv"));
    torch.configure(&mut cmd);
    timed(&mut cmd, "predict")
}
