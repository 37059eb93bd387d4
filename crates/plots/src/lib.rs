//! PNG figures of the toolkit, drawn without libtorch (so `cargo xtask pipeline`'s report can
//! draw them too): history and comparison charts and confusion-matrix heat maps ([`charts`]),
//! the confusion matrix itself with its per-class figures ([`ConfusionMatrix`]), and captioned
//! image grids ([`grid`], fastai's `plot_top_losses` layout). Text uses an embedded DejaVu font,
//! so no system fonts are needed; every PNG is written atomically.

pub mod charts;
mod confusion;
pub mod grid;

use std::path::PathBuf;

pub use charts::{
    CONFUSION_SIZE, Cells, HISTORY_SIZE, Metric, plot_comparison, plot_confusion, plot_history,
    smooth,
};
pub use confusion::ConfusionMatrix;
pub use grid::{Tile, plot_image_grid};

/// A figure that could not be drawn, encoded or written.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct PlotError {
    /// The PNG being written.
    pub path: PathBuf,
    pub reason: String,
}
