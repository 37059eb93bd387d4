//! How RGB pixels become VGG16 input: the three preprocessing modes, recorded with every weights
//! file and applied here on the device, so the dataset crate never needs to know about them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::ModelError;

/// ImageNet channel means in BGR order on the 0-255 scale (Keras `preprocess_input`, mode caffe).
pub const CAFFE_MEAN_BGR: [f32; 3] = [103.939, 116.779, 123.68];
/// ImageNet RGB mean and standard deviation on the 0-1 scale (torchvision).
pub const TORCH_MEAN_RGB: [f32; 3] = [0.485, 0.456, 0.406];
pub const TORCH_STD_RGB: [f32; 3] = [0.229, 0.224, 0.225];

/// The preprocessing a set of weights was trained with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Preprocessing {
    /// Keras/Caffe lineage (Keras `VGG16` ImageNet weights): RGB to BGR, subtract the mean
    /// [103.939, 116.779, 123.68], 0-255 scale.
    Caffe,
    /// torchvision: divide by 255, subtract mean [0.485, 0.456, 0.406], divide by
    /// std [0.229, 0.224, 0.225].
    Torch,
    /// Divide by 255 only, what the seed's `ImageDataGenerator(rescale=1./255)` does; an explicit
    /// override, never recorded by an import unless asked for.
    Rescale,
}

impl Preprocessing {
    /// The name used in metadata, manifests and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Caffe => "caffe",
            Self::Torch => "torch",
            Self::Rescale => "rescale",
        }
    }
}

impl fmt::Display for Preprocessing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Preprocessing {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self, ModelError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "caffe" => Ok(Self::Caffe),
            "torch" => Ok(Self::Torch),
            "rescale" => Ok(Self::Rescale),
            _ => Err(ModelError::UnknownPreprocessing { given: s.to_owned() }),
        }
    }
}

/// Applies `mode` to a batch of RGB images on the batch's device, giving float32 `[N, 3, H, W]`.
///
/// batch: uint8 `[N, H, W, 3]` (what the dataset crate hands out), or a float kind
/// `[N, 3, H, W]` holding RGB on the 0-255 scale (e.g. augmented images; a float NHWC batch can
/// be passed as `xs.permute([0, 3, 1, 2])`).
///
/// The uint8 path returns a permuted view of an NHWC tensor (channels-last strides, no copy),
/// the layout oneDNN's fastest CPU convolutions want.
pub fn preprocess(batch: &Tensor, mode: Preprocessing) -> Result<Tensor, ModelError> {
    let shape = batch.size();
    let kind = batch.kind();
    let bad = || ModelError::BadBatch { kind: format!("{kind:?}"), shape: shape.clone() };
    // `channel_dim`: where RGB lives; `per_channel`: how a 3-vector broadcasts against the batch.
    let (channel_dim, per_channel, nhwc) = match (kind, &shape[..]) {
        (Kind::Uint8, [n, h, w, 3]) if *n > 0 && *h > 0 && *w > 0 => (3, vec![3], true),
        (Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16, [n, 3, h, w])
            if *n > 0 && *h > 0 && *w > 0 =>
        {
            (1, vec![1, 3, 1, 1], false)
        }
        _ => return Err(bad()),
    };
    let device = batch.device();
    let constant = |values: [f32; 3]| -> Result<Tensor, ModelError> {
        Ok(Tensor::from_slice(&values).f_to_device(device)?.f_view(per_channel.as_slice())?)
    };
    let xs = batch.f_to_kind(Kind::Float)?;
    let xs = match mode {
        Preprocessing::Caffe => xs.f_flip([channel_dim])?.f_sub(&constant(CAFFE_MEAN_BGR)?)?,
        Preprocessing::Torch => {
            let mean = constant(TORCH_MEAN_RGB.map(|m| m * 255.0))?;
            let std = constant(TORCH_STD_RGB.map(|s| s * 255.0))?;
            xs.f_sub(&mean)?.f_div(&std)?
        }
        Preprocessing::Rescale => xs.f_div_scalar(255.0)?,
    };
    Ok(if nhwc { xs.f_permute([0, 3, 1, 2])? } else { xs })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for mode in [Preprocessing::Caffe, Preprocessing::Torch, Preprocessing::Rescale] {
            assert_eq!(mode.to_string().parse::<Preprocessing>().unwrap(), mode);
            assert_eq!(serde_json::to_string(&mode).unwrap(), format!("\"{mode}\""));
            assert_eq!(
                <Preprocessing as clap::ValueEnum>::from_str(mode.name(), false).unwrap(),
                mode
            );
        }
        assert_eq!(" Caffe".parse::<Preprocessing>().unwrap(), Preprocessing::Caffe);
        let err = "imagenet".parse::<Preprocessing>().unwrap_err().to_string();
        assert_eq!(err, r#"unknown preprocessing "imagenet": expected caffe, torch or rescale"#);
    }

    /// One pixel (r, g, b) through `mode`, both input layouts, must give `expect` (channel order
    /// of the output).
    fn check(rgb: [u8; 3], mode: Preprocessing, expect: [f32; 3]) {
        let u8_batch = Tensor::from_slice(&rgb).view([1, 1, 1, 3]);
        let float_batch = Tensor::from_slice(&rgb.map(f32::from)).view([1, 3, 1, 1]);
        for batch in [u8_batch, float_batch] {
            let ys = preprocess(&batch, mode).unwrap();
            assert_eq!(ys.size(), [1, 3, 1, 1]);
            assert_eq!(ys.kind(), Kind::Float);
            let got = Vec::<f32>::try_from(ys.flatten(0, -1)).unwrap();
            for (g, e) in got.iter().zip(expect) {
                assert!(
                    (g - e).abs() <= 1e-5 * e.abs().max(1.0),
                    "{mode} {rgb:?}: got {got:?}, expected {expect:?}"
                );
            }
        }
    }

    #[test]
    fn caffe_is_bgr_minus_mean() {
        check([0, 0, 0], Preprocessing::Caffe, [-103.939, -116.779, -123.68]);
        check(
            [10, 20, 255],
            Preprocessing::Caffe,
            [255.0 - 103.939, 20.0 - 116.779, 10.0 - 123.68],
        );
    }

    #[test]
    fn torch_is_mean_std_on_unit_scale() {
        check(
            [255, 0, 128],
            Preprocessing::Torch,
            [(1.0 - 0.485) / 0.229, (0.0 - 0.456) / 0.224, (128.0 / 255.0 - 0.406) / 0.225],
        );
    }

    #[test]
    fn rescale_divides_only() {
        check([255, 51, 0], Preprocessing::Rescale, [1.0, 0.2, 0.0]);
    }

    #[test]
    fn u8_output_is_a_channels_last_view() {
        let batch = Tensor::zeros([2, 4, 5, 3], (Kind::Uint8, tch::Device::Cpu));
        let ys = preprocess(&batch, Preprocessing::Caffe).unwrap();
        assert_eq!(ys.size(), [2, 3, 4, 5]);
        assert_eq!(ys.stride(), [60, 1, 15, 3]);
    }

    #[test]
    fn bad_batches_are_named() {
        let check_err = |t: Tensor, expect: &str| {
            let err = preprocess(&t, Preprocessing::Torch).unwrap_err().to_string();
            assert_eq!(err, expect);
        };
        let opts = |k| (k, tch::Device::Cpu);
        check_err(
            Tensor::zeros([2, 3, 8, 8], opts(Kind::Uint8)),
            "cannot preprocess a Uint8 batch of shape [2, 3, 8, 8]: expected uint8 [N, H, W, 3] or float [N, 3, H, W]",
        );
        check_err(
            Tensor::zeros([2, 8, 8, 3], opts(Kind::Float)),
            "cannot preprocess a Float batch of shape [2, 8, 8, 3]: expected uint8 [N, H, W, 3] or float [N, 3, H, W]",
        );
        check_err(
            Tensor::zeros([0, 8, 8, 3], opts(Kind::Uint8)),
            "cannot preprocess a Uint8 batch of shape [0, 8, 8, 3]: expected uint8 [N, H, W, 3] or float [N, 3, H, W]",
        );
        check_err(
            Tensor::zeros([8, 8, 3], opts(Kind::Uint8)),
            "cannot preprocess a Uint8 batch of shape [8, 8, 3]: expected uint8 [N, H, W, 3] or float [N, 3, H, W]",
        );
    }
}
