//! Runs the topology table as the paper's two towers (section 3.2, figure 2):
//! two devices, each holding its half of every layer's kernels (parameters,
//! gradients, momentum, activations), with feature maps crossing between
//! them only at the table's exchanges (the inputs of conv3, fc6, fc7, fc8)
//! and for the logits. Everything else runs per tower with the same `Stage`
//! code as the one-device network (`net.rs`), which runs the same table as
//! grouped ops.
//!
//! What the towers compute equals the grouped network: a tower's half of a
//! layer is the same rows of the same weight tensor, and LRN stays within a
//! tower's channels on both. Without dropout (evaluation, or a table
//! without it) the forward pass, the loss and the last layer's gradients
//! are bit for bit the same; in training each tower draws the dropout mask
//! of its own half from a stream of its own, so the masks (not their
//! statistics) differ from the grouped network's. Below an exchange, the input's
//! gradient is the sum of both towers' partial gradients (each over its own
//! half of the outputs), where one device sums over all outputs at once: the
//! same terms added in another order, so equal to rounding (tests/towers.rs
//! bounds it).
//!
//! Every byte that crosses between the devices goes through `exchange` and
//! is counted; `Topology::exchange_bytes_per_step` predicts the total (in
//! f32; 16-bit activations move half of it).
use super::laps::Laps;
use super::loss_scale::LossScale;
use super::net::{check_batch, lookup, no_forward, param_names, param_shape, read_slots, Mode};
use super::stage::{initial_values, sgd_all, unscale_all, Geom, Param, Stage};
use super::step::{StepMetrics, STEP_SLOTS};
use super::topology::{Chw, LayerShape, Topology};
use crate::backend::{Backend, RowBlock, SgdParams};
use crate::error::{check_len, Error, Result};
use crate::rng::hash_u64;

/// One tower: its half of every layer on its device.
struct Tower<B: Backend> {
    params: Vec<Param<B>>,
    stages: Vec<Stage<B>>,
    /// The image batch (each tower reads the whole image, as conv1 needs),
    /// double-buffered as `Network`'s: on a device with pinned uploads the
    /// next batch lands in one while the last step may still read the other.
    x: [B::Buf; 2],
    x_cur: usize,
    labels: B::IdxBuf,
    /// Per layer: at an exchange, both towers' maps side by side (the
    /// layer's whole input), its gradient from this tower's outputs, and the
    /// other tower's gradient of this tower's half; empty elsewhere.
    gathered: Vec<B::Buf>,
    dgathered: Vec<B::Buf>,
    recv: Vec<B::Buf>,
    /// Both towers' logits, [n, classes], their softmax and its gradient.
    logits: B::Buf,
    probs: B::Buf,
    dlogits: B::Buf,
    /// The mean loss of the last forward (one float, on the device).
    loss: B::Buf,
}

/// The network as two towers on two devices.
pub struct TowerNetwork<'a, B: Backend> {
    devs: [&'a B; 2],
    topo: Topology,
    shapes: Vec<LayerShape>,
    /// Per layer, each tower's share of the output channels and where it
    /// starts (`Topology::tower_split`).
    split: Vec<[usize; 2]>,
    towers: [Tower<B>; 2],
    n: usize,
    seed: u64,
    step: u64,
    last_mode: Option<Mode>,
    loss_scale: Option<LossScale>,
    last_skipped: bool,
    /// Bytes copied between the two devices since the last forward began.
    exchanged: u64,
    /// Step metrics (`Model::record_step`), on tower 0's device: both
    /// towers hold the same logits, and tower 0's are the ones `probs` reads.
    metrics: B::Buf,
}

/// (mine, the other) out of the two towers.
fn pair<T>(ts: &mut [T; 2], t: usize) -> (&mut T, &T) {
    let (a, b) = ts.split_at_mut(1);
    if t == 0 {
        (&mut a[0], &b[0])
    } else {
        (&mut b[0], &a[0])
    }
}

/// A tower's buffers that exchanges read and write.
#[derive(Clone, Copy, Debug)]
enum Slot {
    /// Layer i's output, or its gradient.
    Out(usize),
    OutGrad(usize),
    Gathered(usize),
    DGathered(usize),
    Recv(usize),
    Logits,
    DLogits,
}

fn no_slot(detail: String) -> Error {
    Error::Shape {
        op: "towers",
        detail,
    }
}

impl<B: Backend> Tower<B> {
    fn slot(&self, s: Slot) -> Result<&B::Buf> {
        match s {
            Slot::Out(i) => Ok(self.stages[i].out()),
            Slot::Gathered(i) => Ok(&self.gathered[i]),
            Slot::DGathered(i) => Ok(&self.dgathered[i]),
            Slot::Recv(i) => Ok(&self.recv[i]),
            Slot::Logits => Ok(&self.logits),
            Slot::DLogits => Ok(&self.dlogits),
            Slot::OutGrad(_) => Err(no_slot(format!("{s:?} is written, not read"))),
        }
    }
    fn slot_mut(&mut self, s: Slot) -> Result<&mut B::Buf> {
        match s {
            Slot::OutGrad(i) => Ok(self.stages[i].out_grad_mut()),
            Slot::Gathered(i) => Ok(&mut self.gathered[i]),
            Slot::Recv(i) => Ok(&mut self.recv[i]),
            Slot::Logits => Ok(&mut self.logits),
            _ => Err(no_slot(format!("{s:?} is read, not written"))),
        }
    }
}

/// Source and destination within one tower (different fields, so both
/// borrows can be held).
fn local_pair<B: Backend>(
    tw: &mut Tower<B>,
    src: Slot,
    dst: Slot,
) -> Result<(&B::Buf, &mut B::Buf)> {
    match (src, dst) {
        (Slot::Out(i), Slot::Gathered(j)) => Ok((tw.stages[i].out(), &mut tw.gathered[j])),
        (Slot::Out(i), Slot::Logits) => Ok((tw.stages[i].out(), &mut tw.logits)),
        (Slot::DLogits, Slot::OutGrad(i)) => Ok((&tw.dlogits, tw.stages[i].out_grad_mut())),
        (Slot::DGathered(j), Slot::OutGrad(i)) => {
            Ok((&tw.dgathered[j], tw.stages[i].out_grad_mut()))
        }
        _ => Err(no_slot(format!("no local copy from {src:?} to {dst:?}"))),
    }
}

/// Elements two towers hold for `n` images beyond what one grouped
/// network of `topo` does (`net::buffer_elements`, with `inputs` input
/// buffers), as `resize` allocates them: at each exchange the whole
/// input gathered and its gradient in each tower, and the half each
/// receives; a second tower's input buffers, labels and loss; each
/// tower's logits, probabilities and their gradient, where the grouped
/// network holds one set of logits. For the memory check.
pub fn extra_elements(topo: &Topology, n: usize, inputs: usize) -> Result<u64> {
    let shapes = topo.shapes()?;
    let exchanged: usize = (topo.layers.iter().zip(&shapes).enumerate())
        .filter(|(i, (l, _))| *i > 0 && l.exchange)
        .map(|(_, (_, s))| s.input.len())
        .sum();
    let x = inputs * topo.channels * topo.crop * topo.crop;
    let logits = 2 * 3 * topo.classes - topo.classes;
    Ok((n * (5 * exchanged + x + 1 + logits) + 1) as u64)
}

impl<'a, B: Backend> TowerNetwork<'a, B> {
    /// Build both towers for batches of `batch` images, with the initial
    /// weights the one-device network draws from `seed`, each tower taking
    /// its rows.
    pub fn new(devs: [&'a B; 2], topo: &Topology, batch: usize, seed: u64) -> Result<Self> {
        if topo.towers != 2 {
            return Err(Error::Config(format!(
                "config {} has {} tower(s); two devices run a two-tower config (alexnet, cifar)",
                topo.name, topo.towers
            )));
        }
        if batch == 0 {
            return Err(Error::Config("--batch must be at least 1".into()));
        }
        let shapes = topo.shapes()?;
        let split: Vec<[usize; 2]> = topo
            .layers
            .iter()
            .map(|l| {
                let s = topo.tower_split(l.out_channels());
                [s[0], s[1]]
            })
            .collect();
        // Each layer drawn once, its rows dealt to the towers.
        let mut params: [Vec<Param<B>>; 2] = Default::default();
        for (i, sp) in split.iter().enumerate() {
            let (w, b) = initial_values(topo, &shapes, i, seed);
            let per_row = w.len() / topo.layers[i].out_channels();
            for (t, be) in devs.iter().enumerate() {
                let first = if t == 0 { 0 } else { sp[0] };
                let (r0, r1) = (first, first + sp[t]);
                params[t].push(Param::new(*be, &w[r0 * per_row..r1 * per_row], &b[r0..r1])?);
            }
        }
        let mut towers = Vec::with_capacity(2);
        for (be, params) in devs.iter().zip(params) {
            towers.push(Tower {
                params,
                stages: Vec::new(),
                x: [be.alloc(0)?, be.alloc(0)?],
                x_cur: 0,
                labels: be.alloc_idx(0)?,
                gathered: Vec::new(),
                dgathered: Vec::new(),
                recv: Vec::new(),
                logits: be.alloc(0)?,
                probs: be.alloc(0)?,
                dlogits: be.alloc(0)?,
                loss: be.alloc_f32(1)?,
            });
        }
        let towers: [Tower<B>; 2] = towers.try_into().map_err(|_| Error::Shape {
            op: "towers",
            detail: "two towers expected".into(),
        })?;
        let mut net = TowerNetwork {
            devs,
            topo: topo.clone(),
            shapes,
            split,
            towers,
            n: 0,
            seed,
            step: 0,
            last_mode: None,
            loss_scale: None,
            last_skipped: false,
            exchanged: 0,
            metrics: devs[0].alloc_f32(2 * STEP_SLOTS)?,
        };
        net.resize(batch)?;
        Ok(net)
    }

    /// Tower `t`'s input of layer `i` per image: the whole image (conv1),
    /// both towers' maps (an exchange), or its own half.
    fn tower_input(&self, i: usize, t: usize) -> Chw {
        let s = &self.shapes[i];
        if i == 0 || self.topo.layers[i].exchange {
            s.input
        } else {
            Chw {
                c: self.split[i - 1][t],
                ..s.input
            }
        }
    }

    /// Floats per image of tower `t`'s output of layer `i` (after pooling).
    fn out_width(&self, i: usize, t: usize) -> usize {
        let o = self.shapes[i].out;
        self.split[i][t] * o.h * o.w
    }

    /// Where tower `t`'s part of each image's layer-`i` output starts in the
    /// whole (tower 0's channels come first).
    fn out_offset(&self, i: usize, t: usize) -> usize {
        if t == 0 {
            0
        } else {
            self.out_width(i, 0)
        }
    }

    fn resize(&mut self, n: usize) -> Result<()> {
        if n == self.n {
            return Ok(());
        }
        self.release()?;
        let classes = self.topo.classes;
        for t in 0..2 {
            let be = self.devs[t];
            let mut stages = Vec::with_capacity(self.shapes.len());
            let (mut gathered, mut dgathered, mut recv) = (Vec::new(), Vec::new(), Vec::new());
            for (i, (l, s)) in self.topo.layers.iter().zip(&self.shapes).enumerate() {
                let input = self.tower_input(i, t);
                let out = self.split[i][t];
                let geom = Geom::of(l, n, input, out, 1);
                let op_out = Chw { c: out, ..s.op_out };
                // LRN within this tower's channels: all of them.
                stages.push(Stage::new(be, l, geom, op_out, 1)?);
                let ex = i > 0 && l.exchange;
                let full = if ex { n * s.input.len() } else { 0 };
                gathered.push(be.alloc(full)?);
                dgathered.push(be.alloc(full)?);
                let mine = if ex { n * self.out_width(i - 1, t) } else { 0 };
                recv.push(be.alloc(mine)?);
            }
            let tw = &mut self.towers[t];
            tw.stages = stages;
            tw.gathered = gathered;
            tw.dgathered = dgathered;
            tw.recv = recv;
            let x_len = n * self.topo.channels * self.topo.crop * self.topo.crop;
            // Only a backend with asynchronous uploads gains from a second buffer.
            let second = if be.host_alloc().is_some() { x_len } else { 0 };
            tw.x = [be.alloc(x_len)?, be.alloc(second)?];
            tw.x_cur = 0;
            tw.labels = be.alloc_idx(n)?;
            tw.logits = be.alloc(n * classes)?;
            tw.probs = be.alloc(n * classes)?;
            tw.dlogits = be.alloc(n * classes)?;
        }
        self.n = n;
        Ok(())
    }

    /// Free both towers' activations before others are sized (as
    /// `Network::release`): a device never holds two batch sizes' at once.
    fn release(&mut self) -> Result<()> {
        self.n = 0;
        self.last_mode = None;
        for (tw, be) in self.towers.iter_mut().zip(self.devs) {
            tw.stages.clear();
            tw.gathered.clear();
            tw.dgathered.clear();
            tw.recv.clear();
            tw.x = [be.alloc(0)?, be.alloc(0)?];
            tw.labels = be.alloc_idx(0)?;
            tw.logits = be.alloc(0)?;
            tw.probs = be.alloc(0)?;
            tw.dlogits = be.alloc(0)?;
        }
        Ok(())
    }

    /// Copy block `b` of tower `from`'s `src` into tower `to`'s `dst`; a copy
    /// between the two devices is counted.
    fn exchange(
        &mut self,
        from: usize,
        to: usize,
        src: Slot,
        dst: Slot,
        b: RowBlock,
    ) -> Result<()> {
        let (src_dev, dst_dev) = (self.devs[from], self.devs[to]);
        if from == to {
            let (s, d) = local_pair(&mut self.towers[to], src, dst)?;
            return dst_dev.copy_rows(src_dev, s, d, b);
        }
        let (mine, other) = pair(&mut self.towers, to);
        dst_dev.copy_rows(src_dev, other.slot(src)?, mine.slot_mut(dst)?, b)?;
        // In the receiving device's activation size: 16-bit maps move 2
        // bytes an element.
        self.exchanged += b.len() as u64 * dst_dev.activation_bytes();
        Ok(())
    }

    /// Forward a batch on both towers; returns the mean cross-entropy loss
    /// (both towers compute it from the same gathered logits; tower 0's).
    pub fn forward(&mut self, x: &[f32], labels: &[u32], mode: Mode) -> Result<f32> {
        self.forward_queued(x, labels, mode)?;
        self.last_loss()
    }

    /// The last forward's mean loss (tower 0's copy; both towers compute
    /// it from the same logits), read from the device.
    pub fn last_loss(&self) -> Result<f32> {
        if self.last_mode.is_none() {
            return Err(no_forward("last_loss"));
        }
        let mut loss = [0.0f32];
        self.devs[0].download(&self.towers[0].loss, &mut loss)?;
        Ok(loss[0])
    }

    /// `forward` with the loss left on the devices (see `Network`'s).
    pub fn forward_queued(&mut self, x: &[f32], labels: &[u32], mode: Mode) -> Result<()> {
        let n = check_batch(&self.topo, x, labels)?;
        self.resize(n)?;
        self.exchanged = 0;
        for t in 0..2 {
            let tw = &mut self.towers[t];
            if self.devs[t].buf_len(&tw.x[1]) > 0 {
                tw.x_cur ^= 1;
            }
            self.devs[t].upload(x, &mut tw.x[tw.x_cur])?;
            self.devs[t].upload_idx(labels, &mut tw.labels)?;
        }
        for i in 0..self.shapes.len() {
            if i > 0 && self.topo.layers[i].exchange {
                self.gather(i)?;
            }
            for t in 0..2 {
                let seed = (mode == Mode::Train)
                    .then(|| hash_u64(self.seed, (self.step * 64 + i as u64) * 2 + t as u64));
                let (be, l, lrn) = (self.devs[t], &self.topo.layers[i], &self.topo.lrn);
                let tw = &mut self.towers[t];
                let (done, rest) = tw.stages.split_at_mut(i);
                let input = if i == 0 {
                    &tw.x[tw.x_cur]
                } else if l.exchange {
                    &tw.gathered[i]
                } else {
                    done[i - 1].out()
                };
                rest[0].forward(
                    be,
                    (l, lrn),
                    input,
                    &tw.params[i],
                    seed,
                    &mut Laps::default(),
                )?;
            }
        }
        // Both towers need all the logits for the softmax.
        let (last, classes) = (self.shapes.len() - 1, self.topo.classes);
        for to in 0..2 {
            for from in 0..2 {
                let b = RowBlock {
                    rows: n,
                    width: self.split[last][from],
                    src_off: 0,
                    src_pitch: self.split[last][from],
                    dst_off: self.out_offset(last, from),
                    dst_pitch: classes,
                };
                self.exchange(from, to, Slot::Out(last), Slot::Logits, b)?;
            }
        }
        self.fence()?;
        for t in 0..2 {
            let tw = &mut self.towers[t];
            self.devs[t].softmax_xent_forward_into(
                n,
                classes,
                &tw.logits,
                &tw.labels,
                &mut tw.probs,
                &mut tw.loss,
            )?;
        }
        self.last_mode = Some(mode);
        Ok(())
    }

    /// Tower 0's loss and top-1 hits into slot `slot` of the step metrics.
    pub fn record_step(&mut self, slot: usize) -> Result<()> {
        self.mode()?;
        let tw = &self.towers[0];
        self.devs[0].record_step_metrics(
            self.n,
            self.topo.classes,
            &tw.probs,
            &tw.labels,
            &tw.loss,
            slot,
            &mut self.metrics,
        )
    }

    /// The first `n` slots of the step metrics (one download).
    pub fn read_steps(&mut self, n: usize) -> Result<Vec<StepMetrics>> {
        read_slots(self.devs[0], &self.metrics, n)
    }

    pub fn step_slots(&self) -> usize {
        STEP_SLOTS
    }

    /// Assemble layer `i`'s whole input on each tower from both towers'
    /// outputs of layer i-1: per image, tower 0's channels then tower 1's.
    fn gather(&mut self, i: usize) -> Result<()> {
        let (n, full) = (self.n, self.shapes[i].input.len());
        for to in 0..2 {
            for from in 0..2 {
                let width = self.out_width(i - 1, from);
                let b = RowBlock {
                    rows: n,
                    width,
                    src_off: 0,
                    src_pitch: width,
                    dst_off: self.out_offset(i - 1, from),
                    dst_pitch: full,
                };
                self.exchange(from, to, Slot::Out(i - 1), Slot::Gathered(i), b)?;
            }
        }
        self.fence()
    }

    /// Each tower's later work waits for the copies the other has queued
    /// from its buffers (`Backend::fence`).
    fn fence(&self) -> Result<()> {
        self.devs[0].fence(self.devs[1])?;
        self.devs[1].fence(self.devs[0])
    }

    /// Gradients of the last forward's loss for every parameter of both towers.
    pub fn backward(&mut self) -> Result<()> {
        self.backward_begin()?;
        for i in (0..self.shapes.len()).rev() {
            self.backward_layer(i)?;
        }
        Ok(())
    }

    /// The first part of `backward`: each tower's gradient of its logits
    /// (then `backward_layer` from the last layer down, as `Network`'s).
    pub fn backward_begin(&mut self) -> Result<()> {
        self.mode()?;
        let (n, classes, last) = (self.n, self.topo.classes, self.shapes.len() - 1);
        // Each tower's softmax gradient, then its own columns of it.
        for t in 0..2 {
            let be = self.devs[t];
            let tw = &mut self.towers[t];
            match &self.loss_scale {
                Some(ls) => be.softmax_xent_backward_scaled(
                    n,
                    classes,
                    &tw.probs,
                    &tw.labels,
                    ls.scale,
                    &mut tw.dlogits,
                )?,
                None => {
                    be.softmax_xent_backward(n, classes, &tw.probs, &tw.labels, &mut tw.dlogits)?
                }
            }
            let b = RowBlock {
                rows: n,
                width: self.split[last][t],
                src_off: self.out_offset(last, t),
                src_pitch: classes,
                dst_off: 0,
                dst_pitch: self.split[last][t],
            };
            self.exchange(t, t, Slot::DLogits, Slot::OutGrad(last), b)?;
        }
        Ok(())
    }

    fn mode(&self) -> Result<Mode> {
        self.last_mode.ok_or(Error::Shape {
            op: "backward",
            detail: "backward called without a forward pass".into(),
        })
    }

    /// Layer i's backward on both towers: its parameters' gradients, and
    /// its input's gradient (summed across the towers below an exchange).
    pub fn backward_layer(&mut self, i: usize) -> Result<()> {
        let mode = self.mode()?;
        if i >= self.shapes.len() {
            return Err(no_slot(format!(
                "backward of layer {i} of {}",
                self.shapes.len()
            )));
        }
        // The input's gradient first: below an exchange it has to cross to
        // the other tower, and its copies (on each device's copy stream)
        // then run while the weight gradients are computed. The sums that
        // wait for those copies come last, so they do not hold up the
        // weight gradients on the compute stream.
        let ex = i > 0 && self.topo.layers[i].exchange;
        for t in 0..2 {
            let (be, l, lrn) = (self.devs[t], &self.topo.layers[i], &self.topo.lrn);
            let tw = &mut self.towers[t];
            let (done, rest) = tw.stages.split_at_mut(i);
            let st = &mut rest[0];
            st.backward_act(be, l, lrn, mode == Mode::Train, &mut Laps::default())?;
            if i > 0 {
                let dx = if ex {
                    &mut tw.dgathered[i]
                } else {
                    done[i - 1].out_grad_mut()
                };
                st.input_grad(be, &tw.params[i].w, dx, &mut Laps::default())?;
            }
        }
        if ex {
            self.scatter_grad(i)?;
        }
        for t in 0..2 {
            let tw = &mut self.towers[t];
            let input = if i == 0 {
                &tw.x[tw.x_cur]
            } else if ex {
                &tw.gathered[i]
            } else {
                tw.stages[i - 1].out()
            };
            let (be, p) = (self.devs[t], &mut tw.params[i]);
            tw.stages[i].backward_params(be, input, p, &mut Laps::default())?;
        }
        if ex {
            self.sum_grad(i)?;
            self.fence()?;
        }
        Ok(())
    }

    /// After an exchange layer's input gradient: each tower's partial of
    /// each half of the input goes to the tower that owns that half (its
    /// own into place, the other's into `recv`), on the copy streams.
    fn scatter_grad(&mut self, i: usize) -> Result<()> {
        let (n, full) = (self.n, self.shapes[i].input.len());
        for to in 0..2 {
            let width = self.out_width(i - 1, to);
            let off = self.out_offset(i - 1, to);
            let b = RowBlock {
                rows: n,
                width,
                src_off: off,
                src_pitch: full,
                dst_off: 0,
                dst_pitch: width,
            };
            self.exchange(to, to, Slot::DGathered(i), Slot::OutGrad(i - 1), b)?;
            self.exchange(1 - to, to, Slot::DGathered(i), Slot::Recv(i), b)?;
        }
        Ok(())
    }

    /// Each tower's gradient of its half of layer i's input: its own
    /// partial plus the other tower's (`scatter_grad`'s copies). Issued
    /// after the weight gradients, since its kernel waits for the copies.
    fn sum_grad(&mut self, i: usize) -> Result<()> {
        for to in 0..2 {
            let tw = &mut self.towers[to];
            self.devs[to].add_assign(tw.stages[i - 1].out_grad_mut(), &tw.recv[i])?;
        }
        Ok(())
    }

    /// The paper's update on both towers (as `Network::sgd_step`); with loss
    /// scaling, a gradient that overflowed on either tower skips both.
    pub fn sgd_step(&mut self, hp: &SgdParams) -> Result<()> {
        self.last_skipped = false;
        if let Some(ls) = &mut self.loss_scale {
            let inv = 1.0 / ls.scale;
            let mut finite = true;
            for (t, tw) in self.towers.iter_mut().enumerate() {
                finite &= unscale_all(self.devs[t], &mut tw.params, inv)?;
            }
            if !ls.update(finite, self.step + 1, hp.lr)? {
                self.last_skipped = true;
                self.step += 1;
                return Ok(());
            }
        }
        for (t, tw) in self.towers.iter_mut().enumerate() {
            sgd_all(
                self.devs[t],
                &mut tw.params,
                &self.topo.layers,
                hp,
                &mut Laps::default(),
            )?;
        }
        self.step += 1;
        Ok(())
    }

    pub fn topology(&self) -> &Topology {
        &self.topo
    }

    pub fn steps(&self) -> u64 {
        self.step
    }

    pub fn batch(&self) -> usize {
        self.n
    }

    /// Draw dropout masks from `seed` from now on (as `Network`'s).
    pub fn set_dropout_seed(&mut self, seed: u64) {
        self.seed = seed;
    }

    /// Tower `t`'s share of the gradient of layer i's weight or bias.
    pub(crate) fn grad_mut(&mut self, t: usize, i: usize, is_w: bool) -> &mut B::Buf {
        let p = &mut self.towers[t].params[i];
        if is_w {
            &mut p.dw
        } else {
            &mut p.db
        }
    }

    /// Bytes copied between the two devices by the last forward and backward.
    pub fn exchanged_bytes(&self) -> u64 {
        self.exchanged
    }

    pub fn set_loss_scale(&mut self, ls: Option<LossScale>) {
        self.loss_scale = ls;
    }

    pub fn last_step_skipped(&self) -> bool {
        self.last_skipped
    }

    /// Logits of the last forward, [n, classes] (tower 0's gathered copy).
    pub fn logits(&self) -> Result<Vec<f32>> {
        let mut host = vec![0.0; self.n * self.topo.classes];
        self.devs[0].download(&self.towers[0].logits, &mut host)?;
        Ok(host)
    }

    /// Softmax probabilities of the last forward, [n, classes].
    pub fn probs(&self) -> Result<Vec<f32>> {
        let mut host = vec![0.0; self.n * self.topo.classes];
        self.devs[0].download(&self.towers[0].probs, &mut host)?;
        Ok(host)
    }

    /// A whole parameter (PyTorch name and layout, as `Network::param`):
    /// tower 0's rows then tower 1's.
    pub fn param(&self, name: &str) -> Result<Vec<f32>> {
        self.gather_param(name, |p, w| if w { &p.w } else { &p.b })
    }

    pub fn grad(&self, name: &str) -> Result<Vec<f32>> {
        self.gather_param(name, |p, w| if w { &p.dw } else { &p.db })
    }

    pub fn momentum(&self, name: &str) -> Result<Vec<f32>> {
        self.gather_param(name, |p, w| if w { &p.vw } else { &p.vb })
    }

    pub fn param_names(&self) -> Vec<String> {
        param_names(&self.topo)
    }

    pub fn param_shape(&self, name: &str) -> Result<Vec<usize>> {
        param_shape(&self.topo, &self.shapes, name)
    }

    /// Set a whole parameter: each tower takes its rows.
    pub fn set_param(&mut self, name: &str, values: &[f32]) -> Result<()> {
        self.scatter_param(name, values, |p, w| if w { &mut p.w } else { &mut p.b })
    }

    pub fn set_momentum(&mut self, name: &str, values: &[f32]) -> Result<()> {
        self.scatter_param(name, values, |p, w| if w { &mut p.vw } else { &mut p.vb })
    }

    /// Continue a run from a checkpoint (the step fixes the dropout masks).
    pub fn set_steps(&mut self, step: u64) {
        self.step = step;
    }

    pub fn loss_scale(&self) -> Option<&LossScale> {
        self.loss_scale.as_ref()
    }

    fn scatter_param(
        &mut self,
        name: &str,
        values: &[f32],
        pick: impl Fn(&mut Param<B>, bool) -> &mut B::Buf,
    ) -> Result<()> {
        let (i, is_w) = lookup(&self.topo, name)?;
        let whole: usize = self.param_shape(name)?.iter().product();
        check_len("set_param", name, values.len(), whole)?;
        let per_row = whole / self.topo.layers[i].out_channels();
        let mut row = 0;
        for t in 0..2 {
            let rows = self.split[i][t];
            let be = self.devs[t];
            let buf = pick(&mut self.towers[t].params[i], is_w);
            be.upload(&values[row * per_row..(row + rows) * per_row], buf)?;
            row += rows;
        }
        Ok(())
    }

    fn gather_param(
        &self,
        name: &str,
        pick: impl Fn(&Param<B>, bool) -> &B::Buf,
    ) -> Result<Vec<f32>> {
        let (i, is_w) = lookup(&self.topo, name)?;
        let mut out = Vec::new();
        for t in 0..2 {
            let buf = pick(&self.towers[t].params[i], is_w);
            let mut host = vec![0.0; self.devs[t].buf_len(buf)];
            self.devs[t].download(buf, &mut host)?;
            out.extend_from_slice(&host);
        }
        Ok(out)
    }
}
