//! `dataset.json`: what a run's `dataset` stage (`dataset check --out`) recorded about the data
//! the run trained on. The pipeline report describes the dataset from this record only, and two
//! runs are set side by side only when their records' digests are equal.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// File name of the record inside the `dataset` stage folder.
pub const DATASET_FILE: &str = "dataset.json";

/// A dataset as a run saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetRecord {
    /// The root folder's name (`cats-vs-dogs-small`).
    pub name: String,
    pub root: PathBuf,
    /// The first paragraph after the title of `<root>/README.md`, when the dataset has one: what
    /// the images are and where they came from.
    pub description: Option<String>,
    /// `dataset::tree_digest` of the root (every file's split, path, class and content digest):
    /// two runs trained on the same data exactly when these are equal.
    pub digest: String,
    /// Class names in index order (Keras `class_indices` order: sorted folder names).
    pub classes: Vec<String>,
    pub splits: Vec<SplitRecord>,
}

/// One split's counts, sizes and formats.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitRecord {
    pub name: String,
    /// Images per class, in class-index order.
    pub counts: Vec<usize>,
    /// Stored `WIDTHxHEIGHT` -> number of images.
    pub sizes: BTreeMap<String, usize>,
    /// Image format (`png`, `jpeg`, ...) -> number of images.
    pub formats: BTreeMap<String, usize>,
    /// Bytes of all its image files.
    pub bytes: u64,
    /// Entries the scan left out (hidden files, stray files, links), reported by `dataset check`.
    pub omitted: usize,
}

impl SplitRecord {
    pub fn images(&self) -> usize {
        self.counts.iter().sum()
    }
}

impl DatasetRecord {
    pub fn split(&self, name: &str) -> Option<&SplitRecord> {
        self.splits.iter().find(|s| s.name == name)
    }

    /// Stored `WIDTHxHEIGHT` -> number of images over every split, most common first.
    pub fn sizes(&self) -> Vec<(String, usize)> {
        let mut all: BTreeMap<&str, usize> = BTreeMap::new();
        for split in &self.splits {
            for (size, n) in &split.sizes {
                *all.entry(size).or_default() += n;
            }
        }
        let mut sizes: Vec<(String, usize)> =
            all.into_iter().map(|(s, n)| (s.to_owned(), n)).collect();
        sizes.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        sizes
    }
}
