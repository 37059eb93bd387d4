//! The one-pass pull-map warp `out[p] = in[A p + b]` over all channels, with scipy.ndimage's
//! boundary rules (order 0 and 1), flips folded into the output addressing.
//!
//! Boundary rules, as `scipy.ndimage.affine_transform` (1.17) implements them for order <= 1:
//! each coordinate is first mapped into the image by the fill mode (`map_coordinate`); a mapped
//! value `<= -1` (always the case for `constant` outside `[0, size - 1]`) yields `cval`; otherwise
//! the 1 or 2 taps `floor(c)`, `floor(c) + 1` (order 1) or `floor(c + 0.5)` (order 0) are clamped
//! into the image. Order 0 computes coordinates in f64 in scipy's operation order, so nearest
//! rounding agrees pixel for pixel; weights and sums are f32 (within 1e-4 of scipy's f64 on a
//! 0-255 scale).
//!
//! Speed (about 60 instructions per output pixel): the source is first widened once to f32 with
//! every pixel padded to 4 lanes and one replicated column and row appended, so both taps of a row
//! pair are one contiguous load and the lerps run 4 wide. The sample point moves linearly along an
//! output row, so bilinear coordinates are stepped in 32.32 fixed point (drift < 2^-33 px per
//! step). With `nearest` fill (the Keras default) the whole row is one branch-free loop (the map is
//! a clamp); the other modes split each row into the span whose footprint lies inside the image
//! (found once per row) and the edges, which take the general, exact path.

use std::cell::RefCell;

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
    /// Saturate to `[0, 255]` and round to nearest, ties to even: adding 1.5 * 2^23 leaves the
    /// rounded integer in the low mantissa bits, far cheaper than a saturating float cast.
    #[inline(always)]
    fn store(v: f32) -> u8 {
        (v.clamp(0.0, 255.0) + 12_582_912.0).to_bits() as u8
    }
}

impl Store for f32 {
    #[inline(always)]
    fn store(v: f32) -> f32 {
        v
    }
}

/// Image geometry and the flips of one warp.
#[derive(Clone, Copy)]
pub(crate) struct Geometry {
    pub h: usize,
    pub w: usize,
    pub c: usize,
    pub flip_h: bool,
    pub flip_v: bool,
}

/// Per-thread buffers, reused from image to image.
struct Scratch {
    /// The source as f32, `cs` lanes per pixel, `(h + 1) x (w + 1)` pixels (last column and row
    /// replicated, so a tap pair never needs a clamp).
    src: Vec<f32>,
    /// One output row, `cs` lanes per pixel, before flipping and conversion.
    row: Vec<f32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = const { RefCell::new(Scratch { src: Vec::new(), row: Vec::new() }) };
}

/// The source layout: `cs` lanes per pixel (4 when `c <= 4`), `sw = w + 1` pixels per row.
#[derive(Clone, Copy)]
struct Layout {
    h: usize,
    w: usize,
    c: usize,
    cs: usize,
    sw: usize,
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
    SCRATCH.with_borrow_mut(|scratch| {
        let wide = g.c <= 4;
        let l = Layout { h: g.h, w: g.w, c: g.c, cs: if wide { 4 } else { g.c }, sw: g.w + 1 };
        resize(&mut scratch.src, (l.h + 1) * l.sw * l.cs);
        resize(&mut scratch.row, l.w * l.cs);
        // Literal channel counts let the compiler unroll the per-channel loops.
        match g.c {
            1 => widen(src, &mut scratch.src, Layout { c: 1, ..l }),
            3 => widen(src, &mut scratch.src, Layout { c: 3, cs: 4, ..l }),
            _ if wide => widen(src, &mut scratch.src, Layout { cs: 4, ..l }),
            _ => widen(src, &mut scratch.src, l),
        }
        let (s, row) = (&scratch.src[..], &mut scratch.row[..]);
        match (sampling.order, wide) {
            (0, true) => warp_rows::<D, 0, true>(s, row, dst, g, l, aff, sampling),
            (0, false) => warp_rows::<D, 0, false>(s, row, dst, g, l, aff, sampling),
            (_, true) => warp_rows::<D, 1, true>(s, row, dst, g, l, aff, sampling),
            (_, false) => warp_rows::<D, 1, false>(s, row, dst, g, l, aff, sampling),
        }
    })
}

/// Sizes a scratch buffer; one huge image does not pin its memory to the thread forever.
fn resize(buf: &mut Vec<f32>, n: usize) {
    if buf.len() != n {
        buf.clear();
        buf.shrink_to(n.max(1 << 20));
        buf.resize(n, 0.0);
    }
}

/// HWC into the padded f32 layout; pad lanes are 0.
#[inline(always)]
fn widen<S: Texel>(src: &[S], buf: &mut [f32], l: Layout) {
    let (c, cs, sw) = (l.c, l.cs, l.sw);
    for r in 0..l.h {
        let srow = &src[r * l.w * c..(r + 1) * l.w * c];
        let brow = &mut buf[r * sw * cs..(r + 1) * sw * cs];
        for (q, px) in brow.chunks_exact_mut(cs).zip(srow.chunks_exact(c)) {
            if cs == 4 {
                let mut v = [0.0f32; 4];
                for k in 0..c {
                    v[k] = px[k].to_f32();
                }
                q.copy_from_slice(&v);
            } else {
                q.iter_mut().zip(px).for_each(|(q, p)| *q = p.to_f32());
            }
        }
        brow.copy_within((l.w - 1) * cs..l.w * cs, l.w * cs);
    }
    buf.copy_within((l.h - 1) * sw * cs..l.h * sw * cs, l.h * sw * cs);
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

/// Warps every row into `row` (`cs` lanes per pixel), then packs it into its flipped place in `dst`.
#[inline(always)]
fn warp_rows<D: Store, const ORDER: u8, const WIDE: bool>(
    src: &[f32],
    row: &mut [f32],
    dst: &mut [D],
    g: Geometry,
    l: Layout,
    aff: &Affine,
    sampling: &Sampling,
) {
    let (h, w, c) = (l.h, l.w, l.c);
    let cs = if WIDE { 4 } else { l.cs };
    let [[a00, a01], [a10, a11]] = aff.a;
    let [b0, b1] = aff.b;
    // Fast span: order 1 reads taps floor(v) and floor(v) + 1, so v < size - 1 (minus a margin
    // for the fixed-point stepping); order 0 reads floor(v + 0.5), so v <= size - 1. Both need
    // v >= 0 (negative values go through the fill).
    let (ylim, xlim) = ((h - 1) as f64, (w - 1) as f64);
    let inside = |v: f64, lim: f64| {
        if ORDER == 1 { v >= FAST_EDGE && v < lim - FAST_EDGE } else { v >= 0.0 && v <= lim }
    };
    for r in 0..h {
        let rf = r as f64;
        // scipy's order: ((r * a00) + (c * a01)) + b0.
        let (ry, rx) = (rf * a00, rf * a10);
        let coord = |col: usize| {
            let cf = col as i64 as f64; // one instruction, unlike usize -> f64
            ((ry + cf * a01) + b0, (rx + cf * a11) + b1)
        };
        let line = Line { ry, rx, a01, a11, b0, b1 };
        let ((y0, x0), (y1, x1)) = (coord(0), coord(w - 1));
        let fixed_ok = [y0, x0, y1, x1].iter().all(|v| v.abs() < MAX_FIXED);
        if sampling.fill_mode == FillMode::Nearest && fixed_ok {
            nearest_span::<ORDER, WIDE>(src, row, l, &line, 0..w);
        } else {
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
            for col in (0..c0).chain(c1..w) {
                let (y, x) = coord(col);
                general::<ORDER, WIDE>(src, &mut row[col * cs..(col + 1) * cs], l, y, x, sampling);
            }
            // Inside the span the nearest-fill clamps never bite, so the same loop serves.
            nearest_span::<ORDER, WIDE>(src, row, l, &line, c0..c1);
        }
        let dr = if g.flip_v { h - 1 - r } else { r };
        let out = &mut dst[dr * w * c..(dr + 1) * w * c];
        match (c, cs) {
            (3, 4) => pack::<D, 3, 4>(row, out, g.flip_h),
            (1, 4) => pack::<D, 1, 4>(row, out, g.flip_h),
            (4, 4) => pack::<D, 4, 4>(row, out, g.flip_h),
            _ => pack_any(row, out, c, cs, g.flip_h),
        }
    }
}

/// One output row's sample line: `(y, x) = ((ry + col * a01) + b0, (rx + col * a11) + b1)`.
struct Line {
    ry: f64,
    rx: f64,
    a01: f64,
    a11: f64,
    b0: f64,
    b1: f64,
}

/// Output columns `cols` of one row with the sample point clamped into `[0, size - 1]`: exactly
/// scipy's `nearest` map, and a no-op on a fast span. Branch-free: the replicated pad column and
/// row stand in for the clamped far tap.
#[inline(always)]
fn nearest_span<const ORDER: u8, const WIDE: bool>(
    src: &[f32],
    row: &mut [f32],
    l: Layout,
    line: &Line,
    cols: std::ops::Range<usize>,
) {
    let (h, w, sw) = (l.h, l.w, l.sw);
    let cs = if WIDE { 4 } else { l.cs }; // a constant for the compiler when WIDE
    let &Line { ry, rx, a01, a11, b0, b1 } = line;
    let out = &mut row[cols.start * cs..cols.end * cs];
    if ORDER == 0 {
        // Exact f64 coordinates: nearest rounding must agree with scipy's at every pixel.
        let (ylim, xlim) = ((h - 1) as f64, (w - 1) as f64);
        let mut cf = cols.start as f64;
        for o in out.chunks_exact_mut(cs) {
            let (y, x) = ((ry + cf * a01) + b0, (rx + cf * a11) + b1);
            cf += 1.0;
            let iy = (y.max(0.0).min(ylim) + 0.5) as i64 as usize;
            let ix = (x.max(0.0).min(xlim) + 0.5) as i64 as usize;
            let p = (iy * sw + ix) * cs;
            o.copy_from_slice(&src[p..p + cs]);
        }
        return;
    }
    let cf = cols.start as f64;
    let (y, x) = ((ry + cf * a01) + b0, (rx + cf * a11) + b1);
    let (ymax, xmax) = (((h - 1) as i64) << 32, ((w - 1) as i64) << 32);
    let (mut yf, mut xf) = ((y * ONE).round() as i64, (x * ONE).round() as i64);
    let (dyf, dxf) = ((a01 * ONE).round() as i64, (a11 * ONE).round() as i64);
    let row_in = sw * cs;
    for o in out.chunks_exact_mut(cs) {
        let (yc, xc) = (yf.clamp(0, ymax), xf.clamp(0, xmax));
        yf += dyf;
        xf += dxf;
        let p = ((yc >> 32) as usize * sw + (xc >> 32) as usize) * cs;
        let ty = (yc as u32) as f32 * INV_ONE;
        let tx = (xc as u32) as f32 * INV_ONE;
        let (top, bot) = (&src[p..p + 2 * cs], &src[p + row_in..p + row_in + 2 * cs]);
        bilerp::<WIDE>([&top[..cs], &top[cs..], &bot[..cs], &bot[cs..]], tx, ty, o);
    }
}

/// One warped row (`CS` lanes per pixel) into its output row (`C` channels), mirrored if flipped.
#[inline(always)]
fn pack<D: Store, const C: usize, const CS: usize>(row: &[f32], out: &mut [D], flip: bool) {
    let w = out.len() / C;
    for (col, o) in out.chunks_exact_mut(C).enumerate() {
        let from = if flip { w - 1 - col } else { col };
        let v: &[f32; CS] = row[from * CS..from * CS + CS].try_into().unwrap();
        for k in 0..C {
            o[k] = D::store(v[k]);
        }
    }
}

/// [`pack`] for channel counts without a specialised copy.
fn pack_any<D: Store>(row: &[f32], out: &mut [D], c: usize, cs: usize, flip: bool) {
    let w = out.len() / c;
    for (col, o) in out.chunks_exact_mut(c).enumerate() {
        let from = if flip { w - 1 - col } else { col };
        o.iter_mut().zip(&row[from * cs..]).for_each(|(o, &v)| *o = D::store(v));
    }
}

/// Rows whose sample points stay within this many pixels of the image may use the fixed-point
/// loop (no i64 overflow when stepping); wilder ones take the general path.
const MAX_FIXED: f64 = (1u64 << 30) as f64;
/// 2^32, the scale of the fixed-point coordinates.
const ONE: f64 = 4_294_967_296.0;
const INV_ONE: f32 = 1.0 / 4_294_967_296.0;
/// Bilinear fast-span pixels keep their sample point this far (in pixels) from the edges of
/// `[0, size - 1]`, so fixed-point drift can never move a tap outside; the general path takes
/// the rest, exactly.
const FAST_EDGE: f64 = 1e-5;

/// The columns `[c0, c1)` of one output row for which `pred` holds (a contiguous set, because
/// both coordinates move monotonically along the row): estimated from the line equations, then
/// settled exactly with `pred`.
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
    let mut c1 = (hi.clamp(0.0, w as f64) as usize).max(c0);
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
fn general<const ORDER: u8, const WIDE: bool>(
    src: &[f32],
    out: &mut [f32],
    l: Layout,
    y: f64,
    x: f64,
    sampling: &Sampling,
) {
    let my = map_coordinate(y, l.h, sampling.fill_mode);
    let mx = map_coordinate(x, l.w, sampling.fill_mode);
    if !(my > -1.0 && mx > -1.0) {
        out.fill(sampling.cval as f32);
        return;
    }
    let clamp = |i: i64, n: usize| i.clamp(0, n as i64 - 1) as usize;
    let (cs, sw) = (if WIDE { 4 } else { l.cs }, l.sw);
    if ORDER == 0 {
        let (iy, ix) = (floor(my + 0.5) as i64, floor(mx + 0.5) as i64);
        let p = (clamp(iy, l.h) * sw + clamp(ix, l.w)) * cs;
        out.copy_from_slice(&src[p..p + cs]);
        return;
    }
    let (fy, fx) = (floor(my), floor(mx));
    let (ty, tx) = ((my - fy) as f32, (mx - fx) as f32);
    let (iy, ix) = (fy as i64, fx as i64);
    let (y0, y1) = (clamp(iy, l.h) * sw, clamp(iy + 1, l.h) * sw);
    let (x0, x1) = (clamp(ix, l.w), clamp(ix + 1, l.w));
    let tap = |p: usize| &src[p * cs..(p + 1) * cs];
    bilerp::<WIDE>([tap(y0 + x0), tap(y0 + x1), tap(y1 + x0), tap(y1 + x1)], tx, ty, out);
}

/// Bilinear blend of the four taps `[top-left, top-right, bottom-left, bottom-right]` (each `cs`
/// lanes) into `out` (`cs` lanes); 4 lanes at once when `WIDE`.
#[inline(always)]
fn bilerp<const WIDE: bool>(taps: [&[f32]; 4], tx: f32, ty: f32, out: &mut [f32]) {
    let [a, b, c, d] = taps;
    if WIDE {
        let (a, b): (&[f32; 4], &[f32; 4]) = (a.try_into().unwrap(), b.try_into().unwrap());
        let (c, d): (&[f32; 4], &[f32; 4]) = (c.try_into().unwrap(), d.try_into().unwrap());
        let out: &mut [f32; 4] = out.try_into().unwrap();
        for k in 0..4 {
            let t = a[k] + (b[k] - a[k]) * tx;
            let u = c[k] + (d[k] - c[k]) * tx;
            out[k] = t + (u - t) * ty;
        }
    } else {
        for (k, o) in out.iter_mut().enumerate() {
            let t = a[k] + (b[k] - a[k]) * tx;
            let u = c[k] + (d[k] - c[k]) * tx;
            *o = t + (u - t) * ty;
        }
    }
}

/// `f64::floor` without the libm call that baseline x86-64 (no SSE4.1) makes of it; `v` is a
/// mapped coordinate, far inside the i64 range.
#[inline(always)]
fn floor(v: f64) -> f64 {
    let t = v as i64 as f64;
    if t > v { t - 1.0 } else { t }
}

/// scipy.ndimage's `map_coordinate` (ni_interpolation.c): folds a coordinate outside
/// `[0, len - 1]` back in according to the mode; `constant` returns -1 (meaning: use cval).
#[inline(always)]
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
                if v < -(n as f64) { v + sz2 as f64 } else { -v - 1.0 }
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
                if v >= n as f64 { sz2 as f64 - v - 1.0 } else { v }
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
