//! The fine-tuning network: the conv base (VGG16, or any base of our weights format) cut in two
//! at the unfreeze layer, then
//! Flatten -> Dense(256, relu) (-> Dropout) -> Dense(1 | N).
//!
//! Freezing is structural, not a flag on shared variables:
//! - the *trunk* (every layer below `--unfreeze-from`) keeps the weights' own `VarStore`, frozen
//!   (`requires_grad` off) and always run under `no_grad`, so no graph is built through it and
//!   no optimizer ever sees its tensors. Its output for a given image never changes, which is what
//!   lets the cached-trunk mode read it from the feature cache instead;
//! - the *top* (the unfreeze layer up to `block5_pool`) runs on copies of those conv variables,
//!   named as in the base (`features.24.weight`), held with the head (`head.fc1.*`, `head.fc2.*`)
//!   in a second `VarStore`: the only tensors given to the optimizers.
//!
//! In the head phase the top is frozen too (run under `no_grad`, not given to an optimizer).

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use models::{ConvArch, Layer, LayerKind, LoadedWeights, Padding, Preprocessing, ToLayer};
use serde::{Deserialize, Serialize};
use tch::{Device, Tensor, nn};
use training::{DenseHead, HeadSpec, tensors_io};

/// Which part trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// The whole base frozen, only the head trains (the seed's 30 epochs before fine-tuning).
    Head,
    /// The top of the base and the head train together.
    FineTune,
}

enum TopLayer {
    Conv { weight: Tensor, bias: Tensor, kernel: i64, padding: Padding },
    Pool,
}

/// Base + head, cut at the unfreeze layer.
pub struct Net {
    base: LoadedWeights,
    preprocessing: Preprocessing,
    trunk_until: Option<Layer>,
    top: Vec<TopLayer>,
    /// Trainable variables: the top's convs and the head.
    vs: nn::VarStore,
    head: DenseHead,
    device: Device,
}

/// The last frozen layer when fine-tuning from `unfreeze_from` (`None`: nothing is frozen).
pub fn trunk_layer(arch: &ConvArch, unfreeze_from: Layer) -> Option<Layer> {
    arch.layers().take_while(|l| *l < unfreeze_from).last()
}

/// Width of the flattened output of the base's last layer (VGG16: `block5_pool`) for square
/// inputs of `size`.
pub fn head_input_width(arch: &ConvArch, size: i64) -> Result<i64> {
    let [c, h, w] = arch.output_shape(size, size, arch.last())?;
    Ok(c * h * w)
}

/// Gives every 4-D tensor channels-last strides (same values): oneDNN's fastest CPU layout.
fn to_channels_last(vars: impl IntoIterator<Item = Tensor>) -> Result<()> {
    for mut var in vars {
        if var.dim() == 4 {
            let nhwc = var.f_permute([0, 2, 3, 1])?.f_contiguous()?.f_permute([0, 3, 1, 2])?;
            tch::no_grad(|| var.set_data(&nhwc));
        }
    }
    Ok(())
}

impl Net {
    /// `base`: the loaded weights (frozen here). The head starts Glorot-initialised from the
    /// current libtorch seed; [`Net::load_head`] replaces it.
    pub fn new(
        mut base: LoadedWeights,
        preprocessing: Preprocessing,
        unfreeze_from: impl ToLayer,
        head: HeadSpec,
    ) -> Result<Self> {
        let arch = base.base.arch().clone();
        let unfreeze_from = unfreeze_from.to_layer(&arch)?;
        base.vs.freeze();
        let device = base.vs.device();
        let vs = nn::VarStore::new(device);
        let base_vars = base.vs.variables();
        let features = vs.root().sub("features");
        let mut top = Vec::new();
        for layer in arch.layers().filter(|l| *l >= unfreeze_from) {
            let spec = arch.spec(layer);
            top.push(match spec.kind {
                LayerKind::Conv { kernel, padding, .. } => {
                    let var = |what: &str| -> Result<Tensor> {
                        let name = format!("features.{}.{what}", spec.torch_index);
                        let src = base_vars
                            .get(&name)
                            .with_context(|| format!("the base has no variable {name}"))?;
                        Ok(features.sub(spec.torch_index).var_copy(what, src))
                    };
                    TopLayer::Conv { weight: var("weight")?, bias: var("bias")?, kernel, padding }
                }
                LayerKind::Pool => TopLayer::Pool,
            });
        }
        let head = DenseHead::new(&vs.root(), head);
        // The trunk's large feature maps run fastest channels-last on oneDNN; the top's small ones
        // (4x4 at 64x64 input, 9x9 at 150x150) as plain NCHW: measured 50 vs 63 ms per training
        // step of block5 at 4x4, batch 20, and no worse at 9x9.
        if device == Device::Cpu {
            to_channels_last(base.vs.variables().into_values())?;
        }
        Ok(Self {
            base,
            preprocessing,
            trunk_until: trunk_layer(&arch, unfreeze_from),
            top,
            vs,
            head,
            device,
        })
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// batch: uint8 `[N, H, W, 3]` RGB on the device -> the trunk's output `[N, C, H', W']`
    /// (preprocessed input when there is no trunk). No gradients.
    pub fn trunk(&self, batch: &Tensor) -> Result<Tensor> {
        tch::no_grad(|| {
            let xs = models::preprocess(batch, self.preprocessing)?;
            Ok(match self.trunk_until {
                Some(layer) => self.base.base.forward_to(&xs, layer)?,
                None => xs,
            })
        })
    }

    /// xs: the trunk's output `[N, C, H, W]` -> logits `[N, 1 | classes]`. Keras flattens
    /// channels-last, so the top's `[N, 512, h, w]` is flattened as `[N, h, w, 512]`: a head
    /// trained by `train-head` on cached (channels-last) features fits as it is.
    pub fn forward(&self, xs: &Tensor, phase: Phase, train: bool) -> Result<Tensor> {
        let run_top = || -> Result<Tensor> {
            let mut ys = xs.f_contiguous()?;
            for layer in &self.top {
                ys = match layer {
                    TopLayer::Conv { weight, bias, kernel, padding } => {
                        models::run_conv(&ys, weight, Some(bias), *kernel, *padding)?
                    }
                    TopLayer::Pool => models::run_pool(&ys)?,
                };
            }
            Ok(ys)
        };
        let ys = match phase {
            Phase::Head => tch::no_grad(run_top)?,
            Phase::FineTune => run_top()?,
        };
        Ok(self.head.forward_t(&ys.f_permute([0, 2, 3, 1])?, train)?)
    }

    /// Makes the top trainable in the fine-tuning phase and frozen in the head phase.
    pub fn set_phase(&self, phase: Phase) {
        for (_, var) in self.top_params() {
            let _ = var.set_requires_grad(phase == Phase::FineTune);
        }
    }

    /// The top's conv variables, by name.
    pub fn top_params(&self) -> Vec<(String, Tensor)> {
        tensors_io::named_variables(&self.vs)
            .into_iter()
            .filter(|(n, _)| n.starts_with("features."))
            .collect()
    }

    /// The head's variables, by name.
    pub fn head_params(&self) -> Vec<(String, Tensor)> {
        tensors_io::named_variables(&self.vs)
            .into_iter()
            .filter(|(n, _)| n.starts_with("head."))
            .collect()
    }

    /// Everything that trains (top and head): what a checkpoint holds besides optimizer state.
    pub fn trainable(&self) -> Vec<(String, Tensor)> {
        tensors_io::named_variables(&self.vs)
    }

    /// Copies named tensors into the trainable variables; with `only` set, just those whose
    /// names start with it, else all of them. Every selected variable must be in `tensors` with
    /// its shape; `path` names the file they came from.
    pub fn load_trainable(
        &self,
        tensors: &[(String, Tensor)],
        only: Option<&str>,
        path: &Path,
    ) -> Result<()> {
        let by_name: HashMap<&str, &Tensor> =
            tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
        for (name, var) in self.trainable() {
            if only.is_some_and(|prefix| !name.starts_with(prefix)) {
                continue;
            }
            let Some(src) = by_name.get(name.as_str()) else {
                bail!("{}: missing tensor {name}", path.display());
            };
            if src.size() != var.size() {
                bail!(
                    "{}: tensor {name} has shape {:?}, the model needs {:?}",
                    path.display(),
                    src.size(),
                    var.size()
                );
            }
            tch::no_grad(|| var.shallow_clone().f_copy_(src))?;
        }
        Ok(())
    }

    /// The whole model, sorted by name: the frozen base layers, the top and the head.
    pub fn export(&self) -> Vec<(String, Tensor)> {
        let trained = self.trainable();
        let mut all: Vec<(String, Tensor)> = tensors_io::named_variables(&self.base.vs)
            .into_iter()
            .filter(|(n, _)| !trained.iter().any(|(t, _)| t == n))
            .chain(trained.iter().map(|(n, t)| (n.clone(), t.shallow_clone())))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// The frozen base's variables.
    #[cfg(test)]
    pub fn frozen(&self) -> Vec<(String, Tensor)> {
        tensors_io::named_variables(&self.base.vs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use training::{Optimizer, OptimizerSpec};

    /// libtorch's generator is global: tests that draw from it hold this lock.
    static TORCH_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn layer(name: &str) -> models::Vgg16Layer {
        name.parse().unwrap()
    }

    #[test]
    fn trunk_ends_below_the_unfreeze_layer() {
        let vgg = ConvArch::vgg16();
        let check = |from: &str, expect: Option<&str>| {
            assert_eq!(
                trunk_layer(&vgg, vgg.layer(from).unwrap()).map(|l| vgg.name_of(l)),
                expect,
                "{from}"
            )
        };
        check("block5_conv1", Some("block4_pool"));
        check("features.24", Some("block4_pool"));
        check("block5_conv3", Some("block5_conv2"));
        check("block4_pool", Some("block4_conv3"));
        check("block1_conv1", None);
        assert_eq!(head_input_width(&vgg, 150).unwrap(), 4 * 4 * 512);
        assert_eq!(head_input_width(&vgg, 32).unwrap(), 512);
        assert!(head_input_width(&vgg, 31).is_err());
    }

    /// Random VGG16 weights as a weights file, loaded the way the binary loads them.
    fn random_base(dir: &Path) -> LoadedWeights {
        let vs = nn::VarStore::new(Device::Cpu);
        let _ = models::Vgg16Base::new(&vs.root());
        let path = dir.join("w.safetensors");
        let provenance = models::weights::Provenance {
            preprocessing: Preprocessing::Rescale,
            source: "test".into(),
            source_sha256: "0".repeat(64),
            source_format: "tch".into(),
        };
        models::weights::save_weights(&path, &tensors_io::named_variables(&vs), &provenance)
            .unwrap();
        models::load_weights(&path, Device::Cpu).unwrap()
    }

    fn snapshot(vars: &[(String, Tensor)]) -> Vec<(String, Tensor)> {
        vars.iter().map(|(n, t)| (n.clone(), t.copy())).collect()
    }

    /// Trains a few steps in `phase` with the optimizer the binary builds; returns the frozen
    /// base and the trainable variables before and after.
    fn steps(net: &Net, phase: Phase) -> [Vec<(String, Tensor)>; 4] {
        net.set_phase(phase);
        let params = match phase {
            Phase::Head => net.head_params(),
            Phase::FineTune => net.trainable(),
        };
        let mut opt = Optimizer::new(OptimizerSpec::rmsprop(1e-3), params);
        let (frozen0, trainable0) = (snapshot(&net.frozen()), snapshot(&net.trainable()));
        let batch = (Tensor::rand([4, 32, 32, 3], (tch::Kind::Float, Device::Cpu)) * 255.0)
            .to_kind(tch::Kind::Uint8);
        let labels = Tensor::from_slice(&[0i64, 1, 0, 1]);
        for _ in 0..2 {
            let xs = net.trunk(&batch).unwrap();
            assert!(!xs.requires_grad(), "the trunk must not build a graph");
            opt.zero_grad();
            let loss =
                training::head::loss(&net.forward(&xs, phase, true).unwrap(), &labels).unwrap();
            loss.backward();
            opt.step();
        }
        [frozen0, snapshot(&net.frozen()), trainable0, snapshot(&net.trainable())]
    }

    fn check_same(
        before: &[(String, Tensor)],
        after: &[(String, Tensor)],
        same: impl Fn(&str) -> bool,
    ) {
        assert_eq!(before.len(), after.len());
        for ((name, b), (_, a)) in before.iter().zip(after) {
            if same(name) {
                assert!(b.equal(a), "{name} must be bit-identical");
            } else {
                assert!(!b.equal(a), "{name} must have changed");
            }
        }
    }

    #[test]
    fn frozen_layers_are_bit_identical_after_steps_and_trainable_ones_move() {
        let _guard = TORCH_RNG.lock().unwrap_or_else(|p| p.into_inner());
        tch::manual_seed(3);
        let dir = tempfile::tempdir().unwrap();
        let net = Net::new(
            random_base(dir.path()),
            Preprocessing::Rescale,
            layer("block5_conv2"),
            HeadSpec::seed(512, 2),
        )
        .unwrap();
        let names: Vec<String> = net.trainable().into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            [
                "features.26.bias",
                "features.26.weight",
                "features.28.bias",
                "features.28.weight",
                "head.fc1.bias",
                "head.fc1.weight",
                "head.fc2.bias",
                "head.fc2.weight"
            ]
        );
        assert_eq!(net.export().len(), 26 + 4);

        // Head phase: the whole base, top included, stays put.
        let [f0, f1, t0, t1] = steps(&net, Phase::Head);
        check_same(&f0, &f1, |_| true);
        check_same(&t0, &t1, |n| n.starts_with("features."));
        // Fine-tuning: the frozen store (which still holds the original block5 values) stays
        // put; the top and the head move.
        let [f0, f1, t0, t1] = steps(&net, Phase::FineTune);
        check_same(&f0, &f1, |_| true);
        check_same(&t0, &t1, |_| false);
        // The export takes block5_conv2 and up from the trained copies, the rest from the base.
        let export: HashMap<String, Tensor> = net.export().into_iter().collect();
        assert!(
            export["features.24.weight"]
                .equal(&f1.iter().find(|(n, _)| n == "features.24.weight").unwrap().1)
        );
        assert!(
            export["features.26.weight"]
                .equal(&t1.iter().find(|(n, _)| n == "features.26.weight").unwrap().1)
        );
    }
}
