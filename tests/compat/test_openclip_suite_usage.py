"""Usage patterns of OpenCLIP 3.3's own offline test suite (unit, regression-helper and data tests),
written here from their documented behaviour: the calls they make must work on our modules."""

import random

import pytest
import torch

import open_clip
from open_clip_train.data import get_dataset_size


@pytest.mark.parametrize(
    ("shards", "expected"),
    [
        ("/p/shard.tar", 1),
        ("/p/shard_{000..000}.tar", 1),
        ("/p/shard_{000..009}.tar", 10),
        ("/p/shard_{000..009}_{000..009}.tar", 100),
        ("/p/shard.tar::/p/other_{000..009}.tar", 11),
        ("/p/shard_{000..009}.tar::/p/other_{000..009}.tar", 20),
        (["/p/shard.tar"], 1),
        (["/p/shard.tar", "/p/other.tar"], 2),
    ],
)
def test_shard_count_of_brace_and_double_colon_specs(shards, expected):
    assert get_dataset_size(shards)[1] == expected


def test_hf_poolers_take_a_bool_mask():
    transformers = pytest.importorskip("transformers")
    from open_clip.hf_model import _POOLERS

    batch, length, dim = 2, 10, 5
    hidden = torch.arange(length).repeat(batch).reshape(batch, length)[..., None] * torch.linspace(0.2, 1.0, dim)
    mask = torch.ones(batch, length, dtype=torch.bool)
    mask[:, 6:] = False
    output = transformers.modeling_outputs.BaseModelOutput(hidden)
    pooled = {name: cls()(output, mask) for name, cls in _POOLERS.items()}
    assert all(p.shape == (batch, dim) for p in pooled.values())
    torch.testing.assert_close(pooled["mean_pooler"], hidden[:, :6].mean(1))
    torch.testing.assert_close(pooled["max_pooler"], hidden[:, 5])  # padding excluded
    torch.testing.assert_close(pooled["cls_pooler"], hidden[:, 0])  # no HF pooler output here
    long_mask = {name: cls()(output, mask.long()) for name, cls in _POOLERS.items()}
    for name, value in long_mask.items():
        torch.testing.assert_close(value, pooled[name])


def test_random_text_from_the_tokenizer_vocabulary():
    """3.3's regression helpers build random captions from `SimpleTokenizer().decoder`."""
    tokenizer = open_clip.tokenizer.SimpleTokenizer()
    words = [w.replace("</w>", " ") for i, w in tokenizer.decoder.items() if i not in tokenizer.all_special_ids]
    rng = random.Random(0)
    texts = ["".join(rng.choices(words, k=75)) for _ in range(3)]
    tokens = open_clip.get_tokenizer("ViT-B-32")(texts)
    assert tokens.shape == (3, 77) and (tokens[:, 0] == tokenizer.sot_token_id).all()


def test_output_dict_toggle_on_a_built_model():
    """3.3's regression test flips `model.output_dict` on a built model and back to None."""
    model = open_clip.create_model("RN50", pretrained=None).eval()
    image = torch.randn(1, 3, 224, 224)
    text = open_clip.tokenize(["a dog"])
    with torch.no_grad():
        as_tuple = model(image, text)
        model.output_dict = True
        as_dict = model(image, text)
        model.output_dict = None
        again = model(image, text)
    assert isinstance(as_tuple, tuple) and isinstance(again, tuple)
    assert torch.equal(as_dict["image_features"], as_tuple[0])
    assert torch.equal(as_dict["text_features"], as_tuple[1])
    assert torch.equal(as_dict["logit_scale"], as_tuple[2])


@pytest.fixture
def deterministic_algorithms():
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=False)
    yield
    torch.use_deterministic_algorithms(before)


@pytest.mark.parametrize("name", ["ViT-B-32", "RN50"])
def test_inference_under_deterministic_algorithms(name, deterministic_algorithms):
    """3.3's regression tests seed everything and turn on `torch.use_deterministic_algorithms`."""
    model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=None)
    model.eval()
    from PIL import Image

    image = preprocess(Image.new("RGB", (250, 200), (30, 60, 90))).unsqueeze(0)
    text = open_clip.get_tokenizer(name)(["a diagram", "a dog", ""])
    with torch.no_grad():
        assert model.encode_image(image).shape[0] == 1
        assert model.encode_text(text).shape[0] == 3
