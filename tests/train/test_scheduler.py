"""LR schedules against formulas written out here, for every param group."""

import math

import pytest
import torch

from open_clip_train.scheduler import const_lr, const_lr_cooldown, cosine_lr, create_scheduler


def _opt():
    p1, p2 = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2, 2))
    return torch.optim.AdamW([{"params": [p1], "weight_decay": 0.0}, {"params": [p2]}], lr=1.0)


def _ref_cosine(base, warm, steps, s):
    if s < warm:
        return base * (s + 1) / warm
    return 0.5 * (1 + math.cos(math.pi * (s - warm) / (steps - warm))) * base


def _ref_cooldown(base, warm, steps, cd, power, end, s):
    if s < warm:
        return base * (s + 1) / warm
    start = steps - cd
    if s < start:
        return base
    return (1 - (s - start) / (steps - start)) ** power * (base - end) + end


@pytest.mark.parametrize("s", [0, 9, 10, 50, 99])
def test_cosine(s):
    opt = _opt()
    lr = cosine_lr(opt, 0.1, 10, 100)(s)
    assert lr == pytest.approx(_ref_cosine(0.1, 10, 100, s), rel=1e-12)
    assert all(g["lr"] == lr for g in opt.param_groups)


@pytest.mark.parametrize("s", [0, 4, 5, 99])
def test_const(s):
    opt = _opt()
    lr = const_lr(opt, 0.1, 5, 100)(s)
    assert lr == pytest.approx(0.1 * (s + 1) / 5 if s < 5 else 0.1)
    assert all(g["lr"] == lr for g in opt.param_groups)


@pytest.mark.parametrize("s", [0, 9, 10, 79, 80, 90, 99])
@pytest.mark.parametrize("power,end", [(1.0, 0.0), (2.0, 0.01)])
def test_const_cooldown(s, power, end):
    opt = _opt()
    lr = const_lr_cooldown(opt, 0.1, 10, 100, 20, power, end)(s)
    assert lr == pytest.approx(_ref_cooldown(0.1, 10, 100, 20, power, end, s), rel=1e-12)


def test_warmup_wins_inside_cooldown():
    opt = _opt()
    assert const_lr_cooldown(opt, 1.0, 50, 60, 30)(40) == pytest.approx(41 / 50)


def test_create_scheduler_errors():
    with pytest.raises(ValueError, match="Available options are: cosine, const, const-cooldown"):
        create_scheduler("linear", _opt(), 0.1, 1, 10)
    with pytest.raises(ValueError, match="epochs-cooldown"):
        create_scheduler("const-cooldown", _opt(), 0.1, 1, 10)
