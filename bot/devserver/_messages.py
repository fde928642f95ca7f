"""Messages the bot sends or edits: Discord's validation, attachment bookkeeping, create and edit.

Shared by the channel routes and the interaction/webhook routes, which accept the same payloads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._http import JSON, ApiError, Changes, UploadedFile, invalid_form
from ._records import ATTACHMENT_SIZE_LIMIT, EPHEMERAL, LOADING, emoji_payload, timestamp
from ._state import GuildWorld, resolve_embed_attachments

if TYPE_CHECKING:
    from ._gateway import Gateway

SUPPRESS_EMBEDS = 1 << 2
SUPPRESS_NOTIFICATIONS = 1 << 12
IS_COMPONENTS_V2 = 1 << 15
EDITABLE_FLAGS = SUPPRESS_EMBEDS | IS_COMPONENTS_V2
CHANNEL_MESSAGE_FLAGS = SUPPRESS_EMBEDS | SUPPRESS_NOTIFICATIONS | IS_COMPONENTS_V2

_LINK_BUTTON = 5


def validate_payload(payload: JSON, files: list[UploadedFile], *, creating: bool) -> None:
    """Reject what Discord rejects (the limits bots most often trip over), with Discord's errors."""
    content = payload.get("content")
    if content is not None and len(str(content)) > 2000:
        raise invalid_form("content", "BASE_TYPE_MAX_LENGTH", "Must be 2000 or fewer in length.")
    embeds = payload.get("embeds") or []
    if len(embeds) > 10:
        raise invalid_form("embeds", "BASE_TYPE_MAX_LENGTH", "Must be 10 or fewer in length.")
    for index, embed in enumerate(embeds):
        if len(embed.get("title") or "") > 256:
            raise invalid_form(f"embeds.{index}.title", "BASE_TYPE_MAX_LENGTH", "Must be 256 or fewer in length.")
        if len(embed.get("description") or "") > 4096:
            raise invalid_form(
                f"embeds.{index}.description", "BASE_TYPE_MAX_LENGTH", "Must be 4096 or fewer in length."
            )
    if len(files) > 10:
        raise invalid_form("files", "BASE_TYPE_MAX_LENGTH", "Must be 10 or fewer in length.")
    if sum(len(f.data) for f in files) > ATTACHMENT_SIZE_LIMIT:
        raise ApiError(413, 40005, "Request entity too large")
    validate_components(payload.get("components") or [], int(payload.get("flags") or 0))
    has_body = content or embeds or files or payload.get("components") or payload.get("sticker_ids")
    if creating and not (has_body or payload.get("poll") or payload.get("attachments")):
        raise ApiError(400, 50006, "Cannot send an empty message")


def validate_components(components: list[JSON], flags: int) -> None:
    if not flags & IS_COMPONENTS_V2:
        if len(components) > 5:
            raise invalid_form("components", "BASE_TYPE_MAX_LENGTH", "Must be 5 or fewer in length.")
        for row_index, row in enumerate(components):
            if row.get("type") != 1:
                raise invalid_form(f"components.{row_index}", "UNION_TYPE_CHOICES", 'Value of field "type" must be 1.')
            if len(row.get("components") or []) > 5:
                raise invalid_form(
                    f"components.{row_index}.components",
                    "BASE_TYPE_MAX_LENGTH",
                    "Must be 5 or fewer in length.",
                )
    seen: set[str] = set()
    for component in iter_components(components):
        custom_id = component.get("custom_id")
        if component.get("type") == 2 and len(component.get("label") or "") > 80:
            raise invalid_form("components", "BASE_TYPE_MAX_LENGTH", "Button labels must be 80 or fewer in length.")
        if component.get("type") == 2 and component.get("style") != _LINK_BUTTON and not custom_id:
            raise invalid_form("components", "COMPONENT_CUSTOM_ID_REQUIRED", "A custom id is required.")
        if custom_id is None:
            continue
        if len(custom_id) > 100:
            raise invalid_form("components", "BASE_TYPE_MAX_LENGTH", "custom_id must be 100 or fewer in length.")
        if custom_id in seen:
            raise invalid_form("components", "COMPONENT_CUSTOM_ID_DUPLICATED", f"Duplicate custom_id {custom_id!r}.")
        seen.add(custom_id)


def resolve_mentions(world: GuildWorld, message: JSON, allowed: JSON | None, replied_author: int | None) -> None:
    """Discord's `allowed_mentions`: only the mentions it allows are parsed, and only those notify.

    `message["mentions"]` then lists exactly the users the message pings (tests read it as such).
    Without `allowed_mentions` every mention in the content is parsed and a reply pings its author.
    """
    content = str(message.get("content") or "")
    users, roles = world.mentioned_users(content), world.mentioned_roles(content)
    everyone = "@everyone" in content or "@here" in content
    replied = True
    if allowed is not None:
        parse = set(allowed.get("parse") or [])
        if "users" in parse and allowed.get("users"):
            raise invalid_form("allowed_mentions", "MESSAGE_ALLOWED_MENTIONS_PARSE_EXCLUSIVE",
                               'parse:["users"] and users: [ids] are mutually exclusive.')
        listed_users = {int(u) for u in allowed.get("users") or []}
        listed_roles = {str(r) for r in allowed.get("roles") or []}
        users = users if "users" in parse else [u for u in users if u in listed_users]
        roles = roles if "roles" in parse else [r for r in roles if r in listed_roles]
        everyone = everyone and "everyone" in parse
        replied = bool(allowed.get("replied_user", False))
    if replied_author is not None and replied:
        users = [replied_author, *(u for u in users if u != replied_author)]
    message["mentions"] = [world.users[u].payload() for u in users if u in world.users]
    message["mention_roles"] = roles
    message["mention_everyone"] = everyone


def iter_components(node: Any) -> list[JSON]:
    """Every component in a (possibly nested, components v2) tree, depth first."""
    found: list[JSON] = []
    if isinstance(node, list):
        for item in node:
            found += iter_components(item)
    elif isinstance(node, dict):
        if "type" in node:
            found.append(node)
        for key in ("components", "accessory", "content"):
            if isinstance(node.get(key), list | dict):
                found += iter_components(node[key])
    return found


def merge_attachments(
    world: GuildWorld,
    channel_id: int,
    spec: list[JSON] | None,
    files: list[UploadedFile],
    existing: list[JSON],
) -> list[JSON]:
    """Discord's rule: `attachments` lists the kept old ones by id and the new `files[n]` by n.

    Without an `attachments` list every old attachment is kept and every new file appended.
    """
    by_index = {f.index: f for f in files}
    existing_by_id = {int(a["id"]): a for a in existing}
    if spec is None:
        spec = [{"id": a["id"]} for a in existing] + [{"id": f.index} for f in files]
    result: list[JSON] = []
    for position, entry in enumerate(spec):
        attachment_id = int(entry["id"])
        if attachment_id in existing_by_id:
            result.append(existing_by_id[attachment_id])
        elif attachment_id in by_index:
            upload = by_index.pop(attachment_id)
            filename = entry.get("filename") or upload.filename
            result.append(
                world.store_attachment(
                    channel_id,
                    filename,
                    upload.data,
                    upload.content_type,
                    description=entry.get("description"),
                )
            )
        else:
            raise invalid_form(
                f"attachments.{position}.id", "ATTACHMENT_NOT_FOUND", f"Unknown attachment {attachment_id}."
            )
    for upload in by_index.values():  # uploaded but not listed: Discord still attaches it
        result.append(world.store_attachment(channel_id, upload.filename, upload.data, upload.content_type))
    return result


def create_bot_message(
    world: GuildWorld,
    channel_id: int,
    payload: JSON,
    files: list[UploadedFile],
    *,
    allowed_flags: int = CHANNEL_MESSAGE_FLAGS,
    extra_flags: int = 0,
    message_type: int | None = None,
    extra: JSON | None = None,
) -> JSON:
    """Validate the bot's payload and store the message it describes."""
    validate_payload(payload, files, creating=True)
    reply_to: int | None = None
    replied_author: int | None = None
    reference = payload.get("message_reference")
    if reference and reference.get("message_id"):
        replied_id = int(reference["message_id"])
        if replied_id in world.messages:
            reply_to = replied_id
            replied_author = int(world.messages[replied_id]["author"]["id"])
        elif reference.get("fail_if_not_exists", True):
            raise invalid_form("message_reference", "MESSAGE_REFERENCE_UNKNOWN_MESSAGE", "Unknown message")
    attachments = merge_attachments(world, channel_id, payload.get("attachments"), files, [])
    message = world.new_message(
        channel_id=channel_id,
        author_id=world.bot.id,
        content=payload.get("content") or "",
        attachments=attachments,
        embeds=payload.get("embeds") or [],
        components=payload.get("components") or [],
        flags=(int(payload.get("flags") or 0) & allowed_flags) | extra_flags,
        reply_to=reply_to,
        message_type=message_type,
        extra=extra,
    )
    resolve_mentions(world, message, payload.get("allowed_mentions"), replied_author)
    if payload.get("nonce") is not None:
        message["nonce"] = payload["nonce"]
    return message


def edit_message(world: GuildWorld, message: JSON, payload: JSON, files: list[UploadedFile]) -> JSON:
    """Apply an edit payload to a stored message in place (a finished edit also clears LOADING)."""
    validate_payload(payload, files, creating=False)
    channel_id = int(message["channel_id"])
    if "content" in payload:
        message["content"] = payload["content"] or ""
        resolve_mentions(world, message, payload.get("allowed_mentions"), None)
    if "components" in payload:
        message["components"] = payload["components"] or []
    if payload.get("flags") is not None:
        message["flags"] = (message["flags"] & ~EDITABLE_FLAGS) | (int(payload["flags"]) & EDITABLE_FLAGS)
    if "attachments" in payload or files:
        message["attachments"] = merge_attachments(
            world, channel_id, payload.get("attachments"), files, message["attachments"]
        )
    if "embeds" in payload:
        message["embeds"] = payload["embeds"] or []
    message["embeds"] = resolve_embed_attachments(message["embeds"], message["attachments"])
    message["flags"] &= ~LOADING
    message["edited_timestamp"] = timestamp()
    return message


class MessageFeed:
    """Announces message and reaction changes: gateway events to the bot, wake-ups to waiters.

    Ephemeral messages are only shown to the invoking user, so, like Discord, they raise no events.
    """

    def __init__(self, world: GuildWorld, gateway: Gateway, changes: Changes) -> None:
        self.world = world
        self.gateway = gateway
        self.changes = changes

    def created(self, message: JSON) -> None:
        if not message["flags"] & EPHEMERAL:
            self.gateway.dispatch("MESSAGE_CREATE", self.world.gateway_message(message))
        self.changes.notify()

    def updated(self, message: JSON) -> None:
        if not message["flags"] & EPHEMERAL:
            self.gateway.dispatch("MESSAGE_UPDATE", self.world.gateway_message(message))
        self.changes.notify()

    def deleted(self, message_id: int) -> None:
        message = self.world.forget_message(message_id)
        if not message["flags"] & EPHEMERAL:
            event = {k: message[k] for k in ("channel_id", "guild_id") if k in message} | {"id": message["id"]}
            self.gateway.dispatch("MESSAGE_DELETE", event)
        self.changes.notify()

    def reaction(self, message_id: int, user_id: int, emoji: str, *, added: bool) -> bool:
        """Add or remove one user's reaction; False (and no event) when nothing changed."""
        users = self.world.message_reactions.setdefault(message_id, {}).setdefault(emoji, set())
        if (user_id in users) == added:
            return False
        if added:
            users.add(user_id)
        else:
            users.discard(user_id)
        self.world.refresh_reactions(message_id)
        event = "MESSAGE_REACTION_ADD" if added else "MESSAGE_REACTION_REMOVE"
        self.gateway.dispatch(event, self.world.reaction_event(message_id, user_id, emoji, added=added))
        self.changes.notify()
        return True

    def reactions_cleared(self, message_id: int, emoji: str | None) -> None:
        """Remove every reaction (`emoji` None) or every reaction with one emoji, in one event."""
        table = self.world.message_reactions.get(message_id, {})
        if emoji is None:
            table.clear()
        else:
            table.pop(emoji, None)
        self.world.refresh_reactions(message_id)
        message = self.world.messages[message_id]
        event: JSON = {k: message[k] for k in ("channel_id", "guild_id") if k in message}
        event["message_id"] = str(message_id)
        if emoji is None:
            self.gateway.dispatch("MESSAGE_REACTION_REMOVE_ALL", event)
        else:
            self.gateway.dispatch("MESSAGE_REACTION_REMOVE_EMOJI", event | {"emoji": emoji_payload(emoji)})
        self.changes.notify()
