"""Model factory: a model name (+ pretrained tag or file) -> a built, weight-loaded, placed model.

`create_model` follows 3.3's order of operations: resolve the config and checkpoint,
apply `force_*` overrides, choose the class from the config (`multimodal_cfg` -> CoCa; custom or HF
text -> CustomTextCLIP; else CLIP), build, set device and precision, load weights, attach the
preprocess cfg. When a full checkpoint will be loaded, the model is built on the meta device (no
random init) and the checkpoint tensors are assigned in (`checkpoint.load_into_meta_model`).

Also re-exports every name 3.3's `open_clip.factory` exposed (registry functions, checkpoint
helpers, losses, tokenizers, preprocess configs, pretrained lookups), so `open_clip.factory.<name>`
keeps working as in 3.3. None of those modules imports this one, so the re-exports are eager.
"""

import copy
import json
import logging
import os
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional, Union

import torch

from .checkpoint import (  # noqa: F401 (re-exports)
    _find_checkpoint_in_dir,
    convert_to_custom_text_state_dict,
    load_checkpoint,
    load_into_meta_model,
    load_state_dict,
    resize_pos_embed,
    resize_text_pos_embed,
)
from .coca_model import CoCa  # noqa: F401 (re-export)
from .config_registry import (  # noqa: F401 (re-exports)
    _MODEL_CONFIG_PATHS,
    _MODEL_CONFIGS,
    HF_HUB_PREFIX,
    LOCAL_DIR_PREFIX,
    _get_hf_config,
    _natural_key,
    _rescan_model_configs,
    add_model_config,
    get_model_config,
    list_models,
    parse_model_name,
    unknown_model_message,
)
from .constants import HF_CONFIG_NAME, HF_TEXT_CONFIG_DIR
from .convert import convert_state_dict  # noqa: F401 (re-export)
from .loss import ClipLoss, CoCaLoss, DistillClipLoss, SigLipLoss, create_loss  # noqa: F401 (re-exports)
from .models.clip import CLIP, CustomTextCLIP, set_model_preprocess_cfg
from .precision import convert_weights_to_lp, get_cast_dtype, set_model_device_and_precision  # noqa: F401 (3.3 names)
from .pretrained import (  # noqa: F401 (re-exports)
    download_pretrained,
    download_pretrained_from_hf,
    get_pretrained_cfg,
    is_pretrained_cfg,
    list_pretrained_tags_by_model,
)
from .tokenizer import (  # noqa: F401 (re-exports)
    DEFAULT_CONTEXT_LENGTH,
    HFTokenizer,
    SigLipTokenizer,
    SimpleTokenizer,
)
from .tokenizer_config import get_tokenizer  # noqa: F401 (re-export)
from .transform import (  # noqa: F401 (re-exports)
    AugmentationCfg,
    PreprocessCfg,
    image_transform_v2,
    merge_preprocess_dict,
    merge_preprocess_kwargs,
)


def _default_preprocess_cfg() -> dict[str, Any]:
    return asdict(PreprocessCfg())


def _merge_preprocess(base: dict[str, Any], overlay: Optional[dict[str, Any]]) -> dict[str, Any]:
    return merge_preprocess_dict(base, overlay)


def _resolve_local_dir(ident: str, preprocess_cfg: dict[str, Any]):
    """Config, checkpoint path and preprocess cfg of a `local-dir:` model."""
    if not os.path.isdir(ident):
        raise FileNotFoundError(f"Directory specified via 'local-dir:' schema not found: {ident}")
    config_file = Path(ident) / HF_CONFIG_NAME
    if not config_file.is_file():
        raise FileNotFoundError(f"'local-dir:' specified, but config file missing: {config_file}")
    try:
        with open(config_file, encoding='utf-8') as f:
            config = json.load(f)
        model_cfg = config['model_cfg']
        preprocess_cfg = _merge_preprocess(preprocess_cfg, config.get('preprocess_cfg', {}))
    except Exception as e:
        raise ValueError(f"Could not load valid config from specified 'local-dir:{ident}': {e}") from e
    text_config = Path(ident) / HF_TEXT_CONFIG_DIR
    if model_cfg.get('text_cfg', {}).get('hf_model_name') and (text_config / 'config.json').is_file():
        # the folder carries the Hugging Face text tower's config: build it from there, offline
        model_cfg = {**model_cfg, 'text_cfg': {**model_cfg['text_cfg'], 'hf_model_name': str(text_config)}}
    checkpoint_path = _find_checkpoint_in_dir(ident)
    if checkpoint_path is None:
        logging.warning("No checkpoint file found in 'local-dir:%s'; the model will be randomly initialized.", ident)
    return model_cfg, checkpoint_path, preprocess_cfg


def _resolve_hf_hub(ident: str, preprocess_cfg: dict[str, Any], cache_dir: Optional[str]):
    """Config, checkpoint path and preprocess cfg of an `hf-hub:` model."""
    try:
        config = _get_hf_config(ident, cache_dir=cache_dir)
        model_cfg = config['model_cfg']
    except Exception as e:
        raise RuntimeError(f'Failed initial config/weights load from HF Hub {ident}: {e}') from e
    preprocess_cfg = _merge_preprocess(preprocess_cfg, config.get('preprocess_cfg', {}))
    checkpoint_path = None
    try:
        checkpoint_path = download_pretrained_from_hf(ident, cache_dir=cache_dir)
    except Exception as e:
        logging.warning("Could not download weights for 'hf-hub:%s' (%s); the model will be randomly "
                        'initialized.', ident, e)
    return model_cfg, checkpoint_path, preprocess_cfg


def _resolve_builtin(name: str, pretrained: Optional[str], preprocess_cfg: dict[str, Any],
                     load_weights: bool, cache_dir: Optional[str]):
    """Config, checkpoint path, preprocess cfg and pretrained-tag record of a registered model."""
    model_cfg = get_model_config(name)
    if model_cfg is None:
        raise RuntimeError(unknown_model_message(name))
    if not pretrained:
        return model_cfg, None, preprocess_cfg, None
    # Looked up in this module's globals, as in 3.3: patching `open_clip.factory.<name>` takes effect.
    tag_cfg = get_pretrained_cfg(name, pretrained)
    if tag_cfg:
        checkpoint_path = None
        if load_weights:  # 3.3 downloaded even with load_weights=False; the preprocess values still apply
            try:
                checkpoint_path = download_pretrained(tag_cfg, cache_dir=cache_dir)
            except Exception as e:
                raise RuntimeError(f"Failed to download weights for tag '{pretrained}': {e}") from e
        preprocess_cfg = _merge_preprocess(preprocess_cfg, tag_cfg)
        return model_cfg, checkpoint_path, preprocess_cfg, tag_cfg
    if os.path.isfile(pretrained):
        return model_cfg, pretrained, preprocess_cfg, None
    tags = list_pretrained_tags_by_model(name)
    logging.error("Pretrained tag or path (%s) for '%s' not found. Available tags: %s", pretrained, name, tags)
    raise RuntimeError(
        f"Pretrained value '{pretrained}' is not a known tag or valid file path "
        f"(known tags for '{name}': {tags})"
    )


def _apply_overrides(cfg: dict[str, Any], force_quick_gelu: bool, force_patch_dropout: Optional[float],
                     force_image_size, force_context_length: Optional[int]) -> None:
    if force_quick_gelu:
        cfg['quick_gelu'] = True  # only ever sets, never clears
    if force_patch_dropout is not None:
        cfg['vision_cfg']['patch_dropout'] = force_patch_dropout
    if force_image_size is not None:
        cfg['vision_cfg']['image_size'] = force_image_size
    if force_context_length is not None:
        cfg['text_cfg']['context_length'] = force_context_length


def _choose_model_class(cfg: dict[str, Any], force_custom_text: bool):
    """Model class from the config alone: CoCa / CustomTextCLIP / CLIP (pops `custom_text`)."""
    custom_text = cfg.pop('custom_text', False) or force_custom_text or 'hf_model_name' in cfg.get('text_cfg', {})
    if not custom_text:
        return CLIP
    if 'multimodal_cfg' in cfg:
        try:
            from .coca_model import CoCa
        except ModuleNotFoundError as e:
            raise RuntimeError(f'This config has a multimodal_cfg and needs CoCa (open_clip.coca_model): {e}') from e
        return CoCa
    return CustomTextCLIP


def _load_tower_weights(model: torch.nn.Module, path: Optional[str], tower: str, weights_only: bool) -> bool:
    """Non-strict load of a single tower's weights (pretrained_image_path / pretrained_text_path)."""
    if not path:
        return False
    if not os.path.isfile(path):
        logging.warning('Invalid file path specified for pretrained_%s_path: %s', tower, path)
        return False
    target = model.visual if tower == 'image' else getattr(model, 'text', model)
    try:
        state_dict = load_state_dict(path, 'cpu', weights_only=weights_only)
        result = target.load_state_dict(state_dict, strict=False)
        logging.info('Loaded %s tower weights from %s (%s)', tower, path, result)
        return True
    except Exception as e:
        logging.error('Failed loading %s tower weights from %s: %s', tower, path, e)
        return False


# ---------------------------------------------------------------------------------------------
# Device, precision and meta-device construction
# ---------------------------------------------------------------------------------------------

_set_model_device_and_precision = set_model_device_and_precision  # 3.3's name, in this module


# Build on the meta device when a full checkpoint follows (no random init); tests switch it off to
# compare with the build-then-copy path.
_BUILD_ON_META = True


# ---------------------------------------------------------------------------------------------
# create_model and wrappers
# ---------------------------------------------------------------------------------------------

def _resolve(model_name: str, schema: Optional[str], ident: str, pretrained: Optional[str],
             load_weights: bool, cache_dir: Optional[str]):
    """Resolve the name and tag: (model_cfg, checkpoint_path, preprocess_cfg, tag_cfg, pretrained)."""
    preprocess_cfg = _default_preprocess_cfg()
    if schema and pretrained:
        logging.warning("Ignoring pretrained='%s' because model name '%s' has a '%s:' schema.",
                        pretrained, model_name, schema)
        pretrained = None
    if schema == 'local-dir':
        cfg, path, preprocess_cfg = _resolve_local_dir(ident, preprocess_cfg)
        return cfg, path, preprocess_cfg, None, pretrained
    if schema == 'hf-hub':
        cfg, path, preprocess_cfg = _resolve_hf_hub(ident, preprocess_cfg, cache_dir)
        return cfg, path, preprocess_cfg, None, pretrained
    cfg, path, preprocess_cfg, tag_cfg = _resolve_builtin(
        ident.replace('/', '-'), pretrained, preprocess_cfg, load_weights, cache_dir)
    return cfg, path, preprocess_cfg, tag_cfg, pretrained


def _set_tower_pretrained_flags(cfg: dict[str, Any], enable_img: bool, enable_txt: bool) -> None:
    # Presence of the key (even null) marks a timm / HF config here, as in 3.3.
    if 'timm_model_name' in cfg.get('vision_cfg', {}):
        cfg['vision_cfg']['timm_model_pretrained'] = enable_img
    if 'hf_model_name' in cfg.get('text_cfg', {}):
        cfg['text_cfg']['hf_model_pretrained'] = enable_txt


def create_model(
        model_name: str,
        pretrained: Optional[str] = None,
        load_weights: bool = True,
        precision: str = 'fp32',
        device: Union[str, torch.device] = 'cpu',
        jit: bool = False,
        force_quick_gelu: bool = False,
        force_custom_text: bool = False,
        force_patch_dropout: Optional[float] = None,
        force_image_size: Optional[Union[int, tuple[int, int]]] = None,
        force_preprocess_cfg: Optional[dict[str, Any]] = None,
        force_context_length: Optional[int] = None,
        pretrained_image: bool = False,
        pretrained_text: bool = True,
        pretrained_image_path: Optional[str] = None,
        pretrained_text_path: Optional[str] = None,
        cache_dir: Optional[str] = None,
        output_dict: Optional[bool] = None,
        require_pretrained: bool = False,
        weights_only: bool = True,
        **model_kwargs,
) -> torch.nn.Module:
    """Build a model from a config name, `hf-hub:org/repo` or `local-dir:path`, optionally with weights.

    `pretrained` is a tag (see `list_pretrained_tags_by_model`) or a checkpoint file. `precision` is
    one of 'fp32', 'fp16', 'bf16', 'pure_fp16', 'pure_bf16' ('amp*' and unknown strings act as fp32).
    `force_*` arguments override config values; `model_kwargs` replace top-level config entries.
    Returns the model in train mode with its preprocess cfg attached (`model.visual.preprocess_cfg`).
    """
    schema, ident = parse_model_name(model_name)
    if 'pretrained_hf' in model_kwargs:  # backward-compatible alias
        pretrained_text = model_kwargs.pop('pretrained_hf')
    if isinstance(device, str):
        device = torch.device(device)

    model_cfg, checkpoint_path, preprocess_cfg, tag_cfg, pretrained = _resolve(
        model_name, schema, ident, pretrained, load_weights, cache_dir)
    cfg = copy.deepcopy(model_cfg)
    _apply_overrides(cfg, force_quick_gelu, force_patch_dropout, force_image_size, force_context_length)
    if tag_cfg is not None and cfg.get('quick_gelu', False) != tag_cfg.get('quick_gelu', False):
        warnings.warn(
            f"QuickGELU mismatch between final model config (quick_gelu={cfg.get('quick_gelu', False)}) and "
            f"pretrained tag '{pretrained}' (quick_gelu={tag_cfg.get('quick_gelu', False)}).",
            UserWarning, stacklevel=2,
        )
    if not load_weights:
        checkpoint_path = None
    _set_tower_pretrained_flags(
        cfg,
        enable_img=pretrained_image and pretrained_image_path is None and not checkpoint_path,
        enable_txt=pretrained_text and pretrained_text_path is None and not checkpoint_path,
    )

    model_cls = _choose_model_class(cfg, force_custom_text)
    final_cfg = copy.deepcopy(cfg)
    final_cfg.update(model_kwargs)  # kwargs have top priority and replace whole sub-dicts
    is_timm = 'timm_model_name' in cfg.get('vision_cfg', {})
    model = _build_and_load(model_cls, final_cfg, checkpoint_path, device, precision, is_timm, weights_only,
                            model_name)
    _finish_weights(model, model_name, pretrained, bool(checkpoint_path), require_pretrained,
                    pretrained_image_path, pretrained_text_path, weights_only)

    if output_dict and hasattr(model, 'output_dict'):
        model.output_dict = True
    if force_image_size is not None and is_timm and hasattr(model.visual, 'set_input_size'):
        model.visual.set_input_size(force_image_size)
    if jit:
        model = _script(model)

    if getattr(model.visual, 'image_size', None) is not None:
        preprocess_cfg['size'] = model.visual.image_size
    preprocess_cfg = _merge_preprocess(preprocess_cfg, force_preprocess_cfg)
    set_model_preprocess_cfg(model, preprocess_cfg)
    return model


def _build_and_load(model_cls, final_cfg: dict[str, Any], checkpoint_path: Optional[str], device: torch.device,
                    precision: str, is_timm: bool, weights_only: bool, model_name: str) -> torch.nn.Module:
    """Construct, place and cast, then load the full checkpoint if any (3.3's order)."""
    cast_dtype = get_cast_dtype(precision)

    def build():
        return model_cls(**final_cfg, cast_dtype=cast_dtype)

    if checkpoint_path:
        logging.info("Loading full pretrained weights from '%s'", checkpoint_path)
    if checkpoint_path and _BUILD_ON_META:
        model = load_into_meta_model(
            build, checkpoint_path,
            prepare=lambda m: _set_model_device_and_precision(m, torch.device('meta'), precision, is_timm),
            device=device, weights_only=weights_only, model_name=model_name,
        )
        if model is not None:
            return model
    model = build()  # random init on CPU in fp32: RNG use matches 3.3 (seeded regression tests rely on it)
    _set_model_device_and_precision(model, device, precision, is_timm)
    if checkpoint_path:
        load_checkpoint(model, checkpoint_path, strict=True, weights_only=weights_only, model_name=model_name)
    return model


def _finish_weights(model, model_name, pretrained, loaded_full, require_pretrained,
                    pretrained_image_path, pretrained_text_path, weights_only) -> None:
    """Tower-only weight files, the require_pretrained check, and the summary log line."""
    loaded_tower = _load_tower_weights(model, pretrained_image_path, 'image', weights_only)
    loaded_tower |= _load_tower_weights(model, pretrained_text_path, 'text', weights_only)
    if require_pretrained and not loaded_full:
        raise RuntimeError(
            f"Required pretrained weights (`model_name='{model_name}', pretrained='{pretrained}'`) "
            f"could not be loaded. "
        )
    if loaded_full:
        return
    if loaded_tower:
        logging.info("Model '%s' initialized partially from tower weight files.", model_name)
    else:
        logging.info("No pretrained weights loaded for model '%s'. Model initialized randomly.", model_name)


def _script(model: torch.nn.Module) -> torch.nn.Module:
    try:
        return torch.jit.script(model)
    except Exception as e:
        logging.warning('torch.jit.script failed (%s); continuing with the eager model.', e)
        return model


def create_model_and_transforms(
        model_name: str,
        pretrained: Optional[str] = None,
        load_weights: bool = True,
        precision: str = 'fp32',
        device: Union[str, torch.device] = 'cpu',
        jit: bool = False,
        force_quick_gelu: bool = False,
        force_custom_text: bool = False,
        force_patch_dropout: Optional[float] = None,
        force_image_size: Optional[Union[int, tuple[int, int]]] = None,
        force_context_length: Optional[int] = None,
        image_mean: Optional[tuple[float, ...]] = None,
        image_std: Optional[tuple[float, ...]] = None,
        image_interpolation: Optional[str] = None,
        image_resize_mode: Optional[str] = None,
        aug_cfg=None,
        pretrained_image: bool = False,
        pretrained_text: bool = True,
        pretrained_image_path: Optional[str] = None,
        pretrained_text_path: Optional[str] = None,
        cache_dir: Optional[str] = None,
        output_dict: Optional[bool] = None,
        weights_only: bool = True,
        **model_kwargs,
):
    """`create_model` plus the model's train and eval image transforms.

    Returns (model, preprocess_train, preprocess_val). `image_*` arguments override the model's
    preprocess cfg; `aug_cfg` (dict or AugmentationCfg) configures training augmentation.
    """
    force_preprocess_cfg = _image_overrides(image_mean, image_std, image_interpolation, image_resize_mode)
    model = create_model(
        model_name, pretrained, load_weights=load_weights, precision=precision, device=device, jit=jit,
        force_quick_gelu=force_quick_gelu, force_custom_text=force_custom_text,
        force_patch_dropout=force_patch_dropout, force_image_size=force_image_size,
        force_preprocess_cfg=force_preprocess_cfg, force_context_length=force_context_length,
        pretrained_image=pretrained_image, pretrained_text=pretrained_text,
        pretrained_image_path=pretrained_image_path, pretrained_text_path=pretrained_text_path,
        cache_dir=cache_dir, output_dict=output_dict, weights_only=weights_only, **model_kwargs,
    )
    pp_cfg = PreprocessCfg(**model.visual.preprocess_cfg)
    preprocess_train = image_transform_v2(pp_cfg, is_train=True, aug_cfg=aug_cfg)
    preprocess_val = image_transform_v2(pp_cfg, is_train=False)
    return model, preprocess_train, preprocess_val


def _image_overrides(mean, std, interpolation, resize_mode) -> dict[str, Any]:
    overrides = {'mean': mean, 'std': std, 'interpolation': interpolation, 'resize_mode': resize_mode}
    return {k: v for k, v in overrides.items() if v is not None}


def create_model_from_pretrained(
        model_name: str,
        pretrained: Optional[str] = None,
        precision: str = 'fp32',
        device: Union[str, torch.device] = 'cpu',
        jit: bool = False,
        force_quick_gelu: bool = False,
        force_custom_text: bool = False,
        force_image_size: Optional[Union[int, tuple[int, int]]] = None,
        force_context_length: Optional[int] = None,
        image_mean: Optional[tuple[float, ...]] = None,
        image_std: Optional[tuple[float, ...]] = None,
        image_interpolation: Optional[str] = None,
        image_resize_mode: Optional[str] = None,
        return_transform: bool = True,
        cache_dir: Optional[str] = None,
        weights_only: bool = True,
        **model_kwargs,
):
    """`create_model(..., require_pretrained=True)`; returns (model, eval transform) or just the model."""
    model = create_model(
        model_name, pretrained, precision=precision, device=device, jit=jit,
        force_quick_gelu=force_quick_gelu, force_custom_text=force_custom_text,
        force_image_size=force_image_size,
        force_preprocess_cfg=_image_overrides(image_mean, image_std, image_interpolation, image_resize_mode),
        force_context_length=force_context_length, cache_dir=cache_dir, require_pretrained=True,
        weights_only=weights_only, **model_kwargs,
    )
    if not return_transform:
        return model
    return model, image_transform_v2(PreprocessCfg(**model.visual.preprocess_cfg), is_train=False)
