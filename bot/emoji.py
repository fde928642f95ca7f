"""Comparing reaction emoji as people mean them, not as their code points happen to be spelled.

One emoji reaches the bot in several spellings: a keycap with or without the emoji variation
selector (`2⃣` U+0032 U+20E3 from some clients and libraries, `2️⃣` with U+FE0F from others), text vs
emoji presentation (U+FE0E / U+FE0F after ❤, ✔, …), and a skin-tone modifier (U+1F3FB–U+1F3FF) added
by a member's default tone. All are the same vote. A configured emoji that itself carries a tone keeps
it: 👍🏽 configured is not matched by 👍🏿.
"""

from __future__ import annotations

from collections.abc import Iterable

_VARIATION_SELECTORS = dict.fromkeys((0xFE0E, 0xFE0F))  # str.translate table: delete both
_SKIN_TONES = dict.fromkeys(range(0x1F3FB, 0x1F400))


def without_variation(emoji: str) -> str:
    """`emoji` without presentation selectors (`2️⃣` → `2⃣`)."""
    return emoji.translate(_VARIATION_SELECTORS)


def has_skin_tone(emoji: str) -> bool:
    return any(ord(char) in _SKIN_TONES for char in emoji)


def without_skin_tone(emoji: str) -> str:
    return emoji.translate(_SKIN_TONES)


def match_emoji(sent: str, configured: Iterable[str]) -> str | None:
    """The configured emoji that `sent` stands for (in its configured spelling), or None.

    Exact spelling first, then without variation selectors, then — only against configured emoji
    that have no skin tone — without the sender's skin tone."""
    choices = [emoji for emoji in configured if emoji]
    if sent in choices:
        return sent
    plain = without_variation(sent)
    for emoji in choices:
        if without_variation(emoji) == plain:
            return emoji
    toneless = without_skin_tone(plain)
    for emoji in choices:
        if not has_skin_tone(emoji) and without_variation(emoji) == toneless:
            return emoji
    return None


def same_emoji(sent: str, configured: str) -> bool:
    """Whether `sent` is `configured` in another spelling (or the same)."""
    return match_emoji(sent, (configured,)) is not None
