"""What a Discord application needs for this bot: its permissions (with why), scopes, and invite URL.

The README's set-up guide, `refinery doctor` and the tests read these, so the number an operator
pastes into the invite URL is the one the code was checked against. Derived from what the cogs
really call (discord.py method → Discord permission):

- `message.reply`, `channel.send` (prompts in channels, rounds answered in a new message, the
  removal notice) → View Channel, Send Messages; a reply also needs Read Message History (Discord
  refuses a reply it would not let the bot read: error 160002).
- four PNGs per round (`discord.File`) → Attach Files.
- `message.add_reaction` (1️⃣–4️⃣ under each round) → Add Reactions, and Read Message History
  (Discord's reaction endpoint requires it).
- a prompt inside a thread is answered in that thread → Send Messages in Threads.
- deleting a round's message (🚫, /remove) deletes the bot's own message: no Manage Messages.
- no embeds (Embed Links), no @everyone (Mention Everyone), no voice.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlencode

import discord


@dataclass(frozen=True)
class Needed:
    flag: str  # a `discord.Permissions` attribute
    label: str  # as the developer portal's OAuth2 URL generator names it
    why: str


BOT_PERMISSIONS: tuple[Needed, ...] = (
    Needed("view_channel", "View Channels", "see the prompt channels and the messages and reactions in them"),
    Needed("send_messages", "Send Messages", "answer prompts and post rounds in the channel"),
    Needed("send_messages_in_threads", "Send Messages in Threads", "answer prompts asked inside a thread"),
    Needed("attach_files", "Attach Files", "the candidate PNGs of every round"),
    Needed("add_reactions", "Add Reactions", "put 1️⃣–4️⃣ under each round, so a vote is one click"),
    Needed("read_message_history", "Read Message History",
           "reply to a prompt (Discord refuses replies without it) and add reactions to messages"),
)
NOT_NEEDED: tuple[tuple[str, str], ...] = (
    ("Manage Messages", "the bot deletes only its own messages (a removed round) and never others' reactions"),
    ("Embed Links", "rounds are text and attachments, no embeds"),
    ("Mention Everyone", "the bot never pings more than the one user it answers"),
    ("Administrator", "never needed; do not grant it"),
)
SCOPES = ("bot", "applications.commands")  # the bot user, and its slash commands in the server
AUTHORIZE_URL = "https://discord.com/oauth2/authorize"


def permissions() -> discord.Permissions:
    for needed in BOT_PERMISSIONS:
        if not hasattr(discord.Permissions, needed.flag):
            raise ValueError(f"{needed.flag!r} is not a discord.Permissions flag")
    return discord.Permissions(**{needed.flag: True for needed in BOT_PERMISSIONS})


def permission_value() -> int:
    """The integer for the invite URL's `permissions=`."""
    return permissions().value


def invite_url(client_id: int) -> str:
    """The URL that adds the bot (with its slash commands and exactly these permissions) to a server."""
    query = urlencode({"client_id": client_id, "scope": " ".join(SCOPES), "permissions": permission_value()})
    return f"{AUTHORIZE_URL}?{query}"


def missing_permissions(granted: discord.Permissions) -> list[str]:
    """The portal labels of needed permissions that `granted` lacks (Administrator grants all)."""
    if granted.administrator:
        return []
    return [needed.label for needed in BOT_PERMISSIONS if not getattr(granted, needed.flag)]


def bot_intents() -> discord.Intents:
    """The gateway intents the bot asks for: the defaults (guilds, messages, reactions — no members or
    presences, which are privileged) plus Message Content, privileged, so prompts typed in a channel
    are not blanked. `RefineryBot` and `refinery doctor` both use this."""
    intents = discord.Intents.default()
    intents.message_content = True
    return intents
