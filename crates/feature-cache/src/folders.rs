//! Folder operations both the cache root (`cache.rs`) and one entry (`entry.rs`) need: the temp
//! prefix that keeps in-progress and discarded folders out of the key namespace, names for moving
//! a folder aside, quiet removal and directory fsync. Kept here so `cache.rs` depends on
//! `entry.rs` and not the other way round.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use crate::CacheError;

/// Prefix of in-progress and discarded folders; never a valid key, so never mistaken for an
/// entry.
pub(crate) const TMP_PREFIX: &str = ".tmp-";

/// A temp-prefixed sibling name for moving `dir` out of the way (`.tmp-<what>-<name>-<host>-<pid>`).
pub(crate) fn aside_name(dir: &Path, what: &str) -> PathBuf {
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    dir.with_file_name(format!("{TMP_PREFIX}{what}-{name}-{}-{}", hostname(), std::process::id()))
}

/// This machine's name with every character other than ASCII letters and digits replaced by
/// `_`, so it can be part of a folder name (`host` when it cannot be read).
pub(crate) fn hostname() -> String {
    let raw = fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_else(|_| "host".into());
    raw.trim().chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect()
}

/// Removes `dir` and everything in it; a failure is logged (with the path), not returned: what
/// is left is a temp-prefixed folder that `gc` removes later.
pub(crate) fn remove_dir_quietly(dir: &Path) {
    if let Err(err) = fs::remove_dir_all(dir) {
        tracing::warn!(path = %dir.display(), %err, "could not remove a leftover folder");
    }
}

/// Fsyncs the folder `dir` itself, so the names created or renamed in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), CacheError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(CacheError::io(dir))
}
