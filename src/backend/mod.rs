//! The backend trait: every op AlexNet needs, as forward/backward pairs with
//! the same names on every backend. The CPU backend (`cpu/`) is the reference
//! every other backend is tested against. Tensors are f32, NCHW, row-major.
//!
//! Conventions shared by all ops:
//! - backward ops *overwrite* their outputs (no accumulation);
//! - `n` is the batch size; conv and pool geometry carry their own sizes;
//! - a group count `g` splits input and output channels into `g` equal,
//!   independent slices, exactly as a two-tower layer does (ARCHITECTURE.md, "Backends and stages").
pub mod cpu;
pub mod cuda;

use crate::error::{Error, Result};

/// Geometry of one (possibly grouped) 2-D convolution over a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeom {
    pub n: usize,
    pub c_in: usize,
    pub h: usize,
    pub w: usize,
    pub c_out: usize,
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
    pub groups: usize,
}

impl ConvGeom {
    pub fn h_out(&self) -> usize {
        (self.h + 2 * self.pad - self.k) / self.stride + 1
    }
    pub fn w_out(&self) -> usize {
        (self.w + 2 * self.pad - self.k) / self.stride + 1
    }
    pub fn x_len(&self) -> usize {
        self.n * self.c_in * self.h * self.w
    }
    pub fn y_len(&self) -> usize {
        self.n * self.c_out * self.h_out() * self.w_out()
    }
    /// Weights are [c_out, c_in / groups, k, k] (PyTorch's layout).
    pub fn w_len(&self) -> usize {
        self.c_out * (self.c_in / self.groups) * self.k * self.k
    }
}

/// Max pooling window (overlapping when size > stride, paper section 3.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolGeom {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub size: usize,
    pub stride: usize,
}

impl PoolGeom {
    /// Floor mode, no padding: 55 -> 27 -> 13 -> 6 for size 3, stride 2.
    pub fn h_out(&self) -> usize {
        (self.h - self.size) / self.stride + 1
    }
    pub fn w_out(&self) -> usize {
        (self.w - self.size) / self.stride + 1
    }
    pub fn x_len(&self) -> usize {
        self.n * self.c * self.h * self.w
    }
    pub fn y_len(&self) -> usize {
        self.n * self.c * self.h_out() * self.w_out()
    }
}

/// Local response normalisation (paper section 3.3):
/// b[c] = a[c] / (k + alpha * sum_{c' = c - size/2 ..= c + size/2, clipped} a[c']^2)^beta.
/// `size` is odd (the paper: 5). Note alpha is *not* divided by `size`
/// (PyTorch and ONNX divide it).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LrnParams {
    pub size: usize,
    pub alpha: f32,
    pub beta: f32,
    pub k: f32,
}

impl LrnParams {
    /// The paper's constants: k = 2, n = 5, alpha = 1e-4, beta = 0.75.
    pub const PAPER: LrnParams = LrnParams {
        size: 5,
        alpha: 1e-4,
        beta: 0.75,
        k: 2.0,
    };
}

/// Shape of a 4-D activation tensor for element-wise-per-channel ops (LRN).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Nchw {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
}

impl Nchw {
    pub fn len(&self) -> usize {
        self.n * self.c * self.h * self.w
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A fully connected layer: y[n, out] = x[n, in] . w[out, in]^T + b[out].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinearGeom {
    pub n: usize,
    pub inp: usize,
    pub out: usize,
}

/// The paper's SGD (section 5): v = momentum*v - weight_decay*lr*w - lr*g; w += v.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SgdParams {
    pub lr: f32,
    pub momentum: f32,
    pub weight_decay: f32,
}

/// A strided block of rows for `Backend::copy_rows`: row r (of `rows`, each
/// `width` floats) is read at `src_off + r * src_pitch` and written at
/// `dst_off + r * dst_pitch`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowBlock {
    pub rows: usize,
    pub width: usize,
    pub src_off: usize,
    pub src_pitch: usize,
    pub dst_off: usize,
    pub dst_pitch: usize,
}

impl RowBlock {
    /// Floats moved.
    pub fn len(&self) -> usize {
        self.rows * self.width
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The block fits both buffers (and rows do not overlap themselves).
    pub fn check(&self, op: &'static str, src_len: usize, dst_len: usize) -> Result<()> {
        let end = |off: usize, pitch: usize| {
            if self.rows == 0 {
                return Some(0);
            }
            (self.rows - 1)
                .checked_mul(pitch)?
                .checked_add(off)?
                .checked_add(self.width)
        };
        let fits = |off, pitch, len| {
            (self.rows <= 1 || pitch >= self.width) && end(off, pitch).is_some_and(|e| e <= len)
        };
        if fits(self.src_off, self.src_pitch, src_len)
            && fits(self.dst_off, self.dst_pitch, dst_len)
        {
            Ok(())
        } else {
            Err(Error::Shape {
                op,
                detail: format!("{self:?} does not fit a source of {src_len} and a destination of {dst_len} floats"),
            })
        }
    }
}

/// One device's memory as the driver reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceMemory {
    /// The device's index (`--gpus`): devices named twice share one memory.
    pub ordinal: usize,
    /// What the run's messages call it, e.g. "GPU 0 (NVIDIA H200)".
    pub name: String,
    pub free: u64,
}

/// One device's implementation of every op. Buffers are owned by the device.
pub trait Backend: Send + Sync {
    /// A device buffer of f32.
    type Buf: Send + Sync;
    /// A device buffer of u32 (labels, pooling argmax).
    type IdxBuf: Send + Sync;

    /// Human-readable name, for logs ("cpu (2 threads)", "cuda:0 H100").
    fn name(&self) -> String;

    /// Whether training needs dynamic loss scaling: true where gradients are
    /// stored in f16, whose range would flush small ones to zero.
    fn needs_loss_scaling(&self) -> bool {
        false
    }

    /// The `--precision` activations and gradients are stored in: "fp32",
    /// "fp16" or "bf16" (the CPU's is always fp32).
    fn precision(&self) -> &'static str {
        "fp32"
    }

    // -- memory ----------------------------------------------------------
    /// Whether buffers live in the host's memory (the CPU) rather than a
    /// device's: the host-memory check counts the network's buffers then.
    fn in_host_memory(&self) -> bool {
        false
    }
    /// A device's own memory (a GPU's), for the device-memory check: which
    /// device, and the bytes free on it now. None where buffers live in the
    /// host's memory, or the device does not say.
    fn device_memory(&self) -> Option<DeviceMemory> {
        None
    }
    /// Bytes per activation element: 2 where activations are stored in
    /// 16 bits (fp16, bf16), else 4.
    fn activation_bytes(&self) -> u64 {
        4
    }
    /// A zero-filled buffer of `len` f32.
    fn alloc(&self, len: usize) -> Result<Self::Buf>;
    fn alloc_idx(&self, len: usize) -> Result<Self::IdxBuf>;
    /// How many buffers `alloc` and `alloc_idx` have made so far. The network
    /// sizes everything once per batch shape, so this stays put across steps.
    fn allocations(&self) -> u64;
    /// A zero-filled buffer for a parameter or its gradient. These stay f32
    /// (the master copy) on a backend whose activations are 16-bit, which
    /// may also keep a 16-bit copy for its libraries; by default the same
    /// as `alloc`.
    fn alloc_param(&self, len: usize) -> Result<Self::Buf> {
        self.alloc(len)
    }
    /// A zero-filled buffer that holds f32 whatever the activations' precision,
    /// and nothing else: momentum, which only the update reads, and results
    /// kept on the device for the host to read later (a step's mean loss, the
    /// step-metrics buffer). By default `alloc_param`'s, which are f32 on
    /// every backend.
    fn alloc_f32(&self, len: usize) -> Result<Self::Buf> {
        self.alloc_param(len)
    }
    /// Wait until the work queued so far has run (a GPU's stream); for
    /// timing phases of a step. The CPU runs every op to completion: no-op.
    fn synchronize(&self) -> Result<()> {
        Ok(())
    }
    /// Put a timing mark in the device's queue (`model::laps`): true where
    /// the device keeps its own clock (a GPU's events), so ops are timed as
    /// the device ran them, without waits; false (the CPU, whose ops run to
    /// completion when called) leaves timing to the host's clock.
    fn mark(&self) -> Result<bool> {
        Ok(false)
    }
    /// Seconds between each two marks in turn since the last call, once the
    /// device has passed the last mark (waits for it); the marks are gone
    /// afterwards. Empty where `mark` keeps none.
    fn marked_seconds(&self) -> Result<Vec<f64>> {
        Ok(Vec::new())
    }
    /// An allocator of host memory this backend uploads from fastest (a
    /// GPU's pinned memory), for the loader's batches; None: ordinary memory.
    fn host_alloc(&self) -> Option<crate::data::HostAlloc> {
        None
    }
    fn upload(&self, src: &[f32], dst: &mut Self::Buf) -> Result<()>;
    fn upload_idx(&self, src: &[u32], dst: &mut Self::IdxBuf) -> Result<()>;
    fn download(&self, src: &Self::Buf, dst: &mut [f32]) -> Result<()>;
    fn buf_len(&self, buf: &Self::Buf) -> usize;

    // -- copies between devices (the towers' exchanges) -------------------------
    /// `dst` (on this device) <- `src` (on `src_dev`: this device or another
    /// of the same kind), block `b`: `b.rows` rows of `b.width` floats. A
    /// tower's half of each image's channels is such a block. May return
    /// before the copy is done: this device's own work waits for it, but
    /// `src_dev` must `fence` before it overwrites `src`.
    fn copy_rows(
        &self,
        src_dev: &Self,
        src: &Self::Buf,
        dst: &mut Self::Buf,
        b: RowBlock,
    ) -> Result<()>;
    /// Work queued on this device from now on waits for the copies `other`
    /// has queued so far (`copy_rows` into `other`, which may read this
    /// device's buffers). Backends whose copies finish in the call need
    /// nothing.
    fn fence(&self, _other: &Self) -> Result<()> {
        Ok(())
    }
    /// dst += src, element-wise (a tower's two partial input gradients).
    fn add_assign(&self, dst: &mut Self::Buf, src: &Self::Buf) -> Result<()>;

    // -- convolution (groups on the op, as cuDNN's descriptor) --------------
    /// y = conv(x, w) + b. x: [n, c_in, h, w], w: [c_out, c_in/g, k, k], b: [c_out].
    fn conv2d_forward(
        &self,
        g: &ConvGeom,
        x: &Self::Buf,
        w: &Self::Buf,
        b: &Self::Buf,
        y: &mut Self::Buf,
    ) -> Result<()>;
    /// y = max(conv(x, w) + b, 0): the forward of a conv layer followed by a
    /// ReLU. A backend that can add the bias and clamp in one pass over y
    /// overrides this (the CUDA backend does); by default it is two ops.
    fn conv2d_bias_relu_forward(
        &self,
        g: &ConvGeom,
        x: &Self::Buf,
        w: &Self::Buf,
        b: &Self::Buf,
        y: &mut Self::Buf,
    ) -> Result<()> {
        self.conv2d_forward(g, x, w, b, y)?;
        self.relu_forward(y)
    }
    /// dx = conv_transpose(dy, w).
    fn conv2d_backward_data(
        &self,
        g: &ConvGeom,
        w: &Self::Buf,
        dy: &Self::Buf,
        dx: &mut Self::Buf,
    ) -> Result<()>;
    /// dw = sum over the batch of dy (x) x.
    fn conv2d_backward_filter(
        &self,
        g: &ConvGeom,
        x: &Self::Buf,
        dy: &Self::Buf,
        dw: &mut Self::Buf,
    ) -> Result<()>;
    /// db[c] = sum over n, h, w of dy[n, c, h, w].
    fn conv2d_backward_bias(&self, g: &ConvGeom, dy: &Self::Buf, db: &mut Self::Buf) -> Result<()>;

    // -- element-wise ------------------------------------------------------
    /// x = max(x, 0), in place.
    fn relu_forward(&self, x: &mut Self::Buf) -> Result<()>;
    /// dy = dy * (y > 0), in place; y is the ReLU's output.
    fn relu_backward(&self, y: &Self::Buf, dy: &mut Self::Buf) -> Result<()>;

    // -- local response normalisation (fused: one pass, sliding window) ---
    /// y = x / scale^beta, and scale = k + alpha * window sum of x^2 is kept for backward.
    fn lrn_forward(
        &self,
        p: &LrnParams,
        s: &Nchw,
        x: &Self::Buf,
        y: &mut Self::Buf,
        scale: &mut Self::Buf,
    ) -> Result<()>;
    /// dx[c] = dy[c] * scale[c]^-beta
    ///         - 2 * alpha * beta * x[c] * sum_{c' whose window holds c} dy[c'] * y[c'] / scale[c'].
    #[allow(clippy::too_many_arguments)]
    fn lrn_backward(
        &self,
        p: &LrnParams,
        s: &Nchw,
        x: &Self::Buf,
        y: &Self::Buf,
        scale: &Self::Buf,
        dy: &Self::Buf,
        dx: &mut Self::Buf,
    ) -> Result<()>;

    // -- max pooling -------------------------------------------------------
    /// y = window max; argmax holds, per output, the index of the winner
    /// within its (n, c) plane (row * w + col), for backward.
    fn max_pool_forward(
        &self,
        g: &PoolGeom,
        x: &Self::Buf,
        y: &mut Self::Buf,
        argmax: &mut Self::IdxBuf,
    ) -> Result<()>;
    /// dx = 0, then dx[winner] += dy for every output (windows overlap).
    fn max_pool_backward(
        &self,
        g: &PoolGeom,
        dy: &Self::Buf,
        argmax: &Self::IdxBuf,
        dx: &mut Self::Buf,
    ) -> Result<()>;

    // -- dropout (inverted: kept units scaled by 1/(1-p) at training time) --
    /// p in [0, 1). mask[i] = 0 or 1/(1-p) from a counter-based hash of (seed, i), so every
    /// backend draws the same mask; x *= mask in place.
    fn dropout_forward(
        &self,
        p: f32,
        seed: u64,
        x: &mut Self::Buf,
        mask: &mut Self::Buf,
    ) -> Result<()>;
    /// dy *= mask, in place.
    fn dropout_backward(&self, mask: &Self::Buf, dy: &mut Self::Buf) -> Result<()>;

    // -- fully connected (GEMM) ------------------------------------------------
    /// y = x w^T + b. x: [n, in], w: [out, in], b: [out], y: [n, out].
    fn linear_forward(
        &self,
        g: &LinearGeom,
        x: &Self::Buf,
        w: &Self::Buf,
        b: &Self::Buf,
        y: &mut Self::Buf,
    ) -> Result<()>;
    /// y = max(x w^T + b, 0), fused where the backend can (see conv2d_bias_relu_forward).
    fn linear_bias_relu_forward(
        &self,
        g: &LinearGeom,
        x: &Self::Buf,
        w: &Self::Buf,
        b: &Self::Buf,
        y: &mut Self::Buf,
    ) -> Result<()> {
        self.linear_forward(g, x, w, b, y)?;
        self.relu_forward(y)
    }
    /// dx = dy w.
    fn linear_backward_data(
        &self,
        g: &LinearGeom,
        w: &Self::Buf,
        dy: &Self::Buf,
        dx: &mut Self::Buf,
    ) -> Result<()>;
    /// dw = dy^T x.
    fn linear_backward_weight(
        &self,
        g: &LinearGeom,
        x: &Self::Buf,
        dy: &Self::Buf,
        dw: &mut Self::Buf,
    ) -> Result<()>;
    /// db = column sums of dy.
    fn linear_backward_bias(
        &self,
        g: &LinearGeom,
        dy: &Self::Buf,
        db: &mut Self::Buf,
    ) -> Result<()>;

    // -- loss ------------------------------------------------------------------
    /// probs = softmax(logits) per row; returns the mean cross-entropy over the batch.
    /// logits: [n, classes]; labels: [n], each < classes.
    fn softmax_xent_forward(
        &self,
        n: usize,
        classes: usize,
        logits: &Self::Buf,
        labels: &Self::IdxBuf,
        probs: &mut Self::Buf,
    ) -> Result<f32>;
    /// dlogits = (probs - onehot(labels)) / n.
    fn softmax_xent_backward(
        &self,
        n: usize,
        classes: usize,
        probs: &Self::Buf,
        labels: &Self::IdxBuf,
        dlogits: &mut Self::Buf,
    ) -> Result<()>;

    /// The loss gradient times the loss scale: (probs - onehot(labels)) / n * scale.
    /// By default the plain backward and then `scale`; a 16-bit backend does
    /// both in one pass, so small gradients are scaled before they are rounded.
    fn softmax_xent_backward_scaled(
        &self,
        n: usize,
        classes: usize,
        probs: &Self::Buf,
        labels: &Self::IdxBuf,
        scale: f32,
        dlogits: &mut Self::Buf,
    ) -> Result<()> {
        self.softmax_xent_backward(n, classes, probs, labels, dlogits)?;
        self.scale(scale, dlogits)
    }

    /// As `softmax_xent_forward`, but the mean loss stays on the device:
    /// loss[0] gets the value `softmax_xent_forward` returns, and nothing
    /// waits for it. `loss` is an `alloc_f32` buffer of at least one float.
    fn softmax_xent_forward_into(
        &self,
        n: usize,
        classes: usize,
        logits: &Self::Buf,
        labels: &Self::IdxBuf,
        probs: &mut Self::Buf,
        loss: &mut Self::Buf,
    ) -> Result<()>;

    // -- a training step's metrics, kept on the device ------------------------------------
    /// Record one step in slot `slot` of `metrics`, an `alloc_f32` buffer of
    /// (loss, hits) pairs: metrics[2 slot] = loss[0] (from
    /// `softmax_xent_forward_into`), metrics[2 slot + 1] = the batch's top-1
    /// hits, as f32: rows of `probs` where no other class's probability is
    /// at least the label's (`eval::topk_hits`' rule). Nothing waits, so
    /// the training loop reads many steps back at once.
    #[allow(clippy::too_many_arguments)]
    fn record_step_metrics(
        &self,
        n: usize,
        classes: usize,
        probs: &Self::Buf,
        labels: &Self::IdxBuf,
        loss: &Self::Buf,
        slot: usize,
        metrics: &mut Self::Buf,
    ) -> Result<()>;

    // -- loss scaling (mixed precision) --------------------------------------------
    /// x *= s, in place.
    fn scale(&self, s: f32, x: &mut Self::Buf) -> Result<()>;
    /// g *= inv_scale, in place; Ok(false) when any element is then not finite
    /// (the scaled loss overflowed somewhere and the step must be skipped).
    fn unscale_check(&self, inv_scale: f32, g: &mut Self::Buf) -> Result<bool>;
    /// `unscale_check` over several buffers with one answer: Ok(false) when
    /// any element of any of them is not finite. A GPU reads its overflow
    /// flag back once for all of them instead of once per buffer.
    fn unscale_check_all(&self, inv_scale: f32, gs: &mut [&mut Self::Buf]) -> Result<bool> {
        let mut finite = true;
        for g in gs.iter_mut() {
            finite &= self.unscale_check(inv_scale, g)?;
        }
        Ok(finite)
    }

    // -- optimiser ---------------------------------------------------------------
    /// The paper's rule, element-wise: v = m*v - wd*lr*w - lr*g; w += v.
    fn sgd_update(
        &self,
        p: &SgdParams,
        w: &mut Self::Buf,
        g: &Self::Buf,
        v: &mut Self::Buf,
    ) -> Result<()>;
}
