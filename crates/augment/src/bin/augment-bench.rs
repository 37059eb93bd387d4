//! `augment-bench`: times the seed generator's full augmentation (rotation 40, shifts 0.2, shear
//! 0.2, zoom 0.2, horizontal flip, nearest fill, bilinear) on synthetic images with a sized rayon
//! pool, and prints one JSON line (for `cargo xtask bench augment`, which runs it beside the
//! keras-preprocessing reference).

use std::time::Instant;

use anyhow::{Context, Result};
use augment::{AugmentConfig, AugmentSpec};
use clap::{Parser, ValueEnum};
use rayon::prelude::*;

/// Benchmark augmentation throughput (images per second) on synthetic images.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Args {
    /// Images per timed run.
    #[arg(long, default_value_t = 2000)]
    images: usize,
    /// Timed runs (the median is reported); one untimed warm-up run comes first.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Worker threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Image side in pixels (square, 3 channels).
    #[arg(long, default_value_t = 150)]
    size: usize,
    /// Output type: `f32` is what Keras produces from a loaded image, `u8` stays 0-255.
    #[arg(long, value_enum, default_value_t = Output::F32)]
    output: Output,
    /// An AugmentSpec as JSON, instead of the seed generator (for exploring costs).
    #[arg(long)]
    spec: Option<String>,
}

#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum Output {
    F32,
    U8,
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let spec = match &args.spec {
        Some(json) => AugmentSpec::from_json(json)?,
        None => AugmentSpec::seed_generator(),
    };
    let config = AugmentConfig::new(spec)?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(args.threads)
        .build()
        .context("could not build the thread pool")?;
    let (h, w, c) = (args.size, args.size, 3);
    // A handful of distinct sources is enough: the warp's cost does not depend on the pixels.
    let sources: Vec<Vec<u8>> = (0..16).map(|k| synthetic(h, w, k)).collect();
    let mut rates = Vec::new();
    for run in 0..=args.runs {
        let start = Instant::now();
        pool.install(|| {
            (0..args.images).into_par_iter().for_each_init(
                || (vec![0.0f32; h * w * c], vec![0u8; h * w * c]),
                |(out_f32, out_u8), i| {
                    let t = config.sample(1, run as u64, i as u64);
                    let src = &sources[i % sources.len()];
                    match args.output {
                        Output::F32 => t.apply_u8_to_f32(src, h, w, c, out_f32),
                        Output::U8 => t.apply_u8(src, h, w, c, out_u8),
                    }
                    .expect("buffers are h x w x c");
                },
            )
        });
        let rate = args.images as f64 / start.elapsed().as_secs_f64();
        if run > 0 {
            tracing::info!(run, threads = args.threads, img_per_s = rate.round(), "timed run");
            rates.push(rate);
        }
    }
    rates.sort_by(f64::total_cmp);
    let median = rates[rates.len() / 2];
    let output = match args.output {
        Output::F32 => "f32",
        Output::U8 => "u8",
    };
    println!(
        "{}",
        serde_json::json!({
            "impl": "augment",
            "threads": args.threads,
            "images": args.images,
            "size": args.size,
            "output": output,
            "img_per_s": rates,
            "median_img_per_s": median,
        })
    );
    Ok(())
}

/// A smooth gradient with a deterministic speckle, so the images look like something.
fn synthetic(h: usize, w: usize, k: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(h * w * 3);
    for r in 0..h {
        for col in 0..w {
            let noise = (((r * 131 + col * 71 + k * 29) * 2654435761usize) >> 13) % 32;
            out.push(((r * 255 / h + noise) % 256) as u8);
            out.push(((col * 255 / w + k * 16) % 256) as u8);
            out.push((((r + col) * 127 / (h + w) + noise * 2) % 256) as u8);
        }
    }
    out
}
