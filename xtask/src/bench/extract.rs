//! `cargo xtask bench extract`: feature extraction of the same images, our `extract-features`
//! (release, fresh cache each run, f32 and bf16) beside the PyTorch reference the way its users
//! write it (crates/extract-features/bench/pytorch_reference.py: PIL, DataLoader with 2 workers,
//! NCHW float32, numpy save), alternating runs in one invocation. Prints medians, ratios, the share
//! of our wall time spent outside the model, peak RSS, and achieved GFLOP/s.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Parser;

use crate::stage_args::{ExtractFeatures, StageArgs};

/// Options after `cargo xtask bench extract --`.
#[derive(Parser)]
#[command(name = "cargo xtask bench extract")]
struct Args {
    /// Dataset whose splits are extracted (every image of the chosen splits).
    #[arg(long, default_value = "data/fashion-mnist-small")]
    data: PathBuf,
    /// Image sizes to measure.
    #[arg(long, value_delimiter = ',', default_value = "150,64")]
    sizes: Vec<u32>,
    /// Timed runs per configuration (medians are reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Splits to extract (train = 2,000 images of the demo; train,validation,test = 4,000).
    #[arg(long, default_value = "train,validation,test")]
    splits: String,
}

/// VGG16 conv base forward FLOPs per image at `size` (2 x multiply-adds of the 13 convolutions).
fn gflop_per_image(size: u32) -> f64 {
    vgg16_gflop(size, 0..13)
}

/// Forward GFLOP per image at `size` of VGG16's convolutions `convs` (0-based, in order: 0..10 is
/// blocks 1-4, up to `block4_pool`; 10..13 is block 5), 2 x multiply-adds; pools are free.
pub(super) fn vgg16_gflop(size: u32, convs: std::ops::Range<usize>) -> f64 {
    let table: [(u32, u32, u32); 13] = [
        (3, 64, 0),
        (64, 64, 0),
        (64, 128, 1),
        (128, 128, 1),
        (128, 256, 2),
        (256, 256, 2),
        (256, 256, 2),
        (256, 512, 3),
        (512, 512, 3),
        (512, 512, 3),
        (512, 512, 4),
        (512, 512, 4),
        (512, 512, 4),
    ];
    table[convs]
        .iter()
        .map(|&(cin, cout, pools)| {
            let side = (0..pools).fold(size, |s, _| s / 2) as f64;
            2.0 * side * side * (cin * cout * 9) as f64
        })
        .sum::<f64>()
        / 1e9
}

pub fn run(args: &[String]) -> Result<()> {
    let args =
        Args::try_parse_from(std::iter::once("extract".to_owned()).chain(args.iter().cloned()))?;
    let root = crate::workspace_root();
    let torch = crate::libtorch::ensure()?;
    let weights = crate::weights::ensure_demo(&torch, crate::weights::Build::Release)?;
    let ours = crate::build_release(&torch, &root)?.join(ExtractFeatures::BINARY);
    let python = torch.python.clone().unwrap_or_else(|| "python3".into());
    let data = if args.data.is_absolute() { args.data.clone() } else { root.join(&args.data) };
    let images = list_images(&data, &args.splits)?;
    let scratch = tempfile::tempdir()?;
    let list = scratch.path().join("images.txt");

    println!(
        "| size | images | ours f32 img/s | ours bf16 img/s | PyTorch img/s | f32 ratio | bf16 ratio | outside model (f32) | peak RSS f32 | GFLOP/s f32 |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for &size in &args.sizes {
        let (mut f32s, mut bf16s, mut refs, mut outside, mut rss) =
            (vec![], vec![], vec![], vec![], vec![]);
        for run in 0..args.runs {
            eprintln!("size {size}: run {}/{}", run + 1, args.runs);
            for precision in ["f32", "bf16"] {
                let out = scratch.path().join(format!("run-{size}-{run}-{precision}"));
                let stage = ExtractFeatures {
                    splits: Some(args.splits.split(',').map(String::from).collect()),
                    input_size: Some(size),
                    precision: Some(precision.into()),
                    device: Some("cpu".into()),
                    cache_dir: Some(out.join("cache")),
                    ..ExtractFeatures::new(&data, &weights, &out)
                };
                let mut cmd = Command::new(&ours);
                cmd.args(stage.to_args()).env("NO_COLOR", "1");
                torch.configure(&mut cmd);
                let (seconds, _) = timed(&mut cmd, "extract-features")?;
                let record: serde_json::Value = run_folder::read_json(&out.join("stage.json"))?;
                let rate = images.len() as f64 / seconds;
                if precision == "f32" {
                    f32s.push(rate);
                    outside.push(
                        1.0 - record["summary"]["model_time_fraction"].as_f64().unwrap_or(0.0),
                    );
                    rss.push(record["summary"]["peak_rss_mb"].as_f64().unwrap_or(f64::NAN));
                } else {
                    bf16s.push(rate);
                }
                std::fs::remove_dir_all(&out).ok();
            }
            std::fs::write(
                &list,
                images.iter().map(|p| format!("{}\n", p.display())).collect::<String>(),
            )?;
            let mut cmd = Command::new(&python);
            cmd.arg(root.join("crates/extract-features/bench/pytorch_reference.py"))
                .args([
                    "--weights",
                    weights.to_str().context("utf-8 path")?,
                    "--size",
                    &size.to_string(),
                ])
                .arg("--out")
                .arg(scratch.path().join("ref.npy"))
                .arg("--list")
                .arg(&list)
                .env_remove("OPENBLAS_CORETYPE")
                .env_remove("OPENBLAS_L2_SIZE");
            let (seconds, _) = timed(&mut cmd, "pytorch_reference.py")?;
            refs.push(images.len() as f64 / seconds);
        }
        let (o, b, r) = (median(&mut f32s), median(&mut bf16s), median(&mut refs));
        println!(
            "| {size}x{size} | {} | {o:.1} | {b:.1} | {r:.1} | {:.2}x | {:.2}x | {:.1}% | {:.0} MB | {:.0} |",
            images.len(),
            o / r,
            b / r,
            100.0 * median(&mut outside),
            median(&mut rss),
            o * gflop_per_image(size)
        );
    }
    Ok(())
}

/// Wall time of a whole process (start-up, model load and writes included) and its stderr.
pub(super) fn timed(cmd: &mut Command, what: &str) -> Result<(f64, String)> {
    let started = Instant::now();
    let out = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("could not start {what}"))?;
    let seconds = started.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        bail!("{what} failed ({}): {stderr}", out.status);
    }
    Ok((seconds, stderr))
}

pub(super) fn list_images(data: &Path, splits: &str) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for split in splits.split(',') {
        let mut stack = vec![data.join(split)];
        while let Some(dir) = stack.pop() {
            for entry in
                std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?
            {
                let path = entry?.path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.extension().is_some_and(|e| e == "png") {
                    out.push(path);
                }
            }
        }
    }
    out.sort();
    Ok(out)
}

pub(super) fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}
