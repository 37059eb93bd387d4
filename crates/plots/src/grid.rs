//! Captioned image grids: pictures in rows of `columns`, each with a few lines of text under it,
//! the layout of fastai's `plot_top_losses` (the images a model got most confidently wrong,
//! each captioned with its true and predicted class and probability).

use std::path::Path;

use plotters::backend::RGBPixel;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::PlotError;
use crate::charts::{FONT, fit_text, render, text_centred};

/// One picture of a grid and the lines of text drawn under it.
#[derive(Debug, Clone)]
pub struct Tile {
    pub image: image::RgbImage,
    /// Drawn top to bottom, centred; a line wider than the picture's cell is shortened with `…`.
    pub caption: Vec<String>,
}

const MARGIN: u32 = 16;
const GAP: u32 = 14;
const TITLE_H: u32 = 40;
const LINE_H: u32 = 17;
const CAPTION_FONT: f64 = 13.0;
/// Cells are at least this wide, so captions have room under small pictures.
const MIN_CELL_W: u32 = 150;

/// Draws `tiles` into a PNG at `path`: `title` on top, then rows of `columns` cells (fewer when
/// there are fewer tiles), each as wide as the widest picture (at least 150 px) and as tall as
/// the tallest plus the longest caption; pictures are drawn at their own size, centred in their
/// cell. No tiles draws the title alone. Errors: [`PlotError`] when `columns` is 0 or drawing,
/// encoding or writing fails.
pub fn plot_image_grid(
    path: &Path,
    title: &str,
    tiles: &[Tile],
    columns: usize,
) -> Result<(), PlotError> {
    if columns == 0 {
        return Err(PlotError {
            path: path.to_owned(),
            reason: "a grid needs 1 column or more".into(),
        });
    }
    let columns = columns.min(tiles.len()).max(1) as u32;
    let rows = tiles.len().div_ceil(columns as usize) as u32;
    let cell_w = tiles.iter().map(|t| t.image.width()).max().unwrap_or(0).max(MIN_CELL_W);
    let image_h = tiles.iter().map(|t| t.image.height()).max().unwrap_or(0);
    let lines = tiles.iter().map(|t| t.caption.len()).max().unwrap_or(0) as u32;
    let cell_h = image_h + 6 + lines * LINE_H;
    // At least as wide as the title (DejaVu Sans at 20 px: under 12 px a character).
    let title_w = 12 * title.chars().count() as u32;
    let width = (2 * MARGIN + columns * cell_w + (columns - 1) * GAP).max(2 * MARGIN + title_w);
    let height = MARGIN + TITLE_H + rows * cell_h + rows.saturating_sub(1) * GAP + MARGIN;
    render(path, (width, height), |root| {
        let title_style = TextStyle::from((FONT, 20).into_font()).color(&BLACK);
        text_centred(
            root,
            title,
            &title_style,
            (width as i32 / 2, (MARGIN + TITLE_H / 2) as i32 - 4),
        )?;
        let caption_style = TextStyle::from((FONT, CAPTION_FONT).into_font())
            .color(&BLACK)
            .pos(Pos::new(HPos::Center, VPos::Top));
        for (i, tile) in tiles.iter().enumerate() {
            let (col, row) = (i as u32 % columns, i as u32 / columns);
            let x0 = (width - columns * cell_w - (columns - 1) * GAP) / 2 + col * (cell_w + GAP);
            let y0 = MARGIN + TITLE_H + row * (cell_h + GAP);
            let (w, h) = tile.image.dimensions();
            let left = x0 + (cell_w - w) / 2;
            let top = y0 + (image_h - h) / 2;
            let picture = BitMapElement::<_, RGBPixel>::with_ref(
                (left as i32, top as i32),
                (w, h),
                tile.image.as_raw(),
            )
            .ok_or("picture buffer size")?;
            root.draw(&picture)?;
            for (j, line) in tile.caption.iter().enumerate() {
                let text = fit_text(root, line, &caption_style, cell_w)?;
                let y = y0 + image_h + 6 + j as u32 * LINE_H;
                root.draw_text(&text, &caption_style, ((x0 + cell_w / 2) as i32, y as i32))?;
            }
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn solid(w: u32, h: u32, rgb: [u8; 3]) -> image::RgbImage {
        image::RgbImage::from_pixel(w, h, image::Rgb(rgb))
    }

    #[test]
    fn pictures_land_in_their_cells_with_captions_under_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("grid.png");
        let colours = [[200, 0, 0], [0, 160, 0], [0, 0, 220]];
        let tiles: Vec<Tile> = colours
            .iter()
            .enumerate()
            .map(|(i, &c)| Tile {
                image: solid(64, 48, c),
                caption: vec![format!("true: class {i}"), "predicted: a very long name".into()],
            })
            .collect();
        plot_image_grid(&path, "Top losses", &tiles, 2).unwrap();
        let img = image::open(&path).unwrap().to_rgb8();
        // Two columns of 150-px cells, two rows.
        let cell_h = 48 + 6 + 2 * LINE_H;
        assert_eq!(
            img.dimensions(),
            (2 * MARGIN + 2 * 150 + GAP, 2 * MARGIN + TITLE_H + 2 * cell_h + GAP)
        );
        for (i, c) in colours.iter().enumerate() {
            let (col, row) = (i as u32 % 2, i as u32 / 2);
            let cx = MARGIN + col * (150 + GAP) + 75;
            let cy = MARGIN + TITLE_H + row * (cell_h + GAP) + 24;
            assert_eq!(img.get_pixel(cx, cy).0, *c, "tile {i} centre");
            // Ink of the caption right under the picture.
            let below = (cy + 30..cy + 30 + 2 * LINE_H)
                .flat_map(|y| (cx - 70..cx + 70).map(move |x| (x, y)))
                .filter(|&(x, y)| img.get_pixel(x, y).0[0] < 100)
                .count();
            assert!(below > 20, "tile {i}: {below} dark caption pixels");
        }
        assert!(plot_image_grid(&path, "t", &tiles, 0).is_err());
        plot_image_grid(&path, "nothing", &[], 4).unwrap();
    }
}
