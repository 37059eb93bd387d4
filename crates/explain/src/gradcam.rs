//! Grad-CAM (Selvaraju et al. 2017, "Grad-CAM: Visual Explanations from Deep Networks via
//! Gradient-based Localization", eq. 1-2), as Chollet's *Deep Learning with Python* 5.4.3 draws
//! class activation heatmaps: where in the image the evidence for a class lies, seen from the
//! output feature map of a convolution layer (the last one at or before the model's cut).
//!
//! For a class `c` with score `y` and the layer's activation `A` (`[C, h, w]`):
//! - channel weights `alpha_k = mean_{i,j} d y / d A_k[i, j]` (gradients averaged over the
//!   spatial positions, eq. 1; Chollet's `pooled_grads = K.mean(grads, axis=(0, 1, 2))`);
//! - heatmap `L = ReLU(sum_k alpha_k A_k)` (eq. 2; Chollet averages over channels instead of
//!   summing, the same map up to a constant factor), then divided by its maximum so it lies in
//!   `[0, 1]` (Chollet: `heatmap /= np.max(heatmap)`). A map that is zero everywhere (no
//!   position has positive evidence) stays zero instead of dividing by zero, and says so
//!   ([`GradCam::all_zero`]).
//!
//! **Score**: `y` is the class's pre-sigmoid / pre-softmax logit, as in Selvaraju et al. (not
//! the softmax output Chollet's 5.4.3 differentiates, whose gradient vanishes once the model is
//! confident). For the two-class head, one sigmoid logit `z` (probability of class 1), the score
//! of class 1 is `z` and that of class 0 is `-z` (`sigmoid(-z)` is class 0's probability); for
//! `N` classes it is the class's softmax logit.

use anyhow::{Context, Result, bail, ensure};
use models::head::probabilities;
use models::{Classifier, Layer};
use tch::{Device, Kind, Tensor};

/// The Grad-CAM of one image.
#[derive(Debug)]
pub struct GradCam {
    /// `[h, w]` float32 on the CPU, in `[0, 1]` (the maximum is 1 unless [`GradCam::all_zero`]):
    /// the layer's spatial grid, row 0 at the top.
    pub heatmap: Tensor,
    /// The class explained (index into the header's `class_names`).
    pub class: usize,
    /// The class the model predicts (the most probable; the lowest index on ties, as predict).
    pub predicted: usize,
    /// `[classes]` probabilities of the image, class-index order (those of
    /// `Classifier::predict_proba`, from the same forward pass).
    pub probabilities: Vec<f32>,
    /// True when `ReLU(sum_k alpha_k A_k)` is zero everywhere: nothing to normalise, the heatmap
    /// is all zeros.
    pub all_zero: bool,
}

/// The Grad-CAM score of `class` for each row of `logits` `[N, 1 | classes]`: `[N]`, the
/// class's logit (`z` for class 1 and `-z` for class 0 of a single sigmoid logit; see the module
/// docs). Errors: a class index the logits do not have.
pub fn class_score(logits: &Tensor, class: usize) -> Result<Tensor> {
    let outputs = logits.size()[1];
    if outputs == 1 {
        ensure!(class < 2, "class index {class} for a two-class (sigmoid) model");
        let z = logits.f_select(1, 0)?;
        Ok(if class == 1 { z } else { z.f_neg()? })
    } else {
        ensure!((class as i64) < outputs, "class index {class} for a model of {outputs} classes");
        Ok(logits.f_select(1, class as i64)?)
    }
}

/// Selvaraju et al.'s eq. 1-2 on one image: activation and gradient `[C, h, w]` (any device) ->
/// `(heatmap [h, w] float32 on the CPU in [0, 1], all_zero)`: `ReLU(sum_k mean_{ij}(grad_k) *
/// A_k)` divided by its maximum, or all zeros (and `true`) when that maximum is 0.
pub fn heatmap_from_gradients(activation: &Tensor, gradient: &Tensor) -> Result<(Tensor, bool)> {
    let (a, g) = (activation.size(), gradient.size());
    ensure!(a.len() == 3 && a == g, "activation {a:?} and gradient {g:?} must both be [C, h, w]");
    let activation = activation.f_to_kind(Kind::Float)?;
    let weights =
        gradient.f_to_kind(Kind::Float)?.f_mean_dim([1i64, 2].as_slice(), true, Kind::Float)?;
    let cam = (activation * weights).f_sum_dim_intlist(0, false, Kind::Float)?.f_relu()?;
    let cam = cam.f_to_device(Device::Cpu)?;
    let max = f32::try_from(cam.f_max()?)?;
    ensure!(max.is_finite(), "the heatmap holds a non-finite value");
    if max > 0.0 { Ok((cam.f_div_scalar(f64::from(max))?, false)) } else { Ok((cam, true)) }
}

/// Grad-CAM of one image at `layer` (a base layer at or before the cut; Chollet's choice is
/// `Classifier::last_conv_layer`, `block5_conv3` for VGG16 cut at `block5_pool`).
///
/// `image`: RGB uint8 `[H, W, 3]` at the header's input size, as the dataset crate decodes it
/// (any device; moved to the model's). `class`: the class to explain, `None` for the predicted
/// one. One forward pass keeps the layer's activation as a gradient leaf
/// (`Classifier::forward_keeping`, so a layer in the frozen trunk works too), one backward pass
/// of the class's score (see the module docs) gives `d score / d A`, and
/// [`heatmap_from_gradients`] the map `[h, w]`.
pub fn grad_cam(
    model: &Classifier,
    image: &Tensor,
    layer: Layer,
    class: Option<usize>,
) -> Result<GradCam> {
    let shape = image.size();
    if image.kind() != Kind::Uint8 || shape.len() != 3 || shape[2] != 3 {
        bail!("expected an RGB uint8 image [H, W, 3], got {:?} {shape:?}", image.kind());
    }
    let pixels = image.f_unsqueeze(0)?.f_to_device(model.device())?;
    let (activation, logits) = model.forward_keeping(&pixels, layer)?;
    let probabilities: Vec<f32> =
        Vec::try_from(probabilities(&logits.f_detach()?)?.f_to_device(Device::Cpu)?.f_view([-1])?)
            .context("reading the probabilities")?;
    let predicted = predict::argmax(&probabilities);
    let class = class.unwrap_or(predicted);
    ensure!(
        class < probabilities.len(),
        "class index {class} for a model of {} classes",
        probabilities.len()
    );
    let score = class_score(&logits, class)?.f_sum(Kind::Float)?;
    let gradient = Tensor::f_run_backward(&[&score], &[&activation], false, false)?
        .pop()
        .context("no gradient for the activation")?;
    let (heatmap, all_zero) =
        heatmap_from_gradients(&activation.f_detach()?.f_select(0, 0)?, &gradient.f_select(0, 0)?)?;
    Ok(GradCam { heatmap, class, predicted, probabilities, all_zero })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heatmap_is_the_relu_of_gradient_weighted_channels_over_its_maximum() {
        // Two channels on a 1x3 grid: weights (mean gradients) 1 and -0.5.
        let a = Tensor::from_slice(&[1.0f32, 2.0, 0.0, 4.0, 0.0, 0.0]).view([2, 1, 3]);
        let g = Tensor::from_slice(&[0.0f32, 3.0, 0.0, -0.5, -1.0, 0.0]).view([2, 1, 3]);
        // sum: [1 - 2, 2 - 0, 0 - 0] = [-1, 2, 0] -> ReLU [0, 2, 0] -> / 2.
        let (map, all_zero) = heatmap_from_gradients(&a, &g).unwrap();
        assert!(!all_zero);
        assert_eq!(map.size(), [1, 3]);
        assert_eq!(Vec::<f32>::try_from(map.view([-1])).unwrap(), [0.0, 1.0, 0.0]);
        // No positive evidence anywhere: zeros, said so.
        let (map, all_zero) = heatmap_from_gradients(&a, &(-&g.abs() - 1.0)).unwrap();
        assert!(all_zero);
        assert_eq!(Vec::<f32>::try_from(map.view([-1])).unwrap(), [0.0; 3]);
    }

    #[test]
    fn scores_of_the_sigmoid_head_are_z_and_minus_z() {
        let z = Tensor::from_slice(&[1.5f32, -2.0]).view([2, 1]);
        assert_eq!(Vec::<f32>::try_from(class_score(&z, 1).unwrap()).unwrap(), [1.5, -2.0]);
        assert_eq!(Vec::<f32>::try_from(class_score(&z, 0).unwrap()).unwrap(), [-1.5, 2.0]);
        assert!(class_score(&z, 2).is_err());
        let logits = Tensor::from_slice(&[1.0f32, 2.0, 3.0]).view([1, 3]);
        assert_eq!(Vec::<f32>::try_from(class_score(&logits, 2).unwrap()).unwrap(), [3.0]);
        assert!(class_score(&logits, 3).is_err());
    }
}
