"""``pseudolabel status``: where a campaign stands, in a few seconds.

Reads the ledger and the CSV logs beside it, and (unless offline) lists the Label Studio
project once, to show the server's own task counts next to the ledger's, duplicates, tasks
whose image does not load, and the project's URL. It changes nothing (``sync`` and ``repair``
do). It imports no model code, so it answers fast even on a busy machine.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from pseudolabel.config import Config
from pseudolabel.data.ledger import Ledger


def _csv_rows(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def campaign_status(cfg: Config, *, client_factory: Callable[[], Any] | None = None) -> dict[str, Any]:
    """Everything ``status`` shows, as a JSON-ready dict (see :func:`print_status`)."""
    with Ledger(cfg.workdir / "ledger.sqlite") as ledger:
        rounds = ledger.rounds()
        labels = ledger.label_counts()
        consensus = sum(1 for r in ledger.all_labels(source="human") if (r.reviewer or "").startswith("consensus:"))
        used = len(ledger.human_labelled_ids())
        tasks = ledger.task_counts()
        ledger_tasks = {r["item_id"]: r for r in ledger.review_tasks(cfg.label_studio.project_title or cfg.project)}
        items = {it.id: it for it in ledger.items()}
        info: dict[str, Any] = {
            "project": cfg.project, "workdir": str(cfg.workdir), "task": cfg.task,
            "items": ledger.split_counts(), "labels_by_source": labels | {"consensus_rows": consensus},
            "review_tasks": tasks, "termination": ledger.termination(),
            "metric": cfg.stop.metric,
            "rounds": [_round_row(cfg, ledger, r) for r in rounds],
            "duplicate_files": ledger.duplicate_files(),
            "gone_items": len(ledger.gone_items()),
        }
    last = next((r for r in reversed(rounds) if r["metrics"]), None)
    metrics = (last or {}).get("metrics") or {}
    value = metrics.get(cfg.stop.metric)
    info["last_model"] = None if last is None else {
        "round": last["id"], "model_version": last["model_version"], cfg.stop.metric: value,
        "per_class": metrics.get("per_class_f1") if cfg.task == "classify" else metrics.get("per_class_ap50"),
        "pseudo_per_class": next((r["pseudo_per_class"] for r in reversed(info["rounds"]) if r["pseudo_per_class"]),
                                 None),
    }
    info["budget"] = {"labels_used": used, "label_budget": cfg.stop.label_budget,
                      "labels_left": max(0, cfg.stop.label_budget - used),
                      "target": cfg.stop.target, "metric_now": value,
                      "to_target": None if value is None else max(0.0, cfg.stop.target - float(value)),
                      "rounds_left": max(0, cfg.stop.max_rounds - (rounds[-1]["id"] if rounds else 0))}
    quarantine = _csv_rows(cfg.workdir / "quarantine.csv")
    answers = _csv_rows(cfg.workdir / "answers_quarantine.csv")
    info["quarantined_files"] = {"count": len(quarantine), "examples": quarantine[:5]}
    info["answers_not_used"] = {"count": sum(r.get("action") == "ignored" for r in answers),
                                "repaired": sum(r.get("action") == "used" for r in answers),
                                "examples": [r for r in answers if r.get("action") == "ignored"][:5]}
    info["label_studio"] = _server_view(cfg, client_factory, ledger_tasks, items) if client_factory else \
        {"checked": False, "note": "offline: Label Studio not asked"}
    return info


def _round_row(cfg: Config, ledger: Ledger, r: dict[str, Any]) -> dict[str, Any]:
    pl = ledger.stage_info(r["id"], "pseudo_label") or {}
    train = ledger.stage_info(r["id"], "train") or {}
    m = r["metrics"]
    return {"round": r["id"], "status": r["status"], "stop": (r.get("info") or {}).get("stop"),
            "stages": r["stages"], "labels_used": m.get("labels_used"), cfg.stop.metric: m.get(cfg.stop.metric),
            "accuracy": m.get("accuracy"), "macro_f1": m.get("macro_f1"),
            "model_version": r["model_version"], "pseudo_labels": pl.get("pseudo_labels"),
            "pseudo_per_class": pl.get("per_class"), "train_reused_from": train.get("reused_from")}


def _server_view(cfg: Config, client_factory: Callable[[], Any], ledger_tasks: dict[str, Any],
                 items: dict[str, Any]) -> dict[str, Any]:
    from pseudolabel.review.transport import LabelStudioError

    try:
        client = client_factory()
        listing = client.listing()
    except (LabelStudioError, ValueError) as exc:  # ConfigError (no token) is a ValueError
        return {"checked": False, "note": f"not asked ({exc})"}
    by_item: dict[str, list[Any]] = {}
    for t in listing:
        by_item.setdefault(t.item_id, []).append(t)
    counts: dict[str, int] = {}
    broken_url: list[int] = []
    for iid, ts in by_item.items():
        states = {t.state for t in ts}
        state = "answered" if "answered" in states else ("skipped" if "skipped" in states else "queued")
        counts[state] = counts.get(state, 0) + 1
        it = items.get(iid)
        if it is not None:
            try:
                want = client.image_url(it.path)
            except ValueError:
                want = None
            broken_url += [t.task_id for t in ts if want is None or t.data.get(client.data_key) != want]
    # One image per round, fetched as a browser would: a wrong document root shows here.
    not_served: list[dict[str, Any]] = []
    first_of_round: dict[Any, Any] = {}
    for t in sorted(listing, key=lambda t: t.task_id):
        first_of_round.setdefault(t.data.get("round"), t)
    for t in list(first_of_round.values())[:5]:
        url = str(t.data.get(client.data_key, ""))
        code = client.image_status(url) if url else 0
        if code != 200:
            not_served.append({"task": t.task_id, "round": t.data.get("round"), "url": url, "http": code})
    dupes = {iid: [t.task_id for t in ts] for iid, ts in by_item.items() if len(ts) > 1}
    return {
        "checked": True, "project_url": client.project_url, "tasks": len(listing), "by_state": counts,
        "duplicates": len(dupes), "duplicate_examples": dict(list(dupes.items())[:5]),
        "wrong_image_url": len(broken_url), "images_not_served": not_served,
        "missing_in_label_studio": len(set(ledger_tasks) - set(by_item)),
        "unknown_to_ledger": len(set(by_item) - set(ledger_tasks)),
        "model_version": client.project_model_version(),
    }


def print_status(info: dict[str, Any], console: Console) -> None:
    """The human-readable form of :func:`campaign_status`."""
    p = console.print
    p(f"[bold]{info['project']}[/] ({info['task']}, {info['workdir']})", highlight=False)
    ls = info["label_studio"]
    if ls.get("checked"):
        p(f"Label Studio: {ls['project_url']}  (prediction version {ls['model_version']})", highlight=False)
    else:
        p(f"Label Studio: {ls['note']}", highlight=False)
    p("items: " + ", ".join(f"{k} {v}" for k, v in info["items"].items()))
    lab = info["labels_by_source"]
    p(f"labels by source: seed {lab['seed']}, human {lab['human']} ({lab['consensus_rows']} consensus decisions), "
      f"pseudo {lab['pseudo']}")
    b = info["budget"]
    target = f"{info['metric']} {b['metric_now']:.4f} of target {b['target']}" if b["metric_now"] is not None \
        else f"target {info['metric']} {b['target']} (not measured yet)"
    p(f"budget: {b['labels_used']} of {b['label_budget']} labels used ({b['labels_left']} left), {target}, "
      f"{b['rounds_left']} rounds left")
    t = Table(title="rounds")
    for c in ("round", "status", "labels", info["metric"], "pseudo", "note"):
        t.add_column(c)
    for r in info["rounds"]:
        note = r["stop"] or (f"model of round {r['train_reused_from']} (no new labels)" if r["train_reused_from"]
                             else ("stages done: " + ",".join(r["stages"]) if r["status"] == "running" else ""))
        val = r.get(info["metric"])
        t.add_row(str(r["round"]), r["status"], str(r["labels_used"] or "-"), "-" if val is None else f"{val:.4f}",
                  str(r["pseudo_labels"] if r["pseudo_labels"] is not None else "-"), note or "")
    p(t)
    lm = info["last_model"]
    if lm and lm.get("per_class"):
        pseudo = lm.get("pseudo_per_class") or {}
        name = "F1" if info["task"] == "classify" else "AP50"
        p(f"per class (round {lm['round']}, {name} / pseudo-labels): " + ", ".join(
            f"{c} {'n/a' if v is None else f'{v:.2f}'}/{pseudo.get(c, 0)}" for c, v in lm["per_class"].items()))
    rt = info["review_tasks"]
    line = f"review tasks (ledger): queued {rt['queued']}, answered {rt['answered']}, skipped {rt['skipped']}"
    if ls.get("checked"):
        s = ls["by_state"]
        line += (f"; in Label Studio: queued {s.get('queued', 0)}, answered {s.get('answered', 0)}, "
                 f"skipped {s.get('skipped', 0)}")
    p(line)
    problems = []
    if ls.get("checked"):
        if ls["duplicates"]:
            problems.append(f"{ls['duplicates']} items have duplicate tasks (`pseudolabel repair` removes them)")
        if ls["wrong_image_url"]:
            problems.append(f"{ls['wrong_image_url']} tasks point at the wrong image URL (`pseudolabel repair`)")
        for ns in ls["images_not_served"]:
            problems.append(f"task {ns['task']} (round {ns['round']}): image not served, HTTP {ns['http']} for "
                            f"{ns['url']} (check label_studio.document_root)")
        if ls["missing_in_label_studio"]:
            problems.append(f"{ls['missing_in_label_studio']} tasks of the ledger are gone from Label Studio")
        if ls["unknown_to_ledger"]:
            problems.append(f"{ls['unknown_to_ledger']} tasks are not in the ledger yet (the next sync adopts them)")
    if info["answers_not_used"]["count"]:
        problems.append(f"{info['answers_not_used']['count']} answers could not be used (answers_quarantine.csv; "
                        "flagged in Label Studio)")
    if info["quarantined_files"]["count"]:
        problems.append(f"{info['quarantined_files']['count']} files quarantined (quarantine.csv)")
    if info["gone_items"]:
        problems.append(f"{info['gone_items']} items are gone (file deleted or replaced; labels kept)")
    if info["duplicate_files"]:
        problems.append(f"{info['duplicate_files']} files are byte copies of other files (one item each)")
    for line in problems or ["no problems found"]:
        p(f"  - {line}", highlight=False)
    term = info["termination"]
    p(f"termination: {term['reason'] if term else 'not stopped'}", highlight=False)
