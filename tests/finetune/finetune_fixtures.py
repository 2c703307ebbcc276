"""Helpers of the fine-tuning tests: the tiny CLIP config, solid-colour class folders, common flags."""

import numpy as np
from PIL import Image

TINY = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
COLOURS = {"red": (220, 30, 30), "green": (30, 190, 40), "blue": (30, 40, 220), "yellow": (230, 215, 30)}
# Folder names differ from the class names on purpose: --classnames maps one to the other.
FOLDERS = {"c0_red": "red", "c1_green": "green", "c2_blue": "blue", "c3_yellow": "yellow"}


def write_colour_folders(root, per_class: int, seed: int, shade: float = 1.0) -> str:
    """``root/<folder>/<i>.png``: 32x32 noisy solid-colour images (``shade`` < 1 darkens them: a shifted set)."""
    rng = np.random.default_rng(seed)
    for folder, colour in FOLDERS.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            noise = rng.integers(-35, 36, (32, 32, 3))
            pixels = np.clip(np.array(COLOURS[colour]) * shade + noise, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / folder / f"{i}.png")
    return str(root)


def base_args(data, model, output, *extra):
    """Fine-tuning flags for a quick CPU run on the colour folders."""
    return ["--model", model["name"], "--train-data", data["train"],
            "--val-data", data["val"], "--ood-data", data["ood"], "--classnames", data["classnames"],
            "--templates", data["templates"], "--batch-size", "16", "--workers", "0", "--device", "cpu",
            "--precision", "fp32", "--output", str(output), "--log-every-n-steps", "100", *extra]
