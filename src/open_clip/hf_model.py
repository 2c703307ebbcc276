"""Text tower wrapping a Hugging Face transformers encoder: ``HFTextEncoder`` and its poolers.

Owns the HF adapter used by every config with ``text_cfg.hf_model_name``: building the encoder
(pretrained, from a config name / local directory, or from a config object), the token poolers
(registered by snake_case class name in ``_POOLERS``), the projection (state-dict keys
``transformer.*``, ``proj.*``), locking and gradient checkpointing. transformers is an optional
extra: this module imports without it, the constructor raises a clear ImportError when missing.
"""

import re
from typing import Any, Optional, Union

import torch
from torch import nn

from .hf_configs import arch_dict
from .optional_modules import optional_module_attributes
from .timm_model import MissingExtraError
from .utils import feature_take_indices

# `open_clip.hf_model.transformers`: the transformers package or None, as in 3.3 (code checks it to see
# whether HF text towers are available); imported on first read so this module stays cheap to import.
__getattr__, __dir__ = optional_module_attributes(__name__, {"transformers": "transformers"})

_POOLERS: dict[str, type] = {}


def _camel2snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def register_pooler(cls: type) -> type:
    """Class decorator: make a pooler selectable by its snake_case class name."""
    _POOLERS[_camel2snake(cls.__name__)] = cls
    return cls


@register_pooler
class MeanPooler(nn.Module):
    """Mean of the hidden states over the non-padding positions."""

    def forward(self, x: Any, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask.unsqueeze(-1).to(x.last_hidden_state.dtype)  # (B, L, 1)
        summed = (x.last_hidden_state * mask).sum(dim=1)
        return summed / mask.sum(dim=1).clamp(min=1)


@register_pooler
class MaxPooler(nn.Module):
    """Per-channel max of the hidden states over the non-padding positions.

    3.3 masked the valid positions (and needed a bool mask); padding is what must be excluded.
    """

    def forward(self, x: Any, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = x.last_hidden_state
        padding = (attention_mask == 0).unsqueeze(-1)  # (B, L, 1)
        return hidden.masked_fill(padding, torch.finfo(hidden.dtype).min).max(dim=1).values


@register_pooler
class ClsPooler(nn.Module):
    """The model's own pooler output when it has one, else the hidden state at position 0."""

    def __init__(self, use_pooler_output: bool = True):
        super().__init__()
        self.cls_token_position = 0
        self.use_pooler_output = use_pooler_output

    def forward(self, x: Any, attention_mask: torch.Tensor) -> torch.Tensor:
        pooled = getattr(x, "pooler_output", None)
        if self.use_pooler_output and pooled is not None:
            return pooled
        return x.last_hidden_state[:, self.cls_token_position, :]


@register_pooler
class ClsLastHiddenStatePooler(nn.Module):
    """The last hidden state at position 0 (ignores any HF pooler layer)."""

    def __init__(self):
        super().__init__()
        self.cls_token_position = 0

    def forward(self, x: Any, attention_mask: torch.Tensor) -> torch.Tensor:
        return x.last_hidden_state[:, self.cls_token_position, :]


def _import_transformers():
    try:
        import transformers
    except ImportError as e:
        raise MissingExtraError(
            "Hugging Face text towers need the 'transformers' package: pip install 'libreclip[hf]'"
        ) from e
    return transformers


def _hub_offline() -> bool:
    try:
        from huggingface_hub import constants
        return bool(constants.HF_HUB_OFFLINE)
    except ImportError:  # pragma: no cover - transformers always brings huggingface_hub
        return False


def _from_hub(fn, name: str, what: str, *args: Any, **kwargs: Any):
    """Call a ``from_pretrained`` loader; turn a missing file into one clear line."""
    try:
        return fn(name, *args, **kwargs)
    except OSError as e:
        if _hub_offline():
            reason = "HF_HUB_OFFLINE is set and it is not in the local cache (unset HF_HUB_OFFLINE to download it)"
        else:
            reason = f"it is neither a local directory nor downloadable ({str(e).splitlines()[0][:200]})"
        raise OSError(
            f"Cannot load the Hugging Face {what} for '{name}': {reason}; or pass a local directory "
            f"or a transformers config object."
        ) from e


def _load_config(transformers, config: Any, name: str):
    if config is None:
        return _from_hub(transformers.AutoConfig.from_pretrained, name, "config")
    if isinstance(config, dict):
        params = dict(config)
        return transformers.AutoConfig.for_model(params.pop("model_type"), **params)
    if isinstance(config, str) or hasattr(config, "__fspath__"):
        return _from_hub(transformers.AutoConfig.from_pretrained, str(config), "config")
    return config


class HFTextEncoder(nn.Module):
    """A transformers encoder (``transformer``) + pooler + projection (``proj``).

    Args:
        model_name_or_path: hub id or local directory of the HF model.
        output_dim: embedding size.
        config: optional transformers config (object, dict with ``model_type``, or local path);
            when given the model is built from it with random weights (nothing is downloaded).
        pooler_type: a key of ``_POOLERS``; None → the default for the architecture.
        proj_type: ``'linear'``, ``'mlp'``, ``'none'``, or None (identity; needs the model
            width to equal ``output_dim``).
        pretrained: load the HF weights (``from_pretrained``) instead of a random init; only
            used when ``config`` is None.
        output_tokens: forward returns ``(pooled, tokens)``.
    """

    output_tokens: torch.jit.Final[bool]

    def __init__(
            self,
            model_name_or_path: str,
            output_dim: int,
            config: Any = None,
            pooler_type: Optional[str] = None,
            proj_type: Optional[str] = None,
            pretrained: bool = True,
            output_tokens: bool = False,
    ):
        super().__init__()
        transformers = _import_transformers()
        self.output_tokens = output_tokens
        self.output_dim = output_dim
        load_weights = pretrained and config is None
        self.config = _load_config(transformers, config, model_name_or_path)
        self.pooler = self._make_pooler(pooler_type)
        self.transformer = self._make_transformer(transformers, model_name_or_path, load_weights, pooler_type)
        self.vocab_size = getattr(self.config, "vocab_size", 0)
        self.context_length = getattr(self.config, "max_position_embeddings", 0)
        self.proj = self._make_proj(proj_type, self._width(), output_dim)

    def _arch(self) -> dict[str, Any]:
        model_type = self.config.model_type
        if model_type not in arch_dict:
            raise ValueError(f"HF model_type '{model_type}' has no entry in open_clip.hf_configs.arch_dict "
                             f"(known: {sorted(arch_dict)}); pass pooler_type explicitly")
        return arch_dict[model_type]

    def _width(self) -> int:
        names = arch_dict.get(self.config.model_type, {}).get("config_names", {})
        for attr in (names.get("width"), "hidden_size", "d_model"):
            if attr and hasattr(self.config, attr):
                return getattr(self.config, attr)
        raise ValueError(f"cannot find the hidden size of HF model_type '{self.config.model_type}'")

    def _make_pooler(self, pooler_type: Optional[str]) -> nn.Module:
        pooler_type = pooler_type or self._arch()["pooler"]
        if pooler_type not in _POOLERS:
            raise ValueError(f"hf_pooler_type={pooler_type!r} is unknown; valid: {sorted(_POOLERS)}")
        return _POOLERS[pooler_type]()

    def _make_transformer(self, transformers, name: str, load_weights: bool,
                          pooler_type: Optional[str]) -> nn.Module:
        auto = transformers.AutoModel
        if getattr(self.config, "is_encoder_decoder", False):
            # Seq2seq models (mT5, NLLB): only the encoder is the text tower.
            if load_weights:
                model = _from_hub(auto.from_pretrained, name, "model weights")
            else:
                model = auto.from_config(self.config)
            return model.encoder
        # An HF pooler layer exists only when the cls pooler uses its output.
        kwargs = {"add_pooling_layer": pooler_type == "cls_pooler"}
        if load_weights:
            return _from_hub(auto.from_pretrained, name, "model weights", **kwargs)
        return auto.from_config(self.config, **kwargs)

    @staticmethod
    def _make_proj(proj_type: Optional[str], width: int, output_dim: int) -> nn.Module:
        if proj_type == "linear":
            return nn.Linear(width, output_dim, bias=False)
        if proj_type == "mlp":
            hidden = (width + output_dim) // 2
            return nn.Sequential(
                nn.Linear(width, hidden, bias=False),
                nn.GELU(),
                nn.Linear(hidden, output_dim, bias=False),
            )
        if proj_type == "none" or (proj_type is None and width == output_dim):
            return nn.Identity()
        if proj_type is None:
            raise ValueError(f"HF text width {width} != output_dim {output_dim}: set hf_proj_type "
                             "to 'linear' or 'mlp'")
        raise ValueError(f"hf_proj_type={proj_type!r} is unknown; valid: 'linear', 'mlp', 'none', None")

    def _encode(self, x: torch.Tensor, **kwargs: Any):
        attention_mask = (x != self.config.pad_token_id).long()  # (B, L), 1 = real token
        out = self.transformer(input_ids=x, attention_mask=attention_mask, **kwargs)
        return out, attention_mask

    def forward(self, x: torch.Tensor):
        out, attention_mask = self._encode(x)
        projected = self.proj(self.pooler(out, attention_mask))  # (B, output_dim)
        if not self.output_tokens:
            return projected
        tokens = out.last_hidden_state  # (B, L, width)
        if type(self.pooler) is ClsPooler:
            tokens = tokens[:, 1:, :]
        return projected, tokens

    def forward_intermediates(
            self,
            text: torch.Tensor,
            indices: Optional[Union[int, list[int]]] = None,
            stop_early: bool = False,
            normalize_intermediates: bool = False,
            intermediates_only: bool = False,
            output_fmt: str = "NLC",
            output_extra_tokens: bool = False,
    ) -> dict[str, Union[torch.Tensor, list[torch.Tensor]]]:
        """Hidden states after the selected layers (``text_intermediates``, NLC) plus
        ``text_features`` unless ``intermediates_only``. The whole encoder always runs
        (``stop_early`` and ``normalize_intermediates`` have no effect here)."""
        assert output_fmt == "NLC", "Output format must be NLC."
        out, attention_mask = self._encode(text, output_hidden_states=True)
        layer_states = out.hidden_states[1:]  # hidden_states[0] is the embedding output
        take, _ = feature_take_indices(len(layer_states), indices)
        result: dict[str, Union[torch.Tensor, list[torch.Tensor]]] = {
            "text_intermediates": [layer_states[i] for i in take]}
        if not intermediates_only:
            result["text_features"] = self.proj(self.pooler(out, attention_mask))
        return result

    def lock(self, unlocked_layers: int = 0, freeze_layer_norm: bool = True) -> None:
        """Freeze the HF model; ``proj`` stays trainable.

        Args:
            unlocked_layers: keep the last N entries of [embeddings, *layers] trainable
                (needs ``layer_attr`` / ``token_embeddings_attr`` in hf_configs; bert and m2m_100
                lack them and raise KeyError, as in 3.3). 0 freezes everything.
            freeze_layer_norm: also freeze LayerNorm parameters of the frozen part.
        """
        if not unlocked_layers:
            _freeze(self.transformer, freeze_layer_norm)
            return
        names = self._arch()["config_names"]
        encoder = getattr(self.transformer, "encoder", self.transformer)
        layers = getattr(encoder, names["layer_attr"])
        embeddings = getattr(self.transformer, names["token_embeddings_attr"])
        for module in [embeddings, *layers][:-unlocked_layers]:
            _freeze(module, freeze_layer_norm)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        # 3.3 always enabled it, whatever the flag; we follow the flag. transformers >= 5 renamed
        # the methods (the old names warn), older releases only have the gradient_* names.
        action = "enable" if enable else "disable"
        method = getattr(self.transformer, f"activation_checkpointing_{action}", None)
        if method is None:
            method = getattr(self.transformer, f"gradient_checkpointing_{action}")
        method()

    def init_parameters(self) -> None:
        """Nothing to do: the HF model initialises itself."""


def _is_layer_norm(module: nn.Module) -> bool:
    # nn.LayerNorm and HF's own norm classes (T5LayerNorm, ...)
    return isinstance(module, nn.LayerNorm) or "LayerNorm" in type(module).__name__


def _freeze(module: nn.Module, freeze_layer_norm: bool) -> None:
    for sub in module.modules():
        trainable = _is_layer_norm(sub) and not freeze_layer_norm
        for param in sub.parameters(recurse=False):
            param.requires_grad = trainable
