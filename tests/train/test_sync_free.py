"""A training step (model forward with the fast paths, loss, backward) reads no tensor value on the
host once warmed up, and ``--torchcompile`` captures the model whole for batches of varied caption
lengths with few recompiles."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from open_clip.loss import ClipLoss, SigLipLoss
from open_clip.models import attention
from open_clip.models.clip import CLIP, CustomTextCLIP
from open_clip_train.train import prepare_texts

CTX, VOCAB = 40, 64
VISION = dict(layers=2, width=32, head_width=8, patch_size=4, image_size=16)
TEXT = dict(context_length=CTX, vocab_size=VOCAB, width=32, heads=4, layers=2)

_READERS = ("item", "tolist", "numpy", "__bool__", "__int__", "__float__", "__index__")


class HostReads(TorchDispatchMode):
    """Counts reads of tensor values on the host: scalar extraction at the dispatcher, plus the
    Tensor methods that turn values into Python objects."""

    def __init__(self, monkeypatch):
        super().__init__()
        self.reads = []
        self.active = False
        for name in _READERS:
            real = getattr(torch.Tensor, name)

            def spy(tensor, *args, _real=real, _name=name, **kwargs):
                if self.active:
                    self.reads.append(_name)
                return _real(tensor, *args, **kwargs)

            monkeypatch.setattr(torch.Tensor, name, spy)

    def __enter__(self):
        self.active = True
        return super().__enter__()

    def __exit__(self, *exc):
        self.active = False
        return super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.reads.append(str(func))
        return func(*args, **(kwargs or {}))


def batch(seed: int, size: int = 6, longest: int = CTX - 1):
    gen = torch.Generator().manual_seed(seed)
    texts = torch.zeros(size, CTX, dtype=torch.long)
    for row in range(size):
        n = int(torch.randint(1, longest, (1,), generator=gen))
        texts[row, :n] = torch.randint(1, VOCAB - 1, (n,), generator=gen)
        texts[row, n] = VOCAB - 1
    return torch.randn(size, 3, 16, 16, generator=gen), texts


@pytest.mark.parametrize("cls, loss", [(CLIP, ClipLoss()), (CustomTextCLIP, SigLipLoss())])
def test_training_step_reads_nothing_on_the_host(cls, loss, monkeypatch):
    torch.manual_seed(0)
    extra = dict(init_logit_bias=-10.0) if isinstance(loss, SigLipLoss) else {}
    model = cls(8, VISION, TEXT, output_dict=True, **extra).train()
    packed = []
    original = attention.ResidualAttentionBlock._forward_tokens
    monkeypatch.setattr(
        attention.ResidualAttentionBlock, "_forward_tokens", lambda self, *a: packed.append(1) or original(self, *a)
    )

    def step(seed: int, counter=None):
        images, texts = batch(seed)
        text = prepare_texts(texts, model, None, torch.device("cpu"), compiled=False)  # host side, before the step
        assert text.lengths is not None
        if counter is None:
            out = model(images, text.tokens, text_lengths=text.lengths)
            loss(**out).backward()
            return
        with counter:
            out = model(images, text.tokens, text_lengths=text.lengths)
            loss(**out).backward()

    step(0)  # warm-up: one-off measurements of the fast paths may read values
    counter = HostReads(monkeypatch)
    for seed in (1, 2):
        step(seed, counter)
    assert packed, "the fast paths did not run"
    assert counter.reads == []


def test_compiled_model_captures_varied_lengths_without_graph_breaks():
    torch.manual_seed(0)
    model = CLIP(8, VISION, TEXT, output_dict=True).train()
    compiles = []

    def backend(graph_module, example_inputs):
        compiles.append(1)
        from functorch.compile import make_boxed_func
        from torch._dynamo.backends.common import aot_autograd

        def boxed(gm, _):
            return make_boxed_func(gm.forward)

        return aot_autograd(fw_compiler=boxed, bw_compiler=boxed)(graph_module, example_inputs)

    compiled = torch.compile(model, fullgraph=True, backend=backend)
    loss = ClipLoss()
    shapes = set()
    for seed in range(6):
        images, texts = batch(seed, longest=12 if seed % 2 else CTX - 1)  # short batches, and long ones
        text = prepare_texts(texts, compiled, None, torch.device("cpu"), compiled=True)
        shapes.add(tuple(text.tokens.shape))
        assert text.lengths is None
        out = compiled(images, text.tokens)
        loss(**out).backward()
        with torch.no_grad():  # the compiled step computes what the eager model does
            reference = model(images, text.tokens)["text_features"]
        torch.testing.assert_close(out["text_features"].detach(), reference, atol=1e-5, rtol=0)
    assert len(shapes) >= 2  # caption lengths did vary
    assert len(compiles) <= len(shapes) + 1  # one graph per bucketed length at most (plus a dynamic one)
