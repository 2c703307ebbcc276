"""SigLIP-style models with a timm image tower: safetensors round trip through create_model,
a few SigLipLoss training steps in the training app, and tokenizer resolution of the built-in
SigLIP configs against a tiny local tokenizer (no downloads)."""

import json
import math
import pathlib

import pytest
import torch

pytest.importorskip("timm")

ROOT = pathlib.Path(__file__).resolve().parents[2]
CONFIG_DIR = ROOT / "src" / "open_clip" / "model_configs"

# A miniature of ViT-B-16-SigLIP: timm map-pool trunk without projection, bidirectional text tower
# pooled at the last token, projection bias, eps 1e-6 norms, logit bias -10. The name avoids
# 'siglip' so the training app picks the plain tokenizer (SigLipTokenizer would download).
TINY = {
    "custom_text": True,
    "embed_dim": 96,
    "init_logit_bias": -10,
    "vision_cfg": {"image_size": 160, "timm_model_name": "test_vit3", "timm_model_pretrained": False,
                   "timm_pool": "map", "timm_proj": "none"},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1,
                 "no_causal_mask": True, "pool_type": "last", "proj_bias": True, "norm_kwargs": {"eps": 1e-6}},
}
NAME = "tiny-sl-timm"


@pytest.fixture(scope="module")
def tiny_name(tmp_path_factory):
    factory = pytest.importorskip("open_clip.factory")
    d = tmp_path_factory.mktemp("cfg")
    (d / f"{NAME}.json").write_text(json.dumps(TINY))
    from open_clip import config_registry

    paths = list(config_registry._MODEL_CONFIG_PATHS)
    factory.add_model_config(d)
    yield NAME
    # registered for the whole module: take it out again so later modules see the shipped registry
    config_registry._MODEL_CONFIGS.pop(NAME, None)
    config_registry._MODEL_CONFIG_PATHS[:] = paths


def _inputs():
    g = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, 160, 160, generator=g)
    text = torch.randint(1, 49407, (3, 16), generator=g)
    text[:, -1] = 49407
    return images, text


def test_siglip_timm_round_trip(tmp_path, tiny_name):
    from safetensors.torch import save_file

    from open_clip.factory import create_model

    torch.manual_seed(0)
    model = create_model(tiny_name).eval()
    assert type(model).__name__ == "CustomTextCLIP" and type(model.visual).__name__ == "TimmModel"
    keys = list(model.state_dict())
    assert keys[:2] == ["logit_scale", "logit_bias"]
    assert model.logit_bias.item() == -10 and model.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    assert not any(k.startswith("visual.head.") for k in keys)  # timm_proj 'none': trunk features
    assert all(k.startswith(("visual.trunk.", "text.", "logit_")) for k in keys)
    with torch.no_grad():  # perturb everything so defaults (zeros / ones) cannot pass by chance
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))

    torch.manual_seed(123)
    fresh = create_model(tiny_name).eval()
    reloaded = create_model(tiny_name, pretrained=str(path)).eval()
    images, text = _inputs()
    with torch.no_grad():
        expected = model(images, text)
        got = reloaded(images, text)
        other = fresh(images, text)
    for a, b in zip(expected, got):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(expected[0], other[0])
    assert expected[0].shape == (2, 96) and expected[1].shape == (3, 96)


def test_siglip_timm_trains_with_siglip_loss(tmp_path, tiny_name):
    main = pytest.importorskip("open_clip_train.main").main
    args = ["--model", tiny_name, "--siglip", "--dataset-type", "synthetic", "--train-num-samples", "8",
            "--batch-size", "4", "--workers", "0", "--epochs", "1", "--lr", "1e-3", "--warmup", "1",
            "--precision", "fp32", "--device", "cpu", "--logs", str(tmp_path / "logs"), "--name", "run",
            "--log-every-n-steps", "1", "--seed", "0"]
    assert main(args) is None
    ckpt = torch.load(tmp_path / "logs" / "run" / "checkpoints" / "epoch_1.pt", weights_only=True)
    state = ckpt["state_dict"]
    assert ckpt["global_step"] == 2
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    assert state["logit_bias"].item() != -10  # the SigLIP bias is trained
    log = (tmp_path / "logs" / "run" / "out.log").read_text()
    assert "siglip" in log.lower() or "SigLip" in log or "loss" in log.lower()


# ---------------------------------------------------------------------------------------------
# SigLIP / SigLIP2 configs resolve to an HF tokenizer (built here from a tiny local vocabulary)
# ---------------------------------------------------------------------------------------------

def _siglip_configs() -> dict:
    out = {}
    for path in sorted(CONFIG_DIR.glob("*.json")):
        cfg = json.loads(path.read_text())
        text_cfg = cfg.get("text_cfg", {})
        # NLLB-SigLIP configs use an HF text model and its own tokenizer: not SigLIP tokenizers
        if "siglip" in path.stem.lower() and text_cfg.get("hf_tokenizer_name") and not text_cfg.get("hf_model_name"):
            out[path.stem] = cfg
    return out


SIGLIP_CONFIGS = _siglip_configs()
WORDS = ["<pad>", "</s>", "<unk>", "a", "photo", "of", "hello", "world", "cat"]


def _save_tiny_tokenizer(directory: pathlib.Path) -> None:
    tokenizers = pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    from tokenizers import models, pre_tokenizers, processors

    tok = tokenizers.Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                                                unk_token="<unk>")
    fast.save_pretrained(directory)


def test_siglip_config_count():
    assert len(SIGLIP_CONFIGS) == 26  # 28 SigLIP configs minus the two NLLB ones
    assert all(c["text_cfg"]["tokenizer_kwargs"] == {"clean": "canonicalize"} for c in SIGLIP_CONFIGS.values())


@pytest.mark.parametrize("name", sorted(SIGLIP_CONFIGS))
def test_siglip_configs_resolve_hf_tokenizer(tmp_path, name):
    tokenizer_config = pytest.importorskip("open_clip.tokenizer_config")
    cfg = SIGLIP_CONFIGS[name]
    _save_tiny_tokenizer(tmp_path)
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": {}}))
    tokenizer = tokenizer_config.get_tokenizer(f"local-dir:{tmp_path}")
    assert type(tokenizer).__name__ == "HFTokenizer"
    context_length = cfg["text_cfg"]["context_length"]
    ids = tokenizer(["Hello, World!", "a_photo of a CAT."])
    assert ids.shape == (2, context_length)
    # canonicalize cleaning: punctuation removed, '_' -> space, lower-cased; eos appended, pad 0
    word = {w: i for i, w in enumerate(WORDS)}
    expected = [[word["hello"], word["world"], 1], [word["a"], word["photo"], word["of"], word["a"], word["cat"], 1]]
    for row, exp in zip(ids.tolist(), expected):
        assert row == exp + [0] * (context_length - len(exp))
