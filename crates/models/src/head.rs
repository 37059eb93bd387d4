//! The dense classifier head of the seed (Chollet 5.3.1): Flatten -> Dense(256, relu) ->
//! Dropout(0.5) -> Dense(1) for two classes (sigmoid) or Dense(N) for N classes (softmax).
//!
//! Initialised like Keras `Dense` (Glorot-uniform kernels, zero biases) so runs compare with the
//! book's. Variables: `head.fc1.{weight,bias}`, `head.fc2.{weight,bias}` under the given path.
//! The head returns logits; [`probabilities`] and [`predicted_classes`] turn them into what
//! Keras' `model.predict` and an arg-max give.

use serde::{Deserialize, Serialize};
use tch::nn::{self, Init, LinearConfig};
use tch::{Kind, Tensor};

use crate::ModelError;

/// The head's shape: what it takes and what it predicts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadSpec {
    /// Flattened input width (e.g. 4 * 4 * 512 = 8192 for block5_pool at 150x150).
    pub input_width: i64,
    pub hidden: i64,
    /// Dropout rate after the hidden layer (0 disables it).
    pub dropout: f64,
    pub classes: usize,
}

impl HeadSpec {
    /// The seed's head: 256 hidden units, dropout 0.5.
    pub fn seed(input_width: i64, classes: usize) -> Self {
        Self { input_width, hidden: 256, dropout: 0.5, classes }
    }

    /// Output units: 1 (sigmoid) for two classes, else one per class (softmax).
    pub fn outputs(&self) -> i64 {
        if self.classes == 2 { 1 } else { self.classes as i64 }
    }
}

/// Flatten + two dense layers.
#[derive(Debug)]
pub struct DenseHead {
    spec: HeadSpec,
    fc1: nn::Linear,
    fc2: nn::Linear,
}

fn glorot(fan_in: i64, fan_out: i64) -> LinearConfig {
    let limit = (6.0 / (fan_in + fan_out) as f64).sqrt();
    LinearConfig {
        ws_init: Init::Uniform { lo: -limit, up: limit },
        bs_init: Some(Init::Const(0.0)),
        bias: true,
    }
}

impl DenseHead {
    /// A fresh head under `path / "head"`, drawn from the current libtorch seed.
    pub fn new(path: &nn::Path, spec: HeadSpec) -> Self {
        let head = path / "head";
        let fc1 = nn::linear(
            &head / "fc1",
            spec.input_width,
            spec.hidden,
            glorot(spec.input_width, spec.hidden),
        );
        let fc2 = nn::linear(
            &head / "fc2",
            spec.hidden,
            spec.outputs(),
            glorot(spec.hidden, spec.outputs()),
        );
        Self { spec, fc1, fc2 }
    }

    pub fn spec(&self) -> &HeadSpec {
        &self.spec
    }

    /// Checks that features of `shape` `[N, ...]` fit this head, before any training starts.
    pub fn check_input(&self, shape: &[i64]) -> Result<(), ModelError> {
        let width: i64 = shape.iter().skip(1).product();
        if shape.is_empty() || width != self.spec.input_width {
            return Err(ModelError::WidthMismatch {
                expected: self.spec.input_width,
                actual: width,
                shape: shape.to_vec(),
            });
        }
        Ok(())
    }

    /// xs: `[N, ...]` features -> `[N, outputs]` logits (no sigmoid/softmax). `train` turns
    /// dropout on.
    pub fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor, ModelError> {
        let xs = xs.f_flatten(1, -1)?;
        let hidden = xs.f_linear(&self.fc1.ws, self.fc1.bs.as_ref())?.f_relu()?;
        let hidden = if self.spec.dropout > 0.0 {
            hidden.f_dropout(self.spec.dropout, train)?
        } else {
            hidden
        };
        Ok(hidden.f_linear(&self.fc2.ws, self.fc2.bs.as_ref())?)
    }
}

/// Predicted class indices `[N]` (int64) from logits `[N, 1 | classes]`: the single logit above
/// 0 (sigmoid above 0.5) is class 1; otherwise the arg-max.
pub fn predicted_classes(logits: &Tensor) -> Result<Tensor, ModelError> {
    if logits.size()[1] == 1 {
        Ok(logits.f_squeeze_dim(1)?.f_gt(0.0)?.f_to_kind(Kind::Int64)?)
    } else {
        Ok(logits.f_argmax(1, false)?)
    }
}

/// Class probabilities `[N, classes]` (float32, rows sum to 1) from logits `[N, 1 | classes]`:
/// `[1 - sigmoid(z), sigmoid(z)]` for the single logit of two classes (Keras' sigmoid output, as
/// two columns), softmax otherwise.
pub fn probabilities(logits: &Tensor) -> Result<Tensor, ModelError> {
    let logits = logits.f_to_kind(Kind::Float)?;
    if logits.size()[1] == 1 {
        let p1 = logits.f_sigmoid()?;
        let p0 = p1.f_neg()?.f_add_scalar(1.0)?;
        Ok(Tensor::f_cat(&[p0, p1], 1)?)
    } else {
        Ok(logits.f_softmax(1, Kind::Float)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probabilities_agree_with_predicted_classes() {
        for outputs in [1, 3] {
            let logits = Tensor::randn([16, outputs], (Kind::Float, tch::Device::Cpu)) * 3.0;
            let p = probabilities(&logits).unwrap();
            assert_eq!(p.size(), [16, if outputs == 1 { 2 } else { 3 }]);
            let sums = Vec::<f32>::try_from(p.sum_dim_intlist(1, false, Kind::Float)).unwrap();
            assert!(sums.iter().all(|s| (s - 1.0).abs() < 1e-6), "{sums:?}");
            assert!(p.argmax(1, false).equal(&predicted_classes(&logits).unwrap()));
        }
    }
}
