"""``--fsdp`` (FSDP2) on 2-process torchrun (gloo, CPU): the same losses as DDP for every mode the
issue names, sharded checkpoints beside the usual files, resume across world sizes and between DDP
and FSDP, and a meta-device build whose shards equal a seeded normal build bit for bit."""

import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from fault_helpers import env, free_port
from PIL import Image

TINY = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
COCA = {
    "embed_dim": 32,
    "custom_text": True,
    "multimodal_cfg": {"context_length": 16, "width": 32, "heads": 2, "layers": 1, "vocab_size": 49408},
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16,
                   "attentional_pool": True, "attn_pooler_queries": 4, "attn_pooler_heads": 2, "output_tokens": True},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1, "embed_cls": True,
                 "output_tokens": True},
}

# name -> extra flags; each runs once with DDP and once with --fsdp, 1 epoch of 4 steps
MODES = {
    "fp32": [],
    "amp": ["--precision", "amp"],
    "amp_bf16": ["--precision", "amp_bf16"],
    "pure_bf16": ["--precision", "pure_bf16"],
    "ckpt_accum_lock": ["--grad-checkpointing", "--accum-freq", "2", "--lock-image", "--lock-image-unlocked-groups",
                        "1"],
    "local_loss": ["--local-loss", "--gather-with-grad"],
    "siglip": ["--siglip"],
    "coca": ["--coca-caption-loss-weight", "2", "--coca-contrastive-loss-weight", "1"],
}

DRIVER = """
import json, sys
from open_clip_train.main import main
for argv in json.loads(open(sys.argv[1]).read()):
    assert main(argv) is None, argv
"""


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("fsdp")
    for name, cfg in (("tiny", TINY), ("coca", COCA)):
        (root / name).mkdir()
        (root / name / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": {}}))
    rng = np.random.default_rng(0)
    rows = ["filepath\ttitle"]
    for i in range(32):
        path = root / f"{i}.png"
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(path)
        rows.append(f"{path}\tcaption {i} {['red', 'green', 'blue'][i % 3]} thing")
    (root / "train.csv").write_text("\n".join(rows) + "\n")
    return root


def _args(data, name, *extra, model="tiny", epochs=1):
    return ["--model", f"local-dir:{data / model}", "--train-data", str(data / "train.csv"), "--dataset-type", "csv",
            "--workers", "0", "--warmup", "2", "--precision", "fp32", "--device", "cpu", "--seed", "3",
            "--log-every-n-steps", "1", "--batch-size", "4", "--epochs", str(epochs), "--logs", str(data / "logs"),
            "--name", name, "--aug-cfg", "scale=(1.0,1.0)", "ratio=(1.0,1.0)", *extra]


def _launch(data, runs, nproc=2, tag="runs"):
    plan = data / f"{tag}.json"
    plan.write_text(json.dumps(runs))
    script = data / "driver.py"
    script.write_text(DRIVER)
    if nproc == 1:
        cmd = [sys.executable, str(script), str(plan)]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port",
               str(free_port()), str(script), str(plan)]
    result = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=600, cwd=data)
    assert result.returncode == 0, result.stderr[-3000:]


def _log(data, name):
    return (data / "logs" / name / "out.log").read_text()


def _losses(data, name):
    return [float(x) for x in re.findall(r"Train Epoch.* Loss: ([0-9.]+)", _log(data, name))]


def _scales(data, name):
    return [float(x) for x in re.findall(r"Logit Scale: ([0-9.]+)", _log(data, name))]


def _weights(data, name, file):
    state = torch.load(data / "logs" / name / "checkpoints" / file, map_location="cpu", weights_only=True)
    return {k.removeprefix("module."): v for k, v in state["state_dict"].items()}


@pytest.fixture(scope="module")
def trained(data):
    runs = []
    for mode, flags in MODES.items():
        model = "coca" if mode == "coca" else "tiny"
        runs.append(_args(data, f"ddp_{mode}", *flags, model=model))
        runs.append(_args(data, f"fsdp_{mode}", "--fsdp", *flags, model=model))
    # two epochs with step checkpoints, for the resume tests
    runs.append(_args(data, "ddp_long", "--save-every-n-steps", "1", "--keep-step-checkpoints", "0", epochs=2))
    runs.append(_args(data, "fsdp_long", "--fsdp", "--save-every-n-steps", "1", "--keep-step-checkpoints", "0",
                      epochs=2))
    _launch(data, runs)
    return data


@pytest.mark.parametrize("mode", list(MODES))
def test_fsdp_logs_the_losses_of_ddp(trained, mode):
    ddp, fsdp = _losses(trained, f"ddp_{mode}"), _losses(trained, f"fsdp_{mode}")
    assert len(ddp) == len(fsdp) >= 2
    np.testing.assert_allclose(fsdp, ddp, rtol=2e-3)


def test_fsdp_checkpoints_are_3p3_files_plus_sharded_folders(trained):
    folder = trained / "logs" / "fsdp_long" / "checkpoints"
    for stem in ("epoch_1", "epoch_2", "step_3", "step_8"):
        assert (folder / f"{stem}.pt").is_file() and (folder / f"{stem}.dcp" / ".metadata").is_file()
    ckpt = torch.load(folder / "epoch_2.pt", map_location="cpu", weights_only=True)
    assert {"epoch", "name", "state_dict", "global_step"} <= set(ckpt) and "optimizer" not in ckpt
    reference = _weights(trained, "ddp_long", "epoch_2.pt")
    assert ckpt["state_dict"].keys() == reference.keys()
    for key, value in reference.items():  # full tensors, 3.3 shapes (a 0-dim logit scale stays 0-dim)
        assert ckpt["state_dict"][key].shape == value.shape
        torch.testing.assert_close(ckpt["state_dict"][key], value, rtol=0, atol=1e-5)

    import open_clip
    from open_clip import config_registry

    config_registry._MODEL_CONFIGS["tiny-fsdp"] = TINY  # the conftest restores the registry
    model, _, _ = open_clip.create_model_and_transforms("tiny-fsdp", pretrained=str(folder / "epoch_2.pt"))
    for key, value in model.state_dict().items():
        assert torch.equal(value, ckpt["state_dict"][key]), key


def test_sharded_folder_loads_into_a_plain_model(trained):
    import open_clip
    from open_clip_train.sharded_checkpoint import restore_model_and_optimizer

    path = str(trained / "logs" / "fsdp_long" / "checkpoints" / "epoch_2.pt")
    model = open_clip.create_model(f"local-dir:{trained / 'tiny'}")
    assert restore_model_and_optimizer(path, {}, model, None, {})
    expected = _weights(trained, "fsdp_long", "epoch_2.pt")
    for key, value in model.state_dict().items():
        assert torch.equal(value, expected[key]), key


def test_resume_between_ddp_and_fsdp_and_across_world_sizes(trained):
    data = trained
    ddp_ckpt = str(data / "logs" / "ddp_long" / "checkpoints" / "epoch_1.pt")
    fsdp_ckpt = str(data / "logs" / "fsdp_long" / "checkpoints" / "epoch_1.pt")
    mid = str(data / "logs" / "fsdp_long" / "checkpoints" / "step_3.pt")
    _launch(data, [
        _args(data, "fsdp_from_ddp", "--fsdp", "--resume", ddp_ckpt, epochs=2),
        _args(data, "ddp_from_fsdp", "--resume", fsdp_ckpt, epochs=2),
        _args(data, "fsdp_from_mid", "--fsdp", "--resume", mid, epochs=2),
    ], tag="resume2")
    reference = _weights(data, "ddp_long", "epoch_2.pt")
    for name in ("fsdp_from_ddp", "ddp_from_fsdp", "fsdp_from_mid"):  # same world size: the uninterrupted weights
        weights = _weights(data, name, "epoch_2.pt")
        for key, value in reference.items():
            torch.testing.assert_close(weights[key], value, rtol=0, atol=1e-5, msg=f"{name} {key}")

    # other world sizes: the step's model continues (its logit scale is the first one logged) and the
    # data position maps onto the new sharding
    saved_scale = float(torch.load(mid, weights_only=True)["state_dict"]["logit_scale"].exp())
    _launch(data, [_args(data, "fsdp_world1", "--fsdp", "--resume", mid, epochs=2)], nproc=1, tag="resume1")
    _launch(data, [_args(data, "fsdp_world3", "--fsdp", "--resume", mid, epochs=2)], nproc=3, tag="resume3")
    assert "continuing after 24 of the 24 samples" in _log(data, "fsdp_world1")
    for name in ("fsdp_world1", "fsdp_world3"):
        assert _scales(data, name)[0] == pytest.approx(saved_scale, abs=1e-3)
        assert (data / "logs" / name / "checkpoints" / "epoch_2.pt").is_file()
        weights = _weights(data, name, "epoch_2.pt")
        assert all(torch.isfinite(v).all() for v in weights.values())


META_INIT = """
import sys, torch, torch.distributed as dist
from open_clip.models.clip import CLIP
from open_clip.models.coca import CoCa
from open_clip.models.materialize import init_non_persistent_buffers, init_weights
from open_clip_train.fsdp import apply_fsdp
from open_clip_train.sharded_checkpoint import full_model_state

dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{sys.argv[1]}", rank=0, world_size=1)
vision = dict(layers=2, width=32, head_width=8, patch_size=4, image_size=16)
text = dict(context_length=12, vocab_size=50, width=32, heads=4, layers=2)
builders = {
    "vit": lambda: CLIP(8, vision, text),
    "resnet": lambda: CLIP(8, dict(layers=[1, 1, 1, 1], width=8, head_width=8, image_size=64), text),
    "coca": lambda: CoCa(8, dict(width=32, heads=4, layers=1, context_length=12, vocab_size=50),
                          dict(text, embed_cls=True), dict(vision, attentional_pool=True, attn_pooler_queries=4)),
}
for name, build in builders.items():
    torch.manual_seed(5)
    eager = build().state_dict()
    with torch.device("meta"):
        model = build()
    apply_fsdp(model)
    model.to_empty(device="cpu")
    torch.manual_seed(5)
    init_weights(model)
    init_non_persistent_buffers(model)
    shards = full_model_state(model)
    assert shards.keys() == eager.keys(), name
    bad = [k for k in eager if not torch.equal(shards[k], eager[k])]
    assert not bad, (name, bad)
print("ok")
"""


def test_meta_build_and_per_shard_init_equal_a_seeded_normal_build(tmp_path):
    script = tmp_path / "meta_init.py"
    script.write_text(META_INIT)
    result = subprocess.run([sys.executable, str(script), str(free_port())], env=env(), capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]
