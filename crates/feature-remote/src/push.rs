//! Push: local entries and split indexes into the store, data objects first, commits last.
//!
//! Everything named is verified locally first (a split index with every chunk it lists), so
//! nothing is uploaded for a key that would not read back. Then, for each entry without a
//! commit in the store, its four files go up as data objects; only when all of them are in the
//! store is its commit created (create-once), and a split index's commit only after every chunk
//! it lists is committed. A kill at any point therefore leaves at most unreferenced data
//! objects, never a commit without its data. A writer whose create finds a commit already there
//! keeps that one (a teammate pushed the same key first; on a GPU its features may differ from
//! ours in the last bits, and either is valid) and reports it.

use std::collections::BTreeMap;
use std::path::PathBuf;

use feature_cache::{Cache, FEATURES, FileDigest, LABELS, index_path, is_key};
use futures::{StreamExt, TryStreamExt};

use crate::RemoteError;
use crate::commit::{COMMIT_FORMAT, Commit, ENTRY_FILES, INDEX_FILE, Kind};
use crate::store::Remote;

/// What happened to one key on push.
#[derive(Debug, Clone, PartialEq)]
pub enum PushOutcome {
    /// This push's commit is the one in the store.
    Committed,
    /// A commit was already there (written earlier or by a racing writer) and stays.
    KeptExisting {
        /// Its writer (`<host> pid <pid> <nonce>`).
        writer: String,
        /// The files whose bytes differ from ours (empty: the same bytes).
        differs: Vec<String>,
    },
}

/// One line of a push report.
#[derive(Debug, Clone, PartialEq)]
pub struct Pushed {
    /// The entry or split index key.
    pub key: String,
    /// What it is; `chunk` entries are listed by a pushed index.
    pub kind: Kind,
    /// Whether an index pushed in the same call lists it.
    pub is_chunk: bool,
    /// What happened.
    pub outcome: PushOutcome,
    /// Bytes this push sent for it (0 when its data objects were already there).
    pub sent: u64,
}

/// A verified local entry and the digests of its four files.
struct LocalEntry {
    key: String,
    dir: PathBuf,
    files: BTreeMap<String, FileDigest>,
}

/// A verified local split index.
struct LocalIndex {
    key: String,
    path: PathBuf,
    file: FileDigest,
    chunks: Vec<String>,
}

impl Remote {
    /// Pushes `keys` (entry or split index keys of `cache`; an index with all its chunks) and
    /// reports one line per entry and index, entries first. See the module doc for the order of
    /// writes that makes a kill at any point harmless.
    ///
    /// Errors: [`RemoteError::UnknownKey`] for a key that names nothing in the cache, a local
    /// verification failure (naming the file), before anything is sent; a store that ignores
    /// create-once writes ([`Remote::check_create_once`]); later the first failed request
    /// (after retries).
    pub fn push(&self, cache: &Cache, keys: &[String]) -> Result<Vec<Pushed>, RemoteError> {
        let (entries, indexes, chunk_keys) = resolve(cache, keys)?;
        self.check_create_once()?;
        self.block_on(self.push_async(&entries, &indexes, &chunk_keys))
    }

    async fn push_async(
        &self,
        entries: &[LocalEntry],
        indexes: &[LocalIndex],
        chunk_keys: &std::collections::BTreeSet<String>,
    ) -> Result<Vec<Pushed>, RemoteError> {
        let concurrency = self.transfer.concurrency.max(1);
        // Which keys are committed already: nothing is sent for those.
        let all: Vec<&str> = entries
            .iter()
            .map(|e| e.key.as_str())
            .chain(indexes.iter().map(|i| i.key.as_str()))
            .collect();
        let existing: BTreeMap<&str, Option<Commit>> = futures::stream::iter(all)
            .map(|key| async move {
                Ok::<_, RemoteError>((key, self.get_commit(key).await?.map(|(c, _)| c)))
            })
            .buffer_unordered(concurrency)
            .try_collect()
            .await?;

        let todo: Vec<&LocalEntry> =
            entries.iter().filter(|e| existing[e.key.as_str()].is_none()).collect();
        let total: u64 = todo.iter().flat_map(|e| e.files.values()).map(|d| d.bytes).sum::<u64>()
            + indexes
                .iter()
                .filter(|i| existing[i.key.as_str()].is_none())
                .map(|i| i.file.bytes)
                .sum::<u64>();
        let bar = self.bar(total, "push");

        // Data objects of every entry to commit, then its commit.
        let uploads = todo.iter().flat_map(|e| {
            ENTRY_FILES.iter().map(move |name| (e.key.as_str(), e.dir.join(name), &e.files[*name]))
        });
        let sent: Vec<(&str, u64)> = futures::stream::iter(uploads)
            .map(|(key, path, digest)| {
                let bar = &bar;
                async move { Ok::<_, RemoteError>((key, self.upload(&path, digest, bar).await?)) }
            })
            .buffer_unordered(concurrency)
            .try_collect()
            .await?;
        let mut sent_by_key: BTreeMap<&str, u64> = BTreeMap::new();
        for (key, n) in sent {
            *sent_by_key.entry(key).or_default() += n;
        }
        let mut report: BTreeMap<String, Pushed> = BTreeMap::new();
        for entry in entries {
            if let Some(theirs) = &existing[entry.key.as_str()] {
                report.insert(
                    entry.key.clone(),
                    kept(Kind::Entry, &entry.key, theirs, &entry.files, chunk_keys),
                );
            }
        }
        let commits =
            todo.iter().map(|e| (e, self.commit(Kind::Entry, &e.key, e.files.clone(), Vec::new())));
        let sent_by_key = &sent_by_key;
        let outcomes: Vec<(String, Pushed)> = futures::stream::iter(commits)
            .map(|(entry, commit)| async move {
                let outcome = self.put_commit(&commit).await?;
                let mut line = match outcome {
                    None => Pushed {
                        key: entry.key.clone(),
                        kind: Kind::Entry,
                        is_chunk: chunk_keys.contains(&entry.key),
                        outcome: PushOutcome::Committed,
                        sent: 0,
                    },
                    Some(theirs) => {
                        kept(Kind::Entry, &entry.key, &theirs, &entry.files, chunk_keys)
                    }
                };
                line.sent = sent_by_key.get(entry.key.as_str()).copied().unwrap_or(0);
                Ok::<_, RemoteError>((entry.key.clone(), line))
            })
            .buffer_unordered(concurrency)
            .try_collect()
            .await?;
        report.extend(outcomes);

        // Split indexes last: every chunk each lists is committed by now (above, or before).
        let mut lines: Vec<Pushed> = entries.iter().filter_map(|e| report.remove(&e.key)).collect();
        for index in indexes {
            let files = BTreeMap::from([(INDEX_FILE.to_owned(), index.file.clone())]);
            if let Some(theirs) = &existing[index.key.as_str()] {
                lines.push(kept(Kind::Index, &index.key, theirs, &files, chunk_keys));
                continue;
            }
            let sent = self.upload(&index.path, &index.file, &bar).await?;
            let commit = self.commit(Kind::Index, &index.key, files.clone(), index.chunks.clone());
            let mut line = match self.put_commit(&commit).await? {
                None => Pushed {
                    key: index.key.clone(),
                    kind: Kind::Index,
                    is_chunk: false,
                    outcome: PushOutcome::Committed,
                    sent: 0,
                },
                Some(theirs) => kept(Kind::Index, &index.key, &theirs, &files, chunk_keys),
            };
            line.sent = sent;
            lines.push(line);
        }
        bar.finish_and_clear();
        Ok(lines)
    }

    fn commit(
        &self,
        kind: Kind,
        key: &str,
        files: BTreeMap<String, FileDigest>,
        chunks: Vec<String>,
    ) -> Commit {
        Commit {
            format: COMMIT_FORMAT.to_owned(),
            kind,
            key: key.to_owned(),
            files,
            chunks,
            writer: self.writer.clone(),
            tool: concat!("feature-cache-remote ", env!("CARGO_PKG_VERSION")).to_owned(),
            created_unix_s: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        }
    }
}

fn kept(
    kind: Kind,
    key: &str,
    theirs: &Commit,
    ours: &BTreeMap<String, FileDigest>,
    chunk_keys: &std::collections::BTreeSet<String>,
) -> Pushed {
    let mine = Commit { files: ours.clone(), ..theirs.clone() };
    Pushed {
        key: key.to_owned(),
        kind,
        is_chunk: chunk_keys.contains(key),
        outcome: PushOutcome::KeptExisting {
            writer: theirs.writer.clone(),
            differs: mine.differing_files(theirs),
        },
        sent: 0,
    }
}

type Resolved = (Vec<LocalEntry>, Vec<LocalIndex>, std::collections::BTreeSet<String>);

/// Verifies every key locally and lists the entries (each once, chunks of the indexes among
/// them) and the indexes to push.
fn resolve(cache: &Cache, keys: &[String]) -> Result<Resolved, RemoteError> {
    let root = cache.root();
    let mut entries: Vec<LocalEntry> = Vec::new();
    let mut indexes: Vec<LocalIndex> = Vec::new();
    let mut chunk_keys = std::collections::BTreeSet::new();
    let mut seen = std::collections::BTreeSet::new();
    let mut add_entry =
        |key: &str, verified: bool, entries: &mut Vec<LocalEntry>| -> Result<(), RemoteError> {
            if seen.insert(key.to_owned()) {
                entries.push(local_entry(cache, key, verified)?);
            }
            Ok(())
        };
    for key in keys {
        let unknown = || RemoteError::UnknownKey { key: key.clone(), root: root.to_owned() };
        if !is_key(key) {
            return Err(unknown());
        }
        let path = index_path(root, key);
        let is_index = path.is_file();
        let is_entry = cache.entry_dir(key).is_dir();
        if !is_index && !is_entry {
            return Err(unknown());
        }
        if is_index && !indexes.iter().any(|i| &i.key == key) {
            let index = feature_cache::verify_split(root, key)?;
            let chunks: Vec<String> = index.chunks.iter().map(|c| c.key.clone()).collect();
            for chunk in &chunks {
                chunk_keys.insert(chunk.clone());
                add_entry(chunk, true, &mut entries)?;
            }
            let file = file_digest(&path)?;
            indexes.push(LocalIndex { key: key.clone(), path, file, chunks });
        }
        if is_entry {
            add_entry(key, false, &mut entries)?;
        }
    }
    Ok((entries, indexes, chunk_keys))
}

/// Collects the digests of entry `key`'s files, verifying it first (every byte, as a reader
/// does) unless `verified` (a chunk of an index `verify_split` just checked).
fn local_entry(cache: &Cache, key: &str, verified: bool) -> Result<LocalEntry, RemoteError> {
    let dir = cache.entry_dir(key);
    let manifest = if verified {
        let path = dir.join(feature_cache::MANIFEST);
        run_folder::read_json::<feature_cache::Manifest>(&path)
            .map_err(feature_cache::CacheError::from)?
    } else {
        feature_cache::verify(&dir)?
    };
    let mut files = BTreeMap::new();
    for name in [FEATURES, LABELS] {
        files.insert(name.to_owned(), manifest.files[name].clone());
    }
    for name in [feature_cache::MANIFEST, feature_cache::CHECKSUMS] {
        files.insert(name.to_owned(), file_digest(&dir.join(name))?);
    }
    Ok(LocalEntry { key: key.to_owned(), dir, files })
}

/// Length and sha256 of a small file (a manifest, a checksum list, a split index).
fn file_digest(path: &std::path::Path) -> Result<FileDigest, RemoteError> {
    let bytes = std::fs::read(path).map_err(RemoteError::io(path))?;
    Ok(FileDigest { bytes: bytes.len() as u64, sha256: run_folder::sha256_hex(&bytes) })
}
