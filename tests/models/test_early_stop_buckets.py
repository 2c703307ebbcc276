"""Exact early stop with automatic length groups: the planner against brute force, the generic
helper against a naive per-row reference, the text tower and a CLIP ``encode_text`` built on the
helper (the recipe proposed for models/clip.py) against full-length encoding, incl. gradients and
TorchScript."""

import itertools

import pytest
import torch

from open_clip.models.clip import CLIP
from open_clip.models.text_early_stop import (
    encode_pooled_text_in_buckets,
    plan_text_buckets,
    trim_text_for_pooling,
)
from open_clip.models.text_transformer import TextTransformer

VOCAB, CTX, EOT, WIDTH = 64, 16, 63, 32


def naive_cost(lengths, bounds, width, group_cost):
    """Cost of splitting sorted lengths at bounds (exclusive ends), written out from the docstring."""
    total, start = 0.0, 0
    for end in bounds:
        longest = max(lengths[start:end])
        total += (end - start) * longest * (1 + longest / (0.75 * width)) + group_cost
        start = end
    return total


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("group_cost", [0.0, 5.0, 40.0, 1e6])
def test_plan_is_optimal_against_brute_force(seed, group_cost):
    gen = torch.Generator().manual_seed(seed)
    lengths = sorted(torch.randint(1, 30, (int(torch.randint(1, 10, (1,), generator=gen)),), generator=gen).tolist())
    plan = plan_text_buckets(lengths, width=8, group_cost=group_cost)
    bounds = [end for end, _ in plan]
    assert bounds[-1] == len(lengths) and bounds == sorted(set(bounds))
    assert [length for _, length in plan] == [lengths[end - 1] for end in bounds]
    n = len(lengths)
    brute = min(
        naive_cost(lengths, [*cut, n], 8, group_cost)
        for k in range(n)
        for cut in itertools.combinations(range(1, n), k)
    )
    assert naive_cost(lengths, bounds, 8, group_cost) == pytest.approx(brute)
    if group_cost >= 1e6:
        assert len(plan) == 1


def test_plan_uniform_and_errors():
    assert plan_text_buckets([7] * 64) == [(64, 7)]
    assert plan_text_buckets([]) == []
    with pytest.raises(ValueError, match="sorted"):
        plan_text_buckets([3, 2])


def random_batch(seed: int, batch: int = 12, eos_id=None, same_length: bool = False) -> torch.Tensor:
    """Rows of random lengths: ids, EOT (largest id), zero padding; with eos_id some rows hold it,
    others don't (pooled at position 0)."""
    gen = torch.Generator().manual_seed(seed)
    text = torch.zeros(batch, CTX, dtype=torch.long)
    fixed = int(torch.randint(0, CTX - 1, (1,), generator=gen))
    for b in range(batch):
        n = fixed if same_length else int(torch.randint(0, CTX, (1,), generator=gen))
        text[b, :n] = torch.randint(1, EOT, (n,), generator=gen)
        text[b, n] = EOT
        if eos_id is not None and b % 3 != 2:
            text[b, int(torch.randint(0, n + 1, (1,), generator=gen))] = eos_id
    return text


def test_helper_matches_naive_rows_and_restores_order():
    text = random_batch(0, batch=20)
    positions = text.argmax(-1)
    seen = []

    def encode_group(tokens):  # a per-row function that reads up to the pooled position
        seen.append(tuple(tokens.shape))
        assert (tokens.argmax(-1) < tokens.shape[1]).all()
        idx = tokens.argmax(-1)
        return tokens.float().cumsum(1)[torch.arange(tokens.shape[0]), idx]

    expected = text.float().cumsum(1)[torch.arange(20), positions]
    for max_groups in (0, 1, 3, 50):
        seen.clear()
        out = encode_pooled_text_in_buckets(text, encode_group, "argmax", max_groups=max_groups, group_cost=0.0)
        torch.testing.assert_close(out, expected)
        assert sum(n for n, _ in seen) == 20
        if max_groups == 1:
            assert seen == [(20, int(positions.max()) + 1)]
        elif max_groups == 0:  # group cost 0: one group per distinct length
            assert sorted(length for _, length in seen) == sorted(set((positions + 1).tolist()))


def assert_close_scaled(actual, expected, name):
    scale = max(float(expected.abs().max()), 1.0)
    torch.testing.assert_close(actual, expected, atol=1e-5 * scale, rtol=0, msg=name)


def make_tower(**kwargs) -> TextTransformer:
    torch.manual_seed(0)
    kwargs.setdefault("output_dim", 8)
    return TextTransformer(CTX, VOCAB, WIDTH, 4, 2, **kwargs).eval()


def encode_with_lengths(model, text):
    seen = []
    handle = model.transformer.register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape[:2])))
    try:
        out = model(text)
    finally:
        handle.remove()
    return out, seen


CASES = [
    dict(batch=12, seed=1),
    dict(batch=12, seed=2, pool_type="eos", eos_id=5),
    dict(batch=9, seed=3, same_length=True),
    dict(batch=1, seed=4),
    dict(batch=40, seed=5, proj_bias=True),
    dict(batch=7, seed=6, qk_norm=True, output_dim=None),
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("group_cost", [0.0, None])
def test_auto_groups_equal_full_encoding(case, group_cost):
    case = dict(case)
    batch, seed, same = case.pop("batch"), case.pop("seed"), case.pop("same_length", False)
    model = make_tower(**case)
    if group_cost is not None:
        model.early_stop_group_cost = group_cost
    text = random_batch(seed, batch, eos_id=case.get("eos_id"), same_length=same)
    with torch.no_grad():
        fast, seen = encode_with_lengths(model, text)
        model.early_stop = False
        full, full_seen = encode_with_lengths(model, text)
    torch.testing.assert_close(fast, full, atol=1e-5, rtol=0)
    assert full_seen == [(batch, CTX)]
    assert sum(n for n, _ in seen) == batch
    longest = int(trim_text_for_pooling(text, case.get("pool_type", "argmax"), case.get("eos_id")).shape[1])
    assert max(length for _, length in seen) == longest
    if same or batch == 1:
        assert len(seen) == 1
    elif group_cost == 0.0:
        assert len(seen) > 1  # the grouping really ran


@pytest.mark.parametrize("pool", ["argmax", "eos"])
def test_auto_groups_gradients_match_full(pool):
    model = make_tower(pool_type=pool, eos_id=5, proj_bias=True).train()
    model.early_stop_group_cost = 0.0
    text = random_batch(7, batch=10, eos_id=5 if pool == "eos" else None)
    weights = torch.randn(10, 8, generator=torch.Generator().manual_seed(0))

    def grads(early):
        model.zero_grad()
        model.early_stop = early
        out, seen = encode_with_lengths(model, text)
        (out * weights).sum().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, seen

    fast, seen = grads(True)
    full, _ = grads(False)
    assert len(seen) > 1 and fast.keys() == full.keys()
    for name in full:  # float rounding differs between row groupings: compare relative to the scale
        assert_close_scaled(fast[name], full[name], name)


def test_scripted_tower_trims_and_matches():
    model = make_tower()
    text = random_batch(8, batch=10)
    with torch.no_grad():
        eager = model(text)
        scripted = torch.jit.script(model)
        torch.testing.assert_close(scripted(text), eager, atol=1e-5, rtol=0)
        model.early_stop = False
        torch.testing.assert_close(scripted(text), model(text), atol=1e-5, rtol=0)


@pytest.mark.parametrize("kwargs", [dict(output_tokens=True), dict(no_causal_mask=True), dict(pool_type="last")])
def test_auto_groups_not_used_where_inexact(kwargs):
    model = make_tower(**kwargs)
    with torch.no_grad():
        _, seen = encode_with_lengths(model, random_batch(9))
    assert seen == [(12, CTX)]


def make_clip(cls, **text_kwargs):
    torch.manual_seed(0)
    text_cfg = dict(context_length=CTX, vocab_size=VOCAB, width=WIDTH, heads=4, layers=2, **text_kwargs)
    vision_cfg = dict(layers=1, width=32, head_width=16, patch_size=8, image_size=16)
    return cls(8, vision_cfg, text_cfg).eval()


@pytest.mark.parametrize("text_kwargs", [{}, dict(pool_type="eos", eos_id=5), dict(proj_bias=True)])
def test_clip_encode_text_recipe_exact_grad_and_scripted(text_kwargs):
    model = make_clip(CLIP, **text_kwargs)  # early stop on by default
    reference = make_clip(CLIP, **text_kwargs)
    reference.text_early_stop = False
    reference.load_state_dict(model.state_dict())
    text = random_batch(10, batch=24, eos_id=text_kwargs.get("eos_id"))
    # one full-length row: a long tail like real caption batches
    text[0, :-1] = 7
    text[0, -1] = text_kwargs.get("eos_id", EOT)
    seen = []
    handle = model.transformer.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[1]))
    with torch.no_grad():
        out = model.encode_text(text, normalize=True)
    handle.remove()
    torch.testing.assert_close(out, reference.encode_text(text, normalize=True), atol=1e-5, rtol=0)
    assert len(seen) > 1 and max(seen) == CTX and min(seen) < CTX
    # gradients
    model.train(), reference.train()
    for m in (model, reference):
        m.encode_text(text).square().sum().backward()
    grads = {n: p.grad for n, p in reference.named_parameters() if p.grad is not None}
    for name, p in model.named_parameters():
        if name in grads:
            assert_close_scaled(p.grad, grads[name], name)
    # TorchScript: the bucketed path is skipped, the trimmed one stays exact
    model.eval()
    with torch.no_grad():
        scripted = torch.jit.script(model)
        torch.testing.assert_close(scripted.encode_text(text), reference.encode_text(text), atol=1e-5, rtol=0)
