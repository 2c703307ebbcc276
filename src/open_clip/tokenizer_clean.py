"""Text cleaning shared by the tokenizers: ftfy + HTML unescaping, whitespace collapsing,
canonicalisation, the three clean modes of OpenCLIP 3.3, and the ftfy "provable no-op" test
used by the fast tokenizer path.
"""

import html
import re
import string
from collections.abc import Callable
from typing import Optional

import ftfy

__all__ = [
    "basic_clean",
    "whitespace_clean",
    "canonicalize_text",
    "get_clean_fn",
    "is_clean_noop",
    "CLEAN_MODES",
]

_DELETE_PUNCTUATION = str.maketrans("", "", string.punctuation)

# Characters for which ftfy.fix_text and html.unescape are both the identity, proven fix by fix
# (ftfy 6.x defaults):
# - fix_encoding / restore_byte_a0 / replace_lossy_sequences / decode_inconsistent_utf8 /
#   fix_c1_controls / fix_latin_ligatures / fix_character_width / uncurl_quotes / fix_surrogates
#   only ever rewrite non-ASCII characters (ASCII text is also skipped by the mojibake repair);
# - NFC normalisation leaves ASCII unchanged;
# - remove_terminal_escapes needs ESC (0x1b); remove_control_chars needs one of
#   0x00-0x08, 0x0b, 0x0e-0x1f, 0x7f; fix_line_breaks needs '\r' (or non-ASCII breaks);
# - unescape_html and html.unescape both need '&'.
# So text made only of '\t', '\n', '\f' and U+0020..U+007E without '&' is left untouched;
# basic_clean then reduces to .strip(). The test suite checks this against ftfy itself.
_UNSAFE_FOR_NOOP = re.compile(r"[^\t\n\x0c\x20-\x25\x27-\x7e]")


def basic_clean(text: str) -> str:
    """ftfy.fix_text with defaults, html.unescape twice, then strip."""
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text))
    return text.strip()


def whitespace_clean(text: str) -> str:
    """Collapse every run of Unicode whitespace (``str.split``) into one space and strip."""
    return " ".join(text.split()).strip()


def canonicalize_text(
    text: str,
    *,
    keep_punctuation_exact_string: Optional[str] = None,
    trans_punctuation: dict = _DELETE_PUNCTUATION,
) -> str:
    """Replace '_' by space, drop ASCII punctuation, lower-case, collapse whitespace.

    With ``keep_punctuation_exact_string`` the text is split on that exact string, each part is
    stripped of punctuation and the parts are re-joined with it (so "{}" may survive).
    """
    text = text.replace("_", " ")
    if keep_punctuation_exact_string:
        parts = text.split(keep_punctuation_exact_string)
        text = keep_punctuation_exact_string.join(part.translate(trans_punctuation) for part in parts)
    else:
        text = text.translate(trans_punctuation)
    text = text.lower()
    return " ".join(text.split()).strip()


def _clean_lower(text: str) -> str:
    return whitespace_clean(basic_clean(text)).lower()


def _clean_whitespace(text: str) -> str:
    return whitespace_clean(basic_clean(text))


def _clean_canonicalize(text: str) -> str:
    return canonicalize_text(basic_clean(text))


CLEAN_MODES: dict[str, Callable[[str], str]] = {
    "lower": _clean_lower,
    "whitespace": _clean_whitespace,
    "canonicalize": _clean_canonicalize,
}


def get_clean_fn(type: str) -> Callable[[str], str]:
    """Return the cleaning function for ``'lower'``, ``'whitespace'`` or ``'canonicalize'``."""
    try:
        return CLEAN_MODES[type]
    except (KeyError, TypeError):
        # 3.3 raises a bare assertion with this message; keep the type for compatibility.
        raise AssertionError(f"Invalid clean function ({type}).") from None


def is_clean_noop(text: str) -> bool:
    """True when ftfy.fix_text and html.unescape are guaranteed to leave ``text`` unchanged."""
    return text.isascii() and _UNSAFE_FOR_NOOP.search(text) is None

