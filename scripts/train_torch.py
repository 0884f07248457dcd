"""scripts/train_torch.py: whole epochs of the default recipe in PyTorch, from
the same packed store as `alexnet-cuda train`, as an independent reference
for what our trainer learns (docs/imagenette.md, "Beside PyTorch").

The batches, the weights and the update are those of scripts/recipe_torch.py
(its own crops, mirrors, mean image and PCA lighting; N(0, 0.01) weights,
the starting biases 0.1 where the paper has 1; the paper's update by hand),
each epoch a new permutation of the training store without its short last
batch, as `train` does. After each epoch it scores the store's val/ folder
on the centre 227x227 crop with dropout off, and prints one JSON line per
epoch: the mean training loss and top-1, validation loss, top-1 and top-5.

Usage: train_torch.py STORE [--epochs 3] [--seed 1] [--lr 0.01]
STORE is `prepare`'s output folder (train/ and val/).
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import recipe_torch as rt  # noqa: E402

EVAL_BATCH = 64


def val_batches(train, val):
    """The val images' centre crops, the train store's mean image removed."""
    o = (val.size - rt.CROP) // 2
    mean = train.mean[o:o + rt.CROP, o:o + rt.CROP]
    for s in range(0, len(val.index), EVAL_BATCH):
        idx = range(s, min(s + EVAL_BATCH, len(val.index)))
        x = np.stack([(val.image(i)[o:o + rt.CROP, o:o + rt.CROP] - mean).transpose(2, 0, 1)
                      for i in idx])
        y = val.index["label"][s:s + len(idx)].astype(np.int64)
        yield torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y)


def evaluate(net, train, val):
    net.eval()
    loss = top1 = top5 = 0.0
    with torch.no_grad():
        for x, y in val_batches(train, val):
            logits = net(x)
            loss += F.cross_entropy(logits, y, reduction="sum").item()
            best = logits.topk(5, dim=1).indices
            top1 += (best[:, 0] == y).sum().item()
            top5 += (best == y[:, None]).any(dim=1).sum().item()
    n = len(val.index)
    return loss / n, top1 / n, top5 / n


def train_epoch(net, velocity, store, rng, pca, lr):
    net.train()
    order = rng.permutation(len(store.index))
    steps = len(order) // rt.BATCH
    loss_sum = hits = 0.0
    for k in range(steps):
        x, y = rt.batch(store, order, k, rng, pca)
        net.zero_grad(set_to_none=False)
        logits = net(x)
        loss = F.cross_entropy(logits, y)
        loss.backward()
        rt.sgd_paper(net, velocity, lr)
        loss_sum += loss.item()
        hits += (logits.argmax(dim=1) == y).float().mean().item()
    return loss_sum / steps, hits / steps


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("store")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--lr", type=float, default=rt.LR)
    a = ap.parse_args()
    for part in ("train", "val"):
        if not os.path.isfile(os.path.join(a.store, part, "meta.json")):
            raise SystemExit(f"error: {a.store}/{part}/meta.json is missing: pass the folder "
                             "`prepare --train ... --val ...` wrote (scripts/prepare-imagenette)")
    train, val = rt.Store(os.path.join(a.store, "train")), rt.Store(os.path.join(a.store, "val"))
    if val.meta["classes"] != train.meta["classes"]:
        raise SystemExit(f"error: {a.store}: val/ and train/ list different classes; "
                         "prepare them together")
    net = rt.make_net(train.classes, rt.VARIANTS["caffe"], a.seed)
    velocity = [torch.zeros_like(p) for p in net.parameters()]
    rng = np.random.default_rng(a.seed)
    pca = rt.lighting_pca(train.meta["stats"]["rgb_cov"])
    t0 = time.time()
    for epoch in range(1, a.epochs + 1):
        train_loss, train_top1 = train_epoch(net, velocity, train, rng, pca, a.lr)
        val_loss, val_top1, val_top5 = evaluate(net, train, val)
        print(json.dumps({"epoch": epoch, "lr": a.lr, "train_loss": round(train_loss, 5),
                          "train_top1": round(train_top1, 5), "val_loss": round(val_loss, 5),
                          "val_top1": round(val_top1, 5), "val_top5": round(val_top5, 5),
                          "elapsed_s": round(time.time() - t0, 1)}), flush=True)


if __name__ == "__main__":
    main()
