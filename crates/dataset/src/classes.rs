//! The one rule for the class set a stage trains on, whatever produced it (a scan, an explicit
//! class list, the skip-bad-images policy, a cache entry's labels): at least
//! [`MIN_TRAINING_CLASSES`] classes that hold images, under distinct names, the same in every
//! split. Keras' `flow_from_directory` accepts one class and trains a classifier that cannot be
//! wrong; every stage refuses it here, before any work.

use std::collections::BTreeSet;
use std::path::Path;

use crate::error::{Error, Result};
use crate::scan::{ScanOptions, SplitIndex, scan};

/// A classifier needs at least two classes to tell apart.
pub const MIN_TRAINING_CLASSES: usize = 2;

/// Checks the class set of a training split: names distinct, and at least
/// [`MIN_TRAINING_CLASSES`] of them with at least one image (`counts[i]` images of
/// `classes[i]`, counted after whatever left images out). `origin` names where the classes come
/// from (the split folder, a features record) in the error:
/// "training needs at least 2 classes, found 1 (data/train)".
pub fn require_training_classes(origin: &Path, classes: &[String], counts: &[usize]) -> Result<()> {
    let mut seen = BTreeSet::new();
    if let Some(twice) = classes.iter().find(|c| !seen.insert(c.as_str())) {
        return Err(Error::DuplicateClass { path: origin.to_owned(), name: twice.clone() });
    }
    let found =
        if counts.is_empty() { classes.len() } else { counts.iter().filter(|&&n| n > 0).count() };
    if found < MIN_TRAINING_CLASSES {
        return Err(Error::TooFewClasses { path: origin.to_owned(), found });
    }
    Ok(())
}

/// Checks that `index` has the classes of the reference split (`reference`, named
/// `reference_split`), in the same order: labels mean the same class in every split.
pub fn require_same_classes(
    index: &SplitIndex,
    reference_split: &str,
    reference: &[String],
) -> Result<()> {
    if index.classes != reference {
        return Err(Error::ClassMismatch {
            path: index.dir.clone(),
            classes: index.classes.clone(),
            reference_split: reference_split.to_owned(),
            reference: reference.to_vec(),
        });
    }
    Ok(())
}

/// Scans the splits a training stage reads (`splits[0]` being the one it trains on, normally
/// `train`), then applies the class rule: the first split passes
/// [`require_training_classes`], every other has its classes ([`require_same_classes`]).
pub fn scan_training_splits(
    root: &Path,
    splits: &[&str],
    opts: &ScanOptions,
) -> Result<Vec<SplitIndex>> {
    let mut indexes: Vec<SplitIndex> = Vec::with_capacity(splits.len());
    for split in splits {
        let index = scan(root, split, opts)?;
        match indexes.first() {
            None => require_training_classes(&index.dir, &index.classes, &index.class_counts())?,
            Some(first) => require_same_classes(&index, splits[0], &first.classes)?,
        }
        indexes.push(index);
    }
    Ok(indexes)
}
