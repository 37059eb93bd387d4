//! One image's drawn augmentation parameters ([`Transform`]), how they are drawn from
//! `(seed, epoch, index)` alone, and the composed affine matrix they stand for.

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::spec::{AugmentConfig, Compat, FillMode, ShiftRange};

/// A shift as drawn: Keras multiplies fractions by the image size, which is only known when the
/// transform is applied.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Shift {
    Fraction(f64),
    Pixels(f64),
}

impl Shift {
    pub fn pixels(self, size: usize) -> f64 {
        match self {
            Shift::Fraction(f) => f * size as f64,
            Shift::Pixels(p) => p,
        }
    }
}

/// How the warp samples: interpolation order, fill mode and fill value.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sampling {
    /// 0 nearest, 1 bilinear (scipy.ndimage spline orders).
    pub order: u8,
    pub fill_mode: FillMode,
    pub cval: f64,
}

/// The parameters drawn for one image, in Keras' names and units. Coordinates are (row, col) as
/// in keras-preprocessing: `tx` moves rows (drawn from `height_shift_range`), `ty` columns, `zx`
/// scales the row coordinate and `zy` the column coordinate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Transform {
    /// Rotation, degrees.
    pub theta: f64,
    pub tx: Shift,
    pub ty: Shift,
    /// Shear angle, degrees (book-mode radians are converted when drawn).
    pub shear: f64,
    pub zx: f64,
    pub zy: f64,
    pub flip_horizontal: bool,
    pub flip_vertical: bool,
    pub channel_shift: Option<f64>,
    pub brightness: Option<f64>,
    pub rescale: Option<f64>,
    pub sampling: Sampling,
}

/// The pull map `input[(r, c)] = a * (r, c) + b` for output pixel `(r, c)`, in (row, col) order,
/// exactly what keras-preprocessing hands to `scipy.ndimage.affine_transform`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Affine {
    pub a: [[f64; 2]; 2],
    pub b: [f64; 2],
}

impl Transform {
    /// No geometric change, no colour change.
    pub fn identity(sampling: Sampling) -> Transform {
        Transform {
            theta: 0.0,
            tx: Shift::Pixels(0.0),
            ty: Shift::Pixels(0.0),
            shear: 0.0,
            zx: 1.0,
            zy: 1.0,
            flip_horizontal: false,
            flip_vertical: false,
            channel_shift: None,
            brightness: None,
            rescale: None,
            sampling,
        }
    }

    /// `C(o) * R(theta) * T(tx, ty) * Sh(shear) * Z(zx, zy) * C(-o)` with keras-preprocessing's
    /// pivot `o = (h / 2 + 0.5, w / 2 + 0.5)` (half a pixel past the true centre; Keras >= 2.9
    /// moved it to `size / 2 - 0.5`).
    pub fn affine(&self, h: usize, w: usize) -> Affine {
        let (s, c) = self.theta.to_radians().sin_cos();
        let rot = [[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]];
        let shift = [[1.0, 0.0, self.tx.pixels(h)], [0.0, 1.0, self.ty.pixels(w)], [0.0, 0.0, 1.0]];
        let (ss, sc) = self.shear.to_radians().sin_cos();
        let shear = [[1.0, -ss, 0.0], [0.0, sc, 0.0], [0.0, 0.0, 1.0]];
        let zoom = [[self.zx, 0.0, 0.0], [0.0, self.zy, 0.0], [0.0, 0.0, 1.0]];
        let m = matmul(&matmul(&matmul(&rot, &shift), &shear), &zoom);
        let (ox, oy) = (h as f64 / 2.0 + 0.5, w as f64 / 2.0 + 0.5);
        let offset = [[1.0, 0.0, ox], [0.0, 1.0, oy], [0.0, 0.0, 1.0]];
        let reset = [[1.0, 0.0, -ox], [0.0, 1.0, -oy], [0.0, 0.0, 1.0]];
        let t = matmul(&matmul(&offset, &m), &reset);
        Affine { a: [[t[0][0], t[0][1]], [t[1][0], t[1][1]]], b: [t[0][2], t[1][2]] }
    }

    /// Whether the warp is the identity (Keras then skips `affine_transform` altogether).
    pub fn is_geometric_identity(&self) -> bool {
        self.theta == 0.0
            && self.tx.pixels(1) == 0.0
            && self.ty.pixels(1) == 0.0
            && self.shear == 0.0
            && self.zx == 1.0
            && self.zy == 1.0
    }
}

fn matmul(x: &[[f64; 3]; 3], y: &[[f64; 3]; 3]) -> [[f64; 3]; 3] {
    let mut out = [[0.0; 3]; 3];
    for i in 0..3 {
        for j in 0..3 {
            out[i][j] = x[i][0] * y[0][j] + x[i][1] * y[1][j] + x[i][2] * y[2][j];
        }
    }
    out
}

/// A uniform stream for one image: ChaCha8 keyed by `sha256("augment/v1", seed, epoch, index)`.
struct Draws(ChaCha8Rng);

impl Draws {
    fn new(seed: u64, epoch: u64, index: u64) -> Draws {
        let mut h = Sha256::new();
        h.update(b"augment/v1");
        for v in [seed, epoch, index] {
            h.update(v.to_le_bytes());
        }
        Draws(ChaCha8Rng::from_seed(h.finalize().into()))
    }

    /// U[0, 1) with 53 random bits, like numpy's `random()`.
    fn unit(&mut self) -> f64 {
        (self.0.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// numpy's `uniform(lo, hi)`: `lo + (hi - lo) * random()`.
    fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    fn sign(&mut self) -> f64 {
        if self.unit() < 0.5 { -1.0 } else { 1.0 }
    }
}

impl AugmentConfig {
    /// The transform of image `index` in epoch `epoch`: a pure function of `(seed, epoch, index)`
    /// and the config, so any thread count or batch order gives the same images.
    ///
    /// Every parameter consumes its draws even when switched off, so enabling one augmentation
    /// leaves the others' draws unchanged.
    pub fn sample(&self, seed: u64, epoch: u64, index: u64) -> Transform {
        let spec = self.spec();
        let mut d = Draws::new(seed, epoch, index);
        let theta = d.uniform(-spec.rotation_range, spec.rotation_range);
        let tx = draw_shift(&mut d, &spec.height_shift_range);
        let ty = draw_shift(&mut d, &spec.width_shift_range);
        let shear = d.uniform(-spec.shear_range, spec.shear_range);
        let shear = match spec.compat {
            Compat::Keras => shear,
            Compat::Book => shear.to_degrees(),
        };
        let [lo, hi] = self.zoom;
        let (zx, zy) = (d.uniform(lo, hi), d.uniform(lo, hi));
        let (zx, zy) = if lo == 1.0 && hi == 1.0 { (1.0, 1.0) } else { (zx, zy) };
        let flip_horizontal = d.unit() < 0.5 && spec.horizontal_flip;
        let flip_vertical = d.unit() < 0.5 && spec.vertical_flip;
        let r = spec.channel_shift_range;
        let channel_shift = Some(d.uniform(-r, r)).filter(|_| r != 0.0);
        let brightness = {
            let u = d.unit();
            spec.brightness_range.map(|[lo, hi]| lo + (hi - lo) * u)
        };
        Transform {
            theta,
            tx,
            ty,
            shear,
            zx,
            zy,
            flip_horizontal,
            flip_vertical,
            channel_shift,
            brightness,
            rescale: spec.rescale,
            sampling: Sampling { order: self.order, fill_mode: spec.fill_mode, cval: spec.cval },
        }
    }
}

/// Keras' `get_random_transform` shift draw: a choice times a random sign for integers and lists,
/// `uniform(-f, f)` for floats; fractions of the size when the range's maximum is below 1.
fn draw_shift(d: &mut Draws, range: &ShiftRange) -> Shift {
    let (u, k, sign) = (d.unit(), d.unit(), d.sign());
    let value = match range {
        ShiftRange::Float(f) => -f + 2.0 * f * u,
        ShiftRange::Int(n) => sign * ((k * *n as f64) as u64).min(n.saturating_sub(1)) as f64,
        ShiftRange::Choices(v) if v.is_empty() => 0.0,
        ShiftRange::Choices(v) => sign * v[((k * v.len() as f64) as usize).min(v.len() - 1)],
    };
    if range.is_off() {
        Shift::Pixels(0.0)
    } else if range.is_fraction() {
        Shift::Fraction(value)
    } else {
        Shift::Pixels(value)
    }
}
