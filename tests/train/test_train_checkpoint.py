"""Crash-safe checkpoint writing, RNG state round trip, save policy and resume-latest selection."""

import errno
import os
import random
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from open_clip_train import checkpoint as ck
from open_clip_train.errors import CheckpointWriteError, ConfigError, TrainingError


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


def test_step_checkpoints_keep_only_the_newest_by_default(tmp_path):
    policy = ck.SavePolicy(str(tmp_path), epochs=2, save_every_n_steps=2)
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


def test_checkpoint_permissions_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        ck.atomic_save({"v": torch.tensor([1])}, str(tmp_path / "a.pt"))
        os.umask(0o027)
        ck.atomic_save({"v": torch.tensor([1])}, str(tmp_path / "b.pt"))
    finally:
        os.umask(old)
    assert os.stat(tmp_path / "a.pt").st_mode & 0o777 == 0o644  # readable by eval jobs and other users
    assert os.stat(tmp_path / "b.pt").st_mode & 0o777 == 0o640


def test_keep_step_checkpoints_newest_n(tmp_path):
    policy = ck.SavePolicy(str(tmp_path), epochs=2, save_every_n_steps=1, keep_step_checkpoints=2)
    torch.save({"global_step": 50}, tmp_path / "step_50.pt")  # from a run resumed at an earlier checkpoint
    for step in range(1, 6):
        ck.save_step_checkpoint(_ckpt(step, batch=step), policy)
    assert sorted(os.listdir(tmp_path), key=ck.natural_key) == ["step_4.pt", "step_5.pt", "step_50.pt"]
    ck.save_step_checkpoint(_ckpt(6, batch=6), ck.SavePolicy(str(tmp_path), epochs=2, keep_step_checkpoints=0))
    assert "step_4.pt" in os.listdir(tmp_path)  # 0 keeps every step file


def test_old_step_checkpoint_deleted_only_after_new_one_is_durable(tmp_path, monkeypatch):
    policy = ck.SavePolicy(str(tmp_path), epochs=2, save_every_n_steps=1)
    ck.save_step_checkpoint(_ckpt(1, batch=1), policy)
    events = []
    real_replace, real_remove = os.replace, os.remove
    monkeypatch.setattr(ck.os, "replace", lambda a, b: (events.append(("replace", os.path.basename(b))),
                                                        real_replace(a, b))[1])
    monkeypatch.setattr(ck.os, "remove", lambda p: (events.append(("remove", os.path.basename(p))), real_remove(p))[1])
    monkeypatch.setattr(ck, "_fsync_dir", lambda d: events.append(("fsync_dir", "")))
    ck.save_step_checkpoint(_ckpt(2, batch=2), policy)
    assert events == [("replace", "step_2.pt"), ("fsync_dir", ""), ("remove", "step_1.pt")]
    assert os.listdir(tmp_path) == ["step_2.pt"]


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EDQUOT, errno.EACCES])
def test_failed_save_keeps_previous_and_names_path_and_cause(tmp_path, monkeypatch, err):
    policy = ck.SavePolicy(str(tmp_path), epochs=3, save_every_n_steps=1, save_most_recent=True)
    ck.save_step_checkpoint(_ckpt(1, batch=1), policy)
    ck.save_epoch_checkpoint(_ckpt(1), 1, policy)
    before = sorted(os.listdir(tmp_path))

    def failing_save(obj, f):
        f.write(b"partial")
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(ck.torch, "save", failing_save)
    for save in (lambda: ck.save_step_checkpoint(_ckpt(2, batch=2), policy),
                 lambda: ck.save_epoch_checkpoint(_ckpt(2), 2, policy)):
        with pytest.raises(CheckpointWriteError) as info:
            save()
        message = str(info.value)
        assert str(tmp_path) in message and os.strerror(err) in message and errno.errorcode[err] in message
        assert "\n" not in message and isinstance(info.value, TrainingError)
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == before  # nothing deleted, no temp file left
    assert torch.load(tmp_path / "step_1.pt", weights_only=True)["global_step"] == 1


def test_stale_temp_files_of_killed_writers_are_removed(tmp_path):
    stale = tmp_path / "step_5.pt.999999.abcd.tmp"
    stale.write_bytes(b"half a checkpoint")
    ck.atomic_save({"v": torch.tensor([1])}, str(tmp_path / "step_5.pt"))
    assert os.listdir(tmp_path) == ["step_5.pt"]


def test_global_step_read_from_the_first_bytes(tmp_path):
    from open_clip_train.checkpoint_index import read_global_step

    model = torch.nn.Sequential(*[torch.nn.Linear(256, 256) for _ in range(10)])  # 2.6 MB
    ck.atomic_save(ck.build_checkpoint(model=model, optimizer=None, scaler=None, name="n", epoch=3,
                                       global_step=77), str(tmp_path / "e.pt"))
    data = (tmp_path / "e.pt").read_bytes()
    reads = []

    def head(n):
        reads.append(n)
        return data[:n]

    assert read_global_step(head) == 77 and max(reads) < len(data)  # never the whole file
    torch.save({"epoch": 2, "state_dict": model.state_dict()}, tmp_path / "old.pt")  # a 3.3 checkpoint
    old = (tmp_path / "old.pt").read_bytes()
    assert read_global_step(lambda n: old[:n]) == -1
    assert read_global_step(lambda n: b"not a checkpoint"[:n]) is None


def _fake_aws(tmp_path, bucket_dir):
    """An `aws` stand-in serving `s3 ls`, `s3 cp` and ranged `s3api get-object` from a local directory."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    script = textwrap.dedent(f"""\
        #!{sys.executable}
        import os, sys
        root = {str(bucket_dir)!r}
        a = sys.argv[1:]
        def local(url):
            return os.path.join(root, url[len("s3://"):])
        if a[:2] == ["s3", "ls"]:
            d = local(a[2])
            if not os.path.isdir(d):
                sys.exit(1)
            for n in sorted(os.listdir(d)):
                print("2024-01-01 00:00:00 %10d %s" % (os.path.getsize(os.path.join(d, n)), n))
        elif a[:2] == ["s3api", "get-object"]:
            opts = dict(zip(a[2:-1:2], a[3:-1:2]))
            start, end = map(int, opts["--range"][len("bytes="):].split("-"))
            with open(os.path.join(root, opts["--bucket"], opts["--key"]), "rb") as f:
                f.seek(start)
                data = f.read(end - start + 1)
            with open(a[-1], "wb") as out:
                out.write(data)
        else:
            sys.exit(2)
    """)
    (bindir / "aws").write_text(script)
    (bindir / "aws").chmod(0o755)
    return bindir


def test_resume_latest_remote_picks_highest_global_step(tmp_path, monkeypatch):
    remote = tmp_path / "bucket" / "b" / "run" / "checkpoints"
    remote.mkdir(parents=True)
    monkeypatch.setenv("PATH", f"{_fake_aws(tmp_path, tmp_path / 'bucket')}{os.pathsep}{os.environ['PATH']}")
    url = "s3://b/run/checkpoints"
    for name, step, epoch in (("epoch_2.pt", 20, 2), ("step_25.pt", 25, 2), ("step_9.pt", 9, 0)):
        ck.atomic_save(_ckpt(step, epoch=epoch), str(remote / name))
    assert ck.get_latest_checkpoint(url, remote=True) == f"{url}/step_25.pt"  # names alone would say epoch_2
    ck.atomic_save(_ckpt(30, epoch=3), str(remote / "epoch_3.pt"))
    ck.atomic_save(_ckpt(30, epoch=2, batch=10), str(remote / "step_30.pt"))
    assert ck.get_latest_checkpoint(url, remote=True) == f"{url}/epoch_3.pt"  # a tie prefers the epoch file
    for name in ("epoch_2.pt", "epoch_3.pt"):
        os.remove(remote / name)
    assert ck.get_latest_checkpoint(url, remote=True) == f"{url}/step_30.pt"
    assert ck.get_latest_checkpoint("s3://b/none", remote=True) is None
