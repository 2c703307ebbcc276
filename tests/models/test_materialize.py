"""Meta-device build + ``materialize`` equals a normal seeded build bit for bit (every parameter and
buffer, and the RNG left in the same state), for a shrunk copy of every shipped config whose towers
are native, and for a few configs at full size."""

import copy

import pytest
import torch

from open_clip.config_registry import get_model_config, list_models
from open_clip.factory import _choose_model_class
from open_clip.models.materialize import UnsupportedMaterialize, materialize


def _native(cfg: dict) -> bool:
    return "timm_model_name" not in cfg["vision_cfg"] and "hf_model_name" not in cfg["text_cfg"]


def shrink(cfg: dict) -> dict:
    """Same options, tiny sizes: 2 blocks of width 32 (ResNets: one block per stage)."""
    cfg = copy.deepcopy(cfg)
    cfg["embed_dim"] = 16
    vision = cfg["vision_cfg"]
    if isinstance(vision.get("layers"), (list, tuple)):
        vision.update(layers=[1, 1, 1, 1], width=8, head_width=8, image_size=64)
    else:
        patch = vision.get("patch_size", 16)
        vision.update(layers=2, width=32, head_width=8, image_size=2 * patch)
        if "attn_pooler_queries" in vision or vision.get("attentional_pool"):
            vision.update(attn_pooler_queries=4, attn_pooler_heads=2)
    cfg["text_cfg"].update(width=32, heads=4, layers=2)
    if "multimodal_cfg" in cfg:
        cfg["multimodal_cfg"].update(width=32, heads=4, layers=1)
    return cfg


NATIVE = sorted(n for n in list_models() if _native(get_model_config(n)))


def build(cfg: dict) -> torch.nn.Module:
    cfg = copy.deepcopy(cfg)
    cls = _choose_model_class(cfg, force_custom_text=False)  # pops custom_text
    return cls(**cfg)


def assert_materialized_equals_eager(cfg: dict) -> None:
    torch.manual_seed(0)
    eager = build(cfg)
    after_eager = torch.rand(4)
    torch.manual_seed(0)
    with torch.device("meta"):
        meta = build(cfg)
    materialize(meta)
    after_meta = torch.rand(4)
    expected = dict(eager.named_parameters()) | dict(eager.named_buffers())
    got = dict(meta.named_parameters()) | dict(meta.named_buffers())
    assert got.keys() == expected.keys()
    unequal = [name for name in expected if not torch.equal(got[name], expected[name])]
    assert not unequal
    assert torch.equal(after_meta, after_eager)


def test_registry_has_native_configs():
    assert len(NATIVE) == 58  # 55 CLIP + 3 CoCa


@pytest.mark.parametrize("name", NATIVE)
def test_shrunk_config_materializes_like_eager(name):
    assert_materialized_equals_eager(shrink(get_model_config(name)))


@pytest.mark.parametrize("name", ["ViT-B-32", "RN50"])
def test_full_size_config_materializes_like_eager(name):
    assert_materialized_equals_eager(get_model_config(name))


def test_unsupported_state_is_named():
    class Cached(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("table", torch.arange(3), persistent=False)

    with torch.device("meta"):
        module = Cached()
    with pytest.raises(UnsupportedMaterialize, match="table|Cached"):
        materialize(module)


@pytest.mark.parametrize("precision", ["pure_bf16", "bf16"])
def test_low_precision_meta_build_draws_like_a_cast_eager_build(precision):
    # eager: float32 init, then the precision cast; meta: cast first, so the draws must be float32
    from open_clip.precision import get_cast_dtype, set_model_device_and_precision

    cfg = shrink(get_model_config("ViT-B-32"))
    cast = get_cast_dtype(precision)
    torch.manual_seed(0)
    eager = _choose_model_class(copy.deepcopy(cfg), False)(**cfg, cast_dtype=cast)
    set_model_device_and_precision(eager, torch.device("cpu"), precision)
    torch.manual_seed(0)
    with torch.device("meta"):
        meta = _choose_model_class(copy.deepcopy(cfg), False)(**cfg, cast_dtype=cast)
    set_model_device_and_precision(meta, torch.device("meta"), precision)
    materialize(meta)
    for (name, a), (_, b) in zip(eager.state_dict().items(), meta.state_dict().items()):
        assert a.dtype == b.dtype and torch.equal(a, b), name
