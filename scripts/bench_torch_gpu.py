#!/usr/bin/env python3
"""scripts/bench_torch_gpu.py: owns the PyTorch side of scripts/gpu-check's
speed row. Times one training step of the paper's AlexNet (the same network
`alexnet-cuda bench-step --config alexnet --gpus 0` times: groups=2 towers,
LRN with the paper's constants, overlapping pooling, dropout in train mode) on
one CUDA GPU, at batch 128 by default, in two modes:

  fp32:  NCHW, float32, torch.backends.cudnn.benchmark = True (PyTorch's
         default TF32 settings left alone: convolutions may use TF32);
  fp32-strict: as fp32 with TF32 off everywhere (cudnn.allow_tf32 = False):
         the same arithmetic as our default fp32;
  amp:   channels-last memory format with torch.autocast (float16) and a
         GradScaler: what a PyTorch user does today for speed.

One step = forward + mean cross-entropy + backward + SGD (momentum 0.9, weight
decay 5e-4) on random input. The time is the mean over --steps steps after
--warmup, bracketed by torch.cuda.synchronize(). Prints one JSON line per mode.

Usage: python3 scripts/bench_torch_gpu.py [--batch 128] [--steps 30] [--warmup 10] [--modes fp32,amp]
"""
import argparse
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_alexnet import AlexNet  # noqa: E402

CLASSES = 1000
CROP = 227


def bench(mode, batch, steps, warmup):
    dev = torch.device("cuda")
    torch.manual_seed(0)
    model = AlexNet(classes=CLASSES).to(dev).train()
    x = torch.randn(batch, 3, CROP, CROP, device=dev)
    if mode == "amp":
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, CLASSES, (batch,), device=dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    scaler = torch.amp.GradScaler("cuda", enabled=(mode == "amp"))

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.float16, enabled=(mode == "amp")):
            loss = F.cross_entropy(model(x), labels)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        return loss

    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = step()
    torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / steps
    return {
        "impl": "torch",
        "mode": mode,
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0),
        "batch": batch,
        "steps": steps,
        "mean_s": round(dt, 6),
        "images_per_s": round(batch / dt, 1),
        "loss": round(float(loss), 4),
        "peak_mem_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1),
    }


def main():
    ap = argparse.ArgumentParser(description="Time one AlexNet training step in PyTorch on a GPU.")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--modes", default="fp32,fp32-strict,amp")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_torch_gpu.py: PyTorch sees no CUDA GPU")
    torch.backends.cudnn.benchmark = True
    for mode in args.modes.split(","):
        if mode not in ("fp32", "fp32-strict", "amp"):
            ap.error(f"unknown mode {mode!r}; choose fp32, fp32-strict or amp")
        torch.backends.cudnn.allow_tf32 = mode != "fp32-strict"
        torch.cuda.reset_peak_memory_stats()
        print(json.dumps(bench(mode, args.batch, args.steps, args.warmup)), flush=True)


if __name__ == "__main__":
    main()
