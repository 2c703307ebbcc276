"""OpenAI's original CLIP checkpoints: reading them and building a CLIP whose shapes match.

Owns ``list_openai_models``, ``load_openai_model`` and ``build_model_from_openai_state_dict``
(architecture inferred from tensor shapes). This is the only place a TorchScript archive is ever
opened, and only to read its state dict as data: the scripted module is never loaded or run.
"""

import os
import pickle
from typing import Optional, Union

import torch

from .constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from .models.clip import (
    CLIP,
    CLIPTextCfg,
    CLIPVisionCfg,
    convert_weights_to_fp16,
    convert_weights_to_lp,
    get_cast_dtype,
)
from .pretrained import download_pretrained_from_url, get_pretrained_url, list_pretrained_models_by_tag
from .pretrained_torchscript import is_torchscript_archive, read_torchscript_state_dict

__all__ = ["list_openai_models", "load_openai_model", "build_model_from_openai_state_dict"]

# Extra entries OpenAI's TorchScript archives carry next to the weights.
_ARCHIVE_EXTRAS = ("input_resolution", "context_length", "vocab_size")


def list_openai_models() -> list[str]:
    """Architectures with OpenAI weights (the ``openai`` tag): 9 base names, then their -quickgelu twins."""
    return list_pretrained_models_by_tag("openai")


def _count_distinct(state_dict: dict, prefix: str, index: int = 2) -> int:
    return len({k.split(".")[index] for k in state_dict if k.startswith(prefix)})


def _infer_vision_cfg(sd: dict) -> dict:
    """Vision tower shape from an OpenAI state dict (ViT iff ``visual.proj`` exists, else ModifiedResNet)."""
    if "visual.proj" in sd:
        width = sd["visual.conv1.weight"].shape[0]
        layers = len([k for k in sd if k.startswith("visual.") and k.endswith(".attn.in_proj_weight")])
        patch_size = sd["visual.conv1.weight"].shape[-1]
        grid = round((sd["visual.positional_embedding"].shape[0] - 1) ** 0.5)
        return dict(layers=layers, width=width, patch_size=patch_size, image_size=patch_size * grid)
    layers = tuple(_count_distinct(sd, f"visual.layer{b}") for b in (1, 2, 3, 4))
    width = sd["visual.layer1.0.conv1.weight"].shape[0]
    rows = sd["visual.attnpool.positional_embedding"].shape[0]
    out = round((rows - 1) ** 0.5)
    if out**2 + 1 != rows:
        raise ValueError(f"visual.attnpool.positional_embedding has {rows} rows; expected a square grid + 1.")
    return dict(layers=layers, width=width, patch_size=None, image_size=out * 32)


def _infer_text_cfg(sd: dict) -> dict:
    width = sd["ln_final.weight"].shape[0]
    return dict(
        context_length=sd["positional_embedding"].shape[0],
        vocab_size=sd["token_embedding.weight"].shape[0],
        width=width,
        heads=width // 64,
        layers=_count_distinct(sd, "transformer.resblocks"),
    )


def _build_fp32_model(state_dict: dict, quick_gelu: bool, cast_dtype: Optional[torch.dtype]):
    """Build the CLIP the shapes describe and load the weights exactly (no dtype round trip)."""
    vision_cfg = CLIPVisionCfg(**_infer_vision_cfg(state_dict))
    text_cfg = CLIPTextCfg(**_infer_text_cfg(state_dict))
    embed_dim = state_dict["text_projection"].shape[1]
    model = CLIP(embed_dim, vision_cfg=vision_cfg, text_cfg=text_cfg, quick_gelu=quick_gelu, cast_dtype=cast_dtype)
    for key in _ARCHIVE_EXTRAS:
        state_dict.pop(key, None)  # 3.3 pops these from the caller's dict too
    model.load_state_dict(state_dict)
    return model.eval()


def build_model_from_openai_state_dict(
    state_dict: dict,
    quick_gelu: bool = True,
    cast_dtype: Optional[torch.dtype] = torch.float16,
):
    """Build a CLIP from a state dict in OpenAI's key layout; returns it in eval mode.

    Architecture is inferred from tensor shapes. As in 3.3 the matmul weights of the result are
    float16 (``convert_weights_to_fp16``); unlike 3.3 they are cast after loading, so an fp32
    state dict is rounded once rather than loaded into fp16 and rounded on the way in.
    ``cast_dtype`` selects the fp32-computing LayerNorm for half-precision use.
    """
    model = _build_fp32_model(state_dict, quick_gelu, cast_dtype)
    convert_weights_to_fp16(model)
    return model


def read_openai_state_dict(path: str) -> dict:
    """The tensors of an OpenAI checkpoint: a TorchScript archive's state dict, or a plain pickle.

    TorchScript archives are read as data (see ``pretrained_torchscript``), never loaded. Plain
    pickles are read with ``weights_only=True``; one that needs arbitrary code is refused.
    """
    try:
        if is_torchscript_archive(path):
            return read_torchscript_state_dict(path)
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise RuntimeError(
            f"Refusing to load {path}: it is a pickle that needs arbitrary code to load, which "
            f"weights_only=True forbids ({_unpickling_reason(e)}). If you trust its source, load it "
            f"yourself with torch.load(..., weights_only=False) and pass the state dict to "
            f"build_model_from_openai_state_dict."
        ) from e


def _unpickling_reason(error: Exception) -> str:
    """The informative line of torch's long weights_only error (the offending global)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for line in lines:
        if "Unsupported global" in line or "WeightsUnpickler error" in line or "not plain data" in line:
            return line
    return lines[0] if lines else type(error).__name__


def _resolve_checkpoint(name: str, cache_dir: Optional[str]) -> str:
    url = get_pretrained_url(name, "openai")
    if url:
        return download_pretrained_from_url(url, cache_dir=cache_dir)
    if os.path.isfile(name):
        return name
    raise RuntimeError(f"Model {name} not found; available models = {list_openai_models()}")


def load_openai_model(
    name: str,
    precision: Optional[str] = None,
    device: Optional[Union[str, torch.device]] = None,
    cache_dir: Optional[str] = None,
):
    """Load an OpenAI CLIP by architecture name (e.g. ``'ViT-B-32'``) or checkpoint path.

    Args:
        name: an entry of ``list_openai_models()`` (downloaded and sha256-checked) or a file path.
        precision: 'fp32', 'fp16' or 'bf16'; default 'fp32' on CPU, else 'fp16'.
        device: default 'cuda' when available, else 'cpu'.
        cache_dir: download cache (default ``~/.cache/clip``).

    Returns:
        The model in eval mode (only the model, as in 3.3), with ``visual.image_mean/std`` set.
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if precision is None:
        # 3.3 compared the device to the string 'cpu', so torch.device('cpu') got fp16.
        precision = "fp32" if device.type == "cpu" else "fp16"

    state_dict = read_openai_state_dict(_resolve_checkpoint(name, cache_dir))
    cast_dtype = get_cast_dtype(precision)
    try:
        model = _build_fp32_model(state_dict, True, cast_dtype)
    except KeyError:
        # A training checkpoint: {'state_dict': {'module.<key>': ...}}.
        state_dict = {k[7:]: v for k, v in state_dict["state_dict"].items()}
        model = _build_fp32_model(state_dict, True, cast_dtype)

    model.to(device)
    if precision in ("fp16", "bf16"):
        convert_weights_to_lp(model, torch.float16 if precision == "fp16" else torch.bfloat16)
    model.visual.image_mean = OPENAI_DATASET_MEAN
    model.visual.image_std = OPENAI_DATASET_STD
    return model
