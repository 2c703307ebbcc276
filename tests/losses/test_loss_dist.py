"""Multi-process (gloo, CPU) checks of ClipLoss and SigLipLoss, plain and tiled.

One spawn of three processes runs every mode at world size 3 and then, in two of them, at world
size 2; the parent then compares what training would see (per-rank losses, and per-rank feature
gradients combined as DDP combines parameter gradients: averaged over ranks) with naive
references on the concatenated batch.
"""

import functools
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from naive_losses import clip_global, clip_local, siglip

from open_clip.loss import ClipLoss, SigLipLoss
from open_clip.loss_distributed import neighbour_exchange_bidir_with_grad, neighbour_exchange_with_grad

pytestmark = pytest.mark.dist

BATCH, DIM, CHUNK = 4, 6, 3  # CHUNK does not divide the gathered batch (8 or 12 rows)
SIGLIP_IMPLS = ("bidir", "shift", "reduce", "gather")
WORLD_SIZES = (3, 2)  # one spawn of 3 processes; ranks 0 and 1 then regroup as world size 2


def _global_inputs(world_size):
    g = torch.Generator().manual_seed(100 + world_size)
    image = torch.randn(world_size * BATCH, DIM, generator=g)
    text = torch.randn(world_size * BATCH, DIM, generator=g)
    return image, text, torch.tensor(2.5), torch.tensor(-1.25)


def _cases(rank, world_size):
    """name -> (loss module, uses bias)."""
    cases = {}
    for chunk in (None, CHUNK):
        tag = "tiled" if chunk else "plain"
        for local in (False, True):
            for with_grad in (False, True):
                name = f"clip_{'local' if local else 'global'}_{'gwg' if with_grad else 'nogwg'}_{tag}"
                loss = ClipLoss(local, with_grad, True, rank, world_size, chunk_size=chunk)
                cases[name] = (loss, False)
        for impl in SIGLIP_IMPLS:
            cases[f"siglip_{impl}_{tag}"] = (
                SigLipLoss(rank=rank, world_size=world_size, dist_impl=impl, chunk_size=chunk),
                True,
            )
    return cases


def _worker(rank, ports, out_dir):
    """Runs every mode at world size 3, then (ranks 0 and 1 only) again at world size 2.

    Re-initialising the default group in the same processes saves two interpreter starts.
    """
    import torch.distributed as dist

    torch.set_num_threads(1)
    for world_size, port in zip(WORLD_SIZES, ports):
        if rank >= world_size:
            return
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
        results = _all_modes(rank, world_size)
        torch.save(results, os.path.join(out_dir, f"world{world_size}_rank{rank}.pt"))
        dist.barrier()
        dist.destroy_process_group()


def _all_modes(rank, world_size):
    image, text, scale, bias = _global_inputs(world_size)
    rows = slice(rank * BATCH, (rank + 1) * BATCH)
    results = {}
    for name, (loss_fn, uses_bias) in _cases(rank, world_size).items():
        local = [image[rows].clone().requires_grad_(), text[rows].clone().requires_grad_()]
        params = [scale.clone().requires_grad_(), bias.clone().requires_grad_()]
        loss = loss_fn(*local, params[0], params[1] if uses_bias else None)
        loss.backward()
        results[name] = {
            "loss": loss.detach(),
            "grad_image": local[0].grad,
            "grad_text": local[1].grad,
            "grad_scale": params[0].grad,
            "grad_bias": params[1].grad,
        }
    # get_logits of the global loss with a bias: the bias must be added once (3.3 added it twice).
    logits, logits_t = ClipLoss(rank=rank, world_size=world_size).get_logits(image[rows], text[rows], scale, bias)
    results["global_logits"] = {"per_image": logits, "per_text": logits_t}
    results["exchange"] = _exchange_probe(rank, world_size)
    return results


def _exchange_probe(rank, world_size):
    """Distinct tensors and weights per rank and direction, so a mirrored backward shows up."""
    left, right = (rank - 1) % world_size, (rank + 1) % world_size
    to_left = torch.full((2,), 10.0 * rank + 1).requires_grad_()
    to_right = torch.full((2,), 10.0 * rank + 2).requires_grad_()
    one_way = torch.full((2,), 10.0 * rank + 3).requires_grad_()
    from_right, from_left = neighbour_exchange_bidir_with_grad(left, right, to_left, to_right)
    received = neighbour_exchange_with_grad(left, right, one_way)
    weight = rank + 1.0
    (weight * from_right.sum() + 100 * weight * from_left.sum() + 1000 * weight * received.sum()).backward()
    return {
        "from_right": from_right.detach(),
        "from_left": from_left.detach(),
        "received": received.detach(),
        "grads": (to_left.grad, to_right.grad, one_way.grad),
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def all_results(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("dist")
    ports = [_free_port() for _ in WORLD_SIZES]
    mp.spawn(_worker, args=(ports, str(out_dir)), nprocs=max(WORLD_SIZES), join=True)
    return {
        w: [torch.load(out_dir / f"world{w}_rank{r}.pt", weights_only=False) for r in range(w)] for w in WORLD_SIZES
    }


@pytest.fixture(params=[2, 3], ids=lambda w: f"world{w}")
def world(request, all_results):
    return request.param, all_results[request.param]


@functools.cache
def _expected(kind, world_size, detach_columns=False):
    """Naive per-rank losses and DDP-averaged gradients, in float64.

    kind: 'clip_global', 'clip_local' or 'siglip'. With `detach_columns` (local loss without
    gather_with_grad) the gathered columns carry no gradient, as in 3.3.
    """
    image, text, scale, bias = (t.double().requires_grad_() for t in _global_inputs(world_size))
    per_rank = []
    for r in range(world_size):
        rows = slice(r * BATCH, (r + 1) * BATCH)
        if kind == "clip_global":
            per_rank.append(clip_global(image, text, scale))
        elif kind == "clip_local":
            cols_i, cols_t = (image.detach(), text.detach()) if detach_columns else (image, text)
            per_rank.append(clip_local(image[rows], text[rows], cols_i, cols_t, scale, r * BATCH))
        else:
            per_rank.append(siglip(image[rows], text, scale, bias, r * BATCH))
    mean_loss = torch.stack(per_rank).mean()
    grads = torch.autograd.grad(mean_loss, (image, text, scale, bias), allow_unused=True)
    return [float(v.detach()) for v in per_rank], grads


def _combined(results, name):
    """DDP view: features' gradients concatenated and averaged over ranks; parameters averaged."""
    world_size = len(results)
    per = [r[name] for r in results]
    return {
        "losses": [float(p["loss"]) for p in per],
        "grad_image": torch.cat([p["grad_image"] for p in per]) / world_size,
        "grad_text": torch.cat([p["grad_text"] for p in per]) / world_size,
        "grad_scale": torch.stack([p["grad_scale"] for p in per]).mean(),
        "grad_bias": None if per[0]["grad_bias"] is None else torch.stack([p["grad_bias"] for p in per]).mean(),
    }


def _assert_matches(got, losses, grads, grad_factor=1.0):
    close = dict(atol=1e-5, rtol=1e-5)
    assert got["losses"] == pytest.approx(losses, abs=1e-5, rel=1e-5)
    torch.testing.assert_close(got["grad_image"], (grads[0] * grad_factor).float(), **close)
    torch.testing.assert_close(got["grad_text"], (grads[1] * grad_factor).float(), **close)
    torch.testing.assert_close(got["grad_scale"], grads[2].float(), **close)
    if got["grad_bias"] is not None:
        torch.testing.assert_close(got["grad_bias"], grads[3].float(), **close)


@pytest.mark.parametrize("tag", ["plain", "tiled"])
def test_clip_global_with_grad_equals_single_process(world, tag):
    world_size, results = world
    losses, grads = _expected("clip_global", world_size)
    _assert_matches(_combined(results, f"clip_global_gwg_{tag}"), losses, grads)


@pytest.mark.parametrize("tag", ["plain", "tiled"])
def test_clip_global_without_grad_is_scaled_by_world_size(world, tag):
    # 3.3 semantics (kept): without gather_with_grad only the local slot back-propagates, so each
    # rank's feature gradient is dL/df_r and the DDP average is 1/W of the single-process
    # gradient. The scale's gradient is unaffected (it is not gathered).
    world_size, results = world
    losses, grads = _expected("clip_global", world_size)
    _assert_matches(_combined(results, f"clip_global_nogwg_{tag}"), losses, grads, grad_factor=1 / world_size)


@pytest.mark.parametrize("tag", ["plain", "tiled"])
def test_clip_local_with_grad_equals_single_process(world, tag):
    # Per-rank loss covers only the local rows; its mean over ranks is the single-process loss,
    # and the averaged gradients equal the single-process gradients.
    world_size, results = world
    losses, grads = _expected("clip_local", world_size)
    image, text, scale, _ = (t.double() for t in _global_inputs(world_size))
    assert sum(losses) / world_size == pytest.approx(float(clip_global(image, text, scale)), abs=1e-6)
    _assert_matches(_combined(results, f"clip_local_gwg_{tag}"), losses, grads)


@pytest.mark.parametrize("tag", ["plain", "tiled"])
def test_clip_local_without_grad_drops_column_gradients(world, tag):
    # 3.3 semantics (kept): local_loss without gather_with_grad back-propagates only through the
    # local rows; the gathered columns are constants, so part of the gradient is dropped.
    world_size, results = world
    losses, grads = _expected("clip_local", world_size, detach_columns=True)
    _assert_matches(_combined(results, f"clip_local_nogwg_{tag}"), losses, grads)


@pytest.mark.parametrize("tag", ["plain", "tiled"])
@pytest.mark.parametrize("impl", SIGLIP_IMPLS)
def test_siglip_equals_single_process(world, impl, tag):
    # Each rank's loss is normalised by the local batch (3.3: no division by world size); the
    # mean over ranks is the single-process loss and averaged gradients match it.
    world_size, results = world
    losses, grads = _expected("siglip", world_size)
    image, text, scale, bias = (t.double() for t in _global_inputs(world_size))
    assert sum(losses) / world_size == pytest.approx(float(siglip(image, text, scale, bias)), abs=1e-6)
    _assert_matches(_combined(results, f"siglip_{impl}_{tag}"), losses, grads)


def test_global_logits_add_bias_once(world):
    world_size, results = world
    image, text, scale, bias = _global_inputs(world_size)
    expected = scale * image @ text.T + bias
    for r in results:
        torch.testing.assert_close(r["global_logits"]["per_image"], expected)
        torch.testing.assert_close(r["global_logits"]["per_text"], expected.T)


def test_neighbour_exchange_values_and_mirrored_gradients(world):
    world_size, results = world
    for rank, r in enumerate(results):
        left, right = (rank - 1) % world_size, (rank + 1) % world_size
        probe = r["exchange"]
        assert probe["received"].tolist() == [10.0 * left + 3] * 2
        assert probe["grads"][2].tolist() == [1000 * (right + 1.0)] * 2
        if world_size == 2:
            # Left and right are the same peer: messages pair up in posting order, so the bidir
            # exchange is only meaningful (and only used by SigLIP) for world_size >= 3.
            continue
        # Values: from the right neighbour its to_left, from the left its to_right; one-way from left.
        assert probe["from_right"].tolist() == [10.0 * right + 1] * 2
        assert probe["from_left"].tolist() == [10.0 * left + 2] * 2
        # Gradients come back from the rank that used the tensor, with that rank's weight.
        grad_to_left, grad_to_right, _ = probe["grads"]
        assert grad_to_left.tolist() == [left + 1.0] * 2
        assert grad_to_right.tolist() == [100 * (right + 1.0)] * 2
