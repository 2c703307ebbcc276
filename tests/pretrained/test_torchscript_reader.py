"""Reading TorchScript archives as data equals what torch.jit.load(...).state_dict() returns."""

import io
import pickle
import zipfile

import pytest
import torch
from torch import nn

from open_clip.pretrained_torchscript import is_torchscript_archive, read_torchscript_state_dict

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*:FutureWarning")


class _Mixed(nn.Module):
    """Parameters, buffers, a bias-less Linear (mangled class), fp16 and a plain tensor attribute."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(3, 2)
        self.b = nn.Linear(3, 2, bias=False)
        self.norm = nn.BatchNorm1d(2)
        self.blocks = nn.Sequential(nn.Linear(2, 2), nn.GELU(), nn.Linear(2, 2))
        self.layers = nn.ModuleList([nn.LayerNorm(2) for _ in range(2)])
        self.register_buffer("input_resolution", torch.tensor(224))
        self.register_buffer("scalar", torch.tensor(1.5))
        self.attn_mask = torch.zeros(2, 2)  # an attribute, not part of the state dict
        self.half_param = nn.Parameter(torch.randn(4, 3).half())
        self.transposed = nn.Parameter(torch.randn(3, 5).t())  # non-contiguous strides

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(self.a(x) + self.b(x)) + self.attn_mask.sum()
        for layer in self.layers:
            y = layer(y)
        return self.blocks(y)


def _reference(path):
    return torch.jit.load(str(path), map_location="cpu").state_dict()


def _assert_same(got, want):
    assert list(got) == list(want)
    for key in want:
        assert got[key].dtype == want[key].dtype and got[key].shape == want[key].shape, key
        assert torch.equal(got[key], want[key]), key


def test_scripted_module(tmp_path):
    torch.manual_seed(0)
    torch.jit.save(torch.jit.script(_Mixed()), str(tmp_path / "m.pt"))
    assert is_torchscript_archive(str(tmp_path / "m.pt"))
    got = read_torchscript_state_dict(str(tmp_path / "m.pt"))
    _assert_same(got, _reference(tmp_path / "m.pt"))
    assert "attn_mask" not in got and "b.bias" not in got


def test_traced_module(tmp_path):
    torch.manual_seed(0)
    traced = torch.jit.trace(_Mixed().eval(), torch.randn(4, 3))
    torch.jit.save(traced, str(tmp_path / "t.pt"))
    _assert_same(read_torchscript_state_dict(str(tmp_path / "t.pt")), _reference(tmp_path / "t.pt"))


def test_plain_torch_save_is_not_an_archive(tmp_path):
    torch.save({"w": torch.ones(2)}, tmp_path / "sd.pt")
    (tmp_path / "text.txt").write_text("hello")
    assert not is_torchscript_archive(str(tmp_path / "sd.pt"))
    assert not is_torchscript_archive(str(tmp_path / "text.txt"))


class _Boom:
    def __reduce__(self):
        return (exec, ("raise SystemExit('executed')",))


def test_archive_referring_to_code_is_refused_without_running_it(tmp_path):
    path = tmp_path / "evil.pt"
    torch.jit.save(torch.jit.script(nn.Linear(2, 2)), str(path))
    evil = tmp_path / "evil2.pt"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(evil, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename.endswith("/data.pkl"):
                buffer = io.BytesIO()
                pickle.dump(_Boom(), buffer, protocol=2)
                data = buffer.getvalue()
            dst.writestr(item, data)
    with pytest.raises(pickle.UnpicklingError, match=r"exec, which is not plain data"):
        read_torchscript_state_dict(str(evil))
