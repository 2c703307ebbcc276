"""The profiler: 3.3's functions and result keys, counting the full computation."""

import csv

import pytest
import torch

import open_clip
from open_clip_train import profiler

TINY = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 2, "head_width": 16},
    "text_cfg": {"context_length": 12, "vocab_size": 100, "width": 32, "heads": 2, "layers": 2},
}


@pytest.fixture
def tiny_name():
    open_clip.config_registry._MODEL_CONFIGS["_profile-tiny"] = TINY  # restored by conftest
    return "_profile-tiny"


def _linear_flops(tokens: int, width_in: int, width_out: int) -> int:
    return 2 * tokens * width_in * width_out


def test_text_tower_flops_are_full_length(tiny_name):
    """Token id 1 everywhere (3.3's input) would let the early stop compute one position; the
    profiler counts all 12, so the MLP alone accounts for 2 layers x 12 rows x 2 matmuls."""
    model = open_clip.create_model(tiny_name, force_custom_text=True).eval()
    flops = profiler.profile_torch_text(model.text, (12,), batch_size=2)
    mlp = 2 * (_linear_flops(12, 32, 128) + _linear_flops(12, 128, 32))
    assert flops > mlp
    assert getattr(model, "text_early_stop", True) is True  # switched back on afterwards


def test_profile_model_keys_and_counts(tiny_name):
    row = profiler.profile_model(tiny_name, profiler="torch", device="cpu")
    assert list(row) == [
        "model", "image_size", "image_width", "text_width", "embed_dim", "mparams", "image_mparams",
        "text_mparams", "gflops", "image_gflops", "text_gflops",
    ]  # fmt: skip
    assert (row["model"], row["image_size"], row["image_width"], row["text_width"], row["embed_dim"]) == (
        tiny_name, 32, 32, 32, 16,
    )  # fmt: skip
    model = open_clip.create_model(tiny_name, force_custom_text=True)
    assert profiler.count_params(model) == sum(p.numel() for p in model.parameters())
    image = profiler.profile_torch_image(model.visual, (3, 32, 32))
    text = profiler.profile_torch_text(model.text, (12,))
    both = profiler.profile_torch(model, (12,), (3, 32, 32))
    assert both >= image + text > 0


def test_fvcore_is_optional(tiny_name):
    assert "fvcore" in dir(profiler)
    if profiler.fvcore is None:
        model = open_clip.create_model(tiny_name, force_custom_text=True)
        with pytest.raises(ImportError, match="pip install fvcore"):
            profiler.profile_fvcore_text(model.text, (12,))


def test_command_line_writes_sorted_csv(tiny_name, tmp_path):
    out = tmp_path / "profile.csv"
    profiler.main(["--model", tiny_name, "--device", "cpu", "--results-file", str(out)])
    rows = list(csv.DictReader(out.open()))
    assert [r["model"] for r in rows] == [tiny_name] and float(rows[0]["gflops"]) >= 0
    assert torch.get_default_dtype() == torch.float32
