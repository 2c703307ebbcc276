"""Remote sync of the log directory (``aws s3 sync`` or fsspec) and fsspec-aware load/exists."""

from __future__ import annotations

import logging
import multiprocessing
import subprocess
import time

import fsspec
import torch


def remote_sync_s3(local_dir: str, remote_dir: str) -> bool:
    """Mirror ``local_dir`` to S3 with the aws CLI; ``epoch_latest.pt`` is never uploaded."""
    try:
        result = subprocess.run(
            ["aws", "s3", "sync", local_dir, remote_dir, "--exclude", "*epoch_latest.pt"],
            capture_output=True)
    except FileNotFoundError:
        logging.error("--remote-sync-protocol s3 needs the `aws` command line tool on PATH; it was not found. "
                      "Install the AWS CLI or use --remote-sync-protocol fsspec.")
        return False
    if result.returncode != 0:
        logging.error(f"Error: Failed to sync with S3 bucket {result.stderr.decode('utf-8', 'replace')}")
        return False
    logging.info("Successfully synced with S3 bucket")
    return True


def remote_sync_fsspec(local_dir: str, remote_dir: str) -> bool:
    """Copy every file missing remotely or differing in size (``epoch_latest.pt`` skipped)."""
    a = fsspec.get_mapper(local_dir)
    try:
        b = fsspec.get_mapper(remote_dir)
        for k in a:
            if "epoch_latest.pt" in k:
                continue
            logging.info(f"Attempting to sync {k}")
            if k in b and len(a[k]) == len(b[k]):
                logging.debug(f"Skipping remote sync for {k}.")
                continue
            try:
                b[k] = a[k]
                logging.info(f"Successful sync for {k}.")
            except Exception as e:
                logging.info(f"Error during remote sync for {k}: {e}")
                return False
    except Exception as e:  # any backend error means the sync failed; the caller decides what to do
        logging.error(f"Error during remote sync: {e}")
        return False
    return True


def remote_sync(local_dir: str, remote_dir: str, protocol: str) -> bool:
    """Sync once with ``protocol`` (``s3`` or ``fsspec``); False on failure."""
    logging.info("Starting remote sync.")
    if protocol == "s3":
        return remote_sync_s3(local_dir, remote_dir)
    if protocol == "fsspec":
        return remote_sync_fsspec(local_dir, remote_dir)
    logging.error(f"Remote protocol {protocol!r} not known; valid: s3, fsspec.")
    return False


def keep_running_remote_sync(sync_every: int, local_dir: str, remote_dir: str, protocol: str) -> None:
    while True:
        time.sleep(sync_every)
        remote_sync(local_dir, remote_dir, protocol)


def start_sync_process(sync_every: int, local_dir: str, remote_dir: str, protocol: str) -> multiprocessing.Process:
    """An unstarted background process that syncs every ``sync_every`` seconds."""
    return multiprocessing.Process(target=keep_running_remote_sync,
                                   args=(sync_every, local_dir, remote_dir, protocol))


def pt_load(file_path: str, map_location=None, weights_only: bool = True):
    """``torch.load`` through fsspec (local paths and URLs alike)."""
    if file_path.startswith("s3"):
        logging.info("Loading remote checkpoint, which may take a bit.")
    with fsspec.open(file_path, "rb") as f:
        return torch.load(f, map_location=map_location, weights_only=weights_only)


def pt_save(pt_obj, file_path: str) -> None:
    """``torch.save`` through fsspec."""
    with fsspec.open(file_path, "wb") as f:
        torch.save(pt_obj, f)


def check_exists(file_path: str) -> bool:
    """False only when fsspec reports the file missing."""
    try:
        with fsspec.open(file_path):
            pass
    except FileNotFoundError:
        return False
    return True


def is_local_path(path: str) -> bool:
    return "://" not in path or path.startswith("file://")


def local_path(path: str) -> str:
    return path[len("file://"):] if path.startswith("file://") else path

