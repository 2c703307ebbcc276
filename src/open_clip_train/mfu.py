"""Model FLOP utilisation (MFU) of the training step.

Owns: the dense peak FLOP/s of the GPUs we know (by product name), the measured matmul rate that
stands in for a peak on CPU, counting the FLOPs of one optimizer step (``StepFlops``) and the
arithmetic ``MFU = FLOPs per sample x samples/s / peak``.

FLOPs are counted from operator shapes with torch's FLOP formulas (matmuls, convolutions,
attention; ``torch.utils.flop_counter``): elementwise work, norms and the optimizer are not
counted, as is usual for MFU, and attention under a causal mask counts as full. The count is of
the path that runs: the towers' fast paths (text early stop, pooled-only last block) stay on
while counting, and recomputation that the step really does (``--accum-freq``'s feature-caching
forward, activation checkpointing) is included.

The counter is a plain dispatch mode rather than ``FlopCounterMode``: that one re-runs operators
it has no formula for through their Python decompositions (BatchNorm's on CPU), which is not the
kernel the step would run and may change its bits, and its module tracker installs global module
hooks. Ours runs every operator as called and only reads shapes.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry, sdpa_backward_flop_count, sdpa_flop_count, shape_wrapper

from open_clip.precision import low_precision_dtype

# Dense peak TFLOP/s of one GPU: (16-bit tensor cores: bf16 = fp16, TF32 tensor cores, plain fp32).
# A100: the vendor's dense figures. H100/H200/B200: the vendor lists figures "with sparsity" and
# says dense is half of them; the entries are those halves. fp32 is the non-tensor-core rate
# (None where no vendor figure is at hand). Keys are matched case-insensitively as substrings of
# ``torch.cuda.get_device_name()``, longest key first ("H100 PCIe" before "H100").
PEAK_TFLOPS: dict[str, tuple[float, float, float | None]] = {
    "A100": (312.0, 156.0, 19.5),  # SXM and PCIe have the same tensor-core peak
    "H100 PCIe": (756.0, 378.0, 51.0),
    "H100 NVL": (835.5, 417.5, 60.0),
    "H100": (989.5, 494.5, 67.0),  # SXM5 (device names like "NVIDIA H100 80GB HBM3")
    "GH200": (989.5, 494.5, 67.0),  # the Grace Hopper superchip's GPU runs at H100 SXM's peak
    "H200 NVL": (835.5, 417.5, 60.0),
    "H200": (989.5, 494.5, 67.0),  # same GH100 compute as H100 SXM, more and faster memory
    "B200": (2250.0, 1100.0, None),
}

# CPU flash attention has no formula in torch's table; its FLOPs are those of any other SDPA kernel.
_FORMULAS = {
    **flop_registry,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: shape_wrapper(
        lambda q, k, v, *args, out_shape=None, **kwargs: sdpa_flop_count(q, k, v)),
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: shape_wrapper(
        lambda grad_out, q, k, v, *args, out_shape=None, **kwargs: sdpa_backward_flop_count(grad_out, q, k, v)),
}


class FlopCount(TorchDispatchMode):
    """Counts, in ``total``, the FLOPs of the operators run inside it, running each as called."""

    def __init__(self):
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = _FORMULAS.get(getattr(func, "_overloadpacket", None))
        if formula is not None:
            self.total += formula(*args, **kwargs, out_val=out)
        return out


def flop_counter() -> FlopCount:
    """A fresh FLOP counter: ``with counter: ...`` then read ``counter.total``."""
    return FlopCount()


def compute_dtype(precision: str) -> torch.dtype:
    """The dtype the step's matmuls run in under ``--precision`` (amp: the autocast dtype)."""
    return low_precision_dtype(precision) or torch.float32


def gpu_peak_flops(device_name: str, precision: str, tf32: bool = True) -> float | None:
    """Dense peak FLOP/s of the GPU called ``device_name`` for ``precision``, or None if unknown.

    fp32 runs count against the TF32 tensor-core peak when ``tf32`` matmuls are allowed (the
    training app allows them), else against the plain fp32 rate.
    """
    name = device_name.lower()
    for key in sorted(PEAK_TFLOPS, key=len, reverse=True):
        if key.lower() in name:
            half, tf32_peak, fp32_peak = PEAK_TFLOPS[key]
            if low_precision_dtype(precision) is not None:
                peak = half
            else:
                peak = tf32_peak if tf32 else fp32_peak
            return None if peak is None else peak * 1e12
    return None


@functools.cache
def cpu_matmul_flops(dtype: torch.dtype = torch.float32, threads: int | None = None, size: int = 1024,
                     budget_s: float = 0.5) -> float:
    """Best FLOP/s of a ``size`` x ``size`` matmul in ``dtype`` on this CPU (measured once per process
    and arguments: the stand-in for a peak on CPU, so that MFU there reads "share of what plain
    matmuls reach"). ``threads`` only keys the cache (pass ``torch.get_num_threads()``).

    Uses constant inputs, so it draws nothing from the random generators training uses.
    """
    a = torch.full((size, size), 0.5, dtype=dtype)
    b = torch.full((size, size), 0.25, dtype=dtype)
    best = float("inf")
    with torch.no_grad():
        torch.mm(a, b)  # warm-up: thread pool, packing buffers
        start = time.perf_counter()
        for rep in range(20):
            t0 = time.perf_counter()
            torch.mm(a, b)
            best = min(best, time.perf_counter() - t0)
            if rep >= 2 and time.perf_counter() - start > budget_s:
                break
    return 2.0 * size**3 / best


def peak_flops(device: torch.device | str, precision: str) -> float | None:
    """The peak FLOP/s one device can reach for ``precision``: the table on CUDA (None for a GPU
    not in it), the measured matmul rate on CPU, None elsewhere."""
    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        tf32 = torch.backends.cuda.matmul.allow_tf32 or torch.get_float32_matmul_precision() != "highest"
        return gpu_peak_flops(name, precision, tf32=tf32)
    if device.type == "cpu":
        return cpu_matmul_flops(compute_dtype(precision), torch.get_num_threads())
    return None


def model_flop_utilisation(flops_per_sample: float | None, samples_per_second: float,
                           peak: float | None) -> float | None:
    """MFU as a fraction: achieved model FLOP/s of one device over its peak (None if either is unknown).

    ``samples_per_second`` is the device's own rate (per GPU, not the whole world's).
    """
    if flops_per_sample is None or peak is None or peak <= 0:
        return None
    return flops_per_sample * samples_per_second / peak


def is_compiled(model: torch.nn.Module) -> bool:
    """Whether ``model`` is a ``torch.compile`` wrapper (dynamo runs eagerly under a dispatch mode)."""
    return hasattr(model, "_orig_mod") and hasattr(model, "_torchdynamo_orig_callable")


@contextlib.contextmanager
def preserved_training_state(model: torch.nn.Module) -> Iterator[None]:
    """Run the body without a trace on training: random generators (CPU and the current CUDA
    device), buffers (BatchNorm statistics) and ``.grad`` of every parameter come back as they were."""
    params = list(model.parameters())
    grads = [p.grad for p in params]
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    try:
        with torch.random.fork_rng(devices=devices):
            for p in params:
                p.grad = None
            yield
    finally:
        with torch.no_grad():
            for buf, saved in buffers:
                buf.copy_(saved)
        for p, grad in zip(params, grads):
            p.grad = grad


# FLOPs per sample already counted, per model object and accumulation: each run counts once, not
# once per epoch (the log line of later epochs carries no counting overhead).
_COUNTED: weakref.WeakKeyDictionary[torch.nn.Module, dict[int, float]] = weakref.WeakKeyDictionary()


def counted_flops_per_sample(model: torch.nn.Module, accum_freq: int = 1) -> float | None:
    """The FLOPs per sample the training loop counted for ``model`` (None before its first step)."""
    return _COUNTED.get(model, {}).get(accum_freq)


class StepFlops:
    """FLOPs per sample of the training step, counted on the first optimizer step of a model.

    Enter ``counting(...)`` around the computation of each micro-batch (forward, loss, backward);
    after ``accum_freq`` micro-batches, ``per_sample`` holds the FLOPs of that optimizer step
    divided by the samples it trained on, and later ``counting`` calls do nothing (nor do those of
    a later ``StepFlops`` for the same model: the count is remembered per model). Counting reads
    only shapes, so it adds no host sync, and it leaves every number of the step unchanged.

    A compiled model would run eagerly under the counter (dynamo steps aside for dispatch modes),
    so for it the counter instead re-runs ``rerun(uncompiled_model)`` on the same inputs before the
    real step, with random generators, buffers and gradients restored afterwards.
    """

    def __init__(self, accum_freq: int = 1):
        self.accum_freq = accum_freq
        self.per_sample: float | None = None
        self._flops = 0
        self._samples = 0
        self._micro_batches = 0
        self._model: torch.nn.Module | None = None

    @contextlib.contextmanager
    def counting(self, samples: int, model: torch.nn.Module | None = None,
                 rerun: Callable[[torch.nn.Module], Any] | None = None) -> Iterator[None]:
        """Count the body's FLOPs as part of the step being measured (``samples``: its micro-batch
        size; ``model``: the model the body trains, by which the count is remembered)."""
        if self.per_sample is None and model is not None:
            self.per_sample = _COUNTED.get(model, {}).get(self.accum_freq)
            self._model = model
        if self.per_sample is not None:
            yield
            return
        if model is not None and is_compiled(model):
            if rerun is not None:
                self._shadow_count(model._orig_mod, samples, rerun)
            yield
            return
        counter = flop_counter()
        with counter:
            yield
        self._add(counter.total, samples)

    def _shadow_count(self, model: torch.nn.Module, samples: int, rerun: Callable[[torch.nn.Module], Any]) -> None:
        counter = flop_counter()
        with preserved_training_state(model), counter:
            rerun(model)
        # One micro-batch stands for the whole step (under accumulation its caching forward is not re-run).
        self._finish(counter.total, samples)

    def _add(self, flops: int, samples: int) -> None:
        self._flops += flops
        self._samples += samples
        self._micro_batches += 1
        if self._micro_batches >= self.accum_freq:
            self._finish(self._flops, self._samples)

    def _finish(self, flops: int, samples: int) -> None:
        if samples <= 0:
            return
        self.per_sample = flops / samples
        if self._model is not None:
            _COUNTED.setdefault(self._model, {})[self.accum_freq] = self.per_sample
        logging.debug(f"Model FLOPs per training sample: {self.per_sample / 1e9:.3f} GFLOP")
