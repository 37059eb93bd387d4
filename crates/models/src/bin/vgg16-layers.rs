//! `vgg16-layers`: prints the conv-base layer table (Keras name, torchvision index, output
//! shape, parameters, frozen or trainable) for an input size, of VGG16 or of the architecture a
//! weights file records (a pretrained small convnet, say), with the source, preprocessing and
//! digest of that file, and checks the table by running one forward pass on the chosen device.

use std::path::PathBuf;

use anyhow::{Context, Result, ensure};
use clap::Parser;
use models::{ConvBase, DeviceChoice, LayerName, load_weights};
use tch::{Kind, Tensor, nn};

/// Show the layers of the VGG16 convolutional base (Keras `VGG16(include_top=False)`), or of
/// the base a weights file holds.
///
/// Example: `vgg16-layers --input-size 150 --unfreeze-from block5_conv1 --weights vgg16.safetensors`
#[derive(Parser)]
#[command(version, about, long_about)]
struct Args {
    /// Our safetensors weights file: its source, preprocessing and sha256 are printed, and the
    /// check forward pass runs with it (default: random weights).
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Input image size: one number for a square (150) or HEIGHTxWIDTH (150x200).
    #[arg(long, default_value = "150", value_parser = parse_size)]
    input_size: (i64, i64),
    /// Layers from this one up are trainable, those below frozen (Keras `block5_conv1` or
    /// torchvision `features.24`). Without it every layer is listed as frozen.
    #[arg(long)]
    unfreeze_from: Option<LayerName>,
    /// Device for the check forward pass: auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: DeviceChoice,
}

fn parse_size(s: &str) -> Result<(i64, i64), String> {
    let parse = |v: &str| {
        v.trim().parse::<i64>().map_err(|_| format!("bad size {s:?}: expected 150 or 150x200"))
    };
    match s.split_once(['x', 'X']) {
        Some((h, w)) => Ok((parse(h)?, parse(w)?)),
        None => parse(s).map(|n| (n, n)),
    }
}

fn main() -> std::process::ExitCode {
    cli_support::main(|| run(Args::parse()))
}

fn run(args: Args) -> Result<()> {
    let (height, width) = args.input_size;
    let device = args.device.resolve()?;
    let (_vs, base) = match &args.weights {
        Some(path) => {
            let w = load_weights(path, device)
                .with_context(|| format!("loading weights {}", path.display()))?;
            println!("weights: {}", path.display());
            println!("source: {}", w.meta.source);
            println!("source sha256: {}", w.meta.source_sha256.as_deref().unwrap_or("unknown"));
            println!("preprocessing: {}", w.meta.preprocessing);
            println!("sha256: {}", w.meta.digest);
            println!();
            (w.vs, w.base)
        }
        None => {
            let vs = nn::VarStore::new(device);
            let base = ConvBase::new(&vs.root());
            (vs, base)
        }
    };
    let arch = base.arch();
    arch.output_shape(height, width, arch.last())
        .with_context(|| format!("input size {height}x{width}"))?;
    let unfreeze_from = args.unfreeze_from.as_ref().map(|l| base.layer(l)).transpose()?;

    println!(
        "{:<14} {:<12} {:>16} {:>10}  state",
        "layer", "torchvision", "output (H,W,C)", "params"
    );
    let mut total = 0;
    let mut trainable = 0;
    for layer in arch.layers() {
        let [c, h, w] = arch.output_shape(height, width, layer)?;
        let spec = arch.spec(layer);
        let params = spec.parameter_count();
        let trains = arch.is_trainable(layer, unfreeze_from);
        let state = match (params, trains) {
            (0, _) => "-",
            (_, true) => "trainable",
            (_, false) => "frozen",
        };
        total += params;
        trainable += if trains { params } else { 0 };
        println!(
            "{:<14} {:<12} {:>16} {:>10}  {state}",
            spec.name,
            spec.torch_name(),
            format!("({h}, {w}, {c})"),
            params
        );
    }
    println!("total params: {total}; trainable: {trainable}; frozen: {}", total - trainable);

    let xs = Tensor::zeros([1, 3, height, width], (Kind::Float, device));
    let ys = tch::no_grad(|| base.forward(&xs))?;
    let [c, h, w] = arch.output_shape(height, width, arch.last())?;
    ensure!(
        ys.size() == [1, c, h, w],
        "forward pass gave {:?}, table says {:?}",
        ys.size(),
        [1, c, h, w]
    );
    tracing::info!(?device, output = ?ys.size(), "forward pass on the device agrees with the table");
    Ok(())
}
