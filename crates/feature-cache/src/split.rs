//! Chunked splits: a split's file list cut into content-defined chunks, each chunk one cache
//! entry; the *split index* that lists a split's chunks in order; and [`SplitReader`], which
//! reads a split through its index one batch of rows at a time.
//!
//! Chunk boundaries come from the data, as in content-defined chunking (LBFS; the scheme
//! HF datasets shards and DVC objects play for their tools): a chunk ends after a file whose
//! *path* hashes to 0 modulo [`CHUNK_BOUNDARY_MODULUS`], or after [`CHUNK_MAX_FILES`] files.
//! Adding, removing or changing an image therefore changes the key of the one chunk that holds
//! it (adding or removing a boundary file splits or joins two chunks), and never the keys of the
//! chunks after it, so a grown dataset reuses everything already extracted. Changing an image's
//! bytes moves no boundary at all (the path is hashed, not the content). The hard maximum bounds
//! a chunk's memory; a run of more than `CHUNK_MAX_FILES` files without a natural boundary (odds
//! about e^-8) is cut by count, and an insertion there shifts the forced cuts up to the next
//! natural boundary.
//!
//! A split index lives at `<root>/index/<key>.json`. Its key hashes the settings shared by the
//! chunks and the chunk keys in order, so it is known before anything is computed, changes when
//! any file does, and never depends on how the work was divided (`--shard i/n`). The index is
//! small: its file is checked by recomputing its key from its content; the chunks it lists are
//! full entries, verified byte by byte when a split is opened.

use std::fs::{self, File};
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use ndarray::{Array1, ArrayD, ArrayViewD, IxDyn};
use serde::{Deserialize, Serialize};

use crate::CacheError;
use crate::entry::{self, FEATURES};
use crate::key::{FORMAT_VERSION, FeatureKey, FileKey, is_key};
use crate::npy::{self, Dtype};

/// A chunk ends after a file whose path hash is 0 modulo this: 128 files per chunk on average
/// (4 MiB of block5_pool features at 150x150, 20 MiB of block4_pool).
pub const CHUNK_BOUNDARY_MODULUS: u64 = 128;
/// The hard maximum of files in one chunk (8 times the average).
pub const CHUNK_MAX_FILES: usize = 1024;
/// Folder of the split indexes under the cache root.
pub const INDEX_DIR: &str = "index";

const BOUNDARY_DOMAIN: &[u8] = b"transfer-kit chunk boundary\n";
const INDEX_DOMAIN: &[u8] = b"transfer-kit split index key\n";
const IDENTITY_DOMAIN: &[u8] = b"transfer-kit image identity\n";
/// Split index files are small (80 bytes a chunk); anything far bigger is not ours.
const MAX_INDEX_FILE: u64 = 64 << 20;

/// Cuts `files` (in dataset order) into consecutive chunks by the rule of the module doc. An
/// empty list gives no chunk; a list shorter than a chunk gives one.
pub fn chunk_ranges(files: &[FileKey]) -> Vec<Range<usize>> {
    let mut ranges = Vec::new();
    let mut start = 0;
    for (i, file) in files.iter().enumerate() {
        if is_boundary(&file.path) || i + 1 - start == CHUNK_MAX_FILES {
            ranges.push(start..i + 1);
            start = i + 1;
        }
    }
    if start < files.len() {
        ranges.push(start..files.len());
    }
    ranges
}

fn is_boundary(path: &str) -> bool {
    let digest = sha256(&[BOUNDARY_DOMAIN, path.as_bytes()]);
    u64::from_be_bytes(digest[..8].try_into().expect("8 bytes")) % CHUNK_BOUNDARY_MODULUS == 0
}

fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

impl FileKey {
    /// A 64-bit identity of the image, from its path and content digest: the index an
    /// augmentation draw is keyed by (`AugmentConfig::sample(seed, pass, identity)`), so a
    /// chunk's augmented features do not depend on where the image sits in its split.
    pub fn identity(&self) -> u64 {
        let digest =
            sha256(&[IDENTITY_DOMAIN, self.path.as_bytes(), b"\0", self.sha256.as_bytes()]);
        u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
    }
}

/// One chunk of a planned split: which files, and the key of its entry.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedChunk {
    /// Positions of its files in the split's file list.
    pub range: Range<usize>,
    /// The chunk's entry key: the split's key with only these files.
    pub key: FeatureKey,
}

/// A split's chunks and its index key, computed from the key of the whole split before any
/// work (so every worker of a sharded run computes the same plan).
#[derive(Debug, Clone, PartialEq)]
pub struct SplitPlan {
    /// The split index's name (64 hex digits).
    pub index_key: String,
    /// The key components the chunks share (`dataset.files` empty).
    pub settings: FeatureKey,
    /// The chunks in file order.
    pub chunks: Vec<PlannedChunk>,
}

impl SplitPlan {
    /// Plans the split whose every file is in `key.dataset.files` (dataset order).
    pub fn new(key: &FeatureKey) -> Self {
        let mut settings = key.clone();
        let files = std::mem::take(&mut settings.dataset.files);
        let chunks: Vec<PlannedChunk> = chunk_ranges(&files)
            .into_iter()
            .map(|range| {
                let mut key = settings.clone();
                key.dataset.files = files[range.clone()].to_vec();
                PlannedChunk { range, key }
            })
            .collect();
        let chunk_keys: Vec<String> = chunks.iter().map(|c| c.key.digest()).collect();
        let index_key = index_key(&settings, &chunk_keys);
        Self { index_key, settings, chunks }
    }

    /// The same files and chunks cut at another layer with another pooling (`none`, `avg`,
    /// `max`): the plan of the lower-layer entries a derivation reads.
    pub fn at_layer(&self, layer: &str, pooling: &str) -> Self {
        let retarget = |key: &FeatureKey| FeatureKey {
            layer: layer.to_owned(),
            pooling: pooling.to_owned(),
            ..key.clone()
        };
        let settings = retarget(&self.settings);
        let chunks: Vec<PlannedChunk> = self
            .chunks
            .iter()
            .map(|c| PlannedChunk { range: c.range.clone(), key: retarget(&c.key) })
            .collect();
        let chunk_keys: Vec<String> = chunks.iter().map(|c| c.key.digest()).collect();
        Self { index_key: index_key(&settings, &chunk_keys), settings, chunks }
    }

    /// The index of this split, given each chunk's row count (files less those skipped as bad).
    ///
    /// # Panics
    /// If `rows` does not have one count per chunk.
    pub fn index(&self, rows: &[u64], tool: &str) -> ChunkIndex {
        assert_eq!(rows.len(), self.chunks.len(), "one row count per chunk");
        ChunkIndex {
            format_version: FORMAT_VERSION,
            key: self.index_key.clone(),
            settings: self.settings.clone(),
            chunks: self
                .chunks
                .iter()
                .zip(rows)
                .map(|(c, &rows)| ChunkRef {
                    key: c.key.digest(),
                    files: c.range.len() as u64,
                    rows,
                })
                .collect(),
            tool: tool.to_owned(),
            created_unix_s: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        }
    }
}

/// `sha256(INDEX_DOMAIN || canonical JSON of (settings, chunk keys))`.
fn index_key(settings: &FeatureKey, chunk_keys: &[String]) -> String {
    #[derive(Serialize)]
    struct IndexKey<'a> {
        settings: &'a FeatureKey,
        chunks: &'a [String],
    }
    let json = serde_json::to_vec(&IndexKey { settings, chunks: chunk_keys })
        .expect("the index key serialises: no maps");
    run_folder::sha256_hex(&[INDEX_DOMAIN, &json].concat())
}

/// The split index: `<root>/index/<key>.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkIndex {
    /// [`FORMAT_VERSION`] of the tool that wrote it.
    pub format_version: u32,
    /// The index's name: the hash of `settings` and the chunk keys.
    pub key: String,
    /// The key components every chunk shares; `dataset.files` is empty (each chunk's manifest
    /// lists its files).
    pub settings: FeatureKey,
    /// The chunks, in file order.
    pub chunks: Vec<ChunkRef>,
    /// Program that wrote it.
    pub tool: String,
    /// When it was written, seconds since the Unix epoch (not part of the key).
    pub created_unix_s: u64,
}

/// One chunk in a split index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkRef {
    /// The chunk entry's key.
    pub key: String,
    /// Files of the split in this chunk.
    pub files: u64,
    /// Feature rows it holds (`files` less the images skipped as bad).
    pub rows: u64,
}

impl ChunkIndex {
    /// Rows of the whole split.
    pub fn rows(&self) -> u64 {
        self.chunks.iter().map(|c| c.rows).sum()
    }

    /// Reads and checks the index file `path`: it parses, its format version is ours, its
    /// content hashes to its key, which is also its file name, and every chunk key is a key.
    pub fn read(path: &Path) -> Result<Self, CacheError> {
        let bytes = match fs::metadata(path) {
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                return Err(CacheError::Missing { path: path.to_owned() });
            }
            Err(err) => return Err(CacheError::Io { path: path.to_owned(), source: err }),
            Ok(m) if m.len() > MAX_INDEX_FILE => {
                return Err(CacheError::corrupt(path, "far larger than any split index"));
            }
            Ok(_) => fs::read(path).map_err(CacheError::io(path))?,
        };
        let index: ChunkIndex = serde_json::from_slice(&bytes)
            .map_err(|e| CacheError::corrupt(path, format!("unreadable split index: {e}")))?;
        if index.format_version != FORMAT_VERSION {
            return Err(CacheError::corrupt(
                path,
                format!(
                    "format version {} (this tool reads {FORMAT_VERSION})",
                    index.format_version
                ),
            ));
        }
        let keys: Vec<String> = index.chunks.iter().map(|c| c.key.clone()).collect();
        let name = path.file_stem().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let hashed = index_key(&index.settings, &keys);
        if index.key != hashed || name != hashed || !index.settings.dataset.files.is_empty() {
            return Err(CacheError::corrupt(
                path,
                format!(
                    "key mismatch: file {name}, index {}, content hashes to {hashed}",
                    index.key
                ),
            ));
        }
        if let Some(bad) = keys.iter().find(|k| !is_key(k)) {
            return Err(CacheError::corrupt(path, format!("{bad:?} is not a chunk key")));
        }
        Ok(index)
    }
}

/// The file of index `key` under the cache root `root`.
pub fn index_path(root: &Path, key: &str) -> PathBuf {
    root.join(INDEX_DIR).join(format!("{key}.json"))
}

/// Writes `index` under `root` atomically (temp file, fsync, rename). Two writers of the same
/// index write the same chunks and counts, so the last rename wins harmlessly.
pub fn write_index(root: &Path, index: &ChunkIndex) -> Result<PathBuf, CacheError> {
    let dir = root.join(INDEX_DIR);
    fs::create_dir_all(&dir).map_err(CacheError::io(&dir))?;
    let path = index_path(root, &index.key);
    let mut bytes = serde_json::to_vec_pretty(index).expect("index serialises");
    bytes.push(b'\n');
    run_folder::write_atomic(&path, &bytes)?;
    crate::folders::sync_dir(&dir)?;
    Ok(path)
}

/// One verified chunk of an open split.
#[derive(Debug)]
struct OpenChunk {
    features: PathBuf,
    first_row: u64,
    rows: u64,
    /// Offset of the first feature value in `features.npy` (its header's length).
    data_offset: u64,
}

/// A split opened through its index, every chunk verified byte by byte; only the chunk
/// offsets and the labels (4 bytes a row) are kept, and features are read from the chunk files
/// on demand, so memory does not grow with the split.
#[derive(Debug)]
pub struct SplitReader {
    index: ChunkIndex,
    row_shape: Vec<u64>,
    row_len: usize,
    labels: Vec<i32>,
    skipped: Vec<String>,
    chunks: Vec<OpenChunk>,
}

impl SplitReader {
    /// Opens the split index `key`, looking for the index and for each chunk in `roots` in
    /// order (a run's private cache, then the shared one). Verifies the index and every chunk
    /// completely (as [`crate::verify_entry`]) and checks that the chunks are the index's: the
    /// same settings, files and row counts, and one row shape.
    ///
    /// Errors: [`CacheError::Missing`] naming the index or the first missing chunk, or the
    /// first problem found (each names its file).
    pub fn open(roots: &[&Path], key: &str) -> Result<Self, CacheError> {
        let first = roots.first().copied().unwrap_or(Path::new("."));
        if !is_key(key) {
            return Err(CacheError::Usage {
                path: index_path(first, key),
                reason: "not a split index key (64 lowercase hex digits)".into(),
            });
        }
        let index_file = find_in(roots, |r| index_path(r, key))
            .ok_or_else(|| CacheError::Missing { path: index_path(first, key) })?;
        let index = ChunkIndex::read(&index_file)?;
        let mut reader = Self {
            index: index.clone(),
            row_shape: Vec::new(),
            row_len: 0,
            labels: Vec::new(),
            skipped: Vec::new(),
            chunks: Vec::with_capacity(index.chunks.len()),
        };
        let mut first_row = 0;
        for chunk in &index.chunks {
            let dir = find_in(roots, |r| r.join(&chunk.key))
                .ok_or_else(|| CacheError::Missing { path: first.join(&chunk.key) })?;
            let loaded = entry::read_entry(&dir, false)?;
            let m = &loaded.manifest;
            let mut settings = m.components.clone();
            let files = std::mem::take(&mut settings.dataset.files);
            let mismatch = |why: String| {
                CacheError::corrupt(
                    &index_file,
                    format!("chunk {} is not the one the index lists: {why}", chunk.key),
                )
            };
            if settings != index.settings {
                return Err(mismatch("other settings".into()));
            }
            if files.len() as u64 != chunk.files || m.feature_shape[0] != chunk.rows {
                return Err(mismatch(format!(
                    "{} files and {} rows, the index says {} and {}",
                    files.len(),
                    m.feature_shape[0],
                    chunk.files,
                    chunk.rows
                )));
            }
            let row_shape = &m.feature_shape[1..];
            if reader.chunks.is_empty() {
                reader.row_shape = row_shape.to_vec();
                reader.row_len = row_shape.iter().product::<u64>() as usize;
            } else if row_shape != reader.row_shape.as_slice() {
                return Err(mismatch(format!(
                    "rows of shape {row_shape:?}, earlier chunks {:?}",
                    reader.row_shape
                )));
            }
            reader.labels.extend_from_slice(&loaded.labels);
            reader.skipped.extend(m.skipped.iter().cloned());
            reader.chunks.push(OpenChunk {
                features: dir.join(FEATURES),
                first_row,
                rows: chunk.rows,
                data_offset: npy::header(Dtype::F32, &m.feature_shape).len() as u64,
            });
            first_row += chunk.rows;
        }
        Ok(reader)
    }

    /// The split index key.
    pub fn key(&self) -> &str {
        &self.index.key
    }

    /// The verified split index.
    pub fn index(&self) -> &ChunkIndex {
        &self.index
    }

    /// The key components the chunks share (`dataset.files` empty; [`SplitReader::files`]
    /// lists the files).
    pub fn settings(&self) -> &FeatureKey {
        &self.index.settings
    }

    /// Rows of the split, `N`.
    pub fn rows(&self) -> u64 {
        self.labels.len() as u64
    }

    /// Shape of one row: `[H, W, C]` (channels last, as Keras) or `[C]` when pooled; empty for
    /// a split without chunks.
    pub fn row_shape(&self) -> &[u64] {
        &self.row_shape
    }

    /// Values in one row (the product of [`SplitReader::row_shape`]).
    pub fn row_len(&self) -> usize {
        self.row_len
    }

    /// `[N]` class indices into `settings().dataset.classes`.
    pub fn labels(&self) -> &[i32] {
        &self.labels
    }

    /// Files skipped as bad at extraction, relative to the split folder, over all chunks.
    pub fn skipped(&self) -> &[String] {
        &self.skipped
    }

    /// Every file of the split in row order (skipped ones included), re-read from the chunk
    /// manifests.
    pub fn files(&self) -> Result<Vec<FileKey>, CacheError> {
        let mut files = Vec::new();
        for chunk in &self.chunks {
            let dir = chunk.features.parent().expect("an entry file has a folder");
            let path = dir.join(entry::MANIFEST);
            let manifest: entry::Manifest =
                serde_json::from_slice(&fs::read(&path).map_err(CacheError::io(&path))?)
                    .map_err(|e| CacheError::corrupt(&path, format!("unreadable manifest: {e}")))?;
            files.extend(manifest.components.dataset.files);
        }
        Ok(files)
    }

    /// Gathers `rows` (any order, repeats allowed) into `out`, row `i` of the result at
    /// `out[i * row_len..]`; reads only those rows from disk.
    ///
    /// Errors: [`CacheError::Usage`] when a row is out of range or `out` has the wrong length;
    /// an I/O error naming the chunk file.
    pub fn read_rows(&self, rows: &[u64], out: &mut [f32]) -> Result<(), CacheError> {
        self.check_out(rows.len(), out)?;
        // Visited in row order, so each chunk file is opened once per call however shuffled
        // the batch is.
        let mut order: Vec<usize> = (0..rows.len()).collect();
        order.sort_unstable_by_key(|&i| rows[i]);
        let row_len = self.row_len;
        let mut open: Option<(usize, File)> = None;
        let mut bytes = vec![0u8; row_len * 4];
        for i in order {
            let row = rows[i];
            let c = self.chunk_of(row)?;
            if open.as_ref().is_none_or(|(open_chunk, _)| *open_chunk != c) {
                let path = &self.chunks[c].features;
                open = Some((c, File::open(path).map_err(CacheError::io(path))?));
            }
            let (_, file) = open.as_ref().expect("opened above");
            self.read_at(c, file, row, &mut bytes)?;
            decode_f32(&bytes, &mut out[i * row_len..(i + 1) * row_len]);
        }
        Ok(())
    }

    /// Rows `start..start + len` in order into `out` (`len * row_len` values).
    pub fn read_range(&self, start: u64, len: u64, out: &mut [f32]) -> Result<(), CacheError> {
        self.check_out(len as usize, out)?;
        let end = start + len;
        if len > 0 && end > self.rows() {
            return Err(self.out_of_range(end - 1));
        }
        let mut row = start;
        let mut written = 0;
        while row < end {
            let c = self.chunk_of(row)?;
            let chunk = &self.chunks[c];
            let n = (chunk.first_row + chunk.rows).min(end) - row;
            let file = File::open(&chunk.features).map_err(CacheError::io(&chunk.features))?;
            let mut bytes = vec![0u8; n as usize * self.row_len * 4];
            self.read_at(c, &file, row, &mut bytes)?;
            let values = n as usize * self.row_len;
            decode_f32(&bytes, &mut out[written..written + values]);
            written += values;
            row += n;
        }
        Ok(())
    }

    /// Reads the whole split into memory (small splits, tests, tools).
    pub fn load(&self) -> Result<LoadedSplit, CacheError> {
        let mut features = vec![0f32; self.labels.len() * self.row_len];
        self.read_range(0, self.rows(), &mut features)?;
        let mut feature_shape = vec![self.rows()];
        feature_shape.extend_from_slice(&self.row_shape);
        Ok(LoadedSplit {
            key: self.key().to_owned(),
            settings: self.settings().clone(),
            feature_shape,
            features,
            labels: self.labels.clone(),
            skipped: self.skipped.clone(),
        })
    }

    fn check_out(&self, rows: usize, out: &[f32]) -> Result<(), CacheError> {
        if out.len() != rows * self.row_len {
            return Err(CacheError::Usage {
                path: PathBuf::from(self.key()),
                reason: format!(
                    "{} values asked for {rows} rows of {} values",
                    out.len(),
                    self.row_len
                ),
            });
        }
        Ok(())
    }

    fn chunk_of(&self, row: u64) -> Result<usize, CacheError> {
        if row >= self.rows() {
            return Err(self.out_of_range(row));
        }
        Ok(self.chunks.partition_point(|c| c.first_row + c.rows <= row))
    }

    fn out_of_range(&self, row: u64) -> CacheError {
        CacheError::Usage {
            path: PathBuf::from(self.key()),
            reason: format!("row {row} of a split of {} rows", self.rows()),
        }
    }

    /// Reads `bytes.len()` bytes of chunk `c` from row `row` on.
    fn read_at(&self, c: usize, file: &File, row: u64, bytes: &mut [u8]) -> Result<(), CacheError> {
        let chunk = &self.chunks[c];
        let offset = chunk.data_offset + (row - chunk.first_row) * self.row_len as u64 * 4;
        file.read_exact_at(bytes, offset).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                CacheError::corrupt(&chunk.features, "shorter than when it was verified")
            } else {
                CacheError::Io { path: chunk.features.clone(), source: e }
            }
        })
    }
}

fn find_in(roots: &[&Path], path: impl Fn(&Path) -> PathBuf) -> Option<PathBuf> {
    roots.iter().map(|r| path(r)).find(|p| p.exists())
}

fn decode_f32(bytes: &[u8], out: &mut [f32]) {
    for (v, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
        *v = f32::from_le_bytes(b.try_into().expect("4 bytes"));
    }
}

/// A whole split in memory: features in the stored layout and labels.
#[derive(Debug, Clone)]
pub struct LoadedSplit {
    /// The split index key.
    pub key: String,
    /// The key components the chunks share (`dataset.files` empty).
    pub settings: FeatureKey,
    /// `[N, H, W, C]` or `[N, C]`.
    pub feature_shape: Vec<u64>,
    /// All feature values, C order, in [`LoadedSplit::shape`].
    pub features: Vec<f32>,
    /// `[N]` class indices into `settings.dataset.classes`.
    pub labels: Vec<i32>,
    /// Files skipped as bad at extraction.
    pub skipped: Vec<String>,
}

impl LoadedSplit {
    /// Shape of the features, `[N, ...]`.
    pub fn shape(&self) -> &[u64] {
        &self.feature_shape
    }

    /// The features as an array view of [`LoadedSplit::shape`], C order.
    pub fn features_view(&self) -> ArrayViewD<'_, f32> {
        ArrayViewD::from_shape(self.dim(), &self.features)
            .expect("features hold exactly the shape (read so)")
    }

    /// Features and labels as owned arrays (moved, not copied).
    pub fn into_arrays(self) -> (ArrayD<f32>, Array1<i32>) {
        let features = ArrayD::from_shape_vec(self.dim(), self.features)
            .expect("features hold exactly the shape (read so)");
        (features, Array1::from(self.labels))
    }

    fn dim(&self) -> IxDyn {
        IxDyn(&self.feature_shape.iter().map(|&d| d as usize).collect::<Vec<_>>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::tests::sample_key;

    fn files(n: usize) -> Vec<FileKey> {
        (0..n)
            .map(|i| FileKey {
                path: format!("c{}/{i:06}.png", i % 2),
                label: (i % 2) as u32,
                sha256: format!("{i:064x}"),
            })
            .collect()
    }

    fn keys(files: &[FileKey]) -> Vec<String> {
        let mut key = sample_key();
        key.dataset.files = files.to_vec();
        SplitPlan::new(&key).chunks.iter().map(|c| c.key.digest()).collect()
    }

    /// How many chunk keys of `after` are not in `before`, and the other way round.
    fn changed(before: &[String], after: &[String]) -> (usize, usize) {
        let new = after.iter().filter(|k| !before.contains(k)).count();
        let gone = before.iter().filter(|k| !after.contains(k)).count();
        (new, gone)
    }

    #[test]
    fn chunks_cover_every_file_once_in_order_within_the_maximum() {
        for n in [0, 1, 5, 127, 128, 1000, 3000] {
            let f = files(n);
            let ranges = chunk_ranges(&f);
            assert_eq!(ranges.iter().map(|r| r.len()).sum::<usize>(), n);
            let mut next = 0;
            for r in &ranges {
                assert_eq!(r.start, next);
                assert!(!r.is_empty() && r.len() <= CHUNK_MAX_FILES);
                next = r.end;
            }
            if n > 0 && n < 100 {
                assert_eq!(ranges.len(), 1, "{n} files: one chunk unless a boundary falls in it");
            }
        }
        // Content-defined: on 3000 files the boundaries give about 3000 / 128 chunks.
        let count = chunk_ranges(&files(3000)).len();
        assert!((12..=40).contains(&count), "{count} chunks");
    }

    #[test]
    fn the_hard_maximum_cuts_a_run_without_boundaries() {
        let f: Vec<FileKey> = files(50_000)
            .into_iter()
            .filter(|f| !is_boundary(&f.path))
            .take(2 * CHUNK_MAX_FILES + 5)
            .collect();
        let lens: Vec<usize> = chunk_ranges(&f).iter().map(|r| r.len()).collect();
        assert_eq!(lens, [CHUNK_MAX_FILES, CHUNK_MAX_FILES, 5]);
    }

    #[test]
    fn one_file_changed_alters_exactly_one_chunk_key() {
        let f = files(2000);
        let before = keys(&f);
        assert!(before.len() > 3);
        for i in [0, 700, 1999] {
            let mut g = f.clone();
            g[i].sha256 = "ff".repeat(32);
            assert_eq!(changed(&before, &keys(&g)), (1, 1), "content of file {i}");
            let mut g = f.clone();
            g[i].label = 1 - g[i].label;
            assert_eq!(changed(&before, &keys(&g)), (1, 1), "label of file {i}");
        }
    }

    #[test]
    fn one_file_added_or_removed_alters_exactly_one_chunk_key() {
        let f = files(2000);
        let before = keys(&f);
        // Files that are not boundaries: the chunk holding them changes, no other.
        let inner: Vec<usize> =
            (0..f.len()).filter(|&i| !is_boundary(&f[i].path)).step_by(97).collect();
        assert!(inner.len() > 10);
        for &i in &inner {
            let mut g = f.clone();
            g.remove(i);
            assert_eq!(changed(&before, &keys(&g)), (1, 1), "removing file {i}");
            let mut g = f.clone();
            let added = FileKey { path: format!("{}-new.png", f[i].path), ..f[i].clone() };
            if is_boundary(&added.path) {
                continue;
            }
            g.insert(i + 1, added);
            assert_eq!(changed(&before, &keys(&g)), (1, 1), "adding after file {i}");
        }
        // A boundary file: removing it joins its chunk with the next (two keys become one).
        let b = (0..f.len() - 1).find(|&i| is_boundary(&f[i].path)).expect("a boundary");
        let mut g = f.clone();
        g.remove(b);
        assert_eq!(changed(&before, &keys(&g)), (1, 2));
    }

    #[test]
    fn the_index_key_follows_the_chunks_and_the_settings() {
        let mut key = sample_key();
        key.dataset.files = files(600);
        let plan = SplitPlan::new(&key);
        assert_eq!(plan.index_key, SplitPlan::new(&key).index_key);
        assert!(plan.settings.dataset.files.is_empty());
        let mut other = key.clone();
        other.dataset.files[300].sha256 = "ee".repeat(32);
        assert_ne!(SplitPlan::new(&other).index_key, plan.index_key);
        let mut other = key.clone();
        other.layer = "block4_pool".into();
        assert_ne!(SplitPlan::new(&other).index_key, plan.index_key);
        // The chunk keys are whole-key digests of their own files.
        for c in &plan.chunks {
            assert_eq!(c.key.dataset.files, key.dataset.files[c.range.clone()]);
        }
        // Another layer's plan is the plan of that layer's key.
        let mut lower = key.clone();
        lower.layer = "block4_pool".into();
        assert_eq!(plan.at_layer("block4_pool", "none"), SplitPlan::new(&lower));
    }

    #[test]
    fn identity_depends_on_path_and_content_only() {
        let f = files(3);
        assert_ne!(f[0].identity(), f[1].identity());
        let moved_label = FileKey { label: 1, ..f[0].clone() };
        assert_eq!(moved_label.identity(), f[0].identity());
        let changed = FileKey { sha256: "ab".repeat(32), ..f[0].clone() };
        assert_ne!(changed.identity(), f[0].identity());
    }
}
