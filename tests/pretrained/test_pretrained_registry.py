"""The registry of published weights equals OpenCLIP 3.3's, record by record."""

import json
import pathlib

import pytest

from open_clip import pretrained
from open_clip.pretrained import (
    _PRETRAINED,
    _clean_tag,
    get_pretrained_cfg,
    get_pretrained_url,
    is_pretrained_cfg,
    list_pretrained,
    list_pretrained_models_by_tag,
    list_pretrained_tags_by_model,
    unknown_tag_message,
)

# The one deliberate difference from 3.3 (spec 01 §8.7 "Bug in 3.3 (fix)"): the e32 tag's Hub repo.
E32 = ("ViT-B-16-plus-240", "laion400m_e32")
E32_FIXED_HUB = "timm/vit_base_patch16_plus_clip_240.laion400m_e32/"


@pytest.fixture(scope="module")
def reference():
    with open(pathlib.Path(__file__).parents[1] / "fixtures" / "reference" / "pretrained.json") as f:
        return json.load(f)


def _as_json(record):
    return json.loads(json.dumps(record))  # tuples -> lists, as in the reference file


def test_every_model_tag_and_field_matches_reference(reference):
    assert set(_PRETRAINED) == set(reference)
    for arch, tags in reference.items():
        assert set(_PRETRAINED[arch]) == set(tags), arch
        for tag, expected in tags.items():
            got = _as_json(_PRETRAINED[arch][tag])
            if (arch, tag) in (E32, (E32[0] + "-quickgelu", E32[1])):
                assert expected["hf_hub"].endswith("laion400m_e31/")  # the 3.3 bug we fix
                expected = dict(expected, hf_hub=E32_FIXED_HUB)
            assert got == expected, (arch, tag)


def test_records_use_tuples_and_the_documented_field_set():
    for arch, tags in _PRETRAINED.items():
        for tag, rec in tags.items():
            assert isinstance(rec["mean"], tuple) and isinstance(rec["std"], tuple), (arch, tag)
            assert set(rec) - {"quick_gelu"} == {
                "url",
                "hf_hub",
                "mean",
                "std",
                "interpolation",
                "resize_mode",
            }
            assert rec["hf_hub"] or rec["url"], (arch, tag)


def test_counts_from_spec():
    pairs = list_pretrained()
    assert len(pairs) == 196
    assert len(_PRETRAINED) == 115
    assert len({tag for _, tag in pairs}) == 77
    assert sum(rec.get("quick_gelu", False) for _, tags in _PRETRAINED.items() for rec in tags.values()) == 54
    assert len(list_pretrained_tags_by_model("ViT-B-32")) == 22
    assert len(list_pretrained_tags_by_model("ViT-B-16")) == 15
    assert len(list_pretrained_tags_by_model("ViT-L-14")) == 12
    assert len(list_pretrained_models_by_tag("webli")) == 26


def test_quickgelu_archs_are_derived_and_listed_last(reference):
    archs = list(_PRETRAINED)
    derived = [a for a in archs if a.endswith("-quickgelu")]
    assert len(derived) == 13
    assert archs[-13:] == derived
    for arch in derived:
        base = arch[: -len("-quickgelu")]
        expected = [t for t in list_pretrained_tags_by_model(base) if _PRETRAINED[base][t].get("quick_gelu")]
        assert list_pretrained_tags_by_model(arch) == expected
        for tag in expected:
            assert _PRETRAINED[arch][tag] == _PRETRAINED[base][tag]
            assert _PRETRAINED[arch][tag] is not _PRETRAINED[base][tag]  # deep copies


def test_openai_archs_in_verified_order():
    base = [
        "RN50",
        "RN101",
        "RN50x4",
        "RN50x16",
        "RN50x64",
        "ViT-B-32",
        "ViT-B-16",
        "ViT-L-14",
        "ViT-L-14-336",
    ]
    assert list_pretrained_models_by_tag("openai") == base + [b + "-quickgelu" for b in base]
    assert list_pretrained_models_by_tag("OpenAI") == list_pretrained_models_by_tag("openai")


def test_list_pretrained_forms():
    pairs = list_pretrained()
    strings = list_pretrained(as_str=True)
    assert strings == [f"{a}:{t}" for a, t in pairs]
    assert pairs[0] == ("RN50", "openai")
    assert all(isinstance(p, tuple) for p in pairs)


def test_tag_normalisation_and_lookups():
    assert _clean_tag("LAION2B-E16") == "laion2b_e16"
    rec = get_pretrained_cfg("ViT-B-32", "LAION2B-E16")
    assert rec is _PRETRAINED["ViT-B-32"]["laion2b_e16"]  # the live record, not a copy
    assert is_pretrained_cfg("ViT-B-32", "Laion2b-E16")
    assert not is_pretrained_cfg("ViT-B-32", "nope")
    assert not is_pretrained_cfg("no-such-arch", "openai")
    assert get_pretrained_cfg("ViT-B/32", "openai") == {}  # arch names are exact
    assert get_pretrained_cfg("vit-b-32", "openai") == {}
    assert list_pretrained_tags_by_model("no-such-arch") == []
    assert get_pretrained_url("ViT-B-32", "openai").endswith("/ViT-B-32.pt")
    assert get_pretrained_url("ViT-B-32", "laion2b_s34b_b79k") == ""
    assert get_pretrained_url("no-such-arch", "openai") == ""


def test_preprocessing_families():
    siglip = get_pretrained_cfg("ViT-B-16-SigLIP", "webli")
    assert (siglip["mean"], siglip["interpolation"], siglip["resize_mode"]) == (
        (0.5,) * 3,
        "bicubic",
        "squash",
    )
    clipa = get_pretrained_cfg("ViT-L-14-CLIPA", "datacomp1b")
    assert (clipa["mean"], clipa["interpolation"]) == ((0.485, 0.456, 0.406), "bilinear")
    assert get_pretrained_cfg("ViT-L-14", "laion2b_s32b_b82k")["mean"] == (0.5, 0.5, 0.5)
    assert get_pretrained_cfg("ViT-H-14", "dfn5b")["resize_mode"] == "squash"


def test_unknown_tag_message_lists_known_tags():
    msg = unknown_tag_message("RN101", "nope")
    assert "'nope'" in msg and "openai, yfcc15m" in msg
    assert "none" in unknown_tag_message("no-such-arch", "x")


def test_download_pretrained_dispatch(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(
        pretrained,
        "download_pretrained_from_url",
        lambda url, cache_dir=None: calls.append(("url", url, cache_dir)) or "u",
    )
    monkeypatch.setattr(
        pretrained,
        "download_pretrained_from_hf",
        lambda mid, filename=None, cache_dir=None: calls.append(("hf", mid, filename, cache_dir)) or "h",
    )
    assert pretrained.download_pretrained({}) == ""
    assert pretrained.download_pretrained({"file": "/x.pt", "url": "http://a/b.pt"}) == "/x.pt"
    rec = get_pretrained_cfg("RN50", "openai")
    assert pretrained.download_pretrained(rec, cache_dir="c") == "h"
    assert calls[-1] == ("hf", "timm/resnet50_clip.openai", None, "c")
    assert pretrained.download_pretrained(rec, prefer_hf_hub=False) == "u"
    assert calls[-1] == ("url", rec["url"], None)
    vitamin = get_pretrained_cfg("ViTamin-S", "datacomp1b")
    pretrained.download_pretrained(vitamin)
    assert calls[-1] == ("hf", "jienengchen/ViTamin-S", "pytorch_model.bin", None)
    monkeypatch.setattr(pretrained, "_has_hf_hub", False)
    assert pretrained.download_pretrained(rec) == "u"
    with pytest.raises(RuntimeError, match="pip install huggingface_hub"):
        pretrained.download_pretrained({"url": "", "hf_hub": "org/repo/"})
