//! The run-folder contract shared by the stage binaries and `cargo xtask pipeline`.
//!
//! A stage writes into its own folder `runs/<name>/<stage>/`:
//! - `config.json` before any work starts (the resolved settings, so a crash leaves a record);
//! - its outputs, each written atomically;
//! - `stage.json` last: the digest of the config, the digests of the inputs it read, and the
//!   length and sha256 of every output. A stage is *done* exactly when `stage.json` exists, its
//!   config and input digests equal what would be passed now, and every output still matches its
//!   digest. `stage.json` is written after the outputs, so a kill at any moment leaves a stage
//!   that is not done, never one that looks done.

mod dataset;
mod history;
mod metrics;

pub use dataset::{DATASET_FILE, DatasetRecord, SplitRecord};
pub use history::{
    EpochRecord, HISTORY_FILE, HISTORY_HEADER, history_csv, read_history, write_history,
};
pub use metrics::{ClassMetrics, KeptEpoch, METRICS_FILE, SplitMetrics, StageMetrics};

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub const CONFIG_FILE: &str = "config.json";
pub const STAGE_FILE: &str = "stage.json";

/// What `cargo xtask pipeline` keeps in a stage folder beside the stage's own files: the
/// invocation a stage was started with and has not finished (with the binary's sha256), the
/// invocation once it succeeded, and the stage's output log.
pub const PIPELINE_PENDING_FILE: &str = "pipeline.pending.json";
pub const PIPELINE_INVOCATION_FILE: &str = "pipeline.json";
pub const STAGE_LOG_FILE: &str = "log.txt";

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RunError + '_ {
    move |source| RunError::Io { path: path.to_owned(), source }
}

/// Writes `bytes` to `path` via a temp file in the same folder: write, fsync, rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), RunError> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let mut tmp = tempfile::Builder::new().prefix(".tmp-").tempfile_in(dir).map_err(io(dir))?;
    tmp.write_all(bytes).map_err(io(path))?;
    // tempfile creates 0600; outputs are meant to be read by teammates (shared caches, runs).
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file().set_permissions(std::fs::Permissions::from_mode(0o644)).map_err(io(path))?;
    }
    tmp.as_file().sync_all().map_err(io(path))?;
    tmp.persist(path).map_err(|e| RunError::Io { path: path.to_owned(), source: e.error })?;
    Ok(())
}

/// Writes a value as pretty JSON, atomically.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), RunError> {
    let mut bytes = serde_json::to_vec_pretty(value).expect("stage records serialise");
    bytes.push(b'\n');
    write_atomic(path, &bytes)
}

pub fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, RunError> {
    let bytes = std::fs::read(path).map_err(io(path))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| RunError::Invalid { path: path.to_owned(), reason: e.to_string() })
}

/// sha256 of a file, streamed.
pub fn file_sha256(path: &Path) -> Result<FileDigest, RunError> {
    let mut file = std::fs::File::open(path).map_err(io(path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(io(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        bytes += n as u64;
    }
    Ok(FileDigest { bytes, sha256: hex::encode(hasher.finalize()) })
}

/// Lower-case hex sha256 of `bytes`: the one digest spelling of the workspace (weights, cache
/// keys, outputs, data files).
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// sha256 of a JSON value's canonical (serde) form: the config digest.
pub fn json_sha256<T: Serialize>(value: &T) -> String {
    sha256_hex(&serde_json::to_vec(value).expect("configs serialise"))
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileDigest {
    pub bytes: u64,
    pub sha256: String,
}

/// `stage.json`: what a finished stage ran on and produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageRecord {
    pub stage: String,
    /// [`json_sha256`] of the stage's resolved config.
    pub config_sha256: String,
    /// Named inputs (files of earlier stages, weights, dataset digests) and their sha256.
    pub inputs: BTreeMap<String, String>,
    /// Output files relative to the stage folder.
    pub outputs: BTreeMap<String, FileDigest>,
    pub seconds: f64,
    /// Free-form facts for the report (device, cache hits, accuracy, ...).
    #[serde(default)]
    pub summary: serde_json::Value,
}

impl StageRecord {
    /// Digests every file in `outputs` (relative to `dir`) and writes `dir/stage.json`.
    pub fn write(
        dir: &Path,
        stage: &str,
        config_sha256: String,
        inputs: BTreeMap<String, String>,
        outputs: &[&str],
        seconds: f64,
        summary: serde_json::Value,
    ) -> Result<Self, RunError> {
        let outputs = outputs
            .iter()
            .map(|name| Ok(((*name).to_owned(), file_sha256(&dir.join(name))?)))
            .collect::<Result<_, RunError>>()?;
        let record =
            Self { stage: stage.to_owned(), config_sha256, inputs, outputs, seconds, summary };
        write_json(&dir.join(STAGE_FILE), &record)?;
        Ok(record)
    }

    pub fn read(dir: &Path) -> Result<Self, RunError> {
        read_json(&dir.join(STAGE_FILE))
    }

    /// The first output that is missing or no longer matches its digest, if any.
    pub fn damaged_output(&self, dir: &Path) -> Option<String> {
        self.outputs.iter().find_map(|(name, digest)| match file_sha256(&dir.join(name)) {
            Ok(actual) if &actual == digest => None,
            Ok(_) => Some(format!("{name} changed since the stage finished")),
            Err(err) => Some(err.to_string()),
        })
    }
}

/// Makes `dir` the output folder of a run of `stage` (a binary that writes a stage folder on its
/// own, like `evaluate`): created if missing; refused when it holds anything that binary does not
/// write (another stage's folder, a dataset, a subfolder), naming it; otherwise the files an
/// earlier run left are removed, `stage.json` first, so nothing of it outlives the new run or
/// passes for its outputs. `is_output` says which file names the stage writes (besides
/// `config.json`, `stage.json` and `write_atomic`'s `.tmp-*` files); the pipeline's files
/// (`pipeline.pending.json`, `pipeline.json`, `log.txt`) are left where they are.
pub fn claim_stage_dir(
    dir: &Path,
    stage: &str,
    is_output: impl Fn(&str) -> bool,
) -> Result<(), RunError> {
    let invalid = |reason: String| RunError::Invalid { path: dir.to_owned(), reason };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    if let Ok(record) = StageRecord::read(dir)
        && record.stage != stage
    {
        return Err(invalid(format!(
            "holds the outputs of the `{}` stage; choose another output folder",
            record.stage
        )));
    }
    let mut ours = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        // The pipeline's own files are its to keep.
        if [PIPELINE_PENDING_FILE, PIPELINE_INVOCATION_FILE, STAGE_LOG_FILE]
            .contains(&name.as_str())
        {
            continue;
        }
        let is_file = entry.file_type().map_err(io(&entry.path()))?.is_file();
        let known = name == CONFIG_FILE
            || name == STAGE_FILE
            || name.starts_with(".tmp-")
            || is_output(&name);
        if !is_file || !known {
            return Err(invalid(format!(
                "holds {name}, which {stage} does not write; choose an empty or new output folder"
            )));
        }
        ours.push(entry.path());
    }
    // The record first: a kill between removals leaves no stage.json vouching for anything.
    ours.sort_by_key(|p| p.file_name() != Some(std::ffi::OsStr::new(STAGE_FILE)));
    for path in ours {
        std::fs::remove_file(&path).map_err(io(&path))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_detects_damaged_outputs() {
        let dir = tempfile::tempdir().unwrap();
        write_atomic(&dir.path().join("a.txt"), b"hello").unwrap();
        let rec = StageRecord::write(
            dir.path(),
            "s",
            "c".into(),
            BTreeMap::new(),
            &["a.txt"],
            1.0,
            serde_json::json!({}),
        )
        .unwrap();
        assert_eq!(StageRecord::read(dir.path()).unwrap(), rec);
        assert_eq!(rec.damaged_output(dir.path()), None);
        std::fs::write(dir.path().join("a.txt"), b"hellO").unwrap();
        assert!(rec.damaged_output(dir.path()).unwrap().contains("a.txt changed"));
        std::fs::remove_file(dir.path().join("a.txt")).unwrap();
        assert!(rec.damaged_output(dir.path()).unwrap().contains("a.txt"));
    }

    #[test]
    fn config_digest_tracks_content() {
        assert_eq!(
            json_sha256(&serde_json::json!({"a": 1})),
            json_sha256(&serde_json::json!({"a": 1}))
        );
        assert_ne!(
            json_sha256(&serde_json::json!({"a": 1})),
            json_sha256(&serde_json::json!({"a": 2}))
        );
    }

    #[test]
    fn a_stage_dir_is_claimed_only_from_its_own_stage() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("eval");
        let is_output = |name: &str| name == "metrics.json" || name.ends_with("_grid.png");
        // New, then an earlier run of the same stage: its files go, record first.
        claim_stage_dir(&out, "evaluate", is_output).unwrap();
        for name in ["metrics.json", "a_grid.png", CONFIG_FILE, ".tmp-x"] {
            std::fs::write(out.join(name), "old").unwrap();
        }
        StageRecord::write(
            &out,
            "evaluate",
            "c".into(),
            BTreeMap::new(),
            &["metrics.json"],
            0.0,
            serde_json::Value::Null,
        )
        .unwrap();
        std::fs::write(out.join(PIPELINE_PENDING_FILE), "{}").unwrap();
        std::fs::write(out.join(STAGE_LOG_FILE), "$ evaluate").unwrap();
        claim_stage_dir(&out, "evaluate", is_output).unwrap();
        // Only the pipeline's files are left.
        let mut left: Vec<String> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, [STAGE_LOG_FILE, PIPELINE_PENDING_FILE]);
        std::fs::remove_file(out.join(PIPELINE_PENDING_FILE)).unwrap();
        std::fs::remove_file(out.join(STAGE_LOG_FILE)).unwrap();
        // Another stage's folder, or a file the stage does not write, is refused by name.
        StageRecord::write(
            &out,
            "fine-tune",
            "c".into(),
            BTreeMap::new(),
            &[],
            0.0,
            serde_json::Value::Null,
        )
        .unwrap();
        let err = claim_stage_dir(&out, "evaluate", is_output).unwrap_err().to_string();
        assert!(err.contains("`fine-tune` stage"), "{err}");
        std::fs::remove_file(out.join(STAGE_FILE)).unwrap();
        std::fs::write(out.join("history.csv"), "x").unwrap();
        let err = claim_stage_dir(&out, "evaluate", is_output).unwrap_err().to_string();
        assert!(err.contains("history.csv") && err.contains("eval"), "{err}");
        assert!(out.join("history.csv").exists(), "nothing removed from a refused folder");
    }
}
