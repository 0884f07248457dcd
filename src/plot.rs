//! Training-curve charts: turns per-step and per-epoch metrics into one PNG
//! with three stacked panels (loss, error, learning rate) sharing an x axis
//! in epochs.
//!
//! Everything here is pure Rust so a fresh machine needs nothing installed:
//! plotters draws into an in-memory RGB buffer, text comes from a font
//! embedded in the binary (Hack Regular, via `epaint_default_fonts`) rather
//! than from the system's font files, and the `image` crate encodes the PNG.
//!
//! Inputs are taken as they come from a run, so nothing here trusts them:
//! non-finite values are skipped point by point, a panel with nothing left
//! to draw shows a note instead, and long runs are thinned to a few thousand
//! drawn points so a million steps renders as fast as a thousand.
use std::path::Path;
use std::sync::OnceLock;

use image::codecs::png::PngEncoder;
use image::{ExtendedColorType, ImageEncoder};
use plotters::coord::ranged1d::ValueFormatter;
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::drawing::DrawingAreaErrorKind;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::{register_font, FontStyle};

use crate::error::{Error, Result};
use crate::fsutil::write_atomic;
use crate::metrics::is_f32_rate;

/// One optimiser step: where it fell in the run and what it measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepPoint {
    pub step: u64,
    /// Epochs completed when this step ended, fractional: the step that
    /// ends halfway through the first epoch is 0.5 (`StepRow::epoch`).
    pub epoch: f64,
    pub loss: f64,
    pub lr: f64,
}

/// One finished epoch. Drawn at x = `epoch`, the end of that epoch, so epoch
/// 1 lines up with the step points whose fractional epoch approaches 1.
/// Error rates are fractions in [0, 1]; the chart shows them as percent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EpochPoint {
    pub epoch: usize,
    pub train_loss: f64,
    pub train_err: f64,
    pub val_loss: f64,
    pub val_top1_err: f64,
    pub val_top5_err: f64,
    pub lr: f64,
}

/// Image size in pixels: wide enough for ~90 epochs of ticks, tall enough
/// for three readable panels.
pub const WIDTH: u32 = 1000;
pub const HEIGHT: u32 = 900;

/// The per-step loss is drawn as a min/max envelope over this many buckets
/// (two points each), which keeps spikes visible while bounding the work.
const LOSS_BUCKETS: usize = 1500;
/// The smoothed loss needs fewer points: it has no spikes left to keep.
const SMOOTH_POINTS: usize = 2000;
/// Smoothing window as a fraction of the run (1/50 of it): wide enough to
/// see the trend through minibatch noise, narrow enough to keep each
/// learning-rate drop a visible step.
const SMOOTH_FRACTION: usize = 50;

const TITLE_HEIGHT: u32 = 44;
pub(crate) const FONT: &str = "sans-serif";

// Series colours. Every one is strongly coloured, while axes, grid and text
// are black or grey, so a chart can be checked for drawn data by colour.
const RAW_LOSS: RGBColor = RGBColor(160, 196, 232);
const SMOOTH_LOSS: RGBColor = RGBColor(31, 100, 180);
const TRAIN: RGBColor = RGBColor(245, 120, 10);
const VAL: RGBColor = RGBColor(214, 39, 40);
const VAL_TOP5: RGBColor = RGBColor(140, 80, 190);
const LR: RGBColor = RGBColor(30, 150, 60);
const GRID_BOLD: RGBColor = RGBColor(215, 215, 215);
const GRID_LIGHT: RGBColor = RGBColor(240, 240, 240);

/// Render the training curves to a PNG at `path` (written atomically).
///
/// Empty inputs are not an error: a run that has not finished a step yet
/// still gets a chart, with a note in each empty panel, so a watcher that
/// re-renders the chart on a timer never has to special-case the start.
pub fn render_png(
    path: &Path,
    title: &str,
    steps: &[StepPoint],
    epochs: &[EpochPoint],
) -> Result<()> {
    ensure_font()?;
    let curves = Curves::new(steps, epochs);

    let mut rgb = vec![255u8; (WIDTH * HEIGHT * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (WIDTH, HEIGHT)).into_drawing_area();
        draw(&root, title, &curves)
            .map_err(|e| Error::Backend(format!("{}: drawing the chart: {e}", path.display())))?;
        root.present()
            .map_err(|e| Error::Backend(format!("{}: drawing the chart: {e}", path.display())))?;
    }

    write_rgb_png(path, &rgb, WIDTH, HEIGHT)
}

/// Encode `rgb` (8-bit RGB, `width` x `height`) as PNG and write it to
/// `path` atomically: every picture the program draws ends here.
pub(crate) fn write_rgb_png(path: &Path, rgb: &[u8], width: u32, height: u32) -> Result<()> {
    write_atomic(path, &rgb_png_bytes(path, rgb, width, height)?)
}

/// `rgb` encoded as the PNG file `path` (named in errors) would hold.
pub(crate) fn rgb_png_bytes(path: &Path, rgb: &[u8], width: u32, height: u32) -> Result<Vec<u8>> {
    let mut png = Vec::new();
    PngEncoder::new(&mut png)
        .write_image(rgb, width, height, ExtendedColorType::Rgb8)
        .map_err(|e| Error::Backend(format!("{}: encoding PNG: {e}", path.display())))?;
    Ok(png)
}

/// Register the embedded font under the family name plotters uses by
/// default, once per process. Registration parses the font; if that ever
/// failed it would fail the same way every time, so the outcome is kept.
pub(crate) fn ensure_font() -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        register_font(FONT, FontStyle::Normal, epaint_default_fonts::HACK_REGULAR).is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err(Error::Backend(
            "the embedded chart font could not be parsed".into(),
        ))
    }
}

/// Everything the panels draw, already filtered, thinned and scaled.
struct Curves {
    raw_loss: Vec<(f64, f64)>,
    smooth_loss: Vec<(f64, f64)>,
    train_loss: Vec<(f64, f64)>,
    val_loss: Vec<(f64, f64)>,
    train_err: Vec<(f64, f64)>,
    val_top1: Vec<(f64, f64)>,
    val_top5: Vec<(f64, f64)>,
    /// Vertices of the learning-rate step function.
    lr: Vec<(f64, f64)>,
}

impl Curves {
    fn new(steps: &[StepPoint], epochs: &[EpochPoint]) -> Self {
        let losses: Vec<(f64, f64)> = steps
            .iter()
            .map(|s| (s.epoch, s.loss))
            .filter(|&(x, y)| x.is_finite() && y.is_finite())
            .collect();
        let per_epoch = |f: fn(&EpochPoint) -> f64, scale: f64| -> Vec<(f64, f64)> {
            epochs
                .iter()
                .map(|e| (e.epoch as f64, f(e) * scale))
                .filter(|&(_, y)| y.is_finite())
                .collect()
        };
        Curves {
            raw_loss: envelope(&losses, LOSS_BUCKETS),
            smooth_loss: smooth(&losses, SMOOTH_POINTS),
            train_loss: per_epoch(|e| e.train_loss, 1.0),
            val_loss: per_epoch(|e| e.val_loss, 1.0),
            train_err: per_epoch(|e| e.train_err, 100.0),
            val_top1: per_epoch(|e| e.val_top1_err, 100.0),
            val_top5: per_epoch(|e| e.val_top5_err, 100.0),
            lr: lr_steps(steps, epochs),
        }
    }

    fn loss_series(&self) -> [&[(f64, f64)]; 4] {
        [
            &self.raw_loss,
            &self.smooth_loss,
            &self.train_loss,
            &self.val_loss,
        ]
    }

    fn err_series(&self) -> [&[(f64, f64)]; 3] {
        [&self.train_err, &self.val_top1, &self.val_top5]
    }

    /// The shared x range: every panel's points, from epoch 0 at the latest.
    fn x_range(&self) -> (f64, f64) {
        let all = self
            .loss_series()
            .into_iter()
            .chain(self.err_series())
            .chain([self.lr.as_slice()]);
        let (lo, hi) = bounds(all.flat_map(|s| s.iter().map(|p| p.0)));
        let (lo, hi) = widen(lo.min(0.0), hi);
        // A little room at the ends so the first and last markers are whole.
        let pad = (hi - lo) * 0.02;
        (lo - pad / 2.0, hi + pad)
    }

    /// The loss range, from the middle 98% of the per-step envelope and every
    /// per-epoch loss, so one diverging step does not flatten the rest of the
    /// run; such a spike runs off the panel instead. The smoothed line is left
    /// out: it lies within the per-step values except around such a spike.
    fn loss_range(&self) -> (f64, f64) {
        let (raw_lo, raw_hi) = middle_98(&self.raw_loss);
        let epochs = [&self.train_loss, &self.val_loss];
        let (lo, hi) = bounds(
            epochs
                .iter()
                .flat_map(|s| s.iter().map(|p| p.1))
                .chain([raw_lo, raw_hi].into_iter().flatten()),
        );
        let lo = lo.min(0.0);
        widen(lo, lo + (hi - lo) * 1.08)
    }

    /// A log range spanning the rates with some room above and below.
    fn lr_range(&self) -> (f64, f64) {
        let (lo, hi) = bounds(self.lr.iter().map(|p| p.1));
        if lo.is_finite() && hi.is_finite() {
            (lo / 3.0, hi * 3.0)
        } else {
            (1e-4, 1e-1)
        }
    }
}

/// Where the learning-rate axis is labelled: 1, 2 and 5 times each power
/// of ten in [lo, hi] while that spans two decades or less, else powers of
/// ten, every one up to six decades and fewer past that. Plotters' own log
/// axis labels every 1..9 x 10^k, and near a decade's top those labels
/// print over each other.
fn log_key_points(lo: f64, hi: f64) -> Vec<f64> {
    let decades = (hi / lo).log10();
    if !(decades.is_finite() && lo > 0.0) {
        return Vec::new();
    }
    let (mults, every): (&[u32], i32) = match decades <= 2.0 {
        true => (&[1, 2, 5], 1),
        false => (&[1], (decades / 6.0).ceil() as i32),
    };
    let (k0, k1) = (lo.log10().floor() as i32, hi.log10().ceil() as i32);
    (k0..=k1)
        .filter(|k| k.rem_euclid(every) == 0)
        .flat_map(|k| mults.iter().map(move |m| format!("{m}e{k}")))
        .filter_map(|v| v.parse::<f64>().ok())
        .filter(|v| (lo..=hi).contains(v))
        .collect()
}

/// The y values without their lowest and highest 1% (n / 100 points at
/// each end, so none of fewer than 100); None when there are none.
fn middle_98(points: &[(f64, f64)]) -> (Option<f64>, Option<f64>) {
    let mut ys: Vec<f64> = points.iter().map(|p| p.1).collect();
    ys.sort_by(f64::total_cmp);
    let cut = ys.len() / 100;
    let hi = ys.len().checked_sub(1 + cut).and_then(|i| ys.get(i));
    (ys.get(cut).copied(), hi.copied())
}

/// Labels on the shared epoch axis and on the y axes (plotters' default
/// counts, set here so that [`decimals`] sees the same ticks the mesh
/// draws).
const X_LABELS: usize = 11;
const Y_LABELS: usize = 11;

/// [`decimals`] of the epoch axis.
fn x_decimals(x: (f64, f64)) -> usize {
    decimals(x, X_LABELS)
}

/// The fewest decimals that print every tick of `range` (`labels` of
/// them) exactly: plotters puts them at 1, 2 or 5 times a power of ten, so
/// a run of 5 epochs gets ticks every 0.5, which 0 decimals would print as
/// "0 0 1 2 2 ...", and a loss that ends near 0.05 ticks every 0.05.
fn decimals(range: (f64, f64), labels: usize) -> usize {
    let ticks = RangedCoordf64::from(range.0..range.1).key_points(labels);
    let step = match ticks.as_slice() {
        [a, b, ..] => b - a,
        _ => return 0,
    };
    (0..=6)
        .find(|&d| {
            ticks.iter().all(|t| {
                let shown: f64 = format!("{t:.d$}").parse().unwrap_or(f64::NAN);
                (shown - t).abs() < step * 1e-3
            })
        })
        .unwrap_or(6)
}

/// Smallest and largest of `values`; (inf, -inf) when there are none.
fn bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    })
}

/// A drawable range from `lo..hi`: unit width when empty or degenerate.
fn widen(lo: f64, hi: f64) -> (f64, f64) {
    if !lo.is_finite() || !hi.is_finite() {
        (0.0, 1.0)
    } else if hi <= lo {
        (lo, lo + 1.0)
    } else {
        (lo, hi)
    }
}

/// At most `2 * buckets` points that keep each bucket's lowest and highest
/// value in their original order, so noise and spikes look as they would
/// with every point drawn.
fn envelope(points: &[(f64, f64)], buckets: usize) -> Vec<(f64, f64)> {
    if points.len() <= 2 * buckets {
        return points.to_vec();
    }
    let size = points.len().div_ceil(buckets);
    let mut out = Vec::with_capacity(2 * buckets);
    for chunk in points.chunks(size) {
        let (mut lo, mut hi) = (0, 0);
        for (i, p) in chunk.iter().enumerate() {
            if p.1 < chunk[lo].1 {
                lo = i;
            }
            if p.1 > chunk[hi].1 {
                hi = i;
            }
        }
        out.push(chunk[lo.min(hi)]);
        if lo != hi {
            out.push(chunk[lo.max(hi)]);
        }
    }
    out
}

/// The per-step loss smoothed: first the mean of each of at most
/// `max_points` equal buckets, then a centred moving average over those
/// means. Every sum covers one bucket or one window only, so a single huge
/// loss (a diverging step) raises the line where it happened and nowhere
/// else; running prefix sums would carry its rounding error to the end.
fn smooth(points: &[(f64, f64)], max_points: usize) -> Vec<(f64, f64)> {
    let size = points.len().div_ceil(max_points.max(1)).max(1);
    let means: Vec<(f64, f64)> = points
        .chunks(size)
        .map(|c| {
            (
                c[c.len() / 2].0,
                c.iter().map(|p| p.1).sum::<f64>() / c.len() as f64,
            )
        })
        .collect();
    let window = (means.len() / SMOOTH_FRACTION).max(1);
    moving_average(&means, window)
        .into_iter()
        .filter(|p| p.1.is_finite())
        .collect()
}

/// Centred moving average of the y values over `window` points, shrinking
/// at the ends rather than lagging behind like a trailing average would.
/// Direct sums: callers keep `points.len() * window` small.
fn moving_average(points: &[(f64, f64)], window: usize) -> Vec<(f64, f64)> {
    let half = window / 2;
    (0..points.len())
        .map(|i| {
            let window = &points[i.saturating_sub(half)..(i + half + 1).min(points.len())];
            let sum: f64 = window.iter().map(|p| p.1).sum();
            (points[i].0, sum / window.len() as f64)
        })
        .collect()
}

/// Vertices of the learning rate as a step function of the epoch. Steps say
/// exactly when the rate changed: each step's rate covers the step, from
/// where the step before ended to its own x (the first step, number s at x,
/// from x (s - 1) / s, as the steps of an epoch are equal). Without steps,
/// each epoch's rate covers the epoch that ended at its x. Rates that are
/// not finite and positive cannot go on a log axis and are skipped, as are
/// those outside f32's range, which no run trains at (a damaged log): their
/// spread of hundreds of decades sends plotters' log-axis tick search into
/// a loop without end. Only the changes are kept, so a million steps at a
/// handful of rates come down to a handful of vertices.
fn lr_steps(steps: &[StepPoint], epochs: &[EpochPoint]) -> Vec<(f64, f64)> {
    let usable = |x: f64, lr: f64| x.is_finite() && is_f32_rate(lr);
    let mut spans: Vec<(f64, f64, f64)> = Vec::new();
    for s in steps.iter().filter(|s| usable(s.epoch, s.lr)) {
        let start = match spans.last() {
            Some(&(_, end, _)) => end,
            None if s.step > 0 => s.epoch * (s.step - 1) as f64 / s.step as f64,
            None => s.epoch,
        };
        spans.push((start, s.epoch, s.lr));
    }
    if spans.is_empty() {
        spans = epochs
            .iter()
            .filter(|e| usable(e.epoch as f64, e.lr))
            .map(|e| ((e.epoch as f64 - 1.0).max(0.0), e.epoch as f64, e.lr))
            .collect();
    }
    let mut out: Vec<(f64, f64)> = Vec::new();
    let mut current: Option<(f64, f64)> = None; // (last x reached, rate)
    for (start, end, lr) in spans {
        match current {
            None => out.push((start, lr)),
            Some((_, rate)) if rate != lr => {
                out.push((start, rate));
                out.push((start, lr));
            }
            Some(_) => {}
        }
        current = Some((end, lr));
    }
    if let Some((end, rate)) = current {
        out.push((end, rate));
    }
    out
}

type DrawResult<DB> =
    std::result::Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    c: &Curves,
) -> DrawResult<DB> {
    root.fill(&WHITE)?;
    let (title_area, body) = root.split_vertically(TITLE_HEIGHT);
    title_area.draw(&Text::new(
        title,
        ((WIDTH / 2) as i32, (TITLE_HEIGHT / 2) as i32),
        centred(24),
    ))?;

    let body_height = HEIGHT - TITLE_HEIGHT;
    let (loss_area, rest) = body.split_vertically(body_height * 40 / 100);
    let (err_area, lr_area) = rest.split_vertically(body_height * 33 / 100);
    let x = c.x_range();
    let x_decimals = x_decimals(x);
    let x_fmt = move |v: &f64| format!("{v:.x_decimals$}");

    // Loss.
    let y = c.loss_range();
    let mut chart = panel(&loss_area, false).build_cartesian_2d(x.0..x.1, y.0..y.1)?;
    let y_decimals = decimals(y, Y_LABELS);
    let y_fmt = move |v: &f64| format!("{v:.y_decimals$}");
    mesh(&mut chart, "loss", &x_fmt, &y_fmt, false)?;
    series(
        &mut chart,
        &c.raw_loss,
        RAW_LOSS.stroke_width(1),
        "loss per step",
        false,
    )?;
    series(
        &mut chart,
        &c.smooth_loss,
        SMOOTH_LOSS.stroke_width(2),
        "loss per step, smoothed",
        false,
    )?;
    series(
        &mut chart,
        &c.train_loss,
        TRAIN.stroke_width(2),
        "train loss per epoch",
        true,
    )?;
    series(
        &mut chart,
        &c.val_loss,
        VAL.stroke_width(2),
        "val loss per epoch",
        true,
    )?;
    let loss = c.loss_series();
    finish(&mut chart, &loss, "no finite loss yet", x, y, false)?;

    // Error.
    let y = (0.0, 100.0);
    let mut chart = panel(&err_area, false).build_cartesian_2d(x.0..x.1, y.0..y.1)?;
    mesh(
        &mut chart,
        "error (%)",
        &x_fmt,
        &|v| format!("{v:.0}"),
        false,
    )?;
    series(
        &mut chart,
        &c.train_err,
        TRAIN.stroke_width(2),
        "train top-1",
        true,
    )?;
    series(
        &mut chart,
        &c.val_top1,
        VAL.stroke_width(2),
        "val top-1",
        true,
    )?;
    series(
        &mut chart,
        &c.val_top5,
        VAL_TOP5.stroke_width(2),
        "val top-5",
        true,
    )?;
    let err = c.err_series();
    finish(&mut chart, &err, "no finished epoch yet", x, y, false)?;

    // Learning rate, on a log axis: the paper's schedule divides it by 10.
    let y = c.lr_range();
    let y_axis = (y.0..y.1)
        .log_scale()
        .with_key_points(log_key_points(y.0, y.1));
    let mut chart = panel(&lr_area, true).build_cartesian_2d(x.0..x.1, y_axis)?;
    mesh(
        &mut chart,
        "learning rate",
        &x_fmt,
        &|v| format!("{v:.0e}"),
        true,
    )?;
    series(
        &mut chart,
        &c.lr,
        LR.stroke_width(2),
        "learning rate",
        false,
    )?;
    finish(
        &mut chart,
        &[c.lr.as_slice()],
        "no learning rate yet",
        x,
        y,
        true,
    )?;
    Ok(())
}

/// Text of `size` pixels centred on its position.
fn centred(size: u32) -> TextStyle<'static> {
    (FONT, size)
        .into_font()
        .color(&BLACK)
        .pos(Pos::new(HPos::Center, VPos::Center))
}

/// A panel's chart builder: every panel gets the same left label area so
/// their plotting areas line up on the shared x axis.
fn panel<'a, 'b, DB: DrawingBackend>(
    area: &'a DrawingArea<DB, Shift>,
    bottom: bool,
) -> ChartBuilder<'a, 'b, DB> {
    let mut b = ChartBuilder::on(area);
    b.margin_left(10)
        .margin_right(25)
        .margin_top(10)
        .x_label_area_size(if bottom { 50 } else { 30 })
        .y_label_area_size(75);
    b
}

/// Grid, tick labels and axis names; only the bottom panel names the x axis.
fn mesh<'a, DB, X, Y>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<X, Y>>,
    y_desc: &str,
    x_fmt: &dyn Fn(&f64) -> String,
    y_fmt: &dyn Fn(&f64) -> String,
    bottom: bool,
) -> DrawResult<DB>
where
    DB: DrawingBackend + 'a,
    X: Ranged<ValueType = f64> + ValueFormatter<f64>,
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    let mut m = chart.configure_mesh();
    m.bold_line_style(GRID_BOLD)
        .light_line_style(GRID_LIGHT)
        .label_style((FONT, 14))
        .x_labels(X_LABELS)
        .y_labels(Y_LABELS)
        .axis_desc_style((FONT, 16))
        .x_label_formatter(x_fmt)
        .y_label_formatter(y_fmt)
        .y_desc(y_desc);
    if bottom {
        m.x_desc("epoch");
    }
    m.draw()
}

/// One line with its legend entry; nothing at all (not even a legend entry)
/// when it has no points. `markers` puts a dot on every point, as for
/// per-epoch values; a line that spans no width (one point, or one x) would
/// be invisible, so it always gets them.
fn series<'a, DB, CT>(
    chart: &mut ChartContext<'a, DB, CT>,
    points: &[(f64, f64)],
    style: ShapeStyle,
    label: &str,
    markers: bool,
) -> DrawResult<DB>
where
    DB: DrawingBackend + 'a,
    CT: CoordTranslate<From = (f64, f64)>,
{
    let (Some(first), Some(last)) = (points.first(), points.last()) else {
        return Ok(());
    };
    let colour = style.color;
    chart
        .draw_series(LineSeries::new(points.iter().copied(), style))?
        .label(label)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2)));
    if markers || first.0 == last.0 {
        chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, colour.filled())))?;
    }
    Ok(())
}

/// The legend in the corner the lines leave most free, or, for a panel with
/// nothing to draw, a note in its middle.
fn finish<'a, DB, CT>(
    chart: &mut ChartContext<'a, DB, CT>,
    lines: &[&[(f64, f64)]],
    note: &str,
    x: (f64, f64),
    y: (f64, f64),
    log_y: bool,
) -> DrawResult<DB>
where
    DB: DrawingBackend + 'a,
    CT: CoordTranslate<From = (f64, f64)>,
{
    if lines.iter().all(|l| l.is_empty()) {
        let mid_y = if log_y {
            (y.0 * y.1).sqrt()
        } else {
            (y.0 + y.1) / 2.0
        };
        return chart.plotting_area().draw(&Text::new(
            note,
            ((x.0 + x.1) / 2.0, mid_y),
            centred(18),
        ));
    }
    chart
        .configure_series_labels()
        .position(quiet_corner(lines, x, y, log_y))
        .label_font((FONT, 14))
        .background_style(WHITE.mix(0.85))
        .border_style(GRID_BOLD)
        .draw()
}

/// The corner of the panel (as a legend position) that the fewest line
/// samples fall in. Lines are sampled along each segment, not just at their
/// points, so a long flat step of the learning rate counts too. Ties go to
/// the upper right, where training curves usually leave room.
fn quiet_corner(
    lines: &[&[(f64, f64)]],
    x: (f64, f64),
    y: (f64, f64),
    log_y: bool,
) -> SeriesLabelPosition {
    // The legend's share of the panel, about: wide labels, up to four rows.
    const W: f64 = 0.35;
    const H: f64 = 0.4;
    let fy = |v: f64| {
        if log_y {
            (v.ln() - y.0.ln()) / (y.1.ln() - y.0.ln())
        } else {
            (v - y.0) / (y.1 - y.0)
        }
    };
    let frac = |p: (f64, f64)| ((p.0 - x.0) / (x.1 - x.0), fy(p.1));
    // upper right, upper left, lower right, lower left
    let mut counts = [0usize; 4];
    let mut count = |(u, v): (f64, f64)| {
        let (right, left, upper, lower) = (u > 1.0 - W, u < W, v > 1.0 - H, v < H);
        counts[0] += (upper && right) as usize;
        counts[1] += (upper && left) as usize;
        counts[2] += (lower && right) as usize;
        counts[3] += (lower && left) as usize;
    };
    for line in lines {
        for pair in line.windows(2) {
            let (a, b) = (frac(pair[0]), frac(pair[1]));
            for k in 0..8 {
                let t = k as f64 / 8.0;
                count((a.0 + (b.0 - a.0) * t, a.1 + (b.1 - a.1) * t));
            }
        }
        if let Some(&p) = line.last() {
            count(frac(p));
        }
    }
    let positions = [
        SeriesLabelPosition::UpperRight,
        SeriesLabelPosition::UpperLeft,
        SeriesLabelPosition::LowerRight,
        SeriesLabelPosition::LowerLeft,
    ];
    let best = (0..4).min_by_key(|&i| counts[i]).unwrap_or(0);
    positions[best].clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_keeps_extremes_in_order_and_bounds_count() {
        let points: Vec<(f64, f64)> = (0..10_000)
            .map(|i| (i as f64, if i == 4321 { 99.0 } else { (i % 7) as f64 }))
            .collect();
        let out = envelope(&points, 100);
        assert!(out.len() <= 200, "{} points", out.len());
        assert!(out.contains(&(4321.0, 99.0)));
        assert!(out.windows(2).all(|w| w[0].0 < w[1].0));
    }

    /// Every tick plotters draws, over runs from 0.01 to 200 epochs and
    /// losses from 0.01 to 200, prints as its own value, and whole ticks
    /// print without decimals.
    #[test]
    fn epoch_and_loss_ticks_print_distinct_and_exact() {
        for (k, labels) in (1..=2000).flat_map(|k| [(k, X_LABELS), (k, Y_LABELS)]) {
            let span = 0.01 * 1.003f64.powi(k * 3);
            let x = (-span * 0.01, span * 1.02);
            let d = decimals(x, labels);
            let ticks = RangedCoordf64::from(x.0..x.1).key_points(labels);
            let labels: Vec<String> = ticks.iter().map(|t| format!("{t:.d$}")).collect();
            let mut unique = labels.clone();
            unique.dedup();
            assert_eq!(unique, labels, "span {span}");
            for (t, l) in ticks.iter().zip(&labels) {
                let back: f64 = l.parse().unwrap();
                assert!((back - t).abs() < 1e-9 + t.abs() * 1e-9, "{t} shown as {l}");
            }
            if ticks.iter().all(|t| t.fract() == 0.0) {
                assert_eq!(d, 0, "span {span}: {labels:?}");
            }
        }
    }

    /// With fewer than 100 points nothing is cut; from 100 on, one point
    /// at each end per hundred.
    #[test]
    fn middle_98_cuts_one_point_per_hundred_at_each_end() {
        let pts = |n: usize| -> Vec<(f64, f64)> { (0..n).map(|i| (0.0, i as f64)).collect() };
        assert_eq!(middle_98(&pts(0)), (None, None));
        assert_eq!(middle_98(&pts(1)), (Some(0.0), Some(0.0)));
        assert_eq!(middle_98(&pts(99)), (Some(0.0), Some(98.0)));
        assert_eq!(middle_98(&pts(100)), (Some(1.0), Some(98.0)));
        assert_eq!(middle_98(&pts(1000)), (Some(10.0), Some(989.0)));
    }

    #[test]
    fn moving_average_is_centred_and_shrinks_at_the_ends() {
        let points: Vec<(f64, f64)> = (0..5).map(|i| (i as f64, i as f64)).collect();
        let out = moving_average(&points, 3);
        let ys: Vec<f64> = out.iter().map(|p| p.1).collect();
        assert_eq!(ys, vec![0.5, 1.0, 2.0, 3.0, 3.5]);
    }

    #[test]
    fn a_huge_loss_only_raises_the_smoothed_line_near_it() {
        let mut points: Vec<(f64, f64)> = (0..100_000).map(|i| (i as f64, 2.0)).collect();
        points[10_000].1 = 1e300;
        let out = smooth(&points, 2000);
        assert!(out.len() <= 2000);
        let raised: Vec<f64> = out.iter().filter(|p| p.1 != 2.0).map(|p| p.0).collect();
        assert!(!raised.is_empty());
        assert!(
            raised.iter().all(|&x| (x - 10_000.0).abs() < 2_000.0),
            "{raised:?}"
        );
    }

    /// 100 steps an epoch, each at x = the end of the step (step 200 at
    /// 2.0), the rate cut from step 201, the first of epoch 3: the cut is
    /// drawn at 2.0, where epoch 3 starts, and the line starts at 0.
    #[test]
    fn lr_step_function_keeps_only_changes() {
        let point = |i: u64| StepPoint {
            step: i,
            epoch: i as f64 / 100.0,
            loss: 1.0,
            lr: if i <= 200 { 0.01 } else { 0.001 },
        };
        let steps: Vec<StepPoint> = (1..=300).map(point).collect();
        assert_eq!(
            lr_steps(&steps, &[]),
            vec![(0.0, 0.01), (2.0, 0.01), (2.0, 0.001), (3.0, 0.001)]
        );
        // A log that starts later (older rows gone) starts at its first
        // step's start.
        let later: Vec<StepPoint> = (151..=300).map(point).collect();
        assert_eq!(lr_steps(&later, &[])[0], (1.5, 0.01));
    }

    /// The paper's rate alone gets 1-2-5 labels; a schedule over four
    /// decades, its powers of ten; one over thirty, every sixth of them.
    #[test]
    fn lr_axis_labels_are_one_two_five_or_decades() {
        assert_eq!(log_key_points(0.01 / 3.0, 0.03), vec![0.005, 0.01, 0.02]);
        assert_eq!(
            log_key_points(1e-4 / 3.0, 0.3),
            vec![1e-4, 1e-3, 1e-2, 1e-1]
        );
        assert_eq!(
            log_key_points(1e-31, 0.3),
            vec![1e-30, 1e-24, 1e-18, 1e-12, 1e-6]
        );
        assert!(log_key_points(0.0, 1.0).is_empty());
    }

    #[test]
    fn lr_falls_back_to_epochs_and_skips_unusable_rates() {
        let e = |epoch, lr| EpochPoint {
            epoch,
            train_loss: 1.0,
            train_err: 0.5,
            val_loss: 1.0,
            val_top1_err: 0.5,
            val_top5_err: 0.2,
            lr,
        };
        let epochs = [e(1, 0.01), e(2, f64::NAN), e(3, 0.0), e(4, 0.001)];
        assert_eq!(
            lr_steps(&[], &epochs),
            vec![(0.0, 0.01), (3.0, 0.01), (3.0, 0.001), (4.0, 0.001)]
        );
    }
}
