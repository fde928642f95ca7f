"""The permission matrix: every moderator-only action, for each way of being (or not being) a moderator."""

from __future__ import annotations

import pytest

from bot.config import ConfigError, config_from_dict
from bot.permissions import Action, Member, allowed

MODS_ID = 777000000000000001
CONFIG = config_from_dict({"moderation": {"moderator_roles": ["Mods", MODS_ID]}})

MEMBERS = {
    "plain member": Member(1, frozenset({555}), frozenset({"Artists"}), manage_guild=False, administrator=False),
    "moderator role by name": Member(2, frozenset({888}), frozenset({"mods"}), False, False),  # case-insensitive
    "moderator role by id": Member(3, frozenset({MODS_ID}), frozenset({"Renamed"}), False, False),
    "Manage Server": Member(4, frozenset(), frozenset(), manage_guild=True, administrator=False),
    "Administrator": Member(5, frozenset(), frozenset(), manage_guild=False, administrator=True),
}


@pytest.mark.parametrize("action", list(Action))
@pytest.mark.parametrize(("who", "expected"), [("plain member", False), ("moderator role by name", True),
                                               ("moderator role by id", True), ("Manage Server", True),
                                               ("Administrator", True)])
def test_matrix(action: Action, who: str, expected: bool) -> None:
    """Each action is allowed exactly to moderators (listed role by name or id, Manage Server, Administrator)."""
    assert allowed(action, MEMBERS[who], CONFIG) is expected


def test_every_action_is_listed() -> None:
    """The moderator actions, as plain strings (they appear in logs and records)."""
    assert {str(a) for a in Action} == {"export", "flag", "remove", "cancel_others", "manage_banned_words",
                                        "manage_models"}


def test_no_moderator_roles_by_default() -> None:
    """With no roles configured, a role called "moderators" gives nothing; Manage Server still does."""
    default = config_from_dict({})
    assert not allowed(Action.EXPORT, Member(1, frozenset({9}), frozenset({"moderators"})), default)
    assert allowed(Action.EXPORT, Member(1, manage_guild=True), default)


@pytest.mark.parametrize(("raw", "named"), [
    ({"moderation": {"moderator_roles": ["mods", " "]}}, "moderation.moderator_roles"),
    ({"moderation": {"flag_emoji": ""}}, "moderation.flag_emoji"),
    ({"moderation": {"flag_emoji": "❌"}}, "moderation.flag_emoji"),
    ({"moderation": {"moderator_roles": "mods"}}, "moderation.moderator_roles"),
])
def test_bad_moderation_config_names_the_key(raw: dict, named: str) -> None:
    """Empty role names, an empty flag emoji or one that is a vote emoji are refused, naming the key."""
    with pytest.raises(ConfigError, match=named):
        config_from_dict(raw)
