//! Tests of `prepare` and the packed store: real-world bad inputs (skipped,
//! counted, listed), CMYK/greyscale/PNG-as-JPEG, the stored statistics
//! against an independent computation, val layouts, damaged stores, an
//! interrupted prepare, and the loader over a store (10 crops, mean image,
//! determinism).
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use alexnet_cuda::data::packed::{
    is_unfinished_store, read_meta, refuse_unfinished_store, Encoding,
};
use alexnet_cuda::data::prepare::{prepare, PrepareOptions};
use alexnet_cuda::data::store::split_indices;
use alexnet_cuda::data::{
    batches, decode_file, held_out_files, ten_crops, Crop, ImageFolder, ImageSet, ImageSource,
    LoaderConfig, PackedStore,
};
use image::codecs::jpeg::JpegEncoder;
use image::{ExtendedColorType, GrayImage, ImageFormat, RgbImage};
use tempfile::TempDir;

use crate::common::{cli, cli_logging, Watched};

type TestResult = std::result::Result<(), Box<dyn std::error::Error>>;

fn jpeg_bytes(img: &RgbImage, quality: u8) -> Vec<u8> {
    let mut buf = Vec::new();
    JpegEncoder::new_with_quality(&mut buf, quality)
        .encode(
            img.as_raw(),
            img.width(),
            img.height(),
            ExtendedColorType::Rgb8,
        )
        .expect("encode");
    buf
}

/// A busy but smooth test picture, different per `seed`.
/// Train (3 images a class) and val (2) trees under `root`, prepared
/// together into `root/st` at 16 px, raw; the options that did it.
fn prepared_pair(root: &Path) -> Result<PrepareOptions, Box<dyn std::error::Error>> {
    let (train, val, out) = (root.join("train"), root.join("val"), root.join("st"));
    good_tree(&train, 3, 20, 18)?;
    good_tree(&val, 2, 20, 18)?;
    let mut o = opts(&train, &out, 16, Encoding::Raw);
    o.val = Some(val);
    prepare(&o)?;
    Ok(o)
}

/// What would stop the val store (a link to nothing among its images, a
/// file where its folder goes) is refused before the train store is
/// written again, naming it.
#[test]
fn what_would_stop_the_val_store_is_refused_before_train_is_written() -> TestResult {
    let t = TempDir::new()?;
    let (val, out) = (t.path().join("val"), t.path().join("st"));
    let mut o = prepared_pair(t.path())?;
    let gen = read_meta(&out.join("train"))?.generation;
    std::os::unix::fs::symlink("/nonexistent/mnt/v.JPEG", val.join("n02_dog/gone.JPEG"))?;
    let e = prepare(&o).unwrap_err().to_string();
    assert!(
        e.contains("gone.JPEG: a link to /nonexistent/mnt/v.JPEG, which does not exist"),
        "{e}"
    );
    assert_eq!(read_meta(&out.join("train"))?.generation, gen, "{e}");
    fs::remove_file(val.join("n02_dog/gone.JPEG"))?;

    let other = t.path().join("other");
    fs::create_dir(&other)?;
    fs::write(other.join("val"), "notes")?;
    o.out = other.clone();
    let e = prepare(&o).unwrap_err().to_string();
    let want = format!(
        "{} is a file, where the val store's folder goes",
        other.join("val").display()
    );
    assert!(e.contains(&want), "{e}");
    assert!(!other.join("train").exists(), "{e}");
    Ok(())
}

/// A val store that fails after the train store is replaced (a class of
/// unreadable images) leaves no earlier val store behind: that one was
/// paired with the train store replaced, and its images may be among the
/// new one's.
#[test]
fn a_val_store_that_fails_after_train_leaves_no_earlier_one() -> TestResult {
    let t = TempDir::new()?;
    let (val, out) = (t.path().join("val"), t.path().join("st"));
    let mut o = prepared_pair(t.path())?;
    let gen = read_meta(&out.join("train"))?.generation;
    for f in fs::read_dir(val.join("n02_dog"))? {
        fs::write(f?.path(), b"not a jpeg")?;
    }
    let e = prepare(&o).unwrap_err().to_string();
    assert!(
        e.contains("the earlier val store, paired with the train store replaced, was removed"),
        "{e}"
    );
    assert!(
        e.contains("validation without the class would never score it"),
        "{e}"
    );
    assert_ne!(read_meta(&out.join("train"))?.generation, gen, "{e}");
    let left: Vec<_> = fs::read_dir(out.join("val"))?.collect::<Result<_, _>>()?;
    assert!(left.is_empty(), "{left:?}");
    // A val/ that holds no val store (a user's own files, one named like a
    // store's) is left as it is, and no removal is claimed.
    let fresh = t.path().join("fresh");
    fs::create_dir_all(fresh.join("val"))?;
    for f in ["meta.json", "skipped.txt", "notes.txt"] {
        fs::write(fresh.join("val").join(f), "mine")?;
    }
    o.out = fresh.clone();
    let e = prepare(&o).unwrap_err().to_string();
    assert!(
        e.contains("was written before the val store") && !e.contains("removed"),
        "{e}"
    );
    for f in ["meta.json", "skipped.txt", "notes.txt"] {
        assert_eq!(
            fs::read_to_string(fresh.join("val").join(f))?,
            "mine",
            "{f}: {e}"
        );
    }
    Ok(())
}

fn picture(w: u32, h: u32, seed: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        let v = |k: u32| ((x * (3 + k + seed % 5) + y * (2 + k) + seed * 40) % 256) as u8;
        image::Rgb([v(0), v(1), v(2)])
    })
}

fn opts(train: &Path, out: &Path, size: usize, encoding: Encoding) -> PrepareOptions {
    let mut o = PrepareOptions::new(train.to_path_buf(), out.to_path_buf());
    o.size = size;
    o.encoding = encoding;
    o.progress = false;
    o
}

/// A two-class tree of good pictures: `n` per class, `w x h`.
fn good_tree(root: &Path, n: u32, w: u32, h: u32) -> TestResult {
    for (c, class) in ["n01_cat", "n02_dog"].iter().enumerate() {
        let d = root.join(class);
        fs::create_dir_all(&d)?;
        for i in 0..n {
            let img = picture(w, h, c as u32 * 100 + i);
            fs::write(d.join(format!("{i:04}.JPEG")), jpeg_bytes(&img, 92))?;
        }
    }
    Ok(())
}

fn store_pixels(store: &PackedStore, i: usize) -> Vec<u8> {
    let mut scratch = Vec::new();
    store.pixels(i, &mut scratch).expect("pixels").to_vec()
}

// ------------------------------------------------------- real-world inputs

/// A class whose every image is left out (here all unreadable) is not
/// committed as a store without it: the error names the class, its count
/// and the first reason, and no store is written.
#[test]
fn a_class_left_without_images_is_refused() -> TestResult {
    let t = TempDir::new()?;
    let train = t.path().join("train");
    good_tree(&train, 2, 16, 16)?;
    let dog = train.join("n02_dog");
    for e in fs::read_dir(&dog)? {
        fs::write(e?.path(), "<html>404 not found</html>")?;
    }
    let out = t.path().join("out");
    let msg = prepare(&opts(&train, &out, 8, Encoding::Jpeg))
        .expect_err("a store without n02_dog")
        .to_string();
    assert!(
        msg.contains("none of the 2 images of class n02_dog could be read (first: ")
            && msg.contains("a store without the class would train a network that never sees it")
            && msg.contains("nothing was written: fix or replace those files"),
        "{msg}"
    );
    assert!(
        !out.join("train/meta.json").exists(),
        "a store was committed"
    );
    // --limit takes each class's first files: where those are the only
    // unreadable ones, the error says to raise it, and raised it works.
    let limited = t.path().join("limited");
    good_tree(&limited, 3, 16, 16)?;
    fs::write(limited.join("n02_dog/0000.JPEG"), "<html>404</html>")?;
    let mut o = opts(&limited, &out, 8, Encoding::Jpeg);
    o.limit = Some(2);
    let msg = prepare(&o).expect_err("no dog read").to_string();
    assert!(
        msg.contains("none of the 1 images of class n02_dog")
            && msg.contains("raise --limit 2, which took only 1 of the class's files (its first)"),
        "{msg}"
    );
    o.limit = Some(4);
    prepare(&o)?;
    assert_eq!(read_meta(&out.join("train"))?.class_counts, [2, 1]);
    fs::remove_dir_all(&out)?;
    // The same in the val tree: train is written first, and the error,
    // whose "nothing was written" is the val store's, says so.
    let train_ok = t.path().join("train_ok");
    good_tree(&train_ok, 2, 16, 16)?;
    let mut o = opts(&train_ok, &out, 8, Encoding::Jpeg);
    o.val = Some(train);
    let msg = prepare(&o)
        .expect_err("a val store without n02_dog")
        .to_string();
    let written = format!(
        "The train store, {}, was written",
        out.join("train").display()
    );
    assert!(
        msg.contains("class n02_dog could be read") && msg.contains(&written),
        "{msg}"
    );
    assert!(out.join("train/meta.json").exists() && !out.join("val/meta.json").exists());
    Ok(())
}

#[test]
fn bad_files_are_skipped_counted_and_listed_and_odd_formats_decode() -> TestResult {
    let t = TempDir::new()?;
    let train = t.path().join("train");
    let a = train.join("n01_a");
    let b = train.join("n02_b");
    fs::create_dir_all(&a)?;
    fs::create_dir_all(&b)?;
    fs::write(a.join("good.JPEG"), jpeg_bytes(&picture(40, 30, 1), 95))?;
    // Greyscale JPEG.
    let g = GrayImage::from_fn(24, 24, |x, y| image::Luma([(x * 9 + y) as u8]));
    let mut buf = Vec::new();
    JpegEncoder::new_with_quality(&mut buf, 95).encode(
        g.as_raw(),
        24,
        24,
        ExtendedColorType::L8,
    )?;
    fs::write(a.join("grey.JPEG"), buf)?;
    // CMYK JPEG with the Adobe marker, as Photoshop writes them (ImageNet
    // has a few dozen; the encoder stores 255 - value, the Adobe way). Pillow
    // and libjpeg-based readers give R = (255 - C)(255 - K) / 255.
    let (c, m, y, k) = (200u8, 100u8, 50u8, 220u8);
    let cmyk: Vec<u8> = (0..16 * 16).flat_map(|_| [c, m, y, k]).collect();
    let mut buf = Vec::new();
    jpeg_encoder::Encoder::new(&mut buf, 98).encode(
        &cmyk,
        16,
        16,
        jpeg_encoder::ColorType::Cmyk,
    )?;
    fs::write(a.join("cmyk.JPEG"), buf)?;
    // A PNG named .JPEG.
    picture(20, 20, 7).save_with_format(a.join("png.JPEG"), ImageFormat::Png)?;
    fs::write(b.join("good.JPEG"), jpeg_bytes(&picture(30, 40, 2), 95))?;
    // The bad ones: empty, truncated, not an image, a decompression bomb.
    fs::write(b.join("empty.JPEG"), [])?;
    let full = jpeg_bytes(&picture(64, 64, 3), 95);
    fs::write(b.join("truncated.JPEG"), &full[..full.len() * 2 / 3])?;
    fs::write(b.join("notes.JPEG"), "<html>404 not found</html>")?;
    GrayImage::new(20_001, 1).save_with_format(b.join("bomb.png"), ImageFormat::Png)?;

    let out = t.path().join("out");
    let r = prepare(&opts(&train, &out, 16, Encoding::Raw))?;
    assert_eq!(r.train.count, 5);
    assert_eq!(r.train.skipped, 4);
    assert_eq!(r.train.class_counts, [4, 1]);
    let report = fs::read_to_string(out.join("train/skipped.txt"))?;
    assert_eq!(report.lines().count(), 4, "{report}");
    for name in ["empty.JPEG", "truncated.JPEG", "notes.JPEG", "bomb.png"] {
        let line = report.lines().find(|l| l.contains(name));
        let line = line.ok_or(format!("{name} not in the report:\n{report}"))?;
        assert!(
            line.contains('\t') && line.len() > name.len() + 10,
            "{line}"
        );
    }
    assert!(report.contains("truncated JPEG"), "{report}");

    let store = PackedStore::open(&out.join("train"))?;
    // Entries are in file order: n01_a/cmyk, good, grey, png; n02_b/good.
    let src: Vec<String> = (0..5)
        .map(|i| store.source(i).unwrap_or_default())
        .collect();
    assert_eq!(src[0], "n01_a/cmyk.JPEG");
    assert_eq!(src[4], "n02_b/good.JPEG");
    let cm = store_pixels(&store, 0);
    let want = [c, m, y].map(|v| (255 - v) as f64 * (255 - k) as f64 / 255.0);
    for px in cm.chunks_exact(3) {
        for ch in 0..3 {
            assert!(
                (px[ch] as f64 - want[ch]).abs() <= 3.0,
                "CMYK -> {px:?}, want {want:?}"
            );
        }
    }
    let grey = store_pixels(&store, 2);
    assert!(grey.chunks_exact(3).all(|p| p[0] == p[1] && p[1] == p[2]));
    assert!(grey.chunks_exact(3).any(|p| p[0] > 100));
    let png = store_pixels(&store, 3);
    assert_eq!(png, decode_file(&a.join("png.JPEG"), 16)?);

    // A link into a drive that is not mounted is no bad image: prepare
    // stops at it, naming it, and the store above stands.
    std::os::unix::fs::symlink("/nonexistent/mnt/x.JPEG", b.join("gone.JPEG"))?;
    let gen = read_meta(&out.join("train"))?.generation;
    let e = prepare(&opts(&train, &out, 16, Encoding::Raw))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("gone.JPEG: a link to /nonexistent/mnt/x.JPEG, which does not exist"),
        "{e}"
    );
    assert!(e.contains("prepare stops rather than leave it out"), "{e}");
    assert_eq!(read_meta(&out.join("train"))?.generation, gen);
    Ok(())
}

/// Files that cannot be read (here links to a drive not mounted) are
/// named all at once, those in later chunks too (2,048 images a chunk at
/// 16x16), rather than one a run; nothing is committed.
#[test]
fn every_unreadable_file_is_named_in_one_refusal() -> TestResult {
    use std::os::unix::fs::symlink;
    let t = TempDir::new()?;
    let train = t.path().join("train");
    let (a, b) = (train.join("n01_a"), train.join("n02_b"));
    fs::create_dir_all(&a)?;
    fs::create_dir_all(&b)?;
    let real = t.path().join("real.jpg");
    fs::write(&real, jpeg_bytes(&picture(16, 16, 1), 95))?;
    for i in 1..=2050 {
        symlink(&real, a.join(format!("{i:04}.jpg")))?;
    }
    fs::write(b.join("b.jpg"), jpeg_bytes(&picture(16, 16, 2), 95))?;
    // Sorted, 0000 and 0500 fall in the first chunk, 9999 in the second.
    for name in ["0000.jpg", "0500x.jpg", "9999.jpg"] {
        symlink(format!("/nonexistent/mnt/{name}"), a.join(name))?;
    }
    let out = t.path().join("store");
    let e = prepare(&opts(&train, &out, 16, Encoding::Raw))
        .unwrap_err()
        .to_string();
    assert!(e.contains("3 files could not be read"), "{e}");
    for name in ["0000.jpg", "0500x.jpg", "9999.jpg"] {
        let link = format!("{name}: a link to /nonexistent/mnt/{name}, which does not exist");
        assert!(e.contains(&link), "{name} not named: {e}");
    }
    assert!(e.contains("nothing was committed"), "{e}");
    assert!(!out.join("train/meta.json").exists());
    Ok(())
}

#[test]
fn files_not_read_are_named_in_one_warning() -> TestResult {
    let t = TempDir::new()?;
    let train = t.path().join("train");
    let (a, b) = (train.join("n01_a"), train.join("n02_b"));
    fs::create_dir_all(a.join("sub"))?;
    fs::create_dir_all(&b)?;
    fs::write(a.join("a.jpg"), jpeg_bytes(&picture(20, 20, 1), 95))?;
    picture(20, 20, 2).save_with_format(a.join("sub/b.webp"), ImageFormat::WebP)?;
    picture(20, 20, 3).save_with_format(b.join("d.bmp"), ImageFormat::Bmp)?;
    fs::write(a.join("c.gif"), b"GIF89a")?;
    fs::write(a.join("notes.txt"), "not an image")?;
    fs::write(train.join("loose.jpg"), jpeg_bytes(&picture(20, 20, 4), 95))?;
    let out = t.path().join("store");
    let run = Command::new(env!("CARGO_BIN_EXE_alexnet-cuda"))
        .args(["prepare", "--size", "16", "--train"])
        .arg(&train)
        .arg("--out")
        .arg(&out)
        .output()?;
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{err}");
    let warning = err.lines().find(|l| l.contains("not read"));
    let warning = warning.ok_or(format!("no warning:\n{err}"))?;
    assert!(warning.contains("3 files not read"), "{warning}");
    for name in [
        "loose.jpg",
        "n01_a/c.gif",
        "n01_a/notes.txt",
        "class's folder",
    ] {
        assert!(warning.contains(name), "{name}: {warning}");
    }
    // The nested WebP and the BMP are read, as torchvision reads them.
    let store = PackedStore::open(&out.join("train"))?;
    let src: Vec<String> = (0..store.len())
        .map(|i| store.source(i).unwrap_or_default())
        .collect();
    assert_eq!(src, ["n01_a/a.jpg", "n01_a/sub/b.webp", "n02_b/d.bmp"]);
    Ok(())
}

/// A line break or tab in a file name is escaped in skipped.txt and
/// duplicates.txt, so each image keeps one line of whole fields.
#[test]
fn names_with_line_breaks_keep_one_line_in_the_lists() -> TestResult {
    let t = TempDir::new()?;
    let (train, out) = (t.path().join("train"), t.path().join("out"));
    good_tree(&train, 2, 16, 16)?;
    let cat = train.join("n01_cat");
    fs::copy(cat.join("0000.JPEG"), cat.join("two\nlines\t.JPEG"))?;
    fs::write(cat.join("bad\nfile.JPEG"), "not an image")?;
    // and in a class name, which duplicates.txt also writes in its own column
    fs::create_dir(train.join("n09\tdog"))?;
    fs::copy(cat.join("0000.JPEG"), train.join("n09\tdog/x.JPEG"))?;
    prepare(&opts(&train, &out, 8, Encoding::Raw))?;
    let dups = fs::read_to_string(out.join("train/duplicates.txt"))?;
    assert_eq!(
        dups,
        "n01_cat/two\\nlines\\t.JPEG\tn01_cat/0000.JPEG\tn01_cat\n\
         n09\\tdog/x.JPEG\tn01_cat/0000.JPEG\tn09\\tdog\tn01_cat\n"
    );
    let skipped = fs::read_to_string(out.join("train/skipped.txt"))?;
    let fields: Vec<&str> = skipped.trim_end().split('\t').collect();
    assert_eq!(skipped.lines().count(), 1, "{skipped}");
    assert_eq!(fields.len(), 2, "{skipped}");
    assert!(fields[0].ends_with("n01_cat/bad\\nfile.JPEG"), "{skipped}");
    Ok(())
}

/// A list that cannot be written after its store is committed (here a
/// folder where skipped.txt goes) is an error that says the store stands.
#[test]
fn a_list_not_written_after_the_commit_says_the_store_stands() -> TestResult {
    let t = TempDir::new()?;
    let (train, out) = (t.path().join("train"), t.path().join("out"));
    good_tree(&train, 2, 16, 16)?;
    prepare(&opts(&train, &out, 8, Encoding::Raw))?;
    let before = read_meta(&out.join("train"))?.generation;
    fs::remove_file(out.join("train/skipped.txt"))?;
    fs::create_dir_all(out.join("train/skipped.txt/kept"))?;
    let e = prepare(&opts(&train, &out, 8, Encoding::Raw))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("skipped.txt") && e.contains("was committed before it"),
        "{e}"
    );
    let store = PackedStore::open(&out.join("train"))?;
    store.verify()?;
    assert_ne!(store.meta().generation, before, "{e}");
    Ok(())
}

/// A store passed where images go (its folder or one split) is named as
/// a store, not scanned as class folders.
#[test]
fn a_store_passed_as_images_is_named() -> TestResult {
    let t = TempDir::new()?;
    let tree = t.path().join("tree");
    good_tree(&tree, 2, 16, 16)?;
    let st = t.path().join("st");
    prepare(&opts(&tree, &st, 8, Encoding::Raw))?;
    for (flag, dir) in [
        ("--train", st.clone()),
        ("--train", st.join("train")),
        ("--val", st.join("train")),
    ] {
        let mut o = opts(&tree, &t.path().join("again"), 8, Encoding::Raw);
        match flag {
            "--train" => o.train = dir.clone(),
            _ => o.val = Some(dir.clone()),
        }
        let e = prepare(&o).expect_err(flag).to_string();
        let want = format!(
            "{flag} {}: a store written by prepare, not images",
            dir.display()
        );
        assert!(e.contains(&want), "{e}");
    }
    Ok(())
}

#[test]
fn a_store_inside_the_image_tree_is_refused() -> TestResult {
    let t = TempDir::new()?;
    good_tree(t.path(), 1, 16, 16)?;
    let o = opts(t.path(), &t.path().join("n01_cat/store"), 8, Encoding::Jpeg);
    let msg = prepare(&o).expect_err("inside").to_string();
    assert!(
        msg.contains("is inside") && msg.contains("outside the image tree"),
        "{msg}"
    );
    assert!(!t.path().join("n01_cat/store").exists());
    Ok(())
}

/// Images inside a store's folder (`--train D/train --out D`) are refused
/// too, before anything is written: the store's files would land among
/// the class folders.
#[test]
fn images_inside_the_stores_folder_are_refused() -> TestResult {
    let t = TempDir::new()?;
    let images = t.path().join("train");
    good_tree(&images, 1, 16, 16)?;
    let o = opts(&images, t.path(), 8, Encoding::Jpeg);
    let msg = prepare(&o)
        .expect_err("a store among the images")
        .to_string();
    assert!(
        msg.contains("train/ store would be written among the images of")
            && msg.contains("pass another --out"),
        "{msg}"
    );
    let mut names: Vec<String> = std::fs::read_dir(&images)?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<std::io::Result<_>>()?;
    names.sort();
    assert_eq!(names, ["n01_cat", "n02_dog"]);
    Ok(())
}

/// The same, spelled through a symbolic link to the tree and through `..`,
/// with the store's folder not made yet (nothing to canonicalize), and
/// `..` after a folder not made yet (`create_dir_all` makes it, then steps
/// back); and `--out/train` a link into the tree.
#[cfg(unix)]
#[test]
fn a_store_inside_the_image_tree_is_refused_however_it_is_spelled() -> TestResult {
    let t = TempDir::new()?;
    let tree = t.path().join("photos");
    good_tree(&tree, 1, 16, 16)?;
    std::os::unix::fs::symlink(&tree, t.path().join("link"))?;
    let spellings = [
        t.path().join("link/store"),
        t.path().join("link/n01_cat/new/store"),
        t.path().join("elsewhere/../photos/store"),
        t.path().join("elsewhere/../link/store"),
    ];
    for out in spellings {
        let msg = prepare(&opts(&tree, &out, 8, Encoding::Jpeg))
            .expect_err("inside")
            .to_string();
        assert!(msg.contains("is inside"), "{}: {msg}", out.display());
        assert!(!out.exists(), "{} was written", out.display());
    }
    // A store's own folder a link into the tree (or to it): the store
    // would be written among the images.
    for into in [tree.clone(), tree.join("n01_cat")] {
        let out = t.path().join("out");
        fs::create_dir_all(&out)?;
        std::os::unix::fs::symlink(&into, out.join("train"))?;
        let msg = prepare(&opts(&tree, &out, 8, Encoding::Jpeg))
            .expect_err("a link into the tree")
            .to_string();
        assert!(
            msg.contains("its train/ store would be written among the images"),
            "{msg}"
        );
        assert!(!tree.join("meta.json").exists() && !tree.join("n01_cat/meta.json").exists());
        fs::remove_dir_all(&out)?;
    }
    Ok(())
}

#[test]
fn a_tree_with_no_readable_image_is_an_error_naming_it() -> TestResult {
    let t = TempDir::new()?;
    for class in ["a", "b"] {
        fs::create_dir_all(t.path().join("train").join(class))?;
        fs::write(t.path().join("train").join(class).join("x.jpg"), "nope")?;
    }
    let e = prepare(&opts(
        &t.path().join("train"),
        &t.path().join("out"),
        8,
        Encoding::Jpeg,
    ))
    .expect_err("nothing readable");
    let msg = e.to_string();
    assert!(
        msg.contains("none of the 2 images") && msg.contains("x.jpg"),
        "{msg}"
    );
    let first = t.path().join("train/a/x.jpg").display().to_string();
    assert_eq!(msg.matches(&first).count(), 1, "{msg}");
    // A first prepare that fails leaves no empty train/ behind, which a
    // scan of the output would take for a class folder.
    assert!(
        !t.path().join("out/train").exists(),
        "an empty store folder was left"
    );
    Ok(())
}

// ------------------------------------------------------------ statistics

#[test]
fn stored_pixels_and_statistics_match_an_independent_computation() -> TestResult {
    let t = TempDir::new()?;
    let train = t.path().join("train");
    good_tree(&train, 6, 37, 23)?;
    let out = t.path().join("out");
    let r = prepare(&opts(&train, &out, 16, Encoding::Raw))?;
    let store = PackedStore::open(&out.join("train"))?;
    store.verify()?;
    assert_eq!(r.train.count, 12);
    // Every stored image is the file's decode + resize + centre crop.
    let mut all: Vec<Vec<u8>> = Vec::new();
    for i in 0..store.len() {
        let src = train.join(store.source(i).ok_or("source")?);
        let px = store_pixels(&store, i);
        assert_eq!(px, decode_file(&src, 16)?, "{}", src.display());
        assert_eq!(store.label(i), (i / 6) as u32);
        all.push(px);
    }
    // Mean image, channel mean and covariance, in f64 from the pixels.
    let n = all.len() as f64;
    let mean_img = store.mean_image();
    for p in 0..16 * 16 * 3 {
        let m: f64 = all.iter().map(|im| im[p] as f64).sum::<f64>() / n;
        assert!((mean_img[p] as f64 - m).abs() < 1e-4, "mean image at {p}");
    }
    let pixels: Vec<[f64; 3]> = all
        .iter()
        .flat_map(|im| {
            im.chunks_exact(3)
                .map(|c| [c[0] as f64, c[1] as f64, c[2] as f64])
        })
        .collect();
    let count = pixels.len() as f64;
    let mean: Vec<f64> = (0..3)
        .map(|c| pixels.iter().map(|p| p[c]).sum::<f64>() / count)
        .collect();
    let st = &r.train.stats;
    for c in 0..3 {
        assert!((st.channel_mean[c] - mean[c]).abs() < 1e-9);
        for d in 0..3 {
            let cov = pixels
                .iter()
                .map(|p| (p[c] - mean[c]) * (p[d] - mean[d]))
                .sum::<f64>()
                / count;
            assert!(
                (st.rgb_cov[c][d] - cov).abs() < 1e-6 * cov.abs().max(1.0),
                "cov {c}{d}"
            );
        }
        assert!((st.channel_std[c] - st.rgb_cov[c][c].sqrt()).abs() < 1e-9);
    }
    // The PCA is the covariance's (on the [0, 1] scale): C v = l v.
    for k in 0..3 {
        let v = st.pca.eigvecs[k];
        for c in 0..3 {
            let cv: f64 = (0..3)
                .map(|d| st.rgb_cov[c][d] / 65025.0 * v[d] as f64)
                .sum();
            assert!(
                (cv - st.pca.eigvals[k] as f64 * v[c] as f64).abs() < 1e-5,
                "eigenpair {k}"
            );
        }
    }

    // The JPEG store decodes to nearly the same pixels.
    let out_j = t.path().join("out_jpeg");
    prepare(&opts(&train, &out_j, 16, Encoding::Jpeg))?;
    let js = PackedStore::open(&out_j.join("train"))?;
    assert_eq!(js.len(), all.len());
    for (i, raw) in all.iter().enumerate() {
        let a = store_pixels(&js, i);
        let err = a
            .iter()
            .zip(raw)
            .map(|(&x, &y)| (x as f64 - y as f64).abs())
            .sum::<f64>()
            / a.len() as f64;
        // Sawtooth test pictures are JPEG's worst case; garbage would be ~80.
        assert!(err < 8.0, "image {i}: mean JPEG error {err}");
    }
    Ok(())
}

#[test]
fn store_is_the_same_for_any_thread_count() -> TestResult {
    let t = TempDir::new()?;
    let train = t.path().join("train");
    good_tree(&train, 5, 30, 20)?;
    let mut metas = Vec::new();
    let mut data = Vec::new();
    for threads in [1, 2] {
        let out = t.path().join(format!("out{threads}"));
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()?;
        let o = opts(&train, &out, 16, Encoding::Jpeg);
        let r = pool.install(|| prepare(&o))?;
        let s = PackedStore::open(&out.join("train"))?;
        data.push(
            (0..s.len())
                .map(|i| s.bytes(i).map(<[u8]>::to_vec))
                .collect::<Result<Vec<_>, _>>()?,
        );
        metas.push((r.train.stats, r.train.data_crc, r.train.index_crc));
    }
    assert_eq!(metas[0], metas[1]);
    assert_eq!(data[0], data[1]);
    Ok(())
}

// ------------------------------------------------------------ val layouts

/// `n` val images, and the hidden files a copy made on macOS leaves beside
/// them (`._NAME` AppleDouble files, `.DS_Store`), which are not images
/// and are skipped, as in a class folder.
fn flat_val(root: &Path, n: u32) -> TestResult {
    fs::create_dir_all(root)?;
    for i in 1..=n {
        let img = picture(20, 20, 50 + i);
        let name = format!("ILSVRC2012_val_{i:08}.JPEG");
        fs::write(root.join(&name), jpeg_bytes(&img, 90))?;
        fs::write(root.join(format!("._{name}")), [0u8; 64])?;
    }
    fs::write(root.join(".DS_Store"), "x")?;
    Ok(())
}

fn labels_of(dir: &Path) -> Vec<u32> {
    let s = PackedStore::open(dir).expect("open");
    (0..s.len()).map(|i| s.label(i)).collect()
}

/// A labels CSV naming images of training classes that the flat val
/// folder lacks (a copy or unpack cut short) is warned of with their
/// count and the first; rows of other classes, and a whole folder, are not.
#[test]
fn csv_rows_whose_images_are_missing_are_warned_of() -> TestResult {
    let t = TempDir::new()?;
    let train = t.path().join("train");
    good_tree(&train, 2, 20, 20)?;
    let flat = t.path().join("val");
    flat_val(&flat, 2)?;
    let csv = t.path().join("labels.csv");
    let rows = "ILSVRC2012_val_00000001,n01_cat\nILSVRC2012_val_00000002,n02_dog\nILSVRC2012_val_00000009,n07_owl\n";
    let run = |csv_text: &str, out: &str| -> Result<String, Box<dyn std::error::Error>> {
        fs::write(&csv, csv_text)?;
        let out = t.path().join(out);
        let (ok, _, err) = cli(&[
            "prepare",
            "--size",
            "8",
            "--train",
            &train.to_string_lossy(),
            "--val",
            &flat.to_string_lossy(),
            "--val-labels",
            &csv.to_string_lossy(),
            "--out",
            &out.to_string_lossy(),
        ]);
        assert!(ok, "{err}");
        assert_eq!(labels_of(&out.join("val")), [0, 1]);
        Ok(err)
    };
    let err = run(rows, "whole")?;
    assert!(!err.contains("rows name"), "{err}");
    let more = format!("{rows}ILSVRC2012_val_00000004,n02_dog\nILSVRC2012_val_00000003,n01_cat\n");
    let err = run(&more, "part")?;
    let said = format!(
        "2 rows name an image of a training class that is not in {} (the first, line 4: ILSVRC2012_val_00000004)",
        flat.display()
    );
    assert!(err.contains(&said), "{err}");
    Ok(())
}

#[test]
fn val_as_class_folders_csv_or_devkit_ground_truth() -> TestResult {
    let t = TempDir::new()?;
    let train = t.path().join("train");
    good_tree(&train, 2, 20, 20)?;

    // Class folders (a subset of train's classes is fine).
    let vdir = t.path().join("val_folders");
    good_tree(&vdir, 1, 20, 20)?;
    let mut o = opts(&train, &t.path().join("o1"), 8, Encoding::Jpeg);
    o.val = Some(vdir.clone());
    let r = prepare(&o)?;
    assert_eq!(r.val.as_ref().map(|v| v.count), Some(2));
    assert_eq!(labels_of(&t.path().join("o1/val")), [0, 1]);
    // One class is a subset too: labelled by train's classes, not refused
    // as a one-class classifier.
    fs::remove_dir_all(vdir.join("n01_cat"))?;
    let mut o = opts(&train, &t.path().join("o1b"), 8, Encoding::Jpeg);
    o.val = Some(vdir);
    prepare(&o)?;
    assert_eq!(labels_of(&t.path().join("o1b/val")), [1]);

    // Flat with a Kaggle-style CSV (header, extension-less names, boxes).
    let flat = t.path().join("val_flat");
    flat_val(&flat, 3)?;
    let csv = t.path().join("LOC_val_solution.csv");
    fs::write(
        &csv,
        "ImageId,PredictionString\n\
         ILSVRC2012_val_00000002,n01_cat 1 2 3 4 n01_cat 5 6 7 8\n\
         ILSVRC2012_val_00000001,n02_dog 1 2 3 4\n\
         ILSVRC2012_val_00000003,n02_dog 0 0 9 9\n",
    )?;
    let mut o = opts(&train, &t.path().join("o2"), 8, Encoding::Jpeg);
    o.val = Some(flat.clone());
    o.val_labels = Some(csv.clone());
    prepare(&o)?;
    assert_eq!(labels_of(&t.path().join("o2/val")), [1, 0, 1]);

    // Names with dots: only an image extension is dropped, so `img.1` and
    // `img.2.jpg` name two files, not one `img` labelled twice.
    let dotted = t.path().join("val_dotted");
    fs::create_dir_all(&dotted)?;
    for i in 1..=2 {
        fs::write(
            dotted.join(format!("img.{i}.jpg")),
            jpeg_bytes(&picture(20, 20, i), 90),
        )?;
    }
    let csv2 = t.path().join("dotted.csv");
    fs::write(&csv2, "img.1,n02_dog\nimg.2.jpg,n01_cat\n")?;
    let mut o = opts(&train, &t.path().join("o2b"), 8, Encoding::Jpeg);
    o.val = Some(dotted.clone());
    o.val_labels = Some(csv2);
    prepare(&o)?;
    assert_eq!(labels_of(&t.path().join("o2b/val")), [1, 0]);
    // Every field quoted, as pandas' QUOTE_ALL and spreadsheets write them.
    let quoted = t.path().join("quoted.csv");
    fs::write(
        &quoted,
        "\"file\",\"label\"\n\"img.1.jpg\",\"n02_dog\"\n\"img.2\",\"n01_cat\"\n",
    )?;
    let mut o = opts(&train, &t.path().join("o2c"), 8, Encoding::Jpeg);
    o.val = Some(dotted);
    o.val_labels = Some(quoted);
    prepare(&o)?;
    assert_eq!(labels_of(&t.path().join("o2c/val")), [1, 0]);

    // Flat with the devkit's ground truth: IDs in devkit order, which is not
    // the sorted order (here ID 1 = n02_dog, ID 2 = n01_cat).
    let gt = t.path().join("ILSVRC2012_validation_ground_truth.txt");
    // (Saved with a byte order mark, as editors on Windows do.)
    fs::write(&gt, "\u{feff}2\n1\n1\n")?;
    let syn = t.path().join("synsets.txt");
    fs::write(&syn, "n02_dog\nn01_cat\n")?;
    let mut o = opts(&train, &t.path().join("o3"), 8, Encoding::Jpeg);
    o.val = Some(flat.clone());
    o.val_labels = Some(gt.clone());
    o.val_synsets = Some(syn);
    prepare(&o)?;
    assert_eq!(labels_of(&t.path().join("o3/val")), [0, 1, 1]);
    // A link to nothing among the flat images (a drive not mounted) stops
    // prepare before any image is encoded, naming it.
    let gone = flat.join("ILSVRC2012_val_00000004.JPEG");
    std::os::unix::fs::symlink("/nonexistent/mnt/v4.JPEG", &gone)?;
    let csv4 = t.path().join("four.csv");
    let rows: String = (1..=4)
        .map(|i| format!("ILSVRC2012_val_{i:08},n02_dog\n"))
        .collect();
    fs::write(&csv4, rows)?;
    let mut o = opts(&train, &t.path().join("o3b"), 8, Encoding::Jpeg);
    o.val = Some(flat.clone());
    o.val_labels = Some(csv4);
    let e = prepare(&o).unwrap_err().to_string();
    assert!(
        e.contains("ILSVRC2012_val_00000004.JPEG: a link to /nonexistent/mnt/v4.JPEG, which does not exist"),
        "{e}"
    );
    assert!(!t.path().join("o3b/train/meta.json").exists(), "{e}");
    fs::remove_file(&gone)?;

    // Errors that say what to pass; a flat folder unzipped on macOS (its
    // __MACOSX/ folder is no class) among them.
    let mut o = opts(&train, &t.path().join("o4"), 8, Encoding::Jpeg);
    fs::create_dir_all(flat.join("__MACOSX"))?;
    o.val = Some(flat.clone());
    let msg = prepare(&o).expect_err("no labels").to_string();
    assert!(
        msg.contains("flat val folder") && msg.contains("--val-labels"),
        "{msg}"
    );
    // Class folders with --val-labels: the folders' names are the labels.
    o.val = Some(t.path().join("val_folders"));
    o.val_labels = Some(csv.clone());
    let msg = prepare(&o)
        .expect_err("labels for class folders")
        .to_string();
    assert!(
        msg.contains("class sub-folders") && msg.contains("leave out --val-labels"),
        "{msg}"
    );
    o.val_labels = None;
    let archive = t.path().join("val.tar");
    fs::write(&archive, "x")?;
    o.val = Some(archive);
    let msg = prepare(&o).expect_err("an archive").to_string();
    assert!(
        msg.contains("val.tar is an archive, not a folder: unpack it") && msg.contains("--val"),
        "{msg}"
    );
    o.val = Some(flat.clone());
    o.val_labels = Some(gt);
    let msg = prepare(&o).expect_err("no synsets").to_string();
    assert!(msg.contains("--val-synsets"), "{msg}");
    // A bad line in ground truth is named as that line, not taken for a
    // sign of a CSV file; with CSV labels, --val-synsets is refused.
    let gt_bad = t.path().join("gt-bad.txt");
    fs::write(&gt_bad, "2\n-1\n1\n")?;
    let syn_ok = t.path().join("synsets-ok.txt");
    fs::write(&syn_ok, "n02_dog\nn01_cat\n")?;
    o.val_labels = Some(gt_bad);
    o.val_synsets = Some(syn_ok);
    let msg = prepare(&o).expect_err("a bad ID").to_string();
    assert!(
        msg.contains("line 2: \"-1\" is not an ID in 1..=2"),
        "{msg}"
    );
    // Ground truth for one image more than the folder holds (a part of
    // the val set): labels by position would all shift, so it is refused.
    let gt_long = t.path().join("gt-long.txt");
    fs::write(&gt_long, "2\n1\n1\n2\n")?;
    o.val_labels = Some(gt_long);
    let msg = prepare(&o).expect_err("a label too many").to_string();
    assert!(
        msg.contains("4 labels for 3 images") && msg.contains("the whole validation set"),
        "{msg}"
    );
    // A blank labels file labels nothing.
    let blank = t.path().join("blank.csv");
    fs::write(&blank, "\n  \n")?;
    o.val_labels = Some(blank);
    let msg = prepare(&o).expect_err("no labels").to_string();
    assert!(msg.contains("blank.csv: it holds no labels"), "{msg}");
    o.val_labels = Some(csv.clone());
    let msg = prepare(&o).expect_err("synsets beside a CSV").to_string();
    assert!(
        msg.contains("name their synsets")
            && msg.contains("synsets-ok.txt would not be read; drop it"),
        "{msg}"
    );
    o.val_labels = Some(t.path().join("ILSVRC2012_validation_ground_truth.txt"));
    o.val_synsets = None;
    // Synsets that cannot be the devkit's order: one listed twice, and a
    // sorted list (the devkit's is not sorted).
    let syn = t.path().join("synsets-bad.txt");
    o.val_synsets = Some(syn.clone());
    fs::write(&syn, "n02_dog\nn01_cat\nn02_dog\n")?;
    let msg = prepare(&o).expect_err("a synset twice").to_string();
    assert!(
        msg.contains("synset n02_dog is listed twice (IDs 1 and 3)"),
        "{msg}"
    );
    // (As a names file lists them: the words after the synset are not read.)
    let sorted: Vec<String> = (0..12)
        .map(|i| format!("n{i:02}_c a name, another"))
        .collect();
    fs::write(&syn, sorted.join("\n"))?;
    let msg = prepare(&o).expect_err("sorted synsets").to_string();
    assert!(
        msg.contains("its 12 synsets are in sorted order") && msg.contains("--val-labels"),
        "{msg}"
    );
    o.val_synsets = None;
    fs::write(&csv, "ILSVRC2012_val_00000001,n02_dog\n")?;
    o.val_labels = Some(csv.clone());
    let msg = prepare(&o).expect_err("missing").to_string();
    assert!(
        msg.contains("no label for 2") && msg.contains("ILSVRC2012_val_0000000"),
        "{msg}"
    );
    // One image labelled twice, differently; errors count the file's lines,
    // blank ones included.
    fs::write(
        &csv,
        "ILSVRC2012_val_00000001,n02_dog\n\n\
         ILSVRC2012_val_00000002,n01_cat\n\
         ILSVRC2012_val_00000003,n02_dog\n\
         ILSVRC2012_val_00000001.JPEG,n01_cat\n",
    )?;
    let msg = prepare(&o).expect_err("labelled twice").to_string();
    assert!(
        msg.contains(
            "line 5 labels ILSVRC2012_val_00000001.JPEG n01_cat, line 1 labels it n02_dog"
        ),
        "{msg}"
    );
    // Labels of no training class for every image: the wrong labels file.
    let cows = (1..=3).map(|i| format!("ILSVRC2012_val_{i:08},n03_cow\n"));
    fs::write(
        &csv,
        format!("ImageId,Synset\n\n\n{}", cows.collect::<String>()),
    )?;
    let msg = prepare(&o).expect_err("unknown synsets").to_string();
    assert!(
        msg.contains(
            "line 4: synset \"n03_cow\" is not a training class, nor is any other image's"
        ),
        "{msg}"
    );
    // Nothing was written for the failed runs: val labels are checked first.
    assert!(!t.path().join("o4/train/meta.json").exists());

    // Training on a subset of the classes with the full val folder and its
    // labels: lines for files not in the folder are not read, and images
    // of classes not trained are left out of the val store, counted.
    fs::write(
        &csv,
        "ImageId,PredictionString\n\
         ILSVRC2012_val_00000001,n02_dog 1 2 3 4\n\
         ILSVRC2012_val_00000002,n03_cow 1 2 3 4\n\
         ILSVRC2012_val_00000003,n01_cat 1 2 3 4\n\
         ILSVRC2012_val_00000999,n04_ant 1 2 3 4\n",
    )?;
    let r = prepare(&o)?;
    assert_eq!(r.val.as_ref().map(|v| v.count), Some(2));
    assert_eq!(labels_of(&t.path().join("o4/val")), [1, 0]);
    // The same without a header, its first line of a class not trained:
    // that line is no header, and the rest are read.
    fs::write(
        &csv,
        "ILSVRC2012_val_00000002,n03_cow\n\
         ILSVRC2012_val_00000001,n02_dog\n\
         ILSVRC2012_val_00000003,n01_cat\n",
    )?;
    let r = prepare(&o)?;
    assert_eq!(r.val.as_ref().map(|v| v.count), Some(2));
    assert_eq!(labels_of(&t.path().join("o4/val")), [1, 0]);
    Ok(())
}

/// Training straight from a class folder warns of the images it holds
/// twice as `prepare` lists them: a training image under two classes, a
/// repeat within a class (byte copies, and one picture as PNG and BMP),
/// and held-out images that are training images. The counts are worked
/// out here from the planted pairs and the files the run holds out (a seed
/// is chosen whose split makes all three kinds); a folder without copies
/// gets no warning.
#[test]
fn training_from_a_folder_warns_of_images_held_twice() -> TestResult {
    let t = TempDir::new()?;
    let train = t.path().join("train");
    good_tree(&train, 30, 40, 30)?;
    let clean = {
        let args = folder_run(&train, &t.path().join("clean"));
        let (ok, _, err) = cli(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(ok, "{err}");
        err
    };
    assert!(
        !clean.contains("same pixels") && !clean.contains("repeat"),
        "{clean}"
    );
    let (cat, dog) = ("n01_cat", "n02_dog");
    let pairs = [
        (format!("{cat}/0000.JPEG"), format!("{dog}/c0.JPEG")),
        (format!("{cat}/0005.JPEG"), format!("{dog}/c5.JPEG")),
        (format!("{dog}/0010.JPEG"), format!("{cat}/d10.JPEG")),
        (format!("{cat}/0001.JPEG"), format!("{cat}/r1.JPEG")),
        (format!("{dog}/0002.JPEG"), format!("{dog}/r2.JPEG")),
        (format!("{dog}/a.png"), format!("{dog}/b.bmp")),
    ];
    picture(40, 30, 77).save_with_format(train.join(dog).join("a.png"), ImageFormat::Png)?;
    picture(40, 30, 77).save_with_format(train.join(dog).join("b.bmp"), ImageFormat::Bmp)?;
    for (from, to) in &pairs[..5] {
        fs::copy(train.join(from), train.join(to))?;
    }
    let folder = ImageFolder::scan(&train)?;
    let index = |f: &str| {
        folder
            .items()
            .iter()
            .position(|(p, _)| p == &train.join(f))
            .unwrap()
    };
    // [other class, same class, held out] for the split of `seed`.
    let expected = |seed: u64| {
        let held = held_out_files(&folder, None, HELD_OUT, seed);
        let mut n = [0; 3];
        for (a, b) in &pairs {
            let (i, j) = (index(a), index(b));
            match (held.contains(&i), held.contains(&j)) {
                (false, false) => n[(a[..7] == b[..7]) as usize] += 1,
                (true, true) => {}
                _ => n[2] += 1,
            }
        }
        n
    };
    let seed = (1..100)
        .find(|&s| expected(s).iter().all(|&k| k > 0))
        .unwrap();
    let [other, same, held] = expected(seed);
    let mut args = folder_run(&train, &t.path().join("run"));
    args.extend(["--seed".into(), seed.to_string()]);
    let (ok, _, err) = cli(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(ok, "{err}");
    for want in [
        format!("{other} training images have the same pixels as one under another class"),
        format!("{same} training images repeat one of their class"),
        format!("{held} held-out images have the same pixels as a training image"),
    ] {
        let line = err.lines().find(|l| l.contains(&want));
        assert!(
            line.is_some_and(|l| l.contains("(first: ")),
            "{want}: {err}"
        );
    }
    Ok(())
}

/// Training from a store with `--val` held out of it warns of the held-out
/// images whose copies stay in training, from the pairs the store's
/// duplicates.txt lists (one copy's name holds a tab, which the list
/// escapes). The count is worked out here from the planted copies and the
/// files the split holds out; a split that holds out no such image, or a
/// whole group, gets no warning.
#[test]
fn training_from_a_store_warns_of_held_out_copies() -> TestResult {
    let t = TempDir::new()?;
    let train = t.path().join("train");
    good_tree(&train, 30, 40, 30)?;
    let groups: [(&str, &[&str]); 3] = [
        (
            "n01_cat/0000.JPEG",
            &["n02_dog/c0.JPEG", "n01_cat/c\t0.JPEG"],
        ),
        ("n01_cat/0003.JPEG", &["n01_cat/r3.JPEG"]),
        ("n02_dog/0004.JPEG", &["n02_dog/r4.JPEG", "n01_cat/d4.JPEG"]),
    ];
    for (first, copies) in groups {
        for copy in copies {
            fs::copy(train.join(first), train.join(copy))?;
        }
    }
    let out = t.path().join("store");
    prepare(&opts(&train, &out, 36, Encoding::Raw))?;
    let store = PackedStore::open(&out.join("train"))?;
    let at = |f: &str| (0..store.len()).position(|i| store.source(i).as_deref() == Some(f));
    // Per seed: held-out images with a copy in training.
    let expected = |seed: u64| {
        let (_, held) = split_indices(store.len(), HELD_OUT, seed);
        let count = |(first, copies): &(&str, &[&str])| {
            let members = std::iter::once(first).chain(copies.iter());
            let h = members
                .map(|f| held.contains(&at(f).unwrap()))
                .filter(|&h| h)
                .count();
            if h <= copies.len() {
                h
            } else {
                0
            }
        };
        groups.iter().map(count).sum::<usize>()
    };
    let warned = |seed: u64| {
        let mut args = folder_run(&out, &t.path().join(format!("run{seed}")));
        args.extend(["--seed".into(), seed.to_string()]);
        let (ok, _, err) = cli(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(ok, "{err}");
        let want = "held-out images (--val) have the same pixels as a training image";
        let line = err.lines().find(|l| l.contains(want)).map(str::to_string);
        (line, err)
    };
    // A split that holds out the copy named with a tab, among others.
    let tab = at("n01_cat/c\t0.JPEG").unwrap();
    let holds_tab = |s: u64| split_indices(store.len(), HELD_OUT, s).1.contains(&tab);
    let seed = (1..200)
        .find(|&s| expected(s) >= 2 && holds_tab(s))
        .unwrap();
    let (line, err) = warned(seed);
    let line = line.unwrap_or_else(|| panic!("no warning: {err}"));
    assert!(
        line.contains(&format!(": {} held-out images", expected(seed))),
        "{line}"
    );
    assert!(
        line.contains("(first: ") && line.contains("duplicates.txt"),
        "{line}"
    );
    let seed = (1..200).find(|&s| expected(s) == 0).unwrap();
    assert_eq!(warned(seed).0, None);
    Ok(())
}

/// Images `training_from_a_folder_warns_of_images_held_twice` holds out.
const HELD_OUT: usize = 15;

/// A one-epoch run of the `cifar` config on the class folder `data`.
fn folder_run(data: &Path, out: &Path) -> Vec<String> {
    let s = |p: &Path| p.display().to_string();
    let mut a: Vec<String> = ["train", "--cpu", "--config", "cifar", "--epochs", "1"]
        .map(String::from)
        .to_vec();
    a.extend(["--batch", "8", "--no-progress", "--val"].map(String::from));
    a.extend([
        HELD_OUT.to_string(),
        "--data".into(),
        s(data),
        "--out".into(),
        s(out),
    ]);
    a
}

/// Images stored with the same pixels are listed beside each store and
/// warned of: a copy under another class (contradictory labels), a repeat
/// within a class, the same picture as PNG and BMP (other bytes, the same
/// pixels), and val images that are training images. Distinct pictures,
/// and one that differs from a training image by one pixel, are not.
#[test]
fn images_stored_twice_are_listed_and_warned_of() -> TestResult {
    let t = TempDir::new()?;
    let train = t.path().join("train");
    good_tree(&train, 3, 40, 30)?;
    let (cat, dog) = (train.join("n01_cat"), train.join("n02_dog"));
    fs::copy(cat.join("0000.JPEG"), dog.join("0009.JPEG"))?;
    fs::copy(cat.join("0001.JPEG"), cat.join("0007.JPEG"))?;
    picture(40, 30, 7).save_with_format(dog.join("a.png"), ImageFormat::Png)?;
    picture(40, 30, 7).save_with_format(dog.join("b.bmp"), ImageFormat::Bmp)?;
    let val = t.path().join("val");
    fs::create_dir_all(val.join("n02_dog"))?;
    fs::create_dir_all(val.join("n01_cat"))?;
    fs::copy(dog.join("0002.JPEG"), val.join("n02_dog/v1.JPEG"))?;
    let mut near = picture(40, 30, 7);
    near.put_pixel(20, 15, image::Rgb([0, 0, 0]));
    near.save_with_format(val.join("n01_cat/v2.png"), ImageFormat::Png)?;
    let out = t.path().join("out");
    let (s, o) = (|p: &Path| p.display().to_string(), &out);
    let args = [
        "prepare",
        "--train",
        &s(&train),
        "--val",
        &s(&val),
        "--out",
        &s(o),
    ];
    let (ok, _, err) = cli(&[&args[..], &["--size", "16", "--no-progress"]].concat());
    assert!(ok, "{err}");

    let list = |store: &str| fs::read_to_string(out.join(store).join("duplicates.txt")).unwrap();
    let mut train_pairs: Vec<String> = list("train").lines().map(String::from).collect();
    train_pairs.sort();
    assert_eq!(
        train_pairs,
        [
            "n01_cat/0007.JPEG\tn01_cat/0001.JPEG\tn01_cat",
            "n02_dog/0009.JPEG\tn01_cat/0000.JPEG\tn02_dog\tn01_cat",
            "n02_dog/b.bmp\tn02_dog/a.png\tn02_dog",
        ]
    );
    assert_eq!(list("val"), "n02_dog/v1.JPEG\tn02_dog/0002.JPEG\n");
    let listed = |store: &str| format!("listed in {}", s(&out.join(store).join("duplicates.txt")));
    for (want, store) in [
        (
            "train: 1 images have the same pixels as one under another class",
            "train",
        ),
        ("train: 2 images repeat one of their class", "train"),
        ("val: 1 images are also training images", "val"),
    ] {
        let line = err
            .lines()
            .find(|l| l.contains(want))
            .unwrap_or_else(|| panic!("{want}: {err}"));
        assert!(line.contains(&listed(store)), "{line}");
    }

    // No copies: empty lists (an earlier list does not stay), no warning.
    for f in ["n02_dog/0009.JPEG", "n01_cat/0007.JPEG", "n02_dog/b.bmp"] {
        fs::remove_file(train.join(f))?;
    }
    fs::write(
        val.join("n02_dog/v1.JPEG"),
        jpeg_bytes(&picture(40, 30, 55), 92),
    )?;
    let (ok, _, err) = cli(&[&args[..], &["--size", "16", "--no-progress"]].concat());
    assert!(
        ok && !err.contains("pixels") && !err.contains("repeat"),
        "{err}"
    );
    assert_eq!((list("train"), list("val")), (String::new(), String::new()));
    Ok(())
}

#[test]
fn names_file_gives_readable_class_names() -> TestResult {
    let t = TempDir::new()?;
    let train = t.path().join("train");
    good_tree(&train, 1, 16, 16)?;
    let names = t.path().join("LOC_synset_mapping.txt");
    // As an editor on Windows saves it: a byte order mark, then CRLF lines.
    fs::write(
        &names,
        "\u{feff}n01_cat tabby, tabby cat\r\nn02_dog dog, domestic dog\r\nn99 unused\r\n",
    )?;
    let mut o = opts(&train, &t.path().join("out"), 8, Encoding::Jpeg);
    o.names = Some(names.clone());
    let r = prepare(&o)?;
    assert_eq!(r.train.names, ["tabby, tabby cat", "dog, domestic dog"]);
    assert_eq!(read_meta(&t.path().join("out/train"))?.names, r.train.names);
    // A class the file does not name is named in a warning.
    fs::write(&names, "n01_cat tabby, tabby cat\n")?;
    let nm = names.display().to_string();
    let err = prepare_cli(&train, None, &t.path().join("out2"), "8", &["--names", &nm]);
    assert!(
        err.contains("no name for 1 of the 2 classes (n02_dog first)"),
        "{err}"
    );
    // Saved as UTF-16 (Notepad's "Unicode"), either byte order: the same
    // names. Saved as Latin-1: refused, naming the line and the fix.
    let text = "n01_cat chat tigr\u{e9}\nn02_dog dog\n";
    let want = ["chat tigr\u{e9}", "dog"];
    let le: Vec<u8> = [0xFEFFu16]
        .into_iter()
        .chain(text.encode_utf16())
        .flat_map(u16::to_le_bytes)
        .collect();
    let be: Vec<u8> = [0xFEFFu16]
        .into_iter()
        .chain(text.encode_utf16())
        .flat_map(u16::to_be_bytes)
        .collect();
    for (i, bytes) in [le, be].into_iter().enumerate() {
        fs::write(&names, bytes)?;
        o.out = t.path().join(format!("utf16-{i}"));
        assert_eq!(prepare(&o)?.train.names, want);
    }
    let latin1: Vec<u8> = text.chars().map(|c| c as u8).collect();
    fs::write(&names, latin1)?;
    o.out = t.path().join("latin1");
    let e = prepare(&o).unwrap_err().to_string();
    let said = format!("{nm}: line 1 is not UTF-8 text (byte 0xE9 at offset 17");
    assert!(
        e.contains(&said) && e.ends_with("save the file as UTF-8"),
        "{e}"
    );
    Ok(())
}

/// `--limit` above the tree's image count takes every image, and says so.
#[test]
fn a_limit_above_the_image_count_takes_all_and_says_so() -> TestResult {
    let t = TempDir::new()?;
    let train = t.path().join("train");
    good_tree(&train, 3, 16, 16)?;
    let err = prepare_cli(
        &train,
        None,
        &t.path().join("out"),
        "8",
        &["--limit", "1000"],
    );
    let tr = train.display();
    let said = format!("--limit 1000: {tr} has only 6 images; all of them are used");
    assert!(err.contains(&said), "{err}");
    assert_eq!(read_meta(&t.path().join("out/train"))?.count, 6);
    Ok(())
}

// ------------------------------------------------------ damage and crashes

/// `good_tree(train, n, 20, 20)` prepared at 16 px as `enc`: the temporary
/// folder, the tree and the training store's folder.
fn prepared_tree(
    n: u32,
    enc: Encoding,
) -> Result<(TempDir, PathBuf, PathBuf), Box<dyn std::error::Error>> {
    let t = TempDir::new()?;
    let train = t.path().join("train");
    good_tree(&train, n, 20, 20)?;
    let out = t.path().join("out");
    prepare(&opts(&train, &out, 16, enc))?;
    Ok((t, train, out.join("train")))
}

#[test]
fn a_damaged_store_is_reported_with_its_file_name() -> TestResult {
    let (t, train, dir) = prepared_tree(3, Encoding::Jpeg)?;
    let gen = read_meta(&dir)?.generation;
    let file = |stem: &str, ext: &str| dir.join(format!("{stem}-{gen}.{ext}"));

    // One flipped byte in image 4's data: opening works (only lengths and the
    // small files are checked), reading that image names the data file and
    // the source image.
    let data = file("data", "bin");
    let good = fs::read(&data)?;
    let s = PackedStore::open(&dir)?;
    let e = s.entries()[4];
    drop(s);
    let mut bad = good.clone();
    bad[e.offset as usize + e.len as usize / 2] ^= 0x55;
    fs::write(&data, &bad)?;
    let s = Arc::new(PackedStore::open(&dir)?);
    let cfg = loader_cfg(6, 16, false, 1);
    let results: Vec<_> = batches(s.clone(), &(0..6).collect::<Vec<_>>(), &cfg, 0)?.collect();
    let msg = results
        .iter()
        .find_map(|r| r.as_ref().err())
        .ok_or("a damaged image was not reported")?
        .to_string();
    assert!(msg.contains(&data.display().to_string()), "{msg}");
    assert!(
        msg.contains("n02_dog/0001.JPEG") && msg.contains("checksum"),
        "{msg}"
    );
    assert!(msg.contains("rerun `alexnet-cuda prepare`"), "{msg}");
    assert!(s.verify().is_err());

    // A truncated data file is caught on open.
    fs::write(&data, &good[..good.len() - 10])?;
    let msg = PackedStore::open(&dir)
        .err()
        .ok_or("truncation missed")?
        .to_string();
    assert!(
        msg.contains(&data.display().to_string()) && msg.contains("bytes"),
        "{msg}"
    );
    fs::write(&data, &good)?;

    // A damaged index or mean image fails its checksum on open.
    for (stem, ext) in [("index", "bin"), ("mean", "bin")] {
        let p = file(stem, ext);
        let orig = fs::read(&p)?;
        let mut b = orig.clone();
        b[3] ^= 1;
        fs::write(&p, &b)?;
        let msg = PackedStore::open(&dir)
            .err()
            .ok_or("damage missed")?
            .to_string();
        assert!(
            msg.contains(&p.display().to_string()) && msg.contains("checksum"),
            "{msg}"
        );
        fs::write(&p, orig)?;
    }
    // An edited list of source files (whose names digest a run's held-out
    // images) is refused where it is read.
    let p = file("sources", "txt");
    let orig = fs::read_to_string(&p)?;
    fs::write(&p, orig.replacen("0001", "0002", 1))?;
    let msg = PackedStore::open(&dir)?
        .sources()
        .err()
        .ok_or("an edited sources list was taken")?
        .to_string();
    assert!(
        msg.contains(&p.display().to_string()) && msg.contains("checksum"),
        "{msg}"
    );
    fs::write(&p, &orig)?;
    let s = PackedStore::open(&dir)?;
    assert_eq!(s.sources()?.len(), s.entries().len());
    // A file missing (deleted, or left out of a copy): named, with the fix.
    for (stem, ext) in [("data", "bin"), ("index", "bin"), ("mean", "bin")] {
        let p = file(stem, ext);
        let aside = t.path().join("aside");
        fs::rename(&p, &aside)?;
        let msg = PackedStore::open(&dir)
            .err()
            .ok_or("missing file missed")?
            .to_string();
        assert!(
            msg.contains(&format!("{}: missing", p.display())) && msg.contains("incomplete"),
            "{msg}"
        );
        fs::rename(&aside, &p)?;
    }
    // No meta.json: not a store at all.
    let msg = PackedStore::open(&train)
        .err()
        .ok_or("a folder that is not a store")?
        .to_string();
    assert!(
        msg.contains("not a store") && msg.contains("prepare"),
        "{msg}"
    );
    // A garbled meta.json.
    fs::write(dir.join("meta.json"), "{\"format\": ")?;
    let msg = PackedStore::open(&dir)
        .err()
        .ok_or("bad meta missed")?
        .to_string();
    assert!(
        msg.contains("meta.json") && msg.contains("prepare"),
        "{msg}"
    );
    Ok(())
}

/// Index entries that pass the index's checksum but do not fit the store
/// (an index and meta.json edited, or written by other code): a raw image
/// of the wrong length, which the loader slices rows of `size * 3` bytes
/// out of, and an offset whose end wraps past 2^64. And a meta.json image
/// side past prepare's, whose `size * size * 3` would overflow. Each is
/// refused on open, naming the file.
#[test]
fn index_entries_that_do_not_fit_the_store_are_refused_on_open() -> TestResult {
    let (_t, _, dir) = prepared_tree(2, Encoding::Raw)?;
    let gen = read_meta(&dir)?.generation;
    let index = dir.join(format!("index-{gen}.bin"));
    let (good, meta) = (
        fs::read(&index)?,
        fs::read_to_string(dir.join("meta.json"))?,
    );
    // Entry i's 24 bytes: offset u64, length u32, label u32, checksum u32.
    let cases: [(usize, Vec<u8>, &str); 2] = [
        (
            8,
            700u32.to_le_bytes().to_vec(),
            "entry 0 has 700 bytes, a raw 16x16 image 768",
        ),
        (
            24,
            (u64::MAX - 10).to_le_bytes().to_vec(),
            "entry 1 out of range",
        ),
    ];
    for (at, bytes, said) in cases {
        let mut bad = good.clone();
        bad[at..at + bytes.len()].copy_from_slice(&bytes);
        fs::write(&index, &bad)?;
        meta_with(&dir, &meta, "index_crc", crc32fast::hash(&bad).into())?;
        let msg = PackedStore::open(&dir).err().ok_or(said)?.to_string();
        assert!(msg.contains(said), "{msg}");
        assert!(msg.contains(&index.display().to_string()), "{msg}");
    }
    fs::write(&index, &good)?;
    meta_with(&dir, &meta, "size", (1u64 << 40).into())?;
    let msg = PackedStore::open(&dir).err().ok_or("side")?.to_string();
    assert!(
        msg.contains("image side 1099511627776") && msg.contains("meta.json"),
        "{msg}"
    );
    // A generation that is not prepare's hex would name other files.
    meta_with(&dir, &meta, "generation", "../../x".into())?;
    let msg = PackedStore::open(&dir)
        .err()
        .ok_or("generation")?
        .to_string();
    assert!(
        msg.contains("generation \"../../x\", where prepare writes hex digits")
            && msg.contains("meta.json"),
        "{msg}"
    );
    meta_with(&dir, &meta, "size", 16.into())?;
    assert_eq!(PackedStore::open(&dir)?.len(), 4);
    Ok(())
}

/// A meta.json whose class names or counts do not match its classes (an
/// edit, or damage) is refused on open: a run trained on it finished, and
/// then every checkpoint it wrote was refused as changed after training.
#[test]
fn class_names_and_counts_that_do_not_fit_the_classes_are_refused_on_open() -> TestResult {
    let (_t, _, dir) = prepared_tree(2, Encoding::Raw)?;
    let meta = fs::read_to_string(dir.join("meta.json"))?;
    let m = read_meta(&dir)?;
    assert_eq!((m.classes.len(), m.count), (2, 4), "{m:?}");
    let cases: [(&str, serde_json::Value, &str); 3] = [
        (
            "names",
            vec!["a plane"].into(),
            "1 class names for 2 classes",
        ),
        (
            "class_counts",
            vec![4].into(),
            "1 class counts for 2 classes",
        ),
        (
            "class_counts",
            vec![1, 1].into(),
            "class counts add up to 2 images, not its 4",
        ),
    ];
    for (key, value, said) in cases {
        meta_with(&dir, &meta, key, value)?;
        let msg = PackedStore::open(&dir).err().ok_or(said)?.to_string();
        assert!(
            msg.contains(said) && msg.contains("meta.json") && msg.contains("rerun"),
            "{msg}"
        );
    }
    meta_with(&dir, &meta, "names", vec!["a plane", "a car"].into())?;
    assert_eq!(PackedStore::open(&dir)?.len(), 4);
    Ok(())
}

/// A store of another version says which build reads it, even where its
/// fields differ (here one missing), and another program's JSON says it
/// is none of ours.
#[test]
fn a_store_of_another_version_names_the_build_that_reads_it() -> TestResult {
    let (_t, _, dir) = prepared_tree(2, Encoding::Raw)?;
    let meta = fs::read_to_string(dir.join("meta.json"))?;
    let version = |v: &serde_json::Value| -> Result<String, Box<dyn std::error::Error>> {
        let mut m: serde_json::Value = serde_json::from_str(&meta)?;
        m["version"] = v.clone();
        m.as_object_mut().ok_or("an object")?.remove("sources_crc");
        fs::write(dir.join("meta.json"), serde_json::to_vec(&m)?)?;
        Ok(PackedStore::open(&dir).err().ok_or("opened")?.to_string())
    };
    let msg = version(&2.into())?;
    assert!(msg.contains("a store of version 2, written by a newer alexnet-cuda; this build reads version 1: use that build"), "{msg}");
    let msg = version(&0.into())?;
    assert!(msg.contains("a store of version 0, written by an older alexnet-cuda; this build reads version 1: rerun `alexnet-cuda prepare`"), "{msg}");
    meta_with(&dir, &meta, "format", "other".into())?;
    let msg = PackedStore::open(&dir).err().ok_or("opened")?.to_string();
    assert!(
        msg.contains("not an alexnet-cuda store description (format \"other\")"),
        "{msg}"
    );
    Ok(())
}

/// Write `dir/meta.json` as `text` with `key` set to `value`.
fn meta_with(dir: &Path, text: &str, key: &str, value: serde_json::Value) -> TestResult {
    let mut v: serde_json::Value = serde_json::from_str(text)?;
    v[key] = value;
    fs::write(dir.join("meta.json"), serde_json::to_vec(&v)?)?;
    Ok(())
}

/// Files of generations in a store folder.
fn generation_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.retain(|n| !["meta.json", "skipped.txt", "duplicates.txt"].contains(&n.as_str()));
    v.sort();
    v
}

/// Whether `dir` holds a data file of a generation other than `committed`:
/// a prepare has started writing a new store there.
fn new_generation_started(dir: &Path, committed: &str) -> bool {
    generation_files(dir)
        .iter()
        .any(|f| f.starts_with("data-") && !f.contains(committed))
}

/// Run `prepare ARGS` and SIGKILL it as soon as `marker` holds
/// ([`signal_at`]: an error if it ended first). Returns whether the kill
/// interrupted it.
fn kill_at(
    args: &[&std::ffi::OsStr],
    marker: impl Fn() -> bool,
) -> Result<bool, Box<dyn std::error::Error>> {
    let (status, _) = signal_at(args, &[libc::SIGKILL], marker)?;
    Ok(!status.success())
}

/// Stores of a small tree in `out` (train and val), and two larger trees
/// (150 images of 400x300 a class) to replace them with.
struct Replacing {
    big: PathBuf,
    big_val: PathBuf,
    out: PathBuf,
}

fn replacing(dir: &Path) -> Result<Replacing, Box<dyn std::error::Error>> {
    let (small, small_val) = (dir.join("small"), dir.join("small-val"));
    good_tree(&small, 2, 20, 20)?;
    good_tree(&small_val, 2, 20, 20)?;
    let (big, big_val) = (dir.join("big"), dir.join("big-val"));
    good_tree(&big, 150, 400, 300)?;
    good_tree(&big_val, 150, 400, 300)?;
    let out = dir.join("out");
    let mut o = opts(&small, &out, 64, Encoding::Jpeg);
    o.val = Some(small_val);
    prepare(&o)?;
    Ok(Replacing { big, big_val, out })
}

impl Replacing {
    /// `prepare`'s flags that replace the stores with the larger trees'.
    fn args(&self) -> [&std::ffi::OsStr; 9] {
        let (b, v, o) = (&self.big, &self.big_val, &self.out);
        let flag = |f: &'static str| std::ffi::OsStr::new(f);
        [
            flag("--no-progress"),
            flag("--size"),
            flag("64"),
            flag("--train"),
            b.as_os_str(),
            flag("--val"),
            v.as_os_str(),
            flag("--out"),
            o.as_os_str(),
        ]
    }
}

/// SIGKILL at two points marked by what prepare has written, not by time:
/// once its new training generation's files appear (every image is still
/// to decode), and once the training store is committed while the
/// validation store's new files appear. Each kill lands before the
/// store it interrupts is committed (300 images to decode after each
/// marker), and whatever it interrupted, every store opens whole.
#[test]
fn a_killed_prepare_leaves_the_previous_store_whole_and_can_be_rerun() -> TestResult {
    let t = TempDir::new()?;
    let r = replacing(t.path())?;
    let args = r.args();
    let (train, val) = (r.out.join("train"), r.out.join("val"));
    let (before, before_val) = (read_meta(&train)?, read_meta(&val)?);

    // 1. While the new training store is being written.
    let killed = kill_at(&args, || new_generation_started(&train, &before.generation))?;
    assert!(killed, "prepare finished before the kill");
    for (dir, old) in [(&train, &before), (&val, &before_val)] {
        let s = PackedStore::open(dir)?;
        s.verify()?;
        assert_eq!(s.meta().generation, old.generation, "{}", dir.display());
    }

    // 2. After the training store's commit, while the validation store is
    //    being written: the new training store, and the old validation
    //    store set aside as unfinished (it was the old training store's).
    let killed = kill_at(&args, || {
        read_meta(&train).is_ok_and(|m| m.generation != before.generation)
            && new_generation_started(&val, &before_val.generation)
    })?;
    assert!(killed, "prepare finished before the kill");
    let s = PackedStore::open(&train)?;
    s.verify()?;
    assert_eq!(s.meta().count, 300, "the committed training store is whole");
    assert!(is_unfinished_store(&val));

    // A rerun completes and leaves one generation's files.
    let mut o = opts(&r.big, &r.out, 64, Encoding::Jpeg);
    o.val = Some(r.big_val.clone());
    let r = prepare(&o)?;
    assert_eq!(r.train.count, 300);
    for (dir, generation) in [
        (&train, &r.train.generation),
        (&val, &r.val.as_ref().ok_or("no val store")?.generation),
    ] {
        let files = generation_files(dir);
        assert_eq!(files.len(), 4, "{files:?}");
        assert!(
            files.iter().all(|f| f.contains(generation.as_str())),
            "{files:?}"
        );
        PackedStore::open(dir)?.verify()?;
    }
    Ok(())
}

/// A child process killed and waited for when dropped: a failed
/// assertion leaves none behind, stopped or running.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Send `sig` to `child` (not yet waited for).
fn send(child: &std::process::Child, sig: i32) {
    // SAFETY: kill(2) on the child's pid, which stays its own until waited for.
    unsafe { libc::kill(child.id() as i32, sig) };
}

/// Run `prepare ARGS` on one thread, send it `sigs` as soon as `marker`
/// holds, and return how it exited and its stdout. Several are sent while
/// it is held (SIGSTOP), so that they arrive together.
fn signal_at(
    args: &[&std::ffi::OsStr],
    sigs: &[i32],
    marker: impl Fn() -> bool,
) -> Result<(std::process::ExitStatus, String), Box<dyn std::error::Error>> {
    let mut child = Reaped(
        Command::new(env!("CARGO_BIN_EXE_alexnet-cuda"))
            .args(["prepare", "--threads", "1"])
            .args(args)
            .stderr(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .spawn()?,
    );
    while !marker() {
        if child.0.try_wait()?.is_some() {
            return Err("prepare ended before the marker".into());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let together = sigs.len() > 1;
    if together {
        send(&child.0, libc::SIGSTOP);
    }
    sigs.iter().for_each(|&sig| send(&child.0, sig));
    if together {
        send(&child.0, libc::SIGCONT);
    }
    let mut stdout = String::new();
    if let Some(mut o) = child.0.stdout.take() {
        std::io::Read::read_to_string(&mut o, &mut stdout)?;
    }
    Ok((child.0.wait()?, stdout))
}

/// A stop asked for before the images are listed (a signal during a long
/// scan) ends the prepare there: no output folder is made.
#[test]
fn a_stop_before_writing_makes_nothing() -> TestResult {
    let t = TempDir::new()?;
    let src = t.path().join("src");
    good_tree(&src, 3, 20, 20)?;
    let out = t.path().join("out");
    let mut o = opts(&src, &out, 16, Encoding::Raw);
    o.stop = Some(Arc::new(std::sync::atomic::AtomicBool::new(true)));
    let e = prepare(&o).err().ok_or("prepared")?;
    assert!(
        matches!(&e, alexnet_cuda::Error::Stopped(m) if m.contains("before writing anything")),
        "{e}"
    );
    assert!(!out.exists());
    Ok(())
}

/// A first store that a prepare is writing now is said to be so (the
/// prepare's pid, and to wait), not to be one a prepare did not finish,
/// whose fix (run it again) the running one's lock would refuse. Once
/// that prepare is killed, it is one it did not finish.
#[test]
fn a_store_being_written_is_told_from_one_left_unfinished() -> TestResult {
    let t = TempDir::new()?;
    let big = t.path().join("big");
    good_tree(&big, 150, 400, 300)?;
    let out = t.path().join("out");
    let train = out.join("train");
    let mut child = Reaped(
        Command::new(env!("CARGO_BIN_EXE_alexnet-cuda"))
            .args(["prepare", "--no-progress", "--size", "64", "--train"])
            .arg(&big)
            .arg("--out")
            .arg(&out)
            .stderr(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .spawn()?,
    );
    while !new_generation_started(&train, "none") {
        assert!(
            child.0.try_wait()?.is_none(),
            "prepare ended before its files were seen"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    // Held there (SIGSTOP), its lock with it, whatever the machine's speed.
    send(&child.0, libc::SIGSTOP);
    assert!(
        !train.join("meta.json").exists(),
        "committed before the stop"
    );
    let now = refuse_unfinished_store(&train)
        .err()
        .ok_or("accepted")?
        .to_string();
    let pid = format!("in use by a prepare (pid {})", child.0.id());
    drop(child);
    assert!(
        now.contains("no store yet (no meta.json)")
            && now.contains(&pid)
            && now.contains("wait for it to finish"),
        "{now}"
    );
    let left = refuse_unfinished_store(&train)
        .err()
        .ok_or("accepted")?
        .to_string();
    assert!(
        left.contains("a store that `alexnet-cuda prepare` did not finish"),
        "{left}"
    );
    Ok(())
}

/// SIGTERM or SIGINT while prepare writes a store stops it between images:
/// that store's files are removed at once (a killed prepare leaves them to
/// the next one), the stores committed stay whole, and the exit status is
/// the signal's. Marked by what prepare has written, as above.
#[test]
fn a_signal_stops_prepare_and_removes_the_unfinished_store() -> TestResult {
    let t = TempDir::new()?;
    let r = replacing(t.path())?;
    let args = r.args();
    let (train, val) = (r.out.join("train"), r.out.join("val"));
    let (before, before_val) = (read_meta(&train)?, read_meta(&val)?);
    let files = (generation_files(&train), generation_files(&val));

    // 1. SIGTERM while the new training store is written.
    let (status, said) = signal_at(&args, &[libc::SIGTERM], || {
        new_generation_started(&train, &before.generation)
    })?;
    assert_eq!(status.code(), Some(143), "{said}");
    assert!(
        said.contains("prepare stopped at a signal")
            && said.contains("of 300 train images: the unfinished train store was removed")
            && said.contains("run the same prepare again"),
        "{said}"
    );
    assert_eq!((generation_files(&train), generation_files(&val)), files);
    for (dir, old) in [(&train, &before), (&val, &before_val)] {
        let s = PackedStore::open(dir)?;
        s.verify()?;
        assert_eq!(s.meta().generation, old.generation, "{}", dir.display());
    }

    // 2. SIGINT after the training store's commit, while the validation
    //    store is written: the new training store stays, and no val files.
    let (status, said) = signal_at(&args, &[libc::SIGINT], || {
        read_meta(&train).is_ok_and(|m| m.generation != before.generation)
            && new_generation_started(&val, &before_val.generation)
    })?;
    assert_eq!(status.code(), Some(130), "{said}");
    assert!(
        said.contains("of 300 val images")
            && said.contains("The train store")
            && said.contains("is complete")
            && said.contains("run the same prepare again"),
        "{said}"
    );
    let s = PackedStore::open(&train)?;
    s.verify()?;
    assert_eq!(s.meta().count, 300, "the committed training store is whole");
    assert_eq!(generation_files(&train).len(), 4);
    assert!(
        generation_files(&val).is_empty(),
        "{:?}",
        generation_files(&val)
    );

    // 3. Two signals together (a person's Ctrl-C as a scheduler's SIGTERM
    //    comes, or `timeout`'s two copies of one): one request, the store
    //    still removed. A second signal used to quit there, leaving it.
    let now = read_meta(&train)?.generation;
    let files = generation_files(&train);
    let (status, said) = signal_at(&args, &[libc::SIGINT, libc::SIGTERM], || {
        new_generation_started(&train, &now)
    })?;
    assert!(
        matches!(status.code(), Some(130 | 143)),
        "{status:?}: {said}"
    );
    assert!(
        said.contains("the unfinished train store was removed"),
        "{said}"
    );
    assert_eq!(generation_files(&train), files);
    Ok(())
}

/// A prepare stopped while it writes the first store of an output folder
/// it made removes that folder too, and the folders it made above it. It
/// used to leave it holding only the lock, which `train --data` then
/// called a folder without class sub-folders.
#[test]
fn a_prepare_stopped_in_a_folder_it_made_leaves_no_folder() -> TestResult {
    let t = TempDir::new()?;
    let r = replacing(t.path())?;
    // Two missing folders above --out; and one named on the way through
    // `..`, made by creating --out though not under it.
    let (runs, nx) = (t.path().join("runs"), t.path().join("nx"));
    for fresh in [runs.join("a").join("fresh"), nx.join("..").join("fresh")] {
        let train = fresh.join("train");
        let flag = std::ffi::OsStr::new;
        let args = [
            flag("--no-progress"),
            flag("--size"),
            flag("64"),
            flag("--train"),
            r.big.as_os_str(),
            flag("--out"),
            fresh.as_os_str(),
        ];
        let (status, said) = signal_at(&args, &[libc::SIGTERM], || {
            new_generation_started(&train, "none")
        })?;
        assert_eq!(status.code(), Some(143), "{said}");
        for made in [&runs, &nx, &t.path().join("fresh")] {
            assert!(!made.exists(), "{}: {fresh:?}", made.display());
        }
        assert!(t.path().exists(), "the folder that was there stays");
    }
    Ok(())
}

// ------------------------------------------------------------- the loader

/// One `size x size` image whose every channel at (x, y) is 10 y + x.
fn coordinate_image(size: usize) -> alexnet_cuda::Result<Arc<ImageSet>> {
    let mut px = Vec::new();
    for y in 0..size {
        for x in 0..size {
            let v = (10 * y + x) as u8;
            px.extend([v, v, v]);
        }
    }
    Ok(Arc::new(ImageSet::from_parts(
        size,
        px,
        vec![0],
        vec!["a".into()],
    )?))
}

fn loader_cfg(batch: usize, crop: usize, train: bool, workers: usize) -> LoaderConfig {
    LoaderConfig {
        seed: 5,
        workers,
        ..LoaderConfig::new(batch, crop, train)
    }
}

/// A worker's panic reaches the reader as that panic, not as a hang or a
/// short epoch, and every worker ends: the source is released.
#[test]
fn a_worker_panic_is_raised_in_the_reader_and_the_workers_end() -> TestResult {
    let set = ImageSet::from_parts(4, vec![7; 4 * 4 * 3 * 8], vec![0; 8], vec!["a".into()])?;
    // Image 5 panics when read: a bug, not bad input.
    let source = Arc::new(Watched(set, |i| assert!(i != 5, "source bug at image {i}")));
    let cfg = loader_cfg(2, 4, false, 2);
    let idx: Vec<usize> = (0..8).collect();
    let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let it = batches(source.clone(), &idx, &cfg, 0).expect("loader");
        it.map(|b| b.expect("batch").n).sum::<usize>()
    }));
    let payload = read.expect_err("the panic was not raised");
    let text = payload
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_default();
    assert!(text.contains("source bug at image 5"), "{text:?}");
    assert_eq!(
        Arc::strong_count(&source),
        1,
        "a worker still holds the source"
    );
    Ok(())
}

/// `ten_crops` of a 256 image: the five offsets given, then mirrored.
fn assert_ten_crops(crop: usize, want: [(usize, usize); 5]) {
    let got = ten_crops(256, crop);
    for k in 0..10 {
        let (x, y) = want[k % 5];
        assert_eq!(got[k], Crop { x, y, flip: k >= 5 }, "crop {crop}, {k}");
    }
}

/// The ten 4x4 crops, padded by `pad`, of a 6x6 coordinate image.
fn ten_crops_of_coordinates(pad: usize) -> alexnet_cuda::Result<alexnet_cuda::data::Batch> {
    let mut c = loader_cfg(1, 4, false, 1);
    c.ten_crop = true;
    c.pad = pad;
    let b = batches(coordinate_image(6)?, &[0], &c, 0)?.next();
    b.ok_or_else(|| alexnet_cuda::Error::Data("no batch".into()))?
}

#[test]
fn ten_crops_are_the_corners_and_centre_then_mirrored() -> TestResult {
    // The paper, section 4.1: "the four corner patches and the center patch
    // as well as their horizontal reflections". 256 - 227 = 29; centre 14.
    assert_ten_crops(227, [(0, 0), (29, 0), (0, 29), (29, 29), (14, 14)]);
    // Through the loader on a coordinate image: 6x6, crop 4, value at
    // (x, y) = 10 y + x in every channel. Row r of image 0 is ten_crops[r].
    let b = ten_crops_of_coordinates(0)?;
    assert_eq!((b.n, b.crops, b.x.len()), (1, 10, 10 * 3 * 16));
    // Hand-written: top-left starts at 0, top-right at x = 2, bottom-left at
    // y = 2 (20), bottom-right 22, centre (1, 1) = 11; mirrored rows start
    // from the crop's right edge.
    let first_row = |r: usize| -> Vec<f32> { b.x[r * 48..r * 48 + 4].to_vec() };
    assert_eq!(first_row(0), [0.0, 1.0, 2.0, 3.0]);
    assert_eq!(first_row(1), [2.0, 3.0, 4.0, 5.0]);
    assert_eq!(first_row(2), [20.0, 21.0, 22.0, 23.0]);
    assert_eq!(first_row(3), [22.0, 23.0, 24.0, 25.0]);
    assert_eq!(first_row(4), [11.0, 12.0, 13.0, 14.0]);
    assert_eq!(first_row(5), [3.0, 2.0, 1.0, 0.0]);
    assert_eq!(first_row(9), [14.0, 13.0, 12.0, 11.0]);
    // Last row of the centre crop: y = 4, x = 1..5.
    assert_eq!(b.x[4 * 48 + 12..4 * 48 + 16], [41.0, 42.0, 43.0, 44.0]);
    Ok(())
}

#[test]
fn ten_crops_of_224_are_padded_like_training_crops() -> TestResult {
    // The paper's text: 224 of 256. 256 - 224 = 32; centre 16.
    assert_ten_crops(224, [(0, 0), (32, 0), (0, 32), (32, 32), (16, 16)]);
    // 6x6 coordinate image, crop 4 padded by 3 to 7: one zero row and
    // column before, two after (as 224 + 3 = 227: 1 before, 2 after).
    let b = ten_crops_of_coordinates(3)?;
    assert_eq!((b.n, b.crops, b.x.len()), (1, 10, 10 * 3 * 49));
    let plane = |r: usize, ch: usize| b.x[(r * 3 + ch) * 49..][..49].to_vec();
    for (r, ch) in [(1, 0), (1, 2), (8, 1)] {
        let p = plane(r, ch);
        let row = |y: usize| p[y * 7..y * 7 + 7].to_vec();
        assert_eq!(row(0), [0.0; 7], "crop {r} channel {ch}");
        assert_eq!(row(5), [0.0; 7]);
        assert_eq!(row(6), [0.0; 7]);
        // Top-right crop (x = 2..6); crop 8 is bottom-right (22..), mirrored.
        let inner = if r == 1 {
            [0.0, 2.0, 3.0, 4.0, 5.0, 0.0, 0.0]
        } else {
            [0.0, 25.0, 24.0, 23.0, 22.0, 0.0, 0.0]
        };
        assert_eq!(row(1), inner, "crop {r} channel {ch}");
    }
    Ok(())
}

#[test]
fn the_mean_image_is_subtracted_pixel_by_pixel_also_when_mirrored() -> TestResult {
    // One 4x4 image, value 100 everywhere; mean image = 3 x + 30 y + channel.
    let set: Arc<ImageSet> = Arc::new(ImageSet::from_parts(
        4,
        vec![100; 48],
        vec![0],
        vec!["a".into()],
    )?);
    let mut mean = Vec::new();
    for y in 0..4 {
        for x in 0..4 {
            for ch in 0..3 {
                mean.push((3 * x + 30 * y + ch) as f32);
            }
        }
    }
    let mut c = loader_cfg(1, 2, false, 0);
    c.mean_image = Some(Arc::new(mean));
    c.ten_crop = true;
    let b = batches(set, &[0], &c, 0)?.next().ok_or("no batch")??;
    // Crop 1 (top-right, x = 2..4, y = 0..2), channel 2, row 1:
    // 100 - (3*2 + 30 + 2), 100 - (3*3 + 30 + 2).
    let row = |r: usize, ch: usize, oy: usize| b.x[r * 12 + ch * 4 + oy * 2..][..2].to_vec();
    assert_eq!(row(1, 2, 1), [62.0, 59.0]);
    // Its mirror (crop 6): the same source pixels, reversed.
    assert_eq!(row(6, 2, 1), [59.0, 62.0]);
    Ok(())
}

#[test]
fn the_store_loader_replays_exactly_for_any_worker_count() -> TestResult {
    let t = TempDir::new()?;
    let train = t.path().join("train");
    good_tree(&train, 10, 40, 30)?;
    let out = t.path().join("out");
    let r = prepare(&opts(&train, &out, 24, Encoding::Jpeg))?;
    let s = Arc::new(PackedStore::open(&out.join("train"))?);
    let idx: Vec<usize> = (0..s.len()).collect();
    let run = |workers: usize, epoch: u64| -> alexnet_cuda::Result<Vec<(Vec<f32>, Vec<u32>)>> {
        let mut c = loader_cfg(6, 20, true, workers);
        c.mean_image = Some(Arc::new(s.mean_image().to_vec()));
        c.lighting = Some(alexnet_cuda::data::Lighting {
            pca: r.train.stats.pca,
            sigma: 0.1,
        });
        batches(s.clone(), &idx, &c, epoch)?
            .map(|b| b.map(|b| (b.x.to_vec(), b.labels)))
            .collect()
    };
    let base = run(0, 2)?;
    assert_eq!(base.len(), 4);
    assert_eq!(run(1, 2)?, base);
    assert_eq!(run(3, 2)?, base);
    assert_ne!(run(1, 3)?, base, "another epoch, another order and crops");
    Ok(())
}

#[test]
fn train_runs_on_a_prepared_store_with_its_val_split() -> TestResult {
    // CLI end to end: prepare a train and a val set, train one epoch on it.
    let t = TempDir::new()?;
    let train = t.path().join("train");
    good_tree(&train, 24, 40, 40)?;
    let val = t.path().join("val");
    good_tree(&val, 4, 40, 40)?;
    let out = t.path().join("store");
    let bin = env!("CARGO_BIN_EXE_alexnet-cuda");
    let o = Command::new(bin)
        .args(["prepare", "--no-progress", "--size", "32", "--train"])
        .arg(&train)
        .arg("--val")
        .arg(&val)
        .arg("--out")
        .arg(&out)
        .output()?;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains("train: 48 images") && stdout.contains("val: 8 images"),
        "{stdout}"
    );
    let (ok, err) = train_cifar(&out, &t.path().join("run"));
    assert!(ok, "{err}");
    assert!(err.contains("validating on the 8 images"), "{err}");
    assert!(err.contains("48 train / 8 val images"), "{err}");
    Ok(())
}

#[test]
fn a_full_disk_stops_prepare_with_a_clear_error_and_keeps_the_old_store() -> TestResult {
    // A file-size limit makes writes past 64 KB fail as a full disk would
    // (EFBIG instead of ENOSPC; SIGXFSZ is ignored so the write returns).
    let t = TempDir::new()?;
    let small = t.path().join("small");
    good_tree(&small, 2, 20, 20)?;
    let big = t.path().join("big");
    good_tree(&big, 20, 200, 150)?;
    let out = t.path().join("out");
    prepare(&opts(&small, &out, 16, Encoding::Jpeg))?;
    let before = read_meta(&out.join("train"))?;
    let o = Command::new("bash")
        .arg("-c")
        .arg("trap '' XFSZ; ulimit -f 64; exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_alexnet-cuda"))
        .args([
            "prepare",
            "--no-progress",
            "--size",
            "64",
            "--format",
            "raw",
            "--train",
        ])
        .arg(&big)
        .arg("--out")
        .arg(&out)
        .output()?;
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "prepare did not fail: {err}");
    assert!(
        err.contains("/train/data-") && err.contains(".bin"),
        "{err}"
    );
    assert!(
        err.contains("free disk space") && err.contains("untouched"),
        "{err}"
    );
    let s = PackedStore::open(&out.join("train"))?;
    s.verify()?;
    assert_eq!(s.meta().generation, before.generation);
    // The failed generation's files are gone.
    let files = generation_files(&out.join("train"));
    assert!(
        files.iter().all(|f| f.contains(&before.generation)),
        "{files:?}"
    );
    Ok(())
}

/// A killed prepare's files (a generation never committed) are removed
/// before the room for a raw store is counted: they would take it, and go
/// anyway. Here the room check refuses (more links to one picture, as raw
/// 4096x4096 images, than the disk has room for), and the leftover is gone
/// nonetheless; the committed store stays.
#[test]
fn a_killed_prepares_files_go_before_the_room_is_counted() -> TestResult {
    let t = TempDir::new()?;
    let small = t.path().join("small");
    good_tree(&small, 2, 20, 20)?;
    let out = t.path().join("out");
    prepare(&opts(&small, &out, 16, Encoding::Jpeg))?;
    let committed = read_meta(&out.join("train"))?.generation;
    let leftover = out.join("train/data-00000000deadbeef.bin");
    fs::write(&leftover, [0u8; 4096])?;
    let n = df_free(t.path())? / (4096 * 4096 * 3) + 20;
    let tree = t.path().join("tree");
    links(&small.join("n01_cat/0000.JPEG"), &tree, n)?;
    let flags = ["--size", "4096", "--format", "raw"];
    refused_for_room(&flags, (&tree, None), &out, n);
    assert!(!leftover.exists(), "the leftover is still there");
    assert_eq!(read_meta(&out.join("train"))?.generation, committed);
    PackedStore::open(&out.join("train"))?.verify()?;
    Ok(())
}

/// Only names a store writes (`data-<16 hex digits>.bin`, ...) are a
/// store's files: a user's `data-2021.bin` or `sources-urls.txt` at an
/// image folder's root does not make it an unfinished store, and in the
/// output folder it is not deleted as a killed prepare's leftover, which a
/// file of the store's own form still is.
#[test]
fn a_users_files_named_like_a_stores_are_left_alone() -> TestResult {
    let t = TempDir::new()?;
    let train = t.path().join("train");
    good_tree(&train, 2, 20, 20)?;
    fs::write(
        train.join("sources-urls.txt"),
        "https://example.org/0.jpg\n",
    )?;
    let out = t.path().join("out");
    prepare(&opts(&train, &out, 16, Encoding::Jpeg))?;
    let mine = [
        "data-2021.bin",
        "sources-notes.txt",
        "index-DEADBEEFDEADBEEF.bin",
    ];
    for f in mine {
        fs::write(out.join("train").join(f), "mine")?;
    }
    let leftover = out.join("train/mean-00000000deadbeef.bin");
    fs::write(&leftover, [0u8; 16])?;
    prepare(&opts(&train, &out, 16, Encoding::Jpeg))?;
    for f in mine {
        assert_eq!(
            fs::read_to_string(out.join("train").join(f))?,
            "mine",
            "{f}"
        );
    }
    assert!(!leftover.exists(), "the leftover is still there");
    PackedStore::open(&out.join("train"))?.verify()?;
    Ok(())
}

/// Bytes free for this user on the disk holding `dir`, as `df` reports it.
fn df_free(dir: &Path) -> std::result::Result<u64, Box<dyn std::error::Error>> {
    let o = Command::new("df")
        .args(["-B1", "--output=avail"])
        .arg(dir)
        .output()?;
    let text = String::from_utf8(o.stdout)?;
    let last = text.lines().last().ok_or("df printed nothing")?;
    Ok(last.trim().parse()?)
}

/// A two-class tree at `root` of `n` hard links to `file`, named as images.
fn links(file: &Path, root: &Path, n: u64) -> TestResult {
    for (class, count) in [("n01_cat", n / 2), ("n02_dog", n - n / 2)] {
        fs::create_dir_all(root.join(class))?;
        for i in 0..count {
            fs::hard_link(file, root.join(class).join(format!("{i:06}.JPEG")))?;
        }
    }
    Ok(())
}

/// Run `prepare` with `flags` on (train, val) into `out`; it must refuse,
/// saying that the `n` images still to write do not fit. Returns stderr.
fn refused_for_room(
    flags: &[&str],
    (train, val): (&Path, Option<&Path>),
    out: &Path,
    n: u64,
) -> String {
    let (train, out) = (train.to_string_lossy(), out.to_string_lossy());
    let mut args = vec!["prepare", "--no-progress", "--train", &train, "--out", &out];
    args.extend_from_slice(flags);
    let val = val.map(|v| v.to_string_lossy().into_owned());
    if let Some(v) = &val {
        args.extend(["--val", v]);
    }
    let (ok, _, err) = cli(&args);
    assert!(!ok, "prepare went ahead: {err}");
    let want = format!("the {n} images still to write");
    assert!(err.contains(&want), "{want}: {err}");
    err
}

#[test]
fn a_raw_store_that_cannot_fit_is_refused_before_any_image_is_read() -> TestResult {
    // Raw at 4096 is 4096 x 4096 x 3 bytes an image: more links than the
    // disk can hold, to one small picture.
    let t = TempDir::new()?;
    let pic = t.path().join("pic.JPEG");
    fs::write(&pic, jpeg_bytes(&picture(32, 32, 1), 90))?;
    let each = 4096u64 * 4096 * 3;
    let n = df_free(t.path())? / each + 20;
    links(&pic, &t.path().join("tree"), n)?;
    // Every link now holds no image: a prepare that read any before its
    // room check would count them as unreadable, not as images to write.
    fs::write(&pic, b"not a JPEG")?;
    let out = t.path().join("stores");
    let tree = t.path().join("tree");
    let err = refused_for_room(
        &["--size", "4096", "--format", "raw"],
        (&tree, None),
        &out,
        n,
    );
    assert!(err.contains("4096x4096x3 bytes, raw"), "{err}");
    assert!(
        err.contains("--format jpeg") && err.contains("--out"),
        "{err}"
    );
    assert!(err.contains(&out.to_string_lossy().into_owned()), "{err}");
    assert!(!out.exists(), "the refused store left a folder behind");
    assert!(!err.contains("could not be read"), "{err}");
    Ok(())
}

#[test]
fn a_jpeg_store_is_measured_as_it_goes_and_stopped_before_the_disk_fills() -> TestResult {
    // Train is two noisy pictures; val is enough links to them that the
    // JPEG size measured on train says val cannot fit. Noise keeps the
    // JPEGs large, so a few thousand links are enough.
    let t = TempDir::new()?;
    let mut state = 12345u32;
    let mut noise = || {
        state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        (state >> 24) as u8
    };
    let img = RgbImage::from_fn(1024, 1024, |_, _| image::Rgb([noise(), noise(), noise()]));
    let tree = t.path().join("tree");
    for class in ["n01_cat", "n02_dog"] {
        fs::create_dir_all(tree.join(class))?;
        fs::write(tree.join(class).join("a.JPEG"), jpeg_bytes(&img, 100))?;
    }
    let mut probe = opts(&tree, &t.path().join("probe"), 1024, Encoding::Jpeg);
    probe.quality = 100;
    let each = prepare(&probe)?.train.data_bytes / 2;
    let n = df_free(t.path())? / each + 20;
    links(&tree.join("n01_cat/a.JPEG"), &t.path().join("val"), n)?;
    let out = t.path().join("stores");
    let val = t.path().join("val");
    let flags = ["--size", "1024", "--quality", "100"];
    let err = refused_for_room(&flags, (&tree, Some(&val)), &out, n);
    assert!(err.contains("measured over the 2 written so far"), "{err}");
    assert!(err.contains("untouched"), "{err}");
    // Nothing was committed: no store to open, no files of the new one.
    assert!(read_meta(&out.join("train")).is_err());
    assert!(generation_files(&out.join("train")).is_empty());
    assert!(!out.join("val").exists());
    Ok(())
}

#[test]
fn training_a_config_whose_crop_does_not_fit_the_store_says_what_to_do() -> TestResult {
    let t = TempDir::new()?;
    let train = t.path().join("train");
    good_tree(&train, 3, 40, 40)?;
    let out = t.path().join("store");
    prepare(&opts(&train, &out, 32, Encoding::Jpeg))?;
    let o = Command::new(env!("CARGO_BIN_EXE_alexnet-cuda"))
        .args([
            "train", "--cpu", "--config", "alexnet", "--epochs", "1", "--val", "1", "--data",
        ])
        .arg(&out)
        .output()?;
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("stored at 32x32") && err.contains("--size 256"),
        "{err}"
    );
    assert_eq!(
        err.lines().filter(|l| l.starts_with("error:")).count(),
        1,
        "{err}"
    );
    Ok(())
}

#[test]
fn crops_smaller_than_the_input_are_zero_padded_around() -> TestResult {
    // A 6x6 coordinate image (value 10 y + x), crop 3 padded by 2 to 5x5:
    // one zero row/column before, one after. Centre crop offset (6-3)/2 = 1.
    let set = coordinate_image(6)?;
    let mut c = loader_cfg(1, 3, false, 0);
    c.pad = 2;
    let b = batches(set.clone(), &[0], &c, 0)?
        .next()
        .ok_or("no batch")??;
    assert_eq!(b.x.len(), 3 * 25);
    #[rustfmt::skip]
    let want = [
        0.0,  0.0,  0.0,  0.0, 0.0,
        0.0, 11.0, 12.0, 13.0, 0.0,
        0.0, 21.0, 22.0, 23.0, 0.0,
        0.0, 31.0, 32.0, 33.0, 0.0,
        0.0,  0.0,  0.0,  0.0, 0.0,
    ];
    for ch in 0..3 {
        assert_eq!(b.x[ch * 25..(ch + 1) * 25], want, "channel {ch}");
    }
    // An odd padding, as 224 to 227: pad / 2 = 1 zero row and column
    // before, the other 2 after (docs/data.md; the export pads the same).
    c.pad = 3;
    let b = batches(set.clone(), &[0], &c, 0)?
        .next()
        .ok_or("no batch")??;
    #[rustfmt::skip]
    let want = [
        0.0,  0.0,  0.0,  0.0, 0.0, 0.0,
        0.0, 11.0, 12.0, 13.0, 0.0, 0.0,
        0.0, 21.0, 22.0, 23.0, 0.0, 0.0,
        0.0, 31.0, 32.0, 33.0, 0.0, 0.0,
        0.0,  0.0,  0.0,  0.0, 0.0, 0.0,
        0.0,  0.0,  0.0,  0.0, 0.0, 0.0,
    ];
    assert_eq!(b.x.len(), 3 * 36);
    for ch in 0..3 {
        assert_eq!(b.x[ch * 36..(ch + 1) * 36], want, "channel {ch}");
    }
    // Training crops stay inside the padding whatever the offset and flip,
    // and the buffers (recycled) never keep an earlier image in the border.
    let mut c = loader_cfg(4, 3, true, 1);
    c.pad = 2;
    c.mean = [-0.5; 3]; // no pixel normalises to exactly 0
    let idx = [0usize; 12];
    for b in batches(set, &idx, &c, 1)? {
        let b = b?;
        for img in b.x.chunks_exact(25) {
            for k in 0..25 {
                let (y, x) = (k / 5, k % 5);
                let border = y == 0 || y == 4 || x == 0 || x == 4;
                assert_eq!(img[k] == 0.0, border, "pixel ({x}, {y}) of {img:?}");
            }
        }
    }
    Ok(())
}

/// `prepare` of `train` (and `val`) into `out` at `size` through the CLI,
/// with `extra` flags; it must succeed; its standard error.
fn prepare_cli(train: &Path, val: Option<&Path>, out: &Path, size: &str, extra: &[&str]) -> String {
    let s = |p: &Path| p.display().to_string();
    let (train, out) = (s(train), s(out));
    let mut args = vec![
        "prepare",
        "--no-progress",
        "--size",
        size,
        "--train",
        &train,
    ];
    let val = val.map(s);
    if let Some(v) = &val {
        args.extend(["--val", v]);
    }
    args.extend(["--out", &out]);
    args.extend(extra);
    let (ok, _, err) = cli(&args);
    assert!(ok, "{args:?}: {err}");
    err
}

/// One cifar epoch on `store` through the CLI, logging at info: success,
/// standard error.
fn train_cifar(store: &Path, run: &Path) -> (bool, String) {
    let (store, run) = (store.display().to_string(), run.display().to_string());
    let args = [
        "train", "--cpu", "--config", "cifar", "--epochs", "1", "--batch", "8",
    ];
    let more = ["--no-progress", "--data", &store, "--out", &run];
    let (ok, _, err) = cli_logging(&[&args[..], &more].concat(), "info");
    (ok, err)
}

/// Images stored smaller than the config's crops: the error says the size
/// to prepare at, and points at `cifar` only from a config that is not it.
#[test]
fn images_stored_smaller_than_the_crops_name_the_size_to_prepare() -> TestResult {
    let t = TempDir::new()?;
    let train = t.path().join("train");
    good_tree(&train, 2, 24, 24)?;
    let out = t.path().join("store");
    prepare_cli(&train, None, &out, "16", &[]);
    let (store, run) = (out.display().to_string(), t.path().join("run"));
    let run = run.display().to_string();
    let train_with = |config: &str| {
        let args = [
            "train",
            "--cpu",
            "--config",
            config,
            "--val",
            "1",
            "--no-progress",
            "--data",
            &store,
            "--out",
            &run,
        ];
        let (ok, _, err) = cli(&args);
        assert!(!ok, "{err}");
        err
    };
    let err = train_with("cifar");
    let said = "smaller than the 28x28 crops of config cifar; prepare the data with --size 32";
    assert!(err.contains(said), "{err}");
    assert!(!err.contains("--config cifar"), "{err}");
    let err = train_with("alexnet");
    let said = "smaller than the 227x227 crops of config alexnet; prepare the data with --size 256 or pick a config for small images (--config cifar)";
    assert!(err.contains(said), "{err}");
    Ok(())
}

/// A first `prepare` that dies before its commit point leaves the store's
/// files without meta.json (here: a finished store's removed; then only
/// the files a kill while streaming leaves). `train` names the unfinished
/// store and the fix, not "one class sub-folder (train)" (eval reads
/// folders through the same scan), and an unfinished val/ beside a
/// finished train/ too; running prepare again finishes it and trains.
/// eval names an unfinished val/, and a prepare without --val warns of it.
#[test]
fn an_unfinished_store_is_named_as_one() -> TestResult {
    let t = TempDir::new()?;
    let (train, val) = (t.path().join("train"), t.path().join("val"));
    good_tree(&train, 12, 48, 48)?;
    good_tree(&val, 3, 48, 48)?;
    let out = t.path().join("store");
    prepare_cli(&train, Some(&val), &out, "32", &[]);
    fs::remove_file(out.join("train/meta.json"))?;
    fs::remove_file(out.join("val/meta.json"))?;
    let said = format!(
        "{}: a store that `alexnet-cuda prepare` did not finish",
        out.join("train").display()
    );
    let (ok, err) = train_cifar(&out, &t.path().join("run1"));
    assert!(
        !ok && err.contains(&said) && err.contains("run the same prepare again"),
        "{err}"
    );
    // One store folder as --data.
    let (ok, err) = train_cifar(&out.join("val"), &t.path().join("run1"));
    assert!(
        !ok && err.contains("a store that `alexnet-cuda prepare` did not finish"),
        "{err}"
    );
    // Killed while streaming train/: only its data and source list exist
    // (the index, mean image and meta.json are written at the end).
    for f in fs::read_dir(out.join("train"))? {
        let p = f?.path();
        let name = p.file_name().unwrap_or_default().to_string_lossy();
        if !(name.starts_with("data-") || name.starts_with("sources-")) {
            fs::remove_file(&p)?;
        }
    }
    let (ok, err) = train_cifar(&out, &t.path().join("run1"));
    assert!(!ok && err.contains(&said), "{err}");

    // train/ finished, val/ not: named, not passed over for a held-out split.
    prepare_cli(&train, Some(&val), &out, "32", &[]);
    fs::remove_file(out.join("val/meta.json"))?;
    let said_val = format!(
        "{}: a store that `alexnet-cuda prepare` did not finish",
        out.join("val").display()
    );
    let (ok, err) = train_cifar(&out, &t.path().join("run1"));
    assert!(!ok && err.contains(&said_val), "{err}");

    prepare_cli(&train, Some(&val), &out, "32", &[]);
    let (ok, err) = train_cifar(&out, &t.path().join("run2"));
    assert!(ok, "{err}");

    // eval names an unfinished val/ too (it offered train/ as if val/ were
    // missing), and a prepare without --val, which leaves it, warns of it.
    fs::remove_file(out.join("val/meta.json"))?;
    let s = |p: &Path| p.display().to_string();
    let run2 = s(&t.path().join("run2"));
    let (ok, _, err) = cli(&["eval", "--cpu", "--checkpoint", &run2, "--data", &s(&out)]);
    assert!(!ok && err.contains(&said_val), "{err}");
    let err = prepare_cli(&train, None, &out, "32", &[]);
    assert!(
        err.contains("unfinished val store from an earlier prepare"),
        "{err}"
    );
    Ok(())
}

#[test]
fn a_val_store_that_does_not_match_its_train_store_is_caught_before_training() -> TestResult {
    let t = TempDir::new()?;
    let (train, val) = (t.path().join("train"), t.path().join("val"));
    good_tree(&train, 12, 48, 48)?;
    good_tree(&val, 3, 48, 48)?;
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    prepare_cli(&train, Some(&val), &a, "32", &[]);
    prepare_cli(&train, Some(&val), &b, "40", &[]);

    // A val of another size (copied in from another store): the training
    // mean image would not fit it. Refused before the first step.
    fs::remove_dir_all(a.join("val"))?;
    fs::rename(b.join("val"), a.join("val"))?;
    let (ok, err) = train_cifar(&a, &t.path().join("run1"));
    assert!(!ok, "{err}");
    let (av, at) = (a.join("val"), a.join("train"));
    let want = format!(
        "{} holds 40x40 images and {} holds 32x32",
        av.display(),
        at.display()
    );
    assert!(
        err.contains(&want) && err.contains("prepare them together"),
        "{err}"
    );
    assert!(!t.path().join("run1/steps.csv").exists(), "{err}");

    // A train store prepared again without --val: the old val is kept,
    // named by prepare and by training, and used.
    prepare_cli(&train, Some(&val), &a, "32", &[]);
    let err = prepare_cli(&train, None, &a, "32", &[]);
    assert!(
        err.contains(&format!("{} is from an earlier prepare", av.display())),
        "{err}"
    );
    let (ok, err) = train_cifar(&a, &t.path().join("run2"));
    assert!(ok, "{err}");
    assert!(
        err.contains(&format!("{} was not prepared with", av.display())),
        "{err}"
    );

    // Prepared again without --val at another size: the old val no longer
    // fits, and prepare says that training refuses it, as it does.
    let err = prepare_cli(&train, None, &a, "40", &[]);
    let want = format!(
        "{} is from an earlier prepare (of {}) and holds 32x32 images and this train store 40x40: training refuses it",
        av.display(),
        val.display()
    );
    assert!(err.contains(&want), "{err}");
    let (ok, err) = train_cifar(&a, &t.path().join("run4"));
    assert!(!ok && err.contains("holds 32x32 images"), "{err}");

    // Prepared together again: no warning.
    let err = prepare_cli(&train, Some(&val), &a, "32", &[]);
    assert!(!err.contains("earlier prepare"), "{err}");
    let (ok, err) = train_cifar(&a, &t.path().join("run3"));
    assert!(ok && !err.contains("was not prepared with"), "{err}");
    Ok(())
}

/// A second prepare into a folder another is writing would delete that
/// one's files: it is refused at once, naming the holder's pid (a lock
/// held here, as a running prepare holds it); once free, it runs.
#[test]
fn a_prepare_into_a_folder_another_prepare_holds_is_refused() -> TestResult {
    let t = TempDir::new()?;
    let train = t.path().join("train");
    good_tree(&train, 3, 40, 40)?;
    let out = t.path().join("store");
    fs::create_dir_all(&out)?;
    let held = fs::File::create(out.join(".lock"))?;
    held.lock()?;
    fs::write(out.join(".lock"), "4242")?;
    let (s_train, s_out) = (train.display().to_string(), out.display().to_string());
    let args = [
        "prepare",
        "--no-progress",
        "--size",
        "32",
        "--train",
        &s_train,
        "--out",
        &s_out,
    ];
    let (ok, _, err) = cli(&args);
    assert!(!ok);
    let want = format!("{s_out} is in use by another prepare (pid 4242)");
    assert!(err.contains(&want), "{err}");
    assert!(!out.join("train").exists(), "{err}");
    drop(held);
    let (ok, _, err) = cli(&args);
    assert!(ok, "{err}");
    assert_eq!(read_meta(&out.join("train"))?.count, 6);
    Ok(())
}

/// Images whose blue is the same in every pixel have a blue std of 0: the
/// run divides that channel by 1 (its centred values are 0 either way),
/// says so, and trains; the other channels keep the store's std.
#[test]
fn a_channel_with_no_variation_is_left_unscaled_not_divided_by_zero() -> TestResult {
    let t = TempDir::new()?;
    let train = t.path().join("train");
    for (c, class) in ["n01_a", "n02_b"].iter().enumerate() {
        fs::create_dir_all(train.join(class))?;
        for i in 0..6u32 {
            let img = RgbImage::from_fn(32, 32, |x, y| {
                image::Rgb([(x * 7 + i * 3) as u8, (y * 5 + c as u32 * 40) as u8, 77])
            });
            img.save(train.join(class).join(format!("{i}.png")))?;
        }
    }
    let store = t.path().join("store");
    let o = opts(&train, &store, 32, Encoding::Raw);
    prepare(&o)?;
    let std = read_meta(&store.join("train"))?.stats.channel_std;
    assert!(std[0] > 1.0 && std[1] > 1.0 && std[2] == 0.0, "{std:?}");
    let run = t.path().join("run");
    let (s_store, s_run) = (store.display().to_string(), run.display().to_string());
    let (ok, _, err) = cli(&[
        "train",
        "--cpu",
        "--config",
        "cifar",
        "--epochs",
        "1",
        "--batch",
        "4",
        "--val",
        "2",
        "--no-progress",
        "--data",
        &s_store,
        "--out",
        &s_run,
    ]);
    assert!(ok, "{err}");
    assert!(
        err.contains("the blue channel has the same value in every training pixel"),
        "{err}"
    );
    let ck = alexnet_cuda::checkpoint::load_resolved(&run)?;
    let got = ck.state.preprocess.std.ok_or("no std in the checkpoint")?;
    assert_eq!(got, [std[0] as f32, std[1] as f32, 1.0]);
    Ok(())
}
