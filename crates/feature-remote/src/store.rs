//! The connection to a store: the S3 client from the standard AWS environment, the conformance
//! probe a remote passes before its first write, and the transfers of single objects (streamed,
//! multipart above one part, digests checked on the fly).

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use feature_cache::FileDigest;
use futures::StreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{
    BackoffConfig, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, RetryConfig,
    WriteMultipart,
};
use sha2::{Digest, Sha256};

use crate::RemoteError;
use crate::commit::{Commit, MAX_COMMIT_BYTES};
use crate::error::DigestMismatch;
use crate::layout::RemoteUrl;
use crate::local::hostname;

/// How transfers run.
#[derive(Debug, Clone)]
pub struct Transfer {
    /// Objects larger than this go up as a multipart upload in parts of this size (S3 wants at
    /// least 5 MiB a part but the last).
    pub part_size: usize,
    /// Objects (or parts of one) in flight at once.
    pub concurrency: usize,
    /// Draw byte progress bars on stderr (only ever when stderr is a terminal).
    pub progress: bool,
}

impl Default for Transfer {
    fn default() -> Self {
        Self { part_size: 8 << 20, concurrency: 8, progress: true }
    }
}

/// A store that passed the conformance probe, with the runtime that drives its requests.
#[derive(Debug)]
pub struct Remote {
    pub(crate) store: Arc<dyn ObjectStore>,
    pub(crate) url: RemoteUrl,
    pub(crate) endpoint: String,
    pub(crate) transfer: Transfer,
    pub(crate) writer: String,
    runtime: tokio::runtime::Runtime,
    /// Name of this process's probe object.
    probe_name: String,
    /// Set once the probe passed.
    create_once_checked: std::sync::OnceLock<()>,
}

/// The retries every request gets: up to 10, backing off from 100 ms doubling to at most 15 s,
/// within 3 minutes of the first try (object_store retries connection errors, timeouts, 5xx
/// and 429 answers; a retried create-once PUT whose first try did land is recognised in
/// [`Remote::put_commit`]).
pub fn retry_config() -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(15),
            base: 2.0,
        },
        max_retries: 10,
        retry_timeout: Duration::from_secs(180),
    }
}

/// The endpoint for messages: `AWS_ENDPOINT_URL_S3`, else `AWS_ENDPOINT_URL` / `AWS_ENDPOINT`,
/// else AWS S3 in `AWS_REGION` / `AWS_DEFAULT_REGION` (us-east-1 when none), each looked up by
/// `var` (the environment, then the shared files).
pub fn endpoint_shown(var: &dyn Fn(&str) -> Option<String>) -> String {
    var("AWS_ENDPOINT_URL_S3")
        .or_else(|| var("AWS_ENDPOINT_URL"))
        .or_else(|| var("AWS_ENDPOINT"))
        .unwrap_or_else(|| {
            let region = var("AWS_REGION")
                .or_else(|| var("AWS_DEFAULT_REGION"))
                .unwrap_or_else(|| "us-east-1".into());
            format!("AWS S3 ({region})")
        })
}

impl Remote {
    /// Connects to `url` with credentials, region and endpoint from the standard AWS
    /// environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
    /// `AWS_REGION`, `AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP=true` for a plain-HTTP endpoint such as
    /// one on loopback), then the shared files for what it leaves unset (`aws_files.rs`), then
    /// runs the conformance probe ([`Remote::new`]).
    pub fn connect(url: &RemoteUrl, transfer: Transfer) -> Result<Self, RemoteError> {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let from_files = crate::aws_files::settings_from_files(&env);
        let var = |name: &str| {
            env(name)
                .or_else(|| from_files.iter().find(|(k, _)| *k == name).map(|(_, v)| v.clone()))
        };
        let endpoint = endpoint_shown(&var);
        let mut builder = AmazonS3Builder::from_env();
        for (name, value) in &from_files {
            let key = name.to_ascii_lowercase().parse().expect("an AWS_* name object_store reads");
            builder = builder.with_config(key, value);
        }
        let store = builder
            .with_bucket_name(&url.bucket)
            .with_retry(retry_config())
            .build()
            .map_err(|source| RemoteError::Client { endpoint: endpoint.clone(), source })?;
        Self::new(Arc::new(store), url.clone(), endpoint, transfer)
    }

    /// A remote on `store` (any `ObjectStore`; tests use an in-memory one). Nothing is sent
    /// yet: the conformance probe runs before the first write ([`Remote::check_create_once`]),
    /// so read-only credentials can pull, list and verify.
    pub fn new(
        store: Arc<dyn ObjectStore>,
        url: RemoteUrl,
        endpoint: String,
        transfer: Transfer,
    ) -> Result<Self, RemoteError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(RemoteError::io("tokio runtime"))?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let nonce = run_folder::sha256_hex(
            format!("{}/{}/{nanos}/{:p}", hostname(), std::process::id(), &runtime).as_bytes(),
        );
        let writer = format!("{} pid {} {}", hostname(), std::process::id(), &nonce[..16]);
        let probe_name = format!("{}-{}-{nanos}", hostname(), std::process::id());
        let create_once_checked = std::sync::OnceLock::new();
        Ok(Self {
            store,
            url,
            endpoint,
            transfer,
            writer,
            runtime,
            probe_name,
            create_once_checked,
        })
    }

    /// The conformance probe, once per remote, before anything is written: a fresh probe object
    /// is created twice with create-once PUTs; the second must fail with "already exists", else
    /// the store ignores `If-None-Match: *` and is refused ([`RemoteError::CreateOnceIgnored`]),
    /// because the commit protocol rests on it. The probe object is deleted either way.
    pub fn check_create_once(&self) -> Result<(), RemoteError> {
        if self.create_once_checked.get().is_none() {
            self.block_on(self.probe(&self.probe_name))?;
            let _ = self.create_once_checked.set(());
        }
        Ok(())
    }

    /// The store's address, `s3://BUCKET/PREFIX`.
    pub fn url(&self) -> &RemoteUrl {
        &self.url
    }

    /// The endpoint, as shown in messages.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub(crate) fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }

    async fn probe(&self, name: &str) -> Result<(), RemoteError> {
        let object = self.url.probe_object(name);
        let shown = self.url.show(&object);
        let create = || {
            self.store.put_opts(
                &object,
                PutPayload::from_static(b"create-once probe\n"),
                PutOptions::from(PutMode::Create),
            )
        };
        create().await.map_err(|source| self.store_error(&object, source))?;
        let second = create().await;
        let deleted = self.store.delete(&object).await;
        match second {
            Err(object_store::Error::AlreadyExists { .. }) => {}
            Ok(_) => {
                return Err(RemoteError::CreateOnceIgnored {
                    endpoint: self.endpoint.clone(),
                    object: shown,
                });
            }
            Err(source) => return Err(self.store_error(&object, source)),
        }
        if let Err(err) = deleted {
            tracing::warn!(object = %shown, %err, "could not delete the probe object");
        }
        Ok(())
    }

    pub(crate) fn store_error(
        &self,
        object: &ObjectPath,
        source: object_store::Error,
    ) -> RemoteError {
        RemoteError::Store {
            object: format!("{} at {}", self.url.show(object), self.endpoint),
            source,
        }
    }

    /// The commit of `key`, or `None` when it has none.
    pub(crate) async fn get_commit(
        &self,
        key: &str,
    ) -> Result<Option<(Commit, Bytes)>, RemoteError> {
        let object = self.url.commit_object(key);
        let result = match self.store.get(&object).await {
            Ok(result) => result,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(source) => return Err(self.store_error(&object, source)),
        };
        if result.meta.size > MAX_COMMIT_BYTES {
            return Err(RemoteError::BadCommit {
                object: self.url.show(&object),
                reason: format!("{} bytes, far larger than any commit", result.meta.size),
            });
        }
        let bytes = result.bytes().await.map_err(|source| self.store_error(&object, source))?;
        let commit = Commit::parse(&bytes, key, &self.url.show(&object))?;
        Ok(Some((commit, bytes)))
    }

    /// Writes `commit` create-once. `Ok(None)`: this writer's commit is the one in the store
    /// (including after a retry whose first try landed: the stored bytes are ours). `Ok(Some)`:
    /// another writer committed first; theirs stays.
    pub(crate) async fn put_commit(&self, commit: &Commit) -> Result<Option<Commit>, RemoteError> {
        let object = self.url.commit_object(&commit.key);
        let bytes = commit.to_bytes();
        let put = self
            .store
            .put_opts(&object, PutPayload::from(bytes.clone()), PutOptions::from(PutMode::Create))
            .await;
        match put {
            Ok(_) => Ok(None),
            Err(object_store::Error::AlreadyExists { .. }) => {
                match self.get_commit(&commit.key).await? {
                    Some((_, stored)) if stored.as_ref() == bytes.as_slice() => Ok(None),
                    Some((theirs, _)) => Ok(Some(theirs)),
                    None => Err(RemoteError::BadCommit {
                        object: self.url.show(&object),
                        reason: "the store said it exists, then that it does not".into(),
                    }),
                }
            }
            Err(source) => Err(self.store_error(&object, source)),
        }
    }

    /// Makes sure the data object of `digest` holds the file `path`: the file is streamed up (one PUT up to a part, else a multipart upload of parts), hashed
    /// on the way, and the upload is completed only if the bytes sent hash to `digest`; else it
    /// is abandoned ([`RemoteError::Changed`]). Returns the bytes sent.
    pub(crate) async fn upload(
        &self,
        path: &Path,
        digest: &FileDigest,
        bar: &indicatif::ProgressBar,
    ) -> Result<u64, RemoteError> {
        // Always sent, even when an object of that name exists: the name fixes the content, so
        // rewriting it repairs one damaged or lost behind our back (a same-size check would
        // commit an entry whose data does not verify).
        let object = self.url.data_object(&digest.sha256);
        let part = self.transfer.part_size.max(1);
        let mut file = File::open(path).map_err(RemoteError::io(path))?;
        let mut hasher = Sha256::new();
        let mut sent = 0u64;
        let changed = |hasher: Sha256, sent: u64| -> Option<RemoteError> {
            let actual = hex::encode(hasher.finalize());
            (actual != digest.sha256 || sent != digest.bytes).then(|| RemoteError::Changed {
                path: path.to_owned(),
                expected: digest.sha256.clone(),
                actual,
            })
        };
        if digest.bytes <= part as u64 {
            let mut buf = Vec::with_capacity(digest.bytes as usize);
            (&mut file)
                .take(part as u64 + 1)
                .read_to_end(&mut buf)
                .map_err(RemoteError::io(path))?;
            hasher.update(&buf);
            sent = buf.len() as u64;
            if let Some(err) = changed(hasher, sent) {
                return Err(err);
            }
            self.store
                .put_opts(&object, PutPayload::from(buf), PutOptions::from(PutMode::Overwrite))
                .await
                .map_err(|source| self.store_error(&object, source))?;
            bar.inc(sent);
            return Ok(sent);
        }
        let upload = self
            .store
            .put_multipart(&object)
            .await
            .map_err(|source| self.store_error(&object, source))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, part);
        loop {
            let mut buf = Vec::with_capacity(part);
            let read = (&mut file).take(part as u64).read_to_end(&mut buf);
            let n = match read {
                Ok(n) => n,
                Err(err) => {
                    let _ = writer.abort().await;
                    return Err(RemoteError::Io { path: path.to_owned(), source: err });
                }
            };
            if n == 0 {
                break;
            }
            hasher.update(&buf);
            sent += n as u64;
            if let Err(source) = writer.wait_for_capacity(self.transfer.concurrency.max(1)).await {
                let _ = writer.abort().await;
                return Err(self.store_error(&object, source));
            }
            writer.put(Bytes::from(buf));
            bar.inc(n as u64);
        }
        if let Some(err) = changed(hasher, sent) {
            let _ = writer.abort().await;
            return Err(err);
        }
        writer.finish().await.map_err(|source| self.store_error(&object, source))?;
        Ok(sent)
    }

    /// Streams the data object of `digest` into the new file `dest`, checking its length and
    /// sha256 on the way (errors name `kind` `key`, the file `name`, the object and both
    /// digests); the file is fsynced. Returns the bytes received.
    pub(crate) async fn download(
        &self,
        (kind, key, name): (&'static str, &str, &str),
        digest: &FileDigest,
        dest: &Path,
        bar: &indicatif::ProgressBar,
    ) -> Result<u64, RemoteError> {
        let object = self.url.data_object(&digest.sha256);
        let shown = self.url.show(&object);
        let length = |actual: u64| RemoteError::Length {
            kind,
            key: key.to_owned(),
            file: name.to_owned(),
            object: shown.clone(),
            expected: digest.bytes,
            actual,
        };
        let result = match self.store.get(&object).await {
            Ok(result) => result,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(RemoteError::MissingData {
                    kind,
                    key: key.to_owned(),
                    file: name.to_owned(),
                    object: shown,
                });
            }
            Err(source) => return Err(self.store_error(&object, source)),
        };
        if result.meta.size != digest.bytes {
            return Err(length(result.meta.size));
        }
        let mut stream = result.into_stream();
        let mut out =
            BufWriter::with_capacity(1 << 20, File::create(dest).map_err(RemoteError::io(dest))?);
        let mut hasher = Sha256::new();
        let mut received = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|source| self.store_error(&object, source))?;
            received += chunk.len() as u64;
            if received > digest.bytes {
                return Err(length(received));
            }
            hasher.update(&chunk);
            out.write_all(&chunk).map_err(RemoteError::io(dest))?;
            bar.inc(chunk.len() as u64);
        }
        if received != digest.bytes {
            return Err(length(received));
        }
        let actual = hex::encode(hasher.finalize());
        if actual != digest.sha256 {
            return Err(RemoteError::Digest {
                kind,
                key: key.to_owned(),
                file: name.to_owned(),
                mismatch: Box::new(DigestMismatch {
                    object: shown,
                    expected: digest.sha256.clone(),
                    actual,
                }),
            });
        }
        let file = out
            .into_inner()
            .map_err(|e| RemoteError::Io { path: dest.to_owned(), source: e.into_error() })?;
        file.sync_all().map_err(RemoteError::io(dest))?;
        Ok(received)
    }

    /// Keys of every commit under the prefix, sorted (objects there that are not commit names
    /// are ignored).
    pub fn committed_keys(&self) -> Result<Vec<String>, RemoteError> {
        let dir = self.url.commits_dir();
        self.block_on(async {
            let mut keys = Vec::new();
            let mut listing = self.store.list(Some(&dir));
            while let Some(meta) = listing.next().await {
                let meta = meta.map_err(|source| self.store_error(&dir, source))?;
                keys.extend(self.url.commit_key(&meta.location));
            }
            keys.sort();
            Ok(keys)
        })
    }

    /// A byte progress bar for `what`, drawn on stderr only when it is a terminal and progress
    /// is on; hidden otherwise.
    pub(crate) fn bar(&self, total: u64, what: &str) -> indicatif::ProgressBar {
        use std::io::IsTerminal;
        if !self.transfer.progress || !std::io::stderr().is_terminal() {
            return indicatif::ProgressBar::hidden();
        }
        let bar = indicatif::ProgressBar::new(total);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .expect("a valid template")
            .progress_chars("=> "),
        );
        bar.set_message(what.to_owned());
        bar
    }
}
