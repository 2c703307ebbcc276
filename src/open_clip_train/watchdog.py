"""The data-stall watchdog, and the hooks every training dataloader worker runs at start.

:class:`StallWatchdog` is a daemon thread watching the training loop's waits for data (only the
waits: evaluation, checkpoint saves and slow steps do not count). When one wait reaches
``--data-stall-timeout`` seconds it

1. writes every thread's stack to the log: the main process's through ``faulthandler``, each
   dataloader worker's through ``faulthandler`` on ``SIGUSR2`` (registered by :class:`WorkerHooks`);
2. names the data source: the dataset flag and, per process, the file or shard being read and for
   how long (published by ``data.progress``);
3. kills the workers and interrupts the main thread with :class:`~open_clip_train.errors.StallError`
   (the app logs it as a one-line error containing "stall" and exits with status 1). If the main
   thread does not unwind within a grace period (stuck in C code), the watchdog thread logs the
   error itself and ends the process with status 1.

:class:`WorkerHooks` is the dataloader ``worker_init_fn`` the app installs: workers ignore SIGTERM
and SIGUSR1 (preemption is the main process's decision: it still needs batches while it finishes
its step, and torchrun signals the whole process group), register the stack dump, and publish
their current data source.
"""

from __future__ import annotations

import contextlib
import faulthandler
import logging
import multiprocessing
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from .data import progress
from .errors import StallError

DUMP_SIGNAL = signal.SIGUSR2
GRACE_SECONDS = 20.0  # for the main thread to unwind after the interrupt
_WORKER_DUMP_WAIT = 2.0


class WorkerHooks:
    """``worker_init_fn`` of a training dataloader (picklable; chains an existing init function)."""

    def __init__(self, previous: Callable | None, dump_dir: str | None, slots: list | None) -> None:
        self.previous, self.dump_dir, self.slots = previous, dump_dir, slots
        self._dump_file = None

    def __call__(self, worker_id: int) -> None:
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, signal.SIG_IGN)
        if self.dump_dir is not None and os.path.isdir(self.dump_dir):
            # Kept open for the worker's lifetime: faulthandler writes to its descriptor from the signal handler.
            self._dump_file = open(os.path.join(self.dump_dir, f"worker-{worker_id}-{os.getpid()}.txt"), "w")
            faulthandler.register(DUMP_SIGNAL, file=self._dump_file, all_threads=True)
        if self.slots is not None and worker_id < len(self.slots):
            progress.publish_to(self.slots[worker_id])
        if self.previous is not None:
            self.previous(worker_id)


def install_worker_hooks(data_info: Any, watchdog: StallWatchdog | None) -> None:
    """Install :class:`WorkerHooks` on the torch DataLoader behind ``data_info`` (if there is one)."""
    loader = getattr(getattr(data_info, "dataloader", None), "loader", None)
    if loader is None or not hasattr(loader, "worker_init_fn"):
        return
    previous = loader.worker_init_fn
    if isinstance(previous, WorkerHooks):
        previous = previous.previous
    workers = getattr(loader, "num_workers", 0)
    dump_dir, slots = (None, None) if watchdog is None else (watchdog.dump_dir, watchdog.worker_slots(workers))
    loader.worker_init_fn = WorkerHooks(previous, dump_dir, slots)


class StallWatchdog:
    """Stops the run when the training loop waits for data for ``timeout`` seconds (see the module docstring).

    Args:
        timeout: seconds a single wait may last.
        source: how the data source is named in the error (e.g. ``--train-data /data/train.csv``).
    """

    def __init__(self, timeout: float, source: str) -> None:
        self.timeout = timeout
        self.source = source
        self.fired: str | None = None  # the error message once the watchdog fired
        self.dump_dir = tempfile.mkdtemp(prefix="libreclip-stacks-")
        self._slots: list = []
        self._waiting_since: float | None = None
        self._what = "the next training batch"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._main_ident = threading.main_thread().ident
        self._previous_handler: Any = None
        self._can_interrupt = False

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> StallWatchdog:
        if threading.current_thread() is threading.main_thread():
            self._previous_handler = signal.signal(DUMP_SIGNAL, self._interrupt)
            self._can_interrupt = True
        self._thread = threading.Thread(target=self._run, name="data-stall-watchdog", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        if self._can_interrupt:
            signal.signal(DUMP_SIGNAL, self._previous_handler or signal.SIG_DFL)
            self._can_interrupt = False
        shutil.rmtree(self.dump_dir, ignore_errors=True)

    def worker_slots(self, num_workers: int) -> list:
        """Shared-memory slots the workers publish their current source in (one per worker id)."""
        while len(self._slots) < num_workers:
            self._slots.append(progress.new_slot())
        return self._slots[:num_workers]

    @contextlib.contextmanager
    def waiting(self, what: str = "the next training batch") -> Iterator[None]:
        """Mark a wait for data; an exception that ends it after the watchdog fired becomes :class:`StallError`."""
        self._what, self._waiting_since = what, time.monotonic()
        try:
            yield
        except BaseException as e:
            if self.fired is not None and not isinstance(e, StallError):
                raise StallError(self.fired) from e
            raise
        finally:
            self._waiting_since = None

    # -- the watchdog thread ----------------------------------------------------------------------

    def _run(self) -> None:
        poll = min(1.0, max(0.05, self.timeout / 20))
        while not self._stop.wait(poll):
            since = self._waiting_since
            if since is not None and time.monotonic() - since >= self.timeout:
                self._fire(time.monotonic() - since)
                return

    def _interrupt(self, signum: int, frame) -> None:
        # Main-thread handler: raising here breaks a blocking read or queue wait (EINTR).
        if self.fired is not None and os.getpid() == self._pid:
            raise StallError(self.fired)

    def _fire(self, waited: float) -> None:
        readers = self._readers()
        reading = "".join(f"; {who} has been reading {src} for {secs:.0f} s" for who, src, secs in readers)
        message = (f"Data stall: waited {waited:.0f} s for {self._what} from {self.source}{reading} "
                   f"(--data-stall-timeout {self.timeout:g}); every thread's stack is in the log above. Check that "
                   "the storage is reachable, or raise --data-stall-timeout (0 disables).")
        logging.error(f"Data stall detected after {waited:.0f} s waiting for {self._what} from {self.source}; "
                      "dumping every thread's stack.")
        self._dump_main_stacks()
        workers = self._live_workers()
        self._dump_worker_stacks(workers, dict((pid, (src, secs)) for pid, src, secs in self._worker_readers()))
        for pid in workers:  # they may be blocked in a read forever; the run is over
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        self.fired = message
        if self._can_interrupt:
            with contextlib.suppress(OSError):
                signal.pthread_kill(self._main_ident, DUMP_SIGNAL)
            if self._stop.wait(GRACE_SECONDS):
                return
        logging.error(f"Error: {message}")
        for handler in logging.getLogger().handlers:
            with contextlib.suppress(Exception):
                handler.flush()
        os._exit(1)

    def _readers(self) -> list[tuple[str, str, float]]:
        """``(who, source, seconds)`` for the main process and every worker that published a source."""
        readers = []
        here = progress.current()
        if here is not None:
            readers.append(("the main process", here[0], here[1]))
        readers += [(f"worker pid {pid}", src, secs) for pid, src, secs in self._worker_readers()]
        return readers

    def _worker_readers(self) -> list[tuple[int, str, float]]:
        pids = self._worker_pids()
        found = []
        for worker_id, slot in enumerate(self._slots):
            entry = progress.read_slot(slot)
            if entry is not None and worker_id in pids:
                found.append((pids[worker_id], entry[0], entry[1]))
        return found

    def _worker_pids(self) -> dict[int, int]:
        """``{worker id: pid}`` of the live workers that ran :class:`WorkerHooks`."""
        alive = {p.pid for p in multiprocessing.active_children()}
        pids = {}
        for name in os.listdir(self.dump_dir):
            parts = name[: -len(".txt")].split("-")
            if name.startswith("worker-") and len(parts) == 3 and int(parts[2]) in alive:
                pids[int(parts[1])] = int(parts[2])
        return pids

    def _live_workers(self) -> list[int]:
        return sorted(self._worker_pids().values())

    def _dump_main_stacks(self) -> None:
        path = os.path.join(self.dump_dir, "main.txt")
        with open(path, "w") as f:
            faulthandler.dump_traceback(file=f, all_threads=True)
        with open(path) as f:
            logging.error(f"Stacks of the main process (pid {os.getpid()}):\n{f.read().rstrip()}")

    def _dump_worker_stacks(self, workers: list[int], reading: dict) -> None:
        for pid in workers:
            with contextlib.suppress(OSError):
                os.kill(pid, DUMP_SIGNAL)
        deadline = time.monotonic() + _WORKER_DUMP_WAIT
        files = {pid: next((os.path.join(self.dump_dir, n) for n in os.listdir(self.dump_dir)
                            if n.endswith(f"-{pid}.txt")), None) for pid in workers}
        sizes: dict = {}
        while time.monotonic() < deadline:  # until every dump has stopped growing
            now = {pid: os.path.getsize(p) if p and os.path.exists(p) else 0 for pid, p in files.items()}
            if now == sizes and all(now.values()):
                break
            sizes = now
            time.sleep(0.1)
        for pid, path in files.items():
            text = ""
            if path and os.path.exists(path):
                with open(path, errors="replace") as f:
                    text = f.read().rstrip()
            src = f", reading {reading[pid][0]} for {reading[pid][1]:.0f} s" if pid in reading else ""
            logging.error(f"Stacks of dataloader worker pid {pid}{src}:\n{text or '(no dump)'}")
