//! Every program of the workspace that reads an image does so through this crate's decode
//! (`dataset::decode` and friends), so EXIF orientation, the colour rule, the limits and
//! Pillow's resize are the same everywhere: a preview, a prediction or an explanation shows the
//! picture the stages train on. Tests may read their own outputs with `image` directly.

use std::path::{Path, PathBuf};

/// Calls that decode an image file or bytes with the `image` crate itself.
const DIRECT_READS: &[&str] =
    &["image::open", "image::load", "ImageReader", "image::io::Reader", "load_from_memory"];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_image_read_goes_through_dataset_decode() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut files = Vec::new();
    rust_files(&root.join("xtask/src"), &mut files);
    for krate in std::fs::read_dir(root.join("crates")).unwrap().flatten() {
        if krate.file_name() == "dataset" {
            continue;
        }
        for dir in ["src", "examples", "benches"] {
            rust_files(&krate.path().join(dir), &mut files);
        }
    }
    assert!(files.len() > 20, "found only {} source files under {}", files.len(), root.display());
    let mut offenders = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        // Unit tests sit at the end of a file, after `#[cfg(test)]`.
        let code = text.split("#[cfg(test)]").next().unwrap_or_default();
        for (n, line) in code.lines().enumerate() {
            let line = line.trim_start();
            if line.starts_with("//") {
                continue;
            }
            if let Some(call) = DIRECT_READS.iter().find(|c| line.contains(*c)) {
                offenders.push(format!("{}:{}: {call}", file.display(), n + 1));
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "images read without dataset::decode (EXIF orientation, limits, Pillow resize):\n{}",
        offenders.join("\n")
    );
}
