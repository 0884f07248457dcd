//! Turning one image file into the network's input geometry: decode to RGB8,
//! scale the short side to `size`, centre-crop `size x size` (the paper,
//! section 2), HWC u8.
use std::io::Cursor;
use std::path::Path;

use image::imageops::{self, FilterType};
use image::{ImageFormat, ImageReader, Limits, RgbImage};

use crate::error::{Error, Result};

/// Largest width or height accepted; anything bigger is a broken or hostile
/// file (ImageNet's largest is a few thousand pixels a side), refused from
/// the header before any pixel memory is allocated.
pub const MAX_SIDE: u32 = 20_000;

/// Bilinear ("triangle") filter. `image` widens the kernel by the scale
/// factor when shrinking, so it averages over the source area and does not
/// alias, while costing a fraction of Lanczos; for 256-px training inputs the
/// difference is below what the augmentation changes anyway. (Still the
/// slow step: ~12 ms for 500x375 -> 341x256 against ~4 ms to decode.)
pub const RESIZE_FILTER: FilterType = FilterType::Triangle;

/// Decode `path` and return `size x size x 3` bytes (HWC, RGB).
pub fn decode_file(path: &Path, size: usize) -> Result<Vec<u8>> {
    let mut out = vec![0u8; size * size * 3];
    decode_into(path, size, &mut out)?;
    Ok(out)
}

/// Like [`decode_file`], writing into `out` (length `size * size * 3`).
pub fn decode_into(path: &Path, size: usize, out: &mut [u8]) -> Result<()> {
    crate::error::check_len("decode_into", "output buffer", out.len(), size * size * 3)?;
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let img = decode_bytes(&bytes, path)?;
    let img = resize_centre_crop(img, size).map_err(|msg| Error::Image {
        path: path.to_path_buf(),
        msg,
    })?;
    out.copy_from_slice(img.as_raw());
    Ok(())
}

/// Decode an encoded image held in memory to RGB8. The format comes from the
/// content (a PNG named `.JPEG` decodes); greyscale, CMYK, 16-bit and alpha
/// images are converted by `image` (alpha is dropped, not composited).
/// `path` is only used to name the file in errors.
pub fn decode_bytes(bytes: &[u8], path: &Path) -> Result<RgbImage> {
    // Decoder messages can span lines; errors here are one line.
    let bad = |msg: String| Error::Image {
        path: path.to_path_buf(),
        msg: msg.split_whitespace().collect::<Vec<_>>().join(" "),
    };
    if bytes.is_empty() {
        return Err(bad("empty file".into()));
    }
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| bad(e.to_string()))?;
    match reader.format() {
        None => return Err(bad("unknown format, expected JPEG or PNG".into())),
        // zune-jpeg (image's JPEG decoder) fills a truncated scan with grey
        // and reports success, so check for the end marker ourselves.
        Some(ImageFormat::Jpeg) if !jpeg_is_complete(bytes) => {
            return Err(bad(
                "truncated JPEG: no end-of-image marker after the last scan".into(),
            ))
        }
        _ => {}
    }
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    reader.limits(limits);
    let img = reader.decode().map_err(|e| bad(e.to_string()))?;
    if img.width() == 0 || img.height() == 0 {
        return Err(bad(format!("{}x{} pixels", img.width(), img.height())));
    }
    Ok(img.into_rgb8())
}

/// True when an end-of-image marker (FF D9) follows the last start-of-scan
/// marker (FF DA). Inside entropy-coded data an FF byte is always followed by
/// 00 or a restart marker, so neither pair can appear there by accident;
/// bytes after the end marker (some writers pad) are allowed.
pub fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let Some(sos) = bytes.windows(2).rposition(|w| w == [0xFF, 0xDA]) else {
        return false;
    };
    bytes[sos..].windows(2).any(|w| w == [0xFF, 0xD9])
}

/// Scale so the short side is `size` (aspect kept, long side rounded), then
/// take the central `size x size`. No resampling when the short side already
/// is `size` (e.g. CIFAR at 32). Errors (as text) only for a `size` outside
/// `1..=MAX_SIDE`.
pub fn resize_centre_crop(img: RgbImage, size: usize) -> std::result::Result<RgbImage, String> {
    if size == 0 || size > MAX_SIDE as usize {
        return Err(format!("output size {size} is not in 1..={MAX_SIDE}"));
    }
    let s = size as u32;
    let (w, h) = img.dimensions();
    if w == s && h == s {
        return Ok(img);
    }
    let (nw, nh) = if w <= h {
        (s, scaled_long_side(h, w, s))
    } else {
        (scaled_long_side(w, h, s), s)
    };
    let src = if (nw, nh) == (w, h) {
        img
    } else {
        imageops::resize(&img, nw, nh, RESIZE_FILTER)
    };
    let x0 = (nw - s) / 2;
    let y0 = (nh - s) / 2;
    Ok(imageops::crop_imm(&src, x0, y0, s, s).to_image())
}

/// `long * target / short`, rounded, at least `target`.
fn scaled_long_side(long: u32, short: u32, target: u32) -> u32 {
    let v = (long as u64 * target as u64 + short as u64 / 2) / short as u64;
    (v as u32).max(target)
}
