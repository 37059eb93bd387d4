//! A team's feature cache in an S3-compatible object store: push, pull, ls and verify, safe
//! under racing writers and kills.
//!
//! The store holds, under `s3://BUCKET/PREFIX` (`layout.rs`), data objects named by the sha256
//! of their bytes and one create-once commit object per entry or split index naming them
//! (`commit.rs`). The protocol: a writer uploads every data object of a key, then creates its
//! commit with `If-None-Match: *` (a split index's only after each of its chunks is committed);
//! a reader trusts only committed keys and checks every byte before anything lands in its cache
//! (`pull.rs`, the rule of `feature_cache::import`). The first writer of a key wins; a later one
//! keeps that commit and says so (GPU features may differ in the last bits between machines;
//! either is a valid entry). Before its first write a remote proves that the store honours
//! create-once writes (`store.rs`, the conformance probe), and is refused otherwise.
//!
//! Use: `Remote::connect(&"s3://bucket/prefix".parse()?, Transfer::default())?`, then
//! `push(&cache, &keys)`, `pull(&cache, &keys)`, `list(None)`, `verify(&cache, None)`.
//!
//! This crate is the only one that links an S3 client (`object_store` with its `aws` feature:
//! about 150 crates and minutes of build), and only its binary `feature-cache-remote` links this
//! crate; the stage binaries and `feature-cache` never do.

mod aws_files;
mod check;
mod commit;
mod error;
mod layout;
mod local;
mod pull;
mod push;
mod store;

pub use aws_files::settings_from_files;
pub use check::RemoteStatus;
pub use commit::{COMMIT_FORMAT, Commit, ENTRY_FILES, INDEX_FILE, Kind};
pub use error::{DigestMismatch, RemoteError};
pub use layout::{COMMITS_DIR, DATA_DIR, PROBE_DIR, RemoteUrl};
pub use pull::Pulled;
pub use push::{PushOutcome, Pushed};
pub use store::{Remote, Transfer, endpoint_shown, retry_config};
