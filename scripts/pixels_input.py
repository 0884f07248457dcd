#!/usr/bin/env python3
"""scripts/pixels_input.py: owns a numpy reading of the preprocessing a run
trained with, for the check of `export --pixels` (scripts/check-onnx).

Writes N random centre crops of pixels (RGB 0 to 255, NCHW float32) and the
network inputs the loader would make of them at test time, by the recipe in
docs/data.md, read from the checkpoint's own header, not from our code:
subtract the mean image's centre crop (offset (S - crop) / 2; the
checkpoint's `data.mean_image`, [S, S, 3] float32 HWC) or the channel
means, divide by the channel stds where the run did, and pad with zeros to
the network's input, pad // 2 before and the rest after. `alexnet-cuda
predict --input-npy` runs the inputs; onnxruntime runs the pixels through
the exported graph; scripts/check_export.py --pixels compares the two.

Usage: python3 scripts/pixels_input.py CHECKPOINT N PIXELS.npy INPUT.npy
"""
import json
import struct
import sys

import numpy as np


def read_checkpoint(path):
    """The run state (JSON) and the mean image (or None) of a checkpoint."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        state = json.loads(header["__metadata__"]["state"])
        t = header.get("data.mean_image")
        if t is None:
            return state, None
        assert t["dtype"] == "F32", t
        start, end = t["data_offsets"]
        f.seek(8 + n + start)
        data = np.frombuffer(f.read(end - start), dtype="<f4")
        return state, data.reshape(t["shape"])


def main():
    ckpt, n, pixels_path, input_path = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    state, mean_image = read_checkpoint(ckpt)
    p = state["preprocess"]
    s, crop, pad = p["image_size"], p["crop"], p["pad"]
    rng = np.random.default_rng(2012)
    pixels = rng.uniform(0, 255, (n, 3, crop, crop)).astype(np.float32)
    if p["mean_image"]:
        o = (s - crop) // 2
        mean = mean_image[o : o + crop, o : o + crop, :].transpose(2, 0, 1)[None]
    else:
        mean = np.array(p["mean"], dtype=np.float32).reshape(1, 3, 1, 1)
    x = pixels.astype(np.float64) - mean
    if p["std"] is not None:
        x /= np.array(p["std"], dtype=np.float64).reshape(1, 3, 1, 1)
    before, after = pad // 2, pad - pad // 2
    x = np.pad(x, ((0, 0), (0, 0), (before, after), (before, after)))
    np.save(pixels_path, pixels)
    np.save(input_path, x.astype(np.float32))


if __name__ == "__main__":
    main()
