"""Process-group setup from torchrun / SLURM / MPI environments and small collective helpers.

The backend is ``gloo`` on CPU and ``nccl`` on CUDA. Horovod is used only with ``--horovod`` and
only if it is installed.

Timeouts: the process group's collectives time out after ``--data-stall-timeout`` seconds (torch's
default when 0), so a rank whose peer stopped reaching collectives fails instead of hanging. Waits
that may legitimately be long (the master evaluating or writing a checkpoint while the other ranks
wait) go through :func:`barrier`, which uses a separate CPU (gloo) group with a long timeout; the same
group carries the host-side votes of :func:`async_vote_max` (e.g. agreeing to stop on a signal).
"""

from __future__ import annotations

import datetime
import logging
import os
from typing import Any

import torch
import torch.distributed as dist

from open_clip.optional_modules import optional_module_attributes

# `hvd`: horovod.torch or None, as 3.3 exposed it (imported on first read; the helpers below import
# horovod themselves, only when --horovod is set).
__getattr__, __dir__ = optional_module_attributes(__name__, {"hvd": "horovod.torch"})


def _import_horovod():
    try:
        import horovod.torch as hvd
    except ImportError as e:
        raise ImportError("--horovod needs the `horovod` package (pip install horovod); it is not installed. "
                          "Drop --horovod to use torch.distributed (torchrun/SLURM).") from e
    return hvd


def is_global_master(args) -> bool:
    return args.rank == 0


def is_local_master(args) -> bool:
    return args.local_rank == 0


def is_master(args, local: bool = False) -> bool:
    """True on global rank 0 (or local rank 0 with ``local=True``)."""
    return is_local_master(args) if local else is_global_master(args)


def is_device_available(device: str) -> tuple[bool, bool]:
    """Return ``(is_available, is_known)`` for a device type string."""
    device_type = device.split(":", 1)[0]  # not torch.device(): unknown types must not raise here
    if device_type == "cuda":
        return torch.cuda.is_available(), True
    if device_type == "npu":
        return bool(hasattr(torch, "npu") and torch.npu.is_available()), True
    if device_type == "mps":
        return torch.backends.mps.is_available(), True
    if device_type == "cpu":
        return True, True
    return False, False


def set_device(device: str) -> None:
    if device.startswith("cuda:"):
        torch.cuda.set_device(device)
    elif device.startswith("npu:"):
        torch.npu.set_device(device)


def is_using_horovod() -> bool:
    env = os.environ
    return ("OMPI_COMM_WORLD_RANK" in env and "OMPI_COMM_WORLD_SIZE" in env) or (
        "PMI_RANK" in env and "PMI_SIZE" in env)


def is_using_distributed() -> bool:
    if "WORLD_SIZE" in os.environ:
        return int(os.environ["WORLD_SIZE"]) > 1
    if "SLURM_NTASKS" in os.environ:
        return int(os.environ["SLURM_NTASKS"]) > 1
    return False


def _first_env(names: tuple[str, ...], default: int) -> int:
    for name in names:
        if name in os.environ:
            return int(os.environ[name])
    return default


def world_info_from_env() -> tuple[int, int, int]:
    """``(local_rank, global_rank, world_size)`` from the first launcher variables present."""
    local_rank = _first_env(("LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID", "OMPI_COMM_WORLD_LOCAL_RANK"), 0)
    global_rank = _first_env(("RANK", "PMI_RANK", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK"), 0)
    world_size = _first_env(("WORLD_SIZE", "PMI_SIZE", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"), 1)
    return local_rank, global_rank, world_size


_BACKENDS = {"cuda": "nccl", "hpu": "hccl", "npu": "hccl", "xpu": "ccl"}


def _resolve_device(device: str) -> tuple[str, str, int | None]:
    device_type, _, index = device.partition(":")
    avail, known = is_device_available(device_type)
    if not known:
        logging.warning(f"Device {device} was not known and checked for availability, trying anyways.")
    elif not avail:
        logging.warning(f"Device {device} was not available, falling back to CPU.")
        return "cpu", "cpu", None
    return device, device_type, int(index) if index else None


def init_distributed_device_so(
        device: str = "cuda",
        dist_backend: str | None = None,
        dist_url: str | None = None,
        horovod: bool = False,
        no_set_device_rank: bool = False,
        timeout: float | None = None,
) -> dict[str, Any]:
    """Initialise the process group if the environment asks for it and pick this process's device.

    ``timeout`` (seconds, None/0 = torch's default) bounds every collective of the group.
    Returns ``dict(device, global_rank, local_rank, world_size, distributed)``.
    """
    device, device_type, index = _resolve_device(device)
    global_rank, local_rank, world_size, distributed = 0, 0, 1, False
    if horovod:
        hvd = _import_horovod()
        hvd.init()
        local_rank, global_rank, world_size = int(hvd.local_rank()), hvd.rank(), hvd.size()
        distributed = True
    elif is_using_distributed() and dist.is_available() and dist.is_initialized():
        # A launcher script (or an earlier run in this process) already formed the group: join it.
        local_rank, _, _ = world_info_from_env()
        world_size, global_rank, distributed = dist.get_world_size(), dist.get_rank(), True
    elif is_using_distributed():
        backend = dist_backend or _BACKENDS.get(device_type, "gloo")
        url = dist_url or "env://"
        extra = {"timeout": datetime.timedelta(seconds=timeout)} if timeout and timeout > 0 else {}
        if "SLURM_PROCID" in os.environ:
            local_rank, global_rank, world_size = world_info_from_env()
            os.environ["LOCAL_RANK"] = str(local_rank)
            os.environ["RANK"] = str(global_rank)
            os.environ["WORLD_SIZE"] = str(world_size)
            dist.init_process_group(backend=backend, init_method=url, world_size=world_size, rank=global_rank,
                                    **extra)
        else:
            local_rank, _, _ = world_info_from_env()
            dist.init_process_group(backend=backend, init_method=url, **extra)
            world_size, global_rank = dist.get_world_size(), dist.get_rank()
        distributed = True

    if distributed and not no_set_device_rank and device_type not in ("cpu", "mps"):
        if index is not None:
            logging.warning(f"device index {index} removed from specified ({device}).")
        device = f"{device_type}:{local_rank}"
        set_device(device)
    return dict(device=device, global_rank=global_rank, local_rank=local_rank,
                world_size=world_size, distributed=distributed)


def init_distributed_device(args) -> torch.device:
    """Namespace adapter of :func:`init_distributed_device_so`; writes rank fields back onto ``args``."""
    args.distributed, args.world_size, args.rank, args.local_rank = False, 1, 0, 0
    info = init_distributed_device_so(
        device=getattr(args, "device", "cuda"),
        dist_backend=getattr(args, "dist_backend", None),
        dist_url=getattr(args, "dist_url", None),
        horovod=getattr(args, "horovod", False),
        no_set_device_rank=getattr(args, "no_set_device_rank", False),
        timeout=getattr(args, "data_stall_timeout", None),
    )
    args.device = info["device"]
    args.world_size = info["world_size"]
    args.rank = info["global_rank"]
    args.local_rank = info["local_rank"]
    args.distributed = info["distributed"]
    return torch.device(args.device)


def broadcast_object(args, obj: Any, src: int = 0, long_wait: bool = False) -> Any:
    """Send ``obj`` from rank ``src`` to every rank (identity when not distributed).

    ``long_wait`` uses the host group, whose timeout tolerates ``src`` being busy for a long time.
    """
    if getattr(args, "horovod", False):
        return _import_horovod().broadcast_object(obj, root_rank=src)
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    objects = [obj if args.rank == src else None]
    dist.broadcast_object_list(objects, src=src, group=host_group() if long_wait else None)
    return objects[0]


def all_gather_object(args, obj: Any, dst: int = 0) -> list:
    """List of every rank's ``obj``."""
    if getattr(args, "horovod", False):
        return _import_horovod().allgather_object(obj)
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    objects = [None for _ in range(args.world_size)]
    dist.all_gather_object(objects, obj)
    return objects


# Long waits (the master evaluating or saving while the others wait) must not hit the short
# collective timeout that detects a hung peer.
LONG_WAIT = datetime.timedelta(hours=6)
_host_group: tuple[Any, Any] | None = None  # (default group it belongs to, the gloo group)


def host_group() -> Any:
    """The CPU (gloo) group for barriers and host-side votes, created on first use. Creating it is a
    collective: call it at the same point on every rank (the training app does so right after setup)."""
    global _host_group
    world = dist.group.WORLD
    if _host_group is None or _host_group[0] is not world:
        _host_group = (world, dist.new_group(backend="gloo", timeout=LONG_WAIT))
    return _host_group[1]


def barrier(args) -> None:
    """Wait for every rank (no-op when not distributed); tolerates a long wait (see the module docstring)."""
    if not getattr(args, "distributed", False):
        return
    if getattr(args, "horovod", False):
        _import_horovod().join()
    elif dist.is_initialized():
        dist.barrier(group=host_group())


def all_reduce_max(flag: torch.Tensor, args) -> torch.Tensor:
    """Element-wise max of ``flag`` over the ranks, on the device and without a host sync."""
    if not getattr(args, "distributed", False):
        return flag
    if getattr(args, "horovod", False):
        hvd = _import_horovod()
        return hvd.allreduce(flag, op=hvd.Max)
    if dist.is_initialized():
        flag = flag.clone()
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return flag


class AsyncVote:
    """Ranks agree on a small integer (the max over ranks) one call late, without waiting on each other.

    ``vote(local)`` starts a non-blocking max-reduction of ``local`` on the host group and returns the
    result of the previous call's reduction, which has long finished: every rank that calls ``vote``
    at the same steps gets the same answers. ``settle(local)`` is the blocking form for points where
    the ranks wait for each other anyway (e.g. the end of an epoch).
    """

    def __init__(self, args) -> None:
        self.args = args
        self.distributed = bool(getattr(args, "distributed", False)) and dist.is_available() and dist.is_initialized()
        self.horovod = bool(getattr(args, "horovod", False))
        self._work = None
        self._buf: torch.Tensor | None = None

    def _collect(self) -> int:
        if self._work is None:
            return 0
        self._work.wait()
        self._work = None
        return int(self._buf[0])

    def vote(self, local: int) -> int:
        if self.horovod:
            hvd = _import_horovod()
            return int(hvd.allreduce(torch.tensor([local]), op=hvd.Max)[0])
        if not self.distributed:
            return local
        agreed = self._collect()
        self._buf = torch.tensor([local], dtype=torch.int64)
        self._work = dist.all_reduce(self._buf, op=dist.ReduceOp.MAX, group=host_group(), async_op=True)
        return agreed

    def finish(self) -> None:
        """Wait for the reduction still in flight (its result is no longer needed)."""
        if self._work is not None:
            self._work.wait()
            self._work = None

    def settle(self, local: int) -> int:
        if self.horovod:
            return self.vote(local)
        if not self.distributed:
            return local
        agreed = self._collect()
        buf = torch.tensor([local], dtype=torch.int64)
        dist.all_reduce(buf, op=dist.ReduceOp.MAX, group=host_group())
        return max(agreed, int(buf[0]))
