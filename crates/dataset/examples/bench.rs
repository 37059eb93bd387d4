//! Dataset benchmark (`cargo xtask bench dataset`; a program, never a test). Measures, with
//! medians of several runs:
//! - decode + resize of the demo PNGs to 150x150 RGB on one thread (images/s per core), nearest
//!   and bilinear, beside the same work in PIL (what Keras `load_img` runs) when a Python with
//!   Pillow is given;
//! - the batch iterator on all rayon threads;
//! - a warm scan of a 70,000-file tree (full Fashion-MNIST if built, else hard links);
//! - peak RSS while iterating the demo set once and a tree ten times larger, to show memory
//!   stays bounded.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Parser;
use dataset::{
    BatchOptions, DecodeOptions, Interpolation, ScanOptions, Size, batches, decode, scan,
};

/// Benchmarks the dataset crate's data path.
#[derive(Parser)]
struct Args {
    /// Dataset root with train/validation/test.
    #[arg(long, default_value = "data/fashion-mnist-small")]
    data: PathBuf,
    /// Timed runs per figure (the median is reported).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Python with Pillow for the reference (the torch venv's).
    #[arg(long)]
    python: Option<PathBuf>,
    /// Tree to scan; default data/full/fashion-mnist if built, else 70,000 hard links.
    #[arg(long)]
    scan_tree: Option<PathBuf>,
    /// RGB demo set re-encoded as 4:2:0 JPEGs (quality 90) for the JPEG decode figures.
    #[arg(long, default_value = "data/cats-vs-dogs-small")]
    jpeg_data: PathBuf,
}

const SPLITS: [&str; 3] = ["train", "validation", "test"];
const SIDE: u32 = 150;

fn main() -> Result<()> {
    let args = Args::parse();
    let files = demo_files(&args.data)?;
    let n = files.len();
    for f in &files {
        black_box(std::fs::read(f)?); // warm the page cache
    }
    println!(
        "dataset bench: {n} PNGs from {} -> {SIDE}x{SIDE} RGB; medians of {} runs; {} rayon threads",
        args.data.display(),
        args.runs,
        rayon::current_num_threads()
    );

    let only_decode = DecodeOptions::default();
    let per_core = |opts: &DecodeOptions| -> Result<f64> {
        median(args.runs, || {
            let t = Instant::now();
            for f in &files {
                black_box(decode(f, opts)?);
            }
            Ok(n as f64 / t.elapsed().as_secs_f64())
        })
    };
    let decode_rate = per_core(&only_decode)?;
    println!("decode only (28x28 gray -> RGB8), 1 thread: {decode_rate:.0} img/s");
    let reference =
        args.python.as_deref().map(|py| pil_reference(py, &files, args.runs)).transpose()?;
    for (i, interpolation) in
        [Interpolation::Nearest, Interpolation::Bilinear].into_iter().enumerate()
    {
        let opts = DecodeOptions {
            target_size: Some(Size::square(SIDE)),
            interpolation,
            ..Default::default()
        };
        let rate = per_core(&opts)?;
        let written = rate * f64::from(SIDE * SIDE * 3) / 1e6;
        let pil = match &reference {
            Some(r) => format!("; PIL {:.0} img/s, ratio {:.1}x", r[i], rate / r[i]),
            None => "; PIL reference skipped (no --python)".into(),
        };
        println!(
            "decode + resize {interpolation:?}, 1 thread: {rate:.0} img/s ({written:.0} MB/s of pixels written){pil}"
        );
    }

    let opts = DecodeOptions { target_size: Some(Size::square(SIDE)), ..Default::default() };
    let batch_opts = BatchOptions { batch_size: 32, ..Default::default() };
    let indices: Vec<_> = SPLITS
        .iter()
        .map(|s| scan(&args.data, s, &ScanOptions::default()))
        .collect::<Result<_, _>>()?;
    let rate = median(args.runs, || {
        let t = Instant::now();
        for index in &indices {
            for b in batches(index, &opts, &batch_opts, 0)? {
                black_box(b?);
            }
        }
        Ok(n as f64 / t.elapsed().as_secs_f64())
    })?;
    println!("batches (nearest, 32 per batch, prefetch 2), all threads: {rate:.0} img/s");

    let tmp = tempfile::tempdir()?;
    jpeg_decode_rates(&args.jpeg_data, &tmp.path().join("jpeg"), args.runs)?;

    let tree = match args.scan_tree.clone() {
        Some(t) => t,
        None if Path::new("data/full/fashion-mnist/train").is_dir() => {
            "data/full/fashion-mnist".into()
        }
        None => {
            let t = tmp.path().join("scan70k");
            linked_tree(&files, &t, 70_000, 10, &SPLITS)?;
            t
        }
    };
    let scan_all = || -> Result<usize> {
        let mut total = 0;
        for s in SPLITS {
            total += scan(&tree, s, &ScanOptions::default())?.len();
        }
        Ok(total)
    };
    let count = scan_all()?; // warm
    let secs = median(args.runs, || {
        let t = Instant::now();
        black_box(scan_all()?);
        Ok(t.elapsed().as_secs_f64())
    })?;
    println!("scan of {count} files in {} (3 splits), warm: {secs:.3} s", tree.display());

    if let Some(base) = peak_rss_mb() {
        let one = tmp.path().join("x1");
        let ten = tmp.path().join("x10");
        linked_tree(&files, &one, n, 2, &["train"])?;
        linked_tree(&files, &ten, 10 * n, 2, &["train"])?;
        let mut peaks = Vec::new();
        for root in [&one, &ten] {
            reset_peak_rss();
            let index = scan(root, "train", &ScanOptions::default())?;
            for b in batches(&index, &opts, &batch_opts, 0)? {
                black_box(b?);
            }
            peaks.push((index.len(), peak_rss_mb().unwrap_or(f64::NAN)));
        }
        println!(
            "peak RSS iterating once at {SIDE}x{SIDE} (process base {base:.0} MB): {} images {:.0} MB, {} images {:.0} MB",
            peaks[0].0, peaks[0].1, peaks[1].0, peaks[1].1
        );
    }
    Ok(())
}

/// Decode-only rate on one thread of `root`'s images re-encoded as 4:2:0 JPEGs (quality 90),
/// at their stored size and enlarged to 224x224 (bilinear) first.
fn jpeg_decode_rates(root: &Path, dir: &Path, runs: usize) -> Result<()> {
    let sources = demo_files(root)?;
    for side in [None, Some(224)] {
        let sub = dir.join(side.map_or("stored".into(), |s| s.to_string()));
        std::fs::create_dir_all(&sub)?;
        let opts = DecodeOptions {
            target_size: side.map(Size::square),
            interpolation: Interpolation::Bilinear,
            ..Default::default()
        };
        let mut jpegs = Vec::new();
        for (i, f) in sources.iter().enumerate() {
            let img = decode(f, &opts)?;
            let mut out = Vec::new();
            let mut enc = jpeg_encoder::Encoder::new(&mut out, 90);
            enc.set_sampling_factor(jpeg_encoder::SamplingFactor::R_4_2_0);
            enc.encode(
                img.as_raw(),
                img.width() as u16,
                img.height() as u16,
                jpeg_encoder::ColorType::Rgb,
            )?;
            let path = sub.join(format!("{i:05}.jpg"));
            std::fs::write(&path, out)?;
            jpegs.push((path, img.dimensions()));
        }
        let rate = median(runs, || {
            let t = Instant::now();
            for (f, _) in &jpegs {
                black_box(decode(f, &DecodeOptions::default())?);
            }
            Ok(jpegs.len() as f64 / t.elapsed().as_secs_f64())
        })?;
        let (w, h) = jpegs[0].1;
        println!(
            "JPEG decode only ({} files from {}, {w}x{h} 4:2:0 q90 -> RGB8), 1 thread: {rate:.0} img/s",
            jpegs.len(),
            root.display()
        );
    }
    Ok(())
}

fn demo_files(root: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for s in SPLITS {
        files.extend(scan(root, s, &ScanOptions::default())?.files.into_iter().map(|f| f.path));
    }
    Ok(files)
}

fn median(runs: usize, mut f: impl FnMut() -> Result<f64>) -> Result<f64> {
    let mut v = (0..runs.max(1)).map(|_| f()).collect::<Result<Vec<_>>>()?;
    v.sort_by(f64::total_cmp);
    Ok(v[v.len() / 2])
}

/// `<root>/<split>/c<k>/<split>-<i>.png`, `total` files spread evenly over `splits` and
/// `classes`, hard links to `files` (copies where linking fails).
fn linked_tree(
    files: &[PathBuf],
    root: &Path,
    total: usize,
    classes: usize,
    splits: &[&str],
) -> Result<()> {
    for i in 0..total {
        let split = splits[i % splits.len()];
        let dir = root.join(split).join(format!("c{}", (i / splits.len()) % classes));
        if i < splits.len() * classes {
            std::fs::create_dir_all(&dir)?;
        }
        let dst = dir.join(format!("{split}-{i:06}.png"));
        let src = &files[i % files.len()];
        if std::fs::hard_link(src, &dst).is_err() {
            std::fs::copy(src, &dst).with_context(|| format!("copying to {}", dst.display()))?;
        }
    }
    Ok(())
}

/// Peak resident set size (VmHWM) in MB; Linux only.
fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Resets VmHWM to the current RSS (Linux `clear_refs` value 5).
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Images/s of PIL doing Keras' `load_img` (open, convert RGB, resize) on one thread, for
/// nearest and bilinear.
fn pil_reference(python: &Path, files: &[PathBuf], runs: usize) -> Result<Vec<f64>> {
    const SCRIPT: &str = r#"
import sys, time, statistics
from PIL import Image
paths = [l.rstrip("\n") for l in open(sys.argv[1])]
runs = int(sys.argv[2])
out = []
for resample in (Image.NEAREST, Image.BILINEAR):
    rates = []
    for _ in range(runs):
        t = time.perf_counter()
        for p in paths:
            img = Image.open(p)
            if img.mode != "RGB":
                img = img.convert("RGB")
            img = img.resize((150, 150), resample)
            img.load()
        rates.append(len(paths) / (time.perf_counter() - t))
    out.append(statistics.median(rates))
print(" ".join(f"{r:.3f}" for r in out))
"#;
    let list = tempfile::NamedTempFile::new()?;
    let text: String = files.iter().map(|f| format!("{}\n", f.display())).collect();
    std::fs::write(list.path(), text)?;
    let out = Command::new(python)
        .arg("-c")
        .arg(SCRIPT)
        .arg(list.path())
        .arg(runs.to_string())
        .output()
        .with_context(|| format!("running {}", python.display()))?;
    anyhow::ensure!(
        out.status.success(),
        "PIL reference failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)?
        .split_whitespace()
        .map(|s| s.parse::<f64>().context("PIL reference output"))
        .collect()
}
