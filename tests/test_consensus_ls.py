"""Several reviewers per task: decisions (unit) and consensus + adjudication through a real
Label Studio server (integration)."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from loops.review import pending_adjudications, sync_reviews
from pseudolabel.consensus import Decision, box_f1, decide, decide_many
from pseudolabel.data.ledger import Ledger
from pseudolabel.review.client import LabelStudioClient
from pseudolabel.review.convert import classes_from_label_config
from pseudolabel.review.server import LabelStudioServer
from pseudolabel.types import Annotation, Box, Candidate, Item, Prediction

CLASSES = ["a", "b", "c"]


def _item(i: int | str = 0) -> Item:
    return Item(id=f"item{i}", path=Path(f"{i}.png"), width=100, height=100)


def _votes(*labels: str | None, item: Item | None = None, skipped: int = 0) -> list[Annotation]:
    it = item or _item()
    out = [Annotation(item=it, label=lab, reviewer=f"r{k}", review_outcome="corrected") for k, lab in enumerate(labels)]
    out += [Annotation(item=it, reviewer=f"s{k}", review_outcome="skipped") for k in range(skipped)]
    return out


# --------------------------------------------------------------------------- decide (unit)


def test_majority_decision_and_agreement() -> None:
    d = decide(_votes("a", "a", "b"), classes=CLASSES)
    assert d == Decision(label="a", agreement=2 / 3, n_votes=3, needs_adjudication=False,
                         method="majority", confidence=2 / 3)
    unanimous = decide(_votes("c", "c", "c"), classes=CLASSES)
    assert unanimous.label == "c" and unanimous.agreement == 1.0 and not unanimous.needs_adjudication


def test_ties_have_no_label_and_need_adjudication() -> None:
    split = decide(_votes("a", "b", "c"), classes=CLASSES)
    assert split.label is None and split.needs_adjudication and split.agreement == pytest.approx(1 / 3)
    two_two = decide(_votes("a", "b", "b", "a"), classes=CLASSES, min_agreement=0.0)
    assert two_two.label is None and two_two.needs_adjudication  # a tie is never settled silently


def test_min_agreement_edge_and_skips() -> None:
    half = _votes("a", "a", "b", "c")  # 2 of 4 = 0.5
    assert not decide(half, min_agreement=0.5).needs_adjudication  # at the threshold: accepted
    assert decide(half, min_agreement=0.51).needs_adjudication
    with_skips = decide(_votes("b", skipped=2))
    assert with_skips.n_votes == 1 and with_skips.label == "b"  # skips do not vote
    with pytest.raises(ValueError, match="no vote"):
        decide(_votes(skipped=2))
    with pytest.raises(ValueError, match="min_agreement"):
        decide(_votes("a"), min_agreement=1.5)
    with pytest.raises(ValueError, match="consensus method"):
        decide(_votes("a"), method="mode")  # type: ignore[arg-type]


def _unreliable_case(n_items: int = 200, seed: int = 0) -> tuple[dict[str, str], dict[str, list[Annotation]]]:
    """Two good reviewers (80 % right, errors uniform) and one unreliable reviewer who always
    answers the next class: whenever the good two disagree, majority follows the wrong one."""
    rng = np.random.default_rng(seed)
    truth, by_item = {}, {}
    for i in range(n_items):
        t = int(rng.integers(3))
        it = _item(i)
        anns = []
        for who in ("good1", "good2"):
            lab = t if rng.random() < 0.8 else int(rng.choice([c for c in range(3) if c != t]))
            anns.append(Annotation(item=it, label=CLASSES[lab], reviewer=who, review_outcome="corrected"))
        anns.append(Annotation(item=it, label=CLASSES[(t + 1) % 3], reviewer="unreliable", review_outcome="corrected"))
        truth[it.id], by_item[it.id] = CLASSES[t], anns
    return truth, by_item


def test_dawid_skene_beats_majority_with_one_unreliable_reviewer() -> None:
    truth, by_item = _unreliable_case()
    mv = decide_many(by_item, method="majority", classes=CLASSES)
    ds = decide_many(by_item, method="dawid_skene", classes=CLASSES)
    acc = lambda dec: np.mean([dec[i].label == t for i, t in truth.items()])  # noqa: E731
    assert all(d.method == "dawid_skene" for d in ds.values())
    assert acc(ds) >= 0.95 and acc(ds) > acc(mv) + 0.1
    # DS is sure even where only one of three votes backs its answer.
    lone = [d for d in ds.values() if d.agreement < 0.5 and d.label is not None]
    assert len(lone) >= 20
    assert np.median([d.confidence for d in lone]) > 0.9
    assert np.mean([not d.needs_adjudication for d in lone]) > 0.8
    # One item alone, with the rest as context, gives the same answer.
    first = next(iter(by_item))
    rest = {k: v for k, v in by_item.items() if k != first}
    assert decide(by_item[first], method="dawid_skene", classes=CLASSES, context=rest).label == ds[first].label


def test_dawid_skene_falls_back_to_majority_without_enough_overlap() -> None:
    _, by_item = _unreliable_case(n_items=5)
    ds = decide_many(by_item, method="dawid_skene", classes=CLASSES)
    assert {d.method for d in ds.values()} == {"majority"}
    with pytest.raises(ValueError, match="needs classes"):
        decide_many(by_item, method="dawid_skene")


def _box_votes(*answers: tuple[Box, ...]) -> list[Annotation]:
    return [Annotation(item=_item(), boxes=b, empty_ok=not b, reviewer=f"r{k}", review_outcome="corrected")
            for k, b in enumerate(answers)]


def test_detection_takes_the_answer_closest_to_the_others() -> None:
    cat, dog = Box(10, 10, 50, 50, "cat"), Box(60, 60, 90, 90, "dog")
    cat_shifted = Box(12, 12, 52, 52, "cat")  # IoU ~0.82 with cat
    assert box_f1((cat, dog), (cat_shifted, dog)) == 1.0
    assert box_f1((cat,), (Box(10, 10, 50, 50, "dog"),)) == 0.0  # same place, other class
    assert box_f1((), ()) == 1.0 and box_f1((cat,), ()) == 0.0
    assert box_f1((cat, dog), (cat,)) == pytest.approx(2 / 3)
    d = decide(_box_votes((cat,), (cat_shifted, dog), (cat, dog)))
    assert d.method == "boxes" and d.label is None and d.chosen == 2 and d.boxes == (cat, dog)
    assert d.agreement == pytest.approx((2 / 3 + 1.0) / 2)
    disagree = decide(_box_votes((cat,), (dog,), ()), min_agreement=0.5)
    assert disagree.needs_adjudication and disagree.agreement == 0.0
    empty = decide(_box_votes((), ()))
    assert empty.boxes == () and empty.agreement == 1.0 and not empty.needs_adjudication


# --------------------------------------------------------------------------- Label Studio (integration)


def _next_task(server: LabelStudioServer, project_id: int) -> dict | None:
    """The task Label Studio would serve next to the token's user (the labelling stream)."""
    req = urllib.request.Request(f"{server.url}/api/projects/{project_id}/next",
                                 headers={"Authorization": f"Token {server.token}"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=30) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        if e.code == 404:  # nothing left to label
            return None
        raise


@pytest.mark.integration
def test_three_reviewers_consensus_and_adjudication(
    label_studio: LabelStudioServer, ls_images_root: Path, make_digit_pngs, tmp_path: Path  # noqa: ANN001
) -> None:
    items = make_digit_pngs(ls_images_root / "consensus", 4, offset=300)
    classes = [str(d) for d in range(10)]
    client = LabelStudioClient(label_studio.url, label_studio.token, "consensus overlap 3", classes,
                               images_root=ls_images_root, overlap=3)
    pid = client.ensure_project()
    project = client._sdk().projects.get(pid)  # test-only peek at the server's settings
    assert project.maximum_annotations == 3
    assert classes_from_label_config(project.label_config or "") == tuple(classes)
    assert '<Header value="$note"' in (project.label_config or "")

    def cand(it: Item, kind: str = "uncertain") -> Candidate:
        probs = np.full(10, 0.01)
        probs[4] = 0.91
        return Candidate(item=it, score=1.0, prediction=Prediction(it.id, "m1", probs=probs),
                         strategy="entropy", kind=kind)

    tasks = client.submit([cand(items[0]), cand(items[1]), cand(items[2], kind="relabel")], round_id=1)
    relabel = client.task_info(tasks[items[2].id])
    assert relabel.data["kind"] == "relabel" and "model suggests '4'" in relabel.data["note"]
    assert client.task_info(tasks[items[0].id]).overlap == 3

    ledger = Ledger(tmp_path / "ledger.sqlite")
    ledger.add_items(items, split="pool")
    users = [client.ensure_user(f"reviewer{k}@pseudolabel.local") for k in range(3)]
    assert len(set(users)) == 3 and client.ensure_user("reviewer0@pseudolabel.local") == users[0]
    for uid in users:  # all three agree on item 0
        client.annotate(tasks[items[0].id], "4", completed_by=uid)
    for uid, lab in zip(users, ["1", "2", "3"]):  # a 1-1-1 split on item 1
        client.annotate(tasks[items[1].id], lab, completed_by=uid)
    client.annotate(tasks[items[2].id], "4", completed_by=users[0])  # one answer of three so far
    assert client.task_info(tasks[items[1].id]).is_labeled  # three distinct users: done

    kw = dict(round_id=1, overlap=3, consensus="majority", min_agreement=0.5, classes=classes)
    res = sync_reviews(ledger, client, **kw)  # type: ignore[arg-type]
    assert (res.added, res.consensus, res.adjudications) == (7, 1, 1)
    assert res.mean_agreement == pytest.approx((1.0 + 1 / 3) / 2)
    current = ledger.current_labels()
    assert current[items[0].id].label == "4" and current[items[0].id].reviewer == "consensus:majority"
    assert current[items[0].id].review_outcome == "accepted"  # the model said 4 too
    assert ledger.consensus("consensus overlap 3")[items[0].id]["agreement"] == 1.0
    assert items[2].id not in ledger.consensus("consensus overlap 3")  # 1 of 3 answers
    # Individual answers stay in the ledger as they were.
    assert sorted(r.reviewer for r in ledger.label_history(items[1].id)) == \
        [f"reviewer{k}@pseudolabel.local" for k in range(3)]

    # The split task is served again, marked for adjudication, predictions kept.
    split = client.task_info(tasks[items[1].id])
    assert split.data["kind"] == "adjudicate" and split.data["note"].startswith("Adjudication:")
    assert split.overlap == 4 and not split.is_labeled
    assert split.data["pseudolabel_id"] == items[1].id and split.data["image"]
    served = _next_task(label_studio, pid)
    assert served is not None and served["id"] in {tasks[items[1].id], tasks[items[2].id]}
    assert pending_adjudications(ledger, client.project_title) == {items[1].id: tasks[items[1].id]}

    # Re-syncing changes nothing and does not ask again.
    again = sync_reviews(ledger, client, full=True, **kw)  # type: ignore[arg-type]
    assert (again.added, again.consensus, again.adjudications) == (0, 0, 0)
    assert client.task_info(tasks[items[1].id]).overlap == 4

    # The adjudicator (a fourth reviewer) decides.
    judge = client.ensure_user("judge@pseudolabel.local")
    client.annotate(tasks[items[1].id], "2", completed_by=judge)
    settled = sync_reviews(ledger, client, **kw)  # type: ignore[arg-type]
    assert (settled.added, settled.consensus, settled.adjudications) == (1, 1, 0)
    row = ledger.current_labels()[items[1].id]
    assert row.label == "2" and row.reviewer == "consensus:adjudicated"
    assert pending_adjudications(ledger, client.project_title) == {}
    assert client.task_info(tasks[items[1].id]).is_labeled
    final = sync_reviews(ledger, client, full=True, **kw)  # type: ignore[arg-type]
    assert (final.added, final.consensus, final.adjudications) == (0, 0, 0)
    ledger.close()


@pytest.mark.integration
def test_submit_relabel_serves_reviewed_items_again(
    label_studio: LabelStudioServer, ls_images_root: Path, make_digit_pngs  # noqa: ANN001
) -> None:
    items = make_digit_pngs(ls_images_root / "relabel", 2, offset=320)
    classes = [str(d) for d in range(10)]
    client = LabelStudioClient(label_studio.url, label_studio.token, "relabel second review", classes,
                               images_root=ls_images_root)

    def cand(it: Item, pred: int, kind: str) -> Candidate:
        probs = np.full(10, 0.01)
        probs[pred] = 0.91
        return Candidate(item=it, score=0.5, prediction=Prediction(it.id, f"m{pred}", probs=probs),
                         strategy="confident_learning" if kind == "relabel" else "entropy", kind=kind)

    first = client.submit([cand(items[0], 3, "uncertain")], round_id=1)
    (pending,) = client.pending()
    client.annotate(first[items[0].id], "3", parent_prediction=pending.prediction_id)
    assert client.task_info(first[items[0].id]).is_labeled
    with pytest.raises(ValueError, match="kind='relabel'"):
        client.submit_relabel([cand(items[1], 5, "uncertain")], round_id=2)
    got = client.submit_relabel([cand(items[0], 8, "relabel"), cand(items[1], 5, "relabel")], round_id=2)
    assert got[items[0].id] == first[items[0].id] and client.count_tasks() == 2
    again = client.task_info(got[items[0].id])
    assert again.data["kind"] == "relabel" and "model suggests '8'" in again.data["note"]
    assert again.overlap == 2 and not again.is_labeled and again.data["round"] == 2
    new = client.task_info(got[items[1].id])
    assert new.data["kind"] == "relabel" and "'5'" in new.data["note"] and new.overlap == 1
    # The second reviewer's answer is read against the new suggestion.
    other = client.ensure_user("second@pseudolabel.local")
    client.annotate(got[items[0].id], "8", completed_by=other)
    answers = [a for a in client.collect() if a.item.id == items[0].id]
    assert sorted((a.label, a.review_outcome) for a in answers) == [("3", "accepted"), ("8", "accepted")]
