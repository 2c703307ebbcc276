"""Shared builders for the data tests: real JPEG/PNG files, WebDataset shards with planted corruptions,
a fake tokenizer that encodes the sample id, and small transforms. (No tests in this module.)"""

from __future__ import annotations

import io
import os
import re
import tarfile
from types import SimpleNamespace

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T

# Corruption kinds the shard builder can plant (value = what the sample gets).
CORRUPT_JPEG = "corrupt_jpeg"  # JPEG bytes cut in half -> image_decode_error
GARBAGE_IMAGE = "garbage_image"  # random bytes named .jpg -> image_decode_error
ZERO_IMAGE = "zero_image"  # zero-byte .jpg -> empty_member
ZERO_CAPTION = "zero_caption"  # zero-byte .txt -> empty_member
NO_CAPTION = "no_caption"  # no .txt -> missing_caption
NO_IMAGE = "no_image"  # no image member -> missing_image
BAD_UTF8 = "bad_utf8"  # caption bytes not UTF-8 -> caption_encoding_error

EXPECTED_KIND = {
    CORRUPT_JPEG: "image_decode_error",
    GARBAGE_IMAGE: "image_decode_error",
    ZERO_IMAGE: "empty_member",
    ZERO_CAPTION: "empty_member",
    NO_CAPTION: "missing_caption",
    NO_IMAGE: "missing_image",
    BAD_UTF8: "caption_encoding_error",
}


def image_bytes(sample_id: int, fmt: str = "JPEG", size: int = 24) -> bytes:
    """A small, photo-like (smooth gradient + noise) image encoded as ``fmt``."""
    rng = np.random.default_rng(sample_id)
    yy, xx = np.mgrid[0:size, 0:size]
    base = np.stack([(xx * 7 + sample_id) % 256, (yy * 5 + 3 * sample_id) % 256, (xx + yy) * 4 % 256], -1)
    arr = np.clip(base + rng.integers(-20, 20, base.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def caption_for(sample_id: int) -> str:
    return f"a photo number {sample_id}"


def fake_tokenizer(texts: str | list[str]) -> torch.Tensor:
    """Encodes each caption as ``[sample id, length]`` (LongTensor (N, 2)) so tests can read ids back.

    Takes a caption or a list of them, like the real tokenizers (WebDataset and synthetic data pass
    the caption string, CSV a one-element list, as in 3.3)."""
    if isinstance(texts, str):
        texts = [texts]
    rows = []
    for t in texts:
        m = re.search(r"number (\d+)", t)
        rows.append([int(m.group(1)) if m else -1, len(t)])
    return torch.tensor(rows, dtype=torch.long)


def plain_transform(size: int = 16) -> T.Compose:
    return T.Compose([T.Resize((size, size)), T.ToTensor()])


def random_transform(size: int = 16) -> T.Compose:
    """Random crop + flip + torch noise: any change of per-sample seeding changes the output."""
    return T.Compose(
        [
            T.RandomResizedCrop(size, scale=(0.3, 1.0)),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Lambda(lambda x: x + 0.01 * torch.rand_like(x)),
        ]
    )


def sample_id(shard: int, index: int) -> int:
    return shard * 1000 + index


def write_shards(
    root: str,
    n_shards: int,
    per_shard: int,
    corruptions: dict[int, str] | None = None,
    fmt_for=lambda sid: "jpg",
    name: str = "shard",
    first_shard: int = 0,
) -> list[str]:
    """Write ``n_shards`` tar shards of ``per_shard`` samples with ``webdataset.ShardWriter``.

    ``corruptions`` maps a sample id to a corruption kind above; sample ids start at shard
    ``first_shard``. Returns the shard paths.
    """
    import webdataset as wds

    corruptions = corruptions or {}
    os.makedirs(root, exist_ok=True)
    pattern = os.path.join(root, f"{name}-%06d.tar")
    with wds.ShardWriter(pattern, maxcount=per_shard, verbose=0) as sink:
        for shard in range(n_shards):
            for i in range(per_shard):
                sid = sample_id(first_shard + shard, i)
                ext = fmt_for(sid)
                sample = {
                    "__key__": f"s{sid:06d}",
                    ext: image_bytes(sid, "PNG" if ext == "png" else "JPEG"),
                    "txt": caption_for(sid).encode(),
                }
                kind = corruptions.get(sid)
                if kind == CORRUPT_JPEG:
                    sample[ext] = sample[ext][: len(sample[ext]) // 2]
                elif kind == GARBAGE_IMAGE:
                    sample[ext] = bytes(np.random.default_rng(sid).integers(0, 256, 300, dtype=np.uint8))
                elif kind == ZERO_IMAGE:
                    sample[ext] = b""
                elif kind == ZERO_CAPTION:
                    sample["txt"] = b""
                elif kind == NO_CAPTION:
                    del sample["txt"]
                elif kind == NO_IMAGE:
                    del sample[ext]
                elif kind == BAD_UTF8:
                    sample["txt"] = b"\xff\xfe caption \xc3\x28"
                sink.write(sample)
    return [pattern % i for i in range(n_shards)]


def truncate_in_member(path: str, member_name: str) -> None:
    """Cut a tar file in the middle of the data of ``member_name`` (everything from there is lost)."""
    with tarfile.open(path) as tf:
        info = tf.getmember(member_name)
        cut = info.offset_data + max(1, info.size // 2)
    with open(path, "r+b") as f:
        f.truncate(cut)


def wds_args(**kw) -> SimpleNamespace:
    """An args namespace with the fields the data adapters read (3.3 defaults)."""
    base = dict(
        train_data=None, val_data=None, train_num_samples=None, val_num_samples=None, dataset_type="auto",
        dataset_resampled=False, train_data_upsampling_factors=None, csv_separator="\t", csv_img_key="filepath",
        csv_caption_key="title", imagenet_val=None, imagenet_v2=None, workers=0, batch_size=4, seed=0,
        rank=0, world_size=1, distributed=False, data_max_bad_fraction=0.1,
    )
    base.update(kw)
    return SimpleNamespace(**base)


def batch_ids(texts: torch.Tensor) -> list[int]:
    return texts[:, 0].tolist()


def run_epochs(info, epochs, start_epoch=0, stop_after=None):
    """Iterate ``info`` over epochs; returns (ids, images, state or None). Stops after ``stop_after`` batches."""
    ids, images, seen = [], [], 0
    for epoch in range(start_epoch, epochs):
        info.set_epoch(epoch)
        for imgs, texts in info.dataloader:
            ids.extend(batch_ids(texts))
            images.append(imgs)
            seen += 1
            if stop_after is not None and seen == stop_after:
                return ids, images, info.state_dict()
    return ids, images, None
