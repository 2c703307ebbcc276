"""Read the state dict of a TorchScript archive without loading (or running) the scripted module.

OpenAI published CLIP as TorchScript ``.pt`` archives. All we need from them are the weights, so
instead of ``torch.jit.load`` (deprecated, and it compiles the archive's code) this module reads
the zip directly: ``<root>/data.pkl`` is unpickled with a restricted unpickler that only knows
tensors, storages and placeholder objects for scripted classes, and the ``__parameters__`` /
``__buffers__`` declarations in ``<root>/code/**.py`` say which attributes form the state dict
(so plain tensor attributes such as OpenAI's ``attn_mask`` are left out, as ``state_dict()``
does). Nothing from the archive is ever executed.
"""

import pickle
import re
import sys
import zipfile
from collections import OrderedDict
from typing import Any

import torch

_STORAGE_DTYPES = {
    "HalfStorage": torch.float16,
    "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}

# `class Name(Module):` followed (within its indented body) by the two declaration lines.
_CLASS_RE = re.compile(
    r"^class (\w+)\(Module\):\n(?:  .*\n)*?  __parameters__ = \[(.*?)\]\n  __buffers__ = \[(.*?)\]",
    re.MULTILINE,
)


class _ScriptObject:
    """Placeholder for an instance of a scripted class: keeps the attribute dict, nothing else."""

    qualname = ""

    def __init__(self, *args):
        self._args = args

    def __setstate__(self, state):
        self._state = state if isinstance(state, dict) else {}


def is_torchscript_archive(path: str) -> bool:
    """TorchScript zips hold ``<root>/code/`` and ``constants.pkl``; ``torch.save`` zips do not."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in n or n.endswith("/constants.pkl") for n in archive.namelist())


def _names(text: str) -> list[str]:
    return re.findall(r'"([^"]*)"', text)


def _module_declarations(archive: zipfile.ZipFile, root: str) -> dict[str, tuple[list[str], list[str]]]:
    """Qualified class name -> (parameter names, buffer names), from the archive's code files."""
    decls = {}
    code = f"{root}/code/"
    for name in archive.namelist():
        if not (name.startswith(code) and name.endswith(".py")):
            continue
        module = name[len(code) : -len(".py")].replace("/", ".")
        text = archive.read(name).decode("utf-8")
        for cls, params, buffers in _CLASS_RE.findall(text):
            decls[f"{module}.{cls}"] = (_names(params), _names(buffers))
    return decls


def _identity_list(data, *_):
    return data


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles ``data.pkl``: tensors and placeholders only; any other global is refused."""

    _ALLOWED = {
        ("collections", "OrderedDict"): OrderedDict,
        ("torch.jit._pickle", "build_intlist"): _identity_list,
        ("torch.jit._pickle", "build_doublelist"): _identity_list,
        ("torch.jit._pickle", "build_boollist"): _identity_list,
        ("torch.jit._pickle", "build_tensorlist"): _identity_list,
        ("torch.jit._pickle", "restore_type_tag"): _identity_list,
    }

    def __init__(self, file, archive: zipfile.ZipFile, root: str):
        super().__init__(file)
        self._archive = archive
        self._root = root
        self._classes: dict[str, type] = {}
        self._storages: dict[str, torch.Tensor] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == "__torch__" or module.startswith("__torch__."):
            qualname = f"{module}.{name}"
            if qualname not in self._classes:
                self._classes[qualname] = type(name, (_ScriptObject,), {"qualname": qualname})
            return self._classes[qualname]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if (module, name) in self._ALLOWED:
            return self._ALLOWED[(module, name)]
        raise pickle.UnpicklingError(f"TorchScript archive refers to {module}.{name}, which is not plain data")

    def persistent_load(self, pid):
        kind, dtype, key, _location, _numel = pid
        if kind != "storage" or not isinstance(dtype, torch.dtype):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        if key not in self._storages:
            raw = bytearray(self._archive.read(f"{self._root}/data/{key}"))
            self._storages[key] = torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)
        return self._storages[key]


def _rebuild_tensor(storage: torch.Tensor, offset: int, size, stride, requires_grad=False, *_) -> torch.Tensor:
    return storage.as_strided(tuple(size), tuple(stride), offset)


def _collect(obj: Any, decls: dict, prefix: str, out: dict[str, torch.Tensor]) -> None:
    params, buffers = decls.get(obj.qualname, ([], []))
    state = getattr(obj, "_state", {})
    for name in params + buffers:
        value = state.get(name)
        if isinstance(value, torch.Tensor):
            out[prefix + name] = value
    for name, value in state.items():
        if isinstance(value, _ScriptObject) and value.qualname in decls:
            _collect(value, decls, f"{prefix}{name}.", out)


def read_torchscript_state_dict(path: str) -> dict[str, torch.Tensor]:
    """The ``state_dict()`` a TorchScript archive's module would have, read without loading it."""
    with zipfile.ZipFile(path) as archive:
        data_pkl = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if not data_pkl:
            raise ValueError(f"{path} is not a TorchScript archive: no <root>/data.pkl entry")
        root = data_pkl[0].split("/")[0]
        order = f"{root}/byteorder"
        if order in archive.namelist() and archive.read(order).decode().strip() != sys.byteorder:
            raise ValueError(f"{path} was written on a {archive.read(order).decode().strip()}-endian machine")
        decls = _module_declarations(archive, root)
        with archive.open(data_pkl[0]) as f:
            module = _RestrictedUnpickler(f, archive, root).load()
    if not isinstance(module, _ScriptObject) or module.qualname not in decls:
        raise ValueError(f"{path}: the archive's root object is not a scripted module")
    state_dict: dict[str, torch.Tensor] = {}
    _collect(module, decls, "", state_dict)
    return state_dict
