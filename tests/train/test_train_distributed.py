"""Launcher environment detection and process-group setup (torchrun / SLURM / none)."""

import logging
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from open_clip_train import distributed as d

ENV_KEYS = ["LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID", "OMPI_COMM_WORLD_LOCAL_RANK", "RANK", "PMI_RANK",
            "SLURM_PROCID", "OMPI_COMM_WORLD_RANK", "WORLD_SIZE", "PMI_SIZE", "SLURM_NTASKS",
            "OMPI_COMM_WORLD_SIZE"]


@pytest.fixture
def clean_env(monkeypatch):
    for k in ENV_KEYS:
        monkeypatch.delenv(k, raising=False)
    return monkeypatch


def test_world_info_precedence(clean_env):
    assert d.world_info_from_env() == (0, 0, 1)
    clean_env.setenv("SLURM_LOCALID", "1")
    clean_env.setenv("SLURM_PROCID", "3")
    clean_env.setenv("SLURM_NTASKS", "4")
    assert d.world_info_from_env() == (1, 3, 4)
    clean_env.setenv("LOCAL_RANK", "0")
    clean_env.setenv("RANK", "2")
    clean_env.setenv("WORLD_SIZE", "8")
    assert d.world_info_from_env() == (0, 2, 8)  # torchrun variables win


def test_is_using_distributed(clean_env):
    assert not d.is_using_distributed()
    clean_env.setenv("SLURM_NTASKS", "2")
    assert d.is_using_distributed()
    clean_env.setenv("WORLD_SIZE", "1")
    assert not d.is_using_distributed()  # WORLD_SIZE checked first


def test_is_using_horovod(clean_env):
    assert not d.is_using_horovod()
    clean_env.setenv("PMI_RANK", "0")
    assert not d.is_using_horovod()
    clean_env.setenv("PMI_SIZE", "2")
    assert d.is_using_horovod()


def test_single_process_devices(clean_env, caplog):
    with caplog.at_level(logging.WARNING):
        info = d.init_distributed_device_so(device="cpu")
    assert info == dict(device="cpu", global_rank=0, local_rank=0, world_size=1, distributed=False)
    if not torch.cuda.is_available():
        with caplog.at_level(logging.WARNING):
            assert d.init_distributed_device_so(device="cuda:1")["device"] == "cpu"
        assert "falling back to CPU" in caplog.text
    with caplog.at_level(logging.WARNING):
        assert d.init_distributed_device_so(device="weird")["device"] == "weird"
    assert "was not known" in caplog.text
    assert d.is_device_available("cpu") == (True, True)
    assert d.is_device_available("weird")[1] is False


def test_namespace_adapter_and_broadcast_identity(clean_env):
    from open_clip_train.params import parse_args

    args = parse_args(["--device", "cpu"])
    assert d.init_distributed_device(args) == torch.device("cpu")
    assert (args.rank, args.local_rank, args.world_size, args.distributed) == (0, 0, 1, False)
    assert d.broadcast_object(args, {"x": 1}) == {"x": 1}
    assert d.is_master(args) and d.is_master(args, local=True)


def test_horovod_missing_is_named(clean_env):
    pytest.importorskip("torch")
    try:
        import horovod  # noqa: F401
        pytest.skip("horovod installed")
    except ImportError:
        pass
    with pytest.raises(ImportError, match="horovod"):
        d.init_distributed_device_so(device="cpu", horovod=True)


@pytest.mark.dist
def test_slurm_env_two_processes_gloo(tmp_path):
    """Two processes with only SLURM variables set form a gloo group and agree on a broadcast."""
    script = textwrap.dedent("""
        import json, sys
        from open_clip_train import distributed as d
        info = d.init_distributed_device_so(device="cpu")
        class A: pass
        a = A(); a.rank = info["global_rank"]; a.horovod = False; a.world_size = info["world_size"]
        info["bcast"] = d.broadcast_object(a, "from-%d" % a.rank)
        print(json.dumps(info))
    """)
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for rank in range(2):
        env = {k: v for k, v in os.environ.items() if k not in ENV_KEYS}
        env.update(SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank), SLURM_NTASKS="2", MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port), PYTHONPATH=os.path.join(os.path.dirname(__file__), "..", "..", "src"))
        procs.append(subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, text=True))
    import json

    outs = [json.loads(p.communicate(timeout=120)[0].strip().splitlines()[-1]) for p in procs]
    assert [o["global_rank"] for o in outs] == [0, 1]
    assert all(o["world_size"] == 2 and o["distributed"] and o["device"] == "cpu" for o in outs)
    assert all(o["bcast"] == "from-0" for o in outs)
