#!/usr/bin/env python3
"""scripts/check_export.py: owns the check that our exports mean what we say.

Given what scripts/check-export writes with the command line
(weights.safetensors and model.onnx from `alexnet-cuda export`, an input
batch, and our logits for it from `alexnet-cuda predict --input-npy`), this
  1. loads the safetensors into the PyTorch reference model
     (scripts/torch_alexnet.py, built independently of the Rust table) in
     eval mode, strictly (every name and shape must match), and runs the
     input through it in float64;
  2. checks model.onnx with onnx.checker (full check, with shape inference)
     and runs the input through onnxruntime (float32, CPU), and reads the
     run's classes from its metadata (one per logit);
and prints the largest |difference| of each against our logits. Without
--safetensors only the ONNX half runs, and torch is not needed (CI's
scripts/check-onnx). A NaN anywhere fails the check. With --pixels the ONNX
graph (from `export --pixels`) is fed those pixels instead of the input,
and must give the logits of the input made from them
(scripts/pixels_input.py).

Tolerance: max |ref - ours| <= 1e-4 * max |ours| + 1e-5. Our logits are
float32 sums of up to 9216 products (fc6) taken in a different order than
either reference's; that rounding measures about 1e-6 of the logit scale
(both configs). Structural mistakes land far above 1e-4 but not always by
much: at the initial parameters the LRN barely acts, and giving ONNX the
paper's alpha without the factor size moves alexnet's logits by 2e-3 of
their scale. 1e-4 keeps two orders of magnitude above the rounding and a
factor of 20 below that mistake (tests/export.rs also checks alpha exactly).

Usage: .venv/bin/python scripts/check_export.py --safetensors W --onnx M
         --input X.npy --logits L.npy (--config NAME | --widths 7 ints --classes N)
       python3 scripts/check_export.py --onnx M --pixels P.npy --logits L.npy
       python3 scripts/check_export.py --onnx M --input X.npy --logits L.npy
       python3 scripts/check_export.py --onnx M --pixels P.npy --input X.npy --logits L.npy
Exits 1 when either difference is above the tolerance.
"""
import argparse
import json
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort

RTOL, ATOL = 1e-4, 1e-5


def pytorch_logits(a, x):
    """The reference model's logits for `x`, in float64."""
    import torch
    from safetensors.torch import load_file

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from torch_alexnet import AlexNet, config

    kwargs = config(a.config) if a.config else dict(widths=a.widths, classes=10)
    if a.classes:
        kwargs["classes"] = a.classes
    model = AlexNet(dropout=0, **kwargs).eval()
    model.load_state_dict(load_file(a.safetensors), strict=True)
    with torch.no_grad():
        return model.double()(torch.from_numpy(x).double()).numpy()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--safetensors", help="also compare the PyTorch reference model (needs torch)")
    ap.add_argument("--onnx", required=True)
    ap.add_argument("--input", help="the network's input batch (not needed with --pixels alone)")
    ap.add_argument("--pixels", help="feed the ONNX graph these pixels (export --pixels)")
    ap.add_argument("--logits", required=True)
    ap.add_argument("--config", help="alexnet, alexnet-half or cifar")
    ap.add_argument("--widths", type=int, nargs=7, help="conv1..conv5, fc6, fc7")
    ap.add_argument("--classes", type=int, help="outputs of fc8 (default: the config's; 10 with --widths)")
    a = ap.parse_args()
    if a.safetensors and (a.config is None) == (a.widths is None):
        ap.error("with --safetensors, give exactly one of --config and --widths")
    if a.input is None and (a.pixels is None or a.safetensors):
        ap.error("--input is needed, except for an ONNX --pixels graph checked alone")

    x = np.load(a.input) if a.input else np.zeros(1, np.float32)
    ours = np.load(a.logits)
    if x.dtype != np.float32 or ours.dtype != np.float32:
        sys.exit(f"{a.input}, {a.logits}: expected float32 arrays, got {x.dtype}, {ours.dtype}")

    refs = [("pytorch", pytorch_logits(a, x))] if a.safetensors else []

    onnx.checker.check_model(onnx.load(a.onnx), full_check=True)
    sess = ort.InferenceSession(a.onnx, providers=["CPUExecutionProvider"])
    feed = {"pixels": np.load(a.pixels)} if a.pixels else {"input": x}
    got = sess.run(["logits"], feed)[0]

    scale = float(np.abs(ours).max())
    tol = RTOL * scale + ATOL
    # NaN compares false: a NaN in ours or a reference fails every `diff <= tol`.
    ok = bool(np.isfinite(ours).all())
    if not ok:
        print("our logits hold NaN or infinity")
    # The run's classes, as `export` puts them in the model's metadata.
    meta = sess.get_modelmeta().custom_metadata_map
    missing = {"config", "classes", "names", "preprocess", "input"} - set(meta)
    classes = json.loads(meta.get("classes", "[]"))
    if missing or len(classes) != ours.shape[1]:
        print(f"metadata: missing {sorted(missing)}, {len(classes)} classes for {ours.shape[1]} logits")
        ok = False
    # `input` tells a client whether the graph preprocesses its input itself.
    if meta.get("input") != next(iter(feed)):
        print(f"metadata: input {meta.get('input')!r}, the graph's input is {next(iter(feed))!r}")
        ok = False
    for what, y in refs + [("onnxruntime", got)]:
        if y.shape != ours.shape:
            print(f"{what}: logits shape {y.shape}, ours {ours.shape}")
            ok = False
            continue
        diff = float(np.abs(y.astype(np.float64) - ours).max())
        verdict = "ok" if diff <= tol else "FAIL"
        print(f"{what:12s} max|diff| {diff:.3e}  (max|logit| {scale:.3e}, tol {tol:.1e}) {verdict}")
        ok &= diff <= tol
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
