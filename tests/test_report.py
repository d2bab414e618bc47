"""The per-round HTML report, on a real workdir: two offline rounds over scikit-learn's digits
(a real small CNN, real PNG files, a broken file in the pool), with reviewer answers to round
1's queue written into the ledger between the rounds as a sync writes them. The browser test
opens the written pages in headless Chromium; the integration test reads answers a simulated
reviewer gave through a real Label Studio."""

from __future__ import annotations

import io
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from pseudolabel.sim.demo import demo_config, export_digits
from loops.round import ledger_for, run_round
from pseudolabel.cli import app
from pseudolabel.config import Config, load_config
from pseudolabel.report import (
    HOLDOUT_FILE,
    SECTIONS,
    gather_round,
    read_holdout_predictions,
    report_round,
    write_holdout_predictions,
    write_reports,
)
from pseudolabel.report import data as report_data
from pseudolabel.report import plots
from pseudolabel.types import Annotation, Box

pytestmark = [pytest.mark.slow]
runner = CliRunner()


@dataclass
class Campaign:
    cfg: Config
    cfg_file: Path
    broken: Path                      # the unreadable file dropped into the pool
    answers: dict[str, str]           # item id -> outcome written for round 1's queue
    edited: str                       # the item whose correction was edited (two versions)
    edited_final: str                 # its final answer
    consensus_item: str
    log2: list[str]                   # round 2's log
    round2_reports_failed: bool


@pytest.fixture(scope="module")
def campaign(tmp_path_factory: pytest.TempPathFactory) -> Campaign:
    root = tmp_path_factory.mktemp("report")
    data = export_digits(root / "data", seed_per_class=2, holdout=200, seed=0)
    broken = data.root / "pool" / "broken.png"
    broken.write_bytes(b"this is not a PNG")
    # the demo's model settings: trained enough (~0.85 accuracy) for confident pseudo-labels
    raw = demo_config(root / "work", data.root, strategy="hybrid", project="report-test")
    cfg_file = root / "c.yaml"
    cfg_file.write_text(yaml.safe_dump(raw))
    cfg = load_config(cfg_file, environ={})
    run_round(cfg, None, progress=False)

    # Answers to round 1's queue, as loops.review.sync_reviews stores them: every 5th skipped,
    # every 3rd corrected (one of them edited later: a second version of the same annotation),
    # the rest accepted, and one consensus decision.
    sel = pd.read_csv(cfg.workdir / "rounds" / "0001" / "selection.csv", dtype={"item_id": str, "predicted": str})
    answers: dict[str, str] = {}
    anns = []
    edited = edited_final = consensus_item = ""
    with ledger_for(cfg) as ledger:
        for i, r in enumerate(sel.itertuples()):
            item = ledger.item(r.item_id)
            common: dict[str, Any] = {"item": item, "source": "human", "round": 1, "ls_task_id": 500 + i,
                                      "ls_annotation_id": 900 + i, "reviewer": "bob" if i % 2 else "alice"}
            if i % 5 == 0:
                anns.append(Annotation(label=None, review_outcome="skipped", **common))
                answers[r.item_id] = "skipped"
            elif i % 3 == 0:
                wrong = str((int(r.predicted) + 1) % 10)
                anns.append(Annotation(label=wrong, review_outcome="corrected", **common))
                answers[r.item_id] = "corrected"
                if not edited:
                    edited, edited_final = r.item_id, str((int(r.predicted) + 2) % 10)
                    later = pd.Timestamp.now(tz="UTC").to_pydatetime() + pd.Timedelta(seconds=5)
                    anns.append(Annotation(label=edited_final, review_outcome="corrected", created_at=later, **common))
            else:
                anns.append(Annotation(label=r.predicted, review_outcome="accepted", **common))
                answers[r.item_id] = "accepted"
                if not consensus_item:
                    consensus_item = r.item_id
                    anns.append(Annotation(item=item, label=r.predicted, source="human", round=1,
                                           reviewer="consensus:majority", review_outcome="accepted"))
        ledger.add_labels(anns)

    # Round 2, with its report made to fail (a file where the reports folder goes): the round
    # must still complete, the failure a warning in its log.
    reports = cfg.workdir / "reports"
    reports.rename(cfg.workdir / "reports-r1")
    reports.write_text("in the way")
    log2: list[str] = []
    res = run_round(cfg, None, progress=False, log=log2.append)
    failed = res.round_id == 2 and not (cfg.workdir / "reports-r1" / "round-0002.html").exists()
    reports.unlink()
    (cfg.workdir / "reports-r1").rename(reports)
    return Campaign(cfg, cfg_file, broken, answers, edited, edited_final, consensus_item, log2, failed)


def _expected_counts(c: Campaign) -> dict[str, int]:
    return {k: list(c.answers.values()).count(k) for k in ("accepted", "corrected", "skipped")}


# -- what the round writes ----------------------------------------------------------------------
def test_rounds_write_holdout_predictions_that_match_their_metrics(campaign: Campaign) -> None:
    for rid in (1, 2):
        rdir = campaign.cfg.workdir / "rounds" / f"{rid:04d}"
        hold = read_holdout_predictions(rdir / HOLDOUT_FILE)
        metrics = json.loads((rdir / "metrics.json").read_text())
        assert len(hold) == metrics["n"] == 200
        assert set(hold["truth"]) <= set(campaign.cfg.classes)
        assert float((hold["truth"] == hold["predicted"]).mean()) == pytest.approx(metrics["accuracy"])
        assert ((hold["confidence"] > 0) & (hold["confidence"] <= 1)).all()
        with ledger_for(campaign.cfg) as ledger:
            report, _ = gather_round(campaign.cfg, ledger, rid)
        assert report.confusion is not None and report.confusion.sum() == 200
        assert np.trace(report.confusion) / 200 == pytest.approx(metrics["accuracy"])


def test_round_writes_its_page_and_a_failing_report_does_not_fail_the_round(campaign: Campaign) -> None:
    reports = campaign.cfg.workdir / "reports"
    assert (reports / "round-0001.html").is_file() and (reports / "index.html").is_file()
    assert campaign.round2_reports_failed
    assert any(line.startswith("  warning: report of round 2 not written") for line in campaign.log2)
    with ledger_for(campaign.cfg) as ledger:
        assert ledger.round(2)["status"] == "done"


def test_report_round_logs_a_warning_instead_of_raising(campaign: Campaign, tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    work = tmp_path / "work"
    shutil.copytree(campaign.cfg.workdir, work)
    cfg = campaign.cfg.model_copy(update={"workdir": work})
    (work / "quarantine.csv").write_text("file,why\nx,y\n")     # a header the reader refuses
    lines: list[str] = []
    with ledger_for(cfg) as ledger, caplog.at_level(logging.WARNING):
        assert report_round(cfg, ledger, 2, log=lines.append) is None
    assert "quarantine CSV header" in lines[0] and "quarantine CSV header" in caplog.text


def test_report_can_be_turned_off(campaign: Campaign, tmp_path: Path) -> None:
    from pseudolabel.config import ReportConfig

    cfg = campaign.cfg.model_copy(update={"workdir": tmp_path / "work"})
    shutil.copytree(campaign.cfg.workdir, cfg.workdir, ignore=shutil.ignore_patterns("reports"))
    with ledger_for(cfg) as ledger:
        assert report_round(cfg.model_copy(update={"report": ReportConfig(enabled=False)}), ledger, 2) is None
        assert not (cfg.workdir / "reports").exists()
        assert report_round(cfg, ledger, 2) == cfg.workdir / "reports" / "round-0002.html"


# -- the data behind the pages -----------------------------------------------------------------
def test_label_sources_and_reviews_count_each_answer_once(campaign: Campaign) -> None:
    exp = _expected_counts(campaign)
    with ledger_for(campaign.cfg) as ledger:
        report, _ = gather_round(campaign.cfg, ledger, 2)
        pseudo = {rid: (ledger.stage_info(rid, "pseudo_label") or {})["pseudo_labels"] for rid in (1, 2)}
        assert ledger.all_labels(source="pseudo")  # the fixture's rounds really pseudo-labelled
    labelled = exp["accepted"] + exp["corrected"]
    s1, s2 = report.sources
    assert (s1.seed, s1.human + s1.consensus) == (20, labelled)   # round 1's queue answers count from round 1
    assert (s2.seed, s2.human, s2.consensus) == (20, labelled - 1, 1)
    assert s1.pseudo <= pseudo[1] and s2.pseudo <= pseudo[2]       # minus items a human labelled since
    assert s2.pseudo == pseudo[2]                                   # round 2 never pseudo-labels human items
    r1, r2 = report.reviews
    assert (r1.accepted, r1.corrected, r1.skipped) == (exp["accepted"], exp["corrected"], exp["skipped"])
    assert r1.consensus == 1
    assert r1.acceptance == pytest.approx(exp["accepted"] / labelled)
    assert (r2.answered, r2.skipped, r2.acceptance) == (0, 0, None)
    assert sum(report.reviewers.values()) == len(campaign.answers) and set(report.reviewers) == {"alice", "bob"}
    assert report.round.labels_used == 20 + labelled


def test_corrections_pair_the_models_suggestion_with_the_latest_answer(campaign: Campaign) -> None:
    sel = pd.read_csv(campaign.cfg.workdir / "rounds" / "0001" / "selection.csv",
                      dtype={"item_id": str, "predicted": str})
    predicted = dict(zip(sel["item_id"], sel["predicted"]))
    with ledger_for(campaign.cfg) as ledger:
        report, _ = gather_round(campaign.cfg, ledger, 2)
    assert report.corrections_total == _expected_counts(campaign)["corrected"]
    for c in report.corrections:
        assert c.predicted == predicted[c.item_id] != c.answer
        assert c.round_id == 1 and c.path.endswith(".png")
    edited = [c for c in report.corrections if c.item_id == campaign.edited]
    assert [c.answer for c in edited] == [campaign.edited_final]
    assert sum(n for _, _, n in report.correction_pairs) == report.corrections_total


def test_pool_view_selection_thumbnails_and_map(campaign: Campaign) -> None:
    cfg = campaign.cfg
    with ledger_for(cfg) as ledger:
        scored = (ledger.stage_info(2, "pseudo_label") or {})["scored"]
        r1, _ = gather_round(cfg, ledger, 1)
        r2, _ = gather_round(cfg, ledger, 2, max_points=100, max_thumbnails=5)
    sel2 = pd.read_csv(cfg.workdir / "rounds" / "0002" / "selection.csv", dtype={"item_id": str})
    pool = r2.pool
    assert pool is not None and len(pool.item_ids) == scored
    assert int(pool.selected.sum()) == len(sel2) == r2.selected_total
    assert ((pool.uncertainty >= 0) & (pool.uncertainty <= 1)).all()
    assert set(pool.predicted) <= set(cfg.classes)
    # the map: 100 rows, every selected item among them, 2-D
    assert pool.map_xy is not None and pool.map_rows is not None
    assert pool.map_xy.shape == (100, 2) and len(set(pool.map_rows.tolist())) == 100
    assert set(np.flatnonzero(pool.selected)) <= set(pool.map_rows.tolist())
    assert "100 of" in pool.map_note
    # thumbnails: the first 5 in review order; round 1's carry the answers, round 2's none yet
    assert [s.rank for s in r2.selected] == [0, 1, 2, 3, 4] and all(s.answer is None for s in r2.selected)
    assert {s.item_id: s.outcome for s in r1.selected} == campaign.answers
    assert {s.answer for s in r1.selected if s.item_id == campaign.edited} == {campaign.edited_final}
    assert all(s.path.is_file() for s in r1.selected)


def test_quarantined_file_is_listed_and_marked_new_in_its_round(campaign: Campaign) -> None:
    with ledger_for(campaign.cfg) as ledger:
        r1, _ = gather_round(campaign.cfg, ledger, 1)
        r2, _ = gather_round(campaign.cfg, ledger, 2)
    assert [(q.path, q.new) for q in r1.quarantine] == [(str(campaign.broken), True)]
    assert [(q.path, q.new) for q in r2.quarantine] == [(str(campaign.broken), False)]
    assert r1.quarantine[0].reason


def test_unknown_round_is_a_clear_error(campaign: Campaign) -> None:
    with ledger_for(campaign.cfg) as ledger:
        with pytest.raises(ValueError, match=r"round 7 is not in the ledger .* \(rounds 1\.\.2\)"):
            gather_round(campaign.cfg, ledger, 7)
        with pytest.raises(ValueError, match=r"no round 9 in .*; rounds there: 1\.\.2"):
            write_reports(campaign.cfg, ledger, rounds=[9])


def test_label_sources_take_the_latest_human_row_up_to_each_round() -> None:
    from pseudolabel.data.ledger import LabelRow

    def row(i: int, item: str, source: str, rnd: int | None, reviewer: str | None = None,
            outcome: str | None = None, label: str | None = "a") -> LabelRow:
        return LabelRow(i, item, label, (), source, rnd, reviewer, None, "2026-01-01T00:00:00", 1.0,  # type: ignore[arg-type]
                        outcome, None, None)

    rows = [
        row(1, "s1", "seed", 0), row(2, "s2", "seed", 0),
        row(3, "p1", "pseudo", 1), row(4, "p2", "pseudo", 1), row(5, "h1", "pseudo", 1),
        row(6, "h1", "human", 1, "alice", "corrected"),
        row(7, "h2", "human", 2, "bob", "accepted"),
        row(8, "h3", "human", 1, "bob", "skipped", label=None),               # a skip labels nothing
        row(9, "h1", "human", 1, "consensus:majority", "corrected"),        # synced late: higher id
        row(10, "s2", "human", 2, "alice", "corrected"),                    # a human fixes a seed label
        row(11, "p1", "pseudo", 2), row(12, "h2", "pseudo", 2),
    ]
    got = [(c.round_id, c.seed, c.human, c.consensus, c.pseudo) for c in report_data.label_sources(rows, [1, 2, 3])]
    assert got == [(1, 2, 0, 1, 2), (2, 1, 2, 1, 1), (3, 1, 2, 1, 0)]
    reviews = report_data.review_counts(rows, [1, 2])
    assert [(c.accepted, c.corrected, c.skipped, c.consensus) for c in reviews] == [(0, 1, 1, 1), (1, 1, 0, 0)]


def test_consensus_prefix_agrees_with_the_review_loop() -> None:
    from loops.review import CONSENSUS_PREFIX

    assert report_data.CONSENSUS_PREFIX == CONSENSUS_PREFIX


def test_holdout_writer_checks_lengths_and_reader_checks_columns(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="columns differ in length"):
        write_holdout_predictions(tmp_path / "h.parquet", ["a", "b"], ["x", "y"], ["x"], [0.5, 0.5])
    pd.DataFrame({"item_id": ["a"], "truth": ["x"]}).to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match=r"bad.parquet: missing columns \['predicted', 'confidence'\]"):
        read_holdout_predictions(tmp_path / "bad.parquet")


def test_thumbnail_scales_and_draws_boxes_in_class_colour(tmp_path: Path) -> None:
    path = tmp_path / "scene.png"
    Image.new("RGB", (200, 100), (0, 0, 0)).save(path)
    boxes = [Box(20, 20, 80, 60, "bag", 0.9), Box(100, 10, 150, 50, "x", 0.05)]
    data, mime = plots.thumbnail(path, side=100, boxes=boxes, classes=["bag", "trouser"], min_score=0.1)
    img = Image.open(io.BytesIO(data)).convert("RGB")
    assert mime == "image/jpeg" and img.size == (100, 50)
    arr = np.asarray(img).astype(int)
    assert arr[10, 25].sum() > 150             # left edge of the kept box (x=20/2, y=20..60/2): drawn
    assert arr[15, 50].sum() < 60              # below the 0.1 floor: the second box is not drawn
    tiny = tmp_path / "tiny.png"
    Image.new("L", (8, 8), 255).save(tiny)
    data, mime = plots.thumbnail(tiny, side=64)
    assert mime == "image/png" and Image.open(io.BytesIO(data)).size == (64, 64)


# -- the command ------------------------------------------------------------------------------
def test_cli_report_writes_pages_and_names_errors(campaign: Campaign, tmp_path: Path) -> None:
    out = tmp_path / "out"
    r = runner.invoke(app, ["report", "-c", str(campaign.cfg_file), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.iterdir()) == ["index.html", "round-0001.html", "round-0002.html"]
    assert str(out / "index.html") in r.output.replace("\n", "")
    r = runner.invoke(app, ["report", "-c", str(campaign.cfg_file), "--round", "9", "--out", str(out)])
    assert r.exit_code == 2 and "no round 9" in r.output
    raw = yaml.safe_load(campaign.cfg_file.read_text())
    raw["workdir"] = str(tmp_path / "nothing-here")
    empty = tmp_path / "empty.yaml"
    empty.write_text(yaml.safe_dump(raw))
    r = runner.invoke(app, ["report", "-c", str(empty)])
    assert r.exit_code == 1 and "no campaign in" in r.output and "pseudolabel round" in r.output


# -- the pages in a real browser --------------------------------------------------------------
@pytest.mark.browser
def test_pages_open_in_chromium_with_every_section_and_image(campaign: Campaign, tmp_path: Path) -> None:
    from browser import chromium_page

    out = tmp_path / "reports"
    with ledger_for(campaign.cfg) as ledger:
        paths = write_reports(campaign.cfg, ledger, out_dir=out)
    n_selected = {rid: len(pd.read_csv(campaign.cfg.workdir / "rounds" / f"{rid:04d}" / "selection.csv"))
                  for rid in (1, 2)}
    requests: list[str] = []
    with chromium_page(tmp_path) as page:
        page.on("request", lambda req: requests.append(req.url))
        for rid in (1, 2):
            page.goto(paths[rid - 1].as_uri())
            for sid in SECTIONS:
                heading = page.locator(f"section#{sid} > h2")
                assert heading.count() == 1 and heading.is_visible(), sid
            images = page.evaluate("Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth])")
            assert all(complete and width > 0 for _, complete, width in images), images
            # 7 figures (learning curve, per-class, confusion, sources, reviews (round 1's
            # answers are in), uncertainty, map) + one thumbnail per selected item
            assert page.locator("#selected figure.thumb img").count() == n_selected[rid]
            assert len(images) == 7 + n_selected[rid]
            page.screenshot(path=str(tmp_path / f"round-{rid}.png"), full_page=True)
        page.goto(paths[0].as_uri())
        exp = _expected_counts(campaign)
        acceptance = f"{exp['accepted'] / (exp['accepted'] + exp['corrected']):.0%}"
        assert acceptance in page.locator("#reviews table").first.inner_text()
        assert str(campaign.broken) in page.locator("#quarantine").inner_text()
        page.goto(paths[-1].as_uri())
        page.click("a[href='round-0002.html']")
        assert page.url.endswith("round-0002.html")
        assert page.locator("header h1").inner_text().endswith("round 2")
    assert requests and all(u.startswith(("file:", "data:")) for u in requests), requests


# -- reviewers' answers through a real Label Studio -----------------------------------------
@pytest.mark.integration
def test_report_counts_the_simulated_reviewers_answers(tmp_path: Path, label_studio) -> None:  # noqa: ANN001
    from loops.campaign import run_campaign
    from pseudolabel.review.client import LabelStudioClient
    from pseudolabel.sim.simulated import SimulatedReviewer

    data = export_digits(Path(label_studio.images_root) / f"report-{tmp_path.name}", seed_per_class=2,
                         holdout=200, seed=0)
    raw = demo_config(tmp_path / "work", data.root, strategy="entropy", project=f"report-{tmp_path.name}",
                      **{"model.epochs": 2, "model.min_steps": 20, "stop.max_rounds": 2, "stop.target": 0.999})
    raw["label_studio"]["images_root"] = str(label_studio.images_root)
    cfg = load_config(data=raw, environ={})
    client = LabelStudioClient(url=label_studio.url, token=label_studio.token,
                               project_title=cfg.label_studio.project_title, classes=cfg.classes,
                               images_root=Path(label_studio.images_root))
    client.ensure_project()
    reviewer = SimulatedReviewer(client=client, truth=data.truth, classes=cfg.classes, error_rate=0.2, seed=3)
    stats = []

    def answer(res):  # noqa: ANN001, ANN202
        stats.append(reviewer.answer_pending())
        return {}

    run_campaign(cfg, client, answer=answer, progress=False)
    with ledger_for(cfg) as ledger:
        report, _ = gather_round(cfg, ledger, 2)
    r1 = report.reviews[0]
    assert (r1.accepted, r1.corrected) == (stats[0].accepted, stats[0].corrected)
    assert r1.answered == 20 and report.sources[1].human == 20
    assert report.corrections_total == stats[0].corrected
    assert all(c.predicted != c.answer for c in report.corrections)
    assert report.round.stop is not None and report.round.stop.startswith("max_rounds")
    assert report.pool is None and "stopped before pseudo-labelling" in report.pool_note
    assert (cfg.workdir / "reports" / "round-0002.html").is_file()   # written by the round itself


def test_pages_are_self_contained(campaign: Campaign, tmp_path: Path) -> None:
    import re

    with ledger_for(campaign.cfg) as ledger:
        paths = write_reports(campaign.cfg, ledger, out_dir=tmp_path)
    for p in paths:
        page = p.read_text()
        assert "<script" not in page.lower() and "@import" not in page and "url(" not in page
        for ref in re.findall(r'(?:src|href)="([^"]*)"', page):
            assert ref.startswith(("data:image/png;base64,", "data:image/jpeg;base64,", "#")) \
                or re.fullmatch(r"(index|round-\d{4})\.html", ref), (p.name, ref[:80])


# -- detection --------------------------------------------------------------------------------
def test_detection_round_page_shows_per_class_ap_and_predicted_boxes(tmp_path: Path) -> None:
    from pseudolabel.data.formats import write_yolo
    from pseudolabel.inference import load_box_predictions
    from test_yolo import CLASSES, SIZE, make_scenes

    data = tmp_path / "data"
    for name, n, seed in (("seed", 8, 1), ("holdout", 6, 2)):
        anns = make_scenes(data / name / "images", n, seed=seed)
        write_yolo(data / name / "labels", [a.item for a in anns], {a.item.id: a.boxes for a in anns},
                   classes=CLASSES, task="detect", image_root=data / name / "images")
    make_scenes(data / "pool", 8, seed=3)
    cfg = load_config(data={
        "project": "report-detect", "task": "detect", "workdir": str(tmp_path / "work"), "classes": CLASSES,
        "data": {"seed": {"format": "yolo", "path": str(data / "seed" / "images")},
                 "holdout": {"format": "yolo", "path": str(data / "holdout" / "images")},
                 "pool": {"path": str(data / "pool")}},
        "model": {"image_size": SIZE, "epochs": 2, "min_steps": 0, "batch_size": 8, "device": "cpu",
                  "infer_batch_size": 16, "train_args": {"mosaic": 0.0}, "conf": 0.001},
        "selection": {"strategy": "entropy", "batch_size": 4, "predraw_conf": 0.0},
        "stop": {"target": 0.999, "label_budget": 100, "max_rounds": 5},
    }, environ={})
    run_round(cfg, None, progress=False)
    page = (cfg.workdir / "reports" / "round-0001.html").read_text()
    assert "Confusion matrix (detection: per-class AP instead)" in page
    with ledger_for(cfg) as ledger:
        report, box_preds = gather_round(cfg, ledger, 1)
    assert report.confusion is None and "per-class AP on the holdout is shown instead" in report.confusion_note
    assert report.per_class_name == "AP50" and list(report.per_class) == CLASSES
    assert report.pool is not None and len(report.pool.item_ids) == 8
    assert ((report.pool.uncertainty >= 0) & (report.pool.uncertainty <= 1)).all()
    _, preds = load_box_predictions(cfg.workdir / "rounds" / "0001" / "predictions")
    by_id = {p.item_id: p.boxes for p in preds}
    assert len(report.selected) == 4
    assert all(s.boxes == by_id[s.item_id] for s in report.selected)
    assert any(s.boxes for s in report.selected)      # boxes to draw (the 2-epoch model's, at conf 0.001)
    assert set(box_preds) == set(by_id)
