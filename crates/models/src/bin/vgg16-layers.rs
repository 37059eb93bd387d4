//! `vgg16-layers`: prints the conv-base layer table (Keras name, torchvision index, output
//! shape, parameters, frozen or trainable) for an input size, of VGG16 or of the architecture a
//! weights file records (a pretrained small convnet, say), with the source, preprocessing and
//! digest of that file, and checks the table by running one forward pass on the chosen device.
//!
//! `--json` prints the same table as one JSON object on stdout instead (no forward pass): what
//! `cargo xtask pipeline` reads to check layer names and input sizes before any stage runs, and
//! to find the layer just below `unfreeze_from`. `--arch` describes a base that has no weights
//! file yet (the one a pipeline's `pretrain` stage will write).

use std::path::PathBuf;

use anyhow::{Context, Result, ensure};
use clap::{Parser, ValueEnum};
use models::{ConvArch, ConvBase, DeviceChoice, LayerKind, LayerName, load_weights};
use serde::Serialize;
use tch::{Device, Kind, Tensor, nn};

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
    /// The table of an architecture without weights (as `pretrain --arch` names them): what a
    /// base trained by `pretrain` will have.
    #[arg(long, value_enum, conflicts_with = "weights")]
    arch: Option<ArchChoice>,
    /// With `--arch vgg16`: fraction of VGG16's filters per layer, as `pretrain --width`.
    #[arg(long, default_value_t = 1.0, requires = "arch")]
    width: f64,
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
    /// Print the table as one JSON object on stdout (see [`JsonTable`]), computed from the
    /// layer list alone: no forward pass, and weights are read on the CPU.
    #[arg(long)]
    json: bool,
}

/// The conv bases `pretrain --arch` trains.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum ArchChoice {
    /// Chollet's small convnet (conv2d_1 .. max_pooling2d_4).
    SmallConvnet,
    /// VGG16's layers, filters scaled by --width.
    Vgg16,
}

/// `--json`: the layer table of one base at one input size.
#[derive(Serialize)]
struct JsonTable {
    /// `architecture` as a weights file records it (`vgg16_conv_base`, `small_convnet`).
    architecture: String,
    /// `[height, width]` of the input.
    input_size: [i64; 2],
    /// Input to output.
    layers: Vec<JsonLayer>,
}

/// One layer of [`JsonTable`].
#[derive(Serialize)]
struct JsonLayer {
    /// Keras name (`block4_pool`).
    name: String,
    /// The torchvision names that also select it (`features.23`; a convolution's ReLU,
    /// `features.N+1`, names the convolution too).
    aliases: Vec<String>,
    /// `conv` or `pool`.
    kind: &'static str,
    /// Output `[H, W, C]` (channels last), or `null` when the input is too small to reach it.
    output: Option<[i64; 3]>,
    /// The smallest square input side that reaches this layer.
    min_input: i64,
    params: i64,
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
    if args.json {
        return print_json(&args);
    }
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
            let base = match args.arch {
                Some(choice) => ConvBase::with_arch(&vs.root(), arch_of(choice, args.width)?),
                None => ConvBase::with_arch(&vs.root(), ConvArch::vgg16()),
            };
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

/// The architecture `pretrain --arch choice --width width` trains.
fn arch_of(choice: ArchChoice, width: f64) -> Result<ConvArch> {
    Ok(match choice {
        ArchChoice::SmallConvnet => {
            ensure!(width == 1.0, "--width applies to --arch vgg16 only");
            ConvArch::small_convnet()
        }
        ArchChoice::Vgg16 => ConvArch::vgg16_width(width)?,
    })
}

/// `--json`: the table of the weights' base, of `--arch`, or of VGG16, from its layer list.
fn print_json(args: &Args) -> Result<()> {
    let arch = match (&args.weights, args.arch) {
        (Some(path), _) => load_weights(path, Device::Cpu)
            .with_context(|| format!("loading weights {}", path.display()))?
            .base
            .arch()
            .clone(),
        (None, Some(choice)) => arch_of(choice, args.width)?,
        (None, None) => ConvArch::vgg16(),
    };
    let (height, width) = args.input_size;
    let layers = arch
        .layers()
        .map(|layer| {
            let spec = arch.spec(layer);
            let torch = spec.torch_index;
            let (kind, aliases) = match spec.kind {
                LayerKind::Conv { .. } => ("conv", vec![torch, torch + 1]),
                LayerKind::Pool => ("pool", vec![torch]),
            };
            JsonLayer {
                name: spec.name.clone(),
                aliases: aliases.into_iter().map(|i| format!("features.{i}")).collect(),
                kind,
                output: arch.output_shape(height, width, layer).ok().map(|[c, h, w]| [h, w, c]),
                min_input: arch.min_input(layer),
                params: spec.parameter_count(),
            }
        })
        .collect();
    let table =
        JsonTable { architecture: arch.name().to_owned(), input_size: [height, width], layers };
    println!("{}", serde_json::to_string(&table)?);
    Ok(())
}
