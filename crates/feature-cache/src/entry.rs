//! One cache entry on disk: writing it atomically, and reading it back only if every byte checks.
//!
//! Layout of `<root>/<key>/`:
//! - `features.npy`: `<f4`, C order, `[N, ...]`;
//! - `labels.npy`: `<i4`, `[N]`, class indices into the manifest's class list;
//! - `manifest.json`: the key components in clear, shapes, each `.npy` file's length and sha256;
//! - `checksums.sha256`: `sha256sum` lines for the three files above (so `sha256sum -c` works by
//!   hand), which makes every byte of the entry covered by a digest.
//!
//! An entry is built in a temp folder beside it and renamed into place only after every file is
//! written and fsynced, so a crash leaves a temp folder (never an entry) behind.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::CacheError;
use crate::folders::{aside_name, remove_dir_quietly, sync_dir};
use crate::key::{FORMAT_VERSION, FeatureKey};
use crate::npy::{self, Dtype};

pub const FEATURES: &str = "features.npy";
pub const LABELS: &str = "labels.npy";
pub const MANIFEST: &str = "manifest.json";
pub const CHECKSUMS: &str = "checksums.sha256";
/// Manifests and checksum lists are small; anything bigger is not ours.
const MAX_SMALL_FILE: u64 = 64 << 20;

/// What `manifest.json` records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format_version: u32,
    /// The entry name; equals `components.digest()`.
    pub key: String,
    pub components: FeatureKey,
    /// Full shape of `features.npy`, `[N, ...]`.
    pub feature_shape: Vec<u64>,
    /// Length and sha256 of `features.npy` and `labels.npy`.
    pub files: BTreeMap<String, FileDigest>,
    /// Program that wrote the entry, e.g. `extract-features 0.0.0`.
    pub tool: String,
    pub created_unix_s: u64,
    /// Files of the key's list that could not be decoded and were skipped (`--skip-bad-images`);
    /// their rows are absent, so `feature_shape[0]` is the file count minus these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<String>,
    /// Key of the lower-layer entry these features were computed from (`extract-features` runs
    /// only the layers between); absent when they were computed from the images. The entry's
    /// own key is the one a direct extraction gives, so the two are interchangeable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub derived_from: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileDigest {
    pub bytes: u64,
    pub sha256: String,
}

/// Features and labels of a verified entry, in memory.
#[derive(Debug, Clone)]
pub struct LoadedEntry {
    pub manifest: Manifest,
    pub features: Vec<f32>,
    pub labels: Vec<i32>,
}

impl LoadedEntry {
    /// `[N, ...]`.
    pub fn shape(&self) -> &[u64] {
        &self.manifest.feature_shape
    }
}

/// Streams one entry into a temp folder; [`EntryWriter::finish`] publishes it.
#[derive(Debug)]
pub struct EntryWriter {
    tmp_dir: PathBuf,
    final_dir: PathBuf,
    key: FeatureKey,
    tool: String,
    feature_shape: Vec<u64>,
    row_len: usize,
    rows_written: u64,
    features: HashingWriter<BufWriter<File>>,
    labels: Vec<i32>,
    skipped: Vec<String>,
    derived_from: Option<String>,
}

impl EntryWriter {
    /// Starts an entry of `rows` rows of `row_shape` each. `tmp_dir` must be a fresh folder on
    /// the same file system as `final_dir` (the cache puts it beside).
    pub(crate) fn create(
        tmp_dir: PathBuf,
        final_dir: PathBuf,
        key: FeatureKey,
        tool: &str,
        rows: u64,
        row_shape: &[u64],
    ) -> Result<Self, CacheError> {
        fs::create_dir(&tmp_dir).map_err(CacheError::io(&tmp_dir))?;
        let mut feature_shape = vec![rows];
        feature_shape.extend_from_slice(row_shape);
        let row_len = row_shape.iter().product::<u64>() as usize;
        let path = tmp_dir.join(FEATURES);
        let file = File::create(&path).map_err(CacheError::io(&path))?;
        let mut features = HashingWriter::new(BufWriter::with_capacity(1 << 20, file));
        features
            .write_all(&npy::header(Dtype::F32, &feature_shape))
            .map_err(CacheError::io(&path))?;
        Ok(Self {
            tmp_dir,
            final_dir,
            key,
            tool: tool.to_owned(),
            feature_shape,
            row_len,
            rows_written: 0,
            features,
            labels: Vec::with_capacity(rows as usize),
            skipped: Vec::new(),
            derived_from: None,
        })
    }

    /// Appends rows: `features.len()` must be `labels.len()` times the row size.
    pub fn append(&mut self, features: &[f32], labels: &[i32]) -> Result<(), CacheError> {
        let path = self.tmp_dir.join(FEATURES);
        if features.len() != labels.len() * self.row_len {
            return Err(CacheError::Usage {
                path,
                reason: format!(
                    "{} feature values for {} labels, rows have {} values",
                    features.len(),
                    labels.len(),
                    self.row_len
                ),
            });
        }
        let rows = labels.len() as u64;
        if self.rows_written + rows > self.feature_shape[0] {
            return Err(CacheError::Usage {
                path,
                reason: format!("more than the {} rows announced", self.feature_shape[0]),
            });
        }
        npy::write_f32s(&mut self.features, features).map_err(CacheError::io(&path))?;
        self.labels.extend_from_slice(labels);
        self.rows_written += rows;
        Ok(())
    }

    /// Records that one announced row will not come (its image was skipped as bad).
    pub fn skip(&mut self, file: String) {
        self.skipped.push(file);
    }

    /// Records that the rows are computed from the lower-layer entry `key` (its manifest's
    /// `derived_from`), not from the images.
    pub fn derived_from(&mut self, key: String) {
        self.derived_from = Some(key);
    }

    /// Writes labels, manifest and checksums, fsyncs everything and renames the folder into
    /// place. If another writer published the same key first, its entry is kept when it
    /// verifies (ours is discarded) and replaced when it does not.
    pub fn finish(self) -> Result<PathBuf, CacheError> {
        let Self {
            tmp_dir,
            final_dir,
            key,
            tool,
            mut feature_shape,
            rows_written,
            features,
            labels,
            skipped,
            derived_from,
            ..
        } = self;
        if rows_written + skipped.len() as u64 != feature_shape[0] {
            return Err(CacheError::Usage {
                path: tmp_dir.join(FEATURES),
                reason: format!(
                    "{rows_written} rows written and {} skipped, {} announced",
                    skipped.len(),
                    feature_shape[0]
                ),
            });
        }
        let features_path = tmp_dir.join(FEATURES);
        let (buffered, mut features_digest) = features.finish();
        let file = buffered
            .into_inner()
            .map_err(|e| CacheError::Io { path: features_path.clone(), source: e.into_error() })?;
        if skipped.is_empty() {
            file.sync_all().map_err(CacheError::io(&features_path))?;
        } else {
            drop(file);
            let announced = feature_shape.clone();
            feature_shape[0] = rows_written;
            features_digest = rewrite_header(&features_path, &announced, &feature_shape)?;
        }

        let mut label_bytes = npy::header(Dtype::I32, &[labels.len() as u64]);
        for l in &labels {
            label_bytes.extend_from_slice(&l.to_le_bytes());
        }
        let labels_digest = write_synced(&tmp_dir.join(LABELS), &label_bytes)?;

        let entry_key = key.digest();
        let manifest = Manifest {
            format_version: FORMAT_VERSION,
            key: entry_key,
            components: key,
            feature_shape,
            files: BTreeMap::from([
                (FEATURES.to_owned(), features_digest),
                (LABELS.to_owned(), labels_digest.clone()),
            ]),
            tool,
            created_unix_s: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            skipped,
            derived_from,
        };
        let mut manifest_bytes = serde_json::to_vec_pretty(&manifest).expect("manifest serialises");
        manifest_bytes.push(b'\n');
        let manifest_digest = write_synced(&tmp_dir.join(MANIFEST), &manifest_bytes)?;
        let checksums = checksums_text(&[
            (FEATURES, &manifest.files[FEATURES].sha256),
            (LABELS, &labels_digest.sha256),
            (MANIFEST, &manifest_digest.sha256),
        ]);
        write_synced(&tmp_dir.join(CHECKSUMS), checksums.as_bytes())?;
        sync_dir(&tmp_dir)?;
        publish(&tmp_dir, &final_dir)?;
        Ok(final_dir)
    }
}

/// Renames `tmp_dir` to `final_dir`; resolves a race with another writer of the same key.
pub(crate) fn publish(tmp_dir: &Path, final_dir: &Path) -> Result<(), CacheError> {
    match fs::rename(tmp_dir, final_dir) {
        Ok(()) => {}
        Err(_) if final_dir.exists() => match verify(final_dir) {
            Ok(_) => {
                // Someone else computed the same thing first; theirs is as good as ours.
                remove_dir_quietly(tmp_dir);
                return Ok(());
            }
            Err(err) => {
                tracing::warn!(path = %final_dir.display(), %err, "replacing a corrupt cache entry");
                let trash = aside_name(final_dir, "trash");
                fs::rename(final_dir, &trash).map_err(CacheError::io(final_dir))?;
                remove_dir_quietly(&trash);
                fs::rename(tmp_dir, final_dir).map_err(CacheError::io(final_dir))?;
            }
        },
        Err(e) => return Err(CacheError::Io { path: final_dir.to_owned(), source: e }),
    }
    if let Some(parent) = final_dir.parent() {
        sync_dir(parent)?;
    }
    Ok(())
}

/// Rewrites `features.npy` with the header of the rows actually written (the header length may
/// change with the row count, so the data is copied behind a fresh header); returns the digest.
fn rewrite_header(
    path: &Path,
    announced: &[u64],
    actual: &[u64],
) -> Result<FileDigest, CacheError> {
    let old_header = npy::header(Dtype::F32, announced).len();
    let bytes = fs::read(path).map_err(CacheError::io(path))?;
    let mut out = npy::header(Dtype::F32, actual);
    out.extend_from_slice(&bytes[old_header..]);
    write_synced(path, &out)
}

fn checksums_text(files: &[(&str, &str)]) -> String {
    files.iter().map(|(name, digest)| format!("{digest}  {name}\n")).collect()
}

/// Writes a whole file of the entry (`run_folder::write_atomic`: temp file, fsync, rename) and
/// returns its length and sha256.
fn write_synced(path: &Path, bytes: &[u8]) -> Result<FileDigest, CacheError> {
    run_folder::write_atomic(path, bytes)?;
    Ok(FileDigest { bytes: bytes.len() as u64, sha256: run_folder::sha256_hex(bytes) })
}

/// Checks every byte of the entry in `dir` without keeping the data; returns its manifest.
pub fn verify(dir: &Path) -> Result<Manifest, CacheError> {
    read_entry(dir, false).map(|loaded| loaded.manifest)
}

/// Reads the entry in `dir`, checking every byte on the way.
pub fn load(dir: &Path) -> Result<LoadedEntry, CacheError> {
    read_entry(dir, true)
}

fn read_entry(dir: &Path, keep: bool) -> Result<LoadedEntry, CacheError> {
    let checksums_path = dir.join(CHECKSUMS);
    let checksums = read_small(&checksums_path)?;
    let recorded = parse_checksums(&checksums).ok_or_else(|| {
        CacheError::corrupt(&checksums_path, "not the three sha256sum lines this tool writes")
    })?;
    let check = |file: &str, actual: &str| {
        let expected = &recorded[file];
        if expected != actual {
            return Err(CacheError::Digest {
                path: dir.join(file),
                file: file.to_owned(),
                recorded: expected.clone(),
                actual: actual.to_owned(),
            });
        }
        Ok(())
    };

    let manifest_path = dir.join(MANIFEST);
    let manifest_bytes = read_small(&manifest_path)?;
    check(MANIFEST, &run_folder::sha256_hex(&manifest_bytes))?;
    let manifest: Manifest = serde_json::from_slice(&manifest_bytes)
        .map_err(|e| CacheError::corrupt(&manifest_path, format!("unreadable manifest: {e}")))?;
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let key = manifest.components.digest();
    if manifest.key != key || name != key {
        return Err(CacheError::corrupt(
            &manifest_path,
            format!(
                "key mismatch: folder {name}, manifest {}, components hash to {key}",
                manifest.key
            ),
        ));
    }
    if manifest.format_version != FORMAT_VERSION {
        return Err(CacheError::corrupt(
            &manifest_path,
            format!(
                "format version {} (this tool reads {FORMAT_VERSION})",
                manifest.format_version
            ),
        ));
    }
    for file in [FEATURES, LABELS] {
        let listed = manifest.files.get(file).map(|d| d.sha256.as_str()).unwrap_or("(absent)");
        if listed != recorded[file] {
            return Err(CacheError::corrupt(
                &manifest_path,
                format!("manifest and {CHECKSUMS} disagree on {file}"),
            ));
        }
    }

    let rank = manifest.feature_shape.len();
    if rank < 1 {
        return Err(CacheError::corrupt(&manifest_path, "empty feature shape"));
    }
    let (header, data) = read_npy(dir, FEATURES, Dtype::F32, rank, keep, &check)?;
    if header.shape != manifest.feature_shape {
        return Err(CacheError::corrupt(
            dir.join(FEATURES),
            format!("shape {:?}, manifest says {:?}", header.shape, manifest.feature_shape),
        ));
    }
    let (label_header, label_data) = read_npy(dir, LABELS, Dtype::I32, 1, true, &check)?;
    if label_header.shape[0] != header.shape[0] {
        return Err(CacheError::corrupt(
            dir.join(LABELS),
            format!("{} labels for {} feature rows", label_header.shape[0], header.shape[0]),
        ));
    }
    let labels = npy::decode_i32s(&label_data);
    let classes = manifest.components.dataset.classes.len() as i32;
    if let Some(bad) = labels.iter().find(|&&l| l < 0 || l >= classes) {
        return Err(CacheError::corrupt(
            dir.join(LABELS),
            format!("label {bad} outside the {classes} classes"),
        ));
    }
    Ok(LoadedEntry { manifest, features: npy::decode_f32s(&data), labels })
}

/// Reads a `.npy` file of the entry, hashing every byte and checking the header; the data is
/// returned only when `keep` (verification alone streams it).
fn read_npy(
    dir: &Path,
    name: &str,
    dtype: Dtype,
    rank: usize,
    keep: bool,
    check: &dyn Fn(&str, &str) -> Result<(), CacheError>,
) -> Result<(npy::NpyHeader, Vec<u8>), CacheError> {
    let path = dir.join(name);
    let file = File::open(&path).map_err(CacheError::io(&path))?;
    let len = file.metadata().map_err(CacheError::io(&path))?.len();
    let mut reader = HashingReader::new(io::BufReader::with_capacity(1 << 20, file));
    let header = npy::read_header(&mut reader, len, dtype, rank)
        .map_err(|e| CacheError::from_read(&path, e))?;
    let mut data = Vec::new();
    if keep {
        data.try_reserve_exact(header.data_len as usize)
            .map_err(|_| CacheError::corrupt(&path, "too large to load"))?;
        reader.read_to_end(&mut data).map_err(CacheError::io(&path))?;
    } else {
        io::copy(&mut reader, &mut io::sink()).map_err(CacheError::io(&path))?;
    }
    check(name, &reader.hex_digest())?;
    Ok((header, data))
}

fn read_small(path: &Path) -> Result<Vec<u8>, CacheError> {
    let file = File::open(path).map_err(CacheError::io(path))?;
    let mut bytes = Vec::new();
    file.take(MAX_SMALL_FILE + 1).read_to_end(&mut bytes).map_err(CacheError::io(path))?;
    if bytes.len() as u64 > MAX_SMALL_FILE {
        return Err(CacheError::corrupt(path, "far larger than any file this tool writes"));
    }
    Ok(bytes)
}

/// Parses exactly the text [`checksums_text`] writes for our three files.
fn parse_checksums(bytes: &[u8]) -> Option<BTreeMap<&'static str, String>> {
    let text = std::str::from_utf8(bytes).ok()?;
    let mut out = BTreeMap::new();
    let mut lines = text.split_inclusive('\n');
    for name in [FEATURES, LABELS, MANIFEST] {
        let line = lines.next()?.strip_suffix('\n')?;
        let (digest, rest) = line.split_once("  ")?;
        if rest != name
            || digest.len() != 64
            || !digest.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        {
            return None;
        }
        out.insert(name, digest.to_owned());
    }
    lines.next().is_none().then_some(out)
}

/// A writer that hashes what passes through and counts it.
#[derive(Debug)]
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write> HashingWriter<W> {
    fn new(inner: W) -> Self {
        Self { inner, hasher: Sha256::new(), bytes: 0 }
    }

    fn finish(self) -> (W, FileDigest) {
        (self.inner, FileDigest { bytes: self.bytes, sha256: hex::encode(self.hasher.finalize()) })
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> HashingReader<R> {
    fn new(inner: R) -> Self {
        Self { inner, hasher: Sha256::new() }
    }

    fn hex_digest(self) -> String {
        hex::encode(self.hasher.finalize())
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}
