//! Directory scan with Keras `flow_from_directory` semantics: `<split>/<class>/**/<image>`,
//! classes are the sorted subfolder names, files are found recursively and sorted by path.
//! Unlike Keras, dot-files and dot-folders (`.ipynb_checkpoints`, `.DS_Store`) are skipped and
//! reported instead of becoming classes or images, and symlinks are only followed on request.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// File extensions (compared case-insensitively) that count as images. The content decides the
/// format; the extension only selects candidates, as in Keras.
pub const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "bmp", "gif", "webp"];

/// The file name of the class map written beside everything derived from a dataset.
pub const CLASS_MAP_FILE: &str = "classes.json";

/// How class indices become training targets (Keras `class_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClassMode {
    /// Exactly two classes; target 0.0 for the first (sorted) class, 1.0 for the second.
    Binary,
    /// One-hot float vectors of length `classes.len()` (the Keras default).
    #[default]
    Categorical,
    /// The class index as an integer.
    Sparse,
}

#[derive(Debug, Clone, Default)]
pub struct ScanOptions {
    pub class_mode: ClassMode,
    /// Use these classes, in this order, instead of every subfolder (Keras `classes=`). Other
    /// subfolders are reported and skipped; a listed class without a folder is an error.
    pub classes: Option<Vec<String>>,
    /// Follow symlinks (to files and folders). A loop is then an error naming both paths.
    pub follow_links: bool,
    /// Keep classes whose folder holds no image instead of failing.
    pub allow_empty_classes: bool,
}

/// One image candidate: its path, class index and size on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub path: PathBuf,
    pub class: usize,
    pub bytes: u64,
}

/// Why a directory entry was left out of the index (not an error).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Omission {
    /// Name starts with a dot (hidden file or folder, e.g. `.ipynb_checkpoints`).
    DotEntry,
    /// A symlink, and following symlinks is off.
    Symlink,
    /// Extension not in [`IMAGE_EXTENSIONS`].
    NotAnImageExtension,
    /// A file directly in the split folder, outside any class folder.
    OutsideClassFolder,
    /// A class folder that is not in the explicit class list.
    UnlistedClass,
    /// A FIFO, socket or device.
    NotARegularFile,
}

impl Omission {
    pub fn describe(self) -> &'static str {
        match self {
            Omission::DotEntry => "hidden (dot) entry",
            Omission::Symlink => "symlink (following is off)",
            Omission::NotAnImageExtension => "extension not in the image allow-list",
            Omission::OutsideClassFolder => "file outside any class folder",
            Omission::UnlistedClass => "folder not in the class list",
            Omission::NotARegularFile => "not a regular file",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Omitted {
    pub path: PathBuf,
    pub why: Omission,
}

/// The images of one split, sorted by path (so by class, then by path inside the class).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SplitIndex {
    /// The split folder, e.g. `data/fashion-mnist-small/train`.
    pub dir: PathBuf,
    pub classes: Vec<String>,
    pub class_mode: ClassMode,
    pub files: Vec<FileEntry>,
    /// Entries left out of `files`, with the reason; for logs, `check` and stage manifests.
    pub omitted: Vec<Omitted>,
}

impl SplitIndex {
    pub fn len(&self) -> usize {
        self.files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// Number of images per class, in class-index order.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.classes.len()];
        for f in &self.files {
            counts[f.class] += 1;
        }
        counts
    }

    pub fn class_map(&self) -> ClassMap {
        ClassMap::new(self.classes.clone(), self.class_mode)
    }
}

/// Scans `<root>/<split>`; see [`scan_dir`].
pub fn scan(root: &Path, split: &str, opts: &ScanOptions) -> Result<SplitIndex> {
    scan_dir(&root.join(split), opts)
}

/// Scans one split folder: classes are its subfolders (sorted, or `opts.classes`), images are
/// the files under each class folder, recursively, whose extension is in [`IMAGE_EXTENSIONS`].
pub fn scan_dir(dir: &Path, opts: &ScanOptions) -> Result<SplitIndex> {
    let meta = fs::metadata(dir).map_err(|e| Error::io(dir, e))?;
    if !meta.is_dir() {
        return Err(Error::NotADirectory { path: dir.to_owned() });
    }

    let listed: Option<BTreeMap<&str, usize>> = opts
        .classes
        .as_ref()
        .map(|c| c.iter().enumerate().map(|(i, name)| (name.as_str(), i)).collect());
    let mut classes: Vec<String> = opts.classes.clone().unwrap_or_default();
    let mut omitted = Vec::new();
    let mut files = Vec::new();
    let mut current: Option<usize> = None;

    let walk =
        walkdir::WalkDir::new(dir).min_depth(1).follow_links(opts.follow_links).sort_by_file_name();
    let mut it = walk.into_iter();
    while let Some(entry) = it.next() {
        let entry = entry.map_err(|e| walk_error(dir, e))?;
        let path = entry.path();
        let ft = entry.file_type();
        if is_dot(entry.file_name()) {
            omitted.push(Omitted { path: path.to_owned(), why: Omission::DotEntry });
            if ft.is_dir() {
                it.skip_current_dir();
            }
            continue;
        }
        if ft.is_symlink() {
            // Only reachable when following is off: followed links report their target's type.
            omitted.push(Omitted { path: path.to_owned(), why: Omission::Symlink });
            continue;
        }
        if entry.depth() == 1 {
            if ft.is_dir() {
                let name = entry.file_name().to_string_lossy().into_owned();
                current = match &listed {
                    Some(listed) => listed.get(name.as_str()).copied(),
                    None => {
                        classes.push(name);
                        Some(classes.len() - 1)
                    }
                };
                if current.is_none() {
                    omitted.push(Omitted { path: path.to_owned(), why: Omission::UnlistedClass });
                    it.skip_current_dir();
                }
            } else {
                omitted.push(Omitted { path: path.to_owned(), why: Omission::OutsideClassFolder });
            }
            continue;
        }
        if ft.is_dir() {
            continue;
        }
        if !has_image_extension(path) {
            omitted.push(Omitted { path: path.to_owned(), why: Omission::NotAnImageExtension });
            continue;
        }
        if !ft.is_file() {
            omitted.push(Omitted { path: path.to_owned(), why: Omission::NotARegularFile });
            continue;
        }
        let class = current.expect("depth >= 2 entries lie under a class folder");
        let bytes = entry.metadata().map_err(|e| walk_error(dir, e))?.len();
        files.push(FileEntry { path: path.to_owned(), class, bytes });
    }

    if classes.is_empty() {
        return Err(Error::NoClasses { path: dir.to_owned() });
    }
    if opts.class_mode == ClassMode::Binary && classes.len() != 2 {
        return Err(Error::BinaryClassCount { path: dir.to_owned(), found: classes.len() });
    }
    if listed.is_some() {
        for name in &classes {
            if !dir.join(name).is_dir() {
                return Err(Error::MissingClass { path: dir.join(name) });
            }
        }
    }
    let mut counts = vec![0usize; classes.len()];
    for f in &files {
        counts[f.class] += 1;
    }
    if !opts.allow_empty_classes
        && let Some(empty) = counts.iter().position(|&n| n == 0)
    {
        return Err(Error::EmptyClass { path: dir.join(&classes[empty]) });
    }
    // An explicit class order differs from path order; keep Keras' order: by class, then path.
    files.sort_by(|a, b| a.class.cmp(&b.class).then_with(|| a.path.cmp(&b.path)));

    for o in &omitted {
        tracing::debug!(path = %o.path.display(), why = o.why.describe(), "omitted");
    }
    tracing::info!(
        dir = %dir.display(),
        classes = classes.len(),
        images = files.len(),
        omitted = omitted.len(),
        "scanned split"
    );
    Ok(SplitIndex { dir: dir.to_owned(), classes, class_mode: opts.class_mode, files, omitted })
}

fn walk_error(dir: &Path, e: walkdir::Error) -> Error {
    let path = e.path().unwrap_or(dir).to_owned();
    if let Some(ancestor) = e.loop_ancestor() {
        return Error::SymlinkLoop { path, ancestor: ancestor.to_owned() };
    }
    let io = e.into_io_error().unwrap_or_else(|| std::io::Error::other("walk failed"));
    Error::io(path, io)
}

fn is_dot(name: &OsStr) -> bool {
    name.as_encoded_bytes().first() == Some(&b'.')
}

/// Whether the file name ends in an allow-listed image extension (case-insensitive).
pub fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(OsStr::to_str)
        .is_some_and(|ext| IMAGE_EXTENSIONS.iter().any(|e| e.eq_ignore_ascii_case(ext)))
}

/// The class map: names in index order, the Keras-style `class_indices`, and the class mode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassMap {
    pub classes: Vec<String>,
    pub class_indices: BTreeMap<String, usize>,
    pub class_mode: ClassMode,
}

impl ClassMap {
    pub fn new(classes: Vec<String>, class_mode: ClassMode) -> ClassMap {
        let class_indices = classes.iter().enumerate().map(|(i, c)| (c.clone(), i)).collect();
        ClassMap { classes, class_indices, class_mode }
    }

    /// Writes `<dir>/classes.json` atomically (temp file, fsync, rename).
    pub fn write(&self, dir: &Path) -> Result<PathBuf> {
        let path = dir.join(CLASS_MAP_FILE);
        let mut json = serde_json::to_vec_pretty(self).expect("a class map always serialises");
        json.push(b'\n');
        run_folder::write_atomic(&path, &json)?;
        Ok(path)
    }

    /// Reads `<dir>/classes.json`.
    pub fn read(dir: &Path) -> Result<ClassMap> {
        let path = dir.join(CLASS_MAP_FILE);
        let bytes = fs::read(&path).map_err(|e| Error::io(&path, e))?;
        let map: ClassMap = serde_json::from_slice(&bytes).map_err(|e| Error::Invalid {
            path: path.clone(),
            what: "class map",
            reason: e.to_string(),
        })?;
        let consistent = map.class_indices.len() == map.classes.len()
            && map.classes.iter().enumerate().all(|(i, c)| map.class_indices.get(c) == Some(&i));
        if !consistent {
            return Err(Error::Invalid {
                path,
                what: "class map",
                reason: "classes and class_indices disagree".into(),
            });
        }
        Ok(map)
    }
}
