//! The CPU reference backend: `CpuBackend` implements `Backend` on plain
//! `Vec<f32>` buffers by delegating to slice functions in the submodules
//! (conv, linear, lrn, pool, elementwise), which tests call directly too.
//! Every other backend is checked against these results. Parallelism is rayon
//! (over images, planes or chunks); matrix products go through the `gemm` crate.
pub mod conv;
pub mod elementwise;
pub mod linear;
pub mod lrn;
pub mod pool;

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::backend::{
    Backend, ConvGeom, LinearGeom, LrnParams, Nchw, PoolGeom, RowBlock, SgdParams,
};
use crate::error::{check_len, Error, Result};

/// The CPU backend. Stateless but for a count of allocations (the same
/// count the CUDA backend keeps, so a test here shows that the network
/// allocates nothing per step) and of the elements they hold, by kind (so
/// a test can hold the memory check's plan to what is allocated, and to
/// what a GPU stores for each kind); scratch memory lives in per-thread
/// buffers.
#[derive(Debug, Default)]
pub struct CpuBackend {
    allocations: AtomicU64,
    /// Elements by kind, in `Allocated`'s order.
    elements: [AtomicU64; 4],
}

/// Elements allocated so far, by the `Backend` call that made them: a
/// GPU stores each kind its own way (16-bit activations, f32 parameters
/// with a 16-bit shadow, in mixed precision).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Allocated {
    /// `alloc`: activations, and the input.
    pub activations: u64,
    /// `alloc_param`: weights, biases and their gradients.
    pub params: u64,
    /// `alloc_f32`: momentum, the loss and the step metrics.
    pub f32s: u64,
    /// `alloc_idx`: labels and pooling's argmax.
    pub indices: u64,
}

impl Allocated {
    pub fn total(&self) -> u64 {
        self.activations + self.params + self.f32s + self.indices
    }
}

impl CpuBackend {
    pub fn new() -> Self {
        CpuBackend::default()
    }

    /// Elements (f32 or u32, 4 bytes each) of every buffer allocated so far.
    pub fn allocated_elements(&self) -> u64 {
        self.allocated().total()
    }

    /// [`allocated_elements`](Self::allocated_elements) by kind.
    pub fn allocated(&self) -> Allocated {
        let [a, p, f, i] = self.elements.each_ref().map(|e| e.load(Ordering::Relaxed));
        Allocated {
            activations: a,
            params: p,
            f32s: f,
            indices: i,
        }
    }

    /// One buffer of `len` elements of kind `kind` (`Allocated`'s order).
    fn count(&self, kind: usize, len: usize) {
        self.allocations.fetch_add(1, Ordering::Relaxed);
        self.elements[kind].fetch_add(len as u64, Ordering::Relaxed);
    }
}

// -- shared helpers ------------------------------------------------------------

/// The product of `dims`, or a shape error if it overflows `usize`. Public
/// so that tests' wrappers of other implementations check sizes the same way.
pub fn checked_product(op: &'static str, what: &str, dims: &[usize]) -> Result<usize> {
    dims.iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| Error::Shape {
            op,
            detail: format!("{what} {dims:?} overflows the address space"),
        })
}

/// A shape error with a formatted detail.
pub(crate) fn shape_err(op: &'static str, detail: String) -> Error {
    Error::Shape { op, detail }
}

/// A strided matrix view: element (i, j) is at `data[i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub(crate) struct MatRef<'a> {
    pub data: &'a [f32],
    pub rs: usize,
    pub cs: usize,
}

/// True when an `rows x cols` matrix with strides (rs, cs) fits in `len` elements.
fn fits(len: usize, rows: usize, cols: usize, rs: usize, cs: usize) -> bool {
    if rows == 0 || cols == 0 {
        return true;
    }
    (rows - 1)
        .checked_mul(rs)
        .and_then(|a| (cols - 1).checked_mul(cs).and_then(|b| a.checked_add(b)))
        .is_some_and(|last| last < len)
}

/// C[m, n] = A[m, k] . B[k, n]  (or C += A . B when `accumulate`), with C row-major
/// with row stride `c_rs`. A and B are strided views, so transposes cost nothing.
#[allow(clippy::too_many_arguments)]
pub(crate) fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    c: &mut [f32],
    c_rs: usize,
    accumulate: bool,
    a: MatRef,
    b: MatRef,
    parallelism: gemm::Parallelism,
) {
    if !in_bounds(m, n, k, c, c_rs, a, b) {
        return;
    }
    // SAFETY: every element gemm touches is in bounds (checked above), C is
    // borrowed mutably and does not alias A or B (distinct borrows).
    unsafe {
        raw_gemm(
            [m, n, k],
            c.as_mut_ptr(),
            c_rs,
            accumulate,
            a,
            b,
            0,
            parallelism,
        )
    }
}

/// [`sgemm`] as independent blocks of C's columns, one serial GEMM each,
/// spread over the threads. For the fully connected layers' wide, short
/// products (64 to 128 rows, thousands of columns), where the `gemm`
/// crate's own split ran the input gradient at half the weight gradient's
/// rate (`bench-step --per-layer`, docs/benchmarks.md).
#[allow(clippy::too_many_arguments)]
pub(crate) fn sgemm_by_columns(
    m: usize,
    n: usize,
    k: usize,
    c: &mut [f32],
    c_rs: usize,
    accumulate: bool,
    a: MatRef,
    b: MatRef,
) {
    use rayon::prelude::*;
    if !in_bounds(m, n, k, c, c_rs, a, b) {
        return;
    }
    // About four blocks per thread, 64 to 512 columns each.
    let block = (n / (4 * rayon::current_num_threads())).clamp(64, 512);
    // The pointer crosses threads as an address.
    let c_addr = c.as_mut_ptr() as usize;
    (0..n.div_ceil(block)).into_par_iter().for_each(|blk| {
        let (c0, par) = (blk * block, gemm::Parallelism::None);
        let dims = [m, block.min(n - c0), k];
        // SAFETY: the whole product is in bounds (checked above); block
        // `blk` reads B's columns c0.. and writes only C's, which no other
        // block touches. C does not alias A or B.
        unsafe {
            raw_gemm(
                dims,
                (c_addr as *mut f32).add(c0),
                c_rs,
                accumulate,
                a,
                b,
                c0,
                par,
            )
        }
    });
}

/// Panics unless C, A and B hold C[m, n], A[m, k] and B[k, n] with their
/// strides (callers have validated every length against the geometry, so
/// this cannot fail; the raw calls' soundness rests on it); false when C
/// is empty.
fn in_bounds(m: usize, n: usize, k: usize, c: &[f32], c_rs: usize, a: MatRef, b: MatRef) -> bool {
    assert!(fits(c.len(), m, n, c_rs, 1), "sgemm: C out of bounds");
    assert!(
        fits(a.data.len(), m, k, a.rs, a.cs),
        "sgemm: A out of bounds"
    );
    assert!(
        fits(b.data.len(), k, n, b.rs, b.cs),
        "sgemm: B out of bounds"
    );
    m > 0 && n > 0
}

/// The `gemm` crate's call for C[m, n] (+)= A . B[:, b_col..], C at `c`.
///
/// # Safety
/// Every element of C, A and B the product touches must be in bounds, and
/// C must not alias A or B.
#[allow(clippy::too_many_arguments)]
unsafe fn raw_gemm(
    [m, n, k]: [usize; 3],
    c: *mut f32,
    c_rs: usize,
    accumulate: bool,
    a: MatRef,
    b: MatRef,
    b_col: usize,
    parallelism: gemm::Parallelism,
) {
    gemm::gemm(
        m,
        n,
        k,
        c,
        1,
        c_rs as isize,
        accumulate,
        a.data.as_ptr(),
        a.cs as isize,
        a.rs as isize,
        b.data.as_ptr().add(b_col * b.cs),
        b.cs as isize,
        b.rs as isize,
        1.0,
        1.0,
        false,
        false,
        false,
        parallelism,
    );
}

thread_local! {
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    static PARTIALS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Run `f` on a per-thread scratch buffer of `len` f32 (contents unspecified),
/// so that im2col buffers are not reallocated on every call. Falls back to a
/// fresh allocation if the thread's buffer is already in use.
pub(crate) fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    with_kept(&SCRATCH, len, f)
}

/// [`with_scratch`] for a weight gradient's partial sums (`conv`), a
/// buffer of their own: tens of MB, whose pages, fresh on every call,
/// cost more to touch than the sums.
pub(crate) fn with_partials<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    with_kept(&PARTIALS, len, f)
}

fn with_kept<R>(
    key: &'static std::thread::LocalKey<RefCell<Vec<f32>>>,
    len: usize,
    f: impl FnOnce(&mut [f32]) -> R,
) -> R {
    key.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            if buf.len() < len {
                buf.resize(len, 0.0);
            }
            f(&mut buf[..len])
        }
        Err(_) => f(&mut vec![0.0; len]),
    })
}

// -- the Backend impl: memory ops here, compute in the submodules ---------------

impl Backend for CpuBackend {
    type Buf = Vec<f32>;
    type IdxBuf = Vec<u32>;

    fn name(&self) -> String {
        format!("cpu ({} threads)", rayon::current_num_threads())
    }

    fn in_host_memory(&self) -> bool {
        true
    }

    fn alloc(&self, len: usize) -> Result<Vec<f32>> {
        self.count(0, len);
        Ok(vec![0.0; len])
    }

    fn alloc_param(&self, len: usize) -> Result<Vec<f32>> {
        self.count(1, len);
        Ok(vec![0.0; len])
    }

    fn alloc_f32(&self, len: usize) -> Result<Vec<f32>> {
        self.count(2, len);
        Ok(vec![0.0; len])
    }

    fn alloc_idx(&self, len: usize) -> Result<Vec<u32>> {
        self.count(3, len);
        Ok(vec![0; len])
    }

    fn allocations(&self) -> u64 {
        self.allocations.load(Ordering::Relaxed)
    }

    fn upload(&self, src: &[f32], dst: &mut Vec<f32>) -> Result<()> {
        check_len("upload", "src", src.len(), dst.len())?;
        dst.copy_from_slice(src);
        Ok(())
    }

    fn upload_idx(&self, src: &[u32], dst: &mut Vec<u32>) -> Result<()> {
        check_len("upload_idx", "src", src.len(), dst.len())?;
        dst.copy_from_slice(src);
        Ok(())
    }

    fn download(&self, src: &Vec<f32>, dst: &mut [f32]) -> Result<()> {
        check_len("download", "dst", dst.len(), src.len())?;
        dst.copy_from_slice(src);
        Ok(())
    }

    fn buf_len(&self, buf: &Vec<f32>) -> usize {
        buf.len()
    }

    /// Another CPU device is another set of buffers in the same memory: a
    /// copy between them is a memcpy per row.
    fn copy_rows(
        &self,
        _src_dev: &Self,
        src: &Vec<f32>,
        dst: &mut Vec<f32>,
        b: RowBlock,
    ) -> Result<()> {
        b.check("copy_rows", src.len(), dst.len())?;
        for r in 0..b.rows {
            let (s, d) = (b.src_off + r * b.src_pitch, b.dst_off + r * b.dst_pitch);
            dst[d..d + b.width].copy_from_slice(&src[s..s + b.width]);
        }
        Ok(())
    }

    fn add_assign(&self, dst: &mut Vec<f32>, src: &Vec<f32>) -> Result<()> {
        check_len("add_assign", "src", src.len(), dst.len())?;
        for (d, s) in dst.iter_mut().zip(src) {
            *d += s;
        }
        Ok(())
    }

    fn conv2d_forward(
        &self,
        g: &ConvGeom,
        x: &Vec<f32>,
        w: &Vec<f32>,
        b: &Vec<f32>,
        y: &mut Vec<f32>,
    ) -> Result<()> {
        conv::conv2d_forward(g, x, w, b, y)
    }

    fn conv2d_backward_data(
        &self,
        g: &ConvGeom,
        w: &Vec<f32>,
        dy: &Vec<f32>,
        dx: &mut Vec<f32>,
    ) -> Result<()> {
        conv::conv2d_backward_data(g, w, dy, dx)
    }

    fn conv2d_backward_filter(
        &self,
        g: &ConvGeom,
        x: &Vec<f32>,
        dy: &Vec<f32>,
        dw: &mut Vec<f32>,
    ) -> Result<()> {
        conv::conv2d_backward_filter(g, x, dy, dw)
    }

    fn conv2d_backward_bias(&self, g: &ConvGeom, dy: &Vec<f32>, db: &mut Vec<f32>) -> Result<()> {
        conv::conv2d_backward_bias(g, dy, db)
    }

    fn relu_forward(&self, x: &mut Vec<f32>) -> Result<()> {
        elementwise::relu_forward(x);
        Ok(())
    }

    fn relu_backward(&self, y: &Vec<f32>, dy: &mut Vec<f32>) -> Result<()> {
        elementwise::relu_backward(y, dy)
    }

    fn lrn_forward(
        &self,
        p: &LrnParams,
        s: &Nchw,
        x: &Vec<f32>,
        y: &mut Vec<f32>,
        scale: &mut Vec<f32>,
    ) -> Result<()> {
        lrn::lrn_forward(p, s, x, y, scale)
    }

    fn lrn_backward(
        &self,
        p: &LrnParams,
        s: &Nchw,
        x: &Vec<f32>,
        y: &Vec<f32>,
        scale: &Vec<f32>,
        dy: &Vec<f32>,
        dx: &mut Vec<f32>,
    ) -> Result<()> {
        lrn::lrn_backward(p, s, x, y, scale, dy, dx)
    }

    fn max_pool_forward(
        &self,
        g: &PoolGeom,
        x: &Vec<f32>,
        y: &mut Vec<f32>,
        argmax: &mut Vec<u32>,
    ) -> Result<()> {
        pool::max_pool_forward(g, x, y, argmax)
    }

    fn max_pool_backward(
        &self,
        g: &PoolGeom,
        dy: &Vec<f32>,
        argmax: &Vec<u32>,
        dx: &mut Vec<f32>,
    ) -> Result<()> {
        pool::max_pool_backward(g, dy, argmax, dx)
    }

    fn dropout_forward(
        &self,
        p: f32,
        seed: u64,
        x: &mut Vec<f32>,
        mask: &mut Vec<f32>,
    ) -> Result<()> {
        elementwise::dropout_forward(p, seed, x, mask)
    }

    fn dropout_backward(&self, mask: &Vec<f32>, dy: &mut Vec<f32>) -> Result<()> {
        elementwise::dropout_backward(mask, dy)
    }

    fn linear_forward(
        &self,
        g: &LinearGeom,
        x: &Vec<f32>,
        w: &Vec<f32>,
        b: &Vec<f32>,
        y: &mut Vec<f32>,
    ) -> Result<()> {
        linear::linear_forward(g, x, w, b, y)
    }

    fn linear_backward_data(
        &self,
        g: &LinearGeom,
        w: &Vec<f32>,
        dy: &Vec<f32>,
        dx: &mut Vec<f32>,
    ) -> Result<()> {
        linear::linear_backward_data(g, w, dy, dx)
    }

    fn linear_backward_weight(
        &self,
        g: &LinearGeom,
        x: &Vec<f32>,
        dy: &Vec<f32>,
        dw: &mut Vec<f32>,
    ) -> Result<()> {
        linear::linear_backward_weight(g, x, dy, dw)
    }

    fn linear_backward_bias(&self, g: &LinearGeom, dy: &Vec<f32>, db: &mut Vec<f32>) -> Result<()> {
        linear::linear_backward_bias(g, dy, db)
    }

    fn softmax_xent_forward(
        &self,
        n: usize,
        classes: usize,
        logits: &Vec<f32>,
        labels: &Vec<u32>,
        probs: &mut Vec<f32>,
    ) -> Result<f32> {
        elementwise::softmax_xent_forward(n, classes, logits, labels, probs)
    }

    fn softmax_xent_forward_into(
        &self,
        n: usize,
        classes: usize,
        logits: &Vec<f32>,
        labels: &Vec<u32>,
        probs: &mut Vec<f32>,
        loss: &mut Vec<f32>,
    ) -> Result<()> {
        let Some(out) = loss.first_mut() else {
            return Err(shape_err(
                "softmax_xent_forward_into",
                "the loss buffer is empty".into(),
            ));
        };
        *out = elementwise::softmax_xent_forward(n, classes, logits, labels, probs)?;
        Ok(())
    }

    fn record_step_metrics(
        &self,
        n: usize,
        classes: usize,
        probs: &Vec<f32>,
        labels: &Vec<u32>,
        loss: &Vec<f32>,
        slot: usize,
        metrics: &mut Vec<f32>,
    ) -> Result<()> {
        elementwise::record_step_metrics(n, classes, probs, labels, loss, slot, metrics)
    }

    fn softmax_xent_backward(
        &self,
        n: usize,
        classes: usize,
        probs: &Vec<f32>,
        labels: &Vec<u32>,
        dlogits: &mut Vec<f32>,
    ) -> Result<()> {
        elementwise::softmax_xent_backward(n, classes, probs, labels, dlogits)
    }

    fn scale(&self, s: f32, x: &mut Vec<f32>) -> Result<()> {
        x.iter_mut().for_each(|v| *v *= s);
        Ok(())
    }

    fn unscale_check(&self, inv_scale: f32, g: &mut Vec<f32>) -> Result<bool> {
        let mut finite = true;
        for v in g.iter_mut() {
            *v *= inv_scale;
            finite &= v.is_finite();
        }
        Ok(finite)
    }

    fn sgd_update(
        &self,
        p: &SgdParams,
        w: &mut Vec<f32>,
        g: &Vec<f32>,
        v: &mut Vec<f32>,
    ) -> Result<()> {
        elementwise::sgd_update(p, w, g, v)
    }
}
