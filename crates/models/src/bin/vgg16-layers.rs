//! `vgg16-layers`: prints the VGG16 conv-base layer table (Keras name, torchvision index, output
//! shape, parameters, frozen or trainable) for an input size, and checks it by running one forward
//! pass on the chosen device.

use anyhow::{Context, Result, ensure};
use clap::Parser;
use models::{DeviceChoice, LayerKind, Vgg16Base, Vgg16Layer, output_shape};
use tch::{Kind, Tensor, nn};

/// Show the layers of the VGG16 convolutional base (Keras `VGG16(include_top=False)`).
///
/// Example: `vgg16-layers --input-size 150 --unfreeze-from block5_conv1`
#[derive(Parser)]
#[command(version, about, long_about)]
struct Args {
    /// Input image size: one number for a square (150) or HEIGHTxWIDTH (150x200).
    #[arg(long, default_value = "150", value_parser = parse_size)]
    input_size: (i64, i64),
    /// Layers from this one up are trainable, those below frozen (Keras `block5_conv1` or
    /// torchvision `features.24`). Without it every layer is listed as frozen.
    #[arg(long)]
    unfreeze_from: Option<Vgg16Layer>,
    /// Device for the check forward pass: auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: DeviceChoice,
}

fn parse_size(s: &str) -> Result<(i64, i64), String> {
    let parse = |v: &str| v.trim().parse::<i64>().map_err(|_| format!("bad size {s:?}: expected 150 or 150x200"));
    match s.split_once(['x', 'X']) {
        Some((h, w)) => Ok((parse(h)?, parse(w)?)),
        None => parse(s).map(|n| (n, n)),
    }
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Args::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<()> {
    let (height, width) = args.input_size;
    output_shape(height, width, Vgg16Layer::LAST)
        .with_context(|| format!("input size {height}x{width}"))?;

    println!("{:<14} {:<12} {:>16} {:>10}  {}", "layer", "torchvision", "output (H,W,C)", "params", "state");
    let mut total = 0;
    let mut trainable = 0;
    for layer in Vgg16Layer::all() {
        let [c, h, w] = output_shape(height, width, layer)?;
        let params = match layer.spec().kind {
            LayerKind::Conv { in_channels, out_channels } => out_channels * in_channels * 9 + out_channels,
            LayerKind::Pool => 0,
        };
        let is_trainable = args.unfreeze_from.is_some_and(|from| layer >= from);
        let state = match (params, is_trainable) {
            (0, _) => "-",
            (_, true) => "trainable",
            (_, false) => "frozen",
        };
        total += params;
        trainable += if is_trainable { params } else { 0 };
        println!(
            "{:<14} {:<12} {:>16} {:>10}  {state}",
            layer.keras_name(),
            layer.torch_name(),
            format!("({h}, {w}, {c})"),
            params
        );
    }
    println!("total params: {total}; trainable: {trainable}; frozen: {}", total - trainable);

    let device = args.device.resolve()?;
    let vs = nn::VarStore::new(device);
    let base = Vgg16Base::new(&vs.root());
    let xs = Tensor::zeros([1, 3, height, width], (Kind::Float, device));
    let ys = tch::no_grad(|| base.forward(&xs))?;
    let [c, h, w] = output_shape(height, width, Vgg16Layer::LAST)?;
    ensure!(ys.size() == [1, c, h, w], "forward pass gave {:?}, table says {:?}", ys.size(), [1, c, h, w]);
    tracing::info!(?device, output = ?ys.size(), "forward pass on the device agrees with the table");
    Ok(())
}
