"""WebDataset shards: URL expansion, dataset sizes, opening shards and reading raw samples from them.

Reading uses the ``webdataset`` library (the ``training`` extra, imported lazily). Unlike
``webdataset.tarfile_to_samples`` the reader never raises: a truncated or unreadable shard ends that
shard with a marker item, and every problem is classified (``bad_samples``) when the item is used.
"""

from __future__ import annotations

import ast
import importlib
import json
import logging
import os
import posixpath
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse

from .bad_samples import EMPTY_MEMBER, MISSING_CAPTION, MISSING_IMAGE, TAR_READ_ERROR, BadSample

IMAGE_EXTS = ("jpg", "png", "jpeg", "webp")  # 3.3's rename order: image="jpg;png;jpeg;webp"
CAPTION_EXT = "txt"

_log = logging.getLogger(__name__)


def import_webdataset() -> Any:
    """Import ``webdataset`` or explain how to install it."""
    try:
        import webdataset
    except ImportError as exc:
        raise ImportError(
            "WebDataset training data needs the 'webdataset' package: pip install libreclip[training]"
        ) from exc
    return webdataset


def expand_urls(urls: Any, weights: Any = None) -> tuple[list, list | None]:
    """Expand ``::``-joined, brace-expanded shard URLs (and per-source weights) into lists.

    With ``weights`` (a ``::``-joined string, one weight per source) every shard of a source gets
    that source's weight, so a 10-shard source carries ten times the mass of a 1-shard source.
    Non-string ``urls`` are returned as a list (with ``weights`` unchanged).
    """
    wds = import_webdataset()
    if weights is None:
        expanded = wds.shardlists.expand_urls(urls) if isinstance(urls, str) else list(urls)
        return expanded, None
    if not isinstance(urls, str):
        return urls, weights
    sources = urls.split("::")
    source_weights = weights.split("::")
    assert len(source_weights) == len(sources), (
        f"Expected the number of data components ({len(sources)}) and weights({len(source_weights)}) to match."
    )
    all_urls: list[str] = []
    all_weights: list[float] = []
    for source, weight in zip(sources, source_weights):
        shards = wds.shardlists.expand_urls(source)
        all_urls.extend(shards)
        all_weights.extend([float(weight)] * len(shards))
    return all_urls, all_weights


def _is_remote(url: str) -> bool:
    scheme = urlparse(url).scheme
    return len(scheme) > 1  # "C:" style drive letters are local


def _read_text(path: str) -> str | None:
    if _is_remote(path):
        try:
            import fsspec

            with fsspec.open(path, "r") as f:
                return f.read()
        except Exception:
            return None
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return f.read()


def get_dataset_size(shards: Any) -> tuple[int | None, int]:
    """``(total samples or None, number of shards)`` from ``sizes.json`` or ``__len__`` next to the shards.

    ``sizes.json`` (basename -> count) is looked up in the directory of the first shard and must
    list every shard (``KeyError`` otherwise); ``__len__`` holds the total as a Python literal.
    """
    shards_list, _ = expand_urls(shards)
    if not shards_list:
        return None, 0
    dir_path = posixpath.dirname(shards_list[0]) if _is_remote(shards_list[0]) else os.path.dirname(shards_list[0])
    sizes_text = _read_text(os.path.join(dir_path, "sizes.json"))
    total: int | None = None
    if sizes_text is not None:
        sizes = json.loads(sizes_text)
        total = sum(int(sizes[os.path.basename(shard)]) for shard in shards_list)
    else:
        len_text = _read_text(os.path.join(dir_path, "__len__"))
        if len_text is not None:
            total = ast.literal_eval(len_text)
    return total, len(shards_list)


def open_shard(url: str) -> Any:
    """Open a shard for reading: local paths, ``file:``, ``pipe:``, http(s) and the other schemes
    webdataset's ``gopen`` knows; any other scheme (``s3://``, ``gs://``, ``memory://``...) via fsspec."""
    import_webdataset()
    gopen_module = importlib.import_module("webdataset.gopen")  # `webdataset.gopen` is also a function
    scheme = urlparse(url).scheme
    if not _is_remote(url) or scheme == "file" or scheme in gopen_module.gopen_schemes:
        return gopen_module.gopen(url, "rb")
    import fsspec

    return fsspec.open(url, "rb").open()


def _iter_members(url: str) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of the regular files in a shard; a read error ends the shard with ``_ShardEnded``."""
    wds = import_webdataset()
    try:
        stream = open_shard(url)
    except Exception as exc:
        raise _ShardEnded(f"cannot open {url}: {exc!r}") from None
    try:
        for member in wds.tariterators.tar_file_iterator(stream, handler=wds.handlers.reraise_exception):
            yield member["fname"], member["data"]
    except Exception as exc:
        raise _ShardEnded(f"{url}: {exc!r}") from None
    finally:
        try:
            stream.close()
        except Exception as exc:  # e.g. a pipe: command that exited non-zero
            _log.warning("Closing shard %s: %r", url, exc)


class _ShardEnded(Exception):
    """The shard could not be opened or stopped early (truncated / corrupt tar)."""


def bad_marker(kind: str, url: str, key: str, detail: str) -> dict:
    """A raw item standing for something bad read from a shard; counted when it leaves the shuffle."""
    return {"__bad__": kind, "__url__": url, "__key__": key, "__detail__": detail}


def check_raw_sample(sample: dict) -> str:
    """Return the image extension of a raw sample, or raise ``BadSample`` saying why it is unusable."""
    if "__bad__" in sample:
        raise BadSample(sample["__bad__"], sample["__detail__"])
    what = f"{sample['__url__']}:{sample['__key__']}"
    image_ext = next((ext for ext in IMAGE_EXTS if ext in sample), None)
    if image_ext is not None and not sample[image_ext]:
        raise BadSample(EMPTY_MEMBER, f"{what}: zero-byte .{image_ext}")
    if CAPTION_EXT in sample and not sample[CAPTION_EXT]:
        raise BadSample(EMPTY_MEMBER, f"{what}: zero-byte .txt")
    if image_ext is None:
        raise BadSample(MISSING_IMAGE, f"{what}: no image member (has {_exts(sample)})")
    if CAPTION_EXT not in sample:
        raise BadSample(MISSING_CAPTION, f"{what}: no .txt member (has {_exts(sample)})")
    return image_ext


def _exts(sample: dict) -> list[str]:
    return sorted(k for k in sample if not k.startswith("__"))


def _complete(sample: dict) -> bool:
    return CAPTION_EXT in sample and any(ext in sample for ext in IMAGE_EXTS)


def iter_shard_samples(url: str) -> Iterator[dict]:
    """Raw samples ``{"__key__", "__url__", ext: bytes}`` of one shard, never raising.

    Members are grouped by key (the name up to the first dot of the basename); a new sample starts
    when the key changes or an extension repeats. A shard that cannot be opened or ends early yields
    one :func:`bad_marker` (``tar_read_error``); the sample being assembled when it ended is kept
    only if its image and caption were read completely. Samples are validated later
    (:func:`check_raw_sample`), after shuffling, so every item read is counted exactly once.
    """
    wds = import_webdataset()
    current: dict | None = None
    try:
        for fname, data in _iter_members(url):
            prefix, suffix = wds.tariterators.base_plus_ext(fname)
            if prefix is None:
                continue
            suffix = suffix.lower()
            if current is None or prefix != current["__key__"] or suffix in current:
                if current is not None:
                    yield current
                current = {"__key__": prefix, "__url__": url}
            current[suffix] = data
    except _ShardEnded as exc:
        if current is not None and _complete(current):
            yield current
        yield bad_marker(TAR_READ_ERROR, url, "", str(exc))
        return
    if current is not None:
        yield current
