"""MFU: FLOP counts against hand counts, the peak table, the arithmetic, that counting leaves training
untouched, and the ``MFU:`` field of the training log line (unit and end to end)."""

import json
import math
import re

import pytest
import torch
import torch.nn.functional as F
from fault_helpers import Info, Loader
from torch.utils._python_dispatch import _get_current_dispatch_mode

from open_clip.models.clip import CLIP
from open_clip_train import mfu, step_log
from open_clip_train.mfu import StepFlops, gpu_peak_flops, model_flop_utilisation
from open_clip_train.params import parse_args
from open_clip_train.train import train_one_epoch

# ---- counting against hand counts


def test_two_layer_mlp_forward_backward_matches_hand_count():
    batch, d_in, hidden, d_out = 5, 7, 11, 3
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(d_in, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, d_out))
    x = torch.randn(batch, d_in)  # no gradient wanted for the input: layer 1 gets a weight gradient only
    flops = StepFlops()
    with flops.counting(batch):
        mlp(x).square().sum().backward()
    forward = 2 * batch * (d_in * hidden + hidden * d_out)
    backward = 2 * batch * hidden * d_out * 2 + 2 * batch * d_in * hidden  # layer 2: weight + input; layer 1: weight
    assert flops.per_sample == (forward + backward) / batch


def test_cpu_attention_kernel_is_counted():
    b, h, s, d = 2, 3, 5, 4
    q, k, v = (torch.randn(b, h, s, d, requires_grad=True) for _ in range(3))
    counter = mfu.flop_counter()
    with counter:
        F.scaled_dot_product_attention(q, k, v).sum().backward()
    # forward: Q K^T and P V; backward: the scores again, then dV, dP, dQ, dK (2 s^2 d each per head)
    assert counter.total == b * h * (2 + 5) * 2 * s * s * d


def test_counter_runs_operators_as_called(monkeypatch):
    """No operator is swapped for its decomposition while counting (torch's FlopCounterMode runs
    BatchNorm's Python decomposition on CPU, which is another kernel than the step's)."""

    def refuse(self, *args, **kwargs):
        raise AssertionError(f"{self} was decomposed")

    monkeypatch.setattr(torch._ops.OpOverload, "decompose", refuse)
    bn = torch.nn.BatchNorm2d(3).train()
    conv = torch.nn.Conv2d(3, 4, 3)
    counter = mfu.flop_counter()
    with counter:
        conv(bn(torch.randn(2, 3, 6, 6))).sum().backward()
    # forward, weight gradient and input gradient (BatchNorm's parameters want one): 3 x 2 x outputs x taps
    assert counter.total == 3 * 2 * (2 * 4 * 4 * 4) * (3 * 3 * 3)


VISION = dict(image_size=32, patch_size=8, width=64, layers=2, head_width=32)
TEXT = dict(context_length=16, vocab_size=100, width=48, heads=2, layers=3)
EMBED = 24


def _tiny_clip(**vision) -> CLIP:
    torch.manual_seed(0)
    return CLIP(EMBED, {**VISION, **vision}, TEXT, output_dict=True)


def _clip_batch(batch: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    texts = torch.randint(1, TEXT["vocab_size"] - 1, (batch, TEXT["context_length"]), generator=g)
    texts[:, -1] = TEXT["vocab_size"] - 1  # end token last: every row is full length
    return torch.randn(batch, 3, VISION["image_size"], VISION["image_size"], generator=g), texts


def _transformer_forward(tokens: int, width: int, layers: int) -> int:
    """Matmul FLOPs of a pre-norm transformer over one sequence: q/k/v/out projections (4 w^2) and a
    4x MLP (8 w^2) per token, 2 FLOPs per multiply-add; attention scores and weighted sum (2 n^2 w)."""
    return layers * (2 * tokens * 12 * width * width + 2 * 2 * tokens * tokens * width)


def _clip_forward_by_hand(batch: int) -> int:
    patches = (VISION["image_size"] // VISION["patch_size"]) ** 2
    w, wt = VISION["width"], TEXT["width"]
    vision = 2 * patches * 3 * VISION["patch_size"] ** 2 * w  # patch embedding
    vision += _transformer_forward(patches + 1, w, VISION["layers"]) + 2 * w * EMBED  # + class-token projection
    text = _transformer_forward(TEXT["context_length"], wt, TEXT["layers"]) + 2 * wt * EMBED
    return batch * (vision + text)


def test_tiny_clip_forward_matches_hand_count():
    model = _tiny_clip().train()
    model.visual.last_block_pooled_only = False  # every token through every block
    images, texts = _clip_batch(4)
    flops = StepFlops()
    with flops.counting(4):
        model(images, texts)
    assert flops.per_sample == _clip_forward_by_hand(4) / 4


def test_count_follows_the_pooled_only_last_block():
    """The fast path runs the last block's attention output projection and MLP for the class token
    only: the count drops by at least the projection and the MLP's first layer of the other tokens
    (how much of the rest it skips is the tower's business: it may pad rows for bitwise stability)
    and by at most all their per-token work."""
    model = _tiny_clip().train()
    images, texts = _clip_batch(4)
    counts = {}
    for pooled_only in (False, True):
        model.visual.last_block_pooled_only = pooled_only
        flops = StepFlops()
        with flops.counting(4):
            model(images, texts)
        counts[pooled_only] = flops.per_sample
    n, w = (VISION["image_size"] // VISION["patch_size"]) ** 2 + 1, VISION["width"]
    saved_min = (n - 1) * 2 * (w * w + 4 * w * w)
    saved_max = (n - 1) * 2 * (4 * w * w + 8 * w * w) + 2 * 2 * (n * n - n) * w  # projections, MLP, attention
    assert counts[False] - saved_max <= counts[True] <= counts[False] - saved_min


def test_accumulated_micro_batches_make_one_step():
    lin = torch.nn.Linear(3, 2, bias=False)
    flops = StepFlops(accum_freq=2)
    with flops.counting(4):
        lin(torch.randn(4, 3))  # 2*4*3*2 = 48
    assert flops.per_sample is None
    with flops.counting(2):
        lin(torch.randn(2, 3)).sum().backward()  # forward 24 + weight gradient 24
    assert flops.per_sample == (48 + 48) / 6
    with flops.counting(2):  # counted once: later steps run without the counter
        assert _get_current_dispatch_mode() is None
        lin(torch.randn(2, 3))
    assert flops.per_sample == 16


def test_counter_leaves_no_hooks_or_mode_behind_even_on_error():
    from torch.nn.modules import module as module_globals

    hooks_before = [len(getattr(module_globals, n)) for n in ("_global_forward_pre_hooks", "_global_forward_hooks")]
    flops = StepFlops()
    with pytest.raises(RuntimeError, match="boom"), flops.counting(1):
        assert _get_current_dispatch_mode() is not None
        raise RuntimeError("boom")
    assert _get_current_dispatch_mode() is None
    assert [len(getattr(module_globals, n)) for n in ("_global_forward_pre_hooks", "_global_forward_hooks")] \
        == hooks_before


class _DropoutBN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(6, 6)
        self.bn = torch.nn.BatchNorm1d(6)
        self.drop = torch.nn.Dropout(0.5)

    def forward(self, x):
        return self.drop(self.bn(self.lin(x)))


def test_compiled_model_is_counted_uncompiled_without_a_trace():
    """A compiled model is re-run uncompiled on the step's inputs: same count as eager, and the
    random generator, BatchNorm statistics and gradients are as before (the compiled model is
    never called here, so nothing compiles)."""
    torch.manual_seed(0)
    model = _DropoutBN().train()
    compiled = torch.compile(model, backend="eager")
    x = torch.randn(8, 6)
    model.lin.weight.grad = torch.ones_like(model.lin.weight)
    model.lin.bias.grad = None
    rng = torch.get_rng_state()
    buffers = {k: v.clone() for k, v in model.state_dict().items()}

    flops = StepFlops()
    with flops.counting(8, compiled, lambda m: m(x).sum().backward()):
        assert _get_current_dispatch_mode() is None  # the real step runs without the counter
    assert flops.per_sample == 2 * 8 * 6 * 6 * 2 / 8  # forward + weight gradient (input needs none)
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(v, buffers[k]) for k, v in model.state_dict().items())
    assert torch.equal(model.lin.weight.grad, torch.ones_like(model.lin.weight)) and model.lin.bias.grad is None


# ---- peaks and arithmetic


@pytest.mark.parametrize("name, precision, tf32, tflops", [
    ("NVIDIA H100 80GB HBM3", "amp_bf16", True, 989.5),
    ("NVIDIA H100 80GB HBM3", "amp", True, 989.5),  # fp16 tensor cores: the bf16 rate
    ("NVIDIA H100 80GB HBM3", "fp32", True, 494.5),
    ("NVIDIA H100 80GB HBM3", "fp32", False, 67.0),
    ("NVIDIA H100 PCIe", "pure_bf16", True, 756.0),
    ("NVIDIA H100 NVL", "amp_bf16", True, 835.5),
    ("NVIDIA H200", "amp_bf16", True, 989.5),
    ("NVIDIA H200 NVL", "fp32", True, 417.5),
    ("NVIDIA GH200 480GB", "amp_bf16", True, 989.5),
    ("NVIDIA A100-SXM4-80GB", "amp_bf16", True, 312.0),
    ("NVIDIA A100 80GB PCIe", "fp32", True, 156.0),
    ("NVIDIA A100-SXM4-40GB", "fp32", False, 19.5),
    ("NVIDIA B200", "bf16", True, 2250.0),
    ("NVIDIA B200", "fp32", True, 1100.0),
])
def test_gpu_peak_table(name, precision, tf32, tflops):
    assert gpu_peak_flops(name, precision, tf32=tf32) == tflops * 1e12


@pytest.mark.parametrize("name, tf32", [("Tesla T4", True), ("NVIDIA L40S", True), ("NVIDIA B200", False)])
def test_unknown_gpu_or_precision_has_no_peak(name, tf32):
    assert gpu_peak_flops(name, "fp32", tf32=tf32) is None


def test_cpu_peak_is_measured_once_in_the_precision_dtype_without_touching_the_rng(monkeypatch):
    mfu.cpu_matmul_flops.cache_clear()
    seen = []
    real_mm = torch.mm
    monkeypatch.setattr(torch, "mm", lambda a, b: seen.append(a.dtype) or real_mm(a, b))
    rng = torch.get_rng_state()
    first = mfu.peak_flops("cpu", "amp_bf16")
    calls = len(seen)
    assert first > 0 and set(seen) == {torch.bfloat16}
    assert mfu.peak_flops("cpu", "amp_bf16") == first and len(seen) == calls  # cached
    mfu.peak_flops("cpu", "fp32")
    assert set(seen) == {torch.bfloat16, torch.float32}
    assert torch.equal(torch.get_rng_state(), rng)


def test_mfu_arithmetic():
    # 3 GFLOP per sample at 100 samples/s on a 1.2 TFLOP/s device
    assert model_flop_utilisation(3e9, 100.0, 1.2e12) == pytest.approx(0.25)
    assert model_flop_utilisation(None, 100.0, 1e12) is None
    assert model_flop_utilisation(3e9, 100.0, None) is None


# ---- the training loop and its log line


class _LinearClip(torch.nn.Module):
    """Image and text features from one linear map each, so that a step's FLOPs count by hand."""

    def __init__(self, d_img=6, d_txt=5, embed=4):
        super().__init__()
        torch.manual_seed(0)
        self.img = torch.nn.Linear(d_img, embed, bias=False)
        self.txt = torch.nn.Linear(d_txt, embed, bias=False)
        self.logit_scale = torch.nn.Parameter(torch.tensor(math.log(10.0)))

    def forward(self, image, text):
        return {"image_features": self.img(image), "text_features": self.txt(text.float()),
                "logit_scale": self.logit_scale.exp()}


def _dot_loss(image_features, text_features, logit_scale, output_dict=False):
    logits = logit_scale * image_features @ text_features.t()  # (B, B)
    loss = -logits.diagonal().mean() + logits.logsumexp(-1).mean()
    return {"contrastive_loss": loss} if output_dict else loss


def _args(**kw):
    a = parse_args(["--precision", "fp32", "--device", "cpu", "--log-every-n-steps", "1"])
    a.distributed, a.world_size, a.rank, a.local_rank, a.distill, a.wandb = False, 1, 0, 0, False, False
    for k, v in kw.items():
        setattr(a, k, v)
    return a


def test_log_lines_report_mfu_from_the_hand_count(caplog, monkeypatch):
    batch, d_img, d_txt, embed = 4, 6, 5, 4
    # the projections: forward and their weight gradients (inputs need none); the logits matmul:
    # forward and the gradients of both its operands
    per_step = 2 * (2 * batch * (d_img + d_txt) * embed) + 3 * (2 * batch * batch * embed)
    peak = 5e6
    monkeypatch.setattr(step_log, "peak_flops", lambda device, precision: peak)
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(batch, d_img, generator=g), torch.randint(0, 3, (batch, d_txt), generator=g))
               for _ in range(3)]
    model = _LinearClip(d_img, d_txt, embed)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with caplog.at_level("INFO"):
        train_one_epoch(model, {"train": Info(Loader(batches))}, _dot_loss, 0, opt, None, lambda s: 0.01, None,
                        _args())
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Train Epoch")]
    assert len(lines) == 3
    for line in lines:
        m = re.search(r", (\S+)/s/gpu .* data_wait: \d+\.\d% MFU: (\d+\.\d)%$", line)
        assert m, line
        expected = 100 * per_step / batch * float(m.group(1)) / peak
        assert float(m.group(2)) == pytest.approx(expected, abs=0.051)


@pytest.mark.parametrize("tower, precision", [("vit", "fp32"), ("resnet", "amp")])
def test_counting_changes_no_training_result(tower, precision, monkeypatch):
    """Two epochs of a tiny CLIP with AdamW, with and without the counter on the first step:
    parameters, buffers (BatchNorm statistics), optimizer state and the random generator agree bit
    for bit. The ViT draws patch-dropout masks; the ResNet has convolutions, BatchNorm and an
    attention pool, under float16 autocast."""
    import contextlib

    from open_clip.loss import ClipLoss

    vision = {**VISION, "patch_dropout": 0.5} if tower == "vit" else dict(image_size=32, layers=[1, 1, 1, 1],
                                                                          width=8, head_width=8)

    def run():
        torch.manual_seed(0)
        model = CLIP(EMBED, vision, TEXT, output_dict=True)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        batches = [_clip_batch(4, seed) for seed in range(2)]
        for epoch in range(2):
            train_one_epoch(model, {"train": Info(Loader(batches))}, ClipLoss(), epoch, opt, None,
                            lambda s: 1e-3, None, _args(log_every_n_steps=100, precision=precision))
        return model.state_dict(), opt.state_dict()["state"], torch.get_rng_state()

    counted = run()
    monkeypatch.setattr(StepFlops, "counting", lambda self, *a, **k: contextlib.nullcontext())
    plain = run()
    assert all(torch.equal(a, b) for a, b in zip(counted[0].values(), plain[0].values()))
    assert all(torch.equal(counted[1][i][k], plain[1][i][k]) for i in plain[1] for k in plain[1][i])
    assert torch.equal(counted[2], plain[2])


def test_main_log_lines_carry_mfu(tmp_path, monkeypatch):
    from open_clip.config_registry import add_model_config
    from open_clip_train.main import main

    monkeypatch.setattr(step_log, "peak_flops", lambda device, precision: 1e8)  # large figures: rounding is moot
    cfg = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16,
                                           "head_width": 16},
           "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "tiny-mfu.json").write_text(json.dumps(cfg))
    add_model_config(tmp_path / "cfg")
    assert main(["--model", "tiny-mfu", "--dataset-type", "synthetic", "--train-num-samples", "16",
                 "--batch-size", "4", "--epochs", "1", "--workers", "0", "--log-every-n-steps", "1",
                 "--logs", str(tmp_path / "logs"), "--name", "run", "--save-frequency", "0"]) is None
    text = (tmp_path / "logs" / "run" / "out.log").read_text()
    lines = [line for line in text.splitlines() if "Train Epoch" in line]
    assert len(lines) == 4
    ratios = []
    for line in lines:
        m = re.search(r", (\S+)/s/gpu .* data_wait: \d+\.\d% MFU: (\d+\.\d)%$", line)
        assert m, line
        ratios.append(float(m.group(2)) / float(m.group(1)))
    # one FLOP count and one peak for the run: MFU is proportional to the line's own samples/s
    assert max(ratios) == pytest.approx(min(ratios), rel=0.05, abs=1e-3)


def test_a_model_is_counted_once_per_run():
    lin = torch.nn.Linear(3, 2, bias=False)
    first = StepFlops()
    with first.counting(4, lin):
        lin(torch.randn(4, 3))
    later_epoch = StepFlops()
    with later_epoch.counting(4, lin):
        assert _get_current_dispatch_mode() is None
    assert later_epoch.per_sample == first.per_sample == 2 * 3 * 2
    other = StepFlops(accum_freq=2)  # another accumulation is another step
    with other.counting(4, lin):
        assert _get_current_dispatch_mode() is not None
