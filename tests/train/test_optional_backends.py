"""The training app's wiring to optional backends this machine cannot run for real.

bitsandbytes' SwitchBack layers need Triton on a CUDA GPU, and Horovod needs its own compiled
package; here they are replaced by small stand-in modules (registered in ``sys.modules``) that
record how the app calls them, so the calls themselves are checked: which layers get replaced and
with what, which Horovod calls happen and in what order, and the errors for missing pieces.
"""

import functools
import json
import sys
import types

import pytest
import torch

from open_clip.factory import create_model
from open_clip_train.errors import ConfigError
from open_clip_train.main import main
from open_clip_train.model_setup import replace_with_bnb_linear

TINY = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 16, "layers": 1, "width": 16, "patch_size": 8, "head_width": 8},
    "text_cfg": {"context_length": 8, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1},
}


@pytest.fixture
def tiny(tmp_path):
    from open_clip.config_registry import add_model_config

    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "tiny-backends.json").write_text(json.dumps(TINY))
    add_model_config(tmp_path / "cfg")
    return "tiny-backends"


class RecordingSwitchBack(torch.nn.Linear):
    built: list = []

    def __init__(self, in_features, out_features, bias=True, vector_wise_quantization=False, mem_efficient=False):
        super().__init__(in_features, out_features, bias)
        RecordingSwitchBack.built.append((in_features, out_features, bias, vector_wise_quantization, mem_efficient))


def fake_bitsandbytes(with_triton_modules=True, layer=RecordingSwitchBack):
    bnb = types.ModuleType("bitsandbytes")
    bnb.__version__ = "0.49.2" if with_triton_modules else "0.50.0"
    bnb.nn = types.ModuleType("bitsandbytes.nn")
    if with_triton_modules:
        modules = types.ModuleType("bitsandbytes.nn.triton_based_modules")
        modules.SwitchBackLinear = layer
        modules.SwitchBackLinearGlobal = functools.partial(layer, vector_wise_quantization=False)
        modules.SwitchBackLinearGlobalMemEfficient = functools.partial(
            layer, vector_wise_quantization=False, mem_efficient=True)
        modules.torch = torch  # module attributes that are not layers must be refused
        bnb.nn.triton_based_modules = modules
    return bnb


def test_bnb_replaces_every_mlp_linear_and_keeps_weights(tiny, monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", fake_bitsandbytes())
    RecordingSwitchBack.built = []
    torch.manual_seed(0)
    model = create_model(tiny)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images, text = torch.randn(2, 3, 16, 16), torch.randint(0, 49408, (2, 8))
    with torch.no_grad():
        expected = model(images, text)
    model = replace_with_bnb_linear(model, "SwitchBackLinearGlobalMemEfficient", torch.device("cpu"))

    mlps = [m for name, m in model.named_modules() if name.endswith((".mlp.c_fc", ".mlp.c_proj"))]
    assert len(mlps) == 4 and all(type(m) is RecordingSwitchBack for m in mlps)  # 1 block per tower
    assert sorted(RecordingSwitchBack.built) == sorted([(16, 64, True, False, True), (64, 16, True, False, True)] * 2)
    others = [m for name, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".mlp." not in name]
    assert others and all(type(m) is not RecordingSwitchBack for m in others)
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    with torch.no_grad():
        for got, want in zip(model(images, text), expected):
            torch.testing.assert_close(got, want)


def test_bnb_errors_name_the_fix(tiny, monkeypatch):
    model = create_model(tiny)
    monkeypatch.setitem(sys.modules, "bitsandbytes", fake_bitsandbytes(with_triton_modules=False))
    with pytest.raises(ConfigError, match=r"0\.50\.0 no longer has the SwitchBack.*bitsandbytes<0\.50"):
        replace_with_bnb_linear(model, "SwitchBackLinearGlobal", torch.device("cpu"))

    monkeypatch.setitem(sys.modules, "bitsandbytes", fake_bitsandbytes())
    for bad in ("torch", "NoSuchLayer"):
        with pytest.raises(ConfigError, match="not a bitsandbytes triton module"):
            replace_with_bnb_linear(model, bad, torch.device("cpu"))

    class NeedsTriton(torch.nn.Linear):
        def __init__(self, *a, **kw):
            raise ImportError("Could not import triton.")

    monkeypatch.setitem(sys.modules, "bitsandbytes", fake_bitsandbytes(layer=NeedsTriton))
    with pytest.raises(ConfigError, match="could not load triton.*pip install triton"):
        replace_with_bnb_linear(model, "SwitchBackLinearGlobal", torch.device("cpu"))


def _args(tmp_path, model, *extra):
    return ["--model", model, "--dataset-type", "synthetic", "--train-num-samples", "8", "--batch-size", "4",
            "--workers", "0", "--epochs", "1", "--precision", "fp32", "--device", "cpu", "--logs",
            str(tmp_path / "logs"), "--name", "run", "--seed", "0", *extra]


def test_bnb_on_cpu_is_a_config_error(tmp_path, tiny, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "bitsandbytes", fake_bitsandbytes())
    assert main(_args(tmp_path, tiny, "--use-bnb-linear", "SwitchBackLinearGlobal")) == -1
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert "CUDA GPU" in errors[-1] and "device is cpu" in errors[-1]


class FakeHorovod(types.ModuleType):
    """``horovod.torch`` for one process: collectives are identities; every call is recorded."""

    def __init__(self):
        super().__init__("horovod.torch")
        self.calls = []

    def init(self):
        self.calls.append("init")

    def rank(self):
        return 0

    def local_rank(self):
        return 0

    def size(self):
        return 1

    def DistributedOptimizer(self, optimizer, named_parameters=None):  # noqa: N802 (horovod's name)
        names = [name for name, _ in named_parameters]
        self.calls.append(("DistributedOptimizer", type(optimizer).__name__, len(names)))
        optimizer.synchronize = lambda: self.calls.append("synchronize")
        optimizer.skip_synchronize = lambda: _Recorded(self.calls, "skip_synchronize")
        return optimizer

    def broadcast_parameters(self, state_dict, root_rank):
        self.calls.append(("broadcast_parameters", len(state_dict), root_rank))

    def broadcast_optimizer_state(self, optimizer, root_rank):
        self.calls.append(("broadcast_optimizer_state", root_rank))

    Max = "max"  # horovod's reduction op constant

    def allgather(self, tensor):
        self.calls.append("allgather")
        return tensor

    def allreduce(self, tensor, op=None):
        self.calls.append(("allreduce", op))
        return tensor

    def allgather_object(self, obj):
        self.calls.append("allgather_object")
        return [obj]

    def broadcast_object(self, obj, root_rank=0):
        self.calls.append(("broadcast_object", root_rank))
        return obj

    def join(self):
        self.calls.append("join")


class _Recorded:
    def __init__(self, calls, name):
        self.calls, self.name = calls, name

    def __enter__(self):
        self.calls.append(self.name)

    def __exit__(self, *exc):
        return False


@pytest.fixture
def horovod(monkeypatch):
    hvd = FakeHorovod()
    package = types.ModuleType("horovod")
    package.torch = hvd
    monkeypatch.setitem(sys.modules, "horovod", package)
    monkeypatch.setitem(sys.modules, "horovod.torch", hvd)
    return hvd


def test_horovod_run_initialises_wraps_and_broadcasts(tmp_path, tiny, horovod):
    assert main(_args(tmp_path, tiny, "--horovod")) is None
    model = create_model(tiny)
    num_params = sum(1 for p in model.parameters() if p.requires_grad)
    assert horovod.calls[0] == "init"
    assert horovod.calls[1:4] == [
        ("DistributedOptimizer", "AdamW", num_params),
        ("broadcast_parameters", len(model.state_dict()), 0),
        ("broadcast_optimizer_state", 0),
    ]
    # the epoch checkpoint gathers every rank's RNG and data-loader state through horovod
    assert "allgather_object" in horovod.calls[4:]
    assert (tmp_path / "logs" / "run" / "checkpoints" / "epoch_1.pt").exists()


def test_horovod_with_amp_synchronizes_before_unscaling(tmp_path, tiny, horovod):
    # fp16 autocast + GradScaler: horovod's optimizer must synchronize, then step without re-synchronizing
    args = _args(tmp_path, tiny, "--horovod", "--grad-clip-norm", "1.0")
    args[args.index("--precision") + 1] = "amp"
    assert main(args) is None
    steps = [c for c in horovod.calls[4:] if c in ("synchronize", "skip_synchronize")]
    assert steps == ["synchronize", "skip_synchronize"] * 2  # 8 samples / batch 4
