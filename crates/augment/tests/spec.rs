//! Configuration: bad parameters fail at `AugmentConfig::new` (or when parsing JSON) with a
//! message naming the field; the canonical JSON is stable and normalised.

use augment::{AugmentConfig, AugmentSpec, Compat, FillMode, ShiftRange, ZoomRange};
use expect_test::{Expect, expect};

/// Parses `json` as a spec, validates it, and compares the error (or "ok" + canonical JSON).
fn check(json: &str, expect: Expect) {
    let got = match AugmentSpec::from_json(json).and_then(AugmentConfig::new) {
        Ok(config) => format!("ok {}", config.canonical_json()),
        Err(err) => err.to_string(),
    };
    expect.assert_eq(&got);
}

/// Validates a spec built in Rust (for values JSON cannot carry, like NaN).
fn check_spec(spec: AugmentSpec, expect: Expect) {
    let got = match AugmentConfig::new(spec) {
        Ok(_) => "ok".to_owned(),
        Err(err) => err.to_string(),
    };
    expect.assert_eq(&got);
}

#[test]
fn defaults_are_no_augmentation() {
    check(
        "{}",
        expect![[
            r#"ok {"compat":"keras","rotation_range":0.0,"width_shift_range":0.0,"height_shift_range":0.0,"shear_range":0.0,"zoom_range":[1.0,1.0],"horizontal_flip":false,"vertical_flip":false,"fill_mode":"nearest","cval":0.0,"interpolation_order":1,"brightness_range":null,"channel_shift_range":0.0,"rescale":null}"#
        ]],
    );
}

#[test]
fn seed_generator_canonical_json() {
    let config = AugmentConfig::new(AugmentSpec::seed_generator()).unwrap();
    expect![[r#"{"compat":"keras","rotation_range":40.0,"width_shift_range":0.2,"height_shift_range":0.2,"shear_range":0.2,"zoom_range":[0.8,1.2],"horizontal_flip":true,"vertical_flip":false,"fill_mode":"nearest","cval":0.0,"interpolation_order":1,"brightness_range":null,"channel_shift_range":0.0,"rescale":null}"#]]
        .assert_eq(&config.canonical_json());
}

#[test]
fn canonical_json_round_trips_and_normalises() {
    let a = AugmentConfig::new(AugmentSpec::seed_generator()).unwrap();
    let again = AugmentConfig::new(AugmentSpec::from_json(&a.canonical_json()).unwrap()).unwrap();
    assert_eq!(a.canonical_json(), again.canonical_json());
    // Scalar zoom and its bounds, an "off" integer shift and an "off" float shift, implicit and
    // explicit interpolation order: the same augmentation, the same key.
    let b = AugmentConfig::new(AugmentSpec {
        zoom_range: ZoomRange::Bounds([0.8, 1.2]),
        interpolation_order: Some(1),
        vertical_flip: false,
        ..AugmentSpec::seed_generator()
    })
    .unwrap();
    assert_eq!(a.canonical_json(), b.canonical_json());
    let off_int = AugmentConfig::new(AugmentSpec {
        width_shift_range: ShiftRange::Int(0),
        ..AugmentSpec::default()
    })
    .unwrap();
    let off_float = AugmentConfig::new(AugmentSpec::default()).unwrap();
    assert_eq!(off_int.canonical_json(), off_float.canonical_json());
    // Field order in the input does not matter.
    let x = AugmentSpec::from_json(r#"{"zoom_range":0.1,"rotation_range":5}"#).unwrap();
    let y = AugmentSpec::from_json(r#"{"rotation_range":5,"zoom_range":0.1}"#).unwrap();
    assert_eq!(
        AugmentConfig::new(x).unwrap().canonical_json(),
        AugmentConfig::new(y).unwrap().canonical_json()
    );
}

#[test]
fn shift_ranges_keep_keras_int_float_list_distinction() {
    check(
        r#"{"width_shift_range":30,"height_shift_range":[0.1,0.2]}"#,
        expect![[
            r#"ok {"compat":"keras","rotation_range":0.0,"width_shift_range":30,"height_shift_range":[0.1,0.2],"shear_range":0.0,"zoom_range":[1.0,1.0],"horizontal_flip":false,"vertical_flip":false,"fill_mode":"nearest","cval":0.0,"interpolation_order":1,"brightness_range":null,"channel_shift_range":0.0,"rescale":null}"#
        ]],
    );
    let spec = AugmentSpec::from_json(r#"{"width_shift_range":30.0}"#).unwrap();
    assert_eq!(spec.width_shift_range, ShiftRange::Float(30.0));
}

#[test]
fn negative_ranges() {
    check(r#"{"rotation_range":-1}"#, expect!["rotation_range must be >= 0, got -1"]);
    check(r#"{"shear_range":-0.2}"#, expect!["shear_range must be >= 0, got -0.2"]);
    check(r#"{"width_shift_range":-0.1}"#, expect!["width_shift_range must be >= 0, got -0.1"]);
    check(r#"{"height_shift_range":[0.1,-3]}"#, expect!["height_shift_range must be >= 0, got -3"]);
    check(r#"{"channel_shift_range":-5}"#, expect!["channel_shift_range must be >= 0, got -5"]);
    check(r#"{"zoom_range":-0.1}"#, expect!["zoom_range must be >= 0, got -0.1"]);
}

#[test]
fn zoom_must_stay_positive_and_ordered() {
    check(
        r#"{"zoom_range":1.0}"#,
        expect!["zoom_range must stay above 0, got [0, 2] (a scalar z means [1 - z, 1 + z])"],
    );
    check(
        r#"{"zoom_range":[0,1]}"#,
        expect!["zoom_range must stay above 0, got [0, 1] (a scalar z means [1 - z, 1 + z])"],
    );
    check(
        r#"{"zoom_range":[1.2,0.8]}"#,
        expect!["zoom_range is reversed: lower bound 1.2 is above upper bound 0.8"],
    );
}

#[test]
fn brightness_range() {
    check(
        r#"{"brightness_range":[1.5,0.5]}"#,
        expect!["brightness_range is reversed: lower bound 1.5 is above upper bound 0.5"],
    );
    check(r#"{"brightness_range":[-1,0.5]}"#, expect!["brightness_range must be >= 0, got -1"]);
    check(
        r#"{"brightness_range":[0.5]}"#,
        expect![
            "invalid augmentation spec: invalid length 1, expected an array of length 2 at line 1 column 25"
        ],
    );
}

#[test]
fn unknown_names() {
    check(
        r#"{"fill_mode":"mirror"}"#,
        expect![[
            r#"invalid augmentation spec: unknown variant `mirror`, expected one of `constant`, `nearest`, `reflect`, `wrap` at line 1 column 21"#
        ]],
    );
    check(
        r#"{"compat":"keras3"}"#,
        expect![[
            r#"invalid augmentation spec: unknown variant `keras3`, expected `keras` or `book` at line 1 column 18"#
        ]],
    );
    check(
        r#"{"rotation":40}"#,
        expect![[
            r#"invalid augmentation spec: unknown field `rotation`, expected one of `compat`, `rotation_range`, `width_shift_range`, `height_shift_range`, `shear_range`, `zoom_range`, `horizontal_flip`, `vertical_flip`, `fill_mode`, `cval`, `interpolation_order`, `brightness_range`, `channel_shift_range`, `rescale` at line 1 column 11"#
        ]],
    );
    let err = "mirror".parse::<FillMode>().unwrap_err();
    expect![[r#"unknown fill mode "mirror", expected one of constant, nearest, reflect, wrap"#]]
        .assert_eq(&err.to_string());
    let err = "keras3".parse::<Compat>().unwrap_err();
    expect![[r#"unknown compat mode "keras3", expected keras or book"#]]
        .assert_eq(&err.to_string());
    assert_eq!("wrap".parse::<FillMode>().unwrap(), FillMode::Wrap);
}

#[test]
fn interpolation_order_and_rescale() {
    check(
        r#"{"interpolation_order":3}"#,
        expect!["interpolation_order must be 0 (nearest) or 1 (bilinear), got 3"],
    );
    check(r#"{"rescale":0}"#, expect!["rescale must be a finite non-zero number, got 0"]);
    check(
        r#"{"rescale":0.00392156862745098,"compat":"book"}"#,
        expect![[
            r#"ok {"compat":"book","rotation_range":0.0,"width_shift_range":0.0,"height_shift_range":0.0,"shear_range":0.0,"zoom_range":[1.0,1.0],"horizontal_flip":false,"vertical_flip":false,"fill_mode":"nearest","cval":0.0,"interpolation_order":0,"brightness_range":null,"channel_shift_range":0.0,"rescale":0.00392156862745098}"#
        ]],
    );
}

#[test]
fn book_mode_rejects_pixel_shifts() {
    check(
        r#"{"compat":"book","width_shift_range":20}"#,
        expect![
            "width_shift_range in pixels needs compat keras: keras 2.0.8 (compat book) only knew fractions < 1"
        ],
    );
}

#[test]
fn nan_and_infinity() {
    let nan = f64::NAN;
    check_spec(
        AugmentSpec { rotation_range: nan, ..AugmentSpec::default() },
        expect!["rotation_range must be a finite number, got NaN"],
    );
    check_spec(
        AugmentSpec { zoom_range: ZoomRange::Bounds([nan, 1.0]), ..AugmentSpec::default() },
        expect!["zoom_range must be a finite number, got NaN"],
    );
    check_spec(
        AugmentSpec { cval: f64::INFINITY, ..AugmentSpec::default() },
        expect!["cval must be a finite number, got inf"],
    );
    check_spec(
        AugmentSpec { width_shift_range: ShiftRange::Float(nan), ..AugmentSpec::default() },
        expect!["width_shift_range must be a finite number, got NaN"],
    );
    check_spec(
        AugmentSpec { brightness_range: Some([0.5, nan]), ..AugmentSpec::default() },
        expect!["brightness_range must be a finite number, got NaN"],
    );
    check_spec(
        AugmentSpec { rescale: Some(nan), ..AugmentSpec::default() },
        expect!["rescale must be a finite non-zero number, got NaN"],
    );
}

#[test]
fn settings_files_are_read_and_every_error_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.json");
    std::fs::write(&good, r#"{"rotation_range": 40, "horizontal_flip": true}"#).unwrap();
    let config = augment::AugmentConfig::from_file(&good).unwrap();
    assert_eq!(config.spec().rotation_range, 40.0);
    for (name, text, reason) in [
        ("bad.json", "{not json", "key must be a string"),
        ("negative.json", r#"{"rotation_range": -1}"#, "must be >= 0"),
        ("missing.json", "", "No such file"),
    ] {
        let path = dir.path().join(name);
        if !text.is_empty() {
            std::fs::write(&path, text).unwrap();
        }
        let err = augment::AugmentConfig::from_file(&path).unwrap_err().to_string();
        assert!(err.contains(name) && err.contains(reason), "{name}: {err}");
    }
}
