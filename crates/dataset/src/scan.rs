//! Directory scan with Keras `flow_from_directory` semantics: `<split>/<class>/**/<image>`,
//! classes are the sorted subfolder names, files are found recursively in Keras' order
//! ([`keras_file_order`]: folder by folder, a folder's files before its subfolders'). Symlinked
//! files are images (as Keras and torchvision). Unlike Keras, dot-files and dot-folders
//! (`.ipynb_checkpoints`, `.DS_Store`) are skipped and reported instead of becoming classes or
//! images, symlinked folders (a class folder too) are only followed on request, and names that
//! are not UTF-8 are refused rather than recorded lossily.

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
    /// Follow symlinked folders (the split folder, class folders, subfolders). A loop is then
    /// an error naming both paths. Symlinked files are read whatever this says.
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
    /// A symlinked folder, and following links is off (a linked *file* is read through the
    /// link whatever the setting, as Keras and torchvision do).
    Symlink,
    /// A symlink whose target cannot be read (dangling, or no permission).
    DanglingSymlink,
    /// A folder whose name has an image extension (`x.png/`): not an image; its contents are
    /// scanned like any subfolder's (as Keras).
    FolderNamedLikeImage,
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
            Omission::Symlink => "symlinked folder, not followed (--follow-links follows it)",
            Omission::DanglingSymlink => "symlink whose target cannot be read (dangling)",
            Omission::FolderNamedLikeImage => {
                "folder named like an image, not an image file; its contents are scanned"
            }
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
/// the files under each class folder, recursively, whose extension is in [`IMAGE_EXTENSIONS`],
/// in Keras' order ([`keras_file_order`]).
///
/// Links, as Keras (`os.walk` lists a linked file among the files whatever `follow_links`)
/// and torchvision `ImageFolder`: a symlinked *file* is an image like any other, labelled by
/// the folder the link sits in, and read through the link (so its content digest is the
/// target's); a dangling link is left out as [`Omission::DanglingSymlink`] and logged at
/// WARN naming it. A symlinked *folder*, the split folder itself included, is followed only
/// with `opts.follow_links` (then a loop is an error naming both paths); otherwise it is left
/// out ([`Omission::Symlink`]), and a symlinked split folder is an error saying so.
///
/// Every name a class or an image path is recorded under (classes.json, cache keys, reports)
/// must be UTF-8: a non-UTF-8 class folder or path component is an [`Error::NotUtf8`] naming
/// it, never a lossy name that two folders could share.
pub fn scan_dir(dir: &Path, opts: &ScanOptions) -> Result<SplitIndex> {
    let meta = fs::metadata(dir).map_err(|e| Error::io(dir, e))?;
    if !meta.is_dir() {
        return Err(Error::NotADirectory { path: dir.to_owned() });
    }
    if !opts.follow_links && fs::symlink_metadata(dir).is_ok_and(|m| m.file_type().is_symlink()) {
        return Err(Error::SymlinkedSplit { path: dir.to_owned() });
    }

    let listed: Option<BTreeMap<&str, usize>> = opts
        .classes
        .as_ref()
        .map(|c| c.iter().enumerate().map(|(i, name)| (name.as_str(), i)).collect());
    let mut classes: Vec<String> = opts.classes.clone().unwrap_or_default();
    if listed.as_ref().is_some_and(|l| l.len() != classes.len()) {
        return Err(Error::Invalid {
            path: dir.to_owned(),
            what: "class list",
            reason: format!("a class is listed twice in {classes:?}"),
        });
    }
    let mut on_class = |_: &Path, name: &str| -> Option<usize> {
        match &listed {
            Some(listed) => listed.get(name).copied(),
            None => {
                classes.push(name.to_owned());
                Some(classes.len() - 1)
            }
        }
    };
    let (files, omitted) = walk(dir, opts.follow_links, Some(&mut on_class))?;

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

    for o in &omitted {
        // A linked folder holds images the user meant to train on: say so where it is seen,
        // with the flag that follows it (the description names `--follow-links`).
        if o.why == Omission::Symlink {
            tracing::warn!(path = %o.path.display(), why = o.why.describe(), "left out");
        } else {
            tracing::debug!(path = %o.path.display(), why = o.why.describe(), "omitted");
        }
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

/// The image files under `dir`, recursively, by the rules of a class folder in [`scan_dir`]
/// (dot-entries, files without an image extension, dangling links and, unless
/// `follow_links`, linked folders left out and returned with the reason), in Keras' order
/// ([`keras_file_order`]). `predict` walks its input folders with this, so a folder is read in
/// the order training reads a class folder.
pub fn list_images(dir: &Path, follow_links: bool) -> Result<(Vec<FileEntry>, Vec<Omitted>)> {
    walk(dir, follow_links, None)
}

/// Keras' order of the files of one class folder: keras-preprocessing's `_iter_valid_files`
/// walks `sorted(os.walk(class_dir), key=lambda x: x[0])` and yields each folder's
/// `sorted(files)`, so files come folder by folder, the folders sorted by their whole path as a
/// string (a folder's own files before those of its subfolders; `a b/` before `a/`, since ' '
/// sorts before '/'), and by file name inside a folder. torchvision's `ImageFolder` sorts the
/// same way (`sorted(os.walk(...))`, then `sorted(fnames)`). Paths are compared as bytes, which
/// for the UTF-8 names [`scan_dir`] accepts is Python's code-point order.
pub fn keras_file_order(a: &Path, b: &Path) -> std::cmp::Ordering {
    fn bytes(p: Option<&Path>) -> &[u8] {
        p.map_or(&[], |p| p.as_os_str().as_encoded_bytes())
    }
    fn name(p: &Path) -> Option<&[u8]> {
        p.file_name().map(OsStr::as_encoded_bytes)
    }
    bytes(a.parent()).cmp(bytes(b.parent())).then_with(|| name(a).cmp(&name(b)))
}

type OnClass<'a> = &'a mut dyn FnMut(&Path, &str) -> Option<usize>;

/// The one walk behind [`scan_dir`] and [`list_images`]. With `on_class`, the entries directly
/// in `dir` are class folders (given to `on_class`, which returns the class index or `None`
/// for a folder to leave out) and stray files; without, `dir` is one class folder (class 0).
fn walk(
    dir: &Path,
    follow_links: bool,
    mut on_class: Option<OnClass<'_>>,
) -> Result<(Vec<FileEntry>, Vec<Omitted>)> {
    let mut omitted = Vec::new();
    let mut files = Vec::new();
    let mut current: Option<usize> = if on_class.is_some() { None } else { Some(0) };
    let class_depth = usize::from(on_class.is_some());

    let walk =
        walkdir::WalkDir::new(dir).min_depth(1).follow_links(follow_links).sort_by_file_name();
    let mut it = walk.into_iter();
    while let Some(entry) = it.next() {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                // Following links, a dangling one is an error of the walk: report it, go on.
                if let Some(path) =
                    e.path().filter(|p| e.loop_ancestor().is_none() && is_dangling(p))
                {
                    omitted.push(dangling(path));
                    continue;
                }
                return Err(walk_error(dir, e));
            }
        };
        let path = entry.path();
        let mut ft = entry.file_type();
        if is_dot(entry.file_name()) {
            omitted.push(Omitted { path: path.to_owned(), why: Omission::DotEntry });
            if ft.is_dir() {
                it.skip_current_dir();
            }
            continue;
        }
        let mut target_len = None;
        if ft.is_symlink() {
            // Only reachable when following is off: followed links report their target's type.
            match fs::metadata(path) {
                Err(_) => {
                    omitted.push(dangling(path));
                    continue;
                }
                Ok(m) if m.is_dir() => {
                    omitted.push(Omitted { path: path.to_owned(), why: Omission::Symlink });
                    continue;
                }
                Ok(m) => {
                    ft = m.file_type();
                    target_len = Some(m.len());
                }
            }
        }
        if entry.depth() == class_depth && ft.is_dir() {
            let name = utf8_name(path, dir)?;
            current = on_class.as_mut().and_then(|f| f(path, name));
            if current.is_none() {
                omitted.push(Omitted { path: path.to_owned(), why: Omission::UnlistedClass });
                it.skip_current_dir();
            }
            continue;
        }
        if entry.depth() == class_depth {
            omitted.push(Omitted { path: path.to_owned(), why: Omission::OutsideClassFolder });
            continue;
        }
        if ft.is_dir() {
            // Descended into like any subfolder (as Keras), but named like an image: say so.
            if has_image_extension(path) {
                omitted
                    .push(Omitted { path: path.to_owned(), why: Omission::FolderNamedLikeImage });
            }
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
        utf8_name(path, dir)?;
        let class = current.expect("entries below the class depth lie under a class folder");
        let bytes = match target_len {
            Some(len) => len,
            None => entry.metadata().map_err(|e| walk_error(dir, e))?.len(),
        };
        files.push(FileEntry { path: path.to_owned(), class, bytes });
    }
    // An explicit class order differs from path order: by class, then Keras' order inside it.
    files.sort_by(|a, b| a.class.cmp(&b.class).then_with(|| keras_file_order(&a.path, &b.path)));
    Ok((files, omitted))
}

/// `path` relative to `dir` as UTF-8, or [`Error::NotUtf8`] naming the first component that
/// is not (with its bytes escaped, `\xb9\xb7`).
fn utf8_name<'a>(path: &'a Path, dir: &Path) -> Result<&'a str> {
    let rel = path.strip_prefix(dir).unwrap_or(path);
    if let Some(bad) = rel.components().find(|c| c.as_os_str().to_str().is_none()) {
        let escaped = bad.as_os_str().as_encoded_bytes().escape_ascii().to_string();
        return Err(Error::NotUtf8 { path: path.to_owned(), name: escaped });
    }
    Ok(path.file_name().and_then(OsStr::to_str).unwrap_or_default())
}

fn is_dangling(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink())
        && fs::metadata(path).is_err()
}

fn dangling(path: &Path) -> Omitted {
    tracing::warn!(path = %path.display(), "dangling symlink left out (its target cannot be read)");
    Omitted { path: path.to_owned(), why: Omission::DanglingSymlink }
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
