//! The network as one table: the single source of truth for every layer's
//! kind, shape, stride, padding, groups, what follows it (ReLU, LRN, pooling,
//! dropout), its initialisation, and where the two towers exchange feature
//! maps. Shapes, parameter counts, FLOPs, exchange bytes, parameter names and
//! the forward pass are all derived from it (`shapes()`, `model::net`).
//!
//! Towers (paper section 3.2, figure 2): a two-tower table puts the first half
//! of every layer's output channels on tower 0 and the second half on tower 1.
//! A layer with `groups: 2` sees only its own tower's input; a layer with
//! `groups: 1` after the first needs both halves, so it is marked `exchange`.
//! On one device the same table runs as grouped ops, which compute exactly
//! what the two towers compute. That includes LRN: it mixes neighbouring
//! channels, and the towers talk only at the exchanges, so each tower
//! normalises its own half (with two towers, a window at a tower's first or
//! last channel is cut at the tower's edge, as on the paper's two GPUs). One
//! device runs it on [n * towers, c / towers, h, w].
use serde::{Deserialize, Serialize};

use crate::backend::LrnParams;
use crate::error::{Error, Result};

/// What a layer computes before its ReLU/LRN/pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// k x k convolution with `out` output channels.
    Conv {
        out: usize,
        k: usize,
        stride: usize,
        pad: usize,
        groups: usize,
    },
    /// Fully connected, `out` outputs, over the flattened (C, H, W) input.
    Fc { out: usize },
}

/// Max pooling after a layer (section 3.4: size 3, stride 2 overlaps).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool {
    pub size: usize,
    pub stride: usize,
}

/// How a layer's weights are drawn (biases are constants, `Layer::bias`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// N(0, std^2): the paper's N(0, 0.01) is `Normal(0.01)` (section 5).
    Normal(f32),
    /// N(0, 2 / fan_in) (He et al., ICCV 2015), for configs that train from
    /// scratch in minutes; see docs/training.md.
    He,
}

/// One row of the table.
#[derive(Clone, Debug, PartialEq)]
pub struct Layer {
    pub name: &'static str,
    pub op: Op,
    /// This layer reads both towers' outputs of the previous layer.
    pub exchange: bool,
    pub relu: bool,
    pub lrn: bool,
    pub pool: Option<Pool>,
    /// Dropout probability after the ReLU (0 = none). Section 4.2: 0.5 in fc6, fc7.
    pub dropout: f32,
    pub init: Init,
    pub bias: f32,
    /// Factors on the weights' learning rate, weight decay and initial
    /// standard deviation (1: the recipe's); `with_dropout` sets them.
    pub weight_rule: WeightRule,
}

/// Per-layer factors on the update and initialisation of a layer's weights
/// (not its biases), as Caffe's `lr_mult` and `decay_mult`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WeightRule {
    pub lr_mult: f32,
    pub decay_mult: f32,
    pub init_scale: f32,
}

impl WeightRule {
    pub const SAME: WeightRule = WeightRule {
        lr_mult: 1.0,
        decay_mult: 1.0,
        init_scale: 1.0,
    };
}

/// How dropout's training output is scaled (`train --dropout`).
///
/// Section 4.2 zeroes units with probability p in training and multiplies
/// every output by 1 - p at test time. Inverted dropout (Caffe's, the
/// default) scales the kept units by s = 1 / (1 - p) in training instead,
/// which computes the same test-time function with the next layer's weights
/// W = W' / s of the paper's W', but trains W otherwise: the paper's rule on
/// W', v' = 0.9 v' - d lr W' - lr g', written in W (g = s g') is the
/// update with lr / s^2 and decay d s^2, from N(0, std / s). `Paper` gives
/// the next layer's weights those factors, so the run follows the paper's
/// update exactly while the weights keep the default's meaning (eval,
/// predict and export unchanged).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DropoutRule {
    #[default]
    Inverted,
    Paper,
}

/// How the loader normalises pixels for this config.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Normalize {
    /// Subtract the training mean, keep the 0..255 scale (the paper, section 2).
    Mean,
    /// Subtract the mean and divide by the per-channel standard deviation.
    MeanStd,
}

/// Training defaults that belong to a config (flags override them).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Recipe {
    pub batch: usize,
    pub lr: f32,
    pub momentum: f32,
    pub weight_decay: f32,
    pub epochs: usize,
}

/// Which starting biases a run takes (`train --recipe`).
///
/// Section 5 sets the biases of conv2, conv4, conv5, fc6 and fc7 to 1. On
/// real photos that start blows up in the first steps and then sits at
/// chance (docs/training.md has the measurement): every fc6/fc7 ReLU starts
/// active with an output near 1, so fc8's gradient moves every logit by
/// about lr x 4096 per unit of error, the same way for every image.
/// Caffe's reference AlexNet starts those biases at 0.1 for the same reason
/// (its models/bvlc_alexnet readme); that is the default here.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InitRecipe {
    /// The paper's text: biases of 1.
    Paper,
    /// The paper's recipe with those biases at 0.1.
    #[default]
    Caffe,
}

impl InitRecipe {
    /// The value a bias the paper sets to 1 starts at.
    pub fn one_bias(self) -> f32 {
        match self {
            InitRecipe::Paper => 1.0,
            InitRecipe::Caffe => 0.1,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            InitRecipe::Paper => "paper",
            InitRecipe::Caffe => "caffe",
        }
    }
}

/// The whole network.
#[derive(Clone, Debug, PartialEq)]
pub struct Topology {
    pub name: String,
    /// Input channels and crop size (the network sees crop x crop).
    pub channels: usize,
    pub crop: usize,
    /// Images are stored at image_size x image_size (short side resized,
    /// centre crop) and crops are taken from that.
    pub image_size: usize,
    pub classes: usize,
    /// 2 for the paper's net, 1 for the one-GPU ablation. LRN windows stay
    /// within a tower's channels.
    pub towers: usize,
    pub lrn: LrnParams,
    pub normalize: Normalize,
    /// Standard deviation of the PCA lighting coefficients for training
    /// images (section 4.1: 0.1); 0 turns the noise off.
    pub lighting: f32,
    pub recipe: Recipe,
    pub layers: Vec<Layer>,
}

/// Activation shape of one image, channels x height x width.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chw {
    pub c: usize,
    pub h: usize,
    pub w: usize,
}

impl Chw {
    pub fn len(&self) -> usize {
        self.c * self.h * self.w
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Everything derived from one row of the table for one image.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerShape {
    /// Input as this layer sees it (for fc layers, before flattening).
    pub input: Chw,
    /// Output of the conv/fc op (also after ReLU and LRN).
    pub op_out: Chw,
    /// Output after pooling (== op_out when no pool follows).
    pub out: Chw,
    pub weight_params: usize,
    pub bias_params: usize,
    /// Forward multiply-adds x 2 for the conv/fc op, per image.
    pub flops: u64,
    /// Floats that cross between the towers per image, forward
    /// (each tower sends its half of the input to the other).
    pub exchange_elems: usize,
}

impl Layer {
    pub fn groups(&self) -> usize {
        match self.op {
            Op::Conv { groups, .. } => groups,
            Op::Fc { .. } => 1,
        }
    }
    pub fn out_channels(&self) -> usize {
        match self.op {
            Op::Conv { out, .. } | Op::Fc { out } => out,
        }
    }
    pub fn is_fc(&self) -> bool {
        matches!(self.op, Op::Fc { .. })
    }
}

const PAPER_STD: Init = Init::Normal(0.01);

fn conv(
    name: &'static str,
    out: usize,
    k: usize,
    stride: usize,
    pad: usize,
    groups: usize,
) -> Layer {
    let op = Op::Conv {
        out,
        k,
        stride,
        pad,
        groups,
    };
    layer(name, op, false)
}

/// A fully connected layer sees both towers' inputs, so it is an exchange.
fn fc(name: &'static str, out: usize) -> Layer {
    layer(name, Op::Fc { out }, true)
}

/// A row with the paper's defaults: ReLU, N(0, 0.01), zero bias, nothing after.
fn layer(name: &'static str, op: Op, exchange: bool) -> Layer {
    Layer {
        name,
        op,
        exchange,
        relu: true,
        lrn: false,
        pool: None,
        dropout: 0.0,
        init: PAPER_STD,
        bias: 0.0,
        weight_rule: WeightRule::SAME,
    }
}

const OVERLAP: Pool = Pool { size: 3, stride: 2 };

/// The most classes `with_classes` takes.
pub const MAX_CLASSES: usize = 10_000_000;

impl Topology {
    /// The configs the CLI knows, for help texts and errors.
    pub const NAMES: [&'static str; 3] = ["alexnet", "alexnet-half", "cifar"];

    pub fn by_name(name: &str) -> Result<Topology> {
        match name {
            "alexnet" => Ok(Topology::alexnet()),
            "alexnet-half" => Ok(Topology::alexnet_half()),
            "cifar" => Ok(Topology::cifar()),
            _ => Err(Error::Config(format!(
                "--config: unknown config '{name}'; choose one of: {}",
                Topology::NAMES.join(", ")
            ))),
        }
    }

    /// The paper's network (section 3.5, figure 2), widths given per layer.
    /// `alexnet()` is `alexnet_widths([96, 256, 384, 384, 256, 4096, 4096], 1000)`;
    /// narrower versions keep every structural choice (used by the PyTorch fixtures).
    pub fn alexnet_widths(w: [usize; 7], classes: usize) -> Topology {
        let mut conv1 = conv("conv1", w[0], 11, 4, 0, 1);
        conv1.lrn = true;
        conv1.pool = Some(OVERLAP);
        let mut conv2 = conv("conv2", w[1], 5, 1, 2, 2);
        conv2.lrn = true;
        conv2.pool = Some(OVERLAP);
        conv2.bias = 1.0;
        let mut conv3 = conv("conv3", w[2], 3, 1, 1, 1);
        conv3.exchange = true;
        let mut conv4 = conv("conv4", w[3], 3, 1, 1, 2);
        conv4.bias = 1.0;
        let mut conv5 = conv("conv5", w[4], 3, 1, 1, 2);
        conv5.bias = 1.0;
        conv5.pool = Some(OVERLAP);
        let mut fc6 = fc("fc6", w[5]);
        fc6.dropout = 0.5;
        fc6.bias = 1.0;
        let mut fc7 = fc("fc7", w[6]);
        fc7.dropout = 0.5;
        fc7.bias = 1.0;
        let mut fc8 = fc("fc8", classes);
        fc8.relu = false;
        Topology {
            name: "alexnet".into(),
            channels: 3,
            crop: 227,
            image_size: 256,
            classes,
            towers: 2,
            lrn: LrnParams::PAPER,
            normalize: Normalize::Mean,
            lighting: 0.1,
            // Section 5: batch 128, momentum 0.9, weight decay 5e-4, lr 0.01, ~90 epochs.
            recipe: Recipe {
                batch: 128,
                lr: 0.01,
                momentum: 0.9,
                weight_decay: 5e-4,
                epochs: 90,
            },
            layers: vec![conv1, conv2, conv3, conv4, conv5, fc6, fc7, fc8],
        }
    }

    pub fn alexnet() -> Topology {
        Topology::alexnet_widths([96, 256, 384, 384, 256, 4096, 4096], 1000)
    }

    /// The paper's one-GPU comparison net (section 6.1, footnote): half the
    /// kernels in conv1-conv4, but conv5 and the fully connected layers kept
    /// at full size, all on one tower (no groups, no exchanges).
    pub fn alexnet_half() -> Topology {
        let mut t = Topology::alexnet_widths([48, 128, 192, 192, 256, 4096, 4096], 1000);
        t.name = "alexnet-half".into();
        t.towers = 1;
        for l in &mut t.layers {
            l.exchange = false;
            if let Op::Conv { groups, .. } = &mut l.op {
                *groups = 1;
            }
        }
        t
    }

    /// A small AlexNet-shaped net for 32x32 images (CIFAR-10) that trains on
    /// a CPU in minutes: the same five conv layers with the same groups,
    /// exchanges, ReLU, LRN after conv1/conv2 and overlapping pools, on 28x28
    /// random crops of 32x32 images (as cuda-convnet's CIFAR nets cropped),
    /// He init and zero biases (N(0, 0.01) stays at chance for a long time at
    /// this depth and scale; docs/training.md).
    pub fn cifar() -> Topology {
        let mut t = Topology::alexnet_widths([64, 128, 192, 192, 128, 512, 512], 10);
        t.name = "cifar".into();
        t.crop = 28;
        t.image_size = 32;
        t.normalize = Normalize::MeanStd;
        // cuda-convnet's CIFAR nets used crops and flips only.
        t.lighting = 0.0;
        let shapes = [
            // (k, stride, pad) per conv layer at 28x28 input: 28 -> 13 -> 6 -> 2.
            (5, 1, 2),
            (5, 1, 2),
            (3, 1, 1),
            (3, 1, 1),
            (3, 1, 1),
        ];
        for (l, &(k0, s0, p0)) in t.layers.iter_mut().zip(shapes.iter()) {
            if let Op::Conv { k, stride, pad, .. } = &mut l.op {
                *k = k0;
                *stride = s0;
                *pad = p0;
            }
        }
        for l in &mut t.layers {
            l.init = Init::He;
            l.bias = 0.0;
        }
        t.recipe = Recipe {
            batch: 128,
            lr: 0.02,
            momentum: 0.9,
            weight_decay: 5e-4,
            epochs: 20,
        };
        t
    }

    /// Whether the table has biases the paper starts at 1 (so `--recipe` matters).
    pub fn has_one_biases(&self) -> bool {
        !self.one_bias_layers().is_empty()
    }

    /// The layers whose biases the paper starts at 1 (those `--recipe` sets).
    pub fn one_bias_layers(&self) -> Vec<&'static str> {
        self.layers
            .iter()
            .filter(|l| l.bias == 1.0)
            .map(|l| l.name)
            .collect()
    }

    /// The table with the starting biases of `recipe`: the biases the paper
    /// sets to 1 start at `recipe.one_bias()`.
    pub fn with_init(mut self, recipe: InitRecipe) -> Topology {
        for l in &mut self.layers {
            if l.bias == 1.0 {
                l.bias = recipe.one_bias();
            }
        }
        self
    }

    /// The table trained under `rule`: with `Paper`, each layer that reads a
    /// dropped-out layer's output gets the factors of [`DropoutRule`]
    /// (s = 1 / (1 - p): lr / s^2, decay x s^2, init std / s).
    pub fn with_dropout(mut self, rule: DropoutRule) -> Topology {
        if rule == DropoutRule::Paper {
            for i in 1..self.layers.len() {
                let p = self.layers[i - 1].dropout;
                if p > 0.0 {
                    let s = 1.0 / (1.0 - p);
                    self.layers[i].weight_rule = WeightRule {
                        lr_mult: 1.0 / (s * s),
                        decay_mult: s * s,
                        init_scale: 1.0 / s,
                    };
                }
            }
        }
        self
    }

    /// Ablation: no local response normalisation (section 3.3 reports -1.4% / -1.2%).
    pub fn without_lrn(mut self) -> Topology {
        for l in &mut self.layers {
            l.lrn = false;
        }
        self.name.push_str("+no-lrn");
        self
    }

    /// Ablation: pooling windows of `size` with stride 2 everywhere
    /// (`size` 2 is the non-overlapping pooling of section 3.4).
    pub fn with_pool_size(mut self, size: usize) -> Result<Topology> {
        if !(2..=3).contains(&size) {
            return Err(Error::Config(format!(
                "--pool: {size} is not supported; use 3 (overlapping, the paper) or 2 (non-overlapping)"
            )));
        }
        for l in &mut self.layers {
            if let Some(p) = &mut l.pool {
                p.size = size;
            }
        }
        if size != 3 {
            self.name.push_str(&format!("+pool{size}"));
        }
        self.validate()?;
        Ok(self)
    }

    /// No dropout anywhere (for comparisons that must be deterministic).
    pub fn without_dropout(mut self) -> Topology {
        for l in &mut self.layers {
            l.dropout = 0.0;
        }
        self
    }

    /// The same network with `classes` outputs in the last layer (data sets
    /// other than ILSVRC's 1000 or CIFAR's 10).
    pub fn with_classes(mut self, classes: usize) -> Result<Topology> {
        if classes < 2 {
            return Err(Error::Config(format!(
                "{classes} classes: a classifier needs at least 2"
            )));
        }
        // Far past any data set (ImageNet's full release has 21,841), and
        // low enough that every count of the last layer fits 64 bits.
        if classes > MAX_CLASSES {
            return Err(Error::Config(format!(
                "{classes} classes: more than the {MAX_CLASSES} a last layer may have"
            )));
        }
        if let Some(Layer {
            op: Op::Fc { out }, ..
        }) = self.layers.last_mut()
        {
            *out = classes;
        } else {
            return Err(Error::Config(format!(
                "config {}: the last layer is not fully connected",
                self.name
            )));
        }
        self.classes = classes;
        self.validate()?;
        Ok(self)
    }

    /// Output channels of a layer on each tower: equal halves, except an fc
    /// layer with an odd width, whose first tower takes one more.
    pub fn tower_split(&self, out: usize) -> Vec<usize> {
        let base = out / self.towers;
        (0..self.towers)
            .map(|t| base + usize::from(t < out % self.towers))
            .collect()
    }

    /// Total parameter count.
    pub fn param_count(&self) -> Result<usize> {
        Ok(self
            .shapes()?
            .iter()
            .map(|s| s.weight_params + s.bias_params)
            .sum())
    }

    /// Check the table is consistent: sizes fit, groups divide channels,
    /// exchanges sit exactly where a tower needs the other tower's maps.
    pub fn validate(&self) -> Result<()> {
        self.shapes().map(|_| ())
    }

    /// Derive every layer's shapes, parameter counts, FLOPs and exchanges.
    pub fn shapes(&self) -> Result<Vec<LayerShape>> {
        let bad = |msg: String| Err(Error::Config(format!("config {}: {msg}", self.name)));
        if self.towers != 1 && self.towers != 2 {
            return bad(format!("towers must be 1 or 2, not {}", self.towers));
        }
        if self.layers.is_empty() {
            return bad("no layers".into());
        }
        if self.crop > self.image_size {
            return bad(format!(
                "crop {} is larger than the stored image size {}",
                self.crop, self.image_size
            ));
        }
        let mut input = Chw {
            c: self.channels,
            h: self.crop,
            w: self.crop,
        };
        let mut out = Vec::with_capacity(self.layers.len());
        for (i, l) in self.layers.iter().enumerate() {
            let g = l.groups();
            let c_out = l.out_channels();
            // Grouped layers need equal halves; an fc layer may split unevenly
            // (tower 0 takes the larger half), so any class count works.
            if !l.is_fc() && !c_out.is_multiple_of(self.towers) {
                return bad(format!(
                    "{}: {c_out} outputs do not split over {} towers",
                    l.name, self.towers
                ));
            }
            // Dropout masks the layer's output in place; with LRN last,
            // that is LRN's output, which its backward reads as is.
            if l.lrn && l.pool.is_none() && l.dropout > 0.0 {
                return bad(format!(
                    "{}: dropout right after LRN, with no pooling between, is not supported; pool after the LRN or drop the dropout",
                    l.name
                ));
            }
            // A tower-local layer (groups == towers) must not exchange; a full
            // layer after the first must, when there are two towers.
            let needs_exchange = self.towers == 2 && i > 0 && g == 1;
            if l.exchange != needs_exchange {
                return bad(format!(
                    "{}: exchange is {} but groups={g} with {} towers {} the other tower's maps",
                    l.name,
                    l.exchange,
                    self.towers,
                    if needs_exchange {
                        "needs"
                    } else {
                        "does not need"
                    }
                ));
            }
            if g != 1 && g != self.towers {
                return bad(format!(
                    "{}: groups {g} must be 1 or the tower count",
                    l.name
                ));
            }
            let (op_out, weight_params, macs) = match l.op {
                Op::Conv {
                    out: co,
                    k,
                    stride,
                    pad,
                    groups,
                } => {
                    if !input.c.is_multiple_of(groups) || !co.is_multiple_of(groups) {
                        return bad(format!(
                            "{}: groups {groups} must divide {} inputs and {co} outputs",
                            l.name, input.c
                        ));
                    }
                    if stride == 0 || k == 0 || input.h + 2 * pad < k || input.w + 2 * pad < k {
                        return bad(format!(
                            "{}: a {k}x{k} kernel does not fit a {}x{} input",
                            l.name, input.h, input.w
                        ));
                    }
                    let o = Chw {
                        c: co,
                        h: (input.h + 2 * pad - k) / stride + 1,
                        w: (input.w + 2 * pad - k) / stride + 1,
                    };
                    let per_out = (input.c / groups) * k * k;
                    let (Some(params), Some(macs)) =
                        (co.checked_mul(per_out), o.len().checked_mul(per_out))
                    else {
                        return bad(format!(
                            "{}: {co} outputs overflow the address space",
                            l.name
                        ));
                    };
                    (o, params, macs as u64)
                }
                Op::Fc { out: co } => {
                    let o = Chw { c: co, h: 1, w: 1 };
                    let Some(params) = co.checked_mul(input.len()) else {
                        return bad(format!(
                            "{}: {co} outputs overflow the address space",
                            l.name
                        ));
                    };
                    (o, params, params as u64)
                }
            };
            let pooled = match l.pool {
                Some(p) => {
                    if p.stride == 0 || op_out.h < p.size || op_out.w < p.size {
                        return bad(format!(
                            "{}: pool {} does not fit {}x{}",
                            l.name, p.size, op_out.h, op_out.w
                        ));
                    }
                    Chw {
                        c: op_out.c,
                        h: (op_out.h - p.size) / p.stride + 1,
                        w: (op_out.w - p.size) / p.stride + 1,
                    }
                }
                None => op_out,
            };
            out.push(LayerShape {
                input,
                op_out,
                out: pooled,
                weight_params,
                bias_params: c_out,
                flops: 2 * macs,
                exchange_elems: if l.exchange { input.len() } else { 0 },
            });
            input = pooled;
        }
        if input.len() != self.classes {
            return bad(format!(
                "the last layer has {} outputs for {} classes",
                input.len(),
                self.classes
            ));
        }
        Ok(out)
    }

    /// Floats per image the towers exchange to assemble the logits for the
    /// softmax: each tower sends its half of the last layer's outputs (0 with one tower).
    pub fn logits_exchange_elems(&self) -> usize {
        if self.towers == 2 {
            self.classes
        } else {
            0
        }
    }

    /// Bytes that cross between the towers in one training step of `batch`
    /// images: at each exchange the input halves go across forward and their
    /// gradients come back backward; the logits go across forward only (both
    /// towers compute the softmax, each keeps the gradient of its own half).
    pub fn exchange_bytes_per_step(&self, batch: usize) -> Result<u64> {
        let per_image: usize = self
            .shapes()?
            .iter()
            .map(|s| 2 * s.exchange_elems)
            .sum::<usize>()
            + self.logits_exchange_elems();
        Ok((per_image * batch * std::mem::size_of::<f32>()) as u64)
    }
}
