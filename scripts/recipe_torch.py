"""scripts/recipe_torch.py: the first steps of the paper's recipe in PyTorch,
from the same packed store, as an independent check of examples/recipe_probe
(docs/training.md, "Why not the paper's biases").

It reads the store that `prepare` wrote (scripts/packed_store.py) with numpy
and Pillow, makes the paper's training batches itself (section 4.1: random 227x227 crops
of the 256x256 images, mirrored with probability 1/2, the mean image
subtracted, PCA lighting with alpha ~ N(0, 0.1), the PCA computed here from
the store's RGB covariance), builds the network from scripts/torch_alexnet.py,
draws N(0, 0.01) weights with the variant's starting biases, and takes SGD
steps by the paper's rule (section 5), biases without the decay:

    v <- 0.9 v - 0.0005 lr w - lr g;   w <- w + v

Nothing of ours runs here: the batches, the draws and the update are
PyTorch's and numpy's, so the losses match recipe_probe's in kind (does the
loss blow up, does it settle at chance), not number by number. Prints one
JSON line per variant with the same keys as recipe_probe.

Usage: recipe_torch.py STORE_TRAIN_DIR [--steps 30] [--seed 1] [VARIANT ...]
Variants: paper (biases 1 in conv2, conv4, conv5, fc6, fc7), caffe (0.1).
"""
import argparse
import io
import json
import math
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from packed_store import PackedStore  # noqa: E402
from torch_alexnet import AlexNet  # noqa: E402

BATCH, CROP, LR, MOMENTUM, DECAY = 128, 227, 0.01, 0.9, 5e-4
# Section 5: "initialized the neuron biases in the second, fourth, and fifth
# convolutional layers, as well as in the fully-connected hidden layers,
# with the constant 1"; Caffe's reference AlexNet uses 0.1 for the same ones.
ONE_BIAS_LAYERS = ("conv2", "conv4", "conv5", "fc6", "fc7")
VARIANTS = {"paper": 1.0, "caffe": 0.1}


class Store(PackedStore):
    """A JPEG store's images decoded, with its class count."""

    def __init__(self, folder):
        super().__init__(folder)
        if self.meta["encoding"] != "jpeg":
            raise SystemExit(f"error: {folder}: only JPEG stores are read here")
        self.classes = len(self.meta["classes"])

    def image(self, i):
        return np.asarray(Image.open(io.BytesIO(self.blob(i))).convert("RGB"), dtype=np.float32)


def lighting_pca(cov):
    """Eigenvalues and eigenvectors (rows) of the RGB covariance on [0, 1]."""
    vals, vecs = np.linalg.eigh(np.asarray(cov) / 255.0**2)
    return np.clip(vals, 0, None), vecs.T


def batch(store, order, k, rng, pca):
    """Batch k of the order: NCHW float32 crops and labels."""
    vals, vecs = pca
    idx = order[k * BATCH:(k + 1) * BATCH]
    x = np.empty((len(idx), 3, CROP, CROP), dtype=np.float32)
    for j, i in enumerate(idx):
        img = store.image(i) - store.mean
        y0, x0 = rng.integers(0, store.size - CROP + 1, size=2)
        crop = img[y0:y0 + CROP, x0:x0 + CROP]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        # Section 4.1: add [p1 p2 p3][a1 l1, a2 l2, a3 l3]^T to every pixel.
        shift = 255.0 * vecs.T @ (rng.normal(0.0, 0.1, size=3) * vals)
        x[j] = (crop + shift).transpose(2, 0, 1)
    return torch.from_numpy(x), torch.from_numpy(store.index["label"][idx].astype(np.int64))


def make_net(classes, bias, seed):
    torch.manual_seed(seed)
    net = AlexNet(classes=classes)
    with torch.no_grad():
        for name, m in net.named_children():
            if hasattr(m, "weight") and m.weight is not None:
                m.weight.normal_(0.0, 0.01)
                m.bias.fill_(bias if name in ONE_BIAS_LAYERS else 0.0)
    return net


def spread(logits):
    """Mean over classes of a logit's standard deviation across images."""
    return float(logits.double().std(dim=0, unbiased=False).mean())


def sgd_paper(net, velocity, lr=LR):
    """The paper's rule; biases without the decay, as docs/training.md says
    ours are (and Caffe's reference AlexNet's)."""
    with torch.no_grad():
        for p, v in zip(net.parameters(), velocity):
            decay = DECAY if p.dim() > 1 else 0.0
            v.mul_(MOMENTUM).add_(p, alpha=-decay * lr).add_(p.grad, alpha=-lr)
            p.add_(v)


def probe(store, name, steps, seed):
    net = make_net(store.classes, VARIANTS[name], seed)
    velocity = [torch.zeros_like(p) for p in net.parameters()]
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(store.index))
    pca = lighting_pca(store.meta["stats"]["rgb_cov"])
    x0, y0 = batch(store, order, 0, rng, pca)
    net.eval()
    with torch.no_grad():
        init = net(x0)
    losses, moved = [], math.nan
    for k in range(steps):
        x, y = (x0, y0) if k == 0 else batch(store, order, k, rng, pca)
        net.train()
        net.zero_grad(set_to_none=False)
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        sgd_paper(net, velocity)
        losses.append(loss.item())
        if k == 0:
            net.eval()
            with torch.no_grad():
                moved = float((net(x0) - init).abs().mean())
    net.eval()
    with torch.no_grad():
        last = net(x0)
    return {"variant": name, "lr": LR, "logit_spread_init": round(spread(init), 4),
            "logit_move_step1": round(moved, 4), "logit_spread_last": round(spread(last), 5),
            "loss": [round(v, 3) for v in losses]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("store")
    ap.add_argument("variants", nargs="*", default=list(VARIANTS))
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_intermixed_args()
    for v in a.variants:
        if v not in VARIANTS:
            raise SystemExit(f"error: unknown variant {v!r}; choose from {', '.join(VARIANTS)}")
    store = Store(a.store)
    if len(store.index) < a.steps * BATCH:
        raise SystemExit(f"error: {a.store}: {len(store.index)} images, fewer than "
                         f"{a.steps} batches of {BATCH}; pass a smaller --steps")
    for v in a.variants:
        print(json.dumps(probe(store, v, a.steps, a.seed)), flush=True)


if __name__ == "__main__":
    main()
