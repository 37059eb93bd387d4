//! `cargo xtask bench head`: the seed's dense head trained on 2,000 x 8,192 features for 30
//! epochs (batch 20, RMSprop) by our `training` crate (example `head_bench`, release) and by the
//! same model and loop in Python PyTorch (crates/training/bench/head_reference.py), alternating
//! runs in one invocation. Prints medians and the ratio.

use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

pub fn run(args: &[String]) -> Result<()> {
    let runs: usize = args
        .iter()
        .position(|a| a == "--runs")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let torch = crate::libtorch::ensure()?;
    let root = crate::workspace_root();
    let mut build = crate::cargo();
    build.current_dir(&root).args([
        "build",
        "--release",
        "--quiet",
        "-p",
        "training",
        "--example",
        "head_bench",
    ]);
    torch.configure(&mut build);
    crate::run_checked(&mut build, "cargo build --example head_bench")?;
    let ours_bin = crate::weights::target_dir(&root).join("release/examples/head_bench");
    let python = torch.python.clone().unwrap_or_else(|| "python3".into());
    let script = root.join("crates/training/bench/head_reference.py");

    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for i in 0..runs {
        eprintln!("run {}/{runs}", i + 1);
        let mut cmd = Command::new(&ours_bin);
        cmd.args(["--runs", "1"]);
        torch.configure(&mut cmd);
        ours.extend(seconds(&mut cmd, "head_bench")?);
        let mut cmd = Command::new(&python);
        cmd.arg(&script)
            .args(["--runs", "1"])
            .env_remove("OPENBLAS_CORETYPE")
            .env_remove("OPENBLAS_L2_SIZE");
        theirs.extend(seconds(&mut cmd, "head_reference.py")?);
    }
    let (o, t) = (median(&mut ours), median(&mut theirs));
    println!(
        "| head: 2,000 x 8,192 features, 30 epochs, batch 20, RMSprop, CPU | ours {o:.2} s | PyTorch {t:.2} s | {:.2}x |",
        t / o
    );
    Ok(())
}

fn seconds(cmd: &mut Command, what: &str) -> Result<Vec<f64>> {
    let out =
        cmd.stderr(Stdio::inherit()).output().with_context(|| format!("could not start {what}"))?;
    if !out.status.success() {
        bail!("{what} failed ({})", out.status);
    }
    let line = String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or_default().to_owned();
    let value: serde_json::Value =
        serde_json::from_str(&line).with_context(|| format!("{what} printed {line:?}"))?;
    value["seconds"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_f64()).collect())
        .context("no seconds in the output")
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}
