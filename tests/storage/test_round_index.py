"""The dashboard's read model: what it shows matches the journal, pages by index, catches up incrementally."""

from __future__ import annotations

from pathlib import Path

from storage.journal import Journal
from storage.records import ModerationAction, Round, VoteEvent, new_id
from storage.round_index import GalleryFilter, RoundIndex
from tests.community import FORGOTTEN, VOTERS, build_community


def _index(tmp_path: Path) -> tuple[Journal, RoundIndex, object]:
    journal = Journal(tmp_path / "journal.sqlite3")
    community = build_community(journal, tmp_path)
    index = RoundIndex(tmp_path / "dashboard.sqlite3", journal.path)
    index.catch_up()
    return journal, index, community


def test_gallery_rows_match_the_journal(tmp_path: Path) -> None:
    """Newest first; votes per candidate as the journal's vote state, without the /forget-me user's."""
    journal, index, community = _index(tmp_path)
    rows, cursor = index.page(GalleryFilter(limit=100))
    assert cursor is None and len(rows) == len(community.rounds) + 2
    assert [r.created_at for r in rows] == sorted((r.created_at for r in rows), reverse=True)
    for row in rows:
        state = journal.vote_state(row.round_id)
        expected = tuple(len(state.get(k, set()) - {FORGOTTEN}) for k in range(1, 5))
        assert row.votes == expected, row.round_id
        assert row.voters == len({u for users in state.values() for u in users} - {FORGOTTEN})
    flagged = index.page(GalleryFilter(flagged=True))[0]
    assert [r.round_id for r in flagged] == [community.flagged_round] and flagged[0].flagged
    assert [r.round_id for r in index.page(GalleryFilter(mode="inpaint"))[0]] == [community.inpaint_round]
    assert all(r.voters >= 3 for r in index.page(GalleryFilter(min_voters=3, limit=100))[0])
    assert not index.page(GalleryFilter(channel_id=8))[0] and len(index.page(GalleryFilter(channel_id=7))[0]) == 24


def test_keyset_pages_cover_every_round_once(tmp_path: Path) -> None:
    _, index, _ = _index(tmp_path)
    seen, cursor = [], None
    while True:
        rows, cursor = index.page(GalleryFilter(before=cursor, limit=5))
        seen.extend(r.round_id for r in rows)
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) == 26


def test_page_queries_use_an_index(tmp_path: Path) -> None:
    """No full scan of rounds per page, whatever the filter (the plan names an index every time)."""
    _, index, _ = _index(tmp_path)
    db = index._db
    for where in ("hidden=0", "hidden=0 AND channel_id=7", "hidden=0 AND mode='inpaint'", "hidden=0 AND flagged=1",
                  "hidden=0 AND (created_at, round_id) < (1e12, 'z')"):
        plan = " ".join(str(row[-1]) for row in db.execute(
            f"EXPLAIN QUERY PLAN SELECT round_id FROM rounds WHERE {where} ORDER BY created_at DESC, round_id DESC "
            "LIMIT 25"))
        assert "USING INDEX" in plan or "USING COVERING INDEX" in plan, (where, plan)


def test_catches_up_incrementally_and_follows_moderation(tmp_path: Path) -> None:
    """New rounds, votes, unflags, removals and opt-outs appear at the next catch-up; the requester who
    ran /forget-me vanishes from the gallery."""
    journal, index, community = _index(tmp_path)
    rid = community.rounds[0]
    journal.append(ModerationAction(new_id(), "unflag", VOTERS[1], community.flagged_round, None, "test"),
                   ModerationAction(new_id(), "remove", VOTERS[1], rid, None, "test"),
                   VoteEvent(new_id(), rid, 4, 499, "4", "add", None, 7, 1))
    index.catch_up()
    assert not index.page(GalleryFilter(flagged=True))[0]
    row = index.round(rid)
    assert row is not None and row.removed and row.votes[3] == 1
    assert [(v.candidate, v.user_id, v.action) for v in index.vote_timeline(rid)][-1] == (4, 499, "add")
    journal.append(ModerationAction(new_id(), "forget_me", VOTERS[0], None, VOTERS[0], "/forget-me"))
    index.catch_up()
    assert index.page(GalleryFilter())[0] == []  # every round of the community was asked by VOTERS[0]
    assert index.counts()["rounds"] == 26


def test_a_new_journal_starts_the_index_over(tmp_path: Path) -> None:
    """The index file of another journal (another journal_id) is emptied and rebuilt, not mixed in."""
    _, index, _ = _index(tmp_path)
    index.close()
    other = tmp_path / "other"
    journal = Journal(other / "journal.sqlite3")
    journal.append(Round(round_id="abcdefabcdef", prompt="p", negative_prompt="", mode="text2img", steps=1,
                         guidance=1.0, width=64, height=64, seeds=(1, 2, 3, 4), model_id="m", model_revision="",
                         scheduler="ddim", image_paths=("a", "b", "c", "d"), requester_id=1, guild_id=None,
                         channel_id=1, source="slash", queued_s=0.0, generate_s=0.1))
    index = RoundIndex(tmp_path / "dashboard.sqlite3", journal.path)
    index.catch_up()
    assert [r.round_id for r in index.page(GalleryFilter())[0]] == ["abcdefabcdef"]
