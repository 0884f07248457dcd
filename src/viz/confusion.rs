//! `eval --confusion FILE.png`: the confusion matrix as a picture. Row = the
//! true class, column = the top-1 class; each cell is shaded by its share
//! of the row, on a square-root scale so that confusions of a few percent
//! still show against the diagonal. With 40 classes or fewer the rows are
//! named, and with 30 or fewer (cells of 24 pixels or more) the cells hold
//! their counts where the largest fits; with ImageNet's 1,000 each cell is
//! a pixel, where groups of related classes (the dog breeds) show as blocks.
use std::path::Path;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::error::{Error, Result};
use crate::eval::ClassTally;
use crate::plot::{ensure_font, rgb_png_bytes, FONT};

/// The darkest shade, a full row's cell (white is an empty one).
pub const DARK: [u8; 3] = [8, 48, 107];
/// Classes up to which rows are named and cells numbered.
pub const LABELLED: usize = 40;
/// Side of the matrix in pixels, about: each cell is 720 / classes pixels,
/// at least 1 and at most 40.
const SIDE: usize = 720;
const CAPTION: &str = "rows: true class, columns: top-1 class, shade: share of the row";

/// Where the matrix lies in the picture: cell (t, p) covers columns
/// `left + p * cell ..` and rows `top + t * cell ..`, `cell` pixels each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub cell: usize,
    pub left: usize,
    pub top: usize,
    pub width: usize,
    pub height: usize,
}

impl Layout {
    fn for_classes(names: &[String], n: usize) -> Layout {
        let cell = (SIDE / n.max(1)).clamp(1, 40);
        let labelled = n <= LABELLED;
        // Row names in 7-pixel characters, at most 24 of them.
        let longest = (0..n).map(|c| row_name(names, c).chars().count()).max();
        let left = if labelled {
            8 + 7 * longest.unwrap_or(0).min(24)
        } else {
            4
        };
        let top = if labelled { 22 } else { 4 };
        let width = (left + n * cell + 4).max(7 * CAPTION.len() + 8);
        Layout {
            cell,
            left,
            top,
            width,
            height: top + n * cell + 24,
        }
    }
}

/// Draw the matrix of `tally` (`names`: each class's, in label order) as
/// the bytes of the PNG file `path` (named in errors), and where it lies.
pub fn png(path: &Path, names: &[String], tally: &ClassTally) -> Result<(Vec<u8>, Layout)> {
    let n = tally.classes();
    let l = Layout::for_classes(names, n);
    let mut rgb = vec![255u8; l.width * l.height * 3];
    for t in 0..n {
        let row = tally.counts(t).0;
        for p in 0..n {
            let share = match row {
                0 => 0.0,
                _ => tally.confused(t, p) as f64 / row as f64,
            };
            fill(&mut rgb, &l, t, p, shade(share));
        }
    }
    ensure_font()?;
    let draw_err = |e: String| Error::Backend(format!("{}: drawing: {e}", path.display()));
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (l.width as u32, l.height as u32))
            .into_drawing_area();
        text(&root, &l, names, tally).map_err(|e| draw_err(e.to_string()))?;
        root.present().map_err(|e| draw_err(e.to_string()))?;
    }
    let png = rgb_png_bytes(path, &rgb, l.width as u32, l.height as u32)?;
    Ok((png, l))
}

/// The colour of a cell holding `share` of its row: white to [`DARK`],
/// linear in sqrt(share).
fn shade(share: f64) -> [u8; 3] {
    let v = share.clamp(0.0, 1.0).sqrt();
    DARK.map(|d| (255.0 + (d as f64 - 255.0) * v).round() as u8)
}

fn fill(rgb: &mut [u8], l: &Layout, t: usize, p: usize, colour: [u8; 3]) {
    for y in l.top + t * l.cell..l.top + (t + 1) * l.cell {
        for x in l.left + p * l.cell..l.left + (p + 1) * l.cell {
            let at = (y * l.width + x) * 3;
            rgb[at..at + 3].copy_from_slice(&colour);
        }
    }
}

fn row_name(names: &[String], c: usize) -> String {
    let name = names.get(c).map_or("", String::as_str);
    format!("{c} {}", name.chars().take(20).collect::<String>())
}

/// The caption; with few classes, the row names, column numbers and counts.
fn text<DB: DrawingBackend>(
    root: &DrawingArea<DB, plotters::coord::Shift>,
    l: &Layout,
    names: &[String],
    tally: &ClassTally,
) -> std::result::Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let n = tally.classes();
    let at = |x: usize, y: usize| (x as i32, y as i32);
    let style = TextStyle::from((FONT, 12).into_font()).color(&BLACK);
    root.draw_text(CAPTION, &style, at(4, l.top + n * l.cell + 6))?;
    if n > LABELLED {
        return Ok(());
    }
    let centred = style.pos(Pos::new(HPos::Center, VPos::Center));
    let half = l.cell / 2;
    for c in 0..n {
        let y = l.top + c * l.cell + half;
        let left = style.pos(Pos::new(HPos::Left, VPos::Center));
        root.draw_text(&row_name(names, c), &left, at(4, y))?;
        root.draw_text(&c.to_string(), &centred, at(l.left + c * l.cell + half, 11))?;
    }
    // Counts only where the widest fits its cell: a number spilling into
    // the next cell would read as that cell's.
    let diagonal = (0..n).map(|c| tally.confused(c, c));
    let widest = tally.misses().map(|(_, k)| k).chain(diagonal).max();
    let (w, _) = root.estimate_text_size(&widest.unwrap_or(0).to_string(), &style)?;
    if l.cell < 24 || w as usize + 2 > l.cell {
        return Ok(());
    }
    for t in 0..n {
        let row = tally.counts(t).0;
        for p in (0..n).filter(|&p| tally.confused(t, p) > 0) {
            let k = tally.confused(t, p);
            // White on the darker half of the scale (share > 1/4).
            let colour = if 4 * k > row { WHITE } else { BLACK };
            let s = centred.color(&colour);
            let xy = at(l.left + p * l.cell + half, l.top + t * l.cell + half);
            root.draw_text(&k.to_string(), &s, xy)?;
        }
    }
    Ok(())
}
