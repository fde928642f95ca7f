"""The Discord set-up the README tells an operator matches what the code needs (bot/discord_setup.py)."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import discord

from bot.client import RefineryBot
from bot.config import Config
from bot.discord_setup import BOT_PERMISSIONS, bot_intents, invite_url, missing_permissions, permission_value

README = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")


def test_the_permission_integer_is_computed_from_the_list() -> None:
    """discord.Permissions over the listed flags gives the number, and each flag is a real one."""
    expected = discord.Permissions.none()
    for needed in BOT_PERMISSIONS:
        setattr(expected, needed.flag, True)
    assert permission_value() == expected.value == 274878008384
    assert not expected.manage_messages and not expected.embed_links and not expected.administrator


def test_the_readme_states_the_same_number_scopes_and_why_each_bit() -> None:
    """The README's invite URL carries exactly the computed integer and both scopes; each permission is
    explained by its portal name."""
    numbers = set(re.findall(r"permissions=(\d+)", README))
    assert numbers == {str(permission_value())}
    assert "scope=bot+applications.commands" in README
    for needed in BOT_PERMISSIONS:
        assert f"**{needed.label}**" in README, needed.label


def test_the_invite_url_and_missing_permissions() -> None:
    """The URL names the client, both scopes and the integer; a role without Attach Files lacks exactly that."""
    query = parse_qs(urlparse(invite_url(1234)).query)
    assert query == {"client_id": ["1234"], "scope": ["bot applications.commands"],
                     "permissions": [str(permission_value())]}
    granted = discord.Permissions(permission_value())
    granted.attach_files = False
    assert missing_permissions(granted) == ["Attach Files"]
    assert missing_permissions(discord.Permissions(administrator=True)) == []


def test_the_bot_asks_for_the_intents_the_doctor_checks() -> None:
    """RefineryBot's intents are bot_intents(): the defaults plus Message Content, nothing else privileged."""
    intents = RefineryBot(Config(), service=None).intents  # type: ignore[arg-type]
    assert intents.value == bot_intents().value
    assert intents.message_content and not intents.members and not intents.presences


async def test_the_bot_stops_at_start_up_when_the_intent_is_off(tiny_models, tmp_path: Path) -> None:
    """With the portal's Message Content switch off, Discord closes with 4014: the bot reports it and
    stops, as the README says."""
    import pytest

    from bot.app import StartupError
    from bot.devserver import DiscordDevServer
    from bot.offline import offline_bot, offline_config

    async with DiscordDevServer(message_content_intent=False) as server:
        config = offline_config(server, tiny_models.sd, tmp_path / "data")
        with pytest.raises(StartupError, match="privileged intents"):
            async with offline_bot(server, config, start_writer=False):
                pass
