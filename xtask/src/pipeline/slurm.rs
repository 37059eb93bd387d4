//! `cargo xtask pipeline --emit slurm --shards N [--gpus-per-task G]`: the run's stages as Slurm
//! batch jobs, written to `runs/<name>/slurm/`, never submitted or watched by xtask (the pipeline
//! stays a generator of scripts; Slurm is the scheduler).
//!
//! One `<job>.sbatch` per job, each with its `#SBATCH` options and the stage's command line from
//! the plan (so from [`crate::stage_args`]), and `submit.sh`, which submits them in plan order
//! chained by `--dependency=afterok:<ids> --kill-on-invalid-dep=yes` (a failed job cancels
//! everything after it instead of leaving it pending forever):
//! - `dataset`: the data check, which every other job waits for (as the pipeline stops on it);
//! - each extraction as an array of N tasks (`extract-features ... --shard auto/N`, each task's
//!   shard from `SLURM_ARRAY_TASK_ID`, N explicit because a resubmitted task sees
//!   `SLURM_ARRAY_TASK_COUNT=1`), then its merge (`--merge --shards N`), which checks every chunk
//!   and writes the stage's outputs; a later extraction waits for the earlier merge, so it
//!   derives from those chunks as the pipeline's order intends;
//! - the other stages (heads, fine-tuning, the scratch baseline, pretraining) after the stages
//!   whose outputs are their inputs (the plan's named inputs, so the graph is the plan's own);
//!   `fine-tune` with `--requeue`.
//!
//! A job that runs a stage marks it with `pipeline.pending.json` and records `pipeline.json`
//! when it succeeded, as the pipeline's runner does (inputs that are earlier outputs digested
//! when the job runs). So a resumable stage (fine-tune) whose marker holds this very invocation
//! was started and not finished (requeued by Slurm, or killed and submitted again) and continues
//! from its checkpoint with the plan's resume arguments (`--resume`); any other starts afresh
//! in an emptied folder.
//!
//! `evaluate`, `explain` and the report are left out: they pick the best model by the metrics of
//! the finished stages; a later `cargo xtask pipeline` with the same settings finds the stages
//! the jobs finished done (by their `pipeline.json`) and runs only the rest. Every job first
//! checks that its release binary is the one the script was written for (a rebuild changes what
//! a checkpoint or a cache key means).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::config::Config;
use super::layers::Derived;
use super::plan::{Step, plan};
use super::runner::Tools;
use super::state::Pending;
use crate::shell_quote;
use crate::stage_args::{DatasetCheck, Evaluate, Explain, ExtractFeatures, StageArgs, flag};

/// `cargo xtask pipeline` flags that write job scripts instead of running the stages.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct EmitArgs {
    /// Write the run's stages as job scripts for a scheduler (runs/<name>/slurm/submit.sh and
    /// one .sbatch per job) instead of running them; the release binaries are built first.
    #[arg(long, value_enum)]
    pub emit: Option<Emit>,
    /// With --emit slurm: array tasks per extraction, each running `extract-features --shard
    /// auto/N`.
    #[arg(long, requires = "emit", required_if_eq("emit", "slurm"),
          value_parser = clap::value_parser!(u32).range(1..))]
    pub shards: Option<u32>,
    /// With --emit slurm: GPUs per extraction task (`--gres=gpu:G`); the training stages then
    /// ask for one GPU each. Default: no GPU request.
    #[arg(long, requires = "emit")]
    pub gpus_per_task: Option<u32>,
}

/// `--emit`: which scheduler's scripts.
#[derive(Debug, Clone, Copy, PartialEq, clap::ValueEnum)]
pub enum Emit {
    /// Slurm batch scripts chained by dependencies.
    Slurm,
}

/// The folder under the run folder the scripts go to.
const SLURM_DIR: &str = "slurm";
/// The script that submits the others.
const SUBMIT: &str = "submit.sh";

/// Everything a job script needs from outside the plan.
pub(super) struct JobSetup<'a> {
    pub run_name: &'a str,
    pub run_dir: &'a Path,
    /// The base weights the plan transfers (its `weights` input, digested when a job runs:
    /// a `pretrain` job may write it).
    pub weights: &'a Path,
    /// `<target>/release`.
    pub release: &'a Path,
    /// sha256 of each binary the jobs run, checked by every job before it starts.
    pub binary_sha256: BTreeMap<&'static str, String>,
    pub shards: u32,
    pub gpus_per_task: Option<u32>,
}

/// `--emit slurm`: plans the run (release binaries built, layer names checked, as a run does)
/// and writes its job scripts instead of running the stages; returns the planned stage names.
pub(super) fn emit(
    args: &EmitArgs,
    config: &Config,
    derived: &Derived,
    paths: (&Path, &Path, &Path),
    tools: &Tools,
) -> Result<Vec<&'static str>> {
    let (run_dir, data, weights) = paths;
    let Some(Emit::Slurm) = args.emit else { bail!("nothing to emit") };
    let shards = args.shards.context("--emit slurm needs --shards N")?;
    if let Some(compare) = &config.compare {
        eprintln!(
            "note: the [compare] run `{}` is not in the scripts: emit it on its own (--config {} \
             --name {} --data {})",
            compare.name,
            compare.config.display(),
            compare.name,
            config.run.data.display()
        );
    }
    let steps = plan(config, derived, run_dir, data, weights)?;
    let ctx = JobSetup {
        run_name: &config.run.name,
        run_dir,
        weights,
        release: &tools.release,
        binary_sha256: binary_digests(&steps, &tools.release)?,
        shards,
        gpus_per_task: args.gpus_per_task,
    };
    let submit = write(&steps, &ctx)?;
    let left: Vec<&str> = steps.iter().filter(|s| !scheduled(s)).map(|s| s.name).collect();
    eprintln!(
        "wrote {} and a .sbatch per job beside it: run `bash {}` where sbatch works{}",
        submit.display(),
        submit.display(),
        if left.is_empty() {
            String::new()
        } else {
            format!(
                "; afterwards `cargo xtask pipeline` with the same settings runs {}",
                left.join(", ")
            )
        }
    );
    Ok(steps.iter().map(|s| s.name).collect())
}

/// Writes the job scripts of `steps` into `<run>/slurm/` (stale `.sbatch` files of earlier
/// settings removed; `logs/` kept) and returns the path of `submit.sh`.
fn write(steps: &[Step], ctx: &JobSetup) -> Result<PathBuf> {
    let dir = ctx.run_dir.join(SLURM_DIR);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "sbatch") {
            std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        }
    }
    for (name, text) in scripts(steps, ctx)? {
        let path = dir.join(&name);
        run_folder::write_atomic(&path, text.as_bytes())?;
        if name == SUBMIT {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                .with_context(|| format!("making {} executable", path.display()))?;
        }
    }
    Ok(dir.join(SUBMIT))
}

/// The sha256 of every binary `steps` run, from `release`.
fn binary_digests(steps: &[Step], release: &Path) -> Result<BTreeMap<&'static str, String>> {
    let mut digests = BTreeMap::new();
    for step in steps.iter().filter(|s| scheduled(s)) {
        if !digests.contains_key(step.binary) {
            let digest = run_folder::file_sha256(&release.join(step.binary))?.sha256;
            digests.insert(step.binary, digest);
        }
    }
    Ok(digests)
}

/// Whether a step becomes a job: not those that choose the best model by finished metrics.
fn scheduled(step: &Step) -> bool {
    step.binary != Evaluate::BINARY && step.binary != Explain::BINARY
}

/// What a job does with its step.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    /// The stage in one process.
    Stage,
    /// An extraction's array of shard tasks.
    Shards,
    /// An extraction's merge, which writes the stage outputs.
    Merge,
}

/// One batch job.
struct Job<'a> {
    /// File stem and shell variable name base: the stage name, `-merge` for a merge.
    name: String,
    step: &'a Step,
    kind: Kind,
    /// Jobs (by name) that must have succeeded first.
    after: Vec<String>,
}

/// The jobs of `steps`, in submission order.
fn jobs<'a>(steps: &'a [Step], ctx: &JobSetup) -> Result<Vec<Job<'a>>> {
    let mut jobs: Vec<Job> = Vec::new();
    // The job that completes each stage (an extraction's merge).
    let mut done_by: BTreeMap<&str, String> = BTreeMap::new();
    let mut check = None;
    let mut last_extraction: Option<String> = None;
    for step in steps.iter().filter(|s| scheduled(s)) {
        if let Some(why) = &step.undetermined {
            bail!("stage {} cannot be scheduled: {why}", step.name);
        }
        let mut after = Vec::new();
        if let Some(check) = &check {
            after.push(String::clone(check));
        }
        for key in step.inputs.keys() {
            if let Some(stage) = producer(key, ctx, step)? {
                let job = done_by.get(stage.as_str()).with_context(|| {
                    format!(
                        "stage {} reads {key}, which no earlier planned stage writes",
                        step.name
                    )
                })?;
                after.push(job.clone());
            }
        }
        if step.binary == ExtractFeatures::BINARY {
            after.extend(last_extraction.clone());
        }
        after.sort();
        after.dedup();
        if step.binary == ExtractFeatures::BINARY {
            let merge = format!("{}-merge", step.name);
            jobs.push(Job { name: step.name.into(), step, kind: Kind::Shards, after });
            jobs.push(Job {
                name: merge.clone(),
                step,
                kind: Kind::Merge,
                after: vec![step.name.into()],
            });
            done_by.insert(step.name, merge.clone());
            last_extraction = Some(merge);
        } else {
            jobs.push(Job { name: step.name.into(), step, kind: Kind::Stage, after });
            done_by.insert(step.name, step.name.into());
        }
        if step.binary == DatasetCheck::BINARY {
            check = Some(step.name.to_owned());
        }
    }
    Ok(jobs)
}

/// The stage whose output input `key` of `step` is, if it is one: `<stage>/<file>` names a
/// file in the run folder; `weights` is the base, a stage's output when it lies in a stage
/// folder (a pretrained base). Any other input (a dataset's identity) is fixed when the script
/// is written.
fn producer(key: &str, ctx: &JobSetup, step: &Step) -> Result<Option<String>> {
    if key == WEIGHTS_INPUT {
        let Ok(inside) = ctx.weights.strip_prefix(ctx.run_dir) else { return Ok(None) };
        return Ok(inside.components().next().map(|c| c.as_os_str().to_string_lossy().into()));
    }
    match key.split_once('/') {
        Some((stage, _)) => Ok(Some(stage.to_owned())),
        None if step.inputs[key] == "absent" => {
            bail!("stage {}: input {key} does not exist yet and is no stage's output", step.name)
        }
        None => Ok(None),
    }
}

/// The plan's name for the base weights' digest.
const WEIGHTS_INPUT: &str = "weights";

/// The file whose sha256 input `key` records, when it is digested as the job runs.
fn digested_file(key: &str, ctx: &JobSetup) -> Option<PathBuf> {
    if key == WEIGHTS_INPUT {
        Some(ctx.weights.to_owned())
    } else if key.contains('/') {
        Some(ctx.run_dir.join(key))
    } else {
        None
    }
}

/// Every script, as (file name, text).
fn scripts(steps: &[Step], ctx: &JobSetup) -> Result<Vec<(String, String)>> {
    if ctx.shards == 0 {
        bail!("--shards must be at least 1");
    }
    let jobs = jobs(steps, ctx)?;
    let mut out = Vec::new();
    for job in &jobs {
        out.push((format!("{}.sbatch", job.name), job_script(job, ctx)?));
    }
    out.push((SUBMIT.to_owned(), submit_script(&jobs, ctx)));
    Ok(out)
}

fn logs_dir(ctx: &JobSetup) -> PathBuf {
    ctx.run_dir.join(SLURM_DIR).join("logs")
}

/// `words` as one shell line, each quoted.
fn quoted(words: &[String]) -> String {
    words.iter().map(|w| shell_quote(w)).collect::<Vec<_>>().join(" ")
}

/// `name` as a shell variable name.
fn var(name: &str) -> String {
    name.replace('-', "_")
}

fn job_script(job: &Job, ctx: &JobSetup) -> Result<String> {
    let step = job.step;
    let stage = ctx.run_dir.join(step.name);
    let binary = ctx.release.join(step.binary);
    let mut s = String::from("#!/bin/bash\n");
    let sbatch = |s: &mut String, option: &str| writeln!(s, "#SBATCH {option}").unwrap();
    sbatch(
        &mut s,
        &format!("--job-name={}", shell_word(&format!("{}-{}", ctx.run_name, job.name))),
    );
    let pattern = if job.kind == Kind::Shards { "%A_%a" } else { "%j" };
    let log = logs_dir(ctx).join(format!("{}-{pattern}.out", job.name)).display().to_string();
    if log.contains(char::is_whitespace) {
        bail!("{log}: an #SBATCH --output path cannot hold spaces; use a run folder without");
    }
    sbatch(&mut s, &format!("--output={log}"));
    match (job.kind, ctx.gpus_per_task) {
        (Kind::Shards, gpus) => {
            sbatch(&mut s, &format!("--array=0-{}", ctx.shards - 1));
            if let Some(g) = gpus {
                sbatch(&mut s, &format!("--gres=gpu:{g}"));
            }
        }
        (Kind::Stage, Some(_)) if step.binary != DatasetCheck::BINARY => {
            sbatch(&mut s, "--gres=gpu:1");
        }
        _ => {}
    }
    if step.resume_args.is_some() {
        sbatch(&mut s, "--requeue");
    }
    let what = match job.kind {
        Kind::Stage => format!("`{}`", step.binary),
        Kind::Shards => format!("shard $SLURM_ARRAY_TASK_ID of {} (an array task)", ctx.shards),
        Kind::Merge => format!("the merge of its {} shards (writes the outputs)", ctx.shards),
    };
    writeln!(
        s,
        "# Run `{}`, stage `{}`: {what}.\n\
         # Written by `cargo xtask pipeline --emit slurm`; {SUBMIT} submits it{}.",
        ctx.run_name,
        step.name,
        if job.after.is_empty() {
            String::new()
        } else {
            format!(" after {}", job.after.join(", "))
        },
    )?;
    s.push_str("set -euo pipefail\n");
    writeln!(s, "binary={}", shell_quote(&binary.display().to_string()))?;
    writeln!(s, "stage={}", shell_quote(&stage.display().to_string()))?;
    let expected = ctx
        .binary_sha256
        .get(step.binary)
        .with_context(|| format!("no digest of {}", step.binary))?;
    s.push_str(
        "digest() { if [ -f \"$1\" ]; then sha256sum \"$1\" | cut -d' ' -f1; else echo absent; fi; }\n",
    );
    writeln!(
        s,
        "if [ \"$(digest \"$binary\")\" != {expected} ]; then\n    \
         echo \"error: $binary is not the build this script was written for: run \
         \\`cargo xtask pipeline --emit slurm\\` again\" >&2\n    exit 1\nfi"
    )?;
    match job.kind {
        Kind::Shards => {
            let mut args = step.args.clone();
            args.extend([flag::SHARD.into(), format!("auto/{}", ctx.shards)]);
            // The tasks share the stage folder: each writes only shards/<i>-of-<n>.json there.
            s.push_str("mkdir -p \"$stage\"\n");
            writeln!(s, "exec \"$binary\" {}", quoted(&args))?;
        }
        Kind::Merge => {
            let mut args = step.args.clone();
            args.extend([flag::MERGE.into(), flag::SHARDS.into(), ctx.shards.to_string()]);
            // The shards' folder: only the pipeline's own files change here before the merge.
            writeln!(s, "pending=$(printf '%s' {})", record_words(step, ctx, Some(expected))?)?;
            s.push_str(
                "mkdir -p \"$stage\"\n\
                 printf '%s' \"$pending\" >\"$stage/pipeline.pending.json\"\n\
                 rm -f \"$stage/pipeline.json\"\n",
            );
            writeln!(s, "\"$binary\" {}", quoted(&args))?;
            s.push_str(&record_invocation(step, ctx)?);
        }
        Kind::Stage => {
            writeln!(s, "args=({})", quoted(&step.args))?;
            writeln!(s, "pending=$(printf '%s' {})", record_words(step, ctx, Some(expected))?)?;
            // As the pipeline's runner: a stage run afresh gets an emptied folder and the
            // pending marker; a resumable one started with this very invocation and not
            // finished (requeued by Slurm, or killed and submitted again) continues instead.
            let afresh = "rm -rf \"$stage\"\n\
                          mkdir -p \"$stage\"\n\
                          printf '%s' \"$pending\" >\"$stage/pipeline.pending.json\"\n";
            match &step.resume_args {
                Some(resume) => writeln!(
                    s,
                    "if [ \"$(cat \"$stage/pipeline.pending.json\" 2>/dev/null)\" = \"$pending\" ]; then\n    \
                     echo \"continuing the interrupted run from its checkpoint\" >&2\n    \
                     args=({})\nelse\n{}fi",
                    quoted(resume),
                    afresh.lines().map(|l| format!("    {l}\n")).collect::<String>()
                )?,
                None => s.push_str(afresh),
            }
            s.push_str("rm -f \"$stage/pipeline.json\"\n\"$binary\" \"${args[@]}\"\n");
            s.push_str(&record_invocation(step, ctx)?);
        }
    }
    Ok(s)
}

/// Shell lines writing `pipeline.json` (the plan's invocation of `step`) once the stage
/// succeeded, and removing the pending marker, as the pipeline's runner does.
fn record_invocation(step: &Step, ctx: &JobSetup) -> Result<String> {
    Ok(format!(
        "# Recorded as the pipeline records a stage that succeeded, so `cargo xtask pipeline`\n\
         # finds it done.\n\
         printf '%s' {} >\"$stage/pipeline.json.tmp\"\n\
         mv \"$stage/pipeline.json.tmp\" \"$stage/pipeline.json\"\n\
         rm -f \"$stage/pipeline.pending.json\"\n",
        record_words(step, ctx, None)?
    ))
}

/// `printf '%s'` arguments giving the plan's invocation of `step` as JSON (`pipeline.json`),
/// or with `binary_sha256` the pending marker (`pipeline.pending.json`); inputs that are files
/// are digested when the job runs (`digest`), the others fixed now.
fn record_words(step: &Step, ctx: &JobSetup, binary_sha256: Option<&str>) -> Result<String> {
    let mut invocation = step.invocation();
    let mut files = Vec::new();
    for (key, value) in &mut invocation.inputs {
        if let Some(file) = digested_file(key, ctx) {
            *value = format!("@@digest-{}@@", files.len());
            files.push(file);
        }
    }
    let json = match binary_sha256 {
        None => serde_json::to_string(&invocation)?,
        Some(sha) => serde_json::to_string(&Pending { invocation, binary_sha256: sha.into() })?,
    };
    let mut parts = vec![];
    let mut rest = json.as_str();
    for (i, file) in files.iter().enumerate() {
        let marker = format!("\"@@digest-{i}@@\"");
        if rest.matches(&marker).count() != 1 {
            bail!("stage {}: cannot place input digest {i} in its record", step.name);
        }
        let (before, after) = rest.split_once(&marker).expect("counted");
        parts.push(shell_quote(&format!("{before}\"")));
        parts.push(format!("\"$(digest {})\"", shell_quote(&file.display().to_string())));
        rest = after;
        parts.push(shell_quote("\""));
    }
    parts.push(shell_quote(rest));
    Ok(parts.join(" "))
}

/// A word for an `#SBATCH` line (no quoting there): spaces would end it.
fn shell_word(s: &str) -> String {
    s.replace(char::is_whitespace, "_")
}

fn submit_script(jobs: &[Job], ctx: &JobSetup) -> String {
    let dir = ctx.run_dir.join(SLURM_DIR);
    let mut s = String::from("#!/bin/bash\n");
    let _ = writeln!(
        s,
        "# Submits run `{run}` to Slurm: every stage a batch job ({n} extraction tasks each),\n\
         # chained by --dependency=afterok with --kill-on-invalid-dep=yes, so a failed job\n\
         # cancels the jobs after it. Written by `cargo xtask pipeline --emit slurm`; run it where\n\
         # sbatch works, with the run folder, the cache and the release binaries on a filesystem\n\
         # every node sees. Cluster options (partition, account, time) come from the\n\
         # environment: SBATCH_PARTITION, SBATCH_ACCOUNT, SBATCH_TIMELIMIT, ...\n\
         #\n\
         # After a failure, fix its cause and run this script again: finished chunks are found\n\
         # in the cache and only missing ones are computed. Or submit single jobs by hand, e.g.\n\
         # one extraction task I: `sbatch --array=I <stage>.sbatch`, then its merge with\n\
         # `sbatch --dependency=afterok:<that job id> <stage>-merge.sbatch`.\n\
         # When the jobs are done, `cargo xtask pipeline` with the same settings finds those\n\
         # stages done and runs only `evaluate`, `explain` and the report.",
        run = ctx.run_name,
        n = ctx.shards
    );
    s.push_str("set -euo pipefail\n");
    let _ = writeln!(s, "dir={}", shell_quote(&dir.display().to_string()));
    let _ = writeln!(s, "mkdir -p {}", shell_quote(&logs_dir(ctx).display().to_string()));
    s.push_str(
        "# submit JOB [AFTER...]: sbatch JOB.sbatch after the jobs AFTER (ids) succeeded; prints\n\
         # its id.\n\
         submit() {\n    \
             local job=$1\n    \
             shift\n    \
             local dependency=()\n    \
             if [ $# -gt 0 ]; then\n        \
                 dependency=(--dependency=\"afterok:$(IFS=:; echo \"$*\")\" --kill-on-invalid-dep=yes)\n    \
             fi\n    \
             sbatch --parsable ${dependency[@]+\"${dependency[@]}\"} \"$dir/$job.sbatch\" | cut -d';' -f1\n\
         }\n",
    );
    for job in jobs {
        let after: Vec<String> = job.after.iter().map(|a| format!("\"${}\"", var(a))).collect();
        let _ = writeln!(
            s,
            "{}=$(submit {}{})",
            var(&job.name),
            job.name,
            after.iter().map(|a| format!(" {a}")).collect::<String>()
        );
        let _ = writeln!(s, "echo \"{:<22} job ${}\"", job.name, var(&job.name));
    }
    s
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;
    use crate::pipeline::config::{Config, Settings};
    use crate::pipeline::layers::{self, Tables};
    use crate::pipeline::plan::{base_weights, plan};
    use crate::pipeline::state::{Invocation, Status, status};

    /// A shipped config file with the demo profile, as `cargo xtask pipeline --config FILE`.
    use super::super::tests::resolved;

    /// The plan of `config` on a one-image dataset, its layer tables the committed fixtures
    /// (VGG16 at 64; the small convnet at 48 for a run that transfers its own base); the base
    /// weights it transfers.
    fn planned(config: &Config, dir: &Path) -> (Vec<Step>, PathBuf) {
        let data = dir.join("data");
        std::fs::create_dir_all(data.join("train/a")).unwrap();
        std::fs::write(data.join("train/a/x.png"), b"1").unwrap();
        let demo = dir.join("w.safetensors");
        std::fs::write(&demo, b"w").unwrap();
        let small = || layers::fixture_table("small-convnet-48.json");
        let own_base = config.pretrain.enabled && config.pretrain.use_as_base;
        let tables = Tables {
            base: if own_base { small() } else { layers::fixture_table("vgg16-64.json") },
            pretrain: config.pretrain.enabled.then(small),
            scratch: config.scratch.enabled.then(small),
        };
        let settings = Settings { config: config.clone(), file: "test.toml".into() };
        let derived = layers::check(&settings, &tables).unwrap();
        let run = dir.join("run");
        let weights = base_weights(config, dir, &run, || Ok(demo)).unwrap();
        (plan(config, &derived, &run, &data, &weights).unwrap(), weights)
    }

    fn context<'a>(run: &'a Path, weights: &'a Path, steps: &[Step]) -> JobSetup<'a> {
        JobSetup {
            run_name: "demo",
            run_dir: run,
            weights,
            release: Path::new("/opt/tk/release"),
            binary_sha256: steps.iter().map(|s| (s.binary, "0".repeat(64))).collect(),
            shards: 4,
            gpus_per_task: Some(2),
        }
    }

    fn script<'a>(scripts: &'a [(String, String)], name: &str) -> &'a str {
        &scripts.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("no {name}")).1
    }

    /// Runs submit.sh against a stub `sbatch` that logs its arguments and prints job ids
    /// 100, 101, ...; returns one line per sbatch call.
    fn submitted(dir: &Path, scripts: &[(String, String)]) -> Vec<String> {
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let stub = bin.join("sbatch");
        std::fs::write(
            &stub,
            "#!/bin/bash\nn=$(wc -l < \"$SBATCH_LOG\" 2>/dev/null || echo 0)\n\
             echo \"$((100 + n)) $*\" >>\"$SBATCH_LOG\"\necho \"$((100 + n));cluster\"\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&stub, std::fs::Permissions::from_mode(0o755)).unwrap();
        let submit = dir.join(SUBMIT);
        std::fs::write(&submit, script(scripts, SUBMIT)).unwrap();
        let log = dir.join("sbatch.log");
        let out = Command::new("bash")
            .arg(&submit)
            .env("PATH", format!("{}:{}", bin.display(), std::env::var("PATH").unwrap()))
            .env("SBATCH_LOG", &log)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        std::fs::read_to_string(&log).unwrap().lines().map(String::from).collect()
    }

    #[test]
    fn default_run_becomes_chained_jobs() {
        let dir = tempfile::tempdir().unwrap();
        let (steps, weights) = planned(&resolved("pipeline.toml"), dir.path());
        let run = dir.path().join("run");
        let ctx = context(&run, &weights, &steps);
        let scripts = scripts(&steps, &ctx).unwrap();
        let names: Vec<&str> = scripts.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "dataset.sbatch",
                "extract-trunk.sbatch",
                "extract-trunk-merge.sbatch",
                "extract.sbatch",
                "extract-merge.sbatch",
                "head.sbatch",
                "head-augmented.sbatch",
                "fine-tune.sbatch",
                "scratch.sbatch",
                SUBMIT
            ],
            "evaluate and explain are left to the pipeline"
        );

        let extract = script(&scripts, "extract.sbatch");
        assert!(extract.contains("#SBATCH --array=0-3\n"), "{extract}");
        assert!(extract.contains("#SBATCH --gres=gpu:2\n"), "{extract}");
        assert!(extract.contains("'--shard' 'auto/4'\n"), "{extract}");
        assert!(!extract.contains("pipeline.json"), "shard tasks record nothing: {extract}");
        let merge = script(&scripts, "extract-merge.sbatch");
        assert!(merge.contains("'--merge' '--shards' '4'\n"), "{merge}");
        assert!(!merge.contains("--array") && !merge.contains("--gres"), "{merge}");
        assert!(merge.contains("pipeline.json.tmp"), "the merge records the stage: {merge}");

        let fine_tune = script(&scripts, "fine-tune.sbatch");
        assert!(fine_tune.contains("#SBATCH --requeue\n"), "{fine_tune}");
        assert!(fine_tune.contains("#SBATCH --gres=gpu:1\n"), "{fine_tune}");
        let started = fine_tune.find("= \"$pending\" ]; then").expect("resume branch");
        let resume = fine_tune.find("'--resume'").expect("resume arguments");
        assert!(started < resume, "--resume only for a started run: {fine_tune}");
        assert_eq!(fine_tune.matches("'--resume'").count(), 1, "{fine_tune}");
        assert!(!script(&scripts, "head.sbatch").contains("--requeue"));
        assert!(!script(&scripts, "dataset.sbatch").contains("--gres"));

        // The dependency graph, by running submit.sh against a stub sbatch.
        let calls = submitted(dir.path(), &scripts);
        let call = |job: &str| -> (String, String) {
            let line = calls
                .iter()
                .find(|l| l.ends_with(&format!("/slurm/{job}.sbatch")))
                .unwrap_or_else(|| panic!("{job} not submitted: {calls:#?}"));
            let (id, rest) = line.split_once(' ').unwrap();
            (id.to_owned(), rest.to_owned())
        };
        let after = |job: &str| -> Vec<String> {
            let (_, args) = call(job);
            match args.split_once("--dependency=afterok:") {
                None => vec![],
                Some((_, deps)) => {
                    assert!(args.contains("--kill-on-invalid-dep=yes"), "{args}");
                    let deps = deps.split_whitespace().next().unwrap();
                    let mut names: Vec<String> = deps
                        .split(':')
                        .map(|id| {
                            let line =
                                calls.iter().find(|l| l.starts_with(&format!("{id} "))).unwrap();
                            let file = line.rsplit('/').next().unwrap();
                            file.trim_end_matches(".sbatch").to_owned()
                        })
                        .collect();
                    names.sort();
                    names
                }
            }
        };
        assert_eq!(calls.len(), 9, "{calls:#?}");
        assert!(after("dataset").is_empty());
        assert_eq!(after("extract-trunk"), ["dataset"]);
        assert_eq!(after("extract-trunk-merge"), ["extract-trunk"]);
        assert_eq!(after("extract"), ["dataset", "extract-trunk-merge"]);
        assert_eq!(after("extract-merge"), ["extract"]);
        assert_eq!(after("head"), ["dataset", "extract-merge"]);
        assert_eq!(after("head-augmented"), ["dataset", "extract-merge"]);
        assert_eq!(after("fine-tune"), ["dataset", "extract-trunk-merge", "head"]);
        assert_eq!(after("scratch"), ["dataset"]);
    }

    #[test]
    fn fine_tune_resumes_only_the_run_it_started() {
        let dir = tempfile::tempdir().unwrap();
        let (steps, weights) = planned(&resolved("pipeline.toml"), dir.path());
        let run = dir.path().join("run");
        // A stub fine-tune that logs its arguments and exits with $STUB_EXIT.
        let release = dir.path().join("release");
        std::fs::create_dir_all(&release).unwrap();
        let stub = release.join("fine-tune");
        std::fs::write(&stub, "#!/bin/bash\necho \"$*\" >>\"$STUB_LOG\"\nexit ${STUB_EXIT:-0}\n")
            .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&stub, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut ctx = context(&run, &weights, &steps);
        ctx.release = &release;
        ctx.binary_sha256.insert("fine-tune", run_folder::file_sha256(&stub).unwrap().sha256);
        let job = dir.path().join("fine-tune.sbatch");
        std::fs::write(&job, script(&scripts(&steps, &ctx).unwrap(), "fine-tune.sbatch")).unwrap();
        let log = dir.path().join("calls.log");
        let stage = run.join("fine-tune");
        let attempt = |exit: u8| {
            let status = Command::new("bash")
                .arg(&job)
                .env("STUB_LOG", &log)
                .env("STUB_EXIT", exit.to_string())
                .status()
                .unwrap();
            assert_eq!(status.success(), exit == 0);
            let calls = std::fs::read_to_string(&log).unwrap();
            calls.lines().last().unwrap().ends_with("--resume")
        };
        std::fs::create_dir_all(&stage).unwrap();
        std::fs::write(stage.join("stale.txt"), b"an earlier run's").unwrap();
        assert!(!attempt(1), "a first start runs afresh");
        assert!(!stage.join("stale.txt").exists(), "in an emptied folder");
        let fine_tune = steps.iter().find(|s| s.name == "fine-tune").unwrap();
        assert_eq!(
            status(fine_tune, &stage),
            Status::Interrupted { resumes: true },
            "the pipeline reads the job's marker as its own"
        );
        assert!(attempt(1), "the same job again (requeued) resumes");
        assert!(attempt(0), "and again, until it succeeds");
        assert!(stage.join(run_folder::PIPELINE_INVOCATION_FILE).exists());
        assert!(!stage.join(run_folder::PIPELINE_PENDING_FILE).exists());
        assert!(!attempt(0), "a finished run is not resumed: it starts afresh");
    }

    #[test]
    fn every_script_is_valid_bash() {
        for file in ["pipeline.toml", "homework.toml"] {
            let dir = tempfile::tempdir().unwrap();
            let mut config = resolved(file);
            // The pretraining digits: a folder of one image, as the run's data.
            config.pretrain.data = dir.path().join("data");
            let (steps, weights) = planned(&config, dir.path());
            let run = dir.path().join("run");
            let ctx = context(&run, &weights, &steps);
            let scripts = scripts(&steps, &ctx).unwrap();
            if config.pretrain.enabled {
                // The pretrained base is a stage output: extraction waits for `pretrain`.
                assert!(
                    script(&scripts, SUBMIT)
                        .contains("extract=$(submit extract \"$dataset\" \"$pretrain\")")
                );
            }
            for (name, text) in scripts {
                let path = dir.path().join(&name);
                std::fs::write(&path, &text).unwrap();
                let out = Command::new("bash").arg("-n").arg(&path).output().unwrap();
                assert!(
                    out.status.success(),
                    "{file} {name}: {}\n{text}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
    }

    #[test]
    fn a_stage_records_the_plans_invocation_with_digests_taken_when_it_ran() {
        let dir = tempfile::tempdir().unwrap();
        let (steps, weights) = planned(&resolved("pipeline.toml"), dir.path());
        let run = dir.path().join("run");
        let ctx = context(&run, &weights, &steps);
        let scripts = scripts(&steps, &ctx).unwrap();
        // The lines that write pipeline.json, run in a shell with the head's output in place.
        let head = script(&scripts, "head.sbatch");
        let features = run.join("extract").join("features.json");
        std::fs::create_dir_all(features.parent().unwrap()).unwrap();
        std::fs::write(&features, b"{}").unwrap();
        let stage = run.join("head");
        std::fs::create_dir_all(&stage).unwrap();
        let record: String = head
            .lines()
            .skip_while(|l| !l.starts_with("digest()"))
            .take(1)
            .chain(head.lines().skip_while(|l| !l.starts_with("# Recorded as")))
            .collect::<Vec<_>>()
            .join("\n");
        let out = Command::new("bash")
            .arg("-c")
            .arg(format!("set -e\nstage={}\n{record}", shell_quote(&stage.display().to_string())))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}\n{record}", String::from_utf8_lossy(&out.stderr));
        let recorded: Invocation = run_folder::read_json(&stage.join("pipeline.json")).unwrap();
        let step = steps.iter().find(|s| s.name == "head").unwrap();
        let mut wanted = step.invocation();
        wanted.inputs.insert(
            "extract/features.json".into(),
            run_folder::file_sha256(&features).unwrap().sha256,
        );
        assert_eq!(recorded, wanted);
    }
}
