"""The dataset card (README.md of an export): a Hugging Face YAML header, then every rule and column."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from storage.exports._formats import REGISTRY


def iso(timestamp: float | None) -> str | None:
    return None if timestamp is None else datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def yaml_header(formats: list[str]) -> list[str]:
    """`configs:` with one config per format and one `train` split each, so that
    `load_dataset(<export folder>, "<format>")` reads exactly that format's table. Formats without rows
    are left out: `datasets` refuses a split with no data."""
    lines = ["---", "configs:"]
    for fmt in formats:
        lines += [f"- config_name: {fmt}", "  data_files:", "  - split: train", f"    path: {REGISTRY[fmt].data_files}"]
    return [*lines, "---", ""]


def dataset_card(meta: dict[str, Any]) -> str:
    """README.md of an export: what, when, which rounds, how many rows, what every column means."""
    f = meta["filters"]
    opted, excluded = meta["users_opted_out"], f["excluded_users"]
    left_out = meta.get("left_out") or {}
    lines = [
        *yaml_header([fmt for fmt in meta["formats"] if meta["counts"][fmt]]),
        f"# {meta['name']}", "",
        "Community preferences from Refinery, a Discord bot where people generate four image candidates per prompt, "
        "vote with reactions and refine by reply. Images are `images/<round_id>/<k>.png` (k = 1-4); paths in the "
        f"tables are relative to this folder. Exported {meta['created_at_iso']} from the journal through event "
        f"{meta['journal_seq']}: {plural(meta['rounds'], 'round')} gave rows, {plural(meta['images'], 'image file')}.",
        "",
        "**Loading.** Each format is a config with one `train` split: "
        "`datasets.load_dataset(\"<this folder>\", \"pairs\")`. For diffusers' Diffusion-DPO research script pass "
        "`--dataset_name <this folder>` with the `pairs` or `voter_pairs` config and `--dataset_split_name train`.",
        "",
        f"**Selection.** Rounds made from {iso(f['since']) or 'the start'} to {iso(f['until']) or 'now'} (end "
        f"excluded), channel {f['channel_id'] or 'any'}, with at least {f['min_votes']} distinct voters. Removed "
        f"rounds are always left out and flagged ones {'kept' if f['include_flagged'] else 'left out'}; so are the "
        f"rounds and votes of {plural(opted, 'user')} who ran /forget-me and {excluded} more excluded "
        "by the moderator, and refinements of any round left out for these reasons. A vote is a user's last "
        'action on a candidate; "none is good" is candidate 0.'
        + ("" if not f.get("include_edit_rounds") else " Edit rounds (instruct/inpaint) were asked for in the "
           "caption-based formats: their caption is the reply, not a description of the image."), "",
    ]
    if left_out:
        lines += ["Not used, by reason: " + "; ".join(f"{reason}: {n}" for reason, n in left_out.items()) + ".", ""]
    lines += [
        "**Privacy.** No Discord user, guild or channel id appears in this export, and no local file path. Users are "
        "keyed pseudonyms (`u_` + 16 hex characters of HMAC-SHA256 under the operator's export key): stable across "
        "exports made with the same key, unlinkable without it. User mentions in prompts and instructions are "
        "replaced by `@<pseudonym>`.", "",
        "| format | file | rows |", "|---|---|---|",
        *(f"| {fmt} | `{meta['files'][fmt]}` | {meta['counts'][fmt]} |" for fmt in meta["formats"]),
    ]
    for fmt in meta["formats"]:
        spec = REGISTRY[fmt]
        lines += ["", f"## {fmt}", "", spec.rules, "", "| column | type | meaning |", "|---|---|---|"]
        lines += [f"| `{n}` | {t} | {m} |" for n, t, m in spec.columns]
    return "\n".join(lines) + "\n"
