"""End-to-end runs of ``open_clip_train.main`` on a tiny model and generated data (CPU, fp32)."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from fault_helpers import TINY, TINY_COCA
from PIL import Image

from open_clip_train.main import main

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from open_clip.config_registry import add_model_config

    d = tmp_path_factory.mktemp("cfg")
    (d / "tiny-e2e.json").write_text(json.dumps(TINY))
    (d / "coca_tiny-e2e.json").write_text(json.dumps(TINY_COCA))
    add_model_config(d)
    local = tmp_path_factory.mktemp("localdir")
    (local / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY, "preprocess_cfg": {}}))
    return {"name": "tiny-e2e", "local_dir": str(local)}


@pytest.fixture(scope="module")
def csv_data(tmp_path_factory):
    d = tmp_path_factory.mktemp("csv")
    rng = np.random.default_rng(0)
    rows = ["filepath\ttitle"]
    for i in range(24):
        path = d / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(path)
        rows.append(f"{path}\ta photo number {i} of {['cats', 'dogs', 'birds'][i % 3]}")
    (d / "train.csv").write_text("\n".join(rows) + "\n")
    (d / "val.csv").write_text("\n".join(rows[:9]) + "\n")
    return d


def _base(tmp_path, model, name, *extra):
    return ["--model", model, "--batch-size", "4", "--workers", "0", "--warmup", "2", "--precision", "fp32",
            "--device", "cpu", "--logs", str(tmp_path / "logs"), "--name", name, "--log-every-n-steps", "1",
            "--seed", "1", *extra]


def _synthetic(tmp_path, model, name, *extra):
    return _base(tmp_path, model, name, "--dataset-type", "synthetic", "--train-num-samples", "8", *extra)


def _csv(tmp_path, model, data, name, *extra):
    return _base(tmp_path, model, name, "--train-data", str(data / "train.csv"), "--dataset-type", "csv", *extra)


def _sd(path):
    return torch.load(path, weights_only=True)["state_dict"]


def test_synthetic_train_layout(tmp_path, tiny_model):
    assert main(_synthetic(tmp_path, tiny_model["name"], "run", "--epochs", "2", "--report-to", "tensorboard",
                           "--save-most-recent")) is None
    run = tmp_path / "logs" / "run"
    assert sorted(os.listdir(run)) == ["checkpoints", "out.log", "params.txt", "tensorboard"]
    assert sorted(os.listdir(run / "checkpoints")) == ["epoch_1.pt", "epoch_2.pt", "epoch_latest.pt"]
    lines = (run / "params.txt").read_text().splitlines()
    keys = [line.split(": ")[0] for line in lines]
    assert keys == sorted(keys) and "checkpoint_path" in keys and "distributed" in keys
    ckpt = torch.load(run / "checkpoints" / "epoch_2.pt", weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["name"] == "run" and ckpt["global_step"] == 4
    assert {"state_dict", "optimizer", "rng"} <= set(ckpt)
    assert not any(k.startswith("module.") for k in ckpt["state_dict"])
    log = (run / "out.log").read_text()
    assert "Train Epoch: 1" in log and "Logit Scale:" in log and "LR:" in log and "/s" in log
    assert os.listdir(run / "tensorboard")
    # same name again: 3.3 refuses and returns -1
    assert main(_synthetic(tmp_path, tiny_model["name"], "run", "--epochs", "1")) == -1


def test_auto_name_format(tmp_path, tiny_model):
    args = _synthetic(tmp_path, tiny_model["name"], "x", "--epochs", "1", "--save-frequency", "0")
    args = args[:args.index("--name")] + args[args.index("--name") + 2:]
    assert main(args) is None
    (name,) = os.listdir(tmp_path / "logs")
    import re

    assert re.fullmatch(r"\d{4}_\d\d_\d\d-\d\d_\d\d_\d\d-model_tiny-e2e-lr_0.0005-b_4-j_0-p_fp32", name)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, tiny_model, csv_data):
    """An uninterrupted 2-epoch CSV run saving a checkpoint after every step (6 steps per epoch)."""
    logs = tmp_path_factory.mktemp("ref")
    assert main(_csv(logs, tiny_model["name"], csv_data, "a", "--epochs", "2", "--save-every-n-steps", "1",
                     "--keep-step-checkpoints", "0")) is None
    return logs / "logs" / "a" / "checkpoints"


@pytest.mark.parametrize("copied", [["step_8.pt", "epoch_1.pt"], ["step_6.pt"]])
def test_resume_latest_mid_epoch_is_bitwise_exact(tmp_path, tiny_model, csv_data, reference_run, copied):
    """Resuming from a step checkpoint reproduces the uninterrupted run exactly (CSV, shuffled).

    step_8 is mid-epoch 2; step_6 is the last step of epoch 1 with the epoch file never written.
    """
    ck_a = reference_run
    step = torch.load(ck_a / "step_8.pt", weights_only=True)
    assert step["epoch"] == 1 and step["batch_in_epoch"] == 2 and "data_state" in step
    ck_b = tmp_path / "logs" / "b" / "checkpoints"
    os.makedirs(ck_b)
    for name in copied:  # what a run killed right after that step would have left behind
        shutil.copy(ck_a / name, ck_b / name)
    (tmp_path / "logs" / "b" / "out.log").write_text("")
    assert main(_csv(tmp_path, tiny_model["name"], csv_data, "b", "--epochs", "2", "--resume", "latest")) is None
    a_final, b_final = _sd(ck_a / "epoch_2.pt"), _sd(ck_b / "epoch_2.pt")
    for k in a_final:
        assert torch.equal(a_final[k], b_final[k]), k
    assert f"resuming checkpoint '{ck_b / copied[0]}'" in (tmp_path / "logs" / "b" / "out.log").read_text()


def test_resume_from_epoch_checkpoint_is_exact(tmp_path, tiny_model, csv_data):
    m = tiny_model["name"]
    assert main(_csv(tmp_path, m, csv_data, "a", "--epochs", "2")) is None
    ck_a = tmp_path / "logs" / "a" / "checkpoints"
    assert main(_csv(tmp_path, m, csv_data, "b", "--epochs", "2", "--resume", str(ck_a / "epoch_1.pt"))) is None
    a_final, b_final = _sd(ck_a / "epoch_2.pt"), _sd(tmp_path / "logs" / "b" / "checkpoints" / "epoch_2.pt")
    for k in a_final:
        assert torch.equal(a_final[k], b_final[k]), k


def test_val_results_jsonl(tmp_path, tiny_model, csv_data):
    m = tiny_model["name"]
    assert main(_csv(tmp_path, m, csv_data, "v", "--epochs", "1", "--val-data", str(csv_data / "val.csv"))) is None
    lines = (tmp_path / "logs" / "v" / "checkpoints" / "results.jsonl").read_text().splitlines()
    metrics = json.loads(lines[0])
    assert metrics["epoch"] == 1 and metrics["num_samples"] == 8
    for key in ("clip_val_loss", "image_to_text_R@1", "text_to_image_median_rank", "image_to_text_mean_rank"):
        assert key in metrics


def test_zero_shot_imagenet_folder(tmp_path, tiny_model, monkeypatch):
    from open_clip_train import zero_shot

    root = tmp_path / "imnet"
    for c in range(2):
        os.makedirs(root / f"n{c:08d}")
        for i in range(3):
            Image.new("RGB", (40, 40), color=(c * 200, i * 50, 0)).save(root / f"n{c:08d}" / f"{i}.png")
    seen = {}

    def fake_classifier(model, tokenizer, classnames, templates, **kw):
        seen["n"] = (len(classnames), len(templates))
        return torch.nn.functional.normalize(torch.randn(32, 1000), dim=0)

    monkeypatch.setattr(zero_shot, "build_zero_shot_classifier", fake_classifier)
    args = _base(tmp_path, tiny_model["name"], "zs", "--imagenet-val", str(root))
    assert main(args) is None
    assert seen["n"] == (1000, 80)
    metrics = json.loads((tmp_path / "logs" / "zs" / "checkpoints" / "results.jsonl").read_text())
    assert 0.0 <= metrics["imagenet-zeroshot-val-top1"] <= metrics["imagenet-zeroshot-val-top5"] <= 1.0


@pytest.mark.parametrize("extra", [
    ["--siglip"],
    ["--accum-freq", "2"],
    ["--lock-text", "--lock-text-unlocked-layers", "0", "--lock-image"],
    ["--grad-checkpointing", "--force-patch-dropout", "0.5", "--grad-clip-norm", "1.0"],
    ["--lr-scheduler", "const-cooldown", "--epochs-cooldown", "1", "--opt", "timm/lamb"],
    ["--precision", "amp_bf16"],
    ["--precision", "amp"],  # the default: fp16 autocast + GradScaler, also on the CPU
    ["--loss-chunk-size", "2"],
    ["--val-data", "synthetic"],  # 3.3 crashed building synthetic val data
])
def test_flag_combinations_train(tmp_path, tiny_model, extra):
    args = _synthetic(tmp_path, tiny_model["name"], "f", "--epochs", "1") + extra
    assert main(args) is None
    assert "epoch_1.pt" in os.listdir(tmp_path / "logs" / "f" / "checkpoints")


def test_lock_text_freezes_text_tower(tmp_path, tiny_model):
    args = _synthetic(tmp_path, tiny_model["name"], "lt", "--epochs", "1", "--lock-text")
    assert main(args) is None
    ckpt = torch.load(tmp_path / "logs" / "lt" / "checkpoints" / "epoch_1.pt", weights_only=True)
    from open_clip.factory import create_model

    torch.manual_seed(1)
    fresh = create_model(tiny_model["name"]).state_dict()
    assert torch.equal(ckpt["state_dict"]["token_embedding.weight"], fresh["token_embedding.weight"])
    assert not torch.equal(ckpt["state_dict"]["visual.conv1.weight"], fresh["visual.conv1.weight"])


@pytest.mark.parametrize("extra,flag", [
    (["--model", "no-such-model"], "--model"),
    (["--train-data", "/nonexistent/train.csv", "--dataset-type", "csv"], "--train-data"),
    (["--siglip", "--distill-model", "RN50", "--distill-pretrained", "x.pt"], "--siglip"),
    (["--lr-scheduler", "linear"], "--lr-scheduler"),
    (["--report-to", "wandb"], "--report-to wandb"),
    (["--use-bnb-linear", "SwitchBackLinearGlobal"], "--use-bnb-linear"),
    (["--resume", "/nonexistent/epoch_3.pt"], "--resume"),
    (["--keep-step-checkpoints", "-1"], "--keep-step-checkpoints"),
    (["--data-stall-timeout", "-5"], "--data-stall-timeout"),
])
def test_config_errors_leave_only_out_log(tmp_path, tiny_model, extra, flag, caplog, monkeypatch):
    for optional in ("wandb", "bitsandbytes"):  # as if not installed (the dev extra installs wandb)
        monkeypatch.setitem(sys.modules, optional, None)
    args = _synthetic(tmp_path, tiny_model["name"], "bad", "--epochs", "1") + extra
    if "--train-data" in extra:
        args = _base(tmp_path, tiny_model["name"], "bad") + extra
    assert main(args) == -1
    assert os.listdir(tmp_path / "logs" / "bad") == ["out.log"]
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert errors and flag in errors[-1] and "\n" not in errors[-1]


def test_resume_corrupt_checkpoint_errors(tmp_path, tiny_model):
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(b"\x00" * 100)
    assert main(_synthetic(tmp_path, tiny_model["name"], "c", "--epochs", "1", "--resume", str(bad))) == -1
    assert os.listdir(tmp_path / "logs" / "c") == ["out.log"]


def _cli(args, *prefix):
    path = os.pathsep.join([os.path.join(REPO, "src"), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, PYTHONPATH=path, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, *prefix, *args], capture_output=True, text=True, env=env, cwd=REPO)


def test_cli_exit_codes(tmp_path, tiny_model):
    bad = _cli(_synthetic(tmp_path, "no-such-model", "e", "--epochs", "1"), "-m", "open_clip_train.main")
    assert bad.returncode == 2 and "--model no-such-model" in bad.stderr
    assert _cli(["--precision", "fp8"], "-m", "open_clip_train.main").returncode == 2


def test_script_form_trains(tmp_path, tiny_model):
    ok = _cli(_synthetic(tmp_path, "local-dir:" + tiny_model["local_dir"], "s", "--epochs", "1"),
              "-u", os.path.join(REPO, "src", "open_clip_train", "main.py"))
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "epoch_1.pt" in os.listdir(tmp_path / "logs" / "s" / "checkpoints")


def test_remote_sync_fsspec_local_target(tmp_path, tiny_model):
    remote = tmp_path / "remote"
    args = _synthetic(tmp_path, tiny_model["name"], "rs", "--epochs", "1", "--save-most-recent",
                      "--remote-sync", str(remote), "--remote-sync-protocol", "fsspec",
                      "--remote-sync-frequency", "1000")
    assert main(args) is None
    assert (remote / "rs" / "checkpoints" / "epoch_1.pt").exists()
    assert (remote / "rs" / "params.txt").exists()
    assert not (remote / "rs" / "checkpoints" / "epoch_latest.pt").exists()


def test_distillation_from_checkpoint_teacher(tmp_path, tiny_model):
    assert main(_synthetic(tmp_path, tiny_model["name"], "teacher", "--epochs", "1")) is None
    teacher = tmp_path / "logs" / "teacher" / "checkpoints" / "epoch_1.pt"
    args = _synthetic(tmp_path, tiny_model["name"], "student", "--epochs", "1",
                      "--distill-model", tiny_model["name"], "--distill-pretrained", str(teacher))
    assert main(args) is None
    log = (tmp_path / "logs" / "student" / "out.log").read_text()
    assert "Distill_loss:" in log


def test_nonfinite_loss_stops_run_and_keeps_checkpoints(tmp_path, tiny_model, monkeypatch, caplog):
    import open_clip_train.main as main_mod

    real_build = main_mod.build_loss

    def poisoned_build(args, model=None):
        inner = real_build(args, model)
        calls = {"n": 0}

        def loss(**kw):
            calls["n"] += 1
            out = inner(**kw)
            if calls["n"] > 3:  # steps 0-2 are fine, every later loss is NaN
                out = {k: v * float("nan") for k, v in out.items()}
            return out

        return loss

    monkeypatch.setattr(main_mod, "build_loss", poisoned_build)
    args = _synthetic(tmp_path, tiny_model["name"], "nan", "--epochs", "3", "--save-every-n-steps", "1",
                      "--max-nonfinite-steps", "2")
    assert main(args) == -1
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert "global step 4" in errors[-1] and "--max-nonfinite-steps 2" in errors[-1]
    ckdir = tmp_path / "logs" / "nan" / "checkpoints"
    from open_clip_train.checkpoint import get_latest_checkpoint

    latest = torch.load(get_latest_checkpoint(str(ckdir)), weights_only=True)
    assert all(torch.isfinite(v).all() for v in latest["state_dict"].values() if v.is_floating_point())


def test_coca_trains_with_caption_loss(tmp_path, tiny_model, csv_data):
    pytest.importorskip("open_clip.coca_model")  # CoCa is wired into the factory separately
    args = _csv(tmp_path, "coca_tiny-e2e", csv_data, "coca", "--epochs", "1", "--val-data",
                str(csv_data / "val.csv"), "--accum-freq", "2", "--lock-image", "--lock-text")
    assert main(args) is None
    log = (tmp_path / "logs" / "coca" / "out.log").read_text()
    assert "Caption_loss:" in log and "Contrastive_loss:" in log
    metrics = json.loads((tmp_path / "logs" / "coca" / "checkpoints" / "results.jsonl").read_text())
    assert "val_generative_loss" in metrics and np.isfinite(metrics["val_generative_loss"])


@pytest.fixture(scope="module")
def wds_shards(tmp_path_factory):
    import io
    import tarfile

    d = tmp_path_factory.mktemp("wds")
    rng = np.random.default_rng(1)
    for shard in range(2):
        with tarfile.open(d / f"shard-{shard}.tar", "w") as tar:
            for i in range(8):
                buf = io.BytesIO()
                Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(buf, format="PNG")
                for ext, data in (("png", buf.getvalue()), ("txt", f"sample {shard} {i}".encode())):
                    info = tarfile.TarInfo(f"s{shard}_{i:03d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return str(d / "shard-{0..1}.tar")


def test_webdataset_train(tmp_path, tiny_model, wds_shards):
    args = _base(tmp_path, tiny_model["name"], "wds", "--train-data", wds_shards, "--dataset-type", "webdataset",
                 "--train-num-samples", "16", "--epochs", "1")
    assert main(args) is None
    assert "epoch_1.pt" in os.listdir(tmp_path / "logs" / "wds" / "checkpoints")


def test_webdataset_without_num_samples_is_config_error(tmp_path, tiny_model, wds_shards, caplog):
    args = _base(tmp_path, tiny_model["name"], "wds", "--train-data", wds_shards, "--dataset-type", "webdataset",
                 "--epochs", "1")
    assert main(args) == -1
    assert os.listdir(tmp_path / "logs" / "wds") == ["out.log"]
    error = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"][-1]
    assert "--train-data" in error and "number of dataset samples" in error


def test_bad_samples_are_skipped_and_logged_per_epoch(tmp_path, tiny_model, csv_data):
    """A corrupt image and a missing one are skipped, and the epoch log names both kinds with counts."""
    rows = (csv_data / "train.csv").read_text().splitlines()[:23]  # header + 22 good: 24 rows fill 6 batches
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    rows += [f"{broken}\ta broken image", f"{tmp_path / 'missing.png'}\ta missing image"]
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
    args = _base(tmp_path, tiny_model["name"], "bad", "--train-data", str(tmp_path / "train.csv"),
                 "--dataset-type", "csv", "--epochs", "1")
    assert main(args) is None
    log = (tmp_path / "logs" / "bad" / "out.log").read_text()
    line = next(x for x in log.splitlines() if "skipped bad training samples" in x)
    counts = dict(part.split("=") for part in line.split(": ")[-1].split(", "))
    assert counts == {"image_decode_error": "1", "missing_image": "1"}, line


def test_wandb_offline_run(tmp_path, tiny_model, monkeypatch):
    """The real wandb package in offline mode: the run is created under the experiment name with the
    arguments as config and params.txt saved; train steps and val metrics are logged at global steps."""
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    calls = {"init": [], "log": []}
    real_init, real_log = wandb.init, wandb.sdk.wandb_run.Run.log

    def spy_init(*a, **kw):
        calls["init"].append(kw)
        return real_init(*a, **kw)

    def spy_log(run, data, step=None, **kw):
        calls["log"].append((step, dict(data)))
        return real_log(run, data, step=step, **kw)

    monkeypatch.setattr(wandb, "init", spy_init)
    # wandb.init rebinds the module-level wandb.log to the new run's method: spy on the method
    monkeypatch.setattr(wandb.sdk.wandb_run.Run, "log", spy_log)
    args = _synthetic(tmp_path, tiny_model["name"], "wb", "--epochs", "2", "--report-to", "wandb",
                      "--val-data", "synthetic", "--val-num-samples", "8", "--wandb-project-name", "proj")
    assert main(args) is None
    assert wandb.run is None  # finished
    (init,) = calls["init"]
    assert init["project"] == "proj" and init["id"] == "wb" and init["config"]["model"] == tiny_model["name"]
    runs = list((tmp_path / "wandb").glob("offline-run-*-wb"))
    assert len(runs) == 1 and (runs[0] / "run-wb.wandb").stat().st_size > 0
    assert list(runs[0].glob("files/**/params.txt"))
    train = [(step, data) for step, data in calls["log"] if "train/loss" in data]
    assert [step for step, _ in train] == [0, 1, 2, 3]  # 8 samples / batch 4 = 2 steps per epoch, logged each step
    assert all(np.isfinite(data["train/loss"]) and data["step"] == step for step, data in train)
    val = [(step, data) for step, data in calls["log"] if "val/clip_val_loss" in data]
    assert [(step, data["epoch"]) for step, data in val] == [(2, 1), (4, 2)]


def test_failed_checkpoint_write_stops_run_with_one_line_error(tmp_path, tiny_model, monkeypatch, caplog):
    """The disk fills up at the third save: the run stops, naming the file and the cause, and the
    checkpoint written before is intact and still the latest."""
    import errno

    import open_clip_train.checkpoint as ck

    real_save, calls = ck.torch.save, {"n": 0}

    def filling_disk(obj, f):
        calls["n"] += 1
        if calls["n"] >= 3:
            f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f)

    monkeypatch.setattr(ck.torch, "save", filling_disk)
    args = _synthetic(tmp_path, tiny_model["name"], "full", "--epochs", "2", "--save-every-n-steps", "1")
    assert main(args) == -1
    error = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"][-1]
    ckdir = tmp_path / "logs" / "full" / "checkpoints"
    assert "\n" not in error and "No space left on device" in error and "ENOSPC" in error
    # 2 steps per epoch: step_1.pt and step_2.pt were written (step_1 then pruned), epoch_1.pt failed
    assert str(ckdir / "epoch_1.pt") in error
    assert os.listdir(ckdir) == ["step_2.pt"]
    assert not any(r.getMessage().startswith("Train Epoch: 1") for r in caplog.records)  # the run stopped
    from open_clip_train.checkpoint import get_latest_checkpoint

    assert torch.load(get_latest_checkpoint(str(ckdir)), weights_only=True)["global_step"] == 2


@pytest.mark.parametrize("precision, warned", [("amp", True), ("amp_bf16", False), ("fp32", False)])
def test_cpu_float16_autocast_training_is_warned_about(tmp_path, tiny_model, precision, warned):
    assert main(_synthetic(tmp_path, tiny_model["name"], "p", "--epochs", "1", "--save-frequency", "0",
                           "--precision", precision)) is None
    log = (tmp_path / "logs" / "p" / "out.log").read_text()
    assert ("very slow to train on the CPU" in log) == warned
    assert "Train Epoch: 0" in log
