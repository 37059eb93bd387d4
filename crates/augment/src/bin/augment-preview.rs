//! `augment-preview`: writes a PNG grid of N augmentations of one image, like the book's figure of
//! Chollet's augmented cats. Defaults reproduce the seed notebook's generator.
//!
//! cargo run -p augment --bin augment-preview -- cat.jpg --n 8 --out preview.png --seed 1
//!
//! The image is decoded and resized by `dataset::decode`, as every stage decodes its images
//! (EXIF orientation applied, Pillow's nearest resize), so the tiles show what training sees.

use std::path::PathBuf;

use anyhow::{Context, Result};
use augment::{AugmentConfig, AugmentSpec, Compat, FillMode, ShiftRange, ZoomRange};
use clap::{ArgAction, Parser};
use dataset::{DecodeOptions, Interpolation, Size};
use image::{Rgb, RgbImage, imageops};

/// Write a grid of random augmentations of one image (Keras ImageDataGenerator semantics).
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Args {
    /// The image to augment (PNG, JPEG, BMP, GIF or WebP; decoded as the stages decode, EXIF
    /// orientation applied).
    image: PathBuf,
    /// Number of augmented tiles.
    #[arg(long, default_value_t = 8)]
    n: usize,
    /// Output PNG.
    #[arg(long, default_value = "preview.png")]
    out: PathBuf,
    /// Seed; tile k is image index k of epoch `--epoch`.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[arg(long, default_value_t = 0)]
    epoch: u64,
    /// Resize to this square size first (Keras target_size, nearest, as the stages resize); 0
    /// keeps the image as is.
    #[arg(long, default_value_t = 150)]
    size: u32,
    /// Tiles per row.
    #[arg(long, default_value_t = 4)]
    columns: usize,
    /// Show the unaugmented image as the first tile.
    #[arg(long)]
    with_original: bool,
    /// keras (keras-preprocessing 1.1.2) or book (Keras 2.0.8: shear in radians, nearest).
    #[arg(long, default_value = "keras")]
    compat: Compat,
    /// Rotation range, degrees.
    #[arg(long, default_value_t = 40.0)]
    rotation: f64,
    /// Width shift: a fraction of the width if < 1, else pixels.
    #[arg(long, default_value_t = 0.2)]
    width_shift: f64,
    /// Height shift: a fraction of the height if < 1, else pixels.
    #[arg(long, default_value_t = 0.2)]
    height_shift: f64,
    /// Shear range (degrees; radians with --compat book).
    #[arg(long, default_value_t = 0.2)]
    shear: f64,
    /// Zoom range z: zx, zy drawn independently from [1 - z, 1 + z].
    #[arg(long, default_value_t = 0.2)]
    zoom: f64,
    #[arg(long, default_value_t = true, action = ArgAction::Set)]
    horizontal_flip: bool,
    #[arg(long, default_value_t = false, action = ArgAction::Set)]
    vertical_flip: bool,
    /// constant, nearest, reflect or wrap.
    #[arg(long, default_value = "nearest")]
    fill: FillMode,
    /// Fill value for --fill constant.
    #[arg(long, default_value_t = 0.0)]
    cval: f64,
    /// 0 (nearest) or 1 (bilinear); default from --compat.
    #[arg(long)]
    order: Option<u8>,
    /// Brightness range as LO,HI (one value, e.g. `--brightness 0.5,1.5`).
    #[arg(long, value_name = "LO,HI", value_parser = parse_range)]
    brightness: Option<[f64; 2]>,
    /// Channel shift range (0-255 scale).
    #[arg(long, default_value_t = 0.0)]
    channel_shift: f64,
    /// An AugmentSpec JSON file; replaces every range flag above.
    #[arg(long)]
    spec: Option<PathBuf>,
}

fn main() -> std::process::ExitCode {
    // The workspace's logging and one-line `error: <chain>` (no backtrace), as every binary.
    cli_support::main(|| run(Args::parse()))
}

fn run(args: Args) -> Result<()> {
    let spec = match &args.spec {
        Some(path) => AugmentSpec::read(path)?,
        None => AugmentSpec {
            compat: args.compat,
            rotation_range: args.rotation,
            width_shift_range: ShiftRange::Float(args.width_shift),
            height_shift_range: ShiftRange::Float(args.height_shift),
            shear_range: args.shear,
            zoom_range: ZoomRange::Scalar(args.zoom),
            horizontal_flip: args.horizontal_flip,
            vertical_flip: args.vertical_flip,
            fill_mode: args.fill,
            cval: args.cval,
            interpolation_order: args.order,
            brightness_range: args.brightness,
            channel_shift_range: args.channel_shift,
            rescale: None,
        },
    };
    let config = AugmentConfig::new(spec).context("invalid augmentation settings")?;
    tracing::info!(spec = %config.canonical_json(), "augmenting");

    let decode = DecodeOptions {
        target_size: (args.size > 0).then(|| Size::square(args.size)),
        interpolation: Interpolation::Nearest,
        ..Default::default()
    };
    let img = dataset::decode(&args.image, &decode)?;
    let mut tiles: Vec<RgbImage> = Vec::new();
    if args.with_original {
        tiles.push(img.clone());
    }
    tiles.extend(
        (0..args.n as u64).map(|k| augment::augment(&config, args.seed, args.epoch, k, &img)),
    );
    let grid = grid(&tiles, args.columns.max(1), 4);
    grid.save_with_format(&args.out, image::ImageFormat::Png)
        .with_context(|| format!("could not write {}", args.out.display()))?;
    tracing::info!(tiles = tiles.len(), "wrote preview");
    println!("{}", args.out.display());
    Ok(())
}

/// `LO,HI`: two numbers separated by a comma.
fn parse_range(text: &str) -> Result<[f64; 2], String> {
    let parse = |s: &str| s.trim().parse::<f64>().map_err(|e| format!("{s:?}: {e}"));
    match text.split_once(',') {
        Some((lo, hi)) => Ok([parse(lo)?, parse(hi)?]),
        None => Err(format!("expected LO,HI (two numbers and a comma), got {text:?}")),
    }
}

/// Lays equal-sized tiles out in rows of `columns` with a white `gap`.
fn grid(tiles: &[RgbImage], columns: usize, gap: u32) -> RgbImage {
    let (tw, th) = tiles.first().map_or((1, 1), |t| t.dimensions());
    let cols = columns.min(tiles.len()).max(1) as u32;
    let rows = tiles.len().div_ceil(columns).max(1) as u32;
    let mut out = RgbImage::from_pixel(
        cols * (tw + gap) + gap,
        rows * (th + gap) + gap,
        Rgb([255, 255, 255]),
    );
    for (k, tile) in tiles.iter().enumerate() {
        let (c, r) = ((k % columns) as u32, (k / columns) as u32);
        imageops::replace(
            &mut out,
            tile,
            (gap + c * (tw + gap)) as i64,
            (gap + r * (th + gap)) as i64,
        );
    }
    out
}
