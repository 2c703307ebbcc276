"""State-dict layouts of every shipped config with native towers equal 3.3's reference dump.

Models are built on the meta device (no memory, no init), so the whole registry is checked in
seconds. CLIP configs with a native image tower (ViT or ModifiedResNet) are compared key by key
(order, shape, dtype); for CustomTextCLIP configs with a timm image tower only the native text
tower (`text.*`) is compared, since timm towers are out of scope here.
"""

import json
import pathlib

import pytest
import torch

from open_clip.config_registry import get_model_config
from open_clip.factory import _choose_model_class
from open_clip.models.clip import _build_text_tower

LAYOUTS = json.loads(
    (pathlib.Path(__file__).parent / 'fixtures' / 'reference' / 'state_dict_layouts.json').read_text())

NATIVE_CLIP = sorted(
    n for n, v in LAYOUTS.items()
    if v['class'] == 'CLIP' and v['visual'] in ('VisionTransformer', 'ModifiedResNet'))
TIMM_CUSTOM_TEXT = sorted(
    n for n, v in LAYOUTS.items()
    if v['class'] == 'CustomTextCLIP' and v['visual'] == 'TimmModel' and v['text'] == 'TextTransformer')


def _layout(state_dict, prefix=''):
    return [[prefix + k, list(v.shape), str(v.dtype).replace('torch.', '')] for k, v in state_dict.items()]


def test_layout_counts():
    print(f'\nlayouts checked: {len(NATIVE_CLIP)} native CLIP configs, '
          f'{len(TIMM_CUSTOM_TEXT)} timm CustomTextCLIP text towers')
    assert len(NATIVE_CLIP) == 55
    assert len(TIMM_CUSTOM_TEXT) == 62


@pytest.mark.parametrize('name', NATIVE_CLIP)
def test_native_clip_layout(name):
    cfg = get_model_config(name)
    cls = _choose_model_class(cfg, force_custom_text=False)
    assert cls.__name__ == 'CLIP'
    with torch.device('meta'):
        model = cls(**cfg)
    assert type(model.visual).__name__ == LAYOUTS[name]['visual']
    assert _layout(model.state_dict()) == LAYOUTS[name]['state_dict']
    assert sum(p.numel() for p in model.parameters()) == LAYOUTS[name]['params']


@pytest.mark.parametrize('name', TIMM_CUSTOM_TEXT)
def test_custom_text_tower_layout(name):
    cfg = get_model_config(name)
    with torch.device('meta'):
        text = _build_text_tower(cfg['embed_dim'], cfg['text_cfg'], cfg.get('quick_gelu', False))
    expected = [entry for entry in LAYOUTS[name]['state_dict'] if entry[0].startswith('text.')]
    assert _layout(text.state_dict(), prefix='text.') == expected


COCA = sorted(n for n, v in LAYOUTS.items() if v['class'] == 'CoCa')


@pytest.mark.parametrize('name', COCA)
def test_coca_layout(name):
    """CoCa (owned elsewhere) through the factory's class choice; skipped until coca_model exists."""
    pytest.importorskip('open_clip.coca_model')
    cfg = get_model_config(name)
    cls = _choose_model_class(cfg, force_custom_text=False)
    assert cls.__name__ == 'CoCa'
    with torch.device('meta'):
        model = cls(**cfg)
    assert _layout(model.state_dict()) == LAYOUTS[name]['state_dict']
