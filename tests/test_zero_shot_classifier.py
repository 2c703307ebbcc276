"""Zero-shot classifier builders and ImageNet metadata."""

import json

import numpy as np
import pytest
import torch

from open_clip.zero_shot_classifier import batched, build_zero_shot_classifier, build_zero_shot_classifier_legacy
from open_clip.zero_shot_metadata import (
    IMAGENET_CLASSNAMES,
    OPENAI_IMAGENET_TEMPLATES,
    SIMPLE_IMAGENET_TEMPLATES,
)

SOT, EOT = 49406, 49407


@pytest.fixture(scope="module")
def golden(request):
    """The 3.3 classifier for the vit_tok architecture (see tests/fixtures/README.md)."""
    from safetensors.torch import load_file

    from open_clip.model import CLIP
    from open_clip.tokenizer import tokenize

    fixtures = request.config.rootpath / "tests" / "fixtures"
    meta = json.loads((fixtures / "zero_shot.json").read_text())
    model = CLIP(**meta["model_config"])
    model.load_state_dict(load_file(fixtures / "zero_shot_weights.safetensors"))
    model.eval()

    def tokenizer(texts):
        # The fixture's id folding into a 1000-token vocabulary: specials to 998/999, others mod 997.
        ids = tokenize(texts, context_length=20)
        folded = torch.where(ids >= 998, ids % 997 + 1, ids)
        return torch.where(ids == SOT, 998, torch.where(ids == EOT, 999, folded))

    expected = torch.from_numpy(np.load(fixtures / "zero_shot.npz")["classifier"])
    return model, tokenizer, meta["classnames"], meta["templates"], expected


@pytest.mark.parametrize("per_batch", [3, 1, 10, None])
def test_golden_classifier(golden, per_batch):
    model, tokenizer, classnames, templates, expected = golden
    weights = build_zero_shot_classifier(model, tokenizer, classnames, templates, num_classes_per_batch=per_batch)
    assert weights.shape == (32, 8)
    torch.testing.assert_close(weights, expected, atol=1e-5, rtol=1e-4)


def test_golden_legacy_and_callable_templates(golden):
    model, tokenizer, classnames, templates, expected = golden
    legacy = build_zero_shot_classifier_legacy(model, tokenizer, classnames, templates)
    torch.testing.assert_close(legacy, expected, atol=1e-5, rtol=1e-4)
    callables = [t.format for t in templates]
    weights = build_zero_shot_classifier(model, tokenizer, classnames, callables, num_classes_per_batch=3)
    assert torch.equal(weights, build_zero_shot_classifier(model, tokenizer, classnames, templates, 3))


class FakeModel:
    """encode_text maps each token row to a fixed pseudo-random vector; records its calls."""

    def __init__(self, dim=5):
        self.dim, self.calls = dim, []

    def encode_text(self, tokens, normalize=False):
        self.calls.append(tokens.shape[0])
        g = torch.Generator().manual_seed(0)
        table = torch.randn(1000, self.dim, generator=g, dtype=torch.float64)
        out = table[tokens].sum(dim=1)  # (N, D)
        return out / out.norm(dim=-1, keepdim=True) if normalize else out


def fake_tokenizer(texts):
    # Deterministic: character codes mod 1000, padded to 24.
    rows = [[ord(ch) % 1000 for ch in text[:24]] + [0] * (24 - len(text[:24])) for text in texts]
    return torch.tensor(rows)


def naive_classifier(model, classnames, templates):
    """Per class: normalise each prompt embedding, average, normalise; stack as columns."""
    columns = []
    for name in classnames:
        vectors = []
        for template in templates:
            e = model.encode_text(fake_tokenizer([template.format(name)]))[0]
            vectors.append(e / e.norm())
        mean = sum(vectors) / len(vectors)
        columns.append(mean / mean.norm())
    return torch.stack(columns, dim=1)


def test_fake_model_batching_and_order():
    names = ["cat", "dog", "cup of tea", "owl", "x"]
    templates = ["a {}.", "the {} here", "{}!"]
    model = FakeModel()
    weights = build_zero_shot_classifier(model, fake_tokenizer, names, templates, num_classes_per_batch=2)
    assert model.calls == [6, 6, 3]  # class batches of 2, 2, 1, three prompts each
    expected = naive_classifier(FakeModel(), names, templates)
    torch.testing.assert_close(weights, expected)
    torch.testing.assert_close(weights.norm(dim=0), torch.ones(len(names), dtype=torch.float64))
    legacy_model = FakeModel()
    legacy = build_zero_shot_classifier_legacy(legacy_model, fake_tokenizer, names, templates)
    assert legacy_model.calls == [3] * len(names)
    torch.testing.assert_close(legacy, expected)


def test_first_template_decides_format():
    # 3.3: only templates[0] is inspected; callables are called, strings formatted.
    model = FakeModel()
    names = ["cat", "dog"]
    with_callables = build_zero_shot_classifier(model, fake_tokenizer, names, [lambda c: f"a {c}.", "x{}".format])
    with_strings = build_zero_shot_classifier(model, fake_tokenizer, names, ["a {}.", "x{}"])
    assert torch.equal(with_callables, with_strings)


def test_progress_bar(capsys):
    model = FakeModel()
    build_zero_shot_classifier(model, fake_tokenizer, ["a", "b", "c"], ["{}"], num_classes_per_batch=2, use_tqdm=True)
    build_zero_shot_classifier_legacy(model, fake_tokenizer, ["a", "b"], ["{}"], use_tqdm=True)
    err = capsys.readouterr().err
    assert "4/4" in err  # as 3.3: total = 2 class batches, unit_scale = 2 classes per batch
    assert "2/2" in err  # legacy: one step per class


def test_bad_inputs():
    model = FakeModel()
    with pytest.raises(ValueError, match="classnames"):
        build_zero_shot_classifier(model, fake_tokenizer, [], ["{}"])
    with pytest.raises(ValueError, match="templates"):
        build_zero_shot_classifier(model, fake_tokenizer, ["cat"], [])
    with pytest.raises(ValueError, match="templates"):
        build_zero_shot_classifier_legacy(model, fake_tokenizer, ["cat"], ())
    with pytest.raises(TypeError, match="classnames"):
        build_zero_shot_classifier(model, fake_tokenizer, (n for n in ["cat"]), ["{}"])
    with pytest.raises(TypeError, match="classnames"):
        build_zero_shot_classifier(model, fake_tokenizer, "cat", ["{}"])


def test_batched():
    assert list(batched(range(5), 2)) == [[0, 1], [2, 3], [4]]
    assert list(batched(range(3), None)) == [[0, 1, 2]]
    assert list(batched([], 3)) == []


def test_metadata_matches_reference(request):
    ref = json.loads((request.config.rootpath / "tests/fixtures/reference/zero_shot_metadata.json").read_text())
    assert list(IMAGENET_CLASSNAMES) == ref["IMAGENET_CLASSNAMES"]
    assert [t("{}") for t in OPENAI_IMAGENET_TEMPLATES] == ref["OPENAI_IMAGENET_TEMPLATES"]
    assert [t("{}") for t in SIMPLE_IMAGENET_TEMPLATES] == ref["SIMPLE_IMAGENET_TEMPLATES"]
    assert (len(IMAGENET_CLASSNAMES), len(OPENAI_IMAGENET_TEMPLATES), len(SIMPLE_IMAGENET_TEMPLATES)) == (1000, 80, 7)
    assert len(set(IMAGENET_CLASSNAMES)) == 998
    assert IMAGENET_CLASSNAMES[657] == IMAGENET_CLASSNAMES[744] == "missile"
    assert IMAGENET_CLASSNAMES[836] == IMAGENET_CLASSNAMES[837] == "sunglasses"
    assert OPENAI_IMAGENET_TEMPLATES[0]("cat") == "a bad photo of a cat."
    assert OPENAI_IMAGENET_TEMPLATES[-1]("cat") == "a tattoo of the cat."
    assert isinstance(OPENAI_IMAGENET_TEMPLATES, tuple) and all(callable(t) for t in OPENAI_IMAGENET_TEMPLATES)
