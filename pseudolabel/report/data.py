"""What a round's report shows, gathered from the workdir and the ledger (no plotting here).

Everything is read, nothing is written, except by :func:`write_holdout_predictions` (called by
the round's evaluate stage). Sources:

- the ledger: rounds (metrics, info, stages), labels (source, round, reviewer, review outcome),
  items (paths), meta (termination);
- ``rounds/NNNN/``: ``holdout.parquet`` (classification holdout predictions),
  ``predictions/`` (pool predictions and embeddings), ``selection.csv``;
- ``<workdir>/quarantine.csv``.

A part that a round did not produce (a round that stopped before pseudo-labelling has no pool
predictions; a round evaluated before ``holdout.parquet`` existed has no confusion matrix) is
``None`` with a ``*_note`` saying why, never an error: the report shows what there is.

Why this module is over 400 lines: every part of the report reads the same ledger rows and round
folders; one module keeps the reading in one place and the writer/plots free of I/O.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pseudolabel.config import Config
from pseudolabel.data.ingest import read_quarantine_csv
from pseudolabel.data.ledger import LabelRow, Ledger, Termination
from pseudolabel.types import Box, utcnow
from pseudolabel.utils import atomic_write

HOLDOUT_FILE = "holdout.parquet"
HOLDOUT_COLUMNS = ("item_id", "truth", "predicted", "confidence")
# loops.review writes consensus decisions as human rows with reviewer "consensus:<method>"; the
# library does not import loops, so the prefix is repeated here (a test checks they agree).
CONSENSUS_PREFIX = "consensus:"
SECTIONS = ("summary", "learning-curve", "per-class", "confusion", "label-sources", "reviews", "uncertainty",
            "embedding-map", "selected", "quarantine")


# -- holdout predictions (written by the round's evaluate stage) --------------------------------
def write_holdout_predictions(path: Path, item_ids: Sequence[str], truth: Sequence[str],
                              predicted: Sequence[str], confidence: Sequence[float] | np.ndarray) -> None:
    """Write the holdout predictions of one classification round as parquet, atomically.

    Columns: ``item_id`` (str), ``truth`` (true class name), ``predicted`` (argmax class name),
    ``confidence`` (float32, the max class probability in [0, 1]); one row per holdout item.
    Raises ``ValueError`` when the four columns differ in length.
    """
    conf = np.asarray(confidence, dtype=np.float32).reshape(-1)
    lengths = {"item_ids": len(item_ids), "truth": len(truth), "predicted": len(predicted), "confidence": len(conf)}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"holdout predictions for {path}: columns differ in length {lengths}")
    table = pa.table({
        "item_id": pa.array(list(item_ids), type=pa.string()),
        "truth": pa.array(list(truth), type=pa.string()),
        "predicted": pa.array(list(predicted), type=pa.string()),
        "confidence": pa.array(conf, type=pa.float32()),
    })
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(Path(path), lambda tmp: pq.write_table(table, tmp))


def read_holdout_predictions(path: Path) -> pd.DataFrame:
    """The frame written by :func:`write_holdout_predictions`; ``ValueError`` naming the file
    when it lacks one of the columns."""
    df = pq.read_table(path).to_pandas()
    missing = [c for c in HOLDOUT_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing columns {missing}; expected {list(HOLDOUT_COLUMNS)}")
    return df[list(HOLDOUT_COLUMNS)]


# -- what one report holds ----------------------------------------------------------------------
@dataclass(frozen=True)
class RoundSummary:
    """Headline figures of one round, from the ledger."""

    round_id: int
    status: str                        # running | done | stopped
    started_at: str                    # UTC ISO-8601
    finished_at: str | None
    model_version: str | None
    labels_used: int | None            # seed + human labelled items when the model was trained
    pseudo_used: int | None            # pseudo-labelled items in its training set
    metric: float | None               # holdout value of ``stop.metric``
    metrics: dict[str, Any]            # all of metrics.json
    stop: str | None                   # why the campaign stopped at this round, if it did
    selected: int | None               # items the select stage picked (None: stage not run)
    queued: int | None                 # new Label Studio tasks pushed (None: stage not run)


@dataclass(frozen=True)
class SourceCounts:
    """Labelled items by the source of their label at the end of a round (each item once, the
    ledger's precedence: human > seed > pseudo). ``consensus``: items whose human label is a
    consensus decision of several reviewers. Human labels count from the round whose review
    queue they answered; pseudo-labels are those the round itself wrote (older ones are stale)."""

    round_id: int
    seed: int
    human: int
    consensus: int
    pseudo: int


@dataclass(frozen=True)
class ReviewCounts:
    """Reviewers' answers to the queue of one round (each Label Studio annotation once, its
    latest version); ``consensus``: consensus decisions recorded for that round's items."""

    round_id: int
    accepted: int
    corrected: int
    skipped: int
    consensus: int

    @property
    def answered(self) -> int:
        """Accepted plus corrected answers (skips excluded)."""
        return self.accepted + self.corrected

    @property
    def acceptance(self) -> float | None:
        """Accepted / (accepted + corrected), in [0, 1]; None before any answer."""
        return self.accepted / self.answered if self.answered else None


@dataclass(frozen=True)
class Correction:
    """A reviewer's answer that changed the model's suggestion."""

    round_id: int                      # the round whose queue held the item
    item_id: str
    path: str
    predicted: str | None              # what the model suggested (selection.csv), if known
    answer: str                        # the reviewer's class, or "N boxes: labels" for detection
    reviewer: str | None


@dataclass(frozen=True)
class PoolView:
    """The round's pool predictions, row-aligned; ``N`` = pool items scored this round."""

    item_ids: list[str]
    predicted: list[str]               # argmax class (classification) or top box's class / "none"
    confidence: np.ndarray             # (N,) float32 in [0, 1]: max probability / top box score
    uncertainty: np.ndarray            # (N,) float64 in [0, 1], higher = more uncertain
    uncertainty_name: str              # how ``uncertainty`` was computed, for the axis label
    selected: np.ndarray               # (N,) bool: picked for review this round
    map_xy: np.ndarray | None          # (M, 2) PCA of the embeddings of the ``map_rows`` rows
    map_rows: np.ndarray | None        # (M,) int indices into the N rows (a bounded subsample)
    map_note: str = ""
    explained: tuple[float, float] | None = None  # variance ratio of the two components


@dataclass(frozen=True)
class SelectedItem:
    """One item the round picked for review, with the prediction reviewers see pre-drawn."""

    rank: int                          # 0 = reviewed first
    item_id: str
    path: Path
    predicted: str | None
    confidence: float
    score: float                       # selection score, higher = more uncertain
    boxes: tuple[Box, ...] = ()        # detection: predicted boxes in pixels (all, any score)
    answer: str | None = None          # the reviewer's answer once pulled back
    outcome: str | None = None         # accepted / corrected / skipped


@dataclass(frozen=True)
class QuarantineRow:
    """One quarantined file for the report: path, reason, when, and whether it is new this round."""

    path: str
    reason: str
    time: str
    new: bool                          # quarantined while this round ran


@dataclass
class RoundReport:
    """Everything the page of one round shows (see :func:`gather_round`)."""

    project: str
    task: str
    classes: list[str]
    workdir: Path
    metric_name: str
    target: float
    round: RoundSummary
    history: list[RoundSummary]                       # rounds 1..this one, in order
    per_class_name: str                               # "F1" or "AP50"
    per_class: dict[str, list[float | None]]          # class -> value in each history round
    confusion: np.ndarray | None                      # (C, C) counts, rows = truth, cols = predicted
    confusion_note: str
    holdout_n: int
    sources: list[SourceCounts]
    reviews: list[ReviewCounts]
    reviewers: dict[str, int]                         # answers per reviewer (queues up to this round)
    corrections: list[Correction]
    corrections_total: int
    correction_pairs: list[tuple[str, str, int]]      # (predicted, answer, count), most frequent first
    pool: PoolView | None
    pool_note: str
    selected: list[SelectedItem]
    selected_total: int
    quarantine: list[QuarantineRow]
    termination: Termination | None
    generated_at: str = field(default_factory=lambda: utcnow().isoformat(timespec="seconds"))


# -- gathering ----------------------------------------------------------------------------------
def rounds_dir(workdir: Path, round_id: int) -> Path:
    """``<workdir>/rounds/NNNN`` (the round's own folder, as the round writes it)."""
    return Path(workdir) / "rounds" / f"{round_id:04d}"


def summaries(cfg: Config, ledger: Ledger) -> list[RoundSummary]:
    """Headline figures of every round in the ledger, in order."""
    out = []
    for r in ledger.rounds():
        m = r["metrics"] or {}
        sel = ledger.stage_info(r["id"], "select")
        push = ledger.stage_info(r["id"], "push")
        out.append(RoundSummary(
            round_id=int(r["id"]), status=r["status"], started_at=r["started_at"], finished_at=r["finished_at"],
            model_version=r["model_version"], labels_used=m.get("labels_used"), pseudo_used=m.get("pseudo_used"),
            metric=m.get(cfg.stop.metric), metrics=m, stop=(r["info"] or {}).get("stop"),
            selected=None if sel is None else sel.get("selected"), queued=None if push is None else push.get("queued"),
        ))
    return out


def _is_consensus(row: LabelRow) -> bool:
    return (row.reviewer or "").startswith(CONSENSUS_PREFIX)


def _is_label(row: LabelRow) -> bool:
    """A row that labels its item: everything but a skipped review."""
    return not (row.source == "human" and row.review_outcome == "skipped")


def _round_of(row: LabelRow) -> int:
    return row.round if row.round is not None else 0


def label_sources(rows: Sequence[LabelRow], round_ids: Iterable[int]) -> list[SourceCounts]:
    """:class:`SourceCounts` at the end of each of ``round_ids``, from all label rows (as
    :meth:`Ledger.all_labels` returns them). One pass over the rows: human rows are taken in
    round order, the latest (highest row id) per item kept."""
    seed = {r.item_id for r in rows if r.source == "seed" and _is_label(r)}
    human = sorted((r for r in rows if r.source == "human" and _is_label(r)), key=_round_of)
    pseudo_by_round: dict[int | None, set[str]] = {}
    for r in rows:
        if r.source == "pseudo":
            pseudo_by_round.setdefault(r.round, set()).add(r.item_id)
    latest: dict[str, LabelRow] = {}
    counts: dict[int, SourceCounts] = {}
    i = 0
    for rid in sorted(set(round_ids)):
        while i < len(human) and _round_of(human[i]) <= rid:
            r = human[i]
            if r.item_id not in latest or r.id > latest[r.item_id].id:
                latest[r.item_id] = r
            i += 1
        consensus = sum(_is_consensus(r) for r in latest.values())
        pseudo = pseudo_by_round.get(rid, set()) - seed - set(latest)
        counts[rid] = SourceCounts(rid, seed=len(seed - set(latest)), human=len(latest) - consensus,
                                   consensus=consensus, pseudo=len(pseudo))
    return [counts[rid] for rid in round_ids]


def review_answers(rows: Sequence[LabelRow]) -> list[LabelRow]:
    """Individual reviewers' answers (not consensus rows): one row per Label Studio annotation,
    its latest saved version (an edit appends a row with the same annotation id)."""
    latest: dict[Any, LabelRow] = {}
    for r in rows:
        if r.source != "human" or _is_consensus(r):
            continue
        key = ("ls", r.ls_annotation_id) if r.ls_annotation_id is not None else ("row", r.id)
        latest[key] = r
    return sorted(latest.values(), key=lambda r: r.id)


def review_counts(rows: Sequence[LabelRow], round_ids: Iterable[int]) -> list[ReviewCounts]:
    """Answers per queue round (see :class:`ReviewCounts`), for each of ``round_ids``."""
    outcomes = Counter((_round_of(r), r.review_outcome) for r in review_answers(rows))
    cons = Counter(_round_of(r) for r in rows if r.source == "human" and _is_consensus(r))
    return [ReviewCounts(rid, accepted=outcomes[rid, "accepted"], corrected=outcomes[rid, "corrected"],
                         skipped=outcomes[rid, "skipped"], consensus=cons[rid]) for rid in round_ids]


def answer_text(row: LabelRow) -> str:
    """A label row as a short string: the class, ``"skipped"``, or ``"N boxes: a, b"``."""
    if row.review_outcome == "skipped":
        return "skipped"
    if row.label is not None:
        return row.label
    if not row.boxes:
        return "no objects"
    names = Counter(b.label for b in row.boxes)
    return f"{len(row.boxes)} boxes: " + ", ".join(f"{n}×{c}" if n > 1 else c for c, n in sorted(names.items()))


def _selection(workdir: Path, round_id: int) -> pd.DataFrame | None:
    path = rounds_dir(workdir, round_id) / "selection.csv"
    if not path.exists():
        return None
    df = pd.read_csv(path, dtype={"item_id": str, "predicted": str})
    need = {"rank", "item_id", "score", "predicted", "confidence"}
    if not need <= set(df.columns):
        raise ValueError(f"{path}: columns {sorted(df.columns)}; expected at least {sorted(need)}")
    return df


def corrections(workdir: Path, ledger: Ledger, rows: Sequence[LabelRow], *, up_to: int,
                limit: int) -> tuple[list[Correction], int, list[tuple[str, str, int]]]:
    """Reviewers' corrections to the queues of rounds ``<= up_to``, newest first: the first
    ``limit`` of them, their total, and (model's suggestion, answer, count) pairs over all."""
    fixed = [r for r in review_answers(rows) if r.review_outcome == "corrected" and _round_of(r) <= up_to]
    predicted: dict[int, dict[str, str]] = {}
    for rid in sorted({_round_of(r) for r in fixed}):
        sel = _selection(workdir, rid)
        predicted[rid] = {} if sel is None else dict(zip(sel["item_id"], sel["predicted"].fillna("none")))
    paths = {it.id: str(it.path) for it in ledger.items()}
    out = [Correction(round_id=_round_of(r), item_id=r.item_id, path=paths.get(r.item_id, "?"),
                      predicted=predicted.get(_round_of(r), {}).get(r.item_id), answer=answer_text(r),
                      reviewer=r.reviewer) for r in reversed(fixed)]
    pairs = Counter((c.predicted or "?", c.answer) for c in out)
    return out[:limit], len(out), [(p, a, n) for (p, a), n in pairs.most_common()]


def _uncertainty(cfg: Config, df: pd.DataFrame, probs: np.ndarray,
                 box_preds: list[Any] | None) -> tuple[np.ndarray, str]:
    if box_preds is not None:
        from pseudolabel.strategies.detection import image_uncertainty

        s = cfg.selection
        how = "topk_mean" if s.aggregate == "topk" else s.aggregate
        unc = np.array([image_uncertainty(p, how=how, score=s.uncertainty, k=s.topk, min_box_score=s.min_box_score)
                        for p in box_preds], dtype=np.float64)
        return unc, f"image uncertainty ({s.uncertainty} per box, {s.aggregate} over boxes)"
    from pseudolabel.strategies import entropy

    if probs.shape[1] < 2:
        return 1.0 - df["confidence"].to_numpy(np.float64), "1 - confidence"
    return entropy(probs, normalise=True).astype(np.float64), "normalised entropy"


def pool_view(cfg: Config, round_id: int, selected_ids: set[str], *, max_points: int,
              seed: int = 0) -> tuple[PoolView | None, str, dict[str, Any]]:
    """The round's pool predictions as a :class:`PoolView` (``None`` and a note when the round
    wrote none), plus detection predictions by item id (for drawing boxes; empty otherwise).

    The 2-D map is a PCA of the embeddings of at most ``max_points`` rows: every selected row
    and a seeded random sample of the others (scikit-learn's PCA, centred, 2 components).
    """
    pred_dir = rounds_dir(cfg.workdir, round_id) / "predictions"
    if not pred_dir.is_dir():
        return None, "this round wrote no pool predictions (it stopped before pseudo-labelling)", {}
    from pseudolabel.inference import load_box_predictions, load_predictions

    detection = cfg.task in ("detect", "segment")
    box_preds = None
    if detection:
        df, box_preds = load_box_predictions(pred_dir)
        probs = np.zeros((len(df), 0), dtype=np.float32)
        emb = (np.stack([np.asarray(p.embedding, dtype=np.float32) for p in box_preds])
               if box_preds and all(p.embedding is not None for p in box_preds) else np.zeros((len(df), 0), np.float32))
    else:
        df, probs, emb = load_predictions(pred_dir)
    if not len(df):
        return None, "the pool was empty when this round pseudo-labelled it", {}
    unc, unc_name = _uncertainty(cfg, df, probs, box_preds)
    ids = df["item_id"].astype(str).tolist()
    sel = np.array([i in selected_ids for i in ids], dtype=bool)
    map_xy = map_rows = None
    explained = None
    note = ""
    if emb.shape[1] >= 2 and len(df) >= 3:
        rng = np.random.default_rng(seed)
        others = np.flatnonzero(~sel)
        room = max(0, max_points - int(sel.sum()))
        if len(others) > room:
            others = np.sort(rng.choice(others, size=room, replace=False))
            note = (f"{len(others) + int(sel.sum()):,} of {len(df):,} pool items drawn "
                    "(a random sample + every selected item)")
        map_rows = np.sort(np.concatenate([np.flatnonzero(sel), others]))
        from sklearn.decomposition import PCA

        pca = PCA(n_components=2, random_state=seed)
        map_xy = pca.fit_transform(emb[map_rows].astype(np.float64))
        explained = (float(pca.explained_variance_ratio_[0]), float(pca.explained_variance_ratio_[1]))
    else:
        note = "the model gave no embeddings for the pool" if emb.shape[1] < 2 else "too few pool items for a map"
    view = PoolView(item_ids=ids, predicted=df["label"].fillna("none").astype(str).tolist(),
                    confidence=df["confidence"].to_numpy(np.float32), uncertainty=unc, uncertainty_name=unc_name,
                    selected=sel, map_xy=map_xy, map_rows=map_rows, map_note=note, explained=explained)
    boxes = {p.item_id: p for p in box_preds} if box_preds is not None else {}
    return view, "", boxes


def _quarantine(workdir: Path, summary: RoundSummary, *, since: str | None) -> list[QuarantineRow]:
    """Quarantine rows; ``new`` for those written after ``since`` (the previous round's end:
    a round scans the folders before it opens) and before this round finished."""
    rows = read_quarantine_csv(Path(workdir) / "quarantine.csv")
    start = _parse(since) or datetime.min.replace(tzinfo=timezone.utc)
    end = _parse(summary.finished_at) if summary.finished_at else None
    out = []
    for r in rows:
        t = _parse(r["time"]) if r["time"] else None
        new = t is not None and start is not None and t >= start and (end is None or t <= end)
        out.append(QuarantineRow(r["path"], r["reason"], r["time"], new))
    return out


def _parse(text: str | None) -> datetime | None:
    try:
        return datetime.fromisoformat(text) if text else None
    except ValueError:
        return None


def _per_class(cfg: Config, history: Sequence[RoundSummary]) -> tuple[str, dict[str, list[float | None]]]:
    key, name = ("per_class_f1", "F1") if cfg.task == "classify" else ("per_class_ap50", "AP50")
    per: dict[str, list[float | None]] = {c: [] for c in cfg.classes}
    for h in history:
        values = h.metrics.get(key) or {}
        for c in cfg.classes:
            v = values.get(c)
            per[c].append(None if v is None else float(v))
    return name, per


def gather_round(cfg: Config, ledger: Ledger, round_id: int, *, max_points: int | None = None,
                 max_thumbnails: int | None = None, max_corrections: int = 200,
                 rows: Sequence[LabelRow] | None = None, all_summaries: Sequence[RoundSummary] | None = None,
                 ) -> tuple[RoundReport, dict[str, Any]]:
    """Everything the page of ``round_id`` shows, as of now (a round's page written again later
    also shows the reviewers' answers to its queue, which arrive in the next round's sync).

    Returns the :class:`RoundReport` and the detection predictions by item id (to draw boxes
    on thumbnails; empty for classification). ``max_points``: pool items on the 2-D map;
    ``max_thumbnails``: selected items shown (both default to the config's ``report.*``);
    ``max_corrections``: correction rows listed.
    ``rows`` / ``all_summaries``: :meth:`Ledger.all_labels` / :func:`summaries`, when the
    caller already has them (one read for many pages).

    Raises ``ValueError`` naming the rounds there are when ``round_id`` is not one of them.
    """
    hist_all = list(all_summaries) if all_summaries is not None else summaries(cfg, ledger)
    known = [h.round_id for h in hist_all]
    if round_id not in known:
        there = f"rounds {known[0]}..{known[-1]}" if known else "no round yet"
        raise ValueError(f"round {round_id} is not in the ledger {ledger.path} ({there})")
    rows = list(rows) if rows is not None else ledger.all_labels()
    history = [h for h in hist_all if h.round_id <= round_id]
    summary = history[-1]
    rids = [h.round_id for h in history]
    workdir = cfg.workdir

    # confusion matrix of the holdout (classification)
    confusion, conf_note, holdout_n = None, "", 0
    hold_path = rounds_dir(workdir, round_id) / HOLDOUT_FILE
    if cfg.task != "classify":
        conf_note = ("detection: no confusion matrix (a box can be missed, extra or mislabelled); "
                     "per-class AP on the holdout is shown instead")
    elif not hold_path.exists():
        conf_note = (f"no {HOLDOUT_FILE} in {hold_path.parent}: this round was evaluated by a version that did not "
                     "keep the holdout predictions" if summary.metrics else "this round has not been evaluated yet")
    else:
        from sklearn.metrics import confusion_matrix

        hold = read_holdout_predictions(hold_path)
        holdout_n = len(hold)
        confusion = confusion_matrix(hold["truth"], hold["predicted"], labels=list(cfg.classes))

    # selection + pool
    sel_df = _selection(workdir, round_id)
    sel_ids = set() if sel_df is None else set(sel_df["item_id"])
    pool, pool_note, box_preds = pool_view(cfg, round_id, sel_ids, seed=cfg.selection.seed,
                                           max_points=cfg.report.max_points if max_points is None else max_points)

    # the latest human row of each item answered in this round's queue (a consensus decision
    # comes after the votes it settles, an edit after the version it replaces)
    answers = {r.item_id: r for r in rows if r.source == "human" and r.round == round_id}
    selected: list[SelectedItem] = []
    if sel_df is not None:
        items = {it.id: it for it in ledger.items()}
        shown = cfg.report.max_thumbnails if max_thumbnails is None else max_thumbnails
        top = sel_df.sort_values("rank").head(shown)
        for rank, item_id, predicted, confidence, score in zip(
                top["rank"], top["item_id"], top["predicted"], top["confidence"], top["score"]):
            iid = str(item_id)
            ans = answers.get(iid)
            pred_boxes = box_preds[iid].boxes if iid in box_preds else ()
            selected.append(SelectedItem(
                rank=int(rank), item_id=iid, path=items[iid].path if iid in items else Path("?"),
                predicted=None if pd.isna(predicted) else str(predicted), confidence=float(confidence),
                score=float(score), boxes=tuple(pred_boxes),
                answer=None if ans is None else answer_text(ans), outcome=None if ans is None else ans.review_outcome))

    reviewers = Counter(r.reviewer or "?" for r in review_answers(rows)
                        if _round_of(r) <= round_id and r.review_outcome in ("accepted", "corrected", "skipped"))
    fixes, n_fixes, pairs = corrections(workdir, ledger, rows, up_to=round_id, limit=max_corrections)
    per_name, per = _per_class(cfg, history)
    report = RoundReport(
        project=cfg.project, task=cfg.task, classes=list(cfg.classes), workdir=workdir,
        metric_name=cfg.stop.metric, target=cfg.stop.target, round=summary, history=history,
        per_class_name=per_name, per_class=per, confusion=confusion, confusion_note=conf_note, holdout_n=holdout_n,
        sources=label_sources(rows, rids), reviews=review_counts(rows, rids), reviewers=dict(reviewers.most_common()),
        corrections=fixes, corrections_total=n_fixes, correction_pairs=pairs,
        pool=pool, pool_note=pool_note, selected=selected, selected_total=0 if sel_df is None else len(sel_df),
        quarantine=_quarantine(workdir, summary, since=next(
            (h.finished_at for h in history if h.round_id == round_id - 1), None)),
        termination=ledger.termination(),
    )
    return report, box_preds
