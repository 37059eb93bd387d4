//! The committed pretraining set `data/mnist-small` (the seed's homework: pretrain on digits):
//! bytes match its SHA256SUMS (built deterministically by `cargo xtask data`), ten classes of
//! 300 / 100 / 100 images, and no image in two splits.

use std::path::{Path, PathBuf};

use dataset::check::{CheckOptions, check};
use dataset::{ClassMap, ClassMode, ScanOptions, file_digest, scan};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/mnist-small")
}

#[test]
fn files_match_their_digest_list() {
    let root = root();
    let sums = std::fs::read_to_string(root.join("SHA256SUMS")).unwrap();
    let mut n = 0;
    for line in sums.lines() {
        let (digest, file) = line.split_once("  ").unwrap();
        assert_eq!(file_digest(&root.join(file)).unwrap(), digest, "{file}");
        n += 1;
    }
    assert_eq!(n, 5001, "5000 images and classes.json");
}

#[test]
fn ten_digits_in_each_split() {
    // `cargo xtask data` records ten classes as categorical (Keras' default for more than two).
    let opts = ScanOptions { class_mode: ClassMode::Categorical, ..Default::default() };
    let digits: Vec<String> = (0..10).map(|d| d.to_string()).collect();
    for (split, per_class) in [("train", 300), ("validation", 100), ("test", 100)] {
        let index = scan(&root(), split, &opts).unwrap();
        assert_eq!(index.classes, digits);
        assert_eq!(index.class_counts(), [per_class; 10], "{split}");
        assert!(index.omitted.is_empty(), "{split}: {:?}", index.omitted);
        assert_eq!(index.class_map(), ClassMap::read(&root()).unwrap());
    }
}

#[test]
fn check_finds_no_leakage() {
    let report = check(&root(), &CheckOptions::default(), &|_| {}).unwrap();
    assert!(report.is_ok(), "{}", report.render());
    assert!(report.duplicates.is_empty());
}
