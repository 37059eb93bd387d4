//! The commit protocol against object_store's in-memory store (no server needed; `.ci/s3-test`
//! runs the same against a real S3 server on loopback): push then pull gives every file byte
//! for byte, racing pushers leave one commit per key, a tampered data object is refused naming
//! the entry and both digests with nothing landing, data without a commit does not exist for a
//! reader, and the conformance probe refuses a store that ignores create-once writes.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use feature_cache::{
    Cache, DatasetKey, FEATURES, FORMAT_VERSION, FeatureKey, FileKey, SplitPlan, write_index,
};
use feature_remote::{Kind, PushOutcome, Remote, RemoteError, RemoteUrl, Transfer};
use object_store::memory::InMemory;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

/// Parts of 1000 bytes, so every features file goes up as a multipart upload.
fn transfer() -> Transfer {
    Transfer { part_size: 1000, concurrency: 4, progress: false }
}

fn url() -> RemoteUrl {
    "s3://team-cache/features".parse().unwrap()
}

fn remote(store: &Arc<InMemory>) -> Remote {
    Remote::new(store.clone(), url(), "memory".into(), transfer()).unwrap()
}

/// The key of a split of `files` images of 2 classes (synthetic content digests).
fn split_key(files: usize, split: &str) -> FeatureKey {
    FeatureKey {
        format_version: FORMAT_VERSION,
        weights_sha256: "0".repeat(64),
        architecture: "synthetic".into(),
        layer: "none".into(),
        input_size: [2, 3],
        resize: "none".into(),
        preprocessing: "none".into(),
        pooling: "none".into(),
        precision: "f32".into(),
        augmentation: None,
        dataset: DatasetKey {
            split: split.into(),
            classes: vec!["a".into(), "b".into()],
            files: (0..files)
                .map(|i| FileKey {
                    path: format!("{split}/{i}.png"),
                    label: (i % 2) as u32,
                    sha256: format!("{:064x}", i),
                })
                .collect(),
        },
    }
}

/// A cache holding one chunked split (index + chunks) of 300 rows and one plain entry of 20;
/// returns the cache and the two keys.
fn sample_cache(root: &Path) -> (Cache, String, String) {
    let cache = Cache::open(root).unwrap();
    let plan = SplitPlan::new(&split_key(300, "train"));
    assert!(plan.chunks.len() >= 2, "the sample split has several chunks");
    let mut rows = Vec::new();
    for chunk in &plan.chunks {
        let n = chunk.range.len() as u64;
        let mut writer = cache.writer(chunk.key.clone(), "test", n, &[2, 3]).unwrap();
        for i in chunk.range.clone() {
            writer.append(&[i as f32 * 0.5; 6], &[(i % 2) as i32]).unwrap();
        }
        writer.finish().unwrap();
        rows.push(n);
    }
    write_index(root, &plan.index(&rows, "test")).unwrap();
    let key = split_key(20, "test");
    let mut writer = cache.writer(key.clone(), "test", 20, &[2, 3]).unwrap();
    for i in 0..20i32 {
        writer.append(&[i as f32; 6], &[i % 2]).unwrap();
    }
    writer.finish().unwrap();
    (cache, plan.index_key, key.digest())
}

/// Every file under `root`, relative, with its bytes (sorted).
fn tree(root: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push((
                    path.strip_prefix(root).unwrap().to_owned(),
                    std::fs::read(&path).unwrap(),
                ));
            }
        }
    }
    out.sort();
    out
}

fn objects(store: &InMemory, under: &str) -> Vec<String> {
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    rt.block_on(async {
        use futures::TryStreamExt;
        let prefix = ObjectPath::from(under);
        let mut names: Vec<String> = store
            .list(Some(&prefix))
            .map_ok(|m| m.location.to_string())
            .try_collect()
            .await
            .unwrap();
        names.sort();
        names
    })
}

#[test]
fn push_then_pull_gives_every_file_byte_for_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let (cache, index, entry) = sample_cache(&tmp.path().join("a"));
    let store = Arc::new(InMemory::new());
    let first = remote(&store).push(&cache, &[index.clone(), entry.clone()]).unwrap();
    assert!(first.iter().all(|p| p.outcome == PushOutcome::Committed));
    assert_eq!(first.last().unwrap().kind, Kind::Index, "the index is committed last");
    assert!(first.iter().filter(|p| p.kind == Kind::Entry).all(|p| p.sent > 0));
    // The probe left nothing behind; one commit per key.
    assert_eq!(objects(&store, "features/probe"), Vec::<String>::new());
    assert_eq!(objects(&store, "features/commits").len(), first.len());

    // A second push sends nothing and keeps every commit.
    let second = remote(&store).push(&cache, &[index.clone(), entry.clone()]).unwrap();
    for line in &second {
        assert!(
            matches!(&line.outcome, PushOutcome::KeptExisting { differs, .. } if differs.is_empty()),
            "{line:?}"
        );
        assert_eq!(line.sent, 0);
    }

    let other = Cache::open(tmp.path().join("b")).unwrap();
    let pulled = remote(&store).pull(&other, &[index.clone(), entry.clone()]).unwrap();
    assert!(pulled.iter().all(|p| p.downloaded));
    assert_eq!(tree(cache.root()), tree(other.root()));
    // Pulling again downloads nothing.
    let again = remote(&store).pull(&other, &[index, entry]).unwrap();
    assert!(again.iter().all(|p| !p.downloaded && p.received == 0));

    let listed = remote(&store).list(None).unwrap();
    assert_eq!(listed.len(), first.len());
    let verified = remote(&store).verify(&other, None).unwrap();
    assert!(verified.iter().all(|s| s.result.is_ok()), "{verified:?}");
    assert_eq!(tree(cache.root()), tree(other.root()), "verify leaves the cache as it was");
}

#[test]
fn racing_pushers_leave_one_commit_per_key() {
    let tmp = tempfile::tempdir().unwrap();
    let (cache, index, entry) = sample_cache(tmp.path());
    let store = Arc::new(InMemory::new());
    let keys = [index, entry];
    let reports: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> =
            (0..4).map(|_| s.spawn(|| remote(&store).push(&cache, &keys).unwrap())).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let commits = objects(&store, "features/commits");
    let lines = reports[0].len();
    assert_eq!(commits.len(), lines);
    for i in 0..lines {
        let committed = reports.iter().filter(|r| r[i].outcome == PushOutcome::Committed).count();
        assert_eq!(committed, 1, "exactly one writer commits {}", reports[0][i].key);
    }
    let other = Cache::open(tmp.path().join("pulled")).unwrap();
    remote(&store).pull(&other, &keys).unwrap();
    assert!(remote(&store).verify(&other, None).unwrap().iter().all(|s| s.result.is_ok()));
}

#[test]
fn a_tampered_data_object_is_refused_and_nothing_lands() {
    let tmp = tempfile::tempdir().unwrap();
    let (cache, index, _) = sample_cache(&tmp.path().join("a"));
    let store = Arc::new(InMemory::new());
    let r = remote(&store);
    r.push(&cache, std::slice::from_ref(&index)).unwrap();
    let listed = r.list(None).unwrap();
    let chunk = listed
        .iter()
        .filter_map(|s| s.result.as_ref().ok())
        .find(|c| c.kind == Kind::Entry)
        .unwrap()
        .clone();
    let good = &chunk.files[FEATURES].sha256;
    let object = ObjectPath::from(format!("features/data/{good}"));
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let mut bytes =
        rt.block_on(async { store.get(&object).await.unwrap().bytes().await.unwrap() }).to_vec();
    *bytes.last_mut().unwrap() ^= 1;
    let bad = run_folder::sha256_hex(&bytes);
    rt.block_on(store.put(&object, PutPayload::from(bytes))).unwrap();

    let other = Cache::open(tmp.path().join("b")).unwrap();
    let err = r.pull(&other, std::slice::from_ref(&index)).unwrap_err();
    assert!(matches!(err, RemoteError::Digest { .. }), "{err}");
    let message = err.to_string();
    for part in [chunk.key.as_str(), good, &bad, "entry"] {
        assert!(message.contains(part), "{message} names {part}");
    }
    // Nothing of it in the cache: no entry, no index, no staging folder.
    assert_eq!(tree(other.root()), Vec::new(), "{message}");
    assert!(std::fs::read_dir(other.root()).unwrap().next().is_none());

    let verified = r.verify(&other, None).unwrap();
    let mut failed: Vec<&str> =
        verified.iter().filter(|s| s.result.is_err()).map(|s| s.key.as_str()).collect();
    failed.sort();
    let mut expected = vec![chunk.key.as_str(), index.as_str()];
    expected.sort();
    assert_eq!(failed, expected, "verify --remote names the tampered chunk and its index");
}

#[test]
fn data_without_a_commit_is_not_there() {
    let tmp = tempfile::tempdir().unwrap();
    let (cache, _, entry) = sample_cache(&tmp.path().join("a"));
    let store = Arc::new(InMemory::new());
    let r = remote(&store);
    r.push(&cache, std::slice::from_ref(&entry)).unwrap();
    // What a push killed just before its commit leaves: the data objects alone.
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    rt.block_on(store.delete(&ObjectPath::from(format!("features/commits/{entry}.json")))).unwrap();
    assert_eq!(objects(&store, "features/data").len(), 4);
    let other = Cache::open(tmp.path().join("b")).unwrap();
    let err = r.pull(&other, std::slice::from_ref(&entry)).unwrap_err();
    assert!(matches!(err, RemoteError::NotCommitted { .. }), "{err}");
    assert!(r.list(None).unwrap().is_empty());
    assert!(r.verify(&other, None).unwrap().is_empty());
    // One of them is damaged behind the tool's back, keeping its size: the next push sends
    // every data object again (their names fix their content), so it commits the entry over
    // repaired data, and a pull verifies.
    let data = objects(&store, "features/data");
    let victim = ObjectPath::from(data[0].as_str());
    let size = rt.block_on(store.head(&victim)).unwrap().size;
    rt.block_on(store.put(&victim, PutPayload::from(vec![0xAB; size as usize]))).unwrap();
    let again = r.push(&cache, std::slice::from_ref(&entry)).unwrap();
    assert_eq!(again[0].outcome, PushOutcome::Committed);
    assert!(again[0].sent > 0, "the data objects are sent again");
    r.pull(&other, std::slice::from_ref(&entry)).unwrap();
    feature_cache::verify_entry(other.root(), &entry).unwrap();
}

#[test]
fn a_committed_key_whose_data_is_gone_is_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let (cache, _, entry) = sample_cache(&tmp.path().join("a"));
    let store = Arc::new(InMemory::new());
    let r = remote(&store);
    r.push(&cache, std::slice::from_ref(&entry)).unwrap();
    let commit = r.list(None).unwrap().remove(0).result.unwrap();
    let labels = &commit.files[feature_cache::LABELS].sha256;
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    rt.block_on(store.delete(&ObjectPath::from(format!("features/data/{labels}")))).unwrap();
    let other = Cache::open(tmp.path().join("b")).unwrap();
    let err = r.pull(&other, std::slice::from_ref(&entry)).unwrap_err();
    assert!(matches!(err, RemoteError::MissingData { .. }), "{err}");
    let message = err.to_string();
    assert!(message.contains(&entry) && message.contains(labels.as_str()), "{message}");
    assert_eq!(tree(other.root()), Vec::new());
    let verified = r.verify(&other, None).unwrap();
    assert!(matches!(verified[0].result, Err(RemoteError::MissingData { .. })));
}

#[test]
fn unknown_keys_are_refused_before_anything_is_sent() {
    let tmp = tempfile::tempdir().unwrap();
    let (cache, _, _) = sample_cache(tmp.path());
    let store = Arc::new(InMemory::new());
    for key in ["ab".repeat(32), "../x".to_owned()] {
        let err = remote(&store).push(&cache, std::slice::from_ref(&key)).unwrap_err();
        assert!(matches!(err, RemoteError::UnknownKey { .. }), "{err}");
    }
    assert!(objects(&store, "features").is_empty());
}

mod ignores_create {
    //! A store that treats every create-once PUT as a plain overwrite, as s3rver does.

    use object_store::{
        CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, PutMode,
        PutMultipartOptions, PutOptions, PutPayload, PutResult, Result, memory::InMemory,
        path::Path,
    };

    use super::*;

    #[derive(Debug, Default)]
    pub struct IgnoresCreate(pub InMemory);

    impl std::fmt::Display for IgnoresCreate {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "IgnoresCreate")
        }
    }

    #[async_trait::async_trait]
    impl ObjectStore for IgnoresCreate {
        async fn put_opts(&self, l: &Path, p: PutPayload, o: PutOptions) -> Result<PutResult> {
            self.0.put_opts(l, p, PutOptions { mode: PutMode::Overwrite, ..o }).await
        }
        async fn put_multipart_opts(
            &self,
            l: &Path,
            o: PutMultipartOptions,
        ) -> Result<Box<dyn MultipartUpload>> {
            self.0.put_multipart_opts(l, o).await
        }
        async fn get_opts(&self, l: &Path, o: GetOptions) -> Result<GetResult> {
            self.0.get_opts(l, o).await
        }
        fn delete_stream(
            &self,
            l: futures::stream::BoxStream<'static, Result<Path>>,
        ) -> futures::stream::BoxStream<'static, Result<Path>> {
            self.0.delete_stream(l)
        }
        fn list(
            &self,
            p: Option<&Path>,
        ) -> futures::stream::BoxStream<'static, Result<ObjectMeta>> {
            self.0.list(p)
        }
        async fn list_with_delimiter(&self, p: Option<&Path>) -> Result<ListResult> {
            self.0.list_with_delimiter(p).await
        }
        async fn copy_opts(&self, f: &Path, t: &Path, o: CopyOptions) -> Result<()> {
            self.0.copy_opts(f, t, o).await
        }
    }
}

#[test]
fn the_probe_refuses_a_store_that_ignores_create_once_writes() {
    let store = Arc::new(ignores_create::IgnoresCreate::default());
    let remote = Remote::new(store.clone(), url(), "http://127.0.0.1:4568".into(), transfer())
        .expect("connecting sends nothing");
    let err = remote.check_create_once().unwrap_err();
    assert!(matches!(err, RemoteError::CreateOnceIgnored { .. }), "{err}");
    let message = err.to_string();
    assert!(
        message.starts_with("http://127.0.0.1:4568 is refused: it ignores create-once writes"),
        "{message}"
    );
    assert!(message.contains("If-None-Match"), "{message}");
    // The probe object is deleted.
    assert!(objects(&store.0, "features").is_empty());
}
