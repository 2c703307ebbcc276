"""The table of published weights: one declarative record per (architecture, tag).

Owns only data. Each record carries where the weights live (``hf_hub`` as ``"org/repo/"`` or
``"org/repo/file"``, and/or a direct ``url``) and the preprocessing they were trained with
(``mean``, ``std``, ``interpolation``, ``resize_mode``), plus ``quick_gelu: True`` for weights
trained with QuickGELU. Family helpers fill the preprocessing defaults so each record only says
what differs. ``open_clip.pretrained`` turns this into the live registry (adding the derived
``<arch>-quickgelu`` entries) and holds all behaviour.

Order matters: architectures and tags are listed in OpenCLIP 3.3's registry order, which
``list_pretrained()`` reproduces.
"""

from typing import Any

from .constants import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    INCEPTION_MEAN,
    INCEPTION_STD,
    OPENAI_DATASET_MEAN,
    OPENAI_DATASET_STD,
)

Record = dict[str, Any]


def _record(
    hf_hub: str,
    url: str,
    quick_gelu: bool,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    interpolation: str,
    resize_mode: str,
) -> Record:
    rec: Record = dict(
        url=url,
        hf_hub=hf_hub,
        mean=tuple(mean),
        std=tuple(std),
        interpolation=interpolation,
        resize_mode=resize_mode,
    )
    if quick_gelu:
        rec["quick_gelu"] = True
    return rec


def _clip(
    hf_hub: str = "",
    url: str = "",
    quick_gelu: bool = False,
    mean: tuple[float, ...] = OPENAI_DATASET_MEAN,
    std: tuple[float, ...] = OPENAI_DATASET_STD,
    interpolation: str = "bicubic",
    resize_mode: str = "shortest",
) -> Record:
    """OpenAI / OpenCLIP default preprocessing (OpenAI mean/std, bicubic, shortest-side resize)."""
    return _record(hf_hub, url, quick_gelu, mean, std, interpolation, resize_mode)


def _siglip(hf_hub: str = "", url: str = "") -> Record:
    """SigLIP / SigLIP2: inception mean/std (0.5), bicubic, squash resize."""
    return _record(hf_hub, url, False, INCEPTION_MEAN, INCEPTION_STD, "bicubic", "squash")


def _clipa(hf_hub: str = "", url: str = "") -> Record:
    """CLIPA: ImageNet mean/std, bilinear, squash resize."""
    return _record(hf_hub, url, False, IMAGENET_MEAN, IMAGENET_STD, "bilinear", "squash")


def _mobileclip(hf_hub: str = "", url: str = "") -> Record:
    """MobileCLIP (and the smaller MobileCLIP2 models): no normalisation, bilinear, shortest."""
    return _record(hf_hub, url, False, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "bilinear", "shortest")


def _pe_core(hf_hub: str = "", url: str = "") -> Record:
    """Perception Encoder core: 0.5 mean/std, bilinear, squash resize."""
    return _record(hf_hub, url, False, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bilinear", "squash")


PRETRAINED_TABLE: dict[str, dict[str, Record]] = {
    "RN50": {
        "openai": _clip(
            "timm/resnet50_clip.openai/",
            url="https://openaipublic.azureedge.net/clip/models/afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762/RN50.pt",
            quick_gelu=True,
        ),
        "yfcc15m": _clip(
            "timm/resnet50_clip.yfcc15m/",
            url="https://github.com/mlfoundations/open_clip/releases/download/v0.2-weights/rn50-quickgelu-yfcc15m-455df137.pt",
            quick_gelu=True,
        ),
        "cc12m": _clip(
            "timm/resnet50_clip.cc12m/",
            url="https://github.com/mlfoundations/open_clip/releases/download/v0.2-weights/rn50-quickgelu-cc12m-f000538c.pt",
            quick_gelu=True,
        ),
    },
    "RN101": {
        "openai": _clip(
            "timm/resnet101_clip.openai/",
            url="https://openaipublic.azureedge.net/clip/models/8fa8567bab74a42d41c5915025a8e4538c3bdbe8804a470a72f30b0d94fab599/RN101.pt",
            quick_gelu=True,
        ),
        "yfcc15m": _clip(
            "timm/resnet101_clip.yfcc15m/",
            url="https://github.com/mlfoundations/open_clip/releases/download/v0.2-weights/rn101-quickgelu-yfcc15m-3e04b30e.pt",
            quick_gelu=True,
        ),
    },
    "RN50x4": {
        "openai": _clip(
            "timm/resnet50x4_clip.openai/",
            url="https://openaipublic.azureedge.net/clip/models/7e526bd135e493cef0776de27d5f42653e6b4c8bf9e0f653bb11773263205fdd/RN50x4.pt",
            quick_gelu=True,
        ),
    },
    "RN50x16": {
        "openai": _clip(
            "timm/resnet50x16_clip.openai/",
            url="https://openaipublic.azureedge.net/clip/models/52378b407f34354e150460fe41077663dd5b39c54cd0bfd2b27167a4a06ec9aa/RN50x16.pt",
            quick_gelu=True,
        ),
    },
    "RN50x64": {
        "openai": _clip(
            "timm/resnet50x64_clip.openai/",
            url="https://openaipublic.azureedge.net/clip/models/be1cfb55d75a9666199fb2206c106743da0f6468c9d327f3e0d0a543a9919d9c/RN50x64.pt",
            quick_gelu=True,
        ),
    },
    "ViT-B-32": {
        "openai": _clip(
            "timm/vit_base_patch32_clip_224.openai/",
            url="https://openaipublic.azureedge.net/clip/models/40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt",
            quick_gelu=True,
        ),
        "laion400m_e31": _clip(
            "timm/vit_base_patch32_clip_224.laion400m_e31/",
            url="https://github.com/mlfoundations/open_clip/releases/download/v0.2-weights/vit_b_32-quickgelu-laion400m_e31-d867053b.pt",
            quick_gelu=True,
        ),
        "laion400m_e32": _clip(
            "timm/vit_base_patch32_clip_224.laion400m_e32/",
            url="https://github.com/mlfoundations/open_clip/releases/download/v0.2-weights/vit_b_32-quickgelu-laion400m_e32-46683a32.pt",
            quick_gelu=True,
        ),
        "laion2b_e16": _clip(
            "timm/vit_base_patch32_clip_224.laion2b_e16/",
            url="https://github.com/mlfoundations/open_clip/releases/download/v0.2-weights/vit_b_32-laion2b_e16-af8dbd0c.pth",
        ),
        "laion2b_s34b_b79k": _clip("laion/CLIP-ViT-B-32-laion2B-s34B-b79K/"),
        "datacomp_xl_s13b_b90k": _clip("laion/CLIP-ViT-B-32-DataComp.XL-s13B-b90K/"),
        "datacomp_m_s128m_b4k": _clip("laion/CLIP-ViT-B-32-DataComp.M-s128M-b4K/"),
        "commonpool_m_clip_s128m_b4k": _clip("laion/CLIP-ViT-B-32-CommonPool.M.clip-s128M-b4K/"),
        "commonpool_m_laion_s128m_b4k": _clip("laion/CLIP-ViT-B-32-CommonPool.M.laion-s128M-b4K/"),
        "commonpool_m_image_s128m_b4k": _clip("laion/CLIP-ViT-B-32-CommonPool.M.image-s128M-b4K/"),
        "commonpool_m_text_s128m_b4k": _clip("laion/CLIP-ViT-B-32-CommonPool.M.text-s128M-b4K/"),
        "commonpool_m_basic_s128m_b4k": _clip("laion/CLIP-ViT-B-32-CommonPool.M.basic-s128M-b4K/"),
        "commonpool_m_s128m_b4k": _clip("laion/CLIP-ViT-B-32-CommonPool.M-s128M-b4K/"),
        "datacomp_s_s13m_b4k": _clip("laion/CLIP-ViT-B-32-DataComp.S-s13M-b4K/"),
        "commonpool_s_clip_s13m_b4k": _clip("laion/CLIP-ViT-B-32-CommonPool.S.clip-s13M-b4K/"),
        "commonpool_s_laion_s13m_b4k": _clip("laion/CLIP-ViT-B-32-CommonPool.S.laion-s13M-b4K/"),
        "commonpool_s_image_s13m_b4k": _clip("laion/CLIP-ViT-B-32-CommonPool.S.image-s13M-b4K/"),
        "commonpool_s_text_s13m_b4k": _clip("laion/CLIP-ViT-B-32-CommonPool.S.text-s13M-b4K/"),
        "commonpool_s_basic_s13m_b4k": _clip("laion/CLIP-ViT-B-32-CommonPool.S.basic-s13M-b4K/"),
        "commonpool_s_s13m_b4k": _clip("laion/CLIP-ViT-B-32-CommonPool.S-s13M-b4K/"),
        "metaclip_400m": _clip(
            "timm/vit_base_patch32_clip_224.metaclip_400m/",
            url="https://dl.fbaipublicfiles.com/MMPT/metaclip/b32_400m.pt",
            quick_gelu=True,
        ),
        "metaclip_fullcc": _clip(
            "timm/vit_base_patch32_clip_224.metaclip_2pt5b/",
            url="https://dl.fbaipublicfiles.com/MMPT/metaclip/b32_fullcc2.5b.pt",
            quick_gelu=True,
        ),
    },
    "ViT-B-32-256": {
        "datacomp_s34b_b86k": _clip("laion/CLIP-ViT-B-32-256x256-DataComp-s34B-b86K/"),
    },
    "ViT-B-16": {
        "openai": _clip(
            "timm/vit_base_patch16_clip_224.openai/",
            url="https://openaipublic.azureedge.net/clip/models/5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f/ViT-B-16.pt",
            quick_gelu=True,
        ),
        "laion400m_e31": _clip(
            "timm/vit_base_patch16_clip_224.laion400m_e31/",
            url="https://github.com/mlfoundations/open_clip/releases/download/v0.2-weights/vit_b_16-laion400m_e31-00efa78f.pt",
        ),
        "laion400m_e32": _clip(
            "timm/vit_base_patch16_clip_224.laion400m_e32/",
            url="https://github.com/mlfoundations/open_clip/releases/download/v0.2-weights/vit_b_16-laion400m_e32-55e67d44.pt",
        ),
        "laion2b_s34b_b88k": _clip("laion/CLIP-ViT-B-16-laion2B-s34B-b88K/"),
        "datacomp_xl_s13b_b90k": _clip("laion/CLIP-ViT-B-16-DataComp.XL-s13B-b90K/"),
        "datacomp_l_s1b_b8k": _clip("laion/CLIP-ViT-B-16-DataComp.L-s1B-b8K/"),
        "commonpool_l_clip_s1b_b8k": _clip("laion/CLIP-ViT-B-16-CommonPool.L.clip-s1B-b8K/"),
        "commonpool_l_laion_s1b_b8k": _clip("laion/CLIP-ViT-B-16-CommonPool.L.laion-s1B-b8K/"),
        "commonpool_l_image_s1b_b8k": _clip("laion/CLIP-ViT-B-16-CommonPool.L.image-s1B-b8K/"),
        "commonpool_l_text_s1b_b8k": _clip("laion/CLIP-ViT-B-16-CommonPool.L.text-s1B-b8K/"),
        "commonpool_l_basic_s1b_b8k": _clip("laion/CLIP-ViT-B-16-CommonPool.L.basic-s1B-b8K/"),
        "commonpool_l_s1b_b8k": _clip("laion/CLIP-ViT-B-16-CommonPool.L-s1B-b8K/"),
        "dfn2b": _clip("apple/DFN2B-CLIP-ViT-B-16/", quick_gelu=True),
        "metaclip_400m": _clip(
            "timm/vit_base_patch16_clip_224.metaclip_400m/",
            url="https://dl.fbaipublicfiles.com/MMPT/metaclip/b16_400m.pt",
            quick_gelu=True,
        ),
        "metaclip_fullcc": _clip(
            "timm/vit_base_patch16_clip_224.metaclip_2pt5b/",
            url="https://dl.fbaipublicfiles.com/MMPT/metaclip/b16_fullcc2.5b.pt",
            quick_gelu=True,
        ),
    },
    "ViT-B-16-plus-240": {
        "laion400m_e31": _clip(
            "timm/vit_base_patch16_plus_clip_240.laion400m_e31/",
            url="https://github.com/mlfoundations/open_clip/releases/download/v0.2-weights/vit_b_16_plus_240-laion400m_e31-8fb26589.pt",
        ),
        # 3.3 points this tag at the e31 repo; the e32 repo holds the weights the URL names.
        "laion400m_e32": _clip(
            "timm/vit_base_patch16_plus_clip_240.laion400m_e32/",
            url="https://github.com/mlfoundations/open_clip/releases/download/v0.2-weights/vit_b_16_plus_240-laion400m_e32-699c4b84.pt",
        ),
    },
    "ViT-L-14": {
        "openai": _clip(
            "timm/vit_large_patch14_clip_224.openai/",
            url="https://openaipublic.azureedge.net/clip/models/b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836/ViT-L-14.pt",
            quick_gelu=True,
        ),
        "laion400m_e31": _clip(
            "timm/vit_large_patch14_clip_224.laion400m_e31/",
            url="https://github.com/mlfoundations/open_clip/releases/download/v0.2-weights/vit_l_14-laion400m_e31-69988bb6.pt",
        ),
        "laion400m_e32": _clip(
            "timm/vit_large_patch14_clip_224.laion400m_e32/",
            url="https://github.com/mlfoundations/open_clip/releases/download/v0.2-weights/vit_l_14-laion400m_e32-3d133497.pt",
        ),
        "laion2b_s32b_b82k": _clip(
            "laion/CLIP-ViT-L-14-laion2B-s32B-b82K/",
            mean=INCEPTION_MEAN,
            std=INCEPTION_STD,
        ),
        "datacomp_xl_s13b_b90k": _clip("laion/CLIP-ViT-L-14-DataComp.XL-s13B-b90K/"),
        "commonpool_xl_clip_s13b_b90k": _clip("laion/CLIP-ViT-L-14-CommonPool.XL.clip-s13B-b90K/"),
        "commonpool_xl_laion_s13b_b90k": _clip("laion/CLIP-ViT-L-14-CommonPool.XL.laion-s13B-b90K/"),
        "commonpool_xl_s13b_b90k": _clip("laion/CLIP-ViT-L-14-CommonPool.XL-s13B-b90K/"),
        "metaclip_400m": _clip(
            "timm/vit_large_patch14_clip_224.metaclip_400m/",
            url="https://dl.fbaipublicfiles.com/MMPT/metaclip/l14_400m.pt",
            quick_gelu=True,
        ),
        "metaclip_fullcc": _clip(
            "timm/vit_large_patch14_clip_224.metaclip_2pt5b/",
            url="https://dl.fbaipublicfiles.com/MMPT/metaclip/l14_fullcc2.5b.pt",
            quick_gelu=True,
        ),
        "dfn2b": _clip("apple/DFN2B-CLIP-ViT-L-14/", quick_gelu=True),
        "dfn2b_s39b": _clip("apple/DFN2B-CLIP-ViT-L-14-39B/"),
    },
    "ViT-L-14-336": {
        "openai": _clip(
            "timm/vit_large_patch14_clip_336.openai/",
            url="https://openaipublic.azureedge.net/clip/models/3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02/ViT-L-14-336px.pt",
            quick_gelu=True,
        ),
    },
    "ViT-H-14": {
        "laion2b_s32b_b79k": _clip("laion/CLIP-ViT-H-14-laion2B-s32B-b79K/"),
        "metaclip_fullcc": _clip(
            "timm/vit_huge_patch14_clip_224.metaclip_2pt5b/",
            url="https://dl.fbaipublicfiles.com/MMPT/metaclip/h14_fullcc2.5b.pt",
            quick_gelu=True,
        ),
        "metaclip_altogether": _clip(
            "timm/vit_huge_patch14_clip_224.metaclip_altogether/",
            url="https://dl.fbaipublicfiles.com/MMPT/metaclip/h14_v1.2_altogether.pt",
        ),
        "dfn5b": _clip("apple/DFN5B-CLIP-ViT-H-14/", resize_mode="squash", quick_gelu=True),
    },
    "ViT-H-14-378": {
        "dfn5b": _clip("apple/DFN5B-CLIP-ViT-H-14-378/", resize_mode="squash", quick_gelu=True),
    },
    "ViT-g-14": {
        "laion2b_s12b_b42k": _clip("laion/CLIP-ViT-g-14-laion2B-s12B-b42K/"),
        "laion2b_s34b_b88k": _clip("laion/CLIP-ViT-g-14-laion2B-s34B-b88K/"),
    },
    "ViT-bigG-14": {
        "laion2b_s39b_b160k": _clip("laion/CLIP-ViT-bigG-14-laion2B-39B-b160k/"),
        "metaclip_fullcc": _clip(
            "timm/vit_gigantic_patch14_clip_224.metaclip_2pt5b/",
            url="https://dl.fbaipublicfiles.com/MMPT/metaclip/G14_fullcc2.5b.pt",
            quick_gelu=True,
        ),
    },
    "roberta-ViT-B-32": {
        "laion2b_s12b_b32k": _clip("laion/CLIP-ViT-B-32-roberta-base-laion2B-s12B-b32k/"),
    },
    "xlm-roberta-base-ViT-B-32": {
        "laion5b_s13b_b90k": _clip("laion/CLIP-ViT-B-32-xlm-roberta-base-laion5B-s13B-b90k/"),
    },
    "xlm-roberta-large-ViT-H-14": {
        "frozen_laion5b_s13b_b90k": _clip("laion/CLIP-ViT-H-14-frozen-xlm-roberta-large-laion5B-s13B-b90k/"),
    },
    "convnext_base": {
        "laion400m_s13b_b51k": _clip("laion/CLIP-convnext_base-laion400M-s13B-b51K/"),
    },
    "convnext_base_w": {
        "laion2b_s13b_b82k": _clip("laion/CLIP-convnext_base_w-laion2B-s13B-b82K/"),
        "laion2b_s13b_b82k_augreg": _clip("laion/CLIP-convnext_base_w-laion2B-s13B-b82K-augreg/"),
        "laion_aesthetic_s13b_b82k": _clip("laion/CLIP-convnext_base_w-laion_aesthetic-s13B-b82K/"),
    },
    "convnext_base_w_320": {
        "laion_aesthetic_s13b_b82k": _clip("laion/CLIP-convnext_base_w_320-laion_aesthetic-s13B-b82K/"),
        "laion_aesthetic_s13b_b82k_augreg": _clip(
            "laion/CLIP-convnext_base_w_320-laion_aesthetic-s13B-b82K-augreg/",
        ),
    },
    "convnext_large_d": {
        "laion2b_s26b_b102k_augreg": _clip("laion/CLIP-convnext_large_d.laion2B-s26B-b102K-augreg/"),
    },
    "convnext_large_d_320": {
        "laion2b_s29b_b131k_ft": _clip("laion/CLIP-convnext_large_d_320.laion2B-s29B-b131K-ft/"),
        "laion2b_s29b_b131k_ft_soup": _clip("laion/CLIP-convnext_large_d_320.laion2B-s29B-b131K-ft-soup/"),
    },
    "convnext_xxlarge": {
        "laion2b_s34b_b82k_augreg": _clip("laion/CLIP-convnext_xxlarge-laion2B-s34B-b82K-augreg/"),
        "laion2b_s34b_b82k_augreg_rewind": _clip(
            "laion/CLIP-convnext_xxlarge-laion2B-s34B-b82K-augreg-rewind/",
        ),
        "laion2b_s34b_b82k_augreg_soup": _clip("laion/CLIP-convnext_xxlarge-laion2B-s34B-b82K-augreg-soup/"),
    },
    "coca_ViT-B-32": {
        "laion2b_s13b_b90k": _clip("laion/CoCa-ViT-B-32-laion2B-s13B-b90k/"),
        "mscoco_finetuned_laion2b_s13b_b90k": _clip(
            "laion/mscoco_finetuned_CoCa-ViT-B-32-laion2B-s13B-b90k/",
        ),
    },
    "coca_ViT-L-14": {
        "laion2b_s13b_b90k": _clip("laion/CoCa-ViT-L-14-laion2B-s13B-b90k/"),
        "mscoco_finetuned_laion2b_s13b_b90k": _clip(
            "laion/mscoco_finetuned_CoCa-ViT-L-14-laion2B-s13B-b90k/",
        ),
    },
    "EVA01-g-14": {
        "laion400m_s11b_b41k": _clip("timm/eva_giant_patch14_clip_224.laion400m_s11b_b41k/"),
    },
    "EVA01-g-14-plus": {
        "merged2b_s11b_b114k": _clip("timm/eva_giant_patch14_plus_clip_224.merged2b_s11b_b114k/"),
    },
    "EVA02-B-16": {
        "merged2b_s8b_b131k": _clip("timm/eva02_base_patch16_clip_224.merged2b_s8b_b131k/"),
    },
    "EVA02-L-14": {
        "merged2b_s4b_b131k": _clip("timm/eva02_large_patch14_clip_224.merged2b_s4b_b131k/"),
    },
    "EVA02-L-14-336": {
        "merged2b_s6b_b61k": _clip("timm/eva02_large_patch14_clip_336.merged2b_s6b_b61k/"),
    },
    "EVA02-E-14": {
        "laion2b_s4b_b115k": _clip("timm/eva02_enormous_patch14_clip_224.laion2b_s4b_b115k/"),
    },
    "EVA02-E-14-plus": {
        "laion2b_s9b_b144k": _clip("timm/eva02_enormous_patch14_plus_clip_224.laion2b_s9b_b144k/"),
    },
    "ViT-B-16-SigLIP": {
        "webli": _siglip("timm/ViT-B-16-SigLIP/"),
    },
    "ViT-B-16-SigLIP-256": {
        "webli": _siglip("timm/ViT-B-16-SigLIP-256/"),
    },
    "ViT-B-16-SigLIP-i18n-256": {
        "webli": _siglip("timm/ViT-B-16-SigLIP-i18n-256/"),
    },
    "ViT-B-16-SigLIP-384": {
        "webli": _siglip("timm/ViT-B-16-SigLIP-384/"),
    },
    "ViT-B-16-SigLIP-512": {
        "webli": _siglip("timm/ViT-B-16-SigLIP-512/"),
    },
    "ViT-L-16-SigLIP-256": {
        "webli": _siglip("timm/ViT-L-16-SigLIP-256/"),
    },
    "ViT-L-16-SigLIP-384": {
        "webli": _siglip("timm/ViT-L-16-SigLIP-384/"),
    },
    "ViT-SO400M-14-SigLIP": {
        "webli": _siglip("timm/ViT-SO400M-14-SigLIP/"),
    },
    "ViT-SO400M-16-SigLIP-i18n-256": {
        "webli": _siglip("timm/ViT-SO400M-16-SigLIP-i18n-256/"),
    },
    "ViT-SO400M-14-SigLIP-378": {
        "webli": _siglip("timm/ViT-SO400M-14-SigLIP-384/"),
    },
    "ViT-SO400M-14-SigLIP-384": {
        "webli": _siglip("timm/ViT-SO400M-14-SigLIP-384/"),
    },
    "ViT-B-32-SigLIP2-256": {
        "webli": _siglip("timm/ViT-B-32-SigLIP2-256/"),
    },
    "ViT-B-16-SigLIP2": {
        "webli": _siglip("timm/ViT-B-16-SigLIP2/"),
    },
    "ViT-B-16-SigLIP2-256": {
        "webli": _siglip("timm/ViT-B-16-SigLIP2-256/"),
    },
    "ViT-B-16-SigLIP2-384": {
        "webli": _siglip("timm/ViT-B-16-SigLIP2-384/"),
    },
    "ViT-B-16-SigLIP2-512": {
        "webli": _siglip("timm/ViT-B-16-SigLIP2-512/"),
    },
    "ViT-L-16-SigLIP2-256": {
        "webli": _siglip("timm/ViT-L-16-SigLIP2-256/"),
    },
    "ViT-L-16-SigLIP2-384": {
        "webli": _siglip("timm/ViT-L-16-SigLIP2-384/"),
    },
    "ViT-L-16-SigLIP2-512": {
        "webli": _siglip("timm/ViT-L-16-SigLIP2-512/"),
    },
    "ViT-SO400M-14-SigLIP2": {
        "webli": _siglip("timm/ViT-SO400M-14-SigLIP2/"),
    },
    "ViT-SO400M-14-SigLIP2-378": {
        "webli": _siglip("timm/ViT-SO400M-14-SigLIP2-378/"),
    },
    "ViT-SO400M-16-SigLIP2-256": {
        "webli": _siglip("timm/ViT-SO400M-16-SigLIP2-256/"),
    },
    "ViT-SO400M-16-SigLIP2-384": {
        "webli": _siglip("timm/ViT-SO400M-16-SigLIP2-384/"),
    },
    "ViT-SO400M-16-SigLIP2-512": {
        "webli": _siglip("timm/ViT-SO400M-16-SigLIP2-512/"),
    },
    "ViT-gopt-16-SigLIP2-256": {
        "webli": _siglip("timm/ViT-gopt-16-SigLIP2-256/"),
    },
    "ViT-gopt-16-SigLIP2-384": {
        "webli": _siglip("timm/ViT-gopt-16-SigLIP2-384/"),
    },
    "ViT-L-14-CLIPA": {
        "datacomp1b": _clipa("UCSC-VLAA/ViT-L-14-CLIPA-datacomp1B/"),
    },
    "ViT-L-14-CLIPA-336": {
        "datacomp1b": _clipa("UCSC-VLAA/ViT-L-14-CLIPA-336-datacomp1B/"),
    },
    "ViT-H-14-CLIPA": {
        "datacomp1b": _clipa("UCSC-VLAA/ViT-H-14-CLIPA-datacomp1B/"),
    },
    "ViT-H-14-CLIPA-336": {
        "laion2b": _clipa("UCSC-VLAA/ViT-H-14-CLIPA-336-laion2B/"),
        "datacomp1b": _clipa("UCSC-VLAA/ViT-H-14-CLIPA-336-datacomp1B/"),
    },
    "ViT-bigG-14-CLIPA": {
        "datacomp1b": _clipa("UCSC-VLAA/ViT-bigG-14-CLIPA-datacomp1B/"),
    },
    "ViT-bigG-14-CLIPA-336": {
        "datacomp1b": _clipa("UCSC-VLAA/ViT-bigG-14-CLIPA-336-datacomp1B/"),
    },
    "nllb-clip-base": {
        "v1": _clip("visheratin/nllb-clip-base-oc/"),
    },
    "nllb-clip-large": {
        "v1": _clip("visheratin/nllb-clip-large-oc/"),
    },
    "nllb-clip-base-siglip": {
        "v1": _siglip("visheratin/nllb-clip-base-siglip/"),
        "mrl": _siglip("visheratin/nllb-siglip-mrl-base/"),
    },
    "nllb-clip-large-siglip": {
        "v1": _siglip("visheratin/nllb-clip-large-siglip/"),
        "mrl": _siglip("visheratin/nllb-siglip-mrl-large/"),
    },
    "MobileCLIP-S1": {
        "datacompdr": _mobileclip("apple/MobileCLIP-S1-OpenCLIP/"),
    },
    "MobileCLIP-S2": {
        "datacompdr": _mobileclip("apple/MobileCLIP-S2-OpenCLIP/"),
    },
    "MobileCLIP-B": {
        "datacompdr": _mobileclip("apple/MobileCLIP-B-OpenCLIP/"),
        "datacompdr_lt": _mobileclip("apple/MobileCLIP-B-LT-OpenCLIP/"),
    },
    "MobileCLIP2-B": {
        "dfndr2b": _mobileclip("timm/MobileCLIP2-B-OpenCLIP/"),
    },
    "MobileCLIP2-S0": {
        "dfndr2b": _mobileclip("timm/MobileCLIP2-S0-OpenCLIP/"),
    },
    "MobileCLIP2-S2": {
        "dfndr2b": _mobileclip("timm/MobileCLIP2-S2-OpenCLIP/"),
    },
    "MobileCLIP2-S3": {
        "dfndr2b": _clip("timm/MobileCLIP2-S3-OpenCLIP/", interpolation="bilinear"),
    },
    "MobileCLIP2-S4": {
        "dfndr2b": _clip("timm/MobileCLIP2-S4-OpenCLIP/", interpolation="bilinear"),
    },
    "MobileCLIP2-L-14": {
        "dfndr2b": _clip("timm/MobileCLIP2-L-14-OpenCLIP/"),
    },
    "ViTamin-S": {
        "datacomp1b": _clip("jienengchen/ViTamin-S/pytorch_model.bin"),
    },
    "ViTamin-S-LTT": {
        "datacomp1b": _clip("jienengchen/ViTamin-S-LTT/pytorch_model.bin"),
    },
    "ViTamin-B": {
        "datacomp1b": _clip("jienengchen/ViTamin-B/pytorch_model.bin"),
    },
    "ViTamin-B-LTT": {
        "datacomp1b": _clip("jienengchen/ViTamin-B-LTT/pytorch_model.bin"),
    },
    "ViTamin-L": {
        "datacomp1b": _clip("jienengchen/ViTamin-L-224px/pytorch_model.bin"),
    },
    "ViTamin-L-256": {
        "datacomp1b": _clip("jienengchen/ViTamin-L-256px/pytorch_model.bin"),
    },
    "ViTamin-L-336": {
        "datacomp1b": _clip("jienengchen/ViTamin-L-336px/pytorch_model.bin"),
    },
    "ViTamin-L-384": {
        "datacomp1b": _clip("jienengchen/ViTamin-L-384px/pytorch_model.bin"),
    },
    "ViTamin-L2": {
        "datacomp1b": _clip("jienengchen/ViTamin-L2-224px/pytorch_model.bin"),
    },
    "ViTamin-L2-256": {
        "datacomp1b": _clip("jienengchen/ViTamin-L2-256px/pytorch_model.bin"),
    },
    "ViTamin-L2-336": {
        "datacomp1b": _clip("jienengchen/ViTamin-L2-336px/pytorch_model.bin"),
    },
    "ViTamin-L2-384": {
        "datacomp1b": _clip("jienengchen/ViTamin-L2-384px/pytorch_model.bin"),
    },
    "ViTamin-XL-256": {
        "datacomp1b": _clip("jienengchen/ViTamin-XL-256px/pytorch_model.bin"),
    },
    "ViTamin-XL-336": {
        "datacomp1b": _clip("jienengchen/ViTamin-XL-336px/pytorch_model.bin"),
    },
    "ViTamin-XL-384": {
        "datacomp1b": _clip("jienengchen/ViTamin-XL-384px/pytorch_model.bin"),
    },
    "PE-Core-T-16-384": {
        "meta": _pe_core("timm/PE-Core-T-16-384/"),
    },
    "PE-Core-S-16-384": {
        "meta": _pe_core("timm/PE-Core-S-16-384/"),
    },
    "PE-Core-B-16": {
        "meta": _pe_core("timm/PE-Core-B-16/"),
    },
    "PE-Core-L-14-336": {
        "meta": _pe_core("timm/PE-Core-L-14-336/"),
    },
    "PE-Core-bigG-14-448": {
        "meta": _pe_core("timm/PE-Core-bigG-14-448/"),
    },
    "ViT-H-14-worldwide": {
        "metaclip2_worldwide": _clip("timm/vit_huge_patch14_clip_224.metaclip2_worldwide/", quick_gelu=True),
    },
    "ViT-H-14-worldwide-378": {
        "metaclip2_worldwide": _clip(
            "timm/vit_huge_patch14_clip_378.metaclip2_worldwide/",
            resize_mode="squash",
        ),
    },
    "ViT-bigG-14-worldwide": {
        "metaclip2_worldwide": _clip("timm/vit_gigantic_patch14_clip_224.metaclip2_worldwide/"),
    },
    "ViT-bigG-14-worldwide-378": {
        "metaclip2_worldwide": _clip(
            "timm/vit_gigantic_patch14_clip_378.metaclip2_worldwide/",
            resize_mode="squash",
        ),
    },
}
