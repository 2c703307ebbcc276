"""Exact mid-epoch resume: a loader rebuilt from ``state_dict()`` continues bit-for-bit where an
uninterrupted loader would have, for WebDataset (resampled or not), CSV and synthetic data."""

from __future__ import annotations

import os

import pytest
import torch

try:
    from .test_data_helpers import (
        CORRUPT_JPEG,
        NO_CAPTION,
        caption_for,
        fake_tokenizer,
        image_bytes,
        random_transform,
        run_epochs,
        write_shards,
    )
except ImportError:
    from test_data_helpers import (
        CORRUPT_JPEG,
        NO_CAPTION,
        caption_for,
        fake_tokenizer,
        image_bytes,
        random_transform,
        run_epochs,
        write_shards,
    )

from open_clip_train.data import build_csv_loader, build_synthetic_loader, build_wds_loader

EPOCHS = 2
SMALL_BUFFER = (24, 8)  # tests use a small sample-shuffle buffer; 3.3's 5000/1000 reads ~25 passes ahead


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume_shards")
    # 6 shards x 7 samples, two bad samples so skips shift batch contents.
    return write_shards(str(root), 6, 7, {3: CORRUPT_JPEG, 2005: NO_CAPTION})


def _check_resume(make_info, stops, num_batches):
    full_ids, full_images, _ = run_epochs(make_info(0), EPOCHS)
    assert len(full_images) == EPOCHS * num_batches
    for stop in stops:
        ids, images, state = run_epochs(make_info(0), EPOCHS, stop_after=stop)
        assert state is not None
        resumed = make_info(state["epoch"])
        resumed.load_state_dict(state)
        assert resumed.dataloader.start_batch == stop % num_batches
        more_ids, more_images, _ = run_epochs(resumed, EPOCHS, start_epoch=state["epoch"])
        assert ids + more_ids == full_ids, f"stop after {stop} batches"
        got = images + more_images
        assert len(got) == len(full_images)
        for a, b in zip(got, full_images):
            assert torch.equal(a, b), f"augmentation differs after resuming at batch {stop}"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("resampled", [False, True])
def test_wds_resume_is_exact(shards, workers, resampled):
    def make(epoch):
        return build_wds_loader(
            shards, random_transform(), is_train=True, batch_size=4, workers=workers, tokenizer=fake_tokenizer,
            resampled=resampled, num_samples=40, seed=7, epoch=epoch, max_bad_fraction=0.5, sample_shuffle=SMALL_BUFFER,
        )

    nb = make(0).dataloader.num_batches
    assert nb == 10
    # mid-epoch (odd/even => a different worker is due next), after 28 samples = 4 whole shards of 7,
    # exactly between epochs, and inside the second epoch.
    _check_resume(make, [1, 4, 7, nb, nb + 3], nb)


@pytest.mark.timeout(60)
def test_wds_resume_main_process(shards):
    def make(epoch):
        return build_wds_loader(
            shards, random_transform(), is_train=True, batch_size=3, workers=0, tokenizer=fake_tokenizer,
            num_samples=30, seed=1, epoch=epoch, max_bad_fraction=0.5, sample_shuffle=SMALL_BUFFER,
        )

    _check_resume(make, [4, 10, 13], 10)


@pytest.fixture(scope="module")
def csv_file(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume_csv")
    lines = ["filepath\ttitle"]
    for i in range(30):
        path = os.path.join(root, f"{i}.jpg")
        with open(path, "wb") as f:
            f.write(image_bytes(i) if i != 11 else b"not a jpeg")
        lines.append(f"{path}\t{caption_for(i)}")
    csv = os.path.join(root, "data.tsv")
    with open(csv, "w") as f:
        f.write("\n".join(lines) + "\n")
    return csv


@pytest.mark.timeout(60)
@pytest.mark.parametrize("workers", [0, 2])
def test_csv_resume_is_exact(csv_file, workers):
    def make(epoch):
        return build_csv_loader(
            csv_file, random_transform(), tokenizer=fake_tokenizer, batch_size=4, workers=workers,
            is_train=True, seed=3, epoch=epoch, max_bad_fraction=0.5,
        )

    _check_resume(make, [1, 4, 7, 9], 7)


@pytest.mark.timeout(60)
def test_csv_resume_distributed_ranks_partition(csv_file):
    """Two ranks see disjoint halves of the epoch, and each rank resumes exactly."""
    def make(rank):
        def f(epoch):
            return build_csv_loader(
                csv_file, random_transform(), tokenizer=fake_tokenizer, batch_size=3, workers=0, is_train=True,
                seed=3, epoch=epoch, rank=rank, world_size=2, distributed=True, max_bad_fraction=0.5,
            )
        return f

    ids0, _, _ = run_epochs(make(0)(0), 1)
    ids1, _, _ = run_epochs(make(1)(0), 1)
    assert len(set(ids0) & set(ids1)) <= 1  # disjoint halves, except the corrupt row's replacement
    assert len(ids0) == len(ids1) == 15  # 30 rows, one corrupt and replaced: both ranks keep full batches
    _check_resume(make(1), [2], 5)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("workers", [0, 2])
def test_synthetic_resume_is_exact(workers):
    def make(epoch):
        return build_synthetic_loader(
            random_transform(), num_samples=24, tokenizer=fake_tokenizer, batch_size=4, workers=workers,
            is_train=True, seed=5, epoch=epoch,
        )

    _check_resume(make, [2, 6, 9], 6)


@pytest.mark.timeout(60)
def test_order_is_pure_function_of_seed_and_epoch(shards):
    def ids(seed, workers):
        info = build_wds_loader(
            shards, random_transform(), is_train=True, batch_size=4, workers=workers, tokenizer=fake_tokenizer,
            num_samples=40, seed=seed, max_bad_fraction=0.5, sample_shuffle=SMALL_BUFFER,
        )
        return [run_epochs(info, 1, start_epoch=0)[0], run_epochs(info, 2, start_epoch=1)[0]]

    a = ids(11, 2)
    assert a == ids(11, 2)
    assert a[0] != a[1], "epochs must differ"
    assert a != ids(12, 2), "seed must matter"


@pytest.mark.timeout(60)
def test_main_process_loading_leaves_training_rng_alone():
    info = build_synthetic_loader(random_transform(), num_samples=8, batch_size=4, workers=0, is_train=True)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    for _ in info.dataloader:
        pass
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.timeout(60)
def test_state_mismatch_errors(shards):
    def make(workers):
        return build_wds_loader(
            shards, random_transform(), is_train=True, batch_size=4, workers=workers, tokenizer=fake_tokenizer,
            num_samples=40, max_bad_fraction=0.5, sample_shuffle=SMALL_BUFFER,
        )

    _, _, state = run_epochs(make(2), 1, stop_after=3)
    with pytest.raises(ValueError, match="workers"):
        make(1).load_state_dict(state)
    other = make(2)
    other.load_state_dict(state)
    other.dataloader.shared_epoch.set_value(state["epoch"] + 1)  # caller asks for another epoch
    with pytest.raises(ValueError, match="epoch"):
        next(iter(other.dataloader))


class _CountingTransform:
    def __init__(self, inner):
        self.inner, self.calls = inner, 0

    def __call__(self, img):
        self.calls += 1
        return self.inner(img)


@pytest.mark.timeout(60)
def test_resume_does_not_decode_skipped_samples(shards):
    def make(transform, epoch=0):
        return build_wds_loader(
            shards, transform, is_train=True, batch_size=4, workers=0, tokenizer=fake_tokenizer, num_samples=40,
            epoch=epoch, max_bad_fraction=0.5, sample_shuffle=SMALL_BUFFER,
        )

    _, _, state = run_epochs(make(random_transform()), 1, stop_after=6)
    counting = _CountingTransform(random_transform())
    resumed = make(counting, state["epoch"])
    resumed.load_state_dict(state)
    ids, _, _ = run_epochs(resumed, 1, start_epoch=state["epoch"])
    assert len(ids) == 4 * 4  # 10 batches per epoch, 6 done
    assert counting.calls == len(ids)  # only the samples still to come were transformed


@pytest.mark.timeout(60)
def test_wds_distributed_resume_from_list_of_rank_states(shards):
    def make(rank, epoch=0, batch_size=2):
        return build_wds_loader(
            shards, random_transform(), is_train=True, batch_size=batch_size, workers=1, tokenizer=fake_tokenizer,
            num_samples=40, rank=rank, world_size=2, epoch=epoch, max_bad_fraction=0.5, sample_shuffle=SMALL_BUFFER,
        )

    full = [run_epochs(make(r), 1)[0] for r in range(2)]
    assert not set(full[0]) & set(full[1])  # each rank reads its own shards
    parts = [run_epochs(make(r), 1, stop_after=4) for r in range(2)]
    states = [p[2] for p in parts]  # what the training app all-gathers and saves
    for r in range(2):
        info = make(r, states[r]["epoch"])
        info.load_state_dict(states)
        assert parts[r][0] + run_epochs(info, 1)[0] == full[r]
    with pytest.raises(ValueError, match="rank 0's"):
        make(1).load_state_dict(states[0])
    with pytest.raises(ValueError, match="batch_size=2"):
        make(0, batch_size=4).load_state_dict(states[0])


@pytest.mark.timeout(60)
def test_csv_position_maps_to_another_world_size(csv_file):
    """Saved by 2 ranks x batch 3 after 2 batches (12 samples of the epoch's order consumed), resumed
    by 1 rank x batch 4: it continues after 12 samples (3 batches), so no sample of the epoch is
    skipped; resumed by 1 x 5 it continues after 10 (two samples seen twice)."""
    def make(rank, world, batch):
        return build_csv_loader(
            csv_file, random_transform(), tokenizer=fake_tokenizer, batch_size=batch, workers=0, is_train=True,
            seed=3, epoch=0, rank=rank, world_size=world, distributed=world > 1, max_bad_fraction=0.5,
        )

    single = run_epochs(make(0, 1, 1), 1)[0]  # the epoch's global order, one sample per batch
    parts = [run_epochs(make(r, 2, 3), 1, stop_after=2) for r in range(2)]
    seen = set(parts[0][0]) | set(parts[1][0])
    states = [p[2] for p in parts]
    for batch, repeated in ((4, 0), (5, 2)):
        resumed = make(0, 1, batch)
        resumed.load_state_dict(states)
        assert resumed.dataloader.start_batch == 12 // batch
        rest = run_epochs(resumed, 1)[0]
        covered = set(rest) | seen
        assert set(single[:12 // batch * batch]) <= seen  # the mapped position lies inside what was seen
        dropped = set(single[len(single) // batch * batch:])  # the epoch's tail, dropped without a resume too
        assert set(single) - covered <= {11} | dropped  # nothing skipped (row 11 is corrupt and replaced)
        assert repeated <= len(set(rest) & seen) <= repeated + 1  # + the corrupt row's replacement


@pytest.mark.timeout(60)
def test_wds_position_at_another_world_size_restarts_the_epoch(shards, caplog):
    def make(rank, world, workers=1):
        return build_wds_loader(
            shards, random_transform(), is_train=True, batch_size=2, workers=workers, tokenizer=fake_tokenizer,
            num_samples=40, rank=rank, world_size=world, max_bad_fraction=0.5, sample_shuffle=SMALL_BUFFER,
        )

    states = [run_epochs(make(r, 2), 1, stop_after=3)[2] for r in range(2)]
    fresh = run_epochs(make(0, 1), 1)[0]
    resumed = make(0, 1)
    with caplog.at_level("WARNING"):
        resumed.load_state_dict(states)
    assert "restarts from its first samples" in caplog.text
    assert run_epochs(resumed, 1)[0] == fresh
