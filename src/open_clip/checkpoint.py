"""Reading checkpoint files into state dicts and loading them into models.

Owns `load_state_dict` (file -> dict of tensors: safetensors or `torch.load(weights_only=True)`,
`state_dict` wrapper, `module.` prefixes), `load_checkpoint` (the fix-up pipeline: foreign formats,
old text-tower layouts, logit scale/bias shapes, position-embedding resizing, strict loading with
readable errors), the resizing helpers, `_find_checkpoint_in_dir` for `local-dir:` models, and
`load_into_meta_model`, which loads a checkpoint into a model built on the meta device (no init).
"""

import logging
import math
import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from .models.materialize import check_buffers_supported, materialize

StateDict = dict[str, torch.Tensor]

# Keys OpenAI TorchScript archives carry that are not model parameters.
_JIT_EXTRA_KEYS = ('input_resolution', 'context_length', 'vocab_size')
# Prefixes that move under `text.` when a CLIP-layout text tower is loaded into CustomTextCLIP.
_CLIP_TEXT_PREFIXES = ('text_projection', 'positional_embedding', 'token_embedding', 'transformer', 'ln_final')


class CheckpointError(RuntimeError):
    """A checkpoint file could not be read or does not fit the model."""


def _torch_load(path: str, device: Union[str, torch.device], weights_only: bool) -> Any:
    """`torch.load` with the failure modes turned into messages a user can act on."""
    try:
        return torch.load(path, map_location=device, weights_only=weights_only)
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except pickle.UnpicklingError as e:
        if 'Weights only load failed' in str(e):
            raise CheckpointError(
                f"Refusing to load '{path}': it stores pickled Python objects besides tensors, and "
                f"unpickling them can run arbitrary code, so checkpoints are read with "
                f"torch.load(weights_only=True). If you trust the file's source, pass weights_only=False "
                f"(--no-weights-only style), or re-save it as a plain state dict / .safetensors."
            ) from e
        raise CheckpointError(f"'{path}' is not a PyTorch checkpoint (unpickling failed: {e}).") from e
    except RuntimeError as e:
        msg = str(e)
        if 'TorchScript' in msg:
            raise CheckpointError(
                f"'{path}' is a TorchScript (JIT) archive, which torch.load cannot read with "
                f"weights_only=True. Use open_clip.load_openai_model for OpenAI archives, or pass "
                f"weights_only=False if you trust the file."
            ) from e
        raise CheckpointError(
            f"'{path}' is not a readable PyTorch checkpoint; it may be truncated or corrupted "
            f"(torch.load: {msg.splitlines()[0] if msg else type(e).__name__})."
        ) from e
    except TypeError:
        # Very old torch without the weights_only argument.
        return torch.load(path, map_location=device)
    except Exception as e:  # garbage files surface as KeyError / EOFError / ValueError from pickle
        raise CheckpointError(
            f"'{path}' is not a readable PyTorch checkpoint; it may be truncated, empty or not a "
            f"checkpoint at all ({type(e).__name__}: {e})."
        ) from e


def _load_safetensors(path: str, device: Union[str, torch.device]) -> StateDict:
    from safetensors.torch import load_file

    if not os.path.isfile(path):
        raise FileNotFoundError(f"Checkpoint file not found: '{path}'")
    try:
        return load_file(path, device=str(device))
    except Exception as e:  # SafetensorError has no importable base across versions
        raise CheckpointError(
            f"'{path}' is not a readable .safetensors file; it may be truncated or corrupted ({e})."
        ) from e


def load_state_dict(
        checkpoint_path: Union[str, Path],
        device: Union[str, torch.device] = 'cpu',
        weights_only: bool = True,
) -> StateDict:
    """Read a checkpoint file into a flat state dict.

    `.safetensors` files are read with safetensors; anything else with `torch.load` (weights_only by
    default). A `state_dict` entry is unwrapped, a TorchScript module gives its state dict, and if the
    first key starts with 'module' the first 7 characters are stripped from every key (DDP prefix).
    """
    path = str(checkpoint_path)
    if path.endswith('.safetensors'):
        checkpoint = _load_safetensors(path, device)
    else:
        checkpoint = _torch_load(path, device, weights_only)

    if isinstance(checkpoint, dict) and 'state_dict' in checkpoint:
        state_dict = checkpoint['state_dict']
    elif isinstance(checkpoint, torch.jit.ScriptModule):
        state_dict = checkpoint.state_dict()
        for key in _JIT_EXTRA_KEYS:
            state_dict.pop(key, None)
    else:
        state_dict = checkpoint
    if not isinstance(state_dict, dict):
        raise CheckpointError(
            f"'{path}' holds a {type(state_dict).__name__}, not a state dict (a mapping of parameter "
            f"names to tensors, optionally under a 'state_dict' key)."
        )
    if not state_dict:
        raise CheckpointError(f"'{path}' holds an empty state dict.")
    if next(iter(state_dict)).startswith('module'):
        # Quirk kept from 3.3: decided by the first key only, and exactly 7 characters are cut.
        state_dict = {k[7:]: v for k, v in state_dict.items()}
    return state_dict


def convert_to_custom_text_state_dict(state_dict: StateDict) -> StateDict:
    """Move a CLIP-layout text tower (top-level keys) under `text.` for CustomTextCLIP.

    Applies only if the dict has `text_projection`; otherwise it is returned unchanged.
    """
    if 'text_projection' not in state_dict:
        return state_dict
    return {
        ('text.' + k if k.startswith(_CLIP_TEXT_PREFIXES) else k): v
        for k, v in state_dict.items()
    }


def resize_pos_embed(
        state_dict: StateDict,
        model: torch.nn.Module,
        interpolation: str = 'bicubic',
        antialias: bool = True,
) -> None:
    """Resample `visual.positional_embedding` in place to the native ViT's grid.

    The checkpoint grid is assumed square with one class token first; only native ViT towers
    (those with `grid_size`) are handled.
    """
    old = state_dict.get('visual.positional_embedding', None)
    grid_size = getattr(getattr(model, 'visual', None), 'grid_size', None)
    if old is None or grid_size is None:
        return
    extra_tokens = 1
    new_len = grid_size[0] * grid_size[1] + extra_tokens
    if new_len == old.shape[0]:
        return
    cls_rows, grid_rows = old[:extra_tokens], old[extra_tokens:]
    side = int(math.sqrt(len(grid_rows)))
    if side * side != len(grid_rows):
        raise CheckpointError(
            f"Cannot resize visual.positional_embedding of shape {tuple(old.shape)} to {new_len} rows: "
            f"the checkpoint's {len(grid_rows)} patch positions do not form a square grid, so the "
            f"original grid shape is unknown. Build the model with the checkpoint's image size "
            f"(force_image_size)."
        )
    logging.info('Resizing position embedding grid-size from %s to %s', (side, side), tuple(grid_size))
    grid = grid_rows.reshape(1, side, side, -1).permute(0, 3, 1, 2)  # (1, C, s, s)
    grid = F.interpolate(grid, size=tuple(grid_size), mode=interpolation, antialias=antialias,
                         align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, grid_size[0] * grid_size[1], -1)[0]  # (gh*gw, C)
    state_dict['visual.positional_embedding'] = torch.cat([cls_rows, grid], dim=0)


def resize_text_pos_embed(
        state_dict: StateDict,
        model: torch.nn.Module,
        interpolation: str = 'linear',
        antialias: bool = False,
) -> None:
    """Resample the text positional embedding in place to the model's context length.

    Shortening interpolates (it does not truncate), as in 3.3.
    """
    key = 'positional_embedding' if 'positional_embedding' in state_dict else 'text.positional_embedding'
    old = state_dict.get(key, None)
    if old is None:
        return
    model_pos = getattr(model, 'positional_embedding', None)
    if model_pos is None:
        model_pos = getattr(getattr(model, 'text', None), 'positional_embedding', None)
    if model_pos is None:
        return
    new_len, new_width = model_pos.shape
    old_len, old_width = old.shape
    assert old_width == new_width, 'text pos_embed width changed!'
    if old_len == new_len:
        return
    logging.info('Resizing text position embedding num_pos from %s to %s', old_len, new_len)
    table = old.reshape(1, old_len, old_width).permute(0, 2, 1)  # (1, C, L)
    table = F.interpolate(table, size=new_len, mode=interpolation, antialias=antialias, align_corners=False)
    state_dict[key] = table.permute(0, 2, 1)[0]  # (L_new, C)


def _convert_foreign(model: torch.nn.Module, state_dict: StateDict) -> StateDict:
    """Remap foreign layouts (e.g. Apple MobileCLIP originals) via open_clip.convert, if available."""
    try:
        from .convert import convert_state_dict
    except ModuleNotFoundError as e:
        if e.name not in ('open_clip.convert',):
            raise
        return state_dict
    return convert_state_dict(model, state_dict)


def _fix_logit_params(model: torch.nn.Module, state_dict: StateDict) -> None:
    """Match logit_scale / logit_bias shapes ([] vs [1]); add a zero bias when the model has one."""
    for name in ('logit_scale', 'logit_bias'):
        param = getattr(model, name, None)
        if name in state_dict and param is not None and state_dict[name].ndim != param.ndim:
            state_dict[name] = state_dict[name].reshape(param.shape)
    has_bias = getattr(model, 'logit_bias', None) is not None
    if has_bias and 'logit_bias' not in state_dict and 'logit_scale' in state_dict:
        # Quirk kept from 3.3: a CLIP checkpoint loaded into a SigLIP-style model gets bias 0.
        state_dict['logit_bias'] = torch.zeros_like(state_dict['logit_scale'])


def describe_architecture(model: torch.nn.Module) -> str:
    """Short text like 'CLIP(visual=VisionTransformer, text=TextTransformer)' for error messages."""
    parts = []
    if hasattr(model, 'visual'):
        parts.append(f'visual={type(model.visual).__name__}')
    if hasattr(model, 'text'):
        parts.append(f'text={type(model.text).__name__}')
    elif hasattr(model, 'transformer'):
        parts.append('text=built-in')
    return f"{type(model).__name__}({', '.join(parts)})"


def _key_list(keys: list[str], limit: int = 10) -> str:
    shown = ', '.join(keys[:limit])
    more = f', ... ({len(keys) - limit} more)' if len(keys) > limit else ''
    return f'{len(keys)}: {shown}{more}'


def _shape_hint(key: str) -> str:
    if 'positional_embedding' in key and key.startswith('visual.'):
        return (' The checkpoint was made for a different image size: pass force_image_size '
                '(--force-image-size) equal to the checkpoint\'s size; automatic position-embedding '
                'resizing only covers native ViT towers with square checkpoint grids.')
    if 'positional_embedding' in key:
        return ' The text context length or width differs (force_context_length resizes the length only).'
    if key.endswith('conv1.weight') and key.startswith('visual.'):
        return ' The patch size or width differs from the checkpoint.'
    return ''


def check_state_dict_fits(
        model: torch.nn.Module,
        state_dict: StateDict,
        strict: bool = True,
        model_name: Optional[str] = None,
) -> None:
    """Raise CheckpointError naming missing/unexpected keys (if strict) and any shape mismatch."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    arch = describe_architecture(model)
    if model_name:
        arch = f"'{model_name}' {arch}"
    problems = []
    if strict:
        missing = [k for k in expected if k not in state_dict]
        unexpected = [k for k in state_dict if k not in expected]
        if missing:
            problems.append(f'missing keys {_key_list(missing)}')
        if unexpected:
            problems.append(f'unexpected keys {_key_list(unexpected)}')
    for key, shape in expected.items():
        if key in state_dict and tuple(state_dict[key].shape) != shape:
            problems.append(
                f"shape mismatch for '{key}': checkpoint {tuple(state_dict[key].shape)} vs model {shape}."
                + _shape_hint(key)
            )
    if problems:
        raise CheckpointError(
            f'Checkpoint does not fit model {arch} ({len(state_dict)} checkpoint tensors, {len(expected)} '
            f'model tensors):\n  ' + '\n  '.join(problems)
        )


def load_checkpoint(
        model: torch.nn.Module,
        checkpoint_path: Union[str, Path],
        strict: bool = True,
        weights_only: bool = True,
        device: Union[str, torch.device] = 'cpu',
        assign: bool = False,
        model_name: Optional[str] = None,
):
    """Load a checkpoint file into `model`, adapting known layout differences first.

    Returns what `model.load_state_dict` returns (missing / unexpected keys), or `{}` for big_vision
    `.npz`/`.npy` files. `assign=True` swaps the checkpoint tensors in (used for meta-device models);
    `model_name` only improves error messages.
    """
    path = str(checkpoint_path)
    if Path(path).suffix in ('.npz', '.npy'):
        from .convert import load_big_vision_weights
        load_big_vision_weights(model, path)
        return {}

    state_dict = load_state_dict(path, device=device, weights_only=weights_only)
    state_dict = _convert_foreign(model, state_dict)
    if 'positional_embedding' in state_dict and not hasattr(model, 'positional_embedding'):
        state_dict = convert_to_custom_text_state_dict(state_dict)
    if hasattr(model, 'logit_scale'):
        _fix_logit_params(model, state_dict)
    # Older transformers versions saved this buffer; newer HF text towers do not have it.
    state_dict.pop('text.transformer.embeddings.position_ids', None)
    resize_pos_embed(state_dict, model)
    resize_text_pos_embed(state_dict, model)
    check_state_dict_fits(model, state_dict, strict=strict, model_name=model_name)
    return model.load_state_dict(state_dict, strict=strict, assign=assign)


# Preferred weight file names in a `local-dir:` folder, highest priority first.
_PREFERRED_CHECKPOINT_NAMES = (
    'open_clip_model.safetensors', 'open_clip_pytorch_model.safetensors', 'open_clip_pytorch_model.bin',
    'open_clip_pytorch_model.pth', 'model.safetensors', 'pytorch_model.bin', 'pytorch_model.pth', 'model.pth',
)


def _find_checkpoint_in_dir(dir_path: Union[str, Path]) -> Optional[str]:
    """Pick the weights file of a `local-dir:` folder (safetensors first; `*.pt` is not considered)."""
    dir_path = Path(dir_path)
    candidates = [p for pattern in ('*.safetensors', '*.bin', '*.pth') for p in dir_path.glob(pattern)]
    if not candidates:
        return None
    candidates = sorted(candidates, key=lambda p: p.name)
    candidates = sorted(candidates, key=lambda p: p.suffix != '.safetensors')  # stable
    by_name = {p.name: p for p in candidates}
    for name in _PREFERRED_CHECKPOINT_NAMES:
        if name in by_name:
            return str(by_name[name])
    logging.warning('No standard checkpoint name found in %s; using %s out of %s',
                    dir_path, candidates[0].name, [p.name for p in candidates])
    return str(candidates[0])


# ---------------------------------------------------------------------------------------------
# Loading without initialisation (meta device)
# ---------------------------------------------------------------------------------------------

def load_into_meta_model(
        build: Callable[[], nn.Module],
        checkpoint_path: Union[str, Path],
        prepare: Callable[[nn.Module], None],
        device: Union[str, torch.device] = 'cpu',
        weights_only: bool = True,
        model_name: Optional[str] = None,
) -> Optional[nn.Module]:
    """Build `build()` on the meta device, assign a checkpoint into it, then place and cast it.

    `prepare(model)` applies the precision rules to the meta model; the dtypes it leaves are
    recorded and the loaded tensors are cast to them, which gives the same values as copying the
    checkpoint into already-cast parameters (3.3's order). Non-persistent buffers are refilled by
    the modules' `init_non_persistent_buffers()` (see `models.materialize`). Returns None when the
    model cannot be constructed on the meta device or holds state that cannot be recreated there
    (the caller then builds it normally).
    """
    try:
        with torch.device('meta'):
            model = build()
        check_buffers_supported(model)
    except Exception as e:  # e.g. a foreign constructor that reads tensor values
        logging.info('Could not build on the meta device (%s: %s); initialising normally.', type(e).__name__, e)
        return None
    prepare(model)
    target_dtypes = {n: t.dtype for n, t in list(model.named_parameters()) + list(model.named_buffers())}
    load_checkpoint(model, checkpoint_path, strict=True, weights_only=weights_only, device='cpu',
                    assign=True, model_name=model_name)
    materialize(model, 'cpu', init=False)
    for module_name, module in model.named_modules():
        prefix = f'{module_name}.' if module_name else ''
        for name, param in module._parameters.items():
            if param is not None:
                param.data = param.data.to(device=device, dtype=target_dtypes[prefix + name])
        for name, buf in module._buffers.items():
            if buf is not None:
                module._buffers[name] = buf.to(device=device, dtype=target_dtypes[prefix + name])
    return model
