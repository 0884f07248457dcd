//! Whether a run fits in the host's memory, and in its GPUs', checked
//! before anything large is touched. On the CPU the network's buffers grow
//! with the batch (the `alexnet` config holds about 13 MB per image); the
//! loader holds a few batches per worker, in pinned memory on a GPU. Past
//! the memory the system has free the kernel kills the process mid-step,
//! with no message; past a GPU's, the driver's out-of-memory status comes
//! partway through building the network. The check refuses first and names
//! the batch or worker count that fits.
use sysinfo::System;
use tracing::{debug, warn};

use crate::backend::cpu::conv::FILTER_CHUNKS;
use crate::backend::{Backend, DeviceMemory};
use crate::data::LoaderConfig;
use crate::error::{Error, Result};
use crate::fsutil::size;
use crate::model::net::{buffer_elements, index_elements, input_buffers};
use crate::model::topology::{Op, Topology};
use crate::model::towers::extra_elements;

/// The memory a run may still take, and the limit that sets it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Room {
    pub bytes: u64,
    /// How the error words it: "free", "free under the container's memory limit", ...
    pub limit: String,
}

impl Room {
    /// This process's share when `processes` of one run share the machine
    /// (LOCAL_WORLD_SIZE): each plans within its part, not the whole.
    pub fn shared(self, processes: usize) -> Room {
        if processes <= 1 {
            return self;
        }
        Room {
            bytes: self.bytes / processes as u64,
            limit: format!(
                "this process's share of what is {} (1 of {processes} processes on this machine, LOCAL_WORLD_SIZE)",
                self.limit
            ),
        }
    }
}

/// Address space a thread the run starts takes beyond the buffers the
/// plan counts, under `ulimit -v`: its stack (Rust's default, 2 MiB).
const STACK: u64 = 2 << 20;

/// Under `ulimit -v`, what an allocation past the limit meets is an abort,
/// not a slow page: the room is kept a tenth larger than the plan, and 64
/// MiB more, for what it leaves out (a GEMM's packed block that all threads
/// share, allocator rounding). On two threads, before the plan counted
/// their scratch ([`cpu_scratch`]), all of that came to 25 MB for `cifar`
/// and 60 MB for `alexnet`, measured against the process's peak size.
const ADDRESS_MARGIN: u64 = 64 << 20;

/// What a process holds beyond the buffers the plan counts, kept out of
/// the free memory each process of the run plans within: the program and
/// its libraries, thread stacks, allocator rounding. `train --cpu --config
/// alexnet` on 2 threads peaked 60 to 100 MB above its plan at batches 1
/// and 8 (the plan's own share grows with the batch, and covers it above
/// about 32).
const WORKING_MARGIN: u64 = 128 << 20;

/// Under an address-space limit, one malloc arena for every thread. glibc
/// otherwise gives each new thread that allocates an arena of its own,
/// reserved 64 MiB at a time (HEAP_MAX_SIZE on 64-bit, malloc/arena.c),
/// when the thread first allocates: the address space left would then
/// depend on which threads had started by the time of the check, and a
/// batch it let through could fail an allocation mid-step. Call before
/// any thread starts.
pub fn one_arena_under_an_address_limit() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if let Ok((soft, _)) = rlimit::getrlimit(rlimit::Resource::AS) {
        if soft != rlimit::INFINITY {
            // SAFETY: mallopt only sets a malloc parameter; glibc takes its
            // own lock for it.
            let set = unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
            if set != 1 {
                warn!("could not limit malloc to one arena under ulimit -v: the memory check may let through a batch that does not fit");
            }
        }
    }
}

/// The threads a run starts beside the main one: the compute pool's, the
/// loader's `workers`, and the checkpoint writer.
pub fn run_threads(workers: usize) -> usize {
    rayon::current_num_threads() + workers + 1
}

/// The smallest of: the system's available memory (free plus reclaimable
/// cache); a container's memory limit (cgroup) less its processes'
/// anonymous memory (both less [`WORKING_MARGIN`]); and the address-space limit (`ulimit -v`, common on
/// shared clusters) less this process's size, the stacks of `threads`
/// more threads and a margin. None where the system does not say.
pub fn room(threads: usize) -> Option<Room> {
    room_for(1, threads)
}

/// [`room`] for one of `processes` of a run on this machine
/// (LOCAL_WORLD_SIZE): the machine's memory and a container's limit are
/// shared ([`Room::shared`]), an address-space limit is each process's own.
pub fn room_for(processes: usize, threads: usize) -> Option<Room> {
    let mut sys = System::new();
    sys.refresh_memory();
    let free = sys.available_memory();
    if free == 0 {
        return None;
    }
    // The cgroup's own "free" counts its page cache as used; the limit less
    // its anonymous memory is the analogue of MemAvailable.
    let in_limit = sys
        .cgroup_limits()
        .map(|c| c.total_memory.saturating_sub(c.rss));
    let reserved = threads as u64 * STACK + ADDRESS_MARGIN;
    let address = format!(
        "left under the address-space limit (ulimit -v), less a margin for the run's {threads} threads and working memory",
    );
    let within = |b: u64| b.saturating_sub(reserved) / 11 * 10;
    let kept = |b: u64| b.saturating_sub(processes as u64 * WORKING_MARGIN);
    let limits = [
        Some((kept(free), "free", true)),
        in_limit.map(|b| (kept(b), "free under the container's memory limit", true)),
        address_space_left(&mut sys).map(|b| (within(b), &address[..], false)),
    ];
    least(limits.into_iter().flatten(), processes)
}

/// The least of `limits` (bytes, how the error words it, whether the
/// machine's processes share it), the shared ones divided among
/// `processes`.
pub fn least<'a>(
    limits: impl IntoIterator<Item = (u64, &'a str, bool)>,
    processes: usize,
) -> Option<Room> {
    let room = |(bytes, limit, shared): (u64, &str, bool)| {
        let r = Room {
            bytes,
            limit: limit.into(),
        };
        if shared {
            r.shared(processes)
        } else {
            r
        }
    };
    limits.into_iter().map(room).min_by_key(|r| r.bytes)
}

/// RLIMIT_AS less this process's virtual size, where a limit is set.
#[cfg(unix)]
fn address_space_left(sys: &mut System) -> Option<u64> {
    use sysinfo::{ProcessRefreshKind, ProcessesToUpdate};
    let (soft, _) = rlimit::getrlimit(rlimit::Resource::AS).ok()?;
    if soft == rlimit::INFINITY {
        return None;
    }
    let pid = sysinfo::get_current_pid().ok()?;
    let kind = ProcessRefreshKind::nothing().with_memory();
    sys.refresh_processes_specifics(ProcessesToUpdate::Some(&[pid]), false, kind);
    let size = sys.process(pid)?.virtual_memory();
    Some(soft.saturating_sub(size))
}

#[cfg(not(unix))]
fn address_space_left(_: &mut System) -> Option<u64> {
    None
}

/// What a run holds in host memory (`network`) or in a GPU's
/// (`on_device`), as a function of the rows (images, or crops of them) per
/// step and the loader's workers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryNeed {
    /// Bytes held whatever the batch: the weights, gradients and momentum
    /// of every copy of the network in this process (0 on a GPU).
    pub fixed: u64,
    /// Bytes a checkpoint takes while it is written: the weights and
    /// momentum copied out of the network, then encoded as the file.
    pub checkpoint: u64,
    /// Bytes the all-reduce keeps in host memory to average replicas'
    /// gradients there (`AllReduce::host_floats`; 0 where it does not).
    pub reduce: u64,
    /// Bytes per row in the network's buffers (0 on a GPU).
    pub per_row: u64,
    /// Bytes per row of one batch of input on the host (a loader batch).
    pub loader_row: u64,
    /// Batches in an epoch: workers past this many have nothing to hold.
    pub batches: usize,
    /// Rows per image: 10 for the paper's 10-crop test, else 1.
    pub crops: usize,
    /// Processes sharing each batch (WORLD_SIZE): `--batch` is this many
    /// times the rows per step.
    pub world: usize,
    /// Replicas in this process sharing its rows: a suggested `--batch`
    /// must split evenly over them (`train::setup::local_batch`).
    pub copies: usize,
    /// Bytes the compute threads hold beside the network's buffers on the
    /// CPU, whatever the batch ([`cpu_scratch`]; 0 on a GPU).
    pub scratch: u64,
    /// The compute threads that `scratch` is for, for the error.
    pub threads: usize,
}

impl MemoryNeed {
    /// The buffers of `copies` networks of `topo` on `be` (counted only on
    /// the CPU) and one batch of input on the host.
    pub fn network<B: Backend>(be: &B, topo: &Topology, copies: usize) -> Result<MemoryNeed> {
        let (fixed, per_row) = match be.in_host_memory() {
            true => {
                let inputs = input_buffers(be);
                let zero = buffer_elements(topo, 0, inputs)?;
                let one = buffer_elements(topo, 1, inputs)?;
                (4 * zero * copies as u64, 4 * (one - zero))
            }
            false => (0, 0),
        };
        Ok(MemoryNeed {
            fixed,
            checkpoint: 0,
            reduce: 0,
            per_row,
            loader_row: 4 * (topo.channels * topo.crop * topo.crop) as u64,
            batches: 0,
            crops: 1,
            world: 1,
            copies,
            scratch: 0,
            threads: 0,
        })
    }

    /// And the scratch of `threads` compute threads running `topo` on
    /// `be` ([`cpu_scratch`]), where its networks are in host memory.
    pub fn with_compute_threads<B: Backend>(
        self,
        be: &B,
        topo: &Topology,
        threads: usize,
    ) -> Result<MemoryNeed> {
        if !be.in_host_memory() {
            return Ok(self);
        }
        Ok(MemoryNeed {
            scratch: cpu_scratch(topo, threads)?,
            threads,
            ..self
        })
    }

    /// And a checkpoint of `topo`'s weights being written: saving copies
    /// the weights and momentum out of the network, then encodes them as
    /// the file's bytes.
    pub fn with_checkpoint(self, topo: &Topology) -> Result<MemoryNeed> {
        let floats = 2 * topo.param_count()? as u64;
        Ok(MemoryNeed {
            checkpoint: 2 * 4 * floats,
            ..self
        })
    }

    /// And `loader`'s batches, `batches` of them in an epoch, instead of
    /// one batch of input.
    pub fn with_loader(self, loader: &LoaderConfig, batches: usize) -> MemoryNeed {
        let side = (loader.crop + loader.pad) as u64;
        MemoryNeed {
            loader_row: 4 * 3 * side * side,
            batches,
            crops: if loader.ten_crop { 10 } else { 1 },
            ..self
        }
    }

    /// Loader batches held at once: each worker one queued and one being
    /// filled, and the one the step reads (`workers` 0: that one), with no
    /// more workers busy than there are batches to fill.
    fn held(&self, workers: usize) -> u64 {
        2 * workers.min(self.batches) as u64 + 1
    }

    /// Bytes held with `rows` rows per step and `workers` loader threads.
    pub fn bytes(&self, rows: usize, workers: usize) -> u64 {
        let per_row = self.per_row + self.held(workers) * self.loader_row;
        self.whatever_the_batch()
            .saturating_add((rows as u64).saturating_mul(per_row))
    }

    /// Bytes held at any batch: the weights, a checkpoint, the reduce's
    /// buffers and the compute threads' scratch.
    fn whatever_the_batch(&self) -> u64 {
        self.fixed + self.checkpoint + self.reduce + self.scratch
    }

    /// `check` against the `room` there is now; nothing where the system
    /// does not say.
    pub fn check_now(&self, rows: usize, workers: usize) -> Result<()> {
        self.check_now_shared(rows, workers, 1)
    }

    /// [`check_now`](Self::check_now) within this process's share of the
    /// room when `processes` of one run share the machine ([`Room::shared`]).
    pub fn check_now_shared(&self, rows: usize, workers: usize, processes: usize) -> Result<()> {
        match room_for(processes, run_threads(workers)) {
            Some(room) => self.check(rows, workers, room),
            None => Ok(()),
        }
    }

    /// Refuse `rows` rows per step with `workers` loader threads when they
    /// need more than `room`, naming the largest batch or worker count that
    /// fits; warn when they need most of it.
    pub fn check(&self, rows: usize, workers: usize, room: Room) -> Result<()> {
        let (need, free) = (self.bytes(rows, workers), room.bytes);
        debug!(
            "memory: about {} needed, {} {}",
            size(need),
            size(free),
            room.limit
        );
        if need <= free {
            if need > free / 10 * 9 {
                warn!(
                    "this run needs about {} of memory, and {} is {}: other programs may push it out",
                    size(need),
                    size(free),
                    room.limit
                );
            }
            return Ok(());
        }
        let crops = match self.crops {
            1 => String::new(),
            c => format!(" x {c} crops"),
        };
        let loader = match self.batches {
            0 => String::new(),
            _ => format!(" with {workers} loader worker{}", plural(workers as u64)),
        };
        // `rows` are this process's; the step and --batch are the world's.
        let images = rows / self.crops.max(1);
        let share = match self.world {
            1 => String::new(),
            w => format!(" ({images} of them in this process, 1 of WORLD_SIZE={w})"),
        };
        Err(Error::Config(format!(
            "a step of {} images{share}{crops}{loader} needs about {} of memory, and {} is {} ({}); {}",
            images * self.world.max(1),
            size(need),
            size(free),
            room.limit,
            self.breakdown(workers),
            self.fix(rows, workers, free)
        )))
    }

    /// Where the bytes go, for the error.
    fn breakdown(&self, workers: usize) -> String {
        let unit = if self.crops > 1 { "crop" } else { "image" };
        let mut parts = Vec::new();
        if self.fixed > 0 {
            parts.push(format!(
                "weights, gradients and momentum {}, activations {} per {unit}",
                size(self.fixed),
                size(self.per_row)
            ));
        }
        if self.checkpoint > 0 {
            parts.push(format!(
                "a checkpoint being written {}",
                size(self.checkpoint)
            ));
        }
        if self.reduce > 0 {
            parts.push(format!(
                "averaging the replicas' gradients {}",
                size(self.reduce)
            ));
        }
        if self.scratch > 0 {
            parts.push(format!(
                "the scratch of {} compute threads {}",
                self.threads,
                size(self.scratch)
            ));
        }
        parts.push(match self.batches {
            0 => format!("the input {} per {unit}", size(self.loader_row)),
            _ => format!(
                "the loader {} per {unit} in each of the {} batch{} it holds",
                size(self.loader_row),
                self.held(workers),
                if self.held(workers) == 1 { "" } else { "es" }
            ),
        });
        parts.join(", ")
    }

    /// What to pass instead: fewer workers if one worker fits, else a
    /// smaller batch, else nothing on this machine.
    fn fix(&self, rows: usize, workers: usize, free: u64) -> String {
        let held = self.whatever_the_batch();
        let room = free.saturating_sub(held);
        if workers > 1 && self.bytes(rows, 1) <= free {
            let per_batch = rows as u64 * self.loader_row;
            let held = (room - rows as u64 * self.per_row) / per_batch.max(1);
            return format!(
                "pass --workers {} or fewer",
                (held.saturating_sub(1) / 2).max(1)
            );
        }
        // A smaller batch makes more batches an epoch, so more of the
        // workers busy: the batch named is sized for all of them.
        let per_row = self.per_row + (2 * workers as u64 + 1) * self.loader_row;
        // Whole images, split evenly over this process's replicas.
        let step = lcm(self.crops.max(1) as u64, self.copies.max(1) as u64);
        let max_rows = room / per_row.max(1) / step * step;
        if max_rows == 0 {
            let threads = self.scratch > 0;
            return format!(
                "the weights alone (with their gradients and momentum{}{}{}) take {}, leaving no room for a batch: use a smaller --config, fewer devices, {}or more memory",
                if self.checkpoint > 0 { ", a checkpoint being written" } else { "" },
                if self.reduce > 0 { ", the buffers that average them" } else { "" },
                if threads { ", the compute threads' scratch" } else { "" },
                size(held),
                if threads { "fewer --threads, " } else { "" }
            );
        }
        format!("pass --batch {} or less", max_rows * self.world as u64)
    }
}

fn lcm(a: u64, b: u64) -> u64 {
    let gcd = |mut x: u64, mut y: u64| {
        while y != 0 {
            (x, y) = (y, x % y);
        }
        x
    };
    a / gcd(a, b) * b
}

fn plural(n: u64) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// Bytes the CPU backend's `threads` compute threads hold beside a
/// network's buffers (`backend::cpu::conv`). Each keeps an im2col buffer
/// the size of the largest conv's between calls, and gemm's own per-thread
/// slab, the size of its L2 cache; a conv's GEMM packs at most its im2col
/// matrix again. Every chunk of the batch but the first sums a filter
/// gradient into its own copy of the layer's weights (`FILTER_CHUNKS`),
/// which the calling thread keeps between calls. A GEMM that all threads
/// share (the fc layers') packs one block, left to the margins.
pub fn cpu_scratch(topo: &Topology, threads: usize) -> Result<u64> {
    let (mut col, mut weights) = (0u64, 0u64);
    for (l, s) in topo.layers.iter().zip(topo.shapes()?) {
        if let Op::Conv { k, groups, .. } = l.op {
            let rows = s.input.c / groups * k * k;
            col = col.max((rows * s.op_out.h * s.op_out.w) as u64);
            weights = weights.max(s.weight_params as u64);
        }
    }
    let t = threads.max(1) as u64;
    let partials = FILTER_CHUNKS as u64 - 1;
    Ok(t * (2 * 4 * col + gemm_slab()) + partials * 4 * weights)
}

/// The slab gemm keeps on each thread that runs a GEMM: its L2 cache's
/// size, as gemm reads it.
pub fn gemm_slab() -> u64 {
    gemm_common::cache::CACHE_INFO[1].cache_bytes as u64
}

/// The loader batches a training run's feed may fill at once: its
/// workers go on from the epoch being read to its validation and the next
/// epoch (`train::passes` queues both behind it), `batch` images each.
pub fn run_batches(train_images: usize, val_images: usize, batch: usize) -> usize {
    let b = batch.max(1);
    2 * train_images.div_ceil(b) + val_images.div_ceil(b)
}

/// Refuse a one-network job (evaluation, features) over `images` images in
/// `loader`'s batches on `be` that would not fit. The network is sized to
/// the batches it is given, so a batch past the image count costs nothing.
pub fn check_one<B: Backend>(
    be: &B,
    topo: &Topology,
    loader: &LoaderConfig,
    images: usize,
) -> Result<()> {
    let batch = loader.batch.max(1);
    let need = MemoryNeed::network(be, topo, 1)?
        .with_compute_threads(be, topo, rayon::current_num_threads())?
        .with_loader(loader, images.div_ceil(batch));
    let rows = batch.min(images) * need.crops;
    need.check_now(rows, loader.workers)?;
    let on_device = MemoryNeed {
        crops: need.crops,
        ..MemoryNeed::on_device(be, topo, 1)?
    };
    on_device.check_devices(&[be], rows)
}

/// `towers::extra_elements` per image of a pair.
fn tower_elements_per_image(topo: &Topology, inputs: usize) -> Result<u64> {
    Ok(extra_elements(topo, 1, inputs)? - extra_elements(topo, 0, inputs)?)
}

/// Kept back for each network on a device: cuDNN's workspace, which the
/// count below leaves out (at most 1 GiB, `cudnn.rs`).
const DEVICE_RESERVE: u64 = 1 << 30;

/// And a tenth of the free memory for what else the count leaves out
/// (scratch, the libraries' state, the allocator's rounding): on an H200,
/// fp32 `alexnet` took 14.4 MB per image besides the workspace where the
/// count says 13.7, though 0.62 of that was bench-step's upload buffer,
/// since left out of such runs (docs/cuda.md).
const DEVICE_MARGIN_DIVISOR: u64 = 10;

/// How a backend stores a network in its device's memory, for the plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceStorage {
    /// Bytes of an activation: 4, or 2 in fp16 / bf16.
    pub activation_bytes: u64,
    /// Input buffers per network (`input_buffers`).
    pub inputs: usize,
}

impl DeviceStorage {
    pub fn of<B: Backend>(be: &B) -> DeviceStorage {
        DeviceStorage {
            activation_bytes: be.activation_bytes(),
            inputs: input_buffers(be),
        }
    }

    /// Whether the parameters and gradients keep a 16-bit copy beside
    /// their f32 masters (mixed precision).
    fn shadows(&self) -> bool {
        self.activation_bytes < 4
    }
}

impl MemoryNeed {
    /// What `copies` networks of `topo` take in the memory of `be`'s device
    /// (a GPU's): [`on_device_as`](Self::on_device_as) as `be` stores them.
    pub fn on_device<B: Backend>(be: &B, topo: &Topology, copies: usize) -> Result<MemoryNeed> {
        Self::on_device_as(DeviceStorage::of(be), topo, copies)
    }

    /// What `copies` networks of `topo` take on a device storing them as
    /// `st` says, counted as `buffer_elements` does: parameters, gradients,
    /// momentum, the loss and the step metrics as f32, and in fp16 / bf16
    /// a 16-bit copy of each parameter and gradient (what the libraries
    /// read and cuDNN's filter gradients are written in); activations at
    /// `st`'s size; labels and pooling's argmax as u32; the input at 4
    /// bytes per buffer: f32, or in 16 bits beside the f32 scratch that an
    /// upload from pinned memory lands in, the same bytes for a GPU's two
    /// buffers (more than held where copies share a device's scratch).
    pub fn on_device_as(st: DeviceStorage, topo: &Topology, copies: usize) -> Result<MemoryNeed> {
        let act = st.activation_bytes;
        let inputs = st.inputs as u64;
        let zero = buffer_elements(topo, 0, st.inputs)?;
        let one = buffer_elements(topo, 1, st.inputs)?;
        let indices = index_elements(topo, 1)?;
        let input = (topo.channels * topo.crop * topo.crop) as u64;
        let shadows = match st.shadows() {
            true => 2 * act * topo.param_count()? as u64,
            false => 0,
        };
        Ok(MemoryNeed {
            fixed: (4 * zero + shadows) * copies as u64,
            checkpoint: 0,
            reduce: 0,
            per_row: act * (one - zero - inputs * input - indices) + 4 * indices,
            loader_row: 4 * inputs * input,
            batches: 0,
            crops: 1,
            world: 1,
            copies,
            scratch: 0,
            threads: 0,
        })
    }

    /// And the buffers two towers hold beyond one grouped network's
    /// (`towers::extra_elements`), per image of every pair: in host
    /// memory on a CPU backend, or (`on_device`) in the device's
    /// ([`with_device_towers`](Self::with_device_towers)).
    pub fn with_towers<B: Backend>(
        self,
        be: &B,
        topo: &Topology,
        on_device: bool,
    ) -> Result<MemoryNeed> {
        match on_device {
            true => self.with_device_towers(DeviceStorage::of(be), topo),
            false if be.in_host_memory() => {
                let per_image = tower_elements_per_image(topo, input_buffers(be))?;
                Ok(MemoryNeed {
                    per_row: self.per_row + 4 * per_image,
                    ..self
                })
            }
            false => Ok(self),
        }
    }

    /// The towers' own buffers on devices storing them as `st` says: the
    /// activations at its element size, the second tower's input (as
    /// `on_device_as` counts an input) and labels at 4 bytes.
    pub fn with_device_towers(self, st: DeviceStorage, topo: &Topology) -> Result<MemoryNeed> {
        let per_image = tower_elements_per_image(topo, st.inputs)?;
        let f32s = (st.inputs * topo.channels * topo.crop * topo.crop + 1) as u64;
        Ok(MemoryNeed {
            per_row: self.per_row + st.activation_bytes * (per_image - f32s) + 4 * f32s,
            ..self
        })
    }

    /// [`check`](Self::check) against the memory of `devices`
    /// ([`device_room`]), before the first allocation, so that a batch too
    /// large gets this error, with the batch that fits, rather than the
    /// driver's out-of-memory status; nothing on the CPU.
    pub fn check_devices<B: Backend>(&self, devices: &[&B], rows: usize) -> Result<()> {
        match device_room(devices) {
            Some(room) => self.check(rows, 0, room),
            None => Ok(()),
        }
    }
}

/// [`device_room_of`] the memories of `devices`; None on the CPU or where
/// a device does not say.
pub fn device_room<B: Backend>(devices: &[&B]) -> Option<Room> {
    let memories: Option<Vec<DeviceMemory>> = devices.iter().map(|be| be.device_memory()).collect();
    device_room_of(&memories?)
}

/// The room for a run whose backends (one memory each in `backends`, a
/// device named twice appearing twice) hold equal shares of it: each
/// device's free memory, less a tenth (`DEVICE_MARGIN_DIVISOR`) and
/// `DEVICE_RESERVE` per backend on it, holds its backends' shares, so the
/// run fits where it fits on the tightest device. Summing the devices'
/// memory instead would let one full GPU hide behind an empty one.
pub fn device_room_of(backends: &[DeviceMemory]) -> Option<Room> {
    let total = backends.len() as u64;
    let mut devices: Vec<(&DeviceMemory, u64)> = Vec::new();
    for m in backends {
        match devices.iter_mut().find(|(d, _)| d.ordinal == m.ordinal) {
            Some((_, shares)) => *shares += 1,
            None => devices.push((m, 1)),
        }
    }
    let room = |(m, shares): &(&DeviceMemory, u64)| {
        let own = m.free - m.free / DEVICE_MARGIN_DIVISOR;
        own.saturating_sub(DEVICE_RESERVE * shares) / shares * total
    };
    let tightest = devices.iter().min_by_key(|d| room(d))?;
    Some(Room {
        bytes: room(tightest),
        limit: device_limit(&devices, tightest, total),
    })
}

/// How the error words a device room: the device, or for several the
/// tightest one with its share.
fn device_limit(
    devices: &[(&DeviceMemory, u64)],
    tightest: &(&DeviceMemory, u64),
    total: u64,
) -> String {
    const KEPT: &str = "less a tenth and 1 GiB per network kept for cuDNN's workspace and scratch";
    let (m, shares) = tightest;
    if devices.len() == 1 {
        return format!("free in the memory of {}, {KEPT}", m.name);
    }
    let names: Vec<&str> = devices.iter().map(|(d, _)| d.name.as_str()).collect();
    format!(
        "the room of {} at the fullest one's share: {} has {} free and holds {shares} of the {total} networks' shares, {KEPT}",
        names.join(" and "),
        m.name,
        size(m.free)
    )
}
