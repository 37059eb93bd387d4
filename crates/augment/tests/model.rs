//! The optimised warp (padded source, fixed-point stepping, fast spans, nearest-fill rows, flips)
//! against a plain per-pixel model of scipy.ndimage's order-0/1 `affine_transform`, written from
//! ni_interpolation.c independently of `src/warp.rs`, on sizes and transforms the 24x20 goldens do
//! not reach: 150x150 rows, 1-pixel images, 1, 2, 4 and 5 channels, wild transforms.
//! Tolerance: 1e-3 on a 0-255 scale, every pixel.

use augment::{
    AugmentConfig, AugmentSpec, Compat, FillMode, Sampling, ShiftRange, Transform, ZoomRange,
};

/// scipy's map_coordinate, transcribed separately from the crate's.
fn map(v: f64, n: usize, mode: FillMode) -> f64 {
    let len = n as f64;
    if (0.0..=len - 1.0).contains(&v) {
        return v;
    }
    if n <= 1 && matches!(mode, FillMode::Reflect | FillMode::Wrap) {
        return 0.0;
    }
    match mode {
        FillMode::Constant => -1.0,
        FillMode::Nearest => v.clamp(0.0, len - 1.0),
        FillMode::Reflect if v < 0.0 => {
            let s2 = 2.0 * len;
            let v = if v < -s2 { s2 * (-v / s2).trunc() + v } else { v };
            if v < -len { v + s2 } else { -v - 1.0 }
        }
        FillMode::Reflect => {
            let s2 = 2.0 * len;
            let v = v - s2 * (v / s2).trunc();
            if v >= len { s2 - v - 1.0 } else { v }
        }
        FillMode::Wrap if v < 0.0 => v + (len - 1.0) * ((-v / (len - 1.0)).trunc() + 1.0),
        FillMode::Wrap => v - (len - 1.0) * (v / (len - 1.0)).trunc(),
    }
}

/// out[p] = in[A p + b] in f64, scipy's way, then the flips.
fn model(src: &[f32], h: usize, w: usize, c: usize, t: &Transform) -> Vec<f32> {
    let a = t.affine(h, w);
    let s = t.sampling;
    let mut out = vec![0.0f32; h * w * c];
    for r in 0..h {
        for col in 0..w {
            let (rf, cf) = (r as f64, col as f64);
            let y = (rf * a.a[0][0] + cf * a.a[0][1]) + a.b[0];
            let x = (rf * a.a[1][0] + cf * a.a[1][1]) + a.b[1];
            let rr = if t.flip_vertical { h - 1 - r } else { r };
            let cc = if t.flip_horizontal { w - 1 - col } else { col };
            let o = &mut out[(rr * w + cc) * c..(rr * w + cc + 1) * c];
            let (my, mx) = (map(y, h, s.fill_mode), map(x, w, s.fill_mode));
            if !(my > -1.0 && mx > -1.0) {
                o.fill(s.cval as f32);
                continue;
            }
            let clampi = |i: f64, n: usize| i.max(0.0).min((n - 1) as f64) as usize;
            let taps: Vec<(usize, usize, f64)> = if s.order == 0 {
                vec![(clampi((my + 0.5).floor(), h), clampi((mx + 0.5).floor(), w), 1.0)]
            } else {
                let (fy, fx) = (my.floor(), mx.floor());
                let (ty, tx) = (my - fy, mx - fx);
                vec![
                    (clampi(fy, h), clampi(fx, w), (1.0 - ty) * (1.0 - tx)),
                    (clampi(fy, h), clampi(fx + 1.0, w), (1.0 - ty) * tx),
                    (clampi(fy + 1.0, h), clampi(fx, w), ty * (1.0 - tx)),
                    (clampi(fy + 1.0, h), clampi(fx + 1.0, w), ty * tx),
                ]
            };
            for (k, o) in o.iter_mut().enumerate() {
                let v: f64 =
                    taps.iter().map(|&(i, j, wt)| src[(i * w + j) * c + k] as f64 * wt).sum();
                *o = v as f32;
            }
        }
    }
    out
}

/// A deterministic, textured test image.
fn image(h: usize, w: usize, c: usize) -> Vec<u8> {
    (0..h * w * c).map(|i| ((i * 2654435761usize) >> 7) as u8).collect()
}

/// A generator far wilder than anyone would train with, to reach every fold and edge.
fn wild(fill_mode: FillMode, order: u8) -> AugmentConfig {
    AugmentConfig::new(AugmentSpec {
        rotation_range: 180.0,
        width_shift_range: ShiftRange::Float(0.6),
        height_shift_range: ShiftRange::Float(0.6),
        shear_range: 40.0,
        zoom_range: ZoomRange::Bounds([0.3, 3.5]),
        horizontal_flip: true,
        vertical_flip: true,
        fill_mode,
        cval: 99.5,
        interpolation_order: Some(order),
        ..AugmentSpec::default()
    })
    .unwrap()
}

fn check(h: usize, w: usize, c: usize, config: &AugmentConfig, draws: u64) {
    let src = image(h, w, c);
    let src_f32: Vec<f32> = src.iter().map(|&v| v as f32).collect();
    let mut got = vec![0.0f32; h * w * c];
    let mut got_u8 = vec![0u8; h * w * c];
    for index in 0..draws {
        let t = config.sample(7, 0, index);
        let want = model(&src_f32, h, w, c, &t);
        t.apply_u8_to_f32(&src, h, w, c, &mut got).unwrap();
        for (i, (g, e)) in got.iter().zip(&want).enumerate() {
            assert!((g - e).abs() <= 1e-3, "{h}x{w}x{c} {t:?}: value {i}: got {g}, model {e}");
        }
        t.apply_u8(&src, h, w, c, &mut got_u8).unwrap();
        for (i, (&g, e)) in got_u8.iter().zip(&want).enumerate() {
            assert!((g as f32 - e).abs() <= 0.5 + 1e-3, "{h}x{w}x{c} u8 value {i}: {g} vs {e}");
        }
    }
}

#[test]
fn full_size_rows_every_mode_and_order() {
    for mode in FillMode::ALL {
        for order in [0, 1] {
            check(150, 150, 3, &wild(mode, order), 3);
        }
    }
}

#[test]
fn seed_generator_at_150() {
    let config = AugmentConfig::new(AugmentSpec::seed_generator()).unwrap();
    check(150, 150, 3, &config, 8);
}

#[test]
fn book_generator_at_150() {
    let spec = AugmentSpec { compat: Compat::Book, ..AugmentSpec::seed_generator() };
    check(150, 150, 3, &AugmentConfig::new(spec).unwrap(), 8);
}

#[test]
fn non_square_images() {
    for mode in FillMode::ALL {
        check(37, 90, 3, &wild(mode, 1), 4);
        check(90, 37, 3, &wild(mode, 0), 4);
    }
}

#[test]
fn one_pixel_wide_or_high() {
    for mode in FillMode::ALL {
        for order in [0, 1] {
            check(1, 9, 3, &wild(mode, order), 6);
            check(9, 1, 3, &wild(mode, order), 6);
            check(1, 1, 3, &wild(mode, order), 3);
        }
    }
}

#[test]
fn channel_counts() {
    for c in [1, 2, 4, 5] {
        for mode in FillMode::ALL {
            check(19, 23, c, &wild(mode, 1), 3);
            check(19, 23, c, &wild(mode, 0), 2);
        }
    }
}

#[test]
fn identity_is_an_exact_copy() {
    let t = Transform::identity(Sampling { order: 1, fill_mode: FillMode::Nearest, cval: 0.0 });
    let src = image(5, 4, 3);
    let mut out = vec![0u8; src.len()];
    t.apply_u8(&src, 5, 4, 3, &mut out).unwrap();
    assert_eq!(out, src);
}

#[test]
fn flips_mirror_the_output() {
    let mut t = Transform::identity(Sampling { order: 1, fill_mode: FillMode::Nearest, cval: 0.0 });
    t.flip_horizontal = true;
    // 1x3 RGB: pixel order reversed, channels kept.
    let src = [1u8, 2, 3, 4, 5, 6, 7, 8, 9];
    let mut out = [0u8; 9];
    t.apply_u8(&src, 1, 3, 3, &mut out).unwrap();
    assert_eq!(out, [7, 8, 9, 4, 5, 6, 1, 2, 3]);
    t.flip_horizontal = false;
    t.flip_vertical = true;
    t.apply_u8(&src, 3, 1, 3, &mut out).unwrap();
    assert_eq!(out, [7, 8, 9, 4, 5, 6, 1, 2, 3]);
}

#[test]
fn colour_ops_follow_keras_order() {
    let mut t = Transform::identity(Sampling { order: 1, fill_mode: FillMode::Nearest, cval: 0.0 });
    let src = [10.0f32, 50.0, 200.0];
    let mut out = [0.0f32; 3];
    // Channel shift clips to the image's own range [10, 200].
    t.channel_shift = Some(30.0);
    t.apply_f32(&src, 1, 1, 3, &mut out).unwrap();
    assert_eq!(out, [40.0, 80.0, 200.0]);
    // Then brightness (clamped to 255), then rescale.
    t.brightness = Some(1.5);
    t.rescale = Some(0.5);
    t.apply_f32(&src, 1, 1, 3, &mut out).unwrap();
    assert_eq!(out, [30.0, 60.0, 127.5]);
    // u8 output ignores rescale.
    let mut out_u8 = [0u8; 3];
    t.apply_u8(&[10, 50, 200], 1, 1, 3, &mut out_u8).unwrap();
    assert_eq!(out_u8, [60, 120, 255]);
}

#[test]
fn buffer_mismatches_are_errors() {
    let t = Transform::identity(Sampling { order: 1, fill_mode: FillMode::Nearest, cval: 0.0 });
    let mut out = vec![0u8; 12];
    let err = t.apply_u8(&[0u8; 11], 2, 2, 3, &mut out).unwrap_err();
    assert_eq!(err.to_string(), "source buffer has 11 values, expected 2x2x3 = 12");
    let err = t.apply_u8(&[0u8; 12], 2, 2, 3, &mut out[..10]).unwrap_err();
    assert_eq!(err.to_string(), "destination buffer has 10 values, expected 2x2x3 = 12");
    let err = t.apply_u8(&[], 0, 2, 3, &mut []).unwrap_err();
    assert_eq!(err.to_string(), "image must be at least 1x1 with at least 1 channel, got 0x2x3");
}
