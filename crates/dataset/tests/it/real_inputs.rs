//! Kinds of input from real users' reports (issue 19), each built as a small synthetic tree in a
//! temp folder: a single class, class folders whose names are not UTF-8, symlinked image files
//! and split folders, folders named like images, re-saved copies and copies under two classes,
//! and the file order inside a class folder with subfolders (Keras' `_iter_valid_files`).

#![cfg(unix)]

use std::ffi::OsStr;
use std::fs;
use std::io::Cursor;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::symlink;
use std::path::Path;

use dataset::check::{CheckOptions, Sameness, check as run_check};
use dataset::{Error, Omission, ScanOptions, scan, scan_training_splits};
use image::ImageEncoder;
use image::codecs::png::{CompressionType, FilterType, PngEncoder};

use crate::fixtures::*;

const SPLITS: [&str; 3] = ["train", "validation", "test"];

fn checked(root: &Path, follow_links: bool) -> dataset::check::CheckReport {
    let opts = CheckOptions { follow_links, ..Default::default() };
    run_check(root, &opts, &|_| {}).unwrap()
}

#[test]
fn one_class_is_not_a_training_set() {
    let mut entries = Vec::new();
    for (split, n) in [("train", 4), ("validation", 2), ("test", 2)] {
        for i in 0..n {
            entries.push((format!("{split}/banana/{i}.png"), Some(png_rgb(3, 3, i as u8))));
        }
    }
    let entries: Vec<_> = entries.iter().map(|(p, b)| (p.as_str(), b.clone())).collect();
    let dir = tree(&entries);
    let root = dir.path();
    let expected =
        format!("training needs at least 2 classes, found 1 ({})", root.join("train").display());

    let report = checked(root, false);
    assert!(report.errors.contains(&expected), "{}", report.render());
    let err = scan_training_splits(root, &SPLITS, &ScanOptions::default()).unwrap_err();
    assert_eq!(err.to_string(), expected);

    // However the class set came about: an explicit list, images lost to the skip policy
    // (counts after skipping), two classes under one name.
    fs::create_dir_all(root.join("train/cherry")).unwrap();
    fs::write(root.join("train/cherry/0.png"), png_rgb(3, 3, 9)).unwrap();
    let listed = ScanOptions { classes: Some(vec!["banana".into()]), ..Default::default() };
    assert!(matches!(
        scan_training_splits(root, &["train"], &listed),
        Err(Error::TooFewClasses { found: 1, .. })
    ));
    let names = ["banana".to_owned(), "cherry".to_owned()];
    let origin = root.join("train");
    assert!(dataset::require_training_classes(&origin, &names, &[4, 1]).is_ok());
    let err = dataset::require_training_classes(&origin, &names, &[4, 0]).unwrap_err();
    assert_eq!(err.to_string(), expected);
    let twice = ["banana".to_owned(), "banana".to_owned()];
    assert!(matches!(
        dataset::require_training_classes(&origin, &twice, &[1, 1]),
        Err(Error::DuplicateClass { .. })
    ));
    // The other splits must have the training split's classes.
    let err = scan_training_splits(root, &SPLITS, &ScanOptions::default()).unwrap_err();
    assert!(matches!(err, Error::ClassMismatch { .. }), "{err}");
}

#[test]
fn non_utf8_names_are_refused_never_merged() {
    let dir = tree(&[("train/ok/a.png", Some(png_rgb(2, 2, 0)))]);
    let train = dir.path().join("train");
    for (name, seed) in [(&b"\xb9\xb7"[..], 1), (&b"\xc4\xf1"[..], 2)] {
        let class = train.join(OsStr::from_bytes(name));
        fs::create_dir(&class).unwrap();
        fs::write(class.join("x.png"), png_rgb(2, 2, seed)).unwrap();
    }
    let err = scan(dir.path(), "train", &ScanOptions::default()).unwrap_err();
    let Error::NotUtf8 { path, name } = &err else { panic!("{err}") };
    assert_eq!(path, &train.join(OsStr::from_bytes(b"\xb9\xb7")));
    assert_eq!(name, "\\xb9\\xb7");
    assert!(err.to_string().contains("\\xb9\\xb7 is not valid UTF-8"), "{err}");

    // A file name inside a class folder is a recorded path component too.
    let dir = tree(&[("train/a/a.png", Some(png_rgb(2, 2, 0))), ("train/b/b.png", None)]);
    let bad = dir.path().join("train/b").join(OsStr::from_bytes(b"\xc4\xf1.png"));
    fs::write(&bad, png_rgb(2, 2, 3)).unwrap();
    assert!(matches!(
        scan(dir.path(), "train", &ScanOptions::default()),
        Err(Error::NotUtf8 { path, .. }) if path == bad
    ));
    let report = checked(dir.path(), false);
    assert!(!report.is_ok() && report.errors[0].contains("\\xc4\\xf1.png"), "{:?}", report.errors);
}

#[test]
fn symlinked_files_are_images_of_the_folder_the_link_sits_in() {
    let dir = tree(&[
        ("train/cat/c0.png", Some(png_rgb(2, 2, 0))),
        ("train/cat/c1.png", Some(png_rgb(2, 2, 1))),
        ("train/dog/", None),
    ]);
    let train = dir.path().join("train");
    // A class folder holding only links is not empty.
    symlink("../cat/c0.png", train.join("dog/from_cat.png")).unwrap();
    symlink("../cat/gone.png", train.join("dog/dangling.png")).unwrap();
    let index = scan(dir.path(), "train", &ScanOptions::default()).unwrap();
    let files: Vec<_> =
        index.files.iter().map(|f| (rel(&train, &f.path), f.class, f.bytes)).collect();
    let c0_len = fs::metadata(train.join("cat/c0.png")).unwrap().len();
    assert_eq!(files[2], ("dog/from_cat.png".to_owned(), 1, c0_len));
    assert_eq!(files.len(), 3);
    // The cache identity is the content the link leads to.
    let digests = dataset::digests(&index).unwrap();
    assert_eq!(digests[2], digests[0]);
    // A link that cannot be read is reported by name.
    assert_eq!(index.omitted.len(), 1);
    assert_eq!(index.omitted[0].path, train.join("dog/dangling.png"));
    assert_eq!(index.omitted[0].why, Omission::DanglingSymlink);
    // Following links (folders), a dangling one is reported the same way, not a failure.
    let follow = ScanOptions { follow_links: true, ..Default::default() };
    let followed = scan(dir.path(), "train", &follow).unwrap();
    assert_eq!(followed.files, index.files);
    assert_eq!(followed.omitted, index.omitted);
    let report = checked(dir.path(), false);
    assert!(report.render().contains("dog/dangling.png: symlink whose target cannot be read"));
}

#[test]
fn folders_named_like_images_are_reported() {
    let dir = tree(&[
        ("train/c/a.png", Some(png_rgb(2, 2, 0))),
        ("train/c/dir_named.png/", None),
        ("train/d/b.png", Some(png_rgb(2, 2, 1))),
    ]);
    let report = checked(dir.path(), false);
    let omitted = &report.splits[0].omitted;
    assert_eq!(omitted.len(), 1);
    assert_eq!(omitted[0].path, dir.path().join("train/c/dir_named.png"));
    assert_eq!(omitted[0].why, Omission::FolderNamedLikeImage);
    assert!(report.render().contains("left out: 1\n"), "{}", report.render());
}

/// The same 16x16 picture encoded by two PNG settings: different bytes, the same pixels.
fn resaved_pair() -> (Vec<u8>, Vec<u8>) {
    let image = coords(16, 16, 7).to_rgb8();
    let encode = |compression, filter| {
        let mut out = Cursor::new(Vec::new());
        PngEncoder::new_with_quality(&mut out, compression, filter)
            .write_image(image.as_raw(), 16, 16, image::ExtendedColorType::Rgb8)
            .unwrap();
        out.into_inner()
    };
    let pair = (
        encode(CompressionType::Fast, FilterType::NoFilter),
        encode(CompressionType::Best, FilterType::Paeth),
    );
    assert_ne!(pair.0, pair.1);
    pair
}

#[test]
fn resaved_copies_are_duplicates_by_pixels() {
    let (fast, best) = resaved_pair();
    let dir = tree(&[
        ("train/a/x.png", Some(fast)),
        ("train/b/y.png", Some(png_rgb(2, 2, 1))),
        ("test/a/x_resaved.png", Some(best)),
        ("test/b/z.png", Some(png_rgb(2, 2, 2))),
    ]);
    let report = checked(dir.path(), false);
    assert_eq!(report.leaks().count(), 1, "{}", report.render());
    let leak = report.leaks().next().unwrap();
    assert_eq!(leak.same, Sameness::Pixels);
    assert!(report.render().contains("same decoded pixels, different bytes"));
    assert!(
        report.errors.iter().any(|e| e.starts_with("leakage: same decoded pixels in")),
        "{:?}",
        report.errors
    );
}

#[test]
fn a_copy_under_two_classes_is_a_label_conflict() {
    let (fast, best) = resaved_pair();
    let dir = tree(&[
        ("train/cat/a.png", Some(png_rgb(2, 2, 1))),
        ("train/dog/a_again.png", Some(png_rgb(2, 2, 1))),
        ("train/cat/b.png", Some(fast)),
        ("train/dog/b_resaved.png", Some(best)),
    ]);
    let root = dir.path();
    let report = checked(root, false);
    let conflicts: Vec<_> = report.duplicates.iter().filter(|d| d.conflicting_labels()).collect();
    assert_eq!(conflicts.len(), 2, "{}", report.render());
    let render = report.render();
    assert!(render.contains("label conflicts: 2"), "{render}");
    assert!(!render.contains("duplicates within a split"), "{render}");
    let named = format!(
        "label conflict: same content in {} (class cat) and {} (class dog)",
        root.join("train/cat/a.png").display(),
        root.join("train/dog/a_again.png").display()
    );
    assert!(report.errors.contains(&named), "{:?}", report.errors);
    assert!(!report.is_ok());
}

#[test]
fn files_come_in_keras_order() {
    // keras-preprocessing `_iter_valid_files`: sorted(os.walk(class_dir), key=root path), then
    // each folder's sorted files; so a folder's files before its subfolders', and `a b/` (space)
    // and `a-b/` before `a/b/` (slash) because the roots are compared as strings (checked
    // against Python's os.walk on this tree).
    let dir = tree(&[
        ("train/c/z.png", Some(png_rgb(2, 2, 0))),
        ("train/c/a/y.png", Some(png_rgb(2, 2, 1))),
        ("train/c/a/b/x.png", Some(png_rgb(2, 2, 2))),
        ("train/c/a b/w.png", Some(png_rgb(2, 2, 3))),
        ("train/c/a-b/v.png", Some(png_rgb(2, 2, 4))),
        ("train/c/b.png", Some(png_rgb(2, 2, 5))),
        ("train/c/a/k.png", Some(png_rgb(2, 2, 6))),
    ]);
    let class = dir.path().join("train/c");
    let index = scan(dir.path(), "train", &ScanOptions::default()).unwrap();
    let order: Vec<_> = index.files.iter().map(|f| rel(&class, &f.path)).collect();
    let keras = ["b.png", "z.png", "a/k.png", "a/y.png", "a b/w.png", "a-b/v.png", "a/b/x.png"];
    assert_eq!(order, keras);
    // predict walks a folder in the same order, by the same function.
    let (listed, _) = dataset::list_images(&class, false).unwrap();
    let listed: Vec<_> = listed.iter().map(|f| rel(&class, &f.path)).collect();
    assert_eq!(listed, keras);
}

#[test]
fn symlinked_split_folders_follow_the_folder_link_rule() {
    let dir = tree(&[
        ("data/train/a/x.png", Some(png_rgb(2, 2, 0))),
        ("data/train/b/y.png", Some(png_rgb(2, 2, 1))),
        ("elsewhere/a/z.png", Some(png_rgb(2, 2, 2))),
        ("elsewhere/b/w.png", Some(png_rgb(2, 2, 3))),
    ]);
    let root = dir.path().join("data");
    symlink(dir.path().join("elsewhere"), root.join("test")).unwrap();
    symlink(dir.path().join("elsewhere"), root.join("extra")).unwrap();
    // A split the stages read is an error, as in the stages; another linked folder is left out
    // and reported, like a symlinked class folder, unless links are followed.
    let report = checked(&root, false);
    assert_eq!(report.splits.len(), 1);
    assert!(!report.is_ok());
    assert!(report.render().contains("the split folder is a symlink"), "{}", report.render());
    assert_eq!(report.omitted.len(), 1);
    assert_eq!(report.omitted[0].why, Omission::Symlink);
    assert!(
        report.render().contains("extra: symlinked folder, not followed"),
        "{}",
        report.render()
    );
    assert!(matches!(
        scan(&root, "test", &ScanOptions::default()),
        Err(Error::SymlinkedSplit { .. })
    ));
    let report = checked(&root, true);
    assert_eq!(report.splits.len(), 3);
    assert!(report.omitted.is_empty());
    let follow = ScanOptions { follow_links: true, ..Default::default() };
    assert_eq!(scan(&root, "test", &follow).unwrap().len(), 2);
}
