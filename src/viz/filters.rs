//! The first layer's kernels as a picture, per tower, as in the paper's
//! figure 3 (section 6.1), and how colour-specific each tower's kernels are.
//! This file owns reading conv1 and its tower split from a checkpoint or an
//! exported safetensors file, the picture's layout and pixels, and the
//! colour measure; no command-line code (src/cli/filters.rs is the edge).
//!
//! The tower split comes from the topology table (`Topology::tower_split` of
//! conv1's width): with two towers, tower 0 holds the first half of conv1's
//! output channels, as on the paper's first GPU. Towers are stacked top to
//! bottom, each a grid of kernels, drawn at least [`MIN_KERNEL_PX`] pixels
//! wide, nearest-neighbour. The paper does not say how figure 3 maps
//! weights to pixels. By default ([`Scale::Kernel`]) each kernel is scaled
//! on its own, the min..max of its k x k x 3 values to 0..255, so every
//! kernel's pattern shows, a weak one's as clearly as a strong one's;
//! [`Scale::Layer`] scales the layer's values as one range, as
//! cuda-convnet's shownet.py (released with the paper's code) draws
//! filters, so weak kernels look faint.
use std::collections::HashMap;
use std::path::Path;

use serde::Serialize;

use crate::checkpoint;
use crate::error::{Error, Result};
use crate::export::{self, Tensor};
use crate::model::topology::{Op, Topology};
use crate::model::trainable::Model;
use crate::plot::write_rgb_png;

/// A kernel is drawn at least this many pixels wide (an 11x11 kernel at 4x).
pub const MIN_KERNEL_PX: usize = 44;
/// Pixels between neighbouring kernels, and around the picture.
pub const KERNEL_GAP: usize = 2;
/// Pixels between two towers' blocks.
pub const TOWER_GAP: usize = 10;
/// The colour of the gaps.
pub const BACKGROUND: [u8; 3] = [255, 255, 255];
/// Colour channels a kernel must have to be drawn.
const RGB: usize = 3;

/// What to pass instead of a file that is not one of ours.
const CHECKPOINT_HINT: &str = "pass a checkpoint from `train` (RUN/best.safetensors or \
     RUN/ckpt-*.safetensors) or a file from `export --format safetensors`";

/// conv1's kernels and how the table puts them on towers.
#[derive(Clone, Debug, PartialEq)]
pub struct Conv1 {
    /// The config the kernels belong to (the table's name).
    pub config: String,
    /// Kernel side.
    pub k: usize,
    /// `[kernels, 3, k, k]`, PyTorch's layout: per kernel, the R, G and B planes.
    pub data: Vec<f32>,
    /// Kernels per tower, in channel order (tower 0 first).
    pub towers: Vec<usize>,
}

impl Conv1 {
    /// conv1 from its weight tensor, checked against `topo`'s first layer;
    /// `source` names the file in errors.
    pub fn from_tensor(t: &Tensor, topo: &Topology, source: &Path) -> Result<Conv1> {
        let file = source.display();
        let first = topo
            .layers
            .first()
            .ok_or_else(|| Error::Config(format!("config {}: no layers", topo.name)))?;
        let Op::Conv { out, k, .. } = first.op else {
            return Err(Error::Config(format!(
                "config {}: the first layer {} is not a convolution",
                topo.name, first.name
            )));
        };
        let s = &t.shape;
        if s.len() != 4 {
            return Err(Error::Data(format!(
                "{file}: {} has shape {s:?}, not a 4-D convolution weight [kernels, channels, k, k]; \
                 {CHECKPOINT_HINT}",
                t.name
            )));
        }
        if s[1] != RGB {
            return Err(Error::Data(format!(
                "{file}: {} has {} input channels (shape {s:?}); the picture needs 3 (RGB) \
                 kernels, as a network trained on colour images has",
                t.name, s[1]
            )));
        }
        if s[0] != out || s[2] != k || s[3] != k {
            return Err(Error::Data(format!(
                "{file}: {} has shape {s:?} but config {} has {out} kernels of {k}x{k}x3; \
                 the file was not trained with that config",
                t.name, topo.name
            )));
        }
        if t.data.len() != s.iter().product::<usize>() {
            return Err(Error::Data(format!(
                "{file}: {} has {} values for shape {s:?}",
                t.name,
                t.data.len()
            )));
        }
        checkpoint::refuse_non_finite(source, &t.name, &t.data)?;
        Ok(Conv1 {
            config: topo.name.clone(),
            k,
            data: t.data.clone(),
            towers: topo.tower_split(out),
        })
    }

    /// conv1 of a network in memory, for the picture `train` draws into
    /// its TensorBoard events at each epoch end.
    pub fn from_model(net: &dyn Model) -> Result<Conv1> {
        let t = Tensor {
            name: "conv1.weight".into(),
            shape: net.param_shape("conv1.weight")?,
            data: net.param("conv1.weight")?,
        };
        Conv1::from_tensor(&t, net.topology(), Path::new("the network being trained"))
    }

    /// Number of kernels.
    pub fn count(&self) -> usize {
        self.towers.iter().sum()
    }

    /// Kernel `i` (in channel order), `[3, k, k]`.
    pub fn kernel(&self, i: usize) -> &[f32] {
        let n = RGB * self.k * self.k;
        &self.data[i * n..(i + 1) * n]
    }

    /// The kernels of tower `t`.
    pub fn tower(&self, t: usize) -> impl Iterator<Item = &[f32]> {
        let start: usize = self.towers[..t].iter().sum();
        (start..start + self.towers[t]).map(move |i| self.kernel(i))
    }
}

/// Read conv1 from `path`: a checkpoint (verified, as `train --resume`
/// would) or an exported safetensors file, whose config is in its metadata.
/// `config` names the config of a file that carries none (one written by
/// PyTorch, say); it must agree with the file's own when both are given.
pub fn load(path: &Path, config: Option<&str>) -> Result<Conv1> {
    let path = &checkpoint::resolve(path).map_err(|e| match e {
        Error::Config(m) => {
            Error::Config(format!("{m}, or a file from `export --format safetensors`"))
        }
        other => other,
    })?;
    let file = path.display();
    let (tensors, meta) = export::read_safetensors_meta(path).map_err(|e| match e {
        Error::Data(_) if checkpoint::damaged_in_a_run(path) => checkpoint::good_one_for(e, path),
        Error::Data(m) => Error::Data(format!("{m}; {CHECKPOINT_HINT}")),
        other => other,
    })?;
    // Exports name the table with its ablations ("alexnet+no-lrn"); conv1
    // and the towers come from the base config.
    let base = |name: &str| name.split('+').next().unwrap_or(name).to_string();
    let meta_config = meta.get("config").cloned();
    let (named, tensors): (Option<String>, HashMap<String, Tensor>) =
        if checkpoint::is_checkpoint(&meta) {
            let ck = checkpoint::from_parts(path, tensors, meta)
                .map_err(|e| checkpoint::good_one_for(e, path))?;
            let topo = ck.state.net.topology()?;
            (Some(topo.name), ck.tensors)
        } else {
            let tensors = tensors.into_iter().map(|t| (t.name.clone(), t)).collect();
            // Another program's "config" is not one of ours: unnamed, so
            // --config decides.
            let ours = |c: &String| Topology::NAMES.contains(&base(c).as_str());
            (meta.get("config").filter(|c| ours(c)).cloned(), tensors)
        };
    // The flag is read as the file's name is: an export's own name
    // ("alexnet+no-lrn") passed back names its base config.
    let name = match (named.as_deref().map(base), config.map(base)) {
        (Some(file_cfg), Some(flag)) if file_cfg != flag => {
            return Err(Error::Config(format!(
                "--config {flag}: {file} was trained with config {file_cfg}; drop --config"
            )))
        }
        (Some(file_cfg), _) => file_cfg,
        (None, Some(flag)) => flag,
        (None, None) => {
            let said = match meta_config {
                Some(c) => format!("its metadata's config {c:?} is not one of this program's"),
                None => "the file does not say which config it holds".into(),
            };
            return Err(Error::Config(format!(
                "{file}: {said}; pass --config {}",
                Topology::NAMES.join("|")
            )));
        }
    };
    let topo = Topology::by_name(&name)?;
    let key = format!("{}.weight", topo.layers[0].name);
    let t = tensors.get(&key).ok_or_else(|| {
        Error::Data(format!(
            "{file}: no tensor {key} (PyTorch names); {CHECKPOINT_HINT}"
        ))
    })?;
    Conv1::from_tensor(t, &topo, path)
}

/// Where every kernel goes in the picture; all of it follows from the
/// kernels per tower and the kernel side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub towers: usize,
    /// Grid of one tower's block (the same for every tower).
    pub rows: usize,
    pub cols: usize,
    /// Kernel side, and the nearest-neighbour factor it is drawn at.
    pub k: usize,
    pub scale: usize,
    pub width: usize,
    pub height: usize,
}

impl Layout {
    /// The layout for `per_tower` kernels per tower of side `k`. A tower's
    /// block is a grid about 16:3 wide, the shape of the paper's figure
    /// (48 kernels as 3 rows of 16): the fewest rows r with 16 r^2 >= 3 n,
    /// then as many columns as n needs.
    pub fn new(per_tower: &[usize], k: usize) -> Layout {
        let n = per_tower.iter().copied().max().unwrap_or(0).max(1);
        let k = k.max(1);
        let rows = (1..).find(|r| 16 * r * r >= 3 * n).unwrap_or(1);
        let cols = n.div_ceil(rows);
        let scale = MIN_KERNEL_PX.div_ceil(k);
        let towers = per_tower.len().max(1);
        let mut l = Layout {
            towers,
            rows,
            cols,
            k,
            scale,
            width: 0,
            height: 0,
        };
        l.width = 2 * KERNEL_GAP + cols * l.cell() + (cols - 1) * KERNEL_GAP;
        l.height = 2 * KERNEL_GAP + towers * l.tower_height() + (towers - 1) * TOWER_GAP;
        l
    }

    /// A kernel's side in the picture.
    pub fn cell(&self) -> usize {
        self.k * self.scale
    }

    /// One tower's block height.
    pub fn tower_height(&self) -> usize {
        self.rows * self.cell() + (self.rows - 1) * KERNEL_GAP
    }

    /// Top-left pixel (x, y) of kernel `i` of tower `t`.
    pub fn origin(&self, t: usize, i: usize) -> (usize, usize) {
        let step = self.cell() + KERNEL_GAP;
        let x = KERNEL_GAP + (i % self.cols) * step;
        let y = KERNEL_GAP + t * (self.tower_height() + TOWER_GAP) + (i / self.cols) * step;
        (x, y)
    }
}

/// How kernel values map to 0..255 (the module comment says why both).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Scale {
    /// Each kernel's own min..max.
    #[default]
    Kernel,
    /// The min..max of all of conv1's values.
    Layer,
}

/// The least and greatest of `v`.
fn range(v: &[f32]) -> (f32, f32) {
    v.iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &x| {
            (lo.min(x), hi.max(x))
        })
}

/// The picture: RGB8 rows, `layout.width x layout.height`.
pub fn render(conv1: &Conv1, scale: Scale) -> (Layout, Vec<u8>) {
    let layout = Layout::new(&conv1.towers, conv1.k);
    let (w, k, s) = (layout.width, conv1.k, layout.scale);
    let mut px: Vec<u8> = BACKGROUND
        .iter()
        .copied()
        .cycle()
        .take(w * layout.height * 3)
        .collect();
    let layer = range(&conv1.data);
    for t in 0..conv1.towers.len() {
        for (i, kernel) in conv1.tower(t).enumerate() {
            let (lo, hi) = match scale {
                Scale::Kernel => range(kernel),
                Scale::Layer => layer,
            };
            // The range's min to 0, its max to 255; a flat range (a flat
            // kernel, or with --scale layer a flat layer; or none finite) is
            // mid grey.
            let byte = |v: f32| -> u8 {
                if hi > lo && (hi - lo).is_finite() {
                    (((v - lo) / (hi - lo)) * 255.0).round().clamp(0.0, 255.0) as u8
                } else {
                    128
                }
            };
            let (x0, y0) = layout.origin(t, i);
            for ky in 0..k {
                for kx in 0..k {
                    let rgb: [u8; 3] =
                        std::array::from_fn(|c| byte(kernel[c * k * k + ky * k + kx]));
                    for dy in 0..s {
                        let row = (y0 + ky * s + dy) * w;
                        for dx in 0..s {
                            let at = (row + x0 + kx * s + dx) * 3;
                            px[at..at + 3].copy_from_slice(&rgb);
                        }
                    }
                }
            }
        }
    }
    (layout, px)
}

/// `--out`'s folder must exist (checked before any work is done).
pub fn check_out(path: &Path) -> Result<()> {
    crate::fsutil::check_target(path).map_err(|e| Error::Config(format!("--out {e}")))
}

/// Draw `conv1` (scaled as `scale` says) and write it to `path` as PNG
/// (atomically).
pub fn write_png(conv1: &Conv1, path: &Path, scale: Scale) -> Result<Layout> {
    check_out(path)?;
    let (layout, px) = render(conv1, scale);
    write_rgb_png(path, &px, layout.width as u32, layout.height as u32)?;
    Ok(layout)
}

/// How much of a kernel's energy lies off the grey axis, in [0, 1].
///
/// The measure is ours; it quantifies the paper's observation (section 6.1,
/// figure 3) that one tower's kernels are "largely color-agnostic" and the
/// other's "largely color-specific". With `w[c][p]` the kernel's value in
/// channel c at pixel p, `g[p] = (w[R][p] + w[G][p] + w[B][p]) / 3` the
/// pixel's grey level and `m` the mean of all 3 k^2 values:
///
/// ```text
/// share = sum_p sum_c (w[c][p] - g[p])^2  /  sum_p sum_c (w[c][p] - m)^2
/// ```
///
/// The denominator is the kernel's energy about its mean; it splits exactly
/// into the numerator (each pixel's RGB vector minus its projection on the
/// grey axis (1, 1, 1)) plus `3 sum_p (g[p] - m)^2` (the grey pattern), so the
/// share is 0 for a kernel with R = G = B at every pixel and 1 for one whose
/// pixels all have grey level m (e.g. R = -B, G = 0). A flat kernel
/// (no energy) counts as grey: 0. `kernel` is `[3, k, k]`.
pub fn colour_share(kernel: &[f32]) -> f64 {
    let n = kernel.len() / RGB;
    let plane = |c: usize| &kernel[c * n..(c + 1) * n];
    let m = kernel.iter().map(|&v| f64::from(v)).sum::<f64>() / kernel.len().max(1) as f64;
    let (mut chroma, mut total) = (0.0f64, 0.0f64);
    for p in 0..n {
        let v: [f64; 3] = std::array::from_fn(|c| f64::from(plane(c)[p]));
        let g = (v[0] + v[1] + v[2]) / 3.0;
        for x in v {
            chroma += (x - g) * (x - g);
            total += (x - m) * (x - m);
        }
    }
    if total > 0.0 && total.is_finite() {
        (chroma / total).clamp(0.0, 1.0)
    } else {
        0.0
    }
}

/// The colour measure over one tower's kernels.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TowerColour {
    pub tower: usize,
    pub kernels: usize,
    pub mean: f64,
    pub median: f64,
    /// Fraction of the tower's kernels with a share above 0.5.
    pub above_half: f64,
    /// Every kernel's share, in channel order.
    pub shares: Vec<f64>,
}

/// [`colour_share`] per tower: mean, median and the fraction above 0.5.
pub fn tower_colour(conv1: &Conv1) -> Vec<TowerColour> {
    (0..conv1.towers.len())
        .map(|t| {
            let shares: Vec<f64> = conv1.tower(t).map(colour_share).collect();
            let n = shares.len();
            let mut sorted = shares.clone();
            sorted.sort_by(f64::total_cmp);
            let median = match n {
                0 => 0.0,
                _ if n % 2 == 1 => sorted[n / 2],
                _ => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
            };
            let div = n.max(1) as f64;
            TowerColour {
                tower: t,
                kernels: n,
                mean: shares.iter().sum::<f64>() / div,
                median,
                above_half: shares.iter().filter(|&&s| s > 0.5).count() as f64 / div,
                shares,
            }
        })
        .collect()
}

/// The per-tower table as printed by `filters`.
pub fn render_table(rows: &[TowerColour]) -> String {
    let mut s = String::from("tower  kernels  mean   median  >0.5\n");
    for r in rows {
        s.push_str(&format!(
            "{:<5}  {:>7}  {:.3}  {:.3}   {:>4.0}%\n",
            r.tower,
            r.kernels,
            r.mean,
            r.median,
            100.0 * r.above_half
        ));
    }
    s
}
