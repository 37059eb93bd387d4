//! Batching: each image exactly once per epoch, seeded shuffles independent of the thread
//! count, fail-fast and skip-bad-images policies.

use std::sync::Arc;

use dataset::{
    BadImagePolicy, Batch, BatchOptions, ClassMode, DecodeOptions, Error, ScanOptions, ShuffleSeed,
    Size, SplitIndex, Targets, batches, epoch_order, scan_dir,
};
use expect_test::expect;

use crate::fixtures::*;

/// A split with `n` distinct PNGs over two classes, plus `bad` (name, bytes) files in class `b`.
fn split(n: usize, bad: &[(&str, Vec<u8>)]) -> (tempfile::TempDir, SplitIndex) {
    let mut entries: Vec<(String, Option<Vec<u8>>)> = (0..n)
        .map(|i| {
            (
                format!("{}/{i:03}.png", if i % 2 == 0 { "a" } else { "b" }),
                Some(png_rgb(6, 4, i as u8)),
            )
        })
        .collect();
    entries.extend(bad.iter().map(|(name, bytes)| (format!("b/{name}"), Some(bytes.clone()))));
    let refs: Vec<(&str, Option<Vec<u8>>)> =
        entries.iter().map(|(p, b)| (p.as_str(), b.clone())).collect();
    let dir = tree(&refs);
    let opts = ScanOptions { class_mode: ClassMode::Binary, ..Default::default() };
    let index = scan_dir(dir.path(), &opts).unwrap();
    (dir, index)
}

fn decode_opts() -> DecodeOptions {
    DecodeOptions { target_size: Some(Size::new(3, 5)), ..Default::default() }
}

fn collect(index: &SplitIndex, opts: &BatchOptions, epoch: u64) -> Vec<Batch> {
    batches(index, &decode_opts(), opts, epoch).unwrap().map(|b| b.unwrap()).collect()
}

/// Runs one epoch and checks batch sizes and the visiting order (as file indices).
fn check(n: usize, opts: BatchOptions, sizes: &[usize], order: Option<&[usize]>) {
    let (_dir, index) = split(n, &[]);
    let got = collect(&index, &opts, 0);
    assert_eq!(got.iter().map(Batch::len).collect::<Vec<_>>(), sizes);
    let visited: Vec<usize> = got.iter().flat_map(|b| b.indices.clone()).collect();
    if let Some(order) = order {
        assert_eq!(visited, order);
    }
    for b in &got {
        assert_eq!(b.images.len(), b.len() * 3 * 5 * 3);
        assert_eq!(b.shape(), [b.len(), 3, 5, 3]);
        for (k, &i) in b.indices.iter().enumerate() {
            assert_eq!(b.classes[k], index.files[i].class);
            assert_eq!(b.paths[k], index.files[i].path);
        }
    }
}

#[test]
fn every_image_once_in_path_order_last_batch_short() {
    let order: Vec<usize> = (0..10).collect();
    check(10, BatchOptions { batch_size: 4, ..Default::default() }, &[4, 4, 2], Some(&order));
}

#[test]
fn drop_last_drops_the_short_batch() {
    check(10, BatchOptions { batch_size: 4, drop_last: true, ..Default::default() }, &[4, 4], None);
}

#[test]
fn inline_decoding_gives_the_same_batches() {
    let order: Vec<usize> = (0..7).collect();
    check(
        7,
        BatchOptions { batch_size: 3, prefetch: 0, ..Default::default() },
        &[3, 3, 1],
        Some(&order),
    );
}

#[test]
fn shuffled_epoch_is_a_permutation_and_changes_with_the_epoch() {
    let (_dir, index) = split(20, &[]);
    let opts = BatchOptions { batch_size: 6, shuffle: Some(ShuffleSeed(7)), ..Default::default() };
    let order = |epoch| -> Vec<usize> {
        collect(&index, &opts, epoch).iter().flat_map(|b| b.indices.clone()).collect()
    };
    let (e0, e1) = (order(0), order(1));
    let mut sorted = e0.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..20).collect::<Vec<_>>());
    assert_ne!(e0, e1);
    assert_eq!(e0, order(0));
    assert_eq!(e0, epoch_order(20, Some(ShuffleSeed(7)), 0));
}

#[test]
fn shuffle_algorithm_is_pinned() {
    expect!["[9, 7, 2, 5, 0, 1, 4, 3, 8, 6]"]
        .assert_eq(&format!("{:?}", epoch_order(10, Some(ShuffleSeed(42)), 0)));
    expect!["[0, 1, 2, 3]"].assert_eq(&format!("{:?}", epoch_order(4, None, 3)));
}

#[test]
fn shuffled_batches_identical_with_one_and_two_threads() {
    let (_dir, index) = split(40, &[]);
    let run = |threads: usize, prefetch: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        let opts = BatchOptions {
            batch_size: 7,
            shuffle: Some(ShuffleSeed(123)),
            prefetch,
            pool: Some(Arc::new(pool)),
            ..Default::default()
        };
        collect(&index, &opts, 2)
            .into_iter()
            .map(|b| (b.indices, b.images, b.targets))
            .collect::<Vec<_>>()
    };
    let one = run(1, 0);
    assert_eq!(one, run(2, 0));
    assert_eq!(one, run(2, 3));
    assert_eq!(one.len(), 6);
}

#[test]
fn batch_targets_follow_the_class_mode() {
    let (_dir, index) = split(4, &[]);
    let got = collect(&index, &BatchOptions { batch_size: 4, ..Default::default() }, 0);
    assert_eq!(got[0].targets, Targets::Binary(vec![0.0, 0.0, 1.0, 1.0]));
}

#[test]
fn bad_image_fails_fast_naming_the_file() {
    let (dir, index) = split(6, &[("broken.png", b"not a png".to_vec())]);
    let opts = BatchOptions { batch_size: 2, ..Default::default() };
    let results: Vec<_> = batches(&index, &decode_opts(), &opts, 0).unwrap().collect();
    let err = results.last().unwrap().as_ref().unwrap_err();
    let msg = err.to_string().replace(&*dir.path().to_string_lossy(), "<tmp>");
    expect!["<tmp>/b/broken.png: not an image (content matches no known image format)"]
        .assert_eq(&msg);
    assert!(results[..results.len() - 1].iter().all(Result::is_ok));
}

#[test]
fn skip_bad_images_reports_each_and_keeps_going() {
    let bad = [("empty.png", Vec::new()), ("text.jpg", b"hello".to_vec())];
    let (dir, index) = split(10, &bad);
    let opts = BatchOptions {
        batch_size: 4,
        on_bad_image: BadImagePolicy::Skip { max_fraction: 0.25 },
        ..Default::default()
    };
    let mut it = batches(&index, &decode_opts(), &opts, 0).unwrap();
    let good: usize = it.by_ref().map(|b| b.unwrap().len()).sum();
    assert_eq!((good, it.total()), (10, 12));
    let skipped: Vec<String> = it
        .skipped()
        .iter()
        .map(|s| format!("{}: {}", rel(dir.path(), &s.path), s.reason))
        .collect();
    expect![[r#"
        [
            "b/empty.png: empty file (0 bytes)",
            "b/text.jpg: not an image (content matches no known image format)",
        ]
    "#]]
    .assert_debug_eq(&skipped);
}

#[test]
fn skip_bad_images_fails_above_the_fraction() {
    let bad = [("e1.png", Vec::new()), ("e2.png", Vec::new()), ("e3.png", Vec::new())];
    let (_dir, index) = split(7, &bad);
    let opts = BatchOptions {
        batch_size: 4,
        on_bad_image: BadImagePolicy::Skip { max_fraction: 0.2 },
        ..Default::default()
    };
    let results: Vec<_> = batches(&index, &decode_opts(), &opts, 0).unwrap().collect();
    match results.last().unwrap() {
        Err(Error::TooManySkipped { skipped, total, .. }) => {
            assert_eq!((*skipped, *total), (3, 10))
        }
        other => panic!("expected too many skipped, got {other:?}"),
    }
}

#[test]
fn batching_needs_a_target_size() {
    let (_dir, index) = split(2, &[]);
    let err = batches(&index, &DecodeOptions::default(), &BatchOptions::default(), 0).unwrap_err();
    assert!(
        err.to_string().ends_with("invalid batch options: a target size is needed to batch images"),
        "{err}"
    );
}
