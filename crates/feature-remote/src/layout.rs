//! Where things live in a store: the `s3://BUCKET/PREFIX` address a user types, and the object
//! names under `PREFIX`.
//!
//! - `PREFIX/data/<sha256>`: one file of an entry (or a split index file), named by the sha256
//!   of its bytes. Any writer may write one; the name fixes the content, so two writers of the
//!   same bytes write the same object, and a reader checks the digest anyway.
//! - `PREFIX/commits/<key>.json`: the create-once commit of entry or split index `key`
//!   ([`crate::Commit`]), naming the data object of each of its files. Only committed keys
//!   exist for a reader.
//! - `PREFIX/probe/<host>-<pid>-<nanos>`: the conformance probe's object, deleted after use.

use std::fmt;
use std::str::FromStr;

use object_store::path::Path as ObjectPath;

use crate::RemoteError;

/// Folder of the data objects under the prefix.
pub const DATA_DIR: &str = "data";
/// Folder of the commit objects under the prefix.
pub const COMMITS_DIR: &str = "commits";
/// Folder of the conformance probe's objects under the prefix.
pub const PROBE_DIR: &str = "probe";

/// A parsed `s3://BUCKET/PREFIX` (the prefix may be empty: the bucket's root).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteUrl {
    /// The bucket name.
    pub bucket: String,
    /// Segments joined by `/`, without leading or trailing `/`; empty for the bucket's root.
    pub prefix: String,
}

impl FromStr for RemoteUrl {
    type Err = RemoteError;

    fn from_str(url: &str) -> Result<Self, RemoteError> {
        let bad = |reason: &str| RemoteError::Url { url: url.to_owned(), reason: reason.into() };
        let rest = url.strip_prefix("s3://").ok_or_else(|| bad("expected s3://BUCKET/PREFIX"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        // S3's bucket naming rules (lowercase letters, digits, '.', '-'; 3 to 63 characters,
        // starting and ending with a letter or digit).
        let edge_ok =
            |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        if !(3..=63).contains(&bucket.len())
            || !bucket
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-')
            || !edge_ok(bucket.chars().next())
            || !edge_ok(bucket.chars().last())
        {
            return Err(bad(
                "the bucket name must be 3 to 63 lowercase letters, digits, '.' or '-', starting and ending with a letter or digit",
            ));
        }
        let prefix = prefix.trim_end_matches('/');
        for segment in prefix.split('/').filter(|_| !prefix.is_empty()) {
            if segment.is_empty() || segment == "." || segment == ".." {
                return Err(bad("the prefix has an empty, '.' or '..' segment"));
            }
            if !segment.chars().all(|c| c.is_ascii_alphanumeric() || "-_.=+@".contains(c)) {
                return Err(bad(
                    "prefix segments may hold ASCII letters, digits and - _ . = + @ only",
                ));
            }
        }
        Ok(Self { bucket: bucket.to_owned(), prefix: prefix.to_owned() })
    }
}

impl fmt::Display for RemoteUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.prefix.is_empty() {
            write!(f, "s3://{}", self.bucket)
        } else {
            write!(f, "s3://{}/{}", self.bucket, self.prefix)
        }
    }
}

impl RemoteUrl {
    /// `PREFIX/data/<sha256>`.
    pub fn data_object(&self, sha256: &str) -> ObjectPath {
        self.object(&format!("{DATA_DIR}/{sha256}"))
    }

    /// `PREFIX/commits/<key>.json`.
    pub fn commit_object(&self, key: &str) -> ObjectPath {
        self.object(&format!("{COMMITS_DIR}/{key}.json"))
    }

    /// `PREFIX/commits`, the folder listed by `ls`.
    pub fn commits_dir(&self) -> ObjectPath {
        self.object(COMMITS_DIR)
    }

    /// `PREFIX/probe/<name>`.
    pub fn probe_object(&self, name: &str) -> ObjectPath {
        self.object(&format!("{PROBE_DIR}/{name}"))
    }

    /// The key of a commit object's name (`PREFIX/commits/<key>.json`), if it is one.
    pub fn commit_key(&self, object: &ObjectPath) -> Option<String> {
        let name = object.as_ref();
        let dir = self.commits_dir();
        let rest = name.strip_prefix(dir.as_ref())?.strip_prefix('/')?;
        rest.strip_suffix(".json").filter(|k| feature_cache::is_key(k)).map(str::to_owned)
    }

    /// `s3://BUCKET/<object>`, for messages.
    pub fn show(&self, object: &ObjectPath) -> String {
        format!("s3://{}/{object}", self.bucket)
    }

    fn object(&self, rest: &str) -> ObjectPath {
        // Both parts hold only characters `from_str` and the callers allow, so no encoding
        // is needed and the path is exactly the text.
        if self.prefix.is_empty() {
            ObjectPath::from(rest)
        } else {
            ObjectPath::from(format!("{}/{rest}", self.prefix))
        }
    }
}

#[cfg(test)]
mod tests {
    use expect_test::{Expect, expect};

    use super::*;

    fn check(url: &str, expect: Expect) {
        let shown = match url.parse::<RemoteUrl>() {
            Ok(u) => format!(
                "bucket={} prefix={:?} shown={} data={} commit={}",
                u.bucket,
                u.prefix,
                u,
                u.data_object(&"ab".repeat(32)),
                u.commit_object(&"cd".repeat(32))
            ),
            Err(err) => format!("error: {err}"),
        };
        expect.assert_eq(&shown);
    }

    #[test]
    fn parses_bucket_and_prefix() {
        check(
            "s3://team-cache/features",
            expect![[
                r#"bucket=team-cache prefix="features" shown=s3://team-cache/features data=features/data/abababababababababababababababababababababababababababababababab commit=features/commits/cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd.json"#
            ]],
        );
        check(
            "s3://team.cache/a/b/",
            expect![[
                r#"bucket=team.cache prefix="a/b" shown=s3://team.cache/a/b data=a/b/data/abababababababababababababababababababababababababababababababab commit=a/b/commits/cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd.json"#
            ]],
        );
        check(
            "s3://bucket",
            expect![[
                r#"bucket=bucket prefix="" shown=s3://bucket data=data/abababababababababababababababababababababababababababababababab commit=commits/cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd.json"#
            ]],
        );
    }

    #[test]
    fn refuses_what_is_not_an_s3_address() {
        check("gs://bucket/x", expect!["error: gs://bucket/x: expected s3://BUCKET/PREFIX"]);
        check(
            "s3://Bucket/x",
            expect![
                "error: s3://Bucket/x: the bucket name must be 3 to 63 lowercase letters, digits, '.' or '-', starting and ending with a letter or digit"
            ],
        );
        check(
            "s3://ab/x",
            expect![
                "error: s3://ab/x: the bucket name must be 3 to 63 lowercase letters, digits, '.' or '-', starting and ending with a letter or digit"
            ],
        );
        check(
            "s3://bucket/a//b",
            expect!["error: s3://bucket/a//b: the prefix has an empty, '.' or '..' segment"],
        );
        check(
            "s3://bucket/a/../b",
            expect!["error: s3://bucket/a/../b: the prefix has an empty, '.' or '..' segment"],
        );
        check(
            "s3://bucket/a b",
            expect![
                "error: s3://bucket/a b: prefix segments may hold ASCII letters, digits and - _ . = + @ only"
            ],
        );
    }

    #[test]
    fn commit_keys_come_back_from_object_names() {
        let url: RemoteUrl = "s3://bucket/p".parse().unwrap();
        let key = "0f".repeat(32);
        assert_eq!(url.commit_key(&url.commit_object(&key)), Some(key.clone()));
        assert_eq!(url.commit_key(&url.data_object(&key)), None);
        assert_eq!(url.commit_key(&ObjectPath::from("p/commits/xyz.json")), None);
        assert_eq!(url.show(&url.commit_object(&key)), format!("s3://bucket/p/commits/{key}.json"));
    }
}
