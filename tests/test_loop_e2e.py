"""End-to-end: the classification loop against the real Label Studio server, real images
(scikit-learn's digits), a real small CNN and the simulated reviewer answering through the API."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from loops.campaign import run_campaign
from pseudolabel.sim.demo import demo_config, export_digits
from crash import Killed, killed_after
from loops.round import ledger_for, run_round
from pseudolabel.config import load_config
from pseudolabel.review.client import LabelStudioClient
from pseudolabel.sim.simulated import SimulatedReviewer

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def digits(label_studio):  # noqa: ANN001, ANN201
    root = Path(label_studio.images_root)
    return export_digits(root / "digits", seed_per_class=2, holdout=300, seed=0)


def _cfg(tmp_path: Path, data, label_studio, name: str, **over: Any):  # noqa: ANN001, ANN202
    raw = demo_config(tmp_path / name, data.root, strategy="entropy", project=f"e2e-{name}", **over)
    raw["label_studio"]["images_root"] = str(label_studio.images_root)
    f = tmp_path / f"{name}.yaml"
    f.write_text(yaml.safe_dump(raw))
    cfg = load_config(f, environ={})
    client = LabelStudioClient(url=label_studio.url, token=label_studio.token, project_title=cfg.label_studio.project_title,
                               classes=cfg.classes, images_root=Path(label_studio.images_root))
    client.ensure_project()
    return cfg, client


def test_three_rounds_grow_labels_and_improve(tmp_path: Path, digits, label_studio) -> None:  # noqa: ANN001
    cfg, client = _cfg(tmp_path, digits, label_studio, "grow", **{
        "model.epochs": 20, "stop.target": 0.999, "stop.max_rounds": 3, "stop.label_budget": 1000})
    reviewer = SimulatedReviewer(client=client, truth=digits.truth, classes=cfg.classes, error_rate=0.1, seed=1)
    stats: list[Any] = []

    def answer(res):  # noqa: ANN001, ANN202
        st = reviewer.answer_pending()
        stats.append(st)
        return {"corrections": st.corrected}

    res = run_campaign(cfg, client, answer=answer, progress=False)
    labels = [r["labels"] for r in res.rows]
    assert labels == [20, 40, 60], res.rows          # + batch size (20) each round
    assert res.termination is not None and res.termination.startswith("max_rounds")
    assert res.rows[-1]["accuracy"] > res.rows[0]["accuracy"]
    assert [r["queued"] for r in res.rows[:2]] == [20, 20]

    with ledger_for(cfg) as ledger:
        human = ledger.all_labels(source="human")
        assert len(human) == 40                        # 2 rounds x 20 answered tasks
        assert all(h.reviewer and h.ls_annotation_id and h.ls_task_id for h in human)
        assert {h.round for h in human} == {1, 2}      # the rounds whose queues they answered
        outcomes = [h.review_outcome for h in human]
        assert outcomes.count("corrected") == sum(s.corrected for s in stats) == sum(r["corrections"] for r in res.rows)
        assert outcomes.count("accepted") == sum(s.accepted for s in stats)
        # the ledger holds exactly what the reviewer wrote, mistakes included
        wrong = sum(1 for h in human if h.label != digits.truth[h.item_id])
        assert wrong == sum(s.errors_injected for s in stats)
        # pseudo-labels never shadow a human label
        cur = ledger.current_labels()
        assert all(cur[h.item_id].source == "human" for h in human)
        assert ledger.termination()["reason"].startswith("max_rounds")
        assert ledger.task_counts()["queued"] == 0
    assert (cfg.workdir / "rounds" / "0001" / "selection.csv").exists()
    assert (cfg.workdir / "rounds" / "0001" / "config.yaml").exists()


def test_interrupted_push_is_not_repeated(tmp_path: Path, digits, label_studio) -> None:  # noqa: ANN001
    # max_queued 40: round 2 may queue more while round 1's tasks still wait.
    cfg, client = _cfg(tmp_path, digits, label_studio, "crash", **{"model.epochs": 3, "selection.max_queued": 40})

    # 1) killed right after the push stage was recorded: re-running resumes and pushes nothing.
    with pytest.raises(Killed), killed_after("push"):
        run_round(cfg, client, progress=False)
    assert client.count_tasks() == 20
    res = run_round(cfg, client, progress=False)
    assert res.resumed and res.round_id == 1
    assert "push" not in res.stage_seconds and "train" not in res.stage_seconds  # stages not re-run
    assert client.count_tasks() == 20

    # 2) killed half-way through the push: Label Studio has the tasks, the ledger does not
    #    know yet. The re-run looks the item ids up and imports nothing twice.
    class DiesAfterSubmit:
        def __getattr__(self, name):  # noqa: ANN001, ANN204
            return getattr(client, name)

        def push(self, cands, **kw):  # noqa: ANN001, ANN003, ANN202
            client.push(cands, **kw)
            raise KeyboardInterrupt("killed during push")

    with pytest.raises(KeyboardInterrupt):
        run_round(cfg, DiesAfterSubmit(), progress=False)
    assert client.count_tasks() == 40
    res = run_round(cfg, client, progress=False)
    assert res.resumed and res.round_id == 2 and res.queued == 20
    assert client.count_tasks() == 40
    with ledger_for(cfg) as ledger:
        assert len(ledger.review_tasks()) == 40
