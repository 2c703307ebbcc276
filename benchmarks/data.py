"""Data-loading throughput: samples/s of decode + augment + tokenize for WebDataset and CSV loaders
with 0, 1 and 2 workers, on photo-like JPEGs cut from tests/fixtures/images.

Uses open_clip's real train transform (224 px) and tokenizer when importable, else a torchvision
stand-in (and says so). Prints figures; asserts nothing.

    python benchmarks/data.py [--samples 384] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import io
import os
import pathlib
import random
import sys
import tempfile
import time

# Running a script puts its folder first on sys.path, where sibling scripts (e.g. a tokenize.py)
# would shadow standard-library modules; we import nothing from this folder.
sys.path[:] = [p for p in sys.path if pathlib.Path(p or ".").resolve() != pathlib.Path(__file__).resolve().parent]

import torch  # noqa: E402
from PIL import Image  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
FIXTURE_IMAGES = ROOT / "tests" / "fixtures" / "images"


def photo_jpegs(n: int, seed: int = 0) -> list[bytes]:
    """``n`` JPEGs (~400x300, quality 90): random crops/resizes of the fixture photos."""
    rng = random.Random(seed)
    sources = [Image.open(p).convert("RGB") for p in sorted(FIXTURE_IMAGES.glob("*")) if p.suffix in (".png", ".jpg")]
    out = []
    for _ in range(n):
        src = rng.choice(sources)
        w, h = src.size
        cw, ch = rng.randint(w // 2, w), rng.randint(h // 2, h)
        x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
        img = src.crop((x, y, x + cw, y + ch)).resize((rng.randint(320, 480), rng.randint(240, 360)))
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def real_or_stand_in() -> tuple:
    try:
        from open_clip.tokenizer import tokenize
        from open_clip.transform import image_transform

        return image_transform(224, is_train=True), tokenize, "open_clip image_transform(224, is_train=True) + tokenize"
    except Exception as exc:  # not written yet / broken: say so and measure with a stand-in
        from torchvision import transforms as T

        tf = T.Compose([T.RandomResizedCrop(224, scale=(0.9, 1.0)), T.ToTensor(),
                        T.Normalize((0.48, 0.46, 0.41), (0.27, 0.26, 0.28))])

        def tok(texts):
            return torch.tensor([[hash(w) % 49408 for w in t.split()][:77] + [0] * (77 - len(t.split()))
                                 for t in texts])

        return tf, tok, f"STAND-IN torchvision transform + hash tokenizer (open_clip unavailable: {exc!r})"


def write_data(root: str, jpegs: list[bytes]) -> tuple[list[str], str]:
    import webdataset as wds

    captions = (ROOT / "benchmarks" / "data" / "captions.txt").read_text().splitlines() or ["a photo"]
    pattern = os.path.join(root, "bench-%04d.tar")
    rows = ["filepath\ttitle"]
    with wds.ShardWriter(pattern, maxcount=max(1, len(jpegs) // 8), verbose=0) as sink:
        for i, data in enumerate(jpegs):
            cap = captions[i % len(captions)].replace("\t", " ")
            sink.write({"__key__": f"{i:06d}", "jpg": data, "txt": cap})
            path = os.path.join(root, f"{i:06d}.jpg")
            with open(path, "wb") as f:
                f.write(data)
            rows.append(f"{path}\t{cap}")
    csv = os.path.join(root, "bench.tsv")
    with open(csv, "w") as f:
        f.write("\n".join(rows) + "\n")
    return sorted(str(p) for p in pathlib.Path(root).glob("bench-*.tar")), csv


def measure(info) -> float:
    info.set_epoch(0)
    start, n = time.perf_counter(), 0
    for images, _ in info.dataloader:
        n += len(images)
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=384)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(1)
    from open_clip_train.data import build_csv_loader, build_wds_loader

    transform, tokenizer, what = real_or_stand_in()
    print(f"pipeline: decode JPEG + {what}")
    print(f"{args.samples} photo-like JPEGs (~400x300), batch {args.batch_size}; "
          f"torch threads 1; cpus {os.cpu_count()}")
    with tempfile.TemporaryDirectory() as root:
        shards, csv = write_data(root, photo_jpegs(args.samples))
        for workers in (0, 1, 2):
            wds_info = build_wds_loader(
                shards, transform, is_train=True, batch_size=args.batch_size, workers=workers,
                tokenizer=tokenizer, num_samples=args.samples, sample_shuffle=(256, 64),
            )
            csv_info = build_csv_loader(csv, transform, tokenizer=tokenizer, batch_size=args.batch_size,
                                        workers=workers, is_train=True)
            print(f"workers={workers}: webdataset {measure(wds_info):7.1f} samples/s   "
                  f"csv {measure(csv_info):7.1f} samples/s")


if __name__ == "__main__":
    main()
