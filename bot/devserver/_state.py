"""The dev server's world: one guild with its users, roles, channels, messages, reactions and files.

Everything here is plain data plus the functions that render it as Discord JSON payloads; nothing
here talks to the network.
"""

from __future__ import annotations

import mimetypes
import re
from typing import Any

from ._http import JSON
from ._records import (
    ADMINISTRATOR,
    BOT_PERMISSIONS,
    DEFAULT_MEMBER_PERMISSIONS,
    DEFAULT_MESSAGE,
    PNG_SIGNATURE,
    REPLY_MESSAGE,
    ChannelRecord,
    DMChannelRecord,
    RoleRecord,
    SnowflakeFactory,
    UserRecord,
    emoji_payload,
    image_size,
    timestamp,
)

_USER_MENTION = re.compile(r"<@!?(\d+)>")
_ROLE_MENTION = re.compile(r"<@&(\d+)>")
_UNSAFE_FILENAME = re.compile(r"[^\w.\-]")
_ALL_PERMISSIONS = (1 << 53) - 1


class GuildWorld:
    """The single guild the dev server hosts, and everything in it."""

    def __init__(self, *, bot_name: str = "Refinery") -> None:
        self.snowflake = SnowflakeFactory()
        self.cdn_base = "http://127.0.0.1:0"  # set once the server is bound
        self.id = self.snowflake()
        self.application_id = self.snowflake()
        self.users: dict[int, UserRecord] = {}
        self.roles: dict[int, RoleRecord] = {}
        self.channels: dict[int, ChannelRecord] = {}  # the guild's text channels
        self.dm_channels: dict[int, DMChannelRecord] = {}  # the bot's DMs, by channel id
        self.messages: dict[int, JSON] = {}
        self.channel_order: dict[int, list[int]] = {}
        self.message_reactions: dict[int, dict[str, set[int]]] = {}
        self.files: dict[str, tuple[bytes, str]] = {}  # URL path -> (data, content_type)
        self._permission_roles: dict[int, int] = {}
        # The portal's "Message Content Intent" switch: off, IDENTIFY asking for it is closed with 4014.
        self.message_content_allowed = True

        self.roles[self.id] = RoleRecord(self.id, "@everyone", 0, 0)  # permissions come from roles only
        # New applications' bot users share the application's id.
        bot_role = self.add_role(self.snowflake(), bot_name, BOT_PERMISSIONS, managed_by=self.application_id)
        self.bot = UserRecord(self.application_id, bot_name, bot=True, roles=[bot_role.id])
        self.users[self.bot.id] = self.bot
        self.owner = self.add_user("owner", bot=False, roles=[], permissions=DEFAULT_MEMBER_PERMISSIONS)

    @property
    def application_flags(self) -> int:
        """GATEWAY_MESSAGE_CONTENT_LIMITED (1 << 19) while the Message Content intent is switched on."""
        return 1 << 19 if self.message_content_allowed else 0

    # -- people and places -------------------------------------------------------------------------
    def add_role(self, role_id: int, name: str, permissions: int, *, managed_by: int | None = None) -> RoleRecord:
        role = RoleRecord(role_id, name, permissions, len(self.roles), managed_by is not None, managed_by)
        self.roles[role.id] = role
        return role

    def permission_role(self, permissions: int) -> int:
        """The role that grants exactly `permissions` (@everyone grants none), created on first use."""
        if permissions not in self._permission_roles:
            name = "Members" if permissions == DEFAULT_MEMBER_PERMISSIONS else f"permissions {permissions:#x}"
            self._permission_roles[permissions] = self.add_role(self.snowflake(), name, permissions).id
        return self._permission_roles[permissions]

    def add_user(self, name: str, *, bot: bool, roles: list[int], permissions: int) -> UserRecord:
        unknown = [r for r in roles if r not in self.roles]
        if unknown:
            raise ValueError(f"unknown role ids {unknown}; create roles with add_role() first")
        user = UserRecord(self.snowflake(), name, bot=bot, roles=[self.permission_role(permissions), *roles])
        self.users[user.id] = user
        return user

    def add_channel(self, name: str, *, nsfw: bool) -> ChannelRecord:
        channel = ChannelRecord(self.snowflake(), name, self.id, len(self.channels), nsfw)
        self.channels[channel.id] = channel
        self.channel_order[channel.id] = []
        return channel

    def open_dm(self, user_id: int) -> DMChannelRecord:
        """The bot's DM channel with a user, created on first use."""
        for channel in self.dm_channels.values():
            if channel.recipient_id == user_id:
                return channel
        channel = DMChannelRecord(self.snowflake(), user_id)
        self.dm_channels[channel.id] = channel
        self.channel_order[channel.id] = []
        return channel

    def channel_payload(self, channel_id: int) -> JSON:
        if channel_id in self.dm_channels:
            channel = self.dm_channels[channel_id]
            return channel.payload(self.users[channel.recipient_id].payload())
        return self.channels[channel_id].payload()

    def permissions_of(self, user_id: int) -> int:
        if user_id == self.owner.id:
            return _ALL_PERMISSIONS  # the owner has every permission, like on Discord
        total = self.roles[self.id].permissions
        for role_id in self.users[user_id].roles:
            total |= self.roles[role_id].permissions
        return _ALL_PERMISSIONS if total & ADMINISTRATOR else total

    # -- payloads --------------------------------------------------------------------------------
    def member_payload(self, user_id: int, *, with_user: bool = True, with_permissions: bool = False) -> JSON:
        user = self.users[user_id]
        data: JSON = {
            "nick": None,
            "avatar": None,
            "roles": [str(r) for r in user.roles],
            "joined_at": user.joined_at,
            "premium_since": None,
            "deaf": False,
            "mute": False,
            "flags": 0,
            "pending": False,
            "communication_disabled_until": None,
        }
        if with_user:
            data["user"] = user.payload()
        if with_permissions:
            data["permissions"] = str(self.permissions_of(user_id))
        return data

    def guild_payload(self, *, full: bool) -> JSON:
        """REST form (`full=False`) or the GUILD_CREATE form with channels and members."""
        data: JSON = {
            "id": str(self.id),
            "name": "Refinery dev guild",
            "icon": None,
            "splash": None,
            "discovery_splash": None,
            "banner": None,
            "description": None,
            "owner_id": str(self.owner.id),
            "afk_channel_id": None,
            "afk_timeout": 300,
            "verification_level": 0,
            "default_message_notifications": 1,
            "explicit_content_filter": 0,
            "mfa_level": 0,
            "nsfw_level": 0,
            "premium_tier": 0,
            "premium_subscription_count": 0,
            "preferred_locale": "en-US",
            "system_channel_id": None,
            "system_channel_flags": 0,
            "rules_channel_id": None,
            "public_updates_channel_id": None,
            "vanity_url_code": None,
            "features": [],
            "roles": [r.payload() for r in self.roles.values()],
            "emojis": [],
            "stickers": [],
        }
        if full:
            data |= {
                "unavailable": False,
                "large": False,
                "lazy": True,
                "joined_at": self.bot.joined_at,
                "member_count": len(self.users),
                "members": [self.member_payload(u) for u in self.users],
                # GUILD_CREATE channels carry no guild_id
                "channels": [_without(c.payload(), "guild_id") for c in self.channels.values()],
                "threads": [],
                "voice_states": [],
                "presences": [],
                "stage_instances": [],
                "guild_scheduled_events": [],
                "soundboard_sounds": [],
            }
        return data

    # -- files -----------------------------------------------------------------------------------
    def store_attachment(
        self,
        channel_id: int,
        filename: str,
        data: bytes,
        content_type: str | None,
        *,
        description: str | None = None,
    ) -> JSON:
        """Keep an uploaded file, serve it under the CDN URL, and return its attachment object."""
        attachment_id = self.snowflake()
        filename = _UNSAFE_FILENAME.sub("_", filename) or "file"
        if data[:8] == PNG_SIGNATURE:
            content_type = "image/png"
        elif not content_type or content_type == "application/octet-stream":
            content_type = mimetypes.guess_type(filename)[0] or content_type
        path = f"/attachments/{channel_id}/{attachment_id}/{filename}"
        self.files[path] = (data, content_type or "application/octet-stream")
        url = self.cdn_base + path
        attachment: JSON = {
            "id": str(attachment_id),
            "filename": filename,
            "size": len(data),
            "url": url,
            "proxy_url": url,
        }
        if content_type:
            attachment["content_type"] = content_type
        if description is not None:
            attachment["description"] = description
        size = image_size(data, content_type)
        if size is not None:
            attachment["width"], attachment["height"] = size
        return attachment

    # -- messages --------------------------------------------------------------------------------
    def mentioned_users(self, content: str) -> list[int]:
        ids = [int(m) for m in _USER_MENTION.findall(content or "")]
        return [i for i in dict.fromkeys(ids) if i in self.users]

    def mentioned_roles(self, content: str) -> list[str]:
        return [r for r in dict.fromkeys(_ROLE_MENTION.findall(content or "")) if int(r) in self.roles]

    def new_message(
        self,
        *,
        channel_id: int,
        author_id: int,
        content: str,
        attachments: list[JSON],
        embeds: list[JSON] | None = None,
        components: list[JSON] | None = None,
        flags: int = 0,
        reply_to: int | None = None,
        mentions: list[int] | None = None,
        message_type: int | None = None,
        extra: JSON | None = None,
    ) -> JSON:
        """Create, store and return a message object in the REST form."""
        message_id = self.snowflake()
        mention_ids = list(dict.fromkeys([*(mentions or []), *self.mentioned_users(content)]))
        message: JSON = {
            "id": str(message_id),
            "channel_id": str(channel_id),
            "author": self.users[author_id].payload(),
            "content": content,
            "timestamp": timestamp(),
            "edited_timestamp": None,
            "tts": False,
            "mention_everyone": False,
            "mentions": [self.users[u].payload() for u in mention_ids],
            "mention_roles": self.mentioned_roles(content),
            "attachments": attachments,
            "embeds": resolve_embed_attachments(embeds or [], attachments),
            "components": components or [],
            "pinned": False,
            "type": DEFAULT_MESSAGE,
            "flags": flags,
        }
        if channel_id in self.channels:
            message["guild_id"] = str(self.id)
        if reply_to is not None:
            replied = self.messages[reply_to]
            message["type"] = REPLY_MESSAGE
            message["message_reference"] = {
                "type": 0,
                "message_id": replied["id"],
                "channel_id": replied["channel_id"],
            }
            if "guild_id" in message:
                message["message_reference"]["guild_id"] = message["guild_id"]
            message["referenced_message"] = _without(replied, "referenced_message")
        if message_type is not None:
            message["type"] = message_type
        message |= extra or {}
        self.messages[message_id] = message
        self.channel_order.setdefault(channel_id, []).append(message_id)
        channel = self.channels.get(channel_id) or self.dm_channels.get(channel_id)
        if channel is not None:
            channel.last_message_id = message_id
        return message

    def gateway_message(self, message: JSON) -> JSON:
        """The MESSAGE_CREATE/UPDATE form: the REST form plus the author's guild member."""
        author_id = int(message["author"]["id"])
        data = dict(message)
        if author_id in self.users and "webhook_id" not in message and "guild_id" in message:
            data["member"] = self.member_payload(author_id, with_user=False)
        return data

    def refresh_reactions(self, message_id: int) -> None:
        """Mirror the reaction table into the stored message's `reactions` field (`me` = the bot)."""
        message = self.messages.get(message_id)
        if message is None:
            return
        table = {e: users for e, users in self.message_reactions.get(message_id, {}).items() if users}
        if not table:
            message.pop("reactions", None)
            return
        message["reactions"] = [
            {
                "emoji": emoji_payload(emoji),
                "count": len(users),
                "count_details": {"burst": 0, "normal": len(users)},
                "burst_colors": [],
                "me": self.bot.id in users,
                "me_burst": False,
                "burst_count": 0,
            }
            for emoji, users in table.items()
        ]

    def reaction_event(self, message_id: int, user_id: int, emoji: str, *, added: bool) -> JSON:
        message = self.messages[message_id]
        data: JSON = {
            "user_id": str(user_id),
            "channel_id": message["channel_id"],
            "message_id": str(message_id),
            "emoji": emoji_payload(emoji),
            "burst": False,
            "type": 0,  # normal reaction; discord.py raises KeyError without it
        }
        if "guild_id" in message:
            data["guild_id"] = message["guild_id"]
        if added:
            data["message_author_id"] = message["author"]["id"]
            data["burst_colors"] = []
            if "guild_id" in message:
                data["member"] = self.member_payload(user_id)
        return data

    def forget_message(self, message_id: int) -> JSON:
        message = self.messages.pop(message_id)
        self.message_reactions.pop(message_id, None)
        return message


def _without(data: JSON, key: str) -> JSON:
    return {k: v for k, v in data.items() if k != key}


def resolve_embed_attachments(embeds: list[JSON], attachments: list[JSON]) -> list[JSON]:
    """Rewrite `attachment://name` image URLs in embeds to the uploaded file's URL, as Discord does."""
    by_name = {a["filename"]: a for a in attachments}
    resolved: list[JSON] = []
    for embed in embeds:
        embed = dict(embed)
        embed.setdefault("type", "rich")
        for key in ("image", "thumbnail"):
            media: Any = embed.get(key)
            if isinstance(media, dict) and str(media.get("url", "")).startswith("attachment://"):
                attachment = by_name.get(media["url"].removeprefix("attachment://"))
                if attachment is not None:
                    embed[key] = {"url": attachment["url"], "proxy_url": attachment["proxy_url"]} | {
                        k: attachment[k] for k in ("width", "height", "content_type") if k in attachment
                    }
        resolved.append(embed)
    return resolved
