//! The `evaluate` binary end to end on a tiny seeded model file (the small convnet at 48x48,
//! random weights, three classes) and noise images in class folders: its accuracy, confusion
//! matrix, per-image probabilities and losses equal what `predict_proba` gives on the same files;
//! the top-losses grid holds the most confidently wrong images in order; folders the model does
//! not know, a missing class folder and a file that is no model are refused by name. CPU only.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use dataset::{DecodeOptions, Interpolation, Size};
use evaluate::EvaluationReport;
use models::classifier::head_input_width;
use models::{Classifier, ConvArch, HeadSpec, ModelHeader, Pooling, Preprocessing};
use tch::{Device, Kind, Tensor};

const SIZE: i64 = 48;
const CLASSES: [&str; 3] = ["bird", "cat", "dog"];
const PER_CLASS: usize = 5;

/// Saves a seeded small-convnet classifier into `dir`; returns it and the file's path.
fn model(dir: &Path) -> (Classifier, PathBuf) {
    let arch = ConvArch::small_convnet();
    let cut = "max_pooling2d_4";
    let width = head_input_width(&arch, arch.layer(cut).unwrap(), Pooling::None, SIZE).unwrap();
    let header = ModelHeader {
        format_version: models::MODEL_FORMAT_VERSION,
        architecture: arch.name().to_owned(),
        layers: arch.defs().to_vec(),
        cut: cut.to_owned(),
        pooling: Pooling::None,
        head: HeadSpec::seed(width, CLASSES.len()),
        class_names: CLASSES.iter().map(|c| c.to_string()).collect(),
        preprocessing: Preprocessing::Rescale,
        input_size: [SIZE, SIZE],
        resize: "bilinear".into(),
        base_weights_sha256: "0".repeat(64),
        trained_on: BTreeMap::new(),
        stage: "test".into(),
    };
    tch::manual_seed(11);
    let model = Classifier::from_scratch(header, Device::Cpu).unwrap();
    let path = dir.join("model.safetensors");
    model.save(&path).unwrap();
    (model, path)
}

/// `data/test/<class>/NN.png`: noise of a per-class brightness, odd sizes (resized on decode).
fn write_split(data: &Path) -> Vec<(PathBuf, usize)> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut noise = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 56) as u8
    };
    let mut files = Vec::new();
    for (label, class) in CLASSES.iter().enumerate() {
        let dir = data.join("test").join(class);
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0..PER_CLASS {
            let img = image::RgbImage::from_fn(53, 41, |_, _| {
                let v = noise() / 2 + 40 * label as u8;
                image::Rgb([v, noise(), v])
            });
            let path = dir.join(format!("{i:02}.png"));
            img.save(&path).unwrap();
            files.push((path, label));
        }
    }
    files
}

fn evaluate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_evaluate"))
        .args(["--device", "cpu"])
        .args(args)
        .env("OMP_NUM_THREADS", "1")
        .output()
        .unwrap()
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn figures_equal_predict_proba_on_the_same_files() {
    let dir = tempfile::tempdir().unwrap();
    let (model, model_path) = model(dir.path());
    let data = dir.path().join("data");
    let files = write_split(&data);
    let out = dir.path().join("eval");
    let run = evaluate(&[
        "--model",
        path(&model_path),
        "--data",
        path(&data),
        "--out",
        path(&out),
        "--top-losses",
        "4",
        "--batch-size",
        "4",
    ]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let report: EvaluationReport =
        serde_json::from_slice(&std::fs::read(out.join("metrics.json")).unwrap()).unwrap();

    // What the model gives on the files decoded as training decodes them.
    let opts = DecodeOptions {
        target_size: Some(Size::square(SIZE as u32)),
        interpolation: Interpolation::Bilinear,
        ..Default::default()
    };
    let mut pixels = Vec::new();
    for (f, _) in &files {
        pixels.extend_from_slice(dataset::decode(f, &opts).unwrap().as_raw());
    }
    let t = Tensor::from_slice(&pixels).view([files.len() as i64, SIZE, SIZE, 3]);
    let probs = model.predict_proba(&t).unwrap().to_kind(Kind::Float).contiguous();
    let probs: Vec<Vec<f32>> = Vec::<f32>::try_from(probs.view([-1]))
        .unwrap()
        .chunks(CLASSES.len())
        .map(<[f32]>::to_vec)
        .collect();
    let argmax = |p: &[f32]| (0..p.len()).fold(0, |b, i| if p[i] > p[b] { i } else { b });
    let correct = files.iter().zip(&probs).filter(|((_, l), p)| argmax(p) == *l).count();
    let losses: Vec<f64> =
        files.iter().zip(&probs).map(|((_, l), p)| -(p[*l] as f64).ln()).collect();
    let mean_loss = losses.iter().sum::<f64>() / losses.len() as f64;

    let m = &report.metrics;
    assert_eq!(m.images, files.len() as u64);
    assert_eq!(m.acc, correct as f64 / files.len() as f64);
    assert!((m.loss - mean_loss).abs() < 1e-4, "loss {} vs {mean_loss}", m.loss);
    assert_eq!(m.per_class.iter().map(|c| c.support).collect::<Vec<_>>(), [5, 5, 5]);
    assert_eq!(report.classes, CLASSES);

    // The confusion matrix counts each (true, predicted) pair.
    let mut counts = vec![vec![0u64; 3]; 3];
    for ((_, l), p) in files.iter().zip(&probs) {
        counts[*l][argmax(p)] += 1;
    }
    let csv = std::fs::read_to_string(out.join("confusion_test.csv")).unwrap();
    let rows: Vec<Vec<u64>> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').skip(1).map(|c| c.parse().unwrap()).collect())
        .collect();
    assert_eq!(rows, counts);

    // predictions.csv: one row per image in folder order, probabilities as predict_proba's.
    let text = std::fs::read_to_string(out.join("predictions.csv")).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("path,true,predicted,loss,bird,cat,dog"));
    for (((f, l), p), line) in files.iter().zip(&probs).zip(lines) {
        let fields: Vec<&str> = line.split(',').collect();
        assert_eq!(fields[0], path(f));
        assert_eq!(fields[1], CLASSES[*l]);
        assert_eq!(fields[2], CLASSES[argmax(p)]);
        for (got, want) in fields[4..].iter().zip(p) {
            let got: f32 = got.parse().unwrap();
            assert!((got - want).abs() <= 1e-6, "{}: {got} vs {want}", f.display());
        }
    }

    // The top losses: wrong images only, most confidently wrong first, at most 4.
    let wrong = files.len() - correct;
    assert!(wrong > 0, "the random model should get some images wrong");
    assert_eq!(report.top_losses.len(), wrong.min(4));
    assert!(report.top_losses.windows(2).all(|w| w[0].loss >= w[1].loss));
    for t in &report.top_losses {
        assert_ne!(t.truth, t.predicted, "{}", t.path.display());
        let i = files.iter().position(|(f, _)| *f == t.path).unwrap();
        assert!((t.loss as f64 - losses[i]).abs() < 1e-4);
    }
    let grid = image::open(out.join("top_losses.png")).unwrap();
    assert!(grid.width() >= 150 && grid.height() > SIZE as u32, "{:?}", grid.width());
    assert!(report.files.contains(&"top_losses.png".to_owned()));

    // The folder is a stage folder: stage.json vouches for every file, names model and data.
    let record = run_folder::StageRecord::read(&out).unwrap();
    assert_eq!(record.stage, "evaluate");
    assert_eq!(record.damaged_output(&out), None);
    assert_eq!(record.outputs.len(), report.files.len());
    assert_eq!(record.inputs["model"], report.model_sha256);
    assert!(record.inputs.contains_key("data"));

    // Evaluated again into the same folder: the earlier files are replaced, not kept beside the
    // new ones; a changed image changes the recorded data digest.
    std::fs::write(out.join("confusion_validation.csv"), "left by another split").unwrap();
    image::RgbImage::new(9, 9).save(&files[0].0).unwrap();
    let again = evaluate(&[
        "--model",
        path(&model_path),
        "--data",
        path(&data),
        "--out",
        path(&out),
        "--top-losses",
        "0",
    ]);
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    let second = run_folder::StageRecord::read(&out).unwrap();
    assert_ne!(second.inputs["data"], record.inputs["data"]);
    assert!(!out.join("confusion_validation.csv").exists() && !out.join("top_losses.png").exists());
    assert_eq!(second.damaged_output(&out), None);

    // A training stage's folder is not an evaluation's: refused, nothing touched.
    let stage_dir = dir.path().join("fine-tune");
    run_folder::StageRecord::write(
        &stage_dir,
        "fine-tune",
        "c".into(),
        BTreeMap::new(),
        &[],
        0.0,
        serde_json::Value::Null,
    )
    .unwrap();
    let refused =
        evaluate(&["--model", path(&model_path), "--data", path(&data), "--out", path(&stage_dir)]);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && err.contains("`fine-tune` stage"), "{err}");
}

#[test]
fn folders_that_do_not_match_the_model_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let (_, model_path) = model(dir.path());
    let data = dir.path().join("data");
    write_split(&data);
    let out = dir.path().join("eval");
    let args = |data: &Path| {
        vec![
            "--model".to_owned(),
            path(&model_path).to_owned(),
            "--data".to_owned(),
            path(data).to_owned(),
            "--out".to_owned(),
            path(&out).to_owned(),
        ]
    };
    let run = |a: Vec<String>| evaluate(&a.iter().map(String::as_str).collect::<Vec<_>>());

    // A class the model does not know: its images could not be scored.
    std::fs::create_dir_all(data.join("test/fish")).unwrap();
    image::RgbImage::new(8, 8).save(data.join("test/fish/a.png")).unwrap();
    let refused = run(args(&data));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(err.contains("fish") && err.contains("bird, cat, dog"), "{err}");
    std::fs::remove_dir_all(data.join("test/fish")).unwrap();

    // A class of the model without a folder.
    std::fs::rename(data.join("test/cat"), dir.path().join("cat")).unwrap();
    let refused = run(args(&data));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && err.contains("cat"), "{err}");

    // A missing split and a file that is no model.
    let mut a = args(&data);
    a.extend(["--split".to_owned(), "validation".to_owned()]);
    let err = String::from_utf8_lossy(&run(a).stderr).into_owned();
    assert!(err.contains("validation"), "{err}");
    let not_a_model = dir.path().join("notes.txt");
    std::fs::write(&not_a_model, "hello").unwrap();
    let mut a = args(&data);
    a[1] = path(&not_a_model).to_owned();
    let refused = run(a);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && err.contains("notes.txt"), "{err}");
    assert!(!out.join("metrics.json").exists(), "nothing written by refused runs");
}
