//! The kind: help text that contradicts the file format. Every shape `extract-features --help`
//! names for the features it writes must be the stored layout: channels last (`[H, W, C]`,
//! `[N, H, W, C]`) or pooled (`[C]`, `[N, C]`), never the NCHW tensors the network computes.

use std::process::Command;

#[test]
fn help_shapes_match_the_files_written() {
    let out = Command::new(env!("CARGO_BIN_EXE_extract-features")).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{help}");
    let shapes: Vec<&str> = help
        .split('[')
        .skip(1)
        .filter_map(|s| s.split_once(']').map(|(inside, _)| inside))
        .filter(|s| s.split(", ").any(|d| d == "C"))
        .collect();
    assert!(!shapes.is_empty(), "no feature shapes in:\n{help}");
    for shape in shapes {
        let dims: Vec<&str> = shape.split(", ").collect();
        assert_eq!(dims.last(), Some(&"C"), "[{shape}] is not the stored channels-last layout");
    }
}
