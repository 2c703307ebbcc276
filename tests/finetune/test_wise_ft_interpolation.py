"""WiSE-FT interpolation: exact mixes, integer tensors from the fine-tuned side, errors, and the command line."""

import pytest
import torch
from safetensors.torch import load_file

from open_clip_train.errors import ConfigError
from open_clip_train.wise_ft import alpha_filename, check_alphas, interpolate_state_dicts, run


def _pair():
    g = torch.Generator().manual_seed(0)
    a = {"w": torch.randn(64, 33, generator=g), "half": torch.randn(50, generator=g).half(),
         "bf": torch.randn(50, generator=g).bfloat16(), "same": torch.randn(7, generator=g),
         "steps": torch.tensor(3), "ids": torch.arange(5)}
    b = {"w": torch.randn(64, 33, generator=g), "half": torch.randn(50, generator=g).half(),
         "bf": torch.randn(50, generator=g).bfloat16(), "same": a["same"].clone(),
         "steps": torch.tensor(11), "ids": torch.arange(5) * 2}
    return a, b


@pytest.mark.parametrize("alpha", [0.0, 0.1, 0.25, 0.5, 1 / 3, 0.9, 1.0])
def test_every_floating_tensor_is_the_correctly_rounded_mix(alpha):
    a, b = _pair()
    out = interpolate_state_dicts(a, b, alpha)
    assert list(out) == list(b)
    for key in ("w", "half", "bf"):
        assert out[key].dtype == a[key].dtype
        # (1 - alpha) * A + alpha * B evaluated in float64 (exact to 2^-52), rounded once to the dtype
        want = ((1 - alpha) * a[key].double() + alpha * b[key].double()).to(a[key].dtype)
        assert torch.equal(out[key], want), key
    assert torch.equal(out["same"], a["same"])  # equal inputs stay bit-identical at every alpha
    assert torch.equal(out["steps"], b["steps"]) and torch.equal(out["ids"], b["ids"])  # non-float: from B


def test_endpoints_reproduce_inputs_bit_for_bit():
    a, b = _pair()
    a["w"][0, 0] = float("inf")  # even non-finite values survive at the endpoints
    for alpha, src in ((0.0, a), (1.0, b)):
        out = interpolate_state_dicts(a, b, alpha)
        for key in ("w", "half", "bf", "same"):
            assert torch.equal(out[key], src[key]), (alpha, key)


def test_mismatches_are_named():
    a, b = _pair()
    with pytest.raises(ValueError, match="different keys"):
        interpolate_state_dicts({k: v for k, v in a.items() if k != "w"}, b, 0.5)
    b["w"] = torch.zeros(3)
    with pytest.raises(ValueError, match="^w: "):
        interpolate_state_dicts(a, b, 0.5)


def test_alpha_parsing():
    assert check_alphas(["0", "0.5", "1"]) == [0.0, 0.5, 1.0]
    assert alpha_filename("0.50") == "wise_ft_alpha_0.50.safetensors"  # as given
    for bad in (["x"], ["nan"], ["0.5", "0.5"], []):
        with pytest.raises(ConfigError, match="--alphas"):
            check_alphas(bad)


def test_cli_single_and_sweep(tmp_path, tiny_clip):
    from open_clip.factory import create_model

    torch.manual_seed(1)
    finetuned = create_model(tiny_clip["registered"]).state_dict()
    ft_path = tmp_path / "ft.pt"
    torch.save(finetuned, ft_path)
    zeroshot = load_file(tiny_clip["checkpoint"])
    common = ["--model", tiny_clip["registered"], "--zeroshot", tiny_clip["checkpoint"], "--finetuned", str(ft_path)]

    out_pt = tmp_path / "mix.pt"
    assert run(common + ["--alpha", "0.3", "--output", str(out_pt)]) == [str(out_pt)]
    mixed = torch.load(out_pt, weights_only=True)
    assert set(mixed) == set(zeroshot)  # exactly the keys of the inputs
    assert torch.equal(mixed["visual.proj"], (0.7 * zeroshot["visual.proj"].double()
                                              + 0.3 * finetuned["visual.proj"].double()).float())

    paths = run(common + ["--alphas", "0", "1", "--output", str(tmp_path / "sweep")])
    assert [p.rsplit("/", 1)[1] for p in paths] == ["wise_ft_alpha_0.safetensors", "wise_ft_alpha_1.safetensors"]
    zero, one = load_file(paths[0]), load_file(paths[1])
    assert set(zero) == set(zeroshot)
    assert all(torch.equal(zero[k], zeroshot[k]) for k in zeroshot)
    assert all(torch.equal(one[k], finetuned[k]) for k in finetuned)
    # the sweep checkpoints load as pretrained weights
    create_model(tiny_clip["registered"], pretrained=paths[1], require_pretrained=True)


def test_cli_errors(tmp_path, tiny_clip):
    common = ["--model", tiny_clip["registered"], "--zeroshot", tiny_clip["checkpoint"],
              "--finetuned", tiny_clip["checkpoint"]]
    with pytest.raises(ConfigError, match="--output .*mix.bin: unknown weights format"):
        run(common + ["--alpha", "0.5", "--output", str(tmp_path / "mix.bin")])
    with pytest.raises(ConfigError, match="either --alpha"):
        run(common + ["--output", str(tmp_path / "x.pt")])
    with pytest.raises(ConfigError, match="--finetuned .*missing.pt"):
        run(common[:-1] + [str(tmp_path / "missing.pt"), "--alpha", "0.5", "--output", str(tmp_path / "x.pt")])
