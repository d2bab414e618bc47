"""The round's label-quality check against the real Label Studio: seed labels that were
deliberately flipped are sent back for a second review, flagged as such, and only once."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from pseudolabel.sim.demo import demo_config, export_digits
from loops.round import ledger_for, run_round
from pseudolabel.config import load_config
from pseudolabel.review.client import LabelStudioClient

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_flipped_seed_labels_go_back_for_second_review(tmp_path: Path, label_studio) -> None:  # noqa: ANN001
    root = Path(label_studio.images_root) / f"quality-{tmp_path.name}"
    data = export_digits(root, seed_per_class=6, holdout=100, seed=3)
    # Flip 3 seed labels: move one image of class c into the folder of class c+1.
    flipped = []
    for c in (1, 4, 7):
        src = sorted((root / "seed" / str(c)).glob("*.png"))[0]
        dst = root / "seed" / str(c + 1) / src.name
        shutil.move(src, dst)
        flipped.append(dst)
    raw = demo_config(tmp_path / "work", root, strategy="entropy", project=f"quality-{tmp_path.name[-10:]}", **{
        "quality.enabled": True, "quality.min_labels": 20, "quality.folds": 3, "quality.max_per_round": 6,
        "selection.batch_size": 5, "model.epochs": 10, "model.min_steps": 120, "stop.target": 0.999,
        "pseudo.enabled": False})
    raw["label_studio"]["images_root"] = str(label_studio.images_root)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    cfg = load_config(tmp_path / "c.yaml", environ={})
    client = LabelStudioClient(url=label_studio.url, token=label_studio.token, project_title=cfg.project,
                               classes=cfg.classes, images_root=Path(label_studio.images_root))
    client.ensure_project()

    r1 = run_round(cfg, client, progress=False)
    with ledger_for(cfg) as ledger:
        asked = ledger.relabel_requests()
        relabel_rows = ledger.review_tasks(cfg.project)
    assert asked and 1 <= len(asked) <= 6
    from pseudolabel.data.images import sha256_file

    flipped_ids = {sha256_file(p) for p in flipped}
    assert len(flipped_ids & set(asked)) >= 2, (r1, asked)           # the flipped labels are found
    assert len(set(asked) - flipped_ids) <= 4                        # and not drowned in false alarms
    tasks = {r["item_id"]: r["task_id"] for r in relabel_rows}
    for iid in flipped_ids & set(asked):
        info = client.task_info(tasks[iid])
        assert info.data["kind"] == "relabel"
        assert info.data["note"].startswith("Second review")           # visible above the image
    assert len(tasks) == 5 + len(asked)                                 # 5 uncertain picks + relabels

    # The next round does not ask about the same labels again.
    run_round(cfg, client, progress=False)
    with ledger_for(cfg) as ledger:
        again = ledger.relabel_requests()
    assert {k: v for k, v in again.items() if k in asked} == asked
    assert all(v == 2 for k, v in again.items() if k not in asked)
