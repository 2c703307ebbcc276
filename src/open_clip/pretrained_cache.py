"""Cache helpers for weight downloads: offline mode, cache locations, integrity checks.

Owns the small decisions ``open_clip.pretrained`` makes about files already on disk: whether the
network may be used (``HF_HUB_OFFLINE``, read at call time), where the Hub cache is (``HF_HUB_CACHE``
/ ``HF_HOME``, read at call time), whether a file's sha256 or safetensors header is intact, and
the one-line message for "offline and not cached".
"""

import hashlib
import json
import os
from typing import Optional

_TRUE_VALUES = {"1", "ON", "YES", "TRUE"}


class CorruptCacheError(RuntimeError):
    """A cached file failed its integrity check and cannot be replaced (e.g. offline)."""


def is_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` asks for no network access (same values the Hub client accepts)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in _TRUE_VALUES


def hub_cache_dir(cache_dir: Optional[str] = None) -> Optional[str]:
    """The Hub cache to use: the argument, else ``HF_HUB_CACHE``, else ``HF_HOME/hub``, else None.

    Read at call time so that setting the variables after import still takes effect (the Hub
    client itself reads them once, at import). None lets the client use its own default.
    """
    if cache_dir:
        return os.path.expanduser(cache_dir)
    if os.environ.get("HF_HUB_CACHE"):
        return os.path.expanduser(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return os.path.join(os.path.expanduser(os.environ["HF_HOME"]), "hub")
    return None


def offline_message(what: str, source: str, where: Optional[str]) -> str:
    """One line: what is missing, where we looked, how to get it."""
    if not where:
        try:
            from huggingface_hub import constants

            where = f"the Hugging Face cache ({constants.HF_HUB_CACHE})"
        except ImportError:
            where = "the Hugging Face cache"
    return (
        f"{what} from {source} is not in {where} and HF_HUB_OFFLINE is set, so it was not downloaded; "
        f"run once with network access (unset HF_HUB_OFFLINE) or copy the file there."
    )


def sha256_file(path: str) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    hasher = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            hasher.update(chunk)
    return hasher.hexdigest()


def safetensors_file_ok(path: str) -> bool:
    """Cheap structural check: header parses and the tensors end exactly at the end of the file."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if n <= 0 or 8 + n > size:
                return False
            header = json.loads(f.read(n))
        ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
        return 8 + n + max(ends, default=0) == size
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return False
