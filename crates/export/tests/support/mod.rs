//! What the onnxruntime test and the `compare_images` example share: finding the torch venv's
//! Python (`TRANSFER_KIT_PYTHON`, as the models parity tests do; `cargo xtask test` sets it),
//! installing onnxruntime into it once when missing, running `run_onnxruntime.py` on a batch,
//! and comparing its probabilities with ours.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The onnxruntime version installed when the venv has none.
pub const ONNXRUNTIME: &str = "1.30.0";
/// Relative tolerance of a probability against ours...
pub const RTOL: f64 = 1e-5;
/// ...plus this absolute floor (float32 `1 - p` near 0 has no relative precision).
pub const ATOL: f64 = 1e-6;

/// The torch venv's Python from `TRANSFER_KIT_PYTHON`, or `None` with the reason printed.
pub fn python() -> Option<PathBuf> {
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

/// Ok when `python` can import onnxruntime, installing `onnxruntime==1.30.0` into its
/// environment once per process if needed (pip's own index settings apply); Err says why not.
pub fn ensure_onnxruntime(python: &Path) -> Result<(), String> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        let has = || {
            Command::new(python)
                .args(["-c", "import onnxruntime, numpy"])
                .output()
                .is_ok_and(|o| o.status.success())
        };
        if has() {
            return Ok(());
        }
        eprintln!("installing onnxruntime=={ONNXRUNTIME} into {} (once)", python.display());
        let out = Command::new(python)
            .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check"])
            .arg(format!("onnxruntime=={ONNXRUNTIME}"))
            .output()
            .map_err(|e| format!("cannot start {}: {e}", python.display()))?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
            return Err(format!(
                "pip install onnxruntime=={ONNXRUNTIME} failed ({}): {}",
                out.status,
                tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
            ));
        }
        if has() { Ok(()) } else { Err("onnxruntime installed but not importable".to_owned()) }
    })
    .clone()
}

/// What onnxruntime gave for a batch: the probabilities `[N * classes]` and the script's report.
#[derive(Debug)]
pub struct OrtRun {
    pub probabilities: Vec<f32>,
    pub report: serde_json::Value,
}

/// Runs `onnx` under onnxruntime on `pixels` (float32 `[n, 3, h, w]`, RGB 0-255).
pub fn run_onnxruntime(
    python: &Path,
    onnx: &Path,
    pixels: &[f32],
    [n, h, w]: [usize; 3],
) -> OrtRun {
    assert_eq!(pixels.len(), n * 3 * h * w);
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("pixels.f32");
    let output = dir.path().join("probabilities.f32");
    std::fs::write(&input, pixels.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>())
        .unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/run_onnxruntime.py");
    let out = Command::new(python)
        .arg(&script)
        .arg(onnx)
        .arg(&input)
        .args([n.to_string(), h.to_string(), w.to_string()])
        .arg(&output)
        .output()
        .expect("start python");
    assert!(
        out.status.success(),
        "onnxruntime on {} failed:\n{}",
        onnx.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("script output is not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout))
    });
    let bytes = std::fs::read(&output).unwrap();
    let probabilities =
        bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    OrtRun { probabilities, report }
}

/// Largest absolute and relative (to ours) difference, and the largest excess over
/// `ATOL + RTOL * |ours|` (0 when every value is within tolerance).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Difference {
    pub max_abs: f64,
    pub max_rel: f64,
    pub worst_excess: f64,
}

pub fn compare(ours: &[f32], theirs: &[f32]) -> Difference {
    assert_eq!(ours.len(), theirs.len(), "different numbers of probabilities");
    let mut d = Difference { max_abs: 0.0, max_rel: 0.0, worst_excess: 0.0 };
    for (&a, &b) in ours.iter().zip(theirs) {
        let (a, b) = (f64::from(a), f64::from(b));
        let abs = (a - b).abs();
        d.max_abs = d.max_abs.max(abs);
        if a != 0.0 {
            d.max_rel = d.max_rel.max(abs / a.abs());
        }
        d.worst_excess = d.worst_excess.max(abs - (ATOL + RTOL * a.abs()));
    }
    d
}

/// RGB u8 `[n, h, w, 3]` (what the dataset crate hands out) as float32 `[n, 3, h, w]`.
pub fn nhwc_u8_to_nchw_f32(images: &[u8], [n, h, w]: [usize; 3]) -> Vec<f32> {
    let mut out = vec![0.0f32; n * 3 * h * w];
    for i in 0..n {
        for y in 0..h {
            for x in 0..w {
                for c in 0..3 {
                    out[((i * 3 + c) * h + y) * w + x] =
                        f32::from(images[((i * h + y) * w + x) * 3 + c]);
                }
            }
        }
    }
    out
}
