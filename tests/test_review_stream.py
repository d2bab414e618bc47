"""What a reviewer is served, rounds 1 to 3, through Label Studio's own labelling stream.

People do not read predictions through the API: "Label All Tasks" asks the server for the
next task (``/api/projects/<id>/next``), and the server picks the task and the predictions to
pre-draw by the project's model version. These tests run real rounds (real models, real
images, real server) with a simulated reviewer answering part of the queue between rounds,
and check after every push that the task the stream serves first is the most uncertain
queued task under the *current* model, with that model's prediction pre-drawn.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from pseudolabel.sim.demo import demo_config, export_digits
from loops.round import ledger_for, round_dir, run_round
from pseudolabel.config import load_config
from pseudolabel.inference import load_predictions
from pseudolabel.tasks import task_for
from pseudolabel.review.client import LabelStudioClient
from pseudolabel.review.server import LabelStudioServer
from pseudolabel.sim.simulated import SimulatedReviewer
from pseudolabel.sim.simulated_boxes import SimulatedBoxReviewer

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def next_task(server: LabelStudioServer, pid: int) -> dict[str, Any]:
    """The task "Label All Tasks" opens first, as the server serves it (predictions included)."""
    req = urllib.request.Request(f"{server.url}/api/projects/{pid}/next/",
                                 headers={"Authorization": f"Token {server.token}"})
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(req, timeout=60) as r:
        return json.loads(r.read())


def most_uncertain_queued(cfg: Any, rid: int) -> tuple[str, dict[str, float]]:
    """The queued item with the highest uncertainty under round ``rid``'s model, computed
    from that round's pool predictions (queued items are scored with the pool)."""
    with ledger_for(cfg) as ledger:
        queued = {t["item_id"] for t in ledger.review_tasks(state="queued")}
        items = {it.id: it for it in ledger.items("pool")}
    task = task_for(cfg)
    preds = task.read_predictions(round_dir(cfg, rid) / "predictions").subset(queued)
    u = dict(zip(preds.item_ids, task.uncertainty(preds, items)))
    scores = {i: float(v) for i, v in u.items() if i in queued}
    assert len(scores) == len(queued), "every queued task must have a prediction of the current model"
    return max(scores, key=scores.__getitem__), scores


def _classify_setup(tmp_path: Path, server: LabelStudioServer) -> tuple[Any, Any, Any]:
    data = export_digits(Path(server.images_root) / f"stream-{tmp_path.name}", seed_per_class=2, holdout=150, seed=3)
    raw = demo_config(tmp_path / "work", data.root, strategy="hybrid", project=f"stream-cls-{tmp_path.name[-10:]}",
                      **{"model.epochs": 4, "model.min_steps": 40, "selection.batch_size": 8,
                         "stop.target": 0.9999, "stop.label_budget": 1000})
    raw["label_studio"]["images_root"] = str(server.images_root)
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump(raw))
    cfg = load_config(f, environ={})
    client = LabelStudioClient(server.url, server.token, cfg.label_studio.project_title, cfg.classes,
                               images_root=Path(server.images_root))
    client.ensure_project()
    reviewer = SimulatedReviewer(client, data.truth, cfg.classes, error_rate=0.0, seed=0)
    return cfg, client, reviewer


def _boxes_setup(tmp_path: Path, server: LabelStudioServer, task: str) -> tuple[Any, Any, Any]:
    from test_round_detect import _config, _write_set
    from test_yolo import SIZE, make_scenes

    data = Path(server.images_root) / f"stream-{task}-{tmp_path.name}"
    _write_set(data / "seed", 8, seed=1, polygons=task == "segment")
    _write_set(data / "holdout", 6, seed=2, polygons=task == "segment")
    pool = make_scenes(data / "pool", 16, seed=3, polygons=task == "segment")
    cfg = _config(tmp_path, data, task, Path(server.images_root), **{"selection.batch_size": 4})
    client = LabelStudioClient(server.url, server.token, cfg.project, cfg.classes, task_type=task,
                               images_root=Path(server.images_root))
    client.ensure_project()
    reviewer = SimulatedBoxReviewer(client, {a.item.id: a.boxes for a in pool}, cfg.classes, sizes=(SIZE, SIZE))
    return cfg, client, reviewer


@pytest.mark.parametrize("task", ["classify", "detect", "segment"])
def test_stream_serves_most_uncertain_with_current_prediction(tmp_path: Path, label_studio, task: str) -> None:  # noqa: ANN001
    if task == "classify":
        cfg, client, reviewer = _classify_setup(tmp_path, label_studio)
    else:
        cfg, client, reviewer = _boxes_setup(tmp_path, label_studio, task)
    pid = client.ensure_project()
    versions = []
    for rnd in (1, 2, 3):
        res = run_round(cfg, client, progress=False)
        assert res.round_id == rnd and res.idle is None and res.stop_reason is None, res
        version = res.metrics["model_version"]
        versions.append(version)
        assert client.project_model_version() == version          # the stream's version is this round's

        expected, scores = most_uncertain_queued(cfg, rnd)
        served = next_task(label_studio, pid)
        assert served["data"]["pseudolabel_id"] == expected, (rnd, served["data"], scores)
        preds = served["predictions"]
        assert preds, f"round {rnd}: the served task has no prediction pre-drawn"
        assert {p["model_version"] for p in preds} == {version}
        result = preds[-1]["result"]
        if task == "classify":
            with ledger_for(cfg) as ledger:
                item = ledger.item(expected)
            df, p, _ = load_predictions(round_dir(cfg, rnd) / "predictions")
            row = int(np.flatnonzero(df["item_id"].to_numpy() == item.id)[0])
            assert result[0]["value"]["choices"] == [cfg.classes[int(p[row].argmax())]]
            # The columns a reviewer reads are numbers, and match what was served.
            assert isinstance(served["data"]["confidence"], float) and isinstance(served["data"]["round"], int)
            assert served["data"]["uncertainty"] == pytest.approx(scores[expected], abs=1e-5)
        else:
            # A fresh detector's boxes are all below predraw_conf: the reviewer still gets its
            # best guesses, marked as such, instead of an empty image; with no box at all, a
            # note says the model found nothing.
            if not result:
                assert served["data"]["note"].startswith("The model found no object"), served["data"]
            else:
                kind = "rectanglelabels" if task == "detect" else "polygonlabels"
                assert {r["type"] for r in result} == {kind}
                if all(r.get("score", 1.0) < cfg.selection.predraw_conf for r in result):
                    assert served["data"]["note"].startswith("Low-confidence guesses")
        # Half the queue is answered before the next round (in the stream's order).
        reviewer.answer_pending(limit=max(1, len(scores) // 2))
    assert len(set(versions)) == 3                              # a new model every round
