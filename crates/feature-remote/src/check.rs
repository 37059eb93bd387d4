//! `ls` and `verify` of a store: what is committed, and whether every committed key would pull.
//!
//! `verify` downloads what it checks into a staging folder inside the local cache root (removed
//! afterwards; nothing is published) and applies the checks of a pull: every data object's
//! length and sha256 against its commit, every entry as a local reader verifies one, and every
//! split index with its chunks, each of which must be committed itself.

use std::collections::{BTreeMap, BTreeSet};

use feature_cache::{Cache, SplitReader};
use futures::StreamExt;

use crate::RemoteError;
use crate::commit::{Commit, Kind};
use crate::local::Staging;
use crate::store::Remote;

/// One line of `ls --remote` or `verify --remote`.
#[derive(Debug)]
pub struct RemoteStatus {
    /// The committed key.
    pub key: String,
    /// Its commit when it reads (for `verify`: and everything it names checks), else the first
    /// problem found.
    pub result: Result<Commit, RemoteError>,
}

impl Remote {
    /// Every commit under the prefix (or of `keys`), read and checked for form only.
    pub fn list(&self, keys: Option<&[String]>) -> Result<Vec<RemoteStatus>, RemoteError> {
        let keys = match keys {
            Some(keys) => keys.to_vec(),
            None => self.committed_keys()?,
        };
        Ok(self.block_on(self.read_commits(&keys)))
    }

    async fn read_commits(&self, keys: &[String]) -> Vec<RemoteStatus> {
        let mut found: Vec<RemoteStatus> = futures::stream::iter(keys)
            .map(|key| async move {
                let result = match self.get_commit(key).await {
                    Ok(Some((commit, _))) => Ok(commit),
                    Ok(None) => Err(self.not_committed(key)),
                    Err(err) => Err(err),
                };
                RemoteStatus { key: key.clone(), result }
            })
            .buffer_unordered(self.transfer.concurrency.max(1))
            .collect()
            .await;
        found.sort_by(|a, b| a.key.cmp(&b.key));
        found
    }

    /// Checks every commit under the prefix (or those of `keys`, with the chunks of the split
    /// indexes among them) as a pull would, downloading into a staging folder of `cache`;
    /// entries first, then split indexes, each with its own result.
    pub fn verify(
        &self,
        cache: &Cache,
        keys: Option<&[String]>,
    ) -> Result<Vec<RemoteStatus>, RemoteError> {
        let listed = self.list(keys)?;
        // Chunks of the indexes named are checked too.
        let named: BTreeSet<String> = listed.iter().map(|s| s.key.clone()).collect();
        let extra: Vec<String> = listed
            .iter()
            .filter_map(|s| s.result.as_ref().ok())
            .flat_map(|c| c.chunks.iter().cloned())
            .filter(|c| !named.contains(c))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut statuses = listed;
        statuses.extend(self.block_on(self.read_commits(&extra)));

        let staging = Staging::new(cache)?;
        let total: u64 = statuses
            .iter()
            .filter_map(|s| s.result.as_ref().ok())
            .filter(|c| c.kind == Kind::Entry)
            .map(Commit::bytes)
            .sum();
        let bar = self.bar(total, "verify");
        let mut good_entries = BTreeSet::new();
        let mut results: BTreeMap<String, RemoteStatus> = BTreeMap::new();
        let (entries, indexes): (Vec<RemoteStatus>, Vec<RemoteStatus>) = statuses
            .into_iter()
            .partition(|s| s.result.as_ref().map_or(true, |c| c.kind == Kind::Entry));
        for mut status in entries {
            if let Ok(commit) = &status.result {
                let fetched = self.block_on(self.fetch_entries(&staging, &[commit], &bar));
                let dir = staging.dir().join(&commit.key);
                let checked = fetched.and_then(|_| {
                    feature_cache::verify(&dir).map_err(RemoteError::refused("entry", &commit.key))
                });
                match checked {
                    Ok(_) => {
                        good_entries.insert(commit.key.clone());
                    }
                    Err(err) => {
                        // Not kept: a split index over it must not read it.
                        let _ = std::fs::remove_dir_all(&dir);
                        status.result = Err(err);
                    }
                }
            }
            results.insert(status.key.clone(), status);
        }
        bar.finish_and_clear();
        let mut lines: Vec<RemoteStatus> = results.into_values().collect();
        for mut status in indexes {
            if let Ok(commit) = &status.result {
                let checked = self.stage_index(&staging, commit).and_then(|_| {
                    if let Some(bad) = commit.chunks.iter().find(|c| !good_entries.contains(*c)) {
                        return Err(RemoteError::Split {
                            key: commit.key.clone(),
                            reason: format!("its chunk {bad} is not committed or does not verify"),
                        });
                    }
                    SplitReader::open(&[staging.dir()], &commit.key)
                        .map_err(RemoteError::refused("split index", &commit.key))
                });
                if let Err(err) = checked {
                    status.result = Err(err);
                }
            }
            lines.push(status);
        }
        Ok(lines)
    }
}
