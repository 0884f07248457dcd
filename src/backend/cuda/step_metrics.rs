//! The loss and a training step's metrics, kept on the GPU: softmax
//! cross-entropy forward with the batch's mean loss averaged on the device
//! (softmax_xent_mean_f32), and one step's (loss, top-1 hits) written into a
//! slot of a small f32 buffer (step_hits_*, step_record_f32), so the trainer
//! reads many steps back at once instead of waiting for the GPU every step.
//! This file owns those launches; the Backend impl in mod.rs calls them.
use alexnet_kernels::softmax_parts;
use cudarc::driver::{CudaFunction, CudaSlice, LaunchArgs, PushKernelArg};

use super::storage16::{check_master, half_of, half_out};
use super::{cfg, cuda_err, int, lock, CudaBackend, CudaBuf, XentScratch};
use crate::backend::cpu::elementwise::check_step_slot;
use crate::error::{Error, Result};

/// The softmax kernels' sizes, as their int arguments.
#[derive(Clone, Copy)]
struct XentDims {
    n: i32,
    classes: i32,
    parts: i32,
}

impl XentDims {
    /// n * per_row threads (both fit an int: checked by `int`, and their
    /// product is at most the logits' length).
    fn len(self, per_row: i32) -> usize {
        self.n as usize * per_row as usize
    }
}

fn missing(op: &'static str, what: &str) -> Error {
    Error::Cuda {
        op,
        detail: format!("{what} scratch missing"),
    }
}

impl CudaBackend {
    /// `base_f32`, or `base_f16` / `base_bf16` in 16-bit mode.
    fn xent_kernel(
        &self,
        f32_name: &'static str,
        f16_name: &'static str,
        bf16_name: &'static str,
    ) -> Result<&CudaFunction> {
        if self.precision.is_half() {
            self.kernel16(f16_name, bf16_name)
        } else {
            self.kernels.get(f32_name)
        }
    }

    /// probs and each row's loss (into `x.row_loss`), then loss[0] = their
    /// mean, all queued on the compute stream: softmax_xent_max, _exp, _sum
    /// and _probs of the backend's precision, then softmax_xent_mean_f32
    /// (kernels/softmax_xent.cu says why four).
    #[allow(clippy::too_many_arguments)]
    fn xent_forward_mean(
        &self,
        op: &'static str,
        n: usize,
        classes: usize,
        logits: &CudaBuf<f32>,
        labels: &CudaBuf<u32>,
        probs: &mut CudaBuf<f32>,
        x: &mut XentScratch,
        loss: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let parts = softmax_parts(classes);
        // n * classes fits: logits holds that many (checked by the caller).
        self.ensure(op, &mut x.row_loss, n)?;
        self.ensure(op, &mut x.part_max, n * parts)?;
        self.ensure(op, &mut x.exp, n * classes)?;
        self.ensure(op, &mut x.inv, n)?;
        let (Some(row_loss), Some(part_max), Some(exp), Some(inv)) = (
            x.row_loss.as_mut(),
            x.part_max.as_mut(),
            x.exp.as_mut(),
            x.inv.as_mut(),
        ) else {
            return Err(missing(op, "softmax"));
        };
        let d = XentDims {
            n: int(op, "n", n)?,
            classes: int(op, "classes", classes)?,
            parts: int(op, "parts", parts)?,
        };
        if n > 0 {
            self.xent_max(op, d, logits, part_max)?;
            self.xent_exp(op, d, logits, part_max, exp)?;
            self.xent_sum(op, d, (logits, labels), (part_max, exp), (inv, row_loss))?;
            self.xent_probs(op, d, exp, inv, probs)?;
        }
        let f = self.kernels.get("softmax_xent_mean_f32")?;
        let mut l = self.stream.launch_builder(f);
        l.arg(&*row_loss).arg(loss).arg(&d.n);
        // SAFETY: softmax_xent_mean_f32(const float* row_loss, float* loss, int n);
        // row_loss holds at least n floats, loss at least one.
        unsafe { l.launch(cfg(1)) }.map_err(cuda_err(op))?;
        Ok(())
    }

    /// Logits as the softmax kernels of the backend's precision read them.
    fn logits_arg<'a>(
        &self,
        op: &'static str,
        l: &mut LaunchArgs<'a>,
        logits: &'a CudaBuf<f32>,
    ) -> Result<()> {
        if self.precision.is_half() {
            l.arg(half_of(op, "logits", logits)?);
        } else {
            l.arg(&logits.data);
        }
        Ok(())
    }

    /// Each row's max over every parts-th class, into part_max.
    fn xent_max(
        &self,
        op: &'static str,
        d: XentDims,
        logits: &CudaBuf<f32>,
        part_max: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let f = self.xent_kernel(
            "softmax_xent_max_f32",
            "softmax_xent_max_f16",
            "softmax_xent_max_bf16",
        )?;
        let mut l = self.stream.launch_builder(f);
        self.logits_arg(op, &mut l, logits)?;
        l.arg(part_max).arg(&d.n).arg(&d.classes).arg(&d.parts);
        // SAFETY: softmax_xent_max_T(const T* logits, float* part_max, int n,
        // int classes, int parts); logits holds n*classes values of the
        // backend's precision, part_max at least n*parts (ensure).
        unsafe { l.launch(cfg(d.len(d.parts))) }.map_err(cuda_err(op))?;
        Ok(())
    }

    /// e = exp(z - the row's max) for every element, into exp.
    fn xent_exp(
        &self,
        op: &'static str,
        d: XentDims,
        logits: &CudaBuf<f32>,
        part_max: &CudaSlice<f32>,
        exp: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let f = self.xent_kernel(
            "softmax_xent_exp_f32",
            "softmax_xent_exp_f16",
            "softmax_xent_exp_bf16",
        )?;
        let mut l = self.stream.launch_builder(f);
        self.logits_arg(op, &mut l, logits)?;
        l.arg(part_max)
            .arg(exp)
            .arg(&d.n)
            .arg(&d.classes)
            .arg(&d.parts);
        // SAFETY: softmax_xent_exp_T(const T* logits, const float* part_max,
        // float* e, int n, int classes, int parts); logits holds n*classes
        // values, part_max n*parts (written before), e at least n*classes.
        unsafe { l.launch(cfg(d.len(d.classes))) }.map_err(cuda_err(op))?;
        Ok(())
    }

    /// Each row's ordered double sum of e: 1 / sum into inv, the row's loss
    /// into row_loss.
    fn xent_sum(
        &self,
        op: &'static str,
        d: XentDims,
        (logits, labels): (&CudaBuf<f32>, &CudaBuf<u32>),
        (part_max, exp): (&CudaSlice<f32>, &CudaSlice<f32>),
        (inv, row_loss): (&mut CudaSlice<f32>, &mut CudaSlice<f32>),
    ) -> Result<()> {
        let f = self.xent_kernel(
            "softmax_xent_sum_f32",
            "softmax_xent_sum_f16",
            "softmax_xent_sum_bf16",
        )?;
        let mut l = self.stream.launch_builder(f);
        self.logits_arg(op, &mut l, logits)?;
        l.arg(&labels.data)
            .arg(part_max)
            .arg(exp)
            .arg(inv)
            .arg(row_loss);
        l.arg(&d.n).arg(&d.classes).arg(&d.parts);
        // SAFETY: softmax_xent_sum_T(const T* logits, const unsigned int* labels,
        // const float* part_max, const float* e, float* inv, float* row_loss,
        // int n, int classes, int parts); logits holds n*classes values,
        // labels n (each < classes, checked), part_max n*parts, e n*classes,
        // inv and row_loss at least n.
        unsafe { l.launch(cfg(d.len(1))) }.map_err(cuda_err(op))?;
        Ok(())
    }

    /// probs = e * the row's inv, stored in the backend's precision.
    fn xent_probs(
        &self,
        op: &'static str,
        d: XentDims,
        exp: &CudaSlice<f32>,
        inv: &CudaSlice<f32>,
        probs: &mut CudaBuf<f32>,
    ) -> Result<()> {
        let f = self.xent_kernel(
            "softmax_xent_probs_f32",
            "softmax_xent_probs_f16",
            "softmax_xent_probs_bf16",
        )?;
        let mut l = self.stream.launch_builder(f);
        l.arg(exp).arg(inv);
        if self.precision.is_half() {
            l.arg(half_out(op, "probs", probs)?);
        } else {
            l.arg(&mut probs.data);
        }
        l.arg(&d.n).arg(&d.classes);
        // SAFETY: softmax_xent_probs_T(const float* e, const float* inv, T* probs,
        // int n, int classes); e holds n*classes, inv n, probs n*classes
        // values of the backend's precision (checked by the caller).
        unsafe { l.launch(cfg(d.len(d.classes))) }.map_err(cuda_err(op))?;
        Ok(())
    }

    /// `Backend::softmax_xent_forward`: the device's mean, downloaded (one wait).
    pub(super) fn xent_forward_host(
        &self,
        n: usize,
        classes: usize,
        logits: &CudaBuf<f32>,
        labels: &CudaBuf<u32>,
        probs: &mut CudaBuf<f32>,
    ) -> Result<f32> {
        const OP: &str = "softmax_xent_forward";
        self.check_xent(OP, n, classes, logits.len(), labels, probs.len())?;
        if n == 0 {
            return Ok(0.0);
        }
        let mut scratch = lock(OP, &self.scratch)?;
        let s = &mut *scratch;
        self.ensure(OP, &mut s.mean_loss, 1)?;
        let Some(mean) = s.mean_loss.as_mut() else {
            return Err(missing(OP, "loss"));
        };
        self.xent_forward_mean(OP, n, classes, logits, labels, probs, &mut s.xent, mean)?;
        let mut host = [0.0f32];
        self.dtoh(OP, mean, &mut host)?;
        Ok(host[0])
    }

    /// `Backend::softmax_xent_forward_into`: the mean stays in loss[0].
    pub(super) fn xent_forward_device(
        &self,
        n: usize,
        classes: usize,
        logits: &CudaBuf<f32>,
        labels: &CudaBuf<u32>,
        probs: &mut CudaBuf<f32>,
        loss: &mut CudaBuf<f32>,
    ) -> Result<()> {
        const OP: &str = "softmax_xent_forward_into";
        self.check_xent(OP, n, classes, logits.len(), labels, probs.len())?;
        check_master(OP, "loss", loss)?;
        if loss.is_empty() {
            return Err(Error::Shape {
                op: OP,
                detail: "the loss buffer is empty".into(),
            });
        }
        let mut scratch = lock(OP, &self.scratch)?;
        self.xent_forward_mean(
            OP,
            n,
            classes,
            logits,
            labels,
            probs,
            &mut scratch.xent,
            &mut loss.data,
        )
    }

    /// `Backend::record_step_metrics`: each row's hit into scratch, then
    /// (loss[0], their sum) into slot `slot`; nothing waits.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn step_metrics(
        &self,
        n: usize,
        classes: usize,
        probs: &CudaBuf<f32>,
        labels: &CudaBuf<u32>,
        loss: &CudaBuf<f32>,
        slot: usize,
        metrics: &mut CudaBuf<f32>,
    ) -> Result<()> {
        const OP: &str = "record_step_metrics";
        self.check_xent(OP, n, classes, probs.len(), labels, probs.len())?;
        check_master(OP, "loss", loss)?;
        check_master(OP, "metrics", metrics)?;
        check_step_slot(OP, loss.len(), slot, metrics.len())?;
        let (ni, ci, si) = (
            int(OP, "n", n)?,
            int(OP, "classes", classes)?,
            int(OP, "slot", slot)?,
        );
        let mut scratch = lock(OP, &self.scratch)?;
        self.ensure(OP, &mut scratch.row_hit, n)?;
        let Some(row_hit) = scratch.row_hit.as_mut() else {
            return Err(missing(OP, "row-hit"));
        };
        if n > 0 {
            let f = if self.precision.is_half() {
                self.kernel16("step_hits_f16", "step_hits_bf16")?
            } else {
                self.kernels.get("step_hits_f32")?
            };
            let mut l = self.stream.launch_builder(f);
            if self.precision.is_half() {
                l.arg(half_of(OP, "probs", probs)?);
            } else {
                l.arg(&probs.data);
            }
            l.arg(&labels.data).arg(&mut *row_hit).arg(&ni).arg(&ci);
            // SAFETY: step_hits_H(const T* probs, const unsigned int* labels, float*
            // row_hit, int n, int classes); probs holds n*classes values of the
            // backend's precision, labels n (each < classes, checked), row_hit n.
            unsafe { l.launch(cfg(n)) }.map_err(cuda_err(OP))?;
        }
        let f = self.kernels.get("step_record_f32")?;
        let mut l = self.stream.launch_builder(f);
        l.arg(&loss.data)
            .arg(&*row_hit)
            .arg(&mut metrics.data)
            .arg(&ni)
            .arg(&si);
        // SAFETY: step_record_f32(const float* loss, const float* row_hit, float*
        // metrics, int n, int slot); loss holds a float, row_hit n, metrics at
        // least 2*slot+2 (checked).
        unsafe { l.launch(cfg(1)) }.map_err(cuda_err(OP))?;
        Ok(())
    }
}
