//! Reading and writing float32 arrays as NumPy .npy files, the format
//! `np.save` / `np.load` use, so inputs and logits pass to and from Python
//! without a NumPy dependency on our side.
//!
//! The format (numpy.lib.format, "NEP 1"): the magic string "\x93NUMPY", a
//! major and a minor version byte, the header length (little-endian u16 for
//! version 1.0, u32 for 2.0 and 3.0), then the header: a Python dict literal
//! such as `{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }`,
//! padded with spaces and ended by '\n' so that magic + lengths + header is a
//! multiple of 64 bytes. The raw data follows, C order when fortran_order is
//! False.
//!
//! `NpyWriter` and `NpyRows` stream a 2-D '<f4' array a block of rows at a
//! time (features of a million images need not fit in memory).
use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::fsutil::{sync_dir, temp_path, write_atomic};

const MAGIC: &[u8; 6] = b"\x93NUMPY";
/// The spec aligns the data to 64 bytes (it was 16 before NumPy 1.14), so
/// that a reader can memory-map it at an aligned offset.
const ALIGN: usize = 64;

/// Write `data` (C order, shape `shape`) as a version 1.0 '<f4' .npy file,
/// atomically.
pub fn write_npy_f32(path: &Path, shape: &[usize], data: &[f32]) -> Result<()> {
    let want: usize = shape.iter().product();
    if want != data.len() {
        return Err(Error::Shape {
            op: "write_npy_f32",
            detail: format!(
                "{}: shape {shape:?} holds {want} values but {} were given",
                path.display(),
                data.len()
            ),
        });
    }
    let mut bytes = npy_header(shape);
    bytes.reserve(data.len() * 4);
    for v in data {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    write_atomic(path, &bytes)
}

/// Magic, version and padded header for a '<f4' C-order array of `shape`.
/// Version 1.0 unless the header does not fit its u16 length (then 2.0).
fn npy_header(shape: &[usize]) -> Vec<u8> {
    // A 1-tuple needs its trailing comma in Python: (3,) not (3).
    let dims = match shape {
        [d] => format!("({d},)"),
        _ => {
            let parts: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
            format!("({})", parts.join(", "))
        }
    };
    let dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {dims}, }}");
    // Prefix: magic (6) + version (2) + length (2 for v1, 4 for v2).
    let fits_v1 = 10 + dict.len() < usize::from(u16::MAX);
    let prefix = if fits_v1 { 10 } else { 12 };
    // Header text plus at least the '\n', padded so prefix + header is aligned.
    let header_len = (prefix + dict.len() + 1).next_multiple_of(ALIGN) - prefix;
    let mut out = Vec::with_capacity(prefix + header_len);
    out.extend_from_slice(MAGIC);
    if fits_v1 {
        out.extend_from_slice(&[1, 0]);
        out.extend_from_slice(&(header_len as u16).to_le_bytes());
    } else {
        out.extend_from_slice(&[2, 0]);
        out.extend_from_slice(&(header_len as u32).to_le_bytes());
    }
    out.extend_from_slice(dict.as_bytes());
    out.resize(prefix + header_len - 1, b' ');
    out.push(b'\n');
    out
}

/// Read a .npy file holding float32 ('<f4') or float64 ('<f8', converted to
/// f32) values in C order. Returns (shape, values).
pub fn read_npy_f32(path: &Path) -> Result<(Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse_npy_f32(&bytes).map_err(|msg| Error::Data(format!("{}: {msg}", path.display())))
}

/// The element types we accept, by their NumPy 'descr'.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dtype {
    F4,
    F8,
}

#[derive(Debug, PartialEq, Eq)]
struct Header {
    dtype: Dtype,
    shape: Vec<usize>,
    /// Offset of the first data byte.
    data_start: usize,
}

fn parse_npy_f32(bytes: &[u8]) -> std::result::Result<(Vec<usize>, Vec<f32>), String> {
    let h = parse_header(bytes)?;
    let count = h
        .shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| format!("shape {:?} is too large", h.shape))?;
    let width = match h.dtype {
        Dtype::F4 => 4,
        Dtype::F8 => 8,
    };
    let data = &bytes[h.data_start..];
    let need = count.saturating_mul(width);
    if data.len() < need {
        return Err(format!(
            "truncated: shape {:?} needs {need} data bytes but the file has {}; write it again",
            h.shape,
            data.len()
        ));
    }
    let values = match h.dtype {
        Dtype::F4 => data[..need]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F8 => data[..need]
            .chunks_exact(8)
            .map(|c| {
                let mut b = [0u8; 8];
                b.copy_from_slice(c);
                f64::from_le_bytes(b) as f32
            })
            .collect(),
    };
    Ok((h.shape, values))
}

fn parse_header(bytes: &[u8]) -> std::result::Result<Header, String> {
    let not_npy = "not an NPY file (no \\x93NUMPY magic); save the array with numpy.save";
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err(not_npy.into());
    }
    let (len, prefix) = match bytes[6] {
        1 => (usize::from(u16::from_le_bytes([bytes[8], bytes[9]])), 10),
        2 | 3 => {
            if bytes.len() < 12 {
                return Err("truncated NPY header".into());
            }
            let n = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
            (n as usize, 12)
        }
        v => {
            return Err(format!(
                "NPY format version {v}.{} is not supported (1.0, 2.0 and 3.0 are)",
                bytes[7]
            ))
        }
    };
    let end = prefix + len;
    if bytes.len() < end {
        return Err(format!(
            "truncated: the header says {len} bytes but the file ends first"
        ));
    }
    // Version 1 and 2 headers are latin-1, version 3 UTF-8; the keys and
    // values we accept are ASCII either way.
    let text = std::str::from_utf8(&bytes[prefix..end])
        .map_err(|_| "the NPY header is not text; the file is damaged".to_string())?;
    let dict = parse_dict(text)?;
    let get = |key: &str| {
        dict.iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
            .ok_or_else(|| format!("the NPY header has no '{key}' entry"))
    };
    let dtype = match get("descr")? {
        Value::Str(s) if s == "<f4" => Dtype::F4,
        Value::Str(s) if s == "<f8" => Dtype::F8,
        Value::Str(s) => {
            return Err(format!(
            "dtype '{s}' is not little-endian float32 ('<f4'); save it with arr.astype(np.float32)"
        ))
        }
        _ => return Err("'descr' is not a string".into()),
    };
    match get("fortran_order")? {
        Value::Bool(false) => {}
        Value::Bool(true) => {
            return Err(
                "the array is in Fortran order; save it with np.ascontiguousarray(arr)".into(),
            )
        }
        _ => return Err("'fortran_order' is not True or False".into()),
    }
    let shape = match get("shape")? {
        Value::Tuple(t) => t.clone(),
        _ => return Err("'shape' is not a tuple of integers".into()),
    };
    Ok(Header {
        dtype,
        shape,
        data_start: end,
    })
}

/// A value in the header dict: the format only ever writes these three.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Value {
    Str(String),
    Bool(bool),
    Tuple(Vec<usize>),
}

/// Parse the header's Python dict literal: string keys; string, True/False
/// or integer-tuple values; trailing commas allowed, as Python allows them.
fn parse_dict(text: &str) -> std::result::Result<Vec<(String, Value)>, String> {
    let bad = |what: &str| format!("malformed NPY header ({what}): {}", text.trim_end());
    let mut p = Cursor {
        s: text.as_bytes(),
        i: 0,
    };
    p.ws();
    if !p.eat(b'{') {
        return Err(bad("no '{'"));
    }
    let mut out = Vec::new();
    loop {
        p.ws();
        if p.eat(b'}') {
            break;
        }
        let key = p.string().ok_or_else(|| bad("key is not a string"))?;
        p.ws();
        if !p.eat(b':') {
            return Err(bad("no ':' after a key"));
        }
        p.ws();
        let value = if let Some(s) = p.string() {
            Value::Str(s)
        } else if p.word("True") {
            Value::Bool(true)
        } else if p.word("False") {
            Value::Bool(false)
        } else if p.eat(b'(') {
            let mut dims = Vec::new();
            loop {
                p.ws();
                if p.eat(b')') {
                    break;
                }
                dims.push(
                    p.int()
                        .ok_or_else(|| bad("shape entry is not an integer"))?,
                );
                p.ws();
                if !p.eat(b',') {
                    p.ws();
                    if !p.eat(b')') {
                        return Err(bad("shape tuple is not closed"));
                    }
                    break;
                }
            }
            Value::Tuple(dims)
        } else {
            return Err(bad("unknown value"));
        };
        out.push((key, value));
        p.ws();
        if !p.eat(b',') {
            p.ws();
            if !p.eat(b'}') {
                return Err(bad("dict is not closed"));
            }
            break;
        }
    }
    Ok(out)
}

struct Cursor<'a> {
    s: &'a [u8],
    i: usize,
}

impl Cursor<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }
    fn eat(&mut self, c: u8) -> bool {
        if self.s.get(self.i) == Some(&c) {
            self.i += 1;
            true
        } else {
            false
        }
    }
    fn word(&mut self, w: &str) -> bool {
        if self.s[self.i..].starts_with(w.as_bytes()) {
            self.i += w.len();
            true
        } else {
            false
        }
    }
    /// A '...' or "..." literal (the header never needs escapes).
    fn string(&mut self) -> Option<String> {
        let q = *self.s.get(self.i)?;
        if q != b'\'' && q != b'"' {
            return None;
        }
        let start = self.i + 1;
        let len = self.s[start..].iter().position(|&c| c == q)?;
        self.i = start + len + 1;
        String::from_utf8(self.s[start..start + len].to_vec()).ok()
    }
    /// A non-negative integer; Python 2 era files may add an 'L' suffix.
    fn int(&mut self) -> Option<usize> {
        let start = self.i;
        while self.i < self.s.len() && self.s[self.i].is_ascii_digit() {
            self.i += 1;
        }
        let v = std::str::from_utf8(&self.s[start..self.i])
            .ok()?
            .parse()
            .ok()?;
        self.eat(b'L');
        Some(v)
    }
}

/// Writes a `[rows, cols]` '<f4' .npy file row block by row block: the
/// header for the final shape first, then the rows as they come. The file
/// appears at its path only after `finish` checked that exactly `rows` rows
/// were written (a temporary file next to it until then).
pub struct NpyWriter {
    path: PathBuf,
    tmp: PathBuf,
    out: Option<BufWriter<File>>,
    rows: usize,
    cols: usize,
    written: usize,
}

impl NpyWriter {
    pub fn create(path: &Path, rows: usize, cols: usize) -> Result<NpyWriter> {
        let tmp = temp_path(path);
        let f = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let mut out = BufWriter::with_capacity(1 << 20, f);
        out.write_all(&npy_header(&[rows, cols]))
            .map_err(|e| Error::io(&tmp, e))?;
        Ok(NpyWriter {
            path: path.to_path_buf(),
            tmp,
            out: Some(out),
            rows,
            cols,
            written: 0,
        })
    }

    /// Append whole rows (`values.len()` a multiple of the row width).
    pub fn append(&mut self, values: &[f32]) -> Result<()> {
        let cols = self.cols.max(1);
        if !values.len().is_multiple_of(cols) || self.written + values.len() / cols > self.rows {
            return Err(Error::Shape {
                op: "NpyWriter::append",
                detail: format!(
                    "{}: {} values do not make whole rows of {} within the {} rows declared ({} written)",
                    self.path.display(),
                    values.len(),
                    self.cols,
                    self.rows,
                    self.written
                ),
            });
        }
        let out = self.out.as_mut().ok_or_else(|| Error::Shape {
            op: "NpyWriter::append",
            detail: "the writer is finished".into(),
        })?;
        let mut buf = Vec::with_capacity(values.len() * 4);
        for v in values {
            buf.extend_from_slice(&v.to_le_bytes());
        }
        out.write_all(&buf).map_err(|e| Error::io(&self.tmp, e))?;
        self.written += values.len() / cols;
        Ok(())
    }

    /// Rows appended so far.
    pub fn written(&self) -> usize {
        self.written
    }

    /// Check the row count, flush, fsync and rename into place.
    pub fn finish(mut self) -> Result<()> {
        if self.written != self.rows {
            return Err(Error::Shape {
                op: "NpyWriter::finish",
                detail: format!(
                    "{}: {} rows written, {} declared",
                    self.path.display(),
                    self.written,
                    self.rows
                ),
            });
        }
        let out = self.out.take().ok_or_else(|| Error::Shape {
            op: "NpyWriter::finish",
            detail: "the writer is finished".into(),
        })?;
        let f = out
            .into_inner()
            .map_err(|e| Error::io(&self.tmp, e.into_error()))?;
        f.sync_all().map_err(|e| Error::io(&self.tmp, e))?;
        drop(f);
        std::fs::rename(&self.tmp, &self.path).map_err(|e| Error::io(&self.path, e))?;
        sync_dir(&self.path)
    }
}

impl Drop for NpyWriter {
    /// An unfinished writer leaves no temporary file behind.
    fn drop(&mut self) {
        if self.out.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Reads a 2-D '<f4' C-order .npy file a block of rows at a time.
pub struct NpyRows {
    path: PathBuf,
    file: File,
    pub rows: usize,
    pub cols: usize,
    data_start: u64,
}

impl NpyRows {
    pub fn open(path: &Path) -> Result<NpyRows> {
        let bad = |msg: String| Error::Data(format!("{}: {msg}", path.display()));
        let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
        let mut prefix = [0u8; 12];
        let got = read_up_to(&mut file, &mut prefix).map_err(|e| Error::io(path, e))?;
        let head_len = match prefix[..got] {
            [_, _, _, _, _, _, 1, _, a, b, ..] => 10 + usize::from(u16::from_le_bytes([a, b])),
            [_, _, _, _, _, _, 2 | 3, _, a, b, c, d] => {
                12 + u32::from_le_bytes([a, b, c, d]) as usize
            }
            _ => 12,
        };
        let mut head = vec![0u8; head_len.min(1 << 20)];
        file.seek(SeekFrom::Start(0))
            .map_err(|e| Error::io(path, e))?;
        let got = read_up_to(&mut file, &mut head).map_err(|e| Error::io(path, e))?;
        let h = parse_header(&head[..got]).map_err(bad)?;
        if h.dtype != Dtype::F4 {
            return Err(bad(
                "dtype is float64; features are read as float32 ('<f4')".into(),
            ));
        }
        let [rows, cols] = h.shape[..] else {
            return Err(bad(format!(
                "shape {:?} is not 2-D (rows, values per row)",
                h.shape
            )));
        };
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        let need = h.data_start as u64 + rows as u64 * cols as u64 * 4;
        if len < need {
            return Err(bad(format!(
                "truncated: shape ({rows}, {cols}) needs {need} bytes but the file has {len}; write it again"
            )));
        }
        Ok(NpyRows {
            path: path.to_path_buf(),
            file,
            rows,
            cols,
            data_start: h.data_start as u64,
        })
    }

    /// Rows `start..start + count` (clipped to the array), C order.
    pub fn read(&mut self, start: usize, count: usize) -> Result<Vec<f32>> {
        let end = (start + count).min(self.rows);
        let n = end.saturating_sub(start) * self.cols;
        let mut bytes = vec![0u8; n * 4];
        let off = self.data_start + (start * self.cols * 4) as u64;
        self.file
            .seek(SeekFrom::Start(off))
            .and_then(|_| self.file.read_exact(&mut bytes))
            .map_err(|e| Error::io(&self.path, e))?;
        Ok(bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }
}

/// Fill as much of `buf` as the file holds; returns the bytes read.
fn read_up_to(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match f.read(&mut buf[got..])? {
            0 => break,
            n => got += n,
        }
    }
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A version 1.0 header spelled out by hand from the format description:
    /// magic, 1, 0, u16 length, dict, spaces, '\n', 64-byte aligned.
    fn v1(dict: &str) -> Vec<u8> {
        let len = (10 + dict.len() + 1).div_ceil(64) * 64 - 10;
        let mut b = b"\x93NUMPY\x01\x00".to_vec();
        b.extend_from_slice(&(len as u16).to_le_bytes());
        b.extend_from_slice(dict.as_bytes());
        while b.len() < 10 + len - 1 {
            b.push(b' ');
        }
        b.push(b'\n');
        b
    }

    #[test]
    fn header_matches_what_numpy_writes() {
        // np.save of np.zeros((2, 3), np.float32) starts with exactly these
        // 128 bytes: the dict below, padded to a header length of 118.
        let mut want = b"\x93NUMPY\x01\x00\x76\x00".to_vec();
        want.extend_from_slice(b"{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }");
        want.resize(127, b' ');
        want.push(b'\n');
        assert_eq!(npy_header(&[2, 3]), want);
        // One dimension keeps Python's trailing comma; zero dimensions is ().
        let one = String::from_utf8_lossy(&npy_header(&[7])[10..]).into_owned();
        assert!(one.contains("'shape': (7,), }"), "{one}");
        let zero = String::from_utf8_lossy(&npy_header(&[])[10..]).into_owned();
        assert!(zero.contains("'shape': (), }"), "{zero}");
    }

    #[test]
    fn reads_hand_written_f4_and_f8() {
        let mut b = v1("{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }");
        for v in [1.5f32, -2.0, 0.25] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        assert_eq!(parse_npy_f32(&b).unwrap(), (vec![3], vec![1.5, -2.0, 0.25]));

        // Key order is free and spacing may differ; '<f8' is converted.
        let mut b = v1("{'shape': (1, 2), 'fortran_order': False, 'descr': '<f8'}");
        for v in [0.1f64, 3.0] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        assert_eq!(parse_npy_f32(&b).unwrap(), (vec![1, 2], vec![0.1f32, 3.0]));
    }

    #[test]
    fn reads_version_2_header() {
        let dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }";
        let len = (12 + dict.len() + 1).div_ceil(64) * 64 - 12;
        let mut b = b"\x93NUMPY\x02\x00".to_vec();
        b.extend_from_slice(&(len as u32).to_le_bytes());
        b.extend_from_slice(dict.as_bytes());
        b.resize(12 + len - 1, b' ');
        b.push(b'\n');
        b.extend_from_slice(&4.0f32.to_le_bytes());
        assert_eq!(parse_npy_f32(&b).unwrap(), (vec![1], vec![4.0]));
    }

    #[test]
    fn rejects_what_it_cannot_read_with_advice() {
        let err = parse_npy_f32(b"PK\x03\x04 a zip file").unwrap_err();
        assert!(err.contains("not an NPY file"), "{err}");

        let b = v1("{'descr': '<i8', 'fortran_order': False, 'shape': (1,), }");
        let err = parse_npy_f32(&b).unwrap_err();
        assert!(err.contains("arr.astype(np.float32)"), "{err}");

        let b = v1("{'descr': '>f4', 'fortran_order': False, 'shape': (1,), }");
        assert!(parse_npy_f32(&b).unwrap_err().contains("'>f4'"));

        let b = v1("{'descr': '<f4', 'fortran_order': True, 'shape': (2, 2), }");
        let err = parse_npy_f32(&b).unwrap_err();
        assert!(err.contains("Fortran order"), "{err}");

        // Six values promised, two given.
        let mut b = v1("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }");
        b.extend_from_slice(&[0u8; 8]);
        let err = parse_npy_f32(&b).unwrap_err();
        assert!(err.contains("truncated") && err.contains("24"), "{err}");

        // The header itself cut short.
        let b = v1("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }");
        assert!(parse_npy_f32(&b[..40]).unwrap_err().contains("truncated"));
    }

    #[test]
    fn write_then_read_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.npy");
        let data: Vec<f32> = (0..24).map(|i| i as f32 * 0.5 - 3.0).collect();
        write_npy_f32(&path, &[2, 3, 4], &data).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len(), 128 + 24 * 4);
        assert_eq!(read_npy_f32(&path).unwrap(), (vec![2, 3, 4], data));
        // A shape that does not match the data is refused, nothing written.
        let other = dir.path().join("y.npy");
        assert!(write_npy_f32(&other, &[5], &[1.0]).is_err());
        assert!(!other.exists());
    }
}
