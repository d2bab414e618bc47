"""The ML backend over real HTTP (uvicorn), with a real small CNN trained on real digit images.

No Label Studio here (tests/test_backend_ls.py has the server calling it): these requests are
shaped as Label Studio 1.23 sends them (``ml/api_connector.py``).
"""

from __future__ import annotations

import base64
import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch

from conftest import write_digit_pngs
from loops.serve import PublishedModel, load_model, make_backend, published_model_path
from pseudolabel.config import load_config
from pseudolabel.models import registry
from pseudolabel.models.torchvision_cls import TorchvisionClassifier
from pseudolabel.review.backend import BackendServer, MLBackend, check_bind, is_loopback
from pseudolabel.review.convert import label_config, local_files_url, ls_prediction_score
from pseudolabel.tasks import PoolPredictions, task_for
from pseudolabel.types import Annotation, Item

CLASSES = [str(d) for d in range(10)]


def _train(items: list[Item], *, seed: int) -> TorchvisionClassifier:
    torch.set_num_threads(1)
    model = TorchvisionClassifier(CLASSES, image_size=16, epochs=8, batch_size=32, device="cpu", seed=seed)
    return model.fit([Annotation(item=it, label=it.path.stem.rsplit("_", 1)[1], source="seed") for it in items])


@pytest.fixture(scope="module")
def campaign(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Digits under an images root, a workdir whose round 1 trained a small CNN, a config."""
    base = tmp_path_factory.mktemp("backend")
    root = base / "docroot" / "images"
    items = write_digit_pngs(root / "digits", 130)
    work = base / "work"
    model = _train(items[:60], seed=0)
    model.save(work / "rounds" / "0001" / "model.pt")
    cfg = load_config(data={
        "project": "backend test", "workdir": str(work), "classes": CLASSES,
        "data": {"seed": {"path": str(base / "seed")}, "pool": {"path": str(root / "digits")},
                 "holdout": {"path": str(base / "holdout")}},
        "model": {"device": "cpu"}, "label_studio": {"images_root": str(root)},
    }, environ={})
    return {"cfg": cfg, "root": root, "items": items, "model": model, "base": base}


def _task(tid: int, url: str) -> dict[str, Any]:
    """A task as Label Studio's TaskSimpleSerializer sends it (the fields the backend reads)."""
    return {"id": tid, "data": {"image": url}, "annotations": [], "predictions": [], "project": 1}


def _body(tasks: list[dict[str, Any]]) -> dict[str, Any]:
    return {"tasks": tasks, "project": "1.1700000000", "label_config": label_config(CLASSES),
            "params": {"login": None, "password": None, "context": None}}


def _url(item: Item, root: Path) -> str:
    return local_files_url(item.path, root)


@pytest.fixture()
def served(campaign: dict[str, Any]):  # type: ignore[no-untyped-def]
    lines: list[str] = []
    backend = make_backend(campaign["cfg"], token=None, batch_size=16, log=lines.append)
    with BackendServer(backend, port=None) as server:
        yield server, backend, lines


def test_predict_answers_each_task_as_the_round_would(campaign: dict[str, Any], served: Any) -> None:
    server, _, lines = served
    root, items, model = campaign["root"], campaign["items"], campaign["model"]
    tasks = [_task(1, _url(items[70], root)), _task(2, "/data/upload/1/abc.png"),
             _task(3, _url(items[71], root)), _task(4, "/data/local-files/?d=../../etc/passwd"),
             {"id": 5, "data": {"text": "no image"}}]
    r = httpx.post(server.url + "/predict", json=_body(tasks), timeout=60)
    assert r.status_code == 200
    out = r.json()
    assert len(out["results"]) == 5 and out["model_version"] == model.model_version
    expected = {p.item_id: p for p in model.predict([items[70], items[71]])}
    for i, it in ((0, items[70]), (2, items[71])):
        res = out["results"][i]
        probs = expected[it.id].probs
        assert res["model_version"] == model.model_version
        assert res["result"] == [{"from_name": "label", "to_name": "image", "type": "choices",
                                  "value": {"choices": [CLASSES[int(np.argmax(probs))]]}}]
        task = task_for(campaign["cfg"])
        u = float(task.uncertainty(PoolPredictions.of([expected[it.id]]), {it.id: it})[0])
        assert res["score"] == pytest.approx(ls_prediction_score(u))
    # Unusable tasks: no prediction (Label Studio stores none and asks again), and why.
    assert out["results"][1] == out["results"][3] == out["results"][4] == []
    reasons = {e["task"]: e["error"] for e in out["errors"]}
    assert set(reasons) == {2, 4, 5}
    assert "not a local file" in reasons[2] and "outside the document root" in reasons[4]
    assert "no image URL" in reasons[5]
    assert any("predict: 5 task(s)" in line and "3 failed" in line for line in lines)


def test_setup_checks_the_label_config_and_health_never_waits(campaign: dict[str, Any], served: Any) -> None:
    server, backend, _ = served
    ok = httpx.post(server.url + "/setup", json={"project": "1.1", "schema": label_config(CLASSES),
                                                 "hostname": "http://127.0.0.1:8080", "access_token": "x"})
    assert ok.status_code == 200 and ok.json() == {"model_version": campaign["model"].model_version}
    wrong = httpx.post(server.url + "/setup", json={"schema": label_config(["cat", "dog"])})
    assert wrong.status_code == 400 and "['cat', 'dog']" in wrong.json()["error"]
    boxes = httpx.post(server.url + "/setup", json={"schema": label_config(CLASSES, task_type="detect")})
    assert boxes.status_code == 400 and "<Choices" in boxes.json()["error"]
    # /health answers while a prediction holds the model (Label Studio gives it 1 s).
    with backend._lock:
        t0 = time.monotonic()
        h = httpx.get(server.url + "/health", timeout=5)
        busy_setup = httpx.post(server.url + "/setup", json={}, timeout=5)
        assert time.monotonic() - t0 < 2
    assert h.status_code == 200 and h.json()["status"] == "UP"
    assert busy_setup.json() == {"model_version": campaign["model"].model_version}


def test_batches_progress_and_cache(campaign: dict[str, Any]) -> None:
    calls: list[int] = []
    lines: list[str] = []
    backend = make_backend(campaign["cfg"], token=None, batch_size=16, log=lines.append)
    real = backend.predictor.predict

    def spy(items: Any) -> Any:
        calls.append(len(items))
        return real(items)

    backend.predictor.predict = spy  # type: ignore[method-assign]
    root, items = campaign["root"], campaign["items"]
    tasks = [_task(i, _url(it, root)) for i, it in enumerate(items[:100])]
    with BackendServer(backend, port=None) as server:
        first = httpx.post(server.url + "/predict", json=_body(tasks), timeout=120).json()
        assert calls == [16] * 6 + [4]  # model batches of batch_size
        job = httpx.get(server.url + "/health").json()["job"]
        assert (job["tasks"], job["total"], job["done"], job["cached"]) == (100, 100, 100, 0) and job["rate"] > 0
        again = httpx.post(server.url + "/predict", json=_body(tasks[::-1]), timeout=120).json()
        assert calls == [16] * 6 + [4]  # all cached: the model is not called again
        assert again["results"] == first["results"][::-1]
        assert httpx.get(server.url + "/health").json()["job"]["cached"] == 100
        log = httpx.get(server.url + "/requests").json()["requests"]
        assert [(c["path"], c["tasks"], c["status"]) for c in log if c["path"] == "/predict"] == \
            [("/predict", 100, 200)] * 2


def test_a_newer_model_is_served_and_a_broken_one_is_not(campaign: dict[str, Any], tmp_path: Path) -> None:
    cfg = campaign["cfg"].model_copy(deep=True)
    cfg.workdir = tmp_path / "work"
    first = campaign["model"]
    first.save(cfg.workdir / "rounds" / "0001" / "model.pt")
    lines: list[str] = []
    backend = make_backend(cfg, token=None, batch_size=32, log=lines.append)
    task = [_task(1, _url(campaign["items"][90], campaign["root"]))]
    with BackendServer(backend, port=None) as server:
        def version() -> str:
            return str(httpx.post(server.url + "/predict", json=_body(task), timeout=60).json()["results"][0]
                       ["model_version"])

        assert version() == first.model_version
        second = _train(campaign["items"][:60], seed=1)
        assert second.model_version != first.model_version
        second.save(cfg.workdir / "rounds" / "0002" / "model.pt")
        assert version() == second.model_version
        assert httpx.post(server.url + "/setup", json={}).json()["model_version"] == second.model_version
        # A round whose checkpoint is broken: the previous model stays in service.
        (cfg.workdir / "rounds" / "0003").mkdir()
        (cfg.workdir / "rounds" / "0003" / "model.pt").write_bytes(b"not a checkpoint")
        assert version() == second.model_version
        health = httpx.get(server.url + "/health").json()
        assert health["model"]["load_error"] and health["model"]["version"] == second.model_version
        assert any("could not load" in line and "0003" in line for line in lines)
        # The retrain's published model, written after the latest round's: served.
        (cfg.workdir / "rounds" / "0003" / "model.pt").unlink()
        models = cfg.workdir / "models"
        models.mkdir()
        first.save(models / "v1.pt")
        (models / "published.json").write_text(json.dumps({"version": "v1", "path": str(models / "v1.pt")}))
        assert published_model_path(cfg) == models / "v1.pt"
        assert version() == first.model_version


def test_unreadable_and_oversized_images_get_no_prediction(campaign: dict[str, Any], served: Any) -> None:
    server, _, _ = served
    root = campaign["root"]
    broken = root / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    r = httpx.post(server.url + "/predict", json=_body([_task(1, _url(Item("x", broken, 0, 0), root)),
                                                         _task(2, "/data/local-files/?d=images/missing.png")]))
    out = r.json()
    assert out["results"] == [[], []]
    reasons = [e["error"] for e in out["errors"]]
    assert "broken.png" in reasons[0] and "missing.png" in reasons[1]

    cfg = campaign["cfg"].model_copy(deep=True)
    cfg.data.max_pixels = 100  # a 32x32 digit has 1,024 pixels
    small = make_backend(cfg, token=None)
    with BackendServer(small, port=None) as s2:
        out = httpx.post(s2.url + "/predict", json=_body([_task(1, _url(campaign["items"][5], root))])).json()
    assert out["results"] == [[]] and "max_pixels" in out["errors"][0]["error"]


def test_token_is_required_when_set(campaign: dict[str, Any]) -> None:
    backend = make_backend(campaign["cfg"], token="s3cret-token", batch_size=8)
    with BackendServer(backend, port=None) as server:
        none = httpx.get(server.url + "/health")
        assert none.status_code == 401 and "token" in none.json()["error"]
        assert none.headers["www-authenticate"].startswith("Basic")
        assert httpx.get(server.url + "/health", headers={"Authorization": "Token s3cret-token"}).status_code == 200
        assert httpx.get(server.url + "/health", headers={"Authorization": "Bearer s3cret-token"}).status_code == 200
        basic = base64.b64encode(b"pseudolabel:s3cret-token").decode()
        assert httpx.get(server.url + "/health", headers={"Authorization": f"Basic {basic}"}).status_code == 200
        assert httpx.get(server.url + "/health", auth=("pseudolabel", "wrong")).status_code == 401
        assert httpx.post(server.url + "/predict", json=_body([]), headers={"Authorization": "Token nope"}
                          ).status_code == 401
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3") and not is_loopback("example.org")
    with pytest.raises(ValueError, match="token"):
        check_bind("0.0.0.0", None)
    check_bind("0.0.0.0", "t")
    check_bind("127.0.0.1", None)
    with pytest.raises(ValueError, match="token"):
        BackendServer(make_backend(campaign["cfg"], token=None), host="0.0.0.0", port=None).start()


def test_bad_requests_get_json_errors(served: Any) -> None:
    server, _, _ = served
    r = httpx.post(server.url + "/predict", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not JSON" in r.json()["error"]
    r = httpx.post(server.url + "/predict", json=[1, 2])
    assert r.status_code == 400 and "expected an object" in r.json()["error"]
    r = httpx.post(server.url + "/predict", json={"tasks": "all"})
    assert r.status_code == 400 and "'tasks'" in r.json()["error"]
    r = httpx.get(server.url + "/nothing-here")
    assert r.status_code == 404 and "/predict" in r.json()["error"]
    r = httpx.get(server.url + "/predict")
    assert r.status_code == 405 and "error" in r.json()
    r = httpx.post(server.url + "/webhook", json={"action": "ANNOTATION_CREATED", "annotation": {"id": 1}})
    assert r.status_code == 200 and r.json()["action"] == "ANNOTATION_CREATED"
    assert httpx.get(server.url + "/health").json()["webhooks"] == {"ANNOTATION_CREATED": 1}


def test_no_model_yet_is_a_clear_503(campaign: dict[str, Any], tmp_path: Path) -> None:
    cfg = campaign["cfg"].model_copy(deep=True)
    cfg.workdir = tmp_path / "empty"
    backend = make_backend(cfg, token=None)
    with BackendServer(backend, port=None) as server:
        r = httpx.post(server.url + "/setup", json={})
        assert r.status_code == 503 and "pseudolabel round" in r.json()["error"]
        assert httpx.get(server.url + "/health").json()["model_version"] is None


def test_concurrent_requests_are_served_one_at_a_time(campaign: dict[str, Any]) -> None:
    """Two "Retrieve predictions" at once queue behind one model (no CPU thrashing) and both
    get complete answers."""
    backend = make_backend(campaign["cfg"], token=None, batch_size=8, cache_size=0)
    inside = [0]
    most = [0]
    real = backend.predictor.predict

    def spy(items: Any) -> Any:
        inside[0] += 1
        most[0] = max(most[0], inside[0])
        try:
            time.sleep(0.01)
            return real(items)
        finally:
            inside[0] -= 1

    backend.predictor.predict = spy  # type: ignore[method-assign]
    root, items = campaign["root"], campaign["items"]
    bodies = [_body([_task(i, _url(it, root)) for i, it in enumerate(items[k:k + 40])]) for k in (0, 50)]
    answers: list[Any] = [None, None]
    with BackendServer(backend, port=None) as server:
        def go(k: int) -> None:
            answers[k] = httpx.post(server.url + "/predict", json=bodies[k], timeout=120).json()

        threads = [threading.Thread(target=go, args=(k,)) for k in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert most[0] == 1
    assert all(len(a["results"]) == 40 and all(r for r in a["results"]) for a in answers)


def test_loaded_model_matches_what_the_round_saved(campaign: dict[str, Any]) -> None:
    cfg = campaign["cfg"]
    assert published_model_path(cfg) == cfg.workdir / "rounds" / "0001" / "model.pt"
    assert load_model(cfg, published_model_path(cfg)).model_version == campaign["model"].model_version  # type: ignore[arg-type]
    pm = PublishedModel(cfg)
    assert pm.refresh() == campaign["model"].model_version
    assert pm.info()["path"] == str(cfg.workdir / "rounds" / "0001" / "model.pt")
    with pytest.raises(ValueError, match="batch_size"):
        MLBackend(pm, make_backend(cfg, token=None).decoder, batch_size=0)


def test_serve_command_serves_until_interrupted(campaign: dict[str, Any], tmp_path: Path) -> None:
    """``pseudolabel serve`` as a user runs it: a process that answers, and stops on Ctrl-C."""
    import os
    import signal
    import subprocess
    import sys

    from typer.testing import CliRunner

    from pseudolabel.cli import app
    from pseudolabel.config import dump_config
    from pseudolabel.review.server import free_port, repo_root

    cfg_file = tmp_path / "c.yaml"
    dump_config(campaign["cfg"], cfg_file)
    runner = CliRunner()
    r = runner.invoke(app, ["serve", "-c", str(cfg_file), "--host", "0.0.0.0", "--token-env", "PL_TEST_NO_SUCH_VAR"])
    assert r.exit_code == 2 and "token" in r.output
    empty = campaign["cfg"].model_copy(deep=True)
    empty.workdir = tmp_path / "empty"
    dump_config(empty, tmp_path / "e.yaml")
    r = runner.invoke(app, ["serve", "-c", str(tmp_path / "e.yaml"), "--port", str(free_port())])
    assert r.exit_code != 0 and "pseudolabel round" in r.output

    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(repo_root()), "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "pseudolabel.cli", "serve", "-c", str(cfg_file), "--port", str(port),
                             "--threads", "1"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        assert proc.stdout is not None
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if "Ctrl-C stops it" in line:
                break
        assert any(f"on http://127.0.0.1:{port}: model {campaign['model'].model_version}" in x for x in seen), seen
        url = f"http://127.0.0.1:{port}"
        out = httpx.post(url + "/predict", json=_body([_task(1, _url(campaign["items"][3], campaign["root"]))]),
                         timeout=60).json()
        assert out["results"][0]["model_version"] == campaign["model"].model_version
        proc.send_signal(signal.SIGINT)
        try:
            rest = proc.communicate(timeout=30)[0]
        except subprocess.TimeoutExpired:  # still running after Ctrl-C: show where every thread is
            proc.send_signal(signal.SIGABRT)  # the fault handler prints each thread's stack
            pytest.fail("serve did not stop within 30 s of Ctrl-C; its threads:\n" + proc.communicate(timeout=30)[0])
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0 and "ML backend stopped" in rest and "predict: 1 task(s)" in rest


@pytest.mark.slow
@pytest.mark.parametrize("task", ["detect", "segment"])
def test_boxes_and_polygons_as_the_round_pushes_them(task: str, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A real (tiny, barely trained) YOLO: the backend draws what the round's push would draw
    for the same image: confident boxes, else the best guesses; the round's image score."""
    from test_yolo import CLASSES as YCLASSES
    from test_yolo import make_scenes

    from pseudolabel.models.ultralytics_yolo import YoloModel
    from pseudolabel.review.convert import boxes_from_result, prediction_to_ls

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    root = tmp_path / "doc" / "images"
    scenes = make_scenes(root / "scenes", 12, polygons=task == "segment")
    work = tmp_path / "work"
    model = YoloModel(YCLASSES, task=task, image_size=64, epochs=1, batch_size=8, device="cpu", conf=0.001,
                      max_det=20, workdir=work / "yolo").fit(scenes)
    model.save(work / "rounds" / "0001" / "model.pt")
    (tmp_path / "seed" / "images").mkdir(parents=True)
    cfg = load_config(data={
        "project": "backend boxes", "task": task, "workdir": str(work), "classes": YCLASSES,
        "data": {"seed": {"format": "yolo", "path": str(tmp_path / "seed" / "images")},
                 "pool": {"path": str(root / "scenes")},
                 "holdout": {"format": "yolo", "path": str(tmp_path / "seed" / "images")}},
        "model": {"device": "cpu", "image_size": 64}, "label_studio": {"images_root": str(root)},
    }, environ={})
    items = [a.item for a in scenes[:4]]
    backend = make_backend(cfg, token=None, batch_size=4)
    with BackendServer(backend, port=None) as server:
        ok = httpx.post(server.url + "/setup", json={"schema": label_config(YCLASSES, task_type=task)})
        assert ok.status_code == 200
        out = httpx.post(server.url + "/predict", json={"tasks": [_task(i, _url(it, root)) for i, it in
                                                                  enumerate(items)]}, timeout=120).json()
    served = backend.predictor.refresh()
    preds = list(registry.load(work / "rounds" / "0001" / "model.pt", cfg=cfg).predict(items, batch_size=4))
    det = task_for(cfg)
    scores = det.uncertainty(PoolPredictions.of(preds), {it.id: it for it in items})
    kinds = {"detect": "rectanglelabels", "segment": "polygonlabels"}
    drawn = 0
    for res, p, it, u in zip(out["results"], preds, items, scores):
        shown, _note = det.review_prediction(p)
        assert res["model_version"] == served
        assert res == json.loads(json.dumps(prediction_to_ls(shown, classes=YCLASSES, task_type=task, width=it.width,
                                                             height=it.height, uncertainty=float(u))))
        assert {r["type"] for r in res["result"]} <= {kinds[task]}
        assert len(res["result"]) <= max(cfg.selection.predraw_fallback, sum(
            (b.score or 0) >= cfg.selection.predraw_conf for b in p.boxes))
        assert all(b.label in YCLASSES for b in boxes_from_result(res["result"]))
        drawn += len(res["result"])
    assert drawn > 0  # the barely trained model still offers its best guesses
