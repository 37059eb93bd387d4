//! What state a stage's folder is in, against the invocation the plan would make now: done,
//! stale, corrupt, missing or interrupted. This is what `--status` prints and what decides
//! whether the runner skips, reruns or resumes a stage.
//!
//! A stage is done when its `stage.json` verifies (every output against its digest; an
//! extraction also every feature-cache entry it recorded, checked by the `feature-cache` crate)
//! and its recorded invocation (`pipeline.json`) equals the planned one.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::plan::Step;
use crate::stage_args::{ExtractFeatures, StageArgs};

/// `pipeline.json`: the invocation that produced a stage's outputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct Invocation {
    pub binary: String,
    pub args: Vec<String>,
    pub inputs: BTreeMap<String, String>,
}

/// `pipeline.pending.json`: the invocation a stage was started with and has not finished, and
/// the sha256 of the binary that ran it.
pub(super) const PENDING: &str = run_folder::PIPELINE_PENDING_FILE;

/// The file [`Invocation`] is recorded in once a stage succeeded.
pub(super) const INVOCATION: &str = run_folder::PIPELINE_INVOCATION_FILE;

/// The content of [`PENDING`].
#[derive(Serialize, Deserialize)]
pub(super) struct Pending {
    #[serde(flatten)]
    pub invocation: Invocation,
    pub binary_sha256: String,
}

/// A stage folder's state.
#[derive(Debug, PartialEq)]
pub(super) enum Status {
    Done,
    Stale(String),
    Corrupt(String),
    Missing,
    /// Started with the current invocation and not finished.
    Interrupted {
        resumes: bool,
    },
    /// The folder has a record, but the planned invocation is not known (`--status` without
    /// the layer table), so it cannot be compared.
    Unknown(String),
}

impl Step {
    /// The invocation as `pipeline.json` records it.
    pub fn invocation(&self) -> Invocation {
        Invocation {
            binary: self.binary.into(),
            args: self.args.clone(),
            inputs: self.inputs.clone(),
        }
    }

    /// The stage was started with exactly this invocation and did not finish (killed, failed).
    fn interrupted_in(&self, dir: &Path) -> bool {
        run_folder::read_json::<Pending>(&dir.join(PENDING))
            .is_ok_and(|pending| pending.invocation == self.invocation())
    }
}

/// The state of `step`'s folder `dir`.
pub(super) fn status(step: &Step, dir: &Path) -> Status {
    if let Some(why) = &step.undetermined {
        let recorded = dir.join(PENDING).exists() || dir.join(run_folder::STAGE_FILE).exists();
        return if recorded { Status::Unknown(why.clone()) } else { Status::Missing };
    }
    if step.interrupted_in(dir) {
        return Status::Interrupted { resumes: step.resume_args.is_some() };
    }
    let Ok(record) = run_folder::StageRecord::read(dir) else {
        return Status::Missing;
    };
    let invocation: Option<Invocation> = run_folder::read_json(&dir.join(INVOCATION)).ok();
    let wanted = step.invocation();
    match invocation {
        None => return Status::Stale("no record of how it was run".into()),
        Some(inv) if inv != wanted => {
            let changed = wanted
                .inputs
                .iter()
                .find(|(k, v)| inv.inputs.get(*k) != Some(v))
                .map(|(k, _)| format!("input {k} changed"));
            return Status::Stale(changed.unwrap_or_else(|| "settings changed".into()));
        }
        Some(_) => {}
    }
    if let Some(damage) = record.damaged_output(dir) {
        return Status::Corrupt(damage);
    }
    if step.binary == ExtractFeatures::BINARY
        && let Some(problem) = missing_cache_entry(dir)
    {
        return Status::Stale(problem);
    }
    Status::Done
}

/// Extraction is only done while the splits it recorded still verify (a teammate may have run
/// `gc`, or a disk may have flipped a bit): each split index and every chunk it lists is checked
/// byte for byte, the check every reader of the cache makes (`feature_cache::verify_split`, here
/// through `SplitReader::open` because a split the run kept in its private cache may have found
/// some of its chunks in the shared one: the private cache is looked in first, as readers do).
fn missing_cache_entry(dir: &Path) -> Option<String> {
    let path = dir.join(feature_cache::EXTRACTION_FILE);
    let record: feature_cache::ExtractionRecord = match run_folder::read_json(&path) {
        Ok(record) => record,
        Err(err) => return Some(format!("its record is unreadable: {err}")),
    };
    for e in &record.entries {
        let roots: Vec<&Path> =
            e.cache_dir.as_deref().into_iter().chain([record.cache_dir.as_path()]).collect();
        let index = feature_cache::index_path(roots[0], &e.key);
        let problem = match feature_cache::SplitReader::open(&roots, &e.key) {
            Ok(_) => continue,
            Err(feature_cache::CacheError::Missing { path }) if path == index => {
                "is gone".to_owned()
            }
            Err(feature_cache::CacheError::Missing { path }) => {
                format!("is gone: its chunk {} is missing", path.display())
            }
            Err(err) if err.is_corruption() => format!("is damaged: {err}"),
            Err(err) => format!("cannot be read: {err}"),
        };
        return Some(format!("split index {} ({}) {problem}", e.key, e.split));
    }
    None
}

/// `status` in words, as `--status` and the runner print it.
pub(super) fn describe(status: &Status) -> String {
    match status {
        Status::Done => "done".into(),
        Status::Stale(why) => format!("stale ({why})"),
        Status::Corrupt(why) => format!("corrupt ({why})"),
        Status::Missing => "missing".into(),
        Status::Interrupted { resumes: true } => {
            "interrupted (resumes from its last checkpoint)".into()
        }
        Status::Interrupted { resumes: false } => {
            "interrupted (reruns; finished cache entries are reused)".into()
        }
        Status::Unknown(why) => format!("unknown ({why})"),
    }
}
