"""Crash-safe training checkpoints: what is saved, how it is written, and how a run resumes.

A checkpoint is a dict of tensors and plain containers (loadable with ``weights_only=True``):

- ``epoch``: for ``epoch_N.pt`` the number of completed epochs (3.3's meaning); for ``step_<S>.pt``
  the epoch in progress, so 3.3-style loaders restart that epoch.
- ``name``, ``state_dict``, ``optimizer``, optional ``scaler`` (as 3.3).
- ``global_step``: optimizer steps completed; ``batch_in_epoch``: micro-batches of ``epoch``
  already consumed (0 for epoch checkpoints).
- ``rng``: torch/CUDA/numpy/python RNG states as tensors; ``epoch_start_rng``: the RNG at the start
  of the epoch (used to rebuild the data order when the loader has no state of its own).
- ``data_state``: the train loader's ``state_dict()`` when it offers one.

Files are written to a temporary file in the same directory, flushed and fsynced, then renamed
over the target, and the directory is fsynced: a crash leaves either the old or the new file.
"""

from __future__ import annotations

import glob
import logging
import os
import random
import re
import tempfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .errors import ConfigError
from .file_utils import pt_load

# File name of the copy rewritten after every epoch with --save-most-recent (3.3's name for it).
LATEST_CHECKPOINT_NAME = "epoch_latest.pt"

# ---------------------------------------------------------------------------------------------
# RNG state as weights_only-loadable values


def get_rng_state() -> dict[str, Any]:
    """Every RNG the training loop touches, as tensors and primitives."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "numpy_has_gauss": int(np_state[3]),
        "numpy_cached_gaussian": float(np_state[4]),
        "python_version": int(py_state[0]),
        "python_state": torch.tensor(py_state[1], dtype=torch.int64),
        "python_gauss": py_state[2],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`get_rng_state`."""
    torch.set_rng_state(state["torch"].cpu())
    np.random.set_state((
        "MT19937", state["numpy_keys"].numpy().astype(np.uint32), state["numpy_pos"],
        state["numpy_has_gauss"], state["numpy_cached_gaussian"]))
    random.setstate((state["python_version"], tuple(state["python_state"].tolist()), state["python_gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


# ---------------------------------------------------------------------------------------------
# Atomic writes


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some platforms/filesystems cannot open directories; rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_save(obj: Any, path: str) -> None:
    """``torch.save`` to a temp file in the target's directory, fsync, then rename over ``path``."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp_path = tempfile.mkstemp(dir=directory, prefix=os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        # Never leave a half-written temp file behind; the previous checkpoint is untouched.
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise
    _fsync_dir(directory)


# ---------------------------------------------------------------------------------------------
# Building and saving


@dataclass
class SavePolicy:
    """Checkpoint settings from the command line."""

    checkpoint_path: str
    epochs: int
    save_frequency: int = 1
    save_most_recent: bool = False
    delete_previous: bool = False
    save_every_n_steps: int = 0


def build_checkpoint(
        *,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer | None,
        scaler: Any,
        name: str | None,
        epoch: int,
        global_step: int,
        batch_in_epoch: int = 0,
        epoch_start_rng: dict | None = None,
        data_state: dict | None = None,
        rng_per_rank: list | None = None,
) -> dict[str, Any]:
    """The checkpoint dict (see the module docstring for the keys)."""
    ckpt: dict[str, Any] = {"epoch": epoch, "name": name, "state_dict": model.state_dict()}
    if optimizer is not None:
        ckpt["optimizer"] = optimizer.state_dict()
    if scaler is not None:
        ckpt["scaler"] = scaler.state_dict()
    ckpt["global_step"] = int(global_step)
    ckpt["batch_in_epoch"] = int(batch_in_epoch)
    ckpt["rng"] = get_rng_state()
    if rng_per_rank is not None:
        ckpt["rng_per_rank"] = rng_per_rank
    if epoch_start_rng is not None:
        ckpt["epoch_start_rng"] = epoch_start_rng
    if data_state is not None:
        ckpt["data_state"] = data_state
    return ckpt


def save_epoch_checkpoint(ckpt: dict[str, Any], completed_epoch: int, policy: SavePolicy) -> list[str]:
    """Write ``epoch_N.pt`` / ``epoch_latest.pt`` per the policy; return the paths written.

    ``--delete-previous-checkpoint`` removes the previously *saved* epoch file (N - save_frequency)
    and only after a new one was written (3.3 deleted N-1 and could lose the only checkpoint).
    """
    written = []
    due = completed_epoch == policy.epochs or (
        policy.save_frequency > 0 and completed_epoch % policy.save_frequency == 0)
    if due:
        path = os.path.join(policy.checkpoint_path, f"epoch_{completed_epoch}.pt")
        atomic_save(ckpt, path)
        written.append(path)
        if policy.delete_previous:
            step_back = policy.save_frequency if policy.save_frequency > 0 else 1
            _remove_if_exists(os.path.join(policy.checkpoint_path, f"epoch_{completed_epoch - step_back}.pt"))
            for old in list_step_checkpoints(policy.checkpoint_path):
                _remove_if_exists(old)
    if policy.save_most_recent:
        path = os.path.join(policy.checkpoint_path, LATEST_CHECKPOINT_NAME)
        atomic_save(ckpt, path)
        written.append(path)
    return written


def save_step_checkpoint(ckpt: dict[str, Any], policy: SavePolicy) -> str:
    """Write ``step_<global_step>.pt``; with delete-previous, remove older step files afterwards."""
    path = os.path.join(policy.checkpoint_path, f"step_{ckpt['global_step']}.pt")
    atomic_save(ckpt, path)
    if policy.delete_previous:
        for old in list_step_checkpoints(policy.checkpoint_path):
            if os.path.abspath(old) != os.path.abspath(path):
                _remove_if_exists(old)
    return path


def _remove_if_exists(path: str) -> None:
    if os.path.exists(path):
        os.remove(path)


def list_step_checkpoints(checkpoint_path: str) -> list[str]:
    return sorted(glob.glob(os.path.join(checkpoint_path, "step_*.pt")), key=natural_key)


# ---------------------------------------------------------------------------------------------
# Finding the latest checkpoint


def natural_key(string_: str) -> list:
    """Sort key treating digit runs as numbers (``epoch_10`` after ``epoch_9``)."""
    return [int(s) if s.isdigit() else s for s in re.split(r"(\d+)", string_.lower())]


def _global_step_of(path: str) -> int | None:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # a corrupt or foreign file must not block resuming from a good one
        logging.warning(f"Skipping unreadable checkpoint {path}: {e}")
        return None
    if not isinstance(ckpt, dict):
        return -1
    return int(ckpt.get("global_step", -1))


def get_latest_checkpoint(path: str, remote: bool = False) -> str | None:
    """Newest checkpoint in ``path``: largest global step across ``epoch_*`` and ``step_*`` files.

    Ties (e.g. ``epoch_3.pt`` and ``epoch_latest.pt``) and 3.3 files without a global step are
    ordered by name with :func:`natural_key`. Remote (s3) directories are ordered by name only.
    """
    if remote:
        return _get_latest_remote(path)
    candidates = glob.glob(os.path.join(path, "*.pt"))
    ranked = []
    for candidate in candidates:
        step = _global_step_of(candidate)
        if step is not None:
            base = os.path.basename(candidate)
            # At equal steps prefer an epoch file: it also records the finished epoch's evaluation.
            ranked.append((step, base.startswith("epoch"), natural_key(base), candidate))
    if not ranked:
        return None
    return max(ranked)[-1]


def _get_latest_remote(path: str) -> str | None:
    import subprocess

    try:
        result = subprocess.run(["aws", "s3", "ls", path + "/"], capture_output=True)
    except FileNotFoundError as e:
        raise ConfigError("--resume latest with --remote-sync (s3) needs the `aws` command line tool; "
                          "it is not installed.") from e
    if result.returncode == 1:
        return None
    names = [line.split(" ")[-1] for line in result.stdout.decode("utf-8").split("\n") if line.strip()]
    names = [n for n in names if n.endswith(".pt")]
    if not names:
        return None
    return os.path.join(path, sorted(names, key=natural_key)[-1])


# ---------------------------------------------------------------------------------------------
# Loading


@dataclass
class ResumeState:
    """Where a resumed run continues."""

    start_epoch: int = 0
    global_step: int = 0
    batch_in_epoch: int = 0
    rng: dict | None = None
    rng_per_rank: list | None = None
    epoch_start_rng: dict | None = None
    data_state: dict | None = None
    extras: dict = field(default_factory=dict)


def _strip_prefix(sd: dict, prefix: str) -> dict:
    return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in sd.items()}


def match_module_prefix(sd: dict, model: torch.nn.Module) -> dict:
    """Add or remove the ``module.`` (DDP) and ``_orig_mod.`` (compile) prefixes to fit ``model``."""
    sd = _strip_prefix(_strip_prefix(sd, "_orig_mod."), "module.")
    model_keys = list(model.state_dict().keys())
    if model_keys and model_keys[0].startswith("module."):
        sd = {"module." + k: v for k, v in sd.items()}
    return sd


def load_checkpoint_file(path: str) -> Any:
    """Load a checkpoint with ``weights_only=True``; errors name ``--resume`` and the problem."""
    if "://" not in path and not os.path.exists(path):
        raise ConfigError(f"--resume {path}: no such file. Pass an existing checkpoint path, or 'latest'.")
    try:
        return pt_load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as e:
        raise ConfigError(f"--resume {path}: no such file. Pass an existing checkpoint path, or 'latest'.") from e
    except Exception as e:
        raise ConfigError(f"--resume {path}: cannot read checkpoint ({type(e).__name__}: {e}). "
                          "Pass an intact checkpoint written by this trainer or a state dict.") from e


def resume_from_checkpoint(
        path: str,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        scaler: Any = None,
) -> ResumeState:
    """Restore model/optimizer/scaler from ``path``; return where training continues."""
    checkpoint = load_checkpoint_file(path)
    if not isinstance(checkpoint, dict):
        raise ConfigError(f"--resume {path}: expected a checkpoint dict, got {type(checkpoint).__name__}.")
    full = "epoch" in checkpoint and "state_dict" in checkpoint
    sd = match_module_prefix(checkpoint["state_dict"] if full else checkpoint, model)
    try:
        model.load_state_dict(sd)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise ConfigError(f"--resume {path}: checkpoint does not match the model ({first}). "
                          "Use the same --model (and --siglip/--force-* flags) as the run that saved it.") from e
    if not full:
        logging.info(f"=> loaded checkpoint '{path}' (epoch 0)")
        return ResumeState()
    if optimizer is not None and "optimizer" in checkpoint:
        try:
            optimizer.load_state_dict(checkpoint["optimizer"])
        except (ValueError, KeyError) as e:
            raise ConfigError(f"--resume {path}: optimizer state does not match ({e}). "
                              "Resume with the same --opt and lock flags.") from e
    if scaler is not None and "scaler" in checkpoint:
        scaler.load_state_dict(checkpoint["scaler"])
    state = ResumeState(
        start_epoch=int(checkpoint["epoch"]),
        global_step=int(checkpoint.get("global_step", 0)),
        batch_in_epoch=int(checkpoint.get("batch_in_epoch", 0)),
        rng=checkpoint.get("rng"),
        rng_per_rank=checkpoint.get("rng_per_rank"),
        epoch_start_rng=checkpoint.get("epoch_start_rng"),
        data_state=checkpoint.get("data_state"),
    )
    logging.info(f"=> resuming checkpoint '{path}' (epoch {state.start_epoch})")
    return state
