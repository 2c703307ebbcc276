"""The bad-sample fraction counts distinct samples: a dataset below ``--data-max-bad-fraction`` never trips
it (not when a training stream wraps around its shards and re-reads the bad ones, not by chance early
in an epoch), while a dataset above it still stops the run."""

from __future__ import annotations

import pytest
import torch

try:
    from .test_data_helpers import CORRUPT_JPEG, fake_tokenizer, plain_transform, run_epochs, write_shards
except ImportError:
    from test_data_helpers import CORRUPT_JPEG, fake_tokenizer, plain_transform, run_epochs, write_shards

from open_clip_train.data import BadSample, DataQualityError, build_map_loader, build_wds_loader, check_bad_fraction

BAD_IDS = (3, 10, 1005, 1020)  # 4 of 48 samples (8.3%) in two shards of 24


@pytest.fixture(scope="module")
def issue_shards(tmp_path_factory):
    return write_shards(str(tmp_path_factory.mktemp("fraction")), 2, 24, {i: CORRUPT_JPEG for i in BAD_IDS})


@pytest.mark.timeout(120)
@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("resampled", [False, True])
def test_wrapping_epochs_never_count_a_bad_sample_twice(issue_shards, workers, resampled):
    """48 samples, 4 bad, --train-num-samples 48, default shuffle buffers: every epoch re-reads shards."""
    for seed in range(2):
        info = build_wds_loader(issue_shards, plain_transform(), is_train=True, batch_size=4, workers=workers,
                                tokenizer=fake_tokenizer, num_samples=48, seed=seed, resampled=resampled)
        _, images, _ = run_epochs(info, 2)  # would raise DataQualityError if it tripped
        assert len(images) == 2 * info.dataloader.num_batches
        counts = info.bad_sample_counts()
        # each stream (worker) counts a sample once; resampled streams may both draw the same shard
        streams = max(1, workers) if resampled else 1
        assert set(counts) <= {"image_decode_error"}
        assert counts.get("image_decode_error", 0) <= len(BAD_IDS) * streams


class _Rows:
    """Map-style dataset: items in ``bad`` are bad."""

    def __init__(self, n, bad):
        self.n, self.bad = n, set(bad)

    def __len__(self):
        return self.n

    def load_sample(self, i):
        if i in self.bad:
            raise BadSample("image_decode_error", f"item {i}")
        return torch.zeros(1), torch.tensor([i])


@pytest.mark.timeout(120)
def test_map_dataset_just_below_the_limit_never_trips():
    # 9.5% bad, spread at random: mid-epoch prefixes are often above 10%, the epoch never is
    gen = torch.Generator().manual_seed(0)
    bad = torch.randperm(4000, generator=gen)[:380].tolist()
    for seed in range(2):
        info = build_map_loader(_Rows(4000, bad), batch_size=50, workers=0, is_train=True, seed=seed,
                                max_bad_fraction=0.1)
        run_epochs(info, 1)
        assert info.bad_sample_counts() == {"image_decode_error": 380}  # each scheduled bad row once
        assert info.dataloader.good_sample_count() == 4000 - 380


def test_map_dataset_above_the_limit_trips_at_the_end_of_the_epoch():
    info = build_map_loader(_Rows(40, range(0, 40, 5)), batch_size=4, workers=0, is_train=True,
                            max_bad_fraction=0.1)  # 20% bad
    with pytest.raises(DataQualityError, match=r"8 of 40 samples read were bad \(20.0% > data_max_bad_fraction"):
        run_epochs(info, 1)


def test_mostly_garbage_stops_mid_epoch():
    info = build_map_loader(_Rows(4000, [i for i in range(4000) if i % 4]), batch_size=100, workers=0,
                            is_train=True, max_bad_fraction=0.1)
    seen = 0
    with pytest.raises(DataQualityError, match="of 1000 samples read"):
        for _ in info.dataloader:
            seen += 1
    assert seen == 9  # stopped once 1000 samples were read, long before the end (40 batches)


def test_check_bad_fraction_margins():
    # exact counts at the end of an epoch: compared as they are
    with pytest.raises(DataQualityError):
        check_bad_fraction(89, {"x": 11}, 0.1, end_of_epoch=True)
    check_bad_fraction(90, {"x": 10}, 0.1, end_of_epoch=True)
    # a random subset (WebDataset training): sampling noise is allowed for
    check_bad_fraction(48, {"x": 6}, 0.1, end_of_epoch=True, sampled=True)  # the issue's 6 of 54
    with pytest.raises(DataQualityError):
        check_bad_fraction(40, {"x": 14}, 0.1, end_of_epoch=True, sampled=True)
    # mid-epoch: only clear excess stops the run
    check_bad_fraction(880, {"x": 120}, 0.1)
    with pytest.raises(DataQualityError):
        check_bad_fraction(700, {"x": 300}, 0.1)
