"""Zero-shot and retrieval evaluation of the demo model, through the public `open_clip` API only."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from .scenes import COLOURS, RELATIONS, SHAPES, Scene, caption, count_prompt, relation_prompt, render, sample_scene

TASKS = ("colour", "shape", "count", "relation")
TASK_SCENE_KIND = {"colour": "single", "shape": "single", "count": "count", "relation": "relation"}


@dataclass
class TaskResult:
    accuracy: float
    labels: list[int] = field(default_factory=list)
    predictions: list[int] = field(default_factory=list)
    class_names: list[str] = field(default_factory=list)


def _prompts_and_label(task: str, scene: Scene) -> tuple[list[str], int, list[str]]:
    thing = scene.things[0]
    if task == "colour":
        names = list(COLOURS)
        return [f"a {c} {thing.shape}" for c in names], names.index(thing.colour), names
    if task == "shape":
        names = list(SHAPES)
        return [f"a {thing.colour} {s}" for s in names], names.index(thing.shape), names
    if task == "count":
        names = ["one", "two", "three"]
        return [count_prompt(thing.colour, thing.shape, n) for n in (1, 2, 3)], len(scene.things) - 1, names
    names = list(RELATIONS)
    return [relation_prompt(scene, r) for r in names], names.index(scene.relation), names


class Embedder:
    """Batched, cached image and text embeddings for one model."""

    def __init__(self, model, preprocess, tokenizer, batch_size: int = 256):
        self.model, self.preprocess, self.tokenizer, self.batch_size = model, preprocess, tokenizer, batch_size
        self._text_cache: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def images(self, pil_images) -> torch.Tensor:
        out = []
        for start in range(0, len(pil_images), self.batch_size):
            batch = torch.stack([self.preprocess(im) for im in pil_images[start:start + self.batch_size]])
            out.append(self.model.encode_image(batch, normalize=True))
        return torch.cat(out)

    @torch.no_grad()
    def texts(self, texts: list[str]) -> torch.Tensor:
        missing = sorted({t for t in texts if t not in self._text_cache})
        for start in range(0, len(missing), self.batch_size):
            chunk = missing[start:start + self.batch_size]
            feats = self.model.encode_text(self.tokenizer(chunk), normalize=True)
            self._text_cache.update(zip(chunk, feats))
        return torch.stack([self._text_cache[t] for t in texts])


def zero_shot(embedder: Embedder, task: str, held_out: bool, num_images: int, seed: int,
              image_size: int) -> TaskResult:
    """Accuracy of picking the right prompt among the task's alternatives for fresh scenes."""
    rng = np.random.default_rng(seed)
    scenes = [sample_scene(rng, held_out, TASK_SCENE_KIND[task]) for _ in range(num_images)]
    images = embedder.images([render(rng, s, image_size) for s in scenes])
    result = TaskResult(accuracy=0.0)
    for scene, image in zip(scenes, images):
        prompts, label, names = _prompts_and_label(task, scene)
        scores = embedder.texts(prompts) @ image
        result.labels.append(label)
        result.predictions.append(int(scores.argmax()))
        result.class_names = names
    result.accuracy = float(np.mean(np.array(result.labels) == np.array(result.predictions)))
    return result


def retrieval(embedder: Embedder, num_pairs: int, seed: int, image_size: int) -> dict[str, float]:
    """Image->text and text->image recall@{1,5,10} on fresh scenes with one caption each."""
    rng = np.random.default_rng(seed)
    scenes = [sample_scene(rng, held_out=False) for _ in range(num_pairs)]
    images = embedder.images([render(rng, s, image_size) for s in scenes])
    texts = embedder.texts([caption(rng, s) for s in scenes])
    similarity = images @ texts.T  # (N, N); pair i is the match
    metrics = {}
    for direction, sims in (("image_to_text", similarity), ("text_to_image", similarity.T)):
        # rank of the true match = number of candidates scoring strictly higher
        ranks = (sims > sims.diag().unsqueeze(1)).sum(dim=1)
        for k in (1, 5, 10):
            metrics[f"{direction}_R@{k}"] = float((ranks < k).float().mean())
    return metrics


def evaluate_all(model, preprocess, tokenizer, num_images: int, seed: int, image_size: int):
    """Every zero-shot task on seen and held-out combinations, plus retrieval."""
    model.eval()
    embedder = Embedder(model, preprocess, tokenizer)
    results = {}
    jobs = [(task, held) for held in (False, True) for task in TASKS]
    for i, (task, held) in enumerate(tqdm(jobs, desc="zero-shot eval", leave=False)):
        results[(task, held)] = zero_shot(embedder, task, held, num_images, seed + 1000 * i, image_size)
    return results, retrieval(embedder, num_images, seed + 99_999, image_size)


def classify_one(model, preprocess, tokenizer, image, prompts: list[str]) -> list[tuple[str, float]]:
    """Softmax over prompts for one PIL image, as a user would write it."""
    with torch.no_grad():
        image_features = model.encode_image(preprocess(image).unsqueeze(0), normalize=True)
        text_features = model.encode_text(tokenizer(prompts), normalize=True)
        probs = F.softmax(model.logit_scale.exp() * image_features @ text_features.T, dim=-1)[0]
    return sorted(zip(prompts, probs.tolist()), key=lambda p: -p[1])
