//! Classification metrics from predicted and true class indices: accuracy, confusion matrix,
//! per-class precision and recall.

use serde::Serialize;

/// Rows are true classes, columns predicted classes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConfusionMatrix {
    pub classes: Vec<String>,
    pub counts: Vec<Vec<u64>>,
}

/// Precision and recall of one class (None when undefined: nothing predicted / no samples).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassReport {
    pub class: String,
    pub precision: Option<f64>,
    pub recall: Option<f64>,
    pub support: u64,
}

impl ConfusionMatrix {
    /// Counts pairs; labels outside `0..classes.len()` are a caller bug and panic in debug only
    /// through indexing, so callers pass labels validated by the cache reader.
    pub fn new(classes: &[String], truth: &[i64], predicted: &[i64]) -> Self {
        let n = classes.len();
        let mut counts = vec![vec![0u64; n]; n];
        for (&t, &p) in truth.iter().zip(predicted) {
            if let (Ok(t), Ok(p)) = (usize::try_from(t), usize::try_from(p))
                && t < n
                && p < n
            {
                counts[t][p] += 1;
            }
        }
        Self { classes: classes.to_vec(), counts }
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().flatten().sum()
    }

    pub fn accuracy(&self) -> f64 {
        let correct: u64 = (0..self.classes.len()).map(|i| self.counts[i][i]).sum();
        correct as f64 / self.total().max(1) as f64
    }

    pub fn per_class(&self) -> Vec<ClassReport> {
        (0..self.classes.len())
            .map(|c| {
                let tp = self.counts[c][c];
                let predicted: u64 = self.counts.iter().map(|row| row[c]).sum();
                let support: u64 = self.counts[c].iter().sum();
                ClassReport {
                    class: self.classes[c].clone(),
                    precision: (predicted > 0).then(|| tp as f64 / predicted as f64),
                    recall: (support > 0).then(|| tp as f64 / support as f64),
                    support,
                }
            })
            .collect()
    }

    /// CSV: header `true\predicted,<classes...>`, one row per true class.
    pub fn to_csv(&self) -> String {
        let mut out = format!("true\\predicted,{}\n", self.classes.join(","));
        for (class, row) in self.classes.iter().zip(&self.counts) {
            let cells: Vec<String> = row.iter().map(u64::to_string).collect();
            out.push_str(&format!("{class},{}\n", cells.join(",")));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_accuracy_precision_recall() {
        let classes = vec!["a".to_owned(), "b".to_owned()];
        let m = ConfusionMatrix::new(&classes, &[0, 0, 0, 1, 1], &[0, 0, 1, 1, 0]);
        assert_eq!(m.counts, vec![vec![2, 1], vec![1, 1]]);
        assert!((m.accuracy() - 0.6).abs() < 1e-12);
        let r = m.per_class();
        assert!((r[0].precision.unwrap() - 2.0 / 3.0).abs() < 1e-12);
        assert!((r[0].recall.unwrap() - 2.0 / 3.0).abs() < 1e-12);
        assert!((r[1].precision.unwrap() - 0.5).abs() < 1e-12);
        assert_eq!(r[1].support, 2);
        assert_eq!(m.to_csv(), "true\\predicted,a,b\na,2,1\nb,1,1\n");
    }

    #[test]
    fn undefined_precision_is_none() {
        let classes = vec!["a".to_owned(), "b".to_owned(), "c".to_owned()];
        let m = ConfusionMatrix::new(&classes, &[0, 1], &[0, 0]);
        let r = m.per_class();
        assert_eq!(r[1].precision, None);
        assert_eq!(r[1].recall, Some(0.0));
        assert_eq!(r[2].recall, None);
    }
}
