//! The classifier type and its model file: structural freezing (frozen layers bit-identical after
//! training steps, trainable ones moving), a model file that rebuilds the same network on its own,
//! and clear errors for files of another version or with a field missing. Random weights from a
//! fixed seed; CPU only.

use std::collections::BTreeMap;
use std::path::Path;

use models::classifier::{HEADER_KEY, ModelHeader, head_input_width};
use models::weights::{Provenance, save_conv_base};
use models::{Classifier, ConvArch, HeadSpec, Pooling, Preprocessing, tensor_file};
use tch::{Device, Kind, Tensor, nn};

/// libtorch's generator is global: tests that draw from it hold this lock.
static TORCH_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Random weights of `arch` as our weights file, loaded the way the stages load them.
fn random_base(dir: &Path, arch: &ConvArch) -> models::LoadedWeights {
    let vs = nn::VarStore::new(Device::Cpu);
    let _ = models::ConvBase::with_arch(&vs.root(), arch.clone());
    let path = dir.join("w.safetensors");
    let provenance = Provenance {
        preprocessing: Preprocessing::Rescale,
        source: "test".into(),
        source_sha256: "0".repeat(64),
        source_format: "tch".into(),
    };
    save_conv_base(&path, arch, &tensor_file::named_variables(&vs), &provenance).unwrap();
    models::load_weights(&path, Device::Cpu).unwrap()
}

fn header(arch: &ConvArch, cut: &str, pooling: Pooling, size: i64, classes: usize) -> ModelHeader {
    let width = head_input_width(arch, arch.layer(cut).unwrap(), pooling, size).unwrap();
    ModelHeader {
        format_version: models::MODEL_FORMAT_VERSION,
        architecture: arch.name().to_owned(),
        layers: arch.defs().to_vec(),
        cut: cut.to_owned(),
        pooling,
        head: HeadSpec::seed(width, classes),
        class_names: (0..classes).map(|c| format!("class{c}")).collect(),
        preprocessing: Preprocessing::Rescale,
        input_size: [size, size],
        resize: "nearest".into(),
        base_weights_sha256: "0".repeat(64),
        trained_on: BTreeMap::new(),
        stage: "test".into(),
    }
}

fn pixels(n: i64, size: i64) -> Tensor {
    (Tensor::rand([n, size, size, 3], (Kind::Float, Device::Cpu)) * 255.0).to_kind(Kind::Uint8)
}

fn snapshot(vars: &[(String, Tensor)]) -> Vec<(String, Tensor)> {
    vars.iter().map(|(n, t)| (n.clone(), t.copy())).collect()
}

/// Two RMSprop-free SGD steps (plain `p -= lr * grad`) on whatever requires a gradient.
fn sgd_steps(model: &Classifier, train_top: bool) {
    model.set_top_trainable(train_top);
    let labels = Tensor::from_slice(&[0i64, 1, 0, 1]);
    for _ in 0..2 {
        let xs = model.trunk(&pixels(4, 32)).unwrap();
        assert!(!xs.requires_grad(), "the trunk must not build a graph");
        let logits = model.forward_from_trunk(&xs, true, train_top).unwrap();
        let loss = logits.squeeze_dim(1).binary_cross_entropy_with_logits::<Tensor>(
            &labels.to_kind(Kind::Float),
            None,
            None,
            tch::Reduction::Mean,
        );
        loss.backward();
        tch::no_grad(|| {
            for (_, var) in model.trainable() {
                let grad = var.grad();
                if grad.defined() {
                    let _ = var.shallow_clone().g_sub_(&(grad * 0.1));
                    let _ = var.grad().zero_();
                }
            }
        });
    }
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
fn frozen_layers_stay_bit_identical_and_trainable_ones_move() {
    let _guard = TORCH_RNG.lock().unwrap_or_else(|p| p.into_inner());
    tch::manual_seed(3);
    let dir = tempfile::tempdir().unwrap();
    let arch = ConvArch::vgg16();
    let model = Classifier::on_base(
        random_base(dir.path(), &arch),
        header(&arch, "block5_pool", Pooling::None, 32, 2),
        Some("block5_conv2"),
    )
    .unwrap();
    let names: Vec<String> = model.trainable().into_iter().map(|(n, _)| n).collect();
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
    assert_eq!(model.variables().len(), 26 + 4);

    // Head only: the whole base, top included, stays put.
    let (f0, t0) = (snapshot(&model.frozen()), snapshot(&model.trainable()));
    sgd_steps(&model, false);
    check_same(&f0, &snapshot(&model.frozen()), |_| true);
    check_same(&t0, &snapshot(&model.trainable()), |n| n.starts_with("features."));
    // Top and head: the frozen store stays put; the top and the head move.
    let (f0, t0) = (snapshot(&model.frozen()), snapshot(&model.trainable()));
    sgd_steps(&model, true);
    check_same(&f0, &snapshot(&model.frozen()), |_| true);
    check_same(&t0, &snapshot(&model.trainable()), |_| false);
}

#[test]
fn a_model_file_rebuilds_the_same_classifier_on_its_own() {
    let _guard = TORCH_RNG.lock().unwrap_or_else(|p| p.into_inner());
    tch::manual_seed(5);
    let dir = tempfile::tempdir().unwrap();
    let xs = pixels(3, 48);
    // A head on block4_pool features with average pooling (train-head's case: every base
    // layer frozen), VGG16 and the small convnet (a base of its own layer list), and a model
    // trained from scratch.
    let vgg = ConvArch::vgg16();
    let small = ConvArch::small_convnet();
    let models = [
        Classifier::on_base(
            random_base(dir.path(), &vgg),
            header(&vgg, "block4_pool", Pooling::Avg, 48, 3),
            None::<&str>,
        )
        .unwrap(),
        Classifier::on_base(
            random_base(dir.path(), &small),
            header(&small, "max_pooling2d_2", Pooling::None, 48, 2),
            Some("conv2d_2"),
        )
        .unwrap(),
        Classifier::from_scratch(
            header(&small, "max_pooling2d_4", Pooling::None, 48, 2),
            Device::Cpu,
        )
        .unwrap(),
    ];
    for (i, model) in models.iter().enumerate() {
        let path = dir.path().join(format!("model{i}.safetensors"));
        let digest = model.save(&path).unwrap();
        assert_eq!(model.save(&path).unwrap(), digest, "same model, same bytes");
        std::fs::remove_file(dir.path().join("w.safetensors")).ok();
        let loaded = Classifier::load(&path, Device::Cpu, None::<&str>).unwrap();
        assert_eq!(loaded.header(), model.header());
        let p = model.predict_proba(&xs).unwrap();
        assert_eq!(p.size(), [3, model.header().class_names.len() as i64]);
        let q = loaded.predict_proba(&xs).unwrap();
        let diff = (&p - &q).abs().max().double_value(&[]);
        assert!(diff < 1e-6, "model {i}: loaded probabilities differ by {diff}");
        // Only the variables up to the cut are stored.
        let stored = tensor_file::load(&path).unwrap();
        assert_eq!(stored.tensors.len(), model.variables().len());
    }
}

#[test]
fn other_versions_and_missing_fields_are_refused_naming_the_file() {
    let _guard = TORCH_RNG.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let small = ConvArch::small_convnet();
    let model = Classifier::from_scratch(
        header(&small, "max_pooling2d_4", Pooling::None, 48, 2),
        Device::Cpu,
    )
    .unwrap();
    let path = dir.path().join("m.safetensors");
    let check = |edit: &dyn Fn(&mut serde_json::Value), expect: &str| {
        let mut value = serde_json::to_value(model.header()).unwrap();
        value["base_weights_sha256"] = "ab".repeat(32).into();
        edit(&mut value);
        let meta = BTreeMap::from([(HEADER_KEY.to_owned(), value.to_string())]);
        tensor_file::save(&path, &model.variables(), &meta).unwrap();
        let err = Classifier::load(&path, Device::Cpu, None::<&str>).unwrap_err().to_string();
        assert!(err.contains("m.safetensors") && err.contains(expect), "{expect}: {err}");
    };
    check(&|v| v["format_version"] = 2.into(), "format_version is 2");
    check(
        &|v| drop(v.as_object_mut().unwrap().remove("class_names")),
        "missing field `class_names`",
    );
    check(&|v| v["colour"] = "blue".into(), "unknown field `colour`");
    check(&|v| v["format_version"] = "1".into(), "format_version is \"1\"");
    // Fields that disagree with each other or with the tensors.
    check(&|v| v["class_names"] = serde_json::json!(["a", "b", "c"]), "class_names has 3 names");
    check(&|v| v["class_names"] = serde_json::json!(["a", "a"]), "repeats a name");
    check(&|v| v["class_names"] = serde_json::json!(["a", ""]), "not a folder name");
    check(&|v| v["class_names"] = serde_json::json!(["a", "../etc"]), "not a folder name");
    check(&|v| v["input_size"] = serde_json::json!([96, 96]), "head.input_width is");
    check(&|v| v["input_size"] = serde_json::json!([0, 0]), "input_size");
    check(&|v| v["cut"] = "conv2d_3".into(), "head.input_width is");
    check(&|v| v["head"]["dropout"] = 2.0.into(), "dropout 2");
    check(&|v| v["base_weights_sha256"] = "not-a-digest".into(), "not a sha256 digest");
    // Tensors: a non-finite value, or one that is no variable of the classifier.
    let header = {
        let mut h = model.header().clone();
        h.base_weights_sha256 = "ab".repeat(32);
        serde_json::to_string(&h).unwrap()
    };
    let meta = BTreeMap::from([(HEADER_KEY.to_owned(), header)]);
    let mut vars = model.variables();
    vars.push(("head.fc3.weight".into(), Tensor::zeros([2], (Kind::Float, Device::Cpu))));
    tensor_file::save(&path, &vars, &meta).unwrap();
    let err = Classifier::load(&path, Device::Cpu, None::<&str>).unwrap_err().to_string();
    assert!(err.contains("head.fc3.weight is not a variable"), "{err}");
    tensor_file::save(&path, &model.variables(), &meta).unwrap();
    let good = Classifier::load(&path, Device::Cpu, None::<&str>).unwrap();
    // A NaN written over the last float of the file (the writer itself refuses NaN).
    let mut bytes = std::fs::read(&path).unwrap();
    let n = bytes.len();
    bytes[n - 4..].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(&path, &bytes).unwrap();
    let err = Classifier::load(&path, Device::Cpu, None::<&str>).unwrap_err().to_string();
    assert!(err.contains("non-finite"), "{err}");
    // A file cut short (a copy or download that stopped): the tensors' bytes are missing.
    tensor_file::save(&path, &model.variables(), &meta).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();
    let err = Classifier::load(&path, Device::Cpu, None::<&str>).unwrap_err().to_string();
    assert!(err.contains("m.safetensors") && err.contains("truncated"), "{err}");
    // ... or one with bytes appended.
    std::fs::write(&path, [bytes.as_slice(), b"trailing"].concat()).unwrap();
    let err = Classifier::load(&path, Device::Cpu, None::<&str>).unwrap_err().to_string();
    assert!(err.contains("m.safetensors") && err.contains("appended"), "{err}");
    // Images of another size than the header's are refused, not silently classified.
    let err = good.predict_proba(&pixels(2, 64)).unwrap_err().to_string();
    assert!(err.contains("48x48"), "{err}");
    // A weights file (a conv base alone) is not a model file.
    let err = Classifier::load(
        &{
            let _ = random_base(dir.path(), &small);
            dir.path().join("w.safetensors")
        },
        Device::Cpu,
        None::<&str>,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("w.safetensors") && err.contains("not a model file"), "{err}");
}
