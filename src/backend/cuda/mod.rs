//! The CUDA backend: `CudaBackend` implements every `Backend` op on one GPU.
//! This file owns the device state (one context, a compute stream and a copy
//! stream, the kernels, the cuBLAS handle, the cuDNN engine when the library
//! exists), memory (allocation, the pinned upload path, the allocation
//! counter) and the ops that are a single kernel launch. Larger pieces live
//! beside it:
//!   probe.rs         which GPUs exist (checked before any other CUDA call)
//!   modules.rs       loading kernels/*.cu (embedded fatbin, else NVRTC)
//!   cudnn.rs         the raw cuDNN calls: convolution with groups on the descriptor
//!   conv_fallback.rs grouped convolution by im2col + cuBLAS when cuDNN is absent
//!   linear.rs        fully connected layers on cuBLAS
//!   mixed.rs         mixed precision: 16-bit storage, conversions, the 16-bit
//!                    element-wise ops and cublasGemmEx on 16-bit operands
//!   step_metrics.rs  the mean loss and a training step's (loss, top-1 hits)
//!                    kept on the device, read back by the trainer in batches
//!   nccl.rs          NCCL all-reduce across the replicas' GPUs
//!   nccl_lib.rs      finding libnccl.so.2 where cudarc's names miss it
//!
//! Kernels follow kernels/README.md: argument order and C types (int = i32,
//! long long = i64, unsigned long long = u64), launched with
//! `alexnet_kernels::launch_1d` (block 256, grid-stride loops).
//!
//! Streams and ordering: all compute goes on one stream, so ops are ordered
//! as they are called. Uploads of host data go on the copy stream through a
//! pinned staging buffer, and the compute stream waits on an event recorded
//! after the copy. cudarc additionally tracks each buffer's last read and
//! write with events (it does once a context has two streams), so a buffer
//! is never freed or reused across streams while in use.
//!
//! Precision (`Precision`, `CudaOptions::precision`): fp32 is the default and
//! the reference. In fp16 / bf16 mode (mixed precision, Micikevicius et al.
//! 2018) activations and their gradients live in 16 bits, parameters keep an
//! f32 master copy (weights and gradients: `alloc_param`) plus a 16-bit
//! shadow that cuDNN and cuBLAS read (tensor cores), momentum is f32 alone
//! (`alloc_f32`), all GEMM-type ops
//! accumulate in f32, and fp16 training uses dynamic loss scaling (the
//! network's, model/loss_scale.rs). See mixed.rs.
pub mod conv_fallback;
pub mod cudnn;
pub mod linear;
pub mod mixed;
pub mod modules;
pub mod nccl;
pub mod nccl_lib;
pub mod pinned;
pub mod probe;
mod step_metrics;
pub mod storage16;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use alexnet_kernels::launch_1d;
use cudarc::cublas::CudaBlas;
use cudarc::driver::{
    result as drv_result, sys as drv_sys, CudaContext, CudaEvent, CudaSlice, CudaStream, DevicePtr,
    DevicePtrMut, LaunchConfig, PinnedHostSlice, PushKernelArg,
};

use crate::backend::cpu::conv::validate as validate_conv;
use crate::backend::{
    Backend, ConvGeom, LinearGeom, LrnParams, Nchw, PoolGeom, RowBlock, SgdParams,
};
use crate::error::{check_len, Error, Result};

pub use probe::{devices, require, DeviceInfo};
pub use storage16::Precision;

/// Appended to allocation failures.
pub(crate) const ALLOC_LIMIT_NOTE: &str = " (out of device memory? try a smaller --batch)";

/// A device buffer: a cudarc slice plus its logical length. A zero-length
/// buffer still owns one element, because the driver refuses zero-byte
/// allocations; ops never touch it.
///
/// Storage by precision (see `mixed.rs`):
/// - fp32 mode, and index buffers: `data` holds the `len` values, `half` is None;
/// - 16-bit activation (`alloc` in fp16/bf16 mode): `half` holds the `len`
///   values, `data` is a one-element placeholder that no op reads (`master`
///   is false, and every f32 use of a buffer checks it);
/// - 16-bit parameter (`alloc_param` in fp16/bf16 mode): `data` is the f32
///   master and `half` its 16-bit shadow (the weights cuDNN / cuBLAS read; for
///   a filter gradient, where cuDNN writes its 16-bit result before it is
///   widened into `data`).
pub struct CudaBuf<T> {
    pub(crate) data: CudaSlice<T>,
    len: usize,
    /// For index buffers: the host copy of what `upload_idx` wrote, so labels
    /// can be checked against the class count without a download. Cleared
    /// when a kernel writes the buffer (pooling's argmax).
    shadow: Option<Vec<T>>,
    /// The 16-bit values (fp16 or bf16 bits, as the backend's precision).
    pub(crate) half: Option<CudaSlice<u16>>,
    /// Whether `data` holds the `len` values (false only for 16-bit activations).
    master: bool,
}

impl<T> CudaBuf<T> {
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Whether the values are stored in 16 bits only (an activation in
    /// fp16/bf16 mode); false for f32 buffers and for parameters.
    pub fn is_half(&self) -> bool {
        !self.master
    }
}

/// Choices made when the backend is created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CudaOptions {
    /// How activations and the weights cuDNN / cuBLAS read are stored
    /// (fp32 by default; fp16 / bf16 train in mixed precision, mixed.rs).
    pub precision: Precision,
    /// Use the im2col + cuBLAS grouped convolution even when cuDNN is present
    /// (so the fallback can be tested on machines that have cuDNN).
    pub force_fallback_conv: bool,
    /// Let cuDNN and cuBLAS use TF32 tensor cores for f32 (Ampere and newer):
    /// several times faster, about 1e-3 relative error. Off by default, so
    /// results match the CPU reference to f32 rounding.
    pub allow_tf32: bool,
    /// Only cuDNN's deterministic convolution algorithms, ranked by its
    /// heuristics instead of timed: the same bits on every run, at some
    /// cost in speed. The fastest backward algorithms sum with atomics.
    pub deterministic: bool,
}

/// The pinned host buffer uploads go through, and the event marking the end
/// of the last copy out of it. f32 for parameters and fp32 activations, u16
/// for 16-bit activations (converted on the host, so half the bytes cross PCIe).
struct Staging<T> {
    host: PinnedHostSlice<T>,
    copied: CudaEvent,
}

impl<T> Drop for Staging<T> {
    fn drop(&mut self) {
        // The last copy may still be reading the pinned memory, which is freed
        // right after this (cudarc's own event for it is not used: the copy is
        // issued through the raw API).
        if let Err(e) = self.copied.synchronize() {
            tracing::warn!("cuda: waiting for the last upload before freeing its staging: {e:?}");
        }
    }
}

/// Per-op scratch, sized on first use and grown only when a larger batch comes.
#[derive(Default)]
struct Scratch {
    /// softmax_xent_forward's per-row and per-element values (step_metrics.rs).
    xent: XentScratch,
    /// The mean loss, when the host reads it (step_metrics.rs).
    mean_loss: Option<CudaSlice<f32>>,
    /// record_step_metrics' per-row top-1 hits.
    row_hit: Option<CudaSlice<f32>>,
    /// unscale_check_f32's overflow flag (one int).
    overflow: Option<CudaSlice<i32>>,
    /// 16-bit downloads land here before they are widened on the host.
    half_host: Vec<u16>,
    /// A pinned f32 batch lands here (by DMA) before it is narrowed to 16
    /// bits on the GPU.
    upload_f32: Option<CudaSlice<f32>>,
}

/// softmax_xent_forward's scratch (kernels/softmax_xent.cu), all f32: each
/// row's loss, the parts of each row's max (n * softmax_parts(classes)),
/// each element's exp (n * classes: 4 KB an image at 1000 classes), and
/// each row's 1 / sum. Not in the memory plan (memory.rs), which counts the
/// network's buffers; ops' scratch is in the tenth of the room kept back.
#[derive(Default)]
struct XentScratch {
    row_loss: Option<CudaSlice<f32>>,
    part_max: Option<CudaSlice<f32>>,
    exp: Option<CudaSlice<f32>>,
    inv: Option<CudaSlice<f32>>,
}

/// One GPU.
pub struct CudaBackend {
    info: DeviceInfo,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    copy: Arc<CudaStream>,
    kernels: modules::Kernels,
    blas: CudaBlas,
    dnn: Option<Mutex<cudnn::Dnn>>,
    force_fallback: AtomicBool,
    fallback: Mutex<conv_fallback::Scratch>,
    staging: Mutex<Option<Staging<f32>>>,
    staging16: Mutex<Option<Staging<u16>>>,
    /// The loader's pinned batch buffers (uploads from them skip staging),
    /// and the event that marks the end of such a copy.
    pinned: Arc<pinned::Registry>,
    direct_copied: CudaEvent,
    /// `mark`'s timing events since the last `marked_seconds`.
    marks: Mutex<Vec<CudaEvent>>,
    scratch: Mutex<Scratch>,
    allocs: Arc<AtomicU64>,
    precision: Precision,
}

/// With several GPUs a thread's current context is whichever one it bound
/// last, but cuBLAS and cuDNN handles must be destroyed with their own
/// context current, after the work queued on it (cuBLAS and cuDNN docs,
/// cublasDestroy / cudnnDestroy). The fields drop after this, in that state.
impl Drop for CudaBackend {
    fn drop(&mut self) {
        let bound = self.ctx.bind_to_thread();
        let synced = bound.and_then(|()| self.stream.synchronize());
        let synced = synced.and_then(|()| self.copy.synchronize());
        if let Err(e) = synced {
            tracing::warn!("{}: closing with an error: {e:?}", self.info);
        }
    }
}

// -- small helpers -----------------------------------------------------------------

/// A CUDA error while opening GPU `ordinal`, naming it; for a GPU taken or
/// full (CUDA_ERROR_DEVICE_UNAVAILABLE: another process holds a GPU in
/// exclusive-process mode), what to do.
fn opening_failed(ordinal: usize, e: Error) -> Error {
    let Error::Cuda { op, detail } = e else {
        return e;
    };
    let taken = ["DEVICE_UNAVAILABLE", "OUT_OF_MEMORY"]
        .iter()
        .any(|c| detail.contains(c));
    let fix = match taken {
        true => "; another process may hold it (`nvidia-smi` lists them): pick another with --gpus, or run with --cpu",
        false => "",
    };
    Error::Cuda {
        op,
        detail: format!("GPU {ordinal}: {detail}{fix}"),
    }
}

/// Map any CUDA library error to `Error::Cuda` for `op`.
pub(crate) fn cuda_err<E: std::fmt::Debug>(op: &'static str) -> impl Fn(E) -> Error {
    move |e| Error::Cuda {
        op,
        detail: format!("{e:?}"),
    }
}

/// A size as a kernel's `int`, or a shape error naming it.
pub(crate) fn int(op: &'static str, what: &str, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| Error::Shape {
        op,
        detail: format!("{what} = {v} does not fit a 32-bit int"),
    })
}

/// The descriptor of `b`'s rows of `elem`-byte elements from device memory
/// at `src` to device memory at `dst` (each a pointer and its context).
/// Every field is written: the unused host and array members are null, and
/// the memory types have no zero value (`CUmemorytype` starts at 1), so a
/// zeroed descriptor is not a valid one.
pub(crate) fn peer_copy(
    src: (drv_sys::CUdeviceptr, drv_sys::CUcontext),
    dst: (drv_sys::CUdeviceptr, drv_sys::CUcontext),
    b: RowBlock,
    elem: usize,
) -> drv_sys::CUDA_MEMCPY3D_PEER {
    let device = drv_sys::CUmemorytype::CU_MEMORYTYPE_DEVICE;
    drv_sys::CUDA_MEMCPY3D_PEER {
        srcXInBytes: 0,
        srcY: 0,
        srcZ: 0,
        srcLOD: 0,
        srcMemoryType: device,
        srcHost: std::ptr::null(),
        srcDevice: src.0 + (b.src_off * elem) as u64,
        srcArray: std::ptr::null_mut(),
        srcContext: src.1,
        srcPitch: b.src_pitch.max(b.width) * elem,
        srcHeight: b.rows,
        dstXInBytes: 0,
        dstY: 0,
        dstZ: 0,
        dstLOD: 0,
        dstMemoryType: device,
        dstHost: std::ptr::null_mut(),
        dstDevice: dst.0 + (b.dst_off * elem) as u64,
        dstArray: std::ptr::null_mut(),
        dstContext: dst.1,
        dstPitch: b.dst_pitch.max(b.width) * elem,
        dstHeight: b.rows,
        WidthInBytes: b.width * elem,
        Height: b.rows,
        Depth: 1,
    }
}

/// A whole-buffer length as a kernel's `long long`.
pub(crate) fn long(op: &'static str, v: usize) -> Result<i64> {
    i64::try_from(v).map_err(|_| Error::Shape {
        op,
        detail: format!("length {v} does not fit a 64-bit int"),
    })
}

/// The launch shape every kernel uses (kernels/README.md).
pub(crate) fn cfg(threads: usize) -> LaunchConfig {
    let (grid, block) = launch_1d(threads);
    LaunchConfig {
        grid_dim: (grid, 1, 1),
        block_dim: (block, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn lock<'a, T>(op: &'static str, m: &'a Mutex<T>) -> Result<MutexGuard<'a, T>> {
    m.lock().map_err(|_| Error::Cuda {
        op,
        detail: "a previous CUDA call panicked while holding the device state".into(),
    })
}

impl CudaBackend {
    /// Open GPU `ordinal`: context, streams, kernels, cuBLAS, and cuDNN when
    /// its library exists (else the im2col + cuBLAS convolution, logged).
    /// Activations and the weights cuDNN / cuBLAS read are stored in
    /// `opts.precision` (mixed precision for fp16 / bf16: f32 masters, f32
    /// accumulation; see mixed.rs).
    pub fn new(ordinal: usize, opts: CudaOptions) -> Result<Self> {
        Self::open(ordinal, opts).map_err(|e| opening_failed(ordinal, e))
    }

    /// `new`'s steps.
    fn open(ordinal: usize, opts: CudaOptions) -> Result<Self> {
        let precision = opts.precision;
        const OP: &str = "init";
        let info = probe::require(&[ordinal])?
            .pop()
            .ok_or_else(|| Error::NoDevice(format!("GPU {ordinal} not found")))?;
        // SAFETY: only dlopen checks; cudarc panics on first use of a missing library.
        if !unsafe { cudarc::cublas::sys::is_culib_present() } {
            return Err(Error::NoDevice(format!(
                "cuBLAS (libcublas.so) not found: {}",
                probe::library_fix(
                    "cublas",
                    "install the CUDA libraries (for example the nvidia-cublas-cu12 wheel) and \
                     put them on LD_LIBRARY_PATH, or run on the CPU with --cpu"
                )
            )));
        }
        let ctx = CudaContext::new(ordinal).map_err(cuda_err(OP))?;
        let stream = ctx.new_stream().map_err(cuda_err(OP))?;
        let copy = ctx.new_stream().map_err(cuda_err(OP))?;
        let kernels = modules::load_all(&ctx, info.compute_capability)?;
        for (name, path) in &kernels.loaded {
            tracing::debug!("cuda:{ordinal}: kernels {name}: {path:?}");
        }
        let blas = CudaBlas::new(stream.clone()).map_err(cuda_err("cublas init"))?;
        if opts.allow_tf32 {
            // SAFETY: the handle is live; the math mode is a plain enum setting.
            unsafe {
                cudarc::cublas::sys::cublasSetMathMode(
                    *blas.handle(),
                    cudarc::cublas::sys::cublasMath_t::CUBLAS_TF32_TENSOR_OP_MATH,
                )
            }
            .result()
            .map_err(cuda_err("cublas init"))?;
        }
        let allocs = Arc::new(AtomicU64::new(0));
        let dnn = if cudnn::cudnn_present() {
            ctx.bind_to_thread().map_err(cuda_err(OP))?;
            match cudnn::Dnn::new(
                stream.clone(),
                opts.allow_tf32,
                opts.deterministic,
                allocs.clone(),
            ) {
                Ok(d) => Some(Mutex::new(d)),
                Err(e) => {
                    tracing::warn!("cuda:{ordinal}: cuDNN found but unusable ({e}); convolutions use im2col + cuBLAS");
                    None
                }
            }
        } else {
            tracing::info!(
                "cuda:{ordinal}: cuDNN (libcudnn.so) not found; convolutions use im2col + cuBLAS"
            );
            None
        };
        let direct_copied = ctx.new_event(None).map_err(cuda_err(OP))?;
        let be = CudaBackend {
            info,
            ctx,
            stream,
            copy,
            kernels,
            blas,
            dnn,
            force_fallback: AtomicBool::new(opts.force_fallback_conv),
            fallback: Mutex::new(conv_fallback::Scratch::default()),
            staging: Mutex::new(None),
            staging16: Mutex::new(None),
            scratch: Mutex::new(Scratch::default()),
            allocs,
            precision,
            pinned: pinned::registry(),
            direct_copied,
            marks: Mutex::new(Vec::new()),
        };
        tracing::info!(
            "{}: convolutions by {}, {}",
            be.info,
            if be.uses_cudnn() {
                "cuDNN"
            } else {
                "im2col + cuBLAS"
            },
            precision
        );
        Ok(be)
    }

    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }

    /// How activations and the weights the libraries read are stored.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Whether convolutions go through cuDNN (else im2col + cuBLAS).
    pub fn uses_cudnn(&self) -> bool {
        self.dnn.is_some() && !self.force_fallback.load(Ordering::Relaxed)
    }

    /// Whether cuDNN loaded (whatever `set_force_fallback` says).
    pub fn has_cudnn(&self) -> bool {
        self.dnn.is_some()
    }

    /// Switch convolutions to the fallback (true) or back to cuDNN when present.
    /// For the parity check (tests/gpu_parity/); not meant to flip during training.
    pub fn set_force_fallback(&self, on: bool) {
        self.force_fallback.store(on, Ordering::Relaxed);
    }

    /// Run grouped convolutions through cuDNN one group at a time
    /// (Some(true)), whole (Some(false)), or as cuDNN's timings say (None,
    /// the default), so that the parity check covers both ways.
    pub fn force_split_groups(&self, split: Option<bool>) -> Result<()> {
        if let Some(dnn) = self.dnn.as_ref() {
            lock("force_split_groups", dnn)?.force_split(split);
        }
        Ok(())
    }

    /// The cuDNN algorithm chosen for `g` in direction `dir` at this
    /// backend's precision, once one was (None without cuDNN), without
    /// cuDNN's prefix: e.g. "BWD_FILTER_ALGO_1", with " per group" where a
    /// grouped shape runs one group at a time. For the parity report.
    pub fn cudnn_algo(&self, g: &ConvGeom, dir: cudnn::Dir) -> Result<Option<String>> {
        let Some(dnn) = self.dnn.as_ref() else {
            return Ok(None);
        };
        let id = lock("cudnn_algo", dnn)?.chosen(g, self.precision, dir);
        Ok(id.map(|(id, split)| {
            let name = id.short_name();
            if split {
                format!("{name} per group")
            } else {
                name
            }
        }))
    }

    /// Copy an index buffer back (argmax, labels), for tests and checks.
    pub fn download_idx(&self, src: &CudaBuf<u32>, dst: &mut [u32]) -> Result<()> {
        const OP: &str = "download_idx";
        check_len(OP, "dst", dst.len(), src.len)?;
        self.dtoh(OP, &src.data, dst)
    }

    /// Make this device's context current on the calling thread (raw cuBLAS and
    /// cuDNN calls need it; cudarc's own calls do it themselves).
    fn bind(&self, op: &'static str) -> Result<()> {
        self.ctx.bind_to_thread().map_err(cuda_err(op))
    }

    /// Let this GPU read `other`'s memory directly (NVLink or PCIe peer to
    /// peer), for the towers' copies. Returns whether it could; without it
    /// cuMemcpy3DPeer still works, staged through host memory by the driver.
    /// Two backends on one GPU need nothing.
    pub fn enable_peer_access(&self, other: &CudaBackend) -> Result<bool> {
        const OP: &str = "peer access";
        if self.info.ordinal == other.info.ordinal {
            return Ok(true);
        }
        let (mine, theirs) = (self.ctx.cu_device(), other.ctx.cu_device());
        let mut can = 0;
        // SAFETY: plain queries and a context setting on live contexts.
        unsafe {
            drv_sys::cuDeviceCanAccessPeer(&mut can, mine, theirs)
                .result()
                .map_err(cuda_err(OP))?;
            if can == 0 {
                return Ok(false);
            }
            self.bind(OP)?;
            match drv_sys::cuCtxEnablePeerAccess(other.ctx.cu_ctx(), 0) {
                drv_sys::cudaError_enum::CUDA_SUCCESS
                | drv_sys::cudaError_enum::CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED => {}
                e => return Err(cuda_err(OP)(e)),
            }
        }
        let pool = self.grant_pool_access(other);
        tracing::info!(
            "{} reads {}'s memory directly (peer access{})",
            self.info,
            other.info,
            match &pool {
                Ok(()) => ", its memory pool included".to_string(),
                Err(e) => format!("; not to its memory pool ({e}): copies from pool buffers are staged by the driver"),
            }
        );
        Ok(true)
    }

    /// cudarc allocates with cuMemAllocAsync from each device's default
    /// memory pool, and pool memory does not follow cuCtxEnablePeerAccess:
    /// the pool's owner grants each peer access separately (CUDA C++
    /// Programming Guide, "Stream Ordered Memory Allocator", device
    /// accessibility for multi-GPU support). Lets this GPU read and write
    /// `other`'s pool.
    fn grant_pool_access(&self, other: &CudaBackend) -> Result<()> {
        const OP: &str = "memory pool access";
        let ordinal = int(OP, "GPU ordinal", self.info.ordinal)?;
        let mut pool: drv_sys::CUmemoryPool = std::ptr::null_mut();
        let desc = drv_sys::CUmemAccessDesc {
            location: drv_sys::CUmemLocation {
                type_: drv_sys::CUmemLocationType::CU_MEM_LOCATION_TYPE_DEVICE,
                id: ordinal,
            },
            flags: drv_sys::CUmemAccess_flags::CU_MEM_ACCESS_FLAGS_PROT_READWRITE,
        };
        // SAFETY: a query into a local, then a setting on the pool it names,
        // with one descriptor that lives across the call.
        unsafe {
            drv_sys::cuDeviceGetDefaultMemPool(&mut pool, other.ctx.cu_device())
                .result()
                .map_err(cuda_err(OP))?;
            drv_sys::cuMemPoolSetAccess(pool, &desc, 1)
                .result()
                .map_err(cuda_err(OP))
        }
    }

    /// The pitched copy itself: `b`'s rows of `elem`-byte elements from
    /// `sp` (in `src_dev`'s context) to `dp` (in ours), on our stream.
    fn copy_pitched(
        &self,
        src_dev: &CudaBackend,
        sp: drv_sys::CUdeviceptr,
        dp: drv_sys::CUdeviceptr,
        b: RowBlock,
        elem: usize,
    ) -> Result<()> {
        let c = peer_copy((sp, src_dev.ctx.cu_ctx()), (dp, self.ctx.cu_ctx()), b, elem);
        // SAFETY: RowBlock::check proved every row lies inside both buffers,
        // whose device pointers stay alive for this call (the callers hold
        // their guards); the copy stream belongs to our context.
        unsafe { drv_sys::cuMemcpy3DPeerAsync(&c, self.copy.cu_stream()) }
            .result()
            .map_err(cuda_err("copy_rows"))
    }

    /// `copy_pitched` on the copy stream once the sender's queued work (the
    /// source) and ours (earlier readers of the destination) are done.
    fn copy_when_ready(
        &self,
        src_dev: &CudaBackend,
        sp: drv_sys::CUdeviceptr,
        dp: drv_sys::CUdeviceptr,
        b: RowBlock,
        elem: usize,
    ) -> Result<()> {
        const OP: &str = "copy_rows";
        let ready = src_dev.stream.record_event(None).map_err(cuda_err(OP))?;
        self.copy.wait(&ready).map_err(cuda_err(OP))?;
        let free = self.stream.record_event(None).map_err(cuda_err(OP))?;
        self.copy.wait(&free).map_err(cuda_err(OP))?;
        // cudarc's calls above bind whichever context they touch; the raw
        // copy is queued on our stream, so ours must be current.
        self.bind(OP)?;
        self.copy_pitched(src_dev, sp, dp, b, elem)
    }

    fn count_alloc(&self) {
        self.allocs.fetch_add(1, Ordering::Relaxed);
    }

    /// A zeroed device buffer of `len` (one element when len is 0).
    fn alloc_buf<T>(&self, op: &'static str, len: usize) -> Result<CudaBuf<T>>
    where
        T: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits,
    {
        let data = self
            .stream
            .alloc_zeros::<T>(len.max(1))
            .map_err(|e| Error::Cuda {
                op,
                detail: format!(
                    "allocating {len} elements on {}: {e:?}{ALLOC_LIMIT_NOTE}",
                    self.info
                ),
            })?;
        self.count_alloc();
        Ok(CudaBuf {
            data,
            len,
            shadow: None,
            half: None,
            master: true,
        })
    }

    /// Grow-only device scratch: `slot` holds at least `len` elements afterwards.
    pub(crate) fn ensure<T>(
        &self,
        op: &'static str,
        slot: &mut Option<CudaSlice<T>>,
        len: usize,
    ) -> Result<()>
    where
        T: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits,
    {
        if slot.as_ref().is_none_or(|s| s.len() < len) {
            *slot = None; // freed in stream order before the new allocation
            let s = self
                .stream
                .alloc_zeros::<T>(len.max(1))
                .map_err(|e| Error::Cuda {
                    op,
                    detail: format!(
                        "scratch of {len} elements on {}: {e:?}{ALLOC_LIMIT_NOTE}",
                        self.info
                    ),
                })?;
            self.count_alloc();
            *slot = Some(s);
        }
        Ok(())
    }

    /// Copy `len` elements that `fill` writes into the pinned staging buffer
    /// of `slot` to `dst`, on the copy stream; the compute stream waits for
    /// the copy (an event), the host does not.
    fn stage<T, F>(
        &self,
        op: &'static str,
        slot: &Mutex<Option<Staging<T>>>,
        len: usize,
        dst: &mut CudaSlice<T>,
        fill: F,
    ) -> Result<()>
    where
        T: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits,
        F: FnOnce(&mut [T]),
    {
        let mut staging = lock(op, slot)?;
        // Grow-only: one buffer, as large as the largest upload so far (the
        // batch input, or a weight tensor at start-up).
        if staging.as_ref().is_none_or(|s| s.host.len() < len) {
            *staging = None; // Staging's Drop waits for the copy still reading it
                             // SAFETY: the pinned memory is uninitialised; it is only read by
                             // the copy below, after `fill` has written the first `len` elements.
            let host = unsafe { self.ctx.alloc_pinned::<T>(len) }.map_err(|e| Error::Cuda {
                op,
                detail: format!("pinned staging of {len} elements: {e:?}"),
            })?;
            self.count_alloc();
            let copied = self.ctx.new_event(None).map_err(cuda_err(op))?;
            *staging = Some(Staging { host, copied });
        }
        let Some(st) = staging.as_mut() else {
            return Err(Error::Cuda {
                op,
                detail: "staging buffer missing".into(),
            });
        };
        // The previous copy out of the staging buffer must finish before the
        // host overwrites it.
        st.copied.synchronize().map_err(cuda_err(op))?;
        let host = st.host.as_mut_slice().map_err(cuda_err(op))?;
        fill(&mut host[..len]);
        {
            let (dptr, _write) = dst.device_ptr_mut(&self.copy);
            // SAFETY: `dptr` addresses dst's allocation of at least `len`
            // elements (the callers check the buffer's length); the source is
            // pinned memory that stays alive and unmodified until `copied`
            // completes (we synchronise on it before the next write, and
            // Staging's drop waits for it).
            unsafe { drv_result::memcpy_htod_async(dptr, &host[..len], self.copy.cu_stream()) }
                .map_err(cuda_err(op))?;
        }
        st.copied.record(&self.copy).map_err(cuda_err(op))?;
        self.stream.wait(&st.copied).map_err(cuda_err(op))?;
        Ok(())
    }

    /// Host -> device straight from the loader's pinned batch memory: one DMA
    /// on the copy stream, which the compute stream waits for. The host waits
    /// for the copy alone (not for queued compute) before returning, since the
    /// caller may reuse `src` afterwards.
    fn upload_pinned(&self, op: &'static str, src: &[f32], dst: &mut CudaSlice<f32>) -> Result<()> {
        {
            let (dptr, _write) = dst.device_ptr_mut(&self.copy);
            // SAFETY: dst holds at least src.len() floats (checked by the
            // caller); src is page-locked memory from `pinned::allocator`
            // (registered range), alive for this call, which waits below
            // until the copy has read it.
            unsafe { drv_result::memcpy_htod_async(dptr, src, self.copy.cu_stream()) }
                .map_err(cuda_err(op))?;
        }
        self.direct_copied
            .record(&self.copy)
            .map_err(cuda_err(op))?;
        self.stream
            .wait(&self.direct_copied)
            .map_err(cuda_err(op))?;
        self.direct_copied.synchronize().map_err(cuda_err(op))
    }

    /// A pinned f32 batch into a 16-bit activation: one DMA into f32 device
    /// scratch, then one narrowing kernel on the compute stream (the host
    /// would otherwise narrow 20M values per AlexNet batch itself).
    fn upload_pinned_narrow(
        &self,
        op: &'static str,
        src: &[f32],
        dst: &mut CudaBuf<f32>,
    ) -> Result<()> {
        let mut scratch = lock(op, &self.scratch)?;
        let mut slot = scratch.upload_f32.take();
        self.ensure(op, &mut slot, src.len())?;
        let Some(mut f32buf) = slot else {
            return Err(Error::Cuda {
                op,
                detail: "upload scratch missing".into(),
            });
        };
        let done = self.upload_pinned(op, src, &mut f32buf).and_then(|()| {
            let Some(half) = dst.half.as_mut() else {
                return Err(storage16::no_half(op, "dst"));
            };
            let len = long(op, src.len())?;
            let f = self.kernel16("f32_to_f16", "f32_to_bf16")?;
            let mut l = self.stream.launch_builder(f);
            l.arg(&f32buf).arg(&mut *half).arg(&len);
            // SAFETY: f32_to_H(const float* src, unsigned short* dst, long long
            // len): the scratch holds at least len floats (ensure), the
            // activation len 16-bit values (checked by upload).
            unsafe { l.launch(cfg(src.len())) }.map_err(cuda_err(op))?;
            Ok(())
        });
        scratch.upload_f32 = Some(f32buf);
        done
    }

    /// Device to host on the compute stream, then wait for it.
    fn dtoh<T: cudarc::driver::DeviceRepr>(
        &self,
        op: &'static str,
        src: &CudaSlice<T>,
        dst: &mut [T],
    ) -> Result<()> {
        if dst.is_empty() {
            return Ok(());
        }
        let view = src.slice(..dst.len());
        self.stream.memcpy_dtoh(&view, dst).map_err(cuda_err(op))?;
        // Pageable copies already return when done; synchronising makes it certain.
        self.stream.synchronize().map_err(cuda_err(op))
    }

    /// The labels as the host sees them: the upload's shadow copy, or a download.
    fn labels_host(&self, op: &'static str, labels: &CudaBuf<u32>) -> Result<Vec<u32>> {
        match &labels.shadow {
            Some(s) => Ok(s.clone()),
            None => {
                let mut v = vec![0u32; labels.len];
                self.dtoh(op, &labels.data, &mut v)?;
                Ok(v)
            }
        }
    }

    /// The checks the CPU reference makes (sizes, labels < classes), so that
    /// no kernel reads out of bounds.
    fn check_xent(
        &self,
        op: &'static str,
        n: usize,
        classes: usize,
        a: usize,
        labels: &CudaBuf<u32>,
        out: usize,
    ) -> Result<()> {
        let len = n.checked_mul(classes).ok_or_else(|| Error::Shape {
            op,
            detail: format!("{n} x {classes} logits overflow"),
        })?;
        check_len(op, "logits/probs", a, len)?;
        check_len(op, "labels", labels.len, n)?;
        check_len(op, "output", out, len)?;
        let host = self.labels_host(op, labels)?;
        if let Some((i, &l)) = host
            .iter()
            .enumerate()
            .find(|(_, &l)| l as usize >= classes)
        {
            return Err(Error::Shape {
                op,
                detail: format!("label {l} of row {i} is not < {classes} classes"),
            });
        }
        Ok(())
    }
}

fn validate_pool(op: &'static str, g: &PoolGeom) -> Result<()> {
    if g.size == 0 || g.stride == 0 || g.size > g.h || g.size > g.w {
        return Err(Error::Shape {
            op,
            detail: format!(
                "window {0}x{0} stride {1} does not fit {g:?}",
                g.size, g.stride
            ),
        });
    }
    // argmax is u32 within a plane; the kernel's sizes are int.
    int(op, "plane", g.h.saturating_mul(g.w))?;
    int(op, "planes", g.n.saturating_mul(g.c))?;
    g.n.checked_mul(g.c)
        .and_then(|p| p.checked_mul(g.h))
        .and_then(|p| p.checked_mul(g.w))
        .map(|_| ())
        .ok_or_else(|| Error::Shape {
            op,
            detail: format!("{g:?} overflows"),
        })
}

impl CudaBackend {
    /// Convolution forward, with the ReLU fused into the bias pass when `relu`.
    #[allow(clippy::too_many_arguments)]
    fn conv_forward(
        &self,
        op: &'static str,
        g: &ConvGeom,
        x: &CudaBuf<f32>,
        w: &CudaBuf<f32>,
        b: &CudaBuf<f32>,
        y: &mut CudaBuf<f32>,
        relu: bool,
    ) -> Result<()> {
        validate_conv(op, g)?;
        check_len(op, "x", x.len, g.x_len())?;
        check_len(op, "w", w.len, g.w_len())?;
        check_len(op, "b", b.len, g.c_out)?;
        check_len(op, "y", y.len, g.y_len())?;
        if g.n == 0 {
            return Ok(());
        }
        self.bind(op)?;
        if self.precision.is_half() {
            return self.conv_forward16(op, g, x, w, b, y, relu);
        }
        match (&self.dnn, self.uses_cudnn()) {
            (Some(d), true) if relu => {
                lock(op, d)?.forward(self.precision, g, &x.data, &w.data, None, &mut y.data)?;
                self.bias_relu(op, y, b, g.c_out, g.h_out() * g.w_out())
            }
            (Some(d), true) => {
                lock(op, d)?.forward(self.precision, g, &x.data, &w.data, Some(b), &mut y.data)
            }
            _ => conv_fallback::forward(self, &mut *lock(op, &self.fallback)?, g, x, w, b, y, relu),
        }
    }

    /// x *= s with unscale_check_f32; returns whether every result is finite
    /// (one int comes back to the host).
    fn scale_and_check(&self, op: &'static str, s: f32, x: &mut CudaBuf<f32>) -> Result<bool> {
        self.scale_and_check_all(op, s, &mut [x])
    }

    /// x *= s over every buffer, one kernel each, with one overflow flag
    /// read back once at the end (one wait per step, not one per tensor).
    fn scale_and_check_all(
        &self,
        op: &'static str,
        s: f32,
        xs: &mut [&mut CudaBuf<f32>],
    ) -> Result<bool> {
        // f32 buffers and parameters' masters (the gradients the network
        // unscales); a 16-bit activation has no kernel here.
        for x in xs.iter() {
            storage16::check_master(op, "buffer", x)?;
        }
        if xs.iter().all(|x| x.len == 0) {
            return Ok(true);
        }
        let mut scratch = lock(op, &self.scratch)?;
        if scratch.overflow.is_none() {
            let flag = self.stream.alloc_zeros::<i32>(1).map_err(cuda_err(op))?;
            self.count_alloc();
            scratch.overflow = Some(flag);
        }
        let Some(flag) = scratch.overflow.as_mut() else {
            return Err(Error::Cuda {
                op,
                detail: "overflow flag missing".into(),
            });
        };
        // The kernel only ever sets the flag, so clear it first.
        self.stream.memset_zeros(flag).map_err(cuda_err(op))?;
        let f = self.kernels.get("unscale_check_f32")?;
        for x in xs.iter_mut() {
            let n = x.len;
            if n == 0 {
                continue;
            }
            let len = long(op, n)?;
            let mut l = self.stream.launch_builder(f);
            l.arg(&mut x.data).arg(&s).arg(&len).arg(&mut *flag);
            // SAFETY: unscale_check_f32(float* g, float inv_scale, long long
            // len, int* overflow); x holds len floats, the flag one int.
            unsafe { l.launch(cfg(n)) }.map_err(cuda_err(op))?;
        }
        let mut host = [0i32];
        self.dtoh(op, flag, &mut host)?;
        Ok(host[0] == 0)
    }

    /// dlogits = (probs - onehot(labels)) / n * scale.
    #[allow(clippy::too_many_arguments)]
    fn xent_backward(
        &self,
        op: &'static str,
        n: usize,
        classes: usize,
        probs: &CudaBuf<f32>,
        labels: &CudaBuf<u32>,
        scale: f32,
        dlogits: &mut CudaBuf<f32>,
    ) -> Result<()> {
        self.check_xent(op, n, classes, probs.len, labels, dlogits.len)?;
        if n == 0 {
            return Ok(());
        }
        let (ni, ci) = (int(op, "n", n)?, int(op, "classes", classes)?);
        if self.precision.is_half() {
            return self.softmax_xent_backward16(
                probs,
                labels,
                dlogits,
                ni,
                ci,
                scale,
                n * classes,
            );
        }
        let f = self.kernels.get("softmax_xent_backward_f32")?;
        let mut l = self.stream.launch_builder(f);
        l.arg(&probs.data)
            .arg(&labels.data)
            .arg(&mut dlogits.data)
            .arg(&ni)
            .arg(&ci);
        // SAFETY: softmax_xent_backward_f32(const float* probs, const unsigned int* labels,
        // float* dlogits, int n, int classes); one thread per element of n*classes.
        unsafe { l.launch(cfg(n * classes)) }.map_err(cuda_err(op))?;
        if scale != 1.0 {
            self.scale_and_check(op, scale, dlogits)?;
        }
        Ok(())
    }

    /// y = max(y + b[channel], 0) over y as [n][c][hw], one pass.
    fn bias_relu(
        &self,
        op: &'static str,
        y: &mut CudaBuf<f32>,
        b: &CudaBuf<f32>,
        c: usize,
        hw: usize,
    ) -> Result<()> {
        let (ci, hwi, len, relu) = (int(op, "c", c)?, int(op, "hw", hw)?, long(op, y.len)?, 1i32);
        let f = self.kernels.get("bias_relu_forward_f32")?;
        let mut l = self.stream.launch_builder(f);
        l.arg(&mut y.data)
            .arg(&b.data)
            .arg(&ci)
            .arg(&hwi)
            .arg(&len)
            .arg(&relu);
        // SAFETY: bias_relu_forward_f32(float* y, const float* b, int c, int hw,
        // long long len, int relu); y holds len = n*c*hw floats and b holds c
        // (both checked by the caller).
        unsafe { l.launch(cfg(y.len)) }.map_err(cuda_err(op))?;
        Ok(())
    }
}

impl Backend for CudaBackend {
    type Buf = CudaBuf<f32>;
    type IdxBuf = CudaBuf<u32>;

    fn name(&self) -> String {
        format!("{} {}", self.info, self.precision)
    }

    /// fp16's smallest normal is 6.1e-5: small gradients would flush to zero
    /// without a loss scale. bf16 has f32's exponent range and needs none.
    fn needs_loss_scaling(&self) -> bool {
        self.precision.needs_loss_scaling()
    }

    fn precision(&self) -> &'static str {
        self.precision.as_str()
    }

    // -- memory --------------------------------------------------------------------

    /// cuMemGetInfo's free bytes: what other processes and this one hold
    /// already is not free.
    fn device_memory(&self) -> Option<crate::backend::DeviceMemory> {
        let (free, _) = self.ctx.mem_get_info().ok()?;
        Some(crate::backend::DeviceMemory {
            ordinal: self.info.ordinal,
            name: format!("GPU {} ({})", self.info.ordinal, self.info.name),
            free: free as u64,
        })
    }

    fn activation_bytes(&self) -> u64 {
        if self.precision.is_half() {
            2
        } else {
            4
        }
    }

    /// An activation: f32, or 16-bit in fp16 / bf16 mode.
    fn alloc(&self, len: usize) -> Result<CudaBuf<f32>> {
        if self.precision.is_half() {
            self.alloc_half("alloc", len)
        } else {
            self.alloc_buf("alloc", len)
        }
    }

    /// A parameter or gradient: always an f32 master; in 16-bit mode also a
    /// 16-bit shadow (the copy cuDNN and cuBLAS read).
    fn alloc_param(&self, len: usize) -> Result<CudaBuf<f32>> {
        let mut b = self.alloc_buf("alloc_param", len)?;
        if self.precision.is_half() {
            b.half = Some(self.alloc_u16("alloc_param", len)?);
        }
        Ok(b)
    }

    /// f32 in every mode, without a parameter's 16-bit shadow.
    fn alloc_f32(&self, len: usize) -> Result<CudaBuf<f32>> {
        self.alloc_buf("alloc_f32", len)
    }

    /// Device allocations made so far: buffers, and also workspaces, scratch
    /// and pinned staging. After the first step of a batch shape it stays put.
    fn allocations(&self) -> u64 {
        self.allocs.load(Ordering::Relaxed)
    }

    /// Pinned memory for the loader's f32 batches: uploads from it are one
    /// DMA (and, in 16-bit mode, one narrowing kernel on the GPU).
    fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(cuda_err("synchronize"))
    }

    /// A timing event on the compute stream (events are made with timing
    /// off by default; these keep it).
    fn mark(&self) -> Result<bool> {
        const OP: &str = "mark";
        self.bind(OP)?;
        let e = self
            .stream
            .record_event(Some(drv_sys::CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(cuda_err(OP))?;
        lock(OP, &self.marks)?.push(e);
        Ok(true)
    }

    fn marked_seconds(&self) -> Result<Vec<f64>> {
        const OP: &str = "marked_seconds";
        let marks = std::mem::take(&mut *lock(OP, &self.marks)?);
        marks
            .windows(2)
            .map(|w| Ok(f64::from(w[0].elapsed_ms(&w[1]).map_err(cuda_err(OP))?) / 1e3))
            .collect()
    }

    fn host_alloc(&self) -> Option<crate::data::HostAlloc> {
        Some(pinned::allocator(
            Arc::clone(&self.ctx),
            Arc::clone(&self.pinned),
            Arc::clone(&self.allocs),
        ))
    }

    fn alloc_idx(&self, len: usize) -> Result<CudaBuf<u32>> {
        self.alloc_buf("alloc_idx", len)
    }

    /// Host -> device through the pinned staging buffer on the copy stream;
    /// the compute stream waits for the copy (an event), the host does not.
    /// From the loader's pinned memory the copy is direct. Otherwise a 16-bit
    /// activation is converted on the host (the `half` crate, round
    /// to nearest even as the kernels do); a parameter in 16-bit mode gets its
    /// f32 master and then its 16-bit shadow refreshed on the device.
    fn upload(&self, src: &[f32], dst: &mut CudaBuf<f32>) -> Result<()> {
        const OP: &str = "upload";
        check_len(OP, "src", src.len(), dst.len)?;
        if src.is_empty() {
            return Ok(());
        }
        if dst.is_half() && self.pinned.contains(src) {
            return self.upload_pinned_narrow(OP, src, dst);
        }
        if dst.is_half() {
            let Some(half) = dst.half.as_mut() else {
                return Err(storage16::no_half(OP, "dst"));
            };
            let prec = self.precision;
            return self.stage(OP, &self.staging16, src.len(), half, |host| {
                storage16::narrow_host(prec, src, host)
            });
        }
        if dst.half.is_none() && self.pinned.contains(src) {
            return self.upload_pinned(OP, src, &mut dst.data);
        }
        self.stage(OP, &self.staging, src.len(), &mut dst.data, |host| {
            host.copy_from_slice(src)
        })?;
        if dst.half.is_some() {
            self.refresh_shadow(OP, dst)?;
        }
        Ok(())
    }

    fn upload_idx(&self, src: &[u32], dst: &mut CudaBuf<u32>) -> Result<()> {
        const OP: &str = "upload_idx";
        check_len(OP, "src", src.len(), dst.len)?;
        if !src.is_empty() {
            let mut view = dst.data.slice_mut(..src.len());
            self.stream
                .memcpy_htod(src, &mut view)
                .map_err(cuda_err(OP))?;
        }
        dst.shadow = Some(src.to_vec());
        Ok(())
    }

    /// A 16-bit activation comes back as 16 bits and is widened on the host
    /// (exact: every fp16 / bf16 value is an f32); anything else is f32.
    fn download(&self, src: &CudaBuf<f32>, dst: &mut [f32]) -> Result<()> {
        const OP: &str = "download";
        check_len(OP, "dst", dst.len(), src.len)?;
        if !src.is_half() {
            return self.dtoh(OP, &src.data, dst);
        }
        let Some(half) = src.half.as_ref() else {
            return Err(storage16::no_half(OP, "src"));
        };
        let mut scratch = lock(OP, &self.scratch)?;
        let host = &mut scratch.half_host;
        host.resize(dst.len(), 0);
        self.dtoh(OP, half, host)?;
        storage16::widen_host(self.precision, host, dst);
        Ok(())
    }

    fn buf_len(&self, buf: &CudaBuf<f32>) -> usize {
        buf.len
    }

    /// One pitched copy (cuMemcpy3DPeerAsync, depth 1) on this device's copy
    /// stream, from `src_dev`'s buffer: the same context, another context on
    /// the same GPU (`--gpus 0,0`), or another GPU (through peer access when
    /// `enable_peer_access` got it, else staged by the driver). The copy
    /// waits for the sender's queued work (the source) and this device's
    /// (earlier readers of the destination); this device's later kernels
    /// wait for it through cudarc's record on `dst`, so compute goes on
    /// meanwhile. The sender waits for it at its next `fence` (an event
    /// recorded on another context's stream cannot be attached to `src`).
    fn copy_rows(
        &self,
        src_dev: &Self,
        src: &CudaBuf<f32>,
        dst: &mut CudaBuf<f32>,
        b: RowBlock,
    ) -> Result<()> {
        const OP: &str = "copy_rows";
        b.check(OP, src.len, dst.len)?;
        if src.is_half() != dst.is_half() {
            return Err(Error::Shape {
                op: OP,
                detail: "source and destination hold different precisions".into(),
            });
        }
        if b.is_empty() {
            return Ok(());
        }
        // The pointers first: taking the source on its own stream makes
        // that stream wait for the source's last writer (a copy, say), and
        // the ready event recorded after it then covers that writer too.
        let half = dst.is_half();
        match (src.half.as_ref(), dst.half.as_mut()) {
            (Some(s16), Some(d16)) if half => {
                let (sp, _rs) = s16.device_ptr(&src_dev.stream);
                let (dp, _rd) = d16.device_ptr_mut(&self.copy);
                self.copy_when_ready(src_dev, sp, dp, b, 2)
            }
            _ => {
                let (sp, _rs) = src.data.device_ptr(&src_dev.stream);
                let (dp, _rd) = dst.data.device_ptr_mut(&self.copy);
                self.copy_when_ready(src_dev, sp, dp, b, 4)
            }
        }
    }
    fn fence(&self, other: &Self) -> Result<()> {
        const OP: &str = "fence";
        self.bind(OP)?;
        let copied = other.copy.record_event(None).map_err(cuda_err(OP))?;
        self.stream.wait(&copied).map_err(cuda_err(OP))
    }
    fn add_assign(&self, dst: &mut CudaBuf<f32>, src: &CudaBuf<f32>) -> Result<()> {
        const OP: &str = "add_assign";
        check_len(OP, "src", src.len, dst.len)?;
        let n = dst.len;
        if n == 0 {
            return Ok(());
        }
        let len = long(OP, n)?;
        if dst.is_half() {
            return self.add16(dst, src, len);
        }
        storage16::check_master(OP, "src", src)?;
        let f = self.kernels.get("add_f32")?;
        let mut l = self.stream.launch_builder(f);
        l.arg(&mut dst.data).arg(&src.data).arg(&len);
        // SAFETY: add_f32(float* dst, const float* src, long long len); both hold len.
        unsafe { l.launch(cfg(n)) }.map_err(cuda_err(OP))?;
        Ok(())
    }

    // -- convolution ----------------------------------------------------------------

    fn conv2d_forward(
        &self,
        g: &ConvGeom,
        x: &CudaBuf<f32>,
        w: &CudaBuf<f32>,
        b: &CudaBuf<f32>,
        y: &mut CudaBuf<f32>,
    ) -> Result<()> {
        self.conv_forward("conv2d_forward", g, x, w, b, y, false)
    }

    /// One pass for bias and ReLU: cuDNN convolves without the bias, then
    /// bias_relu_forward_f32 adds it and clamps (instead of cuDNN's bias add
    /// and a separate ReLU, two passes over y).
    fn conv2d_bias_relu_forward(
        &self,
        g: &ConvGeom,
        x: &CudaBuf<f32>,
        w: &CudaBuf<f32>,
        b: &CudaBuf<f32>,
        y: &mut CudaBuf<f32>,
    ) -> Result<()> {
        self.conv_forward("conv2d_bias_relu_forward", g, x, w, b, y, true)
    }

    fn conv2d_backward_data(
        &self,
        g: &ConvGeom,
        w: &CudaBuf<f32>,
        dy: &CudaBuf<f32>,
        dx: &mut CudaBuf<f32>,
    ) -> Result<()> {
        const OP: &str = "conv2d_backward_data";
        validate_conv(OP, g)?;
        check_len(OP, "w", w.len, g.w_len())?;
        check_len(OP, "dy", dy.len, g.y_len())?;
        check_len(OP, "dx", dx.len, g.x_len())?;
        if g.n == 0 {
            return Ok(());
        }
        self.bind(OP)?;
        if self.precision.is_half() {
            return self.conv_backward_data16(OP, g, w, dy, dx);
        }
        match (&self.dnn, self.uses_cudnn()) {
            (Some(d), true) => {
                lock(OP, d)?.backward_data(self.precision, g, &w.data, &dy.data, &mut dx.data)
            }
            _ => conv_fallback::backward_data(self, &mut *lock(OP, &self.fallback)?, g, w, dy, dx),
        }
    }

    fn conv2d_backward_filter(
        &self,
        g: &ConvGeom,
        x: &CudaBuf<f32>,
        dy: &CudaBuf<f32>,
        dw: &mut CudaBuf<f32>,
    ) -> Result<()> {
        const OP: &str = "conv2d_backward_filter";
        validate_conv(OP, g)?;
        check_len(OP, "x", x.len, g.x_len())?;
        check_len(OP, "dy", dy.len, g.y_len())?;
        check_len(OP, "dw", dw.len, g.w_len())?;
        self.bind(OP)?;
        // The gradient is f32 (a parameter's master in 16-bit mode).
        storage16::check_master(OP, "dw", dw)?;
        if g.n == 0 {
            // An empty batch has zero gradient (the op overwrites).
            return self.stream.memset_zeros(&mut dw.data).map_err(cuda_err(OP));
        }
        if self.precision.is_half() {
            return self.conv_backward_filter16(OP, g, x, dy, dw);
        }
        match (&self.dnn, self.uses_cudnn()) {
            (Some(d), true) => {
                lock(OP, d)?.backward_filter(self.precision, g, &x.data, &dy.data, &mut dw.data)
            }
            _ => {
                conv_fallback::backward_filter(self, &mut *lock(OP, &self.fallback)?, g, x, dy, dw)
            }
        }
    }

    fn conv2d_backward_bias(
        &self,
        g: &ConvGeom,
        dy: &CudaBuf<f32>,
        db: &mut CudaBuf<f32>,
    ) -> Result<()> {
        const OP: &str = "conv2d_backward_bias";
        validate_conv(OP, g)?;
        check_len(OP, "dy", dy.len, g.y_len())?;
        check_len(OP, "db", db.len, g.c_out)?;
        self.bind(OP)?;
        // Our kernels in every precision (plane sums in double, then one
        // reduce): on an H200, cuDNN's fp32 bias gradient took 1.45 ms for
        // conv1 at batch 128, the kernels 0.25 ms on its bf16 gradient.
        // The kernels handle n = 0 too (every sum is empty: db = 0).
        conv_fallback::backward_bias(
            self,
            &mut *lock(OP, &self.fallback)?,
            g.n,
            g.c_out,
            g.h_out() * g.w_out(),
            dy,
            db,
        )
    }

    // -- element-wise -------------------------------------------------------------

    fn relu_forward(&self, x: &mut CudaBuf<f32>) -> Result<()> {
        const OP: &str = "relu_forward";
        let n = x.len;
        if n == 0 {
            return Ok(());
        }
        let len = long(OP, n)?;
        if self.precision.is_half() {
            return self.relu_forward16(x, len);
        }
        let f = self.kernels.get("relu_forward_f32")?;
        let mut l = self.stream.launch_builder(f);
        l.arg(&mut x.data).arg(&len);
        // SAFETY: relu_forward_f32(float* x, long long len); x holds len floats.
        unsafe { l.launch(cfg(n)) }.map_err(cuda_err(OP))?;
        Ok(())
    }

    fn relu_backward(&self, y: &CudaBuf<f32>, dy: &mut CudaBuf<f32>) -> Result<()> {
        const OP: &str = "relu_backward";
        check_len(OP, "dy", dy.len, y.len)?;
        let n = y.len;
        if n == 0 {
            return Ok(());
        }
        let len = long(OP, n)?;
        if self.precision.is_half() {
            return self.relu_backward16(y, dy, len);
        }
        let f = self.kernels.get("relu_backward_f32")?;
        let mut l = self.stream.launch_builder(f);
        l.arg(&y.data).arg(&mut dy.data).arg(&len);
        // SAFETY: relu_backward_f32(const float* y, float* dy, long long len); both hold len.
        unsafe { l.launch(cfg(n)) }.map_err(cuda_err(OP))?;
        Ok(())
    }

    // -- LRN ------------------------------------------------------------------------

    fn lrn_forward(
        &self,
        p: &LrnParams,
        s: &Nchw,
        x: &CudaBuf<f32>,
        y: &mut CudaBuf<f32>,
        scale: &mut CudaBuf<f32>,
    ) -> Result<()> {
        const OP: &str = "lrn_forward";
        let (n, c, hw, size) = lrn_dims(OP, p, s)?;
        check_len(OP, "x", x.len, s.len())?;
        check_len(OP, "y", y.len, s.len())?;
        check_len(OP, "scale", scale.len, s.len())?;
        if s.is_empty() {
            return Ok(());
        }
        if self.precision.is_half() {
            let dims = (n, c, hw, size);
            return self.lrn_forward16(p, dims, x, y, scale, s.n * s.h * s.w);
        }
        let f = self.kernels.get("lrn_forward_f32")?;
        let mut l = self.stream.launch_builder(f);
        l.arg(&x.data)
            .arg(&mut y.data)
            .arg(&mut scale.data)
            .arg(&n)
            .arg(&c)
            .arg(&hw)
            .arg(&size)
            .arg(&p.alpha)
            .arg(&p.beta)
            .arg(&p.k);
        // SAFETY: lrn_forward_f32(const float* x, float* y, float* scale, int n, int c,
        // int hw, int size, float alpha, float beta, float k); x, y, scale hold n*c*hw.
        unsafe { l.launch(cfg(s.n * s.h * s.w)) }.map_err(cuda_err(OP))?;
        Ok(())
    }

    fn lrn_backward(
        &self,
        p: &LrnParams,
        s: &Nchw,
        x: &CudaBuf<f32>,
        y: &CudaBuf<f32>,
        scale: &CudaBuf<f32>,
        dy: &CudaBuf<f32>,
        dx: &mut CudaBuf<f32>,
    ) -> Result<()> {
        const OP: &str = "lrn_backward";
        let (n, c, hw, size) = lrn_dims(OP, p, s)?;
        for (what, b) in [("x", x), ("y", y), ("scale", scale), ("dy", dy)] {
            check_len(OP, what, b.len, s.len())?;
        }
        check_len(OP, "dx", dx.len, s.len())?;
        if s.is_empty() {
            return Ok(());
        }
        if self.precision.is_half() {
            let dims = (n, c, hw, size);
            return self.lrn_backward16(p, dims, x, y, scale, dy, dx, s.n * s.h * s.w);
        }
        let f = self.kernels.get("lrn_backward_f32")?;
        let mut l = self.stream.launch_builder(f);
        l.arg(&x.data)
            .arg(&y.data)
            .arg(&scale.data)
            .arg(&dy.data)
            .arg(&mut dx.data)
            .arg(&n)
            .arg(&c)
            .arg(&hw)
            .arg(&size)
            .arg(&p.alpha)
            .arg(&p.beta);
        // SAFETY: lrn_backward_f32(const float* x, const float* y, const float* scale,
        // const float* dy, float* dx, int n, int c, int hw, int size, float alpha,
        // float beta); all five buffers hold n*c*hw.
        unsafe { l.launch(cfg(s.n * s.h * s.w)) }.map_err(cuda_err(OP))?;
        Ok(())
    }

    // -- max pooling ------------------------------------------------------------------

    fn max_pool_forward(
        &self,
        g: &PoolGeom,
        x: &CudaBuf<f32>,
        y: &mut CudaBuf<f32>,
        argmax: &mut CudaBuf<u32>,
    ) -> Result<()> {
        const OP: &str = "max_pool_forward";
        validate_pool(OP, g)?;
        check_len(OP, "x", x.len, g.x_len())?;
        check_len(OP, "y", y.len, g.y_len())?;
        check_len(OP, "argmax", argmax.len, g.y_len())?;
        argmax.shadow = None;
        if g.y_len() == 0 {
            return Ok(());
        }
        let a = pool_args(OP, g)?;
        if self.precision.is_half() {
            return self.max_pool_forward16(&a, x, y, argmax, g.y_len());
        }
        let f = self.kernels.get("max_pool_forward_f32")?;
        let mut l = self.stream.launch_builder(f);
        l.arg(&x.data).arg(&mut y.data).arg(&mut argmax.data);
        for v in &a {
            l.arg(v);
        }
        // SAFETY: max_pool_forward_f32(const float* x, float* y, unsigned int* argmax,
        // int planes, int h, int w, int ho, int wo, int size, int stride); x holds
        // planes*h*w, y and argmax planes*ho*wo (checked above).
        unsafe { l.launch(cfg(g.y_len())) }.map_err(cuda_err(OP))?;
        Ok(())
    }

    fn max_pool_backward(
        &self,
        g: &PoolGeom,
        dy: &CudaBuf<f32>,
        argmax: &CudaBuf<u32>,
        dx: &mut CudaBuf<f32>,
    ) -> Result<()> {
        const OP: &str = "max_pool_backward";
        validate_pool(OP, g)?;
        check_len(OP, "dy", dy.len, g.y_len())?;
        check_len(OP, "argmax", argmax.len, g.y_len())?;
        check_len(OP, "dx", dx.len, g.x_len())?;
        if g.x_len() == 0 {
            return Ok(());
        }
        let a = pool_args(OP, g)?;
        if self.precision.is_half() {
            return self.max_pool_backward16(&a, dy, argmax, dx, g.x_len());
        }
        let f = self.kernels.get("max_pool_backward_f32")?;
        let mut l = self.stream.launch_builder(f);
        l.arg(&dy.data).arg(&argmax.data).arg(&mut dx.data);
        for v in &a {
            l.arg(v);
        }
        // SAFETY: max_pool_backward_f32(const float* dy, const unsigned int* argmax,
        // float* dx, int planes, int h, int w, int ho, int wo, int size, int stride);
        // one thread per input element gathers from the windows that hold it.
        unsafe { l.launch(cfg(g.x_len())) }.map_err(cuda_err(OP))?;
        Ok(())
    }

    // -- dropout ----------------------------------------------------------------------

    fn dropout_forward(
        &self,
        p: f32,
        seed: u64,
        x: &mut CudaBuf<f32>,
        mask: &mut CudaBuf<f32>,
    ) -> Result<()> {
        const OP: &str = "dropout_forward";
        if !(0.0..1.0).contains(&p) {
            return Err(Error::Shape {
                op: OP,
                detail: format!("drop probability {p} is not in [0, 1)"),
            });
        }
        check_len(OP, "mask", mask.len, x.len)?;
        let n = x.len;
        if n == 0 {
            return Ok(());
        }
        let len = long(OP, n)?;
        if self.precision.is_half() {
            return self.dropout_forward16(p, seed, x, mask, len);
        }
        let f = self.kernels.get("dropout_forward_f32")?;
        let mut l = self.stream.launch_builder(f);
        l.arg(&mut x.data)
            .arg(&mut mask.data)
            .arg(&seed)
            .arg(&p)
            .arg(&len);
        // SAFETY: dropout_forward_f32(float* x, float* mask, unsigned long long seed,
        // float p, long long len); x and mask hold len floats.
        unsafe { l.launch(cfg(n)) }.map_err(cuda_err(OP))?;
        Ok(())
    }

    fn dropout_backward(&self, mask: &CudaBuf<f32>, dy: &mut CudaBuf<f32>) -> Result<()> {
        const OP: &str = "dropout_backward";
        check_len(OP, "dy", dy.len, mask.len)?;
        let n = dy.len;
        if n == 0 {
            return Ok(());
        }
        let len = long(OP, n)?;
        if self.precision.is_half() {
            return self.dropout_backward16(mask, dy, len);
        }
        let f = self.kernels.get("dropout_backward_f32")?;
        let mut l = self.stream.launch_builder(f);
        l.arg(&mask.data).arg(&mut dy.data).arg(&len);
        // SAFETY: dropout_backward_f32(const float* mask, float* dy, long long len).
        unsafe { l.launch(cfg(n)) }.map_err(cuda_err(OP))?;
        Ok(())
    }

    // -- fully connected ----------------------------------------------------------------

    fn linear_forward(
        &self,
        g: &LinearGeom,
        x: &CudaBuf<f32>,
        w: &CudaBuf<f32>,
        b: &CudaBuf<f32>,
        y: &mut CudaBuf<f32>,
    ) -> Result<()> {
        linear::forward(self, g, x, w, b, y, false)
    }

    fn linear_bias_relu_forward(
        &self,
        g: &LinearGeom,
        x: &CudaBuf<f32>,
        w: &CudaBuf<f32>,
        b: &CudaBuf<f32>,
        y: &mut CudaBuf<f32>,
    ) -> Result<()> {
        linear::forward(self, g, x, w, b, y, true)
    }

    fn linear_backward_data(
        &self,
        g: &LinearGeom,
        w: &CudaBuf<f32>,
        dy: &CudaBuf<f32>,
        dx: &mut CudaBuf<f32>,
    ) -> Result<()> {
        linear::backward_data(self, g, w, dy, dx)
    }

    fn linear_backward_weight(
        &self,
        g: &LinearGeom,
        x: &CudaBuf<f32>,
        dy: &CudaBuf<f32>,
        dw: &mut CudaBuf<f32>,
    ) -> Result<()> {
        linear::backward_weight(self, g, x, dy, dw)
    }

    fn linear_backward_bias(
        &self,
        g: &LinearGeom,
        dy: &CudaBuf<f32>,
        db: &mut CudaBuf<f32>,
    ) -> Result<()> {
        linear::backward_bias(self, g, dy, db)
    }

    // -- loss ---------------------------------------------------------------------------

    /// The kernel writes probs and each row's loss, a second one averages
    /// them on the device (in double, in row order, as the CPU reference
    /// averages), and that one float comes back.
    fn softmax_xent_forward(
        &self,
        n: usize,
        classes: usize,
        logits: &CudaBuf<f32>,
        labels: &CudaBuf<u32>,
        probs: &mut CudaBuf<f32>,
    ) -> Result<f32> {
        self.xent_forward_host(n, classes, logits, labels, probs)
    }

    /// As `softmax_xent_forward`, the mean left in loss[0] (no wait).
    fn softmax_xent_forward_into(
        &self,
        n: usize,
        classes: usize,
        logits: &CudaBuf<f32>,
        labels: &CudaBuf<u32>,
        probs: &mut CudaBuf<f32>,
        loss: &mut CudaBuf<f32>,
    ) -> Result<()> {
        self.xent_forward_device(n, classes, logits, labels, probs, loss)
    }

    fn record_step_metrics(
        &self,
        n: usize,
        classes: usize,
        probs: &CudaBuf<f32>,
        labels: &CudaBuf<u32>,
        loss: &CudaBuf<f32>,
        slot: usize,
        metrics: &mut CudaBuf<f32>,
    ) -> Result<()> {
        self.step_metrics(n, classes, probs, labels, loss, slot, metrics)
    }

    fn softmax_xent_backward(
        &self,
        n: usize,
        classes: usize,
        probs: &CudaBuf<f32>,
        labels: &CudaBuf<u32>,
        dlogits: &mut CudaBuf<f32>,
    ) -> Result<()> {
        self.xent_backward(
            "softmax_xent_backward",
            n,
            classes,
            probs,
            labels,
            1.0,
            dlogits,
        )
    }

    /// In 16-bit mode one pass (softmax_xent_backward_H's scale argument), so
    /// the scale lifts small gradients before they are rounded; in fp32 the
    /// plain backward, then x *= scale.
    fn softmax_xent_backward_scaled(
        &self,
        n: usize,
        classes: usize,
        probs: &CudaBuf<f32>,
        labels: &CudaBuf<u32>,
        scale: f32,
        dlogits: &mut CudaBuf<f32>,
    ) -> Result<()> {
        self.xent_backward(
            "softmax_xent_backward_scaled",
            n,
            classes,
            probs,
            labels,
            scale,
            dlogits,
        )
    }

    // -- optimiser --------------------------------------------------------------------------

    fn scale(&self, s: f32, x: &mut CudaBuf<f32>) -> Result<()> {
        // unscale_check_f32 multiplies; its overflow flag is not read here.
        self.scale_and_check("scale", s, x).map(|_| ())
    }

    fn unscale_check(&self, inv_scale: f32, g: &mut CudaBuf<f32>) -> Result<bool> {
        self.scale_and_check("unscale_check", inv_scale, g)
    }

    fn unscale_check_all(&self, inv_scale: f32, gs: &mut [&mut CudaBuf<f32>]) -> Result<bool> {
        self.scale_and_check_all("unscale_check_all", inv_scale, gs)
    }

    fn sgd_update(
        &self,
        p: &SgdParams,
        w: &mut CudaBuf<f32>,
        g: &CudaBuf<f32>,
        v: &mut CudaBuf<f32>,
    ) -> Result<()> {
        const OP: &str = "sgd_update";
        check_len(OP, "g", g.len, w.len)?;
        check_len(OP, "v", v.len, w.len)?;
        let n = w.len;
        if n == 0 {
            return Ok(());
        }
        let len = long(OP, n)?;
        if w.half.is_some() {
            // 16-bit mode: f32 masters, and the weight's shadow refreshed.
            return self.sgd_update16(p, w, g, v, len);
        }
        let f = self.kernels.get("sgd_update_f32")?;
        let mut l = self.stream.launch_builder(f);
        l.arg(&mut w.data)
            .arg(&g.data)
            .arg(&mut v.data)
            .arg(&p.lr)
            .arg(&p.momentum)
            .arg(&p.weight_decay)
            .arg(&len);
        // SAFETY: sgd_update_f32(float* w, const float* g, float* v, float lr,
        // float momentum, float weight_decay, long long len); all hold len floats.
        unsafe { l.launch(cfg(n)) }.map_err(cuda_err(OP))?;
        Ok(())
    }
}

/// LRN's kernel arguments (n, c, hw, size) as ints, after the CPU's checks.
fn lrn_dims(op: &'static str, p: &LrnParams, s: &Nchw) -> Result<(i32, i32, i32, i32)> {
    if p.size.is_multiple_of(2) {
        return Err(Error::Shape {
            op,
            detail: format!("window size {} must be odd (the paper: 5)", p.size),
        });
    }
    let hw = s.h.checked_mul(s.w).ok_or_else(|| Error::Shape {
        op,
        detail: format!("{s:?} overflows"),
    })?;
    s.n.checked_mul(s.c)
        .and_then(|v| v.checked_mul(hw))
        .ok_or_else(|| Error::Shape {
            op,
            detail: format!("{s:?} overflows"),
        })?;
    Ok((
        int(op, "n", s.n)?,
        int(op, "c", s.c)?,
        int(op, "h*w", hw)?,
        int(op, "size", p.size)?,
    ))
}

/// Pooling's int arguments in kernel order: planes, h, w, ho, wo, size, stride.
fn pool_args(op: &'static str, g: &PoolGeom) -> Result<[i32; 7]> {
    Ok([
        int(op, "planes", g.n * g.c)?,
        int(op, "h", g.h)?,
        int(op, "w", g.w)?,
        int(op, "h_out", g.h_out())?,
        int(op, "w_out", g.w_out())?,
        int(op, "size", g.size)?,
        int(op, "stride", g.stride)?,
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The peer copy's descriptor moves exactly the block: byte offsets,
    /// pitches (a pitch of 0 means rows packed at the width) and extent,
    /// worked out by hand for 2-byte elements. Building it needs no GPU.
    #[test]
    fn the_peer_copy_descriptor_is_the_row_block_in_bytes() {
        let b = RowBlock {
            rows: 3,
            width: 5,
            src_off: 7,
            src_pitch: 11,
            dst_off: 2,
            dst_pitch: 0,
        };
        let (src_ctx, dst_ctx) = (8 as drv_sys::CUcontext, 16 as drv_sys::CUcontext);
        let c = peer_copy((1000, src_ctx), (5000, dst_ctx), b, 2);
        let device = drv_sys::CUmemorytype::CU_MEMORYTYPE_DEVICE;
        assert_eq!((c.srcMemoryType, c.dstMemoryType), (device, device));
        assert_eq!((c.srcDevice, c.srcPitch, c.srcHeight), (1014, 22, 3));
        assert_eq!((c.dstDevice, c.dstPitch, c.dstHeight), (5004, 10, 3));
        assert_eq!((c.WidthInBytes, c.Height, c.Depth), (10, 3, 1));
        assert_eq!((c.srcContext, c.dstContext), (src_ctx, dst_ctx));
        assert!(c.srcHost.is_null() && c.dstHost.is_null());
        assert!(c.srcArray.is_null() && c.dstArray.is_null());
        assert_eq!((c.srcXInBytes, c.srcY, c.dstXInBytes, c.dstY), (0, 0, 0, 0));
    }
}
