"""OpenAI checkpoints: shape inference, state-dict and TorchScript archives, precision handling."""

import io
import json
import math
import pathlib
import pickle
import zipfile

import pytest
import torch
from torch import nn

from open_clip import openai
from open_clip.models.clip import CLIP, CLIPTextCfg, CLIPVisionCfg, convert_weights_to_lp
from open_clip.openai import (
    build_model_from_openai_state_dict,
    list_openai_models,
    load_openai_model,
    read_openai_state_dict,
)

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*:FutureWarning")

FIXTURES = pathlib.Path(__file__).parents[1] / "fixtures"
CONFIGS = pathlib.Path(openai.__file__).parent / "model_configs"
OPENAI_ARCHS = ["RN50", "RN101", "RN50x4", "RN50x16", "RN50x64", "ViT-B-32", "ViT-B-16", "ViT-L-14", "ViT-L-14-336"]

# A tiny ViT CLIP described only by its OpenAI state-dict layout (written from OpenAI's key names).
W, LAYERS, PATCH, GRID, EMBED, CTX, VOCAB, TW, TLAYERS = 64, 2, 8, 3, 16, 10, 50, 64, 2


def _block(prefix, width, g):
    return {
        f"{prefix}.ln_1.weight": 1 + 0.1 * torch.randn(width, generator=g),
        f"{prefix}.ln_1.bias": 0.1 * torch.randn(width, generator=g),
        f"{prefix}.attn.in_proj_weight": torch.randn(3 * width, width, generator=g) / math.sqrt(width),
        f"{prefix}.attn.in_proj_bias": 0.1 * torch.randn(3 * width, generator=g),
        f"{prefix}.attn.out_proj.weight": torch.randn(width, width, generator=g) / math.sqrt(width),
        f"{prefix}.attn.out_proj.bias": 0.1 * torch.randn(width, generator=g),
        f"{prefix}.ln_2.weight": 1 + 0.1 * torch.randn(width, generator=g),
        f"{prefix}.ln_2.bias": 0.1 * torch.randn(width, generator=g),
        f"{prefix}.mlp.c_fc.weight": torch.randn(4 * width, width, generator=g) / math.sqrt(width),
        f"{prefix}.mlp.c_fc.bias": 0.1 * torch.randn(4 * width, generator=g),
        f"{prefix}.mlp.c_proj.weight": torch.randn(width, 4 * width, generator=g) / math.sqrt(4 * width),
        f"{prefix}.mlp.c_proj.bias": 0.1 * torch.randn(width, generator=g),
    }


def openai_vit_state_dict(seed=0):
    g = torch.Generator().manual_seed(seed)
    sd = {
        "positional_embedding": 0.01 * torch.randn(CTX, TW, generator=g),
        "text_projection": torch.randn(TW, EMBED, generator=g) / math.sqrt(TW),
        "logit_scale": torch.tensor(math.log(1 / 0.07)),
        "visual.class_embedding": torch.randn(W, generator=g) / math.sqrt(W),
        "visual.positional_embedding": torch.randn(GRID * GRID + 1, W, generator=g) / math.sqrt(W),
        "visual.proj": torch.randn(W, EMBED, generator=g) / math.sqrt(W),
        "visual.conv1.weight": torch.randn(W, 3, PATCH, PATCH, generator=g) / PATCH,
        "visual.ln_pre.weight": torch.ones(W),
        "visual.ln_pre.bias": torch.zeros(W),
        "visual.ln_post.weight": torch.ones(W),
        "visual.ln_post.bias": torch.zeros(W),
        "token_embedding.weight": 0.02 * torch.randn(VOCAB, TW, generator=g),
        "ln_final.weight": torch.ones(TW),
        "ln_final.bias": torch.zeros(TW),
    }
    for i in range(LAYERS):
        sd.update(_block(f"visual.transformer.resblocks.{i}", W, g))
    for i in range(TLAYERS):
        sd.update(_block(f"transformer.resblocks.{i}", TW, g))
    return sd


def direct_vit_model(cast_dtype=None):
    """The same architecture built from an explicit config (what the shapes must resolve to)."""
    vision = CLIPVisionCfg(layers=LAYERS, width=W, patch_size=PATCH, image_size=PATCH * GRID)
    text = CLIPTextCfg(context_length=CTX, vocab_size=VOCAB, width=TW, heads=TW // 64, layers=TLAYERS)
    return CLIP(EMBED, vision, text, quick_gelu=True, cast_dtype=cast_dtype).eval()


def _inputs(seed=1):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(2, 3, PATCH * GRID, PATCH * GRID, generator=g)
    text = torch.randint(1, VOCAB - 1, (2, CTX), generator=g)
    text[:, -1] = VOCAB - 1  # end-of-text is the largest id (argmax pooling)
    return images, text


def _outputs(model):
    images, text = _inputs()
    images = images.to(model.visual.conv1.weight.dtype)  # callers feed images in the weights' dtype
    with torch.no_grad():
        return model.encode_image(images).float(), model.encode_text(text).float()


def _castable(key):
    """Keys convert_weights_to_lp casts (spec 01 §5.2) for this ViT."""
    return key.endswith("proj_weight") or key.endswith("proj_bias") or ".mlp." in key or key in (
        "visual.conv1.weight", "visual.proj", "text_projection",
    ) or "out_proj" in key  # fmt: skip


class _Holder(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def save_torchscript_archive(state_dict, path):
    """A TorchScript archive whose state dict is `state_dict` plus OpenAI's three extras."""
    root = _Holder()
    for key, value in state_dict.items():
        *parents, leaf = key.split(".")
        module = root
        for name in parents:
            if not hasattr(module, name):
                module.add_module(name, _Holder())
            module = getattr(module, name)
        module.register_parameter(leaf, nn.Parameter(value.clone(), requires_grad=False))
    root.register_buffer("input_resolution", torch.tensor(PATCH * GRID))
    root.register_buffer("context_length", torch.tensor(CTX))
    root.register_buffer("vocab_size", torch.tensor(VOCAB))
    torch.jit.save(torch.jit.script(root), str(path))


def test_list_openai_models():
    assert list_openai_models() == OPENAI_ARCHS + [a + "-quickgelu" for a in OPENAI_ARCHS]


@pytest.fixture(scope="module")
def layouts():
    return json.loads((FIXTURES / "reference" / "state_dict_layouts.json").read_text())


@pytest.mark.parametrize("arch", OPENAI_ARCHS)
def test_shape_inference_matches_shipped_configs(arch, layouts):
    entries = layouts[arch]["state_dict"]
    entries = json.loads(entries.replace("'", '"')) if isinstance(entries, str) else entries
    sd = {k: torch.empty(shape, device="meta") for k, shape, _ in entries}
    cfg = json.loads((CONFIGS / f"{arch}.json").read_text())
    vision, text = openai._infer_vision_cfg(sd), openai._infer_text_cfg(sd)
    expected_layers = cfg["vision_cfg"]["layers"]
    assert vision["layers"] == (tuple(expected_layers) if isinstance(expected_layers, list) else expected_layers)
    assert vision["width"] == cfg["vision_cfg"]["width"]
    assert vision["image_size"] == cfg["vision_cfg"]["image_size"]
    assert vision["patch_size"] == cfg["vision_cfg"].get("patch_size")
    for key in ("context_length", "vocab_size", "width", "heads", "layers"):
        assert text[key] == cfg["text_cfg"].get(key, CLIPTextCfg.__dataclass_fields__[key].default), key
    assert sd["text_projection"].shape[1] == cfg["embed_dim"]


def test_build_from_state_dict_matches_direct_model_and_rounds_once():
    sd = openai_vit_state_dict()
    caller = dict(sd, input_resolution=torch.tensor(24), context_length=torch.tensor(CTX), vocab_size=torch.tensor(50))
    model = build_model_from_openai_state_dict(caller)
    assert not any(k in caller for k in ("input_resolution", "context_length", "vocab_size"))  # popped, as in 3.3
    assert not model.training
    got = model.state_dict()
    for key, value in sd.items():
        expected = value.half() if _castable(key) else value
        assert got[key].dtype == expected.dtype and torch.equal(got[key], expected), key

    direct = direct_vit_model(cast_dtype=torch.float16)  # the builder's default cast_dtype
    direct.load_state_dict(sd)
    convert_weights_to_lp(direct)
    for a, b in zip(_outputs(model), _outputs(direct)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["state_dict", "torchscript", "training_checkpoint"])
def test_load_openai_model_from_file_equals_direct_model(tmp_path, kind):
    sd = openai_vit_state_dict()
    path = tmp_path / "model.pt"
    if kind == "state_dict":
        torch.save(sd, path)
    elif kind == "torchscript":
        save_torchscript_archive(sd, path)
    else:
        torch.save({"state_dict": {"module." + k: v for k, v in sd.items()}, "epoch": 3}, path)
    model = load_openai_model(str(path), device=torch.device("cpu"))  # 3.3 picked fp16 for this device
    assert not model.training
    assert model.visual.image_mean == (0.48145466, 0.4578275, 0.40821073)
    got = model.state_dict()
    for key, value in sd.items():  # fp32 in, fp32 out: no fp16 round trip (3.3 bug fixed)
        assert got[key].dtype == torch.float32 and torch.equal(got[key], value), key

    direct = direct_vit_model()
    direct.load_state_dict(sd)
    for a, b in zip(_outputs(model), _outputs(direct)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_torchscript_archive_state_dict_is_read_without_extras_leaking(tmp_path):
    sd = openai_vit_state_dict()
    save_torchscript_archive(sd, tmp_path / "a.pt")
    read = read_openai_state_dict(str(tmp_path / "a.pt"))
    assert set(read) == set(sd) | {"input_resolution", "context_length", "vocab_size"}
    assert all(torch.equal(read[k], sd[k]) for k in sd)


def test_original_fp16_archive_loads_exactly(tmp_path):
    sd = {k: (v.half() if _castable(k) else v) for k, v in openai_vit_state_dict().items()}
    save_torchscript_archive(sd, tmp_path / "ViT.pt")
    model = load_openai_model(str(tmp_path / "ViT.pt"), precision="fp32", device="cpu")
    got = model.state_dict()
    assert all(torch.equal(got[k], v.float()) for k, v in sd.items())


@pytest.mark.parametrize("precision, dtype", [("fp16", torch.float16), ("bf16", torch.bfloat16)])
def test_low_precision_rounds_once(tmp_path, precision, dtype):
    sd = openai_vit_state_dict()
    torch.save(sd, tmp_path / "m.pt")
    model = load_openai_model(str(tmp_path / "m.pt"), precision=precision, device="cpu")
    got = model.state_dict()
    double_rounded_differs = False
    for key, value in sd.items():
        if _castable(key):
            assert got[key].dtype == dtype and torch.equal(got[key], value.to(dtype)), key
            double_rounded_differs |= not torch.equal(value.half().to(dtype), value.to(dtype))
        else:
            assert got[key].dtype == torch.float32 and torch.equal(got[key], value), key
    assert double_rounded_differs or precision == "fp16"  # the bf16 check can tell the two apart


def test_resnet_model_round_trip(tmp_path):
    torch.manual_seed(0)
    vision = CLIPVisionCfg(layers=(1, 1, 1, 1), width=8, image_size=64, patch_size=None)
    text = CLIPTextCfg(context_length=CTX, vocab_size=VOCAB, width=64, heads=1, layers=1)
    direct = CLIP(8, vision, text, quick_gelu=True).eval()
    torch.save(direct.state_dict(), tmp_path / "rn.pt")
    model = load_openai_model(str(tmp_path / "rn.pt"), device="cpu")
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(images), direct.encode_image(images), rtol=0, atol=0)
    assert model.visual.image_size == 64


def test_unknown_name_and_registry_url(tmp_path, monkeypatch):
    with pytest.raises(RuntimeError, match=r"Model nope not found; available models = \['RN50'"):
        load_openai_model("nope", device="cpu")
    seen = []
    torch.save(openai_vit_state_dict(), tmp_path / "ViT-B-32.pt")

    def fake_download(url, cache_dir=None):
        seen.append((url, cache_dir))
        return str(tmp_path / "ViT-B-32.pt")

    monkeypatch.setattr(openai, "download_pretrained_from_url", fake_download)
    load_openai_model("ViT-B-32", device="cpu", cache_dir="c")
    assert seen == [(openai.get_pretrained_url("ViT-B-32", "openai"), "c")]


class _Evil:
    def __reduce__(self):
        return (print, ("this ran",))


def test_pickle_needing_code_is_refused(tmp_path):
    torch.save({"weights": torch.ones(1), "obj": _Evil()}, tmp_path / "evil.pt")
    with pytest.raises(RuntimeError, match="Refusing to load .*weights_only=True"):
        load_openai_model(str(tmp_path / "evil.pt"), device="cpu")


def test_torchscript_archive_needing_code_is_refused(tmp_path):
    save_torchscript_archive(openai_vit_state_dict(), tmp_path / "ok.pt")
    with zipfile.ZipFile(tmp_path / "ok.pt") as src, zipfile.ZipFile(tmp_path / "bad.pt", "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename.endswith("/data.pkl"):
                buffer = io.BytesIO()
                pickle.dump(_Evil(), buffer, protocol=2)
                data = buffer.getvalue()
            dst.writestr(item, data)
    with pytest.raises(RuntimeError, match="Refusing to load .*print, which is not plain data"):
        load_openai_model(str(tmp_path / "bad.pt"), device="cpu")
