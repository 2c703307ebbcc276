"""Publishing models to the Hugging Face Hub in the layout ``hf-hub:`` loading reads back.

Owns ``save_config_for_hf`` (``open_clip_config.json``), ``save_for_hf`` (weights as safetensors
and/or a torch pickle, tokenizer files, config), ``generate_readme`` (the model card),
``push_to_hf_hub``, ``push_pretrained_to_hf_hub`` and the ``python -m open_clip.push_to_hf_hub``
command line.

Note: ``open_clip.push_to_hf_hub`` at package level is the *function* of that name (as in 3.3);
this module is reachable as ``sys.modules['open_clip.push_to_hf_hub']`` or by importing names
from it.
"""

import argparse
import json
import logging
import tempfile
from pathlib import Path
from typing import Any, Optional, Union

import torch

from .constants import HF_CONFIG_NAME, HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME
from .factory import create_model_from_pretrained, get_model_config, get_tokenizer
from .tokenizer import HFTokenizer, SigLipTokenizer

try:
    from huggingface_hub import create_repo, file_exists, upload_folder

    _has_hf_hub = True
except ImportError:
    create_repo = file_exists = upload_folder = None
    _has_hf_hub = False

try:
    import safetensors.torch

    _has_safetensors = True
except ImportError:
    _has_safetensors = False

_DEFAULT_HF_TOKENIZER = "openai/clip-vit-large-patch14"


def save_config_for_hf(model: torch.nn.Module, config_path: Union[str, Path], model_config: Optional[dict]) -> None:
    """Write ``open_clip_config.json``: the model config plus the preprocessing the model expects.

    ``preprocess_cfg`` holds ``mean``/``std`` from ``model.visual.image_mean/std`` and, when the
    model's preprocess cfg has them, ``interpolation`` and ``resize_mode``.
    """
    visual = model.visual
    preprocess_cfg = {"mean": list(visual.image_mean), "std": list(visual.image_std)}
    other = getattr(visual, "preprocess_cfg", {}) or {}
    for key in ("interpolation", "resize_mode"):
        if key in other:
            preprocess_cfg[key] = other[key]
    hf_config = {"model_cfg": model_config, "preprocess_cfg": preprocess_cfg}
    with Path(config_path).open("w") as f:
        json.dump(hf_config, f, indent=2)


def _weight_formats(safe_serialization: Union[bool, str]) -> tuple[bool, bool]:
    """(write safetensors, write torch pickle) for 3.3's ``safe_serialization`` values."""
    safe = safe_serialization is True or safe_serialization == "both"
    pickle = safe_serialization is False or safe_serialization == "both"
    return safe, pickle


def save_for_hf(
    model: torch.nn.Module,
    tokenizer: Any,
    model_config: Optional[dict],
    save_directory: Union[str, Path],
    safe_serialization: Union[bool, str] = "both",
    skip_weights: bool = False,
) -> None:
    """Write a Hub-ready folder: weights, tokenizer files and ``open_clip_config.json``.

    Args:
        safe_serialization: True -> ``open_clip_model.safetensors``; False ->
            ``open_clip_pytorch_model.bin``; 'both' -> both files; anything else -> no weights.
        skip_weights: write only the tokenizer and config.
    A tokenizer without ``save_pretrained`` (e.g. the built-in BPE one) or None is skipped.
    """
    save_directory = Path(save_directory)
    save_directory.mkdir(exist_ok=True, parents=True)
    if not skip_weights:
        state_dict = model.state_dict()
        safe, pickle = _weight_formats(safe_serialization)
        if safe:
            if not _has_safetensors:
                raise RuntimeError("safe_serialization needs the `safetensors` package: pip install safetensors")
            tensors = {k: v.detach().contiguous() for k, v in state_dict.items()}
            safetensors.torch.save_file(tensors, str(save_directory / HF_SAFE_WEIGHTS_NAME))
        if pickle:
            torch.save(state_dict, save_directory / HF_WEIGHTS_NAME)
    if tokenizer is not None and hasattr(tokenizer, "save_pretrained"):
        tokenizer.save_pretrained(save_directory)
    elif tokenizer is not None:
        logging.warning("Tokenizer %s has no save_pretrained(); no tokenizer files written.", type(tokenizer).__name__)
    save_config_for_hf(model, save_directory / HF_CONFIG_NAME, model_config=model_config)


def _details_lines(details: dict) -> list[str]:
    lines = []
    for key, value in details.items():
        if isinstance(value, (list, tuple)):
            lines.append(f"- **{key}:**")
            lines.extend(f"  - {item}" for item in value)
        elif isinstance(value, dict):
            lines.append(f"- **{key}:**")
            lines.extend(f"  - {k}: {v}" for k, v in value.items())
        else:
            lines.append(f"- **{key}:** {value}")
    return lines


def generate_readme(model_card: dict, model_name: str) -> str:
    """Model card markdown (front matter + sections) from a ``model_card`` dict.

    Recognised keys: ``tags`` (default ``('clip',)``), ``pipeline_tag`` (default
    ``'zero-shot-image-classification'``), ``license`` (default ``'mit'``), ``description``,
    ``details`` (its ``Dataset`` entry also goes to the front matter), ``usage``, ``comparison``,
    ``citation`` (a string or a list). ``tags`` and ``pipeline_tag`` are popped from the dict.
    """
    tags = model_card.pop("tags", ("clip",))
    pipeline_tag = model_card.pop("pipeline_tag", "zero-shot-image-classification")
    details = model_card.get("details", None)
    front = ["---"]
    if tags:
        front += ["tags:"] + [f"- {t}" for t in tags]
    front += [
        "library_name: open_clip",
        f"pipeline_tag: {pipeline_tag}",
        f"license: {model_card.get('license', 'mit')}",
    ]
    if details and "Dataset" in details:
        front += ["datasets:", f"- {details['Dataset'].lower()}"]
    front += ["---", f"# Model card for {model_name}"]

    sections = []
    if "description" in model_card:
        sections.append(str(model_card["description"]))
    if details is not None:
        sections.append("\n".join(["## Model Details"] + _details_lines(details)))
    if "usage" in model_card:
        sections.append(f"## Model Usage\n{model_card['usage']}")
    if "comparison" in model_card:
        sections.append(f"## Model Comparison\n{model_card['comparison']}")
    if "citation" in model_card:
        citations = model_card["citation"]
        citations = citations if isinstance(citations, (list, tuple)) else [citations]
        sections.append("\n".join(["## Citation"] + [f"```bibtex\n{c}\n```" for c in citations]))
    return "\n".join(front) + "\n" + "".join(f"\n{s}\n" for s in sections)


def _hub_tokenizer(tokenizer: Any) -> Any:
    """Hub repos carry HF tokenizer files; the built-in BPE is published as OpenAI's HF tokenizer."""
    if isinstance(tokenizer, (HFTokenizer, SigLipTokenizer)):
        return tokenizer
    return HFTokenizer(_DEFAULT_HF_TOKENIZER)


def push_to_hf_hub(
    model: torch.nn.Module,
    tokenizer: Any,
    model_config: Optional[dict],
    repo_id: str,
    commit_message: str = "Add model",
    token: Optional[str] = None,
    revision: Optional[str] = None,
    private: bool = False,
    create_pr: bool = False,
    model_card: Optional[dict] = None,
    safe_serialization: Union[bool, str] = "both",
):
    """Create (or reuse) Hub repo ``repo_id`` and upload the model folder; returns the commit info.

    A README model card is generated from ``model_card`` unless the repo already has one.
    ``token`` is used for every Hub call (3.3 used it only to create the repo).
    """
    if not _has_hf_hub:
        raise RuntimeError("push_to_hf_hub needs huggingface_hub: pip install huggingface_hub")
    tokenizer = _hub_tokenizer(tokenizer)
    repo_url = create_repo(repo_id, token=token, private=private, exist_ok=True)
    repo_id = getattr(repo_url, "repo_id", None) or "/".join(str(repo_url).rstrip("/").split("/")[-2:])
    has_readme = file_exists(repo_id, "README.md", revision=revision, token=token)

    with tempfile.TemporaryDirectory() as tmpdir:
        save_for_hf(model, tokenizer, model_config, tmpdir, safe_serialization=safe_serialization)
        if not has_readme:
            readme = generate_readme(model_card or {}, repo_id.split("/")[-1])
            Path(tmpdir, "README.md").write_text(readme)
        return upload_folder(
            repo_id=repo_id,
            folder_path=tmpdir,
            revision=revision,
            create_pr=create_pr,
            commit_message=commit_message,
            token=token,
        )


def push_pretrained_to_hf_hub(
    model_name: str,
    pretrained: Optional[str],
    repo_id: str,
    precision: str = "fp32",
    image_mean: Optional[tuple[float, ...]] = None,
    image_std: Optional[tuple[float, ...]] = None,
    image_interpolation: Optional[str] = None,
    image_resize_mode: Optional[str] = None,
    commit_message: str = "Add model",
    token: Optional[str] = None,
    revision: Optional[str] = None,
    private: bool = False,
    create_pr: bool = False,
    model_card: Optional[dict] = None,
    hf_tokenizer_self: bool = False,
    **kwargs,
):
    """Build ``model_name`` with ``pretrained`` weights and push it with its config and tokenizer.

    ``hf_tokenizer_self`` makes the uploaded config name the repo itself as its HF tokenizer.
    Extra ``kwargs`` go to ``create_model_from_pretrained`` (they do not change the uploaded config).
    """
    model, _ = create_model_from_pretrained(
        model_name,
        pretrained=pretrained,
        precision=precision,
        image_mean=image_mean,
        image_std=image_std,
        image_interpolation=image_interpolation,
        image_resize_mode=image_resize_mode,
        **kwargs,
    )
    model_config = get_model_config(model_name)
    if not model_config:
        raise RuntimeError(f"Model config for '{model_name}' not found; it is needed for the Hub config file.")
    if pretrained == "openai":
        model_config["quick_gelu"] = True
    tokenizer = get_tokenizer(model_name)
    if hf_tokenizer_self:
        model_config["text_cfg"]["hf_tokenizer_name"] = repo_id
    return push_to_hf_hub(
        model=model,
        tokenizer=tokenizer,
        model_config=model_config,
        repo_id=repo_id,
        commit_message=commit_message,
        token=token,
        revision=revision,
        private=private,
        create_pr=create_pr,
        model_card=model_card,
        safe_serialization="both",
    )


def _parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Push an OpenCLIP model with pretrained weights to the Hub.")
    parser.add_argument("--model", type=str, help="Name of the model to use.")
    parser.add_argument("--pretrained", type=str, help="Pretrained tag or checkpoint path.")
    parser.add_argument("--repo-id", type=str, help="Destination Hub repo, e.g. org/name.")
    parser.add_argument("--precision", type=str, default="fp32")
    parser.add_argument("--image-mean", type=float, nargs="+", default=None, metavar="MEAN",
                        help="Image normalisation mean to record (default: the tag's).")  # fmt: skip
    parser.add_argument("--image-std", type=float, nargs="+", default=None, metavar="STD",
                        help="Image normalisation std to record (default: the tag's).")  # fmt: skip
    parser.add_argument("--image-interpolation", default=None, type=str, choices=["bicubic", "bilinear", "random"],
                        help="Resize interpolation to record.")  # fmt: skip
    parser.add_argument("--image-resize-mode", default=None, type=str, choices=["shortest", "longest", "squash"],
                        help="Inference resize mode to record.")  # fmt: skip
    parser.add_argument("--hf-tokenizer-self", default=False, action="store_true",
                        help="Set text_cfg.hf_tokenizer_name of the uploaded config to the repo itself.")  # fmt: skip
    return parser.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> None:
    """``python -m open_clip.push_to_hf_hub --model ... --pretrained ... --repo-id ...``."""
    args = _parse_args(argv)
    print(f"Saving model {args.model} with pretrained weights {args.pretrained} to Hugging Face Hub at {args.repo_id}")
    push_pretrained_to_hf_hub(
        args.model,
        args.pretrained,
        args.repo_id,
        precision=args.precision,
        image_mean=args.image_mean,
        image_std=args.image_std,
        image_interpolation=args.image_interpolation,
        image_resize_mode=args.image_resize_mode,
        hf_tokenizer_self=args.hf_tokenizer_self,
    )
    print(f"{args.model} saved.")


if __name__ == "__main__":
    main()
