//! Export and import of cache entries as one tar file, for sharing caches without a shared folder.
//!
//! A bundle holds `<key>/<file>` members only. Import unpacks into a temp folder inside the cache
//! root, verifies every entry completely (digests, key, shapes), and only then publishes them, so
//! a tampered or truncated bundle adds nothing to the cache.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Component, Path, PathBuf};

use crate::CacheError;
use crate::cache::Cache;
use crate::entry::{self, CHECKSUMS, FEATURES, LABELS, MANIFEST};
use crate::folders::remove_dir_quietly;
use crate::key::is_key;

const ENTRY_FILES: [&str; 4] = [FEATURES, LABELS, MANIFEST, CHECKSUMS];

/// Writes the entries `keys` (each verified first) to the tar file `out`, atomically.
pub fn export(cache: &Cache, keys: &[String], out: &Path) -> Result<(), CacheError> {
    for key in keys {
        let dir = cache.entry_dir(key);
        // A key that names no entry says so, rather than naming a file inside it.
        if !dir.is_dir() {
            return Err(CacheError::Missing { path: dir });
        }
        entry::verify(&dir)?;
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
        for key in keys {
            for name in ENTRY_FILES {
                builder.append_path_with_name(
                    cache.entry_dir(key).join(name),
                    format!("{key}/{name}"),
                )?;
            }
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

/// Imports every entry of the bundle `bundle` into `cache`; returns the keys imported (entries
/// already present and valid are kept as they are).
pub fn import(cache: &Cache, bundle: &Path) -> Result<Vec<String>, CacheError> {
    let staging = cache.tmp_dir();
    fs::create_dir(&staging).map_err(CacheError::io(&staging))?;
    let result = import_via(cache, bundle, &staging);
    remove_dir_quietly(&staging);
    result
}

fn import_via(cache: &Cache, bundle: &Path, staging: &Path) -> Result<Vec<String>, CacheError> {
    let file = File::open(bundle).map_err(CacheError::io(bundle))?;
    let mut archive = tar::Archive::new(io::BufReader::new(file));
    let mut keys = Vec::new();
    let members = archive.entries().map_err(CacheError::io(bundle))?;
    for member in members {
        let mut member = member.map_err(CacheError::io(bundle))?;
        let path = member.path().map_err(CacheError::io(bundle))?.into_owned();
        let (key, name) = member_name(&path).ok_or_else(|| {
            CacheError::corrupt(
                bundle,
                format!(
                    "unexpected member {}: bundles hold <key>/<entry file> only",
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
        let dir = staging.join(&key);
        if !dir.exists() {
            fs::create_dir(&dir).map_err(CacheError::io(&dir))?;
            keys.push(key);
        }
        let target = dir.join(&name);
        let mut out = File::create(&target).map_err(CacheError::io(&target))?;
        io::copy(&mut member, &mut out).map_err(CacheError::io(bundle))?;
        out.flush().map_err(CacheError::io(&target))?;
    }
    for key in &keys {
        entry::verify(&staging.join(key))
            .map_err(|err| CacheError::corrupt(bundle, format!("entry {key} refused: {err}")))?;
    }
    for key in &keys {
        let final_dir = cache.entry_dir(key);
        let dir = staging.join(key);
        for name in ENTRY_FILES {
            File::open(dir.join(name))
                .and_then(|f| f.sync_all())
                .map_err(CacheError::io(dir.join(name)))?;
        }
        let moved: PathBuf = cache.tmp_dir();
        fs::rename(&dir, &moved).map_err(CacheError::io(&dir))?;
        entry::publish(&moved, &final_dir)?;
    }
    Ok(keys)
}

/// `<key>/<entry file>` with nothing else (no `..`, no absolute paths, no extra depth).
fn member_name(path: &Path) -> Option<(String, String)> {
    let parts: Vec<&str> = path
        .components()
        .map(|c| match c {
            Component::Normal(s) => s.to_str(),
            _ => None,
        })
        .collect::<Option<_>>()?;
    match parts[..] {
        [key, name] if is_key(key) && ENTRY_FILES.contains(&name) => {
            Some((key.to_owned(), name.to_owned()))
        }
        _ => None,
    }
}
