//! The CUDA kernels (kernels/*.cu) compiled for the host and run on the CPU,
//! for testing their arithmetic without a GPU: tests/kernels_host.rs compares
//! these results with the CPU reference (`backend::cpu`). Not a backend: each
//! call runs the whole launch grid on the calling thread, one GPU thread
//! after another (kernels/host/shim.h), so it is slow.
//!
//! Every wrapper takes slices, checks their lengths and the geometry the way
//! the CPU reference does (a shape error, never a panic, on bad input), picks
//! (grid, block) with `launch_1d` exactly as the CUDA backend does, and runs
//! the host build of the kernel of the same name (the alexnet-kernels-host
//! crate, kernels/host/).
use alexnet_cuda::backend::cpu::{checked_product, conv, elementwise};
use alexnet_cuda::backend::{ConvGeom, LrnParams, Nchw, PoolGeom, SgdParams};
use alexnet_cuda::error::{check_len, Error, Result};
use alexnet_kernels::launch_1d;
use alexnet_kernels_host as ffi;
pub use alexnet_kernels_host::Half;

/// A shape error, as the CPU reference reports one.
fn shape_err(op: &'static str, detail: String) -> Error {
    Error::Shape { op, detail }
}

/// `v` as a kernel's `int` argument, or a shape error.
fn int(op: &'static str, what: &str, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| shape_err(op, format!("{what} = {v} does not fit a kernel's int")))
}

/// A buffer length as a kernel's `long long` argument (slices never exceed isize::MAX).
fn long(len: usize) -> i64 {
    len as i64
}

/// Checks that the product of `dims` fits an `int` (a kernel computes it in int).
fn int_product(op: &'static str, what: &str, dims: &[usize]) -> Result<i32> {
    int(op, what, checked_product(op, what, dims)?)
}

/// Which instantiation of a pooling or LRN kernel body a wrapper runs: the entry
/// point's choice (int index math for any buffer a test can hold), or the
/// long long one, which the entry point picks only past 2^31 elements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Index {
    Picked,
    Long,
}

/// Whether the pooling and LRN entry points run int index math for a
/// buffer of `len` elements on a grid of `threads` threads (prelude.cuh).
pub fn index_fits_int(len: i64, threads: i64) -> bool {
    // SAFETY: pure arithmetic on two integers.
    unsafe { ffi::host_index_fits_int(len, threads) != 0 }
}

// -- LRN -------------------------------------------------------------------------

fn lrn_args(op: &'static str, p: &LrnParams, s: &Nchw) -> Result<(i32, i32, i32, i32)> {
    checked_product(op, "tensor", &[s.n, s.c, s.h, s.w])?;
    if p.size == 0 {
        return Err(shape_err(op, "window size must be >= 1".into()));
    }
    Ok((
        int(op, "n", s.n)?,
        int(op, "c", s.c)?,
        int_product(op, "h * w", &[s.h, s.w])?,
        int(op, "size", p.size)?,
    ))
}

/// `lrn_forward_f32`: y = x * scale^-beta, scale = k + alpha * window sum of x^2.
pub fn lrn_forward(
    p: &LrnParams,
    s: &Nchw,
    x: &[f32],
    y: &mut [f32],
    scale: &mut [f32],
) -> Result<()> {
    lrn_forward_as(Index::Picked, p, s, x, y, scale)
}

/// `lrn_forward` through the body with long long index math.
pub fn lrn_forward_long(
    p: &LrnParams,
    s: &Nchw,
    x: &[f32],
    y: &mut [f32],
    scale: &mut [f32],
) -> Result<()> {
    lrn_forward_as(Index::Long, p, s, x, y, scale)
}

fn lrn_forward_as(
    index: Index,
    p: &LrnParams,
    s: &Nchw,
    x: &[f32],
    y: &mut [f32],
    scale: &mut [f32],
) -> Result<()> {
    const OP: &str = "lrn_forward_f32";
    let (n, c, hw, size) = lrn_args(OP, p, s)?;
    check_len(OP, "x", x.len(), s.len())?;
    check_len(OP, "y", y.len(), s.len())?;
    check_len(OP, "scale", scale.len(), s.len())?;
    let (grid, block) = launch_1d(s.n * s.h * s.w);
    // SAFETY: x, y and scale hold n*c*h*w elements (checked), which is all the
    // kernel indexes; y and scale are distinct &mut borrows.
    unsafe {
        let run = match index {
            Index::Picked => ffi::host_lrn_forward_f32,
            Index::Long => ffi::host_lrn_forward_f32_i64,
        };
        run(
            grid,
            block,
            x.as_ptr(),
            y.as_mut_ptr(),
            scale.as_mut_ptr(),
            n,
            c,
            hw,
            size,
            p.alpha,
            p.beta,
            p.k,
        );
    }
    Ok(())
}

/// `lrn_backward_f32`: dx from dy, given the forward pass's x, y and scale.
pub fn lrn_backward(
    p: &LrnParams,
    s: &Nchw,
    x: &[f32],
    y: &[f32],
    scale: &[f32],
    dy: &[f32],
    dx: &mut [f32],
) -> Result<()> {
    lrn_backward_as(Index::Picked, p, s, x, y, scale, dy, dx)
}

/// `lrn_backward` through the body with long long index math.
pub fn lrn_backward_long(
    p: &LrnParams,
    s: &Nchw,
    x: &[f32],
    y: &[f32],
    scale: &[f32],
    dy: &[f32],
    dx: &mut [f32],
) -> Result<()> {
    lrn_backward_as(Index::Long, p, s, x, y, scale, dy, dx)
}

#[allow(clippy::too_many_arguments)]
fn lrn_backward_as(
    index: Index,
    p: &LrnParams,
    s: &Nchw,
    x: &[f32],
    y: &[f32],
    scale: &[f32],
    dy: &[f32],
    dx: &mut [f32],
) -> Result<()> {
    const OP: &str = "lrn_backward_f32";
    let (n, c, hw, size) = lrn_args(OP, p, s)?;
    for (what, len) in [
        ("x", x.len()),
        ("y", y.len()),
        ("scale", scale.len()),
        ("dy", dy.len()),
        ("dx", dx.len()),
    ] {
        check_len(OP, what, len, s.len())?;
    }
    let (grid, block) = launch_1d(s.n * s.h * s.w);
    // SAFETY: every buffer holds n*c*h*w elements (checked); dx is the only output.
    unsafe {
        let run = match index {
            Index::Picked => ffi::host_lrn_backward_f32,
            Index::Long => ffi::host_lrn_backward_f32_i64,
        };
        run(
            grid,
            block,
            x.as_ptr(),
            y.as_ptr(),
            scale.as_ptr(),
            dy.as_ptr(),
            dx.as_mut_ptr(),
            n,
            c,
            hw,
            size,
            p.alpha,
            p.beta,
        );
    }
    Ok(())
}

// -- dropout -----------------------------------------------------------------------

/// `dropout_forward_f32`: mask = 0 or 1/(1-p) from the hash of (seed, i); x *= mask.
pub fn dropout_forward(p: f32, seed: u64, x: &mut [f32], mask: &mut [f32]) -> Result<()> {
    const OP: &str = "dropout_forward_f32";
    check_drop_probability(OP, p)?;
    check_len(OP, "mask", mask.len(), x.len())?;
    let (grid, block) = launch_1d(x.len());
    // SAFETY: x and mask both hold len elements (checked) and are distinct borrows.
    unsafe {
        ffi::host_dropout_forward_f32(
            grid,
            block,
            x.as_mut_ptr(),
            mask.as_mut_ptr(),
            seed,
            p,
            long(x.len()),
        );
    }
    Ok(())
}

fn check_drop_probability(op: &'static str, p: f32) -> Result<()> {
    if (0.0..1.0).contains(&p) {
        Ok(())
    } else {
        Err(shape_err(
            op,
            format!("drop probability {p} is not in [0, 1)"),
        ))
    }
}

/// `dropout_backward_f32`: dy *= mask.
pub fn dropout_backward(mask: &[f32], dy: &mut [f32]) -> Result<()> {
    check_len("dropout_backward_f32", "dy", dy.len(), mask.len())?;
    let (grid, block) = launch_1d(dy.len());
    // SAFETY: mask and dy both hold len elements (checked).
    unsafe {
        ffi::host_dropout_backward_f32(grid, block, mask.as_ptr(), dy.as_mut_ptr(), long(dy.len()));
    }
    Ok(())
}

// -- softmax cross-entropy ---------------------------------------------------------------

fn xent_args(
    op: &'static str,
    n: usize,
    classes: usize,
    a: usize,
    labels: &[u32],
    out: usize,
) -> Result<(i32, i32)> {
    let len = checked_product(op, "logits", &[n, classes])?;
    check_len(op, "logits/probs", a, len)?;
    check_len(op, "labels", labels.len(), n)?;
    check_len(op, "output", out, len)?;
    if let Some((i, &l)) = labels
        .iter()
        .enumerate()
        .find(|(_, &l)| l as usize >= classes)
    {
        return Err(shape_err(
            op,
            format!("label {l} of row {i} is not < {classes} classes"),
        ));
    }
    Ok((int(op, "n", n)?, int(op, "classes", classes)?))
}

/// The device scratch of the softmax forward's kernels for `n` rows of
/// `classes`, as the CUDA backend sizes it (NaN-filled, so a value a kernel
/// reads before another wrote it shows).
struct XentScratch {
    parts: usize,
    part_max: Vec<f32>,
    e: Vec<f32>,
    inv: Vec<f32>,
}

impl XentScratch {
    fn new(n: usize, classes: usize) -> XentScratch {
        let parts = alexnet_kernels::softmax_parts(classes);
        XentScratch {
            parts,
            part_max: vec![f32::NAN; n * parts],
            e: vec![f32::NAN; n * classes],
            inv: vec![f32::NAN; n],
        }
    }
}

/// `softmax_xent_{max,exp,sum,probs}_f32` launched in turn as the CUDA
/// backend launches them: probs = softmax(logits) per row and row_loss[row]
/// = -log probs[label]; returns their mean (summed in f64, as the CPU
/// reference sums its per-row losses).
pub fn softmax_xent_forward(
    n: usize,
    classes: usize,
    logits: &[f32],
    labels: &[u32],
    probs: &mut [f32],
    row_loss: &mut [f32],
) -> Result<f32> {
    const OP: &str = "softmax_xent_forward_f32";
    let (ni, ci) = xent_args(OP, n, classes, logits.len(), labels, probs.len())?;
    check_len(OP, "row_loss", row_loss.len(), n)?;
    if n == 0 {
        return Ok(0.0);
    }
    let mut s = XentScratch::new(n, classes);
    let pi = int(OP, "parts", s.parts)?;
    // SAFETY: logits and probs hold n*classes elements, labels and row_loss n
    // (checked); every label is < classes (checked), so z[label] is in
    // bounds; the scratch holds n*parts, n*classes and n floats.
    unsafe {
        let (grid, block) = launch_1d(n * s.parts);
        ffi::host_softmax_xent_max_f32(
            grid,
            block,
            logits.as_ptr(),
            s.part_max.as_mut_ptr(),
            ni,
            ci,
            pi,
        );
        let (grid, block) = launch_1d(n * classes);
        ffi::host_softmax_xent_exp_f32(
            grid,
            block,
            logits.as_ptr(),
            s.part_max.as_ptr(),
            s.e.as_mut_ptr(),
            ni,
            ci,
            pi,
        );
        let (grid, block) = launch_1d(n);
        ffi::host_softmax_xent_sum_f32(
            grid,
            block,
            logits.as_ptr(),
            labels.as_ptr(),
            s.part_max.as_ptr(),
            s.e.as_ptr(),
            s.inv.as_mut_ptr(),
            row_loss.as_mut_ptr(),
            ni,
            ci,
            pi,
        );
        let (grid, block) = launch_1d(n * classes);
        ffi::host_softmax_xent_probs_f32(
            grid,
            block,
            s.e.as_ptr(),
            s.inv.as_ptr(),
            probs.as_mut_ptr(),
            ni,
            ci,
        );
    }
    let total: f64 = row_loss.iter().map(|&l| l as f64).sum();
    Ok((total / n as f64) as f32)
}

/// The one-thread-per-row softmax forward the four kernels replaced (a
/// tests-only build in kernels/host/launch.cpp): probs and row_loss as
/// `softmax_xent_forward` must give them, bit for bit.
pub fn softmax_xent_rowwise(
    n: usize,
    classes: usize,
    logits: &[f32],
    labels: &[u32],
    probs: &mut [f32],
    row_loss: &mut [f32],
) -> Result<()> {
    const OP: &str = "softmax_xent_rowwise_f32";
    let (ni, ci) = xent_args(OP, n, classes, logits.len(), labels, probs.len())?;
    check_len(OP, "row_loss", row_loss.len(), n)?;
    let (grid, block) = launch_1d(n);
    // SAFETY: as softmax_xent_forward's.
    unsafe {
        ffi::host_softmax_xent_rowwise_f32(
            grid,
            block,
            logits.as_ptr(),
            labels.as_ptr(),
            probs.as_mut_ptr(),
            row_loss.as_mut_ptr(),
            ni,
            ci,
        );
    }
    Ok(())
}

/// `softmax_xent_backward_f32`: dlogits = (probs - onehot(labels)) / n.
pub fn softmax_xent_backward(
    n: usize,
    classes: usize,
    probs: &[f32],
    labels: &[u32],
    dlogits: &mut [f32],
) -> Result<()> {
    const OP: &str = "softmax_xent_backward_f32";
    let (ni, ci) = xent_args(OP, n, classes, probs.len(), labels, dlogits.len())?;
    if n == 0 {
        return Ok(());
    }
    let (grid, block) = launch_1d(probs.len());
    // SAFETY: probs and dlogits hold n*classes elements, labels n (checked).
    unsafe {
        ffi::host_softmax_xent_backward_f32(
            grid,
            block,
            probs.as_ptr(),
            labels.as_ptr(),
            dlogits.as_mut_ptr(),
            ni,
            ci,
        );
    }
    Ok(())
}

/// `softmax_xent_mean_f32`: the mean of `row_loss`, summed in double in row
/// order by one thread (0 for no rows).
pub fn softmax_xent_mean(row_loss: &[f32]) -> Result<f32> {
    let n = int("softmax_xent_mean_f32", "n", row_loss.len())?;
    let mut loss = [f32::NAN];
    let (grid, block) = launch_1d(1);
    // SAFETY: row_loss holds n floats and loss one, all the kernel touches.
    unsafe {
        ffi::host_softmax_xent_mean_f32(grid, block, row_loss.as_ptr(), loss.as_mut_ptr(), n);
    }
    Ok(loss[0])
}

/// `step_hits_f32` then `step_record_f32`: slot `slot` of `metrics` gets
/// (`loss`, the top-1 hits of `probs`).
pub fn record_step_metrics(
    n: usize,
    classes: usize,
    probs: &[f32],
    labels: &[u32],
    loss: f32,
    slot: usize,
    metrics: &mut [f32],
) -> Result<()> {
    const OP: &str = "step_hits_f32";
    let (ni, ci) = xent_args(OP, n, classes, probs.len(), labels, probs.len())?;
    let mut row_hit = vec![f32::NAN; n];
    let (grid, block) = launch_1d(n);
    // SAFETY: probs holds n*classes values, labels and row_hit n (checked);
    // every label is < classes (checked).
    unsafe {
        ffi::host_step_hits_f32(
            grid,
            block,
            probs.as_ptr(),
            labels.as_ptr(),
            row_hit.as_mut_ptr(),
            ni,
            ci,
        );
    }
    step_record(&row_hit, loss, slot, metrics)
}

/// `step_record_f32`: metrics[2 slot] = loss, metrics[2 slot + 1] = sum of `row_hit`.
fn step_record(row_hit: &[f32], loss: f32, slot: usize, metrics: &mut [f32]) -> Result<()> {
    const OP: &str = "step_record_f32";
    elementwise::check_step_slot(OP, 1, slot, metrics.len())?;
    let (ni, si) = (int(OP, "n", row_hit.len())?, int(OP, "slot", slot)?);
    let (grid, block) = launch_1d(1);
    // SAFETY: loss is one float, row_hit n, metrics at least 2*slot+2 (checked).
    unsafe {
        ffi::host_step_record_f32(
            grid,
            block,
            &loss,
            row_hit.as_ptr(),
            metrics.as_mut_ptr(),
            ni,
            si,
        );
    }
    Ok(())
}

// -- SGD -------------------------------------------------------------------------------

/// `sgd_update_f32`: v = m*v - wd*lr*w - lr*g; w += v.
pub fn sgd_update(p: &SgdParams, w: &mut [f32], g: &[f32], v: &mut [f32]) -> Result<()> {
    const OP: &str = "sgd_update_f32";
    check_len(OP, "g", g.len(), w.len())?;
    check_len(OP, "v", v.len(), w.len())?;
    let (grid, block) = launch_1d(w.len());
    // SAFETY: w, g and v hold len elements (checked); w and v are distinct borrows.
    unsafe {
        ffi::host_sgd_update_f32(
            grid,
            block,
            w.as_mut_ptr(),
            g.as_ptr(),
            v.as_mut_ptr(),
            p.lr,
            p.momentum,
            p.weight_decay,
            long(w.len()),
        );
    }
    Ok(())
}

// -- bias and ReLU -------------------------------------------------------------------------

/// `bias_relu_forward_f32`: y[n, c, :, :] += b[c], then max(y, 0) when `relu`.
pub fn bias_relu_forward(s: &Nchw, y: &mut [f32], b: &[f32], relu: bool) -> Result<()> {
    const OP: &str = "bias_relu_forward_f32";
    let len = checked_product(OP, "y", &[s.n, s.c, s.h, s.w])?;
    check_len(OP, "y", y.len(), len)?;
    check_len(OP, "b", b.len(), s.c)?;
    let (c, hw) = (int(OP, "c", s.c)?, int_product(OP, "h * w", &[s.h, s.w])?);
    if len == 0 {
        return Ok(()); // also keeps the kernel's division by hw away from zero
    }
    let (grid, block) = launch_1d(len);
    // SAFETY: y holds n*c*h*w elements and b holds c (checked); hw > 0 here.
    unsafe {
        ffi::host_bias_relu_forward_f32(
            grid,
            block,
            y.as_mut_ptr(),
            b.as_ptr(),
            c,
            hw,
            long(len),
            relu as i32,
        );
    }
    Ok(())
}

/// `relu_forward_f32`: x = max(x, 0).
pub fn relu_forward(x: &mut [f32]) {
    let (grid, block) = launch_1d(x.len());
    // SAFETY: the kernel touches x[0..len) only.
    unsafe { ffi::host_relu_forward_f32(grid, block, x.as_mut_ptr(), long(x.len())) }
}

/// `relu_backward_f32`: dy = 0 where y <= 0.
pub fn relu_backward(y: &[f32], dy: &mut [f32]) -> Result<()> {
    check_len("relu_backward_f32", "dy", dy.len(), y.len())?;
    let (grid, block) = launch_1d(y.len());
    // SAFETY: y and dy both hold len elements (checked).
    unsafe {
        ffi::host_relu_backward_f32(grid, block, y.as_ptr(), dy.as_mut_ptr(), long(y.len()));
    }
    Ok(())
}

/// `add_f32`: dst += src.
pub fn add(dst: &mut [f32], src: &[f32]) -> Result<()> {
    check_len("add_f32", "src", src.len(), dst.len())?;
    let (grid, block) = launch_1d(dst.len());
    // SAFETY: dst and src both hold len elements (checked).
    unsafe { ffi::host_add_f32(grid, block, dst.as_mut_ptr(), src.as_ptr(), long(dst.len())) }
    Ok(())
}

/// db[c] = sum over n, h, w of dy: `bias_backward_partial_f32` (one sum per
/// (n, c) plane) then `bias_backward_reduce_f32` (one sum per channel).
pub fn bias_backward(s: &Nchw, dy: &[f32], db: &mut [f32]) -> Result<()> {
    const OP: &str = "bias_backward_f32";
    let len = checked_product(OP, "dy", &[s.n, s.c, s.h, s.w])?;
    check_len(OP, "dy", dy.len(), len)?;
    check_len(OP, "db", db.len(), s.c)?;
    let (n, c) = (int(OP, "n", s.n)?, int(OP, "c", s.c)?);
    let hw = int_product(OP, "h * w", &[s.h, s.w])?;
    let mut partial = vec![0.0f32; s.n * s.c];
    let (grid, block) = launch_1d(partial.len());
    // SAFETY: dy holds n*c*h*w elements (checked), partial n*c (allocated here).
    unsafe {
        ffi::host_bias_backward_partial_f32(
            grid,
            block,
            dy.as_ptr(),
            partial.as_mut_ptr(),
            n,
            c,
            hw,
        );
    }
    let (grid, block) = launch_1d(s.c);
    // SAFETY: partial holds n*c elements and db c (checked).
    unsafe {
        ffi::host_bias_backward_reduce_f32(grid, block, partial.as_ptr(), db.as_mut_ptr(), n, c);
    }
    Ok(())
}

// -- max pooling -------------------------------------------------------------------------

/// The kernels' int arguments (planes, h, w, ho, wo, size, stride), after
/// checking the geometry as the CPU reference does.
fn pool_args(op: &'static str, g: &PoolGeom) -> Result<[i32; 7]> {
    if g.size == 0 || g.stride == 0 || g.size > g.h || g.size > g.w {
        return Err(shape_err(
            op,
            format!(
                "window {}x{} stride {} does not fit {g:?}",
                g.size, g.size, g.stride
            ),
        ));
    }
    checked_product(op, "x", &[g.n, g.c, g.h, g.w])?;
    int_product(op, "h * w", &[g.h, g.w])?;
    Ok([
        int_product(op, "n * c", &[g.n, g.c])?,
        int(op, "h", g.h)?,
        int(op, "w", g.w)?,
        int(op, "h_out", g.h_out())?,
        int(op, "w_out", g.w_out())?,
        int(op, "size", g.size)?,
        int(op, "stride", g.stride)?,
    ])
}

/// `max_pool_forward_f32`: y = window max, argmax = winner's index in its plane
/// (ties keep the first in row-major window order).
pub fn max_pool_forward(g: &PoolGeom, x: &[f32], y: &mut [f32], argmax: &mut [u32]) -> Result<()> {
    max_pool_forward_as(Index::Picked, g, x, y, argmax)
}

/// `max_pool_forward` through the body with long long index math.
pub fn max_pool_forward_long(
    g: &PoolGeom,
    x: &[f32],
    y: &mut [f32],
    argmax: &mut [u32],
) -> Result<()> {
    max_pool_forward_as(Index::Long, g, x, y, argmax)
}

fn max_pool_forward_as(
    index: Index,
    g: &PoolGeom,
    x: &[f32],
    y: &mut [f32],
    argmax: &mut [u32],
) -> Result<()> {
    const OP: &str = "max_pool_forward_f32";
    let [planes, h, w, ho, wo, size, stride] = pool_args(OP, g)?;
    check_len(OP, "x", x.len(), g.x_len())?;
    check_len(OP, "y", y.len(), g.y_len())?;
    check_len(OP, "argmax", argmax.len(), g.y_len())?;
    let (grid, block) = launch_1d(g.y_len());
    // SAFETY: x, y and argmax have the geometry's lengths (checked), and every
    // window lies inside its plane (size <= h, w; floor-mode output size).
    unsafe {
        let run = match index {
            Index::Picked => ffi::host_max_pool_forward_f32,
            Index::Long => ffi::host_max_pool_forward_f32_i64,
        };
        run(
            grid,
            block,
            x.as_ptr(),
            y.as_mut_ptr(),
            argmax.as_mut_ptr(),
            planes,
            h,
            w,
            ho,
            wo,
            size,
            stride,
        );
    }
    Ok(())
}

/// `max_pool_backward_f32`: dx[i] = sum of dy over the outputs whose winner is i.
/// Every argmax must lie inside its own output's window (as forward writes
/// it): the kernel gathers from covering windows only, so other values would
/// be silently dropped; here they are a shape error.
pub fn max_pool_backward(g: &PoolGeom, dy: &[f32], argmax: &[u32], dx: &mut [f32]) -> Result<()> {
    max_pool_backward_as(Index::Picked, g, dy, argmax, dx)
}

/// `max_pool_backward` through the body with long long index math.
pub fn max_pool_backward_long(
    g: &PoolGeom,
    dy: &[f32],
    argmax: &[u32],
    dx: &mut [f32],
) -> Result<()> {
    max_pool_backward_as(Index::Long, g, dy, argmax, dx)
}

fn max_pool_backward_as(
    index: Index,
    g: &PoolGeom,
    dy: &[f32],
    argmax: &[u32],
    dx: &mut [f32],
) -> Result<()> {
    const OP: &str = "max_pool_backward_f32";
    let [planes, h, w, ho, wo, size, stride] = pool_args(OP, g)?;
    check_len(OP, "dy", dy.len(), g.y_len())?;
    check_len(OP, "argmax", argmax.len(), g.y_len())?;
    check_len(OP, "dx", dx.len(), g.x_len())?;
    check_argmax(OP, g, argmax)?;
    let (grid, block) = launch_1d(g.x_len());
    // SAFETY: dy, argmax and dx have the geometry's lengths (checked); the
    // kernel reads argmax values only to compare them.
    unsafe {
        let run = match index {
            Index::Picked => ffi::host_max_pool_backward_f32,
            Index::Long => ffi::host_max_pool_backward_f32_i64,
        };
        run(
            grid,
            block,
            dy.as_ptr(),
            argmax.as_ptr(),
            dx.as_mut_ptr(),
            planes,
            h,
            w,
            ho,
            wo,
            size,
            stride,
        );
    }
    Ok(())
}

/// Every argmax must lie inside its own output's window (see `max_pool_backward`).
fn check_argmax(op: &'static str, g: &PoolGeom, argmax: &[u32]) -> Result<()> {
    let plane_out = g.h_out() * g.w_out();
    for (o, &a) in argmax.iter().enumerate() {
        let (oy, ox) = ((o % plane_out) / g.w_out(), o % g.w_out());
        let (iy, ix) = (a as usize / g.w, a as usize % g.w);
        let inside = |i: usize, o: usize| i >= o * g.stride && i < o * g.stride + g.size;
        if a as usize >= g.h * g.w || !inside(iy, oy) || !inside(ix, ox) {
            return Err(shape_err(
                op,
                format!("argmax {a} of output {o} is outside its window"),
            ));
        }
    }
    Ok(())
}

// -- im2col / col2im ------------------------------------------------------------------------

/// The kernels' int arguments (images, c, h, w, k, stride, pad, ho, wo) for a
/// grouped convolution: images = n * groups, c = c_in / groups (a grouped NCHW
/// tensor is [n * groups][c_in / groups][h][w] in memory). Also returns the
/// column buffer's length, [n * groups][c * k * k][ho * wo].
fn im2col_args(op: &'static str, g: &ConvGeom) -> Result<([i32; 9], usize)> {
    let (h_out, w_out) = conv::validate(op, g)?;
    let c = g.c_in / g.groups;
    int_product(op, "c * k * k", &[c, g.k, g.k])?;
    int_product(op, "h * w", &[g.h, g.w])?;
    int_product(op, "h_out * w_out", &[h_out, w_out])?;
    // oy * stride - pad + i and friends stay below h + 2 * pad + stride
    int(
        op,
        "h + 2 * pad + stride",
        g.h.max(g.w)
            .saturating_add(2 * g.pad)
            .saturating_add(g.stride),
    )?;
    let col_len = checked_product(op, "col", &[g.n, g.groups, c, g.k, g.k, h_out, w_out])?;
    let args = [
        int_product(op, "n * groups", &[g.n, g.groups])?,
        int(op, "c_in / groups", c)?,
        int(op, "h", g.h)?,
        int(op, "w", g.w)?,
        int(op, "k", g.k)?,
        int(op, "stride", g.stride)?,
        int(op, "pad", g.pad)?,
        int(op, "h_out", h_out)?,
        int(op, "w_out", w_out)?,
    ];
    Ok((args, col_len))
}

/// The length of im2col's column buffer for `g`: n * groups * (c_in/groups * k * k) * (h_out * w_out).
pub fn im2col_len(g: &ConvGeom) -> Result<usize> {
    im2col_args("im2col_f32", g).map(|(_, len)| len)
}

/// `im2col_f32`: col[n * groups][(c*k + i)*k + j][oy*w_out + ox] = the input
/// pixel that kernel tap (c, i, j) sees at output (oy, ox), 0 in the padding.
pub fn im2col(g: &ConvGeom, x: &[f32], col: &mut [f32]) -> Result<()> {
    const OP: &str = "im2col_f32";
    let ([images, c, h, w, k, stride, pad, ho, wo], col_len) = im2col_args(OP, g)?;
    check_len(OP, "x", x.len(), g.x_len())?;
    check_len(OP, "col", col.len(), col_len)?;
    let (grid, block) = launch_1d(col_len);
    // SAFETY: x and col have the geometry's lengths (checked); reads are guarded
    // by the kernel's in-image test.
    unsafe {
        ffi::host_im2col_f32(
            grid,
            block,
            x.as_ptr(),
            col.as_mut_ptr(),
            images,
            c,
            h,
            w,
            k,
            stride,
            pad,
            ho,
            wo,
        );
    }
    Ok(())
}

/// `col2im_f32`: the adjoint of `im2col`, dx[pixel] = sum of the column
/// entries copied from it (overwrites dx).
pub fn col2im(g: &ConvGeom, col: &[f32], dx: &mut [f32]) -> Result<()> {
    const OP: &str = "col2im_f32";
    let ([images, c, h, w, k, stride, pad, ho, wo], col_len) = im2col_args(OP, g)?;
    check_len(OP, "col", col.len(), col_len)?;
    check_len(OP, "dx", dx.len(), g.x_len())?;
    let (grid, block) = launch_1d(g.x_len());
    // SAFETY: col and dx have the geometry's lengths (checked); the kernel reads
    // only column entries of in-range outputs.
    unsafe {
        ffi::host_col2im_f32(
            grid,
            block,
            col.as_ptr(),
            dx.as_mut_ptr(),
            images,
            c,
            h,
            w,
            k,
            stride,
            pad,
            ho,
            wo,
        );
    }
    Ok(())
}

// -- precision conversion -----------------------------------------------------------------

/// Defines a conversion wrapper `name(src, dst)` that runs the kernel `name`.
macro_rules! convert {
    ($($(#[$doc:meta])* $name:ident: $src:ty => $dst:ty, $kernel:path;)*) => {$(
        $(#[$doc])*
        pub fn $name(src: &[$src], dst: &mut [$dst]) -> Result<()> {
            check_len(stringify!($name), "dst", dst.len(), src.len())?;
            let (grid, block) = launch_1d(src.len());
            // SAFETY: src and dst both hold len elements (checked).
            unsafe { $kernel(grid, block, src.as_ptr(), dst.as_mut_ptr(), long(src.len())) }
            Ok(())
        }
    )*};
}

convert! {
    /// `f32_to_f16`: IEEE half bits, round to nearest even.
    f32_to_f16: f32 => u16, ffi::host_f32_to_f16;
    /// `f16_to_f32`: exact.
    f16_to_f32: u16 => f32, ffi::host_f16_to_f32;
    /// `f32_to_bf16`: bfloat16 bits, round to nearest even.
    f32_to_bf16: f32 => u16, ffi::host_f32_to_bf16;
    /// `bf16_to_f32`: exact.
    bf16_to_f32: u16 => f32, ffi::host_bf16_to_f32;
}

/// `unscale_check_f32`: g *= inv_scale; returns true when any result is
/// infinite or NaN.
pub fn unscale_check(g: &mut [f32], inv_scale: f32) -> bool {
    let mut overflow = 0i32;
    let (grid, block) = launch_1d(g.len());
    // SAFETY: the kernel touches g[0..len) and the one int `overflow`.
    unsafe {
        ffi::host_unscale_check_f32(
            grid,
            block,
            g.as_mut_ptr(),
            inv_scale,
            long(g.len()),
            &mut overflow,
        );
    }
    overflow != 0
}

// -- 16-bit storage ---------------------------------------------------------------------

/// `lrn_forward_{f16,bf16}`: as `lrn_forward`, with 16-bit x, y and scale.
pub fn lrn_forward_16(
    t: Half,
    p: &LrnParams,
    s: &Nchw,
    x: &[u16],
    y: &mut [u16],
    scale: &mut [u16],
) -> Result<()> {
    let op = t.pick("lrn_forward_f16", "lrn_forward_bf16");
    let (n, c, hw, size) = lrn_args(op, p, s)?;
    check_len(op, "x", x.len(), s.len())?;
    check_len(op, "y", y.len(), s.len())?;
    check_len(op, "scale", scale.len(), s.len())?;
    let f = ffi::lrn_forward_16(t);
    let (grid, block) = launch_1d(s.n * s.h * s.w);
    // SAFETY: x, y and scale hold n*c*h*w elements (checked); y and scale are
    // distinct &mut borrows.
    unsafe {
        f(
            grid,
            block,
            x.as_ptr(),
            y.as_mut_ptr(),
            scale.as_mut_ptr(),
            n,
            c,
            hw,
            size,
            p.alpha,
            p.beta,
            p.k,
        );
    }
    Ok(())
}

/// `lrn_backward_{f16,bf16}`: as `lrn_backward`, with 16-bit buffers.
#[allow(clippy::too_many_arguments)]
pub fn lrn_backward_16(
    t: Half,
    p: &LrnParams,
    s: &Nchw,
    x: &[u16],
    y: &[u16],
    scale: &[u16],
    dy: &[u16],
    dx: &mut [u16],
) -> Result<()> {
    let op = t.pick("lrn_backward_f16", "lrn_backward_bf16");
    let (n, c, hw, size) = lrn_args(op, p, s)?;
    for (what, len) in [
        ("x", x.len()),
        ("y", y.len()),
        ("scale", scale.len()),
        ("dy", dy.len()),
        ("dx", dx.len()),
    ] {
        check_len(op, what, len, s.len())?;
    }
    let f = ffi::lrn_backward_16(t);
    let (grid, block) = launch_1d(s.n * s.h * s.w);
    // SAFETY: every buffer holds n*c*h*w elements (checked); dx is the only output.
    unsafe {
        f(
            grid,
            block,
            x.as_ptr(),
            y.as_ptr(),
            scale.as_ptr(),
            dy.as_ptr(),
            dx.as_mut_ptr(),
            n,
            c,
            hw,
            size,
            p.alpha,
            p.beta,
        );
    }
    Ok(())
}

/// `dropout_forward_{f16,bf16}`: the f32 kernel's drops for the same seed;
/// mask = 0 or 1/(1-p) rounded to 16 bits; x *= mask.
pub fn dropout_forward_16(
    t: Half,
    p: f32,
    seed: u64,
    x: &mut [u16],
    mask: &mut [u16],
) -> Result<()> {
    let op = t.pick("dropout_forward_f16", "dropout_forward_bf16");
    check_drop_probability(op, p)?;
    check_len(op, "mask", mask.len(), x.len())?;
    let f = ffi::dropout_forward_16(t);
    let (grid, block) = launch_1d(x.len());
    // SAFETY: x and mask both hold len elements (checked) and are distinct borrows.
    unsafe {
        f(
            grid,
            block,
            x.as_mut_ptr(),
            mask.as_mut_ptr(),
            seed,
            p,
            long(x.len()),
        );
    }
    Ok(())
}

/// `dropout_backward_{f16,bf16}`: dy *= mask.
pub fn dropout_backward_16(t: Half, mask: &[u16], dy: &mut [u16]) -> Result<()> {
    let op = t.pick("dropout_backward_f16", "dropout_backward_bf16");
    check_len(op, "dy", dy.len(), mask.len())?;
    let f = ffi::dropout_backward_16(t);
    let (grid, block) = launch_1d(dy.len());
    // SAFETY: mask and dy both hold len elements (checked).
    unsafe { f(grid, block, mask.as_ptr(), dy.as_mut_ptr(), long(dy.len())) }
    Ok(())
}

/// `softmax_xent_{max,exp,sum,probs}_{f16,bf16}` launched in turn as the
/// CUDA backend launches them: 16-bit probs, f32 row losses; returns their
/// mean (summed in f64).
pub fn softmax_xent_forward_16(
    t: Half,
    n: usize,
    classes: usize,
    logits: &[u16],
    labels: &[u32],
    probs: &mut [u16],
    row_loss: &mut [f32],
) -> Result<f32> {
    let op = t.pick("softmax_xent_forward_f16", "softmax_xent_forward_bf16");
    let (ni, ci) = xent_args(op, n, classes, logits.len(), labels, probs.len())?;
    check_len(op, "row_loss", row_loss.len(), n)?;
    if n == 0 {
        return Ok(0.0);
    }
    let mut s = XentScratch::new(n, classes);
    let pi = int(op, "parts", s.parts)?;
    // SAFETY: logits and probs hold n*classes elements, labels and row_loss n
    // (checked); every label is < classes (checked); the scratch holds
    // n*parts, n*classes and n floats.
    unsafe {
        let (grid, block) = launch_1d(n * s.parts);
        ffi::softmax_xent_max_16(t)(
            grid,
            block,
            logits.as_ptr(),
            s.part_max.as_mut_ptr(),
            ni,
            ci,
            pi,
        );
        let (grid, block) = launch_1d(n * classes);
        ffi::softmax_xent_exp_16(t)(
            grid,
            block,
            logits.as_ptr(),
            s.part_max.as_ptr(),
            s.e.as_mut_ptr(),
            ni,
            ci,
            pi,
        );
        let (grid, block) = launch_1d(n);
        ffi::softmax_xent_sum_16(t)(
            grid,
            block,
            logits.as_ptr(),
            labels.as_ptr(),
            s.part_max.as_ptr(),
            s.e.as_ptr(),
            s.inv.as_mut_ptr(),
            row_loss.as_mut_ptr(),
            ni,
            ci,
            pi,
        );
        let (grid, block) = launch_1d(n * classes);
        ffi::softmax_xent_probs_16(t)(
            grid,
            block,
            s.e.as_ptr(),
            s.inv.as_ptr(),
            probs.as_mut_ptr(),
            ni,
            ci,
        );
    }
    let total: f64 = row_loss.iter().map(|&l| l as f64).sum();
    Ok((total / n as f64) as f32)
}

/// `softmax_xent_rowwise` for 16-bit logits and probs.
pub fn softmax_xent_rowwise_16(
    t: Half,
    n: usize,
    classes: usize,
    logits: &[u16],
    labels: &[u32],
    probs: &mut [u16],
    row_loss: &mut [f32],
) -> Result<()> {
    let op = t.pick("softmax_xent_rowwise_f16", "softmax_xent_rowwise_bf16");
    let (ni, ci) = xent_args(op, n, classes, logits.len(), labels, probs.len())?;
    check_len(op, "row_loss", row_loss.len(), n)?;
    let f = ffi::softmax_xent_rowwise_16(t);
    let (grid, block) = launch_1d(n);
    // SAFETY: as softmax_xent_forward_16's.
    unsafe {
        f(
            grid,
            block,
            logits.as_ptr(),
            labels.as_ptr(),
            probs.as_mut_ptr(),
            row_loss.as_mut_ptr(),
            ni,
            ci,
        );
    }
    Ok(())
}

/// `step_hits_{f16,bf16}` then `step_record_f32`: as `record_step_metrics`
/// on 16-bit probabilities.
#[allow(clippy::too_many_arguments)]
pub fn record_step_metrics_16(
    t: Half,
    n: usize,
    classes: usize,
    probs: &[u16],
    labels: &[u32],
    loss: f32,
    slot: usize,
    metrics: &mut [f32],
) -> Result<()> {
    let op = t.pick("step_hits_f16", "step_hits_bf16");
    let (ni, ci) = xent_args(op, n, classes, probs.len(), labels, probs.len())?;
    let mut row_hit = vec![f32::NAN; n];
    let f = ffi::step_hits_16(t);
    let (grid, block) = launch_1d(n);
    // SAFETY: probs holds n*classes values, labels and row_hit n (checked);
    // every label is < classes (checked).
    unsafe {
        f(
            grid,
            block,
            probs.as_ptr(),
            labels.as_ptr(),
            row_hit.as_mut_ptr(),
            ni,
            ci,
        );
    }
    step_record(&row_hit, loss, slot, metrics)
}

/// `softmax_xent_backward_{f16,bf16}`: dlogits = (probs - onehot(labels)) / n * scale
/// (`scale`: the loss scale).
pub fn softmax_xent_backward_16(
    t: Half,
    n: usize,
    classes: usize,
    probs: &[u16],
    labels: &[u32],
    scale: f32,
    dlogits: &mut [u16],
) -> Result<()> {
    let op = t.pick("softmax_xent_backward_f16", "softmax_xent_backward_bf16");
    let (ni, ci) = xent_args(op, n, classes, probs.len(), labels, dlogits.len())?;
    if n == 0 {
        return Ok(());
    }
    let f = ffi::softmax_xent_backward_16(t);
    let (grid, block) = launch_1d(probs.len());
    // SAFETY: probs and dlogits hold n*classes elements, labels n (checked).
    unsafe {
        f(
            grid,
            block,
            probs.as_ptr(),
            labels.as_ptr(),
            dlogits.as_mut_ptr(),
            ni,
            ci,
            scale,
        );
    }
    Ok(())
}

/// `sgd_update_f32_store_{f16,bf16}`: `sgd_update` on the f32 master weights
/// w, then w16 = w rounded to 16 bits.
pub fn sgd_update_store_16(
    t: Half,
    p: &SgdParams,
    w: &mut [f32],
    g: &[f32],
    v: &mut [f32],
    w16: &mut [u16],
) -> Result<()> {
    let op = t.pick("sgd_update_f32_store_f16", "sgd_update_f32_store_bf16");
    check_len(op, "g", g.len(), w.len())?;
    check_len(op, "v", v.len(), w.len())?;
    check_len(op, "w16", w16.len(), w.len())?;
    let f = ffi::sgd_update_store_16(t);
    let (grid, block) = launch_1d(w.len());
    // SAFETY: w, g, v and w16 hold len elements (checked); w, v and w16 are
    // distinct borrows.
    unsafe {
        f(
            grid,
            block,
            w.as_mut_ptr(),
            g.as_ptr(),
            v.as_mut_ptr(),
            w16.as_mut_ptr(),
            p.lr,
            p.momentum,
            p.weight_decay,
            long(w.len()),
        );
    }
    Ok(())
}

/// `bias_relu_forward_{f16,bf16}`: y[n, c, :, :] += b[c] (f32), then max(y, 0) when `relu`.
pub fn bias_relu_forward_16(t: Half, s: &Nchw, y: &mut [u16], b: &[f32], relu: bool) -> Result<()> {
    let op = t.pick("bias_relu_forward_f16", "bias_relu_forward_bf16");
    let len = checked_product(op, "y", &[s.n, s.c, s.h, s.w])?;
    check_len(op, "y", y.len(), len)?;
    check_len(op, "b", b.len(), s.c)?;
    let (c, hw) = (int(op, "c", s.c)?, int_product(op, "h * w", &[s.h, s.w])?);
    if len == 0 {
        return Ok(()); // also keeps the kernel's division by hw away from zero
    }
    let f = ffi::bias_relu_forward_16(t);
    let (grid, block) = launch_1d(len);
    // SAFETY: y holds n*c*h*w elements and b holds c (checked); hw > 0 here.
    unsafe {
        f(
            grid,
            block,
            y.as_mut_ptr(),
            b.as_ptr(),
            c,
            hw,
            long(len),
            relu as i32,
        );
    }
    Ok(())
}

/// `relu_forward_{f16,bf16}`: x = max(x, 0).
pub fn relu_forward_16(t: Half, x: &mut [u16]) {
    let f = ffi::relu_forward_16(t);
    let (grid, block) = launch_1d(x.len());
    // SAFETY: the kernel touches x[0..len) only.
    unsafe { f(grid, block, x.as_mut_ptr(), long(x.len())) }
}

/// `relu_backward_{f16,bf16}`: dy = 0 where y <= 0.
pub fn relu_backward_16(t: Half, y: &[u16], dy: &mut [u16]) -> Result<()> {
    let op = t.pick("relu_backward_f16", "relu_backward_bf16");
    check_len(op, "dy", dy.len(), y.len())?;
    let f = ffi::relu_backward_16(t);
    let (grid, block) = launch_1d(y.len());
    // SAFETY: y and dy both hold len elements (checked).
    unsafe { f(grid, block, y.as_ptr(), dy.as_mut_ptr(), long(y.len())) }
    Ok(())
}

/// `add_{f16,bf16}`: dst += src in f32, rounded once to 16 bits.
pub fn add_16(t: Half, dst: &mut [u16], src: &[u16]) -> Result<()> {
    check_len(t.pick("add_f16", "add_bf16"), "src", src.len(), dst.len())?;
    let f = ffi::add_16(t);
    let (grid, block) = launch_1d(dst.len());
    // SAFETY: dst and src both hold len elements (checked).
    unsafe { f(grid, block, dst.as_mut_ptr(), src.as_ptr(), long(dst.len())) }
    Ok(())
}

/// db[c] (f32) = sum over n, h, w of a 16-bit dy: `bias_backward_partial_{f16,bf16}`
/// then `bias_backward_reduce_f32`.
pub fn bias_backward_16(t: Half, s: &Nchw, dy: &[u16], db: &mut [f32]) -> Result<()> {
    let op = t.pick("bias_backward_f16", "bias_backward_bf16");
    let len = checked_product(op, "dy", &[s.n, s.c, s.h, s.w])?;
    check_len(op, "dy", dy.len(), len)?;
    check_len(op, "db", db.len(), s.c)?;
    let (n, c) = (int(op, "n", s.n)?, int(op, "c", s.c)?);
    let hw = int_product(op, "h * w", &[s.h, s.w])?;
    let mut partial = vec![0.0f32; s.n * s.c];
    let f = ffi::bias_backward_partial_16(t);
    let (grid, block) = launch_1d(partial.len());
    // SAFETY: dy holds n*c*h*w elements (checked), partial n*c (allocated here).
    unsafe { f(grid, block, dy.as_ptr(), partial.as_mut_ptr(), n, c, hw) }
    let (grid, block) = launch_1d(s.c);
    // SAFETY: partial holds n*c elements and db c (checked).
    unsafe {
        ffi::host_bias_backward_reduce_f32(grid, block, partial.as_ptr(), db.as_mut_ptr(), n, c);
    }
    Ok(())
}

/// `max_pool_forward_{f16,bf16}`: y = window max (the winner's bits), argmax
/// as `max_pool_forward` gives for the widened input.
pub fn max_pool_forward_16(
    t: Half,
    g: &PoolGeom,
    x: &[u16],
    y: &mut [u16],
    argmax: &mut [u32],
) -> Result<()> {
    let op = t.pick("max_pool_forward_f16", "max_pool_forward_bf16");
    let [planes, h, w, ho, wo, size, stride] = pool_args(op, g)?;
    check_len(op, "x", x.len(), g.x_len())?;
    check_len(op, "y", y.len(), g.y_len())?;
    check_len(op, "argmax", argmax.len(), g.y_len())?;
    let f = ffi::max_pool_forward_16(t);
    let (grid, block) = launch_1d(g.y_len());
    // SAFETY: as in `max_pool_forward`: lengths checked, windows inside their planes.
    unsafe {
        f(
            grid,
            block,
            x.as_ptr(),
            y.as_mut_ptr(),
            argmax.as_mut_ptr(),
            planes,
            h,
            w,
            ho,
            wo,
            size,
            stride,
        );
    }
    Ok(())
}

/// `max_pool_backward_{f16,bf16}`: dx[i] = sum of dy over the outputs whose
/// winner is i (summed in f32, rounded once); argmax as for `max_pool_backward`.
pub fn max_pool_backward_16(
    t: Half,
    g: &PoolGeom,
    dy: &[u16],
    argmax: &[u32],
    dx: &mut [u16],
) -> Result<()> {
    let op = t.pick("max_pool_backward_f16", "max_pool_backward_bf16");
    let [planes, h, w, ho, wo, size, stride] = pool_args(op, g)?;
    check_len(op, "dy", dy.len(), g.y_len())?;
    check_len(op, "argmax", argmax.len(), g.y_len())?;
    check_len(op, "dx", dx.len(), g.x_len())?;
    check_argmax(op, g, argmax)?;
    let f = ffi::max_pool_backward_16(t);
    let (grid, block) = launch_1d(g.x_len());
    // SAFETY: dy, argmax and dx have the geometry's lengths (checked); the
    // kernel reads argmax values only to compare them.
    unsafe {
        f(
            grid,
            block,
            dy.as_ptr(),
            argmax.as_ptr(),
            dx.as_mut_ptr(),
            planes,
            h,
            w,
            ho,
            wo,
            size,
            stride,
        );
    }
    Ok(())
}

/// `im2col_{f16,bf16}`: as `im2col`, copying 16-bit values exactly.
pub fn im2col_16(t: Half, g: &ConvGeom, x: &[u16], col: &mut [u16]) -> Result<()> {
    let op = t.pick("im2col_f16", "im2col_bf16");
    let ([images, c, h, w, k, stride, pad, ho, wo], col_len) = im2col_args(op, g)?;
    check_len(op, "x", x.len(), g.x_len())?;
    check_len(op, "col", col.len(), col_len)?;
    let f = ffi::im2col_16(t);
    let (grid, block) = launch_1d(col_len);
    // SAFETY: x and col have the geometry's lengths (checked); reads are guarded
    // by the kernel's in-image test.
    unsafe {
        f(
            grid,
            block,
            x.as_ptr(),
            col.as_mut_ptr(),
            images,
            c,
            h,
            w,
            k,
            stride,
            pad,
            ho,
            wo,
        );
    }
    Ok(())
}

/// `col2im_{f16,bf16}`: as `col2im`, summing in f32 and rounding each pixel once.
pub fn col2im_16(t: Half, g: &ConvGeom, col: &[u16], dx: &mut [u16]) -> Result<()> {
    let op = t.pick("col2im_f16", "col2im_bf16");
    let ([images, c, h, w, k, stride, pad, ho, wo], col_len) = im2col_args(op, g)?;
    check_len(op, "col", col.len(), col_len)?;
    check_len(op, "dx", dx.len(), g.x_len())?;
    let f = ffi::col2im_16(t);
    let (grid, block) = launch_1d(g.x_len());
    // SAFETY: col and dx have the geometry's lengths (checked); the kernel reads
    // only column entries of in-range outputs.
    unsafe {
        f(
            grid,
            block,
            col.as_ptr(),
            dx.as_mut_ptr(),
            images,
            c,
            h,
            w,
            k,
            stride,
            pad,
            ho,
            wo,
        );
    }
    Ok(())
}

/// `{f16,bf16}_to_f32_unscale_check`: dst = widen(src) * inv_scale; returns
/// true when any result is infinite or NaN.
pub fn unscale_check_16(t: Half, src: &[u16], dst: &mut [f32], inv_scale: f32) -> Result<bool> {
    let op = t.pick("f16_to_f32_unscale_check", "bf16_to_f32_unscale_check");
    check_len(op, "dst", dst.len(), src.len())?;
    let f = ffi::unscale_check_16(t);
    let mut overflow = 0i32;
    let (grid, block) = launch_1d(src.len());
    // SAFETY: src and dst hold len elements (checked); the kernel also writes
    // the one int `overflow`.
    unsafe {
        f(
            grid,
            block,
            src.as_ptr(),
            dst.as_mut_ptr(),
            inv_scale,
            long(src.len()),
            &mut overflow,
        );
    }
    Ok(overflow != 0)
}
