//! The VGG16 conv base as a tch module (`ConvBase::with_arch(path, ConvArch::vgg16())`): output
//! shapes, variable names, parameter count, and clear errors for inputs it cannot run on. Random
//! weights from a fixed seed; CPU only.

use expect_test::expect;
use models::{ConvArch, ConvBase, parameter_count};
use tch::{Device, Kind, Tensor, nn};

fn base() -> (nn::VarStore, ConvBase) {
    tch::manual_seed(0);
    let vs = nn::VarStore::new(Device::Cpu);
    let base = ConvBase::with_arch(&vs.root(), ConvArch::vgg16());
    (vs, base)
}

fn check_forward(n: i64, h: i64, w: i64, layer: &str, expect: &[i64]) {
    let (_vs, base) = base();
    let xs = Tensor::randn([n, 3, h, w], (Kind::Float, Device::Cpu));
    let ys = tch::no_grad(|| base.forward_to(&xs, layer)).unwrap();
    assert_eq!(ys.size(), expect, "{n}x3x{h}x{w} to {layer}");
}

#[test]
fn forward_shapes_match_keras() {
    check_forward(2, 150, 150, "block5_pool", &[2, 512, 4, 4]);
    check_forward(1, 64, 64, "block5_pool", &[1, 512, 2, 2]);
    check_forward(3, 32, 32, "block5_pool", &[3, 512, 1, 1]);
    check_forward(1, 64, 64, "features.23", &[1, 512, 4, 4]);
    check_forward(1, 40, 56, "block3_conv3", &[1, 256, 10, 14]);
}

#[test]
fn relu_is_fused_into_conv_layers() {
    let (_vs, base) = base();
    let xs = Tensor::randn([1, 3, 32, 32], (Kind::Float, Device::Cpu));
    let ys = tch::no_grad(|| base.forward_to(&xs, "block1_conv1")).unwrap();
    assert_eq!(ys.min().double_value(&[]), 0.0, "a ReLU output has no negatives and some zeros");
}

#[test]
fn parameter_count_is_keras_total() {
    let (vs, _base) = base();
    assert_eq!(parameter_count(&vs), 14_714_688);
}

#[test]
fn variable_names_and_shapes() {
    let (vs, _base) = base();
    let mut vars: Vec<(String, Vec<i64>)> =
        vs.variables().into_iter().map(|(name, t)| (name, t.size())).collect();
    let index = |name: &str| name.split('.').nth(1).and_then(|i| i.parse::<usize>().ok());
    vars.sort_by_key(|(name, _)| (index(name), name.clone()));
    let listing: String = vars.iter().map(|(name, shape)| format!("{name} {shape:?}\n")).collect();
    expect![[r#"
        features.0.bias [64]
        features.0.weight [64, 3, 3, 3]
        features.2.bias [64]
        features.2.weight [64, 64, 3, 3]
        features.5.bias [128]
        features.5.weight [128, 64, 3, 3]
        features.7.bias [128]
        features.7.weight [128, 128, 3, 3]
        features.10.bias [256]
        features.10.weight [256, 128, 3, 3]
        features.12.bias [256]
        features.12.weight [256, 256, 3, 3]
        features.14.bias [256]
        features.14.weight [256, 256, 3, 3]
        features.17.bias [512]
        features.17.weight [512, 256, 3, 3]
        features.19.bias [512]
        features.19.weight [512, 512, 3, 3]
        features.21.bias [512]
        features.21.weight [512, 512, 3, 3]
        features.24.bias [512]
        features.24.weight [512, 512, 3, 3]
        features.26.bias [512]
        features.26.weight [512, 512, 3, 3]
        features.28.bias [512]
        features.28.weight [512, 512, 3, 3]
    "#]]
    .assert_eq(&listing);
}

fn check_error(shape: &[i64], layer: &str, expect: &str) {
    let (_vs, base) = base();
    let xs = Tensor::zeros(shape, (Kind::Float, Device::Cpu));
    let err = base.forward_to(&xs, layer).unwrap_err().to_string();
    assert!(err.contains(expect), "{shape:?}: {err}");
}

#[test]
fn bad_inputs_are_errors_not_aborts() {
    check_error(&[0, 3, 150, 150], "block5_pool", "empty");
    check_error(&[1, 3, 31, 31], "block5_pool", "too small");
    check_error(&[2, 3, 16, 64], "features.30", "16x64");
    check_error(&[1, 1, 64, 64], "block5_pool", "[1, 1, 64, 64]");
    check_error(&[3, 64, 64], "block5_pool", "[3, 64, 64]");
    check_error(
        &[1, 3, 64, 64],
        "block6_conv1",
        "unknown VGG16 layer \"block6_conv1\": expected a Keras name (block1_conv1 .. block5_pool) or a torchvision index (features.0 .. features.30)",
    );
    check_error(&[1, 3, 64, 64], "features.31", "unknown VGG16 layer \"features.31\"");
}

#[test]
fn wrong_dtype_is_an_error_not_an_abort() {
    let (_vs, base) = base();
    let xs = Tensor::zeros([1, 3, 32, 32], (Kind::Int64, Device::Cpu));
    assert!(base.forward(&xs).is_err());
}

/// `forward_layers`: one pass keeps every named layer, and continuing from a lower layer's
/// output gives the direct pass's values exactly; inputs it cannot continue from are errors.
#[test]
fn forward_layers_keeps_several_and_continues_from_a_lower_one() {
    let (_vs, base) = base();
    let layer = |name: &str| base.layer(name).unwrap();
    tch::manual_seed(5);
    let xs = Tensor::rand([2, 3, 32, 32], (Kind::Float, Device::Cpu)) * 100.0;
    let (b3, b4, b5) = (layer("block3_pool"), layer("block4_pool"), layer("block5_pool"));
    let kept = tch::no_grad(|| base.forward_layers(&xs, None, &[b5, b3])).unwrap();
    assert_eq!(kept[0].size(), [2, 512, 1, 1]);
    assert_eq!(kept[1].size(), [2, 256, 4, 4]);
    let direct = tch::no_grad(|| base.forward_to(&xs, b5)).unwrap();
    assert!(kept[0].equal(&direct), "kept block5_pool differs from forward_to");
    let continued = tch::no_grad(|| base.forward_layers(&kept[1], Some(b3), &[b4, b5])).unwrap();
    assert!(continued[1].equal(&direct), "block5_pool continued from block3_pool differs");

    let err = |xs: &Tensor, after, keep: &[models::Layer]| {
        base.forward_layers(xs, after, keep).unwrap_err().to_string()
    };
    assert!(
        err(&kept[1], Some(b4), &[b5]).contains("expected [N, 512, H, W]"),
        "block3_pool output is not block4_pool's"
    );
    assert!(err(&kept[1], Some(b3), &[b3]).contains("block3_pool is not above block3_pool"));
    assert!(err(&xs, None, &[]).contains("no layer to keep"));
}
