"""Crash-safe checkpoint writing, RNG state round trip, save policy and resume-latest selection."""

import os
import random
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from open_clip_train import checkpoint as ck
from open_clip_train.errors import ConfigError


def _ckpt(step, epoch=1, batch=0, model=None):
    model = model or torch.nn.Linear(2, 2)
    return ck.build_checkpoint(model=model, optimizer=None, scaler=None, name="x", epoch=epoch,
                               global_step=step, batch_in_epoch=batch)


def test_atomic_save_roundtrip_weights_only(tmp_path):
    path = str(tmp_path / "epoch_1.pt")
    opt_model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(opt_model.parameters())
    opt_model(torch.randn(4, 3)).sum().backward()
    opt.step()
    ckpt = ck.build_checkpoint(model=opt_model, optimizer=opt, scaler=torch.amp.GradScaler("cpu"), name="n",
                               epoch=1, global_step=7, batch_in_epoch=0)
    ck.atomic_save(ckpt, path)
    loaded = torch.load(path, weights_only=True)
    assert loaded["global_step"] == 7 and loaded["epoch"] == 1 and loaded["name"] == "n"
    assert torch.equal(loaded["state_dict"]["weight"], opt_model.weight)
    assert set(loaded) >= {"optimizer", "scaler", "rng"}
    assert os.listdir(tmp_path) == ["epoch_1.pt"]


def test_crash_during_write_keeps_old_file(tmp_path, monkeypatch):
    path = str(tmp_path / "epoch_latest.pt")
    ck.atomic_save({"v": torch.tensor([1])}, path)

    def broken_save(obj, f):
        f.write(b"partial garbage")
        raise OSError("disk full")

    monkeypatch.setattr(ck.torch, "save", broken_save)
    with pytest.raises(OSError):
        ck.atomic_save({"v": torch.tensor([2])}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["v"].item() == 1
    assert os.listdir(tmp_path) == ["epoch_latest.pt"]  # temp file cleaned up


def test_hard_kill_during_write_keeps_old_file(tmp_path):
    """A process that dies inside torch.save (no cleanup at all) leaves the target intact."""
    path = tmp_path / "step_5.pt"
    ck.atomic_save({"v": torch.tensor([1])}, str(path))
    script = textwrap.dedent(f"""
        import os, torch
        from open_clip_train import checkpoint as ck
        real = torch.save
        def dying_save(obj, f):
            f.write(b"half a checkpoint")
            f.flush()
            os._exit(9)
        ck.torch.save = dying_save
        ck.atomic_save({{"v": torch.tensor([2])}}, {str(path)!r})
    """)
    proc = subprocess.run([sys.executable, "-c", script])
    assert proc.returncode == 9
    assert torch.load(path, weights_only=True)["v"].item() == 1
    # the leftover temp file is never mistaken for a checkpoint
    assert ck.get_latest_checkpoint(str(tmp_path)) == str(path)


def test_rng_state_roundtrip():
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    np.random.randn()  # leave a cached gaussian around
    state = ck.get_rng_state()
    a = (torch.rand(3), np.random.rand(3), random.random(), np.random.randn())
    ck.set_rng_state(state)
    b = (torch.rand(3), np.random.rand(3), random.random(), np.random.randn())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2] and a[3] == b[3]


def test_rng_state_survives_weights_only_file(tmp_path):
    torch.manual_seed(5)
    ck.atomic_save({"rng": ck.get_rng_state()}, str(tmp_path / "r.pt"))
    expected = (torch.rand(2), np.random.rand(), random.random())
    ck.set_rng_state(torch.load(tmp_path / "r.pt", weights_only=True)["rng"])
    assert torch.equal(torch.rand(2), expected[0]) and np.random.rand() == expected[1]
    assert random.random() == expected[2]


def test_latest_by_global_step(tmp_path):
    ck.atomic_save(_ckpt(20, epoch=2), str(tmp_path / "epoch_2.pt"))
    ck.atomic_save(_ckpt(25, epoch=2, batch=5), str(tmp_path / "step_25.pt"))
    ck.atomic_save(_ckpt(10, epoch=1), str(tmp_path / "epoch_1.pt"))
    assert ck.get_latest_checkpoint(str(tmp_path)).endswith("step_25.pt")
    ck.atomic_save(_ckpt(30, epoch=3), str(tmp_path / "epoch_3.pt"))
    ck.atomic_save(_ckpt(30, epoch=2, batch=10), str(tmp_path / "step_30.pt"))
    assert ck.get_latest_checkpoint(str(tmp_path)).endswith("epoch_3.pt")  # ties prefer the epoch file


def test_latest_natural_order_and_corrupt_skipped(tmp_path):
    for n in (9, 10):  # 3.3-style checkpoints without a global step: natural order
        torch.save({"epoch": n, "state_dict": {}}, tmp_path / f"epoch_{n}.pt")
    assert ck.get_latest_checkpoint(str(tmp_path)).endswith("epoch_10.pt")
    (tmp_path / "step_99.pt").write_bytes(b"not a zip")
    assert ck.get_latest_checkpoint(str(tmp_path)).endswith("epoch_10.pt")
    assert ck.get_latest_checkpoint(str(tmp_path / "missing")) is None


def test_natural_key():
    names = ["epoch_10.pt", "epoch_9.pt", "epoch_latest.pt", "epoch_1.pt"]
    assert sorted(names, key=ck.natural_key) == ["epoch_1.pt", "epoch_9.pt", "epoch_10.pt", "epoch_latest.pt"]


def test_save_policy_frequency_and_delete_previous(tmp_path):
    policy = ck.SavePolicy(str(tmp_path), epochs=6, save_frequency=2, delete_previous=True)
    for epoch in range(1, 7):
        ck.save_epoch_checkpoint(_ckpt(epoch), epoch, policy)
        files = sorted(os.listdir(tmp_path))
        if epoch >= 2:
            assert files == [f"epoch_{2 * (epoch // 2)}.pt"], (epoch, files)  # never left without one
    policy = ck.SavePolicy(str(tmp_path / "b"), epochs=3, save_frequency=0, save_most_recent=True)
    os.makedirs(policy.checkpoint_path)
    for epoch in range(1, 4):
        ck.save_epoch_checkpoint(_ckpt(epoch), epoch, policy)
    assert sorted(os.listdir(policy.checkpoint_path)) == ["epoch_3.pt", "epoch_latest.pt"]


def test_step_checkpoints_delete_previous(tmp_path):
    policy = ck.SavePolicy(str(tmp_path), epochs=2, save_every_n_steps=2, delete_previous=True)
    ck.save_step_checkpoint(_ckpt(2, batch=2), policy)
    ck.save_step_checkpoint(_ckpt(4, batch=4), policy)
    assert os.listdir(tmp_path) == ["step_4.pt"]


def test_resume_prefix_both_ways_and_errors(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(2, 2))
    wrapped_sd = {"module." + k: v + 1 for k, v in model.state_dict().items()}
    torch.save({"epoch": 3, "state_dict": wrapped_sd, "global_step": 30}, tmp_path / "a.pt")
    state = ck.resume_from_checkpoint(str(tmp_path / "a.pt"), model)
    assert state.start_epoch == 3 and state.global_step == 30
    assert torch.equal(model.state_dict()["0.weight"], wrapped_sd["module.0.weight"])

    class Wrapper(torch.nn.Module):  # stands in for DDP: parameters under `module.`
        def __init__(self, m):
            super().__init__()
            self.module = m

    target = Wrapper(torch.nn.Sequential(torch.nn.Linear(2, 2)))
    torch.save(model.state_dict(), tmp_path / "bare.pt")  # bare state dict, no prefix
    assert ck.resume_from_checkpoint(str(tmp_path / "bare.pt"), target).start_epoch == 0
    assert torch.equal(target.module[0].weight, model[0].weight)

    with pytest.raises(ConfigError, match="--resume .*no such file"):
        ck.resume_from_checkpoint(str(tmp_path / "nope.pt"), model)
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    with pytest.raises(ConfigError, match="--resume .*cannot read"):
        ck.resume_from_checkpoint(str(tmp_path / "bad.pt"), model)
    torch.save({"epoch": 1, "state_dict": torch.nn.Linear(3, 3).state_dict()}, tmp_path / "mis.pt")
    with pytest.raises(ConfigError, match="does not match the model"):
        ck.resume_from_checkpoint(str(tmp_path / "mis.pt"), model)
