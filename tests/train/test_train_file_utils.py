"""Remote sync helpers (fsspec against a local target; s3 without the aws CLI) and fsspec loading."""

import os

import torch

from open_clip_train import file_utils as fu


def test_fsspec_sync_copies_new_and_changed_skips_latest(tmp_path):
    local, remote = tmp_path / "local", tmp_path / "remote"
    (local / "checkpoints").mkdir(parents=True)
    (local / "out.log").write_text("hello")
    (local / "checkpoints" / "epoch_1.pt").write_bytes(b"12345")
    (local / "checkpoints" / "epoch_latest.pt").write_bytes(b"latest")
    assert fu.remote_sync(str(local), str(remote), "fsspec")
    assert (remote / "out.log").read_text() == "hello"
    assert (remote / "checkpoints" / "epoch_1.pt").read_bytes() == b"12345"
    assert not (remote / "checkpoints" / "epoch_latest.pt").exists()
    # same size -> skipped (3.3 compares byte length only); different size -> copied
    (local / "out.log").write_text("HELLO")
    (local / "checkpoints" / "epoch_1.pt").write_bytes(b"123456")
    assert fu.remote_sync(str(local), str(remote), "fsspec")
    assert (remote / "out.log").read_text() == "hello"
    assert (remote / "checkpoints" / "epoch_1.pt").read_bytes() == b"123456"


def test_unknown_protocol_and_missing_aws(tmp_path, monkeypatch):
    assert fu.remote_sync(str(tmp_path), str(tmp_path / "r"), "ftp") is False
    monkeypatch.setenv("PATH", str(tmp_path))  # no `aws` executable anywhere
    assert fu.remote_sync(str(tmp_path), "s3://bucket/x", "s3") is False


def test_s3_sync_invokes_aws_cli(tmp_path, monkeypatch):
    fake = tmp_path / "bin" / "aws"
    fake.parent.mkdir()
    fake.write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path / 'called.txt'}\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(fake.parent) + os.pathsep + os.environ["PATH"])
    assert fu.remote_sync("/some/local", "s3://bucket/run", "s3")
    assert (tmp_path / "called.txt").read_text().split() == [
        "s3", "sync", "/some/local", "s3://bucket/run", "--exclude", "*epoch_latest.pt"]


def test_pt_load_and_check_exists(tmp_path):
    torch.save({"a": torch.ones(2)}, tmp_path / "x.pt")
    assert torch.equal(fu.pt_load(str(tmp_path / "x.pt"))["a"], torch.ones(2))
    assert fu.pt_load("file://" + str(tmp_path / "x.pt"))["a"].sum() == 2
    assert fu.check_exists(str(tmp_path / "x.pt")) and not fu.check_exists(str(tmp_path / "y.pt"))


def test_start_sync_process_is_unstarted():
    p = fu.start_sync_process(1, "/a", "/b", "fsspec")
    assert not p.is_alive() and p.pid is None
