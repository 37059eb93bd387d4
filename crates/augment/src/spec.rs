//! The augmentation settings: a plain, serde-serialisable [`AugmentSpec`] (what a user writes, what
//! the feature cache hashes) and the validated [`AugmentConfig`] built from it once, so that bad
//! parameters fail at configuration time with a message naming the field.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::AugmentError;

/// Which Keras generation to imitate. Both use the same composed matrix, pivot and fill modes
/// (keras-preprocessing's `apply_affine_transform`); they differ in units and defaults.
///
/// Shift axes: in both modes `height_shift_range` moves the image vertically (rows) and
/// `width_shift_range` horizontally (columns), as in Keras 2.0.8 and keras-preprocessing 1.1.2.
/// Keras >= 2.9 (tf.keras and Keras 3's legacy `ImageDataGenerator`) swaps them (an open upstream
/// bug: `height_shift_range` moves columns); neither mode reproduces that swap.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compat {
    /// keras-preprocessing 1.1.2 (Keras 2.1.4 to 2.8): shear in degrees, bilinear by default,
    /// pixel and integer shift ranges.
    #[default]
    Keras,
    /// Keras 2.0.8, which produced the book's numbers: shear in radians (`shear_range=0.2` is
    /// about 11.5 degrees), nearest-neighbour by default, shift ranges are fractions only.
    Book,
}

/// How pixels sampled from outside the input are filled (scipy.ndimage modes, as Keras names them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FillMode {
    /// `cval` everywhere the sample point lies outside `[0, size - 1]` (`kkkk|abcd|kkkk`).
    Constant,
    /// The edge pixel repeated (`aaaa|abcd|dddd`); the Keras default.
    #[default]
    Nearest,
    /// Half-sample symmetric (`dcba|abcd|dcba`), scipy's `reflect`.
    Reflect,
    /// scipy's `wrap`: periodic with period `size - 1` (first and last sample overlap), not the
    /// plain tiling that scipy calls `grid-wrap`; Keras passes `wrap` through unchanged.
    Wrap,
}

impl FillMode {
    pub const ALL: [FillMode; 4] =
        [FillMode::Constant, FillMode::Nearest, FillMode::Reflect, FillMode::Wrap];

    pub fn name(self) -> &'static str {
        match self {
            FillMode::Constant => "constant",
            FillMode::Nearest => "nearest",
            FillMode::Reflect => "reflect",
            FillMode::Wrap => "wrap",
        }
    }
}

impl fmt::Display for FillMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for FillMode {
    type Err = AugmentError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        FillMode::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| AugmentError::UnknownFillMode(s.to_owned()))
    }
}

impl fmt::Display for Compat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Compat::Keras => "keras",
            Compat::Book => "book",
        })
    }
}

impl FromStr for Compat {
    type Err = AugmentError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "keras" => Ok(Compat::Keras),
            "book" => Ok(Compat::Book),
            _ => Err(AugmentError::UnknownCompat(s.to_owned())),
        }
    }
}

/// A width or height shift range, drawn exactly as Keras' `get_random_transform` draws it.
///
/// JSON: `0.2` (a float), `30` (an integer) or `[-10, 0, 10]` (a list).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ShiftRange {
    /// An integer `n`: `choice(range(n)) * choice([-1, 1])` pixels (so `0..=n-1`, either sign).
    Int(u64),
    /// A float `f`: `uniform(-f, f)`, a fraction of the size when `f < 1`, pixels otherwise.
    Float(f64),
    /// A list: `choice(list) * choice([-1, 1])`, fractions of the size when every value is `< 1`.
    Choices(Vec<f64>),
}

impl Default for ShiftRange {
    fn default() -> Self {
        ShiftRange::Float(0.0)
    }
}

impl ShiftRange {
    /// Keras skips the draw (and the shift) when the range is falsy: `0`, `0.0` or `[]`.
    pub(crate) fn is_off(&self) -> bool {
        match self {
            ShiftRange::Int(n) => *n == 0,
            ShiftRange::Float(f) => *f == 0.0,
            ShiftRange::Choices(v) => v.is_empty(),
        }
    }

    /// Whether drawn values are fractions of the image size (Keras: `np.max(range) < 1`).
    pub(crate) fn is_fraction(&self) -> bool {
        match self {
            ShiftRange::Int(n) => (*n as f64) < 1.0,
            ShiftRange::Float(f) => *f < 1.0,
            ShiftRange::Choices(v) => v.iter().copied().fold(f64::NEG_INFINITY, f64::max) < 1.0,
        }
    }
}

/// A zoom range: a scalar `z` means `[1 - z, 1 + z]`; `zx` and `zy` are drawn independently from
/// it, and values above 1 zoom out.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ZoomRange {
    Scalar(f64),
    Bounds([f64; 2]),
}

impl Default for ZoomRange {
    fn default() -> Self {
        ZoomRange::Scalar(0.0)
    }
}

impl ZoomRange {
    pub fn bounds(&self) -> [f64; 2] {
        match *self {
            ZoomRange::Scalar(z) => [1.0 - z, 1.0 + z],
            ZoomRange::Bounds(b) => b,
        }
    }
}

/// What the user asks for, field for field Keras' `ImageDataGenerator` arguments (the geometric
/// and colour ones). `Default` is Keras' default: no augmentation at all.
///
/// Unknown JSON fields are rejected, and missing ones take the default. Build an
/// [`AugmentConfig`] from it before use.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AugmentSpec {
    /// Which Keras generation to imitate (units of `shear_range`, default interpolation).
    pub compat: Compat,
    /// Degrees; theta ~ U(-r, r).
    pub rotation_range: f64,
    /// Horizontal shift (columns), see [`ShiftRange`].
    pub width_shift_range: ShiftRange,
    /// Vertical shift (rows), see [`ShiftRange`].
    pub height_shift_range: ShiftRange,
    /// Degrees with `compat = keras`, radians with `compat = book`; shear ~ U(-s, s).
    pub shear_range: f64,
    pub zoom_range: ZoomRange,
    pub horizontal_flip: bool,
    pub vertical_flip: bool,
    pub fill_mode: FillMode,
    /// Fill value for `fill_mode = constant`, on the input's scale.
    pub cval: f64,
    /// 0 (nearest) or 1 (bilinear); `None` takes the compat mode's default (keras 1, book 0).
    pub interpolation_order: Option<u8>,
    /// `[lo, hi]`: the image is multiplied by U(lo, hi) and clamped to `[0, 255]`.
    pub brightness_range: Option<[f64; 2]>,
    /// Added to every channel, U(-r, r), then clipped to the image's own min and max (Keras).
    pub channel_shift_range: f64,
    /// Multiplies float outputs last (Keras `rescale`, e.g. `1/255`); u8 outputs ignore it.
    pub rescale: Option<f64>,
}

impl AugmentSpec {
    /// The seed notebook's training generator (Chollet, 5.3): rotation 40, shifts 0.2, shear 0.2,
    /// zoom 0.2, horizontal flip, nearest fill, with current Keras semantics.
    pub fn seed_generator() -> AugmentSpec {
        AugmentSpec {
            rotation_range: 40.0,
            width_shift_range: ShiftRange::Float(0.2),
            height_shift_range: ShiftRange::Float(0.2),
            shear_range: 0.2,
            zoom_range: ZoomRange::Scalar(0.2),
            horizontal_flip: true,
            fill_mode: FillMode::Nearest,
            ..AugmentSpec::default()
        }
    }

    pub fn from_json(json: &str) -> Result<AugmentSpec, AugmentError> {
        serde_json::from_str(json).map_err(AugmentError::Json)
    }

    /// Reads the settings (Keras `ImageDataGenerator` argument names, JSON) from `path`; errors
    /// name the file and the reason.
    pub fn read(path: &Path) -> Result<AugmentSpec, AugmentError> {
        let file = |reason: String| AugmentError::File { path: path.to_owned(), reason };
        let text = std::fs::read_to_string(path).map_err(|e| file(e.to_string()))?;
        serde_json::from_str(&text).map_err(|e| file(e.to_string()))
    }
}

/// A validated [`AugmentSpec`], normalised (zoom as `[lo, hi]`, interpolation order resolved).
/// Cheap to clone and share across threads.
#[derive(Clone, Debug, PartialEq)]
pub struct AugmentConfig {
    spec: AugmentSpec,
    pub(crate) zoom: [f64; 2],
    pub(crate) order: u8,
}

impl AugmentConfig {
    /// [`AugmentSpec::read`] then [`AugmentConfig::new`]: settings from a JSON file, validated;
    /// every error names the file.
    pub fn from_file(path: &Path) -> Result<Self, AugmentError> {
        Self::new(AugmentSpec::read(path)?)
            .map_err(|e| AugmentError::File { path: path.to_owned(), reason: e.to_string() })
    }

    pub fn new(spec: AugmentSpec) -> Result<AugmentConfig, AugmentError> {
        let mut spec = spec;
        non_negative("rotation_range", spec.rotation_range)?;
        non_negative("shear_range", spec.shear_range)?;
        non_negative("channel_shift_range", spec.channel_shift_range)?;
        finite("cval", spec.cval)?;
        for (field, range) in [
            ("width_shift_range", &spec.width_shift_range),
            ("height_shift_range", &spec.height_shift_range),
        ] {
            match range {
                ShiftRange::Int(_) => {}
                ShiftRange::Float(f) => non_negative(field, *f)?,
                ShiftRange::Choices(values) => {
                    for v in values {
                        non_negative(field, *v)?;
                    }
                }
            }
            if spec.compat == Compat::Book && !range.is_off() && !range.is_fraction() {
                return Err(AugmentError::BookPixelShift { field });
            }
        }
        for range in [&mut spec.width_shift_range, &mut spec.height_shift_range] {
            if range.is_off() {
                *range = ShiftRange::default();
            }
        }
        let zoom = spec.zoom_range.bounds();
        if let ZoomRange::Scalar(z) = spec.zoom_range {
            non_negative("zoom_range", z)?;
        }
        finite("zoom_range", zoom[0])?;
        finite("zoom_range", zoom[1])?;
        if zoom[0] > zoom[1] {
            return Err(AugmentError::Reversed { field: "zoom_range", lo: zoom[0], hi: zoom[1] });
        }
        if zoom[0] <= 0.0 {
            return Err(AugmentError::ZoomNotPositive { lo: zoom[0], hi: zoom[1] });
        }
        spec.zoom_range = ZoomRange::Bounds(zoom);
        if let Some([lo, hi]) = spec.brightness_range {
            non_negative("brightness_range", lo)?;
            non_negative("brightness_range", hi)?;
            if lo > hi {
                return Err(AugmentError::Reversed { field: "brightness_range", lo, hi });
            }
        }
        if let Some(r) = spec.rescale
            && (!r.is_finite() || r == 0.0)
        {
            return Err(AugmentError::Rescale(r));
        }
        let order = spec.interpolation_order.unwrap_or(match spec.compat {
            Compat::Keras => 1,
            Compat::Book => 0,
        });
        if order > 1 {
            return Err(AugmentError::InterpolationOrder(order));
        }
        spec.interpolation_order = Some(order);
        Ok(AugmentConfig { spec, zoom, order })
    }

    /// The validated spec in normal form (zoom as bounds, interpolation order explicit).
    pub fn spec(&self) -> &AugmentSpec {
        &self.spec
    }

    /// The canonical JSON of the normalised spec: compact, every field present, fields in
    /// declaration order, floats in shortest round-trip form. Two specs that augment identically
    /// (e.g. `zoom_range: 0.25` and `[0.75, 1.25]`) give the same string, so it can go into a hash.
    pub fn canonical_json(&self) -> String {
        serde_json::to_string(&self.spec).expect("a validated spec has only finite numbers")
    }

    pub fn interpolation_order(&self) -> u8 {
        self.order
    }
}

fn finite(field: &'static str, value: f64) -> Result<(), AugmentError> {
    if value.is_finite() { Ok(()) } else { Err(AugmentError::NotFinite { field, value }) }
}

fn non_negative(field: &'static str, value: f64) -> Result<(), AugmentError> {
    finite(field, value)?;
    if value < 0.0 { Err(AugmentError::Negative { field, value }) } else { Ok(()) }
}
