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

--per-layer adds "per_layer": each stage of the network timed alone on the
input it sees in a step, forward with autograd recording as in training,
backward as forward + backward less forward (input gradients where the step
needs them: not conv1's), in the parts `bench-step --per-layer` groups into
(scripts/bench-cpu --per-layer joins the two).

Usage: .venv/bin/python scripts/bench_torch.py --batch 16 --steps 3 [--warmup 1] [--threads N] [--per-layer]
"""
import argparse
import json
import math
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from torch_alexnet import PAPER_WIDTHS, AlexNet

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


def stages(model):
    """The step's stages in order: (layer, kind, function), kind naming the
    parts of `bench-step --per-layer` the stage's forward and backward are."""
    relu = lambda m: (lambda t: F.relu(m(t)))
    out = []
    for i in range(1, 6):
        out.append((f"conv{i}", "forward", relu(getattr(model, f"conv{i}"))))
        if i <= 2:
            out.append((f"conv{i}", "lrn", model.tower_lrn))
        if i in (1, 2, 5):
            out.append((f"conv{i}", "pool", model.pool))
    out.append(("fc6", "forward", lambda t: F.relu(model.fc6(torch.flatten(t, 1)))))
    out.append(("fc6", "dropout", model.drop))
    out.append(("fc7", "forward", relu(model.fc7)))
    out.append(("fc7", "dropout", model.drop))
    out.append(("fc8", "forward", model.fc8))
    return out


BACKWARD = {"forward": "backward", "lrn": "lrn-backward", "pool": "pool-backward", "dropout": "dropout-backward"}


def stage_times(model, opt, x, labels, args):
    """Each stage alone on the input it sees in a step: forward (autograd
    recording), and backward as forward + backward less forward. conv1's
    input needs no gradient, as in the step."""
    rows = []
    t = x
    for n, (layer, kind, f) in enumerate(stages(model)):
        inp = t.detach().requires_grad_(n > 0)
        with torch.no_grad():
            grad = torch.randn_like(f(inp))
        fwd = timed(lambda: f(inp), args.warmup, args.steps)

        def fwd_bwd():
            # As the step starts (zero_grad(set_to_none=True)): a gradient
            # left from the call before would be added to, not written.
            model.zero_grad(set_to_none=True)
            inp.grad = None
            f(inp).backward(grad)

        both = timed(fwd_bwd, args.warmup, args.steps)
        rows.append({"layer": layer, "part": kind, "ms": round(fwd * 1e3, 4)})
        rows.append({"layer": layer, "part": BACKWARD[kind], "ms": round(max(both - fwd, 0.0) * 1e3, 4)})
        with torch.no_grad():
            t = f(t)
    logits = t.detach().requires_grad_(True)
    loss_f = timed(lambda: F.cross_entropy(logits, labels), args.warmup, args.steps)

    def loss_fb():
        logits.grad = None
        F.cross_entropy(logits, labels).backward()

    loss_b = timed(loss_fb, args.warmup, args.steps)
    rows.append({"layer": "net", "part": "loss", "ms": round(loss_f * 1e3, 4)})
    rows.append({"layer": "net", "part": "loss-backward", "ms": round(max(loss_b - loss_f, 0.0) * 1e3, 4)})
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    rows.append({"layer": "net", "part": "sgd", "ms": round(timed(opt.step, args.warmup, args.steps) * 1e3, 4)})
    return rows


def main():
    ap = argparse.ArgumentParser(description="Time one AlexNet training step in PyTorch on the CPU.")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lr", type=float, default=0.01, help="SGD's rate (pass ours the same)")
    ap.add_argument("--per-layer", action="store_true", help="also time each stage alone (JSON per_layer)")
    args = ap.parse_args()
    if args.batch < 1 or args.steps < 1 or args.warmup < 0 or args.threads < 1:
        ap.error("--batch, --steps and --threads must be at least 1, --warmup at least 0")

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = AlexNet(classes=CLASSES).train()
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(args.batch, 3, CROP, CROP)
    labels = torch.randint(0, CLASSES, (args.batch,))
    losses = []

    def step():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), labels)
        loss.backward()
        opt.step()
        losses.append(loss.item())

    step_s = timed(step, args.warmup, args.steps)
    # A step that went to inf or NaN is not the step being compared.
    if not math.isfinite(losses[-1]):
        sys.exit(f"bench_torch.py: the loss is {losses[-1]} after {len(losses)} steps at lr {args.lr}")

    # PyTorch's LRN alone at the two sites it runs at in a step (post-ReLU
    # inputs), as the step runs it: within each tower's channels.
    lrn = model.tower_lrn
    sites = []
    for c, hw in ((PAPER_WIDTHS[0], 55), (PAPER_WIDTHS[1], 27)):
        a = F.relu(torch.randn(args.batch, c, hw, hw) * 10.0).requires_grad_(True)
        sites.append((a, torch.randn(args.batch, c, hw, hw)))

    def lrn_fwd_bwd():
        for a, g in sites:
            a.grad = None
            lrn(a).backward(g)

    lrn_s = timed(lrn_fwd_bwd, args.warmup, args.steps)
    per_layer = stage_times(model, opt, x, labels, args) if args.per_layer else None

    print(
        json.dumps(
            {
                **({"per_layer": per_layer} if per_layer is not None else {}),
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
                "lr": args.lr,
                "loss_first": round(losses[0], 4),
                "loss_last": round(losses[-1], 4),
            }
        )
    )


if __name__ == "__main__":
    main()
