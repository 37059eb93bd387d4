//! `evaluate --model M --data DIR [--split test]`: accuracy, loss, confusion matrix, per-class
//! precision/recall/F1, one row per image and the top-losses grid of a model file on a labelled
//! split, written into `--out` (default: `evaluate-<split>/` beside the model file). See the
//! library ([`evaluate::evaluate`]) for what each file holds.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::Parser;
use dataset::BadImagePolicy;
use evaluate::{EvaluateOptions, TOP_LOSSES_FILE};
use models::{Classifier, DeviceChoice};
use predict::ClassifyOptions;

/// Evaluates a trained model file on a labelled split (one folder per class, as training read
/// it): accuracy, loss, confusion matrix, per-class precision/recall/F1, predictions.csv and the
/// top-losses grid.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The model file (`model.safetensors` of train-head, fine-tune or pretrain).
    #[arg(long)]
    model: PathBuf,
    /// The dataset root: `<data>/<split>/<class>/<image>`, one folder per class of the model.
    #[arg(long)]
    data: PathBuf,
    /// The split folder to evaluate.
    #[arg(long, default_value = "test")]
    split: String,
    /// Output folder (created if missing). Default: `evaluate-<split>` beside the model file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Images in the top-losses grid (the most confidently wrong); 0 draws none.
    #[arg(long, default_value_t = 16)]
    top_losses: usize,
    /// Images decoded and classified together.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: DeviceChoice,
    /// Follow symlinked folders inside the folders given (linked files are always read), as
    /// `dataset check --follow-links` and the training stages do.
    #[arg(long)]
    follow_links: bool,
    /// Skip images that cannot be decoded (each named in the log and in metrics.json), instead
    /// of stopping at the first.
    #[arg(long)]
    skip_bad_images: bool,
    /// With --skip-bad-images, fail when more than this fraction of the images is bad.
    #[arg(long, default_value_t = 0.01)]
    max_bad_fraction: f64,
}

fn main() -> ExitCode {
    // Activations reuse warm heap pages instead of fresh zeroed ones (as extraction does).
    // Not `cpu_runtime::init`: flushing denormals could change probabilities from training's.
    cpu_runtime::keep_freed_memory();
    cli_support::main(|| run(Args::parse()))
}

fn run(args: Args) -> Result<()> {
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    if !(0.0..=1.0).contains(&args.max_bad_fraction) {
        bail!("--max-bad-fraction must lie in [0, 1]");
    }
    let device = args.device.resolve()?;
    let model = Classifier::load(&args.model, device, None::<&str>)?;
    let out = args.out.clone().unwrap_or_else(|| {
        let dir = args.model.parent().map(PathBuf::from).unwrap_or_default();
        dir.join(format!("evaluate-{}", args.split))
    });
    let options = EvaluateOptions {
        split: args.split.clone(),
        top_losses: args.top_losses,
        follow_links: args.follow_links,
        classify: ClassifyOptions {
            batch_size: args.batch_size,
            on_bad_image: if args.skip_bad_images {
                BadImagePolicy::Skip { max_fraction: args.max_bad_fraction }
            } else {
                BadImagePolicy::FailFast
            },
            progress_label: "evaluate",
        },
    };
    let report = evaluate::evaluate(&model, &args.model, &args.data, &options, &out)?;
    for s in &report.skipped {
        eprintln!("skipped bad image {}: {}", s.path.display(), s.reason);
    }
    let m = &report.metrics;
    println!(
        "{} on {}: accuracy {:.4} ({} images), loss {:.4}",
        args.model.display(),
        report.data.display(),
        m.acc,
        m.images,
        m.loss
    );
    for c in &m.per_class {
        let f = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.3}"));
        println!(
            "  {:<20} precision {}  recall {}  f1 {}  support {}",
            c.class,
            f(c.precision),
            f(c.recall),
            f(c.f1),
            c.support
        );
    }
    if args.top_losses > 0 {
        println!(
            "wrote {} ({} most confidently wrong) and the rest into {}",
            TOP_LOSSES_FILE,
            report.top_losses.len(),
            out.display()
        );
    } else {
        println!("wrote {}", out.display());
    }
    Ok(())
}
