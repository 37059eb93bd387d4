//! The local side of a pull: a staging folder inside the cache root (`Cache::staging_dir`, named
//! as the cache names work in progress, so `feature-cache gc` and every later pull remove what a
//! killed pull leaves), removed when dropped. Publishing a verified entry or split index is the
//! cache's own (`Cache::publish_entry`, `Cache::publish_index`), as for bundle import.

use std::path::{Path, PathBuf};

use feature_cache::Cache;

use crate::RemoteError;

/// A staging folder inside the cache root, removed when dropped (a killed process leaves it to
/// `clean_leftovers`: its name says whose it was).
#[derive(Debug)]
pub(crate) struct Staging {
    dir: PathBuf,
}

impl Staging {
    /// Creates a fresh staging folder in `cache`'s root.
    pub(crate) fn new(cache: &Cache) -> Result<Self, RemoteError> {
        Ok(Self { dir: cache.staging_dir()? })
    }

    /// The staging folder; entries go to `<dir>/<key>/`, split indexes to
    /// `<dir>/index/<key>.json`, so the cache's own readers check them there.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if let Err(err) = std::fs::remove_dir_all(&self.dir) {
            tracing::warn!(path = %self.dir.display(), %err, "could not remove a staging folder (gc removes it later)");
        }
    }
}

/// This machine's name with every character other than ASCII letters and digits replaced by
/// `_` (`host` when it cannot be read), for the writer field of commits and probe names.
pub(crate) fn hostname() -> String {
    let raw =
        std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_else(|_| "host".into());
    raw.trim().chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect()
}
