//! Training-curve charts: the PNG decodes at the promised size, carries the
//! drawn series and the title text, and bad or missing input never panics.

use alexnet_cuda::plot::{render_png, EpochPoint, StepPoint, HEIGHT, WIDTH};

/// A run shaped like a real one: loss falling with noise, the learning rate
/// divided by 10 twice, error rates falling per epoch.
fn run(steps_per_epoch: u64, epochs: usize) -> (Vec<StepPoint>, Vec<EpochPoint>) {
    let lr_at = |e: f64| 0.01 * 0.1f64.powi((e / 10.0).floor().min(2.0) as i32);
    let steps = (0..steps_per_epoch * epochs as u64)
        .map(|s| {
            let epoch = s as f64 / steps_per_epoch as f64;
            let noise = ((s * 7919) % 101) as f64 / 100.0 - 0.5;
            StepPoint {
                step: s,
                epoch,
                loss: 1.5 + 5.0 * (-epoch / 5.0).exp() + 0.5 * noise,
                lr: lr_at(epoch),
            }
        })
        .collect();
    let epochs = (1..=epochs)
        .map(|e| {
            let f = (-(e as f64) / 5.0).exp();
            EpochPoint {
                epoch: e,
                train_loss: 1.5 + 5.0 * f,
                train_err: 0.2 + 0.7 * f,
                val_loss: 1.7 + 5.0 * f,
                val_top1_err: 0.3 + 0.65 * f,
                val_top5_err: 0.1 + 0.6 * f,
                lr: lr_at(e as f64 - 0.5),
            }
        })
        .collect();
    (steps, epochs)
}

fn render(title: &str, steps: &[StepPoint], epochs: &[EpochPoint]) -> image::RgbImage {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("curves.png");
    render_png(&path, title, steps, epochs).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(
        image::guess_format(&bytes).unwrap(),
        image::ImageFormat::Png
    );
    image::load_from_memory(&bytes).unwrap().to_rgb8()
}

/// Pixels that are clearly coloured: series are, axes, grid and text are not.
fn coloured(img: &image::RgbImage) -> usize {
    img.pixels()
        .filter(|p| {
            let (lo, hi) = (p.0.iter().min().unwrap(), p.0.iter().max().unwrap());
            hi - lo > 60
        })
        .count()
}

/// Dark pixels in the band above the panels, where the title goes.
fn dark_in_title_band(img: &image::RgbImage) -> usize {
    (0..40)
        .flat_map(|y| (0..img.width()).map(move |x| (x, y)))
        .filter(|&(x, y)| img.get_pixel(x, y).0.iter().all(|&c| c < 100))
        .count()
}

fn count_near(img: &image::RgbImage, rgb: [u8; 3]) -> usize {
    img.pixels()
        .filter(|p| p.0.iter().zip(rgb).all(|(&a, b)| a.abs_diff(b) <= 10))
        .count()
}

#[test]
fn renders_a_png_of_the_promised_size_with_series_and_title() {
    let (steps, epochs) = run(200, 30);
    let img = render("AlexNet curves", &steps, &epochs);
    assert_eq!((img.width(), img.height()), (WIDTH, HEIGHT));
    assert!(
        coloured(&img) > 5_000,
        "only {} coloured pixels",
        coloured(&img)
    );
    // The learning-rate line's green and the val top-5 purple are only used by
    // those series, so each must show up.
    assert!(
        count_near(&img, [30, 150, 60]) > 500,
        "no learning-rate line"
    );
    assert!(count_near(&img, [140, 80, 190]) > 200, "no val top-5 line");
    assert!(dark_in_title_band(&img) > 100, "title text missing");
}

#[test]
fn title_text_is_drawn_from_the_embedded_font() {
    let (steps, epochs) = run(20, 3);
    let titled = render("Training curves", &steps, &epochs);
    let untitled = render("", &steps, &epochs);
    assert!(dark_in_title_band(&titled) > 100);
    assert_eq!(dark_in_title_band(&untitled), 0);
}

#[test]
fn empty_input_renders_panels_without_series() {
    let img = render("nothing yet", &[], &[]);
    assert_eq!((img.width(), img.height()), (WIDTH, HEIGHT));
    assert_eq!(coloured(&img), 0, "an empty chart drew a series");
    assert!(dark_in_title_band(&img) > 50);
}

#[test]
fn a_single_point_of_each_is_visible() {
    let (steps, epochs) = run(10, 1);
    let img = render("one", &steps[..1], &epochs[..1]);
    // Each series' colour, counted apart: per panel it is drawn in, a
    // legend swatch (a 20 x 2 line, about 63 pixels with its edges) and a
    // marker (a disc of radius 3, about 29), so a missing marker falls short.
    for (name, rgb, panels) in [
        ("train", [245, 120, 10], 2),
        ("val top-1", [214, 39, 40], 2),
        ("val top-5", [140, 80, 190], 1),
        ("learning rate", [30, 150, 60], 1),
        ("smoothed loss", [31, 100, 180], 1),
    ] {
        let n = count_near(&img, rgb);
        assert!(n >= panels * (63 + 20), "{name}: {n} pixels of its colour");
    }
}

#[test]
fn non_finite_values_are_skipped() {
    let (mut steps, mut epochs) = run(50, 4);
    for (i, s) in steps.iter_mut().enumerate() {
        match i % 4 {
            0 => s.loss = f64::NAN,
            1 => s.lr = f64::INFINITY,
            2 => s.epoch = f64::NEG_INFINITY,
            _ => {}
        }
    }
    epochs[0].val_loss = f64::NAN;
    epochs[1].train_err = f64::INFINITY;
    epochs[2].lr = -1.0;
    let img = render("partly broken", &steps, &epochs);
    assert!(coloured(&img) > 1_000);

    // All non-finite: nothing to draw, still a chart.
    let nan = StepPoint {
        step: 0,
        epoch: f64::NAN,
        loss: f64::NAN,
        lr: f64::NAN,
    };
    let img = render("all broken", &[nan; 10], &[]);
    assert_eq!(coloured(&img), 0);
}

#[test]
fn a_missing_folder_is_an_error_naming_the_file_and_the_folder() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("no-such-folder");
    let path = folder.join("curves.png");
    let (steps, epochs) = run(10, 2);
    let e = render_png(&path, "t", &steps, &epochs)
        .expect_err("no folder to write into")
        .to_string();
    let (p, f) = (path.display().to_string(), folder.display().to_string());
    assert!(e.starts_with(&format!("{p}: ")), "{e}");
    assert!(e.contains(&format!("the folder {f} does not exist")), "{e}");
    assert!(!folder.exists());
}

#[test]
fn a_million_steps_render() {
    let (steps, epochs) = run(20_000, 50);
    assert_eq!(steps.len(), 1_000_000);
    let img = render("long run", &steps, &epochs);
    assert!(coloured(&img) > 5_000);
}

#[test]
fn huge_losses_do_not_flatten_the_loss_panel() {
    let (steps, epochs) = run(2_000, 20);
    let plain = coloured(&render("plain", &steps, &epochs));
    let mut spiky = steps.clone();
    spiky[5_000].loss = 1e300;
    spiky[9_000].loss = -1e300;
    spiky[13_000].loss = 1e12;
    spiky[17_000].loss = f64::MAX;
    let with_spikes = coloured(&render("spiky", &spiky, &epochs));
    // A crushed axis would leave the loss lines a flat streak: far fewer pixels.
    assert!(
        with_spikes * 10 > plain * 9,
        "{with_spikes} coloured pixels with spikes, {plain} without"
    );
}

/// Rates no f32 run trains at (a damaged or foreign steps.csv read back on
/// resume) once sent plotters' log-axis tick search into a loop without
/// end: the chart must still come, promptly, with the real rates drawn.
#[test]
fn rates_outside_f32_do_not_hang_the_chart() {
    let (steps, epochs) = run(50, 4);
    let f32_ends = [f32::from_bits(1), f32::MAX].map(f64::from);
    for odd in [1e-320, 1e-300, 1e300, 1e308, f64::MAX]
        .into_iter()
        .chain(f32_ends)
    {
        let mut with = steps.clone();
        with[10].lr = odd;
        let (tx, rx) = std::sync::mpsc::channel();
        let epochs = epochs.clone();
        std::thread::spawn(move || {
            let _ = tx.send(coloured(&render("odd rate", &with, &epochs)));
        });
        let drawn = rx.recv_timeout(std::time::Duration::from_secs(60));
        let n = drawn.unwrap_or_else(|_| panic!("no chart in 60 s with a rate of {odd:e}"));
        assert!(n > 1_000, "rate {odd:e}: {n} coloured pixels");
    }
}
