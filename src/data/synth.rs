//! A procedural, labelled JPEG data set (stripes, checkerboards, shapes,
//! gradients, blobs) for demos and tests: the class is visible in the image,
//! but random colours, placement, scale, phase and pixel noise keep it from
//! being trivial. Written in the class-folder layout `ImageFolder` reads.
use std::fs::{self, File};
use std::io::BufWriter;
use std::path::Path;

use image::codecs::jpeg::JpegEncoder;
use image::ExtendedColorType;
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::rng::Rng;

/// Class folder names, in label order.
pub const DEMO_CLASSES: [&str; 10] = [
    "00-hstripes",
    "01-vstripes",
    "02-diagonal",
    "03-checker",
    "04-disc",
    "05-ring",
    "06-square",
    "07-cross",
    "08-gradient",
    "09-blobs",
];

/// JPEG quality of the written files.
const QUALITY: u8 = 90;
/// Standard deviation of the added per-pixel noise, in pixel units.
const NOISE_SIGMA: f64 = 12.0;

/// `train --demo`'s set: 400 images of each class, 4,000 in all.
pub const DEMO_TRAIN_PER_CLASS: usize = 400;
/// `eval --demo`'s set: 50 new images of each class.
pub const DEMO_TEST_PER_CLASS: usize = 50;

/// `train --demo`'s images for a run with `seed` (written again, the same
/// files, when the run resumes).
pub fn write_demo_train(dir: &Path, size: usize, seed: u64) -> Result<()> {
    write_demo_dataset(dir, DEMO_CLASSES.len(), DEMO_TRAIN_PER_CLASS, size, seed)
}

/// A test set for a demo run with `seed`: images of the same classes drawn
/// from another stream, so none is one the run trained or validated on.
pub fn write_demo_test(dir: &Path, size: usize, seed: u64) -> Result<()> {
    let test_seed = crate::rng::hash_u64(seed, 0x7E57);
    write_demo_dataset(
        dir,
        DEMO_CLASSES.len(),
        DEMO_TEST_PER_CLASS,
        size,
        test_seed,
    )
}

/// Write `classes` (1..=10) class folders of `per_class` `size x size` JPEGs
/// each under `dir` (created if missing), the same files for the same seed.
pub fn write_demo_dataset(
    dir: &Path,
    classes: usize,
    per_class: usize,
    size: usize,
    seed: u64,
) -> Result<()> {
    if classes == 0 || classes > DEMO_CLASSES.len() {
        return Err(Error::Config(format!(
            "demo data set: {classes} classes requested; pass 1 to {}",
            DEMO_CLASSES.len()
        )));
    }
    if !(8..=4096).contains(&size) {
        return Err(Error::Config(format!(
            "demo data set: image size {size}; pass 8 to 4096"
        )));
    }
    for name in &DEMO_CLASSES[..classes] {
        let d = dir.join(name);
        fs::create_dir_all(&d).map_err(|e| Error::io(&d, e))?;
    }
    (0..classes * per_class).into_par_iter().try_for_each(|j| {
        let (class, i) = (j / per_class, j % per_class);
        let mut rng = Rng::derive(seed, ((class as u64) << 32) | i as u64);
        let pixels = render(class, size, &mut rng);
        let path = dir.join(DEMO_CLASSES[class]).join(format!("{i:05}.jpg"));
        let file = File::create(&path).map_err(|e| Error::io(&path, e))?;
        let mut w = BufWriter::new(file);
        JpegEncoder::new_with_quality(&mut w, QUALITY)
            .encode(&pixels, size as u32, size as u32, ExtendedColorType::Rgb8)
            .map_err(|e| Error::io(&path, std::io::Error::other(e)))?;
        std::io::Write::flush(&mut w).map_err(|e| Error::io(&path, e))
    })
}

/// Two random colours whose brightness differs enough to see the pattern.
fn colour_pair(rng: &mut Rng) -> ([f64; 3], [f64; 3]) {
    loop {
        let a = [0; 3].map(|_: i32| rng.uniform() * 255.0);
        let b = [0; 3].map(|_: i32| rng.uniform() * 255.0);
        let luma = |c: [f64; 3]| 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2];
        if (luma(a) - luma(b)).abs() > 70.0 {
            return (a, b);
        }
    }
}

/// Render one image of `class`: a mask/weight `t(u, v)` in [0, 1] blends
/// the background colour (0) into the foreground colour (1).
fn render(class: usize, size: usize, rng: &mut Rng) -> Vec<u8> {
    use std::f64::consts::TAU;
    let (bg, fg) = colour_pair(rng);
    let freq = 2.0 + rng.uniform() * 3.0; // cycles across the image
    let phase = rng.uniform() * TAU;
    let cx = 0.3 + rng.uniform() * 0.4;
    let cy = 0.3 + rng.uniform() * 0.4;
    let r = 0.15 + rng.uniform() * 0.15;
    let thick = 0.05 + rng.uniform() * 0.05;
    let sign = if rng.below(2) == 0 { 1.0 } else { -1.0 };
    let blobs: Vec<(f64, f64, f64)> = (0..4 + rng.below(4))
        .map(|_| (rng.uniform(), rng.uniform(), 0.04 + rng.uniform() * 0.06))
        .collect();
    let step = |x: f64| if x > 0.0 { 1.0 } else { 0.0 };
    let weight = |u: f64, v: f64| -> f64 {
        match class {
            0 => step((TAU * freq * v + phase).sin()),
            1 => step((TAU * freq * u + phase).sin()),
            2 => step((TAU * freq * (u + sign * v) / 2f64.sqrt() + phase).sin()),
            3 => step((TAU * freq * u + phase).sin() * (TAU * freq * v + phase * 0.7).sin()),
            4 => step(r - ((u - cx).powi(2) + (v - cy).powi(2)).sqrt()),
            5 => step(thick - (((u - cx).powi(2) + (v - cy).powi(2)).sqrt() - r).abs()),
            6 => step(r - (u - cx).abs().max((v - cy).abs())),
            7 => step(thick - (u - cx).abs().min((v - cy).abs())),
            8 => {
                if sign > 0.0 {
                    u
                } else {
                    1.0 - u
                }
            }
            _ => blobs
                .iter()
                .map(|&(bx, by, s)| (-((u - bx).powi(2) + (v - by).powi(2)) / (2.0 * s * s)).exp())
                .sum::<f64>()
                .min(1.0),
        }
    };
    let mut out = Vec::with_capacity(size * size * 3);
    for y in 0..size {
        for x in 0..size {
            let u = (x as f64 + 0.5) / size as f64;
            let v = (y as f64 + 0.5) / size as f64;
            let t = weight(u, v);
            for c in 0..3 {
                let val = bg[c] + t * (fg[c] - bg[c]) + NOISE_SIGMA * rng.normal();
                out.push(val.round().clamp(0.0, 255.0) as u8);
            }
        }
    }
    out
}
