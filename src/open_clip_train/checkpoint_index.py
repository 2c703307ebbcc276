"""The global step of a checkpoint read from its first bytes, without downloading the tensors.

``torch.save`` writes a zip archive whose first member, ``<name>/data.pkl``, is the pickled
checkpoint dict, stored uncompressed; the tensors follow as separate members, referenced from the
pickle by persistent ids. So the first few hundred kilobytes of a checkpoint hold ``global_step``.
``--resume latest`` with ``--remote-sync`` uses this to compare remote epoch and step files by
global step (the names alone cannot: ``epoch_3.pt`` may be older or newer than ``step_400.pt``).

The pickle is read with an unpickler that resolves every global to an inert placeholder, so no code
from the file runs.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
from collections.abc import Callable

_LOCAL_HEADER = struct.Struct("<IHHHHHIIIHH")
_LOCAL_HEADER_SIG = 0x04034B50
_FIRST_READ = 1 << 20
_MAX_READ = 1 << 28


class _Opaque:
    """Stands for any object the pickle rebuilds (tensors, storages, devices...)."""

    def __init__(self, *args, **kwargs) -> None:
        pass

    def __setstate__(self, state) -> None:
        pass


class _HeaderUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict  # state dicts; harmless
        return _Opaque

    def persistent_load(self, pid):
        return None


class _Truncated(Exception):
    pass


def global_step_from_head(head: bytes, complete: bool = False) -> int | None:
    """``global_step`` of the checkpoint whose first bytes are ``head``.

    Returns -1 for a checkpoint without a global step (OpenCLIP 3.3) and None for data that is not
    a torch checkpoint. Raises ``_Truncated`` when ``head`` ends inside the pickle (unless
    ``complete`` says it is the whole file).
    """
    if len(head) < _LOCAL_HEADER.size:
        if complete:
            return None
        raise _Truncated
    sig, _, _, method, _, _, _, _, _, name_len, extra_len = _LOCAL_HEADER.unpack_from(head)
    start = _LOCAL_HEADER.size + name_len + extra_len
    if sig != _LOCAL_HEADER_SIG or method != 0:
        return None
    if len(head) < start:
        if complete:
            return None
        raise _Truncated
    name = head[_LOCAL_HEADER.size:_LOCAL_HEADER.size + name_len]
    if not name.endswith(b"data.pkl"):
        return None
    try:
        obj = _HeaderUnpickler(io.BytesIO(head[start:])).load()
    except (EOFError, pickle.UnpicklingError) as e:
        if complete or "truncated" not in str(e) and not isinstance(e, EOFError):
            return None
        raise _Truncated from e
    except Exception:  # anything else is not a checkpoint we wrote
        return None
    if not isinstance(obj, dict):
        return None
    step = obj.get("global_step", -1)
    return step if isinstance(step, int) else -1


def read_global_step(read_head: Callable[[int], bytes]) -> int | None:
    """Global step via ``read_head(n)`` (the first ``n`` bytes, or the whole file if shorter)."""
    size = _FIRST_READ
    while True:
        head = read_head(size)
        try:
            return global_step_from_head(head, complete=len(head) < size)
        except _Truncated:
            if size >= _MAX_READ:
                return None
            size *= 4
