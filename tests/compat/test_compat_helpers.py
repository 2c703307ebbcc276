"""The 3.3 names added for compatibility do what they did in 3.3 (they are not placeholders)."""

import subprocess
import sys

import pytest
import torch

import open_clip
from open_clip import coca_model, convert, pretrained
from open_clip.constants import IMAGENET_MEAN, INCEPTION_MEAN, OPENAI_DATASET_MEAN, OPENAI_DATASET_STD


def test_generation_types_map_each_type_to_its_warper():
    assert list(coca_model.GENERATION_TYPES) == ["top_k", "top_p", "beam_search"]
    scores = torch.tensor([[1.0, 4.0, 3.0, 2.0], [0.0, 0.0, 5.0, -1.0]])
    top_k = coca_model.GENERATION_TYPES["top_k"](2)
    inf = float("-inf")
    assert torch.equal(top_k(None, scores), torch.tensor([[inf, 4.0, 3.0, inf], [0.0, 0.0, 5.0, inf]]))
    # top_p: keep the smallest set of most likely tokens holding more than top_p of the mass
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    kept = coca_model.GENERATION_TYPES["top_p"](0.7)(None, probs.log())
    assert torch.isfinite(kept).tolist() == [[True, True, False, False]]
    nothing_kept = coca_model.TopPLogitsWarper(0.0, min_tokens_to_keep=2)(None, probs.log())
    assert torch.isfinite(nothing_kept).tolist() == [[True, True, False, False]]
    assert coca_model.GENERATION_TYPES["beam_search"] == "beam_search"
    with pytest.raises(ValueError):
        coca_model.TopKLogitsWarper(0)
    with pytest.raises(ValueError):
        coca_model.TopPLogitsWarper(1.5)


def test_generation_types_are_what_generate_accepts():
    from open_clip.models import generation

    assert tuple(coca_model.GENERATION_TYPES) == tuple(generation.GENERATION_TYPES)


def test_prepare_inputs_for_generation():
    ids = torch.tensor([[5, 6, 7], [8, 9, 10]])
    images = torch.zeros(2, 3, 4, 4)
    out = coca_model.prepare_inputs_for_generation(ids, images)
    assert out["text"] is ids and out["images"] is images
    assert out["past_key_values"] is None and out["position_ids"] is None and out["attention_mask"] is None
    mask = torch.tensor([[1, 1, 1], [0, 1, 1]])
    out = coca_model.prepare_inputs_for_generation(ids, images, past=["cache"], attention_mask=mask)
    assert out["text"].tolist() == [[7], [10]]
    assert out["position_ids"].tolist() == [[0, 1, 2], [1, 0, 1]]  # padding gets 1
    given = coca_model.prepare_inputs_for_generation(ids, images, attention_mask=mask, position_ids=mask)
    assert given["position_ids"] is None  # as in 3.3: explicit position ids are dropped


def test_token_to_tensor():
    assert coca_model._token_to_tensor(3).tolist() == [3]
    assert coca_model._token_to_tensor([3, 4]).tolist() == [3, 4]
    t = torch.tensor([1])
    assert coca_model._token_to_tensor(t) is t


def test_pretrained_record_builders_reproduce_the_registry():
    cases = [
        (pretrained._pcfg, "RN50", "openai", {"quick_gelu": True}),
        (pretrained._slpcfg, "ViT-B-16-SigLIP", "webli", {}),
        (pretrained._mccfg, "MobileCLIP-S2", "datacompdr", {}),
        (pretrained._mc2cfg, "MobileCLIP2-S3", "dfndr2b", {}),
        (pretrained._mc2cfg, "MobileCLIP2-L-14", "dfndr2b", {"interpolation": "bicubic"}),
        (pretrained._pecfg, "PE-Core-T-16-384", "meta", {}),
    ]
    for make, arch, tag, extra in cases:
        record = pretrained.get_pretrained_cfg(arch, tag)
        assert make(url=record["url"], hf_hub=record["hf_hub"], **extra) == record, (arch, tag)
    clipa = pretrained._apcfg(hf_hub="x/")
    assert (clipa["mean"], clipa["interpolation"], clipa["resize_mode"]) == (IMAGENET_MEAN, "bilinear", "squash")
    assert pretrained._slpcfg()["mean"] == INCEPTION_MEAN
    assert (pretrained.OPENAI_DATASET_MEAN, pretrained.OPENAI_DATASET_STD) == (OPENAI_DATASET_MEAN, OPENAI_DATASET_STD)


def test_pretrained_arch_tables_are_the_live_registry():
    assert pretrained._RN50 is pretrained._PRETRAINED["RN50"]
    assert pretrained._VITB32 is pretrained._PRETRAINED["ViT-B-32"]
    assert pretrained._coca_VITL14 is pretrained._PRETRAINED["coca_ViT-L-14"]
    quick = pretrained._PRETRAINED_quickgelu
    assert "RN50-quickgelu" in quick and all(a.endswith("-quickgelu") for a in quick)
    assert all(pretrained._PRETRAINED[a] is tags for a, tags in quick.items())


def test_unsupported_formats_say_what_and_what_instead(tmp_path):
    with pytest.raises(NotImplementedError) as e:
        convert.convert_mobile_clip_state_dict(torch.nn.Linear(1, 1), {})
    message = str(e.value)
    assert "original MobileCLIP checkpoint format" in message and "pretrained='datacompdr'" in message
    with pytest.raises(NotImplementedError) as e:
        convert.load_big_vision_weights(torch.nn.Linear(1, 1), tmp_path / "siglip.npz")
    message = str(e.value)
    assert "big_vision" in message and "siglip.npz" in message and "pretrained='webli'" in message
    with pytest.raises(NotImplementedError) as e:  # load_checkpoint routes .npz files there
        open_clip.load_checkpoint(torch.nn.Linear(1, 1), str(tmp_path / "w.npz"))
    assert "pretrained='webli'" in str(e.value)


def test_optional_package_attributes_read_none_when_missing():
    code = (
        "import sys\n"
        "sys.modules['timm'] = None\n"
        "sys.modules['horovod'] = None\n"
        "import open_clip.loss as loss, open_clip.timm_model as tm\n"
        "assert 'hvd' in dir(loss) and 'timm' in dir(tm)\n"
        "assert 'hvd' not in vars(loss)  # not imported until read\n"
        "assert loss.hvd is None and tm.timm is None\n"
        "assert vars(loss)['hvd'] is None  # cached as a plain global\n"
        "import open_clip.hf_model as hf\n"
        "assert hf.transformers is sys.modules['transformers']\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_training_app_exposes_3p3_main_names():
    from open_clip_train import checkpoint, main

    assert main.LATEST_CHECKPOINT_NAME == checkpoint.LATEST_CHECKPOINT_NAME == "epoch_latest.pt"
    assert main.natural_key("epoch_10.pt") > main.natural_key("epoch_9.pt")
    assert {"hvd", "wandb", "tensorboard"} <= set(dir(main))
    assert main.create_model_and_transforms is open_clip.create_model_and_transforms


def test_multimodal_transformer_builds_its_causal_mask():
    decoder = coca_model.MultimodalTransformer(width=32, layers=1, heads=2, context_length=5, output_dim=10)
    mask = decoder.build_attention_mask()  # 3.3: (ctx, ctx) float, 0 on and below the diagonal, -inf above
    assert mask.shape == (5, 5) and mask.dtype == torch.float32
    assert torch.equal(mask, torch.full((5, 5), float("-inf")).triu(1))
