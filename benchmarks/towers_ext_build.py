"""Build cost of the timm / HF towers: meta-device build (what the layout tests use) vs a real
random-init CPU build, and CPU forward throughput of a SigLIP-B/16 timm tower.

Prints figures; asserts nothing. Run: `.venv/bin/python benchmarks/towers_ext_build.py`.
"""

import functools
import time

import torch

from open_clip.timm_model import TimmModel

TOWERS = [  # (config it comes from, timm name, embed_dim, pool, proj)
    ("ViT-B-16-SigLIP", "vit_base_patch16_siglip_224", 768, "map", "none"),
    ("convnext_base", "convnext_base", 512, "", "linear"),
    ("EVA02-B-16", "eva02_base_patch16_clip_224", 512, "token", None),
]


def _timed(fn, repeat: int = 1) -> float:
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat


def main() -> None:
    torch.set_num_threads(2)
    torch.manual_seed(0)
    print(f"{'tower':<18} {'meta build s':>12} {'cpu build s':>12} {'cpu/meta':>9}")
    for cfg_name, name, dim, pool, proj in TOWERS:
        build = functools.partial(TimmModel, name, dim, pool=pool, proj=proj)

        def build_meta(build=build):
            with torch.device("meta"):
                build()

        build_meta()  # warm-up (imports, registry)
        meta = _timed(build_meta, repeat=3)
        cpu = _timed(build)
        print(f"{cfg_name:<18} {meta:>12.3f} {cpu:>12.3f} {cpu / meta:>9.1f}")

    model = TimmModel("vit_base_patch16_siglip_224", 768, pool="map", proj="none").eval()
    images = torch.randn(8, 3, 224, 224)
    with torch.no_grad():
        model(images[:1])
        seconds = _timed(lambda: model(images), repeat=2)
    print(f"SigLIP-B/16 timm tower forward, batch 8, fp32 CPU (2 threads): {8 / seconds:.1f} images/s")


if __name__ == "__main__":
    main()
