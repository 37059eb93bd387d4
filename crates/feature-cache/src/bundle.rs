//! Export and import of cache entries and split indexes as one tar file, for sharing caches
//! without a shared folder.
//!
//! A bundle holds `<key>/<entry file>` members (entries, chunks among them) and
//! `index/<key>.json` members (split indexes) only; exporting a split index exports its chunks
//! with it. Import unpacks into a temp folder inside the cache root and verifies everything
//! before publishing anything: every entry completely (digests, key, shapes), and every split
//! index with every chunk it lists, each found in the bundle or already in the cache (the checks
//! of [`crate::SplitReader::open`]). Then entries are published first and indexes last, so an
//! index is never visible before its chunks, and a tampered, truncated or incomplete bundle adds
//! nothing to the cache.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Component, Path};

use crate::CacheError;
use crate::cache::{Cache, verify_split};
use crate::entry::{self, CHECKSUMS, FEATURES, LABELS, MANIFEST};
use crate::folders::remove_dir_quietly;
use crate::key::is_key;
use crate::split::{ChunkIndex, INDEX_DIR, SplitReader, index_path};

const ENTRY_FILES: [&str; 4] = [FEATURES, LABELS, MANIFEST, CHECKSUMS];

/// Writes `keys` to the tar file `out`, atomically. Each key is an entry (exported as its
/// folder) or a split index (exported as `index/<key>.json` and every chunk it lists); all are
/// verified first. Entries come before indexes in the bundle, each entry once.
///
/// Errors: [`CacheError::Usage`] "no such cache entry or split index" for a key that names
/// neither; otherwise the first problem verification found.
pub fn export(cache: &Cache, keys: &[String], out: &Path) -> Result<(), CacheError> {
    let root = cache.root();
    let mut entries: Vec<String> = Vec::new();
    let mut seen = BTreeSet::new();
    let mut indexes: Vec<String> = Vec::new();
    let mut add_entry = |key: &str, entries: &mut Vec<String>| {
        if seen.insert(key.to_owned()) {
            entries.push(key.to_owned());
        }
    };
    for key in keys {
        // Not a key (`..`, a path, a prefix) names nothing in the cache, whatever is on disk.
        let (index, dir) = (index_path(root, key), cache.entry_dir(key));
        let is_index = is_key(key) && index.is_file();
        let is_entry = is_key(key) && dir.is_dir();
        if !is_index && !is_entry {
            return Err(unknown_key(cache, key));
        }
        if is_index {
            let verified = verify_split(root, key)?;
            for chunk in &verified.chunks {
                add_entry(&chunk.key, &mut entries);
            }
            if !indexes.contains(key) {
                indexes.push(key.clone());
            }
        }
        if is_entry {
            entry::verify(&dir)?;
            add_entry(key, &mut entries);
        }
    }
    // Streamed to a temp file beside `out`, fsynced and renamed: `run_folder::write_atomic` does
    // the same for bytes in memory, but a bundle can be larger than memory.
    let tmp = out.with_file_name(format!(
        ".{}.partial-{}",
        out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        std::process::id()
    ));
    let result = (|| {
        let file = File::create(&tmp)?;
        let mut builder = tar::Builder::new(BufWriter::new(file));
        for key in &entries {
            for name in ENTRY_FILES {
                builder.append_path_with_name(
                    cache.entry_dir(key).join(name),
                    format!("{key}/{name}"),
                )?;
            }
        }
        for key in &indexes {
            builder
                .append_path_with_name(index_path(root, key), format!("{INDEX_DIR}/{key}.json"))?;
        }
        let file = builder.into_inner()?.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()
    })();
    if let Err(err) = result {
        let _ = fs::remove_file(&tmp);
        return Err(CacheError::Io { path: out.to_owned(), source: err });
    }
    fs::rename(&tmp, out).map_err(CacheError::io(out))
}

/// The error for a key that names neither an entry nor a split index of `cache`.
fn unknown_key(cache: &Cache, key: &str) -> CacheError {
    CacheError::Usage {
        path: cache.root().join(key),
        reason: "no such cache entry or split index".into(),
    }
}

/// Imports every entry and split index of the bundle `bundle` into `cache`; returns the keys
/// imported, entries first, then indexes (entries already present and valid are kept as they
/// are, and so are indexes).
pub fn import(cache: &Cache, bundle: &Path) -> Result<Vec<String>, CacheError> {
    let staging = cache.staging_dir()?;
    let result = import_via(cache, bundle, &staging);
    remove_dir_quietly(&staging);
    result
}

/// A bundle member, by its name.
enum Member {
    /// `<key>/<entry file>`.
    Entry { key: String, name: String },
    /// `index/<key>.json`.
    Index { key: String },
}

fn import_via(cache: &Cache, bundle: &Path, staging: &Path) -> Result<Vec<String>, CacheError> {
    let file = File::open(bundle).map_err(CacheError::io(bundle))?;
    let mut archive = tar::Archive::new(io::BufReader::new(file));
    let mut keys = Vec::new();
    let mut indexes = Vec::new();
    let staged_indexes = staging.join(INDEX_DIR);
    let members = archive.entries().map_err(CacheError::io(bundle))?;
    for member in members {
        let mut member = member.map_err(CacheError::io(bundle))?;
        let path = member.path().map_err(CacheError::io(bundle))?.into_owned();
        let parsed = member_name(&path).ok_or_else(|| {
            CacheError::corrupt(
                bundle,
                format!(
                    "unexpected member {}: bundles hold <key>/<entry file> and {INDEX_DIR}/<key>.json only",
                    path.display()
                ),
            )
        })?;
        if !member.header().entry_type().is_file() {
            return Err(CacheError::corrupt(
                bundle,
                format!("member {} is not a regular file", path.display()),
            ));
        }
        let target = match parsed {
            Member::Entry { key, name } => {
                let dir = staging.join(&key);
                if !dir.exists() {
                    fs::create_dir(&dir).map_err(CacheError::io(&dir))?;
                    keys.push(key);
                }
                dir.join(name)
            }
            Member::Index { key } => {
                fs::create_dir_all(&staged_indexes).map_err(CacheError::io(&staged_indexes))?;
                let target = index_path(staging, &key);
                if !indexes.contains(&key) {
                    indexes.push(key);
                }
                target
            }
        };
        let mut out = File::create(&target).map_err(CacheError::io(&target))?;
        io::copy(&mut member, &mut out).map_err(CacheError::io(bundle))?;
        out.flush().map_err(CacheError::io(&target))?;
    }

    // Verify everything before publishing anything. The chunks of the bundle's indexes are
    // verified with their index (every byte, once); the other entries on their own.
    let mut listed = BTreeSet::new();
    for key in &indexes {
        let index = ChunkIndex::read(&index_path(staging, key))
            .map_err(|err| refused(bundle, "split index", key, err))?;
        for chunk in &index.chunks {
            if !staging.join(&chunk.key).is_dir() && !cache.entry_dir(&chunk.key).is_dir() {
                return Err(CacheError::corrupt(
                    bundle,
                    format!(
                        "split index {key} refused: its chunk {} is neither in the bundle nor in the cache {}",
                        chunk.key,
                        cache.root().display()
                    ),
                ));
            }
            listed.insert(chunk.key.clone());
        }
    }
    for key in keys.iter().filter(|k| !listed.contains(*k)) {
        entry::verify(&staging.join(key)).map_err(|err| refused(bundle, "entry", key, err))?;
    }
    for key in &indexes {
        SplitReader::open(&[staging, cache.root()], key)
            .map_err(|err| refused(bundle, "split index", key, err))?;
    }

    // Chunks first, indexes last: an index is never visible before its chunks.
    for key in &keys {
        cache.publish_entry(&staging.join(key), key)?;
    }
    for key in &indexes {
        cache.publish_index(&index_path(staging, key), key)?;
    }
    keys.extend(indexes);
    Ok(keys)
}

fn refused(bundle: &Path, what: &str, key: &str, err: CacheError) -> CacheError {
    CacheError::corrupt(bundle, format!("{what} {key} refused: {err}"))
}

/// `<key>/<entry file>` or `index/<key>.json`, with nothing else (no `..`, no absolute paths,
/// no other depth or names).
fn member_name(path: &Path) -> Option<Member> {
    let parts: Vec<&str> = path
        .components()
        .map(|c| match c {
            Component::Normal(s) => s.to_str(),
            _ => None,
        })
        .collect::<Option<_>>()?;
    match parts[..] {
        [INDEX_DIR, file] => {
            let key = file.strip_suffix(".json").filter(|k| is_key(k))?;
            Some(Member::Index { key: key.to_owned() })
        }
        [key, name] if is_key(key) && ENTRY_FILES.contains(&name) => {
            Some(Member::Entry { key: key.to_owned(), name: name.to_owned() })
        }
        _ => None,
    }
}
