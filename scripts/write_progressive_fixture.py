"""Write tests/fixtures/progressive.jpg: a progressive JPEG (several scans).

Web photos are often progressive: their scans are separated by tables, so
the check for a whole JPEG must walk from scan to scan. The picture is
tests/fixtures/resize_input.png (a mosaic of CIFAR-10 photos) saved by
Pillow as a progressive JPEG. tests/data.rs decodes it whole and cut short.

Usage: scripts/setup-python && .venv/bin/python scripts/write_progressive_fixture.py
"""
import pathlib

import PIL
from PIL import Image


def main():
    fixtures = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures"
    with Image.open(fixtures / "resize_input.png") as im:
        im.convert("RGB").save(fixtures / "progressive.jpg", quality=90, progressive=True)
    data = (fixtures / "progressive.jpg").read_bytes()
    scans = data.count(bytes([0xFF, 0xDA]))
    print(f"Pillow {PIL.__version__}: {len(data)} bytes, {scans} scans")


if __name__ == "__main__":
    main()
