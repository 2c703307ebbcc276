"""The step loop on a tiny module: non-finite handling, accumulation, clamp, resume order, metrics."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from open_clip_train.checkpoint import get_rng_state
from open_clip_train.errors import TrainingError
from open_clip_train.evaluate import get_clip_metrics
from open_clip_train.params import parse_args
from open_clip_train.train import TrainState, epoch_batches, train_one_epoch
from open_clip_train.zero_shot import accuracy


class TinyClip(torch.nn.Module):
    def __init__(self, poison_after=None):
        super().__init__()
        torch.manual_seed(0)
        self.img = torch.nn.Linear(4, 3)
        self.txt = torch.nn.Embedding(10, 3)
        self.logit_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.poison = False

    def forward(self, image, text):
        img = F.normalize(self.img(image), dim=-1)
        if self.poison:
            img = img * float("nan")
        return {"image_features": img,
                "text_features": F.normalize(self.txt(text).mean(1), dim=-1),
                "logit_scale": self.logit_scale.exp()}


def naive_clip_loss(image_features, text_features, logit_scale, output_dict=False):
    logits = logit_scale * image_features @ text_features.t()
    labels = torch.arange(len(logits))
    loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2
    return {"contrastive_loss": loss} if output_dict else loss


class Loader(list):
    def __init__(self, batches):
        super().__init__(batches)
        self.num_batches = len(batches)
        self.num_samples = sum(len(b[0]) for b in batches)


class Info:
    def __init__(self, loader):
        self.dataloader = loader

    def set_epoch(self, epoch):
        pass


def _batches(n, bs=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(bs, 4, generator=g), torch.randint(0, 10, (bs, 5), generator=g)) for _ in range(n)]


def _args(**kw):
    a = parse_args(["--precision", "fp32", "--device", "cpu", "--log-every-n-steps", "1"])
    a.distributed, a.world_size, a.rank, a.local_rank, a.distill, a.wandb = False, 1, 0, 0, False, False
    for k, v in kw.items():
        setattr(a, k, v)
    return a


def _run(model, batches, args, optimizer=None, state=None):
    optimizer = optimizer or torch.optim.SGD(model.parameters(), lr=0.1)
    data = {"train": Info(Loader(batches))}
    return train_one_epoch(model, data, naive_clip_loss, 0, optimizer, None, lambda s: 0.1, None, args,
                           state=state)


def test_steps_update_and_clamp_logit_scale():
    model = TinyClip()
    with torch.no_grad():
        model.logit_scale.fill_(math.log(100) + 0.5)
    before = model.img.weight.clone()
    state = _run(model, _batches(3), _args())
    assert state.global_step == 3
    assert not torch.equal(before, model.img.weight)
    assert model.logit_scale.item() <= math.log(100) + 1e-6


def test_nonfinite_steps_skipped_then_stop():
    model = TinyClip()
    model.poison = True
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = _run(model, _batches(3), _args(max_nonfinite_steps=10))
    assert state.nonfinite_in_a_row == 3
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k  # nothing was stepped
    with pytest.raises(TrainingError, match="global step 1.*--max-nonfinite-steps 2"):
        _run(_poisoned(), _batches(4), _args(max_nonfinite_steps=2))


def _poisoned():
    m = TinyClip()
    m.poison = True
    return m


def test_nonfinite_counter_resets_after_good_step():
    model = TinyClip()
    state = TrainState(nonfinite_in_a_row=5)
    _run(model, _batches(1), _args(max_nonfinite_steps=6), state=state)
    assert state.nonfinite_in_a_row == 0


def _captured_grads(model, batches, args):
    grads = []
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    opt.register_step_pre_hook(lambda o, a, k: grads.append({n: p.grad.clone() for n, p in model.named_parameters()}))
    _run(model, batches, args, optimizer=opt)
    return grads


def test_accum_freq_matches_big_batch_gradient():
    small = _batches(2, bs=3)
    big = [(torch.cat([small[0][0], small[1][0]]), torch.cat([small[0][1], small[1][1]]))]
    g_acc = _captured_grads(TinyClip(), small, _args(accum_freq=2))
    g_big = _captured_grads(TinyClip(), big, _args(accum_freq=1))
    assert len(g_acc) == len(g_big) == 1
    for name in ("img.weight", "img.bias", "txt.weight"):
        torch.testing.assert_close(g_acc[0][name], g_big[0][name], rtol=1e-5, atol=1e-6)
    # quirk kept from 3.3: the logit scale gets the full gradient in each of the accum passes
    torch.testing.assert_close(g_acc[0]["logit_scale"], 2 * g_big[0]["logit_scale"], rtol=1e-5, atol=1e-6)


def test_grad_clip_norm():
    grads = []
    model = TinyClip()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    opt.register_step_pre_hook(lambda o, a, k: grads.append(
        torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))))
    _run(model, _batches(1), _args(grad_clip_norm=1e-3), optimizer=opt)
    assert grads[0].item() == pytest.approx(1e-3, rel=1e-4)


def test_epoch_batches_resume_reproduces_shuffled_order():
    ds = torch.utils.data.TensorDataset(torch.arange(20).float())
    loader = torch.utils.data.DataLoader(ds, batch_size=2, shuffle=True)
    torch.manual_seed(3)
    state = TrainState()
    full = []
    for i, (b,) in epoch_batches(Info(loader), state):
        full.append(b)
        if i == 3:
            rng_at_4 = get_rng_state()
    torch.manual_seed(99)  # a fresh process would have a different RNG
    resumed = TrainState(start_batch=4, epoch_start_rng=state.epoch_start_rng, resume_rng=rng_at_4)
    rest = [(i, b) for i, (b,) in epoch_batches(Info(loader), resumed)]
    assert [i for i, _ in rest] == list(range(4, 10))
    for (_, b), ref in zip(rest, full[4:]):
        assert torch.equal(b, ref)
    assert len(rest) == 6


def _naive_ranks(logits):
    ranks = []
    for i, row in enumerate(logits):
        ranks.append(int((row > row[i]).sum()))
    return np.array(ranks)


def test_get_clip_metrics_against_naive():
    g = torch.Generator().manual_seed(0)
    img, txt = F.normalize(torch.randn(30, 8, generator=g), dim=-1), F.normalize(torch.randn(30, 8, generator=g),
                                                                                 dim=-1)
    m = get_clip_metrics(img, txt, torch.tensor(10.0))
    logits = (10.0 * img @ txt.t()).numpy()
    for name, lg in (("image_to_text", logits), ("text_to_image", logits.T)):
        r = _naive_ranks(lg)
        assert m[f"{name}_mean_rank"] == pytest.approx(r.mean() + 1)
        assert m[f"{name}_median_rank"] == np.floor(np.median(r)) + 1
        for k in (1, 5, 10):
            assert m[f"{name}_R@{k}"] == pytest.approx(np.mean(r < k))


def test_zero_shot_accuracy_returns_floats():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5], [0.5, 0.4, 0.1]])
    target = torch.tensor([1, 2, 2, 1])
    top1, top2 = accuracy(logits, target, topk=(1, 2))
    assert isinstance(top1, float) and top1 == 2.0 and top2 == 3.0


def test_epoch_batches_after_last_step_yields_nothing():
    loader = Loader(_batches(3))
    calls = []

    class Holder(Info):
        def load_state_dict(self, s):  # must not be used: the state points at the next epoch
            calls.append(s)

    torch.manual_seed(0)
    rng = get_rng_state()
    state = TrainState(start_batch=3, resume_rng=rng, data_state={"epoch": 1})
    torch.manual_seed(5)
    assert list(epoch_batches(Holder(loader), state)) == []
    assert calls == [] and state.start_batch == 0
    torch.manual_seed(0)
    expected = torch.rand(1)
    state = TrainState(start_batch=3, resume_rng=rng)
    list(epoch_batches(Info(loader), state))
    assert torch.equal(torch.rand(1), expected)  # RNG restored to the checkpoint's state
