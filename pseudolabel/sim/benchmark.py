"""Label-efficiency benchmark: simulated labelling campaigns on real data, strategy vs random.

For one dataset (``digits``: scikit-learn's bundled scans; ``fashion``: a Fashion-MNIST
subset; or **your own labelled data** with ``data=DIR``: an ImageFolder tree for
classification, a YOLO or COCO set for detection, split into seed / holdout / pool by
:mod:`pseudolabel.sim.bench_data`) the data is exported once (same seed set, holdout and pool for
every campaign); then,
for every random seed x strategy x pseudo-label setting, :func:`loops.campaign.run_campaign`
runs with the same model, the same batch per round and the same label budget, the stop
target set out of reach so that every campaign spends the whole budget. The seed varies the
model's initialisation and the selection's randomness. ``random`` should always be in the
run: it is the baseline every other strategy is compared with.

The reviewer is, by default, the real path: a local Label Studio server (loopback, data under
``<out>/label-studio``) answered by :class:`~pseudolabel.sim.simulated.SimulatedReviewer`
through the API, exactly like the demo. ``oracle=True`` swaps in the in-process
:class:`~pseudolabel.sim.oracle.OracleReviewer` (same answers, no server) for big sweeps.

Outputs in ``out_dir``: ``rounds.csv`` (every round of every campaign), ``learning_curve.png``
(labels vs holdout accuracy, mean +- std over seeds), ``summary.csv`` / ``summary.md``
(per strategy and pseudo setting: labels needed to reach 90 % / 95 % of the full-data
accuracy, normalised area under the learning curve, final accuracy, and the differences to
random; the labels at which the mean curve first reaches random's final accuracy and their
share of random's labels, the question "does it save labels?"; seconds per round; then the
mean curve by label count, the same question at each of random's budgets and the run's
settings), ``share_by_budget.csv`` (that question at every round of random's curve),
``reference.json`` (the full-data accuracy: the same model trained on the whole pool with its
true labels, and the settings).

``model.arch: frozen`` campaigns share one embedding cache (``runs/_shared/embeddings``): the
pool is embedded once per benchmark. With ``model.backbone: ssl`` the SimCLR backbone is
pretrained once on the pool (``pretrain.*`` settings, seeded by ``data_seed``) and every
campaign and the reference train their heads on it, as they would on an ImageNet backbone.

The metric is the task's headline holdout metric: accuracy for classification, mAP50 for
detection (the ``metric`` column of ``summary.csv`` says which; the ``*_accuracy`` columns
then hold mAP50). ``reference=False`` skips the full-data model (for detection it costs a YOLO
training on the whole pool); "labels to 90 % / 95 %" then stay empty.

Why this module is over 400 lines: one command: data preparation, the campaigns, the summary,
the tables and the plots of one benchmark run share its result frame.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import yaml
from numpy.typing import ArrayLike
from rich.console import Console
from rich.table import Table

DATASETS = ("digits", "fashion")
ROUND_COLUMNS = ["dataset", "strategy", "pseudo", "seed", "round", "labels", "accuracy", "macro_f1",
                 "corrections", "seconds", "pseudo_used", "map50", "map50_95", "edits_per_image"]
SUMMARY_COLUMNS = ["dataset", "strategy", "pseudo", "seeds", "reference_accuracy", "labels_to_90", "labels_to_95",
                   "auc", "final_accuracy", "final_accuracy_std", "final_labels", "auc_vs_random",
                   "final_vs_random", "labels_saved_95_vs_random", "metric", "round_seconds",
                   "labels_to_random_final", "share_of_random_labels"]


@dataclass
class BenchmarkResult:
    """``rounds``: one row per round of every campaign (:data:`ROUND_COLUMNS`); ``summary``:
    one row per (strategy, pseudo) (:data:`SUMMARY_COLUMNS`); ``reference``: full-data
    holdout metrics; ``paths``: the files written."""

    rounds: pd.DataFrame
    summary: pd.DataFrame
    reference: dict[str, Any]
    paths: dict[str, Path]
    seconds: float


# ------------------------------------------------------------------------------------------
# curve arithmetic (pure)


def labels_to_reach(labels: ArrayLike, accuracy: ArrayLike, target: float) -> float | None:
    """The fewest labels at which the curve reaches ``target`` accuracy, or None if it never does.

    ``labels`` (K,) increasing label counts, ``accuracy`` (K,) holdout accuracy at each. The
    answer is a measured point of the curve (no interpolation): the first ``labels[k]`` with
    ``accuracy[k] >= target``.
    """
    x, y = _curve(labels, accuracy)
    hit = np.flatnonzero(y >= target)
    return float(x[hit[0]]) if len(hit) else None


def normalised_auc(labels: ArrayLike, accuracy: ArrayLike) -> float:
    """Area under the learning curve (trapezoids) divided by its label range: the mean
    accuracy over the range, in [0, 1]; higher = better label efficiency. A single point
    gives its accuracy."""
    x, y = _curve(labels, accuracy)
    if len(x) == 1 or x[-1] == x[0]:
        return float(y.mean())
    area = float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2.0))
    return area / float(x[-1] - x[0])


def _curve(labels: ArrayLike, accuracy: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(labels, dtype=float), np.asarray(accuracy, dtype=float)
    if x.ndim != 1 or x.shape != y.shape or not len(x):
        raise ValueError(f"labels and accuracy must be 1-D of the same non-zero length, got {x.shape} and {y.shape}")
    if np.any(np.diff(x) < 0):
        raise ValueError(f"labels must be non-decreasing, got {x.tolist()}")
    return x, y


def mean_curve(rounds: pd.DataFrame, *, metric: str = "accuracy") -> pd.DataFrame:
    """Mean and std over seeds, per round: columns ``round, labels, accuracy, accuracy_std, n``
    (``accuracy`` = the mean of the ``metric`` column).

    Rounds are aligned by number: every campaign of one setting spends the same batch per
    round, so round k has the same label count in every seed (the mean is reported). A
    campaign that stopped early (a perfect holdout reaches the stop target) keeps its last
    row for the later rounds: it would not have asked for more labels."""
    rounds = _fill_stopped(rounds)
    g = rounds.groupby("round")
    out = pd.DataFrame({
        "labels": g["labels"].mean(),
        "accuracy": g[metric].mean(),
        "accuracy_std": g[metric].std(ddof=0),
        "n": g[metric].size(),
    }).reset_index()
    return out.sort_values("round").reset_index(drop=True)


def _fill_stopped(rounds: pd.DataFrame) -> pd.DataFrame:
    """Repeat each seed's last row up to the longest campaign's last round."""
    last_round = int(rounds["round"].max())
    parts = []
    for _, df in rounds.groupby("seed", sort=False):
        df = df.sort_values("round")
        tail = df.iloc[-1]
        extra = [tail.to_dict() | {"round": r} for r in range(int(tail["round"]) + 1, last_round + 1)]
        parts.append(pd.concat([df, pd.DataFrame(extra, columns=df.columns)]) if extra else df)
    return pd.concat(parts, ignore_index=True)


def summarise(rounds: pd.DataFrame, reference_accuracy: float | None, *, metric: str = "accuracy") -> pd.DataFrame:
    """One row per (dataset, strategy, pseudo) from ``rounds`` (:data:`ROUND_COLUMNS`);
    ``*_vs_random`` compare with ``random`` under the same pseudo setting (None without it).
    ``labels_saved_95_vs_random`` > 0 means fewer labels than random to reach 95 %.
    ``metric``: the rounds column summarised (``accuracy``, or ``map50`` for detection); the
    ``*_accuracy`` summary columns hold it. ``reference_accuracy`` None: no full-data
    reference, so no labels-to-90/95 %."""
    rows: list[dict[str, Any]] = []
    for (dataset, strategy, pseudo), df in rounds.groupby(["dataset", "strategy", "pseudo"], sort=False):
        mc = mean_curve(df, metric=metric)
        last = df.sort_values("round").groupby("seed").tail(1)     # each campaign's final model
        ref = reference_accuracy
        rows.append({
            "dataset": dataset, "strategy": strategy, "pseudo": bool(pseudo), "seeds": int(df["seed"].nunique()),
            "reference_accuracy": ref,
            "labels_to_90": None if ref is None else labels_to_reach(mc["labels"], mc["accuracy"], 0.90 * ref),
            "labels_to_95": None if ref is None else labels_to_reach(mc["labels"], mc["accuracy"], 0.95 * ref),
            "auc": normalised_auc(mc["labels"], mc["accuracy"]),
            "final_accuracy": float(last[metric].mean()),
            "final_accuracy_std": float(last[metric].std(ddof=0)),
            "final_labels": float(last["labels"].mean()),
        })
    out = pd.DataFrame(rows, columns=SUMMARY_COLUMNS[:11])
    rand = {r["pseudo"]: r for r in rows if r["strategy"] == "random"}

    def vs(r: pd.Series, key: str) -> float | None:
        base = rand.get(r["pseudo"])
        return None if base is None else float(r[key] - base[key])

    def saved(r: pd.Series) -> float | None:
        base = rand.get(r["pseudo"])
        if base is None or base["labels_to_95"] is None or pd.isna(r["labels_to_95"]):
            return None
        return float(base["labels_to_95"] - r["labels_to_95"])

    out["auc_vs_random"] = [vs(r, "auc") for _, r in out.iterrows()]
    out["final_vs_random"] = [vs(r, "final_accuracy") for _, r in out.iterrows()]
    out["labels_saved_95_vs_random"] = [saved(r) for _, r in out.iterrows()]
    out["metric"] = metric
    # wall seconds of a round (train, predict the pool and holdout, select, queue, answer), mean
    # over every round of every seed
    out["round_seconds"] = [float(df["seconds"].mean()) for _, df in
                            rounds.groupby(["dataset", "strategy", "pseudo"], sort=False)]
    # The label-saving question: the fewest labels at which the mean curve reaches random's
    # final accuracy (same pseudo setting), and that count as a share of random's final labels.
    curves = {(st, bool(ps)): mean_curve(df, metric=metric)
              for (_, st, ps), df in rounds.groupby(["dataset", "strategy", "pseudo"], sort=False)}

    def to_random_final(r: pd.Series) -> float | None:
        base = rand.get(r["pseudo"])
        if base is None:
            return None
        mc = curves[(r["strategy"], bool(r["pseudo"]))]
        return labels_to_reach(mc["labels"], mc["accuracy"], float(base["final_accuracy"]))

    out["labels_to_random_final"] = [to_random_final(r) for _, r in out.iterrows()]
    out["share_of_random_labels"] = [
        None if v is None else float(v / rand[r["pseudo"]]["final_labels"])
        for v, (_, r) in zip(out["labels_to_random_final"], out.iterrows())]
    return out[SUMMARY_COLUMNS]


def _setting_label(strategy: Any, pseudo: Any) -> str:
    """A (strategy, pseudo) setting's name in tables and plots: ``margin``, ``margin + pseudo``."""
    return f"{strategy}{' + pseudo' if pseudo else ''}"


def share_by_budget(rounds: pd.DataFrame, *, metric: str = "accuracy") -> pd.DataFrame:
    """The label-saving question at every budget, not only the last: for each round of
    ``random``'s mean curve (label count ``budget``, mean ``metric`` ``random_metric``) and each
    (strategy, pseudo) of the same pseudo setting, the fewest labels at which that setting's
    mean curve reaches ``random_metric`` (``labels``; NaN if never) and ``share`` = labels /
    budget. ``random``'s own rows show how flat its curve is: a share under 100 % means random
    reached the same mean earlier and then dipped. Empty without ``random`` in ``rounds``.

    Why: when random's curve is flat near the end, the final share (:func:`summarise`) swings
    with a few tenths of a point; the shares at every budget show whether a saving holds."""
    cols = ["strategy", "pseudo", "budget", "random_metric", "labels", "share"]
    curves = {(st, bool(ps)): mean_curve(df, metric=metric)
              for (st, ps), df in rounds.groupby(["strategy", "pseudo"], sort=False)}
    rows: list[dict[str, Any]] = []
    for (st, ps), mc in curves.items():
        base = curves.get(("random", ps))
        if base is None:
            continue
        for budget, target in zip(base["labels"], base["accuracy"]):
            n = labels_to_reach(mc["labels"], mc["accuracy"], float(target))
            rows.append({"strategy": st, "pseudo": ps, "budget": float(budget), "random_metric": float(target),
                         "labels": np.nan if n is None else n,
                         "share": np.nan if n is None or budget <= 0 else n / float(budget)})
    return pd.DataFrame(rows, columns=cols)


def share_markdown(shares: pd.DataFrame, *, columns: int = 8) -> list[str]:
    """Markdown table lines of :func:`share_by_budget`: one row per (strategy, pseudo), one
    column per budget (at most ``columns``, evenly spaced, always the last); cells ``labels
    (share)``, ``-`` where the setting never reaches random's mean at that budget."""
    if shares.empty:
        return []
    budgets = sorted(shares["budget"].unique())
    if len(budgets) > columns:
        keep = np.unique(np.round(np.linspace(0, len(budgets) - 1, columns)).astype(int))
        budgets = [budgets[i] for i in keep]
    out = ["| strategy / random's labels | " + " | ".join(f"{b:.0f}" for b in budgets) + " |",
           "|---|" + "---|" * len(budgets)]
    for (st, ps), df in shares.groupby(["strategy", "pseudo"], sort=False):
        by = {float(r["budget"]): r for _, r in df.iterrows()}
        cells = []
        for b in budgets:
            r = by.get(float(b))
            cells.append("-" if r is None or pd.isna(r["labels"]) else f"{r['labels']:.0f} ({r['share']:.0%})")
        out.append(f"| {_setting_label(st, ps)} | " + " | ".join(cells) + " |")
    return out


# ------------------------------------------------------------------------------------------
# data and reference


def _export(dataset: str, data_root: Path, *, data_seed: int, n_pool: int | None, n_holdout: int,
            seed_per_class: int) -> tuple[Any, list[str], int]:
    """Export ``dataset`` under ``data_root``; returns (data with .root/.truth, classes, image size)."""
    if dataset == "digits":
        from pseudolabel.sim.demo import DIGIT_CLASSES, export_digits

        data = export_digits(data_root, seed_per_class=seed_per_class, holdout=n_holdout, seed=data_seed)
        if n_pool is not None:
            # export_digits writes every remaining image to the pool; keep a deterministic subset.
            pool = sorted((data_root / "pool").glob("*.png"))
            if n_pool < 1:
                raise ValueError(f"n_pool must be >= 1, got {n_pool}")
            for extra in pool[n_pool:]:
                extra.unlink()
        return data, DIGIT_CLASSES, 32
    if dataset == "fashion":
        from pseudolabel.sim.fashion import FASHION_CLASSES, export_fashion

        return export_fashion(data_root, n_pool=3000 if n_pool is None else n_pool, n_holdout=n_holdout,
                              seed_per_class=seed_per_class, seed=data_seed), FASHION_CLASSES, 28
    raise ValueError(f"unknown dataset {dataset!r}; choose one of: {', '.join(DATASETS)}")


def full_data_reference(cfg: Any, truth: dict[str, Any]) -> dict[str, Any]:
    """Train the campaign's model once on seed + the whole pool with true labels and score it
    on the holdout: the accuracy (detection: mAP50) an unlimited labelling budget would buy."""
    import tempfile

    from pseudolabel.data.ingest import scan_folder
    from pseudolabel.models import registry
    from pseudolabel.tasks import task_for

    t0 = time.perf_counter()
    task = task_for(cfg)
    seed, hold = task.read("seed"), task.read("holdout")
    pool = scan_folder(cfg.data.pool.path, recursive=True)
    train = [task.seed_annotation(it, seed.labels[it.id]) for it in seed.items]
    # The pool with its true labels, as if a reviewer had answered every image.
    train += [dataclasses.replace(task.seed_annotation(it, truth[it.id]), source="human") for it in pool.items]
    model = registry.build(cfg, n_train=len(train)).fit(train)
    with tempfile.TemporaryDirectory() as tmp:
        m = task.evaluate(model, hold.items, hold.labels, Path(tmp))
    head = m["accuracy"] if cfg.task == "classify" else m["map50"]
    extra = {"macro_f1": m["macro_f1"]} if cfg.task == "classify" else {"map50": m["map50"], "map50_95": m["map50_95"]}
    return {"accuracy": head, **extra, "train_size": len(train), "holdout_size": len(hold.items),
            "seconds": round(time.perf_counter() - t0, 1)}


@dataclass
class _Prepared:
    """The exported data a benchmark runs on."""

    name: str
    task: str
    root: Path
    truth: dict[str, Any]
    classes: list[str]
    image_size: int
    n_seed: int
    sizes: dict[str, tuple[int, int]]
    bench: Any = None            # pseudolabel.sim.bench_data.BenchData for --data
    n_pool: int = 0
    n_holdout: int = 0


def pretrain_ssl_once(cfg: Any, cache_dir: Path, *, seed: int, console: Console) -> dict[str, Any]:
    """SimCLR on the benchmark's pool (``cfg.pretrain`` settings, ``seed``), once for every
    campaign; returns ``path`` (the backbone file for ``model.backbone: ssl:<path>``),
    ``steps``, ``seconds`` (training time), ``stopped``, ``loss``, ``pool`` (images), ``seed``."""
    from pseudolabel.data.ingest import scan_folder
    from pseudolabel.models.backbone.ssl import PretrainSettings, pretrain_backbone

    p = cfg.pretrain
    settings = PretrainSettings(image_size=p.image_size, width=p.width, max_steps=p.max_steps,
                                max_minutes=p.max_minutes, batch_size=p.batch_size, lr=p.lr,
                                temperature=p.temperature, checkpoint_every=p.checkpoint_every,
                                max_images=p.max_images, seed=seed)
    pool = scan_folder(cfg.data.pool.path, recursive=True).items
    console.print(f"self-supervised pretraining (SimCLR) on the pool: {len(pool)} images, at most "
                  f"{p.max_steps} steps / {p.max_minutes:g} min, shared by every campaign...")
    res = pretrain_backbone(pool, settings=settings, cache_dir=cache_dir, allow_train=p.enabled,
                            device=cfg.model.device, progress=False, log=console.print)
    console.print(f"ssl backbone: {res.steps} steps in {res.seconds:.0f} s ({res.stopped}), loss {res.loss:.3f}")
    return {"path": str(res.path), "steps": res.steps, "seconds": round(res.seconds, 1), "stopped": res.stopped,
            "loss": None if np.isnan(res.loss) else round(float(res.loss), 4), "pool": len(pool), "seed": seed}


# ------------------------------------------------------------------------------------------
# the benchmark


def run_benchmark(
    *,
    dataset: str | None = "digits",
    data: Path | None = None,
    strategies: Sequence[str] = ("entropy", "margin", "hybrid", "random"),
    seeds: Sequence[int] = (0, 1, 2),
    rounds: int = 8,
    batch_size: int = 20,
    pseudo_settings: Sequence[bool] = (False, True),
    oracle: bool = False,
    out_dir: Path,
    epochs: int | None = None,
    min_steps: int | None = None,
    seed_per_class: int = 2,
    seed_size: int | None = None,
    seed_strategy: str = "random",
    n_pool: int | None = None,
    n_holdout: int | None = None,
    data_seed: int = 0,
    reference: bool = True,
    overrides: Sequence[str] = (),
    console: Console | None = None,
    verbose: bool = False,
    torch_threads: int | None = None,
) -> BenchmarkResult:
    """Run every (seed, strategy, pseudo) campaign and write the reports.

    - ``dataset`` (``digits`` / ``fashion``) or ``data`` (a folder of your labelled images,
      see :mod:`pseudolabel.sim.bench_data`; it wins over ``dataset``);
    - ``rounds``: review rounds per campaign; each queues ``batch_size`` items, so the label
      budget is ``seed set + rounds * batch_size`` and a campaign trains ``rounds + 1`` models;
    - ``epochs`` / ``min_steps``: the model's training length (same for every campaign and
      for the full-data reference; ``None``: 30 / 300 for classification, the detection
      demo's settings for detection);
    - ``seed_per_class`` (classification) / ``seed_size`` (detection, or the total of a
      cold-start seed set): the seed set; ``seed_strategy``: ``random`` (stratified) or a
      cold-start method (``centroid``, ``typiclust``, ``probcover``, ``kcenter``) choosing the
      seed set label-free on pixel embeddings (``data`` only);
    - ``n_pool``: pool size (default: every image left for digits and ``data``, 3,000 for
      fashion); ``n_holdout``: holdout size (default 400 for digits, 1,000 for fashion, 20 %
      of ``data`` up to 1,000 / 200 images for classification / detection);
    - ``reference``: train the full-data model (the yardstick of "labels to 90 / 95 %");
    - ``overrides``: extra ``section.key=value`` config overrides applied to every campaign
      and to the reference (e.g. ``model.arch=resnet18``, ``selection.probcover.delta=0.3``);
    - ``torch_threads``: CPU threads torch may use during the run (restored afterwards);
      ``1`` is much faster on a small, busy machine, where intra-op threads oversubscribe.

    Existing ``data/``, ``runs/`` and ``label-studio/`` folders in ``out_dir`` are replaced.
    """
    import torch

    kw = dict(dataset=dataset, data=data, strategies=strategies, seeds=seeds, rounds=rounds, batch_size=batch_size,
              pseudo_settings=pseudo_settings, oracle=oracle, out_dir=out_dir, epochs=epochs, min_steps=min_steps,
              seed_per_class=seed_per_class, seed_size=seed_size, seed_strategy=seed_strategy, n_pool=n_pool,
              n_holdout=n_holdout, data_seed=data_seed, reference=reference, overrides=overrides, console=console,
              verbose=verbose)
    if torch_threads is None:
        return _run_benchmark(**kw)  # type: ignore[arg-type]
    if isinstance(torch_threads, bool) or torch_threads < 1:
        raise ValueError(f"torch_threads must be an integer >= 1 or None, got {torch_threads!r}")
    before = torch.get_num_threads()
    torch.set_num_threads(torch_threads)
    try:
        return _run_benchmark(**kw)  # type: ignore[arg-type]
    finally:
        torch.set_num_threads(before)


def _prepare(*, dataset: str | None, data: Path | None, data_root: Path, data_seed: int, n_pool: int | None,
             n_holdout: int | None, seed_per_class: int, seed_size: int | None, seed_strategy: str) -> _Prepared:
    if data is not None:
        from pseudolabel.sim.bench_data import prepare

        bd = prepare(data, data_root, seed_per_class=seed_per_class, n_seed=seed_size, n_holdout=n_holdout,
                     n_pool=n_pool, data_seed=data_seed, seed_strategy=seed_strategy)
        return _Prepared(name=Path(data).resolve().name, task=bd.task, root=data_root, truth=bd.truth,
                         classes=bd.classes, image_size=bd.image_size, n_seed=len(bd.seed), sizes=bd.sizes, bench=bd,
                         n_pool=len(bd.pool), n_holdout=len(bd.holdout))
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of: {', '.join(DATASETS)} (or pass data=DIR)")
    if seed_strategy != "random":
        raise ValueError("seed_strategy (a cold-start seed set) needs data=DIR; --dataset digits/fashion use a "
                         "stratified random seed set")
    hold = n_holdout if n_holdout is not None else (400 if dataset == "digits" else 1000)
    exported, classes, image_size = _export(dataset, data_root, data_seed=data_seed, n_pool=n_pool, n_holdout=hold,
                                            seed_per_class=seed_per_class)
    return _Prepared(name=dataset, task="classify", root=data_root, truth=exported.truth, classes=list(classes),
                     image_size=image_size, n_seed=seed_per_class * len(classes), sizes={},
                     n_pool=_n_files(data_root / "pool"), n_holdout=_n_files(data_root / "holdout"))


def _n_files(folder: Path) -> int:
    return sum(1 for f in folder.rglob("*") if f.is_file())


def _campaign_config(prep: _Prepared, sub: Path, *, strategy: str, pseudo: bool, seed: int, project: str,
                     rounds: int, batch_size: int, epochs: int | None, min_steps: int | None,
                     overrides: Sequence[str], shared: Path | None = None) -> Any:
    """The config of one campaign in ``sub``; ``shared``: the benchmark's shared folder
    (:data:`SHARED`), whose embedding cache a frozen-backbone campaign uses."""
    from pseudolabel.sim.demo import DETECT_DEFAULTS, demo_config
    from pseudolabel.config import dump_config, load_config, set_dotted

    over: dict[str, Any] = {
        "classes": list(prep.classes), "model.image_size": prep.image_size, "model.seed": seed,
        "selection.seed": seed, "selection.batch_size": batch_size, "pseudo.enabled": pseudo, "stop.target": 1.0,
        "stop.label_budget": prep.n_seed + rounds * batch_size, "stop.max_rounds": rounds + 1,
        "report.enabled": False,   # hundreds of simulated rounds: no HTML page for each
    }
    if prep.task == "classify":
        over |= {"model.epochs": 30 if epochs is None else epochs}
        raw = demo_config(sub, prep.root, strategy=strategy, project=project, **over)
        raw["model"]["min_steps"] = 300 if min_steps is None else min_steps
    else:
        bd = prep.bench
        raw = {"project": project, "task": "detect", "workdir": str(sub),
               "data": {"seed": {"format": "yolo", "path": str(bd.seed_dir), "labels": str(bd.seed_labels)},
                        "pool": {"path": str(bd.pool_dir)},
                        "holdout": {"format": "yolo", "path": str(bd.holdout_dir), "labels": str(bd.holdout_labels)}},
               "label_studio": {"images_root": str(prep.root)}}
        for section, values in DETECT_DEFAULTS.items():
            raw[section] = {**values}
        raw["selection"]["strategy"] = strategy
        over |= {"stop.metric": "map50"}
        if epochs is not None:
            over["model.epochs"] = epochs
        if min_steps is not None:
            over["model.min_steps"] = min_steps
        for dotted, value in over.items():
            set_dotted(raw, dotted, value, origin=f"benchmark({dotted}=...)")
    sub.mkdir(parents=True, exist_ok=True)
    (sub / "config.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    cfg = load_config(sub / "config.yaml", overrides=overrides, environ={})
    if overrides:  # the campaign folder holds the settings it ran with, --set included
        dump_config(cfg, sub / "config.yaml")
    if cfg.model.arch == "frozen" and shared is not None:
        share_embeddings(sub, shared / "embeddings")
    return cfg


SHARED = "_shared"
"""Folder under ``<out>/runs`` holding what every campaign of one benchmark shares: the
embedding cache of a frozen backbone and the self-supervised pretraining."""


def share_embeddings(workdir: Path, shared: Path) -> None:
    """Point ``<workdir>/embeddings`` (where a frozen-backbone model caches its vectors) at
    ``shared``, so the pool is embedded once per benchmark, not once per campaign. Safe: the
    cache is keyed by backbone identity and input size, and vectors by item id (a content
    hash); every campaign of a benchmark sees the same images."""
    shared.mkdir(parents=True, exist_ok=True)
    link = workdir / "embeddings"
    if link.is_symlink() and link.resolve() == shared.resolve():
        return
    if link.exists() or link.is_symlink():
        raise ValueError(f"{link} exists and is not the benchmark's shared embedding cache {shared}; "
                         "the benchmark starts every campaign in a fresh folder")
    link.symlink_to(shared.resolve(), target_is_directory=True)


def _run_benchmark(
    *, dataset: str | None, data: Path | None, strategies: Sequence[str], seeds: Sequence[int], rounds: int,
    batch_size: int, pseudo_settings: Sequence[bool], oracle: bool, out_dir: Path, epochs: int | None,
    min_steps: int | None, seed_per_class: int, seed_size: int | None, seed_strategy: str, n_pool: int | None,
    n_holdout: int | None, data_seed: int, reference: bool, overrides: Sequence[str], console: Console | None,
    verbose: bool,
) -> BenchmarkResult:
    from loops.campaign import run_campaign
    from pseudolabel.strategies import STRATEGIES

    console = console or Console()
    quiet = Console(quiet=True)
    if not strategies or any(s not in STRATEGIES for s in strategies):
        bad = [s for s in strategies if s not in STRATEGIES] or list(strategies)
        raise ValueError(f"unknown strategies {bad!r}; choose from: {', '.join(STRATEGIES)}")
    if rounds < 1 or batch_size < 1:
        raise ValueError(f"rounds and batch_size must be >= 1, got rounds={rounds}, batch_size={batch_size}")
    if not seeds or not pseudo_settings:
        raise ValueError("seeds and pseudo_settings need at least one value each")
    if "random" not in strategies:
        console.print("[yellow]warning:[/] 'random' is not among the strategies: no baseline to compare with")
    t0 = time.perf_counter()
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    for sub in ("data", "runs", "label-studio"):
        shutil.rmtree(out_dir / sub, ignore_errors=True)
    data_root = out_dir / "data"
    prep = _prepare(dataset=dataset, data=data, data_root=data_root, data_seed=data_seed, n_pool=n_pool,
                    n_holdout=n_holdout, seed_per_class=seed_per_class, seed_size=seed_size,
                    seed_strategy=seed_strategy)
    metric = "accuracy" if prep.task == "classify" else "map50"
    if prep.task != "classify":
        from pseudolabel.strategies.detection import detection_strategies

        bad = [s for s in strategies if s not in detection_strategies()]
        if bad:
            raise ValueError(f"strategies {bad!r} do not apply to detection; choose from: "
                             f"{', '.join(detection_strategies())}")
    if prep.bench is not None:
        bd = prep.bench
        skipped = ", ".join(f"{v} {k}" for k, v in bd.skipped.items() if v)
        console.print(f"[bold]benchmark[/]: {data} ({bd.layout}, {prep.task}, {len(prep.classes)} classes): "
                      f"seed {len(bd.seed)} ({seed_strategy}), holdout {len(bd.holdout)}, pool {len(bd.pool)} "
                      f"images, image size {prep.image_size}" + (f"; left out: {skipped}" if skipped else ""))
    console.print(f"[bold]benchmark[/]: {prep.name}, {len(prep.truth)} images exported to {data_root}; "
                  f"{len(seeds)} seeds x {len(strategies)} strategies x {len(pseudo_settings)} pseudo settings, "
                  f"{rounds} rounds of {batch_size} ({'oracle' if oracle else 'Label Studio'} reviewer)")

    def make_cfg(sub: Path, strategy: str, pseudo: bool, seed: int, project: str) -> Any:
        return _campaign_config(prep, sub, strategy=strategy, pseudo=pseudo, seed=seed, project=project,
                                rounds=rounds, batch_size=batch_size, epochs=epochs, min_steps=min_steps,
                                overrides=overrides, shared=out_dir / "runs" / SHARED)

    probe = make_cfg(out_dir / "runs" / SHARED / "config", "random", False, data_seed, f"bench-{prep.name}-probe")
    ssl: dict[str, Any] | None = None
    if probe.model.arch == "frozen" and probe.model.backbone == "ssl":
        # Pretrained once on the pool and shared by every campaign and the reference, like an
        # ImageNet backbone: otherwise each campaign seed would pretrain its own (minutes each).
        ssl = pretrain_ssl_once(probe, out_dir / "runs" / SHARED / "pretrain", seed=data_seed, console=console)
        overrides = [*overrides, f"model.backbone=ssl:{ssl['path']}"]

    ref: dict[str, Any] = {"accuracy": None, "metric": metric}
    if reference:
        ref_cfg = make_cfg(out_dir / "runs" / "reference", "random", False, data_seed, "reference")
        console.print("training the full-data reference (whole pool, true labels)...")
        ref = full_data_reference(ref_cfg, prep.truth) | {"metric": metric}
        console.print(f"full-data reference: holdout {metric} {ref['accuracy']:.4f} "
                      f"({ref['train_size']} training images, {ref['seconds']} s)")

    all_rows: list[dict[str, Any]] = []
    combos = [(s, st, p) for s in seeds for p in pseudo_settings for st in strategies]

    def run_all(make_reviewer: Callable[[Any, str, int], tuple[Any, Callable[[], Any]]]) -> None:
        for k, (seed, strategy, pseudo) in enumerate(combos, 1):
            tag = f"{strategy}-{'pseudo' if pseudo else 'nopseudo'}-s{seed}"
            cfg = make_cfg(out_dir / "runs" / tag, strategy, pseudo, seed, f"bench-{prep.name}-{tag}")
            reviewer, answer_fn = make_reviewer(cfg, tag, seed)

            def answer(res: Any, answer_fn: Callable[[], Any] = answer_fn) -> dict[str, Any]:
                st = answer_fn()
                out = {"answered": st.answered, "accepted": st.accepted, "corrections": st.corrected}
                if hasattr(st, "edits"):
                    out["edits_per_image"] = st.edits / st.answered if st.answered else 0.0
                return out

            res = run_campaign(cfg, reviewer, answer=answer, console=console if verbose else quiet, progress=False)
            for r in res.rows:
                all_rows.append({"dataset": prep.name, "strategy": strategy, "pseudo": pseudo, "seed": seed,
                                 "round": r["round"], "labels": r["labels"], "accuracy": r["accuracy"],
                                 "macro_f1": r["macro_f1"], "corrections": r["corrections"],
                                 "seconds": r["seconds"], "pseudo_used": r.get("pseudo", 0),
                                 "map50": r.get("map50"), "map50_95": r.get("map50_95"),
                                 "edits_per_image": r.get("edits_per_image")})
            last = res.rows[-1]
            console.print(f"[{k}/{len(combos)}] {tag}: {last['labels']} labels, {metric} {last[metric]:.4f} "
                          f"({res.seconds:.1f} s)")

    if oracle:
        from pseudolabel.sim.oracle import BoxOracleReviewer, OracleReviewer

        def oracle_reviewer(cfg: Any, tag: str, seed: int) -> tuple[Any, Callable[[], Any]]:
            if prep.task == "classify":
                rv: Any = OracleReviewer(prep.truth, cfg.classes, seed=seed, project_title=cfg.project)
            else:
                rv = BoxOracleReviewer(prep.truth, cfg.classes, sizes=prep.sizes, task=cfg.task,
                                       project_title=cfg.project)
            return rv, rv.answer_pending

        run_all(oracle_reviewer)
    else:
        from pseudolabel.review.client import LabelStudioClient
        from pseudolabel.review.server import LabelStudioServer
        from pseudolabel.sim.simulated import SimulatedReviewer
        from pseudolabel.sim.simulated_boxes import SimulatedBoxReviewer

        console.print("starting Label Studio on 127.0.0.1 (first start runs migrations, ~30 s)...")
        with LabelStudioServer(data_dir=out_dir / "label-studio", images_root=data_root) as server:
            def ls_reviewer(cfg: Any, tag: str, seed: int) -> tuple[Any, Callable[[], Any]]:
                client = LabelStudioClient(url=server.url, token=server.token,
                                           project_title=cfg.label_studio.project_title or cfg.project,
                                           classes=cfg.classes, task_type=cfg.task, images_root=data_root)
                client.ensure_project()
                if prep.task == "classify":
                    sim: Any = SimulatedReviewer(client=client, truth=prep.truth, classes=cfg.classes, seed=seed)
                else:
                    sim = SimulatedBoxReviewer(client, prep.truth, cfg.classes, sizes=prep.sizes)
                return client, sim.answer_pending

            run_all(ls_reviewer)

    rounds_df = pd.DataFrame(all_rows, columns=ROUND_COLUMNS)
    summary = summarise(rounds_df, None if ref.get("accuracy") is None else float(ref["accuracy"]), metric=metric)
    settings = {"seeds": ",".join(map(str, seeds)), "seed set": prep.n_seed, "rounds": rounds,
                "batch": batch_size, "pool": prep.n_pool, "holdout": prep.n_holdout, "reviewer": "oracle" if oracle else "Label Studio",
                "overrides": " ".join(overrides) or "none", "wall time": f"{(time.perf_counter() - t0) / 60:.1f} min"}
    if ssl is not None:
        ref["ssl_pretraining"] = ssl
    info = ref | {"dataset": prep.name, "settings": settings}
    paths = write_reports(out_dir, rounds_df, summary, info)
    seconds = time.perf_counter() - t0
    title = f"{prep.name}: label efficiency" + (
        f" (full-data {metric} {ref['accuracy']:.4f})" if ref.get("accuracy") is not None else " (no reference)")
    console.print(summary_table(summary, title=title))
    console.print(f"benchmark wall time {seconds:.0f} s; reports in {out_dir}")
    return BenchmarkResult(rounds=rounds_df, summary=summary, reference=ref, paths=paths, seconds=seconds)


# ------------------------------------------------------------------------------------------
# reports


def write_reports(out_dir: Path, rounds: pd.DataFrame, summary: pd.DataFrame,
                  reference: dict[str, Any]) -> dict[str, Path]:
    """Write rounds.csv, summary.csv, summary.md, reference.json, learning_curve.png and
    share_by_budget.csv."""
    from pseudolabel.utils import atomic_write_bytes, atomic_write_text

    paths = {name: out_dir / name for name in
             ("rounds.csv", "summary.csv", "summary.md", "reference.json", "learning_curve.png",
              "share_by_budget.csv")}
    atomic_write_text(paths["rounds.csv"], rounds.to_csv(index=False))
    metric = str(reference.get("metric", "accuracy"))
    atomic_write_text(paths["share_by_budget.csv"], share_by_budget(rounds, metric=metric).to_csv(index=False))
    atomic_write_text(paths["summary.csv"], summary.to_csv(index=False))
    atomic_write_text(paths["summary.md"], summary_markdown(summary, reference, rounds))
    atomic_write_text(paths["reference.json"], json.dumps(reference, indent=2))
    atomic_write_bytes(paths["learning_curve.png"], learning_curve_png(rounds, reference))
    return paths


def _fmt(v: Any, spec: str = ".4f") -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "-"
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (float, np.floating)) and spec == "labels":
        return f"{v:.0f}"
    if isinstance(v, (float, np.floating)):
        return format(v, spec)
    return str(v)


_DISPLAY = [("strategy", "strategy", ""), ("pseudo", "pseudo", ""), ("seeds", "seeds", ""),
            ("labels_to_90", "labels to 90%", "labels"), ("labels_to_95", "labels to 95%", "labels"),
            ("auc", "AUC (norm.)", ".4f"), ("final_accuracy", "final {metric}", ".4f"),
            ("final_accuracy_std", "± std", ".4f"), ("auc_vs_random", "AUC vs random", "+.4f"),
            ("final_vs_random", "final vs random", "+.4f"), ("labels_saved_95_vs_random", "labels saved @95%", "labels"),
            ("labels_to_random_final", "labels to random's final", "labels"),
            ("share_of_random_labels", "share of random's labels", ".0%"), ("round_seconds", "s / round", ".1f")]


def _metric_name(summary: pd.DataFrame) -> str:
    m = str(summary["metric"].iloc[0]) if "metric" in summary and len(summary) else "accuracy"
    return "acc" if m == "accuracy" else m


def summary_markdown(summary: pd.DataFrame, reference: dict[str, Any], rounds: pd.DataFrame | None = None) -> str:
    """The summary table (and, with ``rounds``, the mean curve: the metric by labels per
    setting; and the run's settings when ``reference`` holds ``settings``) as Markdown."""
    metric = reference.get("metric", "accuracy")
    ref = reference.get("accuracy")
    if ref is None:
        head = (f"No full-data reference was trained (--no-reference): labels to 90 % / 95 % are not computed; "
                f"compare the curves, AUC and final holdout {metric}.")
    else:
        head = (f"Full-data reference (same model, whole pool with true labels): holdout {metric} "
                f"**{ref:.4f}**; 90 % of it = {0.9 * ref:.4f}, 95 % = {0.95 * ref:.4f}. "
                "'-' = not reached within the budget.")
    name = _metric_name(summary)
    lines = [f"# Label efficiency: {reference.get('dataset', '')}", "", head, "",
             "| " + " | ".join(h.format(metric=name) for _, h, _ in _DISPLAY) + " |",
             "|" + "---|" * len(_DISPLAY)]
    for _, r in summary.iterrows():
        lines.append("| " + " | ".join(_fmt(r[k], f) for k, _, f in _DISPLAY) + " |")
    lines += ["", "'labels to random's final': the fewest labels at which the mean curve reaches random's final "
              f"{metric} (same pseudo setting); 'share of random's labels': that over random's final label count. "
              "'s / round': wall seconds per round (train, predict pool and holdout, select, answer), mean."]
    if rounds is not None and len(rounds):
        lines += ["", f"Holdout {metric} by labels, mean ± std over seeds:", "", *curve_markdown(rounds, metric=metric)]
        shares = share_markdown(share_by_budget(rounds, metric=metric))
        if shares:
            lines += ["", f"Labels each setting needs to reach random's mean {metric} at random's budget (share of "
                      "that budget; `share_by_budget.csv` has every round). A saving that holds shows at every "
                      "budget, not only the last:", "", *shares]
    settings = reference.get("settings")
    if settings:
        lines += ["", "Settings: " + ", ".join(f"{k} = {v}" for k, v in settings.items())]
    if reference.get("ssl_pretraining"):
        sp = reference["ssl_pretraining"]
        lines += ["", f"Self-supervised backbone: SimCLR on the {sp['pool']} pool images, {sp['steps']} steps in "
                  f"{sp['seconds']} s ({sp['stopped']}), seed {sp['seed']}; shared by every campaign."]
    return "\n".join(lines) + "\n"


def curve_markdown(rounds: pd.DataFrame, *, metric: str = "accuracy") -> list[str]:
    """Markdown table lines: one row per (strategy, pseudo), one column per label count;
    cells ``mean ± std`` over seeds of ``metric`` at that round (:func:`mean_curve`)."""
    curves: dict[str, dict[int, str]] = {}
    for (strategy, pseudo), df in rounds.groupby(["strategy", "pseudo"], sort=False):
        mc = mean_curve(df, metric=metric)
        curves[_setting_label(strategy, pseudo)] = {
            int(round(n)): f"{m:.4f} ± {sd:.3f}" for n, m, sd in zip(mc["labels"], mc["accuracy"], mc["accuracy_std"])}
    cols = sorted({k for c in curves.values() for k in c})
    out = ["| labels | " + " | ".join(str(c) for c in cols) + " |", "|---|" + "---|" * len(cols)]
    for name, c in curves.items():
        out.append(f"| {name} | " + " | ".join(c.get(k, "-") for k in cols) + " |")
    return out


def summary_table(summary: pd.DataFrame, *, title: str = "label efficiency") -> Table:
    """The summary (:data:`SUMMARY_COLUMNS` rows) as a rich table for the console, the same
    columns as :func:`summary_markdown`."""
    t = Table(title=title)
    name = _metric_name(summary)
    for _, h, _ in _DISPLAY:
        t.add_column(h.format(metric=name), justify="right")
    for _, r in summary.iterrows():
        t.add_row(*(_fmt(r[k], f) for k, _, f in _DISPLAY))
    return t


def learning_curve_png(rounds: pd.DataFrame, reference: dict[str, Any]) -> bytes:
    """Labels vs the holdout metric (``reference['metric']``: accuracy or map50), mean line and
    ±1 std band over seeds per (strategy, pseudo). Uses matplotlib's object API with the Agg
    canvas (no global backend switch)."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    metric = reference.get("metric", "accuracy")
    fig = Figure(figsize=(8, 5), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for (strategy, pseudo), df in rounds.groupby(["strategy", "pseudo"], sort=False):
        mc = mean_curve(df, metric=metric)
        label = _setting_label(strategy, pseudo)
        style = "--" if strategy == "random" else "-"
        (line,) = ax.plot(mc["labels"], mc["accuracy"], style, marker="o", ms=3, label=label)
        std = mc["accuracy_std"].fillna(0)
        ax.fill_between(mc["labels"], mc["accuracy"] - std, mc["accuracy"] + std, color=line.get_color(), alpha=0.15)
    ref = reference.get("accuracy")
    if ref is not None:
        ax.axhline(ref, color="black", lw=1, label=f"full data ({ref:.3f})")
        ax.axhline(0.95 * ref, color="grey", lw=0.8, ls=":", label="95 % of full data")
    ax.set_xlabel("human labels (seed + reviewed)")
    ax.set_ylabel(f"holdout {metric}")
    ax.set_title(f"label efficiency: {reference.get('dataset', '')} (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


# ------------------------------------------------------------------------------------------
# command line


def _csv(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def build_parser() -> argparse.ArgumentParser:
    """The ``pseudolabel benchmark`` argument parser (every option of :func:`run_benchmark`)."""
    p = argparse.ArgumentParser(
        prog="pseudolabel benchmark", description=__doc__.split("\n\n")[0],
        epilog="Your own data: --data DIR (ImageFolder DIR/<class>/<image>; YOLO DIR/images + DIR/labels + "
               "data.yaml; or a COCO .json). Example: pseudolabel benchmark --data ~/photos --oracle "
               "--strategies schedule,margin,random --seeds 0,1,2")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--dataset", choices=DATASETS, default=None, help="a bundled dataset (default digits)")
    src.add_argument("--data", type=Path, default=None,
                     help="your labelled data: ImageFolder tree, YOLO folder or COCO .json; split by the benchmark")
    p.add_argument("--strategies", default="entropy,margin,hybrid,random", help="comma-separated; include random")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated random seeds")
    p.add_argument("--rounds", type=int, default=8, help="review rounds per campaign")
    p.add_argument("--batch-size", type=int, default=20, help="items queued per round")
    p.add_argument("--pseudo", default="both", choices=["both", "on", "off"], help="pseudo-label settings to run")
    p.add_argument("--oracle", action="store_true", help="in-process oracle reviewer instead of Label Studio")
    p.add_argument("--out", type=Path, default=Path("runs/benchmark"), help="output folder")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: 30 classify; detection: 40)")
    p.add_argument("--min-steps", type=int, default=None, help="at least this many optimiser steps (default 300 "
                   "classify; 0 detection)")
    p.add_argument("--seed-per-class", type=int, default=2, help="classification seed set: images per class")
    p.add_argument("--seed-size", type=int, default=None, help="detection seed set (default 20 images), or the "
                   "total of a cold-start seed set")
    p.add_argument("--seed-strategy", default="random",
                   help="--data only: random (stratified), or a label-free cold start on pixel embeddings: "
                        "centroid, typiclust, probcover, kcenter")
    p.add_argument("--pool", type=int, default=None, help="pool size (default: all left; fashion: 3000)")
    p.add_argument("--holdout", type=int, default=None,
                   help="holdout size (digits 400, fashion 1000, --data: 20%% up to 1000 / 200 for detection)")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the seed/holdout/pool split")
    p.add_argument("--no-reference", dest="reference", action="store_false",
                   help="skip the full-data model (no labels-to-90/95%%; saves a training on the whole pool)")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   help="config override section.key=value for every campaign, e.g. model.arch=resnet18, "
                        "selection.schedule.switch_per_class=3, selection.probcover.delta=0.3")
    p.add_argument("--verbose", action="store_true", help="print every round")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads during the run (1 is fastest on a small shared machine)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``pseudolabel benchmark``: parse ``argv``, run the benchmark; exit status 0, or 2 with a
    one-line ``error: ...`` for bad arguments, data or config."""
    args = build_parser().parse_args(argv)
    try:
        seeds = [int(s) for s in _csv(args.seeds)]
    except ValueError:
        print(f"error: --seeds must be comma-separated integers, got {args.seeds!r}")
        return 2
    pseudo = {"both": [False, True], "on": [True], "off": [False]}[args.pseudo]
    import sys

    from pseudolabel.config import ConfigError

    # Piped to a file or CI log, rich would squeeze the summary table into 80 columns.
    console = Console() if sys.stdout.isatty() else Console(width=160)
    try:
        run_benchmark(dataset=args.dataset or "digits", data=args.data, strategies=_csv(args.strategies), seeds=seeds,
                      rounds=args.rounds, batch_size=args.batch_size, pseudo_settings=pseudo, oracle=args.oracle,
                      out_dir=args.out, epochs=args.epochs, min_steps=args.min_steps,
                      seed_per_class=args.seed_per_class, seed_size=args.seed_size, seed_strategy=args.seed_strategy,
                      n_pool=args.pool, n_holdout=args.holdout, data_seed=args.data_seed, reference=args.reference,
                      overrides=args.overrides, verbose=args.verbose, torch_threads=args.threads, console=console)
    except (ValueError, ConfigError) as e:
        print(f"error: {e}")
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
