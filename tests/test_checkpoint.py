"""Checkpoint reading and loading (spec 01 §9): file formats, layout fix-ups, resizing, errors."""

import json
import math

import pytest
import torch
from safetensors.torch import save_file

from open_clip.checkpoint import (
    CheckpointError,
    _find_checkpoint_in_dir,
    convert_to_custom_text_state_dict,
    load_checkpoint,
    load_state_dict,
)
from open_clip.config_registry import _MODEL_CONFIGS
from open_clip.factory import create_model
from open_clip.models.clip import CLIP, CustomTextCLIP

TINY_VIT = {
    'embed_dim': 16,
    'vision_cfg': {'image_size': 32, 'patch_size': 8, 'width': 32, 'layers': 2, 'head_width': 16},
    'text_cfg': {'context_length': 12, 'vocab_size': 100, 'width': 32, 'heads': 2, 'layers': 2},
}
TINY_RN = {
    'embed_dim': 16,
    'vision_cfg': {'image_size': 64, 'layers': [1, 1, 1, 1], 'width': 8, 'head_width': 16},
    'text_cfg': {'context_length': 12, 'vocab_size': 100, 'width': 32, 'heads': 2, 'layers': 2},
}


def _cfg(base, **overrides):
    cfg = json.loads(json.dumps(base))
    cfg.update(overrides)
    return cfg


@pytest.fixture
def tiny(tmp_path):
    """A random tiny CLIP, its state dict saved as .safetensors, and a registered name for it."""
    torch.manual_seed(0)
    model = CLIP(**TINY_VIT)
    path = tmp_path / 'tiny.safetensors'
    save_file(model.state_dict(), str(path))
    _MODEL_CONFIGS['_ckpt-tiny'] = _cfg(TINY_VIT)
    _MODEL_CONFIGS['_ckpt-tiny-rn'] = _cfg(TINY_RN)
    yield model, str(path)
    _MODEL_CONFIGS.pop('_ckpt-tiny', None)
    _MODEL_CONFIGS.pop('_ckpt-tiny-rn', None)


def _assert_same_weights(model, state_dict, rename=lambda k: k):
    loaded = model.state_dict()
    for key, value in state_dict.items():
        assert torch.equal(loaded[rename(key)], value), key


# ---------------------------------------------------------------- formats and wrappers


def test_wrapped_module_prefixed_pt(tiny, tmp_path):
    source, _ = tiny
    path = tmp_path / 'epoch_1.pt'
    torch.save({'epoch': 1, 'state_dict': {'module.' + k: v for k, v in source.state_dict().items()}}, path)
    state_dict = load_state_dict(path)
    assert list(state_dict) == list(source.state_dict())
    model = CLIP(**TINY_VIT)
    load_checkpoint(model, path)
    _assert_same_weights(model, source.state_dict())


def test_clip_layout_into_custom_text(tiny):
    source, path = tiny
    model = create_model('_ckpt-tiny', pretrained=path, force_custom_text=True)
    assert type(model) is CustomTextCLIP
    _assert_same_weights(model, source.state_dict(),
                         rename=lambda k: 'text.' + k if k.startswith(
                             ('text_projection', 'positional_embedding', 'token_embedding', 'transformer',
                              'ln_final')) else k)


def test_convert_to_custom_text_state_dict():
    sd = {'text_projection': 1, 'transformer.x': 2, 'visual.transformer.y': 3, 'logit_scale': 4}
    assert convert_to_custom_text_state_dict(sd) == {
        'text.text_projection': 1, 'text.transformer.x': 2, 'visual.transformer.y': 3, 'logit_scale': 4}
    no_proj = {'transformer.x': 1}
    assert convert_to_custom_text_state_dict(no_proj) is no_proj


def test_scalar_and_nonscalar_logit_scale(tiny, tmp_path):
    _, path = tiny
    model = create_model('_ckpt-tiny', pretrained=path, nonscalar_logit_scale=True)
    assert model.logit_scale.shape == (1,)
    vector_path = tmp_path / 'vector.safetensors'
    save_file(model.state_dict(), str(vector_path))
    model = create_model('_ckpt-tiny', pretrained=str(vector_path))
    assert model.logit_scale.shape == ()


def test_clip_checkpoint_into_biased_model_gets_zero_bias(tiny):
    _, path = tiny
    model = create_model('_ckpt-tiny', pretrained=path, init_logit_bias=-10)
    assert model.logit_bias.item() == 0.0


def test_bias_in_checkpoint_but_not_in_model_is_unexpected_key(tmp_path):
    biased = CLIP(**TINY_VIT, init_logit_bias=-10)
    path = tmp_path / 'b.safetensors'
    save_file(biased.state_dict(), str(path))
    with pytest.raises(RuntimeError, match=r"unexpected keys 1: logit_bias"):
        load_checkpoint(CLIP(**TINY_VIT), path)


def test_weights_only_false_allows_pickled_objects(tiny, tmp_path):
    source, _ = tiny
    path = tmp_path / 'full.pt'
    torch.save({'state_dict': source.state_dict(), 'args': _Opaque()}, path)
    with pytest.raises(CheckpointError, match='weights_only'):
        load_state_dict(path)
    assert set(load_state_dict(path, weights_only=False)) == set(source.state_dict())


class _Opaque:
    pass


# ---------------------------------------------------------------- resizing numerics


def _naive_linear_resize(table, new_len):
    """1-D linear interpolation, align_corners=False, no antialias (per output row)."""
    old_len = table.shape[0]
    scale = old_len / new_len
    rows = []
    for i in range(new_len):
        src = max((i + 0.5) * scale - 0.5, 0.0)
        i0 = min(int(math.floor(src)), old_len - 1)
        i1 = min(i0 + 1, old_len - 1)
        w = src - i0
        rows.append((1 - w) * table[i0].double() + w * table[i1].double())
    return torch.stack(rows)


def _cubic(x, a=-0.5):
    x = abs(x)
    if x < 1:
        return (a + 2) * x ** 3 - (a + 3) * x ** 2 + 1
    if x < 2:
        return a * x ** 3 - 5 * a * x ** 2 + 8 * a * x - 4 * a
    return 0.0


def _aa_bicubic_matrix(old, new):
    """Antialiased bicubic resampling weights (PIL-style separable filter), shape (new, old)."""
    scale = old / new
    support_scale = max(scale, 1.0)
    weights = torch.zeros(new, old, dtype=torch.float64)
    for i in range(new):
        center = (i + 0.5) * scale
        lo = max(int(center - 2 * support_scale + 0.5), 0)
        hi = min(int(center + 2 * support_scale + 0.5), old)
        w = [_cubic((j - center + 0.5) / support_scale) for j in range(lo, hi)]
        total = sum(w)
        for j, wj in zip(range(lo, hi), w):
            weights[i, j] = wj / total
    return weights


def _naive_vit_resize(pos, new_side):
    old_side = int(math.sqrt(pos.shape[0] - 1))
    grid = pos[1:].double().reshape(old_side, old_side, -1)  # (s, s, C)
    m = _aa_bicubic_matrix(old_side, new_side)
    resized = torch.einsum('ih,jw,hwc->ijc', m, m, grid).reshape(new_side * new_side, -1)
    return torch.cat([pos[:1].double(), resized])


@pytest.mark.parametrize('new_len', [8, 20])
def test_force_context_length_resizes_text_pos_embed(tiny, new_len):
    source, path = tiny
    model = create_model('_ckpt-tiny', pretrained=path, force_context_length=new_len)
    assert model.positional_embedding.shape == (new_len, 32)
    expected = _naive_linear_resize(source.positional_embedding.detach(), new_len)
    torch.testing.assert_close(model.positional_embedding.detach().double(), expected, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize('image_size,side', [(16, 2), (48, 6)])
def test_force_image_size_resizes_vit_pos_embed(tiny, image_size, side):
    source, path = tiny
    model = create_model('_ckpt-tiny', pretrained=path, force_image_size=image_size)
    assert model.visual.positional_embedding.shape == (side * side + 1, 32)
    expected = _naive_vit_resize(source.visual.positional_embedding.detach(), side)
    torch.testing.assert_close(model.visual.positional_embedding.detach().double(), expected,
                               atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------- bad input


def test_resnet_image_size_mismatch_names_key_and_hint(tmp_path, tiny):
    rn = CLIP(**TINY_RN)
    path = tmp_path / 'rn.safetensors'
    save_file(rn.state_dict(), str(path))
    with pytest.raises(RuntimeError) as info:
        create_model('_ckpt-tiny-rn', pretrained=str(path), force_image_size=96)
    message = str(info.value)
    assert "'visual.attnpool.positional_embedding'" in message
    assert '(5, 256)' in message and '(10, 256)' in message
    assert 'force_image_size' in message


def test_missing_and_unexpected_keys_are_listed(tiny, tmp_path):
    source, _ = tiny
    sd = dict(source.state_dict())
    removed = sorted(k for k in sd if k.startswith('visual.transformer'))
    for k in removed:
        del sd[k]
    sd['extra.weight'] = torch.zeros(1)
    path = tmp_path / 'partial.safetensors'
    save_file(sd, str(path))
    with pytest.raises(RuntimeError) as info:
        create_model('_ckpt-tiny', pretrained=str(path))
    message = str(info.value)
    assert f'missing keys {len(removed)}:' in message and f'({len(removed) - 10} more)' in message
    assert 'unexpected keys 1: extra.weight' in message
    assert "'_ckpt-tiny' CLIP(visual=VisionTransformer" in message
    # non-strict loading reports instead of raising
    result = load_checkpoint(CLIP(**TINY_VIT), path, strict=False)
    assert set(result.missing_keys) == set(removed) and result.unexpected_keys == ['extra.weight']


def test_truncated_and_foreign_files(tiny, tmp_path):
    _, path = tiny
    data = open(path, 'rb').read()
    cases = {
        'cut.safetensors': data[:len(data) // 2],
        'cut.pt': None,
        'garbage.pt': b'hello world' * 10,
        'empty.bin': b'',
    }
    torch.save({'a': torch.ones(3)}, tmp_path / 'full.pt')
    full = (tmp_path / 'full.pt').read_bytes()
    cases['cut.pt'] = full[:len(full) // 2]
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(CheckpointError, match=name.replace('.', r'\.')):
            load_state_dict(tmp_path / name)
    torch.save([torch.ones(1)], tmp_path / 'list.pt')
    with pytest.raises(CheckpointError, match='not a state dict'):
        load_state_dict(tmp_path / 'list.pt')
    with pytest.raises(FileNotFoundError):
        load_state_dict(tmp_path / 'missing.safetensors')


def test_find_checkpoint_in_dir(tmp_path):
    assert _find_checkpoint_in_dir(tmp_path) is None
    for name in ('b.bin', 'a.pth', 'weights.pt'):
        (tmp_path / name).write_bytes(b'')
    assert _find_checkpoint_in_dir(tmp_path).endswith('a.pth')  # no preferred name: first by name
    (tmp_path / 'z.safetensors').write_bytes(b'')
    assert _find_checkpoint_in_dir(tmp_path).endswith('z.safetensors')  # safetensors first
    (tmp_path / 'pytorch_model.bin').write_bytes(b'')
    assert _find_checkpoint_in_dir(tmp_path).endswith('pytorch_model.bin')
    (tmp_path / 'open_clip_pytorch_model.bin').write_bytes(b'')
    assert _find_checkpoint_in_dir(tmp_path).endswith('open_clip_pytorch_model.bin')
    (tmp_path / 'open_clip_model.safetensors').write_bytes(b'')
    assert _find_checkpoint_in_dir(tmp_path).endswith('open_clip_model.safetensors')
