"""The moderators' web dashboard, served by the bot itself (issue #18).

`/dashboard` in Discord (cogs/dashboard.py) gives a moderator a one-time login link; the pages show the
rounds, their lineage, activity, status, adapters and the arena, and let moderators flag, remove, ban
phrases and export through the same service calls as the slash commands. `/healthz` and `/metrics`
serve monitoring. Modules: `_server` (the Dashboard and its Discord side), `_web` (app, guard, login,
health, images), `_auth` (links, sessions, CSRF), `_metrics`, `_pages`, `_actions`, `_svg`;
templates/ and static/ are package data.
"""

from ._auth import LOGIN_TTL_S
from ._server import Dashboard, DiscordSide, require_moderator

__all__ = ["LOGIN_TTL_S", "Dashboard", "DiscordSide", "require_moderator"]
