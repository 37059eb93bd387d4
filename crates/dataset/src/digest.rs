//! Content digests (sha256 of the file bytes, lower-case hex): the identity of an image for
//! feature-cache keys and for the train/test leakage check, independent of its path.

use std::path::Path;

use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::error::Result;
use crate::scan::{ScanOptions, SplitIndex, scan};

/// sha256 of a file's content, lower-case hex, streamed (`run_folder::file_sha256`).
pub fn file_digest(path: &Path) -> Result<String> {
    Ok(run_folder::file_sha256(path)?.sha256)
}

/// The digest of every file of `index`, in index order, computed in parallel.
pub fn digests(index: &SplitIndex) -> Result<Vec<String>> {
    index.files.par_iter().map(|f| file_digest(&f.path)).collect()
}

/// One digest of a scanned split as a stage reads it: every file's path (relative to the split
/// folder), class index and content digest, in index order. Any added, removed, moved, relabelled
/// or changed image changes it; touching a file does not.
pub fn split_digest(index: &SplitIndex) -> Result<String> {
    let mut hasher = Sha256::new();
    for (file, digest) in index.files.iter().zip(digests(index)?) {
        let rel = file.path.strip_prefix(&index.dir).unwrap_or(&file.path);
        hasher.update(format!("{}\t{}\t{digest}\n", rel.display(), file.class).as_bytes());
    }
    Ok(hex::encode(hasher.finalize()))
}

/// One digest of a dataset tree as training sees it: for each of `train`, `validation`, `test`
/// that exists, every file's path (relative to `root`), class index and content digest, in
/// scan order. A stage records it as its data input: any added, removed, moved, relabelled or
/// changed image changes it; touching a file does not.
pub fn tree_digest(root: &Path, options: &ScanOptions) -> Result<String> {
    let mut hasher = Sha256::new();
    for split in ["train", "validation", "test"] {
        if !root.join(split).is_dir() {
            continue;
        }
        let index = scan(root, split, options)?;
        for (file, digest) in index.files.iter().zip(digests(&index)?) {
            let rel = file.path.strip_prefix(root).unwrap_or(&file.path);
            hasher.update(
                format!("{split}\t{}\t{}\t{digest}\n", rel.display(), file.class).as_bytes(),
            );
        }
    }
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tree_digest_follows_content_paths_and_classes_not_timestamps() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for (path, bytes) in [
            ("train/a/1.png", b"one"),
            ("train/b/2.png", b"two"),
            ("test/a/3.png", b"333"),
            ("test/a/4.png", b"444"),
        ] {
            std::fs::create_dir_all(root.join(path).parent().unwrap()).unwrap();
            std::fs::write(root.join(path), bytes).unwrap();
        }
        let options = ScanOptions::default();
        let before = tree_digest(root, &options).unwrap();
        std::fs::write(root.join("train/a/1.png"), b"one").unwrap();
        assert_eq!(tree_digest(root, &options).unwrap(), before, "rewritten with the same bytes");
        std::fs::write(root.join("test/a/3.png"), b"334").unwrap();
        let changed = tree_digest(root, &options).unwrap();
        assert_ne!(changed, before, "changed content");
        std::fs::create_dir_all(root.join("test/b")).unwrap();
        std::fs::rename(root.join("test/a/3.png"), root.join("test/b/3.png")).unwrap();
        assert_ne!(tree_digest(root, &options).unwrap(), changed, "moved to another class");
    }
}
