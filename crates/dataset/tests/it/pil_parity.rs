//! Resizing is bit-exact with Pillow (what Keras `load_img` uses). Goldens: sha256 of Pillow
//! 13.0.0's `Image.resize` output for a fixed pattern, computed once with
//! `Image.fromarray(pattern).resize((w, h), NEAREST | BILINEAR)`, and for Keras'
//! crop-then-resize (`keep_aspect_ratio=True`).

use dataset::Size;
use dataset::decode::aspect_crop_box;
use dataset::resize::{bilinear, nearest};
use run_folder::sha256_hex;

/// The pattern the goldens were made from: `(37x + 11y + 101c + 7xy) mod 256`.
fn pattern(w: u32, h: u32, channels: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity((w * h) as usize * channels);
    for y in 0..u64::from(h) {
        for x in 0..u64::from(w) {
            for c in 0..channels as u64 {
                v.push(((x * 37 + y * 11 + c * 101 + x * y * 7) % 256) as u8);
            }
        }
    }
    v
}

type Resize = fn(&[u8], u32, usize, (u32, u32, u32, u32), u32, u32) -> Vec<u8>;

fn check(name: &str, (w, h, c): (u32, u32, usize), (ow, oh): (u32, u32), golden: &str) {
    let f: Resize = if name == "nearest" { nearest } else { bilinear };
    let out = f(&pattern(w, h, c), w, c, (0, 0, w, h), ow, oh);
    assert_eq!(out.len(), (ow * oh) as usize * c);
    assert_eq!(sha256_hex(&out), golden, "{name} {w}x{h}x{c} -> {ow}x{oh}");
}

#[test]
fn small_bilinear_values() {
    let out = bilinear(&pattern(7, 5, 3), 7, 3, (0, 0, 7, 5), 3, 2);
    assert_eq!(
        out,
        [49, 150, 121, 136, 159, 93, 142, 99, 153, 83, 167, 120, 149, 113, 142, 95, 147, 110]
    );
}

#[test]
fn shrink_both_axes() {
    check(
        "nearest",
        (7, 5, 3),
        (3, 2),
        "15684b76a24952da68137261e0b93c4dcf3f51775299e19bf1519125f36ad6c3",
    );
    check(
        "bilinear",
        (7, 5, 3),
        (3, 2),
        "bddb2c1f42e991e336d705a6604112f80c8d69ed870c48cb5ce5ce3448e1a015",
    );
    check(
        "nearest",
        (640, 480, 3),
        (150, 150),
        "693d12eb0ce2d88b7731665f15248af5ea40f3b9f671c471ee78009ecdb05f9d",
    );
    check(
        "bilinear",
        (640, 480, 3),
        (150, 150),
        "bd685aad144a19ffa71f0a34a9c2cf8f8a6508e7ec631e3adc6b14d86f0b8904",
    );
}

#[test]
fn grow_both_axes() {
    check(
        "nearest",
        (7, 5, 3),
        (11, 9),
        "7d672ecd42d417dc74ce9d6e1855b76630b4045ef51ff5020d945123a6b551b6",
    );
    check(
        "bilinear",
        (7, 5, 3),
        (11, 9),
        "c9f18019c6ab600855ed30f5e95d22a0b4c26d75b16d2c41dfc3b9c9c89811c7",
    );
}

#[test]
fn demo_size_gray_and_rgb() {
    check(
        "nearest",
        (28, 28, 1),
        (150, 150),
        "70e03013d27594dc80eece436b1f8ee1bcd1e239834847290f131ea32b48f5fe",
    );
    check(
        "bilinear",
        (28, 28, 1),
        (150, 150),
        "29b63c02b6cf4a8b6d9b788d2d44f0e14bf55aa5aeec5a0e9d9d91316a4d28c1",
    );
    check(
        "nearest",
        (28, 28, 3),
        (150, 150),
        "ef23b75fee033df0d7704a91dabe5e89295dc39ba68667b88f0af8470c3dfbe1",
    );
    check(
        "bilinear",
        (28, 28, 3),
        (150, 150),
        "f168bbeadaa72e9c88d748c1e0b938475e4d5f9eadcabc83301c07e91640015a",
    );
}

#[test]
fn one_axis_only() {
    check(
        "nearest",
        (7, 5, 3),
        (7, 8),
        "f54adc3383164d95ebf58f8e6354c81bd2b10dcd7c1364700c6725e21e835e30",
    );
    check(
        "bilinear",
        (7, 5, 3),
        (7, 8),
        "6d9d1925968f9ee374ab125d7858abd72ce918b58f3f8400d2a3afc330764c4b",
    );
    check(
        "nearest",
        (7, 5, 3),
        (4, 5),
        "a12a6576ca57deceb867de1ca435e049024ba2c9058c7db1d5edbf2eb6b578fd",
    );
    check(
        "bilinear",
        (7, 5, 3),
        (4, 5),
        "b052a671a655785c1142dbdb0af7728e368e3d12cca6b0f7a1581c01effd2330",
    );
}

#[test]
fn mixed_shrink_and_grow() {
    check(
        "nearest",
        (33, 17, 1),
        (5, 40),
        "90041da80217a4c06f1984086000bfd40669ecf5c2156c2868c3c05be54faefb",
    );
    check(
        "bilinear",
        (33, 17, 1),
        (5, 40),
        "8fafdee3bf7ecd26ee041addc2ce3ebc64b22022377ac95ef8235fc2777613ae",
    );
}

#[test]
fn same_size_is_identity() {
    let golden = "b2306a31392c4bd0c78c5f385141f5abe86f3404b311989a54144d2c51f3314b";
    check("nearest", (150, 150, 3), (150, 150), golden);
    check("bilinear", (150, 150, 3), (150, 150), golden);
    assert_eq!(sha256_hex(&pattern(150, 150, 3)), golden);
}

#[test]
fn keras_crop_then_resize() {
    let src = pattern(64, 40, 3);
    let region = aspect_crop_box(64, 40, Size::square(30));
    let n = nearest(&src, 64, 3, region, 30, 30);
    let b = bilinear(&src, 64, 3, region, 30, 30);
    assert_eq!(sha256_hex(&n), "4bd3bfa3d3cc210e17b21696bcef18ef8fc36ca06ba4c616181704fbc1720766");
    assert_eq!(sha256_hex(&b), "10707eb00935b3db12912148bc7116c64aa25a5ac9939f909469fc591962435b");
}
