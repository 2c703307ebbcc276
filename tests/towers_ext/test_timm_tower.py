"""TimmModel: state-dict layout of every timm-tower config vs the 3.3 reference dump (meta device),
head variants against timm's own modules, locking, checkpointing, intermediates, errors."""

import contextlib
import functools
import json
import pathlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

timm = pytest.importorskip("timm")

from open_clip.timm_model import TIMM_REQUIREMENT, TimmModel  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]
CONFIG_DIR = ROOT / "src" / "open_clip" / "model_configs"
LAYOUTS = ROOT / "tests" / "fixtures" / "reference" / "state_dict_layouts.json"


def _timm_configs() -> dict:
    out = {}
    for path in sorted(CONFIG_DIR.glob("*.json")):
        cfg = json.loads(path.read_text())
        if cfg.get("vision_cfg", {}).get("timm_model_name"):
            out[path.stem] = cfg
    return out


TIMM_CONFIGS = _timm_configs()


@functools.lru_cache(maxsize=1)
def _layouts() -> dict:
    return json.loads(LAYOUTS.read_text())


def _tower_args(cfg: dict) -> tuple:
    """What decides the tower's layout (image size and drop rates do not; proj 'none' ignores E)."""
    v = cfg["vision_cfg"]
    proj = v.get("timm_proj", "linear")
    embed_dim = 0 if proj == "none" else cfg["embed_dim"]
    return v["timm_model_name"], embed_dim, v.get("timm_pool", "avg"), proj, v.get("timm_proj_bias", False)


@contextlib.contextmanager
def _params_on_meta():
    """Fallback for timm versions whose constructors do real tensor work: keep only the
    parameters on the meta device (buffers stay on the CPU)."""
    original = nn.Module.register_parameter

    def register(self, name, param):
        if param is not None and param.device.type != "meta":
            param = nn.Parameter(param.detach().to("meta"), requires_grad=param.requires_grad)
        original(self, name, param)

    nn.Module.register_parameter = register
    try:
        yield
    finally:
        nn.Module.register_parameter = original


@functools.cache
def _meta_layout(args: tuple) -> list:
    name, embed_dim, pool, proj, proj_bias = args

    def build():
        return TimmModel(name, embed_dim or 8, pool=pool, proj=proj, proj_bias=proj_bias,
                         drop_path=0.1, pretrained=False)

    try:
        with torch.device("meta"):
            model = build()
    except (RuntimeError, NotImplementedError):  # older timm: .item() etc. on meta tensors
        with _params_on_meta():
            model = build()
    return [(k, list(t.shape)) for k, t in model.state_dict().items()]


def _reference_visual(name: str, cfg: dict):
    """Visual part of the reference dump for this config, or for another config with the same
    tower when the dump lacks this one (the NLLB-SigLIP configs)."""
    layouts = _layouts()
    source = name if name in layouts else next(
        (other for other, c in TIMM_CONFIGS.items() if other in layouts and _tower_args(c) == _tower_args(cfg)),
        None)
    if source is None:
        return None, None
    entries = layouts[source]["state_dict"]
    return source, [(k[len("visual."):], shape) for k, shape, _ in entries if k.startswith("visual.")]


def test_timm_config_counts():
    layouts = _layouts()
    in_dump = [n for n in TIMM_CONFIGS if n in layouts]
    assert all(layouts[n]["visual"] == "TimmModel" for n in in_dump)
    # every TimmModel entry of the dump is a timm config here, and vice versa
    assert sorted(in_dump) == sorted(n for n, e in layouts.items() if e["visual"] == "TimmModel")
    print(f"timm configs: {len(TIMM_CONFIGS)}, in reference dump: {len(in_dump)}, "
          f"missing from dump: {sorted(set(TIMM_CONFIGS) - set(in_dump))}")
    assert len(in_dump) >= 76


@pytest.mark.parametrize("name", sorted(TIMM_CONFIGS))
def test_timm_config_layout_matches_reference(name):
    source, expected = _reference_visual(name, TIMM_CONFIGS[name])
    if expected is None:
        pytest.skip(f"{name}: no reference layout with the same tower")
    got = _meta_layout(_tower_args(TIMM_CONFIGS[name]))
    assert got == expected, f"{name} (reference {source})"


# ---------------------------------------------------------------------------------------------
# Behaviour on tiny timm test models (real weights on the CPU)
# ---------------------------------------------------------------------------------------------

E = 24


@pytest.fixture(scope="module")
def image():
    torch.manual_seed(0)
    return torch.randn(2, 3, 160, 160)


def _reference_trunk(name: str, source: nn.Module, **kwargs) -> nn.Module:
    ref = timm.create_model(name, **kwargs).eval()
    ref.load_state_dict(source.state_dict())
    return ref


def test_timm_classifier_as_projection(image):
    # proj falsy: timm's own classifier (num_classes=E, global_pool=pool) is the projection
    model = TimmModel("test_vit", E, pool="token", proj=None).eval()
    assert not list(model.head.state_dict())
    assert model.trunk.state_dict()["head.weight"].shape == (E, 64)
    ref = _reference_trunk("test_vit", model.trunk, num_classes=E, global_pool="token")
    torch.testing.assert_close(model(image), ref(image))


def test_timm_proj_none_returns_trunk_features(image):
    model = TimmModel("test_vit3", 512, pool="map", proj="none").eval()
    assert not any(k.startswith("head.") for k in model.trunk.state_dict())  # no classifier
    ref = _reference_trunk("test_vit3", model.trunk, num_classes=0, global_pool="map")
    out = model(image)
    assert out.shape == (2, 96)
    torch.testing.assert_close(out, ref(image))


@pytest.mark.parametrize("proj_bias", [False, True])
def test_timm_linear_head(image, proj_bias):
    model = TimmModel("test_vit2", E, pool="avg", proj="linear", proj_bias=proj_bias, drop=0.3).eval()
    expected_keys = ["head.proj.weight"] + (["head.proj.bias"] if proj_bias else [])
    assert [k for k in model.state_dict() if k.startswith("head.")] == expected_keys
    assert model.head.drop.p == 0.3
    ref = _reference_trunk("test_vit2", model.trunk, num_classes=0, global_pool="avg")
    torch.testing.assert_close(model(image), F.linear(ref(image), model.head.proj.weight, model.head.proj.bias))


@pytest.mark.parametrize("proj_bias", [False, True])
def test_timm_mlp_head(image, proj_bias):
    model = TimmModel("test_convnext", E, pool="", proj="mlp", proj_bias=proj_bias).eval()
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items() if k.startswith("head.")}
    expected = {"head.mlp.fc1.weight": (2 * E, 64), "head.mlp.fc1.bias": (2 * E,), "head.mlp.fc2.weight": (E, 2 * E)}
    if proj_bias:
        expected["head.mlp.fc2.bias"] = (E,)
    assert shapes == expected
    # pool '' on a convnet: reset_classifier(0) keeps timm's default (avg) pooling
    ref = _reference_trunk("test_convnext", model.trunk, num_classes=0)
    mlp = model.head.mlp
    hidden = F.gelu(F.linear(ref(image), mlp.fc1.weight, mlp.fc1.bias))
    torch.testing.assert_close(model(image), F.linear(hidden, mlp.fc2.weight, mlp.fc2.bias))


@pytest.mark.parametrize("pool", ["abs_attn", "rot_attn"])
def test_timm_attention_pool_heads(image, pool):
    model = TimmModel("test_convnext", E, pool=pool, proj="linear").eval()
    keys = list(model.state_dict())
    assert any(k.startswith("head.pool.") for k in keys)
    assert keys[-1] == "head.proj.weight" and model.head.proj.weight.shape == (E, E)
    assert not any(k.startswith("trunk.head.fc.") for k in keys)  # classifier removed
    feats = model.trunk(image)
    assert feats.ndim == 4  # unpooled NCHW map reaches the attention pool
    assert model(image).shape == (2, E)


def test_timm_kwargs_image_size_and_drop_rates():
    model = TimmModel("test_vit", E, image_size=96, drop_path=0.2, patch_drop=0.25)
    assert model.image_size == (96, 96)
    # image_size is only stored (quirk kept): the trunk keeps its own input size
    assert tuple(model.trunk.patch_embed.img_size) == (160, 160)
    assert model.trunk.blocks[-1].drop_path1.drop_prob == pytest.approx(0.2)
    assert model.trunk.patch_drop.prob == 0.25
    default = TimmModel("test_vit", E)
    assert isinstance(default.trunk.patch_drop, nn.Identity)
    assert isinstance(default.trunk.blocks[-1].drop_path1, nn.Identity)


def test_timm_bad_proj_and_unknown_model():
    with pytest.raises(ValueError, match="timm_proj='conv'"):
        TimmModel("test_vit", E, proj="conv")
    with pytest.raises(RuntimeError) as err:
        TimmModel("vit_that_does_not_exist_patch16", E)
    msg = str(err.value)
    assert "vit_that_does_not_exist_patch16" in msg and TIMM_REQUIREMENT in msg and timm.__version__ in msg


def test_timm_requirement_is_satisfied():
    from packaging.specifiers import SpecifierSet

    spec = SpecifierSet(TIMM_REQUIREMENT.removeprefix("timm"))
    assert timm.__version__ in spec


def test_timm_lock_all():
    model = TimmModel("test_resnet", E, pool="avg", proj="linear")
    model.lock(0, freeze_bn_stats=True)
    assert not any(p.requires_grad for p in model.trunk.parameters())
    assert all(p.requires_grad for p in model.head.parameters())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.trunk.modules())


def test_timm_lock_groups_follow_group_matcher():
    from timm.models import group_parameters

    model = TimmModel("test_resnet", E, pool="avg", proj="linear")
    groups = group_parameters(model.trunk, model.trunk.group_matcher())
    model.lock(unlocked_groups=2, freeze_bn_stats=True)
    last_frozen = max(groups) - 2
    group_of = {name: group_id for group_id, names in groups.items() for name in names}
    params = dict(model.trunk.named_parameters())
    for name, group_id in group_of.items():
        if name in params:
            assert params[name].requires_grad == (group_id > last_frozen), name
        else:  # BN affine params became FrozenBatchNorm2d buffers: only in frozen groups
            assert group_id <= last_frozen, name
    assert all(p.requires_grad for p in model.head.parameters())
    # BN layers of frozen groups are frozen, those of trainable groups are not
    from torchvision.ops.misc import FrozenBatchNorm2d

    assert isinstance(model.trunk.bn1, FrozenBatchNorm2d)
    assert isinstance(model.trunk.layer4[-1].bn1, nn.BatchNorm2d)


def test_timm_grad_checkpointing(image, caplog):
    model = TimmModel("test_vit", E, proj="linear")
    model.set_grad_checkpointing(True)
    assert model.trunk.grad_checkpointing is True
    model.train()
    model(image[:1]).sum().backward()

    class NoCheckpointing(nn.Module):
        def set_grad_checkpointing(self, enable=True):
            raise NotImplementedError("nope")

    model.trunk = NoCheckpointing()
    model.set_grad_checkpointing(True)  # warns, does not raise
    assert "grad checkpointing" in caplog.text


def test_timm_forward_intermediates(image):
    model = TimmModel("test_vit", E, pool="token", proj="linear").eval()
    out = model.forward_intermediates(image, indices=2, output_extra_tokens=True)
    assert len(out["image_intermediates"]) == 2
    assert out["image_intermediates"][0].shape == (2, 64, 10, 10)  # NCHW, 160 / 16
    assert out["image_intermediates_prefix"][0].shape[1] == model.trunk.num_prefix_tokens
    torch.testing.assert_close(out["image_features"], model(image))
    only = model.forward_intermediates(image, indices=[0], intermediates_only=True, output_fmt="NLC")
    assert set(only) == {"image_intermediates"} and only["image_intermediates"][0].shape == (2, 100, 64)


def test_timm_set_input_size():
    model = TimmModel("test_vit", E, proj="linear").eval()
    model.set_input_size(96)
    assert model.image_size == (96, 96)
    assert model(torch.randn(1, 3, 96, 96)).shape == (1, E)


def test_missing_extras_raise_named_import_errors(tmp_path):
    """Both modules import without timm / transformers; building names the pip extra."""
    import subprocess
    import sys

    script = (
        "import sys\n"
        "sys.modules['timm'] = None\n"
        "sys.modules['transformers'] = None\n"
        "from open_clip.timm_model import TimmModel\n"
        "from open_clip.hf_model import HFTextEncoder\n"
        "for build, extra in ((lambda: TimmModel('vit_base_patch16_224', 8), 'timm'),\n"
        "                     (lambda: HFTextEncoder('roberta-base', 8), 'hf')):\n"
        "    try:\n"
        "        build()\n"
        "    except ImportError as e:\n"
        "        assert isinstance(e, RuntimeError)\n"
        "        assert f\"pip install 'libreclip[{extra}]'\" in str(e), str(e)\n"
        "    else:\n"
        "        raise SystemExit('no error')\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
