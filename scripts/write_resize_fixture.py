"""Write tests/fixtures/resize_*: a small real photo and Pillow's resize of it.

The input is a 4 x 3 mosaic of CIFAR-10 photos (128 x 96, PNG, so the test
reads exactly these pixels). The reference is what Pillow does for the
paper's preprocessing: resize so the short side is 64 with LANCZOS, then
take the centre 64 x 64 (offset (new - 64) // 2), stored as raw HWC RGB.
tests/data.rs compares the project's resize with it.

Usage: scripts/setup-python && .venv/bin/python scripts/write_resize_fixture.py CIFAR_ROOT
"""
import pathlib
import sys

import PIL
from PIL import Image

SIZE = 64


def main():
    root = pathlib.Path(sys.argv[1])
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    # Every 997th file: a spread over the classes, fixed by the sorted order.
    picks = files[::997][:12]
    canvas = Image.new("RGB", (128, 96))
    for k, p in enumerate(picks):
        with Image.open(p) as im:
            canvas.paste(im.convert("RGB"), ((k % 4) * 32, (k // 4) * 32))
    out = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures"
    canvas.save(out / "resize_input.png")
    w, h = canvas.size
    nw, nh = (SIZE, round(h * SIZE / w)) if w <= h else (round(w * SIZE / h), SIZE)
    small = canvas.resize((nw, nh), Image.LANCZOS)
    x0, y0 = (nw - SIZE) // 2, (nh - SIZE) // 2
    small.crop((x0, y0, x0 + SIZE, y0 + SIZE)).save(out / "resize_pillow_lanczos.png")
    print(f"Pillow {PIL.__version__}: {w}x{h} -> {nw}x{nh} -> centre {SIZE}x{SIZE}")


if __name__ == "__main__":
    main()
