//! Scanning: class order, recursive sorted files, the extension allow-list, dot-entries,
//! symlinks, explicit class lists, class modes and the class map.

use dataset::{ClassMap, ClassMode, Error, ScanOptions, SplitIndex, Targets, scan, scan_dir};
use expect_test::{Expect, expect};

use crate::fixtures::*;

/// Scans a tree of `paths` (a trailing `/` makes a folder, anything else a tiny PNG) and
/// renders classes, files and omissions.
fn check(paths: &[&str], opts: &ScanOptions, expect: Expect) {
    let entries: Vec<(&str, Option<Vec<u8>>)> = paths
        .iter()
        .map(|p| match p.strip_suffix('/') {
            Some(dir) => (dir, None),
            None => (*p, Some(png_rgb(2, 2, 0))),
        })
        .collect();
    let dir = tree(&entries);
    let index = scan_dir(dir.path(), opts).unwrap();
    expect.assert_eq(&render(dir.path(), &index));
}

fn render(root: &std::path::Path, index: &SplitIndex) -> String {
    let mut out = format!("classes {:?}\n", index.classes);
    for f in &index.files {
        out.push_str(&format!("{} {}\n", f.class, rel(root, &f.path)));
    }
    for o in &index.omitted {
        out.push_str(&format!("omitted {} ({})\n", rel(root, &o.path), o.why.describe()));
    }
    out
}

#[test]
fn classes_are_sorted_folders_and_files_recursive_sorted() {
    check(
        &[
            "dogs/b.png",
            "dogs/a.png",
            "cats/z/deep.png",
            "cats/a.png",
            "cats/b/c.png",
            "birds/x.png",
        ],
        &ScanOptions::default(),
        expect![[r#"
            classes ["birds", "cats", "dogs"]
            0 birds/x.png
            1 cats/a.png
            1 cats/b/c.png
            1 cats/z/deep.png
            2 dogs/a.png
            2 dogs/b.png
        "#]],
    );
}

#[test]
fn extension_allow_list_is_case_insensitive() {
    check(
        &[
            "c/a.PNG", "c/b.JpEg", "c/c.jpg", "c/d.bmp", "c/e.gif", "c/f.WEBP", "c/g.tiff",
            "c/h.txt", "c/noext",
        ],
        &ScanOptions::default(),
        expect![[r#"
            classes ["c"]
            0 c/a.PNG
            0 c/b.JpEg
            0 c/c.jpg
            0 c/d.bmp
            0 c/e.gif
            0 c/f.WEBP
            omitted c/g.tiff (extension not in the image allow-list)
            omitted c/h.txt (extension not in the image allow-list)
            omitted c/noext (extension not in the image allow-list)
        "#]],
    );
}

#[test]
fn dot_files_and_dot_folders_are_skipped_and_reported() {
    check(
        &[
            ".ipynb_checkpoints/a.png",
            "cats/.DS_Store",
            "cats/.hidden/a.png",
            "cats/.b.png",
            "cats/a.png",
        ],
        &ScanOptions::default(),
        expect![[r#"
            classes ["cats"]
            0 cats/a.png
            omitted .ipynb_checkpoints (hidden (dot) entry)
            omitted cats/.DS_Store (hidden (dot) entry)
            omitted cats/.b.png (hidden (dot) entry)
            omitted cats/.hidden (hidden (dot) entry)
        "#]],
    );
}

#[test]
fn files_outside_class_folders_are_reported() {
    check(
        &["stray.png", "cats/a.png"],
        &ScanOptions::default(),
        expect![[r#"
            classes ["cats"]
            0 cats/a.png
            omitted stray.png (file outside any class folder)
        "#]],
    );
}

#[test]
fn folders_named_like_images_are_walked_and_reported() {
    check(
        &["cats/album.png/a.png", "cats/b.png"],
        &ScanOptions::default(),
        expect![[r#"
            classes ["cats"]
            0 cats/b.png
            0 cats/album.png/a.png
            omitted cats/album.png (folder named like an image, not an image file; its contents are scanned)
        "#]],
    );
}

#[test]
fn explicit_class_list_sets_order_and_leaves_others_out() {
    let opts =
        ScanOptions { classes: Some(vec!["dogs".into(), "cats".into()]), ..Default::default() };
    check(
        &["cats/a.png", "dogs/b.png", "birds/c.png"],
        &opts,
        expect![[r#"
            classes ["dogs", "cats"]
            0 dogs/b.png
            1 cats/a.png
            omitted birds (folder not in the class list)
        "#]],
    );
}

#[test]
fn explicit_class_without_folder_is_an_error() {
    let dir = tree(&[("cats/a.png", Some(png_rgb(2, 2, 0)))]);
    let opts =
        ScanOptions { classes: Some(vec!["cats".into(), "dogs".into()]), ..Default::default() };
    let err = scan_dir(dir.path(), &opts).unwrap_err();
    assert!(matches!(err, Error::MissingClass { .. }), "{err}");
}

#[cfg(unix)]
mod symlinks {
    use super::*;
    use std::os::unix::fs::symlink;

    fn linked_tree() -> tempfile::TempDir {
        let dir = tree(&[
            ("train/cats/a.png", Some(png_rgb(2, 2, 0))),
            ("elsewhere/b.png", Some(png_rgb(2, 2, 1))),
        ]);
        symlink(dir.path().join("elsewhere/b.png"), dir.path().join("train/cats/b.png")).unwrap();
        symlink(dir.path().join("elsewhere"), dir.path().join("train/dogs")).unwrap();
        dir
    }

    #[test]
    fn linked_files_are_read_linked_folders_not_followed_by_default() {
        let dir = linked_tree();
        let index = scan(dir.path(), "train", &ScanOptions::default()).unwrap();
        expect![[r#"
            classes ["cats"]
            0 train/cats/a.png
            0 train/cats/b.png
            omitted train/dogs (symlinked folder, not followed (--follow-links follows it))
        "#]]
        .assert_eq(&render(dir.path(), &index));
    }

    #[test]
    fn followed_on_request() {
        let dir = linked_tree();
        let opts = ScanOptions { follow_links: true, ..Default::default() };
        let index = scan(dir.path(), "train", &opts).unwrap();
        expect![[r#"
            classes ["cats", "dogs"]
            0 train/cats/a.png
            0 train/cats/b.png
            1 train/dogs/b.png
        "#]]
        .assert_eq(&render(dir.path(), &index));
    }

    #[test]
    fn loop_is_an_error_naming_both_paths() {
        let dir = tree(&[("train/cats/a.png", Some(png_rgb(2, 2, 0)))]);
        symlink(dir.path().join("train"), dir.path().join("train/cats/again")).unwrap();
        let opts = ScanOptions { follow_links: true, ..Default::default() };
        let err = scan(dir.path(), "train", &opts).unwrap_err();
        let msg = err.to_string().replace(&*dir.path().to_string_lossy(), "<tmp>");
        expect!["<tmp>/train/cats/again: symlink loop, it leads back to its ancestor <tmp>/train"]
            .assert_eq(&msg);
    }
}

/// Class modes: the targets a two-image batch of classes `[1, 0]` gets, and binary's check.
fn check_mode(mode: ClassMode, classes: &[&str], expect: Expect) {
    let paths: Vec<String> = classes.iter().map(|c| format!("{c}/a.png")).collect();
    let entries: Vec<(&str, Option<Vec<u8>>)> =
        paths.iter().map(|p| (p.as_str(), Some(png_rgb(2, 2, 0)))).collect();
    let dir = tree(&entries);
    let opts = ScanOptions { class_mode: mode, ..Default::default() };
    let out = match scan_dir(dir.path(), &opts) {
        Ok(index) => format!("{:?}", Targets::new(index.class_mode, index.classes.len(), &[1, 0])),
        Err(e) => e.to_string().replace(&*dir.path().to_string_lossy(), "<tmp>"),
    };
    expect.assert_eq(&out);
}

#[test]
fn class_mode_binary() {
    check_mode(ClassMode::Binary, &["cats", "dogs"], expect!["Binary([1.0, 0.0])"]);
}

#[test]
fn class_mode_binary_needs_two_classes() {
    check_mode(
        ClassMode::Binary,
        &["a", "b", "c"],
        expect!["<tmp>: binary class mode needs exactly 2 classes, found 3"],
    );
}

#[test]
fn class_mode_categorical() {
    check_mode(
        ClassMode::Categorical,
        &["a", "b", "c"],
        expect!["Categorical { num_classes: 3, one_hot: [0.0, 1.0, 0.0, 1.0, 0.0, 0.0] }"],
    );
}

#[test]
fn class_mode_sparse() {
    check_mode(ClassMode::Sparse, &["a", "b", "c"], expect!["Sparse([1, 0])"]);
}

#[test]
fn class_map_round_trips_through_classes_json() {
    let dir = tree(&[]);
    let map = ClassMap::new(vec!["shirt".into(), "t-shirt_top".into()], ClassMode::Binary);
    let path = map.write(dir.path()).unwrap();
    expect![[r#"
        {
          "classes": [
            "shirt",
            "t-shirt_top"
          ],
          "class_indices": {
            "shirt": 0,
            "t-shirt_top": 1
          },
          "class_mode": "binary"
        }
    "#]]
    .assert_eq(&std::fs::read_to_string(&path).unwrap());
    assert_eq!(ClassMap::read(dir.path()).unwrap(), map);
}

#[test]
fn inconsistent_class_map_is_refused() {
    let dir = tree(&[(
        "classes.json",
        Some(
            br#"{"classes":["a","b"],"class_indices":{"a":1,"b":0},"class_mode":"sparse"}"#
                .to_vec(),
        ),
    )]);
    let err = ClassMap::read(dir.path()).unwrap_err();
    assert!(
        err.to_string().ends_with("invalid class map: classes and class_indices disagree"),
        "{err}"
    );
}
