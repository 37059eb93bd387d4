//! `dataset check`: counts, formats and sizes per split and class, leakage between splits,
//! duplicates and bad files.

use dataset::check::{CheckOptions, CheckReport, check as run_check};
use expect_test::{Expect, expect};

use crate::fixtures::*;

/// Checks a generated tree and compares the rendered report, temp folder elided.
fn check(entries: &[(&str, Option<Vec<u8>>)], expect: Expect) -> CheckReport {
    let dir = tree(entries);
    let report = run_check(dir.path(), &CheckOptions::default(), &|_| {}).unwrap();
    expect.assert_eq(&report.render().replace(&*dir.path().to_string_lossy(), "<tmp>"));
    report
}

#[test]
fn clean_dataset() {
    let report = check(
        &[
            ("train/cats/a.png", Some(png_rgb(4, 3, 1))),
            ("train/cats/b.png", Some(png_rgb(4, 3, 2))),
            ("train/dogs/c.jpg", Some(jpeg_noise(8, 8, 3))),
            ("test/cats/d.png", Some(png_rgb(4, 3, 4))),
            ("test/dogs/e.png", Some(png_rgb(5, 3, 5))),
            ("test/dogs/.DS_Store", Some(b"junk".to_vec())),
        ],
        expect![[r#"
            dataset <tmp>
            split        class             images       bytes  formats        sizes
            train        cats                   2         214  png 2          4x3
            train        dogs                   1         704  jpeg 1         8x8
            train        (all)                  3         918  jpeg 1, png 2  2 sizes, most 4x3 (2)
            test         cats                   1         107  png 1          4x3
            test         dogs                   1         116  png 1          5x3
            test         (all)                  2         223  png 2          2 sizes, most 4x3 (1)
            leakage: none (no content is shared between splits)
            bad files: 0
            left out: 1
              <tmp>/test/dogs/.DS_Store: hidden (dot) entry
            ok
        "#]],
    );
    assert!(report.is_ok());
}

#[test]
fn leakage_bad_files_and_class_mismatch() {
    let report = check(
        &[
            ("train/cats/a.png", Some(png_rgb(4, 3, 1))),
            ("train/dogs/b.png", Some(png_rgb(4, 3, 2))),
            ("train/dogs/b-copy.png", Some(png_rgb(4, 3, 2))),
            ("validation/cats/same-as-a.png", Some(png_rgb(4, 3, 1))),
            ("validation/dogs/zero.png", Some(Vec::new())),
            ("test/cats/x.png", Some(png_rgb(4, 3, 3))),
            ("test/birds/y.png", Some(png_rgb(4, 3, 4))),
        ],
        expect![[r#"
            dataset <tmp>
            split        class             images       bytes  formats        sizes
            train        cats                   1         107  png 1          4x3
            train        dogs                   2         214  png 2          4x3
            train        (all)                  3         321  png 3          4x3
            validation   cats                   1         107  png 1          4x3
            validation   dogs                   1           0  bad 1          -
            validation   (all)                  2         107  bad 1, png 1   4x3
            test         birds                  1         107  png 1          4x3
            test         cats                   1         107  png 1          4x3
            test         (all)                  2         214  png 2          4x3
            leakage: 1 contents appear in more than one split
              sha256 64e3534b9e678a56 (same bytes):
                train/cats: <tmp>/train/cats/a.png
                validation/cats: <tmp>/validation/cats/same-as-a.png
            duplicates within a split: 1
              sha256 deac88541af2996a (same bytes):
                train/dogs: <tmp>/train/dogs/b-copy.png
                train/dogs: <tmp>/train/dogs/b.png
            bad files: 1
              <tmp>/validation/dogs/zero.png: empty file (0 bytes)
            error: <tmp>/test: classes ["birds", "cats"] differ from those of train ["cats", "dogs"]
            error: <tmp>/validation/dogs/zero.png: empty file (0 bytes)
            error: leakage: same content in <tmp>/train/cats/a.png and <tmp>/validation/cats/same-as-a.png
            3 errors
        "#]],
    );
    assert!(!report.is_ok());
    assert_eq!(report.leaks().count(), 1);
}

/// The `dataset check` binary: exit status 0 for a clean tree, 1 with leakage.
fn check_binary(entries: &[(&str, Option<Vec<u8>>)], expect_ok: bool) {
    let dir = tree(entries);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dataset"))
        .arg("check")
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.success(), expect_ok, "{stdout}");
    assert!(
        stdout.lines().last().is_some_and(|l| l == if expect_ok { "ok" } else { "1 errors" }),
        "{stdout}"
    );
}

#[test]
fn binary_exit_status() {
    let tree = |y: u8| {
        [
            ("train/a/x.png", Some(png_rgb(2, 2, 1))),
            ("train/b/x.png", Some(png_rgb(2, 2, 3))),
            ("test/a/y.png", Some(png_rgb(2, 2, y))),
            ("test/b/y.png", Some(png_rgb(2, 2, 4))),
        ]
    };
    check_binary(&tree(2), true);
    check_binary(&tree(1), false);
}
