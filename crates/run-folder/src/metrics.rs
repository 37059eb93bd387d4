//! `metrics.json`: the typed record of how well a training stage's model does, written by
//! train-head, fine-tune and pretrain (one writer, `training::outputs`) and read by the
//! pipeline's report (and later `evaluate`). One schema for writer and reader, so a renamed
//! field is a compile error, not a blank report cell.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::RunError;

pub const METRICS_FILE: &str = "metrics.json";

/// The whole file. `validation` is always there (every training stage validates); `test` when
/// the dataset has a test split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageMetrics {
    pub validation: SplitMetrics,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test: Option<SplitMetrics>,
    /// The epoch whose weights the model file holds (1-based), with its validation figures:
    /// the best by validation loss when the stage keeps the best, else the last.
    pub kept: KeptEpoch,
    /// Median wall time of an epoch in seconds (of the epochs this process ran).
    pub median_epoch_seconds: f64,
}

/// Loss, accuracy and per-class figures of the kept model on one split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitMetrics {
    /// Mean cross-entropy (binary for one output unit, categorical otherwise), as Keras reports it.
    pub loss: f64,
    /// Fraction of images whose arg-max class is the true one, 0..=1.
    pub acc: f64,
    /// Number of images evaluated.
    pub images: u64,
    /// Where the inputs came from (`"images"`, `"cache <key>"`, ...), for the report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// One row per class, in class-index order.
    pub per_class: Vec<ClassMetrics>,
}

/// Precision, recall and F1 of one class (`None` when undefined: nothing predicted as the class,
/// or no image of it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassMetrics {
    pub class: String,
    pub precision: Option<f64>,
    pub recall: Option<f64>,
    pub f1: Option<f64>,
    /// Images of this class in the split.
    pub support: u64,
}

/// The epoch a model file holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeptEpoch {
    /// 1-based.
    pub epoch: usize,
    /// Epochs trained in all.
    pub of: usize,
    pub val_loss: f64,
    pub val_acc: f64,
}

impl StageMetrics {
    /// Reads `dir/metrics.json`; a file of another shape is an error naming it.
    pub fn read(dir: &Path) -> Result<Self, RunError> {
        crate::read_json(&dir.join(METRICS_FILE))
    }

    /// Writes `dir/metrics.json` atomically.
    pub fn write(&self, dir: &Path) -> Result<(), RunError> {
        crate::write_json(&dir.join(METRICS_FILE), self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(acc: f64) -> SplitMetrics {
        SplitMetrics {
            loss: 0.5,
            acc,
            images: 4,
            source: None,
            per_class: vec![ClassMetrics {
                class: "cats".into(),
                precision: Some(1.0),
                recall: None,
                f1: None,
                support: 2,
            }],
        }
    }

    #[test]
    fn round_trips_and_refuses_other_shapes() {
        let dir = tempfile::tempdir().unwrap();
        let m = StageMetrics {
            validation: split(0.75),
            test: Some(split(0.5)),
            kept: KeptEpoch { epoch: 3, of: 5, val_loss: 0.4, val_acc: 0.75 },
            median_epoch_seconds: 1.5,
        };
        m.write(dir.path()).unwrap();
        assert_eq!(StageMetrics::read(dir.path()).unwrap(), m);

        // The old dialect (a map of splits with no `kept`) is refused, naming the file.
        std::fs::write(dir.path().join(METRICS_FILE), r#"{"validation": {"loss": 1, "acc": 1}}"#)
            .unwrap();
        let err = StageMetrics::read(dir.path()).unwrap_err().to_string();
        assert!(err.contains(METRICS_FILE), "{err}");
    }
}
