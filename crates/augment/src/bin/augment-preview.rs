//! `augment-preview`: writes a PNG grid of N augmentations of one image, like the book's figure of
//! Chollet's augmented cats. Defaults reproduce the seed notebook's generator.
//!
//! cargo run -p augment --bin augment-preview -- cat.jpg --n 8 --out preview.png --seed 1

use std::path::PathBuf;

use anyhow::{Context, Result};
use augment::{AugmentConfig, AugmentSpec, Compat, FillMode, ShiftRange, ZoomRange};
use clap::{ArgAction, Parser};
use image::{Rgb, RgbImage, imageops};

/// Write a grid of random augmentations of one image (Keras ImageDataGenerator semantics).
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Args {
    /// The image to augment (any format the `image` crate decodes).
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
    /// Resize to this square size first (Keras target_size, nearest); 0 keeps the image as is.
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
    /// Brightness range as LO,HI.
    #[arg(long, value_delimiter = ',', num_args = 2)]
    brightness: Option<Vec<f64>>,
    /// Channel shift range (0-255 scale).
    #[arg(long, default_value_t = 0.0)]
    channel_shift: f64,
    /// An AugmentSpec JSON file; replaces every range flag above.
    #[arg(long)]
    spec: Option<PathBuf>,
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
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
            brightness_range: args.brightness.as_deref().map(|b| [b[0], b[1]]),
            channel_shift_range: args.channel_shift,
            rescale: None,
        },
    };
    let config = AugmentConfig::new(spec).context("invalid augmentation settings")?;
    tracing::info!(spec = %config.canonical_json(), "augmenting");

    let img = image::open(&args.image)
        .with_context(|| format!("could not decode {}", args.image.display()))?
        .to_rgb8();
    let img = if args.size > 0 {
        imageops::resize(&img, args.size, args.size, imageops::FilterType::Nearest)
    } else {
        img
    };
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
