"""Who may do what: the one place that decides moderator-only actions. No discord import.

A *moderator* is a member who has a role listed in `moderation.moderator_roles` (by name, compared
without regard to case, or by id), or the Manage Server or Administrator permission. Cogs turn a
Discord member into a `Member` and ask `allowed(...)`; the service checks again before acting.

| action                | plain member | moderator role (name or id) | Manage Server | Administrator |
|-----------------------|:------------:|:---------------------------:|:-------------:|:-------------:|
| `export`              |      no      |             yes             |      yes      |      yes      |
| `flag` / unflag       |      no      |             yes             |      yes      |      yes      |
| `remove`              |      no      |             yes             |      yes      |      yes      |
| `cancel_others`       |      no      |             yes             |      yes      |      yes      |
| `manage_banned_words` |      no      |             yes             |      yes      |      yes      |
| `manage_models`       |      no      |             yes             |      yes      |      yes      |

Not in the table because everyone may do them: prompting, voting, refining, cancelling one's own
job, and `/forget-me` (a user opting themselves out of exports).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from bot.config import Config


class Action(StrEnum):
    EXPORT = "export"
    FLAG = "flag"  # flag and unflag a round
    REMOVE = "remove"
    CANCEL_OTHERS = "cancel_others"
    MANAGE_BANNED_WORDS = "manage_banned_words"
    MANAGE_MODELS = "manage_models"  # /model use|off and /arena start|stop


# Every listed action is moderator-only for now; a future "anyone" action goes in a second set here.
MODERATOR_ONLY: frozenset[Action] = frozenset(Action)


@dataclass(frozen=True)
class Member:
    """What the permission check needs to know about a guild member (built by the cogs)."""

    user_id: int
    role_ids: frozenset[int] = frozenset()
    role_names: frozenset[str] = frozenset()
    manage_guild: bool = False
    administrator: bool = False


def is_moderator(member: Member, config: Config) -> bool:
    if member.administrator or member.manage_guild:
        return True
    listed = {entry.strip() for entry in config.moderation.moderator_roles}
    ids = {int(entry) for entry in listed if entry.isdigit()}
    names = {entry.casefold() for entry in listed if entry}
    # A role named "123" is matched by name too: a digit-only entry is checked both ways.
    return bool(ids & member.role_ids) or any(name.casefold() in names for name in member.role_names)


def allowed(action: Action, member: Member, config: Config) -> bool:
    """True if `member` may do `action` (see the table in the module docstring)."""
    if action in MODERATOR_ONLY:
        return is_moderator(member, config)
    return True
