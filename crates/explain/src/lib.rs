//! Explaining a trained model's predictions: Grad-CAM class activation heatmaps (Selvaraju et
//! al. 2017; Chollet's *Deep Learning with Python* 5.4.3) of a model file, drawn over the images
//! as the model sees them.
//!
//! - [`gradcam`]: the math, [`grad_cam`] (one image -> heatmap `[h, w]` in `[0, 1]` at a
//!   convolution layer, for the predicted or a chosen class, scored by its logit);
//! - [`overlay`]: bilinear upsampling onto the image, the jet colormap, the 0.4 blend, PNG;
//! - here: [`explain_image`] (both for one decoded image), class names ([`resolve_class`]),
//!   output file names ([`output_names`]) and `gradcam.json` ([`Report`]).
//!
//! The `explain` binary decodes each image with the model header's settings
//! (`predict::decode_options`, `dataset::decode`: what training and predict do), so the
//! network input and the overlay's background are the same pixels.

pub mod gradcam;
pub mod overlay;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use image::RgbImage;
use models::{Classifier, Layer, ModelHeader};
use serde::{Deserialize, Serialize};
use tch::Tensor;

pub use gradcam::{GradCam, class_score, grad_cam, heatmap_from_gradients};

/// Name of the summary file `explain` writes into its output folder.
pub const REPORT_FILE: &str = "gradcam.json";
/// What `gradcam.json` says the heatmaps differentiate (see [`gradcam`]).
pub const SCORE: &str = "logit of the class (two-class sigmoid head: z for class 1, -z for \
                         class 0)";

/// Grad-CAM of one decoded image, resized onto it and drawn over it.
#[derive(Debug)]
pub struct Explained {
    /// The heatmap at the layer's resolution and what the model said (see [`GradCam`]).
    pub cam: GradCam,
    /// The heatmap resized (bilinear) to the image, row-major, values in `[0, 1]`.
    pub heat: Vec<f32>,
    /// `(row, col)` in the image of the resized heatmap's maximum (the first on ties); `None`
    /// when the heatmap is all zero.
    pub argmax: Option<(usize, usize)>,
    /// The image with the jet-coloured heatmap added ([`overlay::overlay`]).
    pub overlay: RgbImage,
}

/// [`grad_cam`] of `image` (RGB8 at the header's input size, as `dataset::decode` gives it with
/// `predict::decode_options`) at `layer`, for `class` (`None`: the predicted class), then the
/// heatmap upsampled onto the image, its maximum, and the overlay.
pub fn explain_image(
    model: &Classifier,
    image: &RgbImage,
    layer: Layer,
    class: Option<usize>,
) -> Result<Explained> {
    let (width, height) = (image.width() as usize, image.height() as usize);
    let pixels = Tensor::from_slice(image.as_raw()).view([height as i64, width as i64, 3]);
    let cam = grad_cam(model, &pixels, layer, class)?;
    let heat = overlay::upsample(&cam.heatmap, height, width)?;
    let argmax = overlay::argmax(&heat, width);
    let overlay = overlay::overlay(image, &heat)?;
    Ok(Explained { cam, heat, argmax, overlay })
}

/// The index of the class named `name` in the header's `class_names` (exact match). Errors name
/// the classes the model has.
pub fn resolve_class(header: &ModelHeader, name: &str) -> Result<usize> {
    match header.class_names.iter().position(|c| c == name) {
        Some(index) => Ok(index),
        None => bail!(
            "unknown class {name:?}: the model's classes are {}",
            header.class_names.iter().map(|c| format!("{c:?}")).collect::<Vec<_>>().join(", ")
        ),
    }
}

/// Output file names, one per input in order: `<file stem>_gradcam.png`, made unique (ignoring
/// case, for case-insensitive file systems) by `-2`, `-3`, ... after the stem when inputs share
/// one (`a/cat.jpg`, `b/cat.png` -> `cat_gradcam.png`, `cat-2_gradcam.png`). A path without a
/// stem gives `image`.
pub fn output_names(files: &[PathBuf]) -> Vec<String> {
    let mut taken = BTreeSet::new();
    files
        .iter()
        .map(|file| {
            let stem = file
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "image".to_owned());
            let mut name = format!("{stem}_gradcam.png");
            let mut n = 2;
            while !taken.insert(name.to_lowercase()) {
                name = format!("{stem}-{n}_gradcam.png");
                n += 1;
            }
            name
        })
        .collect()
}

/// `gradcam.json`: what was explained, how, and one record per image in input order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    /// The model file, as given.
    pub model: PathBuf,
    /// Keras name of the layer whose activation the heatmaps weigh (`block5_conv3`).
    pub layer: String,
    /// What is differentiated ([`SCORE`]).
    pub score: String,
    /// `[height, width]` of the images as the model sees them (the overlays' size).
    pub input_size: [i64; 2],
    /// `[h, w]` of the heatmaps at the layer's resolution.
    pub heatmap_size: [i64; 2],
    /// The model's class names, index order.
    pub classes: Vec<String>,
    pub images: Vec<ImageRecord>,
}

/// One image of [`Report`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageRecord {
    /// The input file, as found (a file given, or one under a folder given).
    pub path: PathBuf,
    /// The class explained.
    pub class: String,
    /// Its probability for this image.
    pub probability: f32,
    /// The predicted class (the most probable).
    pub predicted: String,
    /// `[row, col]` of the heatmap's maximum in the input image's pixels (as the model sees
    /// it: resized to `input_size`); `null` when the heatmap is all zero.
    pub heatmap_argmax: Option<[usize; 2]>,
    /// True when no position has positive evidence for the class: the heatmap is all zero and
    /// the overlay shows the image under jet's darkest blue.
    pub heatmap_all_zero: bool,
    /// The overlay's file name in the output folder.
    pub output: String,
}

impl ImageRecord {
    /// The record of `explained` for the file `path` written as `output`.
    pub fn new(header: &ModelHeader, path: &Path, explained: &Explained, output: &str) -> Self {
        let cam = &explained.cam;
        ImageRecord {
            path: path.to_owned(),
            class: header.class_names[cam.class].clone(),
            probability: cam.probabilities[cam.class],
            predicted: header.class_names[cam.predicted].clone(),
            heatmap_argmax: explained.argmax.map(|(r, c)| [r, c]),
            heatmap_all_zero: cam.all_zero,
            output: output.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_names_are_unique_ignoring_case() {
        let files: Vec<PathBuf> =
            ["a/cat.jpg", "b/cat.png", "c/Cat.bmp", "d/cat-2.png", "e/dog.1.jpg", ".."]
                .iter()
                .map(PathBuf::from)
                .collect();
        assert_eq!(
            output_names(&files),
            [
                "cat_gradcam.png",
                "cat-2_gradcam.png",
                "Cat-3_gradcam.png",
                "cat-2-2_gradcam.png",
                "dog.1_gradcam.png",
                "image_gradcam.png"
            ]
        );
    }
}
