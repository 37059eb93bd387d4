//! Weights import and loading without Python: tch `.ot` and safetensors round trips, byte-stable
//! output, the errors a bad file gives (each names the tensor and both shapes), the committed
//! `torch.save` fixtures (OrderedDict, legacy format, views, a malicious pickle), freezing, and
//! the `vgg16-layers --weights` table.

use std::path::{Path, PathBuf};

use expect_test::expect;
use models::import::read_torch_state_dict;
use models::weights::{Provenance, file_sha256, read_weights, save_conv_base};
use models::{ConvArch, ConvBase, Preprocessing, SourceFormat, import_weights, load_weights};
use tch::{Device, Kind, Tensor, nn};

/// The 26 conv-base tensors with small random values from `seed`.
fn random_conv_base(seed: i64) -> Vec<(String, Tensor)> {
    tch::manual_seed(seed);
    ConvArch::vgg16()
        .expected_tensors()
        .into_iter()
        .map(|(name, shape)| (name, Tensor::randn(shape, (Kind::Float, Device::Cpu)) * 0.01))
        .collect()
}

fn write_safetensors(path: &Path, tensors: &[(String, Tensor)]) {
    Tensor::write_safetensors(tensors, path).unwrap();
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// Imports `tensors` (written as plain safetensors) and returns the error text, with the temp
/// folder replaced by `$DIR`.
fn import_error(tensors: &[(String, Tensor)]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.safetensors");
    write_safetensors(&src, tensors);
    let err = import_weights(
        &src,
        SourceFormat::Safetensors,
        &dir.path().join("out.safetensors"),
        Some(Preprocessing::Torch),
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(
        !dir.path().join("out.safetensors").exists(),
        "a failed import must not leave an output"
    );
    err.replace(&dir.path().display().to_string(), "$DIR")
}

#[test]
fn tch_ot_round_trip_keeps_every_value() {
    let dir = tempfile::tempdir().unwrap();
    tch::manual_seed(1);
    let vs = nn::VarStore::new(Device::Cpu);
    let _base = ConvBase::with_arch(&vs.root(), ConvArch::vgg16());
    let _head = vs.root().sub("classifier").sub("0").zeros("weight", &[2, 3]);
    let ot = dir.path().join("vgg16.ot");
    vs.save(&ot).unwrap();

    let out = dir.path().join("w.safetensors");
    let meta =
        import_weights(&ot, SourceFormat::from_path(&ot).unwrap(), &out, None, Some("tch-rs test"))
            .unwrap();
    assert_eq!(meta.preprocessing, Preprocessing::Torch);
    assert_eq!(meta.source, "tch-rs test");
    assert_eq!(meta.source_sha256.as_deref(), Some(file_sha256(&ot).unwrap().as_str()));
    assert_eq!(meta.digest, file_sha256(&out).unwrap());

    let loaded = load_weights(&out, Device::Cpu).unwrap();
    assert_eq!(loaded.meta, meta);
    let original = vs.variables();
    let back = loaded.vs.variables();
    assert_eq!(back.len(), 26, "the classifier is dropped");
    for (name, t) in &back {
        assert!(t.equal(&original[name]), "{name} changed");
    }
}

#[test]
fn same_weights_give_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.safetensors");
    write_safetensors(&src, &random_conv_base(2));
    let import = |out: &str| {
        import_weights(
            &src,
            SourceFormat::Safetensors,
            &dir.path().join(out),
            Some(Preprocessing::Caffe),
            Some("x"),
        )
        .unwrap()
    };
    let (a, b) = (import("a.safetensors"), import("b.safetensors"));
    assert_eq!(a.digest, b.digest);
    assert_eq!(
        std::fs::read(dir.path().join("a.safetensors")).unwrap(),
        std::fs::read(dir.path().join("b.safetensors")).unwrap()
    );
    let (_, meta) = read_weights(&dir.path().join("a.safetensors")).unwrap();
    assert_eq!(meta.digest, a.digest);
    assert_eq!(meta.preprocessing, Preprocessing::Caffe);
    assert_eq!(meta.source_format.as_deref(), Some("safetensors"));
}

/// A VGG16 file written through the generic writer (`save_conv_base` with `ConvArch::vgg16()`)
/// has exactly the metadata VGG16 files always had (no `layers` entry) and pinned bytes: the demo
/// weights' digest (`xtask/src/weights.rs`) and every feature-cache key built on it depend on it.
#[test]
fn vgg16_files_keep_their_metadata_and_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let arch = ConvArch::vgg16();
    // Deterministic values (no RNG): element i of tensor t is ((i * 7 + t) % 13 - 6) / 64.
    let tensors: Vec<(String, Tensor)> = arch
        .expected_tensors()
        .into_iter()
        .enumerate()
        .map(|(t, (name, shape))| {
            let n: i64 = shape.iter().product();
            let values =
                ((Tensor::arange(n, (Kind::Int64, Device::Cpu)) * 7 + t as i64).remainder(13) - 6)
                    .to_kind(Kind::Float)
                    / 64.0;
            (name, values.reshape(&shape))
        })
        .collect();
    let provenance = Provenance {
        preprocessing: Preprocessing::Caffe,
        source: "pinned".to_owned(),
        source_sha256: "0".repeat(64),
        source_format: "onnx".to_owned(),
    };
    let path = dir.path().join("w.safetensors");
    let meta = save_conv_base(&path, &arch, &tensors, &provenance).unwrap();
    assert_eq!(meta.digest, file_sha256(&path).unwrap());
    let loaded = models::tensor_file::load(&path).unwrap();
    let keys: Vec<&str> = loaded.metadata.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "architecture",
            "format_version",
            "preprocessing",
            "source",
            "source_format",
            "source_sha256"
        ]
    );
    assert_eq!(loaded.metadata["architecture"], "vgg16_conv_base");
    expect!["2111b7233d96b6d3c9d0074377ce569f840bbc7e7e8a61d2d176c8376469679e"]
        .assert_eq(&meta.digest);
    let (_, back) = read_weights(&path).unwrap();
    assert!(back.arch.is_vgg16());
}

#[test]
fn safetensors_import_needs_a_preprocessing() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.safetensors");
    write_safetensors(&src, &random_conv_base(3));
    let err = import_weights(
        &src,
        SourceFormat::Safetensors,
        &dir.path().join("o.safetensors"),
        None,
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(err.ends_with("safetensors files do not say how images were preprocessed for them; choose caffe, torch or rescale"), "{err}");
    let meta = import_weights(
        &src,
        SourceFormat::Safetensors,
        &dir.path().join("o.safetensors"),
        Some(Preprocessing::Rescale),
        None,
    )
    .unwrap();
    assert_eq!(meta.preprocessing, Preprocessing::Rescale);
    assert_eq!(meta.source, "src.safetensors");
}

#[test]
fn bad_tensors_are_named_with_both_shapes() {
    let mut missing = random_conv_base(4);
    missing.pop();
    expect!["$DIR/src.safetensors: missing tensor features.28.bias (expected shape [512])"]
        .assert_eq(&import_error(&missing));

    let mut shaped = random_conv_base(4);
    shaped[2].1 = Tensor::zeros([64, 64, 5, 5], (Kind::Float, Device::Cpu));
    expect!["$DIR/src.safetensors: tensor features.2.weight has shape [64, 64, 5, 5], expected [64, 64, 3, 3]"].assert_eq(&import_error(&shaped));

    let nan = random_conv_base(4);
    let _ = nan[8].1.get(3).get(1).fill_(f64::NAN);
    expect!["$DIR/src.safetensors: tensor features.10.weight holds a non-finite value (NaN)"]
        .assert_eq(&import_error(&nan));

    let inf = random_conv_base(4);
    let _ = inf[25].1.get(511).fill_(f64::NEG_INFINITY);
    expect!["$DIR/src.safetensors: tensor features.28.bias holds a non-finite value (-inf)"]
        .assert_eq(&import_error(&inf));

    let mut twice: Vec<(String, Tensor)> =
        random_conv_base(4).into_iter().map(|(n, t)| (format!("a.{n}"), t)).collect();
    twice.push(("b.features.0.weight".into(), twice[0].1.copy()));
    expect![[r#"$DIR/src.safetensors: several tensors could be features.0.weight: ["a.features.0.weight", "b.features.0.weight"]"#]]
        .assert_eq(&import_error(&twice));
}

#[test]
fn prefixed_names_and_extra_tensors_are_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.safetensors");
    let mut tensors: Vec<(String, Tensor)> =
        random_conv_base(5).into_iter().map(|(n, t)| (format!("module.{n}"), t)).collect();
    tensors.push((
        "module.classifier.6.weight".into(),
        Tensor::zeros([10, 4], (Kind::Float, Device::Cpu)),
    ));
    write_safetensors(&src, &tensors);
    let out = dir.path().join("o.safetensors");
    import_weights(&src, SourceFormat::Safetensors, &out, Some(Preprocessing::Torch), None)
        .unwrap();
    let (back, _) = read_weights(&out).unwrap();
    let names: Vec<&str> = back.iter().map(|(n, _)| n.as_str()).collect();
    let expected = ConvArch::vgg16().expected_tensors();
    assert_eq!(names, expected.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>());
    assert!(back[0].1.equal(&tensors[0].1));
}

#[test]
fn loading_refuses_files_that_are_not_ours() {
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("plain.safetensors");
    write_safetensors(&plain, &random_conv_base(6));
    let err = load_weights(&plain, Device::Cpu).unwrap_err().to_string();
    assert!(err.ends_with("no architecture in the metadata: not one of our weights files (import it with `vgg16-weights import` to record what it is)"), "{err}");
    let err =
        load_weights(&dir.path().join("absent.safetensors"), Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("absent.safetensors: No such file"), "{err}");
    let garbage = dir.path().join("garbage.safetensors");
    std::fs::write(&garbage, b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}      ").unwrap();
    let err = load_weights(&garbage, Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("garbage.safetensors: not a safetensors file"), "{err}");
}

fn check_tiny(name: &str) {
    let tensors = read_torch_state_dict(&fixture(name)).unwrap();
    let names: Vec<&str> = tensors.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["features.0.weight", "features.0.bias"], "{name}");
    let weight = Tensor::arange(1728, (Kind::Float, Device::Cpu))
        .reshape([3, 3, 3, 64])
        .permute([3, 2, 0, 1]);
    assert!(tensors[0].1.equal(&weight), "{name}: strided view");
    assert!(
        tensors[1].1.equal(&Tensor::arange_start(10, 74, (Kind::Float, Device::Cpu))),
        "{name}: storage offset"
    );
}

#[test]
fn torch_save_fixtures_read_without_python() {
    check_tiny("tiny_ordered.pth");
    check_tiny("tiny_legacy.pth");
    // Only two of 26 tensors: the import names the first one missing.
    let dir = tempfile::tempdir().unwrap();
    let err = import_weights(
        &fixture("tiny_legacy.pth"),
        SourceFormat::Torch,
        &dir.path().join("o.safetensors"),
        None,
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.ends_with(
            "tiny_legacy.pth: missing tensor features.2.weight (expected shape [64, 64, 3, 3])"
        ),
        "{err}"
    );
}

#[test]
fn malicious_pickle_is_refused_not_run() {
    let marker = Path::new("/tmp/transfer-kit-pickle-was-executed");
    let _ = std::fs::remove_file(marker);
    let err = read_torch_state_dict(&fixture("evil.pth")).unwrap_err().to_string();
    assert!(err.ends_with("evil.pth: refusing to unpickle global posix.system (only tensors, dicts and lists are read)"), "{err}");
    assert!(!marker.exists(), "the pickle's payload ran");
    let err = read_torch_state_dict(&fixture("make_fixtures.py")).unwrap_err().to_string();
    assert!(
        err.ends_with("not a torch.save file (neither a zip archive nor a legacy pickle)"),
        "{err}"
    );
}

#[test]
fn unfreeze_from_sets_requires_grad() {
    let vs = nn::VarStore::new(Device::Cpu);
    let base = ConvBase::with_arch(&vs.root(), ConvArch::vgg16());
    let check = |from: Option<&str>, expect_trainable: i64, expect_names: &[&str]| {
        let got = base.set_unfreeze_from(from).unwrap();
        assert_eq!(got, expect_trainable, "{from:?}");
        let mut on: Vec<String> =
            vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).map(|(n, _)| n).collect();
        on.sort();
        assert_eq!(on, expect_names, "{from:?}");
    };
    check(
        Some("block5_conv1"),
        7_079_424,
        &[
            "features.24.bias",
            "features.24.weight",
            "features.26.bias",
            "features.26.weight",
            "features.28.bias",
            "features.28.weight",
        ],
    );
    // features.27 is block5_conv2's ReLU, so block5_conv2 is the first trainable layer
    check(
        Some("features.27"),
        4_719_616,
        &["features.26.bias", "features.26.weight", "features.28.bias", "features.28.weight"],
    );
    check(Some("block5_pool"), 0, &[]);
    check(None, 0, &[]);
    assert_eq!(base.set_unfreeze_from(Some("block1_conv1")).unwrap(), 14_714_688);
    assert!(
        base.set_unfreeze_from(Some("block6_conv1"))
            .unwrap_err()
            .to_string()
            .contains("unknown VGG16 layer")
    );
}

#[test]
fn layers_table_reports_the_weights() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.safetensors");
    write_safetensors(&src, &random_conv_base(7));
    let out = dir.path().join("w.safetensors");
    let meta = import_weights(
        &src,
        SourceFormat::Safetensors,
        &out,
        Some(Preprocessing::Caffe),
        Some("test weights"),
    )
    .unwrap();
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_vgg16-layers"))
        .args([
            "--input-size",
            "48",
            "--unfreeze-from",
            "block4_conv3",
            "--device",
            "cpu",
            "--weights",
        ])
        .arg(&out)
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let stdout = String::from_utf8(run.stdout)
        .unwrap()
        .replace(&meta.digest, "$DIGEST")
        .replace(meta.source_sha256.as_deref().unwrap(), "$SOURCE_SHA256")
        .replace(&dir.path().display().to_string(), "$DIR");
    expect![[r#"
        weights: $DIR/w.safetensors
        source: test weights
        source sha256: $SOURCE_SHA256
        preprocessing: caffe
        sha256: $DIGEST

        layer          torchvision    output (H,W,C)     params  state
        block1_conv1   features.0       (48, 48, 64)       1792  frozen
        block1_conv2   features.2       (48, 48, 64)      36928  frozen
        block1_pool    features.4       (24, 24, 64)          0  -
        block2_conv1   features.5      (24, 24, 128)      73856  frozen
        block2_conv2   features.7      (24, 24, 128)     147584  frozen
        block2_pool    features.9      (12, 12, 128)          0  -
        block3_conv1   features.10     (12, 12, 256)     295168  frozen
        block3_conv2   features.12     (12, 12, 256)     590080  frozen
        block3_conv3   features.14     (12, 12, 256)     590080  frozen
        block3_pool    features.16       (6, 6, 256)          0  -
        block4_conv1   features.17       (6, 6, 512)    1180160  frozen
        block4_conv2   features.19       (6, 6, 512)    2359808  frozen
        block4_conv3   features.21       (6, 6, 512)    2359808  trainable
        block4_pool    features.23       (3, 3, 512)          0  -
        block5_conv1   features.24       (3, 3, 512)    2359808  trainable
        block5_conv2   features.26       (3, 3, 512)    2359808  trainable
        block5_conv3   features.28       (3, 3, 512)    2359808  trainable
        block5_pool    features.30       (1, 1, 512)          0  -
        total params: 14714688; trainable: 9439232; frozen: 5275456
    "#]]
    .assert_eq(&stdout);
}

#[test]
fn cuda_features_match_cpu_when_a_gpu_is_present() {
    if !tch::Cuda::is_available() {
        eprintln!("skipped: libtorch sees no CUDA device");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.safetensors");
    let tensors: Vec<(String, Tensor)> =
        random_conv_base(8).into_iter().map(|(n, t)| (n, t * 5.0)).collect();
    write_safetensors(&src, &tensors);
    let out = dir.path().join("w.safetensors");
    import_weights(&src, SourceFormat::Safetensors, &out, Some(Preprocessing::Caffe), None)
        .unwrap();
    tch::manual_seed(9);
    let images =
        Tensor::randint(256, [2, 64, 64, 3], (Kind::Int64, Device::Cpu)).to_kind(Kind::Uint8);
    let layer = "block4_pool";
    let run = |device: Device| {
        let w = load_weights(&out, device).unwrap();
        let ys =
            tch::no_grad(|| w.features(&images.to_device(device), layer, models::Pooling::Avg))
                .unwrap();
        ys.to_device(Device::Cpu)
    };
    let (cpu, cuda) = (run(Device::Cpu), run(Device::Cuda(0)));
    // cuDNN may use TF32 for convolutions, hence a looser bound than the CPU parity tests.
    let err = (&cuda - &cpu).abs().max().double_value(&[]) / cpu.abs().max().double_value(&[]);
    eprintln!("cuda vs cpu: relative error {err:.3e}");
    assert!(err <= 1e-2, "cuda vs cpu relative error {err:e}");
}
