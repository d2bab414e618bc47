"""Integration tests against a real Label Studio server (started once per session).

Run only these: ``pytest -m integration``; the 1,000-task timing alone:
``pytest -m integration -k thousand -s``.
"""

from __future__ import annotations

import json
import time
import urllib.request
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest

from pseudolabel.review.client import LabelStudioClient
from pseudolabel.review.convert import local_files_url
from pseudolabel.review.server import LabelStudioServer
from pseudolabel.sim.simulated import SimulatedReviewer
from pseudolabel.types import Candidate, Item, Prediction

pytestmark = pytest.mark.integration

CLASSES = [str(d) for d in range(10)]


def true_class(item: Item) -> str:
    return item.path.stem.rsplit("_", 1)[1]


def candidates(items: list[Item], *, wrong_every: int = 3, model_version: str = "m1") -> list[Candidate]:
    """Candidates whose prediction is wrong for every ``wrong_every``-th item; uncertainty
    decreases with the index (item 0 most uncertain)."""
    out = []
    for i, item in enumerate(items):
        true = int(true_class(item))
        pred = (true + 1) % 10 if i % wrong_every == 0 else true
        probs = np.full(10, 0.02)
        probs[pred] = 1.0 - 0.02 * 9
        out.append(Candidate(
            item=item,
            score=2.0 - 0.1 * i,
            prediction=Prediction(item_id=item.id, model_version=model_version, probs=probs),
            strategy="entropy",
        ))
    return out


def make_client(server: LabelStudioServer, images_root: Path, title: str, classes: list[str] = CLASSES) -> LabelStudioClient:
    return LabelStudioClient(server.url, server.token, title, classes, images_root=images_root)


def http_get(server: LabelStudioServer, path: str) -> tuple[int, str, bytes]:
    req = urllib.request.Request(server.url + path, headers={"Authorization": f"Token {server.token}"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(req, timeout=30) as r:
        return r.status, r.headers.get("content-type", ""), r.read()


def test_server_binds_loopback_and_answers(label_studio: LabelStudioServer) -> None:
    assert label_studio.url.startswith("http://127.0.0.1:")
    assert len(label_studio.token) == 40
    status, _, body = http_get(label_studio, "/api/version")
    assert status == 200 and b"label-studio" in body.lower().replace(b"_", b"-")


def test_push_review_collect_round_trip(
    label_studio: LabelStudioServer, ls_images_root: Path, ls_images: list[Item]
) -> None:
    client = make_client(label_studio, ls_images_root, "digits round trip")
    pid = client.ensure_project()
    assert client.ensure_project() == pid  # found by title, not created twice

    first = candidates(ls_images[:10])
    mapping = client.submit(first, round_id=1, model_version="m1")
    assert sorted(mapping) == sorted(c.item.id for c in first)
    assert len(set(mapping.values())) == 10
    assert client.count_tasks() == 10

    # Predictions exist, and Label Studio's score order is our uncertainty order reversed.
    pending = client.pending()
    assert [p.item_id for p in pending] == [c.item.id for c in sorted(first, key=lambda c: -c.score)]
    assert all(p.prediction_id is not None for p in pending)
    scores = [p.prediction_score for p in pending]
    assert scores == sorted(scores) and len(set(scores)) == 10
    by_id = {c.item.id: c for c in first}
    for p in pending:
        probs = by_id[p.item_id].prediction.probs  # type: ignore[union-attr]
        assert p.predicted_label == CLASSES[int(np.argmax(probs))]
    # ...and the server itself hands out the most uncertain task first.
    _, _, body = http_get(label_studio, f"/api/projects/{pid}/next/")
    assert json.loads(body)["data"]["pseudolabel_id"] == max(first, key=lambda c: c.score).item.id

    # Idempotent: the same ten again plus two new ones -> 12 tasks, same ids; the ten still
    # queued get the new model's prediction (round 2 of a campaign).
    again = candidates(ls_images[:12], model_version="m2")
    mapping2 = client.push(again, round_id=2, model_version="m2", refresh=again)
    assert client.count_tasks() == 12
    assert {k: mapping2[k] for k in mapping} == mapping
    assert len(set(mapping2.values())) == 12
    states = client.task_states()
    assert set(states) == {c.item.id for c in again} and set(states.values()) == {"queued"}

    truth = {it.id: true_class(it) for it in ls_images}
    stats = SimulatedReviewer(client, truth, CLASSES, error_rate=0.0, seed=0).answer_pending()
    n_wrong = sum(1 for i in range(12) if i % 3 == 0)
    assert stats.answered == 12 and stats.errors_injected == 0
    assert (stats.accepted, stats.corrected) == (12 - n_wrong, n_wrong)
    assert client.pending() == []
    assert set(client.task_states().values()) == {"answered"}

    anns = client.collect()
    assert len(anns) == 12
    assert {a.item.id: a.label for a in anns} == truth
    outcomes = [a.review_outcome for a in anns]
    assert outcomes.count("accepted") == 12 - n_wrong and outcomes.count("corrected") == n_wrong
    for a in anns:
        assert a.source == "human" and a.reviewer == label_studio.username
        assert a.ls_task_id == mapping2[a.item.id] and a.ls_annotation_id is not None
        assert a.item.path == next(it.path for it in ls_images if it.id == a.item.id).resolve()
        assert (a.item.width, a.item.height) == (32, 32)
        assert a.created_at.tzinfo is not None
    # Items 10 and 11 were first pushed in round 2, the others in round 1.
    assert {a.item.id: a.round for a in anns} == {
        it.id: (1 if i < 10 else 2) for i, it in enumerate(ls_images)
    }

    latest = max(a.created_at for a in anns)
    assert client.collect(since=latest) == []
    assert len(client.collect(since=latest - timedelta(days=1))) == 12
    with pytest.raises(ValueError, match="timezone"):
        client.collect(since=latest.replace(tzinfo=None))

    # A later answer shows up incrementally (and only it).
    t_id = mapping2[ls_images[0].id]
    client.annotate(t_id, "7")
    new = client.collect(since=latest)
    assert [(a.ls_task_id, a.label) for a in new] == [(t_id, "7")]


def test_skipped_task_comes_back_as_skipped(
    label_studio: LabelStudioServer, ls_images_root: Path, ls_images: list[Item]
) -> None:
    client = make_client(label_studio, ls_images_root, "digits skip")
    mapping = client.submit(candidates(ls_images[:2]), round_id=1)
    skipped_task = mapping[ls_images[0].id]
    client.annotate(skipped_task, was_cancelled=True)
    anns = client.collect()
    assert len(anns) == 1
    (a,) = anns
    assert a.review_outcome == "skipped" and a.label is None and a.ls_task_id == skipped_task
    states = client.task_states()
    assert states == {ls_images[0].id: "skipped", ls_images[1].id: "queued"}
    assert [p.task_id for p in client.pending()] == [mapping[ls_images[1].id]]


def test_images_are_served(label_studio: LabelStudioServer, ls_images_root: Path, ls_images: list[Item]) -> None:
    client = make_client(label_studio, ls_images_root, "digits images")
    client.submit(candidates(ls_images[:1]), round_id=1)
    url = local_files_url(ls_images[0].path, ls_images_root)
    status, ctype, body = http_get(label_studio, url)
    assert status == 200 and ctype == "image/png"
    assert body == ls_images[0].path.read_bytes()


def test_existing_project_with_other_classes_is_refused(
    label_studio: LabelStudioServer, ls_images_root: Path
) -> None:
    make_client(label_studio, ls_images_root, "digits classes").ensure_project()
    other = make_client(label_studio, ls_images_root, "digits classes", CLASSES[:9] + ["ten"])
    with pytest.raises(ValueError, match=r"missing \['ten'\], unexpected \['9'\]"):
        other.ensure_project()


def test_image_outside_root_is_refused(
    label_studio: LabelStudioServer, ls_images_root: Path, ls_images: list[Item], tmp_path: Path
) -> None:
    client = make_client(label_studio, ls_images_root, "digits outside")
    outside = Item(id="x" * 64, path=tmp_path / "x_3.png", width=32, height=32)
    bad = candidates([outside], wrong_every=99)
    with pytest.raises(ValueError, match="outside"):
        client.submit(candidates(ls_images[:1]) + bad, round_id=1)
    assert client.count_tasks() == 0  # nothing imported when one candidate is bad


def test_simulated_reviewer_is_deterministic_and_injects_errors(
    label_studio: LabelStudioServer, ls_images_root: Path, ls_images: list[Item]
) -> None:
    truth = {it.id: true_class(it) for it in ls_images}
    labels = []
    for run in range(2):
        client = make_client(label_studio, ls_images_root, f"digits noisy {run}")
        client.submit(candidates(ls_images), round_id=1)
        stats = SimulatedReviewer(client, truth, CLASSES, error_rate=0.5, seed=3).answer_pending(limit=8)
        assert stats.answered == 8 and len(client.pending()) == 4
        anns = client.collect()
        wrong = sum(a.label != truth[a.item.id] for a in anns)
        assert wrong == stats.errors_injected > 0
        labels.append({a.item.id: a.label for a in anns})
    assert labels[0] == labels[1]


def test_thousand_tasks_push_and_pull_timing(
    label_studio: LabelStudioServer, ls_images_root: Path, make_digit_pngs  # type: ignore[no-untyped-def]
) -> None:
    items = make_digit_pngs(ls_images_root / "thousand", 1000)
    cands = candidates(items)
    client = make_client(label_studio, ls_images_root, "digits thousand")
    client.ensure_project()
    t0 = time.perf_counter()
    mapping = client.submit(cands, round_id=1, model_version="m1")
    t_push = time.perf_counter() - t0
    t0 = time.perf_counter()
    again = client.submit(cands, round_id=1, model_version="m1")
    t_repush = time.perf_counter() - t0
    for t_id in list(mapping.values())[:20]:
        client.annotate(t_id, "0")
    t0 = time.perf_counter()
    anns = client.collect()
    t_pull = time.perf_counter() - t0
    t0 = time.perf_counter()
    states = client.task_states()
    t_states = time.perf_counter() - t0
    print(f"\n1,000 tasks with predictions: push {t_push:.2f} s, idempotent re-push {t_repush:.2f} s, "
          f"collect {t_pull:.2f} s ({len(anns)} annotations), task_states {t_states:.2f} s")
    assert again == mapping and len(set(mapping.values())) == 1000
    assert len(anns) == 20 and len(states) == 1000
