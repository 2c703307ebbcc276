"""``convert_from_hf``: a transformers CLIP / SigLIP folder (or cached Hub id) -> an open_clip
model folder, loaded back strictly and checked against transformers' features.

Offline by default: a Hub id is looked up in the local Hugging Face cache only. The tokenizer is
our built-in CLIP BPE when the folder's vocabulary is exactly it, otherwise the folder's own
tokenizer files are copied and named in ``text_cfg.hf_tokenizer_name``.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import torch

from ..constants import HF_CONFIG_NAME, HF_SAFE_WEIGHTS_NAME, INCEPTION_MEAN, INCEPTION_STD
from ..tokenizer import SimpleTokenizer
from .common import ExportError, require, write_json
from .hf_clip import clip_from_hf
from .hf_export import hf_features
from .hf_siglip import siglip_from_hf

__all__ = ["HFImport", "convert_from_hf", "preprocess_cfg_from_hf"]

_ATOL = 1e-4
_INTERPOLATION = {3: "bicubic", 2: "bilinear"}  # PIL resample codes


@dataclass
class HFImport:
    """What ``convert_from_hf`` wrote and how close the converted model is to transformers'."""

    output_dir: Path
    model_cfg: dict[str, Any]
    max_abs_diff: dict[str, float] = field(default_factory=dict)


def _resolve_folder(source: Union[str, Path], local_files_only: bool) -> Path:
    if Path(source).is_dir():
        return Path(source)
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(str(source), local_files_only=local_files_only))
    except Exception as e:
        where = "in the local Hugging Face cache" if local_files_only else "on the Hub"
        raise FileNotFoundError(
            f"'{source}' is neither a folder nor a Hub id found {where} ({type(e).__name__}). Download it "
            f"first (huggingface-cli download {source}) or pass local_files_only=False / --allow-download."
        ) from e


def _image_processor_config(folder: Path) -> dict[str, Any]:
    processor = folder / "processor_config.json"
    if processor.is_file():
        config = json.loads(processor.read_text()).get("image_processor")
        if config:
            return config
    legacy = folder / "preprocessor_config.json"
    return json.loads(legacy.read_text()) if legacy.is_file() else {}


def preprocess_cfg_from_hf(config: dict[str, Any], siglip: bool) -> dict[str, Any]:
    """Our ``preprocess_cfg`` from a transformers image-processor config dict."""
    size = config.get("size") or {}
    crop = config.get("crop_size") or {}
    if "shortest_edge" in size and config.get("do_center_crop", True):
        side = crop.get("height", size["shortest_edge"])
        if crop and crop.get("width", side) != side:
            raise ExportError(f"a non-square crop_size {crop} has no open_clip preprocess equivalent")
        if side != size["shortest_edge"]:
            raise ExportError(f"size.shortest_edge={size['shortest_edge']} != crop_size {side}: open_clip resizes "
                              f"the shortest side to the crop size")
        resize_mode, out_size = "shortest", side
    elif "height" in size and "width" in size and not config.get("do_center_crop", False):
        square = size["height"] == size["width"]
        resize_mode, out_size = "squash", size["height"] if square else [size["height"], size["width"]]
    elif not size:
        resize_mode, out_size = ("squash" if siglip else "shortest"), None
    else:
        raise ExportError(f"image processor size={size}, crop_size={crop}, "
                          f"do_center_crop={config.get('do_center_crop')} has no open_clip preprocess equivalent")
    resample = config.get("resample", 3)
    if resample not in _INTERPOLATION:
        raise ExportError(f"image processor resample={resample} (only bicubic=3 and bilinear=2 exist in open_clip)")
    default_mean, default_std = (INCEPTION_MEAN, INCEPTION_STD) if siglip else (None, None)
    cfg = {"resize_mode": resize_mode, "interpolation": _INTERPOLATION[resample],
           "mean": config.get("image_mean") or default_mean, "std": config.get("image_std") or default_std}
    if out_size is not None:
        cfg["size"] = out_size
    return {k: v for k, v in cfg.items() if v is not None}


def _is_clip_bpe(hf_tokenizer: Any) -> bool:
    """Whether a transformers tokenizer has exactly our CLIP BPE vocabulary (specials aside)."""
    ours = SimpleTokenizer()
    vocab = hf_tokenizer.get_vocab()
    if len(vocab) != len(ours.encoder):
        return False
    regular = {k: v for k, v in ours.encoder.items() if v < ours.sot_token_id}
    return all(vocab.get(k) == v for k, v in regular.items())


def _write_tokenizer(folder: Path, out: Path, source: str, model_cfg: dict[str, Any], siglip: bool) -> None:
    """Built-in BPE for the CLIP vocabulary, else copy the folder's tokenizer (named in text_cfg)."""
    from transformers import AutoTokenizer

    try:
        hf_tokenizer = AutoTokenizer.from_pretrained(str(folder))
    except Exception as e:
        raise ExportError(f"The tokenizer files of '{source}' could not be loaded ({e}); the open_clip folder "
                          f"needs them") from e
    if _is_clip_bpe(hf_tokenizer):
        return
    hf_tokenizer.save_pretrained(str(out))
    text_cfg = model_cfg["text_cfg"]
    text_cfg["hf_tokenizer_name"] = str(source)
    if siglip:
        text_cfg["tokenizer_kwargs"] = {"clean": "canonicalize"}  # as OpenCLIP's own SigLIP configs


def _verify(ours: torch.nn.Module, theirs: torch.nn.Module, model_cfg: dict[str, Any]) -> dict[str, float]:
    from ..utils import to_2tuple

    height, width = to_2tuple(ours.visual.image_size)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(3, 3, height, width, generator=generator)
    text = torch.randint(1, ours.vocab_size, (3, ours.context_length), generator=generator)
    text[:, -1] = model_cfg["text_cfg"].get("eos_id", ours.vocab_size - 1)
    with torch.no_grad():
        image_ref, text_ref = ours.encode_image(images, normalize=False), ours.encode_text(text, normalize=False)
    image_hf, text_hf = hf_features(theirs, images, text)
    diffs = {"image": (image_hf - image_ref).abs().max().item(), "text": (text_hf - text_ref).abs().max().item()}
    bad = {k: v for k, v in diffs.items() if not v <= _ATOL}
    if bad:
        raise ExportError(f"The converted model differs from transformers by {bad} (> {_ATOL}); please report this.")
    return diffs


def convert_from_hf(
    source: Union[str, Path],
    output_dir: Union[str, Path],
    *,
    timm_model_name: Optional[str] = None,
    local_files_only: bool = True,
    verify: bool = True,
) -> HFImport:
    """Convert a transformers ``CLIPModel`` / ``SiglipModel`` folder or cached Hub id to an open_clip folder.

    Args:
        timm_model_name: the timm ViT for a SigLIP image tower (default: the registered timm SigLIP
            ViT of the same shape).
        local_files_only: only look in the local Hugging Face cache for Hub ids (no network).
        verify: compare both encoders with transformers' (ExportError beyond 1e-4).
    Load the result with ``create_model('local-dir:' + str(output_dir))``.
    """
    transformers = require("transformers", "Converting from Hugging Face transformers")
    folder = _resolve_folder(source, local_files_only)
    config = transformers.AutoConfig.from_pretrained(str(folder))
    if config.model_type not in ("clip", "siglip"):
        raise ExportError(f"model_type={config.model_type!r}: only transformers 'clip' and 'siglip' models convert")
    siglip = config.model_type == "siglip"
    cls = transformers.SiglipModel if siglip else transformers.CLIPModel
    hf_model = cls.from_pretrained(str(folder)).eval()
    hf_sd = {k: v.detach() for k, v in hf_model.state_dict().items()}
    if siglip:
        model_cfg, state_dict = siglip_from_hf(config.to_dict(), hf_sd, timm_model_name)
    else:
        model_cfg, state_dict = clip_from_hf(config.to_dict(), hf_sd)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    _write_tokenizer(folder, out, str(source), model_cfg, siglip)
    preprocess_cfg = preprocess_cfg_from_hf(_image_processor_config(folder), siglip)
    from safetensors.torch import save_file

    save_file(state_dict, str(out / HF_SAFE_WEIGHTS_NAME))
    write_json(out / HF_CONFIG_NAME, {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg})
    result = HFImport(output_dir=out, model_cfg=model_cfg)
    if verify:
        from ..factory import create_model

        ours = create_model(f"local-dir:{out}").eval()  # strict: fails naming any missing/unexpected key
        result.max_abs_diff = _verify(ours, hf_model, model_cfg)
    return result
