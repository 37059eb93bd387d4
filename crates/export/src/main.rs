//! `export --model M.safetensors --format onnx --out model.onnx`: writes a trained model file as
//! one ONNX graph (input `pixels`, float32 `[N, 3, H, W]` RGB 0-255 with the preprocessing in
//! the graph; output `probabilities`, float32 `[N, classes]`); see the library docs
//! ([`export`]) for the graph.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, ValueEnum};

/// Writes a trained model file in another format.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The model file (`model.safetensors` or `best.safetensors` of train-head, fine-tune or
    /// pretrain).
    #[arg(long)]
    model: PathBuf,
    /// The format to write: onnx (opset 17; input `pixels` float32 [N, 3, H, W] RGB 0-255,
    /// output `probabilities` float32 [N, classes]).
    #[arg(long, value_enum)]
    format: Format,
    /// The file to write (atomically: a temp file in the same folder, then a rename).
    #[arg(long)]
    out: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Onnx,
}

fn main() -> ExitCode {
    cli_support::main(|| run(Args::parse()))
}

fn run(args: Args) -> Result<()> {
    match args.format {
        Format::Onnx => {
            let done = export::export_onnx(&args.model, &args.out)?;
            tracing::info!(
                out = %done.out.display(),
                bytes = done.bytes,
                sha256 = %done.sha256,
                nodes = done.nodes,
                initializers = done.initializers,
                classes = ?done.class_names,
                opset = export::OPSET,
                "wrote the ONNX model"
            );
        }
    }
    Ok(())
}
