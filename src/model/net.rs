//! Runs the topology table on one backend as grouped ops: forward, backward
//! and the paper's SGD step, and each training step's loss and top-1 hits
//! recorded in a buffer on the device for the trainer to read in groups.
//! Every buffer is derived from the table; nothing here restates a layer.
//! Parameters use PyTorch's names and layouts
//! (conv1.weight [out, in/groups, k, k], fc6.weight [out, in] with the input
//! flattened in C, H, W order), so fixtures and exports line up.
use super::laps::{Lap, Laps, Part};
use super::stage::{
    initial_values, sgd_all, stage_elements, stage_index_elements, unscale_all, Geom, Param, Stage,
};
use super::topology::{LayerShape, Op, Topology};
use crate::backend::{Backend, SgdParams};
use crate::error::{check_len, Error, Result};
use crate::model::loss_scale::LossScale;
use crate::model::step::{StepMetrics, STEP_SLOTS};
use crate::rng::hash_u64;

/// Input buffers a `Network` keeps on `be`: only a backend with asynchronous
/// uploads (pinned host memory) gains from a second one; the CPU keeps one.
pub fn input_buffers<B: Backend>(be: &B) -> usize {
    if be.host_alloc().is_some() {
        2
    } else {
        1
    }
}

/// The elements (f32 or u32) of the buffers a `Network` of `topo` holds for
/// batches of `n`, with `inputs` input buffers (`input_buffers`): each
/// layer's parameters with their gradients and momentum, each stage's
/// activations, the input, the labels, the probabilities, the loss and the
/// step metrics.
pub fn buffer_elements(topo: &Topology, n: usize, inputs: usize) -> Result<u64> {
    let shapes = topo.shapes()?;
    let params: usize = shapes
        .iter()
        .map(|s| 3 * (s.weight_params + s.bias_params))
        .sum();
    let stages: usize = topo
        .layers
        .iter()
        .zip(&shapes)
        .map(|(l, s)| stage_elements(l, n, s.op_out))
        .sum();
    let x = inputs * n * topo.channels * topo.crop * topo.crop;
    let results = n + n * topo.classes + 1 + 2 * STEP_SLOTS;
    Ok((params + stages + x + results) as u64)
}

/// The elements of `buffer_elements` that are u32 indices, 4 bytes on
/// every backend: the labels and pooling's argmax.
pub fn index_elements(topo: &Topology, n: usize) -> Result<u64> {
    let shapes = topo.shapes()?;
    let argmax: usize = (topo.layers.iter().zip(&shapes))
        .map(|(l, s)| stage_index_elements(l, n, s.op_out))
        .sum();
    Ok((n + argmax) as u64)
}

/// Training applies dropout; evaluation does not (inverted dropout needs no
/// rescaling at test time; the paper's "multiply by 0.5" is the same in expectation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Train,
    Eval,
}

/// The whole network on one device.
pub struct Network<'a, B: Backend> {
    be: &'a B,
    topo: Topology,
    shapes: Vec<LayerShape>,
    params: Vec<Param<B>>,
    stages: Vec<Stage<B>>,
    /// Batch size the stages are allocated for.
    n: usize,
    /// The input batch. A GPU gets two, used in turn: the next batch's copy
    /// then waits only for the step before last (which read the other one),
    /// so it overlaps the current step's backward pass instead of following
    /// it (conv1's filter gradient, the last op of backward, reads the input).
    x: [B::Buf; 2],
    /// Which of `x` holds the current batch.
    x_cur: usize,
    labels: B::IdxBuf,
    probs: B::Buf,
    /// The last forward's mean loss (one float), left on the device.
    loss: B::Buf,
    /// (loss, top-1 hits) of up to `STEP_SLOTS` training steps, recorded on
    /// the device and read back by the trainer in one go.
    metrics: B::Buf,
    /// The dropout seed: with the step it fixes every mask.
    seed: u64,
    /// Training steps taken; with `seed` it fixes every dropout mask.
    step: u64,
    /// Whether the last forward ran in training mode (backward needs it).
    last_mode: Option<Mode>,
    /// Dynamic loss scaling (16-bit training); None trains unscaled.
    loss_scale: Option<LossScale>,
    /// Whether the last `sgd_step` was skipped for an overflowed gradient.
    last_skipped: bool,
    /// The op-by-op clock (`bench-step --per-layer`); off unless asked for.
    laps: Laps,
}

impl<'a, B: Backend> Network<'a, B> {
    /// Build the network for batches of up to `batch` images and draw the
    /// initial weights from the table's init rules with `seed`.
    pub fn new(be: &'a B, topo: &Topology, batch: usize, seed: u64) -> Result<Self> {
        Self::build(be, topo, batch, seed, true)
    }

    /// The network with every weight zero, for a caller that sets them all
    /// next (from a checkpoint): drawing the `alexnet` config's 61M normals
    /// costs about 2 s on one core, more than reading the checkpoint.
    pub fn zeroed(be: &'a B, topo: &Topology, batch: usize) -> Result<Self> {
        Self::build(be, topo, batch, 0, false)
    }

    fn build(be: &'a B, topo: &Topology, batch: usize, seed: u64, draw: bool) -> Result<Self> {
        let shapes = topo.shapes()?;
        if batch == 0 {
            return Err(Error::Config("--batch must be at least 1".into()));
        }
        let mut params = Vec::with_capacity(shapes.len());
        for (i, s) in shapes.iter().enumerate() {
            params.push(match draw {
                true => {
                    let (w, b) = initial_values(topo, &shapes, i, seed);
                    Param::new(be, &w, &b)?
                }
                false => Param::zeroed(be, s.weight_params, s.bias_params)?,
            });
        }
        let mut net = Network {
            be,
            topo: topo.clone(),
            shapes,
            params,
            stages: Vec::new(),
            n: 0,
            x: [be.alloc(0)?, be.alloc(0)?],
            x_cur: 0,
            labels: be.alloc_idx(0)?,
            probs: be.alloc(0)?,
            loss: be.alloc_f32(1)?,
            metrics: be.alloc_f32(2 * STEP_SLOTS)?,
            seed,
            step: 0,
            last_mode: None,
            loss_scale: None,
            last_skipped: false,
            laps: Laps::default(),
        };
        net.resize(batch)?;
        Ok(net)
    }

    pub fn topology(&self) -> &Topology {
        &self.topo
    }

    pub fn batch(&self) -> usize {
        self.n
    }

    /// Bytes copied between devices per step: none, on one device.
    pub fn exchanged_bytes(&self) -> u64 {
        0
    }

    /// Draw dropout masks from `seed` from now on (data-parallel replicas
    /// each take their own; the weights were drawn at `new`).
    pub fn set_dropout_seed(&mut self, seed: u64) {
        self.seed = seed;
    }

    pub fn steps(&self) -> u64 {
        self.step
    }

    /// Allocate activations for batches of exactly `n` images.
    fn resize(&mut self, n: usize) -> Result<()> {
        if n == self.n {
            return Ok(());
        }
        self.release()?;
        let be = self.be;
        let mut stages = Vec::with_capacity(self.shapes.len());
        for (l, s) in self.topo.layers.iter().zip(&self.shapes) {
            let geom = Geom::of(l, n, s.input, l.out_channels(), l.groups());
            // Each tower normalises its own channels (Topology::towers).
            stages.push(Stage::new(be, l, geom, s.op_out, self.topo.towers)?);
        }
        self.stages = stages;
        let x_len = n * self.topo.channels * self.topo.crop * self.topo.crop;
        let second = if input_buffers(be) == 2 { x_len } else { 0 };
        self.x = [be.alloc(x_len)?, be.alloc(second)?];
        self.x_cur = 0;
        self.labels = be.alloc_idx(n)?;
        self.probs = be.alloc(n * self.topo.classes)?;
        self.n = n;
        Ok(())
    }

    /// Free the activations before others are sized, as `CudaBackend::ensure`
    /// frees scratch: a device then never holds two batch sizes' buffers at
    /// once (a validation's short last batch beside the full batch's would
    /// go past the memory check's plan). Until `resize` ends, no batch size.
    fn release(&mut self) -> Result<()> {
        let be = self.be;
        self.n = 0;
        self.last_mode = None;
        self.stages.clear();
        self.x = [be.alloc(0)?, be.alloc(0)?];
        self.labels = be.alloc_idx(0)?;
        self.probs = be.alloc(0)?;
        Ok(())
    }

    /// Forward a batch (NCHW f32, `labels.len()` images); returns the mean
    /// cross-entropy loss. The batch may be smaller than the one the network
    /// was built for (the last batch of an epoch).
    pub fn forward(&mut self, x: &[f32], labels: &[u32], mode: Mode) -> Result<f32> {
        self.forward_queued(x, labels, mode)?;
        self.last_loss()
    }

    /// The last forward's mean loss, read from the device (waits for it).
    pub fn last_loss(&self) -> Result<f32> {
        if self.last_mode.is_none() {
            return Err(no_forward("last_loss"));
        }
        let mut loss = [0.0f32];
        self.be.download(&self.loss, &mut loss)?;
        Ok(loss[0])
    }

    /// `forward` without reading the loss back: it stays on the device for
    /// `record_step`, so a GPU need not finish the step first.
    pub fn forward_queued(&mut self, x: &[f32], labels: &[u32], mode: Mode) -> Result<()> {
        let n = check_batch(&self.topo, x, labels)?;
        self.resize(n)?;
        let be = self.be;
        if be.buf_len(&self.x[1]) > 0 {
            self.x_cur ^= 1;
        }
        self.laps.start(be)?;
        self.laps.at(None);
        be.upload(x, &mut self.x[self.x_cur])?;
        be.upload_idx(labels, &mut self.labels)?;
        self.laps.lap(be, Part::Upload)?;
        for i in 0..self.stages.len() {
            let (done, rest) = self.stages.split_at_mut(i);
            let input = if i == 0 {
                &self.x[self.x_cur]
            } else {
                done[i - 1].out()
            };
            // One dropout stream per (step, layer): masks replay from the seed.
            let seed =
                (mode == Mode::Train).then(|| hash_u64(self.seed, self.step * 64 + i as u64));
            let l = &self.topo.layers[i];
            self.laps.at(Some(i));
            let p = &self.params[i];
            rest[0].forward(be, (l, &self.topo.lrn), input, p, seed, &mut self.laps)?;
        }
        self.laps.at(None);
        let logits = self.stages.last().map(|s| s.out()).ok_or(Error::Shape {
            op: "forward",
            detail: "no layers".into(),
        })?;
        be.softmax_xent_forward_into(
            n,
            self.topo.classes,
            logits,
            &self.labels,
            &mut self.probs,
            &mut self.loss,
        )?;
        self.laps.lap(be, Part::Loss)?;
        self.last_mode = Some(mode);
        Ok(())
    }

    /// The last forward's mean loss and top-1 hits into slot `slot` of the
    /// device's step-metrics buffer (no wait).
    pub fn record_step(&mut self, slot: usize) -> Result<()> {
        if self.last_mode.is_none() {
            return Err(no_forward("record_step"));
        }
        self.be.record_step_metrics(
            self.n,
            self.topo.classes,
            &self.probs,
            &self.labels,
            &self.loss,
            slot,
            &mut self.metrics,
        )
    }

    /// The first `n` slots of the step-metrics buffer (one download).
    pub fn read_steps(&mut self, n: usize) -> Result<Vec<StepMetrics>> {
        read_slots(self.be, &self.metrics, n)
    }

    /// Slots of the step-metrics buffer.
    pub fn step_slots(&self) -> usize {
        STEP_SLOTS
    }

    /// Gradients of the last forward's loss with respect to every parameter.
    pub fn backward(&mut self) -> Result<()> {
        self.backward_begin()?;
        for i in (0..self.stages.len()).rev() {
            self.backward_layer(i)?;
        }
        Ok(())
    }

    /// The first part of `backward`: the loss's gradient of the logits. Then
    /// `backward_layer` for each layer from the last down (data parallelism
    /// reduces a layer's gradients as soon as every replica has them).
    pub fn backward_begin(&mut self) -> Result<()> {
        if self.last_mode.is_none() {
            return Err(Error::Shape {
                op: "backward",
                detail: "backward called without a forward pass".into(),
            });
        }
        let be = self.be;
        let (n, classes) = (self.n, self.topo.classes);
        let last = self.stages.len() - 1;
        self.laps.at(None);
        match &self.loss_scale {
            Some(ls) => be.softmax_xent_backward_scaled(
                n,
                classes,
                &self.probs,
                &self.labels,
                ls.scale,
                self.stages[last].out_grad_mut(),
            ),
            None => be.softmax_xent_backward(
                n,
                classes,
                &self.probs,
                &self.labels,
                self.stages[last].out_grad_mut(),
            ),
        }?;
        self.laps.lap(be, Part::LossBackward)
    }

    /// Layer `i`'s parameter gradients and its input's gradient (layers
    /// above it must be done).
    pub fn backward_layer(&mut self, i: usize) -> Result<()> {
        let mode = self.last_mode.ok_or(Error::Shape {
            op: "backward",
            detail: "backward called without a forward pass".into(),
        })?;
        if i >= self.stages.len() {
            return Err(Error::Shape {
                op: "backward",
                detail: format!("layer {i} of {}", self.stages.len()),
            });
        }
        let be = self.be;
        let (done, rest) = self.stages.split_at_mut(i);
        let st = &mut rest[0];
        let p = &mut self.params[i];
        let input = if i == 0 {
            &self.x[self.x_cur]
        } else {
            done[i - 1].out()
        };
        let l = &self.topo.layers[i];
        let laps = &mut self.laps;
        laps.at(Some(i));
        st.backward(be, (l, &self.topo.lrn), input, p, mode == Mode::Train, laps)?;
        if i > 0 {
            st.input_grad(be, &p.w, done[i - 1].out_grad_mut(), laps)?;
        }
        Ok(())
    }

    /// Layer `i`'s weight or bias gradient, for a reduction across replicas.
    pub(crate) fn grad_mut(&mut self, i: usize, is_w: bool) -> &mut B::Buf {
        let p = &mut self.params[i];
        if is_w {
            &mut p.dw
        } else {
            &mut p.db
        }
    }

    /// The paper's update (section 5) on every parameter. Weight decay applies
    /// to weights, not biases (docs/training.md says why).
    ///
    /// With loss scaling, the gradients are first divided by the scale; if any
    /// is not finite the update is skipped (`last_step_skipped`) and the scale
    /// lowered. A skipped step still counts as a step (dropout draws a fresh
    /// mask next time, and resume stays exact).
    pub fn sgd_step(&mut self, hp: &SgdParams) -> Result<()> {
        self.last_skipped = false;
        if let Some(ls) = &mut self.loss_scale {
            let finite = unscale_all(self.be, &mut self.params, 1.0 / ls.scale)?;
            self.laps.at(None);
            self.laps.lap(self.be, Part::Unscale)?;
            if !ls.update(finite, self.step + 1, hp.lr)? {
                self.last_skipped = true;
                self.step += 1;
                return Ok(());
            }
        }
        sgd_all(
            self.be,
            &mut self.params,
            &self.topo.layers,
            hp,
            &mut self.laps,
        )?;
        self.step += 1;
        Ok(())
    }

    /// Time every op from now on, each after a wait for the device (on), or
    /// stop (off). Costs the waits; the numbers do not change.
    pub fn time_ops(&mut self, on: bool) {
        self.laps = if on { Laps::on() } else { Laps::default() };
    }

    /// The ops timed since the last call, in the order they ran.
    pub fn take_laps(&mut self) -> Result<Vec<Lap>> {
        self.laps.take(self.be)
    }

    /// Turn dynamic loss scaling on (16-bit training) with this state, or off.
    pub fn set_loss_scale(&mut self, ls: Option<LossScale>) {
        self.loss_scale = ls;
    }

    /// The loss scaler's state, when scaling is on.
    pub fn loss_scale(&self) -> Option<&LossScale> {
        self.loss_scale.as_ref()
    }

    /// Whether the last `sgd_step` skipped its update (a gradient overflowed).
    pub fn last_step_skipped(&self) -> bool {
        self.last_skipped
    }

    /// Softmax probabilities of the last forward, [n, classes].
    pub fn probs(&self) -> Result<Vec<f32>> {
        let mut host = vec![0.0; self.n * self.topo.classes];
        self.be.download(&self.probs, &mut host)?;
        Ok(host)
    }

    /// Logits of the last forward, [n, classes].
    pub fn logits(&self) -> Result<Vec<f32>> {
        let mut host = vec![0.0; self.n * self.topo.classes];
        let last = self.stages.last().ok_or(Error::Shape {
            op: "logits",
            detail: "no layers".into(),
        })?;
        self.be.download(last.out(), &mut host)?;
        Ok(host)
    }

    /// The last forward's output of a hidden layer, one row per image
    /// ([n, values], each row in C, H, W order): `fc6`, `fc7` (after the
    /// ReLU; after an `Eval` forward there is no dropout), `conv1`..`conv5`
    /// (after ReLU, LRN and pooling), `pool1`/`pool2`/`pool5` (the same
    /// output, named for its pool), `fc8` (the logits). See [`activation_layer`].
    pub fn activation(&self, layer: &str) -> Result<Vec<f32>> {
        if self.last_mode.is_none() {
            return Err(no_forward("activation"));
        }
        let i = activation_layer(&self.topo, layer)?;
        let st = &self.stages[i];
        let mut host = vec![0.0; self.be.buf_len(st.out())];
        self.be.download(st.out(), &mut host)?;
        Ok(host)
    }

    /// Parameter names in table order: conv1.weight, conv1.bias, ...
    pub fn param_names(&self) -> Vec<String> {
        param_names(&self.topo)
    }

    /// PyTorch shape of a named parameter.
    pub fn param_shape(&self, name: &str) -> Result<Vec<usize>> {
        param_shape(&self.topo, &self.shapes, name)
    }

    fn lookup(&self, name: &str) -> Result<(usize, bool)> {
        lookup(&self.topo, name)
    }

    fn read(&self, buf: &B::Buf) -> Result<Vec<f32>> {
        let mut host = vec![0.0; self.be.buf_len(buf)];
        self.be.download(buf, &mut host)?;
        Ok(host)
    }

    pub fn param(&self, name: &str) -> Result<Vec<f32>> {
        let (i, is_w) = self.lookup(name)?;
        let p = &self.params[i];
        self.read(if is_w { &p.w } else { &p.b })
    }

    pub fn grad(&self, name: &str) -> Result<Vec<f32>> {
        let (i, is_w) = self.lookup(name)?;
        let p = &self.params[i];
        self.read(if is_w { &p.dw } else { &p.db })
    }

    pub fn momentum(&self, name: &str) -> Result<Vec<f32>> {
        let (i, is_w) = self.lookup(name)?;
        let p = &self.params[i];
        self.read(if is_w { &p.vw } else { &p.vb })
    }

    pub fn set_momentum(&mut self, name: &str, values: &[f32]) -> Result<()> {
        let (i, is_w) = self.lookup(name)?;
        let p = &mut self.params[i];
        let buf = if is_w { &mut p.vw } else { &mut p.vb };
        check_len("set_momentum", name, values.len(), self.be.buf_len(buf))?;
        self.be.upload(values, buf)
    }

    /// Continue a run from a checkpoint: the step count fixes the dropout
    /// masks of the steps to come.
    pub fn set_steps(&mut self, step: u64) {
        self.step = step;
    }

    pub fn set_param(&mut self, name: &str, values: &[f32]) -> Result<()> {
        let (i, is_w) = self.lookup(name)?;
        let p = &mut self.params[i];
        let buf = if is_w { &mut p.w } else { &mut p.b };
        check_len("set_param", name, values.len(), self.be.buf_len(buf))?;
        self.be.upload(values, buf)
    }
}

/// The table row whose output a feature name means (`activation`): a
/// layer's own name, or `poolN` for `convN` when that layer pools.
pub fn activation_layer(topo: &Topology, name: &str) -> Result<usize> {
    let found = topo.layers.iter().position(|l| l.name == name).or_else(|| {
        let conv = name.strip_prefix("pool").map(|k| format!("conv{k}"))?;
        topo.layers
            .iter()
            .position(|l| l.name == conv && l.pool.is_some())
    });
    found.ok_or_else(|| {
        let mut names: Vec<String> = Vec::new();
        // In the order the network computes them: convN, then its poolN.
        for l in &topo.layers {
            names.push(l.name.to_string());
            if l.pool.is_some() {
                if let Some(k) = l.name.strip_prefix("conv") {
                    names.push(format!("pool{k}"));
                }
            }
        }
        Error::Config(format!(
            "--layer: '{name}' is not a layer of config {}; choose one of: {}",
            topo.name,
            names.join(", ")
        ))
    })
}

/// Values per image of the output `activation(name)` returns.
pub fn activation_width(topo: &Topology, name: &str) -> Result<usize> {
    let i = activation_layer(topo, name)?;
    Ok(topo.shapes()?[i].out.len())
}

/// `op` called before any forward pass.
pub(super) fn no_forward(op: &'static str) -> Error {
    Error::Shape {
        op,
        detail: format!("{op} called without a forward pass"),
    }
}

/// The first `n` (loss, hits) pairs of a step-metrics buffer on `be`.
pub(super) fn read_slots<B: Backend>(
    be: &B,
    metrics: &B::Buf,
    n: usize,
) -> Result<Vec<StepMetrics>> {
    let mut host = vec![0.0; be.buf_len(metrics)];
    if 2 * n > host.len() {
        return Err(Error::Shape {
            op: "read_steps",
            detail: format!("{n} steps asked of a buffer of {} slots", host.len() / 2),
        });
    }
    be.download(metrics, &mut host)?;
    Ok(host
        .chunks_exact(2)
        .take(n)
        .map(|p| StepMetrics {
            loss: p[0],
            // A count of 0/1 flags, exact in f32.
            hits: p[1] as usize,
        })
        .collect())
}

/// Parameter names in table order: conv1.weight, conv1.bias, ...
pub(super) fn param_names(topo: &Topology) -> Vec<String> {
    topo.layers
        .iter()
        .flat_map(|l| [format!("{}.weight", l.name), format!("{}.bias", l.name)])
        .collect()
}

/// PyTorch shape of a named parameter.
pub(super) fn param_shape(
    topo: &Topology,
    shapes: &[LayerShape],
    name: &str,
) -> Result<Vec<usize>> {
    let (i, is_w) = lookup(topo, name)?;
    let (l, s) = (&topo.layers[i], &shapes[i]);
    Ok(match (l.op, is_w) {
        (Op::Conv { out, k, groups, .. }, true) => vec![out, s.input.c / groups, k, k],
        (Op::Fc { out }, true) => vec![out, s.input.len()],
        (_, false) => vec![l.out_channels()],
    })
}

/// (layer index, is the weight) of a parameter name, or an error listing the names.
pub(super) fn lookup(topo: &Topology, name: &str) -> Result<(usize, bool)> {
    let unknown = || {
        Error::Config(format!(
            "unknown parameter '{name}'; expected one of {}",
            param_names(topo).join(", ")
        ))
    };
    let (layer, kind) = name.rsplit_once('.').ok_or_else(unknown)?;
    let i = topo
        .layers
        .iter()
        .position(|l| l.name == layer)
        .ok_or_else(unknown)?;
    match kind {
        "weight" => Ok((i, true)),
        "bias" => Ok((i, false)),
        _ => Err(unknown()),
    }
}

/// A batch's size, after checking it is not empty, the input holds `n`
/// images of the table's shape and every label names a class.
pub(super) fn check_batch(topo: &Topology, x: &[f32], labels: &[u32]) -> Result<usize> {
    let n = labels.len();
    if n == 0 {
        return Err(Error::Shape {
            op: "forward",
            detail: "empty batch".into(),
        });
    }
    check_len(
        "forward",
        "input batch",
        x.len(),
        n * topo.channels * topo.crop * topo.crop,
    )?;
    if let Some(&bad) = labels.iter().find(|&&l| l as usize >= topo.classes) {
        return Err(Error::Shape {
            op: "forward",
            detail: format!("label {bad} is out of range for {} classes", topo.classes),
        });
    }
    Ok(n)
}
