"""Export and deployment: ONNX graphs, Hugging Face ``transformers`` folders (both ways) and
one-folder open_clip models.

Command line: ``python -m open_clip.export {onnx,hf,from-hf,folder} ...`` (see ``cli``). The same
as functions: ``export_onnx``, ``export_hf``, ``convert_from_hf``, ``export_folder``; the
``*_from_source`` / ``save_model_folder`` variants take an ``ExportSource`` (a model you already
hold, see ``source_from_model``). Optional packages (onnx, onnxruntime, transformers) are imported
only by the function that needs them.
"""

from .common import ExportError, MissingExtraError
from .folder import export_folder, save_model_folder
from .source import ExportSource, load_source, source_from_model

__all__ = [
    "ExportError",
    "ExportSource",
    "MissingExtraError",
    "convert_from_hf",
    "export_folder",
    "export_hf",
    "export_hf_from_source",
    "export_onnx",
    "export_onnx_from_source",
    "load_source",
    "save_model_folder",
    "source_from_model",
]


def __getattr__(name: str):
    # The ONNX and transformers halves import heavy optional packages on first use only.
    if name in ("export_onnx", "export_onnx_from_source"):
        from . import onnx_export
        return getattr(onnx_export, name)
    if name in ("export_hf", "export_hf_from_source"):
        from . import hf_export
        return getattr(hf_export, name)
    if name == "convert_from_hf":
        from .hf_import import convert_from_hf
        return convert_from_hf
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
