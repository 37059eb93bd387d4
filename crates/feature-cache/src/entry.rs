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

use ndarray::{Array1, ArrayD, ArrayView, ArrayView1, ArrayViewD, Dimension, IxDyn};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::CacheError;
use crate::folders::{aside_name, remove_dir_quietly, sync_dir};
use crate::key::{FORMAT_VERSION, FeatureKey};
use crate::npy::{self, Dtype};

/// The features file of an entry: `<f4`, C order, `[N, ...]`.
pub const FEATURES: &str = "features.npy";
/// The labels file of an entry: `<i4`, `[N]`.
pub const LABELS: &str = "labels.npy";
/// The manifest of an entry ([`Manifest`], pretty JSON).
pub const MANIFEST: &str = "manifest.json";
/// The `sha256sum` lines of an entry's three other files.
pub const CHECKSUMS: &str = "checksums.sha256";
/// Manifests and checksum lists are small; anything bigger is not ours.
const MAX_SMALL_FILE: u64 = 64 << 20;

/// What `manifest.json` records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// [`FORMAT_VERSION`] of the tool that wrote the entry.
    pub format_version: u32,
    /// The entry name; equals `components.digest()`.
    pub key: String,
    /// Every input that determined the features, in clear.
    pub components: FeatureKey,
    /// Full shape of `features.npy`, `[N, ...]`.
    pub feature_shape: Vec<u64>,
    /// Length and sha256 of `features.npy` and `labels.npy`.
    pub files: BTreeMap<String, FileDigest>,
    /// Program that wrote the entry, e.g. `extract-features 0.0.0`.
    pub tool: String,
    /// When the entry was written, seconds since the Unix epoch (not part of the key).
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

/// Length and digest of one file of an entry, as the manifest records them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileDigest {
    /// Length in bytes.
    pub bytes: u64,
    /// Lower-case hex sha256 of the whole file.
    pub sha256: String,
}

/// Features and labels of a verified entry, in memory.
///
/// The arrays: [`LoadedEntry::features_view`] / [`LoadedEntry::labels_view`] borrow them as
/// `ndarray` views, [`LoadedEntry::into_arrays`] moves them into owned arrays (no copy). The flat
/// fields are what the tch stages read (`Tensor::from_slice`).
#[derive(Debug, Clone)]
pub struct LoadedEntry {
    /// The entry's verified manifest.
    pub manifest: Manifest,
    /// All feature values, C order, in the stored layout [`LoadedEntry::shape`]:
    /// `[N, H, W, C]` (channels last, as Keras) without pooling, `[N, C]` with it.
    pub features: Vec<f32>,
    /// `[N]` class indices into `manifest.components.dataset.classes`, each in `0..classes`.
    pub labels: Vec<i32>,
}

impl LoadedEntry {
    /// Shape of the features, `[N, ...]` (`manifest.feature_shape`).
    pub fn shape(&self) -> &[u64] {
        &self.manifest.feature_shape
    }

    /// The features as an array view of shape [`LoadedEntry::shape`] (`[N, H, W, C]` or `[N, C]`),
    /// C order.
    ///
    /// # Panics
    /// If `features` was changed to a length other than the product of the shape (a loaded
    /// entry always matches: the loader checks it).
    pub fn features_view(&self) -> ArrayViewD<'_, f32> {
        ArrayViewD::from_shape(self.dim(), &self.features)
            .expect("features hold exactly the manifest's shape (checked when loaded)")
    }

    /// The labels as a `[N]` array view.
    pub fn labels_view(&self) -> ArrayView1<'_, i32> {
        ArrayView1::from(&self.labels)
    }

    /// Features (`[N, ...]`, the stored layout) and labels (`[N]`) as owned arrays; the values
    /// are moved, not copied.
    ///
    /// # Panics
    /// As [`LoadedEntry::features_view`].
    pub fn into_arrays(self) -> (ArrayD<f32>, Array1<i32>) {
        let features = ArrayD::from_shape_vec(self.dim(), self.features)
            .expect("features hold exactly the manifest's shape (checked when loaded)");
        (features, Array1::from(self.labels))
    }

    fn dim(&self) -> IxDyn {
        let dims: Vec<usize> = self
            .shape()
            .iter()
            .map(|&d| usize::try_from(d).expect("a loaded shape fits in memory"))
            .collect();
        IxDyn(&dims)
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
    /// the same file system as `final_dir` (the cache puts it beside). A shape whose size in
    /// bytes does not fit in memory is refused (the reader would refuse it too).
    pub(crate) fn create(
        tmp_dir: PathBuf,
        final_dir: PathBuf,
        key: FeatureKey,
        tool: &str,
        rows: u64,
        row_shape: &[u64],
    ) -> Result<Self, CacheError> {
        let mut feature_shape = vec![rows];
        feature_shape.extend_from_slice(row_shape);
        let row_len = row_shape
            .iter()
            .filter(|&&d| d != 0)
            .try_fold(4u64, |acc, &d| acc.checked_mul(d))
            .filter(|&bytes| bytes <= isize::MAX as u64)
            .map(|_| row_shape.iter().product::<u64>() as usize)
            .ok_or_else(|| CacheError::Usage {
                path: final_dir.clone(),
                reason: format!("rows of shape {row_shape:?} are too large to address"),
            })?;
        fs::create_dir(&tmp_dir).map_err(CacheError::io(&tmp_dir))?;
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

    /// Appends rows given as arrays: `features` of shape `[n, ...row_shape]` (any memory
    /// layout; written in logical C order) and `labels` of shape `[n]`. The row shape must equal
    /// the one the entry was started with, axis by axis.
    pub fn append_array<D: Dimension>(
        &mut self,
        features: ArrayView<'_, f32, D>,
        labels: ArrayView1<'_, i32>,
    ) -> Result<(), CacheError> {
        let shape = features.shape();
        let row_shape_ok = shape.len() == self.feature_shape.len()
            && shape[1..].iter().zip(&self.feature_shape[1..]).all(|(&a, &b)| a as u64 == b);
        if !row_shape_ok || shape[0] != labels.len() {
            return Err(CacheError::Usage {
                path: self.tmp_dir.join(FEATURES),
                reason: format!(
                    "features of shape {shape:?} with {} labels, rows have shape {:?}",
                    labels.len(),
                    &self.feature_shape[1..]
                ),
            });
        }
        let labels = labels.to_vec();
        match features.as_slice() {
            Some(values) => self.append(values, &labels),
            None => self.append(&features.iter().copied().collect::<Vec<_>>(), &labels),
        }
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

        let labels_path = tmp_dir.join(LABELS);
        let mut label_bytes = npy::header(Dtype::I32, &[labels.len() as u64]);
        npy::write_i32s(&mut label_bytes, &labels).map_err(CacheError::io(&labels_path))?;
        let labels_digest = write_synced(&labels_path, &label_bytes)?;

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

/// Checks every byte of the entry folder `dir` without keeping the data; returns its manifest.
/// The checks are those of [`verify_entry`], which takes a cache root and a key instead.
pub fn verify(dir: &Path) -> Result<Manifest, CacheError> {
    read_entry(dir, false).map(|loaded| loaded.manifest)
}

/// Verifies the entry `key` of the cache rooted at `root` completely, as a lookup does before
/// using one, and returns its manifest. Checked: `checksums.sha256` is exactly the three
/// `sha256sum` lines this tool writes; the sha256 of `manifest.json`, `features.npy` and
/// `labels.npy` each equals its line, and the manifest lists the same digests and each file's
/// exact length; the manifest's components hash to `key`, which is also the folder's name; its
/// format version is [`FORMAT_VERSION`]; both `.npy` files have exactly the header (dtype, C
/// order, rank, shape) and length the manifest implies; every label is an index into the
/// manifest's classes. Every byte is read and none kept. Nothing is created, changed or removed,
/// so it is safe on a shared or read-only cache, and needs no libtorch.
///
/// Errors (each names the file): [`CacheError::Usage`] when `key` is not an entry name (64
/// lowercase hex digits); [`CacheError::Missing`] when `root` has no folder `key`; otherwise the
/// first problem found, for which [`CacheError::is_corruption`] tells a damaged entry (recompute
/// it) from a cache that could not be read.
pub fn verify_entry(root: &Path, key: &str) -> Result<Manifest, CacheError> {
    let dir = root.join(key);
    if !crate::is_key(key) {
        return Err(CacheError::Usage {
            path: dir,
            reason: "not a cache key (64 lowercase hex digits)".into(),
        });
    }
    match fs::symlink_metadata(&dir) {
        Err(err) if err.kind() == io::ErrorKind::NotFound => Err(CacheError::Missing { path: dir }),
        Err(err) => Err(CacheError::Io { path: dir, source: err }),
        Ok(_) => verify(&dir),
    }
}

/// Reads the entry folder `dir`, checking every byte on the way (the checks of
/// [`verify_entry`]); the features and labels are kept.
pub fn load(dir: &Path) -> Result<LoadedEntry, CacheError> {
    read_entry(dir, true)
}

pub(crate) fn read_entry(dir: &Path, keep: bool) -> Result<LoadedEntry, CacheError> {
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
    let (header, features) = read_npy(
        dir,
        FEATURES,
        (Dtype::F32, rank),
        &manifest,
        keep.then_some(|r: &mut NpyReader, h: &npy::NpyHeader| npy::read_f32s(r, h)),
        &check,
    )?;
    if header.shape != manifest.feature_shape {
        return Err(CacheError::corrupt(
            dir.join(FEATURES),
            format!("shape {:?}, manifest says {:?}", header.shape, manifest.feature_shape),
        ));
    }
    let (label_header, labels) = read_npy(
        dir,
        LABELS,
        (Dtype::I32, 1),
        &manifest,
        Some(|r: &mut NpyReader, h: &npy::NpyHeader| npy::read_i32s(r, h)),
        &check,
    )?;
    if label_header.shape[0] != header.shape[0] {
        return Err(CacheError::corrupt(
            dir.join(LABELS),
            format!("{} labels for {} feature rows", label_header.shape[0], header.shape[0]),
        ));
    }
    let classes = manifest.components.dataset.classes.len() as i32;
    if let Some(bad) = labels.iter().find(|&&l| l < 0 || l >= classes) {
        return Err(CacheError::corrupt(
            dir.join(LABELS),
            format!("label {bad} outside the {classes} classes"),
        ));
    }
    Ok(LoadedEntry { manifest, features, labels })
}

/// How an entry's `.npy` file is read: buffered above the hasher, so every byte is hashed once,
/// in large blocks, whatever the parser's read sizes.
type NpyReader = io::BufReader<HashingReader<File>>;

/// Reads a `.npy` file of the entry: checks its header (`(dtype, rank)`), decodes the data with
/// `decode` when given (verification alone streams it), and checks the file's sha256 against
/// `checksums.sha256` (`check`) and its length against the manifest.
fn read_npy<T>(
    dir: &Path,
    name: &str,
    (dtype, rank): (Dtype, usize),
    manifest: &Manifest,
    decode: Option<impl FnOnce(&mut NpyReader, &npy::NpyHeader) -> Result<Vec<T>, npy::ReadError>>,
    check: &dyn Fn(&str, &str) -> Result<(), CacheError>,
) -> Result<(npy::NpyHeader, Vec<T>), CacheError> {
    let path = dir.join(name);
    let file = File::open(&path).map_err(CacheError::io(&path))?;
    let len = file.metadata().map_err(CacheError::io(&path))?.len();
    let mut reader = io::BufReader::with_capacity(1 << 20, HashingReader::new(file));
    let header = npy::read_header(&mut reader, len, dtype, rank)
        .map_err(|e| CacheError::from_read(&path, e))?;
    let values = match decode {
        Some(decode) => decode(&mut reader, &header).map_err(|e| match e {
            npy::ReadError::Io(e) if e.kind() == io::ErrorKind::OutOfMemory => {
                CacheError::corrupt(&path, format!("too large to load: {e}"))
            }
            e => CacheError::from_read(&path, e),
        })?,
        None => Vec::new(),
    };
    // Whatever is left (nothing, unless the file grew since its length was taken) is hashed too.
    io::copy(&mut reader, &mut io::sink()).map_err(CacheError::io(&path))?;
    check(name, &reader.into_inner().hex_digest())?;
    let listed = manifest.files.get(name).map_or(0, |d| d.bytes);
    if listed != len {
        return Err(CacheError::corrupt(&path, format!("{len} bytes, the manifest says {listed}")));
    }
    Ok((header, values))
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
