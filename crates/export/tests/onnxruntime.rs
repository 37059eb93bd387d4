//! `export --format onnx` against onnxruntime: tiny seeded classifiers (a narrow VGG16 cut at
//! several layers with every pooling and preprocessing, two and three classes; Chollet's small
//! convnet) are saved as model files, exported, and run by onnxruntime in the torch venv's Python
//! (`TRANSFER_KIT_PYTHON`; onnxruntime 1.30.0 pip-installed there when missing, the test skipped
//! with the reason printed when that is impossible) on 24 synthetic images each; the
//! probabilities must equal `Classifier::predict_proba` on the same images within 1e-5 relative
//! plus 1e-6 absolute. Without Python the graph's structure, metadata, determinism and the
//! refusals are still checked. CPU only.

mod support;

use std::collections::BTreeMap;
use std::path::Path;

use models::classifier::{HEADER_KEY, ModelHeader, head_input_width};
use models::weights::{Provenance, save_conv_base};
use models::{Classifier, ConvArch, HeadSpec, Pooling, Preprocessing, tensor_file};
use onnx_proto::{Message, ModelProto};
use tch::{Device, Kind, Tensor, nn};

/// libtorch's generator is global: tests that draw from it hold this lock, and so does every
/// export, since loading a model file builds its variables with (overwritten) random inits.
static TORCH_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// [`export::export_onnx`] holding [`TORCH_RNG`].
fn export_onnx(model: &Path, out: &Path) -> Result<export::Exported, export::ExportError> {
    let _guard = TORCH_RNG.lock().unwrap_or_else(|p| p.into_inner());
    export::export_onnx(model, out)
}

const IMAGES: usize = 24;

struct Case {
    arch: ConvArch,
    cut: &'static str,
    pooling: Pooling,
    preprocessing: Preprocessing,
    size: i64,
    classes: usize,
    seed: i64,
}

/// Random weights of `arch` as our weights file: He-normal kernels (std `sqrt(2 / fan_in)`, so
/// the activations keep their scale and their dependence on the image through every layer) and
/// small random biases.
fn random_base(dir: &Path, arch: &ConvArch) -> models::LoadedWeights {
    let vs = nn::VarStore::new(Device::Cpu);
    let _ = models::ConvBase::with_arch(&vs.root(), arch.clone());
    tch::no_grad(|| {
        for (name, var) in tensor_file::named_variables(&vs) {
            let fresh = if name.ends_with(".weight") {
                let fan_in: i64 = var.size()[1..].iter().product();
                var.randn_like() * (2.0 / fan_in as f64).sqrt()
            } else {
                var.randn_like() * 0.1
            };
            var.shallow_clone().copy_(&fresh);
        }
    });
    let path = dir.join("base.safetensors");
    let provenance = Provenance {
        preprocessing: Preprocessing::Rescale,
        source: "test".into(),
        source_sha256: "0".repeat(64),
        source_format: "tch".into(),
    };
    save_conv_base(&path, arch, &tensor_file::named_variables(&vs), &provenance).unwrap();
    models::load_weights(&path, Device::Cpu).unwrap()
}

fn header(case: &Case) -> ModelHeader {
    let arch = &case.arch;
    let cut = arch.layer(case.cut).unwrap();
    let width = head_input_width(arch, cut, case.pooling, case.size).unwrap();
    ModelHeader {
        format_version: models::MODEL_FORMAT_VERSION,
        architecture: arch.name().to_owned(),
        layers: arch.defs().to_vec(),
        cut: case.cut.to_owned(),
        pooling: case.pooling,
        head: HeadSpec { input_width: width, hidden: 16, dropout: 0.5, classes: case.classes },
        class_names: ["cats", "dogs", "horses"][..case.classes]
            .iter()
            .map(|c| c.to_string())
            .collect(),
        preprocessing: case.preprocessing,
        input_size: [case.size, case.size],
        resize: "nearest".into(),
        base_weights_sha256: "0".repeat(64),
        trained_on: BTreeMap::new(),
        stage: "test".into(),
    }
}

/// A seeded classifier of `case` saved as `dir/model.safetensors`, and fixed-seed RGB images
/// `[IMAGES, size, size, 3]` with `predict_proba` on them (the model file loaded afresh, as
/// predict does). Random conv and head biases, so a dropped bias would show; the last dense
/// layer scaled down when the logits' root mean square exceeds 1.5, so the probabilities do not
/// saturate at 0 and 1, where any two networks agree.
fn make_model(dir: &Path, case: &Case) -> (std::path::PathBuf, Vec<u8>, Vec<f32>) {
    let _guard = TORCH_RNG.lock().unwrap_or_else(|p| p.into_inner());
    tch::manual_seed(case.seed);
    let model =
        Classifier::on_base(random_base(dir, &case.arch), header(case), None::<&str>).unwrap();
    let (n, s) = (IMAGES as i64, case.size);
    // Each image its own smooth pattern (random 4x4 colours, bilinearly upsampled) plus noise,
    // so the images differ at every scale the base sees.
    let coarse = Tensor::rand([n, 3, 4, 4], (Kind::Float, Device::Cpu)) * 255.0;
    let smooth = coarse.upsample_bilinear2d([s, s], false, None, None);
    let noise = Tensor::rand([n, 3, s, s], (Kind::Float, Device::Cpu)) * 48.0 - 24.0;
    let images = (smooth + noise).clamp(0.0, 255.0).permute([0, 2, 3, 1]).to_kind(Kind::Uint8);
    let vars: BTreeMap<String, Tensor> = model.head_params().into_iter().collect();
    tch::no_grad(|| {
        let fc1_bias = vars["head.fc1.bias"].shallow_clone();
        fc1_bias.shallow_clone().copy_(&(fc1_bias.randn_like() * 0.5));
        let fc2_bias = vars["head.fc2.bias"].shallow_clone();
        fc2_bias.shallow_clone().copy_(&(fc2_bias.randn_like() * 0.5));
        // Logits at the caffe scale (inputs of +-128) would saturate: scale the last layer down
        // (never up, which would magnify rounding; nor centred, which would cancel digits).
        let logits = model.forward_t(&images, false).unwrap();
        let rms = logits.square().mean(Kind::Float).sqrt().double_value(&[]);
        let scale = (1.5 / rms).min(1.0);
        let _ = vars["head.fc2.weight"].shallow_clone().g_mul_scalar_(scale);
        let _ = fc2_bias.shallow_clone().g_mul_scalar_(scale);
    });
    let path = dir.join("model.safetensors");
    model.save(&path).unwrap();
    // What the model file gives, as predict computes it (a fresh load, nothing trainable).
    let loaded = Classifier::load(&path, Device::Cpu, None::<&str>).unwrap();
    let probs = loaded.predict_proba(&images).unwrap().contiguous().view([-1]);
    let bytes = Vec::<u8>::try_from(images.flatten(0, -1)).unwrap();
    (path, bytes, Vec::<f32>::try_from(probs).unwrap())
}

/// Exports `case`, checks the file's structure, and compares onnxruntime with predict_proba.
fn check_case(name: &str, case: Case) {
    tch::set_num_threads(1);
    let dir = tempfile::tempdir().unwrap();
    let (model_path, images, ours) = make_model(dir.path(), &case);
    let onnx = dir.path().join("model.onnx");
    let done = export_onnx(&model_path, &onnx).unwrap();
    assert_eq!(done.class_names.len(), case.classes);
    check_structure(&onnx, &header(&case));

    // Same model file, same bytes.
    let again = dir.path().join("again.onnx");
    assert_eq!(export_onnx(&model_path, &again).unwrap().sha256, done.sha256, "{name}");

    // A meaningful comparison needs probabilities away from 0 and 1 (see make_model).
    let inside = ours.iter().filter(|p| (0.01..0.99).contains(*p)).count();
    assert!(inside * 2 > ours.len(), "{name}: probabilities saturate: {ours:?}");

    let Some(python) = support::python() else { return };
    if let Err(why) = support::ensure_onnxruntime(&python) {
        eprintln!("skipped: {why}");
        return;
    }
    let size = case.size as usize;
    let pixels = support::nhwc_u8_to_nchw_f32(&images, [IMAGES, size, size]);
    let run = support::run_onnxruntime(&python, &onnx, &pixels, [IMAGES, size, size]);
    let report = &run.report;
    assert_eq!(report["checker"], "ok", "{name}: onnx.checker: {report}");
    assert_eq!(report["input"]["name"], export::INPUT);
    assert_eq!(report["input"]["type"], "tensor(float)");
    assert_eq!(report["input"]["shape"], serde_json::json!(["N", 3, case.size, case.size]));
    assert_eq!(report["output"]["name"], export::OUTPUT);
    assert_eq!(report["result_shape"], serde_json::json!([IMAGES, case.classes]));
    assert_eq!(report["result_dtype"], "float32");
    let meta = &report["custom_metadata"];
    let classes: Vec<String> = serde_json::from_str(meta["class_names"].as_str().unwrap()).unwrap();
    assert_eq!(classes, header(&case).class_names);
    let stored: ModelHeader = serde_json::from_str(meta[HEADER_KEY].as_str().unwrap()).unwrap();
    assert_eq!(stored, header(&case));
    assert_eq!(report["description"], report["graph_description"]);

    let d = support::compare(&ours, &run.probabilities);
    eprintln!(
        "{name}: {IMAGES} images, onnxruntime {} vs predict_proba: max abs {:.3e}, max rel {:.3e}",
        report["onnxruntime"], d.max_abs, d.max_rel
    );
    assert!(
        d.worst_excess <= 0.0,
        "{name}: onnxruntime differs from predict_proba beyond {} rel + {} abs: {d:?}",
        support::RTOL,
        support::ATOL
    );
}

/// The ONNX file read back with our own messages: names, shapes, opset, doc string and metadata.
fn check_structure(onnx: &Path, header: &ModelHeader) {
    let model = ModelProto::decode(std::fs::read(onnx).unwrap().as_slice()).unwrap();
    assert_eq!(model.ir_version, export::IR_VERSION);
    assert_eq!(model.opset_import.len(), 1);
    assert_eq!(
        (model.opset_import[0].domain.as_str(), model.opset_import[0].version),
        ("", export::OPSET)
    );
    let graph = model.graph.as_ref().unwrap();
    assert_eq!(graph.input.len(), 1);
    assert_eq!(graph.input[0].name, export::INPUT);
    assert_eq!(graph.output[0].name, export::OUTPUT);
    let [h, w] = header.input_size;
    for text in [
        format!("Input pixels: float32 [N, 3, {h}, {w}]"),
        "RGB channel order, values 0-255".to_owned(),
        format!("Preprocessing (in the graph): {}", header.preprocessing),
        format!("Output probabilities: float32 [N, {}]", header.class_names.len()),
        format!(
            "classes in index order: 0 = {}, 1 = {}",
            header.class_names[0], header.class_names[1]
        ),
    ] {
        assert!(
            graph.doc_string.contains(&text),
            "doc string lacks {text:?}:\n{}",
            graph.doc_string
        );
    }
    assert_eq!(model.doc_string, graph.doc_string);
    let keys: Vec<&str> = model.metadata_props.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, [export::CLASS_NAMES_KEY, export::SOURCE_SHA256_KEY, HEADER_KEY]);
    // Every initializer is float32 or int64 raw little-endian data of its dims.
    for t in &graph.initializer {
        let count: i64 = t.dims.iter().product();
        assert_eq!(
            t.raw_data.len() as i64,
            count * 8 / if t.data_type == 1 { 2 } else { 1 },
            "{}",
            t.name
        );
    }
    // Every conv of the base up to the cut has its kernel in the graph.
    let arch = header.arch().unwrap();
    let cut = header.cut_layer().unwrap();
    let convs = arch.layers().filter(|l| *l <= cut && arch.spec(*l).parameter_count() > 0).count();
    let kernels = graph
        .initializer
        .iter()
        .filter(|t| t.name.starts_with("features.") && t.name.ends_with(".weight"))
        .count();
    assert_eq!(kernels, convs);
}

fn narrow_vgg16() -> ConvArch {
    ConvArch::vgg16_width(0.125).unwrap()
}

#[test]
fn narrow_vgg16_flatten_caffe_two_classes() {
    // block4_pool at 32x32: [64, 2, 2], flattened channels-last.
    check_case(
        "vgg16_w0.125/block4_pool/none/caffe/2",
        Case {
            arch: narrow_vgg16(),
            cut: "block4_pool",
            pooling: Pooling::None,
            preprocessing: Preprocessing::Caffe,
            size: 32,
            classes: 2,
            seed: 11,
        },
    );
}

#[test]
fn narrow_vgg16_whole_base_torch_three_classes() {
    // The whole base at 64x64: block5_pool gives [64, 2, 2].
    check_case(
        "vgg16_w0.125/block5_pool/none/torch/3",
        Case {
            arch: narrow_vgg16(),
            cut: "block5_pool",
            pooling: Pooling::None,
            preprocessing: Preprocessing::Torch,
            size: 64,
            classes: 3,
            seed: 12,
        },
    );
}

#[test]
fn narrow_vgg16_avg_pooling_at_a_conv_cut() {
    check_case(
        "vgg16_w0.125/block5_conv3/avg/torch/3",
        Case {
            arch: narrow_vgg16(),
            cut: "block5_conv3",
            pooling: Pooling::Avg,
            preprocessing: Preprocessing::Torch,
            size: 32,
            classes: 3,
            seed: 13,
        },
    );
}

#[test]
fn narrow_vgg16_max_pooling_rescale() {
    check_case(
        "vgg16_w0.125/block3_pool/max/rescale/2",
        Case {
            arch: narrow_vgg16(),
            cut: "block3_pool",
            pooling: Pooling::Max,
            preprocessing: Preprocessing::Rescale,
            size: 32,
            classes: 2,
            seed: 14,
        },
    );
}

#[test]
fn small_convnet_valid_padding_flatten() {
    // Chollet's convnet ("valid" convs) at 64x64: max_pooling2d_4 gives [128, 2, 2].
    check_case(
        "small_convnet/max_pooling2d_4/none/rescale/2",
        Case {
            arch: ConvArch::small_convnet(),
            cut: "max_pooling2d_4",
            pooling: Pooling::None,
            preprocessing: Preprocessing::Rescale,
            size: 64,
            classes: 2,
            seed: 15,
        },
    );
}

#[test]
fn refuses_files_that_are_no_model_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("model.onnx");
    let check = |path: &Path, reason: &str| {
        let err = export_onnx(path, &out).unwrap_err().to_string();
        assert!(err.starts_with(&path.display().to_string()), "{err}");
        assert!(err.contains(reason), "{err}");
        assert_eq!(err.matches(&path.display().to_string()).count(), 1, "named once: {err}");
        assert!(!out.exists(), "nothing may be written for {}", path.display());
    };
    // A conv base weights file is safetensors, but no model file.
    let weights = {
        let _guard = TORCH_RNG.lock().unwrap_or_else(|p| p.into_inner());
        tch::manual_seed(1);
        random_base(dir.path(), &narrow_vgg16()).meta.path
    };
    check(&weights, "not a model file");
    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "not a model at all").unwrap();
    check(&text, "not a safetensors file");
    check(&dir.path().join("missing.safetensors"), "No such file");
}

#[test]
fn refuses_to_overwrite_the_model_file() {
    let dir = tempfile::tempdir().unwrap();
    let case = Case {
        arch: narrow_vgg16(),
        cut: "block1_pool",
        pooling: Pooling::Avg,
        preprocessing: Preprocessing::Rescale,
        size: 8,
        classes: 2,
        seed: 16,
    };
    let (model, _, _) = make_model(dir.path(), &case);
    let before = std::fs::read(&model).unwrap();
    let err = export_onnx(&model, &model).unwrap_err().to_string();
    assert!(err.contains("is the model file itself"), "{err}");
    assert_eq!(std::fs::read(&model).unwrap(), before);
}
