//! The confusion matrix of predicted against true class indices, with the figures derived from
//! it: accuracy and per-class precision, recall and F1 (as `metrics.json` records them).

use run_folder::ClassMetrics;
use serde::Serialize;

/// Image counts: `counts[t][p]` is the number of images of class `t` predicted as class `p`
/// (`classes.len()` rows of `classes.len()` columns).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConfusionMatrix {
    /// Class names in class-index order.
    pub classes: Vec<String>,
    /// `counts[true][predicted]`.
    pub counts: Vec<Vec<u64>>,
}

impl ConfusionMatrix {
    /// Counts the pairs of `truth` and `predicted` (class indices, zipped); a pair with an index
    /// outside `0..classes.len()` is not counted (callers validate indices first, as
    /// `training::outputs::StageEvaluation::write` does).
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

    /// Number of pairs counted.
    pub fn total(&self) -> u64 {
        self.counts.iter().flatten().sum()
    }

    /// Fraction of counted pairs on the diagonal, 0..=1 (0 when nothing was counted).
    pub fn accuracy(&self) -> f64 {
        let correct: u64 = (0..self.classes.len()).map(|i| self.counts[i][i]).sum();
        correct as f64 / self.total().max(1) as f64
    }

    /// Precision, recall and F1 of every class, in class order. Each is `None` where it is
    /// undefined: precision when nothing was predicted as the class, recall when the class has
    /// no images, F1 when either of those is (else `2 TP / (2 TP + FP + FN)`, the harmonic mean
    /// of the two, 0 when both are 0).
    pub fn per_class(&self) -> Vec<ClassMetrics> {
        (0..self.classes.len())
            .map(|c| {
                let tp = self.counts[c][c];
                let predicted: u64 = self.counts.iter().map(|row| row[c]).sum();
                let support: u64 = self.counts[c].iter().sum();
                let precision = (predicted > 0).then(|| tp as f64 / predicted as f64);
                let recall = (support > 0).then(|| tp as f64 / support as f64);
                let f1 = (precision.is_some() && recall.is_some())
                    .then(|| 2.0 * tp as f64 / (predicted + support) as f64);
                ClassMetrics { class: self.classes[c].clone(), precision, recall, f1, support }
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
        assert!((r[0].f1.unwrap() - 2.0 / 3.0).abs() < 1e-12);
        assert!((r[1].precision.unwrap() - 0.5).abs() < 1e-12);
        assert!((r[1].f1.unwrap() - 0.5).abs() < 1e-12);
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
        assert_eq!(r[1].f1, None);
        assert_eq!(r[2].recall, None);
        assert_eq!(r[2].f1, None);
        // Both defined but 0: F1 is 0.
        let m = ConfusionMatrix::new(&classes[..2], &[0, 1], &[1, 0]);
        let r = m.per_class();
        assert_eq!((r[0].precision, r[0].recall, r[0].f1), (Some(0.0), Some(0.0), Some(0.0)));
    }
}
