"""`make demo`: generate scenes -> train a small CLIP with the real CLI -> evaluate -> fine-tune on a shifted
style with WiSE-FT (the fine-tuning CLI) -> report -> reload.

Settings come from the environment: DEMO_QUICK=1 runs the same path on far fewer steps (for CI),
DEMO_OUT picks the output folder (default demo_out/), DEMO_SEED the seed (default 0).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from .dataset import write_split
from .scenes import COLOURS, render, sample_scene

MODEL_NAME = "demo-clip-tiny"
IMAGE_SIZE = 40
MODEL_CFG = {
    "embed_dim": 96,
    "vision_cfg": {"image_size": IMAGE_SIZE, "layers": 3, "width": 96, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 20, "vocab_size": 49408, "width": 96, "heads": 3, "layers": 3},
}
FULL = {"train_samples": 36_000, "epochs": 4, "batch_size": 128, "lr": 2e-3, "warmup": 100, "eval_images": 300}
QUICK = {"train_samples": 3_072, "epochs": 2, "batch_size": 128, "lr": 2e-3, "warmup": 10, "eval_images": 60}


def _settings() -> dict:
    settings = dict(QUICK if os.environ.get("DEMO_QUICK") == "1" else FULL)
    settings["mode"] = "quick" if os.environ.get("DEMO_QUICK") == "1" else "full"
    settings["seed"] = int(os.environ.get("DEMO_SEED", "0"))
    return settings


def _write_model_files(model_dir: Path) -> Path:
    """A local-dir model for the CLI and a plain config file for add_model_config."""
    model_dir.mkdir(parents=True, exist_ok=True)
    preprocess = {"size": IMAGE_SIZE, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    (model_dir / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": MODEL_CFG, "preprocess_cfg": preprocess}, indent=2))
    config_file = model_dir.parent / f"{MODEL_NAME}.json"
    config_file.write_text(json.dumps(MODEL_CFG, indent=2))
    return config_file


def _train(settings: dict, out: Path, train_pattern: str, val_pattern: str, val_samples: int) -> Path:
    """Run the training CLI exactly as a user would; returns the experiment folder."""
    logs = out / "logs"
    shutil.rmtree(logs / "demo", ignore_errors=True)
    command = [
        sys.executable, "-m", "open_clip_train.main",
        "--model", f"local-dir:{out / 'model'}",
        "--train-data", train_pattern, "--train-num-samples", str(settings["train_samples"]),
        "--val-data", val_pattern, "--val-num-samples", str(val_samples),
        "--dataset-type", "webdataset",
        "--batch-size", str(settings["batch_size"]), "--epochs", str(settings["epochs"]),
        "--lr", str(settings["lr"]), "--wd", "0.1", "--warmup", str(settings["warmup"]),
        "--workers", "1", "--device", "cpu", "--precision", "fp32", "--seed", str(settings["seed"]),
        "--logs", str(logs), "--name", "demo", "--save-frequency", str(settings["epochs"]),
        "--val-frequency", str(settings["epochs"]), "--zeroshot-frequency", "0",
        "--log-every-n-steps", "5",
    ]
    print("training:", " ".join(command), flush=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    subprocess.run(command, check=True, env=env)
    return logs / "demo"


def _reload_and_classify(config_file: Path, checkpoint: Path, seed: int):
    """What a user does with the result: the public API, a config file and a checkpoint path."""
    import open_clip

    open_clip.add_model_config(config_file)
    model, _, preprocess = open_clip.create_model_and_transforms(MODEL_NAME, pretrained=str(checkpoint))
    model.eval()
    tokenizer = open_clip.get_tokenizer(MODEL_NAME)
    return model, preprocess, tokenizer


def main() -> int:
    from .evaluate import classify_one, evaluate_all
    from .finetune_stage import report_section, run_stage
    from .report import parse_losses, plot_confusion, plot_losses, write_report

    settings = _settings()
    out = Path(os.environ.get("DEMO_OUT", "demo_out"))
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    data_dir = out / "data"
    shutil.rmtree(data_dir, ignore_errors=True)
    val_samples = 512
    train_pattern = write_split(data_dir, "train", settings["train_samples"], 1024, settings["seed"], False, IMAGE_SIZE)
    val_pattern = write_split(data_dir, "val", val_samples, 512, settings["seed"] + 1, False, IMAGE_SIZE)
    config_file = _write_model_files(out / "model")
    timings["data generation"] = time.perf_counter() - start

    start = time.perf_counter()
    experiment = _train(settings, out, train_pattern, val_pattern, val_samples)
    timings["training (CLI)"] = time.perf_counter() - start

    start = time.perf_counter()
    checkpoint = experiment / "checkpoints" / f"epoch_{settings['epochs']}.pt"
    model, preprocess, tokenizer = _reload_and_classify(config_file, checkpoint, settings["seed"])
    results, retrieval = evaluate_all(model, preprocess, tokenizer, settings["eval_images"],
                                      settings["seed"] + 7, IMAGE_SIZE)
    timings["evaluation"] = time.perf_counter() - start

    start = time.perf_counter()
    stage = run_stage(out, out / "model" / "open_clip_config.json", checkpoint, IMAGE_SIZE, settings["seed"],
                      quick=settings["mode"] == "quick")
    timings["fine-tuning + WiSE-FT (CLI)"] = time.perf_counter() - start

    losses = parse_losses((experiment / "out.log").read_text())
    plot_losses(losses, out / "loss_curve.png")
    plot_confusion(results[("colour", True)], "colour, held-out pairs", out / "confusion_colour_heldout.png")
    _plot_examples(model, preprocess, tokenizer, out, settings["seed"])

    rng = np.random.default_rng(settings["seed"] + 12345)
    scene = sample_scene(rng, held_out=True, kind="single")
    image = render(rng, scene, IMAGE_SIZE)
    image.resize((192, 192)).save(out / "example.png")
    prompts = [f"a {c} {scene.things[0].shape}" for c in COLOURS]
    ranked = classify_one(model, preprocess, tokenizer, image, prompts)
    truth = f"a {scene.things[0].colour} {scene.things[0].shape}"
    reload_line = (f"`open_clip.create_model_and_transforms('{MODEL_NAME}', pretrained='{checkpoint}')` "
                   f"classified an unseen-combination image of **{truth}** (example.png) as "
                   f"**{ranked[0][0]}** (p={ranked[0][1]:.2f}).")
    report = write_report(out, {**settings, "model": json.dumps(MODEL_CFG)}, results, retrieval, losses,
                          timings, reload_line, sections=report_section(stage))
    (out / "metrics.json").write_text(json.dumps({
        "zero_shot": {f"{task}/{'held_out' if held else 'seen'}": r.accuracy for (task, held), r in results.items()},
        "retrieval": retrieval, "wise_ft": stage["results"], "timings": timings}, indent=2))
    print(f"\nreport: {report}")
    print(reload_line.replace("**", "").replace("`", ""))
    for prompt, prob in ranked:
        print(f"  {prob:6.3f}  {prompt}")
    return 0


def _plot_examples(model, preprocess, tokenizer, out: Path, seed: int) -> None:
    """Top-4 images for a few text queries, from a fresh pool of scenes."""
    import torch

    from .report import plot_retrieved

    rng = np.random.default_rng(seed + 4242)
    scenes = [sample_scene(rng, held_out=bool(i % 2)) for i in range(200)]
    images = [render(rng, s, IMAGE_SIZE) for s in scenes]
    queries = [f"a {c} {s}" for c, s in (("red", "triangle"), ("blue", "square"))] + [
        "two purple squares", "a yellow circle above a red square"]
    with torch.no_grad():
        image_feats = torch.cat([model.encode_image(torch.stack([preprocess(im) for im in images[i:i + 100]]),
                                                    normalize=True) for i in range(0, len(images), 100)])
        text_feats = model.encode_text(tokenizer(queries), normalize=True)
    top = (text_feats @ image_feats.T).topk(4, dim=1).indices
    plot_retrieved(queries, [[images[j] for j in row.tolist()] for row in top], out / "retrieved.png")


if __name__ == "__main__":
    raise SystemExit(main())
