"""The data pipelines accept any callables, as 3.3 does (OpenCLIP's own test_wds.py usage).

3.3's WebDataset test passes an identity image transform (PIL images come out) and a tokenizer that
returns a list of strings; the loader then yields batches whose items collate like 3.3's (tensors
stacked, anything else kept as a list). The counts below mimic that test: resampled shards with
one source, two sources, two sources with equal weights and with upsampling.
"""

from __future__ import annotations

import collections
import io
import tarfile

import pytest
import torch
from PIL import Image

from open_clip_train.data import get_csv_dataset, get_synthetic_dataset, get_wds_dataset
from open_clip_train.main import random_seed
from open_clip_train.params import parse_args

NUM_SAMPLES = 3000
RTOL = 0.2


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _png(color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), color).save(buf, format="png")
    return buf.getvalue()


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    """test_data_000.tar: captions 000_0..000_9; test_data_001.tar: 001_0..001_4 (3.3's layout)."""
    root = tmp_path_factory.mktemp("wds")
    for idx, count in ((0, 10), (1, 5)):
        with tarfile.open(root / f"test_data_{idx:03d}.tar", "w") as tar:
            for i in range(count):
                _add(tar, f"{i}.png", _png((idx * 100, i * 20, 0)))
                _add(tar, f"{i}.txt", f"{idx:03d}_{i}".encode())
    return str(root)


def identity(image):
    return image


def list_tokenizer(text):
    return [text.strip()]


def _args(train_data: str, upsampling: str | None = None, batch_size: int = 1):
    args = parse_args([])
    args.train_data = train_data
    args.train_num_samples = NUM_SAMPLES
    args.dataset_resampled = True
    args.train_data_upsampling_factors = upsampling
    args.seed = 0
    args.workers = 1
    args.world_size = 1
    args.batch_size = batch_size
    random_seed(0)
    return args


def _caption_counts(args) -> collections.Counter:
    dataset = get_wds_dataset(args, identity, is_train=True, tokenizer=list_tokenizer)
    counts: collections.Counter = collections.Counter()
    for batch in dataset.dataloader:
        images, texts = batch[0], batch[1]
        assert isinstance(images, list) and all(isinstance(im, Image.Image) for im in images)
        assert isinstance(texts, list) and all(isinstance(t, str) for t in texts)
        counts.update(texts)
    assert sum(counts.values()) == NUM_SAMPLES
    return counts


@pytest.mark.timeout(240)
def test_single_source(shards):
    counts = _caption_counts(_args(f"{shards}/test_data_000.tar"))
    assert set(counts) == {f"000_{i}" for i in range(10)}
    for key, count in counts.items():
        assert count == pytest.approx(NUM_SAMPLES / 10, RTOL), key


@pytest.mark.timeout(240)
def test_two_sources(shards):
    counts = _caption_counts(_args(f"{shards}/test_data_{{000..001}}.tar"))
    assert len(counts) == 15
    for key, count in counts.items():
        assert count == pytest.approx(NUM_SAMPLES / 15, RTOL), key


@pytest.mark.timeout(240)
def test_two_sources_same_weights(shards):
    counts = _caption_counts(_args(f"{shards}/test_data_000.tar::{shards}/test_data_001.tar", "1::1"))
    for key, count in counts.items():
        assert count == pytest.approx(NUM_SAMPLES / 15, RTOL), key


@pytest.mark.timeout(240)
def test_two_sources_with_upsampling(shards):
    counts = _caption_counts(_args(f"{shards}/test_data_000.tar::{shards}/test_data_001.tar", "1::2"))
    for key, count in counts.items():
        expected = NUM_SAMPLES / 20 if key.startswith("000") else NUM_SAMPLES / 10
        assert count == pytest.approx(expected, RTOL), key


@pytest.mark.timeout(120)
def test_wds_batches_mix_tensors_and_lists(shards):
    """A tensor-returning transform is stacked while string captions stay a list; the dataset size
    is 3.3's (train_num_samples, batches of batch_size)."""
    args = _args(f"{shards}/test_data_000.tar", batch_size=4)
    args.train_num_samples = 40
    dataset = get_wds_dataset(args, lambda im: torch.zeros(3, 2, 2), is_train=True, tokenizer=list_tokenizer)
    assert (dataset.dataloader.num_samples, dataset.dataloader.num_batches) == (40, 10)
    images, texts = next(iter(dataset.dataloader))
    assert images.shape == (4, 3, 2, 2) and isinstance(texts, list) and len(texts) == 4


@pytest.mark.timeout(120)
def test_csv_accepts_any_callables(tmp_path):
    """CSV rows go through the same callables; 3.3's CSV tokenizer call takes a one-element list."""
    rows = ["filepath\ttitle"]
    for i in range(6):
        path = tmp_path / f"{i}.png"
        path.write_bytes(_png((i * 40, 0, 0)))
        rows.append(f"{path}\tcaption {i}")
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
    args = _args(str(tmp_path / "train.csv"), batch_size=3)
    args.train_num_samples = None
    args.csv_separator, args.csv_img_key, args.csv_caption_key = "\t", "filepath", "title"
    seen = []

    def tokenizer(texts):
        seen.append(texts)
        return [t.upper() for t in texts]

    dataset = get_csv_dataset(args, identity, is_train=True, tokenizer=tokenizer)
    captions = []
    for images, texts in dataset.dataloader:
        assert isinstance(images, list) and all(isinstance(im, Image.Image) for im in images)
        captions += texts
    assert sorted(captions) == [f"CAPTION {i}" for i in range(6)]
    assert all(isinstance(t, list) and len(t) == 1 for t in seen)


def test_synthetic_tokenizer_gets_the_caption_string():
    args = _args("", batch_size=2)
    args.train_num_samples = 4
    args.dataset_type = "synthetic"
    dataset = get_synthetic_dataset(args, identity, is_train=True, tokenizer=list_tokenizer)
    images, texts = next(iter(dataset.dataloader))
    assert texts == ["Dummy caption", "Dummy caption"] and isinstance(images, list)
