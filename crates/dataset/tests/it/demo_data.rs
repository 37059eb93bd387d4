//! The committed demo dataset `data/fashion-mnist-small`: bytes match its SHA256SUMS (built
//! deterministically by `cargo xtask data`), the seed's split sizes, and no train/test leakage.

use std::path::{Path, PathBuf};

use dataset::check::{CheckOptions, check};
use dataset::{ClassMap, ClassMode, ScanOptions, file_digest, scan};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/fashion-mnist-small")
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
    assert_eq!(n, 4001, "4000 images and classes.json");
}

#[test]
fn split_sizes_mirror_the_seed() {
    let opts = ScanOptions { class_mode: ClassMode::Binary, ..Default::default() };
    for (split, per_class) in [("train", 1000), ("validation", 500), ("test", 500)] {
        let index = scan(&root(), split, &opts).unwrap();
        assert_eq!(index.classes, ["shirt", "t-shirt_top"]);
        assert_eq!(index.class_counts(), [per_class, per_class], "{split}");
        assert!(index.omitted.is_empty(), "{split}: {:?}", index.omitted);
        assert_eq!(index.class_map(), ClassMap::read(&root()).unwrap());
    }
}

#[test]
fn check_finds_no_leakage_and_no_bad_file() {
    let report = check(&root(), &CheckOptions::default(), &|_| {}).unwrap();
    assert!(report.is_ok(), "{}", report.render());
    assert!(report.duplicates.is_empty());
    for split in &report.splits {
        for class in &split.classes {
            assert_eq!(class.formats.keys().collect::<Vec<_>>(), ["png"]);
            assert_eq!(class.sizes.keys().collect::<Vec<_>>(), ["28x28"]);
        }
    }
}
