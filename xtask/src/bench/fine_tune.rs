//! `cargo xtask bench fine-tune`: one fine-tuning epoch (block5 + head trained, 100 steps of 20
//! augmented images, then validation) of our `fine-tune` stage in plain mode, beside the same
//! model, optimizer and augmentation in Python PyTorch written the way its users write it
//! (crates/fine-tune/bench/pytorch_reference.py: torchvision VGG16 features, RandomAffine +
//! RandomHorizontalFlip in a DataLoader with 2 workers, NCHW float32, torch.optim.RMSprop), and
//! beside our cached-trunk mode (block4_pool of K augmented passes from `extract-features`).
//! The three run interleaved in one invocation; medians, ratios and the epoch breakdown of each
//! are printed as Markdown tables.
//!
//! `--accuracy` then trains with a small budget and prints the test accuracy of the four set-ups
//! of issue 8: head only and head with augmented passes (`extract-features` + `train-head` on
//! block5_pool), fine-tune plain and fine-tune cached-trunk, with the command of each.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Parser;
use serde_json::Value;

use crate::stage_args::{ExtractFeatures, FineTune, StageArgs, TrainHead};

/// torchvision release built against the pinned torch (for the reference's transforms).
const TORCHVISION: &str = "torchvision==0.26.0";

/// Options after `cargo xtask bench fine-tune --`.
#[derive(Parser)]
#[command(name = "cargo xtask bench fine-tune")]
struct Args {
    #[arg(long, default_value = "data/fashion-mnist-small")]
    data: PathBuf,
    /// Input size (square).
    #[arg(long, default_value_t = 64)]
    size: u32,
    /// Timed runs of each of the three (medians are reported); 0 with --accuracy for accuracy only.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Augmented passes of block4_pool in the trunk cache.
    #[arg(long, default_value_t = 5)]
    passes: u32,
    /// Work folder: stage outputs and the feature cache (kept, so a second invocation reuses
    /// the extraction).
    #[arg(long, default_value = "runs/bench-fine-tune")]
    out: PathBuf,
    /// Python with torch 2.11.0 for the reference [default: the venv `cargo xtask libtorch`
    /// manages]; torchvision is installed into that venv when missing.
    #[arg(long)]
    python: Option<PathBuf>,
    /// Use the release binaries already in target/ instead of building them first.
    #[arg(long)]
    no_build: bool,
    /// Leave out the PyTorch reference (plain vs cached-trunk only).
    #[arg(long)]
    no_reference: bool,
    /// Also measure accuracy with a small budget (see --head-epochs, --epochs).
    #[arg(long)]
    accuracy: bool,
    /// Accuracy runs: head epochs before fine-tuning (and train-head epochs x 10).
    #[arg(long, default_value_t = 1)]
    head_epochs: u32,
    /// Accuracy runs: fine-tuning epochs.
    #[arg(long, default_value_t = 2)]
    epochs: u32,
}

/// Our epoch from a fine-tune stage.json: total and breakdown (seconds).
#[derive(Debug, Clone, Default)]
struct Epoch {
    total: f64,
    parts: Vec<(&'static str, f64)>,
}

impl Epoch {
    fn part(&self, name: &str) -> f64 {
        self.parts.iter().find(|(n, _)| *n == name).map(|p| p.1).unwrap_or(f64::NAN)
    }

    /// The training steps alone (the epoch without its validation pass).
    fn train(&self) -> f64 {
        self.total - self.part("validation")
    }
}

pub fn run(args: &[String]) -> Result<()> {
    let args =
        Args::try_parse_from(std::iter::once("fine-tune".to_owned()).chain(args.iter().cloned()))?;
    let root = crate::workspace_root();
    let torch = crate::libtorch::ensure()?;
    let weights = crate::weights::ensure_demo(&torch, crate::weights::Build::Release)?;
    if !args.no_build {
        crate::build_release(&torch, &root)?;
    }
    let bin = |name: &str| crate::weights::target_dir(&root).join("release").join(name);
    let abs = |p: &Path| if p.is_absolute() { p.to_owned() } else { root.join(p) };
    let (data, out) = (abs(&args.data), abs(&args.out));
    let python = match &args.python {
        Some(p) => p.clone(),
        None => torch
            .python
            .clone()
            .or_else(|| {
                crate::libtorch::venv_dir()
                    .ok()
                    .map(|v| v.join("bin/python"))
                    .filter(|p| p.exists())
            })
            .unwrap_or_else(|| "python3".into()),
    };
    if !args.no_reference {
        ensure_torchvision(&python)?;
    }
    let size = args.size.to_string();
    let cache = out.join("cache");

    eprintln!(
        "== trunk cache: block4_pool at {size}x{size}, {} augmented passes of train + plain validation/test",
        args.passes
    );
    let extract = out.join("extract-block4");
    let trunk = ExtractFeatures {
        layer: Some("block4_pool".into()),
        input_size: Some(args.size),
        device: Some("cpu".into()),
        augment_passes: Some(args.passes),
        cache_dir: Some(cache.clone()),
        ..ExtractFeatures::new(&data, &weights, &extract)
    };
    let mut cmd = Command::new(bin(ExtractFeatures::BINARY));
    cmd.args(trunk.to_args());
    let seconds = timed(&mut cmd, "extract-features")?;
    eprintln!("extraction (or verified cache hit): {seconds:.1} s");
    let features = extract.join(feature_cache::EXTRACTION_FILE);

    // One epoch, no head phase, block5 and the head trained.
    let epoch = |dir: &Path| FineTune {
        input_size: Some(args.size),
        device: Some("cpu".into()),
        seed: Some(0),
        head_epochs: Some(0),
        epochs: Some(1),
        ..FineTune::new(&data, &weights, dir)
    };
    let (mut plain, mut cached, mut reference, mut loads) = (vec![], vec![], vec![], vec![]);
    for run in 1..=args.runs {
        let load = loadavg();
        let dir = out.join(format!("epoch-plain-{run}"));
        let mut cmd = Command::new(bin(FineTune::BINARY));
        cmd.args(epoch(&dir).to_args());
        timed(&mut cmd, "fine-tune (plain)")?;
        plain.push(our_epoch(&dir)?);

        if !args.no_reference {
            let mut cmd = Command::new(&python);
            cmd.arg(root.join("crates/fine-tune/bench/pytorch_reference.py"))
                .arg("--weights")
                .arg(&weights)
                .arg("--data")
                .arg(&data)
                .args(["--size", &size, "--epochs", "1"]);
            reference.push(reference_epoch(&mut cmd)?);
        }

        let dir = out.join(format!("epoch-cached-{run}"));
        let mut cmd = Command::new(bin(FineTune::BINARY));
        cmd.args(FineTune { trunk_cache: Some(features.clone()), ..epoch(&dir) }.to_args());
        timed(&mut cmd, "fine-tune (cached-trunk)")?;
        cached.push(our_epoch(&dir)?);
        loads.push((load + loadavg()) / 2.0);
        eprintln!(
            "run {run}/{}: plain {:.2} s, {}cached-trunk {:.2} s (load {:.1})",
            args.runs,
            plain.last().map_or(f64::NAN, |e| e.total),
            reference
                .last()
                .map(|e: &Epoch| format!("PyTorch {:.2} s, ", e.total))
                .unwrap_or_default(),
            cached.last().map_or(f64::NAN, |e| e.total),
            loads.last().copied().unwrap_or(f64::NAN),
        );
    }

    if args.runs > 0 {
        print_timings(&args, &size, &plain, &reference, &cached, &loads);
    }
    if args.accuracy {
        accuracy(&args, &out, &cache, &features, &data, &weights, &bin)?;
    }
    Ok(())
}

/// The epoch table, the ratios and the breakdown table.
fn print_timings(
    args: &Args,
    size: &str,
    plain: &[Epoch],
    reference: &[Epoch],
    cached: &[Epoch],
    loads: &[f64],
) {
    let med = |v: &[Epoch], f: &dyn Fn(&Epoch) -> f64| median(&v.iter().map(f).collect::<Vec<_>>());
    let total = |e: &Epoch| e.total;
    let train = |e: &Epoch| e.train();
    let images = 2000.0; // 100 steps x 20
    println!(
        "\nOne fine-tuning epoch at {size}x{size} (100 steps x 20 images + validation of the validation split), CPU, {} runs interleaved, medians; load average during the runs {:.1}-{:.1}\n",
        args.runs,
        min(loads),
        max(loads)
    );
    println!("| | epoch s | training steps s | train img/s | runs (epoch s) |");
    println!("|---|---|---|---|---|");
    let row = |name: &str, v: &[Epoch]| {
        if v.is_empty() {
            return;
        }
        let runs: Vec<String> = v.iter().map(|e| format!("{:.2}", e.total)).collect();
        println!(
            "| {name} | {:.2} | {:.2} | {:.0} | {} |",
            med(v, &total),
            med(v, &train),
            images / med(v, &train),
            runs.join(" / ")
        );
    };
    row("ours, plain", plain);
    row("PyTorch reference", reference);
    row("ours, cached-trunk", cached);
    println!();
    if !reference.is_empty() {
        println!(
            "- ours plain vs PyTorch, whole epoch: **{:.2}x**",
            med(reference, &total) / med(plain, &total)
        );
        println!(
            "- ours plain vs PyTorch, training steps only: **{:.2}x**",
            med(reference, &train) / med(plain, &train)
        );
    }
    println!(
        "- cached-trunk vs plain, whole epoch: **{:.2}x**; training steps only: {:.2}x",
        med(plain, &total) / med(cached, &total),
        med(plain, &train) / med(cached, &train)
    );

    println!("\nEpoch breakdown (medians, seconds)\n");
    println!(
        "| | batch (augment + frozen trunk / cache gather; PyTorch: loader wait) | forward (top + head + loss; PyTorch: whole model) | backward | optimizer | other | validation |"
    );
    println!("|---|---|---|---|---|---|---|");
    let parts = ["batch", "forward", "backward", "optimizer", "other", "validation"];
    for (name, v) in
        [("ours, plain", plain), ("PyTorch reference", reference), ("ours, cached-trunk", cached)]
    {
        if v.is_empty() {
            continue;
        }
        let cells: Vec<String> =
            parts.iter().map(|p| format!("{:.2}", med(v, &|e: &Epoch| e.part(p)))).collect();
        println!("| {name} | {} |", cells.join(" | "));
    }
}

/// Small-budget accuracy of the four set-ups, each printed with its command.
fn accuracy(
    args: &Args,
    out: &Path,
    cache: &Path,
    trunk: &Path,
    data: &Path,
    weights: &Path,
    bin: &dyn Fn(&str) -> PathBuf,
) -> Result<()> {
    let size = args.size;
    let (he, e) = (args.head_epochs, args.epochs);
    let head_epochs = 10 * args.head_epochs.max(1);
    println!("\nAccuracy on {} at {size}x{size}, seed 0, CPU\n", data.display());
    println!("| set-up | budget | validation acc | test acc | stage s | command |");
    println!("|---|---|---|---|---|---|");
    let show = |name: &str, budget: &str, dir: &Path, cmd: &Command| -> Result<()> {
        let record = run_folder::StageRecord::read(dir)?;
        let metrics = run_folder::StageMetrics::read(dir)?;
        let line = std::iter::once(cmd.get_program())
            .chain(cmd.get_args())
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ");
        println!(
            "| {name} | {budget} | {:.3} | {:.3} | {:.0} | `{line}` |",
            metrics.validation.acc,
            metrics.test.map_or(f64::NAN, |t| t.acc),
            record.seconds
        );
        Ok(())
    };

    // Head on block5_pool features, without and with augmented passes of the training split.
    let extract = out.join("extract-block5");
    let block5 = ExtractFeatures {
        layer: Some("block5_pool".into()),
        input_size: Some(size),
        device: Some("cpu".into()),
        augment_passes: Some(args.passes),
        cache_dir: Some(cache.to_owned()),
        ..ExtractFeatures::new(data, weights, &extract)
    };
    let mut cmd = Command::new(bin(ExtractFeatures::BINARY));
    cmd.args(block5.to_args());
    timed(&mut cmd, "extract-features (block5_pool)")?;
    for (name, augmented) in [("head only", false), ("head, augmented passes", true)] {
        let dir = out.join(if augmented { "acc-head-augmented" } else { "acc-head" });
        let head = TrainHead {
            cache_dir: Some(cache.to_owned()),
            epochs: Some(head_epochs),
            device: Some("cpu".into()),
            no_augmented_passes: !augmented,
            ..TrainHead::new(extract.join(feature_cache::EXTRACTION_FILE), &dir)
        };
        let mut cmd = Command::new(bin(TrainHead::BINARY));
        cmd.args(head.to_args());
        timed(&mut cmd, "train-head")?;
        show(name, &format!("{head_epochs} head epochs"), &dir, &cmd)?;
    }
    for (name, cached) in [("fine-tune, plain", false), ("fine-tune, cached-trunk", true)] {
        let dir = out.join(if cached { "acc-fine-tune-cached" } else { "acc-fine-tune-plain" });
        let fine_tune = FineTune {
            input_size: Some(size),
            device: Some("cpu".into()),
            seed: Some(0),
            head_epochs: Some(he),
            epochs: Some(e),
            trunk_cache: cached.then(|| trunk.to_owned()),
            ..FineTune::new(data, weights, &dir)
        };
        let mut cmd = Command::new(bin(FineTune::BINARY));
        cmd.args(fine_tune.to_args());
        timed(&mut cmd, name)?;
        show(name, &format!("{he} head + {e} fine-tuning epochs"), &dir, &cmd)?;
    }
    Ok(())
}

/// Installs the pinned torchvision beside torch when `import torchvision` fails.
fn ensure_torchvision(python: &Path) -> Result<()> {
    let ok = Command::new(python)
        .args(["-c", "import torch, torchvision"])
        .stderr(Stdio::null())
        .status();
    match ok {
        Ok(s) if s.success() => return Ok(()),
        Err(err) => bail!(
            "could not start {} for the PyTorch reference ({err}): pass --python or --no-reference",
            python.display()
        ),
        Ok(_) => {}
    }
    eprintln!("installing {TORCHVISION} into {} (the reference's transforms)", python.display());
    let mut cmd = Command::new(python);
    cmd.args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "--no-deps",
        TORCHVISION,
    ]);
    crate::run_checked(&mut cmd, &format!("pip install {TORCHVISION}")).with_context(|| {
        format!(
            "{} needs torch 2.11.0 and {TORCHVISION}; or run with --no-reference",
            python.display()
        )
    })
}

/// Our epoch from a one-epoch fine-tune run folder.
fn our_epoch(dir: &Path) -> Result<Epoch> {
    let record: Value = run_folder::read_json(&dir.join("stage.json"))?;
    let summary = &record["summary"];
    let total = summary["median_epoch_seconds"]
        .as_f64()
        .with_context(|| format!("{}: no median_epoch_seconds", dir.display()))?;
    let b = &summary["epoch_breakdown"][0];
    let part = |name: &str| b[name].as_f64().unwrap_or(f64::NAN);
    Ok(Epoch {
        total,
        parts: ["batch", "forward", "backward", "optimizer", "other", "validation"]
            .into_iter()
            .map(|n| (n, part(n)))
            .collect(),
    })
}

/// Runs the reference and reads its one-epoch JSON line.
fn reference_epoch(cmd: &mut Command) -> Result<Epoch> {
    let out =
        cmd.stderr(Stdio::inherit()).output().context("could not start pytorch_reference.py")?;
    if !out.status.success() {
        bail!("pytorch_reference.py failed ({})", out.status);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or_default();
    let v: Value = serde_json::from_str(line)
        .with_context(|| format!("pytorch_reference.py printed {line:?}"))?;
    let b = &v["breakdown"];
    let get = |x: &Value| x.as_f64().unwrap_or(f64::NAN);
    let train = get(&v["train_seconds"]);
    let (data, fwd, bwd, opt) =
        (get(&b["data"]), get(&b["forward"]), get(&b["backward"]), get(&b["optimizer"]));
    Ok(Epoch {
        total: get(&v["epoch_seconds"]),
        parts: vec![
            ("batch", data),
            ("forward", fwd),
            ("backward", bwd),
            ("optimizer", opt),
            ("other", train - data - fwd - bwd - opt),
            ("validation", get(&v["validation_seconds"])),
        ],
    })
}

/// Wall time of a whole process; its stderr is shown only when it fails.
fn timed(cmd: &mut Command, what: &str) -> Result<f64> {
    cmd.env("RUST_LOG", "warn").env("NO_COLOR", "1");
    let started = Instant::now();
    let out = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("could not start {what}"))?;
    if !out.status.success() {
        bail!("{what} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
    }
    Ok(started.elapsed().as_secs_f64())
}

fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn min(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NEG_INFINITY, f64::max)
}
