"""A portable Hugging Face ``tokenizers`` file (``tokenizer.json``) for our tokenizers.

Deployments that do not run Python (ONNX Runtime services, browsers, Rust/Go/Java apps) load
``tokenizer.json`` with any ``tokenizers`` binding and must get the ids open_clip gives. For the
CLIP BPE ``SimpleTokenizer`` the pipeline is built from the same vocabulary and merges:

- normalizer: ftfy's character fixes taken from ftfy's own tables (ligatures, full/half-width
  forms, curly quotes, control characters), NFC, common HTML entities (twice, like the double
  ``html.unescape``), whitespace collapsing, lower-case (``clean='lower'``);
- pre-tokenizer: our pre-tokenisation regex (matches kept, whitespace dropped), then the byte ->
  unicode mapping;
- model: BPE with the ``</w>`` end-of-word suffix;
- post-processor: ``<start_of_text> ... <end_of_text>``; truncation and padding (id 0) to the
  context length, so a row is exactly what ``tokenizer(texts)`` returns.

What it cannot do (``TOKENIZER_JSON_LIMITS``, written next to the file): ftfy's mojibake repair,
rare HTML entities, and a special-token string glued to preceding punctuation. Hugging Face
tokenizers (``HFTokenizer``, ``SigLipTokenizer``) ship their own ``tokenizer.json``; only the
cleaning step applied before them stays outside the file.
"""

from pathlib import Path
from typing import Any, Union

from ..tokenizer import SimpleTokenizer, bytes_to_unicode
from ..tokenizer_clean import CLEAN_MODES

__all__ = ["TOKENIZER_JSON_LIMITS", "build_clip_tokenizer", "unsupported_reason", "write_portable_tokenizer"]

TOKENIZER_FILE = "tokenizer.json"

TOKENIZER_JSON_LIMITS = (
    "tokenizer.json gives the ids of open_clip's tokenizer (padded with 0 to the context length) except for "
    "text that needs ftfy's mojibake repair, HTML entities outside the common ones (&amp; &lt; &gt; &quot; "
    "&#39; &nbsp; ...), or a literal <start_of_text>/<end_of_text> right after punctuation. Such text must go "
    "through ftfy.fix_text and html.unescape (twice) first: the tokenizers library has no ftfy."
)

# Entities seen in web captions; html.unescape knows ~2,200, but each Replace rescans the text.
_HTML_ENTITIES = {
    "&quot;": '"', "&#34;": '"', "&apos;": "'", "&#39;": "'", "&#039;": "'", "&#x27;": "'",
    "&lt;": "<", "&gt;": ">", "&nbsp;": "\u00a0", "&#160;": "\u00a0", "&ndash;": "\u2013",
    "&mdash;": "\u2014", "&hellip;": "\u2026", "&rsquo;": "\u2019", "&lsquo;": "\u2018",
    "&rdquo;": "\u201d", "&ldquo;": "\u201c", "&#8217;": "\u2019", "&eacute;": "\u00e9",
    "&copy;": "\u00a9", "&reg;": "\u00ae", "&trade;": "\u2122", "&deg;": "\u00b0",
}


def unsupported_reason(tokenizer: Any) -> str:
    """Why ``tokenizer`` has no ``tokenizer.json`` equivalent here ('' when it has one)."""
    if not isinstance(tokenizer, SimpleTokenizer):
        if hasattr(tokenizer, "save_pretrained"):
            return ""  # Hugging Face tokenizers carry their own tokenizer.json
        return f"{type(tokenizer).__name__} is neither the CLIP BPE tokenizer nor a Hugging Face tokenizer"
    if tokenizer.reduction_fn is not None:
        return "its reduction mask (random / shuffle / syntax token selection) is not a tokenizers pipeline"
    if tokenizer.clean != "lower":
        return f"clean={tokenizer.clean!r} (only 'lower' cleaning is expressed as a tokenizers normalizer)"
    return ""


def _char_fixes() -> list:
    """ftfy's character-level fixes as Replace steps, from ftfy's own tables (ligatures, full- and
    half-width forms, curly quotes, control characters), in ftfy's order."""
    from ftfy import fixes
    from tokenizers import Regex, normalizers

    steps = [normalizers.Replace(chr(k), v) for k, v in fixes.LIGATURES.items()]
    steps += [normalizers.Replace(chr(k), v) for k, v in fixes.WIDTH_MAP.items()]
    steps.append(normalizers.Replace(Regex(fixes.SINGLE_QUOTE_RE.pattern), "'"))
    steps.append(normalizers.Replace(Regex(fixes.DOUBLE_QUOTE_RE.pattern), '"'))
    controls = "".join(f"\\x{{{k:x}}}" for k in sorted(fixes.CONTROL_CHARS))
    steps.append(normalizers.Replace(Regex(f"[{controls}]"), ""))
    return steps


def _normalizer():
    from tokenizers import Regex, normalizers

    unescape = [normalizers.Replace(k, v) for k, v in _HTML_ENTITIES.items()]
    amp = normalizers.Replace("&amp;", "&")
    # ftfy ends with NFC (which also composes half-width kana marks); then html.unescape twice.
    steps = [*_char_fixes(), normalizers.NFC(), *unescape, amp, *unescape, amp]
    steps += [normalizers.Replace(Regex(r"\s+"), " "), normalizers.Strip(), normalizers.Lowercase()]
    return normalizers.Sequence(steps)


def _pre_tokenizer(tokenizer: SimpleTokenizer):
    from tokenizers import Regex, pre_tokenizers

    # Only the non-special part of our pattern: special tokens are matched as added tokens first.
    # (?i) keeps the IGNORECASE flag of the Python pattern.
    pattern = r"(?i)'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"
    return pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])


def build_clip_tokenizer(tokenizer: SimpleTokenizer, context_length: int):
    """A ``tokenizers.Tokenizer`` giving ``tokenizer``'s ids, padded/truncated to ``context_length``.

    Raises ValueError naming the setting when ``tokenizer`` cannot be expressed (see
    ``unsupported_reason``).
    """
    reason = unsupported_reason(tokenizer)
    if reason or not isinstance(tokenizer, SimpleTokenizer):
        raise ValueError(f"Cannot write a tokenizer.json for this tokenizer: {reason}")
    if context_length < 2:
        raise ValueError(f"context_length must be at least 2 (<start_of_text> and <end_of_text>), got {context_length}")
    from tokenizers import AddedToken, Tokenizer, decoders, models, processors

    merges = list(tokenizer._merges)
    bpe = models.BPE(vocab=dict(tokenizer.encoder), merges=merges, end_of_word_suffix="</w>",
                     continuing_subword_prefix="", unk_token=None, fuse_unk=False)
    hf = Tokenizer(bpe)
    hf.normalizer = _normalizer()
    hf.pre_tokenizer = _pre_tokenizer(tokenizer)
    hf.decoder = decoders.BPEDecoder(suffix="</w>")
    # Specials are matched in the raw text (our regex matches them before cleaning changes case).
    hf.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in tokenizer._special_tokens])
    sot, eot = tokenizer._special_tokens[:2]
    hf.post_processor = processors.TemplateProcessing(
        single=f"{sot} $A {eot}", pair=f"{sot} $A {eot} $B {eot}",
        special_tokens=[(sot, tokenizer.sot_token_id), (eot, tokenizer.eot_token_id)],
    )
    hf.enable_truncation(max_length=context_length)
    pad_token = tokenizer.decoder[0]
    hf.enable_padding(length=context_length, pad_id=0, pad_token=pad_token)
    _check_byte_alphabet()
    return hf


def _check_byte_alphabet() -> None:
    # The ByteLevel pre-tokenizer and our vocab must use the same byte -> character table.
    from tokenizers import pre_tokenizers

    ours = set(bytes_to_unicode().values())
    theirs = set(pre_tokenizers.ByteLevel.alphabet())
    if ours != theirs:
        raise RuntimeError("tokenizers' ByteLevel alphabet differs from the CLIP byte table; "
                           "tokenizer.json would give wrong ids")


def _clean_name(clean_fn: Any) -> str:
    return next((name for name, fn in CLEAN_MODES.items() if fn is clean_fn), "custom")


def _hf_backend_info(tokenizer: Any, context_length: int) -> tuple[Any, dict[str, Any]]:
    """(tokenizers.Tokenizer, info) of an HFTokenizer / SigLipTokenizer, or (None, {'unavailable': why})."""
    hf_tokenizer = getattr(tokenizer, "tokenizer", None)
    backend = getattr(hf_tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None, {"unavailable": f"{type(hf_tokenizer).__name__} has no tokenizers backend (a slow tokenizer)"}
    if getattr(tokenizer, "tokenizer_mode", "") == "clips":
        return None, {"unavailable": "tokenizer_mode='clips' rearranges the ids after tokenizing"}
    if getattr(tokenizer, "strip_sep_token", False):
        return None, {"unavailable": "strip_sep_token=True rewrites the ids after tokenizing"}
    from tokenizers import Tokenizer

    backend = Tokenizer.from_str(backend.to_str())  # a copy: padding settings stay off the live one
    pad_id = hf_tokenizer.pad_token_id if hf_tokenizer.pad_token_id is not None else 0
    backend.enable_truncation(max_length=context_length)
    backend.enable_padding(length=context_length, pad_id=pad_id, pad_token=hf_tokenizer.pad_token or "")
    clean = "canonicalize" if type(tokenizer).__name__ == "SigLipTokenizer" else _clean_name(tokenizer.clean_fn)
    limits = (f"Clean text with open_clip.tokenizer_clean '{clean}' (ftfy, HTML unescaping, whitespace) before "
              f"tokenizing: tokenizer.json holds only the Hugging Face tokenizer.")
    return backend, {"kind": "huggingface", "pad_id": pad_id, "clean": clean, "limits": limits}


def write_portable_tokenizer(tokenizer: Any, output_dir: Union[str, Path], context_length: int) -> dict[str, Any]:
    """Write ``tokenizer.json`` for ``tokenizer`` into ``output_dir`` when possible.

    Returns the description stored in ``open_clip_config.json``: file name, kind, context length,
    special ids and limits, or ``{'unavailable': reason}``.
    """
    if tokenizer is None:
        return {"unavailable": "no tokenizer was given to the exporter"}
    if isinstance(tokenizer, SimpleTokenizer):
        reason = unsupported_reason(tokenizer)
        if reason:
            return {"unavailable": reason}
        backend = build_clip_tokenizer(tokenizer, context_length)
        info = {"kind": "clip_bpe", "pad_id": 0, "sot_id": tokenizer.sot_token_id,
                "eot_id": tokenizer.eot_token_id, "limits": TOKENIZER_JSON_LIMITS}
    else:
        backend, info = _hf_backend_info(tokenizer, context_length)
        if backend is None:
            return info
    backend.save(str(Path(output_dir) / TOKENIZER_FILE))
    return {"file": TOKENIZER_FILE, "context_length": context_length, **info}
