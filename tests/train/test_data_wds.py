"""WebDataset loading: sizes, URL expansion, planted corruptions (skipped and counted, never a hang),
worker/shard mismatches, dying workers, pipe:/fsspec URLs, upsampling and the shard split."""

from __future__ import annotations

import io
import json
import logging
import os
import random

import fsspec
import pytest
import torch

try:
    from .test_data_helpers import (
        BAD_UTF8,
        CORRUPT_JPEG,
        EXPECTED_KIND,
        GARBAGE_IMAGE,
        NO_CAPTION,
        NO_IMAGE,
        ZERO_CAPTION,
        ZERO_IMAGE,
        fake_tokenizer,
        image_bytes,
        plain_transform,
        random_transform,
        run_epochs,
        sample_id,
        truncate_in_member,
        wds_args,
        write_shards,
    )
except ImportError:
    from test_data_helpers import (
        BAD_UTF8,
        CORRUPT_JPEG,
        EXPECTED_KIND,
        GARBAGE_IMAGE,
        NO_CAPTION,
        NO_IMAGE,
        ZERO_CAPTION,
        ZERO_IMAGE,
        fake_tokenizer,
        image_bytes,
        plain_transform,
        random_transform,
        run_epochs,
        sample_id,
        truncate_in_member,
        wds_args,
        write_shards,
    )

from open_clip_train.data import (
    DataQualityError,
    buffered_shuffle,
    build_wds_loader,
    expand_urls,
    get_data,
    get_dataset_size,
    get_wds_dataset,
)
from open_clip_train.data.webdataset_pipeline import _train_sizes

PLANTED = {
    3: CORRUPT_JPEG,
    5: GARBAGE_IMAGE,
    1001: ZERO_IMAGE,
    1002: ZERO_CAPTION,
    1004: NO_CAPTION,
    2000: NO_IMAGE,
    2007: BAD_UTF8,
}
N_SHARDS, PER_SHARD = 4, 10


@pytest.fixture(scope="module")
def bad_shards(tmp_path_factory):
    """4 shards x 10 samples with the planted corruptions; shard 3 truncated inside sample 3006's image,
    plus a zero-byte shard and a missing one."""
    root = str(tmp_path_factory.mktemp("bad_shards"))
    shards = write_shards(root, N_SHARDS, PER_SHARD, PLANTED, fmt_for=lambda sid: "png" if sid % 3 == 0 else "jpg")
    ext = "png" if 3006 % 3 == 0 else "jpg"
    truncate_in_member(shards[3], f"s003006.{ext}")
    empty = os.path.join(root, "empty.tar")
    open(empty, "wb").close()
    return shards + [empty, os.path.join(root, "missing.tar")]


def _expected_val(planted: dict, lost_from: int) -> tuple[list[int], dict]:
    """Naive reference: every sample id minus planted ones and those lost after the truncation."""
    ids = [sample_id(s, i) for s in range(N_SHARDS) for i in range(PER_SHARD)]
    good = [i for i in ids if i not in planted and i < lost_from]
    counts: dict[str, int] = {}
    for kind in planted.values():
        counts[EXPECTED_KIND[kind]] = counts.get(EXPECTED_KIND[kind], 0) + 1
    counts["tar_read_error"] = 3  # truncated shard, zero-byte shard, missing shard
    return good, counts


@pytest.mark.timeout(60)
@pytest.mark.parametrize("workers", [0, 2])
def test_planted_corruptions_are_skipped_and_counted(bad_shards, workers):
    info = build_wds_loader(
        bad_shards, plain_transform(), is_train=False, batch_size=4, workers=workers, tokenizer=fake_tokenizer,
        max_bad_fraction=0.5,
    )
    ids, images, _ = run_epochs(info, 1)
    good, counts = _expected_val(PLANTED, lost_from=3006)
    assert sorted(ids) == good
    assert info.bad_sample_counts() == counts
    assert all(img.shape[1:] == (3, 16, 16) for img in images)


@pytest.mark.timeout(60)
def test_bad_fraction_over_limit_stops_at_end_of_epoch(bad_shards):
    info = build_wds_loader(
        bad_shards, plain_transform(), is_train=False, batch_size=4, workers=0, tokenizer=fake_tokenizer,
        max_bad_fraction=0.1,
    )
    with pytest.raises(DataQualityError, match="data_max_bad_fraction=0.1"):
        run_epochs(info, 1)


@pytest.mark.timeout(60)
def test_train_epoch_completes_with_default_buffers(bad_shards):
    info = build_wds_loader(
        bad_shards[:4], random_transform(), is_train=True, batch_size=4, workers=2, tokenizer=fake_tokenizer,
        num_samples=40, max_bad_fraction=0.5,
    )
    _, images, _ = run_epochs(info, 1)
    assert len(images) == info.dataloader.num_batches == 10
    counts = info.bad_sample_counts()
    assert set(counts) <= set(EXPECTED_KIND.values()) | {"tar_read_error"}
    assert counts["image_decode_error"] >= 1


@pytest.mark.timeout(60)
@pytest.mark.parametrize("resampled", [False, True])
def test_all_bad_shards_raise_instead_of_hanging(tmp_path, resampled):
    shards = write_shards(str(tmp_path), 2, 5, {sample_id(s, i): CORRUPT_JPEG for s in range(2) for i in range(5)})
    info = build_wds_loader(
        shards, plain_transform(), is_train=True, batch_size=2, workers=2, tokenizer=fake_tokenizer,
        num_samples=10, resampled=resampled, sample_shuffle=(4, 2),
    )
    with pytest.raises(DataQualityError, match="No valid sample"):
        run_epochs(info, 1)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("resampled", [False, True])
def test_unreadable_shards_raise_instead_of_hanging(tmp_path, resampled):
    missing = [str(tmp_path / f"nope-{i}.tar") for i in range(2)]
    info = build_wds_loader(
        missing, plain_transform(), is_train=True, batch_size=2, workers=2, tokenizer=fake_tokenizer,
        num_samples=10, resampled=resampled,
    )
    with pytest.raises(DataQualityError, match="readable sample"):
        run_epochs(info, 1)


@pytest.fixture(scope="module")
def good_shards(tmp_path_factory):
    return write_shards(str(tmp_path_factory.mktemp("good_shards")), 3, 6)


@pytest.mark.timeout(60)
def test_more_workers_than_shards_is_reduced(good_shards, caplog):
    with caplog.at_level(logging.WARNING):
        info = build_wds_loader(
            good_shards, plain_transform(), is_train=True, batch_size=2, workers=5, tokenizer=fake_tokenizer,
            num_samples=18,
        )
    assert info.dataloader.num_workers == 3
    assert "Reducing dataloader workers from 5 to 3" in caplog.text
    _, images, _ = run_epochs(info, 1)
    assert len(images) == info.dataloader.num_batches == 9


def test_fewer_shards_than_processes_is_an_error(good_shards):
    with pytest.raises(ValueError, match="3 shards cannot be split over 4 processes"):
        build_wds_loader(good_shards, None, is_train=True, batch_size=2, workers=1, num_samples=18, world_size=4)


def _die_on_sample_4(img):
    import torch.utils.data

    if torch.utils.data.get_worker_info() is not None and img.getpixel((0, 0)) == _die_on_sample_4.pixel:
        os._exit(3)
    return plain_transform()(img)


@pytest.mark.timeout(60)
def test_dead_worker_fails_fast(good_shards):
    from PIL import Image

    _die_on_sample_4.pixel = Image.open(io.BytesIO(image_bytes(4))).convert("RGB").getpixel((0, 0))
    info = build_wds_loader(
        good_shards, _die_on_sample_4, is_train=False, batch_size=2, workers=2, tokenizer=fake_tokenizer,
    )
    with pytest.raises(RuntimeError, match="(?i)worker"):
        run_epochs(info, 1)


@pytest.mark.timeout(60)
def test_failing_tokenizer_counts_transform_errors(good_shards):
    def tok(texts):
        out = fake_tokenizer(texts)
        if out[0, 0] == 1002:
            raise ValueError("cannot tokenize")
        return out

    info = build_wds_loader(
        good_shards, plain_transform(), is_train=False, batch_size=4, workers=0, tokenizer=tok, max_bad_fraction=0.5
    )
    ids, _, _ = run_epochs(info, 1)
    assert 1002 not in ids and len(ids) == 17
    assert info.bad_sample_counts() == {"transform_error": 1}


@pytest.mark.timeout(60)
def test_pipe_and_fsspec_urls(good_shards):
    pipe_urls = [f"pipe:cat {s}" for s in good_shards]
    info = build_wds_loader(pipe_urls, plain_transform(), is_train=False, batch_size=4, workers=2,
                            tokenizer=fake_tokenizer)
    ids, _, _ = run_epochs(info, 1)
    assert sorted(ids) == [sample_id(s, i) for s in range(3) for i in range(6)]

    fs = fsspec.filesystem("memory")
    for i, shard in enumerate(good_shards):
        with open(shard, "rb") as src, fs.open(f"/wds-test/shard-{i}.tar", "wb") as dst:
            dst.write(src.read())
    fs.pipe("/wds-test/sizes.json", json.dumps({f"shard-{i}.tar": 6 for i in range(3)}).encode())
    urls = "memory://wds-test/shard-{0..2}.tar"
    assert get_dataset_size(urls) == (18, 3)
    info = build_wds_loader(urls, plain_transform(), is_train=True, batch_size=3, workers=0, tokenizer=fake_tokenizer,
                            sample_shuffle=(8, 2))
    ids, _, _ = run_epochs(info, 1)
    assert info.dataloader.num_samples == len(ids) == 18
    assert set(ids) <= {sample_id(s, i) for s in range(3) for i in range(6)}


def test_get_dataset_size(tmp_path):
    d = tmp_path / "a"
    d.mkdir()
    names = [f"s-{i:03d}.tar" for i in range(12)]
    (d / "sizes.json").write_text(json.dumps({n: i + 1 for i, n in enumerate(names)}))
    assert get_dataset_size(f"{d}/s-{{000..009}}.tar") == (sum(range(1, 11)), 10)
    assert get_dataset_size(f"{d}/s-000.tar::{d}/s-{{010..011}}.tar") == (1 + 11 + 12, 3)
    with pytest.raises(KeyError):
        get_dataset_size(f"{d}/s-{{000..012}}.tar")
    e = tmp_path / "b"
    e.mkdir()
    (e / "__len__").write_text("1234")
    assert get_dataset_size(f"{e}/x-{{0..99}}.tar") == (1234, 100)
    assert get_dataset_size(f"{tmp_path}/none-{{a,b}}-{{0..9}}.tar") == (None, 20)
    assert get_dataset_size(f"{tmp_path}/one.tar")[1] == 1


def test_expand_urls_weights():
    urls, weights = expand_urls("/p/a_{0..1}.tar::/p/b.tar", "1::2")
    assert urls == ["/p/a_0.tar", "/p/a_1.tar", "/p/b.tar"]
    assert weights == [1.0, 1.0, 2.0]
    assert expand_urls("/p/a_{0..1}.tar::/p/b.tar") == (urls, None)
    with pytest.raises(AssertionError, match=r"number of data components \(2\) and weights\(3\)"):
        expand_urls("/p/a.tar::/p/b.tar", "1::2::3")


def test_train_sizing_matches_3_3():
    assert _train_sizes(10000, 64, 2, 4, floor=False) == (80, 10240, 20)
    assert _train_sizes(10000, 64, 1, 0, floor=False) == (157, 10048, 157)
    assert _train_sizes(10000, 64, 2, 4, floor=True) == (76, 9728, 19)
    urls = [f"/nowhere/s-{i}.tar" for i in range(8)]  # nothing is read while building
    info = build_wds_loader(urls, None, is_train=True, batch_size=64, workers=4, num_samples=10000, world_size=2)
    assert (info.dataloader.num_batches, info.dataloader.num_samples) == (80, 10240)
    val = build_wds_loader(urls, None, is_train=False, batch_size=64, workers=4, num_samples=1000)
    assert (val.dataloader.num_batches, val.dataloader.num_samples) == (16, 1000)


def test_train_size_is_required(tmp_path):
    with pytest.raises(RuntimeError, match="^Currently, the number of dataset samples must be specified"):
        build_wds_loader(f"{tmp_path}/x.tar", None, is_train=True, batch_size=4, workers=0)


@pytest.mark.timeout(60)
def test_upsampling_factors_weight_sources(tmp_path):
    a = write_shards(str(tmp_path / "a"), 1, 12, name="a")
    b = write_shards(str(tmp_path / "b"), 1, 12, name="b", first_shard=5)
    args = wds_args(train_data=f"{a[0]}::{b[0]}", train_data_upsampling_factors="1::3", dataset_resampled=True,
                    train_num_samples=480, batch_size=16, workers=0)
    info = get_wds_dataset(args, plain_transform(8), is_train=True, tokenizer=fake_tokenizer)
    ids, _, _ = run_epochs(info, 1)
    from_a = sum(1 for i in ids if i < 5000)
    ratio = (len(ids) - from_a) / from_a
    assert 2.0 < ratio < 4.5, ratio  # expected 3 (shard draws: 1 vs 3 weight)
    args.dataset_resampled = False
    with pytest.raises(AssertionError, match="only supported when sampling with replacement"):
        get_wds_dataset(args, plain_transform(8), is_train=True)


def test_shard_split_partitions_shards():
    urls = [f"/p/s-{i}.tar" for i in range(23)]

    def streams(rank, world, workers):
        info = build_wds_loader(urls, None, is_train=True, batch_size=1, workers=workers, num_samples=100,
                                rank=rank, world_size=world)
        src = info.dataloader.source
        return [src.stream_shards(3, s) for s in range(max(1, workers))]

    parts = [shard for r in range(2) for part in streams(r, 2, 3) for shard in part]
    assert sorted(parts) == sorted(urls[:22] + urls[22:]) or sorted(parts) == sorted(urls)
    assert len(parts) == len(set(parts))
    # same epoch order on every rank: rank r's shards are every 2nd of one common order
    order0 = [s for part in streams(0, 1, 1) for s in part]
    assert sorted(order0) == sorted(urls)
    r0 = streams(0, 2, 1)[0]
    assert r0 == order0[0::2]


def _reference_shuffle(items, bufsize, initial, rng):
    """The algorithm as the spec describes it, written plainly."""
    initial = min(initial, bufsize)
    buf, out, data = [], [], list(items)
    i = 0
    while i < len(data):
        buf.append(data[i])
        i += 1
        if len(buf) < bufsize and i < len(data):
            buf.append(data[i])
            i += 1
        if len(buf) >= initial:
            k = rng.randint(0, len(buf) - 1)
            buf[k], buf[-1] = buf[-1], buf[k]
            out.append(buf.pop())
    while buf:
        k = rng.randint(0, len(buf) - 1)
        buf[k], buf[-1] = buf[-1], buf[k]
        out.append(buf.pop())
    return out


@pytest.mark.parametrize("n,bufsize,initial", [(0, 5, 2), (7, 100, 10), (50, 8, 3), (101, 20, 20)])
def test_buffered_shuffle_matches_reference(n, bufsize, initial):
    got = list(buffered_shuffle(range(n), bufsize, initial, random.Random(n)))
    assert got == _reference_shuffle(range(n), bufsize, initial, random.Random(n))
    assert sorted(got) == list(range(n))


@pytest.mark.timeout(60)
def test_get_data_webdataset_train_and_val(good_shards):
    urls = "::".join(good_shards)
    args = wds_args(train_data=urls, val_data=urls, train_num_samples=18, batch_size=4, workers=1,
                    dataset_type="webdataset")
    data = get_data(args, (random_transform(), plain_transform()), epoch=2, tokenizer=fake_tokenizer)
    assert list(data) == ["train", "val"]
    assert data["train"].shared_epoch.get_value() == 2
    _, images, _ = run_epochs(data["train"], 3, start_epoch=2)
    assert len(images) == data["train"].dataloader.num_batches == 5
    ids, images, _ = run_epochs(data["val"], 1)
    assert sorted(ids) == [sample_id(s, i) for s in range(3) for i in range(6)]
    assert [len(x) for x in images][-1] == 2  # partial last batch kept for evaluation
    assert isinstance(images[0], torch.Tensor)


@pytest.mark.timeout(60)
def test_3_3_pipeline_stages(good_shards):
    import webdataset as wds

    from open_clip_train.data import (
        ResampledShards2,
        SharedEpoch,
        detshuffle2,
        group_by_keys_nothrow,
        tarfile_to_samples_nothrow,
    )

    pipeline = wds.DataPipeline(wds.SimpleShardList(good_shards), tarfile_to_samples_nothrow)
    keys = [s["__key__"] for s in pipeline]
    assert keys == [f"s{sample_id(s, i):06d}" for s in range(3) for i in range(6)]

    files = [{"fname": n, "data": b"x", "__url__": "u"} for n in ["a.jpg", "a.txt", "a.jpg", "B.TXT", "b.jpg"]]
    grouped = list(group_by_keys_nothrow(files))
    # repeated suffix -> new sample; key change (case-sensitive) -> new sample; suffixes lower-cased
    exts = [sorted(k for k in g if not k.startswith("__")) for g in grouped]
    assert exts == [["jpg", "txt"], ["jpg"], ["txt"], ["jpg"]]
    assert [g["__key__"] for g in grouped] == ["a", "a", "B", "b"]

    epoch = SharedEpoch(4)
    stage = detshuffle2(bufsize=10, initial=3, seed=5, epoch=epoch)
    assert list(stage.run(iter(range(30)))) == list(buffered_shuffle(range(30), 10, 3, random.Random(9)))

    shards = ResampledShards2("/p/a_{0..1}.tar::/p/b.tar", weights="1::2", nshards=50, deterministic=True,
                              worker_seed=lambda: 3, epoch=epoch)
    draws = [d["url"] for d in shards]
    assert draws == [d["url"] for d in shards] and len(draws) == 50  # same epoch -> same draws
    assert set(draws) <= {"/p/a_0.tar", "/p/a_1.tar", "/p/b.tar"}
