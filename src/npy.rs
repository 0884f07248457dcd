//! Reading and writing float32 arrays as NumPy .npy files, the format
//! `np.save` / `np.load` use, so inputs and logits pass to and from Python
//! without a NumPy dependency on our side.
//!
//! The format itself (numpy.lib.format: magic, version, the header's Python
//! dict, the raw data) is the `npyz` crate's. This module owns what we add:
//! the float32 view (float64 files are converted), atomic writes, rows read
//! a block at a time, and errors that name the file and the fix.
//!
//! `npyz` rather than `ndarray-npy`: npyz streams both ways without holding
//! the array (a writer rows are pushed into, a reader that seeks to an
//! element), which features of a million images need; ndarray-npy reads and
//! writes whole `ndarray` arrays (streaming only by memory-mapping a zeroed
//! file) and brings `ndarray` with it.
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Cursor, Read, Seek, Write};
use std::path::{Path, PathBuf};

use npyz::{DType, NpyFile, NpyHeader, NpyReader, Order, TypeStr, WriteOptions, WriterBuilder};

use crate::error::{Error, Result};
use crate::fsutil::{check_target, sweep_before_writing, sync_dir, temp_path, write_atomic};

/// Write `data` (C order, shape `shape`) as a '<f4' .npy file, atomically.
pub fn write_npy_f32(path: &Path, shape: &[usize], data: &[f32]) -> Result<()> {
    write_atomic(path, &npy_f32_bytes(path, shape, data)?)
}

/// The bytes of the '<f4' .npy file `path` (named in errors) would hold.
pub fn npy_f32_bytes(path: &Path, shape: &[usize], data: &[f32]) -> Result<Vec<u8>> {
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
    let mut bytes = Cursor::new(Vec::with_capacity(128 + data.len() * 4));
    (|| {
        let mut w = begin(&mut bytes, shape)?;
        w.extend(data.iter().copied())?;
        w.finish()
    })()
    .map_err(|e| Error::io(path, e))?;
    Ok(bytes.into_inner())
}

/// An npyz writer of a C-order '<f4' array of `shape` into `out`. One and
/// two dimensions go through npyz's 1-D and 2-D writers, whose header text
/// is the one NumPy writes (`'shape': (2, 3), }`; the length is filled in
/// at `finish`); other ranks through its n-d writer, whose `(2, 3, 4, )`
/// NumPy reads the same.
fn begin<W: Write + Seek>(out: W, shape: &[usize]) -> io::Result<npyz::NpyWriter<f32, W>> {
    // Little-endian whatever the host is, as we always wrote.
    let f4: TypeStr = "<f4".parse().map_err(io::Error::other)?;
    let opts = WriteOptions::<f32>::new()
        .dtype(DType::new_scalar(f4))
        .writer(out);
    match *shape {
        [_] => opts.begin_1d(),
        [_, cols] if cols > 0 => opts.begin_2d(cols as u64),
        _ => {
            let dims: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
            opts.shape(&dims).begin_nd()
        }
    }
}

/// Read a .npy file holding float32 or float64 (converted to f32) values
/// in C order. Returns (shape, values).
pub fn read_npy_f32(path: &Path) -> Result<(Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse_npy_f32(&bytes).map_err(|msg| Error::Data(format!("{}: {msg}", path.display())))
}

fn parse_npy_f32(bytes: &[u8]) -> std::result::Result<(Vec<usize>, Vec<f32>), String> {
    check_header_text(bytes)?;
    let mut data = bytes;
    let header = NpyHeader::from_reader(&mut data).map_err(header_error)?;
    let shape = c_order_shape(&header)?;
    let available = data.len();
    let file = NpyFile::with_header(header, data);
    let values = match file.try_data::<f32>() {
        Ok(r) => {
            check_length(&shape, 4, available)?;
            r.collect::<io::Result<Vec<f32>>>()
        }
        Err(file) => match file.try_data::<f64>() {
            Ok(r) => {
                check_length(&shape, 8, available)?;
                r.map(|v| v.map(|v| v as f32)).collect()
            }
            Err(file) => {
                return Err(format!(
                    "dtype {} is not float32 or float64; save it with arr.astype(np.float32)",
                    file.dtype().descr()
                ))
            }
        },
    };
    Ok((shape, values.map_err(|e| e.to_string())?))
}

/// npyz's header errors, with what to do about them.
fn header_error(e: io::Error) -> String {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        format!("truncated: the NPY header ends early ({e}); write the file again")
    } else {
        format!("not an NPY file we can read ({e}); save the array with numpy.save")
    }
}

/// Longest header read: numpy's own `np.load` refuses longer ones by
/// default (its `max_header_size`, 10,000 bytes).
const MOST_HEADER_BYTES: usize = 10_000;

/// Checked before npyz parses the header (`head`: the file's first bytes):
/// its length, and its brackets, whose nesting npyz's parser takes
/// exponential time in (22 levels: 11 s). A float array's header holds
/// two, its dict's and its shape's; a structured dtype's a few more.
fn check_header_text(head: &[u8]) -> std::result::Result<(), String> {
    // Magic, version, then a u16 (version 1) or u32 length; anything else
    // is left to npyz, which says what it is not.
    let (len, text) = match head {
        [0x93, b'N', b'U', b'M', b'P', b'Y', 1, _, a, b, rest @ ..] => {
            (u16::from_le_bytes([*a, *b]) as usize, rest)
        }
        [0x93, b'N', b'U', b'M', b'P', b'Y', 2 | 3, _, a, b, c, d, rest @ ..] => {
            (u32::from_le_bytes([*a, *b, *c, *d]) as usize, rest)
        }
        _ => return Ok(()),
    };
    if len > MOST_HEADER_BYTES {
        return Err(format!(
            "the NPY header is {len} bytes, more than the {MOST_HEADER_BYTES} numpy itself reads; \
             save the array with numpy.save"
        ));
    }
    // Opening brackets anywhere, quoted or not: their count bounds the
    // nesting however a parser reads the quotes.
    let text = &text[..len.min(text.len())];
    let opened = text
        .iter()
        .filter(|b| matches!(b, b'(' | b'[' | b'{'))
        .count();
    if opened > MOST_BRACKETS {
        return Err(format!(
            "the NPY header holds {opened} brackets, more than the {MOST_BRACKETS} read (a float \
             array's holds 2); save the array with numpy.save"
        ));
    }
    Ok(())
}

/// The file's first bytes, up to the longest header read and its preamble
/// (read whole: one read may return fewer), the file left where it was.
fn header_bytes(file: &File) -> io::Result<Vec<u8>> {
    let mut head = Vec::new();
    file.take(12 + MOST_HEADER_BYTES as u64)
        .read_to_end(&mut head)?;
    let mut file = file;
    file.seek(io::SeekFrom::Start(0))?;
    Ok(head)
}

/// Most opening brackets read in a header.
const MOST_BRACKETS: usize = 8;

/// The header's shape, refusing Fortran order (we index rows in C order).
fn c_order_shape(h: &NpyHeader) -> std::result::Result<Vec<usize>, String> {
    if h.order() == Order::Fortran {
        return Err("the array is in Fortran order; save it with np.ascontiguousarray(arr)".into());
    }
    h.shape()
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| format!("shape {:?} is too large", h.shape()))
}

/// npyz reads lazily and would fail only at the first missing value: check
/// the data length up front, so a cut-short file is named as such.
fn check_length(
    shape: &[usize],
    width: usize,
    available: usize,
) -> std::result::Result<(), String> {
    let need = shape
        .iter()
        .try_fold(width, |a, &d| a.checked_mul(d))
        .ok_or_else(|| format!("shape {shape:?} is too large"))?;
    if available < need {
        return Err(format!(
            "truncated: shape {shape:?} needs {need} data bytes but the file has {available}; write it again"
        ));
    }
    Ok(())
}

/// Writes a `[rows, cols]` '<f4' .npy file row block by row block: the
/// header first, then the rows as they come (npyz fills the header's row
/// count in at `finish`). The file appears at its path only after `finish`
/// checked that exactly `rows` rows were written (a temporary file next to
/// it until then).
pub struct NpyWriter {
    path: PathBuf,
    tmp: PathBuf,
    /// npyz's writer, over a buffered second handle of `file`.
    out: Option<npyz::NpyWriter<f32, BufWriter<File>>>,
    /// The handle `finish` fsyncs once npyz has flushed and let go.
    file: File,
    rows: usize,
    cols: usize,
    written: usize,
}

impl NpyWriter {
    pub fn create(path: &Path, rows: usize, cols: usize) -> Result<NpyWriter> {
        check_target(path)?;
        sweep_before_writing(path);
        let tmp = temp_path(path);
        // Errors name the file asked for: the temporary one is removed.
        let io = |e| Error::io(path, e);
        let file = File::create(&tmp).map_err(io)?;
        let out = file
            .try_clone()
            .and_then(|f| begin(BufWriter::with_capacity(1 << 20, f), &[rows, cols]));
        let out = match out {
            Ok(out) => out,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(io(e));
            }
        };
        Ok(NpyWriter {
            path: path.to_path_buf(),
            tmp,
            out: Some(out),
            file,
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
        out.extend(values.iter().copied())
            .map_err(|e| Error::io(&self.path, e))?;
        self.written += values.len() / cols;
        Ok(())
    }

    /// Expect `n` fewer rows than declared at `create` (images that could
    /// not be read); the header's row count is written at `finish`.
    pub fn leave_out(&mut self, n: usize) -> Result<()> {
        if self.cols == 0 || n > self.rows - self.written {
            return Err(Error::Shape {
                op: "NpyWriter::leave_out",
                detail: format!(
                    "{}: cannot leave out {n} of {} rows ({} written, {} values a row)",
                    self.path.display(),
                    self.rows,
                    self.written,
                    self.cols
                ),
            });
        }
        self.rows -= n;
        Ok(())
    }

    /// Rows appended so far.
    pub fn written(&self) -> usize {
        self.written
    }

    /// Check the row count, flush, fsync and rename into place.
    pub fn finish(self) -> Result<()> {
        self.finish_with(|| Ok(()))
    }

    /// `finish`, running `before` once the new file is whole on disk and
    /// before it replaces the old: what goes with the old file goes only
    /// when the new one is sure to land (a full disk fails the flush).
    /// Returns what `before` returned.
    pub fn finish_with<T>(mut self, before: impl FnOnce() -> Result<T>) -> Result<T> {
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
        let io = |e| Error::io(&self.path, e);
        // npyz's finish writes the row count into the header and flushes;
        // its buffer and handle are dropped before the fsync.
        let done = out.finish().and_then(|()| self.file.sync_all());
        if let Err(e) = done {
            let _ = std::fs::remove_file(&self.tmp);
            return Err(io(e));
        }
        let kept = match before() {
            Ok(kept) => kept,
            Err(e) => {
                let _ = std::fs::remove_file(&self.tmp);
                return Err(e);
            }
        };
        if let Err(e) = std::fs::rename(&self.tmp, &self.path) {
            let _ = std::fs::remove_file(&self.tmp);
            return Err(Error::io(&self.path, e));
        }
        sync_dir(&self.path)?;
        Ok(kept)
    }
}

impl Drop for NpyWriter {
    /// An unfinished writer leaves no temporary file behind.
    fn drop(&mut self) {
        if let Some(out) = self.out.take() {
            drop(out);
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Reads a C-order .npy file a block of rows at a time (a row: the values
/// under one first index), through npyz's seekable element reader over a
/// buffered file (memory: the buffer and the block asked for).
pub struct NpyRows {
    path: PathBuf,
    data: Values,
    pub rows: usize,
    pub cols: usize,
}

/// The file's values as stored: float32, or float64 where the reader
/// allows it (read as f32).
enum Values {
    F32(NpyReader<f32, BufReader<File>>),
    F64(NpyReader<f64, BufReader<File>>),
}

impl NpyRows {
    /// A 2-D float32 file: `features`' own format.
    pub fn open(path: &Path) -> Result<NpyRows> {
        let (rows, shape) = Self::open_shaped(path, false)?;
        if shape.len() != 2 {
            return Err(Error::Data(format!(
                "{}: shape {shape:?} is not 2-D (rows, values per row)",
                path.display()
            )));
        }
        Ok(rows)
    }

    /// A float32 (or, with `f64`, float64) file of any shape with at least
    /// one axis, and its shape; a row holds the product of the others.
    pub fn open_shaped(path: &Path, f64: bool) -> Result<(NpyRows, Vec<usize>)> {
        let bad = |msg: String| Error::Data(format!("{}: {msg}", path.display()));
        let io = |e| Error::io(path, e);
        let file = File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        check_header_text(&header_bytes(&file).map_err(io)?).map_err(bad)?;
        let mut reader = BufReader::with_capacity(1 << 20, file);
        let header = NpyHeader::from_reader(&mut reader).map_err(|e| bad(header_error(e)))?;
        let data_start = reader.stream_position().map_err(io)?;
        let shape = c_order_shape(&header).map_err(bad)?;
        let Some((&rows, rest)) = shape.split_first() else {
            return Err(bad("a single value (shape []) holds no rows".into()));
        };
        let cols = rest
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| bad(format!("shape {shape:?} is too large")))?;
        let (data, width) = match NpyFile::with_header(header, reader).try_data::<f32>() {
            Ok(r) => (Values::F32(r), 4),
            Err(file) => match file.try_data::<f64>() {
                Ok(r) if f64 => (Values::F64(r), 8),
                Ok(_) => return Err(bad(not_f32("float64".into(), f64))),
                Err(file) => return Err(bad(not_f32(file.dtype().descr(), f64))),
            },
        };
        // Checked here, not at the first short read deep in a search.
        let need = (rows as u64)
            .checked_mul(cols as u64)
            .and_then(|n| n.checked_mul(width))
            .and_then(|n| n.checked_add(data_start));
        if need.is_none_or(|n| n > len) {
            return Err(bad(format!(
                "truncated: shape {shape:?} needs {} bytes but the file has {len}; write it again",
                need.map_or("more than 2^64".into(), |n| n.to_string())
            )));
        }
        let path = path.to_path_buf();
        Ok((
            NpyRows {
                path,
                data,
                rows,
                cols,
            },
            shape,
        ))
    }

    /// Rows `start..start + count` (clipped to the array), C order.
    pub fn read(&mut self, start: usize, count: usize) -> Result<Vec<f32>> {
        let start = start.min(self.rows);
        let end = start.saturating_add(count).min(self.rows);
        let (at, n) = ((start * self.cols) as u64, (end - start) * self.cols);
        let io = |e| Error::io(&self.path, e);
        match &mut self.data {
            Values::F32(r) => {
                r.seek_to(at).map_err(io)?;
                r.by_ref().take(n).collect::<io::Result<Vec<f32>>>()
            }
            Values::F64(r) => {
                r.seek_to(at).map_err(io)?;
                r.by_ref().take(n).map(|v| v.map(|v| v as f32)).collect()
            }
        }
        .map_err(io)
    }
}

/// The error for a dtype a reader does not take (one that takes float64
/// too, with `f64`, says so).
fn not_f32(dtype: String, f64: bool) -> String {
    let or = if f64 { " or float64 ('<f8')" } else { "" };
    format!("dtype {dtype} is not float32 ('<f4'){or}; save the array with arr.astype(np.float32)")
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

    fn header_text(shape: &[usize]) -> String {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.npy");
        let n = shape.iter().product();
        write_npy_f32(&path, shape, &vec![0.0; n]).unwrap();
        let b = std::fs::read(&path).unwrap();
        let len = usize::from(u16::from_le_bytes([b[8], b[9]]));
        String::from_utf8(b[10..10 + len].to_vec()).unwrap()
    }

    #[test]
    fn header_matches_what_numpy_writes() {
        // np.save of np.zeros((2, 3), np.float32) starts with exactly these
        // 128 bytes: the dict below, padded to a header length of 118.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.npy");
        write_npy_f32(&path, &[2, 3], &[0.0; 6]).unwrap();
        let mut want = b"\x93NUMPY\x01\x00\x76\x00".to_vec();
        want.extend_from_slice(b"{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }");
        want.resize(127, b' ');
        want.push(b'\n');
        assert_eq!(std::fs::read(&path).unwrap()[..128], want[..]);
        // One dimension keeps Python's trailing comma; zero dimensions is ().
        assert!(header_text(&[7]).contains("'shape': (7,), }"));
        assert!(header_text(&[]).contains("'shape': (), }"));
        // More than two: a tuple NumPy reads as (2, 3, 4).
        assert!(header_text(&[2, 3, 4]).contains("'shape': (2, 3, 4, ), }"));
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

        // Big-endian float32 is swapped.
        let mut b = v1("{'descr': '>f4', 'fortran_order': False, 'shape': (1,), }");
        b.extend_from_slice(&2.5f32.to_be_bytes());
        assert_eq!(parse_npy_f32(&b).unwrap(), (vec![1], vec![2.5]));
    }

    /// Rows of a float64 file, only where asked for, and its length
    /// checked at 8 bytes a value.
    #[test]
    fn rows_of_a_float64_file_are_read_where_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.npy");
        let mut b = v1("{'descr': '<f8', 'fortran_order': False, 'shape': (3, 2), }");
        (0..6).for_each(|i| b.extend_from_slice(&f64::from(i).to_le_bytes()));
        std::fs::write(&path, &b).unwrap();
        let (mut rows, shape) = NpyRows::open_shaped(&path, true).unwrap();
        assert_eq!(
            (shape, rows.read(1, 5).unwrap()),
            (vec![3, 2], vec![2.0, 3.0, 4.0, 5.0])
        );
        let err = NpyRows::open_shaped(&path, false)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("dtype float64 is not float32"), "{err}");
        // A reader that takes float64 names it beside float32.
        let int = dir.path().join("int.npy");
        let mut i = v1("{'descr': '<i8', 'fortran_order': False, 'shape': (1, 1), }");
        i.extend_from_slice(&7i64.to_le_bytes());
        std::fs::write(&int, &i).unwrap();
        let err = NpyRows::open_shaped(&int, true).err().unwrap().to_string();
        assert!(
            err.contains("'<i8' is not float32 ('<f4') or float64 ('<f8')"),
            "{err}"
        );
        std::fs::write(&path, &b[..b.len() - 1]).unwrap();
        let err = NpyRows::open_shaped(&path, true).err().unwrap().to_string();
        let said = format!("truncated: shape [3, 2] needs {} bytes", b.len());
        assert!(err.contains(&said), "{said}: {err}");
    }

    /// Headers npyz would take seconds or more to parse, or numpy itself
    /// would not read (over np.load's max_header_size of 10,000 bytes),
    /// are refused before npyz sees them, by both readers.
    #[test]
    fn refuses_deeply_nested_and_overlong_headers() {
        let nested = format!("{}'<f4'{}", "[".repeat(24), "]".repeat(24));
        let deep = v1(&format!(
            "{{'descr': {nested}, 'fortran_order': False, 'shape': (1,), }}"
        ));
        // Closing brackets in strings hide no nesting: 24 deep still.
        let quoted = format!("{}1{}", "[']', ".repeat(24), "]".repeat(24));
        let deep_quoted = v1(&format!(
            "{{'descr': '<f4', 'fortran_order': False, 'shape': (1,), 'x': {quoted}, }}"
        ));
        let mut long = b"\x93NUMPY\x02\x00".to_vec();
        long.extend_from_slice(&12_000u32.to_le_bytes());
        long.extend_from_slice(b"{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }");
        long.resize(12 + 12_000, b' ');
        let dir = tempfile::tempdir().unwrap();
        for (bytes, said) in [
            (deep, "holds 26 brackets, more than the 8 read"),
            (deep_quoted, "holds 26 brackets, more than the 8 read"),
            (long, "header is 12000 bytes"),
        ] {
            let err = parse_npy_f32(&bytes).unwrap_err();
            assert!(err.contains(said) && err.contains("numpy.save"), "{err}");
            let path = dir.path().join("h.npy");
            std::fs::write(&path, &bytes).unwrap();
            let err = NpyRows::open_shaped(&path, false)
                .err()
                .unwrap()
                .to_string();
            assert!(err.contains(said), "{err}");
        }
        // Nesting within the bound still reads (here, a shape in a tuple
        // of a list: npyz takes the dict as it parses any).
        let b = v1("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), 'x': [((1,),)], }");
        let mut b = b;
        b.extend_from_slice(&2.0f32.to_le_bytes());
        assert_eq!(parse_npy_f32(&b).unwrap(), (vec![1], vec![2.0]));
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
        assert!(
            err.contains("not an NPY file") && err.contains("numpy.save"),
            "{err}"
        );

        let b = v1("{'descr': '<i8', 'fortran_order': False, 'shape': (1,), }");
        let err = parse_npy_f32(&b).unwrap_err();
        assert!(
            err.contains("'<i8'") && err.contains("arr.astype(np.float32)"),
            "{err}"
        );

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

    /// A rename that fails (a folder took the name meanwhile) errs naming
    /// the file and leaves no temporary file behind.
    #[test]
    fn a_failed_rename_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.npy");
        let mut w = NpyWriter::create(&path, 1, 2).unwrap();
        w.append(&[1.0, 2.0]).unwrap();
        std::fs::create_dir(&path).unwrap();
        std::fs::write(path.join("inside"), b"x").unwrap();
        let e = w.finish().unwrap_err().to_string();
        assert!(e.contains("f.npy"), "{e}");
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["f.npy"]);
    }

    #[test]
    fn rows_are_read_in_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.npy");
        let data: Vec<f32> = (0..15).map(|i| i as f32).collect();
        let mut w = NpyWriter::create(&path, 5, 3).unwrap();
        w.append(&data[..6]).unwrap();
        w.append(&data[6..]).unwrap();
        w.finish().unwrap();
        assert_eq!(read_npy_f32(&path).unwrap(), (vec![5, 3], data.clone()));
        let mut r = NpyRows::open(&path).unwrap();
        assert_eq!((r.rows, r.cols), (5, 3));
        assert_eq!(r.read(3, 10).unwrap(), data[9..]);
        assert_eq!(r.read(1, 1).unwrap(), data[3..6]);
        assert!(r.read(9, 2).unwrap().is_empty());
        // A file cut short is named as such when opened.
        let b = std::fs::read(&path).unwrap();
        std::fs::write(&path, &b[..b.len() - 4]).unwrap();
        let e = NpyRows::open(&path).err().unwrap().to_string();
        assert!(e.contains("r.npy") && e.contains("truncated"), "{e}");
        // A shape whose byte count passes 2^64 (2^33 x 2^33 x 4 bytes) is
        // refused too, not wrapped around to a small size that passes.
        let huge = format!(
            "{{'descr': '<f4', 'fortran_order': False, 'shape': ({}, {}), }}",
            1u64 << 33,
            1u64 << 33
        );
        let mut b = v1(&huge);
        b.extend_from_slice(&[0u8; 64]);
        std::fs::write(&path, &b).unwrap();
        let e = NpyRows::open(&path).err().unwrap().to_string();
        assert!(
            e.contains("truncated") && e.contains("more than 2^64"),
            "{e}"
        );
    }
}
