//! The charts of a run: training vs validation accuracy and loss as the seed draws them
//! (training as dots, validation as a line, whole epochs on the x axis), optionally with
//! Chollet's exponentially smoothed curves; one chart comparing several runs' validation curves;
//! and confusion-matrix heat maps (counts, or each row as fractions of the class's images) with
//! one label per class at the centre of its row and column and each cell's figure centred in it.
//! Also the drawing helpers the other modules share (embedded font, centred and shortened text,
//! atomic PNG writing).

use std::path::Path;
use std::sync::Once;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::{FontStyle, FontTransform};

use run_folder::EpochRecord;

use crate::{ConfusionMatrix, PlotError};

/// Pixel size (width, height) of the history plots.
pub const HISTORY_SIZE: (u32, u32) = (800, 500);
/// Pixel size (width, height) of the confusion-matrix plots.
pub const CONFUSION_SIZE: (u32, u32) = (800, 800);
pub(crate) const FONT: &str = "sans-serif";

pub(crate) fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The font is compiled in; registering it cannot fail for valid TTF bytes.
        let _ = plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular());
    });
}

/// Chollet's `smooth_curve`: exponential moving average with factor `factor` (0.8 in the book).
pub fn smooth(points: &[f64], factor: f64) -> Vec<f64> {
    let mut out: Vec<f64> = Vec::with_capacity(points.len());
    for &p in points {
        let next = match out.last() {
            Some(&prev) => prev * factor + p * (1.0 - factor),
            None => p,
        };
        out.push(next);
    }
    out
}

/// Which curve pair to draw.
#[derive(Debug, Clone, Copy)]
pub enum Metric {
    /// `acc` and `val_acc`.
    Accuracy,
    /// `loss` and `val_loss`.
    Loss,
}

/// Draws `accuracy.png` or `loss.png` style plots ([`HISTORY_SIZE`]) into `path`; `smoothing`
/// (e.g. 0.8) applies [`smooth`] to both curves. The x axis is the epoch number, labelled in
/// whole epochs. Errors: [`PlotError`] when drawing, encoding or writing the file fails.
pub fn plot_history(
    path: &Path,
    history: &[EpochRecord],
    metric: Metric,
    smoothing: Option<f64>,
) -> Result<(), PlotError> {
    let (train, val): (Vec<f64>, Vec<f64>) = history
        .iter()
        .map(|r| match metric {
            Metric::Accuracy => (r.acc, r.val_acc),
            Metric::Loss => (r.loss, r.val_loss),
        })
        .unzip();
    let (train, val) = match smoothing {
        Some(f) => (smooth(&train, f), smooth(&val, f)),
        None => (train, val),
    };
    let (name, title) = match metric {
        Metric::Accuracy => ("acc", "Training and validation accuracy"),
        Metric::Loss => ("loss", "Training and validation loss"),
    };
    let title = if smoothing.is_some() { format!("{title} (smoothed)") } else { title.to_owned() };
    let epochs: Vec<u32> = history.iter().map(|r| r.epoch as u32).collect();
    render(path, HISTORY_SIZE, |root| {
        let all = train.iter().chain(&val).copied().filter(|v| v.is_finite());
        let (lo, hi) =
            all.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
        let (lo, hi) = if lo.is_finite() { (lo, hi) } else { (0.0, 1.0) };
        let pad = ((hi - lo) * 0.05).max(1e-3);
        let x_max = epochs.iter().copied().max().unwrap_or(1).max(1);
        // An integer axis: its ticks are whole epochs (1, 2, 3 ..., or every 5th, 10th ...).
        let mut chart = ChartBuilder::on(root)
            .caption(&title, (FONT, 24))
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0u32..x_max + 1, (lo - pad)..(hi + pad))?;
        chart
            .configure_mesh()
            .x_desc("epoch")
            .y_desc(name)
            .x_labels((x_max as usize + 2).min(12))
            // No epoch 0 or past the last: those ticks only frame the points.
            .x_label_formatter(&|e| {
                if (1..=x_max).contains(e) { e.to_string() } else { String::new() }
            })
            .label_style((FONT, 14))
            .draw()?;
        chart
            .draw_series(
                epochs.iter().zip(&train).map(|(&x, &y)| Circle::new((x, y), 4, BLUE.filled())),
            )?
            .label(format!("Training {name}"))
            .legend(|(x, y)| Circle::new((x + 10, y), 4, BLUE.filled()));
        chart
            .draw_series(LineSeries::new(
                epochs.iter().copied().zip(val.iter().copied()),
                BLUE.stroke_width(2),
            ))?
            .label(format!("Validation {name}"))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE.stroke_width(2)));
        // Small marks on the line, so a single epoch (no segment to draw) still shows.
        chart.draw_series(
            epochs.iter().zip(&val).map(|(&x, &y)| Circle::new((x, y), 2, BLUE.filled())),
        )?;
        chart
            .configure_series_labels()
            .label_font((FONT, 14))
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
        Ok(())
    })
}

/// Draws one line per named series of `(epoch, value)` points (epochs 1-based) on shared axes
/// ([`HISTORY_SIZE`]), each in its own colour with markers (so a one-epoch series still shows)
/// and named in a legend: e.g. every approach's validation accuracy by epoch, the seed's
/// comparison as one picture. Non-finite values are left out. Errors as [`plot_history`].
pub fn plot_comparison(
    path: &Path,
    title: &str,
    y_desc: &str,
    series: &[(String, Vec<(usize, f64)>)],
) -> Result<(), PlotError> {
    let finite = |points: &[(usize, f64)]| -> Vec<(u32, f64)> {
        points.iter().filter(|(_, v)| v.is_finite()).map(|&(e, v)| (e as u32, v)).collect()
    };
    let series: Vec<(&str, Vec<(u32, f64)>)> =
        series.iter().map(|(name, points)| (name.as_str(), finite(points))).collect();
    render(path, HISTORY_SIZE, |root| {
        let values = series.iter().flat_map(|(_, p)| p.iter().map(|&(_, v)| v));
        let (lo, hi) =
            values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
        let (lo, hi) = if lo.is_finite() { (lo, hi) } else { (0.0, 1.0) };
        let pad = ((hi - lo) * 0.05).max(1e-3);
        let x_max =
            series.iter().flat_map(|(_, p)| p.iter().map(|&(e, _)| e)).max().unwrap_or(1).max(1);
        let mut chart = ChartBuilder::on(root)
            .caption(title, (FONT, 24))
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0u32..x_max + 1, (lo - pad)..(hi + pad))?;
        chart
            .configure_mesh()
            .x_desc("epoch")
            .y_desc(y_desc)
            .x_labels((x_max as usize + 2).min(12))
            .x_label_formatter(&|e| {
                if (1..=x_max).contains(e) { e.to_string() } else { String::new() }
            })
            .label_style((FONT, 14))
            .draw()?;
        for (i, (name, points)) in series.iter().enumerate() {
            let colour = Palette99::pick(i).to_rgba();
            chart
                .draw_series(LineSeries::new(points.iter().copied(), colour.stroke_width(2)))?
                .label(*name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
                });
            chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, colour.filled())))?;
        }
        if !series.is_empty() {
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::LowerRight)
                .label_font((FONT, 14))
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()?;
        }
        Ok(())
    })
}

/// What the cells of a confusion plot show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cells {
    /// Image counts; the shade is the count over the largest count.
    Counts,
    /// Each row divided by its sum (the fraction of the true class's images predicted as each
    /// class, two decimals); a class with no images has an empty row.
    RowNormalised,
}

/// Heat map ([`CONFUSION_SIZE`]) of `matrix` (rows true classes, top to bottom in class order;
/// columns predicted classes, left to right) with `title` above it. Each class is named once
/// per axis at the centre of its row and column (names too long for the margin end in `…`;
/// column names turn vertical when they do not fit their column), and each cell's figure is
/// centred in it, white on dark cells. Errors as [`plot_history`].
pub fn plot_confusion(
    path: &Path,
    matrix: &ConfusionMatrix,
    title: &str,
    cells: Cells,
) -> Result<(), PlotError> {
    let n = matrix.classes.len();
    // Shade in 0..=1 and text of every cell, row by row.
    let max = matrix.counts.iter().flatten().copied().max().unwrap_or(0).max(1) as f64;
    let grid: Vec<Vec<(f64, String)>> = matrix
        .counts
        .iter()
        .map(|row| {
            let sum: u64 = row.iter().sum();
            row.iter()
                .map(|&c| match cells {
                    Cells::Counts => (c as f64 / max, c.to_string()),
                    Cells::RowNormalised if sum == 0 => (0.0, String::new()),
                    Cells::RowNormalised => {
                        let f = c as f64 / sum as f64;
                        (f, format!("{f:.2}"))
                    }
                })
                .collect()
        })
        .collect();
    render(path, CONFUSION_SIZE, |root| {
        let (width, height) = (CONFUSION_SIZE.0 as i32, CONFUSION_SIZE.1 as i32);
        let margin = 20;
        let caption = TextStyle::from((FONT, 22).into_font()).color(&BLACK);
        let caption_h = 44;
        text_centred(root, title, &caption, (width / 2, margin + caption_h / 2 - 6))?;
        let axis_title = TextStyle::from((FONT, 16).into_font()).color(&BLACK);
        let axis_title_h = 26;
        if n == 0 {
            return Ok(());
        }

        // Label font: as large as 15 px, no taller than ~60% of a cell.
        let max_label_w = width * 3 / 10;
        let layout = |font: f64| -> Result<Layout, Box<dyn std::error::Error>> {
            let style = TextStyle::from((FONT, font).into_font());
            let names: Vec<String> = matrix
                .classes
                .iter()
                .map(|c| fit_text(root, c, &style, max_label_w as u32))
                .collect::<Result<_, _>>()?;
            let widest = names
                .iter()
                .map(|s| root.estimate_text_size(s, &style).map(|(w, _)| w as i32))
                .try_fold(0, |acc, w| w.map(|w| acc.max(w)))?;
            let left = margin + axis_title_h + widest + 8;
            let top = margin + caption_h;
            // Try horizontal column names first; vertical when they would overlap.
            let plan = |bottom_labels: i32| {
                let avail_w = width - left - margin;
                let avail_h = height - top - margin - axis_title_h - bottom_labels;
                (avail_w.min(avail_h) / n as i32).max(1)
            };
            let horizontal_h = font as i32 + 10;
            let cell = plan(horizontal_h);
            let (cell, vertical) =
                if widest + 6 <= cell { (cell, false) } else { (plan(widest + 10), true) };
            Ok(Layout { font, names, widest, left, top, cell, vertical })
        };
        let mut lay = layout(15.0)?;
        if lay.font > lay.cell as f64 * 0.6 {
            lay = layout((lay.cell as f64 * 0.6).max(6.0))?;
        }
        let Layout { font, names, widest, left, top, cell, vertical } = lay;
        let side = cell * n as i32;
        // Centre the grid in the room right of the row names.
        let left = left + (width - margin - left - side) / 2;
        let label_style = TextStyle::from((FONT, font).into_font()).color(&BLACK);

        // Cells: shade, then the figure centred; figures too small to read (cells of a few
        // pixels) are left out. A DejaVu digit is about 0.55 of the font size wide.
        let widest_figure = grid.iter().flatten().map(|(_, s)| s.len()).max().unwrap_or(1).max(1);
        let figure_font =
            (cell as f64 * 0.4).min(cell as f64 * 0.85 / (0.6 * widest_figure as f64)).min(28.0);
        for (t, row) in grid.iter().enumerate() {
            for (p, (shade, text)) in row.iter().enumerate() {
                let (x0, y0) = (left + p as i32 * cell, top + t as i32 * cell);
                root.draw(&Rectangle::new(
                    [(x0, y0), (x0 + cell, y0 + cell)],
                    heat(*shade).filled(),
                ))?;
                if figure_font >= 7.0 && !text.is_empty() {
                    let colour = if *shade > 0.55 { WHITE } else { BLACK };
                    let style = TextStyle::from((FONT, figure_font).into_font()).color(&colour);
                    text_centred(root, text, &style, (x0 + cell / 2, y0 + cell / 2))?;
                }
            }
        }
        // Thin separators between cells and a frame around the matrix.
        let line = RGBColor(200, 200, 200);
        for i in 1..n as i32 {
            let at = i * cell;
            root.draw(&PathElement::new(
                vec![(left + at, top), (left + at, top + side)],
                line.stroke_width(1),
            ))?;
            root.draw(&PathElement::new(
                vec![(left, top + at), (left + side, top + at)],
                line.stroke_width(1),
            ))?;
        }
        root.draw(&Rectangle::new(
            [(left, top), (left + side, top + side)],
            BLACK.stroke_width(1),
        ))?;

        // One name per row (right-aligned next to it) and per column (centred under it).
        for (i, name) in names.iter().enumerate() {
            let centre = i as i32 * cell + cell / 2;
            let row_style = label_style.pos(Pos::new(HPos::Right, VPos::Top));
            let dy = (font * 0.187).round() as i32;
            root.draw_text(name, &row_style, (left - 6, top + centre - dy))?;
            if vertical {
                let style = label_style
                    .transform(FontTransform::Rotate270)
                    .pos(Pos::new(HPos::Right, VPos::Top));
                root.draw_text(name, &style, (left + centre - dy, top + side + 6))?;
            } else {
                text_centred(
                    root,
                    name,
                    &label_style,
                    (left + centre, top + side + 4 + font as i32 / 2),
                )?;
            }
        }
        let bottom_labels = if vertical {
            names
                .iter()
                .map(|s| root.estimate_text_size(s, &label_style).map(|(w, _)| w as i32))
                .try_fold(0, |acc, w| w.map(|w| acc.max(w)))?
                + 10
        } else {
            font as i32 + 10
        };
        text_centred(
            root,
            "predicted",
            &axis_title,
            (left + side / 2, top + side + bottom_labels + axis_title_h / 2),
        )?;
        let true_style =
            axis_title.transform(FontTransform::Rotate270).pos(Pos::new(HPos::Center, VPos::Top));
        // Beside the row names (the grid is centred, so that can be right of the margin).
        let true_x = (left - 6 - widest - axis_title_h).max(margin);
        root.draw_text("true", &true_style, (true_x + 4, top + side / 2))?;
        Ok(())
    })
}

/// Where a confusion plot's parts go, for one label font size (pixels).
struct Layout {
    font: f64,
    /// Class names as drawn (shortened with `…` where too long).
    names: Vec<String>,
    /// Pixel width of the widest name.
    widest: i32,
    left: i32,
    top: i32,
    cell: i32,
    vertical: bool,
}

pub(crate) type Area<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;
pub(crate) type DrawResult = Result<(), Box<dyn std::error::Error>>;

/// The colour of a cell whose shade is `t` in 0..=1: from near-white to dark blue (the ends of
/// matplotlib's `Blues`).
fn heat(t: f64) -> RGBColor {
    let t = t.clamp(0.0, 1.0);
    let mix = |a: u8, b: u8| (a as f64 + (b as f64 - a as f64) * t).round() as u8;
    RGBColor(mix(247, 8), mix(251, 48), mix(255, 107))
}

/// Draws `text` with its capital height and width centred on `centre`. plotters' own vertical
/// centring uses a box 1/1.24 of the font size whose baseline sits at half the size, so the
/// glyphs would land a fifth of the size too high; the offset below is DejaVu Sans' cap height
/// (0.626 of the font size) worked back from that baseline.
pub(crate) fn text_centred(
    area: &Area<'_>,
    text: &str,
    style: &TextStyle,
    centre: (i32, i32),
) -> DrawResult {
    let size = style.font.get_size();
    let style = style.pos(Pos::new(HPos::Center, VPos::Top));
    area.draw_text(text, &style, (centre.0, centre.1 - (size * 0.187).round() as i32))?;
    Ok(())
}

/// `text`, or the longest `start…end` of it at most `max_width` pixels wide: both ends are kept,
/// so names that differ only at their end (`class_1`, `class_2`) stay apart.
pub(crate) fn fit_text(
    area: &Area<'_>,
    text: &str,
    style: &TextStyle,
    max_width: u32,
) -> Result<String, Box<dyn std::error::Error>> {
    if area.estimate_text_size(text, style)?.0 <= max_width {
        return Ok(text.to_owned());
    }
    let chars: Vec<char> = text.chars().collect();
    for keep in (1..chars.len()).rev() {
        let tail = keep / 2;
        let candidate: String = chars[..keep - tail].iter().collect::<String>()
            + "…"
            + &chars[chars.len() - tail..].iter().collect::<String>();
        if area.estimate_text_size(&candidate, style)?.0 <= max_width {
            return Ok(candidate);
        }
    }
    Ok("…".to_owned())
}

/// Draws into an RGB buffer of `size`, encodes PNG, writes atomically.
pub(crate) fn render(
    path: &Path,
    size: (u32, u32),
    draw: impl FnOnce(&Area<'_>) -> DrawResult,
) -> Result<(), PlotError> {
    register_font();
    let plot_err = |reason: String| PlotError { path: path.to_owned(), reason };
    let mut buffer = vec![255u8; (size.0 * size.1 * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buffer, size).into_drawing_area();
        root.fill(&WHITE).map_err(|e| plot_err(e.to_string()))?;
        draw(&root).map_err(|e| plot_err(e.to_string()))?;
        root.present().map_err(|e| plot_err(e.to_string()))?;
    }
    let image = image::RgbImage::from_raw(size.0, size.1, buffer)
        .ok_or_else(|| plot_err("buffer size".into()))?;
    let mut png = Vec::new();
    image
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(|e| plot_err(e.to_string()))?;
    run_folder::write_atomic(path, &png)
        .map_err(|e| PlotError { path: path.to_owned(), reason: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smoothing_is_chollets_ema() {
        let s = smooth(&[1.0, 0.0, 0.0], 0.8);
        assert_eq!(s[0], 1.0);
        assert!((s[1] - 0.8).abs() < 1e-12 && (s[2] - 0.64).abs() < 1e-12);
    }

    fn non_white(path: &Path, size: (u32, u32)) -> usize {
        let img = image::open(path).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), size, "{}", path.display());
        img.pixels().filter(|px| px.0 != [255, 255, 255]).count()
    }

    #[test]
    fn plots_are_pngs() {
        let dir = tempfile::tempdir().unwrap();
        let history: Vec<EpochRecord> = (1..=5)
            .map(|e| EpochRecord {
                epoch: e,
                loss: 1.0 / e as f64,
                acc: 0.5 + 0.05 * e as f64,
                val_loss: 0.9 / e as f64,
                val_acc: 0.55,
                lr: 1e-3,
                seconds: 0.1,
            })
            .collect();
        let acc = dir.path().join("acc.png");
        plot_history(&acc, &history, Metric::Accuracy, Some(0.8)).unwrap();
        assert!(non_white(&acc, HISTORY_SIZE) > 1000);
        let cm = ConfusionMatrix::new(&["a".into(), "b".into()], &[0, 1, 1], &[0, 1, 0]);
        for cells in [Cells::Counts, Cells::RowNormalised] {
            let path = dir.path().join("cm.png");
            plot_confusion(&path, &cm, "test", cells).unwrap();
            assert!(non_white(&path, CONFUSION_SIZE) > 1000);
        }
    }

    /// Centroid (x, y) of the pixels in `[x0, x1) x [y0, y1)` that `pick` selects, and their count.
    fn centroid(
        img: &image::RgbImage,
        (x0, x1): (u32, u32),
        (y0, y1): (u32, u32),
        pick: impl Fn([u8; 3]) -> bool,
    ) -> (f64, f64, usize) {
        let (mut sx, mut sy, mut n) = (0.0, 0.0, 0);
        for y in y0..y1 {
            for x in x0..x1 {
                if pick(img.get_pixel(x, y).0) {
                    (sx, sy, n) = (sx + x as f64, sy + y as f64, n + 1);
                }
            }
        }
        (sx / n.max(1) as f64, sy / n.max(1) as f64, n)
    }

    #[test]
    fn comparison_draws_each_series_in_its_colour() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("compare.png");
        let series = vec![
            ("head".to_owned(), vec![(1, 0.7), (2, 0.75), (3, 0.8)]),
            ("fine-tune".to_owned(), vec![(1, 0.8), (2, f64::NAN), (3, 0.85)]),
            ("one epoch".to_owned(), vec![(1, 0.6)]),
        ];
        plot_comparison(&path, "Validation accuracy", "val_acc", &series).unwrap();
        let img = image::open(&path).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), HISTORY_SIZE);
        for i in 0..series.len() {
            let c = Palette99::pick(i).to_rgba();
            let n = img.pixels().filter(|px| px.0 == [c.0, c.1, c.2]).count();
            assert!(n > 20, "series {i}: {n} pixels of its colour");
        }
        // No series at all still draws the axes.
        plot_comparison(&path, "empty", "val_acc", &[]).unwrap();
    }

    #[test]
    fn shortened_names_keep_both_ends() {
        register_font();
        let mut buffer = vec![0u8; 200 * 50 * 3];
        let area = BitMapBackend::with_buffer(&mut buffer, (200, 50)).into_drawing_area();
        let style = TextStyle::from((FONT, 14).into_font());
        let fit = |name: &str| fit_text(&area, name, &style, 120).unwrap();
        let (a, b) =
            (fit("a_rather_long_class_name_number_1"), fit("a_rather_long_class_name_number_2"));
        assert!(a.contains('…') && a.starts_with("a_rath") && a.ends_with("_1"), "{a}");
        assert_ne!(a, b);
        assert_eq!(fit("cats"), "cats");
    }

    #[test]
    fn labels_and_counts_sit_at_cell_centres() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cm.png");
        let classes = ["cats".to_owned(), "dogs".to_owned()];
        let m = ConfusionMatrix::new(&classes, &[0, 0, 1, 1], &[0, 0, 1, 1]);
        plot_confusion(&path, &m, "t", Cells::Counts).unwrap();
        let img = image::open(&path).unwrap().to_rgb8();
        // The diagonal cells are the darkest shade: their bounding box is the grid.
        let dark = heat(1.0);
        let (mut l, mut t, mut r, mut b) = (u32::MAX, u32::MAX, 0, 0);
        for (x, y, px) in img.enumerate_pixels() {
            if px.0 == [dark.0, dark.1, dark.2] {
                (l, t, r, b) = (l.min(x), t.min(y), r.max(x + 1), b.max(y + 1));
            }
        }
        let cell = (r - l) / 2;
        assert!(cell > 100 && (b - t) / 2 == cell, "grid {l}..{r} x {t}..{b}");
        let centre = |i: u32| (i * cell + cell / 2) as f64;
        let ink = |px: [u8; 3]| px[0] < 128 && px[1] < 128 && px[2] < 128;
        let near = |a: f64, b: f64| (a - b).abs() <= 3.0;
        // The count "2", white on the dark cell, centred in both directions.
        let (x, y, n) =
            centroid(&img, (l + 2, l + cell - 2), (t + 2, t + cell - 2), |px| px[0] > 200);
        assert!(
            n > 20 && near(x, l as f64 + centre(0)) && near(y, t as f64 + centre(0)),
            "{x} {y}"
        );
        // One row name per row, level with the row's centre; one column name per column.
        for i in 0..2 {
            let rows = (t + i * cell, t + (i + 1) * cell);
            let (_, y, n) = centroid(&img, (l - 45, l - 2), rows, ink);
            assert!(n > 20 && near(y, t as f64 + centre(i)), "row {i}: {y}, {n} px");
            let cols = (l + i * cell, l + (i + 1) * cell);
            let (x, _, n) = centroid(&img, cols, (b + 2, b + 30), ink);
            assert!(n > 20 && near(x, l as f64 + centre(i)), "column {i}: {x}, {n} px");
        }
    }

    #[test]
    fn awkward_matrices_still_draw() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cm.png");
        // No classes, an empty split, many classes with long names.
        plot_confusion(&path, &ConfusionMatrix::new(&[], &[], &[]), "none", Cells::Counts).unwrap();
        let two = ["a".to_owned(), "b".to_owned()];
        plot_confusion(&path, &ConfusionMatrix::new(&two, &[], &[]), "empty", Cells::RowNormalised)
            .unwrap();
        let many: Vec<String> =
            (0..120).map(|i| format!("a rather long class name number {i}")).collect();
        let truth: Vec<i64> = (0..1200).map(|i| i % 120).collect();
        let m = ConfusionMatrix::new(&many, &truth, &truth);
        plot_confusion(&path, &m, "many", Cells::Counts).unwrap();
        assert!(non_white(&path, CONFUSION_SIZE) > 1000);
    }

    /// Draws sample plots (2 and 10 classes, counts and row-normalised, 30 classes with long
    /// names; history plots of 1, 7 and 30 epochs) and checks each is a whole PNG of its size.
    /// To look at them: `TRANSFER_KIT_PLOT_SAMPLES=DIR cargo test -p plots --lib
    /// render_samples` keeps them in DIR.
    #[test]
    fn render_samples() {
        let temp = tempfile::tempdir().unwrap();
        let out = std::env::var_os("TRANSFER_KIT_PLOT_SAMPLES")
            .map_or_else(|| temp.path().to_owned(), std::path::PathBuf::from);
        std::fs::create_dir_all(&out).unwrap();
        let two = ["cats".to_owned(), "dogs".to_owned()];
        let truth: Vec<i64> = (0..500).map(|i| (i % 2) as i64).collect();
        let pred: Vec<i64> = (0..500)
            .map(|i| if i % 7 == 0 { 1 - (i % 2) as i64 } else { (i % 2) as i64 })
            .collect();
        let m = ConfusionMatrix::new(&two, &truth, &pred);
        plot_confusion(&out.join("c2.png"), &m, "Confusion matrix (validation)", Cells::Counts)
            .unwrap();
        plot_confusion(
            &out.join("c2n.png"),
            &m,
            "Confusion matrix (validation, fraction of each true class)",
            Cells::RowNormalised,
        )
        .unwrap();
        let ten: Vec<String> = [
            "t-shirt_top",
            "trouser",
            "pullover",
            "dress",
            "coat",
            "sandal",
            "shirt",
            "sneaker",
            "bag",
            "ankle_boot",
        ]
        .map(String::from)
        .to_vec();
        let truth: Vec<i64> = (0..1000).map(|i| (i % 10) as i64).collect();
        let pred: Vec<i64> = (0..1000)
            .map(|i| if i % 3 == 0 { ((i * 7 + 3) % 10) as i64 } else { (i % 10) as i64 })
            .collect();
        let m = ConfusionMatrix::new(&ten, &truth, &pred);
        plot_confusion(&out.join("c10.png"), &m, "Confusion matrix (test)", Cells::Counts).unwrap();
        plot_confusion(
            &out.join("c10n.png"),
            &m,
            "Confusion matrix (test, fraction of each true class)",
            Cells::RowNormalised,
        )
        .unwrap();
        let long: Vec<String> = (0..30).map(|i| format!("class with a long name {i}")).collect();
        let truth: Vec<i64> = (0..3000).map(|i| (i % 30) as i64).collect();
        let pred: Vec<i64> = (0..3000).map(|i| ((i % 30 + i % 4 / 3) % 30) as i64).collect();
        let m = ConfusionMatrix::new(&long, &truth, &pred);
        plot_confusion(&out.join("c30.png"), &m, "Confusion matrix (30 classes)", Cells::Counts)
            .unwrap();
        let history: Vec<EpochRecord> = (1..=7)
            .map(|e| EpochRecord {
                epoch: e,
                loss: 1.0 / e as f64,
                acc: 0.5 + 0.05 * e as f64,
                val_loss: 0.9 / e as f64,
                val_acc: 0.55,
                lr: 1e-3,
                seconds: 0.1,
            })
            .collect();
        plot_history(&out.join("acc7.png"), &history, Metric::Accuracy, None).unwrap();
        let history: Vec<EpochRecord> = (1..=30)
            .map(|e| EpochRecord {
                epoch: e,
                loss: 1.0 / e as f64,
                acc: 0.5 + 0.01 * e as f64,
                val_loss: 0.9 / e as f64,
                val_acc: 0.55,
                lr: 1e-3,
                seconds: 0.1,
            })
            .collect();
        plot_history(&out.join("loss30.png"), &history, Metric::Loss, Some(0.8)).unwrap();
        plot_history(&out.join("acc1.png"), &history[..1], Metric::Accuracy, None).unwrap();
        for (name, size) in [
            ("c2", CONFUSION_SIZE),
            ("c2n", CONFUSION_SIZE),
            ("c10", CONFUSION_SIZE),
            ("c10n", CONFUSION_SIZE),
            ("c30", CONFUSION_SIZE),
            ("acc7", HISTORY_SIZE),
            ("loss30", HISTORY_SIZE),
            ("acc1", HISTORY_SIZE),
        ] {
            let png = image::open(out.join(format!("{name}.png"))).unwrap();
            assert_eq!((png.width(), png.height()), size, "{name}");
        }
    }
}
