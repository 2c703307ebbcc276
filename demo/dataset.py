"""Writes the demo's scenes as WebDataset shards (`{key}.png`, `{key}.txt`, `{key}.json`) with sizes.json.

Every shard is written to a temporary name and renamed when complete, so an interrupted run never
leaves a shard that looks valid.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .scenes import caption, render, sample_scene


def _add_member(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    info.mtime = 0  # reproducible bytes for a given seed
    tar.addfile(info, io.BytesIO(payload))


def _write_shard(path: Path, samples: list[tuple[str, bytes, str, dict]]) -> None:
    tmp = path.with_suffix(".tar.tmp")
    with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
        for key, png, text, meta in samples:
            _add_member(tar, f"{key}.png", png)
            _add_member(tar, f"{key}.txt", text.encode("utf-8"))
            _add_member(tar, f"{key}.json", json.dumps(meta).encode("utf-8"))
    os.replace(tmp, path)


def write_split(out_dir: Path, split: str, num_samples: int, shard_size: int, seed: int,
                held_out: bool, image_size: int) -> str:
    """Write `num_samples` scenes; returns the brace pattern of the shards (for --train-data)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    num_shards = (num_samples + shard_size - 1) // shard_size
    sizes = {}
    with tqdm(total=num_samples, desc=f"writing {split} shards", unit="img", leave=False) as bar:
        for shard in range(num_shards):
            count = min(shard_size, num_samples - shard * shard_size)
            samples = []
            for i in range(count):
                scene = sample_scene(rng, held_out)
                buffer = io.BytesIO()
                render(rng, scene, image_size).save(buffer, format="PNG")
                meta = dataclasses.asdict(scene)
                samples.append((f"{split}{shard:04d}{i:05d}", buffer.getvalue(), caption(rng, scene), meta))
            name = f"{split}-{shard:06d}.tar"
            _write_shard(out_dir / name, samples)
            sizes[name] = count
            bar.update(count)
    existing = json.loads((out_dir / "sizes.json").read_text()) if (out_dir / "sizes.json").exists() else {}
    existing.update(sizes)
    tmp = out_dir / "sizes.json.tmp"
    tmp.write_text(json.dumps(existing, indent=1))
    os.replace(tmp, out_dir / "sizes.json")
    return str(out_dir / f"{split}-{{{0:06d}..{num_shards - 1:06d}}}.tar")

