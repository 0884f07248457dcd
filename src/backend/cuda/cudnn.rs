//! The one wrapper around raw cuDNN calls. It owns the cuDNN handle, the
//! descriptors for each convolution shape, the algorithm chosen for each
//! (shape, direction), and the single workspace all of them share.
//!
//! Why raw calls rather than cudarc's safe cuDNN layer: its handle is neither
//! Send nor Sync (a `Backend` must be both), its algorithm pickers assert
//! instead of returning errors, and it has no backward-bias, bias-add or
//! cudnnFind*. So everything cuDNN lives here, on cudarc's thin `result`/`sys`
//! layer, each unsafe block stating the invariant it relies on; the rest of
//! the backend sees three safe methods (forward, backward data / filter).
//!
//! Layout is what the rest of the crate uses: NCHW, weights
//! [c_out, c_in / groups, k, k], cross-correlation (no kernel flip, as
//! PyTorch), and the group count set on the convolution descriptor. A
//! grouped convolution may instead run as one convolution per group, on
//! strided views of each group's channels, where cuDNN's timings say that is
//! faster (on an H200 in bf16, the grouped conv4 forward ran at 7% of the
//! tensor cores' peak where the ungrouped conv3 ran at 24%).
//!
//! Data types: f32, or (mixed precision) fp16 / bf16 tensors and filters with
//! the convolution computed in f32 (compute type CUDNN_DATA_FLOAT: cuDNN's
//! PSEUDO_HALF_CONFIG / PSEUDO_BFLOAT16_CONFIG) and tensor-core math. Plans are keyed by shape and
//! precision. Scaling factors alpha / beta are f32 for every one of these
//! types (cuDNN takes double only for double data).
use std::collections::HashMap;
use std::ffi::{c_int, c_void};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use cudarc::cudnn::sys;
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut, DeviceRepr};

use super::{CudaBuf, Precision, ALLOC_LIMIT_NOTE};
use crate::backend::ConvGeom;
use crate::error::{Error, Result};

/// Largest workspace an algorithm may ask for; faster algorithms needing more
/// are skipped (AlexNet's layers need far less).
const WORKSPACE_LIMIT: usize = 1 << 30;

/// True when cuDNN's library can be loaded (cudarc panics on first use otherwise).
pub fn cudnn_present() -> bool {
    // SAFETY: only tries to dlopen candidate names; calls no cuDNN function.
    unsafe { sys::is_culib_present() }
}

fn check(op: &'static str, what: &str, st: sys::cudnnStatus_t) -> Result<()> {
    if st == sys::cudnnStatus_t::CUDNN_STATUS_SUCCESS {
        Ok(())
    } else {
        Err(Error::Cuda {
            op,
            detail: format!("cuDNN {what}: {st:?}"),
        })
    }
}

fn int(op: &'static str, v: usize) -> Result<c_int> {
    c_int::try_from(v).map_err(|_| Error::Shape {
        op,
        detail: format!("{v} does not fit cuDNN's int dimensions"),
    })
}

/// Most elements one tensor of cuDNN's descriptor API may span: its
/// documented 2^31 - 1 (pytorch/pytorch#22496; PyTorch splits larger
/// convolutions over the batch, #31379).
const MAX_TENSOR_ELEMENTS: usize = c_int::MAX as usize;

/// A batch of `n` images of `per_image` elements each (the whole layer's
/// maps: a group's view spans them) within [`MAX_TENSOR_ELEMENTS`], or an
/// error naming the largest batch that is, and the convolution without it.
fn fits_cudnn(op: &'static str, n: usize, per_image: usize) -> Result<()> {
    let most = MAX_TENSOR_ELEMENTS / per_image.max(1);
    if n <= most {
        return Ok(());
    }
    Err(Error::Config(format!(
        "{op}: a batch of {n} on one GPU takes {per_image} values per image in these maps, past the {MAX_TENSOR_ELEMENTS} one cuDNN tensor holds; pass a batch of at most {most} per GPU, or --fallback-conv (im2col and cuBLAS, without that limit)"
    )))
}

// -- descriptors: owned handles, destroyed on drop ------------------------------

struct TensorDesc(sys::cudnnTensorDescriptor_t);
struct FilterDesc(sys::cudnnFilterDescriptor_t);
struct ConvDesc(sys::cudnnConvolutionDescriptor_t);

/// cuDNN's element type for tensors and filters stored in `p`.
fn data_type(p: Precision) -> sys::cudnnDataType_t {
    match p {
        Precision::F32 => sys::cudnnDataType_t::CUDNN_DATA_FLOAT,
        Precision::F16 => sys::cudnnDataType_t::CUDNN_DATA_HALF,
        Precision::Bf16 => sys::cudnnDataType_t::CUDNN_DATA_BFLOAT16,
    }
}

/// The element type `T` of the buffers handed to cuDNN must be the one the
/// descriptors say (f32 for fp32, u16 bits for fp16 / bf16): cuDNN reads and
/// writes as many bytes per element as the descriptor's type has.
fn check_elem<T>(op: &'static str, p: Precision) -> Result<()> {
    let want = if p.is_half() { 2 } else { 4 };
    if std::mem::size_of::<T>() == want {
        Ok(())
    } else {
        Err(Error::Cuda {
            op,
            detail: format!(
                "cuDNN call for {p} with {}-byte elements (expected {want})",
                std::mem::size_of::<T>()
            ),
        })
    }
}

impl TensorDesc {
    /// A packed NCHW tensor of `dtype`.
    fn nchw(op: &'static str, dims: [usize; 4], dtype: sys::cudnnDataType_t) -> Result<Self> {
        fits_cudnn(op, dims[0], dims[1] * dims[2] * dims[3])?;
        let [n, c, h, w] = [
            int(op, dims[0])?,
            int(op, dims[1])?,
            int(op, dims[2])?,
            int(op, dims[3])?,
        ];
        let mut d = std::ptr::null_mut();
        // SAFETY: `d` is a valid out-pointer; on success it holds a new descriptor
        // that `TensorDesc` owns (and destroys in Drop), so it is set only once created.
        unsafe {
            check(
                op,
                "create tensor",
                sys::cudnnCreateTensorDescriptor(&mut d),
            )?;
            let desc = TensorDesc(d);
            check(
                op,
                "set tensor",
                sys::cudnnSetTensor4dDescriptor(
                    desc.0,
                    sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW,
                    dtype,
                    n,
                    c,
                    h,
                    w,
                ),
            )?;
            Ok(desc)
        }
    }
}

impl Drop for TensorDesc {
    fn drop(&mut self) {
        // SAFETY: created by cudnnCreateTensorDescriptor and destroyed only here.
        let st = unsafe { sys::cudnnDestroyTensorDescriptor(self.0) };
        if st != sys::cudnnStatus_t::CUDNN_STATUS_SUCCESS {
            tracing::warn!("cuDNN: destroying a tensor descriptor: {st:?}");
        }
    }
}

impl Drop for FilterDesc {
    fn drop(&mut self) {
        // SAFETY: created by cudnnCreateFilterDescriptor and destroyed only here.
        let st = unsafe { sys::cudnnDestroyFilterDescriptor(self.0) };
        if st != sys::cudnnStatus_t::CUDNN_STATUS_SUCCESS {
            tracing::warn!("cuDNN: destroying a filter descriptor: {st:?}");
        }
    }
}

impl Drop for ConvDesc {
    fn drop(&mut self) {
        // SAFETY: created by cudnnCreateConvolutionDescriptor and destroyed only here.
        let st = unsafe { sys::cudnnDestroyConvolutionDescriptor(self.0) };
        if st != sys::cudnnStatus_t::CUDNN_STATUS_SUCCESS {
            tracing::warn!("cuDNN: destroying a convolution descriptor: {st:?}");
        }
    }
}

/// The directions an algorithm is chosen for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dir {
    Forward,
    Data,
    Filter,
}

/// A chosen algorithm, as the enum of its direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AlgoId {
    Forward(sys::cudnnConvolutionFwdAlgo_t),
    Data(sys::cudnnConvolutionBwdDataAlgo_t),
    Filter(sys::cudnnConvolutionBwdFilterAlgo_t),
}

impl AlgoId {
    fn is_winograd(self) -> bool {
        use sys::{
            cudnnConvolutionBwdDataAlgo_t as D, cudnnConvolutionBwdFilterAlgo_t as F,
            cudnnConvolutionFwdAlgo_t as W,
        };
        matches!(
            self,
            AlgoId::Forward(
                W::CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD
                    | W::CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD_NONFUSED
            ) | AlgoId::Data(
                D::CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD
                    | D::CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD_NONFUSED
            ) | AlgoId::Filter(F::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_WINOGRAD_NONFUSED)
        )
    }

    /// The algorithm's name without cuDNN's prefix, e.g. "BWD_FILTER_ALGO_1".
    pub(crate) fn short_name(self) -> String {
        let full = match self {
            AlgoId::Forward(a) => format!("{a:?}"),
            AlgoId::Data(a) => format!("{a:?}"),
            AlgoId::Filter(a) => format!("{a:?}"),
        };
        full.trim_start_matches("CUDNN_CONVOLUTION_").to_string()
    }
}

/// The first candidate that ran, fits the workspace limit, is not Winograd
/// where `no_winograd`, and, where `deterministic`, gives the same bits on
/// every run (cuDNN's determinism flag: the others, such as backward
/// ALGO_0, sum with atomics in whatever order the threads arrive).
fn pick(found: &[Candidate], no_winograd: bool, deterministic: bool) -> Option<&Candidate> {
    found.iter().find(|(id, st, mem, det, _)| {
        *st == sys::cudnnStatus_t::CUDNN_STATUS_SUCCESS
            && *mem <= WORKSPACE_LIMIT
            && !(no_winograd && id.is_winograd())
            && (*det || !deterministic)
    })
}

/// An algorithm and the workspace it needs.
#[derive(Clone, Copy, Debug)]
struct Algo {
    id: AlgoId,
    workspace: usize,
    /// Run as one convolution per group (`Split`).
    split: bool,
}

/// A convolution's descriptors, as cuDNN's algorithm calls take them.
#[derive(Clone, Copy)]
struct Descs {
    x: sys::cudnnTensorDescriptor_t,
    y: sys::cudnnTensorDescriptor_t,
    w: sys::cudnnFilterDescriptor_t,
    conv: sys::cudnnConvolutionDescriptor_t,
}

/// (algo id, status, memory, deterministic, milliseconds) of one candidate
/// algorithm; the time is Find's measurement (heuristics measure nothing).
type Candidate = (AlgoId, sys::cudnnStatus_t, usize, bool, f32);

/// Whether a grouped convolution runs faster as `groups` convolutions of
/// one group each: by Find's timings of the two candidates picked, where
/// both were measured.
fn split_pays(grouped: Option<&Candidate>, split: Option<&Candidate>, groups: usize) -> bool {
    match (grouped, split) {
        (Some(g), Some(s)) if g.4 > 0.0 && s.4 > 0.0 => (s.4 * groups as f32) < g.4,
        (None, Some(_)) => true,
        _ => false,
    }
}

/// Find's timed ranking of a direction's algorithms (`call(true)`), else,
/// where Find fails or without `measure`, the heuristics' (`call(false)`).
fn rank(
    measure: bool,
    what: &str,
    mut call: impl FnMut(bool) -> sys::cudnnStatus_t,
) -> sys::cudnnStatus_t {
    if measure {
        let st = call(true);
        if st == sys::cudnnStatus_t::CUDNN_STATUS_SUCCESS {
            return st;
        }
        tracing::warn!("cuDNN: find {what} algorithm: {st:?}; using heuristics");
    }
    call(false)
}

impl TensorDesc {
    /// An NCHW view of `dims` inside a larger tensor, with element strides
    /// `strides` (n, c, h, w): one group's channels of a batch.
    fn strided(
        op: &'static str,
        dims: [usize; 4],
        strides: [usize; 4],
        dtype: sys::cudnnDataType_t,
    ) -> Result<Self> {
        fits_cudnn(op, dims[0], strides[0].max(dims[1] * dims[2] * dims[3]))?;
        let mut v = [0 as c_int; 8];
        for (i, x) in dims.iter().chain(&strides).enumerate() {
            v[i] = int(op, *x)?;
        }
        let mut d = std::ptr::null_mut();
        // SAFETY: as in `nchw`.
        unsafe {
            check(
                op,
                "create tensor",
                sys::cudnnCreateTensorDescriptor(&mut d),
            )?;
            let desc = TensorDesc(d);
            check(
                op,
                "set strided tensor",
                sys::cudnnSetTensor4dDescriptorEx(
                    desc.0, dtype, v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7],
                ),
            )?;
            Ok(desc)
        }
    }
}

/// The forward algorithms: cuDNN's measured candidates, best first (its
/// heuristics' ranking where Find fails, or without `measure`).
///
/// # Safety
/// `handle` and the descriptors in `d` are live.
unsafe fn find_forward(
    handle: sys::cudnnHandle_t,
    d: Descs,
    op: &'static str,
    measure: bool,
) -> Result<Vec<Candidate>> {
    let mut found: Vec<Candidate> = Vec::new();
    let mut count: c_int = 0;
    // SAFETY: the perf array holds N entries and we request at most that
    // many, so cuDNN writes within it; `count` tells how many it filled.
    // Find runs the candidates on buffers it allocates itself.
    unsafe {
        const N: usize = 8;
        let mut perf: [sys::cudnnConvolutionFwdAlgoPerf_t; N] = std::mem::zeroed();
        let st = rank(measure, "forward", |timed| {
            let choose = if timed {
                sys::cudnnFindConvolutionForwardAlgorithm
            } else {
                sys::cudnnGetConvolutionForwardAlgorithm_v7
            };
            choose(
                handle,
                d.x,
                d.w,
                d.conv,
                d.y,
                N as c_int,
                &mut count,
                perf.as_mut_ptr(),
            )
        });
        check(op, "choose forward algorithm", st)?;
        for p in &perf[..(count.max(0) as usize).min(N)] {
            found.push((
                AlgoId::Forward(p.algo),
                p.status,
                p.memory,
                deterministic(p.determinism),
                p.time,
            ));
        }
    }
    Ok(found)
}

/// The backward-data algorithms: cuDNN's measured candidates, best first
/// (its heuristics' ranking where Find fails, or without `measure`).
///
/// # Safety
/// `handle` and the descriptors in `d` are live.
unsafe fn find_data(
    handle: sys::cudnnHandle_t,
    d: Descs,
    op: &'static str,
    measure: bool,
) -> Result<Vec<Candidate>> {
    let mut found: Vec<Candidate> = Vec::new();
    let mut count: c_int = 0;
    // SAFETY: the perf array holds N entries and we request at most that
    // many, so cuDNN writes within it; `count` tells how many it filled.
    // Find runs the candidates on buffers it allocates itself.
    unsafe {
        const N: usize = 6;
        let mut perf: [sys::cudnnConvolutionBwdDataAlgoPerf_t; N] = std::mem::zeroed();
        let st = rank(measure, "backward-data", |timed| {
            let choose = if timed {
                sys::cudnnFindConvolutionBackwardDataAlgorithm
            } else {
                sys::cudnnGetConvolutionBackwardDataAlgorithm_v7
            };
            choose(
                handle,
                d.w,
                d.y,
                d.conv,
                d.x,
                N as c_int,
                &mut count,
                perf.as_mut_ptr(),
            )
        });
        check(op, "choose backward-data algorithm", st)?;
        for p in &perf[..(count.max(0) as usize).min(N)] {
            found.push((
                AlgoId::Data(p.algo),
                p.status,
                p.memory,
                deterministic(p.determinism),
                p.time,
            ));
        }
    }
    Ok(found)
}

/// The backward-filter algorithms: cuDNN's measured candidates, best first
/// (its heuristics' ranking where Find fails, or without `measure`).
///
/// # Safety
/// `handle` and the descriptors in `d` are live.
unsafe fn find_filter(
    handle: sys::cudnnHandle_t,
    d: Descs,
    op: &'static str,
    measure: bool,
) -> Result<Vec<Candidate>> {
    let mut found: Vec<Candidate> = Vec::new();
    let mut count: c_int = 0;
    // SAFETY: the perf array holds N entries and we request at most that
    // many, so cuDNN writes within it; `count` tells how many it filled.
    // Find runs the candidates on buffers it allocates itself.
    unsafe {
        const N: usize = 7;
        let mut perf: [sys::cudnnConvolutionBwdFilterAlgoPerf_t; N] = std::mem::zeroed();
        let st = rank(measure, "backward-filter", |timed| {
            let choose = if timed {
                sys::cudnnFindConvolutionBackwardFilterAlgorithm
            } else {
                sys::cudnnGetConvolutionBackwardFilterAlgorithm_v7
            };
            choose(
                handle,
                d.x,
                d.y,
                d.conv,
                d.w,
                N as c_int,
                &mut count,
                perf.as_mut_ptr(),
            )
        });
        check(op, "choose backward-filter algorithm", st)?;
        for p in &perf[..(count.max(0) as usize).min(N)] {
            found.push((
                AlgoId::Filter(p.algo),
                p.status,
                p.memory,
                deterministic(p.determinism),
                p.time,
            ));
        }
    }
    Ok(found)
}

/// The candidates for direction `dir` (`find_forward`, `find_data`, `find_filter`).
///
/// # Safety
/// As theirs.
unsafe fn find(
    handle: sys::cudnnHandle_t,
    d: Descs,
    op: &'static str,
    measure: bool,
    dir: Dir,
) -> Result<Vec<Candidate>> {
    // SAFETY: as the function's contract says.
    unsafe {
        match dir {
            Dir::Forward => find_forward(handle, d, op, measure),
            Dir::Data => find_data(handle, d, op, measure),
            Dir::Filter => find_filter(handle, d, op, measure),
        }
    }
}

/// The workspace algorithm `id` needs for the convolution of `d`.
///
/// # Safety
/// `handle` and the descriptors in `d` are live; `id` is one cuDNN returned
/// for this shape.
unsafe fn workspace_size(
    handle: sys::cudnnHandle_t,
    d: Descs,
    id: AlgoId,
    op: &'static str,
) -> Result<usize> {
    let mut workspace = 0usize;
    // SAFETY: as the function's contract says.
    let st = unsafe {
        match id {
            AlgoId::Forward(algo) => sys::cudnnGetConvolutionForwardWorkspaceSize(
                handle,
                d.x,
                d.w,
                d.conv,
                d.y,
                algo,
                &mut workspace,
            ),
            AlgoId::Data(algo) => sys::cudnnGetConvolutionBackwardDataWorkspaceSize(
                handle,
                d.w,
                d.y,
                d.conv,
                d.x,
                algo,
                &mut workspace,
            ),
            AlgoId::Filter(algo) => sys::cudnnGetConvolutionBackwardFilterWorkspaceSize(
                handle,
                d.x,
                d.y,
                d.conv,
                d.w,
                algo,
                &mut workspace,
            ),
        }
    };
    check(op, "workspace size", st)?;
    Ok(workspace)
}

/// Whether Find reported the candidate as giving the same bits on every run.
fn deterministic(d: sys::cudnnDeterminism_t) -> bool {
    d == sys::cudnnDeterminism_t::CUDNN_DETERMINISTIC
}

/// Plans are keyed by the whole geometry (batch size included: cuDNN's
/// algorithm choice depends on it) and the precision (descriptors and the
/// fastest algorithm differ per data type).
type Key = ([usize; 9], Precision);

fn key(g: &ConvGeom, p: Precision) -> Key {
    (
        [
            g.n, g.c_in, g.h, g.w, g.c_out, g.k, g.stride, g.pad, g.groups,
        ],
        p,
    )
}

/// Everything cuDNN needs for one convolution shape.
struct Plan {
    x: TensorDesc,
    y: TensorDesc,
    /// [1, c_out, 1, 1], the bias as cuDNN broadcasts it (f32: only fp32
    /// plans use cuDNN's bias ops; 16-bit ones add the f32 bias in a kernel).
    bias: TensorDesc,
    w: FilterDesc,
    conv: ConvDesc,
    /// One group as a convolution of its own, for grouped shapes.
    split: Option<Split>,
    algos: HashMap<Dir, Algo>,
}

/// One group of a grouped convolution as a convolution of its own: that
/// group's channels of x and y as strided views of the whole batch, its
/// [c_out / groups, c_in / groups, k, k] slice of the filter, one group.
struct Split {
    x: TensorDesc,
    y: TensorDesc,
    w: FilterDesc,
    conv: ConvDesc,
}

impl Split {
    fn new(
        op: &'static str,
        g: &ConvGeom,
        p: Precision,
        math: sys::cudnnMathType_t,
    ) -> Result<Self> {
        let (ci, co) = (g.c_in / g.groups, g.c_out / g.groups);
        let dtype = data_type(p);
        let (xd, xs) = group_view(g.n, g.c_in, g.groups, g.h, g.w);
        let (yd, ys) = group_view(g.n, g.c_out, g.groups, g.h_out(), g.w_out());
        let x = TensorDesc::strided(op, xd, xs, dtype)?;
        let y = TensorDesc::strided(op, yd, ys, dtype)?;
        let (w, conv) = filter_conv(op, g, dtype, [co, ci, g.k, g.k], 1, math)?;
        Ok(Split { x, y, w, conv })
    }

    fn descs(&self) -> Descs {
        Descs {
            x: self.x.0,
            y: self.y.0,
            w: self.w.0,
            conv: self.conv.0,
        }
    }
}

/// One group's channels of a packed [n, c, h, w] tensor: the view's dims and
/// element strides (n, c, h, w).
fn group_view(n: usize, c: usize, groups: usize, h: usize, w: usize) -> ([usize; 4], [usize; 4]) {
    ([n, c / groups, h, w], [c * h * w, h * w, w, 1])
}

/// Element offsets of group `gi`'s channels in x, its filter slice and its
/// channels in y (a `Split`'s pointers).
fn group_offsets(g: &ConvGeom, gi: usize) -> [usize; 3] {
    let (ci, co) = (g.c_in / g.groups, g.c_out / g.groups);
    [
        gi * ci * g.h * g.w,
        gi * co * ci * g.k * g.k,
        gi * co * g.h_out() * g.w_out(),
    ]
}

/// `group_offsets` in bytes of `T` for call `gi` of `a` (zero unless split).
fn byte_offsets<T>(g: &ConvGeom, a: Algo, gi: usize) -> [u64; 3] {
    let o = if a.split {
        group_offsets(g, gi)
    } else {
        [0; 3]
    };
    o.map(|e| (e * std::mem::size_of::<T>()) as u64)
}

/// A filter of `fdims` and a cross-correlation with `g`'s padding and
/// stride in `groups` groups, computed in f32 with `math`.
fn filter_conv(
    op: &'static str,
    g: &ConvGeom,
    dtype: sys::cudnnDataType_t,
    fdims: [usize; 4],
    groups: usize,
    math: sys::cudnnMathType_t,
) -> Result<(FilterDesc, ConvDesc)> {
    let fdims = [
        int(op, fdims[0])?,
        int(op, fdims[1])?,
        int(op, fdims[2])?,
        int(op, fdims[3])?,
    ];
    let (pad, stride, groups) = (int(op, g.pad)?, int(op, g.stride)?, int(op, groups)?);
    let mut fd = std::ptr::null_mut();
    let mut cd = std::ptr::null_mut();
    // SAFETY: out-pointers are valid; each descriptor is wrapped in its owner
    // right after creation, so an early return destroys what exists.
    unsafe {
        check(
            op,
            "create filter",
            sys::cudnnCreateFilterDescriptor(&mut fd),
        )?;
        let w = FilterDesc(fd);
        check(
            op,
            "set filter",
            sys::cudnnSetFilter4dDescriptor(
                w.0,
                dtype,
                sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW,
                fdims[0],
                fdims[1],
                fdims[2],
                fdims[3],
            ),
        )?;
        check(
            op,
            "create convolution",
            sys::cudnnCreateConvolutionDescriptor(&mut cd),
        )?;
        let conv = ConvDesc(cd);
        check(
            op,
            "set convolution",
            sys::cudnnSetConvolution2dDescriptor(
                conv.0,
                pad,
                pad,
                stride,
                stride,
                1,
                1,
                sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
                // Accumulate in f32 whatever the storage (for 16-bit data
                // this is cuDNN's PSEUDO_HALF / PSEUDO_BFLOAT16 config).
                sys::cudnnDataType_t::CUDNN_DATA_FLOAT,
            ),
        )?;
        check(
            op,
            "set group count",
            sys::cudnnSetConvolutionGroupCount(conv.0, groups),
        )?;
        check(
            op,
            "set math type",
            sys::cudnnSetConvolutionMathType(conv.0, math),
        )?;
        Ok((w, conv))
    }
}

impl Plan {
    /// The whole convolution's descriptors.
    fn descs(&self) -> Descs {
        Descs {
            x: self.x.0,
            y: self.y.0,
            w: self.w.0,
            conv: self.conv.0,
        }
    }

    /// Descriptors for `g` with tensors and filter stored as `p`; the
    /// convolution itself always computes in f32.
    fn new(
        op: &'static str,
        g: &ConvGeom,
        p: Precision,
        math: sys::cudnnMathType_t,
    ) -> Result<Self> {
        let (ho, wo) = (g.h_out(), g.w_out());
        let dtype = data_type(p);
        let x = TensorDesc::nchw(op, [g.n, g.c_in, g.h, g.w], dtype)?;
        let y = TensorDesc::nchw(op, [g.n, g.c_out, ho, wo], dtype)?;
        let bias = TensorDesc::nchw(
            op,
            [1, g.c_out, 1, 1],
            sys::cudnnDataType_t::CUDNN_DATA_FLOAT,
        )?;
        // Grouped filters: each output channel sees c_in / groups inputs, so the
        // filter is [c_out, c_in / groups, k, k] (cuDNN's rule with a group count).
        let fdims = [g.c_out, g.c_in / g.groups, g.k, g.k];
        let (w, conv) = filter_conv(op, g, dtype, fdims, g.groups, math)?;
        // cuDNN's own output shape must equal ours (h_out = (h + 2 pad - k) / stride + 1).
        let (mut on, mut oc, mut oh, mut ow) = (0, 0, 0, 0);
        // SAFETY: all descriptors are live and fully set; out-pointers are valid.
        check(op, "output dims", unsafe {
            sys::cudnnGetConvolution2dForwardOutputDim(
                conv.0, x.0, w.0, &mut on, &mut oc, &mut oh, &mut ow,
            )
        })?;
        let want = [g.n, g.c_out, ho, wo];
        if [on, oc, oh, ow].map(|v| v as i64) != want.map(|v| v as i64) {
            return Err(Error::Shape {
                op,
                detail: format!(
                    "cuDNN computes output {:?}, expected {want:?}",
                    [on, oc, oh, ow]
                ),
            });
        }
        // Where cuDNN refuses the strided views, the grouped call serves alone.
        let split = if g.groups > 1 {
            Split::new(op, g, p, math)
                .map_err(|e| tracing::debug!("cuDNN: {g:?} {p}: no per-group plan: {e}"))
                .ok()
        } else {
            None
        };
        Ok(Plan {
            x,
            y,
            bias,
            w,
            conv,
            split,
            algos: HashMap::new(),
        })
    }
}

/// The cuDNN state of one device: handle, plans by shape, shared workspace.
pub struct Dnn {
    handle: sys::cudnnHandle_t,
    stream: Arc<CudaStream>,
    plans: HashMap<Key, Plan>,
    workspace: Option<CudaSlice<u8>>,
    math: sys::cudnnMathType_t,
    /// Only deterministic algorithms, ranked by heuristics (`pick`).
    deterministic: bool,
    /// Grouped shapes one group at a time (true) or whole (false) whatever
    /// the timings say; None: as they say (`split_pays`).
    force_split: Option<bool>,
    allocs: Arc<AtomicU64>,
}

// SAFETY: the handle and descriptors are plain heap objects of the cuDNN
// library; cuDNN allows a handle to be used from any host thread as long as
// calls do not overlap. The backend keeps `Dnn` inside a Mutex, so every use
// is exclusive, and binds the device's context to the calling thread first.
unsafe impl Send for Dnn {}

impl Drop for Dnn {
    fn drop(&mut self) {
        self.plans.clear();
        // SAFETY: created by cudnnCreate in `new`, destroyed only here, after
        // every descriptor that refers to it.
        let st = unsafe { sys::cudnnDestroy(self.handle) };
        if st != sys::cudnnStatus_t::CUDNN_STATUS_SUCCESS {
            tracing::warn!("cuDNN: destroying the handle: {st:?}");
        }
    }
}

/// The algorithm cache returned another direction's algorithm (cannot happen:
/// entries are keyed by direction).
fn mixed(op: &'static str) -> Error {
    Error::Cuda {
        op,
        detail: "cuDNN algorithm cache holds the wrong direction".into(),
    }
}

/// A device pointer as cuDNN's `const void*`.
fn cptr(p: u64) -> *const c_void {
    p as usize as *const c_void
}

/// A device pointer as cuDNN's `void*`.
fn mptr(p: u64) -> *mut c_void {
    p as usize as *mut c_void
}

impl Dnn {
    /// A handle whose work goes on `stream` (the compute stream). `allow_tf32`
    /// lets cuDNN use TF32 tensor cores (faster, ~1e-3 relative error); without
    /// it the math is plain f32 FMA, which matches the CPU reference closely.
    /// The caller has bound the device's context to this thread.
    pub fn new(
        stream: Arc<CudaStream>,
        allow_tf32: bool,
        deterministic: bool,
        allocs: Arc<AtomicU64>,
    ) -> Result<Self> {
        const OP: &str = "cudnn init";
        let mut handle = std::ptr::null_mut();
        // SAFETY: valid out-pointer; the context is current on this thread.
        check(OP, "create handle", unsafe {
            sys::cudnnCreate(&mut handle)
        })?;
        let dnn = Dnn {
            handle,
            stream,
            plans: HashMap::new(),
            workspace: None,
            math: if allow_tf32 {
                sys::cudnnMathType_t::CUDNN_DEFAULT_MATH
            } else {
                sys::cudnnMathType_t::CUDNN_FMA_MATH
            },
            deterministic,
            force_split: None,
            allocs,
        };
        // SAFETY: the handle is live and the stream outlives it (Dnn holds an Arc
        // to it, and the handle is destroyed first, in Drop).
        check(OP, "set stream", unsafe {
            sys::cudnnSetStream(dnn.handle, dnn.stream.cu_stream() as sys::cudaStream_t)
        })?;
        // SAFETY: a plain query.
        let version = unsafe { sys::cudnnGetVersion() };
        tracing::debug!("cuDNN {version} ready");
        Ok(dnn)
    }

    fn plan(&mut self, op: &'static str, g: &ConvGeom, p: Precision) -> Result<()> {
        if !self.plans.contains_key(&key(g, p)) {
            // 16-bit data: tensor cores (f32 accumulation; the reason to
            // train in 16 bits). f32: FMA, or TF32 tensor cores when allowed.
            let math = if p.is_half() {
                sys::cudnnMathType_t::CUDNN_TENSOR_OP_MATH
            } else {
                self.math
            };
            let plan = Plan::new(op, g, p, math)?;
            self.plans.insert(key(g, p), plan);
        }
        Ok(())
    }

    /// The plan made by `plan` (or `algo`) for (g, p).
    fn get(&self, op: &'static str, g: &ConvGeom, p: Precision) -> Result<&Plan> {
        self.plans.get(&key(g, p)).ok_or_else(|| Error::Cuda {
            op,
            detail: "cuDNN plan missing after insertion".into(),
        })
    }

    /// The algorithm for (shape, direction): chosen once by cudnnFind* (which
    /// times the candidates), or by the heuristic cudnnGet*_v7 when Find fails;
    /// the first successful candidate whose workspace fits the limit wins.
    fn algo(&mut self, op: &'static str, g: &ConvGeom, p: Precision, dir: Dir) -> Result<Algo> {
        self.plan(op, g, p)?;
        let handle = self.handle;
        let Some(plan) = self.plans.get_mut(&key(g, p)) else {
            return Err(Error::Cuda {
                op,
                detail: "cuDNN plan missing after insertion".into(),
            });
        };
        if let Some(a) = plan.algos.get(&dir) {
            return Ok(*a);
        }
        let d = plan.descs();
        // Deterministic runs rank by cuDNN's heuristics, which do not depend
        // on timing, so that every run picks the same algorithms.
        let measure = !self.deterministic;
        // In 16 bits, no Winograd for filters larger than 3x3: its transforms
        // amplify rounding as the tile grows (Lavin & Gray 2016, section 5),
        // and on conv2 (5x5) in fp16 cuDNN's WINOGRAD_NONFUSED backward-data
        // was off by 1.2% of the largest |dx|, against 0.03% for ALGO_1.
        let no_winograd = p.is_half() && g.k > 3;
        // SAFETY: the descriptors and the handle are live (the plan owns them).
        let found = unsafe { find(handle, d, op, measure, dir)? };
        let grouped = pick(&found, no_winograd, self.deterministic).copied();
        // A grouped shape is also timed one group at a time (measured runs,
        // or where asked to split).
        let force = self.force_split;
        let split = match (&plan.split, measure || force == Some(true)) {
            (Some(sp), true) if force != Some(false) => {
                // SAFETY: as above; the split's descriptors belong to the plan.
                match unsafe { find(handle, sp.descs(), op, measure, dir) } {
                    Ok(f) => pick(&f, no_winograd, self.deterministic).copied(),
                    Err(e) => {
                        tracing::debug!("cuDNN: {g:?} {p}: no per-group {dir:?} algorithm: {e}");
                        None
                    }
                }
            }
            _ => None,
        };
        let per_group = match force {
            Some(f) => f && split.is_some(),
            None => split_pays(grouped.as_ref(), split.as_ref(), g.groups),
        };
        let (chosen, d) = match (per_group, &plan.split, split, grouped) {
            (true, Some(sp), Some(c), _) => (c, sp.descs()),
            (_, _, _, Some(c)) => (c, d),
            _ => {
                return Err(Error::Cuda {
                    op,
                    detail: format!(
                        "cuDNN has no {dir:?} algorithm for {g:?} within a {} MiB workspace \
                         (candidates: {found:?})",
                        WORKSPACE_LIMIT >> 20
                    ),
                })
            }
        };
        let (id, det, ms) = (chosen.0, chosen.3, chosen.4);
        // The exact workspace for the chosen algorithm (Find's figure can differ).
        // SAFETY: descriptors live; `id` is one cuDNN returned for this shape.
        let workspace = unsafe { workspace_size(handle, d, id, op)? };
        let a = Algo {
            id,
            workspace,
            split: per_group,
        };
        tracing::debug!(
            "cuDNN: {g:?} {p}: {id:?} (deterministic: {det}, per group: {per_group}, {ms:.3} ms), workspace {workspace} bytes"
        );
        plan.algos.insert(dir, a);
        Ok(a)
    }

    /// Run grouped shapes one group at a time (Some(true)), whole
    /// (Some(false)), or as cuDNN's timings say (None, the default); the
    /// algorithms are chosen again.
    pub fn force_split(&mut self, split: Option<bool>) {
        self.force_split = split;
        for plan in self.plans.values_mut() {
            plan.algos.clear();
        }
    }

    /// The algorithm chosen for a shape, precision and direction, once one
    /// was (for the parity report).
    /// With whether it runs one group at a time.
    pub(crate) fn chosen(&self, g: &ConvGeom, p: Precision, dir: Dir) -> Option<(AlgoId, bool)> {
        self.plans
            .get(&key(g, p))
            .and_then(|plan| plan.algos.get(&dir))
            .map(|a| (a.id, a.split))
    }

    /// How many calls `a` takes for `g` and their descriptors: one on the
    /// whole tensors, or one per group on the split's views.
    fn calls(
        &self,
        op: &'static str,
        g: &ConvGeom,
        p: Precision,
        a: Algo,
    ) -> Result<(usize, Descs)> {
        let plan = self.get(op, g, p)?;
        match (&plan.split, a.split) {
            (Some(sp), true) => Ok((g.groups, sp.descs())),
            _ => Ok((1, plan.descs())),
        }
    }

    /// `call` once on the whole tensors, or once per group on the split's
    /// views (`a.split`), each time with the base device pointers of x, w
    /// and y (`base`, in that order) moved to the call's part, the split's
    /// or the plan's descriptors, and the workspace `a` asks for; its
    /// status is checked as `what`.
    #[allow(clippy::too_many_arguments)]
    fn each_call<T>(
        &mut self,
        op: &'static str,
        what: &str,
        g: &ConvGeom,
        p: Precision,
        a: Algo,
        base: [u64; 3],
        call: impl Fn(Descs, [u64; 3], *mut c_void, usize) -> sys::cudnnStatus_t,
    ) -> Result<()> {
        let (ws, ws_len) = self.workspace(op, a.workspace)?;
        let (calls, d) = self.calls(op, g, p, a)?;
        for gi in 0..calls {
            let off = byte_offsets::<T>(g, a, gi);
            let ptrs = [base[0] + off[0], base[1] + off[1], base[2] + off[2]];
            check(op, what, call(d, ptrs, ws, ws_len))?;
        }
        Ok(())
    }

    /// Grow the shared workspace to at least `bytes` (never shrinks, so steady
    /// state allocates nothing). Returns (pointer, size) or (null, 0).
    fn workspace(&mut self, op: &'static str, bytes: usize) -> Result<(*mut c_void, usize)> {
        if bytes == 0 {
            return Ok((std::ptr::null_mut(), 0));
        }
        if self.workspace.as_ref().is_none_or(|w| w.len() < bytes) {
            // Dropping the old buffer frees it in stream order (after queued work).
            self.workspace = None;
            let ws = self
                .stream
                .alloc_zeros::<u8>(bytes)
                .map_err(|e| Error::Cuda {
                    op,
                    detail: format!("cuDNN workspace of {bytes} bytes: {e:?}{ALLOC_LIMIT_NOTE}"),
                })?;
            self.allocs.fetch_add(1, Ordering::Relaxed);
            self.workspace = Some(ws);
        }
        let Some(ws) = self.workspace.as_mut() else {
            return Ok((std::ptr::null_mut(), 0));
        };
        let len = ws.len();
        // The workspace is only ever used on `self.stream`, so the tracking
        // guard can be dropped at once.
        let (p, _guard) = ws.device_ptr_mut(&self.stream);
        Ok((mptr(p), len))
    }

    /// y = conv(x, w) + b, or y = conv(x, w) when `b` is None (the caller
    /// then adds the bias itself, fused with the ReLU). x, w, y are stored as
    /// `p` (f32, or 16-bit bits as u16); the bias add through cuDNN is fp32
    /// only (16-bit callers pass None and add the f32 bias in a kernel).
    #[allow(clippy::too_many_arguments)]
    pub fn forward<T: DeviceRepr>(
        &mut self,
        p: Precision,
        g: &ConvGeom,
        x: &CudaSlice<T>,
        w: &CudaSlice<T>,
        b: Option<&CudaBuf<f32>>,
        y: &mut CudaSlice<T>,
    ) -> Result<()> {
        const OP: &str = "conv2d_forward";
        check_elem::<T>(OP, p)?;
        if b.is_some() && p.is_half() {
            return Err(Error::Cuda {
                op: OP,
                detail: "cuDNN's bias add is used for fp32 only".into(),
            });
        }
        let a = self.algo(OP, g, p, Dir::Forward)?;
        let AlgoId::Forward(algo) = a.id else {
            return Err(mixed(OP));
        };
        let stream = self.stream.clone();
        let (xp, _gx) = x.device_ptr(&stream);
        let (wp, _gw) = w.device_ptr(&stream);
        let (yp, _gy) = y.device_ptr_mut(&stream);
        let (one, zero) = (1.0f32, 0.0f32);
        let handle = self.handle;
        let what = "convolution forward";
        self.each_call::<T>(
            OP,
            what,
            g,
            p,
            a,
            [xp, wp, yp],
            |d, [x, w, y], ws, ws_len| {
                // SAFETY: pointers come from buffers whose lengths the caller checked
                // against `g` (x: x_len, w: w_len, b: c_out, y: y_len), matching the
                // descriptors (a split's views and offsets stay inside them), with
                // elements of the descriptors' type (check_elem); alpha/beta are
                // f32 as cuDNN requires for float, half and bfloat16 data; the
                // workspace holds at least the size cuDNN asked for this algorithm;
                // the guards record the accesses on the stream the handle uses.
                unsafe {
                    sys::cudnnConvolutionForward(
                        handle,
                        (&one as *const f32).cast(),
                        d.x,
                        cptr(x),
                        d.w,
                        cptr(w),
                        d.conv,
                        algo,
                        ws,
                        ws_len,
                        (&zero as *const f32).cast(),
                        d.y,
                        mptr(y),
                    )
                }
            },
        )?;
        let plan = self.get(OP, g, p)?;
        let Some(b) = b else {
            return Ok(());
        };
        // fp32 here (checked above), so b's `data` holds c_out floats.
        let (bp, _gb) = b.data.device_ptr(&stream);
        // y += b broadcast over n, h, w (beta = 1 keeps the convolution).
        // SAFETY: b holds c_out floats (checked by the caller), matching the
        // [1, c_out, 1, 1] bias descriptor; y as above.
        unsafe {
            check(
                OP,
                "add bias",
                sys::cudnnAddTensor(
                    self.handle,
                    (&one as *const f32).cast(),
                    plan.bias.0,
                    cptr(bp),
                    (&one as *const f32).cast(),
                    plan.y.0,
                    mptr(yp),
                ),
            )
        }
    }

    /// dx = conv_transpose(dy, w), overwriting dx (beta = 0); all stored as `p`.
    pub fn backward_data<T: DeviceRepr>(
        &mut self,
        p: Precision,
        g: &ConvGeom,
        w: &CudaSlice<T>,
        dy: &CudaSlice<T>,
        dx: &mut CudaSlice<T>,
    ) -> Result<()> {
        const OP: &str = "conv2d_backward_data";
        check_elem::<T>(OP, p)?;
        let a = self.algo(OP, g, p, Dir::Data)?;
        let AlgoId::Data(algo) = a.id else {
            return Err(mixed(OP));
        };
        let stream = self.stream.clone();
        let (wp, _gw) = w.device_ptr(&stream);
        let (dyp, _gdy) = dy.device_ptr(&stream);
        let (dxp, _gdx) = dx.device_ptr_mut(&stream);
        let (one, zero) = (1.0f32, 0.0f32);
        let handle = self.handle;
        let what = "convolution backward data";
        self.each_call::<T>(
            OP,
            what,
            g,
            p,
            a,
            [dxp, wp, dyp],
            |d, [dx, w, dy], ws, ws_len| {
                // SAFETY: as in `forward`: lengths checked against the descriptors,
                // f32 scaling factors, workspace large enough, accesses recorded.
                unsafe {
                    sys::cudnnConvolutionBackwardData(
                        handle,
                        (&one as *const f32).cast(),
                        d.w,
                        cptr(w),
                        d.y,
                        cptr(dy),
                        d.conv,
                        algo,
                        ws,
                        ws_len,
                        (&zero as *const f32).cast(),
                        d.x,
                        mptr(dx),
                    )
                }
            },
        )
    }

    /// dw = sum over the batch of dy (x) x, overwriting dw (beta = 0); all
    /// stored as `p` (a 16-bit dw is rounded once, from cuDNN's f32 sums).
    pub fn backward_filter<T: DeviceRepr>(
        &mut self,
        p: Precision,
        g: &ConvGeom,
        x: &CudaSlice<T>,
        dy: &CudaSlice<T>,
        dw: &mut CudaSlice<T>,
    ) -> Result<()> {
        const OP: &str = "conv2d_backward_filter";
        check_elem::<T>(OP, p)?;
        let a = self.algo(OP, g, p, Dir::Filter)?;
        let AlgoId::Filter(algo) = a.id else {
            return Err(mixed(OP));
        };
        let stream = self.stream.clone();
        let (xp, _gx) = x.device_ptr(&stream);
        let (dyp, _gdy) = dy.device_ptr(&stream);
        let (dwp, _gdw) = dw.device_ptr_mut(&stream);
        let (one, zero) = (1.0f32, 0.0f32);
        let handle = self.handle;
        let what = "convolution backward filter";
        self.each_call::<T>(
            OP,
            what,
            g,
            p,
            a,
            [xp, dwp, dyp],
            |d, [x, dw, dy], ws, ws_len| {
                // SAFETY: as in `forward`.
                unsafe {
                    sys::cudnnConvolutionBackwardFilter(
                        handle,
                        (&one as *const f32).cast(),
                        d.x,
                        cptr(x),
                        d.y,
                        cptr(dy),
                        d.conv,
                        algo,
                        ws,
                        ws_len,
                        (&zero as *const f32).cast(),
                        d.w,
                        mptr(dw),
                    )
                }
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sys::cudnnConvolutionBwdFilterAlgo_t as F;
    use sys::cudnnStatus_t as S;

    /// conv1's output, 96 x 55 x 55 = 290,400 values an image: 7,394
    /// images are 2,147,217,600 values, within 2^31 - 1 = 2,147,483,647;
    /// 7,395 are 2,147,508,000, past it.
    #[test]
    fn a_batch_past_cudnns_tensor_size_names_the_largest_that_fits() {
        let per = 96 * 55 * 55;
        assert!(fits_cudnn("conv1", 7_394, per).is_ok());
        let e = fits_cudnn("conv1", 7_395, per).unwrap_err().to_string();
        assert!(
            e.contains("a batch of 7395 on one GPU")
                && e.contains("at most 7394 per GPU, or --fallback-conv"),
            "{e}"
        );
        assert!(fits_cudnn("conv1", 1, 0).is_ok());
    }

    /// cuDNN lists the candidates fastest first; backward-filter ALGO_0
    /// sums with atomics (not deterministic), ALGO_1 does not. The pick is
    /// the first usable candidate, and with `deterministic` the first
    /// usable deterministic one; a failed, oversized or (in 16 bits, for
    /// large filters) Winograd candidate never is.
    #[test]
    fn deterministic_runs_pick_the_first_deterministic_algorithm() {
        let c = |a, st, mem, det| (AlgoId::Filter(a), st, mem, det, 0.0);
        let found = [
            c(
                F::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT,
                S::CUDNN_STATUS_NOT_SUPPORTED,
                0,
                true,
            ),
            c(
                F::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT_TILING,
                S::CUDNN_STATUS_SUCCESS,
                WORKSPACE_LIMIT + 1,
                true,
            ),
            c(
                F::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_WINOGRAD_NONFUSED,
                S::CUDNN_STATUS_SUCCESS,
                0,
                true,
            ),
            c(
                F::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0,
                S::CUDNN_STATUS_SUCCESS,
                0,
                false,
            ),
            c(
                F::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1,
                S::CUDNN_STATUS_SUCCESS,
                64,
                true,
            ),
        ];
        let id = |no_winograd, det| pick(&found, no_winograd, det).map(|p| p.0);
        let filter = |a| Some(AlgoId::Filter(a));
        assert_eq!(
            id(false, false),
            filter(F::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_WINOGRAD_NONFUSED)
        );
        assert_eq!(
            id(true, false),
            filter(F::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0)
        );
        assert_eq!(
            id(true, true),
            filter(F::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1)
        );
        assert_eq!(pick(&found[..4], true, true), None);
    }

    /// Per group only where Find timed both and the groups' calls together
    /// beat the grouped one (or the grouped shape has no algorithm at all).
    #[test]
    fn a_grouped_convolution_splits_only_when_its_groups_together_are_faster() {
        let c = |ms| {
            (
                AlgoId::Filter(F::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1),
                S::CUDNN_STATUS_SUCCESS,
                0,
                true,
                ms,
            )
        };
        assert!(split_pays(Some(&c(0.40)), Some(&c(0.15)), 2));
        assert!(!split_pays(Some(&c(0.40)), Some(&c(0.20)), 2));
        assert!(!split_pays(Some(&c(0.40)), Some(&c(0.15)), 3));
        assert!(!split_pays(Some(&c(0.40)), None, 2));
        // Heuristics' candidates carry no measured time.
        assert!(!split_pays(Some(&c(-1.0)), Some(&c(-1.0)), 2));
        assert!(split_pays(None, Some(&c(0.15)), 2));
    }

    /// Each group's view, from its offset, reaches exactly its own channels
    /// of the packed tensor: element (i, c, y, x) of group gi is element
    /// (i, gi * c_in / groups + c, y, x) of the whole.
    #[test]
    fn group_views_and_offsets_cover_each_groups_channels() {
        let g = ConvGeom {
            n: 3,
            c_in: 6,
            h: 5,
            w: 4,
            c_out: 4,
            k: 3,
            stride: 1,
            pad: 1,
            groups: 2,
        };
        let packed =
            |i: usize, ch: usize, y: usize, x: usize| ((i * g.c_in + ch) * g.h + y) * g.w + x;
        let (dims, st) = group_view(g.n, g.c_in, g.groups, g.h, g.w);
        assert_eq!(dims, [3, 3, 5, 4]);
        let mut seen = vec![0u8; g.n * g.c_in * g.h * g.w];
        for gi in 0..g.groups {
            let off = group_offsets(&g, gi)[0];
            for i in 0..dims[0] {
                for c in 0..dims[1] {
                    for y in 0..dims[2] {
                        for x in 0..dims[3] {
                            let at = off + i * st[0] + c * st[1] + y * st[2] + x * st[3];
                            assert_eq!(at, packed(i, gi * dims[1] + c, y, x));
                            seen[at] += 1;
                        }
                    }
                }
            }
        }
        assert!(seen.iter().all(|&v| v == 1));
        // The filter's groups are its consecutive blocks of c_out / groups rows.
        let rows = (g.c_out / g.groups) * (g.c_in / g.groups) * g.k * g.k;
        assert_eq!(group_offsets(&g, 1)[1], rows);
        assert_eq!(
            group_offsets(&g, 1)[2],
            (g.c_out / g.groups) * g.h_out() * g.w_out()
        );
    }
}
