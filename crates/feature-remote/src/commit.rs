//! The commit object: `PREFIX/commits/<key>.json`, written once (`If-None-Match: *`) after every
//! data object it names is in the store, and the only thing a reader trusts.
//!
//! An entry's commit names its four files (`features.npy`, `labels.npy`, `manifest.json`,
//! `checksums.sha256`), each with the sha256 and length of its data object. A split index's
//! commit names its index file (`index.json`, the local `index/<key>.json`) and repeats the
//! chunk keys in order; it is written only after every chunk it lists is committed.
//!
//! The commit's key is checked against the entry itself at both ends: a pusher verifies the
//! local entry first (`feature_cache::verify`: folder name = manifest key = hash of the key
//! components) and commits under that name; a puller verifies the downloaded files in a folder
//! named by the commit's key, so files that hold another key's manifest are refused. A split
//! index is checked by recomputing its key from its content (`ChunkIndex::read`).

use std::collections::BTreeMap;

use feature_cache::{CHECKSUMS, FEATURES, FileDigest, LABELS, MANIFEST, is_key};
use serde::{Deserialize, Serialize};

use crate::RemoteError;

/// The `format` of the commits this tool writes and reads.
pub const COMMIT_FORMAT: &str = "transfer-kit feature-remote commit 1";
/// The name of a split index's file in its commit.
pub const INDEX_FILE: &str = "index.json";
/// The files of an entry, in the order they are transferred.
pub const ENTRY_FILES: [&str; 4] = [FEATURES, LABELS, MANIFEST, CHECKSUMS];
/// Commits are small (a split index's lists 64 bytes a chunk); anything bigger is not ours.
pub(crate) const MAX_COMMIT_BYTES: u64 = 16 << 20;

/// What a commit is the commit of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// A cache entry (a chunk of a split, or a whole one written before chunking).
    Entry,
    /// A split index.
    Index,
}

impl Kind {
    /// `entry` or `split index`, for messages.
    pub fn noun(self) -> &'static str {
        match self {
            Kind::Entry => "entry",
            Kind::Index => "split index",
        }
    }
}

/// One commit object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Commit {
    /// [`COMMIT_FORMAT`].
    pub format: String,
    /// Entry or split index.
    pub kind: Kind,
    /// The entry or split index key (64 hex digits); also the object's name.
    pub key: String,
    /// Each file by its name in the entry ([`ENTRY_FILES`], or [`INDEX_FILE`]): the length and
    /// sha256 of its bytes, which name its data object `data/<sha256>`.
    pub files: BTreeMap<String, FileDigest>,
    /// A split index's chunk keys, in order (the same as its index file lists); empty for an
    /// entry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chunks: Vec<String>,
    /// Who wrote it: `<host> pid <pid> <nonce>`, unique per push process.
    pub writer: String,
    /// The program that wrote it, e.g. `feature-cache-remote 0.0.0`.
    pub tool: String,
    /// When it was written, seconds since the Unix epoch.
    pub created_unix_s: u64,
}

impl Commit {
    /// The bytes stored: pretty JSON and a final newline.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = serde_json::to_vec_pretty(self).expect("a commit serialises: string keys");
        bytes.push(b'\n');
        bytes
    }

    /// Parses and checks the commit object `object` (shown in errors) expected to be the commit
    /// of `key`: our format, the key of its name, the exact file names of its kind, well-formed
    /// digests, and chunk keys for an index only.
    pub fn parse(bytes: &[u8], key: &str, object: &str) -> Result<Self, RemoteError> {
        let bad = |reason: String| RemoteError::BadCommit { object: object.to_owned(), reason };
        let commit: Commit =
            serde_json::from_slice(bytes).map_err(|e| bad(format!("not a commit object: {e}")))?;
        if commit.format != COMMIT_FORMAT {
            return Err(bad(format!(
                "format {:?} (this tool reads {COMMIT_FORMAT:?})",
                commit.format
            )));
        }
        if commit.key != key {
            return Err(bad(format!("holds the commit of {}, not of {key}", commit.key)));
        }
        let names: Vec<&str> = commit.files.keys().map(String::as_str).collect();
        let mut expected: Vec<&str> = match commit.kind {
            Kind::Entry => ENTRY_FILES.to_vec(),
            Kind::Index => vec![INDEX_FILE],
        };
        expected.sort_unstable();
        if names != expected {
            return Err(bad(format!(
                "{} commits name the files {expected:?}, this one {names:?}",
                commit.kind.noun()
            )));
        }
        if let Some((name, _)) = commit.files.iter().find(|(_, d)| !is_key(&d.sha256)) {
            return Err(bad(format!("the digest of {name} is not 64 lowercase hex digits")));
        }
        match commit.kind {
            Kind::Entry if !commit.chunks.is_empty() => {
                return Err(bad("an entry commit lists chunks".into()));
            }
            Kind::Index if commit.chunks.is_empty() => {
                return Err(bad("a split index commit lists no chunk".into()));
            }
            _ => {}
        }
        if let Some(chunk) = commit.chunks.iter().find(|c| !is_key(c)) {
            return Err(bad(format!("{chunk:?} is not a chunk key")));
        }
        Ok(commit)
    }

    /// Total bytes of the files it names.
    pub fn bytes(&self) -> u64 {
        self.files.values().map(|d| d.bytes).sum()
    }

    /// The files whose digest differs between two commits of one key (empty: same bytes).
    pub fn differing_files(&self, other: &Commit) -> Vec<String> {
        self.files
            .iter()
            .filter(|(name, d)| other.files.get(*name).map(|o| &o.sha256) != Some(&d.sha256))
            .map(|(name, _)| name.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use expect_test::{Expect, expect};

    use super::*;

    fn digest(byte: &str, bytes: u64) -> FileDigest {
        FileDigest { bytes, sha256: byte.repeat(32) }
    }

    fn entry_commit() -> Commit {
        Commit {
            format: COMMIT_FORMAT.into(),
            kind: Kind::Entry,
            key: "ab".repeat(32),
            files: BTreeMap::from([
                (FEATURES.into(), digest("01", 2048)),
                (LABELS.into(), digest("02", 136)),
                (MANIFEST.into(), digest("03", 900)),
                (CHECKSUMS.into(), digest("04", 240)),
            ]),
            chunks: Vec::new(),
            writer: "host pid 7 0011223344556677".into(),
            tool: "feature-cache-remote 0.0.0".into(),
            created_unix_s: 1_800_000_000,
        }
    }

    /// Parses `json` as the commit of `ab..ab`, showing the error or the round trip's success.
    fn check(json: &str, expect: Expect) {
        let shown =
            match Commit::parse(json.as_bytes(), &"ab".repeat(32), "s3://b/p/commits/x.json") {
                Ok(c) => format!("ok {:?} {} files {} bytes", c.kind, c.files.len(), c.bytes()),
                Err(err) => format!("error: {err}"),
            };
        expect.assert_eq(&shown);
    }

    fn edited(edit: impl FnOnce(&mut serde_json::Value)) -> String {
        let mut value = serde_json::to_value(entry_commit()).unwrap();
        edit(&mut value);
        serde_json::to_string(&value).unwrap()
    }

    #[test]
    fn round_trips_exactly() {
        let commit = entry_commit();
        let bytes = commit.to_bytes();
        assert_eq!(Commit::parse(&bytes, &commit.key, "x").unwrap(), commit);
        expect![[r#"
            {
              "format": "transfer-kit feature-remote commit 1",
              "kind": "entry",
              "key": "abababababababababababababababababababababababababababababababab",
              "files": {
                "checksums.sha256": {
                  "bytes": 240,
                  "sha256": "0404040404040404040404040404040404040404040404040404040404040404"
                },
                "features.npy": {
                  "bytes": 2048,
                  "sha256": "0101010101010101010101010101010101010101010101010101010101010101"
                },
                "labels.npy": {
                  "bytes": 136,
                  "sha256": "0202020202020202020202020202020202020202020202020202020202020202"
                },
                "manifest.json": {
                  "bytes": 900,
                  "sha256": "0303030303030303030303030303030303030303030303030303030303030303"
                }
              },
              "writer": "host pid 7 0011223344556677",
              "tool": "feature-cache-remote 0.0.0",
              "created_unix_s": 1800000000
            }
        "#]]
        .assert_eq(std::str::from_utf8(&bytes).unwrap());

        let index = Commit {
            kind: Kind::Index,
            files: BTreeMap::from([(INDEX_FILE.into(), digest("05", 400))]),
            chunks: vec!["0c".repeat(32), "0d".repeat(32)],
            ..entry_commit()
        };
        assert_eq!(Commit::parse(&index.to_bytes(), &index.key, "x").unwrap(), index);
    }

    #[test]
    fn refuses_what_this_tool_does_not_write() {
        check(&edited(|_| {}), expect!["ok Entry 4 files 3324 bytes"]);
        check(
            "null",
            expect![
                "error: s3://b/p/commits/x.json: not a commit object: invalid type: null, expected struct Commit at line 1 column 4"
            ],
        );
        check(
            &edited(|v| v["format"] = "transfer-kit feature-remote commit 2".into()),
            expect![[
                r#"error: s3://b/p/commits/x.json: format "transfer-kit feature-remote commit 2" (this tool reads "transfer-kit feature-remote commit 1")"#
            ]],
        );
        check(
            &edited(|v| v["key"] = "cd".repeat(32).into()),
            expect![
                "error: s3://b/p/commits/x.json: holds the commit of cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd, not of abababababababababababababababababababababababababababababababab"
            ],
        );
        check(
            &edited(|v| {
                v["files"].as_object_mut().unwrap().remove(LABELS);
            }),
            expect![[
                r#"error: s3://b/p/commits/x.json: entry commits name the files ["checksums.sha256", "features.npy", "labels.npy", "manifest.json"], this one ["checksums.sha256", "features.npy", "manifest.json"]"#
            ]],
        );
        check(
            &edited(|v| v["files"][FEATURES]["sha256"] = "AB".repeat(32).into()),
            expect![
                "error: s3://b/p/commits/x.json: the digest of features.npy is not 64 lowercase hex digits"
            ],
        );
        check(
            &edited(|v| v["chunks"] = serde_json::json!(["ab".repeat(32)])),
            expect!["error: s3://b/p/commits/x.json: an entry commit lists chunks"],
        );
        check(
            &edited(|v| v["extra"] = 1.into()),
            expect![
                "error: s3://b/p/commits/x.json: not a commit object: unknown field `extra`, expected one of `format`, `kind`, `key`, `files`, `chunks`, `writer`, `tool`, `created_unix_s` at line 1 column 36"
            ],
        );
        check(
            &edited(|v| {
                v["kind"] = "index".into();
                v["files"] =
                    serde_json::json!({ INDEX_FILE: { "bytes": 1, "sha256": "0e".repeat(32) } });
                v["chunks"] = serde_json::json!(["ab".repeat(32), "../x"]);
            }),
            expect![[r#"error: s3://b/p/commits/x.json: "../x" is not a chunk key"#]],
        );
    }

    #[test]
    fn differing_files_names_what_another_writer_computed_otherwise() {
        let ours = entry_commit();
        let mut theirs = entry_commit();
        assert!(ours.differing_files(&theirs).is_empty());
        theirs.files.get_mut(FEATURES).unwrap().sha256 = "09".repeat(32);
        assert_eq!(ours.differing_files(&theirs), vec![FEATURES.to_owned()]);
    }
}
