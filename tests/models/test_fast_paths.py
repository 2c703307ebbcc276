"""The towers' fast paths (text early stop, pooled-only last block) against the plain forward they
replace: equal bit for bit (CPU float32, any torch), forward and gradients, and never used where
something observes, overrides or captures the computation."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from open_clip.models import attention as attention_module
from open_clip.models.clip import CLIP, CustomTextCLIP
from open_clip.models.row_stable import linear_rows, unstable_rows
from open_clip.models.text_transformer import TextTransformer
from open_clip.models.vision_transformer import VisionTransformer

CTX, VOCAB, EOT = 12, 50, 49


@pytest.fixture
def packed_calls(monkeypatch):
    """Layouts every block was handed packed tokens with (empty: the plain forward ran)."""
    layouts = []
    original = attention_module.ResidualAttentionBlock._forward_tokens

    def spy(self, x, layout, attn_mask):
        layouts.append(layout)
        return original(self, x, layout, attn_mask)

    monkeypatch.setattr(attention_module.ResidualAttentionBlock, "_forward_tokens", spy)
    return layouts


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def threads(request):
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


def random_text(batch, seed, eos=EOT, full_row=True):
    """Rows of random lengths (0 to CTX - 1 tokens before the end token); row 0 full length."""
    gen = torch.Generator().manual_seed(seed)
    text = torch.zeros(batch, CTX, dtype=torch.long)
    for b in range(batch):
        n = int(torch.randint(0, CTX, (1,), generator=gen))
        text[b, :n] = torch.randint(1, EOT - 1, (n,), generator=gen)
        text[b, n] = eos
    if full_row:
        text[0, :-1] = 3
        text[0, -1] = eos
    return text


def make_clip(cls=CLIP, width=32, heads=4, **text_kwargs):
    torch.manual_seed(0)
    text_cfg = dict(context_length=CTX, vocab_size=VOCAB, width=width, heads=heads, layers=2, **text_kwargs)
    vision_cfg = dict(layers=2, width=width, head_width=width // heads, patch_size=4, image_size=16)
    return cls(8, vision_cfg, text_cfg)


def set_fast(model, fast: bool) -> None:
    if isinstance(model, CLIP):
        model.text_early_stop = fast
    elif isinstance(model, TextTransformer):
        model.early_stop = fast
    else:
        model.text.early_stop = fast
    if hasattr(model, "visual"):
        model.visual.last_block_pooled_only = fast


# --- row-stable products -------------------------------------------------------------------------


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("in_features, out_features", [(64, 48), (1024, 32)])
def test_linear_rows_equal_the_reference_products_rows(threads, fused, in_features, out_features):
    gen = torch.Generator().manual_seed(in_features)
    weight = torch.randn(out_features, in_features, generator=gen) / in_features**0.5
    bias = torch.randn(out_features, generator=gen)
    x = torch.randn(400, in_features, generator=gen)
    for reference in (20, 77, 150, 400):
        if fused:
            expected = torch.addmm(bias, x[:reference], weight.t())
        else:
            expected = torch.mm(x[:reference], weight.t()) + bias
        for rows in {1, 3, 15, 16, 40, reference}:
            if rows > reference:
                continue
            got = linear_rows(x[:rows], weight, bias, reference, fused_bias=fused)
            assert torch.equal(got, expected[:rows]), (rows, reference)


def test_measuring_a_shape_leaves_the_rng_alone():
    unstable_rows.cache_clear()
    state = torch.random.get_rng_state()
    unstable_rows("addmm", 24, 40, torch.get_num_threads())
    assert torch.equal(torch.random.get_rng_state(), state)


# --- text early stop ----------------------------------------------------------------------------

TEXT_CASES = [
    dict(),
    dict(pool_type="eos", eos_id=7),
    dict(ls_init_value=0.3, proj_bias=True),
    dict(act_kwargs=None, mlp_ratio=2.0),
]


def encode_both(model, text):
    set_fast(model, True)
    fast = model.encode_text(text) if hasattr(model, "encode_text") else model(text)
    set_fast(model, False)
    full = model.encode_text(text) if hasattr(model, "encode_text") else model(text)
    set_fast(model, True)
    return fast, full


@pytest.mark.parametrize("cls", [CLIP, CustomTextCLIP])
@pytest.mark.parametrize("case", TEXT_CASES)
@pytest.mark.parametrize("batch", [1, 2, 7, 20])
def test_text_early_stop_equals_full_length_bitwise(cls, case, batch, packed_calls):
    model = make_clip(cls, **case).eval()
    text = random_text(batch, seed=batch, eos=case.get("eos_id", EOT))
    with torch.no_grad():
        fast, full = encode_both(model, text)
    assert torch.equal(fast, full)
    layout = packed_calls[-1]  # the last block ran for the pooled tokens only
    assert not layout.fused and layout.query_rows.numel() == batch


def test_text_early_stop_skips_what_the_pooled_tokens_do_not_read(packed_calls):
    model = make_clip(CLIP, pool_type="eos", eos_id=7).eval()
    text = random_text(6, seed=1, eos=7)
    with torch.no_grad():
        model.encode_text(text)
    lengths = ((text == 7).int().argmax(-1) + 1).tolist()
    first = packed_calls[0]
    assert first.token_pos.numel() == sum(lengths) < text.numel()
    assert first.query_rows is None and packed_calls[-1].query_rows.numel() == 6


def test_text_early_stop_wide_tower_at_two_threads(threads):
    # width 256: the MLP's 1024-long reduction is where BLAS splits work over threads for few rows
    model = make_clip(CLIP, width=256, heads=4).eval()
    for batch in (1, 3, 9):
        text = random_text(batch, seed=batch)
        with torch.no_grad():
            fast, full = encode_both(model, text)
        assert torch.equal(fast, full), batch


@pytest.mark.parametrize("cls", [CLIP, CustomTextCLIP])
def test_text_early_stop_training_forward_bitwise_and_gradients(cls, packed_calls):
    model = make_clip(cls, ls_init_value=0.5).train()
    text = random_text(9, seed=3)
    lengths = model.pooled_text_lengths(text)
    assert lengths == (text.argmax(-1) + 1).tolist()
    weights = torch.randn(9, 8, generator=torch.Generator().manual_seed(0))

    def run(fast):
        model.zero_grad()
        set_fast(model, fast)
        out = model.encode_text(text, text_lengths=lengths)
        (out * weights).sum().backward()
        return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    out_fast, grads_fast = run(True)
    assert packed_calls, "the fast path did not run"
    out_full, grads_full = run(False)
    assert torch.equal(out_fast, out_full)
    assert grads_fast.keys() == grads_full.keys()
    for name, grad in grads_full.items():
        scale = max(float(grad.abs().max()), 1e-3)
        torch.testing.assert_close(grads_fast[name], grad, atol=1e-5 * scale, rtol=0, msg=name)


def test_training_without_lengths_never_reads_the_device(packed_calls):
    # a step that records gradients and got no text_lengths keeps the full length (no host read)
    model = make_clip(CLIP).train()
    text = random_text(5, seed=1)
    full = model.encode_text(text)
    assert packed_calls == []
    with torch.no_grad():
        set_fast(model, False)
        assert torch.equal(full.detach(), model.encode_text(text))


def test_wrong_text_lengths_are_refused():
    model = make_clip(CLIP).eval()
    text = random_text(3, seed=1)
    with pytest.raises(ValueError, match="text_lengths"):
        model.encode_text(text, text_lengths=[1, 2])
    with pytest.raises(ValueError, match="text_lengths"):
        model.encode_text(text, text_lengths=[0, 2, 3])


def test_text_tower_modes_that_read_every_token_use_the_full_path(packed_calls):
    for kwargs in (
        dict(output_tokens=True),
        dict(no_causal_mask=True),
        dict(pool_type="last"),
        dict(pool_type="first"),
        dict(embed_cls=True),
        dict(no_causal_mask=True, use_pad_mask=True),
        dict(qk_norm=True),  # custom blocks
    ):
        torch.manual_seed(0)
        tower = TextTransformer(CTX, VOCAB, 32, 4, 2, output_dim=8, **kwargs).eval()
        with torch.no_grad():
            tower(random_text(3, seed=0))
    assert packed_calls == []


# --- pooled-only last block of the image tower ---------------------------------------------------

VISION_CASES = [
    dict(),
    dict(ls_init_value=0.2),
    dict(final_ln_after_pool=True),
    dict(no_ln_pre=True),
]


def make_vit(**kwargs):
    torch.manual_seed(0)
    return VisionTransformer(16, 4, 32, 2, 4, 4.0, output_dim=8, **kwargs)


@pytest.mark.parametrize("kwargs", VISION_CASES)
@pytest.mark.parametrize("batch", [1, 5])
def test_image_pooled_only_equals_full_bitwise_in_inference(kwargs, batch, packed_calls):
    model = make_vit(**kwargs).eval()
    images = torch.randn(batch, 3, 16, 16)
    with torch.no_grad():
        fast = model(images)
        model.last_block_pooled_only = False
        full = model(images)
    assert torch.equal(fast, full)
    assert packed_calls[-1].fused  # inference repeats torch's fused attention path, as the plain forward takes it


@pytest.mark.parametrize("kwargs", VISION_CASES + [dict(patch_dropout=0.5)])
def test_image_pooled_only_training_bitwise_and_gradients(kwargs, packed_calls):
    model = make_vit(**kwargs).train()
    images = torch.randn(6, 3, 16, 16)
    weights = torch.randn(6, 8)

    def run(fast):
        model.zero_grad()
        model.last_block_pooled_only = fast
        torch.manual_seed(1)  # same patch-dropout draw
        out = model(images)
        (out * weights).sum().backward()
        return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    out_fast, grads_fast = run(True)
    assert packed_calls and not packed_calls[-1].fused
    out_full, grads_full = run(False)
    assert torch.equal(out_fast, out_full)
    for name, grad in grads_full.items():
        scale = max(float(grad.abs().max()), 1e-3)
        torch.testing.assert_close(grads_fast[name], grad, atol=1e-5 * scale, rtol=0, msg=name)


@pytest.mark.parametrize("kwargs", [dict(output_tokens=True), dict(pool_type="avg"), dict(attentional_pool=True)])
def test_image_modes_that_read_every_token_use_the_full_path(kwargs, packed_calls):
    with torch.no_grad():
        make_vit(**kwargs).eval()(torch.randn(2, 3, 16, 16))
    assert packed_calls == []


def count_flops(fn) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


def test_flop_counting_counts_the_fast_path():
    # FlopCounterMode's module tracker installs global hooks: it must not turn the fast paths off
    model = make_clip(CLIP).eval()
    text = random_text(8, seed=5)
    images = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        fast = count_flops(lambda: (model.encode_text(text), model.encode_image(images)))
        set_fast(model, False)
        full = count_flops(lambda: (model.encode_text(text), model.encode_image(images)))
    kept = int((text.argmax(-1) + 1).sum())
    # at least the MLPs of the skipped text tokens (2 layers) and of 16 of 17 image tokens (last layer)
    assert full - fast >= 2 * (8 * CTX - kept) * 16 * 32**2 + 4 * 16 * 16 * 32**2


# --- observers and overrides ---------------------------------------------------------------------


def test_hooks_on_attention_and_norms_see_what_a_plain_forward_shows(packed_calls):
    model = make_clip(CLIP).eval()
    text, images = random_text(4, seed=2), torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        expected_text, expected_image = model.encode_text(text), model.encode_image(images)
    seen = []
    handles = [
        model.transformer.resblocks[-1].attn.register_forward_hook(
            lambda m, a, out: seen.append(("attn", out[0].shape))
        ),
        model.ln_final.register_forward_hook(lambda m, a, out: seen.append(("ln_final", out.shape))),
        model.visual.ln_post.register_forward_hook(lambda m, a, out: seen.append(("ln_post", out.shape))),
    ]
    packed_calls.clear()
    with torch.no_grad():
        text_out, image_out = model.encode_text(text), model.encode_image(images)
    for h in handles:
        h.remove()
    assert packed_calls == []
    assert seen == [
        ("attn", torch.Size([4, CTX, 32])),
        ("ln_final", torch.Size([4, CTX, 32])),
        ("ln_post", torch.Size([3, 17, 32])),
    ]
    assert torch.equal(text_out, expected_text) and torch.equal(image_out, expected_image)


def test_global_module_hooks_see_every_block_output(packed_calls):
    model = make_clip(CLIP).eval()
    shapes = []

    def hook(module, args, out):
        if isinstance(module, attention_module.ResidualAttentionBlock):
            shapes.append(tuple(out.shape))

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        with torch.no_grad():
            model.encode_image(torch.randn(2, 3, 16, 16))
    finally:
        handle.remove()
    assert packed_calls == [] and shapes == [(2, 17, 32), (2, 17, 32)]


def test_patched_last_block_forward_takes_effect():
    # dense-feature methods (SCLIP, ClearCLIP) replace the last block's forward on the instance
    model = make_vit().eval()
    images = torch.randn(2, 3, 16, 16)
    block = model.transformer.resblocks[-1]
    block.forward = lambda x, attn_mask=None: x + block.attention(block.ln_1(x))  # no MLP
    with torch.no_grad():
        patched = model(images)
        model.last_block_pooled_only = False
        reference = model(images)
    assert torch.equal(patched, reference)
    del block.forward
    with torch.no_grad():
        assert not torch.equal(model(images), patched)


def test_subclass_and_wrapped_attention_are_respected(packed_calls):
    class Doubled(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, *args, **kwargs):
            out, weights = self.inner(*args, **kwargs)
            return 2 * out, weights

    model = make_clip(CLIP).eval()
    text = random_text(3, seed=4)
    with torch.no_grad():
        before = model.encode_text(text)
        model.transformer.resblocks[0].attn = Doubled(model.transformer.resblocks[0].attn)
        packed_calls.clear()
        after = model.encode_text(text)
    assert packed_calls == [] and not torch.equal(before, after)

    class NoMlp(attention_module.ResidualAttentionBlock):
        def forward(self, q_x, k_x=None, v_x=None, attn_mask=None, token_layout=None):
            return q_x + self.attention(self.ln_1(q_x), attn_mask=attn_mask)

    vit = make_vit().eval()
    vit.transformer.resblocks[-1].__class__ = NoMlp
    with torch.no_grad():
        out = vit(torch.randn(2, 3, 16, 16))
    assert packed_calls == [] and out.shape == (2, 8)


def test_lora_on_attention_trains(packed_calls):
    peft = pytest.importorskip("peft")
    model = make_clip(CLIP)
    lora = peft.get_peft_model(
        model, peft.LoraConfig(target_modules=["attn"], r=4, lora_alpha=8, init_lora_weights=False)
    )
    text, images = random_text(3, seed=1), torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        with lora.disable_adapter():
            base = model.encode_text(text)
        adapted = model.encode_text(text)
    assert not torch.equal(base, adapted)  # the adapter changes the computation
    loss = model.encode_text(text).square().sum() + model.encode_image(images).square().sum()
    loss.backward()
    trained = [n for n, p in lora.named_parameters() if p.requires_grad]
    assert trained and all("lora_" in n for n in trained)
    assert all(p.grad is not None for n, p in lora.named_parameters() if p.requires_grad)
    assert packed_calls == []


# --- capture: scripting, tracing, export, compile --------------------------------------------------


def test_scripted_and_traced_models_equal_eager_bitwise():
    model = make_clip(CLIP).eval()
    text_a, text_b = random_text(3, seed=1, full_row=False), random_text(5, seed=2, full_row=False)
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        eager_text, eager_image = model.encode_text(text_b), model.encode_image(images)
        scripted = torch.jit.script(model)
        assert torch.equal(scripted.encode_text(text_b), eager_text)
        assert torch.equal(scripted.encode_image(images), eager_image)
        # a trace must not bake in the first batch's lengths
        traced = torch.jit.trace_module(model, {"encode_text": (text_a,)}, check_trace=False)
        assert torch.equal(traced.encode_text(text_b), eager_text)


class _EncodeText(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, text):
        return self.model.encode_text(text)


def test_export_captures_the_plain_path():
    model = make_clip(CLIP).eval()
    text = random_text(4, seed=6, full_row=False)
    batch = torch.export.Dim("batch", min=1, max=64)
    exported = torch.export.export(_EncodeText(model), (text,), dynamic_shapes=({0: batch},))
    other = random_text(7, seed=7, full_row=False)
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(other), model.encode_text(other), atol=1e-6, rtol=0)


def test_compile_fullgraph_over_varied_lengths():
    model = make_clip(CLIP).eval()
    compiled = torch.compile(model.encode_text, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        for seed in (1, 2):
            text = random_text(4, seed=seed, full_row=False)
            torch.testing.assert_close(compiled(text), model.encode_text(text), atol=1e-6, rtol=0)


def test_onnx_export_of_encode_text(tmp_path):
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    model = make_clip(CLIP).eval()
    path = tmp_path / "text.onnx"
    batch = torch.export.Dim("batch", min=1, max=64)
    torch.onnx.export(
        _EncodeText(model), (random_text(3, seed=8),), str(path), dynamo=True, dynamic_shapes=({0: batch},)
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    text = random_text(5, seed=9, full_row=False)
    (out,) = session.run(None, {session.get_inputs()[0].name: text.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(out), model.encode_text(text), atol=1e-5, rtol=0)


FSDP_SCRIPT = """
import copy, os, sys
import torch, torch.distributed as dist
from torch.distributed.fsdp import fully_shard
from open_clip.models import attention
from open_clip.models.clip import CLIP

os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[1])
dist.init_process_group("gloo", rank=0, world_size=1)
packed = []
original = attention.ResidualAttentionBlock._forward_tokens
attention.ResidualAttentionBlock._forward_tokens = lambda self, *a: packed.append(1) or original(self, *a)
torch.manual_seed(0)
vision = dict(layers=2, width=32, head_width=8, patch_size=4, image_size=16)
model = CLIP(8, vision, dict(context_length=12, vocab_size=50, width=32, heads=4, layers=2)).eval()
plain = copy.deepcopy(model)
for block in [*model.transformer.resblocks, *model.visual.transformer.resblocks]:
    fully_shard(block)
fully_shard(model, ignored_params={model.logit_scale})
text = torch.randint(1, 48, (3, 12)); text[:, 5] = 49
images = torch.randn(2, 3, 16, 16)
with torch.no_grad():
    sharded, reference = model(images, text), plain(images, text)
assert packed, "fast paths did not run under FSDP2"
assert torch.equal(sharded[0], reference[0]) and torch.equal(sharded[1], reference[1])
print("ok")
"""


def test_fsdp2_keeps_the_fast_paths(tmp_path):
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = tmp_path / "fsdp_fast_paths.py"
    script.write_text(FSDP_SCRIPT)
    result = subprocess.run([sys.executable, str(script), str(port)], capture_output=True, text=True, timeout=240)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-2000:]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fast_paths_under_autocast_match_the_plain_forward(dtype, packed_calls):
    # amp training: the packed path computes in the autocast dtype like the plain one (not bitwise)
    model = make_clip(CLIP).train()
    text, images = random_text(6, seed=2), torch.randn(4, 3, 16, 16)
    lengths = model.pooled_text_lengths(text)

    def run(fast):
        set_fast(model, fast)
        with torch.autocast("cpu", dtype=dtype):
            return model.encode_text(text, text_lengths=lengths), model.encode_image(images)

    (text_fast, image_fast), (text_full, image_full) = run(True), run(False)
    assert packed_calls and text_fast.dtype == text_full.dtype and image_fast.dtype == image_full.dtype
    torch.testing.assert_close(text_fast.float(), text_full.float(), atol=3e-2, rtol=0)
    torch.testing.assert_close(image_fast.float(), image_full.float(), atol=3e-2, rtol=0)
    (text_fast.float().sum() + image_fast.float().sum()).backward()
