"""Throughput of the eval image transform (224, bicubic, shortest) on the fixture photographs.

Prints images/s for decode + transform and for transform only (images decoded beforehand), and
the same for a plain torchvision composition of the same steps, so the cost of our input check
shows as a ratio measured in the same run.

    .venv/bin/python benchmarks/preprocess.py [--repeats 5] [--threads 1]
"""

import argparse
import pathlib
import time

import torch
from PIL import Image
from torchvision import transforms as T

from open_clip.transform import image_transform

IMAGES = pathlib.Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "images"


def _plain_torchvision(mean, std):
    """The same steps as our val transform, without the input check."""
    return T.Compose([
        T.Resize(224, interpolation=T.InterpolationMode.BICUBIC),
        T.CenterCrop(224),
        T.Lambda(lambda im: im.convert("RGB")),
        T.ToTensor(),
        T.Normalize(mean, std),
    ])


def _rate(fn, items, repeats):
    fn(items[0])  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for item in items:
            fn(item)
        best = min(best, time.perf_counter() - start)
    return len(items) / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed passes; the best one is reported")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    paths = sorted(p for p in IMAGES.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    decoded = []
    for path in paths:
        img = Image.open(path)
        img.load()
        decoded.append(img)

    ours = image_transform(224, is_train=False, interpolation="bicubic", resize_mode="shortest")
    normalize = ours.transforms[-1]
    plain = _plain_torchvision(normalize.mean, normalize.std)
    for img in decoded:  # both compositions agree bit for bit before we time them
        assert torch.equal(ours(img), plain(img))

    print(f"{len(paths)} images ({', '.join(p.name for p in paths)}), torch threads={args.threads}")
    rows = [
        ("ours, decode + transform", lambda p: ours(Image.open(p)), paths),
        ("ours, transform only", ours, decoded),
        ("plain torchvision, decode + transform", lambda p: plain(Image.open(p)), paths),
        ("plain torchvision, transform only", plain, decoded),
    ]
    rates = {name: _rate(fn, items, args.repeats) for name, fn, items in rows}
    for name, rate in rates.items():
        print(f"{name:40s} {rate:8.1f} images/s")
    ratio = rates["ours, transform only"] / rates["plain torchvision, transform only"]
    print(f"ours / plain torchvision (transform only): {ratio:.3f}")


if __name__ == "__main__":
    main()
