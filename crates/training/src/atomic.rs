//! Atomic file writes: everything a run writes goes through here, so a crash or a kill leaves
//! either the old file or the new one, never half of one.

use std::io::Write;
use std::path::Path;

/// Writes `bytes` to `path` via a temp file in the same folder: write, fsync, rename, fsync the
/// folder.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new().prefix(".tmp-").tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    std::fs::File::open(dir)?.sync_all()
}

/// [`write_atomic`] with a message naming the file on failure.
pub fn write_atomic_ctx(path: &Path, bytes: &[u8]) -> Result<(), crate::TrainError> {
    write_atomic(path, bytes).map_err(|source| crate::TrainError::Io { path: path.to_owned(), source })
}
