//! One image file to the network's stored geometry, and back: decode any
//! image (the formats of [`FORMATS`]) to RGB8, scale the short side to `size` and take the centre
//! `size x size` (the paper, section 2), encode it as JPEG for the packed
//! store, and the fast decode the loader runs on every training image.
use std::io::{Cursor, Read};
use std::path::{Path, PathBuf};

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageError, ImageFormat, ImageReader, Limits, RgbImage};
use rayon::prelude::*;
use zune_core::bytestream::ZCursor;
use zune_core::colorspace::ColorSpace;
use zune_core::options::DecoderOptions;
use zune_jpeg::JpegDecoder;

use crate::error::{list_failures, Error, Result};

/// The formats read, as errors name them: torchvision's (see
/// `data::folder::IMAGE_EXTENSIONS`), through the `image` crate's decoders.
pub const FORMATS: &str = "JPEG, PNG, BMP, PPM/PGM, TIFF or WebP";

/// Largest width or height accepted; anything bigger is a broken or hostile
/// file (ImageNet's largest is a few thousand pixels a side), refused from
/// the header before any pixel memory is allocated.
pub const MAX_SIDE: u32 = 20_000;
/// Most bytes one decode may allocate (a decompression-bomb limit): 100
/// megapixels of RGB, 25x ImageNet's largest photos.
pub const MAX_DECODE_BYTES: u64 = 300 << 20;

/// Largest image file read: twice [`MAX_DECODE_BYTES`], more than any
/// image within that limit takes in any format read here (a raw RGB file
/// of the largest image allowed, with room for metadata). A larger file is
/// refused before it is read: a video or disk image named `.jpg` would
/// otherwise be read whole into memory, on every decode thread at once.
pub const MAX_FILE_BYTES: u64 = 2 * MAX_DECODE_BYTES;

/// Lanczos-3, computed as Pillow computes it (the support widened by the
/// scale factor when shrinking, so every source pixel contributes and
/// nothing aliases). It is the sharpest of the standard separable filters;
/// its cost does not matter because `prepare` resizes each image once.
/// `fast_image_resize` runs the same fixed-point convolution as Pillow
/// with SIMD; scripts/bench-data measures the agreement on photos.
pub const RESIZE_FILTER: FilterType = FilterType::Lanczos3;

/// Decode `path` and return `size x size x 3` bytes (HWC, RGB).
pub fn decode_file(path: &Path, size: usize) -> Result<Vec<u8>> {
    let mut out = vec![0u8; size * size * 3];
    decode_into(path, size, &mut out)?;
    Ok(out)
}

/// The images of `paths` that decode (as [`decode_file`] does, several at
/// once on the compute threads): their indices in `paths` and their pixels,
/// one after the other; and the errors of the others, in path order.
pub fn decode_some(paths: &[PathBuf], size: usize) -> (Vec<usize>, Vec<u8>, Vec<Error>) {
    let decoded: Vec<Result<Vec<u8>>> = paths.par_iter().map(|p| decode_file(p, size)).collect();
    let (mut read, mut pixels, mut failed) = (Vec::new(), Vec::new(), Vec::new());
    for (i, r) in decoded.into_iter().enumerate() {
        match r {
            Ok(px) => {
                read.push(i);
                pixels.extend(px);
            }
            Err(e) => failed.push(e),
        }
    }
    (read, pixels, failed)
}

/// The images of `n` that could not be read, as one error: the one error
/// itself, or how many, the first few ([`list_failures`]) and the fix.
pub fn unread_error(mut failed: Vec<Error>, n: usize) -> Error {
    if failed.len() == 1 {
        return failed.remove(0);
    }
    // Decoding errors are the files' own; others (permission, disk, a
    // link to nothing) are fixed where the files are, not in them.
    let fix = match failed.iter().all(|e| matches!(e, Error::Image { .. })) {
        true => "remove or replace them",
        false => "fix their permission, disk or mount, or remove them",
    };
    Error::Data(format!(
        "{} of {n} images could not be read: {}; {fix}",
        failed.len(),
        list_failures(&failed)
    ))
}

/// Whether `path` opens for reading (its permission, its disk, a link's
/// target), with the error [`decode_file`] would give if not. Cheap: no
/// byte is read.
pub fn can_open(path: &Path) -> Result<()> {
    match std::fs::File::open(path) {
        Ok(_) => Ok(()),
        Err(e) => Err(read_error(path, e)),
    }
}

/// A folder where an image file was expected (e.g. `predict DIR`) is
/// called one, and so is a link to nothing; other read errors are the OS's.
fn read_error(path: &Path, e: std::io::Error) -> Error {
    if let (std::io::ErrorKind::NotFound, Ok(target)) = (e.kind(), std::fs::read_link(path)) {
        return Error::Data(format!(
            "{}: a link to {}, which does not exist (a drive or share not mounted?); mount it, or remove the link",
            path.display(),
            target.display()
        ));
    }
    if path.is_dir() {
        return Error::Data(format!(
            "{}: a folder, not an image file; pass the images in it, e.g. {}",
            path.display(),
            path.join("*.jpg").display()
        ));
    }
    Error::io(path, e)
}

/// A file of `len` bytes, past [`MAX_FILE_BYTES`]: a bad image.
fn too_large(path: &Path, len: u64) -> Error {
    let msg = format!(
        "a {} MB file; an image file may be at most {} MB (twice the {} MB one decode may use): not a photo of a data set; remove it or move it out of the folder",
        len >> 20,
        MAX_FILE_BYTES >> 20,
        MAX_DECODE_BYTES >> 20
    );
    Error::Image {
        path: path.to_path_buf(),
        msg,
    }
}

/// The bytes of an image file of at most [`MAX_FILE_BYTES`] (a larger one
/// is a bad image, as one over the decode limits is).
fn read_image_file(path: &Path) -> Result<Vec<u8>> {
    let f = std::fs::File::open(path).map_err(|e| read_error(path, e))?;
    let len = f.metadata().map_err(|e| read_error(path, e))?.len();
    if len > MAX_FILE_BYTES {
        return Err(too_large(path, len));
    }
    // Read up to the cap: a file that grows since its size was taken
    // stops there.
    let mut bytes = Vec::with_capacity(len as usize);
    f.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| read_error(path, e))?;
    match bytes.len() as u64 > MAX_FILE_BYTES {
        true => Err(too_large(path, bytes.len() as u64)),
        false => Ok(bytes),
    }
}

/// Like [`decode_file`], writing into `out` (length `size * size * 3`).
pub fn decode_into(path: &Path, size: usize, out: &mut [u8]) -> Result<()> {
    crate::error::check_len("decode_into", "output buffer", out.len(), size * size * 3)?;
    let bytes = read_image_file(path)?;
    let img = decode_bytes(&bytes, path)?;
    let img = resize_centre_crop(img, size).map_err(|msg| Error::Image {
        path: path.to_path_buf(),
        msg,
    })?;
    out.copy_from_slice(img.as_raw());
    Ok(())
}

/// Decode an encoded image held in memory to RGB8. The format comes from the
/// content (ImageNet has a PNG named `.JPEG`); greyscale becomes three equal
/// channels; CMYK JPEGs (ImageNet has a few dozen, written by Photoshop with
/// the Adobe marker) become R = (255 - C)(255 - K) / 255, as Pillow gives; 16-bit and alpha images are
/// converted (alpha dropped, not composited). An EXIF orientation tag (0x0112,
/// CIPA DC-008) is applied, so a phone photo stored sideways is seen upright,
/// as a viewer shows it (Pillow leaves it as stored unless asked). `path`
/// names the file in errors.
pub fn decode_bytes(bytes: &[u8], path: &Path) -> Result<RgbImage> {
    // Decoder messages can span lines; errors here are one line.
    let bad = |msg: String| Error::Image {
        path: path.to_path_buf(),
        msg: msg.split_whitespace().collect::<Vec<_>>().join(" "),
    };
    if bytes.is_empty() {
        return Err(bad("empty file".into()));
    }
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| bad(e.to_string()))?;
    match reader.format() {
        None => return Err(bad(format!("not an image format read here ({FORMATS})"))),
        Some(f) if !f.reading_enabled() => {
            let name = f
                .extensions_str()
                .first()
                .unwrap_or(&"unknown")
                .to_uppercase();
            return Err(bad(format!("a {name} image; formats read: {FORMATS}")));
        }
        // zune-jpeg (image's JPEG decoder) fills a truncated scan with grey
        // and reports success, so check for the end marker ourselves.
        Some(ImageFormat::Jpeg) if !jpeg_is_complete(bytes) => {
            return Err(bad(
                "truncated JPEG: no end-of-image marker after the last scan".into(),
            ))
        }
        _ => {}
    }
    let img = survive_panic(|| decode_within_limits(reader)).map_err(bad)?;
    if img.width() == 0 || img.height() == 0 {
        return Err(bad(format!("{}x{} pixels", img.width(), img.height())));
    }
    Ok(img.into_rgb8())
}

/// `decode`'s result, or its panic as an error: zune-jpeg (image's JPEG
/// decoder) has panicked on malformed files (etemesi254/zune-image issues
/// 218, 362), and one such file among a million must cost that file, named,
/// not the whole `prepare` or training run. The panic hook stays quiet
/// meanwhile: the error says it all, and a "thread panicked" line before it
/// would read as a crash.
fn survive_panic<T>(
    decode: impl FnOnce() -> std::result::Result<T, String>,
) -> std::result::Result<T, String> {
    quiet_hook_installed();
    DECODING.with(|d| d.set(true));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(decode));
    DECODING.with(|d| d.set(false));
    result.unwrap_or_else(|p| {
        let why = p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        Err(format!(
            "the decoder failed on it ({why}), a malformed file it does not handle; re-encode the image (e.g. with Pillow or ImageMagick) or remove it"
        ))
    })
}

thread_local! {
    /// Set while this thread runs a decode inside [`survive_panic`].
    static DECODING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Put a panic hook in front of the one in place (once per process) that
/// passes every panic on, except one raised inside [`survive_panic`].
fn quiet_hook_installed() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let before = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !DECODING.with(|d| d.get()) {
                before(info)
            }
        }));
    });
}

/// Decode under [`MAX_SIDE`] and [`MAX_DECODE_BYTES`], both checked from the
/// header before pixel memory is taken, and turn the picture upright by its
/// EXIF orientation. Errors are text; a limit's says which and why.
fn decode_within_limits(
    mut reader: ImageReader<Cursor<&[u8]>>,
) -> std::result::Result<DynamicImage, String> {
    let too_big = |what: String| {
        format!(
            "{what}; one image may have at most {MAX_SIDE} pixels a side and {} MB of pixels \
             (about 100 megapixels of RGB): scale a photo this large down first, e.g. to 8000 \
             pixels a side; an image of this size that is not a photo is likely damaged",
            MAX_DECODE_BYTES >> 20
        )
    };
    let said = |e: ImageError| match e {
        ImageError::Limits(_) => too_big("too large".into()),
        e => e.to_string(),
    };
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    reader.limits(limits.clone());
    let mut decoder = reader.into_decoder().map_err(said)?;
    let ((w, h), bytes) = (decoder.dimensions(), decoder.total_bytes());
    if limits.reserve(bytes).is_err() {
        return Err(too_big(format!("{w}x{h} pixels take {} MB", bytes >> 20)));
    }
    // A tag that cannot be read leaves the pixels as stored, as viewers do.
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let mut img = DynamicImage::from_decoder(decoder).map_err(said)?;
    img.apply_orientation(orientation);
    Ok(img)
}

/// True when the JPEG's marker segments lead, from its start-of-image
/// marker and scan by scan (a progressive file has several), to an
/// end-of-image marker (FF D9) after at least one scan. Walked from the
/// start because anything may follow the end marker: padding, or the video
/// of a phone's "motion photo", whose bytes hold FF DA and FF D9 pairs.
/// Segment layout and byte stuffing: ITU-T T.81, B.1.1.2 and F.1.2.3.
pub fn jpeg_is_complete(bytes: &[u8]) -> bool {
    if !bytes.starts_with(&[0xFF, 0xD8]) {
        return false;
    }
    let (mut at, mut scanned) = (2, false);
    while let Some(m) = next_marker(bytes, at) {
        let code = bytes[m + 1];
        at = m + 2;
        match code {
            0xD9 => return scanned,
            // Restart markers (between a scan's intervals) and TEM stand alone.
            0x01 | 0xD0..=0xD7 => continue,
            _ => {}
        }
        let Some(len) = bytes.get(at..at + 2) else {
            return false;
        };
        at += u16::from_be_bytes([len[0], len[1]]) as usize;
        scanned |= code == 0xDA;
    }
    false
}

/// The index of the next marker at or after `at`: an FF followed by a code
/// other than 00 (a stuffed FF inside scan data) or FF (fill before a
/// marker). None when the bytes end first.
fn next_marker(bytes: &[u8], mut at: usize) -> Option<usize> {
    loop {
        let ff = at + bytes.get(at..)?.iter().position(|&b| b == 0xFF)?;
        match *bytes.get(ff + 1)? {
            0x00 | 0xFF => at = ff + 1,
            _ => return Some(ff),
        }
    }
}
/// The size an image of `w x h` is scaled to so its short side is `size`:
/// the long side is `long * size / short`, rounded, at least `size`.
pub fn scaled_dims(w: u32, h: u32, size: u32) -> (u32, u32) {
    let long = |l: u32, s: u32| {
        let v = (l as u64 * size as u64 + s as u64 / 2) / s as u64;
        (v as u32).max(size)
    };
    if w <= h {
        (size, long(h, w))
    } else {
        (long(w, h), size)
    }
}

/// Scale so the short side is `size` (aspect kept, long side rounded), then
/// take the central `size x size`; the crop starts at `(new - size) / 2`,
/// rounded down, as `PIL.ImageOps`-style centre crops do. No resampling when
/// the short side already is `size` (CIFAR at 32): a pure crop. Errors (as
/// text) only for a `size` outside `1..=MAX_SIDE`.
pub fn resize_centre_crop(img: RgbImage, size: usize) -> std::result::Result<RgbImage, String> {
    if size == 0 || size > MAX_SIDE as usize {
        return Err(format!("output size {size} is not in 1..={MAX_SIDE}"));
    }
    let s = size as u32;
    let (w, h) = img.dimensions();
    if w == s && h == s {
        return Ok(img);
    }
    let (nw, nh) = scaled_dims(w, h, s);
    let (x0, y0) = ((nw - s) / 2, (nh - s) / 2);
    if (nw, nh) == (w, h) {
        return Ok(image::imageops::crop_imm(&img, x0, y0, s, s).to_image());
    }
    // Two passes, horizontal then vertical, each rounding to 8 bits, as
    // Pillow does: the order matters where Lanczos overshoots and is
    // clamped (one pass in fast_image_resize's own order differed from
    // Pillow by up to 9 levels on photos; this way by at most 1). Each pass
    // resamples only the output's columns/rows: the source box that maps
    // onto them under the full resize's scale, so each output pixel is the
    // one a full resize followed by a crop would give.
    let (sx, sy) = (w as f64 / nw as f64, h as f64 / nh as f64);
    // `size * w / nw` can round one ulp past `w` when the crop spans the
    // whole side; the box is clamped to the image.
    let span = |start: u32, scale: f64, full: u32| {
        let a = start as f64 * scale;
        (a, (s as f64 * scale).min(full as f64 - a))
    };
    let ((left, width), (top, height)) = (span(x0, sx, w), span(y0, sy, h));
    let alg = ResizeAlg::Convolution(RESIZE_FILTER);
    let src = ImageRef::new(w, h, img.as_raw(), PixelType::U8x3).map_err(|e| e.to_string())?;
    let mut mid = Image::new(s, h, PixelType::U8x3);
    let mut resizer = Resizer::new();
    let opts = ResizeOptions::new()
        .resize_alg(alg)
        .crop(left, 0.0, width, h as f64);
    resizer
        .resize(&src, &mut mid, &opts)
        .map_err(|e| e.to_string())?;
    let mut dst = Image::new(s, s, PixelType::U8x3);
    let opts = ResizeOptions::new()
        .resize_alg(alg)
        .crop(0.0, top, s as f64, height);
    resizer
        .resize(&mid, &mut dst, &opts)
        .map_err(|e| e.to_string())?;
    RgbImage::from_raw(s, s, dst.into_vec()).ok_or_else(|| "resize output size".to_string())
}

/// Encode `size x size` RGB pixels as a baseline JPEG at `quality` (1..=100;
/// jpeg-encoder keeps full-resolution chroma at 90 and above, 4:2:0 below,
/// so a store at 89 is about a fifth smaller than one at 90), appending to
/// `out`.
pub fn encode_jpeg(pixels: &[u8], size: usize, quality: u8, out: &mut Vec<u8>) -> Result<()> {
    crate::error::check_len("encode_jpeg", "pixels", pixels.len(), size * size * 3)?;
    let side = u16::try_from(size)
        .map_err(|_| Error::Config(format!("JPEG side {size} is above 65535")))?;
    jpeg_encoder::Encoder::new(&mut *out, quality.clamp(1, 100))
        .encode(pixels, side, side, jpeg_encoder::ColorType::Rgb)
        .map_err(|e| Error::Data(format!("JPEG encoding failed: {e}")))
}

/// The loader's decode: a JPEG written by [`encode_jpeg`] (RGB, `size x
/// size`) into `out` (`size * size * 3` bytes). zune-jpeg directly, without
/// `image`'s format probing and extra copy. Errors, a decoder panic among
/// them, are text for the caller to attach the store's name to.
pub fn decode_jpeg_rgb_into(
    bytes: &[u8],
    size: usize,
    out: &mut [u8],
) -> std::result::Result<(), String> {
    let opts = DecoderOptions::default()
        .jpeg_set_out_colorspace(ColorSpace::RGB)
        .set_max_width(size)
        .set_max_height(size);
    survive_panic(|| {
        let mut dec = JpegDecoder::new_with_options(ZCursor::new(bytes), opts);
        dec.decode_headers().map_err(one_line)?;
        let (w, h) = dec.dimensions().ok_or("no dimensions")?;
        if (w, h) != (size, size) || dec.output_buffer_size() != Some(out.len()) {
            return Err(format!("{w}x{h} JPEG where {size}x{size} RGB was expected"));
        }
        dec.decode_into(out).map_err(one_line)
    })
}

/// A decoder's error on one line: zune-jpeg's carry line breaks, which
/// would split the error (and a log line) where it is printed.
fn one_line(e: impl std::fmt::Debug) -> String {
    format!("{e:?}")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Damaged store JPEGs give errors on one line: an error is printed
    /// inside a sentence (the image, its source, the fix), and zune-jpeg's
    /// messages carried line breaks that split it.
    #[test]
    fn a_damaged_jpegs_error_is_one_line() {
        let size = 16;
        let px: Vec<u8> = (0..size * size * 3).map(|i| (i * 7 % 251) as u8).collect();
        let mut good = Vec::new();
        encode_jpeg(&px, size, 90, &mut good).unwrap();
        let mut out = vec![0u8; size * size * 3];
        decode_jpeg_rgb_into(&good, size, &mut out).unwrap();
        let mut errors = Vec::new();
        for at in 2..good.len() {
            let mut bad = good.clone();
            bad[at] ^= 0xff;
            errors.extend(decode_jpeg_rgb_into(&bad, size, &mut out).err());
            errors.extend(decode_jpeg_rgb_into(&good[..at], size, &mut out).err());
        }
        assert!(errors.len() > 10, "{errors:?}");
        for e in &errors {
            assert!(!e.contains('\n') && !e.contains('\r'), "{e:?}");
        }
    }

    /// A decoder that panics, as zune-jpeg has on malformed files, gives an
    /// error carrying its message (either payload type), and the caller
    /// goes on; a decode that works is passed through.
    #[test]
    fn a_decoder_panic_is_an_error_with_its_message() {
        let e = survive_panic::<()>(|| panic!("index out of bounds: the len is 128")).unwrap_err();
        assert!(
            e.contains("the decoder failed on it (index out of bounds: the len is 128)"),
            "{e}"
        );
        assert!(e.contains("re-encode the image"), "{e}");
        let n = 6656;
        let e = survive_panic::<()>(|| panic!("range end index {n}")).unwrap_err();
        assert!(e.contains("(range end index 6656)"), "{e}");
        assert_eq!(survive_panic(|| Ok::<u8, String>(3)), Ok(3));
    }

    /// The hook is silenced only while a decode runs, and speaks again
    /// after one that panicked, so the program's own panics are still told.
    #[test]
    fn the_panic_hook_is_quiet_only_inside_a_decode() {
        let inside = survive_panic(|| Ok::<bool, String>(DECODING.with(|d| d.get())));
        assert_eq!(inside, Ok(true));
        assert!(!DECODING.with(|d| d.get()));
        let _ = survive_panic::<()>(|| panic!("malformed"));
        assert!(!DECODING.with(|d| d.get()));
    }
}
