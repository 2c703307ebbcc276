"""Bit-for-bit equality with OpenCLIP 3.3.0 on CPU float32, default settings (fast paths on), for
five configs with seeded random weights. Comparable only where 3.3 made the fixture: torch 2.14.1,
AVX512, 2 threads (see tests/fixtures/bitwise/README.md)."""

import pytest
import torch
from safetensors.torch import load_file

import open_clip
from open_clip.models import attention as attention_module

FIXTURE = "tests/fixtures/bitwise/outputs_3p3.safetensors"
MODELS = ["ViT-B-32", "RN50", "ViT-B-16", "ViT-B-32-quickgelu", "coca_ViT-B-32"]


def _environment_mismatch() -> str:
    version = torch.__version__.split("+")[0]
    capability = torch.backends.cpu.get_cpu_capability()
    if version != "2.14.1":
        return f"torch {version} (fixture: 2.14.1)"
    if capability != "AVX512":
        return f"CPU capability {capability} (fixture: AVX512)"
    return ""


@pytest.fixture(scope="module")
def expected(request):
    mismatch = _environment_mismatch()
    if mismatch:
        pytest.skip(f"3.3's bits are not comparable here: {mismatch}")
    return load_file(str(request.config.rootpath / FIXTURE))


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("name", MODELS)
def test_outputs_equal_3p3_bit_for_bit(name, expected, two_threads, monkeypatch):
    packed = []
    original = attention_module.ResidualAttentionBlock._forward_tokens
    monkeypatch.setattr(
        attention_module.ResidualAttentionBlock,
        "_forward_tokens",
        lambda self, *args: packed.append(1) or original(self, *args),
    )
    torch.manual_seed(0)
    model = open_clip.create_model(name).eval()
    size = model.visual.image_size
    size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
    images = torch.randn(3, 3, *size, generator=torch.Generator().manual_seed(100))
    with torch.no_grad():
        outputs = {
            "encode_image": model.encode_image(images),
            "encode_text_random": model.encode_text(expected[f"{name}/input_text_random"]),
            "encode_text_captions": model.encode_text(expected[f"{name}/input_text_captions"]),
        }
    for key, out in outputs.items():
        reference = expected[f"{name}/{key}"]
        assert torch.equal(out, reference), f"{key}: max |diff| {(out - reference).abs().max():.3e}"
    if name != "coca_ViT-B-32":  # CoCa's towers read every token (attentional pooler, class token)
        assert packed, "the fast paths did not run"
