//! The loss and a training step's metrics, kept on the GPU: softmax
//! cross-entropy forward with the batch's mean loss averaged on the device
//! (softmax_xent_mean_f32), and one step's (loss, top-1 hits) written into a
//! slot of a small f32 buffer (step_hits_*, step_record_f32), so the trainer
//! reads many steps back at once instead of waiting for the GPU every step.
//! This file owns those launches; the Backend impl in mod.rs calls them.
use cudarc::driver::{CudaSlice, PushKernelArg};

use super::storage16::{check_master, half_of};
use super::{cfg, cuda_err, int, lock, CudaBackend, CudaBuf};
use crate::backend::cpu::elementwise::check_step_slot;
use crate::error::{Error, Result};

fn missing(op: &'static str, what: &str) -> Error {
    Error::Cuda {
        op,
        detail: format!("{what} scratch missing"),
    }
}

impl CudaBackend {
    /// probs and each row's loss (into `row_loss`), then loss[0] = their
    /// mean, all queued on the compute stream.
    #[allow(clippy::too_many_arguments)]
    fn xent_forward_mean(
        &self,
        op: &'static str,
        n: usize,
        classes: usize,
        logits: &CudaBuf<f32>,
        labels: &CudaBuf<u32>,
        probs: &mut CudaBuf<f32>,
        row_loss: &mut CudaSlice<f32>,
        loss: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let (ni, ci) = (int(op, "n", n)?, int(op, "classes", classes)?);
        if n > 0 && self.precision.is_half() {
            self.softmax_xent_forward16(logits, labels, probs, row_loss, ni, ci, n)?;
        } else if n > 0 {
            let f = self.kernels.get("softmax_xent_forward_f32")?;
            let mut l = self.stream.launch_builder(f);
            l.arg(&logits.data)
                .arg(&labels.data)
                .arg(&mut probs.data)
                .arg(&mut *row_loss)
                .arg(&ni)
                .arg(&ci);
            // SAFETY: softmax_xent_forward_f32(const float* logits, const unsigned int* labels,
            // float* probs, float* row_loss, int n, int classes); logits/probs hold n*classes,
            // labels n (each < classes, checked), row_loss at least n.
            unsafe { l.launch(cfg(n)) }.map_err(cuda_err(op))?;
        }
        let f = self.kernels.get("softmax_xent_mean_f32")?;
        let mut l = self.stream.launch_builder(f);
        l.arg(&*row_loss).arg(loss).arg(&ni);
        // SAFETY: softmax_xent_mean_f32(const float* row_loss, float* loss, int n);
        // row_loss holds at least n floats, loss at least one.
        unsafe { l.launch(cfg(1)) }.map_err(cuda_err(op))?;
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
        self.ensure(OP, &mut s.row_loss, n)?;
        self.ensure(OP, &mut s.mean_loss, 1)?;
        let (Some(row_loss), Some(mean)) = (s.row_loss.as_mut(), s.mean_loss.as_mut()) else {
            return Err(missing(OP, "loss"));
        };
        self.xent_forward_mean(OP, n, classes, logits, labels, probs, row_loss, mean)?;
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
        self.ensure(OP, &mut scratch.row_loss, n)?;
        let Some(row_loss) = scratch.row_loss.as_mut() else {
            return Err(missing(OP, "row-loss"));
        };
        self.xent_forward_mean(
            OP,
            n,
            classes,
            logits,
            labels,
            probs,
            row_loss,
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
