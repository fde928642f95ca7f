"""`refinery demo`: the whole loop offline, in about a minute on 2 CPU cores.

Copies the toy model (a small Stable Diffusion checkpoint trained on a world of coloured shapes, shipped
with the project), starts the bundled loopback Discord server, connects the real bot to it and plays a
session — a slash command, a prompt in a channel, votes (one in another emoji spelling) and a
retraction, a reply that refines the winner, a 🔁 button — and then closes the loop: a simulated
community that likes large shapes votes on 48 rounds, a moderator trains an adapter on the votes
(`refinery train`, beside the running bot), puts it in use (`/model use`), the demo prints how large the
shapes are before and after on the same prompts and seeds, and runs a blinded arena round whose votes
`/arena results` counts. Each step's result is printed as the bot gave it; it ends with the commands
that inspect what it wrote. Everything but the people is the real code path.
"""

from __future__ import annotations

import asyncio
import io
import os
import time
from pathlib import Path
from typing import Any

from PIL import Image

from bot.community import COMMUNITY_SETTINGS, slash_text
from bot.devserver import MANAGE_GUILD, DiscordDevServer
from bot.offline import offline_bot, offline_config

JSON = dict[str, Any]
FIRST = "a red circle on a white background"
SECOND = "a blue square on a black background steps=12 --no green"
REPLY = "yellow"
TASTE = "large"  # what the demo's simulated community likes
VOTED = 48  # rounds it votes on before the moderator trains (24 moved nothing measurable in bench/toyworld.py)


def _say(text: str) -> None:
    print(text, flush=True)


async def run_demo(out: Path) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in the demo may reach a model hub
    from pipeline.toyworld import copy_toy_model

    started = time.monotonic()
    out = out.resolve()
    _say(f"Refinery demo — everything under {out}")
    model_dir = copy_toy_model(out / "toy-model")
    _say(f"· the toy model (a small Stable Diffusion checkpoint trained on coloured shapes): {model_dir}")
    async with DiscordDevServer() as server:
        imagine = server.add_channel("imagine")
        alice, bob, carol = server.add_user("alice"), server.add_user("bob"), server.add_user("carol")
        mod = server.add_user("mod", permissions=MANAGE_GUILD)  # Manage Server: a moderator
        _say(f"· loopback Discord server on {server.base_url} (REST {server.api_base})")
        config = offline_config(server, model_dir, out / "data", COMMUNITY_SETTINGS)
        config_file = _write_config(out, model_dir)
        async with offline_bot(server, config) as app:
            _say(f"· bot connected as {app.bot.user} through the real discord.py client")

            _say(f"\n1. alice: /imagine prompt:{FIRST} seed:42")
            interaction = await server.invoke_slash("imagine", {"prompt": FIRST, "seed": 42},
                                                    user_id=alice, channel_id=imagine)
            await interaction.wait_for(lambda i: bool(i.original and len(i.original["attachments"]) == 4))
            assert interaction.original is not None
            first = await _show_round(server, interaction.original)

            _say(f"\n2. bob, in #imagine: {SECOND}")
            prompt = await server.send_message(imagine, bob, SECOND)
            second = await _show_round(server, await server.wait_for_message(
                lambda m: _answers(m, prompt) and len(m["attachments"]) == 4))

            _say("\n3. votes on the circle: alice 2️⃣, carol 2⃣ (the keycap without its variation selector, as some "
                 "clients send it), bob 2️⃣ and 3️⃣, then bob takes 3️⃣ back; alice ❌ on the square")
            first_id = int(first["id"])
            for user, emoji in ((alice, "2️⃣"), (carol, "2\u20e3"), (bob, "2️⃣"), (bob, "3️⃣")):
                await server.add_reaction(imagine, first_id, user, emoji)
            await server.remove_reaction(imagine, first_id, bob, "3️⃣")
            await server.add_reaction(imagine, int(second["id"]), alice, "❌")
            first_round = await app.service.round_for_message(first_id)
            state = await _settled_votes(app, first_round.round_id, expected={2: {alice, bob, carol}})
            _say(f"   vote state of round {first_round.round_id}: "
                 + ", ".join(f"#{k}: {len(v)} vote(s)" for k, v in sorted(state.items()) if v))

            _say(f"\n4. bob replies to the circle: {REPLY}")
            reply = await server.send_message(imagine, bob, REPLY,
                                              reply_to=first_id)
            refined = await _show_round(server, await server.wait_for_message(
                lambda m: _answers(m, reply) and len(m["attachments"]) == 4, timeout=60))
            child = await app.service.round_for_message(int(refined["id"]))
            _say(f"   round {child.round_id}: {child.mode} from #{child.parent_candidate} of {child.parent_round_id}")

            _say(f"\n5. carol presses 🔁 (reroll) under the circle (custom id rf:reroll:{first_round.round_id})")
            click = await server.click_button(first_id, f"rf:reroll:{first_round.round_id}", user_id=carol)
            await click.wait_for(lambda i: bool(i.original and len(i.original["attachments"]) == 4), timeout=60)
            assert click.original is not None
            rerolled = await _show_round(server, click.original)
            reroll = await app.service.round_for_message(int(rerolled["id"]))
            _say(f"   round {reroll.round_id}: new seeds {list(reroll.seeds)} "
                 f"(the circle had {list(first_round.seeds)})")

            await _close_the_loop(server, app, config_file, imagine, {"alice": alice, "bob": bob, "mod": mod})

            assert app.writer is not None
            committed = await asyncio.to_thread(app.writer.flush, 60)
            _say(f"\nOxen: {'committed' if committed else 'NOT committed (see below)'} to {config.oxen_repo_path}")
        from storage.status import log_status

        _say(log_status(config.journal_path, config.data_dir, interval_s=config.storage.commit_interval_s))
    _say(f"\nThe demo wrote its data to {config.data_dir} (images, journal, Oxen repository). Inspect it with:")
    _say(f"  refinery log status --config {config_file}")
    _say(f"  REFINERY_EXPORT_KEY=any-long-random-secret refinery export --config {config_file}")
    _say(f"Done in {time.monotonic() - started:.1f} s.")
    return 0 if committed else 1


async def _close_the_loop(server: DiscordDevServer, app: Any, config_file: Path, imagine: int,
                          users: dict[str, int]) -> None:
    """A community with a taste votes, a moderator trains on the votes and serves the adapter, the shapes
    are measured before and after on the same seeds, and the adapter is judged blind in an arena round."""
    from bot.community import draw, play, train_and_use
    from pipeline.toyworld import evaluate
    from pipeline.toyworld.community import TASTES, community, round_prompts

    alice, bob, mod = users["alice"], users["bob"], users["mod"]
    taste = TASTES[TASTE]
    voters = community([server.add_user(f"fan{i}") for i in range(3)], TASTE, noise=0.1)
    _say(f"\n6. a community of three who like large shapes (they react to the candidate with the largest "
         f"shape, 1 vote in 10 at random) votes on {VOTED} new rounds — simulated people, real reactions:")
    played = await play(server, app, imagine, alice, voters, round_prompts(VOTED, held_out=False), seed=1)
    _say(f"   {len(played)} rounds, {sum(len(r.picks) for r in played)} votes journaled")
    evaluation = [(prompt, 900 + k) for k, prompt in enumerate(round_prompts(8, held_out=True, seed=5))]
    base = await draw(server, app, imagine, alice, evaluation)

    _say("\n7. a moderator trains an adapter on the votes, beside the running bot (whose Oxen writer commits it), "
         "and puts it in use:")
    _say(f"   $ refinery train --config {config_file} --name demo-taste --steps 300")
    printed = await train_and_use(server, config_file, "demo-taste", moderator=mod, channel=imagine,
                                  train_args=["--steps", "300"])
    for line in printed.strip().splitlines():
        _say("   " + line)
    _say("   /model use name:demo-taste → from the next job on, rounds use the adapter")
    adapted = await draw(server, app, imagine, alice, evaluation)
    moved = evaluate.shift(taste, [i for r in base for i in r.images], [i for r in adapted for i in r.images])
    before = sum(taste.of(i) for r in base for i in r.images) / (4 * len(base))
    after = sum(taste.of(i) for r in adapted for i in r.images) / (4 * len(adapted))
    _say(f"   the same {len(evaluation)} new prompts and seeds, before and after: the shape covers {before:.1%} of "
         f"the image on average with the base model, {after:.1%} with the adapter")
    _say(f"   {moved.line()}")
    adapted_round = await app.service.round_for_message(adapted[0].message_id)
    _say(f"   round {adapted_round.round_id} records adapter {adapted_round.adapter}")
    await slash_text(server, "model off", {}, mod, imagine)

    _say("\n8. the moderator: /arena start name:demo-taste fraction:1 — alice's next prompt is a blind A/B round")
    _say("   refinery (only to the moderator): "
         + await slash_text(server, "arena start", {"name": "demo-taste", "fraction": 1.0}, mod, imagine))
    interaction = await server.invoke_slash("imagine", {"prompt": FIRST, "seed": 7},
                                            user_id=alice, channel_id=imagine)
    await interaction.wait_for(lambda i: bool(i.original and len(i.original["attachments"]) == 4))
    assert interaction.original is not None
    message = await _show_round(server, interaction.original)
    arena = await app.service.round_for_message(int(message["id"]))
    adapter_ks = [k for k, arm in enumerate(arena.arms or "", start=1) if arm == "a"]
    _say(f"   (hidden from everyone: positions {adapter_ks} are the adapter's; the round logs arms={arena.arms!r})")
    for user in (alice, bob):  # both happen to prefer the adapter's first image
        await server.add_reaction(imagine, int(message["id"]), user, ["1️⃣", "2️⃣", "3️⃣", "4️⃣"][adapter_ks[0] - 1])
    await _settled_votes(app, arena.round_id, expected={adapter_ks[0]: {alice, bob}})
    _say("   alice and bob vote; anyone: /arena results")
    results = await slash_text(server, "arena results", {}, alice, imagine)
    _say("   refinery:\n     " + results.replace("\n", "\n     "))
    await slash_text(server, "arena stop", {}, mod, imagine)


def _write_config(out: Path, model_dir: Path) -> Path:
    """A config for `log status` and `export` on the demo's data (relative data_dir: next to this file)."""
    path = out / "config.toml"
    path.write_text(f'# written by `refinery demo`\n[model]\nid = "{model_dir}"\nlocal_files_only = true\n\n'
                    '[storage]\ndata_dir = "data"\n', encoding="utf-8")
    return path


def _answers(message: JSON, to: JSON) -> bool:
    return message.get("message_reference", {}).get("message_id") == to["id"]


async def _show_round(server: DiscordDevServer, message: JSON, timeout: float = 30) -> JSON:
    """Print a round as Discord shows it, once the bot has also put its vote emoji under it."""
    mid = str(message["id"])
    await server.wait_for_request(lambda r: r.method == "PUT" and mid in r.path and "4️⃣" in r.path, timeout)
    message = server.messages[int(mid)]  # as it is now (the acknowledgement became the round)
    sizes = []
    for attachment in message["attachments"]:
        image = Image.open(io.BytesIO(server.attachment_bytes(attachment["url"])))
        sizes.append(f"{attachment['filename']} {image.width}×{image.height}")
    buttons = [c.get("label") or c.get("emoji", {}).get("name", "?")
               for row in message.get("components") or [] for c in row.get("components") or []]
    _say("   refinery:\n     " + message["content"].replace("\n", "\n     "))
    _say("   attachments: " + ", ".join(sizes))
    _say(f"   reactions added by the bot: {' '.join(server.reactions(int(mid)))}")
    _say(f"   buttons: {' '.join(buttons)}")
    return message


async def _settled_votes(app: Any, round_id: str, expected: dict[int, set[int]], timeout: float = 10
                         ) -> dict[int, set[int]]:
    """Reaction events are handled asynchronously; wait until the journal shows them."""
    deadline = time.monotonic() + timeout
    while True:
        state = await app.journal.vote_state(round_id)
        if {k: v for k, v in state.items() if v} == expected or time.monotonic() > deadline:
            return state
        await asyncio.sleep(0.05)
