//! `cargo xtask pipeline --remote s3://BUCKET/PREFIX`: a team's feature cache in an object store
//! around the extraction stages, the DVC way. Before an extraction runs, the chunk entries and
//! split indexes it needs (`extract-features --plan-only`) that the store has committed are
//! pulled into the local cache, so the stage finds them and computes only the rest; after it
//! ran, everything its `features.json` names is pushed. The store is reached only through
//! `feature-cache-remote` (crate `feature-remote`), built on first use, so neither xtask nor a
//! stage binary links an S3 client.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use super::plan::Step;
use super::runner::Tools;

/// The package and binary that talk to object stores.
const PACKAGE: &str = "feature-remote";
const PROGRAM: &str = "feature-cache-remote";

/// An object store the extraction stages pull from and push to.
pub(super) struct RemoteCache {
    program: PathBuf,
    url: String,
    cache_dir: PathBuf,
}

impl RemoteCache {
    /// Builds `feature-cache-remote` (release) and checks the URL's form; `cache_dir` is the
    /// local cache the stages use.
    pub fn new(workspace: &Path, url: &str, cache_dir: PathBuf) -> Result<Self> {
        if !url.starts_with("s3://") || url.len() <= "s3://".len() {
            bail!("--remote {url:?}: expected s3://BUCKET/PREFIX");
        }
        eprintln!("building {PROGRAM} (release; the S3 client, only for --remote)");
        let mut build = crate::cargo();
        build.current_dir(workspace).args(["build", "--release", "-p", PACKAGE]);
        crate::run_checked(&mut build, "cargo build --release -p feature-remote")?;
        let program = crate::weights::target_dir(workspace).join("release").join(PROGRAM);
        Ok(Self { program, url: url.to_owned(), cache_dir })
    }

    /// Pulls what the extraction `step` needs and the store has: its plan's split indexes
    /// (each with its chunks) and chunks, those among the store's commits.
    pub fn pull_for(&self, tools: &Tools, step: &Step) -> Result<()> {
        let plan = plan_keys(tools, step)?;
        let committed = self.committed()?;
        let wanted: Vec<&String> = plan.iter().filter(|k| committed.contains(*k)).collect();
        eprintln!(
            "    {} of the {} keys {} needs are in {}",
            wanted.len(),
            plan.len(),
            step.name,
            self.url
        );
        if wanted.is_empty() {
            return Ok(());
        }
        let mut pull = self.command("pull");
        pull.args(wanted);
        crate::run_checked(&mut pull, "feature-cache-remote pull")
    }

    /// Pushes every split the extraction stage folder `dir` recorded (`features.json`).
    pub fn push_from(&self, dir: &Path) -> Result<()> {
        let mut push = self.command("push");
        push.arg("--from").arg(dir.join(feature_cache::EXTRACTION_FILE));
        crate::run_checked(&mut push, "feature-cache-remote push")
    }

    /// Keys of the store's commits (`feature-cache-remote ls`: the key is each line's second
    /// field).
    fn committed(&self) -> Result<BTreeSet<String>> {
        let out = self
            .command("ls")
            .stderr(Stdio::inherit())
            .output()
            .with_context(|| format!("running {}", self.program.display()))?;
        if !out.status.success() {
            bail!("feature-cache-remote ls --remote {} failed ({})", self.url, out.status);
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|line| line.split_whitespace().nth(1))
            .filter(|key| feature_cache::is_key(key))
            .map(str::to_owned)
            .collect())
    }

    /// `feature-cache-remote --cache-dir DIR <subcommand> --remote URL`.
    fn command(&self, subcommand: &str) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.arg("--cache-dir").arg(&self.cache_dir).arg(subcommand).arg("--remote").arg(&self.url);
        cmd
    }
}

/// The split index and chunk keys the extraction `step` needs (`extract-features --plan-only`).
fn plan_keys(tools: &Tools, step: &Step) -> Result<Vec<String>> {
    let mut cmd = tools.command(step);
    cmd.arg(crate::stage_args::flag::PLAN_ONLY).stderr(Stdio::inherit());
    let out = cmd.output().with_context(|| format!("running {} --plan-only", step.binary))?;
    if !out.status.success() {
        bail!("{} --plan-only failed ({})", step.binary, out.status);
    }
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("{} --plan-only printed no plan", step.binary))?;
    let keys = |field: &str| -> Vec<String> {
        plan[field]
            .as_array()
            .map(|a| a.iter().filter_map(|k| k.as_str().map(str::to_owned)).collect())
            .unwrap_or_default()
    };
    Ok(keys("indexes").into_iter().chain(keys("chunks")).collect())
}
