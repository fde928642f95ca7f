"""The token's shape, and what Discord itself says: the login, the Message Content intent, the servers
the bot is in, its permissions there, and the configured prompt channels and moderator roles.

The Discord part connects the way the bot does (discord.py, the same intents, `[discord] api_base`
and `gateway_url`), reads READY and the guilds, and disconnects.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import re

import aiohttp
import discord

from bot.client import point_discord_at
from bot.config import Config
from bot.discord_setup import bot_intents, invite_url, missing_permissions, permission_value
from bot.doctor._result import CheckResult, fail, first_line, ok, skip, warn

log = logging.getLogger(__name__)

_PART = re.compile(r"[A-Za-z0-9_-]+")
PORTAL = "https://discord.com/developers/applications"
_INTENT_FIX = (f"switch on Message Content Intent ({PORTAL} → your application → Bot → Privileged Gateway "
               "Intents) and save; without it Discord refuses the bot's connection")


def token_check(token: str) -> CheckResult:
    """Present and shaped like a bot token (three base64url parts, the first the bot's user id).
    The token itself is never part of the answer."""
    name = "token"
    if not token:
        return fail(name, "DISCORD_TOKEN is not set: developer portal → your application → Bot → Reset Token, "
                          "then `export DISCORD_TOKEN=…` where the bot runs")
    if token[:1] in "\"'" or token[-1:] in "\"'":
        return fail(name, "DISCORD_TOKEN starts or ends with a quote: set it without quotes")
    if token.lower().startswith("bot "):
        return fail(name, "DISCORD_TOKEN starts with 'Bot ': set the token alone (discord.py adds the prefix)")
    if token.isdigit():
        return fail(name, "DISCORD_TOKEN is all digits: that is the application (client) id, not the bot token")
    parts = token.split(".")
    if len(parts) != 3 or not all(_PART.fullmatch(part) for part in parts):
        hint = " (that looks like the OAuth2 client secret)" if len(parts) == 1 else ""
        return fail(name, f"DISCORD_TOKEN is not shaped like a bot token{hint}: three parts separated by dots; "
                          "copy it from Bot → Reset Token")
    user_id = _decoded_id(parts[0])
    if user_id is None or len(parts[1]) < 5 or len(parts[2]) < 20:
        return fail(name, "DISCORD_TOKEN is not shaped like a bot token (its parts are too short or its first "
                          "part is not a user id): copy it again from Bot → Reset Token")
    return ok(name, f"set and well-formed (for bot user {user_id}; the token is never printed)")


def _decoded_id(part: str) -> int | None:
    try:
        text = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    return int(text) if text.isdigit() and 15 <= len(text) <= 21 else None


async def discord_checks(config: Config, token: str, timeout_s: float = 20.0) -> list[CheckResult]:
    """Login, intents, servers and permissions, channels and roles; one line each."""
    if not token:
        return [skip("discord", "no token to connect with")]
    point_discord_at(config.discord.api_base, config.discord.gateway_url)
    where = config.discord.api_base or "discord.com"
    client = discord.Client(intents=bot_intents(), guild_ready_timeout=min(config.discord.guild_ready_timeout_s, 5.0))
    results: list[CheckResult] = []
    try:
        try:
            await asyncio.wait_for(client.login(token), timeout_s)
            app = await asyncio.wait_for(client.application_info(), timeout_s)
        except discord.LoginFailure:
            return [fail("discord", f"{where} refused the token (401): reset it (Bot → Reset Token) and set "
                                    "DISCORD_TOKEN to the new one")]
        except (aiohttp.ClientError, OSError, TimeoutError) as error:
            return [fail("discord", f"cannot reach {where}: {first_line(error)}")]
        results.append(ok("discord", f"logged in as {client.user} (application {app.id}) at {where}"))
        flags = app.flags
        if not (flags.gateway_message_content or flags.gateway_message_content_limited):
            results.append(fail("intents", f"the Message Content intent is off: {_INTENT_FIX}"))
            return results
        connected = await _connect(client, timeout_s)
        if connected is not None:
            results.append(connected)
            return results
        results.append(ok("intents", "Message Content allowed; the gateway accepted the bot's intents"))
        results += _guild_checks(config, client, app.id)
    finally:
        await client.close()
    return results


async def _connect(client: discord.Client, timeout_s: float) -> CheckResult | None:
    """Connect to the gateway once (no reconnects) and wait for READY; None when it came."""
    task = asyncio.create_task(client.connect(reconnect=False), name="doctor-gateway")
    ready = asyncio.create_task(client.wait_until_ready())
    done, _ = await asyncio.wait({task, ready}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    if ready in done:
        return None
    ready.cancel()
    if task not in done:
        task.cancel()
        return fail("intents", f"the gateway did not send READY within {timeout_s:.0f} s")
    error = task.exception()
    if isinstance(error, discord.PrivilegedIntentsRequired):
        return fail("intents", f"Discord refused the connection (4014): {_INTENT_FIX}")
    detail = first_line(error) if error is not None else "closed before READY"
    return fail("intents", f"the gateway connection failed: {detail}")


def _guild_checks(config: Config, client: discord.Client, app_id: int) -> list[CheckResult]:
    invite = invite_url(app_id)
    guilds = list(client.guilds)
    if not guilds:
        return [fail("servers", f"the bot is in no server yet: open {invite} (scopes bot and "
                                f"applications.commands, permissions {permission_value()})")]
    short: list[str] = []
    for guild in guilds:
        missing = missing_permissions(guild.me.guild_permissions) if guild.me is not None else ["(member unknown)"]
        if missing:
            short.append(f"{guild.name}: no {', '.join(missing)}")
    names = ", ".join(g.name for g in guilds[:5]) + (f" and {len(guilds) - 5} more" if len(guilds) > 5 else "")
    results = [fail("permissions", "; ".join(short) + f" — give the bot's role these, or re-invite with {invite}")
               if short else ok("servers", f"in {len(guilds)} server(s) ({names}) with every permission it needs")]
    results.append(_named_things("channels", "discord.prompt_channels", config.discord.prompt_channels,
                                 [(str(c.id), c.name) for g in guilds for c in g.text_channels],
                                 "no prompt channels: prompts come from /imagine and @mentions only"))
    results.append(_named_things("moderator roles", "moderation.moderator_roles", config.moderation.moderator_roles,
                                 [(str(r.id), r.name) for g in guilds for r in g.roles],
                                 "no moderator roles: only Manage Server and Administrator moderate"))
    return results


def _named_things(name: str, key: str, wanted: tuple[str, ...], present: list[tuple[str, str]],
                  none_text: str) -> CheckResult:
    """Each configured name or id found among `present` ((id, name) pairs) in some server."""
    if not wanted:
        return skip(name, f"{none_text} (set {key})")
    known = {value for pair in present for value in pair}
    absent = [item for item in wanted if item not in known]
    if absent:
        return warn(name, f"{key}: {', '.join(repr(a) for a in absent)} not found in the bot's servers "
                          "(names are exact, or use ids)")
    return ok(name, f"{key}: all {len(wanted)} found")
