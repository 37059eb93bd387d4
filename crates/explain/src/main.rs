//! `explain`: Grad-CAM class activation heatmaps of a trained model file (`model.safetensors` of
//! train-head, fine-tune or pretrain) over images, as Chollet's *Deep Learning with Python*
//! 5.4.3 draws them.
//!
//! `explain --model M IMAGE_OR_FOLDER... --out DIR [--class NAME] [--layer NAME] [--device D]`:
//! inputs are image files and folders (walked as predict walks them: recursively, sorted, dot
//! entries and symlinks left out, the image extension allow-list). Each image is decoded exactly
//! as training and predict decode it (the header's input size and resize mode), explained at the
//! last convolution layer at or before the model's cut (or `--layer`) for the predicted class (or
//! `--class`), and written as `DIR/<file stem>_gradcam.png` (the image as the model sees it with
//! the jet-coloured heatmap added; names made unique when stems repeat), each file written
//! atomically. `DIR/gradcam.json` ([`explain::Report`]) lists per image the path, the class
//! explained and its probability, the predicted class, the heatmap's maximum (row, col in the
//! image's pixels) and the PNG's name. The first image that cannot be decoded stops the run,
//! naming it.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Parser;
use explain::{ImageRecord, REPORT_FILE, Report, SCORE, explain_image, output_names};
use models::{Classifier, DeviceChoice, LayerName};

/// Grad-CAM heatmaps of a model file's predictions, drawn over the images.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The model file (`model.safetensors` or `best.safetensors` of train-head, fine-tune or
    /// pretrain).
    #[arg(long)]
    model: PathBuf,
    /// Image files and folders (folders recursively: image extensions only, sorted, dot-entries
    /// and symlinks left out). A file named here is used whatever its extension.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// Folder for the overlays and gradcam.json (created if missing).
    #[arg(long)]
    out: PathBuf,
    /// Explain this class (a class name of the model) instead of the predicted one.
    #[arg(long, value_name = "NAME")]
    class: Option<String>,
    /// The layer whose activation is weighed (a base layer at or before the cut); default: the
    /// last convolution layer at or before the cut (VGG16 cut at block5_pool: block5_conv3).
    #[arg(long, value_name = "NAME")]
    layer: Option<LayerName>,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: DeviceChoice,
}

fn main() -> std::process::ExitCode {
    cli_support::main(|| run(Args::parse()))
}

fn run(args: Args) -> Result<()> {
    let device = args.device.resolve()?;
    // Its errors name the file and say why (not a model file, another version, ...).
    let model = Classifier::load(&args.model, device, None::<&str>)?;
    let header = model.header().clone();
    let model_name = || args.model.display().to_string();
    let decode = predict::decode_options(&header).with_context(model_name)?;
    let arch = header.arch().with_context(model_name)?;
    let layer = match &args.layer {
        Some(name) => {
            let layer = arch.layer(name.as_str()).with_context(model_name)?;
            if layer > header.cut_layer()? {
                bail!(
                    "--layer {name}: the model is cut at {}, so it never runs {name}",
                    header.cut
                );
            }
            layer
        }
        None => model.last_conv_layer().with_context(model_name)?,
    };
    let class = args
        .class
        .as_deref()
        .map(|name| explain::resolve_class(&header, name))
        .transpose()
        .with_context(|| format!("--class: {}", model_name()))?;

    let files = predict::collect_files(&args.paths)?;
    if files.is_empty() {
        bail!("no image files found under the given paths");
    }
    let names = output_names(&files);
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating the output folder {}", args.out.display()))?;
    let [height, width] = header.input_size;
    let [_, h, w] = arch.output_shape(height, width, layer)?;
    tracing::info!(
        images = files.len(),
        model = %args.model.display(),
        layer = arch.name_of(layer),
        "explaining"
    );

    let mut images = Vec::with_capacity(files.len());
    for (file, name) in files.iter().zip(&names) {
        // Decode errors name the file and say why.
        let image = dataset::decode(file, &decode)?;
        let explained = explain_image(&model, &image, layer, class)
            .with_context(|| format!("explaining {}", file.display()))?;
        let png = explain::overlay::encode_png(&explained.overlay)
            .with_context(|| format!("drawing the overlay of {}", file.display()))?;
        run_folder::write_atomic(&args.out.join(name), &png)?;
        let record = ImageRecord::new(&header, file, &explained, name);
        if record.heatmap_all_zero {
            tracing::warn!(
                image = %file.display(),
                class = record.class,
                "the heatmap is zero everywhere: no position has positive evidence for the class"
            );
        }
        tracing::info!(
            image = %file.display(),
            class = record.class,
            probability = record.probability,
            predicted = record.predicted,
            output = name,
            "explained"
        );
        images.push(record);
    }
    let report = Report {
        model: args.model.clone(),
        layer: arch.name_of(layer).to_owned(),
        score: SCORE.to_owned(),
        input_size: header.input_size,
        heatmap_size: [h, w],
        classes: header.class_names.clone(),
        images,
    };
    let mut json = serde_json::to_string_pretty(&report)?;
    json.push('\n');
    run_folder::write_atomic(&args.out.join(REPORT_FILE), json.as_bytes())?;
    Ok(())
}
