"""scripts/packed_store.py: a store that `prepare` wrote, read in Python with
numpy (src/data/packed.rs has the format): meta.json, each image's stored
bytes and label, and the mean image. Shared by the scripts that set ours
beside Pillow and PyTorch (bench_data.py, recipe_torch.py, train_torch.py).
"""
import json
import os

import numpy as np

# Per image: offset u64, length u32, label u32, CRC-32 u32, reserved u32.
ENTRY = np.dtype([("offset", "<u8"), ("length", "<u4"), ("label", "<u4"),
                  ("crc", "<u4"), ("reserved", "<u4")])


class PackedStore:
    """meta (meta.json), index (one ENTRY per image), size, mean (size x
    size x 3 float32, HWC, 0..255); the data file is memory-mapped."""

    def __init__(self, folder):
        folder = os.fspath(folder)
        with open(os.path.join(folder, "meta.json")) as f:
            self.meta = json.load(f)
        gen, self.size = self.meta["generation"], self.meta["size"]
        self.index = np.fromfile(os.path.join(folder, f"index-{gen}.bin"), dtype=ENTRY)
        self.data = np.memmap(os.path.join(folder, f"data-{gen}.bin"), dtype=np.uint8, mode="r")
        mean = np.fromfile(os.path.join(folder, f"mean-{gen}.bin"), dtype="<f4")
        self.mean = mean.reshape(self.size, self.size, 3)

    def __len__(self):
        return len(self.index)

    def blob(self, i):
        """Image i as stored: JPEG bytes, or raw HWC RGB."""
        e = self.index[i]
        return self.data[e["offset"]:e["offset"] + e["length"]].tobytes()
