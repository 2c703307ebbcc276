"""Optimizer construction: 3.3's weight-decay exclusion rules, group order, timm path, scaler."""

import pytest
import torch

from open_clip_train.errors import ConfigError
from open_clip_train.optim import create_optimizer, create_scaler


class Toy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.positional_embedding = torch.nn.Parameter(torch.zeros(4, 3))
        self.class_embedding = torch.nn.Parameter(torch.zeros(3))
        self.logit_scale = torch.nn.Parameter(torch.zeros([]))
        self.proj = torch.nn.Parameter(torch.zeros(3, 3))
        self.ln_pre = torch.nn.LayerNorm(3)
        self.bn1 = torch.nn.BatchNorm2d(3)
        self.fc = torch.nn.Linear(3, 3)
        self.frozen = torch.nn.Linear(3, 3)
        self.frozen.requires_grad_(False)


def test_adamw_groups_follow_33_rules():
    m = Toy()
    opt = create_optimizer(m, "AdamW", lr=1e-3, wd=0.1, beta1=0.9, beta2=0.98, eps=1e-6)
    names = {id(p): n for n, p in m.named_parameters()}
    no_wd = {names[id(p)] for p in opt.param_groups[0]["params"]}
    wd = {names[id(p)] for p in opt.param_groups[1]["params"]}
    assert opt.param_groups[0]["weight_decay"] == 0.0 and opt.param_groups[1]["weight_decay"] == 0.1
    assert wd == {"positional_embedding", "proj", "fc.weight"}
    assert no_wd == {"class_embedding", "logit_scale", "ln_pre.weight", "ln_pre.bias", "bn1.weight", "bn1.bias",
                     "fc.bias"}
    assert opt.defaults["betas"] == (0.9, 0.98) and opt.defaults["eps"] == 1e-6


def test_unknown_optimizer_and_timm():
    with pytest.raises(ConfigError, match="--opt sgdx"):
        create_optimizer(Toy(), "sgdx")
    opt = create_optimizer(Toy(), "timm/lamb", lr=1e-3, wd=0.1, beta1=None, beta2=None, eps=None)
    assert type(opt).__name__ == "Lamb"
    with pytest.raises(ConfigError, match="--beta1 and --beta2"):
        create_optimizer(Toy(), "timm/lamb", lr=1e-3, wd=0.1, beta1=0.9, beta2=None, eps=None)


def test_scaler_only_for_amp():
    assert create_scaler("amp", "cpu") is not None
    for p in ("amp_bf16", "fp32", "fp16", "pure_bf16"):
        assert create_scaler(p, "cpu") is None
