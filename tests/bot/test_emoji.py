"""Emoji in another spelling match the configured ones (bot/emoji.py)."""

from __future__ import annotations

from bot.emoji import match_emoji, same_emoji

KEYCAPS = ("1️⃣", "2️⃣", "3️⃣", "4️⃣")


def test_a_keycap_without_the_variation_selector_matches() -> None:
    """`2⃣` (no U+FE0F) stands for the configured `2️⃣`, and the configured spelling comes back."""
    assert "2⃣" != "2️⃣"
    assert match_emoji("2\u20e3", KEYCAPS) == "2️⃣"
    assert match_emoji("2️⃣", ("2\u20e3",)) == "2\u20e3"  # and the other way round


def test_text_and_emoji_presentation_match() -> None:
    """❤ (text presentation, U+FE0E, or bare) is ❤️."""
    assert same_emoji("\u2764", "\u2764\ufe0f") and same_emoji("\u2764\ufe0e", "\u2764\ufe0f")


def test_a_skin_tone_matches_a_toneless_configured_emoji_only() -> None:
    """👍🏽 counts as a configured 👍; a configured 👍🏽 is not matched by 👍🏿 nor by 👍."""
    assert match_emoji("👍🏽", ("👎", "👍")) == "👍"
    assert match_emoji("👍🏿", ("👍🏽",)) is None
    assert match_emoji("👍🏽", ("👍🏽",)) == "👍🏽"


def test_other_emoji_do_not_match() -> None:
    """A different emoji, an empty configured entry, or a keycap of another digit is no match."""
    assert match_emoji("🔥", KEYCAPS) is None
    assert match_emoji("5\u20e3", KEYCAPS) is None
    assert match_emoji("", ("", "❌")) is None
