"""CLIP / CustomTextCLIP classes (spec 02 §11-13): outputs, logits, precision, jit, helpers."""

import math

import pytest
import torch
import torch.nn.functional as F

from open_clip.model import trace_model
from open_clip.models.clip import (
    CLIP,
    CustomTextCLIP,
    _build_text_tower,
    _build_vision_tower,
    convert_weights_to_lp,
    get_model_preprocess_cfg,
    get_model_tokenize_cfg,
    set_model_preprocess_cfg,
)

VISION = {'image_size': 32, 'patch_size': 8, 'width': 32, 'layers': 2, 'head_width': 16}
TEXT = {'context_length': 12, 'vocab_size': 100, 'width': 32, 'heads': 2, 'layers': 2}


def _text(batch=4, length=12, seed=0):
    """Token rows with the EOT (largest id, 99) at varying positions, zero padding after it."""
    g = torch.Generator().manual_seed(seed)
    text = torch.zeros(batch, length, dtype=torch.long)
    for row in range(batch):
        eot = int(torch.randint(2, length, (1,), generator=g))
        text[row, 0] = 98
        text[row, 1:eot] = torch.randint(1, 98, (eot - 1,), generator=g)
        text[row, eot] = 99
    return text


@pytest.fixture
def clip():
    torch.manual_seed(0)
    return CLIP(16, VISION, TEXT).eval()


def test_logit_scale_default_and_shapes():
    model = CLIP(16, VISION, TEXT)
    assert model.logit_scale.shape == () and model.logit_scale.item() == pytest.approx(2.6592600345611572, abs=0)
    assert model.logit_bias is None
    model = CustomTextCLIP(16, VISION, TEXT, init_logit_bias=-10, nonscalar_logit_scale=True)
    assert model.logit_scale.shape == (1,) and model.logit_bias.shape == (1,)
    assert model.logit_scale.item() == pytest.approx(math.log(1 / 0.07))


def test_construction_order_visual_then_text_then_logits():
    torch.manual_seed(0)
    model = CLIP(16, VISION, TEXT)
    torch.manual_seed(0)
    visual = _build_vision_tower(16, VISION)
    text = _build_text_tower(16, TEXT)
    assert torch.equal(model.visual.proj, visual.proj)
    assert torch.equal(model.token_embedding.weight, text.token_embedding.weight)
    assert torch.equal(model.text_projection, text.text_projection)


def test_get_logits_formula(clip):
    images, text = torch.randn(3, 3, 32, 32), _text()
    with torch.no_grad():
        image_logits, text_logits = clip.get_logits(images, text)
        img = F.normalize(clip.visual(images), dim=-1)
        txt = clip.encode_text(text, normalize=True)
        expected = (clip.logit_scale.exp() * img) @ txt.T
    assert torch.equal(image_logits, expected)
    assert torch.equal(text_logits, expected.T)


def test_forward_tuple_and_dict():
    torch.manual_seed(0)
    model = CustomTextCLIP(16, VISION, TEXT, init_logit_bias=-10).eval()
    images, text = torch.randn(2, 3, 32, 32), _text(2)
    with torch.no_grad():
        image_features, text_features, scale, bias = model(images, text)
        model.output_dict = True
        out = model(images, text)
    assert set(out) == {'image_features', 'text_features', 'logit_scale', 'logit_bias'}
    assert torch.equal(out['image_features'], image_features) and torch.equal(out['logit_bias'], bias)
    assert torch.allclose(image_features.norm(dim=-1), torch.ones(2))
    assert scale.item() == pytest.approx(1 / 0.07, rel=1e-6)
    assert model(None, text)['image_features'] is None


def test_text_early_stop_is_exact(clip):
    text = _text(8, seed=3)
    with torch.no_grad():
        fast = clip.encode_text(text)
        clip.text_early_stop = False
        full = clip.encode_text(text)
    torch.testing.assert_close(fast, full, atol=1e-6, rtol=1e-5)


def test_encode_text_reference(clip):
    """CLIP.encode_text equals a step-by-step reference over the unpacked parts (3.3 formula)."""
    text = _text()
    with torch.no_grad():
        x = clip.token_embedding(text) + clip.positional_embedding
        x = clip.ln_final(clip.transformer(x, attn_mask=clip.attn_mask))
        expected = x[torch.arange(4), text.argmax(dim=-1)] @ clip.text_projection
        torch.testing.assert_close(clip.encode_text(text), expected, atol=1e-6, rtol=1e-5)


def test_convert_weights_to_lp_with_linear_text_projection():
    model = CustomTextCLIP(16, VISION, dict(TEXT, proj_bias=True))
    convert_weights_to_lp(model, torch.bfloat16)
    assert model.text.text_projection.weight.dtype == torch.bfloat16
    assert model.text.text_projection.bias.dtype == torch.bfloat16
    assert model.text.positional_embedding.dtype == torch.float32
    assert model.logit_scale.dtype == torch.float32


def test_fp16_model_runs(clip):
    """Mixed fp16 precision forward works end to end (LayerNormFp32 in towers built for fp16)."""
    model = CLIP(16, VISION, TEXT, cast_dtype=torch.bfloat16)
    convert_weights_to_lp(model, torch.bfloat16)
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32, dtype=torch.bfloat16), _text(2))
    assert out[0].dtype == torch.bfloat16 and torch.isfinite(out[1].float()).all()


@pytest.mark.parametrize('text_extra', [{}, {'proj_bias': True}, {'proj_type': 'none'}])
def test_jit_script(text_extra):
    torch.manual_seed(0)
    clip = CLIP(32 if text_extra.get('proj_type') else 16, VISION, dict(TEXT, **text_extra)).eval()
    scripted = torch.jit.script(clip)
    images, text = torch.randn(2, 3, 32, 32), _text(2)
    with torch.no_grad():
        assert torch.equal(scripted(images, text)[0], clip(images, text)[0])
        assert torch.equal(scripted.encode_text(text), clip.encode_text(text))


def test_trace_model_with_tuple_image_size(clip):
    traced = trace_model(clip, batch_size=2)
    assert traced.visual.image_size == (32, 32)
    text, images = _text(3), torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(traced.encode_text(text), clip.encode_text(text))
        assert torch.equal(traced.encode_image(images), clip.encode_image(images))


def test_forward_intermediates(clip):
    images, text = torch.randn(2, 3, 32, 32), _text(2)
    with torch.no_grad():
        out = clip.forward_intermediates(images, text, image_indices=[0, 1], text_indices=1,
                                         output_logits=True, output_logit_scale_bias=True)
        image_logits, _ = clip.get_logits(images, text)
    assert len(out['image_intermediates']) == 2 and out['image_intermediates'][0].shape == (2, 32, 4, 4)
    assert len(out['text_intermediates']) == 1 and out['text_intermediates'][0].shape == (2, 12, 32)
    torch.testing.assert_close(out['text_features'], clip.encode_text(text, normalize=True))
    torch.testing.assert_close(out['image_logits'], image_logits)
    assert 'logit_scale' in out
    only = clip.forward_intermediates(images, text, intermediates_only=True)
    assert 'image_features' not in only and 'text_features' not in only


def test_custom_text_forward_intermediates():
    model = CustomTextCLIP(16, VISION, TEXT).eval()
    with torch.no_grad():
        out = model.forward_intermediates(text=_text(2), text_indices=[0, 1])
    assert len(out['text_intermediates']) == 2
    torch.testing.assert_close(out['text_features'], model.encode_text(_text(2), normalize=True))


def test_lock_and_no_weight_decay(clip):
    clip.lock_text_tower()
    assert not clip.token_embedding.weight.requires_grad and not clip.text_projection.requires_grad
    assert clip.visual.proj.requires_grad
    with pytest.raises(AssertionError, match='Unfreezing LayerNorm is not supported'):
        clip.lock_text_tower(freeze_layer_norm=False)
    assert clip.no_weight_decay() == {'positional_embedding', 'visual.positional_embedding',
                                      'visual.class_embedding'}
    custom = CustomTextCLIP(16, VISION, TEXT)
    assert custom.no_weight_decay() == {'text.positional_embedding', 'visual.positional_embedding',
                                        'visual.class_embedding'}


def test_preprocess_and_tokenize_cfg_helpers(clip):
    assert get_model_preprocess_cfg(clip) == {'size': (32, 32)}
    cfg = {'size': 32, 'mean': (0.5,) * 3, 'std': (0.25,) * 3}
    set_model_preprocess_cfg(clip, cfg)
    assert clip.visual.image_mean == (0.5,) * 3 and clip.visual.preprocess_cfg == cfg
    assert clip.visual.preprocess_cfg is not cfg
    assert get_model_preprocess_cfg(clip) is clip.visual.preprocess_cfg
    assert get_model_tokenize_cfg(clip) == {'context_length': 12, 'vocab_size': 100}
    assert get_model_tokenize_cfg(CustomTextCLIP(16, VISION, dict(TEXT, context_length=7))) == {
        'context_length': 7, 'vocab_size': 100}
