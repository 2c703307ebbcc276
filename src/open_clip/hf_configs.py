"""How to read Hugging Face text-model configs: attribute names per ``config.model_type``.

Owns ``arch_dict``, used by the HF text tower to find width/heads/layers, the layer list and the
token embeddings of a transformers model, and to pick its default pooler.
"""

# Each entry: "config_names" maps our generic names to the HF config attribute that holds them
# (an empty string means "no limit"), "pooler" is the default pooler when none is configured.
# `bert` and `m2m_100` have no layer/embedding attribute names, so locking their layers fails
# with KeyError, as in 3.3.
_ROBERTA_NAMES = {
    "context_length": "max_position_embeddings",
    "vocab_size": "vocab_size",
    "width": "hidden_size",
    "heads": "num_attention_heads",
    "layers": "num_hidden_layers",
    "layer_attr": "layer",
    "token_embeddings_attr": "embeddings",
}

arch_dict = {
    "roberta": {"config_names": dict(_ROBERTA_NAMES), "pooler": "mean_pooler"},
    "xlm-roberta": {"config_names": dict(_ROBERTA_NAMES), "pooler": "mean_pooler"},
    "mt5": {
        "config_names": {
            "context_length": "",  # unlimited (relative position buckets)
            "vocab_size": "vocab_size",
            "width": "d_model",
            "heads": "num_heads",
            "layers": "num_layers",
            "layer_attr": "block",
            "token_embeddings_attr": "embed_tokens",
        },
        "pooler": "mean_pooler",
    },
    "bert": {
        "config_names": {
            "context_length": "max_position_embeddings",
            "vocab_size": "vocab_size",
            "width": "hidden_size",
            "heads": "num_attention_heads",
            "layers": "num_hidden_layers",
        },
        "pooler": "cls_pooler",
    },
    "m2m_100": {
        "config_names": {
            "context_length": "max_position_embeddings",
            "vocab_size": "vocab_size",
            "width": "d_model",
            "heads": "encoder_attention_heads",
            "layers": "encoder_layers",
        },
        "pooler": "cls_pooler",
    },
}
