"""The registry of published weights and how their files are fetched.

Owns ``_PRETRAINED`` (built from the declarative table in ``pretrained_table.py`` plus the derived
``<arch>-quickgelu`` entries), the lookup functions over it, and the two download paths: plain URLs
(sha256-checked where the URL carries a digest, resumable, atomically renamed into the cache) and
the Hugging Face Hub (through ``huggingface_hub``, safetensors preferred, cache-only when
``HF_HUB_OFFLINE`` is set). Loading the downloaded files into models is the factory's job.
"""

import copy
import hashlib
import http.client
import os
import urllib.request  # binds `urllib`; tests replace `open_clip.pretrained.urllib` with a mock
import uuid
import warnings
from typing import Any, Optional, Union
from urllib.error import HTTPError

from tqdm import tqdm

from .constants import (  # noqa: F401 (the statistics are re-exported: 3.3 code imports them from here)
    HF_SAFE_WEIGHTS_NAME,
    HF_WEIGHTS_NAME,
    IMAGENET_MEAN,
    IMAGENET_STD,
    INCEPTION_MEAN,
    INCEPTION_STD,
    OPENAI_DATASET_MEAN,
    OPENAI_DATASET_STD,
)
from .pretrained_cache import (
    CorruptCacheError,
    hub_cache_dir,
    is_offline,
    offline_message,
    safetensors_file_ok,
    sha256_file,
)
from .pretrained_table import PRETRAINED_TABLE
from .version import __version__

try:
    from huggingface_hub import hf_hub_download

    _has_hf_hub = True
except ImportError:  # the Hub client is optional: URL downloads still work without it
    hf_hub_download = None
    _has_hf_hub = False

try:
    import safetensors.torch  # noqa: F401

    _has_safetensors = True
except ImportError:
    _has_safetensors = False

_DEFAULT_URL_CACHE = "~/.cache/clip"
_READ_CHUNK = 1 << 20  # 3.3 reads 8 KiB at a time; larger reads cut per-chunk overhead


def _build_registry(table: dict[str, dict[str, dict]]) -> dict[str, dict[str, dict]]:
    """Copy the table and append ``<arch>-quickgelu`` archs holding the quick_gelu records."""
    registry = {arch: {tag: copy.deepcopy(rec) for tag, rec in tags.items()} for arch, tags in table.items()}
    derived = {}
    for arch, tags in registry.items():
        qg = {tag: copy.deepcopy(rec) for tag, rec in tags.items() if rec.get("quick_gelu", False)}
        if qg:
            derived[f"{arch}-quickgelu"] = qg
    registry.update(derived)
    return registry


_PRETRAINED: dict[str, dict[str, dict]] = _build_registry(PRETRAINED_TABLE)
# The derived `<arch>-quickgelu` entries (the same dicts as in `_PRETRAINED`), under 3.3's name.
_PRETRAINED_quickgelu = {arch: tags for arch, tags in _PRETRAINED.items() if arch not in PRETRAINED_TABLE}

# 3.3 kept some architectures' tag tables in module globals; code that extends or inspects them
# (e.g. `_VITB32["mytag"] = ...`) reaches the live registry entries through these names.
_RN50 = _PRETRAINED["RN50"]
_RN101 = _PRETRAINED["RN101"]
_RN50x4 = _PRETRAINED["RN50x4"]
_RN50x16 = _PRETRAINED["RN50x16"]
_RN50x64 = _PRETRAINED["RN50x64"]
_VITB32 = _PRETRAINED["ViT-B-32"]
_VITB32_256 = _PRETRAINED["ViT-B-32-256"]
_VITB16 = _PRETRAINED["ViT-B-16"]
_VITB16_PLUS_240 = _PRETRAINED["ViT-B-16-plus-240"]
_VITL14 = _PRETRAINED["ViT-L-14"]
_VITL14_336 = _PRETRAINED["ViT-L-14-336"]
_VITH14 = _PRETRAINED["ViT-H-14"]
_VITH14_378 = _PRETRAINED["ViT-H-14-378"]
_VITg14 = _PRETRAINED["ViT-g-14"]
_VITbigG14 = _PRETRAINED["ViT-bigG-14"]
_robertaViTB32 = _PRETRAINED["roberta-ViT-B-32"]
_xlmRobertaBaseViTB32 = _PRETRAINED["xlm-roberta-base-ViT-B-32"]
_xlmRobertaLargeFrozenViTH14 = _PRETRAINED["xlm-roberta-large-ViT-H-14"]
_convnext_base = _PRETRAINED["convnext_base"]
_convnext_base_w = _PRETRAINED["convnext_base_w"]
_convnext_base_w_320 = _PRETRAINED["convnext_base_w_320"]
_convnext_large_d = _PRETRAINED["convnext_large_d"]
_convnext_large_d_320 = _PRETRAINED["convnext_large_d_320"]
_convnext_xxlarge = _PRETRAINED["convnext_xxlarge"]
_coca_VITB32 = _PRETRAINED["coca_ViT-B-32"]
_coca_VITL14 = _PRETRAINED["coca_ViT-L-14"]


def _record_maker(mean: tuple[float, ...], std: tuple[float, ...], interpolation: str, resize_mode: str):
    """A 3.3-style record builder: ``maker(url='', hf_hub='', **extra)`` -> registry record dict."""

    def make(url: str = "", hf_hub: str = "", **extra: Any) -> dict[str, Any]:
        record = dict(url=url, hf_hub=hf_hub, mean=mean, std=std, interpolation=interpolation, resize_mode=resize_mode)
        record.update(extra)  # extra keys (quick_gelu, or a different interpolation...) win
        return record

    return make


# 3.3's record builders, one per preprocessing family, for code that registers its own weights.
_pcfg = _record_maker(OPENAI_DATASET_MEAN, OPENAI_DATASET_STD, "bicubic", "shortest")  # OpenAI / OpenCLIP
_slpcfg = _record_maker(INCEPTION_MEAN, INCEPTION_STD, "bicubic", "squash")  # SigLIP / SigLIP2
_apcfg = _record_maker(IMAGENET_MEAN, IMAGENET_STD, "bilinear", "squash")  # CLIPA
_mccfg = _record_maker((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "bilinear", "shortest")  # MobileCLIP
_mc2cfg = _record_maker(OPENAI_DATASET_MEAN, OPENAI_DATASET_STD, "bilinear", "shortest")  # MobileCLIP2 S3/S4/L
_pecfg = _record_maker(INCEPTION_MEAN, INCEPTION_STD, "bilinear", "squash")  # Perception Encoder


# --------------------------------------------------------------------------------------------
# Lookup


def _clean_tag(tag: str) -> str:
    """Normalise a tag the way every lookup does: lower case, '-' -> '_'."""
    return tag.lower().replace("-", "_")


def list_pretrained(as_str: bool = False) -> list[Union[tuple[str, str], str]]:
    """All ``(arch, tag)`` pairs in registry order, or ``'arch:tag'`` strings when ``as_str``."""
    return [f"{arch}:{tag}" if as_str else (arch, tag) for arch, tags in _PRETRAINED.items() for tag in tags]


def list_pretrained_models_by_tag(tag: str) -> list[str]:
    """Architectures that have weights under ``tag`` (normalised), in registry order."""
    tag = _clean_tag(tag)
    return [arch for arch, tags in _PRETRAINED.items() if tag in tags]


def list_pretrained_tags_by_model(model: str) -> list[str]:
    """Tags published for architecture ``model`` (exact name), or ``[]`` if it has none."""
    return list(_PRETRAINED.get(model, {}))


def is_pretrained_cfg(model: str, tag: str) -> bool:
    """Whether ``(model, tag)`` names a registry record."""
    return _clean_tag(tag) in _PRETRAINED.get(model, {})


def get_pretrained_cfg(model: str, tag: str) -> dict[str, Any]:
    """The registry record of ``(model, tag)`` (the live dict, not a copy), or ``{}``."""
    return _PRETRAINED.get(model, {}).get(_clean_tag(tag), {})


def get_pretrained_url(model: str, tag: str) -> str:
    """The direct download URL of ``(model, tag)``, or ``''`` when it has none."""
    return get_pretrained_cfg(model, tag).get("url", "")


def unknown_tag_message(model: str, tag: str) -> str:
    """One line saying ``tag`` is not published for ``model`` and which tags are."""
    tags = list_pretrained_tags_by_model(model)
    known = ", ".join(tags) if tags else "none (no published weights for this architecture)"
    return f"Unknown pretrained tag '{tag}' for model '{model}'. Known tags: {known}."


# --------------------------------------------------------------------------------------------
# URL downloads


def _expected_sha256(url: str) -> str:
    """The digest (or digest prefix) the URL carries: OpenAI's full hash, our 8-hex suffix."""
    if "openaipublic" in url:
        return url.split("/")[-2]
    if "mlfoundations" in url:
        return os.path.splitext(os.path.basename(url))[0].split("-")[-1]
    return ""


def download_pretrained_from_url(url: str, cache_dir: Optional[str] = None) -> str:
    """Download ``url`` into ``cache_dir`` (default ``~/.cache/clip``) and return the local path.

    A cached file is reused when its sha256 matches the digest in the URL (or when the URL has
    none). Data goes to ``<file>.part`` and is renamed into place only once complete and
    verified; an interrupted download is resumed on the next call. With ``HF_HUB_OFFLINE`` set no
    network access is attempted.
    """
    cache_dir = os.path.expanduser(cache_dir or _DEFAULT_URL_CACHE)
    os.makedirs(cache_dir, exist_ok=True)
    target = os.path.join(cache_dir, os.path.basename(url))
    expected = _expected_sha256(url)

    if os.path.exists(target) and not os.path.isfile(target):
        raise RuntimeError(f"{target} exists and is not a regular file")
    if os.path.isfile(target):
        if not expected or sha256_file(target).startswith(expected):
            return target
        warnings.warn(
            f"{target} exists, but the SHA256 checksum does not match; re-downloading the file",
            stacklevel=2,
        )
        if is_offline():
            raise CorruptCacheError(
                f"{target} does not match the SHA256 digest in {url} and HF_HUB_OFFLINE is set, so it "
                f"cannot be downloaded again; unset HF_HUB_OFFLINE or replace the file."
            )
    elif is_offline():
        raise FileNotFoundError(offline_message(os.path.basename(url), url, cache_dir))

    _fetch_url(url, target, expected)
    return target


def _fetch_url(url: str, target: str, expected: str) -> None:
    """Fetch ``url`` into ``target``, resuming the partial file ``target.part`` if one exists.

    Each call writes to its own temporary file (several ranks may download the same weights at
    once); it claims ``target.part`` by renaming it, and hands unfinished data back under that
    name so the next call can resume. Only downloads whose URL carries a digest are resumed (a
    stale prefix would otherwise go unnoticed), and a resumed file failing the digest is fetched
    once more from scratch. ``target`` only ever appears complete and verified.
    """
    resume = target + ".part"
    tmp = f"{target}.{os.getpid()}-{uuid.uuid4().hex[:8]}.part"
    try:
        os.replace(resume, tmp)
        if not expected:
            os.remove(tmp)
    except FileNotFoundError:
        pass  # nothing to resume (or another download claimed it first)
    try:
        digest, resumed = _download_into(url, tmp, resume)
        if resumed and expected and not digest.startswith(expected):
            os.remove(tmp)
            digest, _ = _download_into(url, tmp, resume)
    except BaseException:
        _keep_for_resume(tmp, resume)
        raise
    if expected and not digest.startswith(expected):
        os.remove(tmp)  # 3.3 leaves the bad file in place
        raise RuntimeError("Model has been downloaded but the SHA256 checksum does not not match")
    os.replace(tmp, target)


def _download_into(url: str, part: str, resume: str) -> tuple[str, bool]:
    """``_stream_to_part``, starting over once if the server cannot continue our partial file."""
    try:
        return _stream_to_part(url, part, resume)
    except HTTPError as e:
        if e.code != 416 or not os.path.exists(part):  # 416: range not satisfiable
            raise
        os.remove(part)
        return _stream_to_part(url, part, resume)


def _keep_for_resume(tmp: str, resume: str) -> None:
    if os.path.isfile(tmp) and os.path.getsize(tmp) > 0:
        os.replace(tmp, resume)
    elif os.path.exists(tmp):
        os.remove(tmp)


def _stream_to_part(url: str, part: str, resume: str) -> tuple[str, bool]:
    """Write the response body into ``part`` (appending when the server honours a range request).

    ``resume`` is where unfinished data will be kept (named in the error message). Returns the
    sha256 hex digest of the complete file and whether an existing prefix was continued.
    """
    offset = os.path.getsize(part) if os.path.isfile(part) else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"}) if offset else url
    hasher = hashlib.sha256()
    with urllib.request.urlopen(request) as source:
        resumed = offset > 0 and getattr(source, "status", None) == 206
        if resumed:
            with open(part, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    hasher.update(chunk)
        else:
            offset = 0
        length = source.headers.get("Content-Length")
        # 3.3 crashes without Content-Length; an unknown total just means no percentage.
        total = offset + int(length) if length is not None else None
        with (
            open(part, "ab" if resumed else "wb") as out,
            tqdm(total=total, initial=offset, ncols=80, unit="iB", unit_scale=True, unit_divisor=1024) as bar,
        ):
            try:
                while True:
                    buffer = source.read(_READ_CHUNK)
                    if not buffer:
                        break
                    out.write(buffer)
                    hasher.update(buffer)
                    bar.update(len(buffer))
            except (OSError, http.client.HTTPException) as e:
                raise ConnectionError(_interrupted(url, resume, out.tell(), total)) from e
            done = out.tell()
    if total is not None and done < total:
        raise ConnectionError(_interrupted(url, resume, done, total))
    return hasher.hexdigest(), resumed


def _interrupted(url: str, part: str, done: int, total: Optional[int]) -> str:
    of = f" of {total}" if total is not None else ""
    return (
        f"Download of {url} stopped after {done}{of} bytes; the partial data is kept in {part} "
        f"and the next call resumes from there."
    )


# --------------------------------------------------------------------------------------------
# Hugging Face Hub


def has_hf_hub(necessary: bool = False) -> bool:
    """Whether ``huggingface_hub`` is importable; raise instead of returning False if ``necessary``."""
    if not _has_hf_hub and necessary:
        raise RuntimeError(
            "Hugging Face hub model specified but package not installed. Run `pip install huggingface_hub`."
        )
    return _has_hf_hub


def _split_revision(model_id: str, revision: Optional[str]) -> tuple[str, Optional[str]]:
    """``'org/repo@rev'`` -> ``('org/repo', 'rev')`` (an extension: 3.3 passes the '@' through)."""
    repo, sep, rev = model_id.partition("@")
    if not sep:
        return model_id, revision
    if not repo or not rev:
        raise ValueError(f"Malformed Hub id '{model_id}': expected 'org/repo' or 'org/repo@revision'.")
    if revision is not None and revision != rev:
        raise ValueError(f"Hub id '{model_id}' names revision '{rev}' but revision='{revision}' was also given.")
    return repo, rev


def _get_safe_alternatives(filename: str) -> list[str]:
    """Safetensors files to try before ``filename`` (the default weights or any .bin/.pth)."""
    if filename == HF_WEIGHTS_NAME:
        return [HF_SAFE_WEIGHTS_NAME]
    stem, ext = os.path.splitext(filename)
    if ext in (".bin", ".pth"):
        return [stem + ".safetensors"]
    return []


def download_pretrained_from_hf(
    model_id: str,
    filename: Optional[str] = None,
    revision: Optional[str] = None,
    cache_dir: Optional[str] = None,
) -> str:
    """Fetch ``filename`` (default: the open_clip weights) of Hub repo ``model_id``; return its path.

    ``model_id`` may end in ``@revision``. A safetensors sibling of a .bin/.pth file is preferred
    when it exists. ``cache_dir=None`` uses ``HF_HUB_CACHE`` / ``HF_HOME`` / the Hub default; with
    ``HF_HUB_OFFLINE`` set only cached files are used.
    """
    has_hf_hub(True)
    model_id, revision = _split_revision(model_id, revision)
    filename = filename or HF_WEIGHTS_NAME
    candidates = (_get_safe_alternatives(filename) if _has_safetensors else []) + [filename]
    cache = hub_cache_dir(cache_dir)
    offline = is_offline()
    last_error: Optional[BaseException] = None
    for name in candidates:
        try:
            return _hub_fetch(model_id, name, revision, cache, offline)
        except CorruptCacheError:
            raise
        except Exception as e:  # a missing safetensors sibling is normal; try the next name
            last_error = e
    if offline:
        where = f"{model_id}@{revision}" if revision else model_id
        raise FileNotFoundError(
            f"Failed to download file ({filename}) for {model_id}. Last error: "
            + offline_message(" or ".join(candidates), f"hf-hub:{where}", cache)
        ) from None
    raise FileNotFoundError(
        f"Failed to download file ({filename}) for {model_id}. Last error: {last_error}"
    ) from last_error


def _hub_fetch(model_id: str, filename: str, revision: Optional[str], cache: Optional[str], offline: bool) -> str:
    """One ``hf_hub_download``; a cached safetensors file with a broken header is fetched again."""
    kwargs = dict(
        revision=revision,
        cache_dir=cache,
        library_name="open_clip",
        library_version=__version__,
        local_files_only=offline,
    )
    path = hf_hub_download(model_id, filename, **kwargs)
    if not filename.endswith(".safetensors") or safetensors_file_ok(path):
        return path
    if offline:
        raise CorruptCacheError(
            f"Cached {path} ({model_id}/{filename}) is not a valid safetensors file and HF_HUB_OFFLINE "
            f"is set, so it cannot be downloaded again; unset HF_HUB_OFFLINE or delete the file."
        )
    path = hf_hub_download(model_id, filename, force_download=True, **kwargs)
    if not safetensors_file_ok(path):
        raise CorruptCacheError(f"{model_id}/{filename} was downloaded again but is still not valid safetensors.")
    return path


def download_pretrained(
    cfg: dict[str, Any],
    prefer_hf_hub: bool = True,
    cache_dir: Optional[str] = None,
) -> str:
    """Fetch the weights a registry record points to; return the local path (``''`` for no record).

    ``cfg['file']`` is returned as-is. With the Hub client installed and ``prefer_hf_hub``, a
    record's ``hf_hub`` wins over its ``url``; there is no fallback from a failed Hub download to
    the URL.
    """
    if not cfg:
        return ""
    if "file" in cfg:
        return cfg["file"]
    url = cfg.get("url", "")
    hf_hub = cfg.get("hf_hub", "")
    if has_hf_hub() and prefer_hf_hub and hf_hub:
        url = ""
    if url:
        return download_pretrained_from_url(url, cache_dir=cache_dir)
    if hf_hub:
        has_hf_hub(True)
        model_id, filename = os.path.split(hf_hub)
        return download_pretrained_from_hf(model_id, filename=filename or None, cache_dir=cache_dir)
    return ""
