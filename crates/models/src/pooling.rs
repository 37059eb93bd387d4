//! Global pooling after the layer cut, like Keras `VGG16(include_top=False, pooling=...)`. The
//! shape it gives for a layer and input size is [`crate::ConvArch::feature_shape`].

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::ModelError;

/// What happens to the feature map at the cut.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    // These comments are the possible values' `--help` text: shapes are what the feature files
    // hold (channels last, as Keras), not the NCHW tensors inside.
    /// Keep the whole map (Keras `pooling=None`): `[H, W, C]` per image, channels last.
    #[default]
    None,
    /// Global average over H and W (Keras `pooling='avg'`): `[C]` per image.
    Avg,
    /// Global maximum over H and W (Keras `pooling='max'`): `[C]` per image.
    Max,
}

impl Pooling {
    /// The name used in manifests and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Avg => "avg",
            Self::Max => "max",
        }
    }

    /// ys: `[N, C, H, W]` -> `[N, C, H, W]` (none) or `[N, C]` (avg, max), same kind and device.
    pub fn apply(self, ys: &Tensor) -> Result<Tensor, ModelError> {
        if ys.dim() != 4 {
            return Err(ModelError::BadInputShape {
                shape: ys.size(),
                expected: "[N, C, H, W]".into(),
            });
        }
        Ok(match self {
            Self::None => ys.shallow_clone(),
            Self::Avg => ys.f_mean_dim(&[2i64, 3][..], false, None)?,
            Self::Max => ys.f_amax(&[2i64, 3][..], false)?,
        })
    }
}

impl fmt::Display for Pooling {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Pooling {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self, ModelError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "none" => Ok(Self::None),
            "avg" => Ok(Self::Avg),
            "max" => Ok(Self::Max),
            _ => Err(ModelError::UnknownPooling { given: s.to_owned() }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    #[test]
    fn names_round_trip() {
        for p in [Pooling::None, Pooling::Avg, Pooling::Max] {
            assert_eq!(p.to_string().parse::<Pooling>().unwrap(), p);
            assert_eq!(serde_json::to_string(&p).unwrap(), format!("\"{p}\""));
        }
        assert_eq!(
            "average".parse::<Pooling>().unwrap_err().to_string(),
            r#"unknown pooling "average": expected none, avg or max"#
        );
    }

    fn check(pooling: Pooling, expect_shape: &[i64], expect: &[f32]) {
        // two images, two channels, 2x3 maps: values 0..24
        let ys = Tensor::arange(24, (Kind::Float, tch::Device::Cpu)).view([2, 2, 2, 3]);
        let got = pooling.apply(&ys).unwrap();
        assert_eq!(got.size(), expect_shape, "{pooling}");
        assert_eq!(Vec::<f32>::try_from(got.flatten(0, -1)).unwrap(), expect, "{pooling}");
    }

    #[test]
    fn global_pooling_over_height_and_width() {
        check(Pooling::Avg, &[2, 2], &[2.5, 8.5, 14.5, 20.5]);
        check(Pooling::Max, &[2, 2], &[5.0, 11.0, 17.0, 23.0]);
        check(Pooling::None, &[2, 2, 2, 3], &(0..24).map(|v| v as f32).collect::<Vec<_>>());
    }
}
