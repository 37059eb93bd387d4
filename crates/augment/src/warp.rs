//! The one-pass pull-map warp `out[p] = in[A p + b]` over all channels, with scipy.ndimage's
//! boundary rules (order 0 and 1), flips folded into the output addressing, then the colour ops.
//!
//! Boundary rules, as `scipy.ndimage.affine_transform` (1.17) implements them for order <= 1:
//! each coordinate is first mapped into the image by the fill mode (`map_coordinate`); a mapped
//! value `<= -1` (always the case for `constant` outside `[0, size - 1]`) yields `cval`; otherwise
//! the 1 or 2 taps `floor(c)`, `floor(c) + 1` (order 1) or `floor(c + 0.5)` (order 0) are clamped
//! into the image. Coordinates are computed in f64 in scipy's operation order; weights and sums in
//! f32 (within 1e-4 of scipy's f64 on a 0-255 scale).
//!
//! Speed: the sample point moves linearly along an output row, so each row is split into the span
//! of columns whose whole footprint lies inside the image (found once per row, then a branch-free
//! inner loop) and the edges, which take the general path.

use crate::spec::FillMode;
use crate::transform::{Affine, Sampling};

/// An input sample type.
pub(crate) trait Texel: Copy {
    fn to_f32(self) -> f32;
}

impl Texel for u8 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self as f32
    }
}

impl Texel for f32 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
}

/// An output sample type.
pub(crate) trait Store: Copy {
    fn store(v: f32) -> Self;
}

impl Store for u8 {
    /// Round half up and saturate, as scipy does for unsigned outputs.
    #[inline(always)]
    fn store(v: f32) -> u8 {
        (v.max(0.0) + 0.5) as u8
    }
}

impl Store for f32 {
    #[inline(always)]
    fn store(v: f32) -> f32 {
        v
    }
}

/// Image geometry and the fixed settings of one warp.
#[derive(Clone, Copy)]
pub(crate) struct Geometry {
    pub h: usize,
    pub w: usize,
    pub c: usize,
    pub flip_h: bool,
    pub flip_v: bool,
}

/// Warps `src` (HWC) into `dst` (HWC, same shape). Both lengths must be `h * w * c`.
pub(crate) fn warp<S: Texel, D: Store>(
    src: &[S],
    dst: &mut [D],
    g: Geometry,
    aff: &Affine,
    sampling: &Sampling,
) {
    debug_assert_eq!(src.len(), g.h * g.w * g.c);
    debug_assert_eq!(dst.len(), g.h * g.w * g.c);
    // Literal channel counts let the compiler unroll the per-channel loops.
    match (sampling.order, g.c) {
        (0, 1) => warp_rows::<S, D, 0>(src, dst, g, 1, aff, sampling),
        (0, 3) => warp_rows::<S, D, 0>(src, dst, g, 3, aff, sampling),
        (0, 4) => warp_rows::<S, D, 0>(src, dst, g, 4, aff, sampling),
        (0, c) => warp_rows::<S, D, 0>(src, dst, g, c, aff, sampling),
        (_, 1) => warp_rows::<S, D, 1>(src, dst, g, 1, aff, sampling),
        (_, 3) => warp_rows::<S, D, 1>(src, dst, g, 3, aff, sampling),
        (_, 4) => warp_rows::<S, D, 1>(src, dst, g, 4, aff, sampling),
        (_, c) => warp_rows::<S, D, 1>(src, dst, g, c, aff, sampling),
    }
}

/// Copies `src` to `dst` with the flips applied (the warp is the identity).
pub(crate) fn copy_flipped<S: Texel, D: Store>(src: &[S], dst: &mut [D], g: Geometry) {
    let (w, c) = (g.w, g.c);
    for r in 0..g.h {
        let dr = if g.flip_v { g.h - 1 - r } else { r };
        let srow = &src[r * w * c..(r + 1) * w * c];
        let drow = &mut dst[dr * w * c..(dr + 1) * w * c];
        for col in 0..w {
            let o = if g.flip_h { (w - 1 - col) * c } else { col * c };
            for k in 0..c {
                drow[o + k] = D::store(srow[col * c + k].to_f32());
            }
        }
    }
}

#[inline(always)]
fn warp_rows<S: Texel, D: Store, const ORDER: u8>(
    src: &[S],
    dst: &mut [D],
    g: Geometry,
    c: usize,
    aff: &Affine,
    sampling: &Sampling,
) {
    let (h, w) = (g.h, g.w);
    let [[a00, a01], [a10, a11]] = aff.a;
    let [b0, b1] = aff.b;
    // Fast span: order 1 reads taps floor(v) and floor(v) + 1, so v < size - 1; order 0 reads
    // floor(v + 0.5), so v <= size - 1. Both need v >= 0 (negative values go through the fill).
    let (ylim, xlim) = ((h - 1) as f64, (w - 1) as f64);
    let inside = |v: f64, lim: f64| {
        if ORDER == 1 {
            v >= 0.0 && v < lim
        } else {
            v >= 0.0 && v <= lim
        }
    };
    let row_len = w * c;
    for r in 0..h {
        let dr = if g.flip_v { h - 1 - r } else { r };
        let drow = &mut dst[dr * row_len..(dr + 1) * row_len];
        let rf = r as f64;
        // scipy's order: ((r * a00) + (c * a01)) + b0.
        let (ry, rx) = (rf * a00, rf * a10);
        let coord = |col: usize| {
            let cf = col as f64;
            ((ry + cf * a01) + b0, (rx + cf * a11) + b1)
        };
        let (c0, c1) = fast_span(
            w,
            |col| {
                let (y, x) = coord(col);
                inside(y, ylim) && inside(x, xlim)
            },
            [ry + b0, rx + b1],
            [a01, a11],
            [ylim, xlim],
        );
        let out_at = |col: usize| if g.flip_h { (w - 1 - col) * c } else { col * c };
        for col in (0..c0).chain(c1..w) {
            let (y, x) = coord(col);
            let o = out_at(col);
            general::<S, D, ORDER>(src, &mut drow[o..o + c], g, c, y, x, sampling);
        }
        for col in c0..c1 {
            let (y, x) = coord(col);
            let o = out_at(col);
            let out = &mut drow[o..o + c];
            if ORDER == 1 {
                let (iy, ix) = (y as usize, x as usize);
                let ty = (y - iy as f64) as f32;
                let tx = (x - ix as f64) as f32;
                let p = (iy * w + ix) * c;
                let top = &src[p..p + 2 * c];
                let bot = &src[p + row_len..p + row_len + 2 * c];
                for k in 0..c {
                    let (a, b) = (top[k].to_f32(), top[c + k].to_f32());
                    let (cc, d) = (bot[k].to_f32(), bot[c + k].to_f32());
                    let t = a + (b - a) * tx;
                    let u = cc + (d - cc) * tx;
                    out[k] = D::store(t + (u - t) * ty);
                }
            } else {
                let (iy, ix) = ((y + 0.5) as usize, (x + 0.5) as usize);
                let p = (iy * w + ix) * c;
                for k in 0..c {
                    out[k] = D::store(src[p + k].to_f32());
                }
            }
        }
    }
}

/// The columns `[c0, c1)` of one output row for which `pred` holds (a contiguous set, because
/// both coordinates move monotonically along the row): estimated from the line equations, then
/// settled exactly with `pred` so the fast loop never reads out of bounds.
#[inline(always)]
fn fast_span(
    w: usize,
    pred: impl Fn(usize) -> bool,
    base: [f64; 2],
    step: [f64; 2],
    lim: [f64; 2],
) -> (usize, usize) {
    let (mut lo, mut hi) = (0.0f64, w as f64);
    for axis in 0..2 {
        let (b, s) = (base[axis], step[axis]);
        if s.abs() < 1e-12 {
            continue;
        }
        let (t0, t1) = ((0.0 - b) / s, (lim[axis] - b) / s);
        lo = lo.max(t0.min(t1).ceil() - 1.0);
        hi = hi.min(t0.max(t1).floor() + 2.0);
    }
    let mut c0 = lo.clamp(0.0, w as f64) as usize;
    let mut c1 = hi.clamp(0.0, w as f64) as usize;
    while c0 < c1 && !pred(c0) {
        c0 += 1;
    }
    while c1 > c0 && !pred(c1 - 1) {
        c1 -= 1;
    }
    (c0, c1)
}

/// One output pixel through scipy's general path: map each coordinate by the fill mode, `cval`
/// if the mapped value is `<= -1`, else interpolate with taps clamped into the image.
#[inline(always)]
fn general<S: Texel, D: Store, const ORDER: u8>(
    src: &[S],
    out: &mut [D],
    g: Geometry,
    c: usize,
    y: f64,
    x: f64,
    sampling: &Sampling,
) {
    let my = map_coordinate(y, g.h, sampling.fill_mode);
    let mx = map_coordinate(x, g.w, sampling.fill_mode);
    if !(my > -1.0 && mx > -1.0) {
        let v = sampling.cval as f32;
        out.iter_mut().for_each(|o| *o = D::store(v));
        return;
    }
    let clamp = |i: f64, n: usize| (i.max(0.0) as usize).min(n - 1);
    if ORDER == 0 {
        let p = (clamp((my + 0.5).floor(), g.h) * g.w + clamp((mx + 0.5).floor(), g.w)) * c;
        for k in 0..c {
            out[k] = D::store(src[p + k].to_f32());
        }
        return;
    }
    let (fy, fx) = (my.floor(), mx.floor());
    let (ty, tx) = ((my - fy) as f32, (mx - fx) as f32);
    let (y0, y1) = (clamp(fy, g.h), clamp(fy + 1.0, g.h));
    let (x0, x1) = (clamp(fx, g.w), clamp(fx + 1.0, g.w));
    let at = |yy: usize, xx: usize, k: usize| src[(yy * g.w + xx) * c + k].to_f32();
    for (k, o) in out.iter_mut().enumerate() {
        let t = at(y0, x0, k) + (at(y0, x1, k) - at(y0, x0, k)) * tx;
        let u = at(y1, x0, k) + (at(y1, x1, k) - at(y1, x0, k)) * tx;
        *o = D::store(t + (u - t) * ty);
    }
}

/// scipy.ndimage's `map_coordinate` (ni_interpolation.c): folds a coordinate outside
/// `[0, len - 1]` back in according to the mode; `constant` returns -1 (meaning: use cval).
pub(crate) fn map_coordinate(v: f64, len: usize, mode: FillMode) -> f64 {
    let n = len as i64;
    let last = (len - 1) as f64;
    if v < 0.0 {
        match mode {
            FillMode::Reflect if n <= 1 => 0.0,
            FillMode::Reflect => {
                let sz2 = 2 * n;
                let mut v = v;
                if v < -(sz2 as f64) {
                    v += (sz2 * ((-v / sz2 as f64) as i64)) as f64;
                }
                if v < -(n as f64) {
                    v + sz2 as f64
                } else {
                    -v - 1.0
                }
            }
            FillMode::Wrap if n <= 1 => 0.0,
            FillMode::Wrap => {
                let sz = n - 1;
                v + (sz * ((-v / sz as f64) as i64 + 1)) as f64
            }
            FillMode::Nearest => 0.0,
            FillMode::Constant => -1.0,
        }
    } else if v > last {
        match mode {
            FillMode::Reflect if n <= 1 => 0.0,
            FillMode::Reflect => {
                let sz2 = 2 * n;
                let v = v - (sz2 * ((v / sz2 as f64) as i64)) as f64;
                if v >= n as f64 {
                    sz2 as f64 - v - 1.0
                } else {
                    v
                }
            }
            FillMode::Wrap if n <= 1 => 0.0,
            FillMode::Wrap => {
                let sz = n - 1;
                v - (sz * ((v / sz as f64) as i64)) as f64
            }
            FillMode::Nearest => last,
            FillMode::Constant => -1.0,
        }
    } else {
        v
    }
}
