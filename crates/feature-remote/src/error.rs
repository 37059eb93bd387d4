//! The error type of the remote store: each variant names the object, entry or path it is about
//! and why.

use std::path::PathBuf;

use feature_cache::CacheError;

/// Everything that can go wrong between a cache folder and an object store.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// `url` is not an `s3://BUCKET/PREFIX` this tool accepts, for `reason`.
    #[error("{url}: {reason}")]
    Url { url: String, reason: String },
    /// The S3 client could not be set up from the environment (missing bucket, bad endpoint).
    #[error("{endpoint}: cannot set up an S3 client: {source}")]
    Client { endpoint: String, source: object_store::Error },
    /// The store at `endpoint` let a second create-once write of the probe object `object`
    /// succeed: it ignores `If-None-Match: *`.
    #[error(
        "{endpoint} is refused: it ignores create-once writes (a second PUT of the probe object {object} with If-None-Match: * succeeded instead of failing). The commit protocol needs them: with this store two teammates pushing the same entry would silently overwrite each other's commit objects, so a reader could see a commit change under it. Use a store that honours conditional PUTs (AWS S3 does, and SeaweedFS, which the tests run against)"
    )]
    CreateOnceIgnored { endpoint: String, object: String },
    /// A request about `object` failed (after the client's retries).
    #[error("{object}: {source}")]
    Store { object: String, source: object_store::Error },
    /// Reading or writing the local file `path` failed.
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// The local cache refused something (names its own path).
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// `key` names neither an entry nor a split index of the local cache `root`.
    #[error("{key}: no such cache entry or split index in {root}")]
    UnknownKey { key: String, root: PathBuf },
    /// `key` has no commit object in the store: for a reader it is not there.
    #[error("{key}: not in {remote} (no commit object {object})")]
    NotCommitted { key: String, remote: String, object: String },
    /// The commit object `object` is not one this tool writes, or does not fit its name.
    #[error("{object}: {reason}")]
    BadCommit { object: String, reason: String },
    /// A data object's bytes do not hash to the digest the commit names (its own name).
    #[error(
        "{kind} {key} refused: {file} (data object {}) has sha256 {} in the store, the commit says {}",
        .mismatch.object,
        .mismatch.actual,
        .mismatch.expected
    )]
    Digest { kind: &'static str, key: String, file: String, mismatch: Box<DigestMismatch> },
    /// A data object the commit names is not in the store (deleted by hand or by a lifecycle
    /// rule: a writer never commits before its data).
    #[error("{kind} {key} refused: its {file} (data object {object}) is not in the store")]
    MissingData { kind: &'static str, key: String, file: String, object: String },
    /// A data object's length is not the one the commit names.
    #[error(
        "{kind} {key} refused: {file} (data object {object}) is {actual} bytes in the store, the commit says {expected}"
    )]
    Length {
        kind: &'static str,
        key: String,
        file: String,
        object: String,
        expected: u64,
        actual: u64,
    },
    /// The files of `key` arrived with the digests their commit names but do not form a valid
    /// entry or split (checked exactly as a local reader checks them).
    #[error("{kind} {key} refused: {source}")]
    Refused { kind: &'static str, key: String, source: Box<CacheError> },
    /// The split index `key`'s commit does not list the chunks its index file lists, or lists a
    /// chunk that has no commit.
    #[error("split index {key} refused: {reason}")]
    Split { key: String, reason: String },
    /// The local file `path` changed while it was being uploaded (its bytes no longer hash to
    /// the digest verified a moment before); the upload was abandoned.
    #[error(
        "{path}: changed while uploading (sha256 {expected} verified, {actual} sent); nothing was committed for it"
    )]
    Changed { path: PathBuf, expected: String, actual: String },
}

/// The data object and the two digests of a [`RemoteError::Digest`] (boxed: errors stay small).
#[derive(Debug)]
pub struct DigestMismatch {
    /// The data object, `s3://BUCKET/PREFIX/data/<sha256>`.
    pub object: String,
    /// The sha256 the commit names.
    pub expected: String,
    /// The sha256 of the bytes the store returned.
    pub actual: String,
}

impl RemoteError {
    /// The [`RemoteError::Refused`] for `kind` `key` that a cache check's error `source` makes.
    pub(crate) fn refused(kind: &'static str, key: &str) -> impl FnOnce(CacheError) -> Self {
        let key = key.to_owned();
        move |source| RemoteError::Refused { kind, key, source: Box::new(source) }
    }

    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| RemoteError::Io { path, source }
    }
}
