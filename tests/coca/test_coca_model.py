"""CoCa model: 3.3's golden fixture (strict load, outputs, greedy captions, beam bookkeeping),
state-dict layouts, initialisation, precision, locking and forward contract."""

import json
import math
import pathlib

import numpy as np
import pytest
import torch

from open_clip.coca_model import CoCa
from open_clip.config_registry import _MODEL_CONFIGS, get_model_config
from open_clip.factory import create_model
from open_clip.models.coca_decoding import CachedDecoder, FullPrefixDecoder
from open_clip.models.generation import MaxLengthCriteria, beam_search_captions
from open_clip.models.multimodal_transformer import MultimodalTransformer

FIXTURES = pathlib.Path(__file__).parents[1] / "fixtures"
CASE = FIXTURES / "models" / "coca"
LAYOUTS = json.loads((FIXTURES / "reference" / "state_dict_layouts.json").read_text())
ATOL, RTOL = 1e-5, 1e-4
SOT, EOS, PAD = 998, 999, 0


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models: one intra-op thread avoids thread hand-offs that dominate on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def fixture_model():
    name = "_coca_fixture_case"
    _MODEL_CONFIGS[name] = json.loads((CASE / "config.json").read_text())
    try:
        model = create_model(name, pretrained=str(CASE / "weights.safetensors"))
    finally:
        _MODEL_CONFIGS.pop(name, None)
    return model.eval()


@pytest.fixture(scope="module")
def inputs():
    data = np.load(CASE / "inputs.npz")
    return torch.from_numpy(data["images"]), torch.from_numpy(data["text"]).long()


@pytest.fixture(scope="module")
def expected():
    return np.load(CASE / "outputs.npz")


def test_fixture_outputs(fixture_model, inputs, expected):
    images, text = inputs
    assert isinstance(fixture_model, CoCa)
    with torch.no_grad():
        got = {
            "image_features": fixture_model.encode_image(images),
            "image_features_normalized": fixture_model.encode_image(images, normalize=True),
            "text_features": fixture_model.encode_text(text),
        }
        for key, value in fixture_model(images, text).items():
            got["forward__" + key] = value
    keys = [k for k in expected.files if not k.startswith("generate")]
    assert set(keys) == set(got)
    for key in keys:
        np.testing.assert_allclose(got[key].numpy(), expected[key], atol=ATOL, rtol=RTOL, err_msg=key)


@pytest.mark.parametrize("use_cache", [True, False])
def test_fixture_greedy_generation(fixture_model, inputs, expected, use_cache):
    torch.manual_seed(0)
    out = fixture_model.generate(
        inputs[0][:2], seq_len=12, generation_type="top_k", top_k=1, sot_token_id=SOT,
        eos_token_id=EOS, pad_token_id=PAD, fixed_output_length=True, use_cache=use_cache,
    )
    np.testing.assert_array_equal(out.numpy(), expected["generate_greedy"])


@pytest.mark.parametrize("cached", [True, False])
def test_fixture_beam_bookkeeping_with_raw_logits(fixture_model, inputs, expected, cached):
    """With 3.3's raw-logit scoring our group beam search reproduces 3.3's captions exactly."""
    num_beams = 4
    with torch.no_grad():
        latent, embs = fixture_model._encode_image(inputs[0][:2])
        latent, embs = latent.repeat_interleave(num_beams, 0), embs.repeat_interleave(num_beams, 0)
        decoder = CachedDecoder(fixture_model, embs) if cached else FullPrefixDecoder(fixture_model, latent, embs)
        out = beam_search_captions(decoder, 2, num_beams, 2, SOT, EOS, PAD, 5, 1.0, [MaxLengthCriteria(12)],
                                   log_probs=False)
    np.testing.assert_array_equal(out.numpy(), expected["generate_beam_3p3"])


def _layout(state_dict):
    return [[k, list(v.shape), str(v.dtype).replace("torch.", "")] for k, v in state_dict.items()]


@pytest.mark.parametrize("name", ["coca_base", "coca_ViT-B-32", "coca_ViT-L-14"])
def test_state_dict_layout(name):
    cfg = get_model_config(name)
    cfg.pop("custom_text")
    with torch.device("meta"):
        model = CoCa(**cfg)
    assert _layout(model.state_dict()) == LAYOUTS[name]["state_dict"]
    assert sum(p.numel() for p in model.parameters()) == LAYOUTS[name]["params"]


def _tiny_cfg():
    return json.loads((CASE / "config.json").read_text())


def test_decoder_projection_init_leaves_rng_stream_untouched(monkeypatch):
    cfg = _tiny_cfg()
    cfg.pop("custom_text")
    torch.manual_seed(0)
    model = CoCa(**cfg)
    after = torch.randn(8)

    # 3.3: no init of the projection at all
    monkeypatch.setattr(MultimodalTransformer, "init_parameters", lambda self: None)
    torch.manual_seed(0)
    reference = CoCa(**cfg)
    reference_after = torch.randn(8)
    assert torch.equal(after, reference_after)
    ref_state = reference.state_dict()
    for key, value in model.state_dict().items():
        if key != "text_decoder.text_projection":
            assert torch.equal(value, ref_state[key]), key

    proj = model.text_decoder.text_projection
    assert torch.isfinite(proj).all()
    # the projection holds the draws that would come next from the generator, scaled by width^-0.5
    torch.manual_seed(0)
    with monkeypatch.context() as m:
        m.setattr(MultimodalTransformer, "init_parameters", lambda self: None)
        CoCa(**cfg)
    expected = torch.randn(proj.shape) * proj.shape[0] ** -0.5
    assert torch.equal(proj.detach(), expected)


def test_forward_contract(fixture_model, inputs):
    images, text = inputs
    with torch.no_grad():
        out = fixture_model(images, text)
        assert out["logits"].shape == (4, text.shape[1] - 1, 1000)
        assert torch.equal(out["labels"], text[:, 1:])
        assert torch.allclose(out["logit_scale"], torch.tensor(20.0))
        assert "logit_bias" not in out
        no_labels = fixture_model(images, text, output_labels=False)
        assert "labels" not in no_labels and no_labels["logits"].shape[1] == text.shape[1]
        image_only = fixture_model(images)
        assert set(image_only) == {"image_features", "image_embs"}
        # decoder logits are a function of the prefix only (causal)
        torch.testing.assert_close(no_labels["logits"][:, :-1], out["logits"])
        assert torch.allclose(fixture_model.encode_image(images).norm(dim=-1), torch.ones(4))
        raw = fixture_model.encode_text(text, normalize=False)
        torch.testing.assert_close(torch.nn.functional.normalize(raw, dim=-1), out["text_features"])


def test_logit_bias_and_nonscalar_scale():
    cfg = _tiny_cfg()
    cfg.pop("custom_text")
    model = CoCa(**cfg, init_logit_bias=-10.0, nonscalar_logit_scale=True)
    assert model.logit_scale.shape == (1,) and model.logit_bias.shape == (1,)
    assert math.isclose(model.logit_scale.item(), math.log(1 / 0.07), rel_tol=1e-6)
    out = model(torch.randn(2, 3, 32, 32), torch.randint(1, 999, (2, 20)))
    assert torch.equal(out["logit_bias"], model.logit_bias)


def test_lock_towers():
    cfg = _tiny_cfg()
    cfg.pop("custom_text")
    model = CoCa(**cfg)
    model.lock_image_tower()
    model.lock_text_tower()
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {n for n, _ in model.named_parameters() if n.startswith(("visual.", "text."))}
    model = CoCa(**cfg)
    model.lock_text_tower(unlocked_layers=1)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad and n.startswith("text.")}
    assert trainable == {"text.text_projection"}
    with pytest.raises(AssertionError):
        model.lock_text_tower(freeze_layer_norm=False)


def _no_pool_cfg():
    """coca_base-like: no attentional pooler, image tokens of the decoder width."""
    cfg = _tiny_cfg()
    cfg["vision_cfg"].update(width=32, attentional_pool=False)
    return cfg


@pytest.mark.parametrize("precision,pooled", [
    ("fp16", False), ("bf16", False), ("fp16", True), ("bf16", True),
])
def test_low_precision(precision, pooled):
    name = "_coca_lp_case"
    _MODEL_CONFIGS[name] = _tiny_cfg() if pooled else _no_pool_cfg()
    try:
        model = create_model(name, precision=precision).eval()
    finally:
        _MODEL_CONFIGS.pop(name, None)
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    # 3.3 dtype table: the decoder projection stays fp32, the towers' matmul weights are cast
    assert model.text_decoder.text_projection.dtype == torch.float32
    assert model.text_decoder.resblocks[0].attn.in_proj_weight.dtype == dtype
    images = torch.randn(2, 3, 32, 32).to(dtype)
    text = torch.randint(1, 999, (2, 20))
    with torch.no_grad():
        out = model(images, text)
        assert torch.isfinite(out["logits"]).all()
        captions = model.generate(images, seq_len=8, generation_type="top_k", sot_token_id=SOT,
                                  eos_token_id=EOS, pad_token_id=PAD)
    assert captions.shape[0] == 2 and captions.shape[1] <= 8


def test_grad_checkpointing_matches(fixture_model, inputs):
    images, text = inputs
    cfg = _tiny_cfg()
    cfg.pop("custom_text")
    model = CoCa(**cfg)
    model.load_state_dict(fixture_model.state_dict())
    plain = model(images, text)["logits"]
    model.set_grad_checkpointing(True)
    assert model.text_decoder.grad_checkpointing
    checkpointed = model(images, text)["logits"]
    checkpointed.sum().backward()
    torch.testing.assert_close(checkpointed, plain)


def test_forward_intermediates(fixture_model, inputs):
    images, text = inputs
    with torch.no_grad():
        out = fixture_model.forward_intermediates(images, text, image_indices=1, text_indices=1,
                                                  output_logit_scale_bias=True)
        assert {"image_intermediates", "image_features", "text_intermediates", "text_features",
                "logit_scale"} <= set(out)
        torch.testing.assert_close(out["text_features"], fixture_model.encode_text(text))
        torch.testing.assert_close(out["image_features"], fixture_model.encode_image(images))
        assert out["text_intermediates"][0].shape[1] == text.shape[1]  # CLS column removed
        with pytest.raises(AssertionError, match="FIXME"):
            fixture_model.forward_intermediates(images, text, output_logits=True)
        with pytest.raises(AssertionError, match="MultimodalTransformer"):
            fixture_model.text_decoder.forward_intermediates(text)
