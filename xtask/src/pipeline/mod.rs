//! `cargo xtask pipeline`: the whole workflow in one command. Installs what is missing (libtorch,
//! demo weights), builds the stage binaries, checks the settings' layer names and input sizes
//! against the base, runs the stages one process at a time, skips stages that are up to date,
//! and writes `runs/<name>/report.md` and `report.html`.
//!
//! A stage is up to date when its `stage.json` exists, every output still matches its digest, and
//! the invocation (arguments and input digests, kept in `pipeline.json` beside it) is the one the
//! pipeline would make now. `--status` prints that verdict per stage without running anything.
//!
//! One job per module: `config` (the settings), `layers` (layer tables, checks, derived
//! settings), `plan` (settings -> stage invocations), `state` (a stage folder against its
//! invocation), `runner` (building and running the binaries), `report_settings` (what the report
//! says about the settings). This file drives them.

mod config;
mod layers;
mod plan;
mod remote;
mod report_settings;
mod runner;
mod slurm;
mod state;
#[cfg(test)]
mod tests;

use std::cell::OnceCell;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::stage_args::{ExtractFeatures, StageArgs};

pub use config::Profile;
use config::{CompareConfig, Config, Settings, absolute};
use layers::Derived;
use plan::{base_weights, plan};
use runner::Tools;
use state::{Status, describe, status};

/// Command-line overrides of the config file.
#[derive(Debug, clap::Args)]
pub struct PipelineArgs {
    /// Pipeline settings (TOML); default: pipeline.toml at the repository root.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Run folder name (runs/<name>).
    #[arg(long)]
    name: Option<String>,
    /// Dataset root with train/, validation/ and test/ class folders.
    #[arg(long)]
    data: Option<PathBuf>,
    /// VGG16 conv-base weights (our safetensors); default: the demo weights.
    #[arg(long)]
    weights: Option<PathBuf>,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long)]
    device: Option<String>,
    /// Feature cache folder (may be shared with teammates).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// `seed` runs the seed's full settings (150x150, 30 head epochs, 100 fine-tuning epochs of
    /// the whole model on augmented images); `demo` the settings of the config file. Default:
    /// `seed` when a CUDA GPU is visible (`nvidia-smi -L`), else `demo`.
    #[arg(long, value_enum)]
    profile: Option<Profile>,
    /// List each stage as done / stale / corrupt / missing, without running anything.
    #[arg(long)]
    status: bool,
    /// Set for a `[compare]` run: its from-scratch baseline is left out (the run it is compared
    /// with has its own).
    #[arg(skip)]
    without_scratch: bool,
    /// `--emit slurm --shards N [--gpus-per-task G]`: job scripts instead of a run.
    #[command(flatten)]
    emit: slurm::EmitArgs,
    /// Share the feature cache through an S3-compatible object store: before each extraction,
    /// pull the entries it needs that the store has; after it, push what it recorded
    /// (`feature-cache-remote`, built on first use; credentials and endpoint from the AWS_*
    /// environment).
    #[arg(long, value_name = "s3://BUCKET/PREFIX", conflicts_with = "emit")]
    remote: Option<String>,
}

/// One `cargo xtask pipeline` invocation: the runs it makes share one build.
struct Session<'a> {
    workspace: &'a Path,
    /// Made on first use, so that errors in the settings come before any install or build.
    tools: OnceCell<Tools>,
}

impl Session<'_> {
    /// libtorch installed and the release binaries built, once per invocation.
    fn tools(&self) -> Result<&Tools> {
        if self.tools.get().is_none() {
            let _ = self.tools.set(Tools::build(self.workspace)?);
        }
        Ok(self.tools.get().expect("set above"))
    }
}

/// Runs `cargo xtask pipeline` (or `--status`) with `args`.
pub fn run(args: PipelineArgs, workspace: &Path) -> Result<()> {
    let session = Session { workspace, tools: OnceCell::new() };
    run_pipeline(args, &session).map(drop)
}

/// One pipeline run (after its `[compare]` run, if any); returns the names of the stages it
/// planned, in order.
fn run_pipeline(args: PipelineArgs, session: &Session) -> Result<Vec<&'static str>> {
    let workspace = session.workspace;
    let settings = config::resolve(&args, workspace)?;
    let config = &settings.config;
    let run_dir = workspace.join("runs").join(&config.run.name);
    let data = absolute(workspace, &config.run.data);
    if !data.is_dir() {
        bail!(
            "dataset {} does not exist (run `cargo xtask data` for the demo data)",
            data.display()
        );
    }

    if args.status {
        // Reports only: nothing is installed, built, converted or written.
        let weights = base_weights(config, workspace, &run_dir, crate::weights::demo_path)?;
        let derived = derive_if_built(&settings, &weights, workspace)?;
        if let Some(compare) = &config.compare {
            run_comparison(compare, &args, config, session)?;
            println!("run `{}`:", config.run.name);
        }
        let steps = plan(config, &derived, &run_dir, &data, &weights)?;
        for step in &steps {
            let dir = run_dir.join(step.name);
            let status = status(step, &dir);
            println!("{:<18} {}", step.name, describe(&status));
        }
        return Ok(steps.iter().map(|s| s.name).collect());
    }

    let tools = session.tools()?;
    let weights = base_weights(config, workspace, &run_dir, || {
        crate::weights::ensure_demo(&tools.torch, crate::weights::Build::Release)
    })?;
    // Before any stage, the compared run's included: a wrong layer name or an input too small
    // for the base's pools is a message naming the setting, not a failed stage.
    let input_size = config.extract.input_size;
    let tables =
        layers::tables(config, &weights, |base| layers::from_binary(tools, base, input_size))?;
    let derived = layers::check(&settings, &tables)?;
    if args.emit.emit.is_some() {
        return slurm::emit(&args.emit, config, &derived, (&run_dir, &data, &weights), tools);
    }
    let compared = match &config.compare {
        Some(compare) => {
            Some((compare.name.clone(), run_comparison(compare, &args, config, session)?))
        }
        None => None,
    };

    std::fs::create_dir_all(&run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
    run_folder::write_atomic(
        &run_dir.join("pipeline.resolved.toml"),
        toml::to_string_pretty(config)?.as_bytes(),
    )?;

    let remote = match &args.remote {
        Some(url) => {
            let cache_dir =
                config.run.cache_dir.clone().unwrap_or_else(feature_cache::default_cache_dir);
            Some(remote::RemoteCache::new(workspace, url, cache_dir)?)
        }
        None => None,
    };
    let mut timings = Vec::new();
    let mut steps = plan(config, &derived, &run_dir, &data, &weights)?;
    for i in 0..steps.len() {
        if i > 0 {
            // Later stages depend on the outputs of earlier ones, known only after those ran.
            steps = plan(config, &derived, &run_dir, &data, &weights)?;
        }
        let step = &steps[i];
        let dir = run_dir.join(step.name);
        let started = Instant::now();
        let label = format!("[{}/{}] {}", i + 1, steps.len(), step.name);
        let resume = match status(step, &dir) {
            Status::Done => {
                eprintln!("{label}: up to date (outputs verified)");
                timings.push((step.name, 0.0, true));
                continue;
            }
            other => {
                eprintln!("{label}: {} -> running", describe(&other));
                matches!(other, Status::Interrupted { resumes: true })
                    && runner::same_binary_as_interrupted(tools, step, &dir)?
            }
        };
        let extraction = step.binary == ExtractFeatures::BINARY;
        if let Some(remote) = remote.as_ref().filter(|_| extraction) {
            remote.pull_for(tools, step)?;
        }
        runner::run_stage(tools, step, &dir, resume)?;
        if let Some(remote) = remote.as_ref().filter(|_| extraction) {
            remote.push_from(&dir)?;
        }
        let seconds = started.elapsed().as_secs_f64();
        eprintln!("{label}: done in {seconds:.1}s");
        timings.push((step.name, seconds, false));
    }
    let compare_dir = compared.as_ref().map(|(name, _)| workspace.join("runs").join(name));
    let context = crate::report::Context {
        settings: report_settings::summary(config, &derived, &weights),
        base: report_settings::base_label(config),
        input_size: config.extract.input_size,
        compare_with: compared.as_ref().zip(compare_dir.as_deref()).map(|((_, stages), dir)| {
            crate::report::Compared {
                base: config::resolved_config(dir)
                    .map_or_else(|| "other".into(), |c| report_settings::base_label(&c)),
                dir,
                stages: stages.iter().map(|s| (*s).to_owned()).collect(),
            }
        }),
        binaries: relative_to(&tools.release, workspace),
        data: relative_to(&data, workspace),
    };
    crate::report::write(&run_dir, &context, &timings)?;
    eprintln!("report: {}", run_dir.join("report.html").display());
    Ok(timings.iter().map(|t| t.0).collect())
}

/// `path` relative to `base` when inside it (as commands typed at the repository root spell it).
fn relative_to(path: &Path, base: &Path) -> String {
    path.strip_prefix(base).unwrap_or(path).display().to_string()
}

/// `--status`: the settings checked and derived from the layer tables when the release
/// `vgg16-layers` is already built (it builds nothing); otherwise unknown, and said so.
fn derive_if_built(settings: &Settings, weights: &Path, workspace: &Path) -> Result<Derived> {
    let input_size = settings.config.extract.input_size;
    let tables = Tools::existing(workspace).and_then(|tools| {
        layers::tables(&settings.config, weights, |base| {
            layers::from_binary(&tools, base, input_size)
        })
    });
    match tables {
        Ok(tables) => layers::check(settings, &tables),
        Err(err) => {
            eprintln!(
                "note: layer names and input sizes not checked, no layer table: {err:#} \
                 (`cargo xtask pipeline` builds it)"
            );
            Ok(Derived::unknown(
                "derived from the base's layer table, which needs the release build".into(),
            ))
        }
    }
}

/// Runs the `[compare]` run on this run's data, with this invocation's device, cache and profile;
/// returns the stages it planned.
fn run_comparison(
    compare: &CompareConfig,
    args: &PipelineArgs,
    config: &Config,
    session: &Session,
) -> Result<Vec<&'static str>> {
    let workspace = session.workspace;
    if compare.name == config.run.name {
        bail!(
            "[compare] name = {:?} is this run's own name: give the compared run another ({})",
            compare.name,
            args.config
                .as_deref()
                .map_or_else(|| "pipeline.toml".into(), |p| p.display().to_string())
        );
    }
    let path = absolute(workspace, &compare.config);
    let nested = config::read(&path)?;
    if nested.compare.is_some() {
        bail!("{}: a compared run cannot have a [compare] section of its own", path.display());
    }
    let other = workspace.join("runs").join(&compare.name);
    let recorded: Option<run_folder::DatasetRecord> =
        run_folder::read_json(&other.join("dataset").join(run_folder::DATASET_FILE)).ok();
    if let Some(r) = recorded.filter(|r| r.root != absolute(workspace, &config.run.data)) {
        eprintln!(
            "warning: {} was made on {}; [compare] reruns it on {}",
            other.display(),
            r.root.display(),
            config.run.data.display()
        );
    }
    eprintln!(
        "running `{}` ({}) on {} first, to set beside this run",
        compare.name,
        compare.config.display(),
        config.run.data.display()
    );
    if args.status {
        println!("run `{}`:", compare.name);
    }
    let nested_args = PipelineArgs {
        config: Some(path),
        name: Some(compare.name.clone()),
        data: Some(config.run.data.clone()),
        weights: None,
        device: Some(config.run.device.clone()),
        cache_dir: config.run.cache_dir.clone(),
        profile: args.profile,
        status: args.status,
        without_scratch: true,
        emit: slurm::EmitArgs::default(),
        remote: args.remote.clone(),
    };
    run_pipeline(nested_args, session).with_context(|| format!("compared run `{}`", compare.name))
}
