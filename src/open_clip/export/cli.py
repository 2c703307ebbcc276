"""``python -m open_clip.export {onnx,hf,from-hf,folder}``: the command line of the exporters.

Each sub-command maps its flags onto one library function and prints what it wrote; refusals
and missing extras end with one ``error:`` line (exit status 2) instead of a traceback.
"""

import argparse
import logging
import sys
from typing import Optional

from .common import ExportError, MissingExtraError

__all__ = ["main"]


def _image_size(value: str):
    sizes = [int(v) for v in value.replace("x", ",").split(",") if v]
    if len(sizes) not in (1, 2):
        raise argparse.ArgumentTypeError(f"image size must be N or H,W; got {value!r}")
    return sizes[0] if len(sizes) == 1 else tuple(sizes)


def _add_source_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model name, local-dir:PATH or hf-hub:ORG/REPO")
    parser.add_argument("--pretrained", default=None, help="pretrained tag or checkpoint file")
    parser.add_argument("--output", required=True, help="output folder (created)")
    parser.add_argument("--force-quick-gelu", action="store_true", default=None,
                        help="use QuickGELU (default: what the pretrained tag was trained with)")
    parser.add_argument("--cache-dir", default=None, help="download cache for pretrained tags")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m open_clip.export",
                                     description="Export open_clip models to ONNX, transformers or a model folder.")
    sub = parser.add_subparsers(dest="command", required=True)
    onnx = sub.add_parser("onnx", help="visual.onnx + text.onnx + config + tokenizer.json")
    _add_source_flags(onnx)
    onnx.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    onnx.add_argument("--precision", choices=("fp32", "fp16"), default="fp32")
    onnx.add_argument("--force-image-size", type=_image_size, default=None, help="N or H,W")
    onnx.add_argument("--force-context-length", type=int, default=None)
    onnx.add_argument("--towers", default="visual,text", help="graphs to write: visual, text or visual,text")
    onnx.add_argument("--no-verify", action="store_true", help="skip the onnxruntime check")
    hf = sub.add_parser("hf", help="a transformers CLIPModel / SiglipModel folder with processor files")
    _add_source_flags(hf)
    hf.add_argument("--no-verify", action="store_true", help="skip loading it back and comparing features")
    from_hf = sub.add_parser("from-hf", help="a transformers CLIP / SigLIP folder or cached Hub id -> model folder")
    from_hf.add_argument("--input", required=True, help="transformers folder or Hub id (local cache only)")
    from_hf.add_argument("--output", required=True)
    from_hf.add_argument("--timm-model-name", default=None, help="timm ViT for a SigLIP image tower")
    from_hf.add_argument("--allow-download", action="store_true", help="download a Hub id missing from the cache")
    from_hf.add_argument("--no-verify", action="store_true")
    folder = sub.add_parser("folder", help="open_clip_config.json + open_clip_model.safetensors (+ tokenizer)")
    _add_source_flags(folder)
    folder.add_argument("--force-image-size", type=_image_size, default=None, help="N or H,W")
    folder.add_argument("--force-context-length", type=int, default=None)
    return parser


def _run(args: argparse.Namespace) -> None:
    if args.command == "onnx":
        from .onnx_export import export_onnx

        towers = [t for t in args.towers.split(",") if t]
        result = export_onnx(args.model, args.pretrained, args.output, opset=args.opset, precision=args.precision,
                             verify=not args.no_verify, towers=towers, force_quick_gelu=args.force_quick_gelu,
                             force_image_size=args.force_image_size, force_context_length=args.force_context_length,
                             cache_dir=args.cache_dir)
        for path in result.files.values():
            print(f"wrote {path}")
        if result.tokenizer_file:
            print(f"wrote {result.tokenizer_file}")
        else:
            print(f"no tokenizer.json: {result.tokenizer_note}")
        if result.max_abs_diff:
            print(f"onnxruntime vs torch max abs difference: {result.max_abs_diff}")
    elif args.command == "hf":
        from .hf_export import export_hf

        result = export_hf(args.model, args.pretrained, args.output, verify=not args.no_verify,
                           force_quick_gelu=args.force_quick_gelu, cache_dir=args.cache_dir)
        print(f"wrote transformers.{result.model_class} folder {result.output_dir}")
        if result.max_abs_diff:
            print(f"transformers vs open_clip max abs difference: {result.max_abs_diff}")
    elif args.command == "from-hf":
        from .hf_import import convert_from_hf

        result = convert_from_hf(args.input, args.output, timm_model_name=args.timm_model_name,
                                 local_files_only=not args.allow_download, verify=not args.no_verify)
        print(f"wrote open_clip folder {result.output_dir} (load it as 'local-dir:{result.output_dir}')")
        if result.max_abs_diff:
            print(f"open_clip vs transformers max abs difference: {result.max_abs_diff}")
    else:
        from .folder import export_folder

        path = export_folder(args.model, args.pretrained, args.output, force_quick_gelu=args.force_quick_gelu,
                             force_image_size=args.force_image_size, force_context_length=args.force_context_length,
                             cache_dir=args.cache_dir)
        print(f"wrote open_clip folder {path} (load it as 'local-dir:{path}')")


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point; returns the exit status (0 ok, 2 refused or bad input)."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        _run(args)
    except (ExportError, MissingExtraError, FileNotFoundError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
