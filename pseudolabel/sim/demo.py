"""The demo: a whole labelling campaign on real images, with no downloads.

Classification: scikit-learn's bundled digits (1,797 real 8x8 scans) are written as PNG files
into a seed set (a few per class), a holdout set and an unlabelled pool. Detection /
segmentation: scenes composited from real Fashion-MNIST items (Debian's
``dataset-fashion-mnist``) with known boxes and silhouette polygons, seed and holdout in YOLO
format. A local Label Studio is started on 127.0.0.1 with its own data dir under the workdir;
then rounds run in which a simulated reviewer answers the queued tasks **through the real
Label Studio API** from the ground truth (for boxes: keeps, fixes, deletes and adds objects and
counts its edits).
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import yaml
from PIL import Image
from rich.console import Console

from loops.campaign import CampaignResult, rounds_table, run_campaign
from loops.round import RoundResult
from pseudolabel.config import Config, load_config, set_dotted
from pseudolabel.data.images import sha256_file
from pseudolabel.review.client import LabelStudioClient
from pseudolabel.review.server import LabelStudioServer
from pseudolabel.sim.simulated import SimulatedReviewer
from pseudolabel.types import TaskType

DIGIT_CLASSES = [str(d) for d in range(10)]


@dataclass(frozen=True)
class DemoData:
    """Demo images written to disk: their root and the true class of every item id."""

    root: Path                 # images root (Label Studio's local-files document root)
    truth: dict[str, str]      # item id -> true class, for every exported image


def export_digits(root: Path, *, seed_per_class: int = 2, holdout: int = 400, size: int = 32,
                  seed: int = 0) -> DemoData:
    """Write the digits as ``size``-pixel PNGs: ``seed/<class>/``, ``holdout/<class>/``, ``pool/``.

    Deterministic for a given ``seed``; re-running over an existing export rewrites the same
    bytes (so item ids stay the same).
    """
    from sklearn.datasets import load_digits

    if seed_per_class < 1:
        raise ValueError(f"seed_per_class must be >= 1, got {seed_per_class}")
    digits = load_digits()
    images = (digits.images / 16.0 * 255.0).round().astype(np.uint8)  # (1797, 8, 8), 0..16 -> 0..255
    target = digits.target
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(images))
    seed_idx: list[int] = []
    for c in range(10):
        seed_idx += [int(i) for i in order if target[i] == c][:seed_per_class]
    rest = [int(i) for i in order if int(i) not in set(seed_idx)]
    if holdout >= len(rest):
        raise ValueError(f"holdout={holdout} leaves no pool (only {len(rest)} images after the seed set)")
    hold_idx, pool_idx = rest[:holdout], rest[holdout:]
    for sub in ("seed", "holdout", "pool"):
        shutil.rmtree(root / sub, ignore_errors=True)
    truth: dict[str, str] = {}

    def write(i: int, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i], mode="L").resize((size, size), Image.Resampling.BICUBIC).save(path)
        truth[sha256_file(path)] = str(target[i])

    for i in seed_idx:
        write(i, root / "seed" / str(target[i]) / f"digit_{i:04d}.png")
    for i in hold_idx:
        write(i, root / "holdout" / str(target[i]) / f"digit_{i:04d}.png")
    for i in pool_idx:
        # The pool is unlabelled: no class in the path.
        write(i, root / "pool" / f"digit_{i:04d}.png")
    return DemoData(root=root, truth=truth)


def demo_config(workdir: Path, data_root: Path, *, strategy: str, project: str, **over: Any) -> dict[str, Any]:
    """A classification campaign config (as a dict) over the digits under ``data_root``;
    ``over`` updates its top-level keys."""
    cfg: dict[str, Any] = {
        "project": project,
        "task": "classify",
        "workdir": str(workdir),
        "classes": DIGIT_CLASSES,
        "data": {
            "seed": {"format": "imagefolder", "path": str(data_root / "seed")},
            "pool": {"path": str(data_root / "pool")},
            "holdout": {"format": "imagefolder", "path": str(data_root / "holdout")},
        },
        "model": {"arch": "small_cnn", "image_size": 32, "epochs": 30, "batch_size": 32, "seed": 0},
        "selection": {"strategy": strategy, "batch_size": 20, "seed": 0},
        "pseudo": {"enabled": True, "threshold": 0.98, "weight": 0.5},
        "stop": {"metric": "accuracy", "target": 0.98, "label_budget": 200, "max_rounds": 10},
        "label_studio": {"images_root": str(data_root)},
    }
    for dotted, value in over.items():
        set_dotted(cfg, dotted, value, origin=f"demo_config({dotted}=...)")
    return cfg


DETECT_DEFAULTS: dict[str, Any] = {
    # Sized for a 2-core CPU: yolo11n from scratch on 128 px scenes, each round warm-started
    # from the last one, AdamW at a higher learning rate than Ultralytics' small-data default.
    "model": {"image_size": 128, "epochs": 40, "min_steps": 0, "batch_size": 8, "seed": 0, "warm_start": True,
              "infer_batch_size": 64, "conf": 0.01,
              "train_args": {"optimizer": "AdamW", "lr0": 0.004, "warmup_epochs": 1}},
    "selection": {"batch_size": 20, "seed": 0, "aggregate": "mean"},
    "pseudo": {"enabled": False, "box_threshold": 0.6},
    "stop": {"target": 0.9, "label_budget": 120, "max_rounds": 4},
}


def detect_demo_config(workdir: Path, data: Any, *, task: str, strategy: str, project: str,
                       **over: Any) -> dict[str, Any]:
    """Config of the detection / segmentation demo on an :func:`export_scenes` dataset."""
    cfg: dict[str, Any] = {
        "project": project,
        "task": task,
        "workdir": str(workdir),
        "classes": list(data.classes),
        "data": {
            "seed": {"format": "yolo", "path": str(data.seed_images), "labels": str(data.seed_labels)},
            "pool": {"path": str(data.pool_dir)},
            "holdout": {"format": "yolo", "path": str(data.holdout_images), "labels": str(data.holdout_labels)},
        },
        "label_studio": {"images_root": str(data.root)},
    }
    for section, values in DETECT_DEFAULTS.items():
        cfg[section] = {**values}
    cfg["selection"]["strategy"] = strategy
    for dotted, value in over.items():
        set_dotted(cfg, dotted, value, origin=f"detect_demo_config({dotted}=...)")
    return cfg


def run_demo(
    workdir: Path,
    *,
    task: TaskType = "classify",
    scenes_split: tuple[int, int, int] = (40, 400, 100),
    strategies: Sequence[str] = ("hybrid",),
    error_rate: float = 0.0,
    seed: int = 0,
    overrides: Sequence[str] = (),
    console: Console | None = None,
    progress: bool = True,
    fresh: bool = True,
) -> dict[str, CampaignResult]:
    """Run one campaign per strategy (same data, seeds and server) and return their rows."""
    console = console or Console()
    workdir = workdir.resolve()
    marker = workdir / ".pseudolabel-demo"
    if fresh and workdir.exists():
        if any(workdir.iterdir()) and not marker.exists():
            raise ValueError(f"--workdir {workdir} exists and is not a demo workdir (no {marker.name}); "
                             "the demo starts from scratch and deletes its workdir: pick a new or empty folder")
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    marker.write_text("created by `pseudolabel demo`; safe to delete\n")
    data_root = workdir / "data"
    t0 = time.perf_counter()
    if task != "classify":
        from pseudolabel.sim.composites import export_scenes

        n_seed, n_pool, n_holdout = scenes_split
        scenes = export_scenes(data_root, n_seed=n_seed, n_pool=n_pool, n_holdout=n_holdout, size=128, seed=seed,
                               task=task)
        data = DemoData(root=data_root, truth=scenes.truth)  # type: ignore[arg-type]
        console.print(f"[bold]demo[/]: composited {len(scenes.truth)} Fashion-MNIST scenes ({task}: "
                      f"{', '.join(scenes.classes)}) into {data_root}")
    else:
        data = export_digits(data_root, seed=seed)
        console.print(f"[bold]demo[/]: exported {len(data.truth)} digit images to {data_root}")
    results: dict[str, CampaignResult] = {}
    server = LabelStudioServer(data_dir=workdir / "label-studio", images_root=data_root)
    console.print("starting Label Studio on 127.0.0.1 (first start runs migrations, ~30 s)...")
    with server:
        console.print(f"Label Studio is up at {server.url} ({time.perf_counter() - t0:.0f} s)")
        for strategy in strategies:
            sub = workdir / strategy if len(strategies) > 1 else workdir / "campaign"
            if task == "classify":
                raw = demo_config(sub, data_root, strategy=strategy, project=f"digits-demo-{strategy}")
            else:
                raw = detect_demo_config(sub, scenes, task=task, strategy=strategy,
                                         project=f"fashion-{task}-{strategy}")
            sub.mkdir(parents=True, exist_ok=True)
            (sub / "config.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
            cfg: Config = load_config(sub / "config.yaml", overrides=overrides)
            client = LabelStudioClient(
                url=server.url, token=server.token, project_title=cfg.label_studio.project_title or cfg.project,
                classes=cfg.classes, task_type=cfg.task, images_root=data_root,
            )
            client.ensure_project()
            answer = _answerer(cfg, client, data, error_rate=error_rate, seed=seed, console=console,
                               size=None if task == "classify" else scenes.size)

            console.rule(f"strategy: {strategy}")
            res = run_campaign(cfg, client, answer=answer, console=console, progress=progress)
            results[strategy] = res
            console.print(rounds_table(res.rows, title=f"{strategy}: per-round results"))
            console.print(f"[bold]stopped[/]: {res.termination}")
    console.print(f"Label Studio stopped. Demo wall time {time.perf_counter() - t0:.1f} s; workdir {workdir}")
    import pandas as pd

    table = pd.DataFrame([{"strategy": name, **row} for name, r in results.items() for row in r.rows])
    table.to_csv(workdir / "rounds.csv", index=False)
    console.print(f"per-round results of every strategy: {workdir / 'rounds.csv'}")
    if len(strategies) > 1:
        console.print(summary_table(results))
    return results


def _answerer(cfg: Config, client: LabelStudioClient, data: DemoData, *, error_rate: float, seed: int,
              console: Console, size: int | None = None) -> Any:
    """The simulated reviewer of the demo, as a campaign ``answer`` callback."""
    if cfg.task == "classify":
        reviewer = SimulatedReviewer(client=client, truth=data.truth, classes=cfg.classes,
                                     error_rate=error_rate, seed=seed)

        def answer(res: RoundResult) -> dict[str, Any]:
            st = reviewer.answer_pending()
            console.print(f"  reviewer: answered {st.answered} tasks in Label Studio "
                          f"({st.accepted} accepted, {st.corrected} corrected, {st.errors_injected} mistakes)")
            return {"answered": st.answered, "accepted": st.accepted, "corrections": st.corrected,
                    "errors_injected": st.errors_injected}

        return answer
    from pseudolabel.sim.simulated_boxes import SimulatedBoxReviewer

    box_reviewer = SimulatedBoxReviewer(client, data.truth, cfg.classes,  # type: ignore[arg-type]
                                        sizes=(int(size or 0), int(size or 0)))

    def answer_boxes(res: RoundResult) -> dict[str, Any]:
        st = box_reviewer.answer_pending()
        per_image = st.edits / st.answered if st.answered else 0.0
        console.print(f"  reviewer: answered {st.answered} images in Label Studio ({st.accepted} accepted as "
                      f"drawn); {st.edits} edits = {per_image:.2f} per image (kept {st.kept}, relabelled "
                      f"{st.relabelled}, reshaped {st.reshaped}, deleted {st.deleted}, added {st.added})")
        return {"answered": st.answered, "accepted": st.accepted, "corrections": st.corrected,
                "edits": st.edits, "edits_per_image": per_image, "kept": st.kept, "relabelled": st.relabelled,
                "reshaped": st.reshaped, "deleted": st.deleted, "added": st.added}

    return answer_boxes


def summary_table(results: dict[str, CampaignResult]) -> Any:
    """The final round of each strategy's campaign side by side, as a rich table."""
    from rich.table import Table

    det = any("map50" in r for res in results.values() for r in res.rows)
    metrics = [("map50", "mAP50"), ("map50_95", "mAP50-95")] if det else [("accuracy", "accuracy"),
                                                                          ("macro_f1", "macro-F1")]
    t = Table(title="strategies side by side (final round)")
    for c in ("strategy", "rounds", "labels", *[m[1] for m in metrics], "fixed", "sec", "stopped because"):
        t.add_column(c)
    for name, r in results.items():
        last = r.rows[-1]
        vals = [f"{last[k]:.4f}" if last.get(k) is not None else "-" for k, _ in metrics]
        t.add_row(name, str(len(r.rows)), str(last["labels"]), *vals,
                  str(sum(x["corrections"] for x in r.rows)), f"{r.seconds:.1f}",
                  (r.termination or "").split(":")[0])
    return t
