//! Running stages: the release binaries ([`Tools`]), one child process per stage with its
//! output shown and copied to `<stage>/log.txt`, the `pipeline.pending.json` marker while it
//! runs and `pipeline.json` once it succeeded.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use super::plan::Step;
use super::state::{INVOCATION, PENDING, Pending};
use crate::libtorch::Libtorch;

/// libtorch and the folder of the release binaries the pipeline runs.
pub(super) struct Tools {
    pub torch: Libtorch,
    /// `<target>/release`.
    pub release: PathBuf,
}

impl Tools {
    /// Installs libtorch if it is missing and builds the release binaries.
    pub fn build(workspace: &Path) -> Result<Self> {
        let torch = crate::libtorch::ensure()?;
        eprintln!("building the stage binaries (release)");
        let release = crate::build_release(&torch, workspace)?;
        Ok(Self { torch, release })
    }

    /// What is there already, for `--status` (which installs and builds nothing): `Err` says
    /// what is missing.
    pub fn existing(workspace: &Path) -> Result<Self> {
        let torch = crate::libtorch::find()?.context("libtorch is not installed yet")?;
        let release = crate::weights::target_dir(workspace).join("release");
        Ok(Self { torch, release })
    }

    fn binary(&self, step: &Step) -> PathBuf {
        self.release.join(step.binary)
    }

    /// The step's binary with its arguments and libtorch's environment, not started.
    pub fn command(&self, step: &Step) -> Command {
        let mut cmd = Command::new(self.binary(step));
        cmd.args(&step.args);
        self.torch.configure(&mut cmd);
        cmd
    }
}

/// A checkpoint is only continued by the build that wrote it: after a rebuild (a pull, an edit)
/// the checkpoint format or the training code may differ, so the stage starts afresh instead.
pub(super) fn same_binary_as_interrupted(tools: &Tools, step: &Step, dir: &Path) -> Result<bool> {
    let pending: Pending = run_folder::read_json(&dir.join(PENDING))?;
    let now = run_folder::file_sha256(&tools.binary(step))?.sha256;
    if pending.binary_sha256 != now {
        eprintln!("    {} was rebuilt since the interruption: starting afresh", step.binary);
    }
    Ok(pending.binary_sha256 == now)
}

/// Runs one stage binary, its stderr shown and copied to `<stage>/log.txt`; records the
/// invocation once it succeeded.
///
/// Unless it resumes, the stage folder is emptied first, so outputs of other settings can never
/// pass for this run's; `pipeline.pending.json` marks the run as started until it succeeds.
pub(super) fn run_stage(tools: &Tools, step: &Step, dir: &Path, resume: bool) -> Result<()> {
    if let Some(why) = &step.undetermined {
        bail!("stage {} cannot run: {why}", step.name);
    }
    if !resume && dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let _ = std::fs::remove_file(dir.join(INVOCATION));
    let binary = tools.binary(step);
    let pending = Pending {
        invocation: step.invocation(),
        binary_sha256: run_folder::file_sha256(&binary)?.sha256,
    };
    run_folder::write_json(&dir.join(PENDING), &pending)?;
    let args = match (&step.resume_args, resume) {
        (Some(resume_args), true) => resume_args,
        _ => &step.args,
    };
    let log_path = dir.join(run_folder::STAGE_LOG_FILE);
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    writeln!(log, "$ {} {}", binary.display(), args.join(" "))?;
    let mut cmd = Command::new(&binary);
    // Output is piped into the log, so no colour codes.
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).env("NO_COLOR", "1");
    tools.torch.configure(&mut cmd);
    let mut child = cmd.spawn().with_context(|| format!("starting {}", binary.display()))?;
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let tx2 = tx.clone();
    let readers = [
        std::thread::spawn(move || {
            BufReader::new(stdout).lines().map_while(Result::ok).for_each(|l| drop(tx.send(l)))
        }),
        std::thread::spawn(move || {
            BufReader::new(stderr).lines().map_while(Result::ok).for_each(|l| drop(tx2.send(l)))
        }),
    ];
    for line in rx {
        eprintln!("    {line}");
        writeln!(log, "{line}")?;
    }
    for r in readers {
        let _ = r.join();
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("stage {} failed ({status}); its log: {}", step.name, log_path.display());
    }
    run_folder::write_json(&dir.join(INVOCATION), &step.invocation())?;
    std::fs::remove_file(dir.join(PENDING))
        .with_context(|| format!("removing {}", dir.join(PENDING).display()))?;
    Ok(())
}
