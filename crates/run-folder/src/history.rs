//! `history.csv`, the per-epoch record every training stage writes after each epoch (so a crash
//! leaves a record of what happened) and the pipeline's report reads: Keras' `History` columns
//! plus the learning rate and wall time.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::RunError;

/// The history file of a stage folder.
pub const HISTORY_FILE: &str = "history.csv";

/// One epoch, as Keras' `History` records it, plus the learning rate and wall time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// 1-based, like Keras' progress output.
    pub epoch: usize,
    /// Mean training loss over the epoch's batches (dropout on, as Keras reports it).
    pub loss: f64,
    pub acc: f64,
    pub val_loss: f64,
    pub val_acc: f64,
    pub lr: f64,
    /// Wall time of the epoch in seconds.
    pub seconds: f64,
}

/// The header row of `history.csv`.
pub const HISTORY_HEADER: &str = "epoch,loss,acc,val_loss,val_acc,lr,seconds";

/// The CSV text of `history` (fixed precision so identical runs give identical files except the
/// timing column).
pub fn history_csv(history: &[EpochRecord]) -> String {
    let mut out = format!("{HISTORY_HEADER}\n");
    for r in history {
        out.push_str(&format!(
            "{},{:.6},{:.6},{:.6},{:.6},{:e},{:.3}\n",
            r.epoch, r.loss, r.acc, r.val_loss, r.val_acc, r.lr, r.seconds
        ));
    }
    out
}

/// Writes `history.csv` atomically ([`crate::write_atomic`]).
pub fn write_history(path: &Path, history: &[EpochRecord]) -> Result<(), RunError> {
    crate::write_atomic(path, history_csv(history).as_bytes())
}

/// Reads a `history.csv` written by [`write_history`]. Errors name the file and the line.
pub fn read_history(path: &Path) -> Result<Vec<EpochRecord>, RunError> {
    let text = std::fs::read_to_string(path).map_err(crate::io(path))?;
    let bad = |line: usize, why: &str| RunError::Invalid {
        path: path.to_owned(),
        reason: format!("line {line}: {why}"),
    };
    let mut lines = text.lines();
    if lines.next() != Some(HISTORY_HEADER) {
        return Err(bad(1, "unexpected header"));
    }
    lines
        .enumerate()
        .map(|(i, line)| {
            let f: Vec<&str> = line.split(',').collect();
            if f.len() != 7 {
                return Err(bad(i + 2, "expected 7 fields"));
            }
            let num = |j: usize| f[j].parse::<f64>().map_err(|_| bad(i + 2, "not a number"));
            Ok(EpochRecord {
                epoch: f[0].parse().map_err(|_| bad(i + 2, "bad epoch"))?,
                loss: num(1)?,
                acc: num(2)?,
                val_loss: num(3)?,
                val_acc: num(4)?,
                lr: num(5)?,
                seconds: num(6)?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_round_trips() {
        let h = vec![EpochRecord {
            epoch: 1,
            loss: 0.5,
            acc: 0.75,
            val_loss: 0.625,
            val_acc: 0.5,
            lr: 2e-5,
            seconds: 1.25,
        }];
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(HISTORY_FILE);
        write_history(&path, &h).unwrap();
        assert_eq!(read_history(&path).unwrap(), h);
        assert!(
            std::fs::read_to_string(&path)
                .unwrap()
                .starts_with("epoch,loss,acc,val_loss,val_acc,lr,seconds\n1,0.500000,")
        );
        std::fs::write(&path, "epoch,loss\n").unwrap();
        let err = read_history(&path).unwrap_err().to_string();
        assert!(err.contains("history.csv") && err.contains("line 1"), "{err}");
    }
}
