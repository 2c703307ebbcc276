"""Procedural image-caption scenes for the demo: coloured shapes, counts and spatial relations.

A scene is drawn from a seeded numpy generator, so the same seed always gives the same dataset.
Some (colour, shape) pairs never appear in training; evaluating on them measures compositional
generalisation instead of memorisation.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image, ImageDraw

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 200, 30),
    "purple": (140, 50, 180),
}
SHAPES = ("circle", "square", "triangle", "diamond")
SIZES = ("small", "large")
COUNT_WORDS = ("one", "two", "three")
RELATIONS = ("to the left of", "to the right of", "above", "below")
# Held out of training everywhere; each colour and each shape still appears in other pairs.
HELD_OUT_PAIRS = frozenset({("red", "triangle"), ("green", "circle"), ("blue", "diamond"), ("yellow", "square")})
SCENE_KINDS = ("single", "count", "relation")
SCENE_KIND_WEIGHTS = (1 / 3, 1 / 3, 1 / 3)
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "diamond": "diamonds"}


@dataclasses.dataclass(frozen=True)
class Thing:
    colour: str
    shape: str
    size: str

    @property
    def pair(self) -> tuple[str, str]:
        return (self.colour, self.shape)


@dataclasses.dataclass(frozen=True)
class Scene:
    """What is in one picture; `relation` reads 'things[0] <relation> things[1]'."""

    kind: str
    things: tuple[Thing, ...]
    relation: str | None = None

    @property
    def held_out(self) -> bool:
        return any(t.pair in HELD_OUT_PAIRS for t in self.things)


def all_pairs(held_out: bool) -> list[tuple[str, str]]:
    return [(c, s) for c in COLOURS for s in SHAPES if ((c, s) in HELD_OUT_PAIRS) == held_out]


def sample_scene(rng: np.random.Generator, held_out: bool, kind: str | None = None) -> Scene:
    """A random scene whose (colour, shape) pairs are all seen (held_out=False) or include a held-out one."""
    kind = kind or SCENE_KINDS[rng.choice(len(SCENE_KINDS), p=SCENE_KIND_WEIGHTS)]
    pairs = all_pairs(held_out)
    first = pairs[rng.integers(len(pairs))]
    if kind == "single":
        size = SIZES[rng.integers(2)]
        return Scene(kind, (Thing(*first, size),))
    if kind == "count":
        n = int(rng.integers(1, 4))
        return Scene(kind, tuple(Thing(*first, "small") for _ in range(n)))
    # relation: the second object must differ from the first and must itself be a seen pair, so a
    # held-out scene holds exactly one unseen pair.
    others = [p for p in all_pairs(False) if p[0] != first[0] and p[1] != first[1]]
    second = others[rng.integers(len(others))]
    relation = RELATIONS[rng.integers(len(RELATIONS))]
    return Scene(kind, (Thing(*first, "small"), Thing(*second, "small")), relation)


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill) -> None:
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        h = r * 0.85
        draw.rectangle([cx - h, cy - h, cx + h, cy + h], fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r * 0.8), (cx + r, cy + r * 0.8)], fill=fill)
    elif shape == "diamond":
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def _jitter_colour(rng: np.random.Generator, rgb: tuple[int, int, int]) -> tuple[int, ...]:
    return tuple(int(np.clip(v + rng.integers(-25, 26), 0, 255)) for v in rgb)


def _positions(rng: np.random.Generator, scene: Scene, size: int) -> list[tuple[float, float, float]]:
    """Centres and radii that respect the scene's count/relation and keep shapes apart."""
    small, large = size * 0.15, size * 0.26
    if scene.kind == "single":
        r = large if scene.things[0].size == "large" else small
        lo, hi = r + 1, size - r - 1
        return [(rng.uniform(lo, hi), rng.uniform(lo, hi), r)]
    if scene.kind == "count":
        slots = [(x, y) for x in range(3) for y in range(3)]
        chosen = rng.permutation(len(slots))[: len(scene.things)]
        cell = size / 3
        return [
            ((slots[i][0] + 0.5) * cell + rng.uniform(-2, 2), (slots[i][1] + 0.5) * cell + rng.uniform(-2, 2), small)
            for i in chosen
        ]
    r = small * 1.2
    near, far = rng.uniform(r + 1, size * 0.35), rng.uniform(size * 0.65, size - r - 1)
    across = rng.uniform(r + 1, size - r - 1), rng.uniform(r + 1, size - r - 1)
    first_pos, second_pos = {
        "to the left of": ((near, across[0]), (far, across[1])),
        "to the right of": ((far, across[0]), (near, across[1])),
        "above": ((across[0], near), (across[1], far)),
        "below": ((across[0], far), (across[1], near)),
    }[scene.relation]
    return [(*first_pos, r), (*second_pos, r)]


def render(rng: np.random.Generator, scene: Scene, size: int = 48) -> Image.Image:
    """Draw the scene on a lightly tinted background."""
    background = tuple(int(v) for v in rng.integers(200, 256, size=3))
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    for thing, (cx, cy, r) in zip(scene.things, _positions(rng, scene, size)):
        _draw_shape(draw, thing.shape, cx, cy, r, _jitter_colour(rng, COLOURS[thing.colour]))
    return image


def _phrase(thing: Thing, with_size: bool) -> str:
    return f"{thing.size} {thing.colour} {thing.shape}" if with_size else f"{thing.colour} {thing.shape}"


def caption(rng: np.random.Generator, scene: Scene) -> str:
    """One of several natural phrasings of the scene."""
    a = scene.things[0]
    if scene.kind == "single":
        options = [
            f"a {_phrase(a, True)}",
            f"a {_phrase(a, False)}",
            f"a picture of a {_phrase(a, True)}",
            f"there is a {_phrase(a, False)} in the picture",
            f"one {_phrase(a, False)}",
            f"a {a.colour} {a.shape} on a plain background",
        ]
    elif scene.kind == "count":
        n = len(scene.things)
        noun = a.shape if n == 1 else PLURALS[a.shape]
        word = COUNT_WORDS[n - 1]
        options = [f"{word} {a.colour} {noun}", f"a picture of {word} {a.colour} {noun}",
                   f"{word} small {a.colour} {noun}"]
        if n == 1:
            options.append(f"a single {a.colour} {a.shape}")
        else:
            options.append(f"a group of {word} {a.colour} {noun}")
    else:
        b = scene.things[1]
        inverse = {"to the left of": "to the right of", "to the right of": "to the left of",
                   "above": "below", "below": "above"}[scene.relation]
        options = [
            f"a {_phrase(a, False)} {scene.relation} a {_phrase(b, False)}",
            f"a {_phrase(b, False)} {inverse} a {_phrase(a, False)}",
            f"the {_phrase(a, False)} is {scene.relation} the {_phrase(b, False)}",
        ]
    return options[rng.integers(len(options))]


def relation_prompt(scene: Scene, relation: str) -> str:
    a, b = scene.things
    return f"a {_phrase(a, False)} {relation} a {_phrase(b, False)}"


def count_prompt(colour: str, shape: str, n: int) -> str:
    return f"{COUNT_WORDS[n - 1]} {colour} {shape if n == 1 else PLURALS[shape]}"


def chance_levels() -> dict[str, float]:
    return {"colour": 1 / len(COLOURS), "shape": 1 / len(SHAPES), "count": 1 / len(COUNT_WORDS),
            "relation": 1 / len(RELATIONS)}

