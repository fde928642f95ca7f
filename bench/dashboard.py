"""Benchmark: the dashboard's gallery over a journal of 100,000 rounds (issue #18: "well under a second").

    python -m bench.dashboard [--rounds 100000] [--votes-per-round 3] [--repeat 5]

Writes a journal (rounds in 8 channels and 4 modes, votes, some flagged), lets the read model
(`storage.round_index`) index it, then serves the real aiohttp app and times whole HTTP requests for a
gallery page — the first, one 1,000 pages deep (keyset cursor), and filtered ones — as a signed-in
moderator would. Prints the median and worst of `--repeat` requests each.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from bot.config import config_from_dict
from bot.dashboard import Dashboard
from bot.dashboard._auth import COOKIE, session_cookie
from bot.permissions import Member
from storage.journal import Journal
from storage.records import ModerationAction, Round, VoteEvent, new_id

MODES = ("text2img", "img2img", "instruct", "inpaint")


def write_journal(path: Path, rounds: int, votes_per_round: int, seed: int = 0) -> None:
    rng, journal, at = random.Random(seed), Journal(path), 1_700_000_000.0
    batch: list[Any] = []
    for n in range(rounds):
        at += rng.uniform(1, 60)
        rid = new_id()
        batch.append(Round(
            round_id=rid, prompt=f"prompt number {n % 5000}", negative_prompt="", mode=MODES[n % 7 % 4], steps=25,
            guidance=7.5, width=512, height=512, seeds=(1, 2, 3, 4), model_id="sd15", model_revision="",
            scheduler="dpm++", image_paths=tuple(f"images/{rid}/{k}.png" for k in range(1, 5)),
            requester_id=1000 + n % 300, guild_id=1, channel_id=100 + n % 8, source="slash", queued_s=0.1,
            generate_s=1.0, created_at=at))
        for _ in range(rng.randrange(votes_per_round * 2 + 1)):
            batch.append(VoteEvent(new_id(), rid, rng.randrange(5), rng.randrange(5000, 5400), "1️⃣", "add", 1,
                                   100 + n % 8, n))
        if n % 97 == 0:
            batch.append(ModerationAction(new_id(), "flag", 1, rid, None, "bench"))
        if len(batch) >= 5000:
            journal.append(*batch)
            batch = []
    journal.append(*batch)
    journal.close()


class _Moderator:
    """The Discord side, for a bench: everyone asked about is a moderator, and the gateway is up."""

    async def member(self, guild_id: int, user_id: int) -> Member:
        return Member(user_id=user_id, manage_guild=True)

    async def take_down(self, found: Any, message_id: int | None) -> None: ...

    def connected(self) -> bool:
        return True

    def latency_s(self) -> float | None:
        return 0.01


async def _time(http: aiohttp.ClientSession, url: str, params: dict[str, str], repeat: int) -> tuple[float, float, int]:
    seconds = []
    for _ in range(repeat):
        started = time.perf_counter()
        async with http.get(url, params=params) as response:
            body = await response.text()
            assert response.status == 200, body[-500:]
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds), max(seconds), body.count('class="round')


async def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        started = time.perf_counter()
        write_journal(data / "journal.sqlite3", args.rounds, args.votes_per_round)
        print(f"journal: {args.rounds:,} rounds written in {time.perf_counter() - started:.1f} s")
        config = config_from_dict({"storage": {"data_dir": str(data)}, "dashboard": {"listen": "127.0.0.1:0"}})
        dash = Dashboard(config, service=None, key="bench-key-0123456789abcdef")  # type: ignore[arg-type]
        dash.discord = _Moderator()
        started = time.perf_counter()
        await dash.catch_up()
        print(f"read model: indexed in {time.perf_counter() - started:.1f} s (once; later starts read only new events)")
        await dash.start()
        try:
            value, _ = session_cookie(dash.signer, 1, 1, time.time(), 1.0)
            base = f"{dash.base_url}/rounds"
            async with aiohttp.ClientSession(cookies={COOKIE: value}) as http:
                _, cursor = await dash.query(dash.index.page, _deep_filter(dash, 1000))
                deep = {"before": f"{cursor[0]!r}:{cursor[1]}"} if cursor else {}
                cases = [("first page", {}), ("1,000 pages deep", deep), ("channel", {"channel": "103"}),
                         ("mode inpaint", {"mode": "inpaint"}), ("flagged", {"flagged": "yes"}),
                         ("min 5 voters", {"min_votes": "5"}),
                         ("channel + mode + dates", {"channel": "105", "mode": "img2img", "since": "2023-11-20",
                                                     "until": "2023-12-31"})]
                print(f"gallery page ({config.dashboard.page_size} rounds), whole HTTP request, {args.repeat} runs:")
                for name, params in cases:
                    median, worst, count = await _time(http, base, params, args.repeat)
                    print(f"  {name:<24} median {median * 1000:7.1f} ms, worst {worst * 1000:7.1f} ms ({count} rounds)")
        finally:
            await dash.stop()


def _deep_filter(dash: Dashboard, pages: int) -> Any:
    from storage.round_index import GalleryFilter

    return GalleryFilter(limit=dash.settings.page_size * pages)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=100_000)
    parser.add_argument("--votes-per-round", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=5)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
