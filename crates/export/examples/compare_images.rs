//! By-hand check of an exported model on real images: decodes the first 20 images (`COUNT` in
//! the environment overrides) of the given files and folders exactly as `predict` does
//! (`dataset::decode` with `predict::decode_options`: the header's input size and resize mode),
//! taking folders in turn, classifies them with `Classifier::predict_proba` and with onnxruntime
//! on the ONNX file (`TRANSFER_KIT_PYTHON`, onnxruntime installed when missing), and prints both
//! rows per image and the largest absolute and relative differences.
//!
//! `cargo run -p export --example compare_images -- MODEL.safetensors MODEL.onnx PATHS...`

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use models::Classifier;
use tch::{Device, Tensor};

fn main() -> Result<()> {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let [model_path, onnx, inputs @ ..] = args.as_slice() else {
        bail!("usage: compare_images MODEL.safetensors MODEL.onnx IMAGES_OR_FOLDERS...");
    };
    let count: usize = std::env::var("COUNT").ok().map_or(Ok(20), |c| c.parse())?;
    let model = Classifier::load(model_path, Device::Cpu, None::<&str>)?;
    let header = model.header().clone();
    let [h, w] = header.input_size;
    let decode = predict::decode_options(&header)?;
    let files = image_files(inputs, count)?;
    let mut pixels = Vec::new();
    for file in &files {
        pixels.extend_from_slice(dataset::decode(file, &decode)?.as_raw());
    }
    let n = files.len();
    let batch = Tensor::from_slice(&pixels).view([n as i64, h, w, 3]);
    let ours = Vec::<f32>::try_from(model.predict_proba(&batch)?.contiguous().view([-1]))?;

    let Some(python) = support::python() else { bail!("set TRANSFER_KIT_PYTHON") };
    support::ensure_onnxruntime(&python).map_err(anyhow::Error::msg)?;
    let dims = [n, h as usize, w as usize];
    let run =
        support::run_onnxruntime(&python, onnx, &support::nhwc_u8_to_nchw_f32(&pixels, dims), dims);
    let d = support::compare(&ours, &run.probabilities);
    let classes = header.class_names.len();
    for (i, file) in files.iter().enumerate() {
        let row = |p: &[f32]| format!("{:?}", &p[i * classes..(i + 1) * classes]);
        println!("{}: ours {} onnxruntime {}", file.display(), row(&ours), row(&run.probabilities));
    }
    println!(
        "{n} images, {}: onnxruntime {} (checker {}) vs predict_proba: max abs {:.3e}, max rel {:.3e}, within {} rel + {} abs: {}",
        model_path.display(),
        run.report["onnxruntime"],
        run.report["checker"],
        d.max_abs,
        d.max_rel,
        support::RTOL,
        support::ATOL,
        d.worst_excess <= 0.0
    );
    Ok(())
}

/// The first `count` image files of `inputs` (folders walked sorted, image extensions only),
/// taken in turn from each input so several class folders are mixed.
fn image_files(inputs: &[PathBuf], count: usize) -> Result<Vec<PathBuf>> {
    let mut lists = Vec::new();
    for input in inputs {
        if input.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(input)
                .with_context(|| input.display().to_string())?
                .map(|e| e.map(|e| e.path()))
                .collect::<Result<_, _>>()?;
            files.retain(|p: &PathBuf| dataset::scan::has_image_extension(p));
            files.sort();
            lists.push(files);
        } else {
            lists.push(vec![input.clone()]);
        }
    }
    let mut out = Vec::new();
    for i in 0.. {
        if out.len() == count || lists.iter().all(|l| i >= l.len()) {
            break;
        }
        out.extend(lists.iter().filter_map(|l| l.get(i)).take(count - out.len()).cloned());
    }
    Ok(out)
}
