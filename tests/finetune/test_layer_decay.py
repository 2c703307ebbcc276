"""Layer-wise LR decay and per-tower LR / weight decay: every parameter against a hand-built table."""

import pytest
import torch

from open_clip_train.errors import ConfigError
from open_clip_train.layer_decay import build_param_groups, parameter_depths
from open_clip_train.optim import create_optimizer
from open_clip_train.scheduler import cosine_lr

# The tiny CLIP of these tests has 2 image blocks and 2 text blocks (L = 2): depth 0 = embeddings,
# 1 and 2 = blocks, 3 = top. Names by hand, per tower; block parameters are the same in every block.
BLOCK = ["ln_1.weight", "ln_1.bias", "attn.in_proj_weight", "attn.in_proj_bias", "attn.out_proj.weight",
         "attn.out_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight",
         "mlp.c_proj.bias"]
# name -> (tower, depth, decayed by 3.3's rule)
TABLE = {
    "visual.conv1.weight": ("image", 0, True),
    "visual.class_embedding": ("image", 0, False),
    "visual.positional_embedding": ("image", 0, True),
    "visual.ln_pre.weight": ("image", 0, False),
    "visual.ln_pre.bias": ("image", 0, False),
    "visual.ln_post.weight": ("image", 3, False),
    "visual.ln_post.bias": ("image", 3, False),
    "visual.proj": ("image", 3, True),
    "token_embedding.weight": ("text", 0, True),
    "positional_embedding": ("text", 0, True),
    "ln_final.weight": ("text", 3, False),
    "ln_final.bias": ("text", 3, False),
    "text_projection": ("text", 3, True),
    "logit_scale": ("shared", None, False),
}
for i in range(2):
    for p in BLOCK:
        decayed = p.endswith("weight") and not p.startswith("ln_")
        TABLE[f"visual.transformer.resblocks.{i}.{p}"] = ("image", i + 1, decayed)
        TABLE[f"transformer.resblocks.{i}.{p}"] = ("text", i + 1, decayed)


@pytest.fixture
def model(tiny_clip):
    from open_clip.factory import create_model

    return create_model(tiny_clip["registered"])


def _lr_wd_by_name(model, groups):
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)]: (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}


def _expected(base, wd, decay=1.0, lr_image=None, lr_text=None, wd_image=None, wd_text=None):
    out = {}
    for name, (tower, depth, decayed) in TABLE.items():
        tower_lr = {"image": lr_image, "text": lr_text}.get(tower) or base
        tower_wd = {"image": wd_image, "text": wd_text}.get(tower)
        lr = tower_lr if depth is None else tower_lr * decay ** (2 + 1 - depth)
        out[name] = (lr, (wd if tower_wd is None else tower_wd) if decayed else 0.0)
    return out


def test_table_covers_the_model(model):
    assert set(TABLE) == {n for n, _ in model.named_parameters()}
    depths = parameter_depths(model)
    for name, (tower, depth, _) in TABLE.items():
        assert depths[name].tower == tower, name
        if depth is not None:
            assert (depths[name].depth, depths[name].num_layers) == (depth, 2), name


def test_layer_decay_groups(model):
    groups = build_param_groups(model, lr=1e-3, weight_decay=0.2, layer_decay=0.5)
    got, want = _lr_wd_by_name(model, groups), _expected(1e-3, 0.2, decay=0.5)
    assert got.keys() == want.keys()
    for name in want:
        assert got[name] == pytest.approx(want[name], rel=1e-12), name
    for g in groups:
        assert g["lr"] == pytest.approx(1e-3 * g["lr_scale"], rel=1e-12)


def test_per_tower_overrides_with_layer_decay(model):
    kw = dict(lr_image=4e-3, lr_text=1e-4, wd_image=0.05, wd_text=0.0)
    got = _lr_wd_by_name(model, build_param_groups(model, lr=1e-3, weight_decay=0.2, layer_decay=0.8, **kw))
    want = _expected(1e-3, 0.2, decay=0.8, **kw)
    for name in want:
        assert got[name] == pytest.approx(want[name], rel=1e-12), name


def test_per_tower_without_decay_and_frozen_params(model):
    model.transformer.requires_grad_(False)  # frozen parameters never reach the optimizer
    got = _lr_wd_by_name(model, build_param_groups(model, lr=1e-3, weight_decay=0.2, lr_image=2e-3))
    want = {k: v for k, v in _expected(1e-3, 0.2, lr_image=2e-3).items() if not k.startswith("transformer.")}
    assert got.keys() == want.keys()
    for name in want:
        assert got[name] == pytest.approx(want[name], rel=1e-12), name


def test_defaults_keep_the_33_groups_and_schedule(model):
    opt = create_optimizer(model, "adamw", lr=1e-3, wd=0.2, beta1=0.9, beta2=0.98, eps=1e-6)
    assert len(opt.param_groups) == 2 and all("lr_scale" not in g for g in opt.param_groups)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.0, 0.2]
    cosine_lr(opt, 1e-3, 10, 100)(50)
    assert opt.param_groups[0]["lr"] == opt.param_groups[1]["lr"]


def test_schedule_scales_each_group(model):
    opt = create_optimizer(model, "adamw", lr=1e-3, wd=0.2, beta1=0.9, beta2=0.98, eps=1e-6, layer_decay=0.5)
    lr = cosine_lr(opt, 1e-3, 10, 100)(50)
    assert {round(g["lr"] / lr, 9) for g in opt.param_groups} == {0.125, 0.25, 0.5, 1.0}


def test_ddp_style_prefix_and_resnet_depths():
    from open_clip.factory import create_model

    cfg = {"embed_dim": 16, "vision_cfg": {"image_size": 64, "layers": [1, 2, 1, 1], "width": 8},
           "text_cfg": {"context_length": 8, "vocab_size": 100, "width": 16, "heads": 2, "layers": 1}}
    depths = parameter_depths(torch.nn.ModuleDict({"module": create_model("RN50", **cfg)}))
    d = {k[len("module."):]: (v.tower, v.depth, v.num_layers) for k, v in depths.items()}
    # stem 0; residual blocks numbered across stages (layer1.0 -> 1, layer2.0 -> 2, layer2.1 -> 3, ...); pool on top
    assert d["visual.conv1.weight"] == d["visual.bn3.bias"] == ("image", 0, 5)
    assert d["visual.layer1.0.conv1.weight"][1] == 1 and d["visual.layer2.1.bn2.weight"][1] == 3
    assert d["visual.layer4.0.downsample.0.weight"][1] == 5
    assert d["visual.attnpool.c_proj.weight"] == ("image", 6, 5)


def test_bad_settings_are_named(model):
    with pytest.raises(ConfigError, match="--layer-decay 0"):
        build_param_groups(model, lr=1e-3, weight_decay=0.2, layer_decay=0.0)
    with pytest.raises(ConfigError, match="--lr-text -1"):
        build_param_groups(model, lr=1e-3, weight_decay=0.2, lr_text=-1.0)
    with pytest.raises(ConfigError, match="--opt timm/lamb"):
        create_optimizer(model, "timm/lamb", lr=1e-3, wd=0.1, beta1=None, beta2=None, eps=None, layer_decay=0.9)
