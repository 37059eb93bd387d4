//! Decoding: the one colour rule to RGB8 for every input type, EXIF orientation, the extension
//! check, and resizing (PIL nearest, bilinear, Keras' aspect crop).

use dataset::decode::{aspect_crop_box, resize};
use dataset::{DecodeOptions, Interpolation, Size, decode, decode_with_info};
use image::{DynamicImage, ImageBuffer, ImageFormat, Rgb, RgbImage};

use crate::fixtures::*;

/// Decodes `bytes` saved as `name` (no resize) and compares the top-left pixel, within `tol`.
fn check(name: &str, bytes: &[u8], expect: [u8; 3], tol: u8) {
    let (_dir, path) = one_file(name, bytes);
    let img = decode(&path, &DecodeOptions::default()).unwrap();
    let got = img.get_pixel(0, 0).0;
    for c in 0..3 {
        assert!(
            got[c].abs_diff(expect[c]) <= tol,
            "{name}: got {got:?}, expected {expect:?} +-{tol}"
        );
    }
}

#[test]
fn gray_is_replicated() {
    check("g.png", &encode(&gray(77), ImageFormat::Png), [77, 77, 77], 0);
}

#[test]
fn gray_alpha_drops_alpha() {
    check("ga.png", &encode(&gray_alpha(200, 0), ImageFormat::Png), [200, 200, 200], 0);
}

#[test]
fn rgba_drops_alpha_without_compositing() {
    check("c.png", &encode(&rgba([10, 20, 30, 0]), ImageFormat::Png), [10, 20, 30], 0);
}

#[test]
fn palette_is_expanded() {
    let png = png_palette([250, 0, 5], [0, 9, 200]);
    let (_dir, path) = one_file("p.png", &png);
    let img = decode(&path, &DecodeOptions::default()).unwrap();
    assert_eq!(img.get_pixel(0, 0).0, [250, 0, 5]);
    assert_eq!(img.get_pixel(1, 0).0, [0, 9, 200]);
}

#[test]
fn sixteen_bit_is_scaled_not_clipped() {
    check("w.png", &encode(&rgb16([65535, 32768, 257]), ImageFormat::Png), [255, 128, 1], 0);
    check("g16.png", &encode(&gray16(1000), ImageFormat::Png), [4, 4, 4], 0);
}

#[test]
fn cmyk_jpeg_becomes_rgb() {
    // No cyan, full magenta and yellow, no black: red.
    check("cmyk.jpg", &jpeg_cmyk([0, 255, 255, 0]), [255, 0, 0], 8);
    check("k.jpg", &jpeg_cmyk([0, 0, 0, 128]), [127, 127, 127], 8);
}

#[test]
fn gif_gives_its_first_frame() {
    use image::codecs::gif::GifEncoder;
    use image::{Delay, Frame, RgbaImage};
    let frame = |px| {
        Frame::from_parts(
            RgbaImage::from_pixel(4, 4, image::Rgba(px)),
            0,
            0,
            Delay::from_numer_denom_ms(100, 1),
        )
    };
    let mut gif = Vec::new();
    GifEncoder::new(&mut gif)
        .encode_frames([frame([255, 0, 0, 255]), frame([0, 0, 255, 255])])
        .unwrap();
    check("anim.gif", &gif, [255, 0, 0], 0);
}

#[test]
fn bmp_and_webp_decode_exactly() {
    let img = coords(5, 3, 9);
    check("a.bmp", &encode(&img, ImageFormat::Bmp), [0, 0, 9], 0);
    check("a.webp", &encode(&img, ImageFormat::WebP), [0, 0, 9], 0);
}

#[test]
fn exif_orientation_is_applied() {
    // 16x8, left half black, right half white; orientation 6 = rotate 90 degrees clockwise,
    // which puts the left half on top.
    let img: RgbImage =
        ImageBuffer::from_fn(16, 8, |x, _| if x < 8 { Rgb([0, 0, 0]) } else { Rgb([255; 3]) });
    let jpeg = encode(&DynamicImage::ImageRgb8(img), ImageFormat::Jpeg);
    let (_dir, path) = one_file("rot.jpg", &with_exif_orientation(&jpeg, 6));
    let out = decode(&path, &DecodeOptions::default()).unwrap();
    assert_eq!(out.dimensions(), (8, 16));
    assert!(out.get_pixel(4, 2).0[0] < 40, "top should be black: {:?}", out.get_pixel(4, 2));
    assert!(out.get_pixel(4, 13).0[0] > 215, "bottom should be white: {:?}", out.get_pixel(4, 13));
}

#[test]
fn content_decides_format_and_a_wrong_extension_is_reported() {
    let (_dir, path) = one_file("really-a-png.jpg", &png_rgb(3, 3, 1));
    let (img, info) = decode_with_info(&path, &DecodeOptions::default()).unwrap();
    assert_eq!(img.dimensions(), (3, 3));
    assert_eq!((info.format.as_str(), info.extension_mismatch), ("png", true));
    let (_dir, path) = one_file("fine.png", &png_rgb(3, 3, 1));
    assert!(!decode_with_info(&path, &DecodeOptions::default()).unwrap().1.extension_mismatch);
}

/// Resizes the coordinate image (pixel = (x, y, 0)) and renders the sampled coordinates.
fn check_resize(w: u32, h: u32, size: Size, crop: bool, expect: &str) {
    let src = coords(w, h, 0).into_rgb8();
    let out = resize(&src, size, Interpolation::Nearest, crop);
    let rows: Vec<String> = (0..out.height())
        .map(|y| {
            (0..out.width())
                .map(|x| {
                    let p = out.get_pixel(x, y).0;
                    format!("{},{}", p[0], p[1])
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    assert_eq!(rows.join(" / "), expect);
}

#[test]
fn nearest_downscale_samples_pixel_centres_like_pil() {
    check_resize(4, 4, Size::square(2), false, "1,1 3,1 / 1,3 3,3");
}

#[test]
fn nearest_upscale_like_pil() {
    // floor((x + 0.5) * 2 / 5) = 0 0 1 1 1
    check_resize(2, 1, Size::new(1, 5), false, "0,0 0,0 1,0 1,0 1,0");
}

#[test]
fn nearest_with_aspect_crop_takes_the_centre() {
    // 8x4 to a square: crop box x 2..6, then 2 samples at 3 and 5.
    check_resize(8, 4, Size::square(2), true, "3,1 5,1 / 3,3 5,3");
}

#[test]
fn aspect_crop_box_matches_keras() {
    assert_eq!(aspect_crop_box(200, 100, Size::square(150)), (50, 0, 100, 100));
    assert_eq!(aspect_crop_box(100, 200, Size::square(150)), (0, 50, 100, 100));
    assert_eq!(aspect_crop_box(640, 480, Size::new(150, 300)), (0, 80, 640, 320));
    assert_eq!(aspect_crop_box(33, 33, Size::square(7)), (0, 0, 33, 33));
}

#[test]
fn bilinear_keeps_flat_images_flat_and_averages() {
    let flat = RgbImage::from_pixel(7, 5, Rgb([40, 80, 120]));
    let out = resize(&flat, Size::new(11, 3), Interpolation::Bilinear, false);
    assert!(out.pixels().all(|p| p.0 == [40, 80, 120]));
    // 4 -> 2 with a triangle filter of support 2: weights 1/8 3/8 3/8 1/8 around x = 1 and 3.
    let src = coords(4, 1, 0).into_rgb8();
    let out = resize(&src, Size::new(1, 2), Interpolation::Bilinear, false);
    let xs: Vec<f32> = out.pixels().map(|p| f32::from(p.0[0])).collect();
    assert!((xs[0] - 1.0).abs() <= 1.0 && (xs[1] - 2.0).abs() <= 1.0, "{xs:?}");
}

#[test]
fn decode_resizes_to_target_size() {
    let (_dir, path) = one_file("a.png", &png_rgb(28, 28, 3));
    for interpolation in [Interpolation::Nearest, Interpolation::Bilinear] {
        let opts = DecodeOptions {
            target_size: Some(Size::new(150, 120)),
            interpolation,
            ..Default::default()
        };
        let img = decode(&path, &opts).unwrap();
        assert_eq!(img.dimensions(), (120, 150));
    }
}
