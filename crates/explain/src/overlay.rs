//! Drawing a Grad-CAM heatmap over its image, as Chollet's *Deep Learning with Python* 5.4.3
//! does: the heatmap resized (bilinear) to the image, quantised to 256 levels
//! (`np.uint8(255 * heatmap)`), coloured with the jet colormap and added to the image at 0.4
//! (`superimposed_img = heatmap * 0.4 + img`), clipped to 0-255. The image is the one the model
//! sees: decoded and resized exactly as for the network's input.

use anyhow::{Context, Result, ensure};
use image::{ImageEncoder, RgbImage};
use tch::{Device, Kind, Tensor};

/// Weight of the coloured heatmap added to the image (Chollet's `heatmap * 0.4 + img`).
pub const HEATMAP_WEIGHT: f32 = 0.4;

/// heatmap `[h, w]` (values in `[0, 1]`) -> `height * width` values, row-major, resized
/// bilinearly with half-pixel centres (libtorch `upsample_bilinear2d`, `align_corners = false`:
/// the sampling of OpenCV's `cv2.resize` `INTER_LINEAR`, which Chollet uses), clamped to
/// `[0, 1]`.
pub fn upsample(heatmap: &Tensor, height: usize, width: usize) -> Result<Vec<f32>> {
    ensure!(heatmap.dim() == 2, "a heatmap is [h, w], got {:?}", heatmap.size());
    let resized = heatmap
        .f_to_device(Device::Cpu)?
        .f_to_kind(Kind::Float)?
        .f_view([1, 1, heatmap.size()[0], heatmap.size()[1]])?
        .f_upsample_bilinear2d([height as i64, width as i64], false, None, None)?
        .f_clamp(0.0, 1.0)?
        .f_contiguous()?;
    Ok(Vec::try_from(resized.f_view([-1])?)?)
}

/// `(row, col)` of the largest value of a row-major `width`-wide grid (the first on ties), or
/// `None` when every value is 0 or the grid is empty.
pub fn argmax(values: &[f32], width: usize) -> Option<(usize, usize)> {
    let (best, &max) = values
        .iter()
        .enumerate()
        .fold((0, values.first()?), |(bi, bv), (i, v)| if *v > *bv { (i, v) } else { (bi, bv) });
    (max > 0.0).then_some((best / width, best % width))
}

/// Matplotlib's `jet` colormap (`_jet_data`: piecewise-linear red, green and blue over `[0, 1]`)
/// at `x`, each channel in `[0, 1]`.
pub fn jet(x: f32) -> [f32; 3] {
    const RED: &[(f32, f32)] = &[(0.0, 0.0), (0.35, 0.0), (0.66, 1.0), (0.89, 1.0), (1.0, 0.5)];
    const GREEN: &[(f32, f32)] =
        &[(0.0, 0.0), (0.125, 0.0), (0.375, 1.0), (0.64, 1.0), (0.91, 0.0), (1.0, 0.0)];
    const BLUE: &[(f32, f32)] = &[(0.0, 0.5), (0.11, 1.0), (0.34, 1.0), (0.65, 0.0), (1.0, 0.0)];
    let x = x.clamp(0.0, 1.0);
    let channel = |points: &[(f32, f32)]| {
        let i = points.iter().position(|&(px, _)| px >= x).unwrap_or(points.len() - 1).max(1);
        let ((x0, y0), (x1, y1)) = (points[i - 1], points[i]);
        y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    };
    [channel(RED), channel(GREEN), channel(BLUE)]
}

/// The jet colour (0-255 per channel) of a heatmap value in `[0, 1]`, quantised first to one of
/// 256 levels as Chollet does (`np.uint8(255 * heatmap)`: truncation), so level `l` is jet at
/// `l / 255`, matplotlib's 256-entry lookup table.
pub fn heat_colour(value: f32) -> [f32; 3] {
    let level = (255.0 * value.clamp(0.0, 1.0)).floor();
    jet(level / 255.0).map(|c| c * 255.0)
}

/// `image` with the heatmap drawn over it: each pixel `clip(HEATMAP_WEIGHT * jet(heat) + pixel,
/// 0, 255)` (rounded). `heat`: `image.height() * image.width()` values in `[0, 1]`, row-major
/// ([`upsample`]).
pub fn overlay(image: &RgbImage, heat: &[f32]) -> Result<RgbImage> {
    let (width, height) = image.dimensions();
    ensure!(
        heat.len() == width as usize * height as usize,
        "{} heatmap values for a {width}x{height} image",
        heat.len()
    );
    let mut out = image.clone();
    for (pixel, &value) in out.pixels_mut().zip(heat) {
        let colour = heat_colour(value);
        for (channel, c) in pixel.0.iter_mut().zip(colour) {
            *channel = (HEATMAP_WEIGHT * c + f32::from(*channel)).round().clamp(0.0, 255.0) as u8;
        }
    }
    Ok(out)
}

/// The PNG bytes of an RGB image.
pub fn encode_png(image: &RgbImage) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    image::codecs::png::PngEncoder::new(&mut bytes)
        .write_image(image.as_raw(), image.width(), image.height(), image::ExtendedColorType::Rgb8)
        .context("encoding the PNG")?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jet_runs_from_dark_blue_through_green_to_dark_red() {
        assert_eq!(jet(0.0), [0.0, 0.0, 0.5]);
        assert_eq!(jet(1.0), [0.5, 0.0, 0.0]);
        let mid = jet(0.5);
        assert!(mid[1] == 1.0 && mid[0] > 0.4 && mid[0] < 0.6 && mid[2] > 0.4 && mid[2] < 0.6);
        // Matplotlib's jet(0.25) is (0, 0.5, 1).
        let q = jet(0.25);
        assert!((q[0]).abs() < 1e-6 && (q[1] - 0.5).abs() < 1e-6 && (q[2] - 1.0).abs() < 1e-6);
    }

    #[test]
    fn overlay_adds_the_weighted_colour_and_clips() {
        let image = RgbImage::from_raw(2, 1, vec![10, 20, 30, 250, 250, 250]).unwrap();
        let out = overlay(&image, &[0.0, 1.0]).unwrap();
        // jet(0) = (0, 0, 127.5) * 0.4 = 51; jet(1) = (127.5, 0, 0) * 0.4 = 51.
        assert_eq!(out.as_raw(), &[10, 20, 81, 255, 250, 250]);
        assert!(overlay(&image, &[0.0]).is_err());
    }

    #[test]
    fn upsampling_keeps_a_peak_in_place_and_argmax_finds_it() {
        let map = Tensor::from_slice(&[0.0f32, 0.0, 0.0, 1.0]).view([2, 2]);
        let heat = upsample(&map, 8, 8).unwrap();
        assert_eq!(heat.len(), 64);
        let (row, col) = argmax(&heat, 8).unwrap();
        assert!(row >= 4 && col >= 4, "({row}, {col})");
        assert_eq!(argmax(&[0.0; 4], 2), None);
        assert_eq!(argmax(&[0.0, 0.5, 0.5, 0.1], 2), Some((0, 1)));
    }
}
