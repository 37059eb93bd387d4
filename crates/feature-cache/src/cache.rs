//! The cache root: looking entries up by key (verified, corrupt ones recomputed), starting new
//! ones, listing, verifying and garbage-collecting. The root may be a folder shared by several
//! people; entries are immutable once published, so readers never need a lock.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::CacheError;
use crate::entry::{self, EntryWriter, LoadedEntry, Manifest};
use crate::folders::{TMP_PREFIX, aside_name, hostname, remove_dir_quietly, sync_dir};
use crate::key::{FeatureKey, is_key};
use crate::split::{ChunkIndex, INDEX_DIR, SplitReader, index_path};
/// Temp folders of other hosts (or whose owner we cannot check) are old leftovers after this long.
const STALE_AFTER: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// One line of `verify` for a split index.
#[derive(Debug)]
pub struct IndexStatus {
    /// The index name (64 hex digits).
    pub key: String,
    /// The index file, `<root>/index/<key>.json`.
    pub path: PathBuf,
    /// The index when it and every chunk it lists verified, else the first problem found.
    pub result: Result<ChunkIndex, CacheError>,
}

/// A cache root folder.
#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
}

/// What `lookup` found.
#[derive(Debug)]
pub enum Lookup {
    /// A verified entry.
    Hit(Box<LoadedEntry>),
    /// No entry under this key.
    Miss,
    /// An entry was there but failed verification; it has been removed and must be recomputed.
    Corrupt(CacheError),
}

/// One line of `ls` / `verify`.
#[derive(Debug)]
pub struct EntryStatus {
    /// The entry name (64 hex digits).
    pub key: String,
    /// The entry folder, `<root>/<key>`.
    pub path: PathBuf,
    /// Its manifest when every byte verified, else the first problem found.
    pub result: Result<Manifest, CacheError>,
}

impl Cache {
    /// Opens (creating if needed) the cache root.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, CacheError> {
        let root = root.into();
        fs::create_dir_all(&root).map_err(CacheError::io(&root))?;
        Ok(Self { root })
    }

    /// The cache root folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The folder of entry `key`, `<root>/<key>` (whether or not it exists).
    pub fn entry_dir(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    /// Loads the entry for `key` if it exists and every byte verifies. A corrupt entry is moved
    /// aside and deleted, and reported so the caller recomputes it.
    pub fn lookup(&self, key: &FeatureKey) -> Result<Lookup, CacheError> {
        let dir = self.entry_dir(&key.digest());
        if !dir.exists() {
            return Ok(Lookup::Miss);
        }
        match entry::load(&dir) {
            Ok(loaded) => Ok(Lookup::Hit(Box::new(loaded))),
            Err(err) if err.is_corruption() => {
                tracing::warn!(path = %dir.display(), %err, "corrupt cache entry: removing it, it will be recomputed");
                self.discard(&dir);
                Ok(Lookup::Corrupt(err))
            }
            Err(err) => Err(err),
        }
    }

    /// Starts writing the entry for `key`: `rows` rows of `row_shape` (e.g. `[4, 4, 512]`).
    pub fn writer(
        &self,
        key: FeatureKey,
        tool: &str,
        rows: u64,
        row_shape: &[u64],
    ) -> Result<EntryWriter, CacheError> {
        let final_dir = self.entry_dir(&key.digest());
        EntryWriter::create(self.tmp_dir(), final_dir, key, tool, rows, row_shape)
    }

    /// Creates a fresh, empty staging folder inside the root for entries and split indexes
    /// that are not verified yet (bundle import, a pull from an object store). Its name marks it
    /// as work in progress of this host and process, so what a killed importer leaves is
    /// removed by [`Cache::clean_leftovers`]; the caller removes it when done.
    pub fn staging_dir(&self) -> Result<PathBuf, CacheError> {
        let dir = self.tmp_dir();
        fs::create_dir(&dir).map_err(CacheError::io(&dir))?;
        Ok(dir)
    }

    /// Publishes the complete, verified entry folder `staged` (inside the root, e.g. in a
    /// [`Cache::staging_dir`]) as entry `key`: fsyncs its files and itself, then renames it into
    /// place. An entry already there that verifies is the same entry and is kept (`staged` is
    /// removed); one that does not verify is replaced.
    pub fn publish_entry(&self, staged: &Path, key: &str) -> Result<(), CacheError> {
        for file in fs::read_dir(staged).map_err(CacheError::io(staged))? {
            let path = file.map_err(CacheError::io(staged))?.path();
            fs::File::open(&path).and_then(|f| f.sync_all()).map_err(CacheError::io(&path))?;
        }
        sync_dir(staged)?;
        entry::publish(staged, &self.entry_dir(key))
    }

    /// Publishes the verified split index file `staged` (inside the root) as index `key`, to be
    /// called after its chunks are published: fsync, rename, fsync of the index folder. An index
    /// already there that reads is the same one (same key, same chunks) and is kept.
    pub fn publish_index(&self, staged: &Path, key: &str) -> Result<(), CacheError> {
        let dir = self.root.join(INDEX_DIR);
        if !dir.is_dir() {
            fs::create_dir_all(&dir).map_err(CacheError::io(&dir))?;
            sync_dir(&self.root)?;
        }
        let target = index_path(&self.root, key);
        if ChunkIndex::read(&target).is_ok() {
            return Ok(());
        }
        fs::File::open(staged).and_then(|f| f.sync_all()).map_err(CacheError::io(staged))?;
        fs::rename(staged, &target).map_err(CacheError::io(&target))?;
        sync_dir(&dir)
    }

    /// A fresh temp folder name: host and pid tell later runs whether its writer is still alive.
    pub(crate) fn tmp_dir(&self) -> PathBuf {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        self.root.join(format!("{TMP_PREFIX}{}-{}-{n}-{nanos}", hostname(), std::process::id()))
    }

    /// All entries, each verified (reads every byte).
    pub fn verify_all(&self) -> Result<Vec<EntryStatus>, CacheError> {
        Ok(self
            .keys()?
            .into_iter()
            .map(|key| {
                let path = self.entry_dir(&key);
                let result = entry::verify(&path);
                EntryStatus { key, path, result }
            })
            .collect())
    }

    /// Split index names under `<root>/index`, sorted.
    pub fn index_keys(&self) -> Result<Vec<String>, CacheError> {
        let dir = self.root.join(INDEX_DIR);
        let read = match fs::read_dir(&dir) {
            Ok(read) => read,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(err) => return Err(CacheError::Io { path: dir, source: err }),
        };
        let mut keys: Vec<String> = read
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.strip_suffix(".json").filter(|k| is_key(k)).map(str::to_owned)
            })
            .collect();
        keys.sort();
        Ok(keys)
    }

    /// Every split index, each verified with every chunk it lists (reads every byte).
    pub fn verify_indexes(&self) -> Result<Vec<IndexStatus>, CacheError> {
        Ok(self
            .index_keys()?
            .into_iter()
            .map(|key| {
                let path = index_path(&self.root, &key);
                let result = verify_split(&self.root, &key);
                IndexStatus { key, path, result }
            })
            .collect())
    }

    /// Entry names under the root, sorted.
    pub fn keys(&self) -> Result<Vec<String>, CacheError> {
        let mut keys: Vec<String> = fs::read_dir(&self.root)
            .map_err(CacheError::io(&self.root))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|name| is_key(name))
            .collect();
        keys.sort();
        Ok(keys)
    }

    /// Removes leftovers of interrupted writers: temp folders of dead processes on this host, and
    /// any older than a day. Returns the folders removed.
    pub fn clean_leftovers(&self) -> Result<Vec<PathBuf>, CacheError> {
        let mut removed = Vec::new();
        for entry in
            fs::read_dir(&self.root).map_err(CacheError::io(&self.root))?.filter_map(|e| e.ok())
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix(TMP_PREFIX) else { continue };
            if is_leftover(rest, &entry.path()) {
                remove_dir_quietly(&entry.path());
                removed.push(entry.path());
            }
        }
        // Split index temp files (`run_folder::write_atomic`'s `.tmp-<random>`) name no
        // process: a day old means their writer is gone.
        if let Ok(read) = fs::read_dir(self.root.join(INDEX_DIR)) {
            for entry in read.filter_map(|e| e.ok()) {
                let path = entry.path();
                if entry.file_name().to_string_lossy().starts_with(TMP_PREFIX) && is_old(&path) {
                    fs::remove_file(&path).map_err(CacheError::io(&path))?;
                    removed.push(path);
                }
            }
        }
        Ok(removed)
    }

    /// Removes leftovers, every entry that does not verify and every split index that does not
    /// read; with `keep` (split index keys, e.g. those of a `features.json`, or entry keys), also
    /// every index not listed and every entry neither listed nor a chunk of a kept index.
    /// Returns what was removed.
    pub fn gc(&self, keep: Option<&[String]>) -> Result<Vec<PathBuf>, CacheError> {
        let mut removed = self.clean_leftovers()?;
        let mut kept_chunks: std::collections::HashSet<String> =
            keep.unwrap_or_default().iter().cloned().collect();
        for key in self.index_keys()? {
            let path = index_path(&self.root, &key);
            let index = ChunkIndex::read(&path);
            let unwanted = keep.is_some_and(|k| !k.contains(&key));
            match index {
                Ok(index) if !unwanted => {
                    kept_chunks.extend(index.chunks.into_iter().map(|c| c.key));
                }
                _ => {
                    fs::remove_file(&path).map_err(CacheError::io(&path))?;
                    removed.push(path);
                }
            }
        }
        for status in self.verify_all()? {
            let unwanted = keep.is_some() && !kept_chunks.contains(&status.key);
            if status.result.is_err() || unwanted {
                self.discard(&status.path);
                removed.push(status.path);
            }
        }
        Ok(removed)
    }

    /// Renames an entry out of the key namespace first (atomic), then deletes it, so a reader
    /// never sees half an entry under a key.
    fn discard(&self, dir: &Path) {
        let aside = aside_name(dir, "trash");
        match fs::rename(dir, &aside) {
            Ok(()) => remove_dir_quietly(&aside),
            Err(err) => {
                tracing::warn!(path = %dir.display(), %err, "could not remove a corrupt entry")
            }
        }
    }
}

/// Verifies the split index `key` of the cache rooted at `root` and every chunk it lists,
/// completely (the checks of [`SplitReader::open`]), and returns the index. Nothing is changed,
/// so it is safe on a shared or read-only cache.
///
/// Errors: [`CacheError::Missing`] naming the index or the first missing chunk; otherwise the
/// first problem found ([`CacheError::is_corruption`] tells damage from an unreadable cache).
pub fn verify_split(root: &Path, key: &str) -> Result<ChunkIndex, CacheError> {
    Ok(SplitReader::open(&[root], key)?.index().clone())
}

/// Whether `path` was last modified more than [`STALE_AFTER`] ago.
fn is_old(path: &Path) -> bool {
    fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age > STALE_AFTER)
}

/// `rest` is `<host>-<pid>-...` (or `trash-...`): a leftover if its process is gone or it is old.
fn is_leftover(rest: &str, path: &Path) -> bool {
    if rest.starts_with("trash-") {
        // Moved out of the key namespace to be deleted; a kill came before the delete.
        return true;
    }
    let old = is_old(path);
    let host = hostname();
    let ours_and_dead = rest
        .strip_prefix(&format!("{host}-"))
        .and_then(|r| r.split('-').next())
        .and_then(|pid| pid.parse::<u32>().ok())
        .is_some_and(|pid| {
            pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists()
        });
    old || ours_and_dead
}
