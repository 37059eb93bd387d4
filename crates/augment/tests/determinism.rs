//! Determinism and the draw distributions: a transform depends on (seed, epoch, index) only, so
//! images come out bit-identical with 1 or 2 threads and in any order; draws follow Keras'
//! `get_random_transform`; the stream itself is pinned by a snapshot (changing it would silently
//! change every cached augmented feature).

use augment::{AugmentConfig, AugmentSpec, Compat, Shift, ShiftRange, Transform};
use expect_test::expect;
use rayon::prelude::*;

fn config(spec: AugmentSpec) -> AugmentConfig {
    AugmentConfig::new(spec).unwrap()
}

fn seed_config() -> AugmentConfig {
    config(AugmentSpec::seed_generator())
}

/// Augments images 0..n of a synthetic 32x32 set in the given pool, in the given index order.
fn run(threads: usize, order: &[u64]) -> Vec<(u64, Vec<u8>)> {
    let config = seed_config();
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
    let (h, w, c) = (32, 32, 3);
    let mut out: Vec<(u64, Vec<u8>)> = pool.install(|| {
        order
            .par_iter()
            .map(|&i| {
                let src: Vec<u8> = (0..h * w * c).map(|k| (k as u64 * 7 + i * 13) as u8).collect();
                let mut dst = vec![0u8; h * w * c];
                config.sample(99, 3, i).apply_u8(&src, h, w, c, &mut dst).unwrap();
                (i, dst)
            })
            .collect()
    });
    out.sort_by_key(|(i, _)| *i);
    out
}

#[test]
fn identical_with_one_or_two_threads_and_any_order() {
    let forward: Vec<u64> = (0..48).collect();
    let backward: Vec<u64> = (0..48).rev().collect();
    let one = run(1, &forward);
    assert_eq!(one, run(2, &forward));
    assert_eq!(one, run(2, &backward));
    assert_eq!(one, run(1, &backward));
}

#[test]
fn each_coordinate_of_the_key_matters() {
    let c = seed_config();
    let t = c.sample(1, 2, 3);
    assert_eq!(t, c.sample(1, 2, 3));
    assert_ne!(t, c.sample(2, 2, 3));
    assert_ne!(t, c.sample(1, 3, 3));
    assert_ne!(t, c.sample(1, 2, 4));
    // (seed, epoch, index) are not just summed or swapped.
    assert_ne!(c.sample(1, 2, 3), c.sample(1, 3, 2));
    assert_ne!(c.sample(0, 1, 0), c.sample(0, 0, 1));
}

#[test]
fn switching_one_augmentation_on_keeps_the_others_draws() {
    let base = seed_config().sample(5, 0, 11);
    let more = config(AugmentSpec {
        vertical_flip: true,
        channel_shift_range: 20.0,
        brightness_range: Some([0.5, 1.5]),
        ..AugmentSpec::seed_generator()
    })
    .sample(5, 0, 11);
    assert_eq!(
        (base.theta, base.tx, base.ty, base.shear),
        (more.theta, more.tx, more.ty, more.shear)
    );
    assert_eq!((base.zx, base.zy, base.flip_horizontal), (more.zx, more.zy, more.flip_horizontal));
}

/// Draws the seed generator's parameters for many images and checks Keras' ranges and rates.
#[test]
fn seed_generator_distributions() {
    let c = seed_config();
    let n = 4000;
    let ts: Vec<Transform> = (0..n).map(|i| c.sample(0, 0, i)).collect();
    let mean = |f: &dyn Fn(&Transform) -> f64| ts.iter().map(f).sum::<f64>() / n as f64;
    let frac = |s: Shift| match s {
        Shift::Fraction(f) => f,
        Shift::Pixels(_) => panic!("0.2 is a fraction"),
    };
    for t in &ts {
        assert!(t.theta.abs() <= 40.0 && t.shear.abs() <= 0.2);
        assert!(frac(t.tx).abs() <= 0.2 && frac(t.ty).abs() <= 0.2);
        assert!((0.8..=1.2).contains(&t.zx) && (0.8..=1.2).contains(&t.zy));
        assert!(!t.flip_vertical && t.channel_shift.is_none() && t.brightness.is_none());
    }
    assert!(mean(&|t| t.theta).abs() < 1.5, "theta is centred");
    assert!((mean(&|t| t.theta.abs()) - 20.0).abs() < 1.0, "theta is uniform on [-40, 40]");
    assert!((mean(&|t| t.flip_horizontal as u8 as f64) - 0.5).abs() < 0.03);
    assert!((mean(&|t| t.zx) - 1.0).abs() < 0.01 && (mean(&|t| t.zy) - 1.0).abs() < 0.01);
    // zx and zy are independent draws.
    let cov = mean(&|t| (t.zx - 1.0) * (t.zy - 1.0));
    assert!(cov.abs() < 0.001, "zx, zy covariance {cov}");
}

#[test]
fn book_mode_shear_is_radians() {
    let spec = AugmentSpec { compat: Compat::Book, ..AugmentSpec::seed_generator() };
    let c = config(spec);
    let max = (0..2000).map(|i| c.sample(0, 0, i).shear.abs()).fold(0.0, f64::max);
    // 0.2 rad = 11.46 degrees; Transform.shear is in degrees.
    assert!(max > 11.0 && max <= 0.2f64.to_degrees(), "max shear {max}");
    assert_eq!(c.interpolation_order(), 0);
}

#[test]
fn integer_and_list_shift_ranges_draw_like_keras() {
    let c = config(AugmentSpec {
        width_shift_range: ShiftRange::Int(4),
        height_shift_range: ShiftRange::Choices(vec![0.1, 0.25]),
        ..AugmentSpec::default()
    });
    let mut seen_ty = std::collections::BTreeSet::new();
    let mut seen_tx = std::collections::BTreeSet::new();
    for i in 0..400 {
        let t = c.sample(0, 0, i);
        match (t.tx, t.ty) {
            (Shift::Fraction(tx), Shift::Pixels(ty)) => {
                seen_tx.insert((tx * 100.0) as i64);
                seen_ty.insert(ty as i64);
            }
            other => panic!("{other:?}"),
        }
    }
    // choice(range(4)) * choice([-1, 1]): -3..=3 pixels; choice([0.1, 0.25]) * ±1 of the height.
    assert_eq!(seen_ty.into_iter().collect::<Vec<_>>(), vec![-3, -2, -1, 0, 1, 2, 3]);
    assert_eq!(seen_tx.into_iter().collect::<Vec<_>>(), vec![-25, -10, 10, 25]);
}

#[test]
fn no_augmentation_by_default() {
    let t = config(AugmentSpec::default()).sample(1, 1, 1);
    assert!(t.is_geometric_identity());
    assert!(!t.flip_horizontal && !t.flip_vertical);
}

/// Pins the draw stream: a change here changes every augmented image and cached feature.
#[test]
fn draw_stream_snapshot() {
    let t = seed_config().sample(42, 0, 0);
    expect![[r#"
        {
          "theta": -23.66610791429541,
          "tx": {
            "fraction": -0.10869416545194684
          },
          "ty": {
            "fraction": -0.17351040484205116
          },
          "shear": -0.031130528897025833,
          "zx": 0.8707911628564096,
          "zy": 1.1272943586045328,
          "flip_horizontal": true,
          "flip_vertical": false,
          "channel_shift": null,
          "brightness": null,
          "rescale": null,
          "sampling": {
            "order": 1,
            "fill_mode": "nearest",
            "cval": 0.0
          }
        }"#]]
    .assert_eq(&serde_json::to_string_pretty(&t).unwrap());
}
