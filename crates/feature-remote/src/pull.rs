//! Pull: committed entries and split indexes from the store into a local cache, every byte
//! checked before anything lands.
//!
//! For each key named: its commit is read (no commit: not in the store, whatever data objects
//! exist). Each data object it names is streamed into a staging folder inside the cache root,
//! its length and sha256 checked on the way; then the staged entry is verified exactly as a
//! local reader verifies one (`feature_cache::verify`: digests, key = folder name = manifest key,
//! shapes, labels), and a split index with every chunk it lists (`SplitReader::open` over the
//! staging folder and the cache). Only then is anything published, by rename, chunks before
//! their index, as bundle import does. A refused key adds nothing to the cache.
//!
//! An interrupted pull restarts cleanly, and skips what it finished: the killed process's
//! staging folder (`.tmp-<host>-<pid>-...`) is removed by the next pull or `feature-cache gc`,
//! keys already published verify locally and are not downloaded again, and neither are the
//! chunks of an index already in the cache; a partly downloaded key starts again from its
//! first byte.

use std::collections::BTreeMap;

use feature_cache::{Cache, ChunkIndex, INDEX_DIR, SplitReader, index_path, is_key};
use futures::{StreamExt, TryStreamExt};

use crate::RemoteError;
use crate::commit::{Commit, ENTRY_FILES, INDEX_FILE, Kind};
use crate::local::Staging;
use crate::store::Remote;

/// One line of a pull report.
#[derive(Debug, Clone, PartialEq)]
pub struct Pulled {
    /// The entry or split index key.
    pub key: String,
    /// What it is.
    pub kind: Kind,
    /// `false`: it was already in the cache and verified, so nothing was downloaded.
    pub downloaded: bool,
    /// Of an index: chunks downloaded (the others were in the cache already).
    pub chunks_downloaded: usize,
    /// Bytes received for it (with its chunks).
    pub received: u64,
}

impl Remote {
    /// Pulls `keys` (entry or split index keys; an index with all its chunks) into `cache`, one
    /// key at a time, and reports one line per key. Leftover staging folders of dead pulls are
    /// removed first.
    ///
    /// Errors: [`RemoteError::NotCommitted`] for a key the store does not have;
    /// [`RemoteError::Digest`] / [`RemoteError::Length`] naming the entry, the file, the data
    /// object and both values; [`RemoteError::Refused`] when the files do not form a valid
    /// entry or split. Keys before the failing one stay pulled; nothing of the failing one
    /// lands.
    pub fn pull(&self, cache: &Cache, keys: &[String]) -> Result<Vec<Pulled>, RemoteError> {
        for removed in cache.clean_leftovers()? {
            tracing::info!(path = %removed.display(), "removed the leftover of an interrupted write");
        }
        let mut lines = Vec::new();
        for key in keys {
            if !is_key(key) {
                return Err(self.not_committed(key));
            }
            let (commit, _) =
                self.block_on(self.get_commit(key))?.ok_or_else(|| self.not_committed(key))?;
            let line = match commit.kind {
                Kind::Entry => self.pull_entry(cache, &commit)?,
                Kind::Index => self.pull_index(cache, &commit)?,
            };
            lines.push(line);
        }
        Ok(lines)
    }

    pub(crate) fn not_committed(&self, key: &str) -> RemoteError {
        RemoteError::NotCommitted {
            key: key.to_owned(),
            remote: self.url.to_string(),
            object: self.url.show(&self.url.commit_object(key)),
        }
    }

    fn pull_entry(&self, cache: &Cache, commit: &Commit) -> Result<Pulled, RemoteError> {
        let key = &commit.key;
        let mut line = Pulled {
            key: key.clone(),
            kind: Kind::Entry,
            downloaded: false,
            chunks_downloaded: 0,
            received: 0,
        };
        if feature_cache::verify_entry(cache.root(), key).is_ok() {
            return Ok(line);
        }
        let staging = Staging::new(cache)?;
        let bar = self.bar(commit.bytes(), "pull");
        line.received = self.block_on(self.fetch_entries(&staging, &[commit], &bar))?;
        bar.finish_and_clear();
        let staged = staging.dir().join(key);
        feature_cache::verify(&staged).map_err(RemoteError::refused("entry", key))?;
        cache.publish_entry(&staged, key)?;
        line.downloaded = true;
        Ok(line)
    }

    fn pull_index(&self, cache: &Cache, commit: &Commit) -> Result<Pulled, RemoteError> {
        let key = &commit.key;
        let mut line = Pulled {
            key: key.clone(),
            kind: Kind::Index,
            downloaded: false,
            chunks_downloaded: 0,
            received: 0,
        };
        if feature_cache::verify_split(cache.root(), key).is_ok() {
            return Ok(line);
        }
        let staging = Staging::new(cache)?;
        let staged_index = self.stage_index(&staging, commit)?;
        line.received += commit.bytes();

        // The chunks not already valid in the cache, each by its own commit.
        let missing: Vec<&String> = commit
            .chunks
            .iter()
            .filter(|c| feature_cache::verify_entry(cache.root(), c).is_err())
            .collect();
        let chunk_commits = self.block_on(self.chunk_commits(key, &missing))?;
        let refs: Vec<&Commit> = chunk_commits.values().collect();
        let bar = self.bar(refs.iter().map(|c| c.bytes()).sum(), "pull");
        line.received += self.block_on(self.fetch_entries(&staging, &refs, &bar))?;
        bar.finish_and_clear();
        for chunk in chunk_commits.keys() {
            let dir = staging.dir().join(chunk);
            feature_cache::verify(&dir).map_err(RemoteError::refused("entry", chunk))?;
        }
        SplitReader::open(&[staging.dir(), cache.root()], key)
            .map_err(RemoteError::refused("split index", key))?;

        // Chunks first, the index last: an index is never visible before its chunks.
        for chunk in chunk_commits.keys() {
            cache.publish_entry(&staging.dir().join(chunk), chunk)?;
        }
        cache.publish_index(&staged_index, key)?;
        line.downloaded = true;
        line.chunks_downloaded = chunk_commits.len();
        Ok(line)
    }

    /// Downloads index `commit`'s file to `<staging>/index/<key>.json` and checks it: it reads
    /// (its content hashes to its key) and lists exactly the chunks its commit lists.
    pub(crate) fn stage_index(
        &self,
        staging: &Staging,
        commit: &Commit,
    ) -> Result<std::path::PathBuf, RemoteError> {
        let key = &commit.key;
        let dir = staging.dir().join(INDEX_DIR);
        std::fs::create_dir_all(&dir).map_err(RemoteError::io(&dir))?;
        let path = index_path(staging.dir(), key);
        let hidden = indicatif::ProgressBar::hidden();
        self.block_on(self.download(
            ("split index", key, INDEX_FILE),
            &commit.files[INDEX_FILE],
            &path,
            &hidden,
        ))?;
        let index = ChunkIndex::read(&path).map_err(RemoteError::refused("split index", key))?;
        let listed: Vec<&String> = index.chunks.iter().map(|c| &c.key).collect();
        if listed != commit.chunks.iter().collect::<Vec<_>>() {
            return Err(RemoteError::Split {
                key: key.clone(),
                reason: "its commit and its index file list different chunks".into(),
            });
        }
        Ok(path)
    }

    /// The commits of `chunks` of index `index`; a chunk without one refuses the index.
    pub(crate) async fn chunk_commits(
        &self,
        index: &str,
        chunks: &[&String],
    ) -> Result<BTreeMap<String, Commit>, RemoteError> {
        let concurrency = self.transfer.concurrency.max(1);
        futures::stream::iter(chunks.iter().copied())
            .map(|chunk| async move {
                match self.get_commit(chunk).await? {
                    Some((commit, _)) if commit.kind == Kind::Entry => Ok((chunk.clone(), commit)),
                    Some(_) => Err(RemoteError::Split {
                        key: index.to_owned(),
                        reason: format!("its chunk {chunk} is committed as a split index"),
                    }),
                    None => Err(RemoteError::Split {
                        key: index.to_owned(),
                        reason: format!("its chunk {chunk} has no commit in {}", self.url),
                    }),
                }
            })
            .buffer_unordered(concurrency)
            .try_collect()
            .await
    }

    /// Downloads the files of entry `commits` into `<staging>/<key>/`, concurrently, each
    /// checked against its digest; returns the bytes received.
    pub(crate) async fn fetch_entries(
        &self,
        staging: &Staging,
        commits: &[&Commit],
        bar: &indicatif::ProgressBar,
    ) -> Result<u64, RemoteError> {
        for commit in commits {
            let dir = staging.dir().join(&commit.key);
            std::fs::create_dir(&dir).map_err(RemoteError::io(&dir))?;
        }
        let jobs =
            commits.iter().flat_map(|commit| ENTRY_FILES.iter().map(move |name| (*commit, *name)));
        let received: Vec<u64> = futures::stream::iter(jobs)
            .map(|(commit, name)| async move {
                let dest = staging.dir().join(&commit.key).join(name);
                self.download(("entry", &commit.key, name), &commit.files[name], &dest, bar).await
            })
            .buffer_unordered(self.transfer.concurrency.max(1))
            .try_collect()
            .await?;
        Ok(received.iter().sum())
    }
}
