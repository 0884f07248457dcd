#!/usr/bin/env python3
"""scripts/bench_torch.py: owns the PyTorch side of scripts/bench-cpu, the CPU
training-step benchmark (not a test). Times one training step of the paper's
full AlexNet in PyTorch on the CPU, the same network and step that
`alexnet-cuda bench-step --config alexnet` times:

  widths 96, 256, 384, 384, 256, 4096, 4096, 1000 classes, 3x227x227 input;
  conv1 11x11/4 -> ReLU -> LRN -> max pool 3/2; conv2 5x5 pad 2 groups 2 ->
  ReLU -> LRN -> pool; conv3 3x3 pad 1; conv4, conv5 3x3 pad 1 groups 2;
  pool; fc6, fc7 with ReLU and dropout 0.5 (train mode); fc8; LRN is
  nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2) (PyTorch divides alpha
  by size: this is the paper's alpha = 1e-4).

One step = forward + mean cross-entropy + backward + SGD (momentum 0.9,
weight decay 5e-4), on random input. Reports the median over --steps steps
after --warmup, and separately the median time of PyTorch's LRN alone
(forward + backward at both LRN sites, conv1's and conv2's outputs) as a
share of the step. Prints one JSON line.

Usage: .venv/bin/python scripts/bench_torch.py --batch 16 --steps 3 [--warmup 1] [--threads N]
"""
import argparse
import json
import os
import statistics
import time

import torch
import torch.nn.functional as F

from torch_alexnet import PAPER_WIDTHS, AlexNet, make_lrn

CLASSES = 1000
CROP = 227


def tcmalloc_loaded():
    try:
        with open("/proc/self/maps") as f:
            return "tcmalloc" in f.read()
    except OSError:
        return False


def timed(fn, warmup, steps):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description="Time one AlexNet training step in PyTorch on the CPU.")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.batch < 1 or args.steps < 1 or args.warmup < 0 or args.threads < 1:
        ap.error("--batch, --steps and --threads must be at least 1, --warmup at least 0")

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = AlexNet(classes=CLASSES).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(args.batch, 3, CROP, CROP)
    labels = torch.randint(0, CLASSES, (args.batch,))

    def step():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), labels)
        loss.backward()
        opt.step()

    step_s = timed(step, args.warmup, args.steps)

    # PyTorch's LRN alone at the two sites it runs at in a step (post-ReLU inputs).
    lrn = make_lrn()
    sites = []
    for c, hw in ((PAPER_WIDTHS[0], 55), (PAPER_WIDTHS[1], 27)):
        a = F.relu(torch.randn(args.batch, c, hw, hw) * 10.0).requires_grad_(True)
        sites.append((a, torch.randn(args.batch, c, hw, hw)))

    def lrn_fwd_bwd():
        for a, g in sites:
            a.grad = None
            lrn(a).backward(g)

    lrn_s = timed(lrn_fwd_bwd, args.warmup, args.steps)

    print(
        json.dumps(
            {
                "impl": "torch",
                "torch": torch.__version__,
                "batch": args.batch,
                "steps": args.steps,
                "threads": torch.get_num_threads(),
                "tcmalloc": tcmalloc_loaded(),
                "median_s": round(step_s, 5),
                "images_per_s": round(args.batch / step_s, 2),
                "lrn_median_s": round(lrn_s, 5),
                "lrn_share": round(lrn_s / step_s, 4),
            }
        )
    )


if __name__ == "__main__":
    main()
