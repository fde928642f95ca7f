"""`refinery doctor`: one line per check, offline, against the loopback Discord and tiny checkpoints."""

from __future__ import annotations

import fcntl
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bot.config import Config, Secrets, config_from_dict
from bot.devserver import DiscordDevServer
from bot.doctor import CheckResult, Status, collect
from bot.doctor._discord import token_check
from bot.doctor._storage import export_key_check, oxen_check, redis_check
from bot.offline import offline_config
from pipeline.tiny import build_tiny_adapter, build_tiny_safety_checker
from storage.writer_settings import STATUS_FILE, writer_lock_path
from tests.bot.test_cli import ROOT, refinery
from tests.conftest import TinyModels

# Shaped like a real bot token: base64("123456789012345678"), a timestamp part, an HMAC part. Not a secret.
TOKEN = "MTIzNDU2Nzg5MDEyMzQ1Njc4.GdoCtr.abcdefghijklmnopqrstuvwxyzABCDEFGHIJKL"
KEY = "k" * 64


def by_name(results: list[CheckResult]) -> dict[str, CheckResult]:
    return {r.name: r for r in results}


@pytest.mark.parametrize(("token", "says"), [
    ("", "DISCORD_TOKEN is not set"),
    (f'"{TOKEN}"', "quote"),
    (f"Bot {TOKEN}", "'Bot '"),
    ("123456789012345678", "application (client) id"),
    ("a" * 32, "client secret"),
    ("MTIz.GdoCtr.abcdefghijklmnopqrstuvwxyz", "not shaped like a bot token"),
])
def test_a_malformed_token_fails_with_the_fix_and_is_never_shown(token: str, says: str) -> None:
    """Each usual mistake is named; the token never appears in the line."""
    result = token_check(token)
    assert result.status is Status.FAIL and says in result.detail
    assert not token or token not in result.line()


def test_a_well_formed_token_passes_naming_its_bot_user() -> None:
    """The first part decodes to the bot's user id, which is shown; the token is not."""
    result = token_check(TOKEN)
    assert result.status is Status.OK and "123456789012345678" in result.detail and TOKEN not in result.line()


@pytest.fixture(scope="module")
def safety_checker(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_safety_checker(tmp_path_factory.mktemp("safety") / "checker")


def full_config(server: DiscordDevServer, tiny: TinyModels, data: Path, safety: Path, **extra: dict) -> Config:
    overrides = {"model": {"inpaint_model": str(tiny.inpaint), "instruct_model": str(tiny.instruct),
                           "clipseg_model": str(tiny.clipseg)},
                 "moderation": {"safety_checker": str(safety), "moderator_roles": ["Mods"]}}
    for section, values in extra.items():
        overrides.setdefault(section, {}).update(values)
    return offline_config(server, tiny.sd, data, overrides)


async def test_everything_configured_passes(tiny_models: TinyModels, safety_checker: Path, tmp_path: Path) -> None:
    """Loopback Discord, tiny models (all four optional ones too), an adapter, a writable data folder:
    every line ok or skip, and Discord's answers are reported."""
    build_tiny_adapter(tmp_path / "data" / "models" / "redder", tiny_models.sd)
    async with DiscordDevServer(bot_token=TOKEN) as server:
        server.add_channel("imagine")
        server.add_role("Mods")
        config = full_config(server, tiny_models, tmp_path / "data", safety_checker)
        results = await collect(config, Secrets(discord_token=TOKEN, export_key=KEY), config_path=None)
    found = by_name(results)
    assert [r.line() for r in results if r.status is Status.FAIL or (r.status is Status.WARN and r.name != "gpu")] == []
    assert found["gpu"].status is Status.WARN and "no GPU" in found["gpu"].detail  # this machine's CPU
    assert "logged in as Refinery" in found["discord"].detail
    assert "Message Content allowed" in found["intents"].detail
    assert "every permission it needs" in found["servers"].detail
    assert found["channels"].status is Status.OK and found["moderator roles"].status is Status.OK
    for name in ("model", "inpaint model", "instruct model", "clipseg model", "safety checker"):
        assert found[name].status is Status.OK, found[name].line()
    assert "redder" in found["adapters"].detail
    assert found["redis"].status is Status.SKIP and found["export key"].status is Status.OK


async def test_message_content_intent_off_fails_with_the_switch_to_flip(tiny_models: TinyModels,
                                                                          tmp_path: Path) -> None:
    """The portal's switch off: the application flags lack it, and the line says where to switch it on."""
    async with DiscordDevServer(bot_token=TOKEN, message_content_intent=False) as server:
        config = offline_config(server, tiny_models.sd, tmp_path / "data")
        results = await collect(config, Secrets(discord_token=TOKEN), config_path=None)
    intents = by_name(results)["intents"]
    assert intents.status is Status.FAIL and "Message Content Intent" in intents.detail


async def test_a_refused_token_and_missing_channels(tiny_models: TinyModels, tmp_path: Path) -> None:
    """A token Discord refuses is one failed line; with the right one, unknown prompt channels and roles warn."""
    async with DiscordDevServer(bot_token=TOKEN) as server:
        config = offline_config(server, tiny_models.sd, tmp_path / "data",
                                {"discord": {"prompt_channels": ["nowhere"]},
                                 "moderation": {"moderator_roles": ["Ghosts"]}})
        refused = by_name(await collect(config, Secrets(discord_token=TOKEN[:-4] + "XXXX"), config_path=None))
        accepted = by_name(await collect(config, Secrets(discord_token=TOKEN), config_path=None))
    assert refused["discord"].status is Status.FAIL and "refused the token" in refused["discord"].detail
    assert accepted["channels"].status is Status.WARN and "'nowhere'" in accepted["channels"].detail
    assert accepted["moderator roles"].status is Status.WARN and "'Ghosts'" in accepted["moderator roles"].detail


async def test_unreachable_discord_and_a_model_not_cached(tmp_path: Path) -> None:
    """No Discord at the configured address, and a hub id not in the cache with no hub: a line each
    that says what to do."""
    config = config_from_dict({
        "model": {"id": "someone/not-cached-anywhere", "local_files_only": True, "device": "cpu"},
        "storage": {"data_dir": str(tmp_path / "data")},
        "discord": {"api_base": "http://127.0.0.1:9/api/v10", "gateway_url": "ws://127.0.0.1:9/"}})
    found = by_name(await collect(config, Secrets(discord_token=TOKEN), config_path=None))
    assert found["discord"].status is Status.FAIL and "cannot reach" in found["discord"].detail
    model = found["model"]
    assert model.status is Status.FAIL
    assert "not in the Hugging Face cache" in model.detail and "hf download someone/not-cached-anywhere" in model.detail


def test_oxen_while_a_writer_runs_reads_its_status_file(tmp_path: Path) -> None:
    """A writer holding the repository's lock is never disturbed: the status file is read instead."""
    config = config_from_dict({"storage": {"data_dir": str(tmp_path / "data")}})
    config.oxen_repo_path.mkdir(parents=True)
    (config.data_dir / STATUS_FILE).write_text(json.dumps(
        {"pid": 4242, "state": "running", "pending": 3, "updated_at": time.time()}))
    with open(writer_lock_path(config.oxen_repo_path), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        result = oxen_check(config)
    assert result.status is Status.OK and "pid 4242" in result.detail and "3 pending" in result.detail


def test_oxen_without_a_writer_is_opened_by_a_child_process(tmp_path: Path) -> None:
    """An existing repository and no writer: a probe process opens it (this process never does)."""
    config = config_from_dict({"storage": {"data_dir": str(tmp_path / "data")}})
    assert "will be created" in oxen_check(config).detail
    make = ("import sys; from pathlib import Path; from storage.oxen_repo import OxenRepository; "
            "OxenRepository(Path(sys.argv[1]), config_dir=Path(sys.argv[2])).open_or_init()")
    subprocess.run([sys.executable, "-c", make, str(config.oxen_repo_path), str(config.data_dir / ".oxen-config")],
                   check=True, cwd=ROOT, timeout=60)
    result = oxen_check(config)
    assert result.status is Status.OK and "0 commit(s)" in result.detail and "no writer running" in result.detail


def test_redis_configured_but_unreachable_fails() -> None:
    """queue.redis_url that answers nothing: one failed line, no password shown."""
    config = config_from_dict({"queue": {"redis_url": "redis://:hunter2@127.0.0.1:9/0"}})
    result = redis_check(config)
    assert result.status is Status.FAIL and "cannot reach Redis at 127.0.0.1:9/0" in result.detail
    assert "hunter2" not in result.line()


def test_the_command_prints_one_line_per_check_and_exits_1(tiny_models: TinyModels, tmp_path: Path) -> None:
    """`refinery doctor --config` with Discord unreachable: exit 1, a line per check, no traceback, no token."""
    config = tmp_path / "c.toml"
    config.write_text(f'[model]\nid = "{tiny_models.sd}"\nlocal_files_only = true\ndevice = "cpu"\n'
                      '[discord]\napi_base = "http://127.0.0.1:9/api/v10"\ngateway_url = "ws://127.0.0.1:9/"\n'
                      '[storage]\ndata_dir = "data"\n')
    done = refinery("doctor", "--config", str(config), env={"DISCORD_TOKEN": TOKEN, "REFINERY_EXPORT_KEY": KEY})
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr and TOKEN not in done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("ok    config") and any(line.startswith("FAIL  discord") for line in lines)
    assert any(line.startswith("ok    model") for line in lines)
    assert lines[-1] == "1 check(s) failed: discord"


def test_run_with_a_model_not_cached_is_one_line(tmp_path: Path) -> None:
    """`refinery run` whose model is neither cached nor reachable: exit 2 and one line saying what to
    do, not a traceback (Discord is never contacted: the model loads first)."""
    config = tmp_path / "c.toml"
    config.write_text('[model]\nid = "someone/not-cached-anywhere"\nlocal_files_only = true\ndevice = "cpu"\n'
                      '[discord]\napi_base = "http://127.0.0.1:9/api/v10"\ngateway_url = "ws://127.0.0.1:9/"\n'
                      '[storage]\ndata_dir = "data"\n')
    done = refinery("run", "--config", str(config), env={"DISCORD_TOKEN": TOKEN})
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    ours = [line for line in done.stderr.splitlines() if line.startswith("refinery")]
    assert len(ours) == 1 and "model.id = 'someone/not-cached-anywhere'" in ours[0] and "hf download" in ours[0]


def test_a_short_export_key_is_called_out_in_bytes() -> None:
    """An export key under 16 bytes is a warning that says the exports refuse it (without the key); 16 bytes of
    UTF-8 pass."""
    short = export_key_check("k" * 15)
    assert short.status is Status.WARN and "shorter than 16 bytes" in short.detail and "refuse it" in short.detail
    assert "k" * 15 not in short.detail
    assert export_key_check("é" * 8).status is Status.OK
