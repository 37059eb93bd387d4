//! PNG plots of a run: training vs validation accuracy and loss as the seed draws them (training
//! as dots, validation as a line), optionally with Chollet's exponentially smoothed curves, and a
//! confusion-matrix heat map. Text uses an embedded DejaVu font, so no system fonts are needed.

use std::path::Path;
use std::sync::Once;

use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::{ConfusionMatrix, EpochRecord, TrainError};

const SIZE: (u32, u32) = (800, 500);
const FONT: &str = "sans-serif";

fn register_font() {
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
    Accuracy,
    Loss,
}

/// Draws `accuracy.png` or `loss.png` style plots into `path`; `smoothing` (e.g. 0.8) applies
/// [`smooth`] to both curves.
pub fn plot_history(
    path: &Path,
    history: &[EpochRecord],
    metric: Metric,
    smoothing: Option<f64>,
) -> Result<(), TrainError> {
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
    let epochs: Vec<f64> = history.iter().map(|r| r.epoch as f64).collect();
    render(path, |root| {
        let all = train.iter().chain(&val).copied().filter(|v| v.is_finite());
        let (lo, hi) =
            all.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
        let (lo, hi) = if lo.is_finite() { (lo, hi) } else { (0.0, 1.0) };
        let pad = ((hi - lo) * 0.05).max(1e-3);
        let x_max = epochs.last().copied().unwrap_or(1.0).max(1.0);
        let mut chart = ChartBuilder::on(root)
            .caption(&title, (FONT, 24))
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..x_max + 1.0, (lo - pad)..(hi + pad))?;
        chart.configure_mesh().x_desc("epoch").y_desc(name).label_style((FONT, 14)).draw()?;
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
        chart
            .configure_series_labels()
            .label_font((FONT, 14))
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
        Ok(())
    })
}

/// Heat map of the confusion matrix with counts in the cells.
pub fn plot_confusion(
    path: &Path,
    matrix: &ConfusionMatrix,
    title: &str,
) -> Result<(), TrainError> {
    let n = matrix.classes.len();
    let max = matrix.counts.iter().flatten().copied().max().unwrap_or(1).max(1) as f64;
    render(path, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, (FONT, 22))
            .margin(15)
            .x_label_area_size(50)
            .y_label_area_size(120)
            .build_cartesian_2d(0..n, 0..n)?;
        let classes = matrix.classes.clone();
        chart
            .configure_mesh()
            .disable_mesh()
            .x_desc("predicted")
            .y_desc("true")
            .x_labels(n)
            .y_labels(n)
            .x_label_formatter(&|i| classes.get(*i).cloned().unwrap_or_default())
            .y_label_formatter(&|i| {
                classes.get(n.saturating_sub(1 + *i)).cloned().unwrap_or_default()
            })
            .label_style((FONT, 13))
            .draw()?;
        for (t, row) in matrix.counts.iter().enumerate() {
            for (p, &count) in row.iter().enumerate() {
                let y = n - 1 - t;
                let shade = 1.0 - 0.8 * count as f64 / max;
                let colour = RGBColor((255.0 * shade) as u8, (255.0 * shade) as u8, 255);
                chart.draw_series(std::iter::once(Rectangle::new(
                    [(p, y), (p + 1, y + 1)],
                    colour.filled(),
                )))?;
                let text_colour = if shade < 0.5 { WHITE } else { BLACK };
                chart.draw_series(std::iter::once(Text::new(
                    count.to_string(),
                    (p, y + 1),
                    (FONT, 16).into_font().color(&text_colour),
                )))?;
            }
        }
        Ok(())
    })
}

type DrawResult = Result<(), Box<dyn std::error::Error>>;

/// Draws into an RGB buffer, encodes PNG, writes atomically.
fn render(
    path: &Path,
    draw: impl FnOnce(&DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>) -> DrawResult,
) -> Result<(), TrainError> {
    register_font();
    let plot_err = |reason: String| TrainError::Plot { path: path.to_owned(), reason };
    let mut buffer = vec![255u8; (SIZE.0 * SIZE.1 * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buffer, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(|e| plot_err(e.to_string()))?;
        draw(&root).map_err(|e| plot_err(e.to_string()))?;
        root.present().map_err(|e| plot_err(e.to_string()))?;
    }
    let image = image::RgbImage::from_raw(SIZE.0, SIZE.1, buffer)
        .ok_or_else(|| plot_err("buffer size".into()))?;
    let mut png = Vec::new();
    image
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(|e| plot_err(e.to_string()))?;
    crate::write_atomic_ctx(path, &png)
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
        let cm = ConfusionMatrix::new(&["a".into(), "b".into()], &[0, 1, 1], &[0, 1, 0]);
        let cm_path = dir.path().join("cm.png");
        plot_confusion(&cm_path, &cm, "test").unwrap();
        for p in [acc, cm_path] {
            let img = image::open(&p).unwrap().to_rgb8();
            assert_eq!(img.dimensions(), SIZE);
            let non_white = img.pixels().filter(|px| px.0 != [255, 255, 255]).count();
            assert!(non_white > 1000, "{} is nearly blank", p.display());
        }
    }
}
