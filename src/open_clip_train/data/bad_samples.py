"""Bad-sample accounting: the kinds of bad sample, per-kind counters and the max-bad-fraction check.

A bad sample is skipped, never fatal. Workers count what they skip per kind and send the counts to
the main process with each batch (see ``resumable.BatchMeta``); the loader sums them per epoch and
stops the run with :class:`DataQualityError` when too large a fraction of what was read was bad.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Mapping

# Kinds of bad sample. Strings (not an enum) so counts pickle and log as plain dicts.
IMAGE_DECODE_ERROR = "image_decode_error"  # corrupt / truncated / unknown image bytes
TAR_READ_ERROR = "tar_read_error"  # shard that cannot be opened, truncated or corrupt tar
EMPTY_MEMBER = "empty_member"  # zero-byte image or caption member
MISSING_IMAGE = "missing_image"  # sample (or CSV row) without an image / image file not found
MISSING_CAPTION = "missing_caption"  # sample (or CSV row) without a caption
CAPTION_ENCODING_ERROR = "caption_encoding_error"  # caption bytes that are not UTF-8
CSV_ROW_ERROR = "csv_row_error"  # CSV line that cannot be parsed
TRANSFORM_ERROR = "transform_error"  # preprocess or tokenizer raised on this sample

BAD_SAMPLE_KINDS = (
    IMAGE_DECODE_ERROR,
    TAR_READ_ERROR,
    EMPTY_MEMBER,
    MISSING_IMAGE,
    MISSING_CAPTION,
    CAPTION_ENCODING_ERROR,
    CSV_ROW_ERROR,
    TRANSFORM_ERROR,
)

DEFAULT_MAX_BAD_FRACTION = 0.1
# The fraction is only meaningful once enough samples were read; before that only the end-of-epoch
# check applies.
MIN_SAMPLES_FOR_CHECK = 1000
# Mid-epoch the bad count must exceed the limit by this many standard deviations of a binomial count
# (checked after every batch, so the margin is wide), and counts that are a random subset of the data
# by this many at the end of an epoch.
MID_EPOCH_SIGMAS = 6.0
SAMPLED_SIGMAS = 3.0

_log = logging.getLogger(__name__)


class DataQualityError(RuntimeError):
    """Raised when the data has too many bad samples (or no good one) to train on."""


class BadSampleCounter:
    """Counts good samples and bad samples per kind; supports deltas for shipping to the main process."""

    def __init__(self) -> None:
        self.good = 0
        self.bad: Counter[str] = Counter()
        self._shipped_good = 0
        self._shipped_bad: Counter[str] = Counter()

    def add_bad(self, kind: str, detail: str = "") -> None:
        """Count one skipped sample of ``kind`` (one of ``BAD_SAMPLE_KINDS``)."""
        if kind not in BAD_SAMPLE_KINDS:
            raise ValueError(f"Unknown bad-sample kind {kind!r}; valid kinds: {BAD_SAMPLE_KINDS}")
        self.bad[kind] += 1
        log_skip(kind, detail)

    def add_good(self, n: int = 1) -> None:
        self.good += n

    @property
    def total_bad(self) -> int:
        return sum(self.bad.values())

    def take_delta(self) -> tuple[int, dict[str, int]]:
        """Return (good, bad-per-kind) counted since the previous call."""
        good = self.good - self._shipped_good
        bad = {k: v - self._shipped_bad[k] for k, v in self.bad.items() if v - self._shipped_bad[k]}
        self._shipped_good = self.good
        self._shipped_bad = Counter(self.bad)
        return good, bad

    def reset(self) -> None:
        self.__init__()


def check_bad_fraction(
    good: int,
    bad: Mapping[str, int],
    max_fraction: float,
    end_of_epoch: bool = False,
    where: str = "",
    sampled: bool = False,
) -> None:
    """Raise :class:`DataQualityError` if too large a fraction of the samples read was bad.

    A count that covers the data exactly (``sampled=False``: each sample of the epoch counted once)
    is compared with ``max_fraction`` as is at the end of an epoch. Counts that are a random subset
    of the data (``sampled``), and every mid-epoch check (once ``MIN_SAMPLES_FOR_CHECK`` samples were
    read), stop the run only when the bad count exceeds the limit by more than a few binomial
    standard deviations (``SAMPLED_SIGMAS``, ``MID_EPOCH_SIGMAS``): a dataset whose bad fraction is
    below the limit then does not trip it by chance, while one that is mostly garbage still stops
    after about 1000 samples. ``max_fraction >= 1`` disables the check, except that an epoch with no
    good sample always fails.

    Args:
        good: number of good samples read.
        bad: bad samples read, per kind.
        max_fraction: largest tolerated ``bad / (good + bad)``.
        end_of_epoch: check even when fewer than ``MIN_SAMPLES_FOR_CHECK`` samples were read.
        where: dataset description for the message.
        sampled: the counts come from a random subset of the data.
    """
    n_bad = sum(bad.values())
    total = good + n_bad
    if total == 0 or (total < MIN_SAMPLES_FOR_CHECK and not end_of_epoch):
        return
    detail = ", ".join(f"{k}={v}" for k, v in sorted(bad.items()) if v)
    if good == 0:
        raise DataQualityError(
            f"No valid sample among the {total} samples read{where} (bad: {detail}). "
            "Check the data paths and format."
        )
    sigmas = 0.0 if end_of_epoch and not sampled else (SAMPLED_SIGMAS if end_of_epoch else MID_EPOCH_SIGMAS)
    tolerance = sigmas * math.sqrt(total * max_fraction * max(0.0, 1.0 - max_fraction))
    frac = n_bad / total
    if frac > max_fraction and n_bad - max_fraction * total > tolerance:
        raise DataQualityError(
            f"{n_bad} of {total} samples read{where} were bad ({frac:.1%} > data_max_bad_fraction="
            f"{max_fraction}; {detail}). Fix the data or raise --data-max-bad-fraction."
        )


def merge_counts(into: Counter, delta: Mapping[str, int]) -> None:
    """Add per-kind counts ``delta`` into ``into``."""
    for k, v in delta.items():
        into[k] += v


class BadSample(Exception):
    """Raised while loading one sample to say it must be skipped and counted as ``kind``."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


class Skip:
    """Placeholder a dataset returns instead of a sample it skipped (picklable, crosses processes)."""

    __slots__ = ("kind", "detail")

    def __init__(self, kind: str, detail: str = "") -> None:
        self.kind = kind
        self.detail = detail

    def __repr__(self) -> str:
        return f"Skip({self.kind!r}, {self.detail!r})"


_WARN_LIMIT = 20
_warned = Counter()


def log_skip(kind: str, detail: str) -> None:
    """Log a skipped sample; after ``_WARN_LIMIT`` warnings per kind and process, only at DEBUG level."""
    _warned[kind] += 1
    if _warned[kind] <= _WARN_LIMIT:
        more = " (further ones of this kind logged at DEBUG level)" if _warned[kind] == _WARN_LIMIT else ""
        _log.warning("Skipping bad sample (%s): %s%s", kind, detail, more)
    else:
        _log.debug("Skipping bad sample (%s): %s", kind, detail)
