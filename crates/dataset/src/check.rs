//! `dataset check`: a health report of a dataset root (`<root>/<split>/<class>/...`): per split
//! and class the image counts, bytes, formats and pixel sizes; files whose content appears in
//! more than one split (train/test leakage) or more than once in a split; bad files; entries the
//! scan left out. Every file is read, hashed and fully decoded, in parallel.
//!
//! Copies are found twice: by the file's bytes (sha256) and by its decoded pixels (sha256 of
//! the RGB8 image [`decode_bytes`] gives, with its size), so a picture saved again (another PNG
//! compression level, other metadata) is a copy too. A copy in two splits is leakage, a copy
//! under two classes a label conflict (both errors, naming every path); other copies within a
//! split are listed. The class set of the first split must be trainable
//! ([`crate::require_training_classes`]) and every split must have the same classes.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::Serialize;

use crate::batch::Skipped;
use crate::decode::{DecodeLimits, DecodeOptions, decode_bytes, read_image_file};
use crate::error::{Error, Result};
use crate::scan::{ClassMode, Omission, Omitted, ScanOptions, SplitIndex, scan_dir};

#[derive(Debug, Clone, Default)]
pub struct CheckOptions {
    /// Only these splits (folder names under the root); default: every non-hidden subfolder.
    pub splits: Option<Vec<String>>,
    pub follow_links: bool,
    /// An empty class folder is reported but is not an error.
    pub allow_empty_classes: bool,
    pub limits: DecodeLimits,
}

/// Progress events, for a progress bar in the caller.
#[derive(Debug, Clone, Copy)]
pub enum CheckProgress {
    /// Scanning is done; this many files will be read.
    Files(u64),
    /// One more file was read.
    Tick,
}

#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    pub root: PathBuf,
    pub splits: Vec<SplitReport>,
    /// Entries directly under the root left out of the check (a symlinked split folder when
    /// following links is off, as a symlinked class folder is left out of its split).
    pub omitted: Vec<Omitted>,
    /// Groups of files with identical content (cross-split groups are leakage, groups under
    /// two classes label conflicts).
    pub duplicates: Vec<Duplicate>,
    /// Problems that make the dataset unusable as it is: the command exits non-zero.
    pub errors: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SplitReport {
    pub name: String,
    pub classes: Vec<ClassReport>,
    pub omitted: Vec<Omitted>,
    pub bad: Vec<Skipped>,
    pub extension_mismatches: Vec<PathBuf>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ClassReport {
    pub name: String,
    pub images: usize,
    pub bytes: u64,
    pub formats: BTreeMap<String, usize>,
    /// Stored `WIDTHxHEIGHT` -> count, for good images.
    pub sizes: BTreeMap<String, usize>,
}

/// What makes the copies of a [`Duplicate`] the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Sameness {
    /// The same file bytes.
    Bytes,
    /// Different bytes (another encoder setting, other metadata), the same decoded pixels.
    Pixels,
}

#[derive(Debug, Clone, Serialize)]
pub struct Duplicate {
    pub same: Sameness,
    /// sha256 of the bytes, or for [`Sameness::Pixels`] of the decoded RGB8 image (width and
    /// height as 4-byte little-endian, then the pixels).
    pub digest: String,
    /// `(split, class, path)` of every copy, sorted.
    pub copies: Vec<(String, String, PathBuf)>,
}

impl Duplicate {
    pub fn crosses_splits(&self) -> bool {
        self.copies.iter().any(|c| c.0 != self.copies[0].0)
    }

    /// The same content under two classes: at least one of the labels is wrong.
    pub fn conflicting_labels(&self) -> bool {
        self.copies.iter().any(|c| c.1 != self.copies[0].1)
    }
}

impl CheckReport {
    pub fn is_ok(&self) -> bool {
        self.errors.is_empty()
    }

    /// The pipeline's record of this dataset (`dataset.json`): counts, sizes and formats per
    /// split, with the tree's `digest` ([`crate::tree_digest`]) and `description`
    /// ([`readme_description`]). Classes are those of the first split (a mismatch between splits
    /// is an error of the report, so a healthy report has one class list).
    pub fn record(&self, digest: String, description: Option<String>) -> run_folder::DatasetRecord {
        let name = self
            .root
            .file_name()
            .map_or_else(|| self.root.display().to_string(), |n| n.to_string_lossy().into_owned());
        let classes = self
            .splits
            .first()
            .map(|s| s.classes.iter().map(|c| c.name.clone()).collect())
            .unwrap_or_default();
        let splits = self
            .splits
            .iter()
            .map(|split| {
                let mut record = run_folder::SplitRecord {
                    name: split.name.clone(),
                    counts: split.classes.iter().map(|c| c.images).collect(),
                    sizes: BTreeMap::new(),
                    formats: BTreeMap::new(),
                    bytes: split.classes.iter().map(|c| c.bytes).sum(),
                    omitted: split.omitted.len(),
                };
                for class in &split.classes {
                    for (k, n) in &class.sizes {
                        *record.sizes.entry(k.clone()).or_default() += n;
                    }
                    for (k, n) in &class.formats {
                        *record.formats.entry(k.clone()).or_default() += n;
                    }
                }
                record
            })
            .collect();
        run_folder::DatasetRecord {
            name,
            root: self.root.clone(),
            description,
            digest,
            classes,
            splits,
        }
    }

    pub fn leaks(&self) -> impl Iterator<Item = &Duplicate> {
        self.duplicates.iter().filter(|d| d.crosses_splits())
    }

    /// The human-readable report printed by `dataset check`.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let w = &mut out;
        let _ = writeln!(w, "dataset {}", self.root.display());
        let _ = writeln!(
            w,
            "{:<12} {:<16} {:>7} {:>11}  {:<14} sizes",
            "split", "class", "images", "bytes", "formats"
        );
        for split in &self.splits {
            let mut total = ClassReport { name: "(all)".into(), ..Default::default() };
            for class in &split.classes {
                render_row(w, &split.name, class);
                total.images += class.images;
                total.bytes += class.bytes;
                for (k, v) in &class.formats {
                    *total.formats.entry(k.clone()).or_default() += v;
                }
                for (k, v) in &class.sizes {
                    *total.sizes.entry(k.clone()).or_default() += v;
                }
            }
            render_row(w, &split.name, &total);
        }
        let leaks: Vec<_> = self.leaks().collect();
        let _ = writeln!(
            w,
            "leakage: {}",
            if leaks.is_empty() {
                "none (no content is shared between splits)".to_owned()
            } else {
                format!("{} contents appear in more than one split", leaks.len())
            }
        );
        for d in &leaks {
            render_duplicate(w, d);
        }
        let conflicts: Vec<_> = self.duplicates.iter().filter(|d| d.conflicting_labels()).collect();
        if !conflicts.is_empty() {
            let _ = writeln!(
                w,
                "label conflicts: {} contents appear under more than one class",
                conflicts.len()
            );
            for d in &conflicts {
                render_duplicate(w, d);
            }
        }
        let within: Vec<_> = self
            .duplicates
            .iter()
            .filter(|d| !d.crosses_splits() && !d.conflicting_labels())
            .collect();
        if !within.is_empty() {
            let _ = writeln!(w, "duplicates within a split: {}", within.len());
            for d in &within {
                render_duplicate(w, d);
            }
        }
        let bad: Vec<_> = self.splits.iter().flat_map(|s| &s.bad).collect();
        let _ = writeln!(w, "bad files: {}", bad.len());
        for b in bad {
            let _ = writeln!(w, "  {}: {}", b.path.display(), b.reason);
        }
        for s in &self.splits {
            for p in &s.extension_mismatches {
                let _ =
                    writeln!(w, "warning: {}: content does not match the extension", p.display());
            }
        }
        let omitted: Vec<_> =
            self.omitted.iter().chain(self.splits.iter().flat_map(|s| &s.omitted)).collect();
        if !omitted.is_empty() {
            let _ = writeln!(w, "left out: {}", omitted.len());
            for o in omitted {
                let _ = writeln!(w, "  {}: {}", o.path.display(), o.why.describe());
            }
        }
        for e in &self.errors {
            let _ = writeln!(w, "error: {e}");
        }
        let _ = writeln!(
            w,
            "{}",
            if self.is_ok() { "ok".to_owned() } else { format!("{} errors", self.errors.len()) }
        );
        out
    }
}

fn render_row(w: &mut String, split: &str, c: &ClassReport) {
    let formats: Vec<String> = c.formats.iter().map(|(k, v)| format!("{k} {v}")).collect();
    let sizes = match c.sizes.len() {
        0 => "-".to_owned(),
        1 => c.sizes.keys().next().cloned().unwrap_or_default(),
        n => {
            let mut top: Vec<_> = c.sizes.iter().collect();
            top.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
            format!("{n} sizes, most {} ({})", top[0].0, top[0].1)
        }
    };
    let _ = writeln!(
        w,
        "{:<12} {:<16} {:>7} {:>11}  {:<14} {}",
        split,
        c.name,
        c.images,
        c.bytes,
        if formats.is_empty() { "-".to_owned() } else { formats.join(", ") },
        sizes
    );
}

fn render_duplicate(w: &mut String, d: &Duplicate) {
    let what = match d.same {
        Sameness::Bytes => "same bytes",
        Sameness::Pixels => "same decoded pixels, different bytes",
    };
    let _ = writeln!(w, "  sha256 {} ({what}):", &d.digest[..16]);
    for (split, class, path) in &d.copies {
        let _ = writeln!(w, "    {split}/{class}: {}", path.display());
    }
}

/// Conventional split names first, in pipeline order; any other split after, by name.
fn split_rank(name: &str) -> usize {
    ["train", "training", "validation", "valid", "val", "test"]
        .iter()
        .position(|s| *s == name)
        .unwrap_or(usize::MAX)
}

/// What a dataset says about itself: the first paragraph after the `# title` line of
/// `<root>/README.md` (Hugging Face dataset cards and `cargo xtask data` put a summary there),
/// joined into one line; `None` when there is no README or no paragraph.
pub fn readme_description(root: &Path) -> Option<String> {
    let text = fs::read_to_string(root.join("README.md")).ok()?;
    let paragraph: Vec<&str> = text
        .lines()
        .map(str::trim)
        .skip_while(|l| l.is_empty() || l.starts_with('#'))
        .take_while(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    (!paragraph.is_empty()).then(|| paragraph.join(" "))
}

/// Checks every split of `root`; see the module doc. Errors only when `root` itself cannot be
/// listed: problems inside it go into the report.
pub fn check(
    root: &Path,
    opts: &CheckOptions,
    progress: &(dyn Fn(CheckProgress) + Sync),
) -> Result<CheckReport> {
    let mut errors = Vec::new();
    let mut root_omitted = Vec::new();
    let names = match &opts.splits {
        Some(s) => s.clone(),
        None => {
            let mut names = Vec::new();
            for entry in fs::read_dir(root).map_err(|e| Error::io(root, e))? {
                let entry = entry.map_err(|e| Error::io(root, e))?;
                let path = entry.path();
                if entry.file_name().as_encoded_bytes().starts_with(b".") || !path.is_dir() {
                    continue;
                }
                // The rule of scan_dir for every linked folder: followed only on request.
                if !opts.follow_links && entry.file_type().is_ok_and(|t| t.is_symlink()) {
                    // A split the stages read (train, validation, test) is an error there, so
                    // it is one here too; another linked folder is only left out.
                    if ["train", "validation", "test"]
                        .contains(&&*entry.file_name().to_string_lossy())
                    {
                        errors.push(Error::SymlinkedSplit { path }.to_string());
                    } else {
                        root_omitted.push(Omitted { path, why: Omission::Symlink });
                    }
                    continue;
                }
                match entry.file_name().into_string() {
                    Ok(name) => names.push(name),
                    Err(name) => errors.push(
                        Error::NotUtf8 {
                            path,
                            name: name.as_encoded_bytes().escape_ascii().to_string(),
                        }
                        .to_string(),
                    ),
                }
            }
            names.sort_by(|a, b| split_rank(a).cmp(&split_rank(b)).then(a.cmp(b)));
            names
        }
    };
    if names.is_empty() {
        errors.push(format!(
            "{}: no split folders (expected <root>/<split>/<class>/<image>)",
            root.display()
        ));
    }
    let scan_opts = ScanOptions {
        class_mode: ClassMode::Sparse,
        classes: None,
        follow_links: opts.follow_links,
        allow_empty_classes: true,
    };
    let mut indices: Vec<(String, SplitIndex)> = Vec::new();
    for name in names {
        match scan_dir(&root.join(&name), &scan_opts) {
            Ok(index) => {
                for (class, n) in index.classes.iter().zip(index.class_counts()) {
                    if n == 0 && !opts.allow_empty_classes {
                        errors.push(Error::EmptyClass { path: index.dir.join(class) }.to_string());
                    }
                }
                indices.push((name, index));
            }
            Err(e) => errors.push(e.to_string()),
        }
    }
    if let Some((first, reference)) = indices.first() {
        if let Err(e) = crate::classes::require_training_classes(
            &reference.dir,
            &reference.classes,
            &reference.class_counts(),
        ) {
            errors.push(e.to_string());
        }
        for (_, index) in &indices[1..] {
            if let Err(e) = crate::classes::require_same_classes(index, first, &reference.classes) {
                errors.push(e.to_string());
            }
        }
    }

    let total: usize = indices.iter().map(|(_, i)| i.len()).sum();
    progress(CheckProgress::Files(total as u64));
    let decode_opts = DecodeOptions { limits: opts.limits, ..Default::default() };
    let mut splits = Vec::new();
    let mut by_digest: BTreeMap<String, Vec<FileCopy>> = BTreeMap::new();
    // pixel digest -> (byte digest, copy)
    let mut by_pixels: BTreeMap<String, Vec<(String, FileCopy)>> = BTreeMap::new();
    for (name, index) in &indices {
        let results: Vec<_> = index
            .files
            .par_iter()
            .map(|f| {
                let r = read_image_file(&f.path).and_then(|bytes| {
                    let digest = run_folder::sha256_hex(&bytes);
                    decode_bytes(&f.path, &bytes, &decode_opts)
                        .map(|(image, info)| (digest, pixel_digest(&image), info))
                });
                progress(CheckProgress::Tick);
                r
            })
            .collect();
        let mut classes: Vec<ClassReport> = index
            .classes
            .iter()
            .map(|c| ClassReport { name: c.clone(), ..Default::default() })
            .collect();
        let mut report = SplitReport {
            name: name.clone(),
            classes: Vec::new(),
            omitted: index.omitted.clone(),
            bad: Vec::new(),
            extension_mismatches: Vec::new(),
        };
        for (f, r) in index.files.iter().zip(results) {
            let class = &mut classes[f.class];
            class.images += 1;
            class.bytes += f.bytes;
            match r {
                Ok((digest, pixels, info)) => {
                    *class.formats.entry(info.format.clone()).or_default() += 1;
                    *class.sizes.entry(format!("{}x{}", info.width, info.height)).or_default() += 1;
                    if info.extension_mismatch {
                        report.extension_mismatches.push(f.path.clone());
                    }
                    let copy = (name.clone(), index.classes[f.class].clone(), f.path.clone());
                    by_pixels.entry(pixels).or_default().push((digest.clone(), copy.clone()));
                    by_digest.entry(digest).or_default().push(copy);
                }
                Err(e) => {
                    *class.formats.entry("bad".into()).or_default() += 1;
                    let reason = match &e {
                        Error::BadImage { reason, .. } => reason.to_string(),
                        Error::Io { source, .. } => source.to_string(),
                        other => other.to_string(),
                    };
                    errors.push(e.to_string());
                    report.bad.push(Skipped { path: f.path.clone(), reason });
                }
            }
        }
        report.classes = classes;
        splits.push(report);
    }
    let mut duplicates: Vec<Duplicate> = by_digest
        .into_iter()
        .filter(|(_, copies)| copies.len() > 1)
        .map(|(digest, mut copies)| {
            copies.sort();
            Duplicate { same: Sameness::Bytes, digest, copies }
        })
        .collect();
    // Same pixels under more than one byte digest: re-saved copies the bytes do not show.
    for (digest, copies) in by_pixels {
        if copies.iter().any(|c| c.0 != copies[0].0) {
            let mut copies: Vec<_> = copies.into_iter().map(|(_, copy)| copy).collect();
            copies.sort();
            duplicates.push(Duplicate { same: Sameness::Pixels, digest, copies });
        }
    }
    for d in &duplicates {
        let places: Vec<String> = d.copies.iter().map(|c| c.2.display().to_string()).collect();
        let what = match d.same {
            Sameness::Bytes => "same content",
            Sameness::Pixels => "same decoded pixels",
        };
        if d.crosses_splits() {
            errors.push(format!("leakage: {what} in {}", places.join(" and ")));
        }
        if d.conflicting_labels() {
            let labelled: Vec<String> =
                d.copies.iter().map(|c| format!("{} (class {})", c.2.display(), c.1)).collect();
            errors.push(format!("label conflict: {what} in {}", labelled.join(" and ")));
        }
    }
    Ok(CheckReport { root: root.to_owned(), splits, omitted: root_omitted, duplicates, errors })
}

/// `(split, class, path)` of one file.
type FileCopy = (String, String, PathBuf);

/// sha256 of a decoded image: width and height (u32 little-endian), then the RGB8 pixels.
fn pixel_digest(image: &image::RgbImage) -> String {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    hasher.update(image.width().to_le_bytes());
    hasher.update(image.height().to_le_bytes());
    hasher.update(image.as_raw());
    hex::encode(hasher.finalize())
}
