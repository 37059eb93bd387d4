//! Parity with the reference: keras-preprocessing 1.1.2 `apply_affine_transform` and
//! `ImageDataGenerator.apply_transform` over scipy.ndimage 1.17, on fixed parameters, from the
//! committed goldens in `tests/goldens` (regenerate with `make_goldens.py` there).
//!
//! Tolerance, on the 0-255 scale of float32 outputs: every pixel within 1e-3 of the reference,
//! fill and edge pixels included, since the boundary rules are scipy's own rather than an
//! approximation. Constant-fill pixels whose sample point lies outside the image must equal the
//! reference exactly. Excluded: pixels whose sample coordinate lies within 1e-9 of a multiple of
//! 0.5 on either axis, where nearest rounding, the constant-fill edge or a wrap/reflect fold is
//! decided by the last bit of the matrix (numpy's matrix product and ours may differ by an ulp);
//! there are none in these cases, and the test asserts that at most 1% could ever be.

use std::path::{Path, PathBuf};

use augment::{Affine, FillMode, Sampling, Shift, Transform};
use serde::Deserialize;

const TOL: f32 = 1e-3;

#[derive(Deserialize)]
struct Manifest {
    input: String,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    file: String,
    theta: f64,
    tx: f64,
    ty: f64,
    shear: f64,
    zx: f64,
    zy: f64,
    fill_mode: String,
    cval: f64,
    order: u8,
    flip_horizontal: bool,
    flip_vertical: bool,
    channel_shift: Option<f64>,
    rescale: Option<f64>,
    matrix: [[f64; 2]; 2],
    offset: [f64; 2],
    shear_rad: Option<f64>,
}

fn goldens() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/goldens")
}

fn manifest() -> Manifest {
    let text = std::fs::read_to_string(goldens().join("cases.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// A minimal `.npy` reader for what make_goldens.py writes: C order, `|u1` or `<f4`.
fn read_npy(name: &str) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(goldens().join(name)).unwrap();
    assert_eq!(&bytes[..6], b"\x93NUMPY", "{name}: not an npy file");
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        _ => (u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize, 12),
    };
    let header = std::str::from_utf8(&bytes[start..start + header_len]).unwrap();
    assert!(header.contains("'fortran_order': False"), "{name}: {header}");
    let shape_text = header.split("'shape': (").nth(1).unwrap().split(')').next().unwrap();
    let shape: Vec<usize> = shape_text
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().parse().unwrap())
        .collect();
    let data = &bytes[start + header_len..];
    let values: Vec<f32> = if header.contains("'|u1'") {
        data.iter().map(|&b| b as f32).collect()
    } else {
        assert!(header.contains("'<f4'"), "{name}: unsupported dtype in {header}");
        data.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
    };
    assert_eq!(values.len(), shape.iter().product::<usize>(), "{name}: size");
    (shape, values)
}

fn transform(case: &Case) -> Transform {
    let fill_mode: FillMode = case.fill_mode.parse().unwrap();
    let sampling = Sampling { order: case.order, fill_mode, cval: case.cval };
    Transform {
        theta: case.theta,
        tx: Shift::Pixels(case.tx),
        ty: Shift::Pixels(case.ty),
        shear: case.shear_rad.map_or(case.shear, f64::to_degrees),
        zx: case.zx,
        zy: case.zy,
        flip_horizontal: case.flip_horizontal,
        flip_vertical: case.flip_vertical,
        channel_shift: case.channel_shift,
        brightness: None,
        rescale: case.rescale,
        sampling,
    }
}

/// Compares one golden: the matrix, the warp fed with the reference's own matrix, and the whole
/// transform from the parameters (u8 and f32 inputs). Returns the max abs error (0-255 scale).
fn check(name: &str) -> f32 {
    let m = manifest();
    let case = m.cases.iter().find(|c| c.name == name).unwrap_or_else(|| panic!("no case {name}"));
    let (shape, input) = read_npy(&m.input);
    let (h, w, c) = (shape[0], shape[1], shape[2]);
    let (_, want) = read_npy(&case.file);
    let t = transform(case);

    let ours = t.affine(h, w);
    let theirs = Affine { a: case.matrix, b: case.offset };
    for (x, y) in
        ours.a.iter().flatten().chain(&ours.b).zip(theirs.a.iter().flatten().chain(&theirs.b))
    {
        assert!((x - y).abs() <= 1e-9, "{name}: matrix {ours:?} vs reference {theirs:?}");
    }

    // Which pixels are decided by the last bit of the matrix, and which are pure constant fill.
    let scale = case.rescale.unwrap_or(1.0) as f32;
    let mut excluded = vec![false; h * w];
    let mut outside = vec![false; h * w];
    for r in 0..h {
        for col in 0..w {
            let (rf, cf) = (r as f64, col as f64);
            let y = (rf * theirs.a[0][0] + cf * theirs.a[0][1]) + theirs.b[0];
            let x = (rf * theirs.a[1][0] + cf * theirs.a[1][1]) + theirs.b[1];
            let near_half = |v: f64| ((v * 2.0).round() - v * 2.0).abs() < 2e-9;
            // Output position after the flips.
            let rr = if case.flip_vertical { h - 1 - r } else { r };
            let cc = if case.flip_horizontal { w - 1 - col } else { col };
            excluded[rr * w + cc] = near_half(y) || near_half(x);
            outside[rr * w + cc] = t.sampling.fill_mode == FillMode::Constant
                && (y < 0.0 || y > (h - 1) as f64 || x < 0.0 || x > (w - 1) as f64);
        }
    }
    let n_excluded = excluded.iter().filter(|&&e| e).count();
    assert!(n_excluded * 100 <= h * w, "{name}: {n_excluded} pixels near a decision boundary");

    let compare = |what: &str, got: &[f32]| -> f32 {
        let mut max_err = 0.0f32;
        for (i, (&g, &e)) in got.iter().zip(&want).enumerate() {
            let p = i / c;
            if excluded[p] {
                continue;
            }
            let err = (g - e).abs() / scale;
            if outside[p] && case.channel_shift.is_none() {
                assert_eq!(g, e, "{name} ({what}): constant fill at pixel {p} channel {}", i % c);
            }
            assert!(
                err <= TOL,
                "{name} ({what}): pixel ({}, {}) channel {}: got {g}, reference {e}",
                p / w,
                p % w,
                i % c
            );
            max_err = max_err.max(err);
        }
        max_err
    };

    let mut got = vec![0.0f32; h * w * c];
    let mut max_err = 0.0f32;
    if case.channel_shift.is_none() && case.rescale.is_none() {
        t.warp_f32_with(&theirs, &input, h, w, c, &mut got).unwrap();
        max_err = max_err.max(compare("reference matrix", &got));
    }
    t.apply_f32(&input, h, w, c, &mut got).unwrap();
    max_err = max_err.max(compare("f32", &got));
    let input_u8: Vec<u8> = input.iter().map(|&v| v as u8).collect();
    t.apply_u8_to_f32(&input_u8, h, w, c, &mut got).unwrap();
    max_err = max_err.max(compare("u8 to f32", &got));
    println!("{name}: max abs error {max_err:.2e}, {n_excluded} pixels excluded");
    max_err
}

#[test]
fn rotate() {
    check("rotate");
}

#[test]
fn shift() {
    check("shift");
}

#[test]
fn shear() {
    check("shear");
}

#[test]
fn zoom() {
    check("zoom");
}

#[test]
fn combined() {
    check("combined");
}

#[test]
fn fill_constant() {
    check("combined_constant_o0");
    check("combined_constant_o1");
}

#[test]
fn fill_nearest() {
    check("combined_nearest_o0");
    check("combined_nearest_o1");
}

#[test]
fn fill_reflect() {
    check("combined_reflect_o0");
    check("combined_reflect_o1");
}

#[test]
fn fill_wrap() {
    check("combined_wrap_o0");
    check("combined_wrap_o1");
}

/// Zoom 2.7 and 61 degrees: sample points several periods outside, for the folding modes.
#[test]
fn large_transforms_fold_many_periods() {
    for mode in ["constant", "reflect", "wrap"] {
        for order in [0, 1] {
            check(&format!("large_{mode}_o{order}"));
        }
    }
}

/// Keras 2.0.8: shear_range in radians, nearest-neighbour.
#[test]
fn book_mode() {
    check("book");
}

/// ImageDataGenerator.apply_transform + standardize: warp, channel shift, both flips, rescale.
#[test]
fn whole_generator() {
    check("generator");
}

/// Every golden in cases.json is checked by some test above (and within tolerance).
#[test]
fn every_golden_is_checked() {
    let names: Vec<String> = manifest().cases.into_iter().map(|c| c.name).collect();
    assert_eq!(names.len(), 21, "{names:?}");
    let worst = names.iter().map(|n| check(n)).fold(0.0f32, f32::max);
    println!("worst case over all goldens: {worst:.2e}");
}

/// What the stages feed the network (`apply_u8_to_f32`: u8 pixels in, Keras' floats out) against
/// keras-preprocessing over every golden, every pixel, on the 0-255 scale; the rounded u8 path
/// (`apply_u8`, what the stages used before FORMAT_VERSION 2) is measured beside it. Prints both
/// (`cargo test -p augment --test parity stage_pixels -- --nocapture`).
#[test]
fn stage_pixels_match_keras_floats() {
    let m = manifest();
    let (shape, input) = read_npy(&m.input);
    let (h, w, c) = (shape[0], shape[1], shape[2]);
    let input_u8: Vec<u8> = input.iter().map(|&v| v as u8).collect();
    let (mut float_max, mut float_sum, mut n) = (0f64, 0f64, 0usize);
    let (mut round_max, mut round_sum, mut round_n) = (0f64, 0f64, 0usize);
    for case in &m.cases {
        let (_, want) = read_npy(&case.file);
        let t = transform(case);
        let scale = case.rescale.unwrap_or(1.0);
        let mut got = vec![0f32; h * w * c];
        t.apply_u8_to_f32(&input_u8, h, w, c, &mut got).unwrap();
        let mut got_u8 = vec![0u8; h * w * c];
        t.apply_u8(&input_u8, h, w, c, &mut got_u8).unwrap();
        for ((&g, &r), &e) in got.iter().zip(&got_u8).zip(&want) {
            let float_err = f64::from((g - e).abs()) / scale;
            float_max = float_max.max(float_err);
            float_sum += float_err;
            n += 1;
            // u8 output cannot hold rescaled values; the stages never rescale in augmentation.
            if case.rescale.is_none() {
                let round_err = (f64::from(r) - f64::from(e)).abs();
                round_max = round_max.max(round_err);
                round_sum += round_err;
                round_n += 1;
            }
        }
    }
    println!(
        "{} goldens, {n} values: float path max {float_max:.3e} mean {:.3e}; rounded u8 path \
         ({round_n} values, no rescale) max {round_max:.3e} mean {:.3e} (0-255 units)",
        m.cases.len(),
        float_sum / n as f64,
        round_sum / round_n as f64
    );
    assert!(float_max <= f64::from(TOL), "float path max {float_max}");
}
