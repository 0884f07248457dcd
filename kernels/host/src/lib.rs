//! alexnet-kernels-host: the CUDA kernels (kernels/*.cu) compiled for the
//! host by build.rs (launch.cpp through shim.h), and their C entry points:
//! `host_<kernel>(grid, block, <the kernel's arguments>)`, each of which runs
//! the whole launch grid on the calling thread, one GPU thread after another.
//! For tests only (tests/kernels_host.rs checks the kernels' arithmetic
//! against the CPU reference without a GPU): the program does not link it.
//!
//! The declarations follow kernels/README.md's C types (int = i32, long long =
//! i64, unsigned long long = u64, unsigned short = u16 bits).

/// The 16-bit storage format of a `_f16` / `_bf16` kernel's activations, held
/// as `u16` bits: IEEE binary16 or bfloat16. The kernels compute in f32 and
/// round each stored output once, to nearest even.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Half {
    F16,
    Bf16,
}

impl Half {
    /// `f16` for F16, `bf16` for Bf16 (a kernel's name; the kernels themselves
    /// are chosen with a `match`, whose arms coerce to one fn pointer type).
    pub fn pick(self, f16: &'static str, bf16: &'static str) -> &'static str {
        match self {
            Half::F16 => f16,
            Half::Bf16 => bf16,
        }
    }
}

/// Declares each 16-bit kernel's f16 and bf16 host builds (the same
/// arguments after grid and block) and `pick(t)`, the one of the two for t.
macro_rules! extern_16 {
    ($($pick:ident: $f16:ident, $bf16:ident($($arg:ident: $ty:ty),* $(,)?);)*) => {
        extern "C" {
            $(
                pub fn $f16(grid: u32, block: u32, $($arg: $ty),*);
                pub fn $bf16(grid: u32, block: u32, $($arg: $ty),*);
            )*
        }
        $(
            pub fn $pick(t: Half) -> unsafe extern "C" fn(u32, u32, $($ty),*) {
                match t {
                    Half::F16 => $f16,
                    Half::Bf16 => $bf16,
                }
            }
        )*
    };
}

extern "C" {
    pub fn host_lrn_forward_f32(
        grid: u32,
        block: u32,
        x: *const f32,
        y: *mut f32,
        scale: *mut f32,
        n: i32,
        c: i32,
        hw: i32,
        size: i32,
        alpha: f32,
        beta: f32,
        k: f32,
    );
    pub fn host_lrn_backward_f32(
        grid: u32,
        block: u32,
        x: *const f32,
        y: *const f32,
        scale: *const f32,
        dy: *const f32,
        dx: *mut f32,
        n: i32,
        c: i32,
        hw: i32,
        size: i32,
        alpha: f32,
        beta: f32,
    );
    pub fn host_dropout_forward_f32(
        grid: u32,
        block: u32,
        x: *mut f32,
        mask: *mut f32,
        seed: u64,
        p: f32,
        len: i64,
    );
    pub fn host_dropout_backward_f32(
        grid: u32,
        block: u32,
        mask: *const f32,
        dy: *mut f32,
        len: i64,
    );
    pub fn host_softmax_xent_max_f32(
        grid: u32,
        block: u32,
        logits: *const f32,
        part_max: *mut f32,
        n: i32,
        classes: i32,
        parts: i32,
    );
    pub fn host_softmax_xent_exp_f32(
        grid: u32,
        block: u32,
        logits: *const f32,
        part_max: *const f32,
        e: *mut f32,
        n: i32,
        classes: i32,
        parts: i32,
    );
    pub fn host_softmax_xent_sum_f32(
        grid: u32,
        block: u32,
        logits: *const f32,
        labels: *const u32,
        part_max: *const f32,
        e: *const f32,
        inv: *mut f32,
        row_loss: *mut f32,
        n: i32,
        classes: i32,
        parts: i32,
    );
    pub fn host_softmax_xent_probs_f32(
        grid: u32,
        block: u32,
        e: *const f32,
        inv: *const f32,
        probs: *mut f32,
        n: i32,
        classes: i32,
    );
    /// Tests only: the one-thread-per-row softmax forward the four kernels
    /// above replaced (launch.cpp), the oracle they must match bit for bit.
    pub fn host_softmax_xent_rowwise_f32(
        grid: u32,
        block: u32,
        logits: *const f32,
        labels: *const u32,
        probs: *mut f32,
        row_loss: *mut f32,
        n: i32,
        classes: i32,
    );
    pub fn host_softmax_xent_backward_f32(
        grid: u32,
        block: u32,
        probs: *const f32,
        labels: *const u32,
        dlogits: *mut f32,
        n: i32,
        classes: i32,
    );
    pub fn host_softmax_xent_mean_f32(
        grid: u32,
        block: u32,
        row_loss: *const f32,
        loss: *mut f32,
        n: i32,
    );
    pub fn host_step_hits_f32(
        grid: u32,
        block: u32,
        probs: *const f32,
        labels: *const u32,
        row_hit: *mut f32,
        n: i32,
        classes: i32,
    );
    pub fn host_step_record_f32(
        grid: u32,
        block: u32,
        loss: *const f32,
        row_hit: *const f32,
        metrics: *mut f32,
        n: i32,
        slot: i32,
    );
    pub fn host_sgd_update_f32(
        grid: u32,
        block: u32,
        w: *mut f32,
        g: *const f32,
        v: *mut f32,
        lr: f32,
        momentum: f32,
        weight_decay: f32,
        len: i64,
    );
    pub fn host_bias_relu_forward_f32(
        grid: u32,
        block: u32,
        y: *mut f32,
        b: *const f32,
        c: i32,
        hw: i32,
        len: i64,
        relu: i32,
    );
    pub fn host_relu_forward_f32(grid: u32, block: u32, x: *mut f32, len: i64);
    pub fn host_relu_backward_f32(grid: u32, block: u32, y: *const f32, dy: *mut f32, len: i64);
    pub fn host_add_f32(grid: u32, block: u32, dst: *mut f32, src: *const f32, len: i64);
    pub fn host_bias_backward_partial_f32(
        grid: u32,
        block: u32,
        dy: *const f32,
        partial: *mut f32,
        n: i32,
        c: i32,
        hw: i32,
    );
    pub fn host_bias_backward_reduce_f32(
        grid: u32,
        block: u32,
        partial: *const f32,
        db: *mut f32,
        n: i32,
        c: i32,
    );
    pub fn host_max_pool_forward_f32(
        grid: u32,
        block: u32,
        x: *const f32,
        y: *mut f32,
        argmax: *mut u32,
        planes: i32,
        h: i32,
        w: i32,
        ho: i32,
        wo: i32,
        size: i32,
        stride: i32,
    );
    pub fn host_max_pool_backward_f32(
        grid: u32,
        block: u32,
        dy: *const f32,
        argmax: *const u32,
        dx: *mut f32,
        planes: i32,
        h: i32,
        w: i32,
        ho: i32,
        wo: i32,
        size: i32,
        stride: i32,
    );
    // The pooling and LRN f32 bodies with long long index math (launch.cpp),
    // which the entry points above run only past 2^31 elements; same arguments.
    pub fn host_max_pool_forward_f32_i64(
        grid: u32,
        block: u32,
        x: *const f32,
        y: *mut f32,
        argmax: *mut u32,
        planes: i32,
        h: i32,
        w: i32,
        ho: i32,
        wo: i32,
        size: i32,
        stride: i32,
    );
    pub fn host_max_pool_backward_f32_i64(
        grid: u32,
        block: u32,
        dy: *const f32,
        argmax: *const u32,
        dx: *mut f32,
        planes: i32,
        h: i32,
        w: i32,
        ho: i32,
        wo: i32,
        size: i32,
        stride: i32,
    );
    pub fn host_lrn_forward_f32_i64(
        grid: u32,
        block: u32,
        x: *const f32,
        y: *mut f32,
        scale: *mut f32,
        n: i32,
        c: i32,
        hw: i32,
        size: i32,
        alpha: f32,
        beta: f32,
        k: f32,
    );
    pub fn host_lrn_backward_f32_i64(
        grid: u32,
        block: u32,
        x: *const f32,
        y: *const f32,
        scale: *const f32,
        dy: *const f32,
        dx: *mut f32,
        n: i32,
        c: i32,
        hw: i32,
        size: i32,
        alpha: f32,
        beta: f32,
    );
    /// prelude.cuh's `index_fits_int` (1: int index math, 0: long long).
    pub fn host_index_fits_int(len: i64, threads: i64) -> i32;
    pub fn host_im2col_f32(
        grid: u32,
        block: u32,
        x: *const f32,
        col: *mut f32,
        images: i32,
        c: i32,
        h: i32,
        w: i32,
        k: i32,
        stride: i32,
        pad: i32,
        ho: i32,
        wo: i32,
    );
    pub fn host_col2im_f32(
        grid: u32,
        block: u32,
        col: *const f32,
        x: *mut f32,
        images: i32,
        c: i32,
        h: i32,
        w: i32,
        k: i32,
        stride: i32,
        pad: i32,
        ho: i32,
        wo: i32,
    );
    pub fn host_f32_to_f16(grid: u32, block: u32, src: *const f32, dst: *mut u16, len: i64);
    pub fn host_f16_to_f32(grid: u32, block: u32, src: *const u16, dst: *mut f32, len: i64);
    pub fn host_f32_to_bf16(grid: u32, block: u32, src: *const f32, dst: *mut u16, len: i64);
    pub fn host_bf16_to_f32(grid: u32, block: u32, src: *const u16, dst: *mut f32, len: i64);
    pub fn host_unscale_check_f32(
        grid: u32,
        block: u32,
        g: *mut f32,
        inv_scale: f32,
        len: i64,
        overflow: *mut i32,
    );
}

extern_16! {
    lrn_forward_16: host_lrn_forward_f16, host_lrn_forward_bf16(
        x: *const u16,
        y: *mut u16,
        scale: *mut u16,
        n: i32,
        c: i32,
        hw: i32,
        size: i32,
        alpha: f32,
        beta: f32,
        k: f32,
    );
    lrn_backward_16: host_lrn_backward_f16, host_lrn_backward_bf16(
        x: *const u16,
        y: *const u16,
        scale: *const u16,
        dy: *const u16,
        dx: *mut u16,
        n: i32,
        c: i32,
        hw: i32,
        size: i32,
        alpha: f32,
        beta: f32,
    );
    dropout_forward_16: host_dropout_forward_f16, host_dropout_forward_bf16(
        x: *mut u16,
        mask: *mut u16,
        seed: u64,
        p: f32,
        len: i64,
    );
    dropout_backward_16: host_dropout_backward_f16, host_dropout_backward_bf16(
        mask: *const u16,
        dy: *mut u16,
        len: i64,
    );
    softmax_xent_max_16: host_softmax_xent_max_f16, host_softmax_xent_max_bf16(
        logits: *const u16,
        part_max: *mut f32,
        n: i32,
        classes: i32,
        parts: i32,
    );
    softmax_xent_exp_16: host_softmax_xent_exp_f16, host_softmax_xent_exp_bf16(
        logits: *const u16,
        part_max: *const f32,
        e: *mut f32,
        n: i32,
        classes: i32,
        parts: i32,
    );
    softmax_xent_sum_16: host_softmax_xent_sum_f16, host_softmax_xent_sum_bf16(
        logits: *const u16,
        labels: *const u32,
        part_max: *const f32,
        e: *const f32,
        inv: *mut f32,
        row_loss: *mut f32,
        n: i32,
        classes: i32,
        parts: i32,
    );
    softmax_xent_probs_16: host_softmax_xent_probs_f16, host_softmax_xent_probs_bf16(
        e: *const f32,
        inv: *const f32,
        probs: *mut u16,
        n: i32,
        classes: i32,
    );
    // Tests only: the replaced one-thread-per-row forward (launch.cpp).
    softmax_xent_rowwise_16: host_softmax_xent_rowwise_f16, host_softmax_xent_rowwise_bf16(
        logits: *const u16,
        labels: *const u32,
        probs: *mut u16,
        row_loss: *mut f32,
        n: i32,
        classes: i32,
    );
    softmax_xent_backward_16: host_softmax_xent_backward_f16, host_softmax_xent_backward_bf16(
        probs: *const u16,
        labels: *const u32,
        dlogits: *mut u16,
        n: i32,
        classes: i32,
        scale: f32,
    );
    step_hits_16: host_step_hits_f16, host_step_hits_bf16(
        probs: *const u16,
        labels: *const u32,
        row_hit: *mut f32,
        n: i32,
        classes: i32,
    );
    sgd_update_store_16: host_sgd_update_f32_store_f16, host_sgd_update_f32_store_bf16(
        w: *mut f32,
        g: *const f32,
        v: *mut f32,
        w16: *mut u16,
        lr: f32,
        momentum: f32,
        weight_decay: f32,
        len: i64,
    );
    bias_relu_forward_16: host_bias_relu_forward_f16, host_bias_relu_forward_bf16(
        y: *mut u16,
        b: *const f32,
        c: i32,
        hw: i32,
        len: i64,
        relu: i32,
    );
    relu_forward_16: host_relu_forward_f16, host_relu_forward_bf16(
        x: *mut u16,
        len: i64,
    );
    relu_backward_16: host_relu_backward_f16, host_relu_backward_bf16(
        y: *const u16,
        dy: *mut u16,
        len: i64,
    );
    add_16: host_add_f16, host_add_bf16(
        dst: *mut u16,
        src: *const u16,
        len: i64,
    );
    bias_backward_partial_16: host_bias_backward_partial_f16, host_bias_backward_partial_bf16(
        dy: *const u16,
        partial: *mut f32,
        n: i32,
        c: i32,
        hw: i32,
    );
    max_pool_forward_16: host_max_pool_forward_f16, host_max_pool_forward_bf16(
        x: *const u16,
        y: *mut u16,
        argmax: *mut u32,
        planes: i32,
        h: i32,
        w: i32,
        ho: i32,
        wo: i32,
        size: i32,
        stride: i32,
    );
    max_pool_backward_16: host_max_pool_backward_f16, host_max_pool_backward_bf16(
        dy: *const u16,
        argmax: *const u32,
        dx: *mut u16,
        planes: i32,
        h: i32,
        w: i32,
        ho: i32,
        wo: i32,
        size: i32,
        stride: i32,
    );
    im2col_16: host_im2col_f16, host_im2col_bf16(
        x: *const u16,
        col: *mut u16,
        images: i32,
        c: i32,
        h: i32,
        w: i32,
        k: i32,
        stride: i32,
        pad: i32,
        ho: i32,
        wo: i32,
    );
    col2im_16: host_col2im_f16, host_col2im_bf16(
        col: *const u16,
        x: *mut u16,
        images: i32,
        c: i32,
        h: i32,
        w: i32,
        k: i32,
        stride: i32,
        pad: i32,
        ho: i32,
        wo: i32,
    );
    unscale_check_16: host_f16_to_f32_unscale_check, host_bf16_to_f32_unscale_check(
        src: *const u16,
        dst: *mut f32,
        inv_scale: f32,
        len: i64,
        overflow: *mut i32,
    );
}
