"""Make photo-sized JPEGs from the CIFAR-10 JPEGs, for the data benchmarks.

CIFAR's 32x32 images are too small to time ImageNet-scale decoding and
resizing, so this tiles real CIFAR photos into 500x375 mosaics (about the
size of an average ImageNet photo) and saves them as JPEG at a quality
chosen so the files average about 110 KB, like ImageNet's. Output layout:
OUT/<class>/<n>.JPEG, class from the mosaic's first tile.

Usage: make_photos.py CIFAR_ROOT OUT COUNT [--quality Q]
"""
import argparse
import pathlib
import random

from PIL import Image

TILE = 48


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cifar", type=pathlib.Path, help="class-folder CIFAR-10 JPEG root")
    ap.add_argument("out", type=pathlib.Path)
    ap.add_argument("count", type=int)
    ap.add_argument("--quality", type=int, default=96)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    files = sorted(p for p in a.cifar.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not files:
        raise SystemExit(f"{a.cifar}: no images")
    rng = random.Random(a.seed)
    # Tiles of 1.5x-upscaled CIFAR photos; the crop cuts 500 x 375 from the grid.
    tile, cols, rows = TILE, 500 // TILE + 1, 375 // TILE + 1
    total = 0
    for n in range(a.count):
        picks = [rng.choice(files) for _ in range(cols * rows)]
        canvas = Image.new("RGB", (tile * cols, tile * rows))
        for k, p in enumerate(picks):
            with Image.open(p) as im:
                im = im.convert("RGB").resize((tile, tile), Image.BICUBIC)
            canvas.paste(im, ((k % cols) * tile, (k // cols) * tile))
        photo = canvas.crop((6, 4, 506, 379))
        cls = picks[0].parent.name
        d = a.out / cls
        d.mkdir(parents=True, exist_ok=True)
        path = d / f"{n:06d}.JPEG"
        photo.save(path, quality=a.quality)
        total += path.stat().st_size
    print(f"{a.count} photos, 500x375, mean {total / a.count / 1024:.0f} KB, in {a.out}")


if __name__ == "__main__":
    main()
