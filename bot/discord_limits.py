"""Discord's limits on what a bot sends, and the one place that makes any text fit them.

Every message text the bot sends is built by a function that ends in `fit` (message content, 2,000
characters); user text quoted inside it goes through `shown` first, so a prompt padded with invisible
characters is echoed as what it looks like, not as a wall of `\\u200b` escapes. Discord counts
lengths as JavaScript does (UTF-16 code units: an emoji outside the BMP counts 2), so `length` does
too; clipping never splits a character. No discord import: the service and the error mapping use it.
"""

from __future__ import annotations

import unicodedata

MAX_CONTENT = 2000  # message content
MAX_EMBED_TITLE = 256
MAX_EMBED_DESCRIPTION = 4096
MAX_BUTTON_LABEL = 80
MAX_CUSTOM_ID = 100
ELLIPSIS = "…"

# Characters that show nothing (format, control, private use, unassigned, surrogates, line and
# paragraph separators). The zero-width joiner stays: it holds emoji sequences together.
_INVISIBLE = frozenset({"Cc", "Cf", "Co", "Cn", "Cs", "Zl", "Zp"})
_KEPT = frozenset({"\u200d"})


def length(text: str) -> int:
    """Length as Discord counts it: UTF-16 code units."""
    return len(text) + sum(1 for c in text if ord(c) > 0xFFFF)


def clip(text: str, limit: int) -> str:
    """`text` if it fits in `limit` units, else its longest prefix that fits with a trailing "…"."""
    if limit < 1:
        raise ValueError(f"limit={limit} must be at least 1")
    if length(text) <= limit:
        return text
    used, kept = 0, 0
    for char in text:  # room for the ellipsis; never half of a surrogate pair
        used += 2 if ord(char) > 0xFFFF else 1
        if used > limit - 1:
            break
        kept += 1
    return text[:kept] + ELLIPSIS


def fit(text: str) -> str:
    """Message content that Discord accepts, whatever went into it."""
    return clip(text, MAX_CONTENT)


def shown(user_text: str, limit: int) -> str:
    """User text as the bot echoes it: invisible characters dropped, whitespace runs made one space,
    clipped to `limit`. For display only; what is journaled and generated is the text as typed."""
    visible = "".join(c for c in user_text if c in _KEPT or unicodedata.category(c) not in _INVISIBLE)
    return clip(" ".join(visible.split()), limit)
