#!/usr/bin/env python3
"""scripts/write_fixtures.py: owns tests/fixtures/alexnet_narrow.safetensors,
the PyTorch reference that tests/pytorch_fixtures.rs checks the Rust network
against (in the spirit of llm.c's write_state).

The network is the paper's AlexNet (Krizhevsky et al., NIPS 2012, section 3.5)
at reduced width, so that every structural choice is exercised on a full
227x227 input while the fixture stays small: conv1 11x11 stride 4 -> ReLU ->
LRN -> max pool 3/2; conv2 5x5 pad 2 groups 2 -> ReLU -> LRN -> pool; conv3
3x3 pad 1 (both towers); conv4, conv5 3x3 pad 1 groups 2; pool after conv5;
flatten (C, H, W) into fc6; fc6, fc7 with ReLU; fc8 logits; mean cross-entropy.
Dropout is off (Topology::without_dropout) so the comparison is deterministic.

LRN: the paper's b = a / (k + alpha * sum_5 a^2)^beta with alpha = 1e-4.
PyTorch's nn.LocalResponseNorm divides alpha by size, so it gets 5 * 1e-4.
Each of the two towers normalises its own half of the channels
(torch_alexnet.AlexNet.tower_lrn).

Written to the file (all float32):
  init.<param>   every parameter before training (PyTorch's default init)
  logits, loss   forward pass at init.* (loss is a 1-element tensor)
  grad.<param>   d loss / d param at init.*
  step1.<param>  after one step of the paper's SGD (section 5), by hand:
                 v = momentum*v - wd*lr*w - lr*g; w += v
                 (wd = 5e-4 for weights, 0 for biases; lr 0.01, momentum 0.9)
  step1.loss     loss at step1.* (the second step's forward)
  step2.<param>  after a second step on the same batch (exercises momentum)
  input.probe    a few input values, to check the Rust formula reproduces them
plus string metadata (widths, batch, labels, hyper-parameters, versions).

The input is not stored; it is this closed form (mean-subtracted pixel scale,
as the paper feeds the net, so the LRN's sum term is not negligible), computed
in float64 and then rounded to float32, for the flat NCHW index i:
    x[i] = float32(((i * 7919 + 13) % 1009) / 1009.0 * 255.0 - 127.5)
tests/pytorch_fixtures.rs computes the same expression, bit for bit.

By default the reference is computed in float64 from the float32 parameters
and input, then rounded to float32 for storage, so the stored values carry
(almost) no rounding error of their own and the test measures ours alone.
--dtype float32 computes in float32 instead (to see PyTorch's own error).

Usage: .venv/bin/python scripts/write_fixtures.py [--out PATH] [--dtype float64|float32]
(scripts/setup-python creates .venv with the pinned versions.)
"""
import argparse
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from torch_alexnet import LRN_ALPHA, LRN_BETA, LRN_K, LRN_SIZE, AlexNet

WIDTHS = [6, 16, 24, 24, 16, 32, 32]
CLASSES = 10
BATCH = 2
LABELS = [3, 7]
CHANNELS = 3
CROP = 227
SEED = 2012
LR = 0.01
MOMENTUM = 0.9
WEIGHT_DECAY = 5e-4
INPUT_FORMULA = "x[i] = float32(((i * 7919 + 13) % 1009) / 1009.0 * 255.0 - 127.5), computed in float64, i = flat NCHW index"
# Indices of input.probe: start, the formula's period boundary, a middle value, the last element.
PROBE = [0, 1, 2, 1008, 1009, 1010, 12345, 154586, 154587, BATCH * CHANNELS * CROP * CROP - 1]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(ROOT, "tests", "fixtures", "alexnet_narrow.safetensors")


def make_input(n):
    i = np.arange(n * CHANNELS * CROP * CROP, dtype=np.int64)
    x = ((i * 7919 + 13) % 1009).astype(np.float64) / 1009.0 * 255.0 - 127.5
    return x.astype(np.float32).reshape(n, CHANNELS, CROP, CROP)


def lrn_by_formula(a):
    """The paper's formula, directly: a sanity check of the alpha * size conversion."""
    sq = a * a
    c = a.shape[1]
    s = torch.zeros_like(a)
    for ci in range(c):
        lo, hi = max(0, ci - LRN_SIZE // 2), min(c - 1, ci + LRN_SIZE // 2)
        s[:, ci] = sq[:, lo : hi + 1].sum(dim=1)
    return a / (LRN_K + LRN_ALPHA * s) ** LRN_BETA


def sgd_step(model, velocity):
    """The paper's update (section 5), by hand; weight decay on weights only."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            wd = WEIGHT_DECAY if name.endswith(".weight") else 0.0
            v = velocity[name]
            v.copy_(MOMENTUM * v - wd * LR * p - LR * p.grad)
            p.add_(v)


def f32(t):
    return t.detach().to(torch.float32).contiguous().clone()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    args = ap.parse_args()
    dtype = torch.float64 if args.dtype == "float64" else torch.float32

    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    model = AlexNet(WIDTHS, CLASSES, dropout=0)  # default init, in float32
    tensors = {f"init.{n}": f32(p) for n, p in model.named_parameters()}
    model = model.to(dtype)

    x_np = make_input(BATCH)
    x = torch.from_numpy(x_np).to(dtype)
    labels = torch.tensor(LABELS, dtype=torch.int64)
    tensors["input.probe"] = torch.from_numpy(x_np.reshape(-1)[PROBE].copy())

    # Check nn.LocalResponseNorm with alpha * size is the paper's formula.
    a = torch.relu(torch.randn(2, 7, 3, 3, dtype=torch.float64) * 40.0)
    lrn_err = (model.lrn(a) - lrn_by_formula(a)).abs().max().item()
    if lrn_err > 1e-12:
        sys.exit(f"nn.LocalResponseNorm disagrees with the paper's formula by {lrn_err}")

    # How much the LRN's sum term matters here (it should not be negligible).
    with torch.no_grad():
        a1 = F.relu(model.conv1(x))
        win = F.avg_pool3d(F.pad((a1 * a1).unsqueeze(1), (0, 0, 0, 0, 2, 2)), (5, 1, 1), stride=1).squeeze(1) * 5
        term = LRN_ALPHA * win
        print(f"conv1 LRN: alpha * window sum / k: mean {term.mean().item() / LRN_K:.4f}, max {term.max().item() / LRN_K:.4f}")

    model.zero_grad()
    logits = model(x)
    loss = F.cross_entropy(logits, labels)  # mean over the batch
    loss.backward()
    tensors["logits"] = f32(logits)
    tensors["loss"] = f32(loss.reshape(1))
    for n, p in model.named_parameters():
        tensors[f"grad.{n}"] = f32(p.grad)

    velocity = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    sgd_step(model, velocity)
    for n, p in model.named_parameters():
        tensors[f"step1.{n}"] = f32(p)

    model.zero_grad()
    loss1 = F.cross_entropy(model(x), labels)
    loss1.backward()
    tensors["step1.loss"] = f32(loss1.reshape(1))
    sgd_step(model, velocity)
    for n, p in model.named_parameters():
        tensors[f"step2.{n}"] = f32(p)

    metadata = {
        "network": "alexnet_widths(widths, classes).without_dropout()",
        "widths": ",".join(map(str, WIDTHS)),
        "classes": str(CLASSES),
        "batch": str(BATCH),
        "labels": ",".join(map(str, LABELS)),
        "input_shape": f"{BATCH},{CHANNELS},{CROP},{CROP}",
        "input_formula": INPUT_FORMULA,
        "input_probe_indices": ",".join(map(str, PROBE)),
        "lr": repr(LR),
        "momentum": repr(MOMENTUM),
        "weight_decay": repr(WEIGHT_DECAY),
        "weight_decay_on": "weights only (not biases)",
        "sgd": "v = momentum*v - wd*lr*w - lr*g; w += v",
        "lrn": f"size={LRN_SIZE} alpha={LRN_ALPHA} (paper; torch alpha={LRN_ALPHA * LRN_SIZE}) beta={LRN_BETA} k={LRN_K}",
        "loss": "mean cross-entropy",
        "compute_dtype": args.dtype,
        "seed": str(SEED),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "writer": "scripts/write_fixtures.py",
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    save_file(tensors, args.out, metadata=metadata)

    print(f"wrote {args.out} ({os.path.getsize(args.out)} bytes, {len(tensors)} tensors, computed in {args.dtype})")
    for k in sorted(metadata):
        print(f"  meta {k} = {metadata[k]}")
    for k, t in tensors.items():
        print(f"  {k:22s} {str(list(t.shape)):18s} max|x| {t.abs().max().item():.4g}")
    print(f"loss {loss.item():.6f} -> {loss1.item():.6f} after one step")


if __name__ == "__main__":
    main()
