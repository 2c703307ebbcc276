"""ONNX export of the two encoders: ``visual.onnx`` and ``text.onnx``, checked with onnxruntime.

``visual.onnx`` maps ``pixel_values`` (float32, N x 3 x H x W, already preprocessed) to
``image_features``; ``text.onnx`` maps ``input_ids`` (int64, N x context_length) to
``text_features``. Features are unnormalised: ``encode_image(x, normalize=False)`` /
``encode_text(t, normalize=False)``; L2-normalise them, multiply by ``logit_scale`` (recorded in
``open_clip_config.json``) for zero-shot logits. The batch dimension is dynamic. Next to the graphs:
``open_clip_config.json`` (model config, preprocessing, file and tensor names) and a portable
``tokenizer.json`` (or the reason there is none). For causal text towers pooled at the end token
(CLIP) the sequence axis is dynamic too: dropping the padding columns after the batch's last end
token gives the same features for a fraction of the work, as our eager early stop does.

The model's eager-only shortcuts (text early stop, pooled-only last block) change the graph's
shape logic with data-dependent branches, so they are switched off while exporting and restored
afterwards; the features are the same.
"""

import contextlib
import copy
import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import nn

from ..constants import HF_CONFIG_NAME
from ..utils import to_2tuple
from .common import ExportError, require, write_json
from .hf_towers import native_text
from .source import ExportSource, load_source
from .tokenizer_json import write_portable_tokenizer

__all__ = ["OnnxExport", "export_onnx", "export_onnx_from_source", "describe_tower"]

VISUAL_FILE, TEXT_FILE = "visual.onnx", "text.onnx"
TOWERS = ("visual", "text")
# Protobuf files cannot exceed 2 GiB: bigger graphs keep their weights in a `.data` file beside them.
_SINGLE_FILE_LIMIT = 1_800_000_000
_ATOL = {"fp32": 1e-4, "fp16": 2e-2}


@dataclass
class OnnxExport:
    """What ``export_onnx`` wrote: file paths, the onnxruntime-vs-torch max abs difference per
    tower (when verified) and the tokenizer file (None with the reason in ``tokenizer_note``)."""

    output_dir: Path
    files: dict[str, Path] = field(default_factory=dict)
    max_abs_diff: dict[str, float] = field(default_factory=dict)
    tokenizer_file: Optional[Path] = None
    tokenizer_note: str = ""


class _ImageEncoder(nn.Module):
    def __init__(self, model: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.model, self.dtype = model, dtype

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        # float32 in and out whatever the graph's precision
        return self.model.encode_image(pixel_values.to(self.dtype), normalize=False).float()


class _TextEncoder(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(input_ids, normalize=False).float()


@contextlib.contextmanager
def plain_forward(model: nn.Module) -> Iterator[nn.Module]:
    """Turn off the eager-only shortcuts of ``model`` (restored on exit)."""
    switches = [(model, "text_early_stop"), (getattr(model, "text", None), "early_stop"),
                (getattr(model, "visual", None), "last_block_pooled_only")]
    saved = [(obj, name, getattr(obj, name)) for obj, name in switches if obj is not None and hasattr(obj, name)]
    try:
        for obj, name, _ in saved:
            setattr(obj, name, False)
        yield model
    finally:
        for obj, name, value in saved:
            setattr(obj, name, value)


def describe_tower(model: nn.Module, tower: str) -> str:
    """'ModifiedResNet', "HFTextEncoder ('roberta-base')"... for error messages."""
    module = model.visual if tower == "visual" else getattr(model, "text", model)
    name = type(module).__name__
    if tower == "text" and module is model:
        name = "TextTransformer (CLIP built-in)"
    extra = getattr(getattr(module, "config", None), "_name_or_path", None) or getattr(
        getattr(module, "trunk", None), "default_cfg", {}).get("architecture")
    return f"{name} ('{extra}')" if extra else name


def _example_inputs(model: nn.Module) -> dict[str, torch.Tensor]:
    height, width = to_2tuple(model.visual.image_size)
    context_length = model.context_length
    vocab = getattr(model, "vocab_size", None) or getattr(getattr(model, "text", None), "vocab_size", None) or 1000
    generator = torch.Generator().manual_seed(0)
    return {
        "visual": torch.randn(2, 3, height, width, generator=generator),
        "text": torch.randint(1, vocab, (2, context_length), generator=generator),
    }


def trims_text_padding(model: nn.Module) -> bool:
    """Whether the text graph may take fewer columns than the context length: a causal tower
    pooled at the end token (argmax / eos) never reads the positions after it, so dropping
    padding columns behind every row's end token gives the same features."""
    text = native_text(model)
    return (text is not None and text.causal and text.cls_emb is None and text.pool_type in ("argmax", "eos")
            and not getattr(text.module, "output_tokens", False))


def _export_graph(module: nn.Module, example: torch.Tensor, path: Path, input_name: str, output_name: str,
                  opset: Optional[int], max_sequence: Optional[int] = None) -> None:
    require("onnxscript", "ONNX export")
    n_bytes = sum(p.numel() * p.element_size() for p in module.parameters())
    axes = {0: torch.export.Dim("batch", min=1)}
    if max_sequence:
        axes[1] = torch.export.Dim("sequence", min=1, max=max_sequence)
    with warnings_quiet():
        torch.onnx.export(
            module, (example,), str(path), input_names=[input_name], output_names=[output_name],
            dynamic_shapes={input_name: axes}, opset_version=opset, dynamo=True,
            external_data=n_bytes > _SINGLE_FILE_LIMIT, verbose=False,
        )


@contextlib.contextmanager
def warnings_quiet() -> Iterator[None]:
    """Hide the exporter's progress lines (printed to stdout) unless logging is at DEBUG."""
    if logging.getLogger().isEnabledFor(logging.DEBUG):
        yield
        return
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        yield


def _failure_reason(error: Exception) -> str:
    """The line of an exporter error that names the failing operator (its summary, not the advice)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error)).strip()
    summary = re.search(r"<class '(?:[\w.]+\.)?(\w+)'>: (.+)", text)
    if summary:
        return f"{summary.group(1)}: {summary.group(2)[:400]}"
    return text.splitlines()[0][:400] if text else type(error).__name__


def _run_onnx(path: Path, name: str, value: torch.Tensor, precision: str) -> torch.Tensor:
    ort = require("onnxruntime", "Checking the ONNX graphs")
    options = ort.SessionOptions()
    if precision == "fp16":
        # onnxruntime 1.32's CPU provider crashes building fp16 sessions at ORT_ENABLE_ALL (layout
        # rewrites); fp16 graphs are meant for GPU providers, the CPU check stops one level below.
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {name: value.numpy()})[0])


def _ended_rows(model: nn.Module, example: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Three token rows ending (end token, then padding) at different positions, and the column
    count that keeps every end token: what a deployment trimming padding would pass."""
    text = native_text(model)
    vocab = text.module.vocab_size
    end = text.eos_id if text.pool_type == "eos" else vocab - 1
    rows = torch.cat([example, example[:1]]).clamp(max=vocab - 2)  # the end token stays the largest id
    length = rows.shape[1]
    ends = [min(3, length - 1), min(7, length - 1), length // 2]
    for i, position in enumerate(ends):
        rows[i, position] = end
        rows[i, position + 1:] = 0
    return rows, max(ends) + 1


def _verify(model: nn.Module, path: Path, tower: str, example: torch.Tensor, precision: str) -> float:
    """Max abs difference between onnxruntime and torch on a batch of a new size (3) (and, where
    the text graph accepts it, on the same rows with trailing padding columns dropped)."""
    columns = None
    if tower == "text" and trims_text_padding(model):
        value, columns = _ended_rows(model, example)
    else:
        value = torch.cat([example, example[:1]]) if tower == "text" else torch.randn(3, *example.shape[1:])
    with torch.no_grad():
        expected = (model.encode_image(value, normalize=False) if tower == "visual"
                    else model.encode_text(value, normalize=False))
    name = "pixel_values" if tower == "visual" else "input_ids"
    got = _run_onnx(path, name, value, precision)
    diff = (got - expected.float()).abs().max().item()
    if columns is not None:
        trimmed = _run_onnx(path, name, value[:, :columns], precision)
        diff = max(diff, (trimmed - expected.float()).abs().max().item())
    # fp16 rounding grows with the feature scale; fp32 is held to an absolute 1e-4
    atol = _ATOL[precision] * (max(1.0, expected.abs().max().item()) if precision == "fp16" else 1.0)
    if not diff <= atol:  # also catches NaN
        raise ExportError(f"{path.name}: onnxruntime differs from torch by {diff:.3g} (> {atol:g}); the graph of "
                          f"{describe_tower(model, tower)} is not faithful, please report it.")
    return diff


def _opset_of(path: Path) -> int:
    import onnx

    graph = onnx.load(str(path), load_external_data=False)
    return next(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx"))


def _onnx_config(source: ExportSource, result: OnnxExport, precision: str,
                 tokenizer_info: dict[str, Any]) -> dict[str, Any]:
    model = source.model
    height, width = to_2tuple(model.visual.image_size)
    logit_bias = getattr(model, "logit_bias", None)
    graphs = {
        "visual": {"file": VISUAL_FILE, "input": "pixel_values", "input_shape": ["batch", 3, height, width],
                   "input_dtype": "float32", "output": "image_features"},
        "text": {"file": TEXT_FILE, "input": "input_ids", "input_shape": ["batch", model.context_length],
                 "input_dtype": "int64", "output": "text_features"},
    }
    if trims_text_padding(model):
        graphs["text"]["input_shape"] = ["batch", "sequence"]
        graphs["text"]["trim_trailing_padding"] = (
            f"sequence may be any length from 1 to {model.context_length}: dropping the padding columns after the "
            f"batch's last end token gives the same features, faster")
    onnx_info: dict[str, Any] = {
        "opset": _opset_of(next(iter(result.files.values()))),
        "precision": precision,
        "normalized": False,
        **{tower: graphs[tower] for tower in result.files},
        "logit_scale": float(model.logit_scale.exp().item()),
        "logit_bias": float(logit_bias.item()) if logit_bias is not None else None,
        "tokenizer": tokenizer_info,
    }
    return {"model_cfg": source.model_cfg, "preprocess_cfg": source.preprocess_cfg, "onnx": onnx_info}


def export_onnx_from_source(
    source: ExportSource,
    output_dir: Union[str, Path],
    *,
    opset: Optional[int] = None,
    precision: str = "fp32",
    verify: bool = True,
    towers: Sequence[str] = TOWERS,
) -> OnnxExport:
    """Write ``visual.onnx``, ``text.onnx``, ``open_clip_config.json`` and ``tokenizer.json``.

    Args:
        opset: ONNX opset (None: the exporter's default).
        towers: which graphs to write ('visual', 'text' or both).
        precision: 'fp32' or 'fp16' (fp16 weights and arithmetic; inputs and outputs stay float32).
        verify: run both graphs with onnxruntime on a new batch size and compare with torch
            (ExportError beyond 1e-4 for fp32).
    Raises ExportError naming the tower that cannot be exported.
    """
    unknown = [t for t in towers if t not in TOWERS]
    if unknown or not towers:
        raise ExportError(f"towers={list(towers)!r}: choose from {list(TOWERS)}")
    if precision not in _ATOL:
        raise ExportError(f"precision={precision!r} is not supported for ONNX; use 'fp32' or 'fp16'")
    require("onnx", "ONNX export")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = OnnxExport(output_dir=out)
    model = source.model.eval()
    dtype = torch.float16 if precision == "fp16" else torch.float32
    graph_model = copy.deepcopy(model).to(dtype) if dtype != torch.float32 else model
    examples = _example_inputs(model)
    with plain_forward(graph_model), plain_forward(model):
        for tower, file, input_name, output_name, wrapper in (
                ("visual", VISUAL_FILE, "pixel_values", "image_features", _ImageEncoder(graph_model, dtype)),
                ("text", TEXT_FILE, "input_ids", "text_features", _TextEncoder(graph_model))):
            if tower not in towers:
                continue
            path = out / file
            try:
                max_sequence = model.context_length if tower == "text" and trims_text_padding(model) else None
                _export_graph(wrapper.eval(), examples[tower], path, input_name, output_name, opset, max_sequence)
            except Exception as e:
                reason = _failure_reason(e)
                raise ExportError(f"The {tower} tower ({describe_tower(model, tower)}) cannot be exported to ONNX "
                                  f"with torch {torch.__version__}: {reason}") from e
            result.files[tower] = path
            if verify:
                result.max_abs_diff[tower] = _verify(model, path, tower, examples[tower], precision)
    tokenizer_info = write_portable_tokenizer(source.tokenizer, out, model.context_length)
    if tokenizer_info.get("file"):
        result.tokenizer_file = out / tokenizer_info["file"]
    result.tokenizer_note = tokenizer_info.get("limits") or tokenizer_info.get("unavailable", "")
    config_path = out / HF_CONFIG_NAME
    write_json(config_path, _onnx_config(source, result, precision, tokenizer_info))
    result.files["config"] = config_path
    return result


def export_onnx(
    model_name: str,
    pretrained: Optional[str],
    output_dir: Union[str, Path],
    *,
    opset: Optional[int] = None,
    precision: str = "fp32",
    verify: bool = True,
    towers: Sequence[str] = TOWERS,
    force_quick_gelu: Optional[bool] = None,
    force_image_size: Optional[Union[int, tuple[int, int]]] = None,
    force_context_length: Optional[int] = None,
    cache_dir: Optional[str] = None,
) -> OnnxExport:
    """Build ``model_name`` with ``pretrained`` weights and export both encoders to ONNX
    (see ``export_onnx_from_source``)."""
    source = load_source(model_name, pretrained, force_quick_gelu=force_quick_gelu,
                         force_image_size=force_image_size, force_context_length=force_context_length,
                         cache_dir=cache_dir)
    return export_onnx_from_source(source, output_dir, opset=opset, precision=precision, verify=verify,
                                   towers=towers)
