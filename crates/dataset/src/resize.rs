//! Resizing exactly as Pillow does it (what Keras `load_img` calls), on interleaved 8-bit
//! pixels with any channel count, so gray images can be resized before becoming RGB.
//!
//! - Nearest: Pillow's affine fast path. The source coordinate of output `x` is accumulated in
//!   double precision, `xo = s/2, s/2 + s, ...` with `s = in / out`, and truncated. Computing
//!   `floor((x + 0.5) * s)` directly differs from Pillow at exact halves (1,092 of 6,724 size pairs
//!   up to 80 px), so the accumulation is reproduced.
//! - Bilinear: Pillow's separable convolution (`Resample.c`): triangle filter of support
//!   `max(1, in/out)` (so shrinking antialiases), weights normalised then rounded to 22-bit fixed
//!   point, horizontal pass first with results rounded to 8 bits, then vertical.
//!
//! Both are bit-exact with Pillow 13 on the goldens in the tests. An optional crop box (Keras'
//! aspect-ratio crop) is applied first, as Keras crops before resizing.

/// A source region: `(x, y, width, height)`.
pub type Region = (u32, u32, u32, u32);

/// Resizes the `region` of a `width`-wide image with `channels` interleaved channels to
/// `out_w` x `out_h`, nearest neighbour.
pub fn nearest(
    src: &[u8],
    width: u32,
    channels: usize,
    region: Region,
    out_w: u32,
    out_h: u32,
) -> Vec<u8> {
    let (x0, y0, cw, ch) = region;
    let xs = nearest_map(cw, out_w, x0);
    let ys = nearest_map(ch, out_h, y0);
    let in_stride = width as usize * channels;
    let out_stride = out_w as usize * channels;
    let mut out = vec![0u8; out_stride * out_h as usize];
    let mut prev: Option<(usize, usize)> = None;
    for (oy, &sy) in ys.iter().enumerate() {
        let start = oy * out_stride;
        // Upscaling repeats source rows: copy the finished row instead of sampling it again.
        if let Some((py, prow)) = prev
            && py == sy
        {
            out.copy_within(prow..prow + out_stride, start);
            continue;
        }
        let row = &src[sy * in_stride..(sy + 1) * in_stride];
        let dst = &mut out[start..start + out_stride];
        if channels == 1 {
            for (o, &sx) in dst.iter_mut().zip(&xs) {
                *o = row[sx];
            }
        } else {
            for (o, &sx) in dst.chunks_exact_mut(channels).zip(&xs) {
                o.copy_from_slice(&row[sx * channels..(sx + 1) * channels]);
            }
        }
        prev = Some((sy, start));
    }
    out
}

/// Pillow's pretabulated nearest positions (`ImagingScaleAffine`), offset by the crop.
fn nearest_map(in_size: u32, out_size: u32, offset: u32) -> Vec<usize> {
    let step = f64::from(in_size) / f64::from(out_size);
    let mut xo = step * 0.5;
    (0..out_size)
        .map(|_| {
            let x = (xo as u32).min(in_size - 1); // xo >= 0: truncation is Pillow's COORD
            xo += step;
            (offset + x) as usize
        })
        .collect()
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Fixed-point filter weights for one axis: for each output position the first input index
/// (relative to the region), the number of taps and `ksize` weights.
struct Coeffs {
    bounds: Vec<(usize, usize)>,
    weights: Vec<i32>,
    ksize: usize,
}

/// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for the bilinear (triangle) filter.
fn bilinear_coeffs(in_size: usize, out_size: usize) -> Coeffs {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filterscale; // the triangle filter's support is 1
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut weights = vec![0i32; out_size * ksize];
    let mut k = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize - xmin;
        let mut ww = 0.0;
        for (x, kx) in k.iter_mut().enumerate().take(xmax) {
            let d = ((x + xmin) as f64 - center + 0.5) * ss;
            let w = (1.0 - d.abs()).max(0.0);
            *kx = w;
            ww += w;
        }
        for (x, &kx) in k.iter().enumerate().take(xmax) {
            let kx = if ww != 0.0 { kx / ww } else { kx };
            let scaled = kx * f64::from(1u32 << PRECISION_BITS);
            weights[xx * ksize + x] =
                if kx < 0.0 { (scaled - 0.5) as i32 } else { (scaled + 0.5) as i32 };
        }
        bounds.push((xmin, xmax));
    }
    Coeffs { bounds, weights, ksize }
}

fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Pillow's bilinear resize of the `region` of a `width`-wide image to `out_w` x `out_h`.
pub fn bilinear(
    src: &[u8],
    width: u32,
    channels: usize,
    region: Region,
    out_w: u32,
    out_h: u32,
) -> Vec<u8> {
    let (x0, y0, cw, ch) = region;
    let (x0, y0, cw, ch) = (x0 as usize, y0 as usize, cw as usize, ch as usize);
    let (out_w, out_h) = (out_w as usize, out_h as usize);
    let in_stride = width as usize * channels;
    let half = 1i32 << (PRECISION_BITS - 1);

    // Horizontal pass over the region's rows (skipped, as in Pillow, when the width is kept).
    let (tmp, tmp_stride, tmp_x0) = if out_w != cw {
        let c = bilinear_coeffs(cw, out_w);
        let stride = out_w * channels;
        let mut tmp = vec![0u8; stride * ch];
        for y in 0..ch {
            let row = &src[(y0 + y) * in_stride..(y0 + y + 1) * in_stride];
            let dst = &mut tmp[y * stride..(y + 1) * stride];
            for (xx, &(xmin, n)) in c.bounds.iter().enumerate() {
                let k = &c.weights[xx * c.ksize..xx * c.ksize + n];
                for ch_i in 0..channels {
                    let mut acc = half;
                    for (t, &w) in k.iter().enumerate() {
                        acc += i32::from(row[(x0 + xmin + t) * channels + ch_i]) * w;
                    }
                    dst[xx * channels + ch_i] = clip8(acc);
                }
            }
        }
        (std::borrow::Cow::Owned(tmp), stride, 0)
    } else {
        (std::borrow::Cow::Borrowed(&src[y0 * in_stride..(y0 + ch) * in_stride]), in_stride, x0)
    };

    let row_len = out_w * channels;
    if out_h == ch {
        let mut out = Vec::with_capacity(row_len * out_h);
        for y in 0..ch {
            let start = y * tmp_stride + tmp_x0 * channels;
            out.extend_from_slice(&tmp[start..start + row_len]);
        }
        return out;
    }
    // Vertical pass: whole rows at a time, so the inner loop runs along contiguous memory.
    let c = bilinear_coeffs(ch, out_h);
    let mut out = vec![0u8; row_len * out_h];
    let mut acc = vec![0i32; row_len];
    for (yy, &(ymin, n)) in c.bounds.iter().enumerate() {
        acc.fill(half);
        for (t, &w) in c.weights[yy * c.ksize..yy * c.ksize + n].iter().enumerate() {
            let start = (ymin + t) * tmp_stride + tmp_x0 * channels;
            for (a, &p) in acc.iter_mut().zip(&tmp[start..start + row_len]) {
                *a += i32::from(p) * w;
            }
        }
        for (o, &a) in out[yy * row_len..(yy + 1) * row_len].iter_mut().zip(&acc) {
            *o = clip8(a);
        }
    }
    out
}
