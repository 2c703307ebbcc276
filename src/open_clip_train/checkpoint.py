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
- ``train_state``: the loop's own counters (non-finite steps in a row).

Files are written to a temporary file in the same directory, flushed and fsynced, then renamed
over the target, and the directory is fsynced: a crash leaves either the old or the new file. The
file gets the permissions the umask gives (usually 0644), so other users and eval jobs can read it.
A save that fails (disk full, quota, permission) removes its temporary file, leaves the previous
checkpoint untouched and raises :class:`CheckpointWriteError` naming the path and the cause. Old step
checkpoints are deleted only after the new one is durable (``--keep-step-checkpoints``).
"""

from __future__ import annotations

import errno
import glob
import logging
import os
import random
import re
import secrets
import subprocess
import tempfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .checkpoint_index import read_global_step
from .errors import CheckpointWriteError, ConfigError
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


_TMP_SUFFIX = ".tmp"


def _remove_stale_temp_files(directory: str, target: str) -> None:
    """Delete temp files a killed process left behind for ``target`` (each can be as big as a checkpoint)."""
    mine = f".{os.getpid()}."
    for stale in glob.glob(os.path.join(directory, glob.escape(target) + ".*" + _TMP_SUFFIX)):
        if mine not in os.path.basename(stale):
            try:
                os.remove(stale)
            except OSError:
                pass


def atomic_save(obj: Any, path: str) -> None:
    """``torch.save`` to a temp file in the target's directory, fsync, then rename over ``path``.

    Raises the ``OSError`` of a failed write after removing the temp file (``path`` is untouched).
    """
    directory = os.path.dirname(os.path.abspath(path))
    base = os.path.basename(path)
    _remove_stale_temp_files(directory, base)
    tmp_path = os.path.join(directory, f"{base}.{os.getpid()}.{secrets.token_hex(4)}{_TMP_SUFFIX}")
    # os.open with 0o666 lets the umask decide the permissions, as a plain open() would (mkstemp
    # would make the checkpoint 0600, unreadable for other users and eval jobs).
    fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
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


def _save_or_raise(ckpt: dict[str, Any], path: str) -> None:
    """:func:`atomic_save`, turning a failed write into a one-line :class:`CheckpointWriteError`."""
    try:
        atomic_save(ckpt, path)
    except OSError as e:
        raise CheckpointWriteError(path, e) from e
    except RuntimeError as e:  # torch.save reports some write failures (e.g. a full disk) as RuntimeError
        cause = OSError(errno.EIO, str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)
        raise CheckpointWriteError(path, cause) from e


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
    keep_step_checkpoints: int = 1  # newest step_*.pt files kept; 0 keeps all


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
    """The checkpoint dict (see the module docstring for the keys).

    A sharded (FSDP) model's weights are consolidated on rank 0 (a collective) and its optimizer
    state is left to the ``.dcp`` folder (``sharded_checkpoint``)."""
    from .sharded_checkpoint import full_model_state, is_sharded

    sharded = is_sharded(model)
    state = full_model_state(model) if sharded else model.state_dict()
    ckpt: dict[str, Any] = {"epoch": epoch, "name": name, "state_dict": state}
    if optimizer is not None and not sharded:
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
    Step checkpoints are left to :func:`save_step_checkpoint`'s retention. A failed write raises
    :class:`CheckpointWriteError` and deletes nothing.
    """
    written = []
    for path in epoch_checkpoint_paths(completed_epoch, policy):
        _save_or_raise(ckpt, path)
        written.append(path)
        if policy.delete_previous and os.path.basename(path) != LATEST_CHECKPOINT_NAME:
            step_back = policy.save_frequency if policy.save_frequency > 0 else 1
            _remove_if_exists(os.path.join(policy.checkpoint_path, f"epoch_{completed_epoch - step_back}.pt"))
    return written


def epoch_checkpoint_paths(completed_epoch: int, policy: SavePolicy) -> list[str]:
    """The files an epoch-end save writes: ``epoch_N.pt`` when due, ``epoch_latest.pt`` if asked for."""
    paths = []
    due = completed_epoch == policy.epochs or (
        policy.save_frequency > 0 and completed_epoch % policy.save_frequency == 0)
    if due:
        paths.append(os.path.join(policy.checkpoint_path, f"epoch_{completed_epoch}.pt"))
    if policy.save_most_recent:
        paths.append(os.path.join(policy.checkpoint_path, LATEST_CHECKPOINT_NAME))
    return paths


def step_checkpoint_path(global_step: int, policy: SavePolicy) -> str:
    return os.path.join(policy.checkpoint_path, f"step_{global_step}.pt")


def save_step_checkpoint(ckpt: dict[str, Any], policy: SavePolicy) -> str:
    """Write ``step_<global_step>.pt``, then keep only the newest ``keep_step_checkpoints`` step files.

    Older step files are deleted only once the new one is durable (written, fsynced, renamed); files
    with a larger step (from a run that was resumed from an earlier checkpoint) are left alone.
    """
    path = step_checkpoint_path(int(ckpt["global_step"]), policy)
    _save_or_raise(ckpt, path)
    prune_step_checkpoints(policy.checkpoint_path, int(ckpt["global_step"]), policy.keep_step_checkpoints)
    return path


def prune_step_checkpoints(checkpoint_path: str, newest_step: int, keep: int) -> list[str]:
    """Delete ``step_<S>.pt`` with ``S < newest_step`` beyond the ``keep - 1`` newest; return the deleted paths."""
    if keep <= 0:
        return []
    older = [(s, p) for s, p in _step_files(checkpoint_path) if s < newest_step]
    older.sort()
    doomed = [p for _, p in older[: max(0, len(older) - (keep - 1))]]
    for old in doomed:
        _remove_if_exists(old)
    return doomed


def step_of(name: str) -> int | None:
    """The global step in a ``step_<S>.pt`` file name, else None."""
    m = re.fullmatch(r"step_(\d+)\.pt", os.path.basename(name))
    return int(m.group(1)) if m else None


def _step_files(checkpoint_path: str) -> list[tuple[int, str]]:
    paths = glob.glob(os.path.join(checkpoint_path, "step_*.pt"))
    return [(step_of(p), p) for p in paths if step_of(p) is not None]


def _remove_if_exists(path: str) -> None:
    """Delete an old checkpoint file and the sharded-state folder that belongs to it."""
    from .sharded_checkpoint import remove_sharded

    try:
        os.remove(path)
    except FileNotFoundError:
        pass
    except OSError as e:  # a leftover old file must not stop the run; the new checkpoint is safe
        logging.warning(f"Could not delete old checkpoint {path}: {e}")
        return
    remove_sharded(path)



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
    ordered by name with :func:`natural_key`. Remote (s3) step files are ranked by the step in
    their name and the newest epoch file by the global step in its first bytes.
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


def _aws(*args: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["aws", *args], capture_output=True)
    except FileNotFoundError as e:
        raise ConfigError("--resume latest with --remote-sync (s3) needs the `aws` command line tool; "
                          "it is not installed.") from e


def _remote_head(url: str, nbytes: int) -> bytes:
    """The first ``nbytes`` of an s3 object (a ranged get; the whole object if that is refused)."""
    bucket, _, key = url[len("s3://"):].partition("/") if url.startswith("s3://") else ("", "", url)
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "head")
        result = _aws("s3api", "get-object", "--bucket", bucket, "--key", key, "--range", f"bytes=0-{nbytes - 1}", out)
        if result.returncode != 0 or not os.path.exists(out):
            result = _aws("s3", "cp", url, out)
        if result.returncode != 0 or not os.path.exists(out):
            return b""
        with open(out, "rb") as f:
            return f.read(nbytes)


def _get_latest_remote(path: str) -> str | None:
    """Newest remote checkpoint by global step: ``step_<S>.pt`` names it, an epoch file's header tells it."""
    result = _aws("s3", "ls", path + "/")
    if result.returncode == 1:
        return None
    names = [line.split(" ")[-1] for line in result.stdout.decode("utf-8").split("\n") if line.strip()]
    names = [n for n in names if n.endswith(".pt")]
    if not names:
        return None
    steps = sorted((step_of(n), n) for n in names if step_of(n) is not None)
    others = sorted((n for n in names if step_of(n) is None), key=natural_key)
    if not steps or not others:
        return os.path.join(path, steps[-1][1] if steps else others[-1])
    newest_step, step_name = steps[-1]
    other_step = read_global_step(lambda n: _remote_head(os.path.join(path, others[-1]), n))
    # At equal steps prefer the epoch file (it also records the finished epoch's evaluation), as locally.
    if other_step is not None and other_step >= newest_step:
        return os.path.join(path, others[-1])
    return os.path.join(path, step_name)


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
    return restore_checkpoint(load_checkpoint_file(path), model, optimizer, scaler, path=path)


def restore_checkpoint(
        checkpoint: Any,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        scaler: Any = None,
        *,
        path: str | None = None,
) -> ResumeState:
    """Restore model/optimizer/scaler from a loaded checkpoint; return where training continues.

    ``path``: the file it was read from, for messages and for the sharded-state folder beside it
    (``None``: the checkpoint dict alone)."""
    label = path or "the checkpoint"
    if not isinstance(checkpoint, dict):
        raise ConfigError(f"--resume {label}: expected a checkpoint dict, got {type(checkpoint).__name__}.")
    full = "epoch" in checkpoint and "state_dict" in checkpoint
    sd = match_module_prefix(checkpoint["state_dict"] if full else checkpoint, model)
    from .sharded_checkpoint import restore_model_and_optimizer

    restored = restore_model_and_optimizer(path, checkpoint if full else {}, model, optimizer,
                                           _strip_prefix(sd, "module."))
    if not restored:
        try:
            model.load_state_dict(sd)
        except RuntimeError as e:
            first = str(e).strip().splitlines()[0]
            raise ConfigError(f"--resume {label}: checkpoint does not match the model ({first}). "
                              "Use the same --model (and --siglip/--force-* flags) as the run that saved it.") from e
    if not full:
        logging.info(f"=> loaded checkpoint '{label}' (epoch 0)")
        return ResumeState()
    if optimizer is not None and "optimizer" in checkpoint and not restored:
        try:
            optimizer.load_state_dict(checkpoint["optimizer"])
        except (ValueError, KeyError) as e:
            raise ConfigError(f"--resume {label}: optimizer state does not match ({e}). "
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
        extras={"train_state": checkpoint["train_state"]} if "train_state" in checkpoint else {},
    )
    logging.info(f"=> resuming checkpoint '{label}' (epoch {state.start_epoch})")
    return state
