//! Cache entries end to end: round trip, exhaustive corruption (every truncation, every flipped
//! byte, a trailing byte in every file), concurrent writers, kill -9 during writes, read-only
//! roots, and export/import with a tampered bundle.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use feature_cache::{
    CHECKSUMS, Cache, DatasetKey, FEATURES, FORMAT_VERSION, FeatureKey, FileKey, LABELS, Lookup,
    MANIFEST,
};

fn key(split: &str, rows: u32) -> FeatureKey {
    FeatureKey {
        format_version: FORMAT_VERSION,
        weights_sha256: "ab".repeat(32),
        architecture: "vgg16_conv_base".into(),
        layer: "block5_pool".into(),
        input_size: [32, 32],
        resize: "nearest".into(),
        preprocessing: "caffe".into(),
        pooling: "none".into(),
        precision: "f32".into(),
        augmentation: None,
        dataset: DatasetKey {
            split: split.into(),
            classes: vec!["a".into(), "b".into()],
            files: (0..rows)
                .map(|i| FileKey {
                    path: format!("x/{i}.png"),
                    label: i % 2,
                    sha256: "cd".repeat(32),
                })
                .collect(),
        },
    }
}

/// Writes a `rows` x [1, 1, 3] entry with recognisable values; returns its folder.
fn write_entry(cache: &Cache, k: &FeatureKey) -> PathBuf {
    let rows = k.dataset.files.len() as u64;
    let mut w = cache.writer(k.clone(), "test", rows, &[1, 1, 3]).unwrap();
    for i in 0..rows {
        w.append(&[i as f32, -(i as f32), 0.5], &[(i % 2) as i32]).unwrap();
    }
    w.finish().unwrap()
}

fn hit(cache: &Cache, k: &FeatureKey) -> feature_cache::LoadedEntry {
    match cache.lookup(k).unwrap() {
        Lookup::Hit(e) => *e,
        other => panic!("expected a hit, got {other:?}"),
    }
}

#[test]
fn round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path()).unwrap();
    let k = key("train", 5);
    assert!(matches!(cache.lookup(&k).unwrap(), Lookup::Miss));
    let path = write_entry(&cache, &k);
    assert_eq!(path, cache.entry_dir(&k.digest()));
    let e = hit(&cache, &k);
    assert_eq!(e.shape(), &[5, 1, 1, 3]);
    assert_eq!(e.labels, vec![0, 1, 0, 1, 0]);
    assert_eq!(&e.features[3..6], &[1.0, -1.0, 0.5]);
    assert_eq!(e.manifest.components, k);
    assert_eq!(cache.keys().unwrap(), vec![k.digest()]);
}

#[test]
fn wrong_row_count_or_width_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path()).unwrap();
    let mut w = cache.writer(key("train", 2), "test", 2, &[3]).unwrap();
    assert!(w.append(&[1.0, 2.0], &[0]).unwrap_err().to_string().contains("rows have 3 values"));
    w.append(&[1.0, 2.0, 3.0], &[0]).unwrap();
    assert!(
        w.finish().unwrap_err().to_string().contains("1 rows written and 0 skipped, 2 announced")
    );
    assert!(cache.keys().unwrap().is_empty());
}

/// Applies `damage` to a copy of a good entry's file and checks the damage is detected, the
/// entry removed, and the lookup reported as corrupt.
fn check_detected(
    good: &Path,
    file: &str,
    damage: &dyn Fn(&mut Vec<u8>),
    k: &FeatureKey,
    what: &str,
) {
    let scratch = tempfile::tempdir().unwrap();
    let cache = Cache::open(scratch.path()).unwrap();
    let dir = cache.entry_dir(&k.digest());
    fs::create_dir(&dir).unwrap();
    for name in [FEATURES, LABELS, MANIFEST, CHECKSUMS] {
        fs::copy(good.join(name), dir.join(name)).unwrap();
    }
    let mut bytes = fs::read(dir.join(file)).unwrap();
    damage(&mut bytes);
    fs::write(dir.join(file), &bytes).unwrap();
    match cache.lookup(k).unwrap() {
        Lookup::Corrupt(err) => {
            let msg = err.to_string();
            assert!(msg.contains(&k.digest()), "{what}: error does not name the entry: {msg}");
        }
        other => panic!("{what} in {file} not detected: {other:?}"),
    }
    assert!(!dir.exists(), "{what} in {file}: corrupt entry left in place");
}

#[test]
fn every_truncation_flip_and_trailing_byte_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path()).unwrap();
    let k = key("train", 3);
    let good = write_entry(&cache, &k);
    for file in [FEATURES, LABELS, MANIFEST, CHECKSUMS] {
        let len = fs::read(good.join(file)).unwrap().len();
        for cut in 0..len {
            check_detected(&good, file, &|b| b.truncate(cut), &k, &format!("truncation at {cut}"));
        }
        for at in 0..len {
            check_detected(&good, file, &|b| b[at] ^= 0x01, &k, &format!("flip at {at}"));
        }
        check_detected(&good, file, &|b| b.push(b'\n'), &k, "trailing byte");
    }
    // The original is untouched by all that and still loads.
    assert_eq!(hit(&cache, &k).labels, vec![0, 1, 0]);
}

#[test]
fn a_missing_file_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path()).unwrap();
    let k = key("train", 2);
    let path = write_entry(&cache, &k);
    fs::remove_file(path.join(LABELS)).unwrap();
    assert!(matches!(cache.lookup(&k).unwrap(), Lookup::Corrupt(_)));
}

#[test]
fn two_writers_of_the_same_key_both_succeed() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path()).unwrap();
    let k = key("train", 200);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..4).map(|_| s.spawn(|| write_entry(&cache, &k))).collect();
        for h in handles {
            assert_eq!(h.join().unwrap(), cache.entry_dir(&k.digest()));
        }
    });
    assert_eq!(hit(&cache, &k).labels.len(), 200);
    let leftovers: Vec<_> =
        fs::read_dir(dir.path()).unwrap().filter_map(|e| e.ok()).map(|e| e.file_name()).collect();
    assert_eq!(leftovers.len(), 1, "temp folders left behind: {leftovers:?}");
}

#[test]
fn kill_during_writes_never_leaves_an_entry_that_verifies_wrongly() {
    let bin = env!("CARGO_BIN_EXE_feature-cache");
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path()).unwrap();
    let mut published = 0;
    for trial in 0..50u64 {
        let sub = dir.path().join(format!("t{trial}"));
        let mut child = Command::new(bin)
            .args([
                "--cache-dir",
                sub.to_str().unwrap(),
                "debug-write",
                "--rows",
                "400",
                "--sleep-us",
                "20",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Spread the kills over the whole write, including before start and after publish.
        std::thread::sleep(std::time::Duration::from_micros(trial * 1000));
        child.kill().unwrap();
        child.wait().unwrap();
        let Ok(c) = Cache::open(&sub) else { continue };
        for status in c.verify_all().unwrap() {
            let manifest = status.result.unwrap_or_else(|e| {
                panic!("trial {trial}: a published entry does not verify: {e}")
            });
            assert_eq!(manifest.feature_shape, vec![400, 2, 3]);
            published += 1;
        }
        let removed = c.clean_leftovers().unwrap();
        let rest: Vec<_> = fs::read_dir(&sub)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            rest.iter().all(|n| feature_cache::is_key(n)),
            "trial {trial}: leftovers after cleaning {rest:?} (removed {removed:?})"
        );
    }
    drop(cache);
    eprintln!("{published} of 50 killed writers had published before the kill");
}

#[test]
fn read_only_root_fails_to_write_with_the_path() {
    if nix_is_root() {
        eprintln!(
            "skipped: running as root, which ignores folder permissions; the error path is covered by a root that is a file"
        );
    } else {
        let dir = tempfile::tempdir().unwrap();
        let mut perms = fs::metadata(dir.path()).unwrap().permissions();
        perms.set_readonly(true);
        fs::set_permissions(dir.path(), perms).unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        assert!(cache.writer(key("train", 1), "t", 1, &[3]).is_err());
    }
    // A root that cannot be a folder at all.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-folder");
    fs::write(&file, b"x").unwrap();
    let err = Cache::open(&file).unwrap_err().to_string();
    assert!(err.contains("not-a-folder"), "{err}");
}

fn nix_is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

#[test]
fn export_then_import_elsewhere() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let (ca, cb) =
        (Cache::open(a.path().join("c")).unwrap(), Cache::open(b.path().join("c")).unwrap());
    let keys = [key("train", 3), key("test", 2)];
    for k in &keys {
        write_entry(&ca, k);
    }
    let names: Vec<String> = keys.iter().map(FeatureKey::digest).collect();
    let bundle = a.path().join("bundle.tar");
    feature_cache::export(&ca, &names, &bundle).unwrap();
    let mut imported = feature_cache::import(&cb, &bundle).unwrap();
    imported.sort();
    let mut expected = names.clone();
    expected.sort();
    assert_eq!(imported, expected);
    for k in &keys {
        assert_eq!(hit(&cb, k).features, hit(&ca, k).features);
    }
    // Importing again is harmless.
    feature_cache::import(&cb, &bundle).unwrap();
}

#[test]
fn tampered_bundle_is_refused_naming_entry_and_digests() {
    let a = tempfile::tempdir().unwrap();
    let ca = Cache::open(a.path().join("c")).unwrap();
    let k = key("train", 3);
    write_entry(&ca, &k);
    let bundle = a.path().join("bundle.tar");
    // A key that names no entry is said to be one, not a missing file inside it.
    let unknown = "0".repeat(64);
    let err = feature_cache::export(&ca, std::slice::from_ref(&unknown), &bundle)
        .unwrap_err()
        .to_string();
    assert!(err.contains(&unknown) && err.contains("no such cache entry"), "{err}");
    assert!(!bundle.exists());
    feature_cache::export(&ca, &[k.digest()], &bundle).unwrap();
    let mut bytes = fs::read(&bundle).unwrap();
    // Flip a byte of the feature data (the first member's data starts after a 512-byte header
    // and its own 128-byte npy header).
    bytes[512 + 128 + 1] ^= 0x40;
    fs::write(&bundle, &bytes).unwrap();
    let b = tempfile::tempdir().unwrap();
    let cb = Cache::open(b.path().join("c")).unwrap();
    let err = feature_cache::import(&cb, &bundle).unwrap_err().to_string();
    assert!(
        err.contains(&k.digest()) && err.contains("recorded") && err.contains("actual"),
        "{err}"
    );
    let rest: Vec<_> = fs::read_dir(cb.root()).unwrap().collect();
    assert!(rest.is_empty(), "a refused import left files behind");
}

#[test]
fn skipped_rows_shrink_the_entry() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path()).unwrap();
    let k = key("train", 4);
    let mut w = cache.writer(k.clone(), "test", 4, &[2]).unwrap();
    w.append(&[1.0, 2.0], &[0]).unwrap();
    w.skip("x/1.png".into());
    w.append(&[3.0, 4.0, 5.0, 6.0], &[0, 1]).unwrap();
    w.finish().unwrap();
    let e = hit(&cache, &k);
    assert_eq!(e.shape(), &[3, 2]);
    assert_eq!(e.features, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    assert_eq!(e.manifest.skipped, vec!["x/1.png".to_owned()]);
}

#[test]
fn loaded_entries_hand_out_ndarray_arrays_in_the_stored_layout() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path()).unwrap();
    let k = key("train", 4);
    write_entry(&cache, &k);
    let e = hit(&cache, &k);
    let view = e.features_view();
    assert_eq!(view.shape(), &[4, 1, 1, 3]);
    assert_eq!(view[[2, 0, 0, 1]], -2.0);
    assert_eq!(e.labels_view().to_vec(), vec![0, 1, 0, 1]);
    let flat = e.features.clone();
    let (features, labels) = e.into_arrays();
    assert_eq!(features.shape(), &[4, 1, 1, 3]);
    assert_eq!(features.as_slice().unwrap(), &flat[..]);
    assert_eq!(labels.to_vec(), vec![0, 1, 0, 1]);
}

#[test]
fn rows_appended_as_arrays_are_written_in_c_order() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path()).unwrap();
    let k = key("train", 3);
    let mut w = cache.writer(k.clone(), "test", 3, &[2, 3]).unwrap();
    let rows =
        ndarray::Array::from_shape_vec((2, 2, 3), (0..12).map(|v| v as f32).collect()).unwrap();
    w.append_array(rows.view(), ndarray::aview1(&[0, 1])).unwrap();
    // A non-contiguous view (the transpose of a [3, 2] block) is written in logical order.
    let block =
        ndarray::Array::from_shape_vec((3, 2), (20..26).map(|v| v as f32).collect()).unwrap();
    let last = block.t().insert_axis(ndarray::Axis(0));
    assert!(last.as_slice().is_none());
    let err = w.append_array(last.view(), ndarray::aview1(&[0, 1])).unwrap_err().to_string();
    assert!(err.contains("with 2 labels, rows have shape [2, 3]"), "{err}");
    let wrong_row = ndarray::Array::<f32, _>::zeros((1, 3, 2));
    let err = w.append_array(wrong_row.view(), ndarray::aview1(&[0])).unwrap_err().to_string();
    assert!(err.contains("features of shape [1, 3, 2]"), "{err}");
    w.append_array(last.view(), ndarray::aview1(&[1])).unwrap();
    w.finish().unwrap();
    let e = hit(&cache, &k);
    assert_eq!(e.shape(), &[3, 2, 3]);
    assert_eq!(&e.features[..12], &(0..12).map(|v| v as f32).collect::<Vec<_>>()[..]);
    assert_eq!(&e.features[12..], &[20.0, 22.0, 24.0, 21.0, 23.0, 25.0]);
    assert_eq!(e.labels, vec![0, 1, 1]);
}

#[test]
fn rows_too_large_to_address_are_refused_when_the_writer_starts() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path()).unwrap();
    let err = cache.writer(key("train", 0), "t", 0, &[1 << 40, 1 << 40]).unwrap_err().to_string();
    assert!(err.contains("too large to address"), "{err}");
    assert!(fs::read_dir(dir.path()).unwrap().next().is_none(), "a refused writer left a folder");
}

#[test]
fn verify_entry_checks_one_entry_by_root_and_key_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path()).unwrap();
    let k = key("train", 3);
    let path = write_entry(&cache, &k);
    let manifest = feature_cache::verify_entry(dir.path(), &k.digest()).unwrap();
    assert_eq!(manifest.components, k);

    let absent = key("test", 3).digest();
    let err = feature_cache::verify_entry(dir.path(), &absent).unwrap_err();
    assert!(matches!(err, feature_cache::CacheError::Missing { .. }), "{err:?}");
    assert!(err.to_string().contains(&absent), "{err}");
    let err = feature_cache::verify_entry(dir.path(), "../elsewhere").unwrap_err().to_string();
    assert!(err.contains("not a cache key"), "{err}");

    let mut bytes = fs::read(path.join(LABELS)).unwrap();
    *bytes.last_mut().unwrap() ^= 0x01;
    fs::write(path.join(LABELS), &bytes).unwrap();
    let err = feature_cache::verify_entry(dir.path(), &k.digest()).unwrap_err();
    assert!(err.is_corruption(), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(LABELS) && msg.contains("recorded") && msg.contains(&k.digest()), "{msg}");
    assert!(path.exists(), "verify_entry must not remove what it checks");
}

/// A failure's reason appears once on stderr (the chain printer skips a cause its parent's
/// message already ends with; `cli_support`'s own tests cover `{path}: {source}` errors).
#[test]
fn error_reasons_are_printed_once() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_feature-cache"))
        .args(["--cache-dir", dir.path().to_str().unwrap(), "export", "abc", "--out"])
        .arg(dir.path().join("bundle.tar"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    // The entry named, and why, once.
    assert!(lines[0].contains("abc"), "{stderr}");
    assert_eq!(
        lines[0].matches("no such cache entry").count(),
        1,
        "the reason twice: {}",
        lines[0]
    );
}
