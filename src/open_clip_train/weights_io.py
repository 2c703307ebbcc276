"""Writing state dicts to disk: ``.safetensors`` or ``.pt`` chosen by the file extension, atomically.

A file is written to a temporary name in the target folder, fsynced and renamed over the target, so a
crash mid-write leaves either the previous file or none, never a truncated one.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Mapping

import torch

WEIGHT_SUFFIXES = (".safetensors", ".pt")


def weights_format(path: str, flag: str = "--output") -> str:
    """``"safetensors"`` or ``"pt"`` from the extension of ``path``; anything else is an error."""
    if path.endswith(".safetensors"):
        return "safetensors"
    if path.endswith(".pt"):
        return "pt"
    raise ValueError(f"{flag} {path}: unknown weights format; end the file name in .safetensors or .pt.")


def atomic_write(path: str, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)``, fsync the result and rename it to ``path`` (temp file removed on failure)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _unshared_contiguous(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors sharing memory (tied weights) or non-contiguous views: copy those."""
    out, seen = {}, set()
    for key, tensor in state_dict.items():
        tensor = tensor.detach()
        ptr = (tensor.untyped_storage().data_ptr(), tensor.device) if tensor.numel() else None
        if ptr is not None and ptr in seen:
            tensor = tensor.clone()
        elif ptr is not None:
            seen.add(ptr)
        out[key] = tensor.contiguous().cpu()
    return out


def save_state_dict(state_dict: Mapping[str, torch.Tensor], path: str,
                    metadata: Mapping[str, str] | None = None) -> None:
    """Write ``state_dict`` to ``path`` in the format of its extension (``metadata`` only for safetensors)."""
    fmt = weights_format(path)
    if fmt == "safetensors":
        from safetensors.torch import save_file

        tensors = _unshared_contiguous(state_dict)
        atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=dict(metadata) if metadata else None))
    else:
        tensors = {k: v.detach().cpu() for k, v in state_dict.items()}
        atomic_write(path, lambda tmp: torch.save(tensors, tmp))
