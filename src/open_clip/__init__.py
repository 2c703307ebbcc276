"""libreclip: a from-scratch, drop-in compatible implementation of OpenCLIP 3.3.0.

The names exported here are exactly OpenCLIP 3.3.0's top-level names; submodules keep 3.3's names
too (`open_clip.model`, `open_clip.transformer`, `open_clip.loss`, ...).
"""

from . import (  # noqa: F401  (3.3 makes these submodules reachable as attributes)
    coca_model,
    constants,
    convert,
    factory,
    hf_configs,
    hf_model,
    loss,
    model,
    modified_resnet,
    openai,
    pos_embed,
    pretrained,
    timm_model,
    tokenizer,
    transform,
    transformer,
    utils,
    version,
    zero_shot_classifier,
    zero_shot_metadata,
)
from .coca_model import CoCa
from .constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from .factory import (
    add_model_config,
    create_loss,
    create_model,
    create_model_and_transforms,
    create_model_from_pretrained,
    get_model_config,
    get_tokenizer,
    list_models,
    load_checkpoint,
)
from .loss import ClipLoss, CoCaLoss, DistillClipLoss
from .model import (
    CLIP,
    CLIPTextCfg,
    CLIPVisionCfg,
    CustomTextCLIP,
    convert_weights_to_fp16,
    convert_weights_to_lp,
    get_cast_dtype,
    get_input_dtype,
    get_model_preprocess_cfg,
    get_model_tokenize_cfg,
    set_model_preprocess_cfg,
    trace_model,
)
from .openai import list_openai_models, load_openai_model
from .pretrained import (
    download_pretrained,
    download_pretrained_from_url,
    get_pretrained_cfg,
    get_pretrained_url,
    is_pretrained_cfg,
    list_pretrained,
    list_pretrained_models_by_tag,
    list_pretrained_tags_by_model,
)
from .push_to_hf_hub import push_pretrained_to_hf_hub, push_to_hf_hub
from .tokenizer import SimpleTokenizer, decode, tokenize
from .transform import AugmentationCfg, image_transform
from .version import __version__
from .zero_shot_classifier import build_zero_shot_classifier, build_zero_shot_classifier_legacy
from .zero_shot_metadata import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES
