//! `cargo xtask bench dataset`: runs `crates/dataset/examples/bench.rs` in release mode from
//! the repository root, with the torch venv's Python (if it is installed; never installs it) as
//! the PIL reference. Figures go to stdout; BENCHMARKS.md keeps the latest.

use anyhow::Result;

pub fn run(args: &[String]) -> Result<()> {
    let mut cmd = crate::cargo();
    cmd.args(["run", "--release", "--quiet", "-p", "dataset", "--example", "bench", "--"]);
    let python = std::env::var_os("TRANSFER_KIT_PYTHON")
        .map(std::path::PathBuf::from)
        .or_else(|| crate::libtorch::venv_dir().ok().map(|v| v.join("bin").join("python")))
        .filter(|p| p.exists());
    if let Some(python) = python {
        cmd.arg("--python").arg(python);
    }
    cmd.args(args).current_dir(crate::workspace_root());
    crate::run_checked(&mut cmd, "the dataset benchmark")
}
