"""The step loop on a tiny module: non-finite handling (decided on the device, in every loss class),
accumulation, clamp, the log line, resume order, metrics."""

import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fault_helpers import Info, Loader

from open_clip.loss import ClipLoss, CoCaLoss, DistillClipLoss, SigLipLoss
from open_clip_train.checkpoint import get_rng_state
from open_clip_train.errors import TrainingError
from open_clip_train.evaluate import get_clip_metrics
from open_clip_train.params import parse_args
from open_clip_train.step_guard import NonFiniteGuard
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
    state = TrainState(guard=NonFiniteGuard(6, "cpu"))
    state.guard.load_state_dict({"nonfinite_in_a_row": 5})  # as resumed from a checkpoint
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


# ---- non-finite logit scale / bias, in every loss class, decided on the device


class ScaleModel(torch.nn.Module):
    """TinyClip plus the outputs each loss class needs; ``poison`` makes one output non-finite on one step."""

    def __init__(self, kind: str):
        super().__init__()
        torch.manual_seed(0)
        self.kind = kind
        self.img = torch.nn.Linear(4, 3)
        self.txt = torch.nn.Embedding(10, 3)
        self.logit_scale = torch.nn.Parameter(torch.tensor(math.log(10.0)))
        self.logit_bias = torch.nn.Parameter(torch.tensor(-1.0))
        self.lm = torch.nn.Linear(3, 10)
        self.poison: tuple[str, float] | None = None

    def forward(self, image, text):
        tokens = self.txt(text)  # (B, L, 3)
        out = {"image_features": F.normalize(self.img(image), dim=-1),
               "text_features": F.normalize(tokens.mean(1), dim=-1),
               "logit_scale": self.logit_scale.exp()}
        if self.kind == "siglip":
            out["logit_bias"] = self.logit_bias
        if self.kind == "coca":
            out["logits"] = self.lm(tokens)[:, :-1]  # (B, L-1, V)
            out["labels"] = text[:, 1:]
        if self.poison is not None:
            key, value = self.poison
            out[key] = out[key] * 0 + value  # still attached to the graph, like a real overflow
        return out


LOSSES = {
    "clip": lambda: ClipLoss(),
    "siglip": lambda: SigLipLoss(),
    "coca": lambda: CoCaLoss(caption_loss_weight=1.0, clip_loss_weight=1.0),
    "distill": lambda: DistillClipLoss(),
}


class PoisonAt:
    """Sets the model's poison for one optimizer step only (the batch iterator calls it between steps)."""

    def __init__(self, model, step, key, value):
        self.model, self.step, self.key, self.value = model, step, key, value

    def wrap(self, batches):
        for i, batch in enumerate(batches):
            self.model.poison = (self.key, self.value) if i == self.step else None
            yield batch


@pytest.mark.parametrize("kind,key", [
    ("clip", "logit_scale"), ("siglip", "logit_scale"), ("siglip", "logit_bias"), ("coca", "logit_scale"),
    ("distill", "dist_logit_scale"),
])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
@pytest.mark.parametrize("fused", [True, False])
def test_nonfinite_logit_scale_or_bias_skips_the_step(kind, key, value, fused):
    model = ScaleModel(kind)
    teacher = ScaleModel("clip") if kind == "distill" else None
    target = teacher if key.startswith("dist_") else model
    key = key.removeprefix("dist_")
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, fused=True) if fused else torch.optim.SGD(
        model.parameters(), lr=0.1)
    snapshots = []

    def hook(state, epoch, batch):
        snapshots.append({k: v.clone() for k, v in model.state_dict().items()})

    data = {"train": Info(PoisonedLoader(_batches(3), PoisonAt(target, 1, key, value)))}
    args = _args(max_nonfinite_steps=5, distill=kind == "distill", log_every_n_steps=100)
    state = train_one_epoch(model, data, LOSSES[kind](), 0, opt, None, lambda s: 0.1, teacher, args,
                            state=TrainState(), step_hook=hook)
    assert state.global_step == 3 and state.guard.skipped_total == 1
    for k in snapshots[0]:
        assert torch.equal(snapshots[0][k], snapshots[1][k]), k  # the poisoned step changed nothing
    assert not torch.equal(snapshots[1]["img.weight"], snapshots[2]["img.weight"])  # the next one trains
    assert all(torch.isfinite(v).all() for v in snapshots[2].values())


class PoisonedLoader(Loader):
    def __init__(self, batches, poison):
        super().__init__(batches)
        self.poison = poison

    def __iter__(self):
        return self.poison.wrap(list.__iter__(self))


def test_persistent_nonfinite_logit_bias_stops_after_limit_at_a_log_step():
    model = ScaleModel("siglip")
    model.poison = ("logit_bias", float("inf"))
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, fused=True)
    data = {"train": Info(Loader(_batches(8)))}
    args = _args(max_nonfinite_steps=3, log_every_n_steps=5)
    with pytest.raises(TrainingError, match=r"last at global step 2 \(--max-nonfinite-steps 3\)"):
        # steps 0-2 are non-finite; the counter is read at the log step 5, which reports the step that crossed
        train_one_epoch(model, data, SigLipLoss(), 0, opt, None, lambda s: 0.1, None, args)


def test_no_host_reads_between_log_steps(monkeypatch):
    """Between two log steps the loop never reads a device value (item/tolist/bool/float of a tensor)."""
    model = ScaleModel("siglip")
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, fused=True)
    current = {"step": -1}
    reads = []
    for name in ("item", "tolist", "__bool__", "__float__", "__int__"):
        real = getattr(torch.Tensor, name)

        def spy(self, *a, _real=real, _name=name, **kw):
            reads.append((current["step"], _name))
            return _real(self, *a, **kw)

        monkeypatch.setattr(torch.Tensor, name, spy)

    def loss(**kw):  # the naive SigLIP loss: the library loss checks its scalars on the host itself
        logits = kw["logit_scale"] * kw["image_features"] @ kw["text_features"].t() + kw["logit_bias"]
        labels = 2 * torch.eye(len(logits)) - 1
        return {"contrastive_loss": -F.logsigmoid(labels * logits).sum() / len(logits)}

    def hook(state, epoch, batch):
        current["step"] = state.global_step

    data = {"train": Info(Loader(_batches(7)))}
    train_one_epoch(model, data, loss, 0, opt, None, lambda s: 0.1, None,
                    _args(log_every_n_steps=3), step_hook=hook)
    # log steps (and their reads) are steps 0, 3 and 6 (the last one); `current` is the step after
    assert reads and {step for step, _ in reads} <= {-1, 3, 6, 7}


def test_log_line_keeps_3_3_fields_and_appends_data_wait(caplog):
    model = TinyClip()
    seen_scales = []

    def loss(**kw):
        seen_scales.append(kw["logit_scale"].item())
        return naive_clip_loss(**kw)

    data = {"train": Info(Loader(_batches(2)))}
    opt = torch.optim.SGD(model.parameters(), lr=0.01)  # a step that moves the scale visibly
    with caplog.at_level("INFO"):
        train_one_epoch(model, data, loss, 0, opt, None, lambda s: 0.01, None, _args())
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Train Epoch")]
    assert len(lines) == 2
    pattern = (r"Train Epoch: 0 \[\d+/\d+ \(\d+%\)\] Data \(t\): \S+ Batch \(t\): \S+, \S+/s, \S+/s/gpu LR: \S+ "
               r"Logit Scale: (\S+) Contrastive_loss: \S+ \(\S+\) Loss: \S+ \(\S+\) data_wait: \d+\.\d% "
               r"MFU: \d+\.\d%$")
    for line, used in zip(lines, seen_scales):
        m = re.match(pattern, line)
        assert m, line
        assert float(m.group(1)) == pytest.approx(used, abs=1e-3)  # the scale the loss used, before the step
    assert model.logit_scale.exp().item() != pytest.approx(seen_scales[-1], abs=1e-3)
