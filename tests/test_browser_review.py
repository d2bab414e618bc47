"""A reviewer's round 2 in a real browser: headless Chromium against the real Label Studio.

After round 1 was pushed and half answered, round 2 trains a new model and pushes again. A
person then logs in, opens the project and clicks "Label All Tasks". This checks what they
see: the review tab's columns, the instructions, the task served first (the most uncertain
queued task under round 2's model), its pre-selected class (round 2's prediction) and that
pressing a class's own name as a key selects it. Screenshots are written to the test's tmp
folder (and to ``$PSEUDOLABEL_SCREENSHOTS`` when set, to look at them).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from browser import chromium_page
from loops.round import round_dir, run_round
from pseudolabel.cli import _instructions
from pseudolabel.inference import load_predictions
from test_review_stream import _classify_setup, most_uncertain_queued

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.browser]


def _shot(page: Any, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    keep = os.environ.get("PSEUDOLABEL_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(keep) / name)
    return path


def test_round_two_in_label_all_tasks(tmp_path: Path, label_studio) -> None:  # noqa: ANN001
    cfg, client, reviewer = _classify_setup(tmp_path, label_studio)
    client.instructions = _instructions(cfg)
    pid = client.ensure_project()
    run_round(cfg, client, progress=False)
    reviewer.answer_pending(limit=4)
    r2 = run_round(cfg, client, progress=False)
    assert r2.round_id == 2 and r2.queued
    expected, _ = most_uncertain_queued(cfg, 2)
    df, probs, _ = load_predictions(round_dir(cfg, 2) / "predictions")
    predicted = cfg.classes[int(probs[int(np.flatnonzero(df["item_id"].to_numpy() == expected)[0])].argmax())]

    with chromium_page(tmp_path, width=1600, height=900) as page:
        served: list[dict[str, Any]] = []
        page.on("response", lambda r: served.append(r.json()) if "next_task" in r.url or "/next" in r.url else None)
        page.goto(f"{label_studio.url}/user/login/")
        page.fill("input[name=email]", label_studio.username)
        page.fill("input[name=password]", label_studio.password)
        page.click("button[type=submit]")
        page.wait_for_load_state("networkidle")

        page.goto(f"{label_studio.url}/projects/{pid}/data")
        page.get_by_text("Label All Tasks").first.wait_for()
        page.wait_for_timeout(2000)
        _shot(page, tmp_path, "round2-data-manager.png")
        text = page.inner_text("body")
        for column in ("predicted", "confidence", "uncertainty"):
            assert column in text, f"column {column!r} not shown in the review tab: {text[:300]}"
        assert "pseudolabel_id" not in text

        page.get_by_text("Label All Tasks").first.click()
        page.get_by_text("Choose the class of each image").wait_for()      # our instructions
        _shot(page, tmp_path, "round2-instructions.png")
        page.keyboard.press("Escape")
        page.locator("input[type=checkbox]").first.wait_for()
        page.wait_for_timeout(1000)
        _shot(page, tmp_path, "round2-labelling.png")

        assert served, "the labelling stream was never asked for a task"
        task = served[-1]
        assert task["data"]["pseudolabel_id"] == expected              # most uncertain under round 2's model
        assert {p["model_version"] for p in task["predictions"]} == {r2.metrics["model_version"]}
        boxes = page.locator("input[type=checkbox]")
        labels = [boxes.nth(i).evaluate("e => e.closest('label').innerText") for i in range(boxes.count())]
        checked = [lab for i, lab in enumerate(labels) if boxes.nth(i).is_checked()]
        assert checked == [f"{predicted}[{predicted}]"]                  # round 2's class, pre-selected

        other = next(c for c in cfg.classes if c != predicted)
        page.keyboard.press(other)                                       # class "7" is key 7
        page.wait_for_timeout(300)
        checked = [lab for i, lab in enumerate(labels) if boxes.nth(i).is_checked()]
        assert checked == [f"{other}[{other}]"]
        _shot(page, tmp_path, "round2-hotkey.png")
