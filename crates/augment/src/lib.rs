//! Seeded image augmentation with Keras `ImageDataGenerator` semantics, on decoded HWC buffers.
//!
//! ```
//! use augment::{AugmentConfig, AugmentSpec};
//!
//! // The seed notebook's generator; any AugmentSpec (also from JSON) validates the same way.
//! let config = AugmentConfig::new(AugmentSpec::seed_generator()).unwrap();
//! let (h, w, c) = (150, 150, 3);
//! let src = vec![128u8; h * w * c];
//! let mut dst = vec![0.0f32; h * w * c];
//! // The transform of image 7 in epoch 2 depends on (seed, epoch, index) only.
//! let t = config.sample(42, 2, 7);
//! t.apply_u8_to_f32(&src, h, w, c, &mut dst).unwrap();
//! assert_eq!(t, config.sample(42, 2, 7));
//! ```
//!
//! - [`AugmentSpec`]: the plain settings (serde; Keras argument names and defaults).
//!   [`AugmentConfig::new`] validates it once: negative ranges, zoom `<= 0`, reversed ranges,
//!   NaN, an unknown fill mode or interpolation order are errors here, never later.
//!   [`AugmentConfig::canonical_json`] is the stable text the feature cache hashes.
//! - [`AugmentConfig::sample`]`(seed, epoch, index)` draws a [`Transform`] (theta, shifts, shear,
//!   zoom, flips, colour; Debug + serde) from a ChaCha8 stream keyed by
//!   `sha256("augment/v1", seed, epoch, index)`: identical for any thread count or batch order.
//! - [`Transform::apply_u8`], [`Transform::apply_u8_to_f32`] (what Keras computes: u8 pixels in,
//!   float out) and [`Transform::apply_f32`] warp an `h x w x c` buffer in one pass; [`augment`]
//!   does it for an `image::RgbImage`.
//!
//! The maths is keras-preprocessing 1.1.2's `apply_affine_transform`: in (row, col) coordinates
//! `M = R(theta) T(tx, ty) Sh(shear) Z(zx, zy)`, centred as `C(o) M C(-o)` with
//! `o = (h/2 + 0.5, w/2 + 0.5)`, applied as `out[p] = in[A p + b]` with scipy.ndimage's order-0/1
//! interpolation and `constant | nearest | reflect | wrap` fill (see [`FillMode`]); then channel
//! shift, flips (p = 0.5 each), brightness, rescale, in Keras' order. [`Compat`] says how the
//! `keras` (default) and `book` (Keras 2.0.8) modes differ, and where Keras >= 2.9 differs from
//! both (it swaps the shift axes, an upstream bug we do not reproduce).
//!
//! Parity (tests/parity.rs, goldens from scipy 1.17 + keras-preprocessing 1.1.2 on 24x20x3 inputs,
//! float32 0-255 scale): max absolute difference <= 1e-3 for bilinear and exact (<= 1e-3, i.e.
//! the same input pixel) for nearest, on every pixel including fill and edge pixels, because the
//! boundary rules are scipy's own (see `warp.rs`); only pixels whose sample coordinate lies within
//! 1e-9 of a rounding or fill decision are excluded, since one ulp in the matrix decides them.
//! Measured on the 21 goldens: max 3.1e-5 (bilinear, f32 weights), 0 (nearest), none excluded.
//! `tests/model.rs` holds the fast paths (fixed-point stepping over 150-px rows, 1-pixel images,
//! 1-5 channels) to the same 1e-3 against an independent per-pixel transcription of scipy.
//!
//! Speed (`cargo xtask bench augment`, BENCHMARKS.md): the seed generator on 150x150x3 runs at
//! about 7,400 images/s per core, 19x keras-preprocessing, and scales to 2 threads.
//!
//! Not reproduced: Keras' brightness goes through PIL (min-max stretch to 0-255 and u8
//! quantisation); here brightness multiplies and clamps to `[0, 255]`.
//!
//! Dependencies: `rand_chacha`/`sha2` for the counter-based draws, `serde` for the spec, `image`
//! for the `RgbImage` API and the preview; `clap`, `rayon`, `anyhow`, `tracing-subscriber` serve
//! the two binaries (`augment-preview`, `augment-bench`).

mod spec;
mod transform;
mod warp;

pub use spec::{AugmentConfig, AugmentSpec, Compat, FillMode, ShiftRange, ZoomRange};
pub use transform::{Affine, Sampling, Shift, Transform};

use warp::{Geometry, Store, Texel};

/// Everything that can go wrong in this crate: bad settings (at configuration time) and
/// mismatched buffers.
#[derive(Debug, thiserror::Error)]
pub enum AugmentError {
    #[error("{field} must be a finite number, got {value}")]
    NotFinite { field: &'static str, value: f64 },
    #[error("{field} must be >= 0, got {value}")]
    Negative { field: &'static str, value: f64 },
    #[error("{field} is reversed: lower bound {lo} is above upper bound {hi}")]
    Reversed { field: &'static str, lo: f64, hi: f64 },
    #[error("zoom_range must stay above 0, got [{lo}, {hi}] (a scalar z means [1 - z, 1 + z])")]
    ZoomNotPositive { lo: f64, hi: f64 },
    #[error("unknown fill mode {0:?}, expected one of constant, nearest, reflect, wrap")]
    UnknownFillMode(String),
    #[error("unknown compat mode {0:?}, expected keras or book")]
    UnknownCompat(String),
    #[error("interpolation_order must be 0 (nearest) or 1 (bilinear), got {0}")]
    InterpolationOrder(u8),
    #[error("rescale must be a finite non-zero number, got {0}")]
    Rescale(f64),
    #[error(
        "{field} in pixels needs compat keras: keras 2.0.8 (compat book) only knew fractions < 1"
    )]
    BookPixelShift { field: &'static str },
    #[error("invalid augmentation spec: {0}")]
    Json(#[source] serde_json::Error),
    /// A settings file that cannot be read, parsed or validated.
    #[error("augmentation settings in {path}: {reason}")]
    File { path: std::path::PathBuf, reason: String },
    #[error("image must be at least 1x1 with at least 1 channel, got {h}x{w}x{c}")]
    EmptyImage { h: usize, w: usize, c: usize },
    #[error("{which} buffer has {len} values, expected {h}x{w}x{c} = {expected}")]
    BufferSize { which: &'static str, len: usize, h: usize, w: usize, c: usize, expected: usize },
}

impl Transform {
    /// u8 in, u8 out (saturated, rounded to nearest with ties to even). `rescale` does not
    /// apply: the output stays 0-255.
    pub fn apply_u8(
        &self,
        src: &[u8],
        h: usize,
        w: usize,
        c: usize,
        dst: &mut [u8],
    ) -> Result<(), AugmentError> {
        let g = self.geometry(src.len(), dst.len(), h, w, c)?;
        if self.channel_shift.is_none() && self.brightness.is_none() {
            self.warp_into(src, dst, g);
        } else {
            let mut tmp = vec![0.0f32; dst.len()];
            self.warp_into(src, &mut tmp, g);
            self.colour(&mut tmp, None);
            dst.iter_mut().zip(&tmp).for_each(|(d, &v)| *d = u8::store(v));
        }
        Ok(())
    }

    /// u8 in, f32 out: what Keras computes for a loaded image (`img_to_array` then the generator).
    pub fn apply_u8_to_f32(
        &self,
        src: &[u8],
        h: usize,
        w: usize,
        c: usize,
        dst: &mut [f32],
    ) -> Result<(), AugmentError> {
        let g = self.geometry(src.len(), dst.len(), h, w, c)?;
        self.warp_into(src, dst, g);
        self.colour(dst, self.rescale);
        Ok(())
    }

    /// f32 in, f32 out (any scale; brightness clamps to `[0, 255]`).
    pub fn apply_f32(
        &self,
        src: &[f32],
        h: usize,
        w: usize,
        c: usize,
        dst: &mut [f32],
    ) -> Result<(), AugmentError> {
        let g = self.geometry(src.len(), dst.len(), h, w, c)?;
        self.warp_into(src, dst, g);
        self.colour(dst, self.rescale);
        Ok(())
    }

    /// Only the warp (and flips) with an explicit matrix: the parity tests feed the reference's
    /// own matrix through this to check the sampling separately from the matrix construction.
    pub fn warp_f32_with(
        &self,
        aff: &Affine,
        src: &[f32],
        h: usize,
        w: usize,
        c: usize,
        dst: &mut [f32],
    ) -> Result<(), AugmentError> {
        let g = self.geometry(src.len(), dst.len(), h, w, c)?;
        warp::warp(src, dst, g, aff, &self.sampling);
        Ok(())
    }

    fn geometry(
        &self,
        src: usize,
        dst: usize,
        h: usize,
        w: usize,
        c: usize,
    ) -> Result<Geometry, AugmentError> {
        if h == 0 || w == 0 || c == 0 {
            return Err(AugmentError::EmptyImage { h, w, c });
        }
        let expected = h * w * c;
        for (which, len) in [("source", src), ("destination", dst)] {
            if len != expected {
                return Err(AugmentError::BufferSize { which, len, h, w, c, expected });
            }
        }
        Ok(Geometry { h, w, c, flip_h: self.flip_horizontal, flip_v: self.flip_vertical })
    }

    fn warp_into<S: Texel, D: Store>(&self, src: &[S], dst: &mut [D], g: Geometry) {
        if self.is_geometric_identity() {
            warp::copy_flipped(src, dst, g);
        } else {
            warp::warp(src, dst, g, &self.affine(g.h, g.w), &self.sampling);
        }
    }

    /// Keras' order after the warp: channel shift, (flips, already done), brightness, rescale.
    fn colour(&self, x: &mut [f32], rescale: Option<f64>) {
        if let Some(shift) = self.channel_shift {
            let (lo, hi) = x
                .iter()
                .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)));
            let shift = shift as f32;
            x.iter_mut().for_each(|v| *v = (*v + shift).clamp(lo, hi));
        }
        if let Some(b) = self.brightness {
            let b = b as f32;
            x.iter_mut().for_each(|v| *v = (*v * b).clamp(0.0, 255.0));
        }
        if let Some(s) = rescale {
            let s = s as f32;
            x.iter_mut().for_each(|v| *v *= s);
        }
    }
}

/// Augments one RGB image: `config.sample(seed, epoch, index)` applied with [`Transform::apply_u8`].
pub fn augment(
    config: &AugmentConfig,
    seed: u64,
    epoch: u64,
    index: u64,
    img: &image::RgbImage,
) -> image::RgbImage {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let mut out = image::RgbImage::new(img.width(), img.height());
    if h == 0 || w == 0 {
        return out;
    }
    config
        .sample(seed, epoch, index)
        .apply_u8(img.as_raw(), h, w, 3, &mut out)
        .expect("an RgbImage buffer is h x w x 3");
    out
}
