//! The exact bytes of written `.npy` files, pinned. Teammates share entries and compare their
//! digests, so a change here (header spacing, padding, element encoding, the header rewrite after
//! skipped rows) must be deliberate: it would come with a new `FORMAT_VERSION`.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use feature_cache::{
    CHECKSUMS, Cache, DatasetKey, FEATURES, FORMAT_VERSION, FeatureKey, FileKey, LABELS,
};

fn key(rows: u32) -> FeatureKey {
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
            split: "train".into(),
            classes: vec!["a".into(), "b".into(), "c".into()],
            files: (0..rows)
                .map(|i| FileKey {
                    path: format!("{i}.png"),
                    label: i % 3,
                    sha256: "cd".repeat(32),
                })
                .collect(),
        },
    }
}

/// The header with its non-printing bytes escaped, then the data as 4-byte words in hex.
fn dump(path: &Path) -> String {
    let bytes = fs::read(path).unwrap();
    let header_len = 10 + u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let mut out = format!("{}\n", bytes[..header_len].escape_ascii());
    let words: Vec<String> = bytes[header_len..]
        .chunks(4)
        .map(|w| {
            w.iter().fold(String::new(), |mut s, b| {
                write!(s, "{b:02x}").unwrap();
                s
            })
        })
        .collect();
    out.push_str(&words.join(" "));
    out.push('\n');
    out
}

/// The checksum lines of the two `.npy` files (the manifest's line holds a timestamp's effect).
fn npy_checksums(dir: &Path) -> String {
    fs::read_to_string(dir.join(CHECKSUMS)).unwrap().lines().take(2).collect::<Vec<_>>().join("\n")
}

#[test]
fn rank4_features_and_labels_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path()).unwrap();
    let k = key(2);
    let mut w = cache.writer(k.clone(), "test", 2, &[1, 1, 3]).unwrap();
    // -0.0, a NaN with a payload, infinity and a subnormal must keep their bits.
    w.append(&[1.0, -0.0, f32::from_bits(0x7fc0_1234)], &[2]).unwrap();
    w.append(&[f32::INFINITY, f32::from_bits(1), -2.5], &[0]).unwrap();
    let entry = w.finish().unwrap();
    expect_test::expect![[r#"
        \x93NUMPY\x01\x00v\x00{\'descr\': \'<f4\', \'fortran_order\': False, \'shape\': (2, 1, 1, 3), }                                                    \n
        0000803f 00000080 3412c07f 0000807f 01000000 000020c0
    "#]]
    .assert_eq(&dump(&entry.join(FEATURES)));
    expect_test::expect![[r#"
        \x93NUMPY\x01\x00v\x00{\'descr\': \'<i4\', \'fortran_order\': False, \'shape\': (2,), }                                                            \n
        02000000 00000000
    "#]]
    .assert_eq(&dump(&entry.join(LABELS)));
    expect_test::expect![[r#"
        ec301f3a53b4bf809ffa4d8d4aee43a257ee0eb7b4bcbce75a9e01f5775da552  features.npy
        780950f42081e88b44f7ab1ddf41175b006806a02e7e5b9a252ee60cd5fef447  labels.npy"#]]
    .assert_eq(&npy_checksums(&entry));
}

#[test]
fn rank2_features_with_a_skipped_row_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path()).unwrap();
    let k = key(3);
    // Announced 3 rows, one skipped: the header is rewritten for 2 rows.
    let mut w = cache.writer(k.clone(), "test", 3, &[2]).unwrap();
    w.append(&[0.5, 0.25], &[1]).unwrap();
    w.skip("1.png".into());
    w.append(&[-1.0, 3.0], &[2]).unwrap();
    let entry = w.finish().unwrap();
    expect_test::expect![[r#"
        \x93NUMPY\x01\x00v\x00{\'descr\': \'<f4\', \'fortran_order\': False, \'shape\': (2, 2), }                                                          \n
        0000003f 0000803e 000080bf 00004040
    "#]]
    .assert_eq(&dump(&entry.join(FEATURES)));
    expect_test::expect![[r#"
        \x93NUMPY\x01\x00v\x00{\'descr\': \'<i4\', \'fortran_order\': False, \'shape\': (2,), }                                                            \n
        01000000 02000000
    "#]]
    .assert_eq(&dump(&entry.join(LABELS)));
}
