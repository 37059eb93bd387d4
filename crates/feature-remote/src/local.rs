//! The local side of a pull: a staging folder inside the cache root named as the cache names its
//! own temp folders, and publishing a verified entry or split index by rename.
//!
//! The names follow `feature_cache`'s conventions exactly (`.tmp-<host>-<pid>-<n>-<nanos>` for
//! work in progress, `.tmp-trash-<name>-<host>-<pid>` for a folder moved out of the key
//! namespace), so `feature-cache gc` and every later pull (`Cache::clean_leftovers`) remove what
//! a killed pull leaves. The cache crate keeps its helpers for these crate-private; until it
//! exports them (/work/needs-from-lead.txt) this module holds the equivalent.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use feature_cache::{Cache, ChunkIndex, INDEX_DIR, index_path};

use crate::RemoteError;

/// Prefix of the cache's in-progress and discarded folders; never a valid key.
const TMP_PREFIX: &str = ".tmp-";

/// A staging folder inside the cache root, removed when dropped (a killed process leaves it to
/// `clean_leftovers`: its name says whose it was).
#[derive(Debug)]
pub(crate) struct Staging {
    dir: PathBuf,
}

impl Staging {
    /// Creates a fresh staging folder in `cache`'s root.
    pub(crate) fn new(cache: &Cache) -> Result<Self, RemoteError> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = cache.root().join(format!(
            "{TMP_PREFIX}{}-{}-{n}-{nanos}",
            hostname(),
            std::process::id()
        ));
        fs::create_dir(&dir).map_err(RemoteError::io(&dir))?;
        Ok(Self { dir })
    }

    /// The staging folder; entries go to `<dir>/<key>/`, split indexes to
    /// `<dir>/index/<key>.json`, so the cache's own readers check them there.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if let Err(err) = fs::remove_dir_all(&self.dir) {
            tracing::warn!(path = %self.dir.display(), %err, "could not remove a staging folder (gc removes it later)");
        }
    }
}

/// This machine's name with every character other than ASCII letters and digits replaced by
/// `_` (`host` when it cannot be read): the cache's spelling in temp folder names.
pub(crate) fn hostname() -> String {
    let raw = fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_else(|_| "host".into());
    raw.trim().chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect()
}

/// Fsyncs every file of the folder `dir` and the folder itself.
pub(crate) fn sync_tree(dir: &Path) -> Result<(), RemoteError> {
    for entry in fs::read_dir(dir).map_err(RemoteError::io(dir))? {
        let path = entry.map_err(RemoteError::io(dir))?.path();
        File::open(&path).and_then(|f| f.sync_all()).map_err(RemoteError::io(&path))?;
    }
    sync_dir(dir)
}

/// Fsyncs the folder `dir` itself, so the names created or renamed in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), RemoteError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(RemoteError::io(dir))
}

/// Publishes the verified, fsynced entry folder `staged` as `cache`'s entry `key` by rename.
/// One already there that verifies is the same entry (same key): it is kept. One that does not
/// verify is moved out of the key namespace and deleted first, as the cache does.
pub(crate) fn publish_entry(cache: &Cache, staged: &Path, key: &str) -> Result<(), RemoteError> {
    let final_dir = cache.entry_dir(key);
    if let Err(first) = fs::rename(staged, &final_dir) {
        if !final_dir.exists() {
            return Err(RemoteError::Io { path: final_dir, source: first });
        }
        if feature_cache::verify(&final_dir).is_ok() {
            return Ok(());
        }
        tracing::warn!(path = %final_dir.display(), "replacing a corrupt cache entry by the pulled one");
        let trash = cache.root().join(format!(
            "{TMP_PREFIX}trash-{key}-{}-{}",
            hostname(),
            std::process::id()
        ));
        fs::rename(&final_dir, &trash).map_err(RemoteError::io(&final_dir))?;
        if let Err(err) = fs::remove_dir_all(&trash) {
            tracing::warn!(path = %trash.display(), %err, "could not remove a corrupt entry (gc removes it later)");
        }
        fs::rename(staged, &final_dir).map_err(RemoteError::io(&final_dir))?;
    }
    sync_dir(cache.root())
}

/// Publishes the verified split index file `staged` as `cache`'s index `key` by rename, after
/// its chunks. One already there that reads is the same index (same key, same chunks): kept.
pub(crate) fn publish_index(cache: &Cache, staged: &Path, key: &str) -> Result<(), RemoteError> {
    let dir = cache.root().join(INDEX_DIR);
    if !dir.is_dir() {
        fs::create_dir_all(&dir).map_err(RemoteError::io(&dir))?;
        sync_dir(cache.root())?;
    }
    let target = index_path(cache.root(), key);
    if ChunkIndex::read(&target).is_ok() {
        return Ok(());
    }
    File::open(staged).and_then(|f| f.sync_all()).map_err(RemoteError::io(staged))?;
    fs::rename(staged, &target).map_err(RemoteError::io(&target))?;
    sync_dir(&dir)
}
