"""What every exporter shares: the refusal error, lazy optional imports with an install hint,
and small JSON helpers."""

import importlib
import json
from pathlib import Path
from typing import Any, Union

from ..timm_model import MissingExtraError

__all__ = ["ExportError", "MissingExtraError", "require", "to_jsonable", "write_json"]

# Which extra brings each optional module (the install hint names it).
_EXTRA_OF = {
    "onnx": "onnx",
    "onnxruntime": "onnx",
    "onnxscript": "onnx",
    "transformers": "hf",
}


class ExportError(ValueError):
    """The model, or one of its settings, cannot be written in the requested format.

    The message names the feature (e.g. ``vision_cfg.attentional_pool``) and, where one exists,
    what to do instead.
    """


def require(module: str, purpose: str) -> Any:
    """Import ``module`` or raise MissingExtraError saying which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        extra = _EXTRA_OF.get(module.split(".")[0])
        hint = f"pip install 'libreclip[{extra}]'" if extra else f"pip install {module}"
        raise MissingExtraError(f"{purpose} needs the '{module}' package: {hint}") from e


def to_jsonable(value: Any) -> Any:
    """Tuples -> lists (recursively) so configs round-trip through JSON unchanged."""
    if isinstance(value, dict):
        return {k: to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    return value


def write_json(path: Union[str, Path], data: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(to_jsonable(data), f, indent=2, ensure_ascii=False)
        f.write("\n")
