//! A strict `.npy` (NumPy format 1.0) writer and reader for the two arrays a cache entry holds:
//! little-endian `float32` features and `int32` labels, C order.
//!
//! Hand-written rather than taken from a crate on purpose: the reader accepts exactly the bytes
//! the writer produces and nothing else (header must re-encode byte for byte, header length
//! capped before allocating, checked arithmetic, exact file length), so a damaged or foreign file
//! is an error with a reason, never a panic or a silent misread. `numpy.load` reads our files.

use std::io::{self, Read, Write};

const MAGIC: &[u8; 6] = b"\x93NUMPY";
/// Our headers are a few dozen bytes; anything longer is not ours and is refused before
/// allocating.
pub const MAX_HEADER_LEN: usize = 1024;
/// Header (magic + version + length + dict) is padded to a multiple of this, as NumPy does.
const ALIGN: usize = 64;

/// The element types a cache entry stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    F32,
    I32,
}

impl Dtype {
    fn descr(self) -> &'static str {
        match self {
            Dtype::F32 => "<f4",
            Dtype::I32 => "<i4",
        }
    }
}

/// Why bytes are not a `.npy` file we wrote.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NpyError {
    #[error("not a .npy file (bad magic)")]
    BadMagic,
    #[error("unsupported .npy version {0}.{1} (expected 1.0)")]
    Version(u8, u8),
    #[error("header length {0} exceeds {MAX_HEADER_LEN}")]
    HeaderTooLong(usize),
    #[error("header is not one this tool writes: {0:?}")]
    BadHeader(String),
    #[error("dtype {found} where {expected} was expected")]
    Dtype { expected: &'static str, found: String },
    #[error("rank {found} where {expected} was expected")]
    Rank { expected: usize, found: usize },
    #[error("shape {shape:?} is too large to address")]
    Overflow { shape: Vec<u64> },
    #[error("file is {actual} bytes, but its header promises {expected}")]
    Length { expected: u64, actual: u64 },
    #[error("file ends inside the header")]
    Truncated,
}

/// The complete header bytes for `shape` (preamble, dict, padding, newline).
pub fn header(dtype: Dtype, shape: &[u64]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(u64::to_string).collect();
    let tuple = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut dict =
        format!("{{'descr': '{}', 'fortran_order': False, 'shape': {tuple}, }}", dtype.descr());
    let unpadded = MAGIC.len() + 2 + 2 + dict.len() + 1;
    dict.extend(std::iter::repeat_n(' ', unpadded.next_multiple_of(ALIGN) - unpadded));
    dict.push('\n');
    let mut out = Vec::with_capacity(unpadded.next_multiple_of(ALIGN));
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out
}

/// Parsed header of a file we wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NpyHeader {
    pub dtype: Dtype,
    pub shape: Vec<u64>,
    /// Bytes before the data.
    pub header_len: u64,
    /// Bytes of data the header promises (checked product of the shape times 4).
    pub data_len: u64,
}

/// Reads and checks the header from `reader`, given the file's total length: the header must be
/// exactly what [`header`] writes for its shape, of dtype `dtype` and rank `rank`, and
/// `file_len` must be header + data to the byte.
pub fn read_header(
    reader: &mut impl Read,
    file_len: u64,
    dtype: Dtype,
    rank: usize,
) -> Result<NpyHeader, ReadError> {
    let mut pre = [0u8; 10];
    read_exact(reader, &mut pre)?;
    if &pre[..6] != MAGIC {
        return Err(NpyError::BadMagic.into());
    }
    if pre[6..8] != [1, 0] {
        return Err(NpyError::Version(pre[6], pre[7]).into());
    }
    let dict_len = u16::from_le_bytes([pre[8], pre[9]]) as usize;
    if dict_len > MAX_HEADER_LEN {
        return Err(NpyError::HeaderTooLong(dict_len).into());
    }
    let mut dict = vec![0u8; dict_len];
    read_exact(reader, &mut dict)?;
    let text = String::from_utf8_lossy(&dict).into_owned();
    let (found_dtype, shape) = parse_dict(&text)?;
    if found_dtype != dtype.descr() {
        return Err(NpyError::Dtype { expected: dtype.descr(), found: found_dtype }.into());
    }
    if shape.len() != rank {
        return Err(NpyError::Rank { expected: rank, found: shape.len() }.into());
    }
    let mut full = pre.to_vec();
    full.extend_from_slice(&dict);
    if full != header(dtype, &shape) {
        return Err(NpyError::BadHeader(text).into());
    }
    let data_len = shape
        .iter()
        .try_fold(4u64, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| NpyError::Overflow { shape: shape.clone() })?;
    let header_len = full.len() as u64;
    let expected = header_len
        .checked_add(data_len)
        .ok_or_else(|| NpyError::Overflow { shape: shape.clone() })?;
    if file_len != expected {
        return Err(NpyError::Length { expected, actual: file_len }.into());
    }
    Ok(NpyHeader { dtype, shape, header_len, data_len })
}

/// Extracts descr and shape from `{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }`.
/// Loose on purpose: the caller then demands the exact re-encoding.
fn parse_dict(text: &str) -> Result<(String, Vec<u64>), NpyError> {
    let bad = || NpyError::BadHeader(text.to_owned());
    let descr =
        text.split("'descr': '").nth(1).and_then(|r| r.split('\'').next()).ok_or_else(bad)?;
    let tuple =
        text.split("'shape': (").nth(1).and_then(|r| r.split(')').next()).ok_or_else(bad)?;
    let shape = tuple
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|d| d.parse::<u64>().map_err(|_| bad()))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((descr.to_owned(), shape))
}

/// Either the bytes were not ours, or reading them failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Format(#[from] NpyError),
    #[error(transparent)]
    Io(#[from] io::Error),
}

fn read_exact(reader: &mut impl Read, buf: &mut [u8]) -> Result<(), ReadError> {
    reader.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => ReadError::Format(NpyError::Truncated),
        _ => ReadError::Io(e),
    })
}

/// Parses a whole in-memory file; used by tests and small reads.
pub fn parse(bytes: &[u8], dtype: Dtype, rank: usize) -> Result<(NpyHeader, &[u8]), ReadError> {
    let header = read_header(&mut &bytes[..], bytes.len() as u64, dtype, rank)?;
    Ok((header.clone(), &bytes[header.header_len as usize..]))
}

/// Writes little-endian `f32` values.
pub fn write_f32s(out: &mut impl Write, values: &[f32]) -> io::Result<()> {
    let mut buf = Vec::with_capacity(values.len() * 4);
    for v in values {
        buf.extend_from_slice(&v.to_le_bytes());
    }
    out.write_all(&buf)
}

/// Decodes little-endian 4-byte values; `bytes.len()` must be a multiple of 4 (the header check
/// guarantees it).
pub fn decode_f32s(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

pub fn decode_i32s(bytes: &[u8]) -> Vec<i32> {
    bytes.chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn file(dtype: Dtype, shape: &[u64], data: &[u8]) -> Vec<u8> {
        let mut out = header(dtype, shape);
        out.extend_from_slice(data);
        out
    }

    #[test]
    fn header_is_numpy_layout() {
        let h = header(Dtype::F32, &[2, 4, 4, 512]);
        assert_eq!(h.len() % 64, 0);
        assert_eq!(*h.last().unwrap(), b'\n');
        let text = String::from_utf8_lossy(&h[10..]);
        assert!(
            text.starts_with("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 4, 4, 512), }"),
            "{text}"
        );
        let h1 = header(Dtype::I32, &[7]);
        assert!(String::from_utf8_lossy(&h1[10..]).contains("'shape': (7,)"));
    }

    fn check_err(bytes: &[u8], dtype: Dtype, rank: usize, expect: &str) {
        let err = parse(bytes, dtype, rank).unwrap_err().to_string();
        assert!(err.contains(expect), "expected {expect:?} in {err:?}");
    }

    #[test]
    fn round_trip_and_refusals() {
        let data: Vec<u8> = (0..24).collect();
        let good = file(Dtype::F32, &[2, 3], &data);
        let (h, body) = parse(&good, Dtype::F32, 2).unwrap();
        assert_eq!((h.shape.as_slice(), body), (&[2u64, 3][..], &data[..]));

        check_err(&good, Dtype::I32, 2, "dtype <f4");
        check_err(&good, Dtype::F32, 3, "rank 2");
        check_err(&good[..good.len() - 1], Dtype::F32, 2, "promises");
        check_err(&[good.as_slice(), &[0]].concat(), Dtype::F32, 2, "promises");
        check_err(&good[..20], Dtype::F32, 2, "ends inside the header");
        check_err(b"PK\x03\x04 not npy at all", Dtype::F32, 2, "bad magic");
        let mut v2 = good.clone();
        v2[6] = 2;
        check_err(&v2, Dtype::F32, 2, "version 2.0");
        let mut long = good.clone();
        long[8..10].copy_from_slice(&60000u16.to_le_bytes());
        check_err(&long, Dtype::F32, 2, "exceeds");
        let mut fortran = good.clone();
        let at = fortran.windows(5).position(|w| w == b"False").unwrap();
        fortran[at..at + 5].copy_from_slice(b"True ");
        check_err(&fortran, Dtype::F32, 2, "not one this tool writes");
        let huge = file(Dtype::F32, &[u64::MAX / 2, 3], &[]);
        check_err(&huge, Dtype::F32, 2, "too large");
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse(&bytes, Dtype::F32, 2);
        }

        #[test]
        fn mutated_valid_files_never_panic(pos in 0usize..200, byte in any::<u8>(), cut in 0usize..200) {
            let mut f = file(Dtype::F32, &[3, 5], &[7u8; 60]);
            let pos = pos % f.len();
            f[pos] = byte;
            f.truncate(f.len() - cut.min(f.len()));
            let _ = parse(&f, Dtype::F32, 2);
        }
    }
}
