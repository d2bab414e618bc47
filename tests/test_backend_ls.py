"""The ML backend called by a real Label Studio server, and adoption of tasks made by hand.

This module starts its own server with ``local_ml_backends=True`` (the session's server keeps
Label Studio's default guard, which refuses a backend on 127.0.0.1: checked here too). The
model is a real small CNN trained on real digit images. Latency figures print with ``-s``:
``pytest tests/test_backend_ls.py -s -k latency``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch

from conftest import write_digit_pngs
from loops.adopt import adopt_foreign
from loops.serve import make_backend, prelabel
from pseudolabel.config import load_config
from pseudolabel.tasks import PoolPredictions, task_for
from pseudolabel.data.ingest import read_quarantine_csv
from pseudolabel.data.ledger import Ledger
from pseudolabel.models.torchvision_cls import TorchvisionClassifier
from pseudolabel.review.backend import BackendServer
from pseudolabel.review.client import LabelStudioClient
from pseudolabel.review.server import LabelStudioServer
from pseudolabel.review.transport import LabelStudioError
from pseudolabel.types import Annotation, Candidate, Item

pytestmark = pytest.mark.integration

CLASSES = [str(d) for d in range(10)]


def _truth(item: Item) -> str:
    return item.path.stem.rsplit("_", 1)[1]


def _train(items: list[Item], *, seed: int) -> TorchvisionClassifier:
    torch.set_num_threads(1)
    model = TorchvisionClassifier(CLASSES, image_size=16, epochs=8, batch_size=32, device="cpu", seed=seed)
    return model.fit([Annotation(item=it, label=_truth(it), source="seed") for it in items])


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, label_studio: LabelStudioServer) -> Iterator[dict[str, Any]]:
    """A Label Studio that may call loopback backends (a second server: the session's keeps the
    default guard), digit images, a trained round 1, and the campaign's backend serving it on
    a free loopback port."""
    exe = label_studio.ls_bin
    base = tmp_path_factory.mktemp("backend-ls")
    root = base / "doc" / "images"
    items = write_digit_pngs(root / "digits", 200)
    work = base / "work"
    model = _train(items[:60], seed=0)
    model.save(work / "rounds" / "0001" / "model.pt")
    server = LabelStudioServer(base / "ls-data", root, ls_bin=exe, local_ml_backends=True, startup_timeout=600)
    server.start()
    try:
        cfg = load_config(data={
            "project": "backend ls", "workdir": str(work), "classes": CLASSES,
            "data": {"seed": {"path": str(base / "seed")}, "pool": {"path": str(root / "digits")},
                     "holdout": {"path": str(base / "holdout")}},
            "model": {"device": "cpu"}, "label_studio": {"url": server.url, "images_root": str(root)},
        }, environ={})
        lines: list[str] = []
        backend = make_backend(cfg, token=None, batch_size=32, log=lines.append)
        with BackendServer(backend, port=None) as bserver:
            yield {"server": server, "cfg": cfg, "root": root, "items": items, "model": model,
                   "backend": bserver, "lines": lines, "base": base}
    finally:
        server.stop()


def _client(env: dict[str, Any], title: str) -> LabelStudioClient:
    c = LabelStudioClient(env["server"].url, env["server"].token, title, CLASSES, images_root=env["root"])
    c.ensure_project()
    return c


def _ls(env: dict[str, Any], method: str, path: str, **kw: Any) -> Any:
    r = httpx.request(method, env["server"].url + path, headers={"Authorization": f"Token {env['server'].token}"},
                      timeout=120, **kw)
    assert r.status_code < 300, r.text[:500]
    return r.json()


def _next_task(env: dict[str, Any], pid: int) -> dict[str, Any]:
    """What the labelling stream ("Label All Tasks") opens next."""
    return dict(_ls(env, "POST", f"/api/dm/actions?id=next_task&project={pid}", json={}))


def _import(client: LabelStudioClient, items: list[Item]) -> list[int]:
    """Tasks made by hand: the image only, no item id of ours."""
    resp = client._sdk().projects.import_tasks(client.project_id, request=[{"data": {"image": client.image_url(
        it.path)}} for it in items], return_task_ids=True)
    return [int(t) for t in resp.task_ids]


def _calls(env: dict[str, Any]) -> list[dict[str, Any]]:
    return list(httpx.get(env["backend"].url + "/requests").json()["requests"])


def _candidates(env: dict[str, Any], items: list[Item]) -> list[Candidate]:
    """What a round pushes for ``items``: the model's prediction and uncertainty."""
    preds = list(env["model"].predict(items))
    u = task_for(env["cfg"]).uncertainty(PoolPredictions.of(preds), {it.id: it for it in items})
    return [Candidate(item=it, score=float(s), prediction=p, strategy="entropy") for it, p, s in zip(items, preds, u)]


def test_the_default_server_refuses_a_loopback_backend(label_studio: LabelStudioServer, ls_images_root: Path,
                                                       env: dict[str, Any]) -> None:
    client = LabelStudioClient(label_studio.url, label_studio.token, "refused backend", CLASSES,
                               images_root=ls_images_root)
    client.ensure_project()
    with pytest.raises(LabelStudioError, match="USE_DEFAULT_BANNED_SUBNETS=false"):
        client.connect_ml_backend(env["backend"].url, model_version="v")


def test_the_labelling_stream_gets_the_backends_prediction(env: dict[str, Any]) -> None:
    items, model = env["items"], env["model"]
    client = _client(env, "stream asks backend")
    pid = client.project_id
    queued = _candidates(env, items[60:62])
    client.push(queued, round_id=1, model_version=model.model_version)
    n0 = len(_calls(env))
    bid = client.connect_ml_backend(env["backend"].url, model_version=model.model_version)
    connect_calls = [c["path"] for c in _calls(env)[n0:]]
    assert "/health" in connect_calls and "/setup" in connect_calls  # Label Studio checked it
    (ours,) = client.ml_backends()
    assert int(ours.id) == bid and ours.title == model.model_version == client.project_model_version()
    (foreign,) = _import(client, items[62:63])

    # A queued task: the stream serves its pushed prediction; the backend is not asked to predict it.
    n1 = len(_calls(env))
    first = _next_task(env, pid)
    assert first["data"]["pseudolabel_id"] in {c.item.id for c in queued}
    (pushed,) = first["predictions"]
    assert not [c for c in _calls(env)[n1:] if c["path"] == "/predict"]
    # ...and the backend would have drawn exactly the same thing for that image.
    img = next(c.item for c in queued if c.item.id == first["data"]["pseudolabel_id"])
    direct = httpx.post(env["backend"].url + "/predict", json={"tasks": [
        {"id": 0, "data": {"image": client.image_url(img.path)}}]}).json()["results"][0]
    assert (pushed["result"], pushed["model_version"]) == (direct["result"], direct["model_version"])
    assert pushed["score"] == pytest.approx(direct["score"])

    for c in queued:  # reviewers answer the queue
        client.annotate(client.existing_tasks([c.item.id])[c.item.id], _truth(c.item))
    n2 = len(_calls(env))
    t0 = time.perf_counter()
    opened = _next_task(env, pid)
    t_open = time.perf_counter() - t0
    assert opened["id"] == foreign and "pseudolabel_id" not in opened["data"]
    (pred,) = opened["predictions"]
    expected = CLASSES[int(np.argmax(next(model.predict(items[62:63])).probs))]
    assert pred["result"][0]["value"]["choices"] == [expected] and pred["model_version"] == model.model_version
    asked = [c for c in _calls(env)[n2:] if c["path"] == "/predict"]
    assert [(c["tasks"], c["status"]) for c in asked] == [(1, 200)]
    print(f"\nlabelling stream, a task the round did not queue: next_task {t_open * 1000:.0f} ms in Label Studio, "
          f"backend /predict {asked[0]['seconds'] * 1000:.1f} ms (1 task)")


def test_latency_retrieve_predictions_for_100_tasks(env: dict[str, Any]) -> None:
    client = _client(env, "retrieve predictions")
    pid = client.project_id
    client.connect_ml_backend(env["backend"].url, model_version=env["model"].model_version)
    ids = _import(client, env["items"][80:180])
    n0 = len(_calls(env))
    t0 = time.perf_counter()
    answer = _ls(env, "POST", f"/api/dm/actions?id=retrieve_tasks_predictions&project={pid}",
                 json={"selectedItems": {"all": True, "excluded": []}})
    t_action = time.perf_counter() - t0
    asked = [c for c in _calls(env)[n0:] if c["path"] == "/predict"]
    assert [(c["tasks"], c["status"]) for c in asked] == [(100, 200)]  # one request, answered in batches
    assert "100" in json.dumps(answer)
    tasks = client._list_tasks(fields="all")
    assert sorted(int(t.id) for t in tasks) == sorted(ids)
    assert all(len(t.predictions or []) == 1 for t in tasks)
    print(f"\nRetrieve predictions, 100 tasks: {t_action:.2f} s in Label Studio, backend /predict "
          f"{asked[0]['seconds']:.2f} s ({100 / asked[0]['seconds']:.0f} tasks/s, batches of 32, small CNN, 1 thread)")


def test_latency_prelabel_100_tasks_in_bulk(env: dict[str, Any]) -> None:
    """The bulk path: the backend's predictions imported in one call per chunk."""
    client = _client(env, "prelabel in bulk")
    ids = _import(client, env["items"][80:180])
    (upload,) = [int(t) for t in client._sdk().projects.import_tasks(client.project_id, request=[
        {"data": {"image": "/data/upload/1/elsewhere.png"}}], return_task_ids=True).task_ids]
    lines: list[str] = []
    backend = make_backend(env["cfg"], token=None, batch_size=32)  # its own cache: a cold start
    res = prelabel(backend, client, chunk=64, log=lines.append)
    assert (res.predicted, list(res.failed)) == (100, [upload])
    assert res.model_version == env["model"].model_version
    by_id = {int(t.id): t for t in client._list_tasks(fields="all")}
    assert all([p.model_version for p in (by_id[i].predictions or [])] == [res.model_version] for i in ids)
    assert not by_id[upload].predictions
    assert any("prelabel: 64/101 tasks" in line and "s left" in line for line in lines)
    again = prelabel(backend, client, chunk=64)
    assert again.predicted == 0 and list(again.failed) == [upload]
    print(f"\nprelabel (bulk import), 100 tasks: {res.seconds:.2f} s in all")


def test_a_push_renames_the_backend_and_a_newer_model_is_served(env: dict[str, Any], tmp_path: Path) -> None:
    items = env["items"]
    client = _client(env, "new model version")
    pid = client.project_id
    v1 = env["model"].model_version
    client.push(_candidates(env, items[180:181]), round_id=1, model_version=v1)
    client.connect_ml_backend(env["backend"].url, model_version=v1)
    client.annotate(client.existing_tasks([items[180].id])[items[180].id], _truth(items[180]))
    second = _train(items[:60], seed=1)
    v2 = second.model_version
    assert v2 != v1
    second.save(env["cfg"].workdir / "rounds" / "0002" / "model.pt")
    first = env["model"]
    try:
        env["model"] = second  # the round 2 push, with round 2's model
        client.push(_candidates(env, items[181:182]), round_id=2, model_version=v2)
        (ours,) = client.ml_backends()
        assert ours.title == v2 == client.project_model_version()
        client.annotate(client.existing_tasks([items[181].id])[items[181].id], _truth(items[181]))
        (foreign,) = _import(client, items[182:183])
        opened = _next_task(env, pid)
        assert opened["id"] == foreign
        assert [p["model_version"] for p in opened["predictions"]] == [v2]
        assert any("serving model " + v2 in line for line in env["lines"])
    finally:
        (env["cfg"].workdir / "rounds" / "0002" / "model.pt").unlink()
        env["model"] = first


def test_answered_tasks_made_by_hand_are_adopted(env: dict[str, Any]) -> None:
    cfg, items, root = env["cfg"], env["items"], env["root"]
    cfg = cfg.model_copy(deep=True)
    cfg.workdir = env["base"] / "adopt-work"
    cfg.workdir.mkdir()
    client = _client(env, "adopt by hand")
    reviewer = client.ensure_user("reviewer@example.org")
    good, twin = items[190], items[191]
    broken = root / "broken" / "bad_1.png"
    broken.parent.mkdir()
    broken.write_bytes(b"\x89PNG\r\n\x1a\ntruncated")
    t_good, t_twin, t_broken = _import(client, [good, twin, Item("x", broken, 0, 0)])
    sdk = client._sdk()
    (t_upload,) = [int(t) for t in sdk.projects.import_tasks(client.project_id, request=[
        {"data": {"image": "/data/upload/1/elsewhere.png"}}], return_task_ids=True).task_ids]
    a_good = client.annotate(t_good, "3", completed_by=reviewer)
    client.annotate(t_twin, was_cancelled=True)
    client.annotate(t_broken, "1")
    client.annotate(t_upload, "2")
    _import(client, items[192:193])  # not answered: left alone

    with Ledger(cfg.workdir / "ledger.sqlite") as ledger:
        res = adopt_foreign(cfg, ledger, client)
        assert (res.adopted, res.new_items, res.labels, res.quarantined) == (2, 2, 2, 1)
        assert list(res.not_local) == [t_upload] and "not a local file" in res.not_local[t_upload]
        assert {it.id for it in ledger.items("pool")} == {good.id, twin.id}
        (row,) = [r for r in ledger.label_history(good.id)]
        assert (row.label, row.source, row.reviewer, row.ls_task_id, row.ls_annotation_id) == \
            ("3", "human", "reviewer@example.org", t_good, a_good)
        assert row.round is None and row.review_outcome == "corrected"  # no prediction to accept
        assert [r.review_outcome for r in ledger.label_history(twin.id)] == ["skipped"]
        assert {r["item_id"]: (r["task_id"], r["kind"], r["state"]) for r in ledger.review_tasks(client.project_title)} \
            == {good.id: (t_good, "adopted", "answered"), twin.id: (t_twin, "adopted", "skipped")}
        quarantined = read_quarantine_csv(cfg.workdir / "quarantine.csv")
        assert [q["path"] for q in quarantined] == [str(broken)] and "made by hand" in quarantined[0]["reason"]
        # The tasks are ours now: the sweep reads them, a second adoption adds nothing.
        assert client.task_info(t_good).data["pseudolabel_id"] == good.id
        assert "pseudolabel_id" not in client.task_info(t_broken).data
        again = adopt_foreign(cfg, ledger, client)
        assert (again.adopted, again.labels, again.new_items) == (0, 0, 0)
        assert {a.item.id: a.label for a in client.collect()} == {good.id: "3", twin.id: None}


def test_serve_connect_as_a_user_runs_it_and_leaves_cleanly(env: dict[str, Any], tmp_path: Path) -> None:
    """``pseudolabel serve --connect`` in its own process: registered, asked by the stream,
    and removed on SIGTERM (a registered backend that is down leaves the stream with no
    prediction at all, pushed ones included), the project's model version kept."""
    import os
    import signal
    import subprocess
    import sys

    from pseudolabel.config import dump_config
    from pseudolabel.review.server import free_port, repo_root

    items = env["items"]
    cfg = env["cfg"].model_copy(deep=True)
    cfg.label_studio.project_title = "serve connect"
    cfg_file = tmp_path / "c.yaml"
    dump_config(cfg, cfg_file)
    client = _client(env, "serve connect")
    pid = client.project_id
    v1 = env["model"].model_version
    queued = _candidates(env, items[183:184])
    client.push(queued, round_id=1, model_version=v1)
    (foreign,) = _import(client, items[184:185])
    client.annotate(client.existing_tasks([items[183].id])[items[183].id], _truth(items[183]))

    port = free_port()
    penv = {**os.environ, "PYTHONPATH": str(repo_root()), "OMP_NUM_THREADS": "1",
            "LABEL_STUDIO_API_KEY": env["server"].token}
    proc = subprocess.Popen([sys.executable, "-m", "pseudolabel.cli", "serve", "-c", str(cfg_file), "--port", str(port),
                             "--connect", "--threads", "1"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=penv)
    try:
        assert proc.stdout is not None
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if "Ctrl-C stops it" in line:
                break
        assert any(f"connected to Label Studio project {pid}" in x for x in seen), seen
        (ours,) = client.ml_backends()
        assert ours.url == f"http://127.0.0.1:{port}" and ours.title == v1
        opened = _next_task(env, pid)
        assert opened["id"] == foreign and [p["model_version"] for p in opened["predictions"]] == [v1]
        proc.send_signal(signal.SIGTERM)
        rest = proc.communicate(timeout=60)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, rest
    assert "removed from Label Studio project" in rest and "ML backend stopped" in rest
    assert client.ml_backends() == [] and client.project_model_version() == v1
    # The backend is gone, the stored predictions show again in the stream.
    client.annotate(foreign, "0")
    client.push(_candidates(env, items[185:186]), round_id=1, model_version=v1)
    again = _next_task(env, pid)
    assert again["data"]["pseudolabel_id"] == items[185].id and len(again["predictions"]) == 1


def test_the_labelling_ui_predraws_the_backends_choice(env: dict[str, Any], tmp_path: Path) -> None:
    """Headless Chromium: "Label All Tasks" on a task made by hand opens with the class the
    backend predicted already ticked (a screenshot is left in the test's tmp folder)."""
    from browser import chromium_page

    items = env["items"]
    client = _client(env, "ui predraw")
    pid = client.project_id
    client.connect_ml_backend(env["backend"].url, model_version=env["model"].model_version)
    (foreign,) = _import(client, items[186:187])
    expected = CLASSES[int(np.argmax(next(env["model"].predict(items[186:187])).probs))]
    assert client.count_tasks() == 1  # the stream can only open the task made by hand
    server = env["server"]
    n0 = len(_calls(env))
    with chromium_page(tmp_path) as page:
        page.goto(server.url + "/user/login/")
        page.fill("input[name=email]", server.username)
        page.fill("input[name=password]", server.password)
        page.click("button[type=submit]")
        page.wait_for_load_state("networkidle")
        page.goto(f"{server.url}/projects/{pid}/data?labeling=1")
        page.wait_for_selector("input[type=checkbox]:checked", timeout=60_000)
        page.screenshot(path=str(tmp_path / "stream.png"))
        ticked = page.eval_on_selector_all(
            "input[type=checkbox]", "els => els.filter(e => e.checked).map(e => e.closest('label').innerText)")
    assert [t.split("[")[0].strip() for t in ticked] == [expected]
    assert [(c["tasks"], c["status"]) for c in _calls(env)[n0:] if c["path"] == "/predict"] == [(1, 200)]
    assert client.task_info(foreign).total_annotations == 0
