//! The committed demo datasets built by `cargo xtask data`: `data/cats-vs-dogs-small` (the
//! pipeline's default), `data/fashion-mnist-small` (the homework's target) and `data/mnist-small`
//! (its pretraining set). Each one's bytes match its SHA256SUMS, its splits have the documented
//! sizes, every image has the documented format and size, and no content is in two splits.

use std::path::{Path, PathBuf};

use dataset::check::{CheckOptions, check};
use dataset::{ClassMap, ClassMode, ScanOptions, file_digest, scan};

/// What a committed dataset must be.
struct Expect<'a> {
    dir: &'a str,
    classes: &'a [&'a str],
    /// Images per class in train, validation, test.
    per_class: [usize; 3],
    /// Stored `WIDTHxHEIGHT` of every image.
    size: &'a str,
}

fn root(dir: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data").join(dir)
}

fn check_dataset(expect: Expect) {
    let root = root(expect.dir);
    let sums = std::fs::read_to_string(root.join("SHA256SUMS")).unwrap();
    let mut listed = 0;
    for line in sums.lines() {
        let (digest, file) = line.split_once("  ").unwrap();
        assert_eq!(file_digest(&root.join(file)).unwrap(), digest, "{}: {file}", expect.dir);
        listed += 1;
    }
    let images: usize = expect.per_class.iter().sum::<usize>() * expect.classes.len();
    assert_eq!(listed, images + 2, "{}: every image, classes.json and README.md", expect.dir);

    // `cargo xtask data` records Keras' class mode: binary for two classes, else categorical.
    let class_mode =
        if expect.classes.len() == 2 { ClassMode::Binary } else { ClassMode::Categorical };
    let opts = ScanOptions { class_mode, ..Default::default() };
    for (split, n) in ["train", "validation", "test"].into_iter().zip(expect.per_class) {
        let index = scan(&root, split, &opts).unwrap();
        assert_eq!(index.classes, expect.classes, "{}/{split}", expect.dir);
        assert_eq!(index.class_counts(), vec![n; expect.classes.len()], "{}/{split}", expect.dir);
        assert!(index.omitted.is_empty(), "{}/{split}: {:?}", expect.dir, index.omitted);
        assert_eq!(index.class_map(), ClassMap::read(&root).unwrap());
    }

    let report = check(&root, &CheckOptions::default(), &|_| {}).unwrap();
    assert!(report.is_ok(), "{}", report.render());
    assert!(report.duplicates.is_empty(), "{}: {:?}", expect.dir, report.duplicates);
    for split in &report.splits {
        for class in &split.classes {
            assert_eq!(class.formats.keys().collect::<Vec<_>>(), ["png"]);
            assert_eq!(class.sizes.keys().collect::<Vec<_>>(), [expect.size], "{}", expect.dir);
        }
    }
}

#[test]
fn cats_vs_dogs_small_is_every_photo_of_the_package() {
    check_dataset(Expect {
        dir: "cats-vs-dogs-small",
        classes: &["cats", "dogs"],
        per_class: [500, 250, 250],
        size: "32x32",
    });
}

#[test]
fn fashion_mnist_small_mirrors_the_seed_split() {
    check_dataset(Expect {
        dir: "fashion-mnist-small",
        classes: &["shirt", "t-shirt_top"],
        per_class: [1000, 500, 500],
        size: "28x28",
    });
}

#[test]
fn mnist_small_has_ten_digits() {
    let digits: Vec<String> = (0..10).map(|d| d.to_string()).collect();
    let digits: Vec<&str> = digits.iter().map(String::as_str).collect();
    check_dataset(Expect {
        dir: "mnist-small",
        classes: &digits,
        per_class: [300, 100, 100],
        size: "28x28",
    });
}
