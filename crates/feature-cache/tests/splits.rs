//! Chunked splits end to end: a synthetic split written chunk by chunk through the real API
//! (`SplitPlan`, `Cache::writer`, `write_index`), read back by `SplitReader` and
//! `ExtractionRecord`, damaged in every way a reader must notice (a missing chunk, a flipped
//! byte, a tampered index), garbage-collected, exported and imported, and seen through the
//! `feature-cache` tool.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use feature_cache::{
    Cache, CacheError, ChunkIndex, DatasetKey, EntryRef, ExtractionRecord, FEATURES,
    FORMAT_VERSION, FeatureKey, FileKey, SplitPlan, SplitReader, index_path, verify_split,
    write_index,
};

/// Values in one row: rows are `[2]`, kept small so the tests stay fast.
const ROW: usize = 2;

/// A split of `files` files; file `i` has label `i % 2` and a path that makes the chunks fall
/// where the content-defined boundaries put them.
fn key(split: &str, files: usize) -> FeatureKey {
    FeatureKey {
        format_version: FORMAT_VERSION,
        weights_sha256: "ab".repeat(32),
        architecture: "vgg16_conv_base".into(),
        layer: "block5_pool".into(),
        input_size: [32, 32],
        resize: "nearest".into(),
        preprocessing: "caffe".into(),
        pooling: "avg".into(),
        precision: "f32".into(),
        augmentation: None,
        dataset: DatasetKey {
            split: split.into(),
            classes: vec!["a".into(), "b".into()],
            files: (0..files)
                .map(|i| FileKey {
                    path: format!("{}/{i:05}.png", ["a", "b"][i % 2]),
                    label: (i % 2) as u32,
                    sha256: format!("{i:064x}"),
                })
                .collect(),
        },
    }
}

/// The row file `i` of the split gets: `[i, -i - 0.5]`, so every row read back says where it
/// came from.
fn row_of(file: usize) -> [f32; ROW] {
    [file as f32, -(file as f32) - 0.5]
}

/// What was written: the plan, the index, and per row (in split order) the file it came from.
struct Written {
    plan: SplitPlan,
    index: ChunkIndex,
    files_of_rows: Vec<usize>,
}

impl Written {
    fn rows(&self) -> u64 {
        self.files_of_rows.len() as u64
    }

    /// The features of `rows`, as written.
    fn expected(&self, rows: impl IntoIterator<Item = u64>) -> Vec<f32> {
        rows.into_iter().flat_map(|r| row_of(self.files_of_rows[r as usize])).collect()
    }

    fn chunk_keys(&self) -> Vec<String> {
        self.index.chunks.iter().map(|c| c.key.clone()).collect()
    }
}

/// Writes every chunk of the split `key` into `cache` (file `i`'s row is [`row_of`]`(i)`;
/// files for which `skip` holds are skipped as bad images), then its split index.
fn write_split(cache: &Cache, key: &FeatureKey, skip: impl Fn(usize) -> bool) -> Written {
    let plan = SplitPlan::new(key);
    let mut rows = Vec::new();
    let mut files_of_rows = Vec::new();
    for chunk in &plan.chunks {
        let mut w = cache
            .writer(chunk.key.clone(), "test", chunk.range.len() as u64, &[ROW as u64])
            .unwrap();
        let mut written = 0;
        for i in chunk.range.clone() {
            if skip(i) {
                w.skip(key.dataset.files[i].path.clone());
                continue;
            }
            w.append(&row_of(i), &[(i % 2) as i32]).unwrap();
            files_of_rows.push(i);
            written += 1;
        }
        assert_eq!(w.finish().unwrap(), cache.entry_dir(&chunk.key.digest()));
        rows.push(written);
    }
    let index = plan.index(&rows, "test");
    assert_eq!(
        write_index(cache.root(), &index).unwrap(),
        index_path(cache.root(), &plan.index_key)
    );
    Written { plan, index, files_of_rows }
}

/// A split of 1000 files: several chunks (content-defined boundaries every 128 files on average).
fn several_chunks(cache: &Cache, split: &str) -> Written {
    let w = write_split(cache, &key(split, 1000), |_| false);
    let files: Vec<u64> = w.index.chunks.iter().map(|c| c.files).collect();
    assert!(files.len() >= 3, "want several chunks, got {files:?}");
    w
}

/// Every file under `root`, relative path to bytes (temp leftovers included, so they show).
fn tree(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for e in fs::read_dir(dir).unwrap() {
            let path = e.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                out.insert(path.strip_prefix(root).unwrap().to_owned(), fs::read(&path).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// A deterministic shuffle with repeats: `n` row numbers below `rows`.
fn scrambled(rows: u64, n: usize) -> Vec<u64> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 33) % rows
        })
        .collect()
}

#[test]
fn split_reader_reads_rows_in_any_order_and_ranges_across_chunk_boundaries() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path()).unwrap();
    // Some files skipped as bad: rows and files differ, within chunks and across them.
    let k = key("train", 1000);
    let bad = |i: usize| i % 97 == 5;
    let w = write_split(&cache, &k, bad);
    assert!(w.index.chunks.len() >= 3);
    let reader = SplitReader::open(&[cache.root()], &w.plan.index_key).unwrap();
    assert_eq!(reader.key(), w.plan.index_key);
    assert_eq!(reader.index(), &w.index);
    assert_eq!(reader.rows(), w.rows());
    assert_eq!(reader.rows(), 1000 - (0..1000).filter(|&i| bad(i)).count() as u64);
    assert_eq!(reader.row_shape(), &[ROW as u64]);
    assert_eq!(reader.row_len(), ROW);
    let labels: Vec<i32> = w.files_of_rows.iter().map(|&i| (i % 2) as i32).collect();
    assert_eq!(reader.labels(), &labels[..]);
    let skipped: Vec<String> =
        (0..1000).filter(|&i| bad(i)).map(|i| k.dataset.files[i].path.clone()).collect();
    assert_eq!(reader.skipped(), &skipped[..]);
    assert_eq!(reader.files().unwrap(), k.dataset.files);
    assert_eq!(reader.settings(), &w.plan.settings);

    // Random order with repeats, and every row once backwards.
    let mut rows = scrambled(reader.rows(), 500);
    rows.extend([0, 0, reader.rows() - 1, 0]);
    let mut out = vec![0f32; rows.len() * ROW];
    reader.read_rows(&rows, &mut out).unwrap();
    assert_eq!(out, w.expected(rows.iter().copied()));
    let backwards: Vec<u64> = (0..reader.rows()).rev().collect();
    let mut out = vec![0f32; backwards.len() * ROW];
    reader.read_rows(&backwards, &mut out).unwrap();
    assert_eq!(out, w.expected(backwards.iter().copied()));

    // Ranges: within a chunk, across one boundary, across several, the whole split, empty.
    let mut boundaries = vec![0];
    for c in &w.index.chunks {
        boundaries.push(boundaries.last().unwrap() + c.rows);
    }
    let b1 = boundaries[1];
    let last = *boundaries.last().unwrap();
    for (start, len) in [
        (0, 1),
        (3, 10),
        (b1 - 1, 2),
        (b1 - 5, 10),
        (b1, 1),
        (1, last - 2),
        (0, last),
        (last - 1, 1),
        (b1, 0),
        (last, 0),
    ] {
        let mut out = vec![0f32; len as usize * ROW];
        reader.read_range(start, len, &mut out).unwrap();
        assert_eq!(out, w.expected(start..start + len), "rows {start}..{}", start + len);
    }
    let loaded = reader.load().unwrap();
    assert_eq!(loaded.shape(), &[reader.rows(), ROW as u64]);
    assert_eq!(loaded.features, w.expected(0..reader.rows()));
    assert_eq!(loaded.labels, labels);
    let (features, label_array) = loaded.into_arrays();
    assert_eq!(features.shape(), &[reader.rows() as usize, ROW]);
    assert_eq!(label_array.to_vec(), labels);

    // Out of range and a wrong buffer are refused, not read past.
    let err = reader.read_rows(&[reader.rows()], &mut [0.0; ROW]).unwrap_err().to_string();
    assert!(err.contains(&format!("row {}", reader.rows())), "{err}");
    let err = reader.read_range(last - 1, 2, &mut [0.0; 2 * ROW]).unwrap_err().to_string();
    assert!(err.contains(&format!("row {last}")), "{err}");
    let err = reader.read_rows(&[0, 1], &mut [0.0; ROW]).unwrap_err().to_string();
    assert!(err.contains("values asked for 2 rows"), "{err}");
}

#[test]
fn a_split_smaller_than_a_chunk_is_one_chunk_and_an_empty_split_none() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path()).unwrap();
    let w = write_split(&cache, &key("small", 5), |_| false);
    assert_eq!(w.index.chunks.len(), 1);
    assert_eq!(w.index.chunks[0].files, 5);
    let loaded = SplitReader::open(&[cache.root()], &w.plan.index_key).unwrap().load().unwrap();
    assert_eq!(loaded.features, w.expected(0..5));

    let empty = write_split(&cache, &key("empty", 0), |_| false);
    assert!(empty.index.chunks.is_empty());
    let reader = SplitReader::open(&[cache.root()], &empty.plan.index_key).unwrap();
    assert_eq!(reader.rows(), 0);
    assert!(reader.load().unwrap().features.is_empty());
}

fn record(cache_dir: &Path, entries: Vec<EntryRef>) -> ExtractionRecord {
    ExtractionRecord {
        cache_dir: cache_dir.to_owned(),
        classes: vec!["a".into(), "b".into()],
        feature_shape: vec![ROW as u64],
        layer: "block5_pool".into(),
        weights_sha256: "ab".repeat(32),
        entries,
    }
}

fn entry_ref(split: &str, w: &Written, cache_dir: Option<PathBuf>) -> EntryRef {
    EntryRef {
        split: split.into(),
        pass: None,
        key: w.plan.index_key.clone(),
        rows: w.rows(),
        cache_dir,
        origin: None,
    }
}

#[test]
fn extraction_records_open_and_load_splits_through_their_index() {
    let dir = tempfile::tempdir().unwrap();
    let shared = Cache::open(dir.path().join("shared")).unwrap();
    let w = several_chunks(&shared, "train");
    let record_path = dir.path().join("features.json");
    let e = entry_ref("train", &w, None);
    let reader = ExtractionRecord::open(&shared, &e, &record_path).unwrap();
    assert_eq!(reader.rows(), w.rows());
    let loaded = ExtractionRecord::load(&shared, &e, &record_path).unwrap();
    assert_eq!(loaded.key, w.plan.index_key);
    assert_eq!(loaded.features, w.expected(0..w.rows()));

    // A split of a private cache (the run folder's) whose index and some chunks are there and
    // the other chunks in the shared cache: found through both, the private one first.
    let private = Cache::open(dir.path().join("private")).unwrap();
    let v = several_chunks(&private, "validation");
    let moved = &v.index.chunks[1].key;
    let shared_copy = shared.entry_dir(moved);
    fs::rename(private.entry_dir(moved), &shared_copy).unwrap();
    let e = entry_ref("validation", &v, Some(private.root().to_owned()));
    let loaded = ExtractionRecord::load(&shared, &e, &record_path).unwrap();
    assert_eq!(loaded.features, v.expected(0..v.rows()));

    // Gone from both: the error names the split, the record, the index and the chunk.
    fs::remove_dir_all(&shared_copy).unwrap();
    let err = ExtractionRecord::open(&shared, &e, &record_path).unwrap_err().to_string();
    for part in ["validation", "features.json", &v.plan.index_key, moved, "extract-features"] {
        assert!(err.contains(part), "{part} not in: {err}");
    }
    // An index that is not there at all.
    let mut absent = entry_ref("test", &w, None);
    absent.key = "0".repeat(64);
    let err = ExtractionRecord::open(&shared, &absent, &record_path).unwrap_err().to_string();
    assert!(err.contains(&"0".repeat(64)) && err.contains("test"), "{err}");
}

#[test]
fn a_missing_chunk_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path()).unwrap();
    let w = several_chunks(&cache, "train");
    assert_eq!(verify_split(cache.root(), &w.plan.index_key).unwrap(), w.index);
    let gone = &w.index.chunks[2].key;
    fs::remove_dir_all(cache.entry_dir(gone)).unwrap();
    let err = verify_split(cache.root(), &w.plan.index_key).unwrap_err();
    match &err {
        CacheError::Missing { path } => assert_eq!(path, &cache.entry_dir(gone)),
        other => panic!("expected the chunk missing, got {other:?}"),
    }
    // The index itself missing is Missing too, naming the index file.
    fs::remove_file(index_path(cache.root(), &w.plan.index_key)).unwrap();
    match verify_split(cache.root(), &w.plan.index_key).unwrap_err() {
        CacheError::Missing { path } => {
            assert_eq!(path, index_path(cache.root(), &w.plan.index_key))
        }
        other => panic!("expected the index missing, got {other:?}"),
    }
    let err = verify_split(cache.root(), "../x").unwrap_err().to_string();
    assert!(err.contains("not a split index key"), "{err}");
}

#[test]
fn a_damaged_chunk_byte_is_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path()).unwrap();
    let w = several_chunks(&cache, "train");
    let chunk = &w.index.chunks[1].key;
    let features = cache.entry_dir(chunk).join(FEATURES);
    let mut bytes = fs::read(&features).unwrap();
    let at = bytes.len() - 3;
    bytes[at] ^= 0x10;
    fs::write(&features, &bytes).unwrap();
    let err = verify_split(cache.root(), &w.plan.index_key).unwrap_err();
    assert!(err.is_corruption(), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&features.display().to_string()) && msg.contains("recorded"), "{msg}");
    assert!(SplitReader::open(&[cache.root()], &w.plan.index_key).is_err());
    // Verification changes nothing: the damaged chunk is still there for the tool to report.
    assert!(features.exists());
}

/// Rewrites the index file of `w` with `edit` applied to its JSON, at `name` (a key).
fn tamper(
    cache: &Cache,
    w: &Written,
    name: &str,
    edit: impl FnOnce(&mut serde_json::Value),
) -> PathBuf {
    let original = index_path(cache.root(), &w.plan.index_key);
    let mut json: serde_json::Value =
        serde_json::from_slice(&fs::read(&original).unwrap()).unwrap();
    edit(&mut json);
    let path = index_path(cache.root(), name);
    fs::write(&path, serde_json::to_vec_pretty(&json).unwrap()).unwrap();
    path
}

#[test]
fn a_tampered_index_is_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path()).unwrap();
    let w = several_chunks(&cache, "train");
    let other = several_chunks(&cache, "test");
    let key = w.plan.index_key.clone();
    let path = index_path(cache.root(), &key);
    let good = fs::read(&path).unwrap();
    let check = |what: &str, file: &Path, key: &str, expect: &str| {
        let err = verify_split(cache.root(), key).unwrap_err();
        assert!(err.is_corruption(), "{what}: {err:?}");
        let msg = err.to_string();
        assert!(msg.contains(&file.display().to_string()), "{what}: the file not named: {msg}");
        assert!(msg.contains(expect), "{what}: {expect:?} not in: {msg}");
    };

    // A changed row count (not part of the key, so caught by comparing with the chunk).
    tamper(&cache, &w, &key, |j| {
        let rows = &mut j["chunks"][1]["rows"];
        *rows = (rows.as_u64().unwrap() + 1).into();
    });
    check("changed rows", &path, &key, "is not the one the index lists");
    // A changed file count likewise.
    tamper(&cache, &w, &key, |j| j["chunks"][0]["files"] = 1.into());
    check("changed files", &path, &key, "is not the one the index lists");
    // Reordered chunks: the content no longer hashes to the key.
    tamper(&cache, &w, &key, |j| j["chunks"].as_array_mut().unwrap().swap(0, 1));
    check("reordered chunks", &path, &key, "key mismatch");
    // A dropped chunk.
    tamper(&cache, &w, &key, |j| {
        j["chunks"].as_array_mut().unwrap().pop();
    });
    check("dropped chunk", &path, &key, "key mismatch");
    // Another split's chunk in its place.
    let foreign = other.index.chunks[0].key.clone();
    tamper(&cache, &w, &key, |j| j["chunks"][0]["key"] = foreign.into());
    check("another chunk key", &path, &key, "key mismatch");
    // Another index key in the file, or the file under another index's name.
    let other_key = other.plan.index_key.clone();
    tamper(&cache, &w, &key, |j| j["key"] = other_key.clone().into());
    check("another key inside", &path, &key, "key mismatch");
    fs::write(&path, &good).unwrap();
    let renamed = "e".repeat(64);
    let renamed_path = tamper(&cache, &w, &renamed, |_| {});
    check("file renamed", &renamed_path, &renamed, "key mismatch");
    fs::remove_file(&renamed_path).unwrap();
    // Other settings (another layer) than the chunks'.
    tamper(&cache, &w, &key, |j| j["settings"]["layer"] = "block4_pool".into());
    check("other settings", &path, &key, "key mismatch");
    // An old format version.
    tamper(&cache, &w, &key, |j| j["format_version"] = (FORMAT_VERSION - 1).into());
    check("old format", &path, &key, "format version");
    // Not JSON.
    fs::write(&path, b"{\"key\": ").unwrap();
    check("truncated", &path, &key, "unreadable split index");

    fs::write(&path, &good).unwrap();
    assert_eq!(verify_split(cache.root(), &key).unwrap(), w.index);
}

#[test]
fn gc_keeping_an_index_keeps_exactly_its_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path()).unwrap();
    let train = several_chunks(&cache, "train");
    let test = write_split(&cache, &key("test", 40), |_| false);
    // A lone entry no index lists (an old whole-split entry, or an unpublished chunk).
    let mut lone = key("lone", 3);
    lone.layer = "block4_pool".into();
    let lone_dir = write_split(&cache, &lone, |_| false);
    fs::remove_file(index_path(cache.root(), &lone_dir.plan.index_key)).unwrap();
    let lone_key = lone_dir.index.chunks[0].key.clone();

    // Without --keep nothing verified goes.
    assert!(cache.gc(None).unwrap().is_empty());
    let mut all = [train.chunk_keys(), test.chunk_keys(), vec![lone_key.clone()]].concat();
    all.sort();
    assert_eq!(cache.keys().unwrap(), all);

    // Keeping the train index and the lone entry by key.
    let removed = cache.gc(Some(&[train.plan.index_key.clone(), lone_key.clone()])).unwrap();
    let mut expected_removed: Vec<PathBuf> =
        test.chunk_keys().iter().map(|k| cache.entry_dir(k)).collect();
    expected_removed.push(index_path(cache.root(), &test.plan.index_key));
    expected_removed.sort();
    let mut removed = removed;
    removed.sort();
    assert_eq!(removed, expected_removed);
    let mut kept = [train.chunk_keys(), vec![lone_key]].concat();
    kept.sort();
    assert_eq!(cache.keys().unwrap(), kept);
    assert_eq!(cache.index_keys().unwrap(), vec![train.plan.index_key.clone()]);
    verify_split(cache.root(), &train.plan.index_key).unwrap();

    // Keeping only the index: exactly its chunks stay.
    cache.gc(Some(std::slice::from_ref(&train.plan.index_key))).unwrap();
    let mut chunks = train.chunk_keys();
    chunks.sort();
    assert_eq!(cache.keys().unwrap(), chunks);
    assert_eq!(
        SplitReader::open(&[cache.root()], &train.plan.index_key).unwrap().load().unwrap().features,
        train.expected(0..train.rows())
    );
}

#[test]
fn gc_removes_an_unreadable_index_and_a_corrupt_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path()).unwrap();
    let train = several_chunks(&cache, "train");
    let test = write_split(&cache, &key("test", 30), |_| false);
    fs::write(index_path(cache.root(), &test.plan.index_key), b"not json").unwrap();
    let damaged = &train.index.chunks[0].key;
    let labels = cache.entry_dir(damaged).join(feature_cache::LABELS);
    let mut bytes = fs::read(&labels).unwrap();
    *bytes.last_mut().unwrap() ^= 1;
    fs::write(&labels, bytes).unwrap();
    let removed = cache.gc(None).unwrap();
    assert!(removed.contains(&index_path(cache.root(), &test.plan.index_key)), "{removed:?}");
    assert!(removed.contains(&cache.entry_dir(damaged)), "{removed:?}");
    assert_eq!(removed.len(), 2, "{removed:?}");
}

/// A copy of the tar `bundle` without the members whose path starts with `prefix`.
fn without(bundle: &Path, prefix: &str, out: &Path) {
    let mut archive = tar::Archive::new(fs::File::open(bundle).unwrap());
    let mut builder = tar::Builder::new(fs::File::create(out).unwrap());
    let mut dropped = 0;
    for member in archive.entries().unwrap() {
        let mut member = member.unwrap();
        let path = member.path().unwrap().into_owned();
        if path.to_str().unwrap().starts_with(prefix) {
            dropped += 1;
            continue;
        }
        let mut header = member.header().clone();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut member, &mut data).unwrap();
        builder.append_data(&mut header, &path, &data[..]).unwrap();
    }
    builder.finish().unwrap();
    assert!(dropped > 0, "no member starts with {prefix}");
}

/// The members of a tar file, in order.
fn members(bundle: &Path) -> Vec<String> {
    let mut archive = tar::Archive::new(fs::File::open(bundle).unwrap());
    archive
        .entries()
        .unwrap()
        .map(|m| m.unwrap().path().unwrap().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn export_import_of_an_index_round_trips_byte_for_byte() {
    let a = tempfile::tempdir().unwrap();
    let source = Cache::open(a.path().join("c")).unwrap();
    let w = several_chunks(&source, "train");
    let other = write_split(&source, &key("test", 20), |_| false);
    let bundle = a.path().join("bundle.tar");
    feature_cache::export(&source, std::slice::from_ref(&w.plan.index_key), &bundle).unwrap();
    // Chunks first, each whole, the index last; nothing of the other split.
    let names = members(&bundle);
    assert_eq!(names.len(), 4 * w.index.chunks.len() + 1);
    assert_eq!(names.last().unwrap(), &format!("index/{}.json", w.plan.index_key));
    assert!(!names.iter().any(|n| n.contains(&other.plan.index_key)));

    let b = tempfile::tempdir().unwrap();
    let target = Cache::open(b.path().join("c")).unwrap();
    let imported = feature_cache::import(&target, &bundle).unwrap();
    assert_eq!(imported, [w.chunk_keys(), vec![w.plan.index_key.clone()]].concat());
    // Byte for byte: the index file and every chunk file, and nothing else.
    let source_tree: BTreeMap<PathBuf, Vec<u8>> = tree(source.root())
        .into_iter()
        .filter(|(p, _)| {
            !p.to_string_lossy().contains(&other.plan.index_key)
                && !other.chunk_keys().iter().any(|k| p.starts_with(k))
        })
        .collect();
    assert_eq!(tree(target.root()), source_tree);
    assert_eq!(
        ExtractionRecord::load(&target, &entry_ref("train", &w, None), Path::new("f.json"))
            .unwrap()
            .features,
        w.expected(0..w.rows())
    );
    // Again: harmless, the same bytes.
    feature_cache::import(&target, &bundle).unwrap();
    assert_eq!(tree(target.root()), source_tree);
}

#[test]
fn a_bundle_missing_a_chunk_imports_nothing() {
    let a = tempfile::tempdir().unwrap();
    let source = Cache::open(a.path().join("c")).unwrap();
    let w = several_chunks(&source, "train");
    let bundle = a.path().join("bundle.tar");
    feature_cache::export(&source, std::slice::from_ref(&w.plan.index_key), &bundle).unwrap();
    let missing = w.index.chunks[1].key.clone();
    let partial = a.path().join("partial.tar");
    without(&bundle, &format!("{missing}/"), &partial);

    let b = tempfile::tempdir().unwrap();
    let target = Cache::open(b.path().join("c")).unwrap();
    let err = feature_cache::import(&target, &partial).unwrap_err().to_string();
    assert!(err.contains(&missing) && err.contains(&w.plan.index_key), "{err}");
    assert!(err.contains("neither in the bundle nor in the cache"), "{err}");
    assert!(tree(target.root()).is_empty(), "a refused import left files behind");
    assert!(target.keys().unwrap().is_empty() && target.index_keys().unwrap().is_empty());

    // With that chunk already in the cache the same bundle is complete.
    let only_missing = a.path().join("one.tar");
    feature_cache::export(&source, std::slice::from_ref(&missing), &only_missing).unwrap();
    assert_eq!(feature_cache::import(&target, &only_missing).unwrap(), vec![missing.clone()]);
    let imported = feature_cache::import(&target, &partial).unwrap();
    assert!(!imported.contains(&missing));
    assert_eq!(imported.last(), Some(&w.plan.index_key));
    assert_eq!(verify_split(target.root(), &w.plan.index_key).unwrap(), w.index);

    // A bundle whose chunk is damaged imports nothing either, naming chunk and index.
    let c = tempfile::tempdir().unwrap();
    let fresh = Cache::open(c.path().join("c")).unwrap();
    let mut bytes = fs::read(&bundle).unwrap();
    // The first member is the first chunk's features.npy: its data follows a 512-byte tar
    // header and the 128-byte npy header.
    assert!(members(&bundle)[0].ends_with(FEATURES));
    bytes[512 + 128 + 1] ^= 0x40;
    let damaged = a.path().join("damaged.tar");
    fs::write(&damaged, &bytes).unwrap();
    let err = feature_cache::import(&fresh, &damaged).unwrap_err().to_string();
    assert!(err.contains(&w.index.chunks[0].key) && err.contains(&w.plan.index_key), "{err}");
    assert!(tree(fresh.root()).is_empty(), "a refused import left files behind");

    // A tampered index (rows changed) in the bundle: refused, nothing published, chunks
    // included.
    let tampered_dir = tempfile::tempdir().unwrap();
    let staging = Cache::open(tampered_dir.path().join("c")).unwrap();
    feature_cache::import(&staging, &bundle).unwrap();
    let path = index_path(staging.root(), &w.plan.index_key);
    let mut json: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    json["chunks"][0]["rows"] = 1.into();
    fs::write(&path, serde_json::to_vec_pretty(&json).unwrap()).unwrap();
    let tampered = a.path().join("tampered.tar");
    let mut builder = tar::Builder::new(fs::File::create(&tampered).unwrap());
    for c in w.chunk_keys() {
        for name in
            [FEATURES, feature_cache::LABELS, feature_cache::MANIFEST, feature_cache::CHECKSUMS]
        {
            builder
                .append_path_with_name(staging.entry_dir(&c).join(name), format!("{c}/{name}"))
                .unwrap();
        }
    }
    builder.append_path_with_name(&path, format!("index/{}.json", w.plan.index_key)).unwrap();
    builder.finish().unwrap();
    drop(builder);
    let fresh_dir = tempfile::tempdir().unwrap();
    let fresh = Cache::open(fresh_dir.path().join("c")).unwrap();
    let err = feature_cache::import(&fresh, &tampered).unwrap_err().to_string();
    assert!(
        err.contains(&w.plan.index_key) && err.contains("is not the one the index lists"),
        "{err}"
    );
    assert!(
        tree(fresh.root()).is_empty(),
        "a refused import left files behind: {:?}",
        tree(fresh.root()).keys()
    );
}

#[test]
fn odd_bundle_members_are_refused() {
    let a = tempfile::tempdir().unwrap();
    let cache = Cache::open(a.path().join("c")).unwrap();
    let key = "a".repeat(64);
    for name in [
        "index/../x.json".to_owned(),
        format!("index/{key}"),
        format!("index/{key}.json/extra"),
        "index/nothex.json".to_owned(),
        format!("index/sub/{key}.json"),
        format!("indexes/{key}.json"),
        format!("{key}/other.txt"),
        format!("/{key}/features.npy"),
    ] {
        let bundle = a.path().join("odd.tar");
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(2);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        // Written raw, as a hostile tool could: the tar crate refuses `..` in set_path.
        let raw = name.as_bytes();
        header.as_old_mut().name[..raw.len()].copy_from_slice(raw);
        header.set_cksum();
        builder.append(&header, &b"{}"[..]).unwrap();
        fs::write(&bundle, builder.into_inner().unwrap()).unwrap();
        let err = feature_cache::import(&cache, &bundle).unwrap_err().to_string();
        assert!(err.contains("unexpected member"), "{name}: {err}");
        assert!(tree(cache.root()).is_empty(), "{name}: left files behind");
    }
    // A link where an index should be.
    let bundle = a.path().join("link.tar");
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Symlink);
    header.set_size(0);
    builder.append_link(&mut header, format!("index/{key}.json"), "/etc/passwd").unwrap();
    fs::write(&bundle, builder.into_inner().unwrap()).unwrap();
    let err = feature_cache::import(&cache, &bundle).unwrap_err().to_string();
    assert!(err.contains("not a regular file"), "{err}");
}

#[test]
fn exporting_an_unknown_key_says_so() {
    let a = tempfile::tempdir().unwrap();
    let cache = Cache::open(a.path().join("c")).unwrap();
    several_chunks(&cache, "train");
    let bundle = a.path().join("b.tar");
    for key in ["0".repeat(64), "abc".into(), "../c".into()] {
        let err = feature_cache::export(&cache, std::slice::from_ref(&key), &bundle)
            .unwrap_err()
            .to_string();
        assert!(err.contains(&key) && err.contains("no such cache entry or split index"), "{err}");
        assert!(!bundle.exists());
    }
}

// The tool.

fn tool(cache: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_feature-cache"))
        .arg("--cache-dir")
        .arg(cache)
        .args(args)
        .output()
        .unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn the_tool_lists_and_verifies_indexes_with_their_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path()).unwrap();
    let w = several_chunks(&cache, "train");
    let mut lone = key("lone", 2);
    lone.pooling = "none".into();
    let lone = write_split(&cache, &lone, |_| false);
    fs::remove_file(index_path(cache.root(), &lone.plan.index_key)).unwrap();
    let lone_key = lone.index.chunks[0].key.clone();

    let out = tool(dir.path(), &["ls"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1 + w.index.chunks.len() + 1, "{text}");
    let index_line = lines[0];
    assert!(index_line.starts_with(&format!("index  {}  train ", w.plan.index_key)), "{text}");
    for part in [
        "block5_pool",
        "32x32",
        "pooling avg",
        "plain",
        &format!("{} chunks {} rows", w.index.chunks.len(), w.rows()),
    ] {
        assert!(index_line.contains(part), "{part} not in {index_line}");
    }
    for c in &w.index.chunks {
        let line = lines.iter().find(|l| l.contains(&c.key)).unwrap();
        assert!(line.starts_with(&format!("chunk  {}  train ", c.key)), "{line}");
        assert!(line.contains(&format!("[{}, {ROW}]", c.rows)), "{line}");
    }
    let lone_line = lines.iter().find(|l| l.contains(&lone_key)).unwrap();
    assert!(lone_line.starts_with(&format!("entry  {lone_key}  lone ")), "{lone_line}");

    let out = tool(dir.path(), &["verify"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains(&format!(
            "ok       index  {}  {} chunks {} rows",
            w.plan.index_key,
            w.index.chunks.len(),
            w.rows()
        )),
        "{text}"
    );
    assert_eq!(
        text.lines().filter(|l| l.starts_with("ok       entry  ")).count(),
        w.index.chunks.len() + 1
    );

    // A damaged chunk: the index and the chunk both named, exit status 1.
    let damaged = &w.index.chunks[0].key;
    let features = cache.entry_dir(damaged).join(FEATURES);
    let mut bytes = fs::read(&features).unwrap();
    *bytes.last_mut().unwrap() ^= 1;
    fs::write(&features, &bytes).unwrap();
    let out = tool(dir.path(), &["verify"]);
    assert!(!out.status.success());
    let text = stdout(&out);
    let line = text.lines().find(|l| l.contains(&format!("index  {}", w.plan.index_key))).unwrap();
    assert!(
        line.starts_with("CORRUPT  index") && line.contains(damaged) && line.contains(FEATURES),
        "{line}"
    );
    let line = text.lines().find(|l| l.contains(&format!("entry  {damaged}"))).unwrap();
    assert!(line.starts_with("CORRUPT  entry"), "{line}");
    assert!(stderr(&out).contains("2 do not verify"), "{}", stderr(&out));

    // A missing chunk: the index is reported missing it.
    *bytes.last_mut().unwrap() ^= 1;
    fs::write(&features, &bytes).unwrap();
    let gone = &w.index.chunks[1].key;
    fs::remove_dir_all(cache.entry_dir(gone)).unwrap();
    let out = tool(dir.path(), &["verify"]);
    assert!(!out.status.success());
    let text = stdout(&out);
    let line = text.lines().find(|l| l.contains(&format!("index  {}", w.plan.index_key))).unwrap();
    assert!(
        line.starts_with("MISSING  index")
            && line.contains("a chunk is gone")
            && line.contains(gone),
        "{line}"
    );
    assert!(!text.contains("CORRUPT"), "{text}");

    // An unreadable index.
    fs::write(index_path(cache.root(), &w.plan.index_key), b"[").unwrap();
    let text = stdout(&tool(dir.path(), &["ls"]));
    assert!(
        text.contains(&format!(
            "index  {}  (unreadable split index: run verify)",
            w.plan.index_key
        )),
        "{text}"
    );
    let out = tool(dir.path(), &["verify"]);
    assert!(!out.status.success());
    assert!(
        stdout(&out).contains(&format!("CORRUPT  index  {}", w.plan.index_key)),
        "{}",
        stdout(&out)
    );
}

#[test]
fn the_tool_keeps_exports_and_imports_what_a_run_uses() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("cache");
    let cache = Cache::open(&root).unwrap();
    let train = several_chunks(&cache, "train");
    let test = write_split(&cache, &key("test", 30), |_| false);
    let stray = write_split(&cache, &key("stray", 30), |_| false);
    let record_path = dir.path().join("features.json");
    let rec = record(&root, vec![entry_ref("train", &train, None), entry_ref("test", &test, None)]);
    fs::write(&record_path, serde_json::to_vec_pretty(&rec).unwrap()).unwrap();
    let record_arg = record_path.to_str().unwrap();

    // Export what the run uses, import it elsewhere through the tool.
    let bundle = dir.path().join("run.tar");
    let out = tool(&root, &["export", "--from", record_arg, "--out", bundle.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("exported 2 split indexes"), "{}", stderr(&out));
    let elsewhere = dir.path().join("elsewhere");
    let out = tool(&elsewhere, &["import", bundle.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains(&format!("index  {}", train.plan.index_key)), "{text}");
    assert!(text.contains(&format!("entry  {}", train.index.chunks[0].key)), "{text}");
    let n = train.index.chunks.len() + test.index.chunks.len();
    assert!(
        stderr(&out).contains(&format!("imported {n} entries and 2 split indexes")),
        "{}",
        stderr(&out)
    );
    let imported = Cache::open(&elsewhere).unwrap();
    for (split, w) in [("train", &train), ("test", &test)] {
        let loaded =
            ExtractionRecord::load(&imported, &entry_ref(split, w, None), &record_path).unwrap();
        assert_eq!(loaded.features, w.expected(0..w.rows()));
    }
    assert!(!imported.index_keys().unwrap().contains(&stray.plan.index_key));

    // Unknown keys: said so, nothing written or removed.
    let unknown = "0".repeat(64);
    let out =
        tool(&root, &["export", &unknown, "--out", dir.path().join("x.tar").to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no such cache entry or split index"), "{}", stderr(&out));
    let before = tree(&root);
    let out = tool(&root, &["gc", "--keep", &unknown]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no such cache entry or split index"), "{}", stderr(&out));
    assert_eq!(tree(&root), before, "a refused gc removed something");
    // A record of another cache: refused, naming the record's cache.
    let other_root = dir.path().join("other-cache");
    let out = tool(&other_root, &["gc", "--keep-from", record_arg]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains(&root.display().to_string()), "{}", stderr(&out));

    // gc --keep-from keeps exactly the run's indexes and their chunks; --keep adds an entry.
    let stray_chunk = stray.index.chunks[0].key.clone();
    let out = tool(&root, &["gc", "--keep-from", record_arg, "--keep", &stray_chunk]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut kept = [train.chunk_keys(), test.chunk_keys(), vec![stray_chunk]].concat();
    kept.sort();
    assert_eq!(cache.keys().unwrap(), kept);
    let mut indexes = vec![train.plan.index_key.clone(), test.plan.index_key.clone()];
    indexes.sort();
    assert_eq!(cache.index_keys().unwrap(), indexes);
    assert!(
        stdout(&out)
            .contains(&format!("removed {}", index_path(&root, &stray.plan.index_key).display()))
    );
    let out = tool(&root, &["gc", "--keep", &train.plan.index_key]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut kept = train.chunk_keys();
    kept.sort();
    assert_eq!(cache.keys().unwrap(), kept);
    assert_eq!(cache.index_keys().unwrap(), vec![train.plan.index_key.clone()]);
    assert!(tool(&root, &["verify"]).status.success());
}

#[test]
fn gc_keep_from_keeps_the_shared_chunks_of_a_private_split() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("cache");
    let shared = Cache::open(&root).unwrap();
    let private = Cache::open(dir.path().join("run/cache")).unwrap();
    // The run could not write the shared cache: its index and new chunks are private, one
    // chunk it found in the shared cache.
    let w = several_chunks(&private, "train");
    let found = w.index.chunks[0].key.clone();
    fs::rename(private.entry_dir(&found), shared.entry_dir(&found)).unwrap();
    let other = write_split(&shared, &key("test", 10), |_| false);
    let record_path = dir.path().join("features.json");
    let rec = record(&root, vec![entry_ref("train", &w, Some(private.root().to_owned()))]);
    fs::write(&record_path, serde_json::to_vec_pretty(&rec).unwrap()).unwrap();
    let out = tool(&root, &["gc", "--keep-from", record_path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(shared.keys().unwrap(), vec![found]);
    assert!(!shared.index_keys().unwrap().contains(&other.plan.index_key));
    ExtractionRecord::load(&shared, &rec.entries[0], &record_path).unwrap();
    // Export refuses it from the shared cache, naming the private one.
    let out = tool(
        &root,
        &[
            "export",
            "--from",
            record_path.to_str().unwrap(),
            "--out",
            dir.path().join("b.tar").to_str().unwrap(),
        ],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("private cache")
            && stderr(&out).contains(&private.root().display().to_string()),
        "{}",
        stderr(&out)
    );
}
