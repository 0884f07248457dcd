//! Tests of `alexnet_cuda::data`: folder scanning and its errors, decoding
//! and resizing, the image store, the loader's crops, flips, normalisation,
//! determinism and shutdown, its default thread count, the demo data set,
//! and real CIFAR-10 JPEGs (the committed fixture, tests/fixtures/cifar10).
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use alexnet_cuda::data::{
    batches, crop_for, decode_file, default_workers, resize_centre_crop, write_demo_dataset, Batch,
    BatchIter, BuildOptions, Feed, HostAlloc, HostMemory, ImageFolder, ImageSet, ImageSource,
    LoaderConfig,
};
use alexnet_cuda::Error;
use image::codecs::jpeg::JpegEncoder;
use image::{ExtendedColorType, GrayImage, ImageFormat, RgbImage};
use tempfile::TempDir;

use crate::common::Watched;

type TestResult = std::result::Result<(), Box<dyn std::error::Error>>;

fn write_jpeg(path: &Path, img: &RgbImage) -> TestResult {
    let mut buf = Vec::new();
    JpegEncoder::new_with_quality(&mut buf, 95).encode(
        img.as_raw(),
        img.width(),
        img.height(),
        ExtendedColorType::Rgb8,
    )?;
    fs::write(path, buf)?;
    Ok(())
}

fn solid(w: u32, h: u32, rgb: [u8; 3]) -> RgbImage {
    RgbImage::from_pixel(w, h, image::Rgb(rgb))
}

/// A class tree: `(class, [file names])`; `.jpg`/`.jpeg` get a JPEG, `.png`
/// a PNG, anything else a text file.
fn make_tree(root: &Path, spec: &[(&str, &[&str])]) -> TestResult {
    for (class, files) in spec {
        let dir = root.join(class);
        fs::create_dir_all(&dir)?;
        for f in *files {
            let p = dir.join(f);
            let ext = p
                .extension()
                .and_then(|e| e.to_str())
                .unwrap_or("")
                .to_ascii_lowercase();
            match ext.as_str() {
                "jpg" | "jpeg" => write_jpeg(&p, &solid(8, 8, [10, 20, 30]))?,
                "png" => solid(8, 8, [10, 20, 30]).save_with_format(&p, ImageFormat::Png)?,
                _ => fs::write(&p, "not an image")?,
            }
        }
    }
    Ok(())
}

fn data_err_text<T: std::fmt::Debug>(r: alexnet_cuda::Result<T>) -> String {
    match r {
        Err(Error::Data(msg)) => msg,
        other => panic!("expected Error::Data, got {other:?}"),
    }
}

fn expect_image_err<T: std::fmt::Debug>(r: alexnet_cuda::Result<T>, path: &Path) {
    match r {
        Err(e @ Error::Image { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains(&path.display().to_string()), "{msg}");
            assert!(msg.contains("remove or replace"), "{msg}");
            assert!(!msg.contains('\n'), "one line: {msg}");
        }
        other => panic!(
            "expected Error::Image for {}, got {other:?}",
            path.display()
        ),
    }
}

// ---------------------------------------------------------------- folder

#[test]
fn scan_sorts_classes_and_files_and_labels_them() -> TestResult {
    let t = TempDir::new()?;
    make_tree(
        t.path(),
        &[
            ("n02_dog", &["b.JPEG", "a.jpg", "notes.txt", "c.Png"]),
            ("n01_cat", &["z.jpeg", "y.jpg"]),
            (".cache", &["x.jpg"]),
        ],
    )?;
    fs::write(t.path().join("README.jpg"), "a stray file at the root")?;
    let f = ImageFolder::scan(t.path())?;
    assert_eq!(f.classes(), ["n01_cat", "n02_dog"]);
    let got: Vec<(String, u32)> = f
        .items()
        .iter()
        .map(|(p, l)| {
            let rel = p.strip_prefix(t.path()).map(Path::to_path_buf);
            (rel.unwrap_or_default().display().to_string(), *l)
        })
        .collect();
    let want = [
        ("n01_cat/y.jpg", 0),
        ("n01_cat/z.jpeg", 0),
        ("n02_dog/a.jpg", 1),
        ("n02_dog/b.JPEG", 1),
        ("n02_dog/c.Png", 1),
    ];
    assert_eq!(got.len(), want.len(), "{got:?}");
    for ((g, gl), (w, wl)) in got.iter().zip(want) {
        assert_eq!((g.as_str(), *gl), (w, wl));
    }
    // Not read, and said so: the image outside any class, the text file.
    let ignored: Vec<PathBuf> = f
        .ignored()
        .iter()
        .map(|p| p.strip_prefix(t.path()).map(Path::to_path_buf))
        .collect::<Result<_, _>>()?;
    assert_eq!(
        ignored,
        [
            PathBuf::from("README.jpg"),
            PathBuf::from("n02_dog/notes.txt")
        ]
    );
    Ok(())
}

/// torchvision's `ImageFolder` (datasets/folder.py) reads these extensions,
/// at any depth under a class folder; a tree must read the same here.
const TORCHVISION_EXTENSIONS: [&str; 9] = [
    "jpg", "jpeg", "png", "ppm", "bmp", "pgm", "tif", "tiff", "webp",
];

#[test]
#[cfg(unix)]
fn scan_reads_what_torchvision_reads() -> TestResult {
    let t = TempDir::new()?;
    let cats = t.path().join("cats");
    fs::create_dir_all(cats.join("sub/deeper"))?;
    let mut want = Vec::new();
    for (i, ext) in TORCHVISION_EXTENSIONS.iter().enumerate() {
        // Alternate the case: ImageNet's are `.JPEG`.
        let ext = if i % 2 == 0 {
            ext.to_uppercase()
        } else {
            ext.to_string()
        };
        let name = format!("{i}.{ext}");
        fs::write(cats.join(&name), "x")?;
        want.push(PathBuf::from("cats").join(name));
    }
    fs::write(cats.join("sub/deeper/nested.jpg"), "x")?;
    want.push(PathBuf::from("cats/sub/deeper/nested.jpg"));
    fs::write(cats.join("anim.gif"), "x")?;
    fs::write(cats.join(".hidden.jpg"), "x")?;
    // A macOS fork of a name that is not UTF-8 (Latin-1 "café.jpg").
    use std::os::unix::ffi::OsStrExt;
    fs::write(
        cats.join(std::ffi::OsStr::from_bytes(b"._caf\xe9.jpg")),
        "x",
    )?;
    // What a zip made on macOS unpacks beside the images: not a class, and
    // not images of one.
    make_tree(t.path(), &[("__MACOSX/cats", &["._0.jpg"])])?;
    make_tree(&cats, &[("__MACOSX", &["._0.jpg"])])?;
    // A hidden folder at the root is no class, whatever its name's bytes
    // (Latin-1 ".caché").
    fs::create_dir(t.path().join(std::ffi::OsStr::from_bytes(b".cach\xe9")))?;
    make_tree(t.path(), &[("dogs", &["z.jpg"])])?;
    want.push(PathBuf::from("dogs/z.jpg"));
    // Links back up the tree are not followed: they would loop, or read
    // the cats as dogs. A link to a folder elsewhere is.
    use std::os::unix::fs::symlink;
    symlink("..", t.path().join("dogs/up"))?;
    symlink(".", t.path().join("dogs/here"))?;
    let elsewhere = TempDir::new()?;
    make_tree(elsewhere.path(), &[("pool", &["p.jpg"])])?;
    symlink(elsewhere.path().join("pool"), t.path().join("dogs/pool"))?;
    want.insert(want.len() - 1, PathBuf::from("dogs/pool/p.jpg"));
    // A link to an image file is an image (here one the class reads
    // already, so read twice, as torchvision does); so is a broken link
    // with an image's name (torchvision lists it too), which then fails to
    // read naming its target; a linked class folder is a class.
    let p = elsewhere.path().join("pool/p.jpg");
    symlink(&p, t.path().join("dogs/link.jpg"))?;
    want.insert(want.len() - 2, PathBuf::from("dogs/link.jpg"));
    symlink(t.path().join("no-such.jpg"), cats.join("gone.jpg"))?;
    want.insert(9, PathBuf::from("cats/gone.jpg"));
    make_tree(elsewhere.path(), &[("birds", &["p.jpg"])])?;
    symlink(elsewhere.path().join("birds"), t.path().join("birds"))?;
    want.insert(0, PathBuf::from("birds/p.jpg"));
    fs::write(t.path().join("loose.png"), "x")?;

    let f = ImageFolder::scan(t.path())?;
    let rel = |p: &PathBuf| p.strip_prefix(t.path()).map(Path::to_path_buf);
    let got: Vec<PathBuf> = f
        .items()
        .iter()
        .map(|(p, _)| rel(p))
        .collect::<Result<_, _>>()?;
    assert_eq!(got, want);
    let labels: Vec<u32> = f.items().iter().map(|(_, l)| *l).collect();
    assert_eq!(labels, [vec![0; 1], vec![1; 11], vec![2; 3]].concat());
    let ignored: Vec<PathBuf> = f.ignored().iter().map(rel).collect::<Result<_, _>>()?;
    assert_eq!(ignored, ["cats/anim.gif", "loose.png"].map(PathBuf::from));
    Ok(())
}

/// An image reached from two class folders through symbolic links would
/// be one image with two labels (torchvision reads it under both): the
/// scan refuses it, naming both paths. Each way there is checked: a link
/// to a sibling class, two class folders linking one folder, a linked
/// image inside another class, and two classes linking one image. A link
/// to a file the other class does not read is no second label.
#[test]
#[cfg(unix)]
fn an_image_under_two_classes_is_refused() -> TestResult {
    use std::os::unix::fs::symlink;
    type Case = fn(&Path, &Path) -> std::io::Result<(PathBuf, PathBuf)>;
    let cases: [(&str, Case); 4] = [
        ("folder link to a sibling class", |root, _| {
            symlink("../dogs", root.join("cats/dogs"))?;
            Ok((root.join("cats/dogs"), root.join("dogs")))
        }),
        ("two class folders linking one", |root, pool| {
            symlink(pool, root.join("cows"))?;
            symlink(pool, root.join("dogs/pool"))?;
            Ok((root.join("dogs/pool"), root.join("cows")))
        }),
        ("image link into another class", |root, _| {
            symlink("../dogs/d.jpg", root.join("cats/d.jpg"))?;
            Ok((root.join("cats/d.jpg"), root.join("dogs/d.jpg")))
        }),
        ("two classes linking one image", |root, pool| {
            symlink(pool.join("p.jpg"), root.join("cats/p.jpg"))?;
            symlink(pool.join("p.jpg"), root.join("dogs/p.jpg"))?;
            Ok((root.join("dogs/p.jpg"), root.join("cats/p.jpg")))
        }),
    ];
    for (what, make) in cases {
        let (t, elsewhere) = (TempDir::new()?, TempDir::new()?);
        make_tree(t.path(), &[("cats", &["c.jpg"]), ("dogs", &["d.jpg"])])?;
        make_tree(elsewhere.path(), &[("pool", &["p.jpg"])])?;
        let pool = elsewhere.path().join("pool");
        assert!(
            ImageFolder::scan(t.path()).is_ok(),
            "{what}: before the link"
        );
        let (a, b) = make(t.path(), &pool)?;
        let msg = data_err_text(ImageFolder::scan(t.path()));
        for p in [&a, &b] {
            assert!(msg.contains(&p.display().to_string()), "{what}: {msg}");
        }
        assert!(msg.contains("both labels"), "{what}: {msg}");
    }
    // A link to a file the other class does not read (hidden, or without
    // an image's name) gives nothing a second label.
    for target in ["../dogs/.d.jpg", "../dogs/notes.txt"] {
        let t = TempDir::new()?;
        make_tree(t.path(), &[("cats", &["c.jpg"]), ("dogs", &["d.jpg"])])?;
        let name = Path::new(target).file_name().ok_or("name")?;
        fs::copy(
            t.path().join("dogs/d.jpg"),
            t.path().join("dogs").join(name),
        )?;
        symlink(target, t.path().join("cats/x.jpg"))?;
        let scan = ImageFolder::scan(t.path()).map_err(|e| format!("{target}: {e}"))?;
        assert_eq!(scan.len(), 3, "{target}");
    }
    Ok(())
}

#[test]
fn scan_missing_root_says_what_to_pass() {
    let msg = data_err_text(ImageFolder::scan(Path::new("/no/such/folder")));
    assert!(msg.contains("/no/such/folder"), "{msg}");
    assert!(msg.contains("does not exist"), "{msg}");
    assert!(msg.contains("--data"), "{msg}");
}

#[test]
fn scan_root_that_is_a_file_is_refused() -> TestResult {
    let t = TempDir::new()?;
    let f = t.path().join("file.jpg");
    fs::write(&f, "x")?;
    let msg = data_err_text(ImageFolder::scan(&f));
    assert!(
        msg.contains("file.jpg is a file, not a folder") && msg.contains("--data"),
        "{msg}"
    );
    // An archive passed as it was downloaded is told to be unpacked.
    for name in ["train.tar.gz", "train.TGZ", "train.zip", "train.tar"] {
        let a = t.path().join(name);
        fs::write(&a, "x")?;
        let msg = data_err_text(ImageFolder::scan(&a));
        assert!(
            msg.contains(&format!("{name} is an archive, not a folder: unpack it")),
            "{msg}"
        );
        assert!(msg.contains("and pass --data a folder"), "{msg}");
    }
    Ok(())
}

#[test]
fn scan_without_class_folders_is_refused() -> TestResult {
    let t = TempDir::new()?;
    write_jpeg(&t.path().join("a.jpg"), &solid(4, 4, [0, 0, 0]))?;
    let msg = data_err_text(ImageFolder::scan(t.path()));
    assert!(msg.contains("no class sub-folders"), "{msg}");
    assert!(msg.contains(&t.path().display().to_string()), "{msg}");
    Ok(())
}

#[test]
fn scan_empty_class_folder_is_named() -> TestResult {
    let t = TempDir::new()?;
    make_tree(t.path(), &[("cats", &["a.jpg"]), ("dogs", &["readme.txt"])])?;
    let msg = data_err_text(ImageFolder::scan(t.path()));
    assert!(msg.contains("dogs"), "{msg}");
    assert!(msg.contains("no .jpg/.jpeg/.png/"), "{msg}");
    Ok(())
}

/// A class folder linked from a drive not mounted is a link whose target
/// is gone: the scan stops naming it, rather than dropping the class and
/// giving every later class its neighbour's label. A hidden broken link,
/// or one named as a file, is no class and stays skipped; one named as a
/// folder inside a class is refused too.
#[test]
#[cfg(unix)]
fn scan_a_class_link_whose_target_is_gone_is_refused() -> TestResult {
    use std::os::unix::fs::symlink;
    let t = TempDir::new()?;
    make_tree(t.path(), &[("a", &["x.jpg"]), ("c", &["y.jpg"])])?;
    symlink(t.path().join(".hidden-gone"), t.path().join(".cache"))?;
    assert_eq!(ImageFolder::scan(t.path())?.classes(), ["a", "c"]);
    // Nor is one named as a file: a stale labels file, or a picture at the
    // top, which has no class and is named with the other such.
    symlink(t.path().join("old/labels.txt"), t.path().join("labels.txt"))?;
    symlink(t.path().join("old/latest.jpg"), t.path().join("latest.jpg"))?;
    let scanned = ImageFolder::scan(t.path())?;
    assert_eq!(scanned.classes(), ["a", "c"]);
    assert_eq!(scanned.ignored(), [t.path().join("latest.jpg")]);
    fs::remove_file(t.path().join("latest.jpg"))?;
    let gone = t.path().join("unmounted/b");
    symlink(&gone, t.path().join("b"))?;
    let msg = data_err_text(ImageFolder::scan(t.path()));
    let link = t.path().join("b").display().to_string();
    assert!(
        msg.contains(&format!("{link} is a link to {}", gone.display())),
        "{msg}"
    );
    assert!(msg.contains("mount or restore"), "{msg}");
    // Inside a class, a broken link named as a folder may be a folder of
    // its images: refused too, naming it. One named as another file is a
    // stray file.
    fs::remove_file(t.path().join("b"))?;
    symlink(&gone, t.path().join("a/notes.xml"))?;
    assert_eq!(ImageFolder::scan(t.path())?.ignored().len(), 1);
    symlink(&gone, t.path().join("a/more"))?;
    let msg = data_err_text(ImageFolder::scan(t.path()));
    let link = t.path().join("a/more").display().to_string();
    assert!(msg.contains(&format!("{link} is a link to")), "{msg}");
    assert!(msg.contains("left out of the class"), "{msg}");
    Ok(())
}

#[test]
fn scan_single_class_is_refused() -> TestResult {
    let t = TempDir::new()?;
    make_tree(t.path(), &[("only", &["a.jpg", "b.jpg"])])?;
    let msg = data_err_text(ImageFolder::scan(t.path()));
    assert!(
        msg.contains("only one class") && msg.contains("at least 2"),
        "{msg}"
    );
    Ok(())
}

/// A data set's top folder (`train/` and `val/`, each with class
/// folders) passed as one split is refused with the split to pass: read as
/// classes, it would be a classifier of "train" against "val". Classes that
/// merely include such a name are read.
#[test]
fn scan_of_a_data_sets_splits_names_the_split_to_pass() -> TestResult {
    let t = TempDir::new()?;
    make_tree(
        &t.path().join("train"),
        &[("cats", &["a.jpg"]), ("dogs", &["b.jpg"])],
    )?;
    make_tree(
        &t.path().join("VAL"),
        &[("cats", &["c.jpg"]), ("dogs", &["d.jpg"])],
    )?;
    let msg = data_err_text(ImageFolder::scan(t.path()));
    let (val, train) = (t.path().join("VAL"), t.path().join("train"));
    let paths = format!(
        "--data the split itself ({} or {})",
        val.display(),
        train.display()
    );
    for want in ["holds VAL/ and train/", "splits, not its classes", &paths] {
        assert!(msg.contains(want), "{want}: {msg}");
    }
    make_tree(t.path(), &[("trains", &["e.jpg"])])?;
    let f = ImageFolder::scan(t.path())?;
    assert_eq!(f.classes(), ["VAL", "train", "trains"]);
    Ok(())
}

// ---------------------------------------------------------------- decode

#[test]
fn corrupt_jpeg_is_an_image_error() -> TestResult {
    let t = TempDir::new()?;
    // A JPEG start-of-image marker followed by garbage.
    let p = t.path().join("corrupt.jpg");
    let mut bytes = vec![0xFF, 0xD8, 0xFF, 0xE0];
    bytes.extend((0..400u32).map(|i| (i * 37 % 251) as u8));
    fs::write(&p, bytes)?;
    expect_image_err(decode_file(&p, 8), &p);

    // A real JPEG cut after its headers: no scan data.
    let good = t.path().join("good.jpg");
    write_jpeg(&good, &solid(64, 64, [200, 100, 50]))?;
    let full = fs::read(&good)?;
    let cut = t.path().join("cut.jpg");
    fs::write(&cut, &full[..full.len().min(120)])?;
    expect_image_err(decode_file(&cut, 8), &cut);

    // Truncated inside the scan data: the decoder alone would accept it.
    let busy = RgbImage::from_fn(128, 128, |x, y| {
        image::Rgb([(x ^ y) as u8, (x * y) as u8, (x + y) as u8])
    });
    write_jpeg(&good, &busy)?;
    let full = fs::read(&good)?;
    assert_eq!(decode_file(&good, 128)?.len(), 128 * 128 * 3);
    for frac in [0.5, 0.9, 0.999] {
        fs::write(&cut, &full[..(full.len() as f64 * frac) as usize])?;
        expect_image_err(decode_file(&cut, 128), &cut);
    }
    // Padding after the end marker is fine.
    let mut padded = full.clone();
    padded.extend([0u8; 64]);
    fs::write(&cut, padded)?;
    assert_eq!(decode_file(&cut, 128)?.len(), 128 * 128 * 3);

    // A PNG cut short.
    let png = t.path().join("cut.png");
    busy.save_with_format(&png, ImageFormat::Png)?;
    let full = fs::read(&png)?;
    fs::write(&png, &full[..full.len() / 2])?;
    expect_image_err(decode_file(&png, 128), &png);
    Ok(())
}

#[test]
fn zero_byte_file_is_an_image_error() -> TestResult {
    let t = TempDir::new()?;
    let p = t.path().join("empty.JPEG");
    fs::write(&p, [])?;
    expect_image_err(decode_file(&p, 8), &p);
    Ok(())
}

#[test]
fn text_file_named_jpg_is_an_image_error() -> TestResult {
    let t = TempDir::new()?;
    let p = t.path().join("notes.jpg");
    fs::write(&p, "these are not pixels\n")?;
    expect_image_err(decode_file(&p, 8), &p);
    Ok(())
}

#[test]
fn absurd_dimensions_are_refused_before_decoding() -> TestResult {
    let t = TempDir::new()?;
    let p = t.path().join("wide.png");
    GrayImage::new(20_001, 1).save_with_format(&p, ImageFormat::Png)?;
    expect_image_err(decode_file(&p, 8), &p);
    let text = format!("{:?}", decode_file(&p, 8));
    assert!(text.contains("at most 20000 pixels a side"), "{text}");
    // Within the sides but past the pixels: a 12000 x 9000 photo (108
    // megapixels, as some phones take) is told to be scaled down. Its
    // header alone: the limit is checked before any pixel is read.
    let big = t.path().join("phone.ppm");
    fs::write(&big, b"P6\n12000 9000\n255\n")?;
    let text = format!("{}", decode_file(&big, 8).expect_err("past the limit"));
    assert!(text.contains("12000x9000 pixels take 308 MB"), "{text}");
    assert!(
        text.contains("scale a photo this large down first"),
        "{text}"
    );
    Ok(())
}

/// A file far larger than any image within the decode limits (a photo
/// with 700 MB appended, written sparse, so it takes no disk) is refused
/// from its size, as a bad image naming it.
#[test]
fn a_file_past_the_size_cap_is_refused_unread() -> TestResult {
    let t = TempDir::new()?;
    let p = t.path().join("huge.jpg");
    let photo = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cifar10/cat/0000.jpg");
    std::fs::copy(&photo, &p)?;
    assert!(decode_file(&p, 8).is_ok());
    std::fs::OpenOptions::new()
        .write(true)
        .open(&p)?
        .set_len(700 << 20)?;
    expect_image_err(decode_file(&p, 8), &p);
    let text = format!("{}", decode_file(&p, 8).unwrap_err());
    assert!(
        text.contains("a 700 MB file") && text.contains("at most 600 MB"),
        "{text}"
    );
    Ok(())
}

/// A header that asks for more pixel memory than one decode may take
/// (12000 x 12000 RGB is 432 MB) is refused for that, before the pixels are
/// allocated, though each side is within bounds.
#[test]
fn a_header_asking_for_too_much_memory_is_refused_before_decoding() -> TestResult {
    let t = TempDir::new()?;
    let p = t.path().join("bomb.ppm");
    fs::write(&p, b"P6\n12000 12000\n255\n\x00\x00\x00")?;
    let text = match decode_file(&p, 8) {
        Err(Error::Image { path, msg }) if path == p => msg,
        other => panic!("expected an image error naming {p:?}, got {other:?}"),
    };
    assert!(text.contains("12000x12000 pixels take 411 MB"), "{text}");
    Ok(())
}

/// A JPEG is whole when its segments lead to the end marker, scan by scan:
/// a progressive one (ten scans, tests/fixtures/progressive.jpg) decodes,
/// cut short anywhere it is refused, and bytes after its end marker that
/// hold a start-of-scan pair (as a phone's motion photo appends its video)
/// do not make it "truncated". Those were refused: the check looked for
/// an end marker after the last FF DA in the whole file.
#[test]
fn jpegs_are_whole_by_their_segments() -> TestResult {
    let t = TempDir::new()?;
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let progressive = fs::read(fixtures.join("progressive.jpg"))?;
    let good = t.path().join("good.jpg");
    write_jpeg(
        &good,
        &RgbImage::from_fn(96, 64, |x, y| image::Rgb([x as u8, y as u8, 7])),
    )?;
    let baseline = fs::read(&good)?;
    // What a motion photo appends: a container with FF DA but no FF D9 after it.
    let mut video = vec![0xFF, 0xDA];
    video.extend((0..4000u32).map(|i| (i * 37 % 251) as u8));
    let p = t.path().join("photo.jpg");
    for (name, whole) in [("progressive", &progressive), ("baseline", &baseline)] {
        fs::write(&p, whole)?;
        let pixels = decode_file(&p, 32)?;
        assert_eq!(pixels.len(), 32 * 32 * 3, "{name}");
        fs::write(&p, [&whole[..], &video].concat())?;
        assert_eq!(decode_file(&p, 32)?, pixels, "{name} with a video after it");
        for frac in [0.3, 0.6, 0.9, 0.99] {
            fs::write(&p, &whole[..(whole.len() as f64 * frac) as usize])?;
            expect_image_err(decode_file(&p, 32), &p);
        }
    }
    Ok(())
}

#[test]
fn png_named_jpeg_decodes() -> TestResult {
    let t = TempDir::new()?;
    let p = t.path().join("really_a_png.JPEG");
    solid(8, 8, [1, 2, 3]).save_with_format(&p, ImageFormat::Png)?;
    let px = decode_file(&p, 8)?;
    assert_eq!(px.len(), 8 * 8 * 3);
    assert!(px.chunks_exact(3).all(|c| c == [1, 2, 3]));
    Ok(())
}

#[test]
fn every_format_read_decodes_to_the_pixels_written() -> TestResult {
    let t = TempDir::new()?;
    let img = RgbImage::from_fn(24, 24, |x, y| {
        image::Rgb([(x * 10) as u8, (y * 10) as u8, (x ^ y) as u8])
    });
    // Lossless encoders (the `image` crate writes WebP lossless only).
    for (name, format) in [
        ("a.bmp", ImageFormat::Bmp),
        ("a.ppm", ImageFormat::Pnm),
        ("a.tiff", ImageFormat::Tiff),
        ("a.webp", ImageFormat::WebP),
    ] {
        let p = t.path().join(name);
        img.save_with_format(&p, format)?;
        assert_eq!(decode_file(&p, 24)?, img.as_raw().as_slice(), "{name}");
        // Cut short: an error naming the file, not grey pixels.
        let full = fs::read(&p)?;
        fs::write(&p, &full[..full.len() / 2])?;
        expect_image_err(decode_file(&p, 24), &p);
    }
    let grey = GrayImage::from_fn(24, 24, |x, y| image::Luma([(x * 7 + y) as u8]));
    let p = t.path().join("a.pgm");
    grey.save_with_format(&p, ImageFormat::Pnm)?;
    let px = decode_file(&p, 24)?;
    let want: Vec<u8> = grey.as_raw().iter().flat_map(|&v| [v, v, v]).collect();
    assert_eq!(px, want);
    Ok(())
}

#[test]
fn a_format_not_read_is_named() -> TestResult {
    let t = TempDir::new()?;
    let p = t.path().join("anim.gif");
    let mut bytes = b"GIF89a".to_vec();
    bytes.extend([0u8; 64]);
    fs::write(&p, bytes)?;
    let msg = decode_file(&p, 8)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        msg.contains("anim.gif") && msg.contains("GIF image"),
        "{msg}"
    );
    assert!(
        msg.contains("WebP") && msg.contains("remove or replace"),
        "{msg}"
    );
    Ok(())
}

#[test]
fn greyscale_jpeg_decodes_to_three_equal_channels() -> TestResult {
    let t = TempDir::new()?;
    let p = t.path().join("grey.jpg");
    let g = GrayImage::from_fn(16, 16, |x, y| image::Luma([(x * 12 + y * 3) as u8]));
    let mut buf = Vec::new();
    JpegEncoder::new_with_quality(&mut buf, 95).encode(
        g.as_raw(),
        16,
        16,
        ExtendedColorType::L8,
    )?;
    fs::write(&p, buf)?;
    let px = decode_file(&p, 16)?;
    assert_eq!(px.len(), 16 * 16 * 3);
    assert!(px.chunks_exact(3).all(|c| c[0] == c[1] && c[1] == c[2]));
    assert!(px.chunks_exact(3).any(|c| c[0] > 100), "not all dark");
    Ok(())
}

#[test]
fn resize_gives_short_side_then_centre_crop() -> TestResult {
    for (w, h) in [(50, 30), (30, 50), (17, 17), (300, 200), (16, 40)] {
        let out = resize_centre_crop(solid(w, h, [9, 9, 9]), 16)?;
        assert_eq!(out.dimensions(), (16, 16), "from {w}x{h}");
    }
    // Already the right size: returned untouched.
    let img = RgbImage::from_fn(16, 16, |x, y| image::Rgb([x as u8, y as u8, 7]));
    assert_eq!(resize_centre_crop(img.clone(), 16)?, img);
    // Short side already right: a pure crop, no resampling.
    let img = RgbImage::from_fn(20, 16, |x, y| image::Rgb([x as u8, y as u8, 7]));
    let out = resize_centre_crop(img, 16)?;
    assert_eq!(out.get_pixel(0, 0).0, [2, 0, 7]);
    assert_eq!(out.get_pixel(15, 15).0, [17, 15, 7]);
    Ok(())
}

/// Every short side scales to sizes that are not powers of two (where
/// `w / size * size` can round past `w`): a solid picture stays solid at
/// the asked size, whichever side is short.
#[test]
fn every_short_side_scales_to_any_size() -> TestResult {
    for size in [224, 227, 299] {
        for short in (20..=620).step_by(3) {
            let (w, h) = match short % 2 {
                0 => (short, short + 13),
                _ => (short + 13, short),
            };
            let out = resize_centre_crop(solid(w, h, [40, 90, 200]), size)
                .map_err(|e| format!("{w}x{h} to {size}: {e}"))?;
            assert_eq!(out.dimensions(), (size as u32, size as u32));
            assert!(
                out.pixels().all(|p| p.0 == [40, 90, 200]),
                "{w}x{h} to {size}"
            );
        }
    }
    Ok(())
}

/// A big-endian TIFF block holding one IFD entry: Orientation (tag 0x0112,
/// type SHORT, one value), as CIPA DC-008 (Exif 2.32) lays it out.
fn exif_orientation(value: u16) -> Vec<u8> {
    let mut t = b"MM\x00\x2a\x00\x00\x00\x08".to_vec();
    t.extend([0, 1, 0x01, 0x12, 0, 3, 0, 0, 0, 1]);
    t.extend(value.to_be_bytes());
    t.extend([0, 0, 0, 0, 0, 0]);
    t
}

/// Each EXIF orientation is applied as the standard defines it: a stored
/// picture of four coloured quadrants is read as a viewer shows it (the
/// table gives the displayed top-left, top-right, bottom-left and
/// bottom-right of stored R G / B W for each value 1..=8).
#[test]
fn an_exif_orientation_is_applied_as_the_standard_defines() -> TestResult {
    use image::ImageEncoder;
    let (r, g, b, w) = ([220, 30, 30], [30, 220, 30], [30, 30, 220], [240, 240, 240]);
    let stored = RgbImage::from_fn(32, 32, |x, y| {
        image::Rgb([[r, g], [b, w]][(y / 16) as usize][(x / 16) as usize])
    });
    let shown = [
        [r, g, b, w],
        [g, r, w, b],
        [w, b, g, r],
        [b, w, r, g],
        [r, b, g, w],
        [b, r, w, g],
        [w, g, b, r],
        [g, w, r, b],
    ];
    let t = TempDir::new()?;
    for (i, want) in shown.iter().enumerate() {
        let p = t.path().join(format!("o{}.jpg", i + 1));
        let mut buf = Vec::new();
        let mut enc = JpegEncoder::new_with_quality(&mut buf, 95);
        enc.set_exif_metadata(exif_orientation(i as u16 + 1))?;
        enc.write_image(stored.as_raw(), 32, 32, ExtendedColorType::Rgb8)?;
        fs::write(&p, buf)?;
        let px = decode_file(&p, 32)?;
        for (q, (x, y)) in [(8, 8), (24, 8), (8, 24), (24, 24)].into_iter().enumerate() {
            let at = &px[(y * 32 + x) * 3..][..3];
            let close = at.iter().zip(want[q]).all(|(&a, e)| a.abs_diff(e) < 40);
            assert!(
                close,
                "orientation {}: quadrant {q} is {at:?}, want {:?}",
                i + 1,
                want[q]
            );
        }
    }
    Ok(())
}

/// Lanczos-3: sinc(x) sinc(x / 3) for |x| < 3.
fn lanczos3(x: f64) -> f64 {
    let sinc = |t: f64| {
        if t == 0.0 {
            1.0
        } else {
            (std::f64::consts::PI * t).sin() / (std::f64::consts::PI * t)
        }
    };
    if x.abs() < 3.0 {
        sinc(x) * sinc(x / 3.0)
    } else {
        0.0
    }
}

#[test]
fn resize_of_a_black_white_edge_follows_the_lanczos_formula() -> TestResult {
    // 64x32, columns 0..32 black, 32..64 white. Short side to 16 gives 32x16,
    // a factor of 2; the centre crop takes full-resize columns 8..24. Output
    // column j is centred on source x = (j + 8 + 0.5) * 2, and its value is
    // 255 * (weights on white pixels) / (all weights), with weights
    // lanczos3((k + 0.5 - centre) / 2) (the kernel stretched by the scale, as
    // Pillow does when shrinking). The edge sits between crop columns 7 and 8.
    let img = RgbImage::from_fn(64, 32, |x, _| {
        let v = if x < 32 { 0 } else { 255 };
        image::Rgb([v, v, v])
    });
    let out = resize_centre_crop(img, 16)?;
    assert_eq!(out.dimensions(), (16, 16));
    for j in 0..16u32 {
        let centre = (j as f64 + 8.0 + 0.5) * 2.0;
        let (mut white, mut all) = (0.0, 0.0);
        for k in 0..64 {
            let w = lanczos3((k as f64 + 0.5 - centre) / 2.0);
            all += w;
            if k >= 32 {
                white += w;
            }
        }
        let want = (255.0 * white / all).round().clamp(0.0, 255.0);
        for y in 0..16 {
            let got = out.get_pixel(j, y).0;
            for v in got {
                assert!(
                    (v as f64 - want).abs() <= 1.0,
                    "column {j} row {y}: {v}, formula {want}"
                );
            }
        }
    }
    // Far from the edge the kernel sees one colour only.
    assert_eq!(out.get_pixel(0, 0).0, [0, 0, 0]);
    assert_eq!(out.get_pixel(15, 15).0, [255, 255, 255]);
    Ok(())
}

/// The paper's preprocessing against Pillow's (scripts/write_resize_fixture.py):
/// a 128x96 mosaic of CIFAR photos, short side to 64 with LANCZOS, centre
/// 64x64. Both compute Lanczos-3 in fixed point; they may differ by a level
/// where rounding falls differently.
#[test]
fn resize_matches_pillow_lanczos_on_a_photo() -> TestResult {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let input = image::open(dir.join("resize_input.png"))?.into_rgb8();
    let want = image::open(dir.join("resize_pillow_lanczos.png"))?.into_rgb8();
    let got = resize_centre_crop(input, 64)?;
    assert_eq!(got.dimensions(), want.dimensions());
    let diffs: Vec<i32> = got
        .as_raw()
        .iter()
        .zip(want.as_raw())
        .map(|(&a, &b)| (a as i32 - b as i32).abs())
        .collect();
    let max = diffs.iter().copied().max().unwrap_or(0);
    let mean = diffs.iter().sum::<i32>() as f64 / diffs.len() as f64;
    println!("resize vs Pillow LANCZOS: max |diff| {max}, mean {mean:.4} levels");
    assert!(max <= 1, "max difference {max} levels");
    assert!(mean < 0.05, "mean difference {mean}");
    Ok(())
}

// ---------------------------------------------------------------- store

/// `n` images of side `size` whose pixel (x, y) of image `i` is
/// (x + 10 y, x + 10 y + 1, 100 + i) so a crop's origin and orientation can
/// be read off its values; labels `i % 3`.
fn coord_set(n: usize, size: usize) -> alexnet_cuda::Result<ImageSet> {
    let mut px = Vec::with_capacity(n * size * size * 3);
    for i in 0..n {
        for y in 0..size {
            for x in 0..size {
                let v = (x + 10 * y) as u8;
                px.extend([v, v + 1, 100 + i as u8]);
            }
        }
    }
    let labels = (0..n as u32).map(|i| i % 3).collect();
    ImageSet::from_parts(size, px, labels, vec!["a".into(), "b".into(), "c".into()])
}

fn cfg(batch: usize, crop: usize, train: bool, workers: usize) -> LoaderConfig {
    LoaderConfig {
        seed: 42,
        workers,
        ..LoaderConfig::new(batch, crop, train)
    }
}

#[test]
fn from_parts_checks_lengths_and_labels() {
    assert!(ImageSet::from_parts(2, vec![0; 11], vec![0], vec!["a".into()]).is_err());
    assert!(ImageSet::from_parts(2, vec![0; 12], vec![1], vec!["a".into()]).is_err());
    assert!(ImageSet::from_parts(2, vec![0; 12], vec![0], vec!["a".into()]).is_ok());
}

#[test]
fn channel_stats_match_hand_computation() -> TestResult {
    // Image 0 all (10, 100, 0), image 1 all (30, 100, 255); size 2.
    let mut px = vec![];
    for _ in 0..4 {
        px.extend([10u8, 100, 0]);
    }
    for _ in 0..4 {
        px.extend([30u8, 100, 255]);
    }
    let set = ImageSet::from_parts(2, px, vec![0, 1], vec!["a".into(), "b".into()])?;
    let (m, s) = set.channel_stats(&[0, 1]);
    assert_eq!(m, [20.0, 100.0, 127.5]);
    assert_eq!(s, [10.0, 0.0, 127.5]);
    let (m, s) = set.channel_stats(&[1]);
    assert_eq!((m, s), ([30.0, 100.0, 255.0], [0.0; 3]));
    Ok(())
}

#[test]
fn split_is_seeded_disjoint_and_complete() -> TestResult {
    let set = coord_set(50, 2)?;
    let (tr, va) = set.split(12, 7);
    assert_eq!((tr.len(), va.len()), (38, 12));
    let mut all: Vec<usize> = tr.iter().chain(&va).copied().collect();
    all.sort_unstable();
    assert_eq!(all, (0..50).collect::<Vec<_>>());
    // The same from a set built anew: the split is the seed's alone.
    assert_eq!(coord_set(50, 2)?.split(12, 7), (tr.clone(), va.clone()));
    assert_ne!(set.split(12, 8).1, va);
    assert_ne!(va, (0..12).collect::<Vec<_>>(), "random, not the first 12");
    assert_eq!(set.split(100, 7).1.len(), 50);
    Ok(())
}

#[test]
fn build_limit_takes_classes_round_robin() -> TestResult {
    let t = TempDir::new()?;
    make_tree(
        t.path(),
        &[
            ("a", &["1.jpg", "2.jpg", "3.jpg"]),
            ("b", &["1.jpg"]),
            ("c", &["1.jpg", "2.jpg", "3.jpg", "4.jpg", "5.jpg"]),
        ],
    )?;
    let f = ImageFolder::scan(t.path())?;
    let mut o = BuildOptions::new(8);
    o.progress = false;
    o.limit = Some(6);
    let set = ImageSet::build(&f, &o)?;
    // Rounds: a1 b1 c1 | a2 c2 | a3  -> a: 3, b: 1, c: 2.
    assert_eq!(set.labels(), [0, 0, 0, 1, 2, 2]);
    assert_eq!(set.classes().len(), 3);
    o.limit = Some(4);
    assert_eq!(ImageSet::build(&f, &o)?.labels(), [0, 0, 1, 2]);
    o.limit = None;
    assert_eq!(ImageSet::build(&f, &o)?.len(), 9);
    o.limit = Some(0);
    assert!(matches!(ImageSet::build(&f, &o), Err(Error::Config(_))));
    Ok(())
}

#[test]
fn build_refuses_over_the_memory_budget() -> TestResult {
    let t = TempDir::new()?;
    make_tree(t.path(), &[("a", &["1.jpg"]), ("b", &["1.jpg"])])?;
    let f = ImageFolder::scan(t.path())?;
    let mut o = BuildOptions::new(256);
    o.progress = false;
    o.max_bytes = 256 * 256 * 3; // one image fits, two do not
    let msg = data_err_text(ImageSet::build(&f, &o));
    assert!(
        msg.contains("GiB in memory") && msg.contains("--limit"),
        "{msg}"
    );
    Ok(())
}

#[test]
fn build_stops_at_a_bad_file_and_names_it() -> TestResult {
    let t = TempDir::new()?;
    make_tree(t.path(), &[("a", &["1.jpg", "2.jpg"]), ("b", &["1.jpg"])])?;
    let bad = t.path().join("b").join("1.jpg");
    fs::write(&bad, "truncated")?;
    let f = ImageFolder::scan(t.path())?;
    let mut o = BuildOptions::new(8);
    o.progress = false;
    expect_image_err(ImageSet::build(&f, &o), &bad);
    Ok(())
}

/// Several bad images: prepare's way around them is offered, since it
/// skips images that do not decode. Files that cannot be read at all (a
/// link to a drive not mounted) prepare refuses too, so the fix offered
/// is the files' own.
/// A class folder holding no image by name says what it holds instead
/// (the scan's warning of files not read comes only after every class);
/// an empty one asks for images.
#[test]
fn a_class_of_unread_formats_names_them() -> TestResult {
    let t = TempDir::new()?;
    make_tree(
        t.path(),
        &[("a", &["1.jpg"]), ("b", &["pic.gif", "notes.txt"])],
    )?;
    fs::write(t.path().join("b/.DS_Store"), "x")?;
    let msg = data_err_text(ImageFolder::scan(t.path()));
    let b = t.path().join("b");
    assert!(
        msg.contains(&format!("{} has no .jpg", b.display())),
        "{msg}"
    );
    assert!(msg.contains("it holds 2 other files, e.g. "), "{msg}");
    assert!(
        msg.contains("convert them to one of these formats"),
        "{msg}"
    );
    fs::remove_file(b.join("pic.gif"))?;
    fs::remove_file(b.join("notes.txt"))?;
    let msg = data_err_text(ImageFolder::scan(t.path()));
    assert!(
        msg.contains("add images to it or remove the folder"),
        "{msg}"
    );
    Ok(())
}

#[test]
fn build_offers_prepare_only_for_images_that_do_not_decode() -> TestResult {
    let t = TempDir::new()?;
    make_tree(
        t.path(),
        &[("a", &["1.jpg", "2.jpg", "3.jpg"]), ("b", &["1.jpg"])],
    )?;
    let mut o = BuildOptions::new(8);
    o.progress = false;
    fs::write(t.path().join("a/1.jpg"), "truncated")?;
    fs::write(t.path().join("a/2.jpg"), "truncated")?;
    let msg = data_err_text(ImageSet::build(&ImageFolder::scan(t.path())?, &o));
    assert!(msg.contains("2 of 4 images could not be read"), "{msg}");
    assert!(
        msg.contains("remove or replace them, or pack the folder with `alexnet-cuda prepare`"),
        "{msg}"
    );
    fs::remove_file(t.path().join("a/2.jpg"))?;
    std::os::unix::fs::symlink("/nonexistent/mnt/2.jpg", t.path().join("a/2.jpg"))?;
    let msg = data_err_text(ImageSet::build(&ImageFolder::scan(t.path())?, &o));
    assert!(msg.contains("2 of 4 images could not be read"), "{msg}");
    assert!(
        msg.contains("fix their permission, disk or mount, or remove them"),
        "{msg}"
    );
    assert!(!msg.contains("prepare"), "{msg}");
    Ok(())
}

#[test]
fn build_decodes_every_image_in_order() -> TestResult {
    let t = TempDir::new()?;
    for (class, colour) in [("a", [250u8, 0, 0]), ("b", [0, 0, 250])] {
        fs::create_dir_all(t.path().join(class))?;
        for i in 0..3 {
            // Non-square, so the resize runs too.
            write_jpeg(
                &t.path().join(class).join(format!("{i}.jpg")),
                &solid(40, 24, colour),
            )?;
        }
    }
    let f = ImageFolder::scan(t.path())?;
    let mut o = BuildOptions::new(12);
    o.progress = false;
    let set = ImageSet::build(&f, &o)?;
    assert_eq!((set.len(), set.size()), (6, 12));
    assert_eq!(set.pixels().len(), 6 * 12 * 12 * 3);
    assert_eq!(set.labels(), [0, 0, 0, 1, 1, 1]);
    for i in 0..6 {
        let want: [u8; 3] = if i < 3 { [250, 0, 0] } else { [0, 0, 250] };
        for px in set.image(i).chunks_exact(3) {
            for c in 0..3 {
                assert!((px[c] as i32 - want[c] as i32).abs() <= 6, "{px:?}");
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- loader

#[test]
fn eval_uses_centre_crop_element_by_element() -> TestResult {
    let set = Arc::new(coord_set(3, 8)?);
    let c = cfg(2, 4, false, 1);
    let got: Vec<_> = batches(set, &[2, 0, 1], &c, 0)?.collect::<Result<_, _>>()?;
    assert_eq!(got.len(), 2);
    assert_eq!((got[0].n, got[1].n), (2, 1));
    assert_eq!(got[0].labels, [2, 0]);
    assert_eq!(got[1].labels, [1]);
    let plane = 16;
    for (b, imgs) in [(&got[0], vec![2usize, 0]), (&got[1], vec![1])] {
        assert_eq!(b.x.len(), imgs.len() * 3 * plane);
        for (j, &img) in imgs.iter().enumerate() {
            for oy in 0..4 {
                for ox in 0..4 {
                    // centre offset (8 - 4) / 2 = 2
                    let v = ((ox + 2) + 10 * (oy + 2)) as f32;
                    let at = |ch: usize| b.x[j * 3 * plane + ch * plane + oy * 4 + ox];
                    assert_eq!(at(0), v);
                    assert_eq!(at(1), v + 1.0);
                    assert_eq!(at(2), 100.0 + img as f32);
                }
            }
        }
    }
    Ok(())
}

/// Layer i's initial weights are drawn from `Rng::derive(seed, i)`
/// (`model::stage`); were epoch i shuffled from that stream too, the data
/// order would be a function of the starting weights.
#[test]
fn the_epoch_order_is_not_drawn_from_a_layers_init_stream() {
    let c = cfg(8, 5, true, 1);
    let idx: Vec<usize> = (0..40).collect();
    for epoch in 1..=8 {
        let order = alexnet_cuda::data::epoch_order(&idx, &c, epoch);
        let mut init = idx.clone();
        alexnet_cuda::rng::Rng::derive(c.seed, epoch).shuffle(&mut init);
        assert_ne!(order, init, "epoch {epoch}");
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, idx, "epoch {epoch} is not a permutation");
    }
}

#[test]
fn train_crops_and_flips_match_their_draws() -> TestResult {
    let n = 40;
    let set = Arc::new(coord_set(n, 8)?);
    let c = cfg(8, 5, true, 2);
    let idx: Vec<usize> = (0..n).collect();
    let order = alexnet_cuda::data::epoch_order(&idx, &c, 3);
    let plane = 25;
    let (mut flips, mut xs, mut ys) = (0, [false; 4], [false; 4]);
    for (k, b) in batches(set, &idx, &c, 3)?.enumerate() {
        let b = b?;
        for j in 0..b.n {
            let pos = k * 8 + j;
            let img = order[pos];
            assert_eq!(b.labels[j], (img % 3) as u32);
            let cr = crop_for(&c, 8, 3, pos);
            assert!(cr.x <= 3 && cr.y <= 3);
            xs[cr.x] = true;
            ys[cr.y] = true;
            flips += cr.flip as usize;
            for oy in 0..5 {
                for ox in 0..5 {
                    let sx = if cr.flip { cr.x + 4 - ox } else { cr.x + ox };
                    let v = (sx + 10 * (cr.y + oy)) as f32;
                    let at = |ch: usize| b.x[j * 3 * plane + ch * plane + oy * 5 + ox];
                    assert_eq!((at(0), at(1), at(2)), (v, v + 1.0, 100.0 + img as f32));
                }
            }
        }
    }
    assert!(flips > 5 && flips < 35, "about half flipped: {flips}");
    assert!(
        xs.iter().all(|&b| b) && ys.iter().all(|&b| b),
        "offsets cover 0..=3"
    );
    Ok(())
}

#[test]
fn a_flipped_crop_reverses_each_row() -> TestResult {
    // Find a position whose draw flips, then check that image by hand.
    let set = Arc::new(coord_set(1, 6)?);
    let mut c = cfg(1, 6, true, 0);
    let seed = (0..100u64)
        .find(|&s| {
            c.seed = s;
            crop_for(&c, 6, 0, 0).flip
        })
        .ok_or("no flipping seed in 0..100")?;
    c.seed = seed;
    let b = batches(set, &[0], &c, 0)?.next().ok_or("no batch")??;
    // Full-size crop (offset 0), mirrored: output column ox is source 5 - ox.
    for oy in 0..6 {
        let row: Vec<f32> = (0..6).map(|ox| b.x[oy * 6 + ox]).collect();
        let want: Vec<f32> = (0..6).rev().map(|x| (x + 10 * oy) as f32).collect();
        assert_eq!(row, want);
    }
    Ok(())
}

#[test]
fn normalisation_subtracts_mean_and_divides_by_std() -> TestResult {
    let set = Arc::new(ImageSet::from_parts(
        1,
        vec![100, 50, 200],
        vec![0],
        vec!["a".into()],
    )?);
    let mut c = cfg(1, 1, false, 0);
    c.mean = [90.0, 60.0, 100.0];
    let b = batches(set.clone(), &[0], &c, 0)?
        .next()
        .ok_or("no batch")??;
    assert_eq!(*b.x, [10.0, -10.0, 100.0], "mean only, as the paper");
    c.std = Some([2.0, 5.0, 50.0]);
    let b = batches(set.clone(), &[0], &c, 0)?
        .next()
        .ok_or("no batch")??;
    assert_eq!(*b.x, [5.0, -2.0, 2.0]);
    c.std = Some([1.0, 0.0, 1.0]);
    assert!(matches!(batches(set, &[0], &c, 0), Err(Error::Config(_))));
    Ok(())
}

#[test]
fn loader_rejects_configs_that_do_not_fit() -> TestResult {
    let set = Arc::new(coord_set(4, 8)?);
    for c in [cfg(0, 4, true, 1), cfg(2, 9, true, 1), cfg(2, 0, true, 1)] {
        assert!(matches!(
            batches(set.clone(), &[0, 1], &c, 0),
            Err(Error::Config(_))
        ));
    }
    assert!(batches(set, &[0, 4], &cfg(2, 4, true, 1), 0).is_err());
    Ok(())
}

fn collect(
    set: &Arc<ImageSet>,
    idx: &[usize],
    c: &LoaderConfig,
    epoch: u64,
) -> alexnet_cuda::Result<Vec<(Vec<f32>, Vec<u32>)>> {
    batches(set.clone(), idx, c, epoch)?
        .map(|b| b.map(|b| (b.x.to_vec(), b.labels)))
        .collect()
}

#[test]
fn loader_is_deterministic_across_worker_counts() -> TestResult {
    let set = Arc::new(coord_set(37, 8)?);
    let idx: Vec<usize> = (0..37).collect();
    let one = collect(&set, &idx, &cfg(5, 6, true, 1), 2)?;
    assert_eq!(one.len(), 8);
    assert_eq!(one, collect(&set, &idx, &cfg(5, 6, true, 3), 2)?);
    assert_eq!(one, collect(&set, &idx, &cfg(5, 6, true, 0), 2)?);
    assert_eq!(one, collect(&set, &idx, &cfg(5, 6, true, 1), 2)?);
    // More workers than the epoch's 8 batches.
    assert_eq!(one, collect(&set, &idx, &cfg(5, 6, true, 50), 2)?);
    let other = collect(&set, &idx, &cfg(5, 6, true, 3), 3)?;
    let labels = |v: &[(Vec<f32>, Vec<u32>)]| v.iter().map(|b| b.1.clone()).collect::<Vec<_>>();
    assert_ne!(one, other);
    assert_ne!(labels(&one), labels(&other), "epoch changes the order");
    let mut c = cfg(5, 6, true, 3);
    c.seed = 43;
    assert_ne!(one, collect(&set, &idx, &c, 2)?, "seed changes the batches");
    Ok(())
}

#[test]
fn recycled_buffers_give_the_same_batches() -> TestResult {
    let set = Arc::new(coord_set(23, 8)?);
    let idx: Vec<usize> = (0..23).collect();
    let c = cfg(4, 6, true, 2);
    let plain = collect(&set, &idx, &c, 1)?;
    let mut it = batches(set, &idx, &c, 1)?;
    let mut got = vec![];
    while let Some(b) = it.next() {
        let b = b?;
        got.push((b.x.to_vec(), b.labels.clone()));
        it.recycle(b);
    }
    assert_eq!(got, plain);
    Ok(())
}

#[test]
fn every_index_appears_once_per_epoch() -> TestResult {
    // Labels are i % 3, so use a set whose labels are the indices instead.
    let n = 103;
    let px = vec![0u8; n * 4 * 4 * 3];
    let classes = (0..n).map(|i| i.to_string()).collect();
    let set = Arc::new(ImageSet::from_parts(
        4,
        px,
        (0..n as u32).collect(),
        classes,
    )?);
    let idx: Vec<usize> = (0..n).filter(|i| i % 10 != 0).collect();
    for workers in [0, 1, 4] {
        for epoch in 0..3 {
            let c = cfg(16, 4, true, workers);
            let it = batches(set.clone(), &idx, &c, epoch)?;
            assert_eq!(it.len(), idx.len().div_ceil(16));
            let mut seen: Vec<usize> = it
                .flat_map(|b| b.map(|b| b.labels).unwrap_or_default())
                .map(|l| l as usize)
                .collect();
            seen.sort_unstable();
            assert_eq!(seen, idx);
        }
    }
    let mut c = cfg(16, 4, true, 2);
    c.drop_last = true;
    let sizes: Vec<usize> = batches(set, &idx, &c, 0)?
        .map(|b| b.map(|b| b.n))
        .collect::<Result<_, _>>()?;
    assert_eq!(sizes, vec![16; idx.len() / 16]);
    Ok(())
}

/// Dropping the iterator after one batch stops its workers where they are
/// instead of letting them fill the rest of the epoch: counted in batches
/// filled (each takes fresh memory from a counting allocator, since none
/// are recycled here), not in seconds.
#[test]
fn dropping_the_iterator_mid_epoch_stops_its_workers() -> TestResult {
    let n = 2000;
    let set = Arc::new(ImageSet::from_parts(
        64,
        vec![7u8; n * 64 * 64 * 3],
        vec![0; n],
        vec!["a".into()],
    )?);
    let idx: Vec<usize> = (0..n).collect();
    let made = Arc::new(AtomicUsize::new(0));
    let m = Arc::clone(&made);
    let mut c = cfg(64, 56, true, 3);
    c.host_alloc = Some(HostAlloc(Arc::new(move |len| {
        m.fetch_add(1, Ordering::SeqCst);
        Ok(Box::new(vec![0.0f32; len]) as Box<dyn HostMemory>)
    })));
    let epoch = n.div_ceil(64);
    for round in 0..5 {
        let before = made.load(Ordering::SeqCst);
        let mut it = batches(set.clone(), &idx, &c, 0)?;
        let b = it.next().ok_or("no batch")??;
        assert_eq!(b.n, 64);
        // Workers are blocked on full channels here; the drop joins them,
        // on a thread of its own so that a drop that never returns fails.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            drop(it);
            let _ = tx.send(());
        });
        rx.recv_timeout(std::time::Duration::from_secs(60))
            .map_err(|_| format!("round {round}: the drop did not return in 60 s"))?;
        let filled = made.load(Ordering::SeqCst) - before;
        // Per worker at most: one batch in its channel, one it is filling or
        // blocked sending, and (worker 0) the one taken above.
        assert!(
            filled <= 2 * c.workers + 1,
            "round {round}: {filled} of the epoch's {epoch} batches filled after a drop"
        );
    }
    // The set is shared only with us again: every worker has exited.
    assert_eq!(Arc::strong_count(&set), 1);
    Ok(())
}

/// Each batch of `got`, from batch `first` of epoch `epoch` under `c`,
/// holds the images and crops the formulas give: the epoch's order, each
/// position's crop (`crop_for`), and `coord_set`'s pixels (8x8 images).
fn check_pass(got: &[Batch], c: &LoaderConfig, epoch: u64, first: usize, idx: &[usize]) {
    let order = alexnet_cuda::data::epoch_order(idx, c, epoch);
    let (crop, plane) = (c.crop, c.crop * c.crop);
    for (k, b) in (first..).zip(got) {
        for j in 0..b.n {
            let pos = k * c.batch + j;
            let img = order[pos];
            assert_eq!(b.labels[j], (img % 3) as u32, "epoch {epoch} batch {k}");
            let cr = crop_for(c, 8, epoch, pos);
            for oy in 0..crop {
                for ox in 0..crop {
                    let sx = if cr.flip {
                        cr.x + crop - 1 - ox
                    } else {
                        cr.x + ox
                    };
                    let v = (sx + 10 * (cr.y + oy)) as f32;
                    let at = |ch: usize| b.x[j * 3 * plane + ch * plane + oy * crop + ox];
                    let want = (v, v + 1.0, 100.0 + img as f32);
                    assert_eq!((at(0), at(1), at(2)), want, "epoch {epoch} batch {k}");
                }
            }
        }
    }
}

/// The batches of `it`, `take` of them at most.
fn read(it: BatchIter, take: usize) -> alexnet_cuda::Result<Vec<Batch>> {
    it.take(take).collect()
}

/// Passes queued on one feed (a training epoch from its third batch, a
/// validation pass, an epoch left after two batches, another epoch) each
/// get the batches the formulas give, as if each had its own loader.
#[test]
fn a_feed_gives_each_queued_pass_its_own_batches() -> TestResult {
    let n = 40;
    let set: Arc<dyn ImageSource> = Arc::new(coord_set(n, 8)?);
    let idx: Vec<usize> = (0..n).collect();
    let val_idx: Vec<usize> = (0..n).step_by(3).collect();
    let (train, val) = (cfg(8, 5, true, 3), cfg(8, 5, false, 3));
    let feed = Feed::new(3)?;
    let a = feed.queue(set.clone(), &idx, &train, 1, 2)?;
    let v = feed.queue(set.clone(), &val_idx, &val, 0, 0)?;
    let left = feed.queue(set.clone(), &idx, &train, 2, 0)?;
    let d = feed.queue(set.clone(), &idx, &train, 3, 0)?;
    let got = read(feed.open(a), usize::MAX)?;
    assert_eq!(got.len(), 3);
    check_pass(&got, &train, 1, 2, &idx);
    let got = read(feed.open(v), usize::MAX)?;
    assert_eq!(got.iter().map(|b| b.n).sum::<usize>(), val_idx.len());
    check_pass(&got, &val, 0, 0, &val_idx);
    assert_eq!(read(feed.open(left), 2)?.len(), 2);
    let got = read(feed.open(d), usize::MAX)?;
    assert_eq!(got.len(), 5);
    check_pass(&got, &train, 3, 0, &idx);
    Ok(())
}

/// Once an epoch is read, the workers go on to the pass queued after it:
/// at least one batch per worker of the next epoch is filled before that
/// epoch is opened (counted in images read, waiting up to a minute), and
/// its batches are still the ones the formulas give.
#[test]
fn a_feed_fills_the_next_pass_before_it_opens() -> TestResult {
    let (n, workers) = (48, 2);
    let reads = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&reads);
    let counted = Watched(coord_set(n, 8)?, move |_| {
        count.fetch_add(1, Ordering::SeqCst);
    });
    let set: Arc<dyn ImageSource> = Arc::new(counted);
    let idx: Vec<usize> = (0..n).collect();
    let c = cfg(8, 5, true, workers);
    let feed = Feed::new(workers)?;
    let first = feed.queue(set.clone(), &idx, &c, 0, 0)?;
    let next = feed.queue(set, &idx, &c, 1, 0)?;
    let mut it = feed.open(first);
    while let Some(b) = it.next() {
        it.recycle(b?);
    }
    let ahead = n + workers * c.batch;
    let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while reads.load(Ordering::SeqCst) < ahead && std::time::Instant::now() < until {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let reads = reads.load(Ordering::SeqCst);
    assert!(
        reads >= ahead,
        "{reads} images read before the next epoch opened; want {ahead}"
    );
    let got = read(feed.open(next), usize::MAX)?;
    check_pass(&got, &c, 1, 0, &idx);
    Ok(())
}

// ---------------------------------------------------------------- synth

#[test]
fn demo_dataset_is_a_readable_class_tree() -> TestResult {
    let t = TempDir::new()?;
    write_demo_dataset(t.path(), 10, 4, 32, 1)?;
    let f = ImageFolder::scan(t.path())?;
    assert_eq!(f.classes().len(), 10);
    assert_eq!(f.classes()[0], "00-hstripes");
    assert_eq!(f.len(), 40);
    let mut o = BuildOptions::new(32);
    o.progress = false;
    let set = ImageSet::build(&f, &o)?;
    let (_, std) = set.channel_stats(&(0..40).collect::<Vec<_>>());
    assert!(std.iter().all(|&s| s > 20.0), "varied images: {std:?}");
    // Same seed, same files.
    let t2 = TempDir::new()?;
    write_demo_dataset(t2.path(), 10, 4, 32, 1)?;
    let a = fs::read(t.path().join("05-ring/00003.jpg"))?;
    assert_eq!(a, fs::read(t2.path().join("05-ring/00003.jpg"))?);
    assert!(write_demo_dataset(t.path(), 11, 1, 32, 1).is_err());
    Ok(())
}

// ---------------------------------------------------------------- real data

/// The committed CIFAR-10 fixture: 50 training images per class, 500 in all
/// (tests/fixtures/README.md).
fn cifar_fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cifar10")
}

#[test]
fn real_cifar10_jpegs_build_an_image_set() -> TestResult {
    let f = ImageFolder::scan(&cifar_fixture())?;
    assert_eq!(f.classes().len(), 10);
    assert_eq!(f.classes()[0], "airplane");
    assert_eq!(f.len(), 500);
    let mut o = BuildOptions::new(32);
    o.progress = false;
    let set = ImageSet::build(&f, &o)?;
    assert_eq!((set.len(), set.size()), (500, 32));
    for c in 0..10u32 {
        assert_eq!(set.labels().iter().filter(|&&l| l == c).count(), 50);
    }
    let (train, _) = set.split(50, 0);
    let (mean, std) = set.channel_stats(&train);
    eprintln!("CIFAR-10 subset: mean {mean:?} std {std:?}");
    // CIFAR-10's published training statistics are about (125, 123, 114)
    // and (63, 62, 67); a 450-image sample lands well inside these bounds.
    for c in 0..3 {
        assert!(
            (90.0..150.0).contains(&mean[c]),
            "channel {c} mean {}",
            mean[c]
        );
        assert!((40.0..90.0).contains(&std[c]), "channel {c} std {}", std[c]);
    }
    Ok(())
}

/// With a backend's host allocator (a GPU's pinned memory), batches are
/// written into that memory, hold exactly what ordinary-memory batches hold,
/// and recycled batches reuse it: a handful of allocations for a whole epoch.
#[test]
fn batches_fill_the_backend_host_memory_and_reuse_it() -> alexnet_cuda::Result<()> {
    use alexnet_cuda::data::{HostAlloc, HostMemory};
    use std::sync::atomic::{AtomicUsize, Ordering};
    let set: Arc<dyn ImageSource> = Arc::new(coord_set(40, 12)?);
    let idx: Vec<usize> = (0..40).collect();
    let made = Arc::new(AtomicUsize::new(0));
    let m = Arc::clone(&made);
    let mut pinned = cfg(4, 8, true, 2);
    pinned.host_alloc = Some(HostAlloc(Arc::new(move |len| {
        m.fetch_add(1, Ordering::Relaxed);
        // Poisoned, so a batch not fully written would show.
        Ok(Box::new(vec![f32::NAN; len]) as Box<dyn HostMemory>)
    })));
    let plain: Vec<Vec<f32>> = batches(Arc::clone(&set), &idx, &cfg(4, 8, true, 2), 3)?
        .map(|b| b.map(|b| b.x.to_vec()))
        .collect::<alexnet_cuda::Result<_>>()?;
    let mut it = batches(set, &idx, &pinned, 3)?;
    let mut got = Vec::new();
    while let Some(b) = it.next() {
        let b = b?;
        got.push(b.x.to_vec());
        it.recycle(b);
    }
    assert_eq!(got.len(), 10);
    assert!(got == plain, "batches in allocator memory differ");
    let n = made.load(Ordering::Relaxed);
    assert!(
        (1..=6).contains(&n),
        "{n} host allocations for 10 batches with 2 workers: recycled buffers were not reused"
    );
    Ok(())
}

/// Batches refilled from a config's pool hold exactly what new batches
/// hold: a training epoch with padded crops, a validation pass of unpadded
/// crops of the same side into the epoch's buffers, then another epoch
/// into the validation's (whose padding must be zeroed again), each equal
/// to the same pass with a pool of its own. Short last batches shrink and
/// regrow the buffers in between.
#[test]
fn batches_refilled_from_the_pool_hold_what_new_ones_hold() -> alexnet_cuda::Result<()> {
    let set: Arc<dyn ImageSource> = Arc::new(coord_set(42, 12)?);
    let idx: Vec<usize> = (0..42).collect();
    let train = LoaderConfig {
        pad: 3,
        ..cfg(4, 8, true, 2)
    };
    let val = LoaderConfig {
        train: false,
        crop: 11,
        pad: 0,
        ..train.clone()
    };
    let pass = |c: &LoaderConfig, epoch| -> alexnet_cuda::Result<Vec<(Vec<f32>, Vec<u32>)>> {
        let mut it = batches(Arc::clone(&set), &idx, c, epoch)?;
        let mut got = Vec::new();
        while let Some(b) = it.next() {
            let b = b?;
            got.push((b.x.to_vec(), b.labels.clone()));
            it.recycle(b);
        }
        Ok(got)
    };
    let own = |c: &LoaderConfig| LoaderConfig {
        pool: Default::default(),
        ..c.clone()
    };
    for (c, epoch) in [(&train, 0), (&val, 0), (&train, 1), (&val, 0)] {
        let shared = pass(c, epoch)?;
        assert_eq!(shared.len(), 11);
        assert!(
            shared == pass(&own(c), epoch)?,
            "a pass refilling the pool's batches (train: {}, epoch {epoch}) differs",
            c.train
        );
    }
    assert!(train.pool.idle() > 0, "nothing was kept in the pool");
    Ok(())
}

/// A multi-process run: rank r of R takes the r-th block of every global
/// batch, with the crops and flips drawn for those positions, so the ranks'
/// batches side by side are the one-process batches, image for image.
#[test]
fn ranks_shards_together_are_the_one_process_batches() -> TestResult {
    let set = Arc::new(coord_set(37, 8)?);
    let idx: Vec<usize> = (0..37).collect();
    let mut whole = cfg(6, 6, true, 2);
    whole.drop_last = true;
    let one = collect(&set, &idx, &whole, 2)?;
    assert_eq!(one.len(), 37 / 6);
    for ranks in [2, 3] {
        let shards = (0..ranks)
            .map(|r| {
                let mut c = whole.clone();
                c.batch = 6 / ranks;
                c.shard = (r, ranks);
                collect(&set, &idx, &c, 2)
            })
            .collect::<alexnet_cuda::Result<Vec<_>>>()?;
        for (r, s) in shards.iter().enumerate() {
            assert_eq!(s.len(), one.len(), "rank {r} of {ranks}: same step count");
        }
        for (k, b) in one.iter().enumerate() {
            let (mut x, mut l) = (vec![], vec![]);
            for s in &shards {
                x.extend_from_slice(&s[k].0);
                l.extend_from_slice(&s[k].1);
            }
            assert_eq!((&x, &l), (&b.0, &b.1), "batch {k}, {ranks} ranks");
        }
    }
    // Evaluation is not sharded: every rank scores the whole set.
    let mut c = cfg(6, 6, false, 1);
    c.shard = (1, 2);
    assert!(matches!(batches(set, &idx, &c, 0), Err(Error::Config(_))));
    Ok(())
}

/// `--workers` left out: on the CPU the cores the compute threads leave
/// free, on a GPU every core but the one driving it; never fewer than one.
/// Processes of a run on one machine split its cores first.
#[test]
fn default_workers_by_cores_threads_and_device() {
    // (cores, processes here, on a GPU) -> workers
    let shared = [
        ((64, 8, true), 7),
        ((64, 1, true), 63),
        ((16, 3, true), 4),
        ((4, 8, true), 1),
        ((16, 2, false), 8),
    ];
    for ((cores, processes, gpu), want) in shared {
        let threads = (!gpu).then_some(0);
        assert_eq!(
            default_workers(cores, processes, threads, gpu),
            want,
            "{cores} cores, {processes} processes, gpu {gpu}"
        );
    }
    // (cores, compute threads, on a GPU) -> workers, one process
    let cases = [
        ((1, None, false), 1),
        ((1, Some(1), false), 1),
        ((1, None, true), 1),
        ((2, None, false), 1),
        ((2, Some(2), false), 1),
        ((2, Some(1), false), 1),
        ((2, None, true), 1),
        ((2, Some(2), true), 1),
        ((16, None, false), 1),
        ((16, Some(16), false), 1),
        ((16, Some(12), false), 4),
        ((16, Some(1), false), 15),
        ((16, Some(40), false), 1),
        ((16, None, true), 15),
        ((16, Some(16), true), 15),
    ];
    for ((cores, threads, gpu), want) in cases {
        assert_eq!(
            default_workers(cores, 1, threads, gpu),
            want,
            "{cores} cores, {threads:?} compute threads, gpu {gpu}"
        );
    }
}

/// A set whose images `bad` cannot be read (or, with `panics`, make it panic).
struct Holes {
    set: ImageSet,
    bad: Vec<usize>,
    /// Panic on them instead (a bug in a source, not bad input).
    panics: bool,
}

impl ImageSource for Holes {
    fn len(&self) -> usize {
        self.set.len()
    }
    fn size(&self) -> usize {
        self.set.size()
    }
    fn label(&self, i: usize) -> u32 {
        self.set.labels()[i]
    }
    fn classes(&self) -> &[String] {
        self.set.classes()
    }
    fn pixels<'a>(&'a self, i: usize, _scratch: &'a mut Vec<u8>) -> alexnet_cuda::Result<&'a [u8]> {
        match (self.bad.contains(&i), self.panics) {
            (true, true) => panic!("image {i} panicked"),
            (true, false) => Err(Error::Data(format!("image {i} unreadable"))),
            (false, _) => Ok(self.set.image(i)),
        }
    }
}

/// With `skip_unreadable`, a batch holds the rows and labels of its readable
/// images, exactly those a loader over only them makes (ten crops, with
/// and without workers), and the indices and errors of the others; without it, the
/// first unreadable image is the epoch's error.
#[test]
fn skip_unreadable_leaves_out_exactly_the_bad_images() -> TestResult {
    let bad = vec![1, 5, 6, 7, 8];
    let source: Arc<dyn ImageSource> = Arc::new(Holes {
        set: coord_set(11, 6)?,
        bad: bad.clone(),
        panics: false,
    });
    let all: Vec<usize> = (0..11).collect();
    let good: Vec<usize> = all.iter().copied().filter(|i| !bad.contains(i)).collect();
    let reference: Arc<dyn ImageSource> = Arc::new(coord_set(11, 6)?);
    for workers in [0, 2] {
        let c = LoaderConfig {
            ten_crop: true,
            skip_unreadable: true,
            ..cfg(4, 4, false, workers)
        };
        let (mut x, mut labels, mut errors) = (vec![], vec![], vec![]);
        for b in batches(Arc::clone(&source), &all, &c, 0)? {
            let b = b?;
            assert_eq!(b.labels.len(), b.n);
            assert_eq!(b.x.len(), b.n * 10 * 3 * 16);
            x.extend_from_slice(&b.x);
            labels.extend(b.labels);
            errors.extend(b.unread.iter().map(|(i, e)| (*i, e.to_string())));
        }
        let (mut want_x, mut want_labels) = (vec![], vec![]);
        for b in batches(Arc::clone(&reference), &good, &cfg(4, 4, false, 0), 0)? {
            let b = b?;
            want_x.extend_from_slice(&b.x);
            want_labels.extend(b.labels);
        }
        let ten = |x: &[f32]| x.len() / 10;
        assert_eq!(ten(&x), want_x.len(), "ten crops per image");
        let centre_rows: Vec<f32> = x
            .chunks(3 * 16)
            .skip(4)
            .step_by(10)
            .flatten()
            .copied()
            .collect();
        assert_eq!(centre_rows, want_x, "workers {workers}");
        assert_eq!(labels, want_labels);
        let want_errors: Vec<(usize, String)> = bad
            .iter()
            .map(|&i| (i, format!("image {i} unreadable")))
            .collect();
        assert_eq!(errors, want_errors);
    }
    let strict = cfg(4, 4, false, 2);
    let r: Vec<_> = batches(source, &all, &strict, 0)?.collect();
    assert_eq!(
        r.len(),
        1,
        "the first batch is the error, then the epoch ends"
    );
    assert!(matches!(&r[0], Err(e) if e.to_string() == "image 1 unreadable"));
    Ok(())
}

/// A worker that panics has its panic raised where its batch is read, not
/// a reader left waiting: batch 0 raises worker 0's message, though worker
/// 1 has panicked too; read again, the batch names worker 0 as stopped,
/// not worker 1's panic. Read on a thread of its own, so that a hang
/// fails the test.
#[test]
fn a_panicking_worker_is_raised_where_its_batch_is_read() -> TestResult {
    let source: Arc<dyn ImageSource> = Arc::new(Holes {
        set: coord_set(4, 6)?,
        bad: vec![0, 1],
        panics: true,
    });
    let cfg = LoaderConfig {
        workers: 2,
        ..LoaderConfig::new(1, 4, false)
    };
    let idx: Vec<usize> = (0..4).collect();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut it = batches(source, &idx, &cfg, 0).expect("loader");
        for _ in 0..2 {
            let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| it.next()));
            let said = match read {
                Err(p) => p.downcast_ref::<String>().cloned().unwrap_or_default(),
                Ok(_) => "no panic".into(),
            };
            tx.send(said).expect("send");
        }
    });
    for want in ["image 0 panicked", "loader worker 0 stopped early"] {
        let said = rx.recv_timeout(std::time::Duration::from_secs(60))?;
        assert_eq!(said, want);
    }
    Ok(())
}

/// A pass that ends in an error (an unreadable image, read strictly) leaves
/// the feed to the pass queued after it: that one's batches are all there,
/// the ones the formulas give, with the failed pass's rest discarded.
#[test]
fn a_pass_after_a_failed_one_gets_its_own_batches() -> TestResult {
    let n = 40;
    let source: Arc<dyn ImageSource> = Arc::new(Holes {
        set: coord_set(n, 8)?,
        bad: vec![13],
        panics: false,
    });
    let all: Vec<usize> = (0..n).collect();
    let good: Vec<usize> = all.iter().copied().filter(|&i| i != 13).collect();
    let train = cfg(4, 5, true, 3);
    let feed = Feed::new(3)?;
    let failing = feed.queue(source.clone(), &all, &train, 1, 0)?;
    let next = feed.queue(source.clone(), &good, &train, 2, 0)?;
    let (mut it, mut read_ok) = (feed.open(failing), 0);
    let err = loop {
        match it.next() {
            Some(Ok(_)) => read_ok += 1,
            Some(Err(e)) => break e.to_string(),
            None => return Err("the pass over image 13 ended without its error".into()),
        }
    };
    assert!(err.contains("image 13 unreadable"), "{err}");
    // Every batch before image 13's came through.
    let order = alexnet_cuda::data::epoch_order(&all, &train, 1);
    let at = order
        .iter()
        .position(|&i| i == 13)
        .ok_or("13 in the order")?;
    assert_eq!(read_ok, at / train.batch, "image 13 at position {at}");
    drop(it);
    let got = read(feed.open(next), usize::MAX)?;
    assert_eq!(got.iter().map(|b| b.n).sum::<usize>(), good.len());
    check_pass(&got, &train, 2, 0, &good);
    Ok(())
}

/// `train --limit K` on a store takes each class's share: K = 10 of the
/// fixture's 10 classes gives one image of each, K = 25 two or three, for
/// any seed, all of them training images (none of the held-out ones).
/// Counted from the store's labels, which `prepare` took from the class
/// folders. A draw from the whole set left about 3 of 10 classes out.
#[test]
fn a_limit_on_a_store_draws_every_class() -> TestResult {
    use alexnet_cuda::data::prepare::{prepare, PrepareOptions};
    use alexnet_cuda::model::spec::NetSpec;
    use alexnet_cuda::train::{load_data, TrainOptions};
    let t = TempDir::new()?;
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cifar10");
    let mut p = PrepareOptions::new(fixture, t.path().join("store"));
    (p.size, p.progress) = (32, false);
    prepare(&p)?;
    let topo = NetSpec::new("cifar").topology()?;
    let mut opts = TrainOptions::for_topology(&topo, t.path().join("store"));
    opts.run.val = 100;
    let mut drawn = Vec::new();
    for (k, seed) in [(10, 1), (10, 2), (10, 3), (25, 1), (25, 4)] {
        (opts.run.limit, opts.run.seed) = (Some(k), seed);
        let d = load_data(&opts, 32)?;
        let mut per_class = [0usize; 10];
        for &i in &d.train_idx {
            per_class[d.train.label(i) as usize] += 1;
            assert!(!d.val_idx.contains(&i), "held-out image {i} drawn");
        }
        let (lo, hi) = (k / 10, k.div_ceil(10));
        assert!(
            per_class.iter().all(|&n| (lo..=hi).contains(&n)),
            "--limit {k} --seed {seed}: {per_class:?}"
        );
        assert_eq!(per_class.iter().sum::<usize>(), k);
        drawn.push(d.train_idx);
    }
    assert_ne!(drawn[0], drawn[1], "another seed, another draw");
    Ok(())
}

/// A checkpoint written before the draw by class has no such field: it
/// reads as false, so its resume draws its images as the run did.
#[test]
fn run_options_from_before_the_draw_by_class_keep_the_old_draw() -> TestResult {
    use alexnet_cuda::model::spec::NetSpec;
    use alexnet_cuda::train::TrainOptions;
    let topo = NetSpec::new("cifar").topology()?;
    let run = TrainOptions::for_topology(&topo, PathBuf::new()).run;
    assert!(run.limit_by_class, "new runs draw by class");
    let mut json = serde_json::to_value(&run)?;
    json.as_object_mut()
        .ok_or("not an object")?
        .remove("limit_by_class");
    let old: alexnet_cuda::run_state::RunOptions = serde_json::from_value(json)?;
    assert!(!old.limit_by_class);
    Ok(())
}
