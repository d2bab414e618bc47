"""When a campaign stops, and when a round has nothing to do.

- :func:`stop_reason` — the stop rules on the holdout metrics, the label budget, the
  reviewers' acceptance rate and the round count (checked after evaluation);
- :func:`pool_stop_reason` — the rules on the pool predictions (consecutive models agree, the
  pool's uncertainty is low; checked after pseudo-labelling);
- :func:`why_idle` — no round should start: the campaign stopped, or no label changed since
  the last model and the review queue is full (scheduled runs nobody answers train nothing).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import numpy as np

from pseudolabel.config import Config
from pseudolabel.data.boxes import boxes_to_json
from pseudolabel.data.ledger import Ledger
from pseudolabel.stopping import StoppingRules, check_all
from pseudolabel.tasks import PoolPredictions, task_for
from pseudolabel.types import Item


def labels_used(ledger: Ledger) -> int:
    """Seed + human labelled items: what counts against ``stop.label_budget``."""
    return len(ledger.human_labelled_ids())


def stop_reason(cfg: Config, ledger: Ledger, round_id: int, metrics: Mapping[str, Any], pool_left: int) -> str | None:
    """Why the campaign should stop now (before pseudo-labelling), or None.

    Order: target reached, label budget, plateau, reviewer acceptance rate, max rounds, pool
    exhausted. The rules that need the new model's pool predictions (stable predictions, low
    pool uncertainty) are checked after pseudo-labelling by :func:`pool_stop_reason`.
    """
    s = cfg.stop
    value = metrics.get(s.metric)
    if value is not None and value >= s.target:
        return f"target_reached: holdout {s.metric} {value:.4f} >= {s.target}"
    used = labels_used(ledger)
    if used >= s.label_budget:
        return f"label_budget: {used} labels used >= budget {s.label_budget}"
    history = [r["metrics"] for r in ledger.rounds() if r["id"] <= round_id and r["metrics"]]
    rules = StoppingRules(metric=s.metric, patience=s.plateau_rounds, min_delta=s.plateau_min_delta,
                          acceptance_threshold=s.acceptance_rate, min_answered=s.min_answered)
    answers = [r for r in ledger.all_labels(source="human")
               if r.round == round_id - 1 and r.review_outcome in ("accepted", "corrected")]
    decision = check_all(rules, history=history,
                         accepted=sum(r.review_outcome == "accepted" for r in answers) if answers else None,
                         answered=len(answers) if answers else None)
    if decision.stop:
        return decision.reason
    if round_id >= s.max_rounds:
        return f"max_rounds: round {round_id} of {s.max_rounds}"
    if pool_left == 0:
        return "pool_exhausted: no unlabelled, unqueued pool item left"
    return None


def pool_stop_reason(cfg: Config, preds: PoolPredictions, previous: PoolPredictions | None,
                     items: Mapping[str, Item]) -> str | None:
    """Stop rules on the pool predictions: consecutive models agree (Cohen's kappa on the
    items both scored, over each image's label — its class, or its top box class with "none"
    for no box), or the pool's mean uncertainty (in [0, 1]) is low."""
    s = cfg.stop
    if s.stable_kappa is None and s.pool_uncertainty is None:
        return None
    task = task_for(cfg)
    prev_labels = cur_labels = None
    if s.stable_kappa is not None and previous is not None and len(previous):
        prev = dict(zip(previous.item_ids, task.stop_labels(previous)))
        cur = dict(zip(preds.item_ids, task.stop_labels(preds)))
        common = [i for i in cur if i in prev]
        if common:
            prev_labels = np.array([prev[i] for i in common], dtype=object)
            cur_labels = np.array([cur[i] for i in common], dtype=object)
    rules = StoppingRules(metric=s.metric, kappa_threshold=s.stable_kappa, uncertainty_threshold=s.pool_uncertainty)
    decision = check_all(rules, prev_labels=prev_labels, cur_labels=cur_labels,
                         pool_scores=task.pool_uncertainty(preds, items))
    return decision.reason if decision.stop else None


def training_signature(cfg: Config, ledger: Ledger) -> str:
    """A hash of what a model learns from: the seed and human labels of the training set and
    the model / self-training settings. Equal signatures train the same model."""
    holdout = {it.id for it in ledger.items("holdout")}
    rows = sorted((iid, row.source, row.label or "", boxes_to_json(row.boxes) or "")
                  for iid, row in ledger.current_labels().items()
                  if row.source != "pseudo" and iid not in holdout)
    snap = cfg.snapshot()
    settings = {k: snap[k] for k in ("task", "classes", "model", "pseudo", "consistency")}
    if cfg.model.backbone == "ssl":   # the backbone is trained from these (enabled only says where)
        settings["pretrain"] = {k: v for k, v in snap["pretrain"].items() if k != "enabled"}
    h = hashlib.sha256(json.dumps([rows, settings], sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def last_trained(ledger: Ledger) -> dict[str, Any] | None:
    """The train stage's info (with ``round``) of the latest round that has a model."""
    for rnd in reversed(ledger.rounds()):
        info = ledger.stage_info(rnd["id"], "train")
        if info is not None and info.get("signature"):
            return {**info, "round": rnd["id"]}
    return None


def why_idle(cfg: Config, ledger: Ledger, *, force: bool = False) -> str | None:
    """Why no new round should start now, or None.

    - the campaign stopped (the last round ended with a stop rule), unless ``force``;
    - nothing new to learn from: the labels are those of the last model, no new pool image
      arrived since, and the review queue is full (``selection.max_queued`` tasks waiting).
    """
    rounds = ledger.rounds()
    if not rounds:
        return None
    last = rounds[-1]
    if last["status"] == "stopped" and not force:
        why = (last.get("info") or {}).get("stop") or "a stop rule fired"
        return (f"the campaign stopped at round {last['id']} ({why}); nothing to do. Raise the limit in the "
                "config, or run with --force to go on anyway")
    prev = last_trained(ledger)
    if prev is None or prev["signature"] != training_signature(cfg, ledger):
        return None
    waiting = len(ledger.review_tasks(state="queued"))
    cap = cfg.selection.max_queued or cfg.selection.batch_size
    blocked = ledger.human_labelled_ids() | ledger.queued_item_ids()
    selectable = sum(1 for it in ledger.items("pool") if it.id not in blocked)
    new_pool = selectable - int((ledger.stage_info(prev["round"], "pseudo_label") or {}).get("selectable", -1))
    if waiting >= cap and new_pool <= 0:
        return (f"nothing new to learn from: no new answers since round {prev['round']}'s model and "
                f"{waiting} tasks are still waiting for reviewers; not training")
    return None
