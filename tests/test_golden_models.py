"""Golden-fixture tests: configs + weights from tests/fixtures/models/* must reproduce 3.3's outputs.

Each case is registered under a private name, built with `create_model(name, pretrained=<weights>)`
(strict loading through the meta-device path), and compared with 3.3's recorded outputs.
"""

import json
import pathlib

import numpy as np
import pytest
import torch

from open_clip.config_registry import _MODEL_CONFIGS
from open_clip.factory import create_model

MODELS = pathlib.Path(__file__).parent / 'fixtures' / 'models'
CASES = sorted(p.name for p in MODELS.iterdir() if p.is_dir() and p.name != 'coca')
ATOL, RTOL = 1e-5, 1e-4


@pytest.fixture
def registered(request):
    """Register a fixture config under a unique name; removed again after the test."""
    case = request.param
    name = f'_golden_{case}'
    _MODEL_CONFIGS[name] = json.loads((MODELS / case / 'config.json').read_text())
    yield case, name
    _MODEL_CONFIGS.pop(name, None)


def _outputs(model, images, text):
    with torch.no_grad():
        out = {
            'image_features': model.encode_image(images),
            'image_features_normalized': model.encode_image(images, normalize=True),
            'text_features': model.encode_text(text),
        }
        model.output_dict = True
        for key, value in model(images, text).items():
            out['forward__' + key] = value
    return {k: v.detach().numpy() for k, v in out.items()}


def test_all_cases_found():
    assert len(CASES) == 9, CASES


@pytest.mark.parametrize('registered', CASES, indirect=True)
def test_golden_outputs(registered):
    case, name = registered
    model = create_model(name, pretrained=str(MODELS / case / 'weights.safetensors')).eval()
    inputs = np.load(MODELS / case / 'inputs.npz')
    expected = np.load(MODELS / case / 'outputs.npz')
    got = _outputs(model, torch.from_numpy(inputs['images']), torch.from_numpy(inputs['text']).long())
    assert set(expected.files) <= set(got), set(expected.files) - set(got)
    for key in expected.files:
        np.testing.assert_allclose(got[key], expected[key], atol=ATOL, rtol=RTOL, err_msg=f'{case}: {key}')


@pytest.mark.parametrize('registered', ['vit_tok', 'resnet', 'text_variants'], indirect=True)
def test_golden_outputs_without_early_stop(registered):
    """Disabling the text early-stop gives the same (golden) text features."""
    case, name = registered
    model = create_model(name, pretrained=str(MODELS / case / 'weights.safetensors')).eval()
    if hasattr(model, 'text_early_stop'):
        model.text_early_stop = False
    else:
        model.text.early_stop = False
    inputs = np.load(MODELS / case / 'inputs.npz')
    expected = np.load(MODELS / case / 'outputs.npz')
    with torch.no_grad():
        text_features = model.encode_text(torch.from_numpy(inputs['text']).long()).numpy()
    np.testing.assert_allclose(text_features, expected['text_features'], atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize('registered', ['vit_tok', 'siglip_style'], indirect=True)
def test_golden_outputs_with_regular_init_path(registered, monkeypatch):
    """The init-then-copy path (used for timm / HF towers) loads the same weights as the meta path."""
    import open_clip.factory as factory

    case, name = registered
    monkeypatch.setattr(factory, '_BUILD_ON_META', False)
    model = create_model(name, pretrained=str(MODELS / case / 'weights.safetensors')).eval()
    inputs = np.load(MODELS / case / 'inputs.npz')
    expected = np.load(MODELS / case / 'outputs.npz')
    got = _outputs(model, torch.from_numpy(inputs['images']), torch.from_numpy(inputs['text']).long())
    for key in expected.files:
        np.testing.assert_allclose(got[key], expected[key], atol=ATOL, rtol=RTOL, err_msg=f'{case}: {key}')
