//! Grad-CAM on a task whose evidence is known: 32x32 images of dark noise with one bright
//! square, in the left half (class `left`) or the right half (class `right`). A tiny seeded
//! convnet (three 3x3 "same" convolutions with pools, Flatten, Dense) is trained on them to high
//! accuracy with a plain Adam loop, then the heatmap's maximum must lie on the square's side in
//! at least 95% of held-out images (the model's own accuracy is asserted first, so a failure
//! says which part broke). The held-out squares keep one heatmap cell (4 px) away from the
//! centre line: the map is 8x8, and for a square touching the line its peak, found on the
//! square, can land a few pixels across (seen in about one image in eight). The `explain` binary
//! runs on some of them as PNG files (JSON, overlay sizes, unique names, `--class`); its
//! refusals name what was wrong. CPU only.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use image::RgbImage;
use models::classifier::head_input_width;
use models::{Classifier, ConvArch, HeadSpec, LayerDef, ModelHeader, Padding, Pooling};
use tch::{Device, Kind, Tensor};

const SIZE: u32 = 32;
/// Side of the bright square.
const SQUARE: u32 = 6;
const CLASSES: [&str; 2] = ["left", "right"];

/// libtorch's generator is global: seeding and building a model holds this lock.
static TORCH_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Deterministic pseudo-random numbers (xorshift64).
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform in `0..n`.
    fn below(&mut self, n: u32) -> u32 {
        ((self.next() >> 32) % u64::from(n)) as u32
    }
}

/// One image: dark noise (0-59 per channel) and a bright square (200-255, random tint) at a
/// random place wholly inside the half of `class` (0 left, 1 right), at least `margin` pixels
/// from the centre line.
fn sample(rng: &mut Rng, class: usize, margin: u32) -> RgbImage {
    let mut image = RgbImage::from_fn(SIZE, SIZE, |_, _| {
        image::Rgb([0, 0, 0].map(|_: u8| rng.below(60) as u8))
    });
    let half = SIZE / 2;
    let offset = rng.below(half - SQUARE - margin + 1);
    let x0 = if class == 0 { offset } else { half + margin + offset };
    let y0 = rng.below(SIZE - SQUARE + 1);
    let tint = [0, 0, 0].map(|_: u8| 200 + rng.below(56) as u8);
    for y in y0..y0 + SQUARE {
        for x in x0..x0 + SQUARE {
            image.put_pixel(x, y, image::Rgb(tint));
        }
    }
    image
}

/// `n` images alternating left and right, with their labels (see [`sample`]).
fn dataset(seed: u64, n: usize, margin: u32) -> Vec<(RgbImage, usize)> {
    let mut rng = Rng::new(seed);
    (0..n).map(|i| (sample(&mut rng, i % 2, margin), i % 2)).collect()
}

fn batch(items: &[&(RgbImage, usize)]) -> (Tensor, Tensor) {
    let mut pixels = Vec::with_capacity(items.len() * (SIZE * SIZE * 3) as usize);
    for (image, _) in items {
        pixels.extend_from_slice(image.as_raw());
    }
    let labels: Vec<f32> = items.iter().map(|(_, l)| *l as f32).collect();
    let s = i64::from(SIZE);
    (Tensor::from_slice(&pixels).view([items.len() as i64, s, s, 3]), Tensor::from_slice(&labels))
}

/// The tiny convnet's header: conv 8, pool, conv 16, pool, conv 16, pool (cut; the last
/// convolution gives an 8x8 map at 32x32), Flatten (no pooling, so the head sees where things
/// are), Dense(32), Dense(1) sigmoid; input rescaled to [0, 1].
fn header() -> ModelHeader {
    let conv = |name: &str, filters| LayerDef::Conv {
        name: name.into(),
        filters,
        kernel: 3,
        padding: Padding::Same,
    };
    let pool = |name: &str| LayerDef::MaxPool { name: name.into() };
    let layers = vec![
        conv("conv_a", 8),
        pool("pool_a"),
        conv("conv_b", 16),
        pool("pool_b"),
        conv("conv_c", 16),
        pool("pool_c"),
    ];
    let arch = ConvArch::new("tiny_convnet", layers).unwrap();
    let s = i64::from(SIZE);
    let width = head_input_width(&arch, arch.layer("pool_c").unwrap(), Pooling::None, s).unwrap();
    ModelHeader {
        format_version: models::MODEL_FORMAT_VERSION,
        architecture: arch.name().to_owned(),
        layers: arch.defs().to_vec(),
        cut: "pool_c".into(),
        pooling: Pooling::None,
        head: HeadSpec { input_width: width, hidden: 32, dropout: 0.0, classes: 2 },
        class_names: CLASSES.iter().map(|c| c.to_string()).collect(),
        preprocessing: models::Preprocessing::Rescale,
        input_size: [s, s],
        resize: "nearest".into(),
        base_weights_sha256: "0".repeat(64),
        trained_on: BTreeMap::new(),
        stage: "test".into(),
    }
}

/// A seeded model trained on 512 images of the whole task (squares anywhere in their half) (8 epochs of Adam, lr 3e-3, batches of 32 in a seeded
/// order; no dropout, so nothing else is random).
fn trained_model() -> Classifier {
    let model = {
        let _rng = TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner());
        tch::manual_seed(11);
        Classifier::from_scratch(header(), Device::Cpu).unwrap()
    };
    let train = dataset(1, 512, 0);
    let mut opt = tch::COptimizer::adam(3e-3, 0.9, 0.999, 0.0, 1e-8, false).unwrap();
    for (_, var) in model.trainable() {
        opt.add_parameters(&var, 0).unwrap();
    }
    let mut rng = Rng::new(2);
    for _ in 0..8 {
        let mut order: Vec<usize> = (0..train.len()).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below(i as u32 + 1) as usize);
        }
        for chunk in order.chunks(32) {
            let items: Vec<&(RgbImage, usize)> = chunk.iter().map(|&i| &train[i]).collect();
            let (pixels, labels) = batch(&items);
            let logits = model.forward_t(&pixels, true).unwrap().squeeze_dim(1);
            let loss = logits.binary_cross_entropy_with_logits::<Tensor>(
                &labels,
                None,
                None,
                tch::Reduction::Mean,
            );
            opt.zero_grad().unwrap();
            loss.backward();
            opt.step().unwrap();
        }
    }
    model
}

/// The fraction of `set` the model classifies right.
fn accuracy(model: &Classifier, set: &[(RgbImage, usize)]) -> f64 {
    let items: Vec<&(RgbImage, usize)> = set.iter().collect();
    let (pixels, labels) = batch(&items);
    let predicted = model.predict_proba(&pixels).unwrap().argmax(1, false).to_kind(Kind::Float);
    f64::try_from(predicted.eq_tensor(&labels).to_kind(Kind::Float).mean(Kind::Float)).unwrap()
}

fn write_png(path: &Path, image: &RgbImage) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    image.save_with_format(path, image::ImageFormat::Png).unwrap();
}

fn explain(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_explain"))
        .args(["--device", "cpu"])
        .args(args)
        .env("OMP_NUM_THREADS", "1")
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn heatmap_maximum_lies_on_the_square_side() {
    let model = trained_model();
    let layer = model.last_conv_layer().unwrap();
    assert_eq!(model.header().arch().unwrap().name_of(layer), "conv_c");
    // One heatmap cell of the 8x8 map.
    let held_out = dataset(3, 80, SIZE / 8);

    // The model first: a Grad-CAM check means nothing on a model that has not learnt the task.
    let full_task = dataset(5, 80, 0);
    for (set, name) in [(&full_task, "held-out"), (&held_out, "explained")] {
        let accuracy = accuracy(&model, set);
        eprintln!("{name} accuracy {accuracy}");
        assert!(accuracy >= 0.95, "the model reaches only {accuracy} accuracy on the {name} set");
    }

    // Grad-CAM of the predicted class: its maximum on the square's half. An all-zero heatmap
    // (no positive evidence anywhere) counts as a miss.
    let mut on_side = 0;
    let mut explained = Vec::new();
    for (image, label) in &held_out {
        let e = explain::explain_image(&model, image, layer, None).unwrap();
        assert_eq!(e.cam.heatmap.size(), [8, 8]);
        let side = e.argmax.map(|(_, col)| usize::from(col >= (SIZE / 2) as usize));
        on_side += usize::from(side == Some(*label));
        explained.push(e);
    }
    let fraction = on_side as f64 / held_out.len() as f64;
    eprintln!(
        "heatmap maximum on the square's side in {on_side} of {} ({fraction})",
        held_out.len()
    );
    assert!(fraction >= 0.95, "the heatmap's maximum is on the square's side in only {fraction}");

    // The binary on 8 of them written as PNG files (two sharing a stem), and with --class.
    let dir = tempfile::tempdir().unwrap();
    let model_path = dir.path().join("model.safetensors");
    model.save(&model_path).unwrap();
    let images = dir.path().join("images");
    let mut files: Vec<PathBuf> = Vec::new();
    for (i, (image, _)) in held_out.iter().take(8).enumerate() {
        let sub = if i == 7 { "b" } else { "a" };
        let name = if i == 7 { "img0.png".to_owned() } else { format!("img{i}.png") };
        let path = images.join(sub).join(name);
        write_png(&path, image);
        files.push(path);
    }
    let out_dir = dir.path().join("out");
    let out = explain(&[
        "--model",
        model_path.to_str().unwrap(),
        "--out",
        out_dir.to_str().unwrap(),
        images.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "explain failed: {}", stderr(&out));
    let report: explain::Report =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("gradcam.json")).unwrap())
            .unwrap();
    assert_eq!(report.layer, "conv_c");
    assert_eq!(report.input_size, [32, 32]);
    assert_eq!(report.heatmap_size, [8, 8]);
    assert_eq!(report.classes, CLASSES);
    assert_eq!(report.images.len(), 8);
    // Walked in sorted order: a/img0 .. a/img6, then b/img0 (named apart).
    let order: Vec<usize> = (0..7).chain([7]).collect();
    for (record, &i) in report.images.iter().zip(&order) {
        assert_eq!(record.path, files[i]);
        let e = &explained[i];
        assert_eq!(record.predicted, CLASSES[e.cam.predicted]);
        assert_eq!(record.class, record.predicted);
        assert!((record.probability - e.cam.probabilities[e.cam.class]).abs() < 1e-5);
        // The binary runs on one thread, this process on several: the same map up to float
        // rounding, so the same peak (to within a pixel or two on a near-flat top).
        let (got, want) = (record.heatmap_argmax.unwrap(), e.argmax.unwrap());
        assert!(got[0].abs_diff(want.0) <= 2 && got[1].abs_diff(want.1) <= 2, "{got:?} {want:?}");
        assert_eq!(record.heatmap_all_zero, e.cam.all_zero);
        let png = image::open(out_dir.join(&record.output)).unwrap();
        assert_eq!((png.width(), png.height()), (SIZE, SIZE), "{}", record.output);
    }
    assert_eq!(report.images[0].output, "img0_gradcam.png");
    assert_eq!(report.images[7].output, "img0-2_gradcam.png");
    // The overlay is the image plus 0.4 x jet: never darker than the image.
    let overlay = image::open(out_dir.join("img1_gradcam.png")).unwrap().to_rgb8();
    assert!(overlay.as_raw().iter().zip(held_out[1].0.as_raw()).all(|(o, i)| o >= i));
    // The sheet of all overlays, and a stage record vouching for every file.
    assert!(image::open(out_dir.join("gradcam_grid.png")).unwrap().width() >= 4 * 128);
    let record = run_folder::StageRecord::read(&out_dir).unwrap();
    assert_eq!(record.stage, "explain");
    assert_eq!(record.damaged_output(&out_dir), None);
    assert_eq!(record.outputs.len(), 8 + 2);
    assert!(record.inputs.contains_key("model") && record.inputs.contains_key("images"));

    // --class right on a left image: explained as asked, with that class's probability.
    let left = &files[0];
    let class_dir = dir.path().join("class");
    let out = explain(&[
        "--model",
        model_path.to_str().unwrap(),
        "--out",
        class_dir.to_str().unwrap(),
        "--class",
        "right",
        left.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "explain --class failed: {}", stderr(&out));
    let report: explain::Report =
        serde_json::from_str(&std::fs::read_to_string(class_dir.join("gradcam.json")).unwrap())
            .unwrap();
    let record = &report.images[0];
    assert_eq!(record.class, "right");
    assert_eq!(record.predicted, CLASSES[explained[0].cam.predicted]);
    assert!((record.probability - explained[0].cam.probabilities[1]).abs() < 1e-5);
    assert!(class_dir.join(&record.output).is_file());
}

/// A small untrained model file of the same header, for the refusal tests.
fn saved_model(dir: &Path) -> PathBuf {
    let model = {
        let _rng = TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner());
        tch::manual_seed(5);
        Classifier::from_scratch(header(), Device::Cpu).unwrap()
    };
    let path = dir.join("model.safetensors");
    model.save(&path).unwrap();
    path
}

#[test]
fn refusals_name_the_class_list_the_file_and_the_bad_image() {
    let dir = tempfile::tempdir().unwrap();
    let model = saved_model(dir.path());
    let image = dir.path().join("one.png");
    write_png(&image, &dataset(4, 1, 0)[0].0);
    let out_dir = dir.path().join("out");
    let (model_arg, image_arg, out_arg) =
        (model.to_str().unwrap(), image.to_str().unwrap(), out_dir.to_str().unwrap());

    let out = explain(&["--model", model_arg, "--out", out_arg, "--class", "up", image_arg]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains(r#"unknown class "up""#), "{err}");
    assert!(err.contains(r#""left", "right""#), "{err}");

    // An image given as the model file: named, and said to be no model file.
    let out = explain(&["--model", image_arg, "--out", out_arg, image_arg]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains(image_arg), "{err}");

    // A model file without its header (a plain safetensors file): named, not a model file.
    let plain = dir.path().join("plain.safetensors");
    models::tensor_file::save(
        &plain,
        &[("x".to_owned(), Tensor::zeros([2], (Kind::Float, Device::Cpu)))],
        &BTreeMap::new(),
    )
    .unwrap();
    let out = explain(&["--model", plain.to_str().unwrap(), "--out", out_arg, image_arg]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains(plain.to_str().unwrap()) && err.contains("not a model file"), "{err}");

    // A truncated PNG among the images: the run stops naming it.
    let png = std::fs::read(&image).unwrap();
    let bad = dir.path().join("bad.png");
    std::fs::write(&bad, &png[..png.len() / 2]).unwrap();
    let out = explain(&["--model", model_arg, "--out", out_arg, image_arg, bad.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains(bad.to_str().unwrap()), "{err}");

    // A layer the architecture lacks.
    let out =
        explain(&["--model", model_arg, "--out", out_arg, "--layer", "block5_conv3", image_arg]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("block5_conv3"), "{}", stderr(&out));

    // The good image alone works, at an earlier layer too.
    let out = explain(&["--model", model_arg, "--out", out_arg, "--layer", "conv_b", image_arg]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report: explain::Report =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("gradcam.json")).unwrap())
            .unwrap();
    assert_eq!((report.layer.as_str(), report.heatmap_size), ("conv_b", [16, 16]));
}
