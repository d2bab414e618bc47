from pathlib import Path

import pytest

from pseudolabel.data.ledger import Ledger
from pseudolabel.types import Annotation, Item


def item(n: int) -> Item:
    return Item(f"{n:064x}", Path(f"/img/{n}.png"), 8, 8)


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    led = Ledger(tmp_path / "ledger.sqlite")
    led.add_items([item(i) for i in range(5)], split="pool")
    return led


def test_wal_mode(ledger: Ledger) -> None:
    assert ledger._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_pseudo_never_overrides_human(ledger: Ledger) -> None:
    it = item(0)
    ledger.add_labels([Annotation(it, label="cat", source="human", round=1, reviewer="r@x")])
    ledger.add_labels([Annotation(it, label="dog", source="pseudo", round=2, weight=0.5)])
    cur = ledger.current_labels()[it.id]
    assert (cur.label, cur.source, cur.reviewer) == ("cat", "human", "r@x")
    # both rows are kept: append-only history
    assert [r.source for r in ledger.label_history(it.id)] == ["human", "pseudo"]


def test_human_beats_seed_and_latest_human_wins(ledger: Ledger) -> None:
    it = item(1)
    ledger.add_labels([Annotation(it, label="a", source="seed", round=0)])
    ledger.add_labels([Annotation(it, label="b", source="human", round=1, ls_annotation_id=10)])
    ledger.add_labels([Annotation(it, label="c", source="human", round=2, ls_annotation_id=11)])
    assert ledger.current_labels()[it.id].label == "c"
    assert ledger.label_counts() == {"seed": 0, "human": 1, "pseudo": 0}


def test_skipped_review_is_no_label(ledger: Ledger) -> None:
    it = item(2)
    ledger.add_labels([Annotation(it, label=None, source="human", review_outcome="skipped", ls_annotation_id=3)])
    ledger.add_labels([Annotation(it, label="x", source="pseudo", round=1)])
    assert ledger.current_labels()[it.id].source == "pseudo"


def test_repulled_annotation_not_duplicated(ledger: Ledger) -> None:
    a = Annotation(item(3), label="a", source="human", ls_annotation_id=42)
    assert ledger.add_labels([a]) == 1
    assert ledger.add_labels([a]) == 0
    assert len(ledger.label_history(item(3).id)) == 1


def test_stale_pseudo_labels_are_ignored(ledger: Ledger) -> None:
    ledger.add_labels([Annotation(item(4), label="old", source="pseudo", round=1)])
    ledger.add_labels([Annotation(item(0), label="new", source="pseudo", round=2)])
    cur = ledger.current_labels()
    assert item(4).id not in cur and cur[item(0).id].label == "new"


def test_holdout_split_wins_and_unknown_items_rejected(ledger: Ledger) -> None:
    ledger.add_items([item(0)], split="holdout")
    ledger.add_items([item(0)], split="pool")
    assert item(0).id in {i.id for i in ledger.items("holdout")}
    assert item(0).id not in {i.id for i in ledger.items("pool")}
    with pytest.raises(ValueError, match="unknown item"):
        ledger.add_labels([Annotation(item(99), label="a")])
    with pytest.raises(ValueError, match="unknown split 'train'"):
        ledger.add_items([item(1)], split="train")  # type: ignore[arg-type]


def test_rounds_resume_and_tasks_idempotent(ledger: Ledger) -> None:
    rid, resumed = ledger.open_round()
    assert (rid, resumed) == (1, False)
    ledger.mark_stage(rid, "train", {"n": 3})
    assert ledger.open_round() == (1, True)
    assert ledger.stage_done(1, "train") and not ledger.stage_done(1, "push")
    assert ledger.stage_info(1, "train") == {"n": 3}
    assert ledger.record_tasks("p", 1, {item(0).id: 7, item(1).id: 8}) == 2
    assert ledger.record_tasks("p", 1, {item(0).id: 7}) == 0
    ledger.set_task_state("p", item(0).id, "answered")
    assert ledger.task_counts() == {"queued": 1, "answered": 1, "skipped": 0}
    ledger.finish_round(1)
    assert ledger.open_round() == (2, False)


def test_a_failed_transaction_leaves_nothing(ledger: Ledger) -> None:
    good = Annotation(item(0), label="a", source="human", ls_annotation_id=1)
    bad = Annotation(item(77), label="a", source="human", ls_annotation_id=2)
    with pytest.raises(ValueError):
        ledger.add_labels([good, bad])
    assert ledger.all_labels() == []


def test_edited_annotation_is_appended_not_lost(ledger: Ledger) -> None:
    from datetime import datetime, timedelta, timezone

    t = datetime(2026, 1, 1, tzinfo=timezone.utc)
    first = Annotation(item(3), label="a", source="human", ls_annotation_id=42, created_at=t)
    edit = Annotation(item(3), label="b", source="human", ls_annotation_id=42, created_at=t + timedelta(minutes=1))
    assert ledger.add_labels([first, edit, first]) == 2
    assert ledger.current_labels()[item(3).id].label == "b"


def test_gone_item_keeps_its_labels_but_is_read_by_nothing(ledger: Ledger) -> None:
    ledger.add_labels([Annotation(item(0), label="a", source="human", round=1, ls_annotation_id=5),
                       Annotation(item(1), label="b", source="pseudo", round=1)])
    assert ledger.mark_gone({item(0).id: "file deleted since it was scanned"}) == 1
    assert ledger.mark_gone({item(0).id: "again"}) == 0                      # already gone: reason kept
    assert item(0).id not in {i.id for i in ledger.items()} | {i.id for i in ledger.items("pool")}
    assert item(0).id in {i.id for i in ledger.items(include_gone=True)}
    assert ledger.item(item(0).id).path == item(0).path                      # still known by id
    assert item(0).id not in ledger.current_labels()
    assert ledger.current_labels(include_gone=True)[item(0).id].label == "a"
    assert [r.label for r in ledger.label_history(item(0).id)] == ["a"]      # history kept
    assert ledger.split_counts()["pool"] == 4 and ledger.label_counts()["human"] == 0
    gone = ledger.gone_items()
    assert list(gone) == [item(0).id] and gone[item(0).id].reason == "file deleted since it was scanned"
    assert gone[item(0).id].split == "pool"
    with pytest.raises(ValueError, match="unknown item"):
        ledger.mark_gone({item(99).id: "x"})
    # the same bytes back on disk (a restored file, maybe elsewhere): present again, at the new path
    back = Item(item(0).id, Path("/restored/0.png"), 8, 8)
    assert ledger.add_items([back], split="pool") == 0
    assert ledger.item(item(0).id).path == Path("/restored/0.png") and ledger.gone_items() == {}
    assert ledger.current_labels()[item(0).id].label == "a"
    assert ledger.move_items({item(1).id: Path("/moved/1.png")}) == 1
    assert ledger.item(item(1).id).path == Path("/moved/1.png")


def test_state_tables(ledger: Ledger) -> None:
    a, b = item(0).id, item(1).id
    assert ledger.holdout_truth() == {} and ledger.termination() is None and ledger.freematch_state() is None
    ledger.set_holdout_truth({a: "cat", b: "[]"})
    ledger.set_holdout_truth({a: "dog"})                                      # upsert: b keeps its truth
    assert ledger.holdout_truth() == {a: "dog", b: "[]"}
    with pytest.raises(ValueError, match="expected a class name or a boxes JSON"):
        ledger.set_holdout_truth({a: 3})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="unknown item"):
        ledger.set_holdout_truth({item(99).id: "x"})

    ledger.record_consensus("p", {a: {"label": "x", "agreement": 2 / 3, "n_votes": 3, "method": "majority",
                                      "needs_adjudication": False}})
    assert ledger.consensus("p")[a]["agreement"] == pytest.approx(2 / 3) and ledger.consensus("q") == {}
    ledger.record_adjudications("p", {b: {"task_id": 9, "reason": "split", "requested_at": "t0", "seen": [1, 2]}})
    assert ledger.adjudications("p", open_only=True) == {b: {"task_id": 9, "reason": "split", "requested_at": "t0",
                                                             "seen": [1, 2]}}
    ledger.record_adjudications("p", {b: {"task_id": 9, "reason": "split", "requested_at": "t0", "seen": [1, 2],
                                          "settled": "t1"}})
    assert ledger.adjudications("p", open_only=True) == {} and ledger.adjudications("p")[b]["settled"] == "t1"

    assert ledger.add_relabel_requests({a: 1}) == 1
    assert ledger.add_relabel_requests({a: 2, b: 2}) == 1                     # a was asked in round 1: kept
    assert ledger.relabel_requests() == {a: 1, b: 2}

    ledger.save_freematch_state({"tau": 0.5, "class_probs": [0.5, 0.5]}, round_id=1)
    ledger.save_freematch_state({"tau": 0.7, "class_probs": [0.4, 0.6]}, round_id=2)
    assert ledger.freematch_state() == {"tau": 0.7, "class_probs": [0.4, 0.6]}
    with pytest.raises(ValueError, match="tau in"):
        ledger.save_freematch_state({"tau": 1.5, "class_probs": [1.0]})

    ledger.set_termination("target_reached: x", round_id=4)
    ledger.set_termination("max_rounds: stopped after 5 rounds")
    assert ledger.termination() == {"reason": "max_rounds: stopped after 5 rounds"}

    ledger.add_retrain({"accepted": True, "reason": "first", "published": "/m/v1.pt"})
    ledger.add_retrain({"accepted": False, "reason": "worse", "published": None})
    assert [r["reason"] for r in ledger.retrain_history()] == ["first", "worse"]
    with pytest.raises(ValueError, match="needs 'accepted' and 'reason'"):
        ledger.add_retrain({"reason": "x"})


def test_moved_meta_keys_point_to_their_methods(ledger: Ledger) -> None:
    ledger.set_meta("last_sync:p", "t")
    assert ledger.get_meta("last_sync:p") == "t"
    for key, method in [("holdout_truth", "set_holdout_truth"), ("consensus:p", "record_consensus"),
                        ("termination", "set_termination"), ("retrain_history", "add_retrain")]:
        with pytest.raises(ValueError, match=method):
            ledger.set_meta(key, {})
        with pytest.raises(ValueError, match=method):
            ledger.get_meta(key)
