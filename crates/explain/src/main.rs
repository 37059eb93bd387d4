//! `explain`: Grad-CAM class activation heatmaps of a trained model file (`model.safetensors` of
//! train-head, fine-tune or pretrain) over images, as Chollet's *Deep Learning with Python*
//! 5.4.3 draws them.
//!
//! `explain --model M IMAGE_OR_FOLDER... --out DIR [--class NAME] [--layer NAME] [--device D]`:
//! inputs are image files and folders (walked as predict walks them: recursively, Keras' order,
//! dot-entries and symlinked folders left out, the image extension allow-list). Each image is decoded exactly
//! as training and predict decode it (the header's input size and resize mode), explained at the
//! last convolution layer at or before the model's cut (or `--layer`) for the predicted class (or
//! `--class`), and written as `DIR/<file stem>_gradcam.png` (the image as the model sees it with
//! the jet-coloured heatmap added; names made unique when stems repeat), each file written
//! atomically. `DIR/gradcam.json` ([`explain::Report`]) lists per image the path, the class
//! explained and its probability, the predicted class, the heatmap's maximum (row, col in the
//! image's pixels) and the PNG's name; `DIR/gradcam_grid.png` shows every overlay (enlarged to
//! at least 128 px) captioned with its file, class and probability, to look at in one go. The
//! folder follows the run-folder contract (`config.json` first, `stage.json` last with the
//! digests of the model and the images), so the pipeline runs `explain` as a stage. The first
//! image that cannot be decoded stops the run, naming it.

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
    /// Image files and folders (folders recursively: image extensions only, Keras' order,
    /// dot-entries and symlinked folders left out). A file named here is used whatever its extension.
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
    /// Follow symlinked folders inside the folders given (linked files are always read), as
    /// `dataset check --follow-links` and the training stages do.
    #[arg(long)]
    follow_links: bool,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: DeviceChoice,
}

fn main() -> std::process::ExitCode {
    // Activations reuse warm heap pages instead of fresh zeroed ones (as extraction does).
    // Not `cpu_runtime::init`: flushing denormals could change probabilities from training's.
    cpu_runtime::keep_freed_memory();
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

    let files = predict::collect_files(&args.paths, args.follow_links)?;
    if files.is_empty() {
        bail!("no image files found under the given paths");
    }
    let names = output_names(&files);
    let started = std::time::Instant::now();
    // An empty folder, or one an earlier explain wrote (cleared, record first); anything else is
    // refused, naming what it holds.
    run_folder::claim_stage_dir(&args.out, "explain", |name| {
        name.ends_with("_gradcam.png") || name == REPORT_FILE || name == GRID_FILE
    })?;
    let config = serde_json::json!({
        "model": args.model,
        "images": files,
        "class": args.class,
        "layer": arch.name_of(layer),
    });
    run_folder::write_json(&args.out.join(run_folder::CONFIG_FILE), &config)?;
    let [height, width] = header.input_size;
    let [_, h, w] = arch.output_shape(height, width, layer)?;
    tracing::info!(
        images = files.len(),
        model = %args.model.display(),
        layer = arch.name_of(layer),
        "explaining"
    );

    let mut images = Vec::with_capacity(files.len());
    let mut tiles = Vec::with_capacity(files.len());
    for (file, name) in files.iter().zip(&names) {
        // Decode errors name the file and say why.
        let image = dataset::decode(file, &decode)?;
        let explained = explain_image(&model, &image, layer, class)
            .with_context(|| format!("explaining {}", file.display()))?;
        let png = explain::overlay::encode_png(&explained.overlay)
            .with_context(|| format!("drawing the overlay of {}", file.display()))?;
        run_folder::write_atomic(&args.out.join(name), &png)?;
        let record = ImageRecord::new(&header, file, &explained, name);
        tiles.push(plots::Tile {
            image: enlarged(&explained.overlay, GRID_MIN_SIDE),
            caption: vec![
                file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
                format!("{} ({:.3})", record.class, record.probability),
            ],
        });
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
    // The model's folder and file name (`fine-tune/model.safetensors`): enough to tell models apart.
    let tail: Vec<_> = args.model.iter().rev().take(2).collect();
    let model_name: std::path::PathBuf = tail.into_iter().rev().collect();
    let title = format!("Grad-CAM at {} ({})", report.layer, model_name.display());
    plots::plot_image_grid(&args.out.join(GRID_FILE), &title, &tiles, 4)?;

    let mut outputs: Vec<&str> = names.iter().map(String::as_str).collect();
    outputs.extend([REPORT_FILE, GRID_FILE]);
    let image_digests =
        files.iter().map(|f| Ok(run_folder::file_sha256(f)?.sha256)).collect::<Result<Vec<_>>>()?;
    let inputs = std::collections::BTreeMap::from([
        ("model".to_owned(), run_folder::file_sha256(&args.model)?.sha256),
        ("images".to_owned(), run_folder::sha256_hex(image_digests.join("\n").as_bytes())),
    ]);
    run_folder::StageRecord::write(
        &args.out,
        "explain",
        run_folder::json_sha256(&config),
        inputs,
        &outputs,
        started.elapsed().as_secs_f64(),
        serde_json::json!({ "images": files.len(), "layer": report.layer }),
    )?;
    Ok(())
}

/// The sheet of every overlay.
const GRID_FILE: &str = "gradcam_grid.png";
/// Overlays smaller than this (pixels, longer side) are enlarged on the sheet.
const GRID_MIN_SIDE: u32 = 128;

/// `image` scaled by the smallest whole factor that makes its longer side at least `min_side`
/// (nearest neighbour, so the model's pixels stay visible); unchanged when already as large.
fn enlarged(image: &image::RgbImage, min_side: u32) -> image::RgbImage {
    let side = image.width().max(image.height()).max(1);
    let factor = min_side.div_ceil(side);
    if factor <= 1 {
        return image.clone();
    }
    image::imageops::resize(
        image,
        image.width() * factor,
        image.height() * factor,
        image::imageops::FilterType::Nearest,
    )
}
