//! The crate's one error type. Every variant names the file or folder it is about and says why,
//! in lower case without a trailing period, so a binary can print the chain as it is.

use std::path::PathBuf;

/// Why one image file cannot be used. Kept apart from [`Error`] so the skip-bad-images policy
/// and `check` can classify bad files without parsing messages.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind", content = "detail")]
pub enum BadImage {
    #[error("empty file (0 bytes)")]
    Empty,
    #[error("is a directory, expected an image file")]
    IsADirectory,
    #[error("not a regular file")]
    NotARegularFile,
    #[error("not an image (content matches no known image format)")]
    NotAnImage,
    #[error("unsupported image format {0}")]
    Unsupported(String),
    /// Refused from the header (decompression-bomb guard).
    #[error("too large: {0}")]
    TooLarge(String),
    #[error("truncated {0}")]
    Truncated(String),
    #[error("corrupt {format}: {reason}")]
    Corrupt { format: String, reason: String },
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    BadImage { path: PathBuf, reason: BadImage },
    #[error("{path}: not a directory")]
    NotADirectory { path: PathBuf },
    #[error("{path}: no class folders (expected <split>/<class>/<image>)")]
    NoClasses { path: PathBuf },
    #[error("{path}: empty class folder (no images): add images to it, or remove it if unwanted")]
    EmptyClass { path: PathBuf },
    #[error("{path}: listed class has no folder")]
    MissingClass { path: PathBuf },
    #[error("{path}: binary class mode needs exactly 2 classes, found {found}")]
    BinaryClassCount { path: PathBuf, found: usize },
    /// A class folder or image path component whose name is not UTF-8: it could not be
    /// recorded faithfully (two such folders would share one lossy name), so it is refused.
    #[error(
        "{path}: the name {name} is not valid UTF-8; class names and image paths are recorded \
         as UTF-8 (classes.json, cache keys, reports), so rename it"
    )]
    NotUtf8 { path: PathBuf, name: String },
    #[error(
        "{path}: the split folder is a symlink and following links is off (--follow-links \
         follows it)"
    )]
    SymlinkedSplit { path: PathBuf },
    /// See [`crate::classes::require_training_classes`].
    #[error("training needs at least 2 classes, found {found} ({path})")]
    TooFewClasses { path: PathBuf, found: usize },
    #[error("{}: classes {classes:?} differ from those of {reference_split} {reference:?}", path.display())]
    ClassMismatch {
        path: PathBuf,
        classes: Vec<String>,
        reference_split: String,
        reference: Vec<String>,
    },
    #[error("{path}: class {name:?} appears twice")]
    DuplicateClass { path: PathBuf, name: String },
    #[error("{path}: symlink loop, it leads back to its ancestor {ancestor}")]
    SymlinkLoop { path: PathBuf, ancestor: PathBuf },
    #[error(
        "{path}: {skipped} of {total} images were bad when the allowed fraction {max_fraction} \
         was passed; stopped there, so later images were not checked"
    )]
    TooManySkipped { path: PathBuf, skipped: usize, total: usize, max_fraction: f64 },
    #[error("{path}: invalid {what}: {reason}")]
    Invalid { path: PathBuf, what: &'static str, reason: String },
}

impl From<run_folder::RunError> for Error {
    fn from(e: run_folder::RunError) -> Self {
        match e {
            run_folder::RunError::Io { path, source } => Error::Io { path, source },
            run_folder::RunError::Invalid { path, reason } => {
                Error::Invalid { path, what: "file", reason }
            }
        }
    }
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }

    /// The bad-image reason, when this error is about one unusable image file.
    pub fn bad_image(&self) -> Option<&BadImage> {
        match self {
            Error::BadImage { reason, .. } => Some(reason),
            _ => None,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
