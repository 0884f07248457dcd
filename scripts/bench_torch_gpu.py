#!/usr/bin/env python3
"""scripts/bench_torch_gpu.py: owns the PyTorch side of scripts/gpu-check's
speed row. Times one training step of the paper's AlexNet (the same network
`alexnet-cuda bench-step --config alexnet --gpus 0` times: groups=2 towers,
LRN with the paper's constants, overlapping pooling, dropout in train mode) on
one CUDA GPU, at batch 128 by default, in these modes:

  fp32:  NCHW, float32, torch.backends.cudnn.benchmark = True (PyTorch's
         default TF32 settings left alone: convolutions may use TF32);
  fp32-strict: as fp32 with TF32 off everywhere (cudnn.allow_tf32 = False):
         the same arithmetic as our default fp32;
  amp:   channels-last memory format with torch.autocast (float16) and a
         GradScaler: what a PyTorch user does today for speed;
  amp-bf16: channels-last with torch.autocast (bfloat16), no scaler;
  compiled: amp-bf16 with the model under torch.compile (mode max-autotune
         by default, --compile-mode): PyTorch's strongest form. Its first
         steps compile and autotune; the JSON line says how long they took
         (compile_s), and the timing starts after the warm-up as for the rest.

One step = forward + mean cross-entropy + backward + SGD (momentum 0.9, weight
decay 5e-4) on random input. The time is the mean over --steps steps after
--warmup, bracketed by torch.cuda.synchronize(). Prints one JSON line per mode.

Usage: python3 scripts/bench_torch_gpu.py [--batch 128] [--steps 30] [--warmup 10] [--modes fp32,amp]
           [--compile-mode max-autotune] [--device cuda]
(--device cpu only checks the script: its times mean nothing.)
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


HALF = {"amp": torch.float16, "amp-bf16": torch.bfloat16, "compiled": torch.bfloat16}
MODES = ("fp32", "fp32-strict", "amp", "amp-bf16", "compiled")


def bench(mode, batch, steps, warmup, device="cuda", compile_mode="max-autotune"):
    dev = torch.device(device)
    torch.manual_seed(0)
    model = AlexNet(classes=CLASSES).to(dev).train()
    x = torch.randn(batch, 3, CROP, CROP, device=dev)
    if mode in HALF:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, CLASSES, (batch,), device=dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    scaler = torch.amp.GradScaler(device, enabled=(mode == "amp"))
    net = torch.compile(model, mode=compile_mode) if mode == "compiled" else model

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=HALF.get(mode, torch.float32), enabled=mode in HALF):
            loss = F.cross_entropy(net(x), labels)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        return loss

    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    t0 = time.perf_counter()
    for _ in range(warmup):
        step()
    sync()
    warm_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = step()
    sync()
    dt = (time.perf_counter() - t0) / steps
    out = {
        "impl": "torch",
        "mode": mode,
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu",
        "batch": batch,
        "steps": steps,
        "mean_s": round(dt, 6),
        "images_per_s": round(batch / dt, 1),
        "loss": round(loss.item(), 4),
        "peak_mem_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if dev.type == "cuda" else None,
    }
    if mode == "compiled":
        # The warm-up's time less its steps at the timed pace: compiling and autotuning.
        out["compile_mode"] = compile_mode
        out["compile_s"] = round(warm_s - warmup * dt, 1)
    return out


def main():
    ap = argparse.ArgumentParser(description="Time one AlexNet training step in PyTorch on a GPU.")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--modes", default="fp32,fp32-strict,amp")
    ap.add_argument("--compile-mode", default="max-autotune")
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    args = ap.parse_args()
    for mode in args.modes.split(","):
        if mode not in MODES:
            ap.error(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("bench_torch_gpu.py: PyTorch sees no CUDA GPU")
    torch.backends.cudnn.benchmark = True
    for mode in args.modes.split(","):
        torch.backends.cudnn.allow_tf32 = mode != "fp32-strict"
        if args.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        r = bench(mode, args.batch, args.steps, args.warmup, args.device, args.compile_mode)
        print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
