//! One layer's state on a backend, shared by both executors (`net` on one
//! device, `towers` on two): its geometry (`Geom`), its parameters with
//! their gradients and momentum (`Param`), and the buffers of its op and of
//! the ReLU, LRN, pooling and dropout that follow it (`Stage`), with the
//! forward and backward of that chain. The paper's SGD over a list of
//! parameters and the loss-scale check of their gradients sit here too.
use super::laps::{Laps, Part};
use super::topology::{Chw, Init, Layer, LayerShape, Op, Topology};
use crate::backend::{Backend, ConvGeom, LinearGeom, LrnParams, Nchw, PoolGeom, SgdParams};
use crate::error::Result;
use crate::rng::Rng;
use rayon::prelude::*;

#[derive(Clone, Copy, Debug)]
pub(super) enum Geom {
    Conv(ConvGeom),
    Fc(LinearGeom),
}

impl Geom {
    /// The op of layer `l` on `n` images of `input`, with `out` output
    /// channels in `groups` groups (a tower computes its share ungrouped).
    pub(super) fn of(l: &Layer, n: usize, input: Chw, out: usize, groups: usize) -> Geom {
        match l.op {
            Op::Conv { k, stride, pad, .. } => Geom::Conv(ConvGeom {
                n,
                c_in: input.c,
                h: input.h,
                w: input.w,
                c_out: out,
                k,
                stride,
                pad,
                groups,
            }),
            Op::Fc { .. } => Geom::Fc(LinearGeom {
                n,
                inp: input.len(),
                out,
            }),
        }
    }
}

/// One layer's weights, gradients and momentum (all persistent).
pub(super) struct Param<B: Backend> {
    pub(super) w: B::Buf,
    pub(super) b: B::Buf,
    pub(super) dw: B::Buf,
    pub(super) db: B::Buf,
    pub(super) vw: B::Buf,
    pub(super) vb: B::Buf,
}

impl<B: Backend> Param<B> {
    /// A layer's parameters with these initial values (f32 masters on every
    /// backend), zero gradients and momentum.
    pub(super) fn new(be: &B, w: &[f32], b: &[f32]) -> Result<Self> {
        let mut p = Self::zeroed(be, w.len(), b.len())?;
        be.upload(w, &mut p.w)?;
        be.upload(b, &mut p.b)?;
        Ok(p)
    }

    /// A layer's parameters, all zero (`alloc_param` zero-fills). Momentum
    /// is f32 alone: only the update reads it, never a 16-bit op.
    pub(super) fn zeroed(be: &B, weights: usize, biases: usize) -> Result<Self> {
        Ok(Param {
            w: be.alloc_param(weights)?,
            b: be.alloc_param(biases)?,
            dw: be.alloc_param(weights)?,
            db: be.alloc_param(biases)?,
            vw: be.alloc_f32(weights)?,
            vb: be.alloc_f32(biases)?,
        })
    }
}

/// Layer `i`'s initial weights and biases, drawn from the table's init rule
/// with `seed` (the same numbers on every backend and for every tower split).
pub(super) fn initial_values(
    topo: &Topology,
    shapes: &[LayerShape],
    i: usize,
    seed: u64,
) -> (Vec<f32>, Vec<f32>) {
    let (l, s) = (&topo.layers[i], &shapes[i]);
    let fan_in = s.weight_params / l.out_channels();
    let std = match l.init {
        Init::Normal(std) => std as f64,
        Init::He => (2.0 / fan_in as f64).sqrt(),
    } * l.weight_rule.init_scale as f64;
    // Weight j is the stream's j-th normal (two draws each), so the pieces
    // drawn in parallel are the sequential stream: 61M normals take about
    // 2 s on one core.
    let rng = Rng::derive(seed, i as u64);
    let w = (0..s.weight_params as u64)
        .into_par_iter()
        .map(|j| (rng.at(2 * j).normal() * std) as f32)
        .collect();
    (w, vec![l.bias; s.bias_params])
}

pub(super) struct LrnBufs<B: Backend> {
    s: Nchw,
    out: B::Buf,
    scale: B::Buf,
    grad: B::Buf,
}

pub(super) struct PoolBufs<B: Backend> {
    g: PoolGeom,
    out: B::Buf,
    argmax: B::IdxBuf,
    grad: B::Buf,
}

/// The pooling after layer `l` on `n` images of its op's output, if any.
fn pool_geom(l: &Layer, n: usize, op_out: Chw) -> Option<PoolGeom> {
    l.pool.map(|p| PoolGeom {
        n,
        c: op_out.c,
        h: op_out.h,
        w: op_out.w,
        size: p.size,
        stride: p.stride,
    })
}

/// The elements (f32 or u32) of the buffers `Stage::new` makes for layer
/// `l` on `n` images whose op output is `op_out` per image.
pub(super) fn stage_elements(l: &Layer, n: usize, op_out: Chw) -> usize {
    let y = n * op_out.len();
    let pooled = pool_geom(l, n, op_out).map(|g| g.y_len());
    let out = pooled.unwrap_or(y);
    // y and dy; LRN's out, scale and grad; pooling's out, argmax and grad;
    // the dropout mask.
    2 * y
        + if l.lrn { 3 * y } else { 0 }
        + 3 * pooled.unwrap_or(0)
        + if l.dropout > 0.0 { out } else { 0 }
}

/// The elements of `stage_elements` that are u32 indices: pooling's argmax.
pub(super) fn stage_index_elements(l: &Layer, n: usize, op_out: Chw) -> usize {
    pool_geom(l, n, op_out).map_or(0, |g| g.y_len())
}

/// One layer's activations for the current batch size.
pub(super) struct Stage<B: Backend> {
    geom: Geom,
    /// conv/fc output, ReLU applied in place.
    y: B::Buf,
    dy: B::Buf,
    lrn: Option<LrnBufs<B>>,
    pool: Option<PoolBufs<B>>,
    /// (probability, mask) when this layer has dropout.
    dropout: Option<(f32, B::Buf)>,
}

impl<B: Backend> Stage<B> {
    /// The buffers of layer `l` computing `geom`, whose op output is
    /// `op_out` per image. LRN runs within `lrn_parts` equal channel groups:
    /// [n, c, h, w] viewed as [n * parts, c / parts, h, w].
    pub(super) fn new(
        be: &B,
        l: &Layer,
        geom: Geom,
        op_out: Chw,
        lrn_parts: usize,
    ) -> Result<Self> {
        let n = match geom {
            Geom::Conv(g) => g.n,
            Geom::Fc(g) => g.n,
        };
        let y_len = n * op_out.len();
        let lrn = if l.lrn {
            Some(LrnBufs {
                s: Nchw {
                    n: n * lrn_parts,
                    c: op_out.c / lrn_parts,
                    h: op_out.h,
                    w: op_out.w,
                },
                out: be.alloc(y_len)?,
                scale: be.alloc(y_len)?,
                grad: be.alloc(y_len)?,
            })
        } else {
            None
        };
        let pool = match pool_geom(l, n, op_out) {
            Some(g) => Some(PoolBufs {
                g,
                out: be.alloc(g.y_len())?,
                argmax: be.alloc_idx(g.y_len())?,
                grad: be.alloc(g.y_len())?,
            }),
            None => None,
        };
        let out_len = pool.as_ref().map_or(y_len, |p| p.g.y_len());
        let dropout = if l.dropout > 0.0 {
            Some((l.dropout, be.alloc(out_len)?))
        } else {
            None
        };
        Ok(Stage {
            geom,
            y: be.alloc(y_len)?,
            dy: be.alloc(y_len)?,
            lrn,
            pool,
            dropout,
        })
    }

    /// The op, ReLU, LRN, pooling and (with a seed: training) dropout of
    /// layer `l` on `input`.
    pub(super) fn forward(
        &mut self,
        be: &B,
        (l, lrn): (&Layer, &LrnParams),
        input: &B::Buf,
        p: &Param<B>,
        dropout_seed: Option<u64>,
        laps: &mut Laps,
    ) -> Result<()> {
        // Bias and ReLU in one pass where the backend fuses them.
        match (self.geom, l.relu) {
            (Geom::Conv(g), true) => {
                be.conv2d_bias_relu_forward(&g, input, &p.w, &p.b, &mut self.y)?
            }
            (Geom::Conv(g), false) => be.conv2d_forward(&g, input, &p.w, &p.b, &mut self.y)?,
            (Geom::Fc(g), true) => {
                be.linear_bias_relu_forward(&g, input, &p.w, &p.b, &mut self.y)?
            }
            (Geom::Fc(g), false) => be.linear_forward(&g, input, &p.w, &p.b, &mut self.y)?,
        }
        laps.lap(be, Part::Forward)?;
        if let Some(lb) = &mut self.lrn {
            be.lrn_forward(lrn, &lb.s, &self.y, &mut lb.out, &mut lb.scale)?;
            laps.lap(be, Part::Lrn)?;
        }
        if let Some(pl) = &mut self.pool {
            let src = match &self.lrn {
                Some(lb) => &lb.out,
                None => &self.y,
            };
            be.max_pool_forward(&pl.g, src, &mut pl.out, &mut pl.argmax)?;
            laps.lap(be, Part::Pool)?;
        }
        if let Some(seed) = dropout_seed {
            if let Some((prob, mut mask)) = self.dropout.take() {
                let r = be.dropout_forward(prob, seed, self.out_mut(), &mut mask);
                self.dropout = Some((prob, mask));
                r?;
                laps.lap(be, Part::Dropout)?;
            }
        }
        Ok(())
    }

    /// From the gradient of this layer's output (`out_grad_mut`) back through
    /// dropout (when `train`), pooling, LRN and ReLU to `dy`, then the
    /// parameter gradients of `p` (`input` is what the forward read). The
    /// input's gradient is `input_grad`'s.
    pub(super) fn backward(
        &mut self,
        be: &B,
        (l, lrn): (&Layer, &LrnParams),
        input: &B::Buf,
        p: &mut Param<B>,
        train: bool,
        laps: &mut Laps,
    ) -> Result<()> {
        self.backward_act(be, l, lrn, train, laps)?;
        self.backward_params(be, input, p, laps)
    }

    /// The first half of `backward`: the output's gradient back to `dy`.
    /// `input_grad` and `backward_params` both start from it and do not
    /// depend on each other (the towers send the first while the second runs).
    pub(super) fn backward_act(
        &mut self,
        be: &B,
        l: &Layer,
        lrn: &LrnParams,
        train: bool,
        laps: &mut Laps,
    ) -> Result<()> {
        if train {
            if let Some((prob, mask)) = self.dropout.take() {
                let r = be.dropout_backward(&mask, self.out_grad_mut());
                self.dropout = Some((prob, mask));
                r?;
                laps.lap(be, Part::DropoutBackward)?;
            }
        }
        if let Some(pl) = &self.pool {
            let dst = match &mut self.lrn {
                Some(lb) => &mut lb.grad,
                None => &mut self.dy,
            };
            be.max_pool_backward(&pl.g, &pl.grad, &pl.argmax, dst)?;
            laps.lap(be, Part::PoolBackward)?;
        }
        if let Some(lb) = &self.lrn {
            be.lrn_backward(
                lrn,
                &lb.s,
                &self.y,
                &lb.out,
                &lb.scale,
                &lb.grad,
                &mut self.dy,
            )?;
            laps.lap(be, Part::LrnBackward)?;
        }
        if l.relu {
            be.relu_backward(&self.y, &mut self.dy)?;
            laps.lap(be, Part::ReluBackward)?;
        }
        Ok(())
    }

    /// The second half of `backward`: `p`'s weight and bias gradients.
    pub(super) fn backward_params(
        &self,
        be: &B,
        input: &B::Buf,
        p: &mut Param<B>,
        laps: &mut Laps,
    ) -> Result<()> {
        match self.geom {
            Geom::Conv(g) => be.conv2d_backward_bias(&g, &self.dy, &mut p.db)?,
            Geom::Fc(g) => be.linear_backward_bias(&g, &self.dy, &mut p.db)?,
        }
        laps.lap(be, Part::BackwardBias)?;
        match self.geom {
            Geom::Conv(g) => be.conv2d_backward_filter(&g, input, &self.dy, &mut p.dw)?,
            Geom::Fc(g) => be.linear_backward_weight(&g, input, &self.dy, &mut p.dw)?,
        }
        laps.lap(be, Part::BackwardFilter)
    }

    /// The gradient of this layer's input, from `dy` (after `backward`).
    pub(super) fn input_grad(
        &self,
        be: &B,
        w: &B::Buf,
        dx: &mut B::Buf,
        laps: &mut Laps,
    ) -> Result<()> {
        match self.geom {
            Geom::Conv(g) => be.conv2d_backward_data(&g, w, &self.dy, dx)?,
            Geom::Fc(g) => be.linear_backward_data(&g, w, &self.dy, dx)?,
        }
        laps.lap(be, Part::BackwardData)
    }

    pub(super) fn out(&self) -> &B::Buf {
        match (&self.pool, &self.lrn) {
            (Some(p), _) => &p.out,
            (None, Some(l)) => &l.out,
            (None, None) => &self.y,
        }
    }
    pub(super) fn out_mut(&mut self) -> &mut B::Buf {
        match (&mut self.pool, &mut self.lrn) {
            (Some(p), _) => &mut p.out,
            (None, Some(l)) => &mut l.out,
            (None, None) => &mut self.y,
        }
    }
    pub(super) fn out_grad_mut(&mut self) -> &mut B::Buf {
        match (&mut self.pool, &mut self.lrn) {
            (Some(p), _) => &mut p.grad,
            (None, Some(l)) => &mut l.grad,
            (None, None) => &mut self.dy,
        }
    }
}

/// Divide every gradient of `params` by the loss scale (times `inv`), with
/// one overflow read; false when any gradient is then not finite.
pub(super) fn unscale_all<B: Backend>(be: &B, params: &mut [Param<B>], inv: f32) -> Result<bool> {
    let mut grads: Vec<&mut B::Buf> = Vec::with_capacity(2 * params.len());
    for p in params {
        grads.push(&mut p.dw);
        grads.push(&mut p.db);
    }
    be.unscale_check_all(inv, &mut grads)
}

/// The paper's update on every parameter of `params` (one per row of
/// `layers`); weight decay on the weights, not the biases
/// (docs/training.md); each layer's weights under its `weight_rule`.
pub(super) fn sgd_all<B: Backend>(
    be: &B,
    params: &mut [Param<B>],
    layers: &[Layer],
    hp: &SgdParams,
    laps: &mut Laps,
) -> Result<()> {
    let no_decay = SgdParams {
        weight_decay: 0.0,
        ..*hp
    };
    for (i, (p, l)) in params.iter_mut().zip(layers).enumerate() {
        let r = l.weight_rule;
        let weights = SgdParams {
            lr: hp.lr * r.lr_mult,
            weight_decay: hp.weight_decay * r.decay_mult,
            ..*hp
        };
        laps.at(Some(i));
        be.sgd_update(&weights, &mut p.w, &p.dw, &mut p.vw)?;
        be.sgd_update(&no_decay, &mut p.b, &p.db, &mut p.vb)?;
        laps.lap(be, Part::Sgd)?;
    }
    Ok(())
}
