"""Representations benchmark: accuracy at a few label counts for a small CNN trained from
scratch vs a linear head on frozen efficientnet_lite0 (and with its last block fine-tuned) vs a
linear head on a backbone self-supervised on the pool; plus the costs (embedding time per
1,000 images, head training time per round, pretraining steps/s).

Real images written as PNG files (scikit-learn's digits at 32 px, Fashion-MNIST at 28 px), the
same random label draws for every method, accuracy on a held-out test set, mean over draws.
Sized for a CPU: ``python -m pseudolabel.sim.bench_repr --out runs/bench-repr`` (1 thread, ~10-15 min).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pseudolabel.data.images import sha256_file
from pseudolabel.types import Annotation, Item

METHODS = ("scratch_cnn", "lite0_linear", "lite0_last_block", "ssl_linear")


def _digits(root: Path, n_test: int) -> tuple[list[Item], list[str], list[Item], list[str], list[str]]:
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    images = (d.images / 16.0 * 255.0).round().astype(np.uint8)
    order = np.random.default_rng(0).permutation(len(images))
    items, labels = [], []
    seen: set[str] = set()
    for i in order:
        path = root / f"digit_{i:04d}.png"
        Image.fromarray(images[i]).resize((32, 32), Image.Resampling.BILINEAR).save(path)
        item_id = sha256_file(path)
        if item_id in seen:
            continue
        seen.add(item_id)
        items.append(Item(item_id, path, 32, 32))
        labels.append(str(d.target[i]))
    classes = [str(c) for c in range(10)]
    return items[n_test:], labels[n_test:], items[:n_test], labels[:n_test], classes


def _fashion(root: Path, n_pool: int, n_test: int) -> tuple[list[Item], list[str], list[Item], list[str], list[str]]:
    from pseudolabel.sim.fashion import FASHION_CLASSES, export_fashion

    data = export_fashion(root, n_pool=n_pool, n_holdout=n_test, seed_per_class=1, seed=0)

    def read(paths: Sequence[Path]) -> tuple[list[Item], list[str]]:
        items = [Item(sha256_file(p), p, 28, 28) for p in paths]
        return items, [data.truth[it.id] for it in items]

    pool, pool_y = read(sorted((root / "pool").glob("*.png")))
    test, test_y = read(sorted((root / "holdout").rglob("*.png")))
    return pool, pool_y, test, test_y, list(FASHION_CLASSES)


def _accuracy(model: Any, items: Sequence[Item], truth: Sequence[str], classes: Sequence[str]) -> float:
    probs, _ = model.predict_proba_embed(items)
    return float(np.mean([classes[i] == t for i, t in zip(probs.argmax(1), truth)]))


def run(out: Path, *, datasets: Sequence[str], label_counts: Sequence[int], draws: int, fashion_pool: int,
        ssl_steps: int, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the benchmark; writes ``out/bench-repr.json`` and returns its content."""
    from pseudolabel.models.backbone import FrozenBackboneClassifier
    from pseudolabel.models.backbone.ssl import PretrainSettings, pretrain_backbone
    from pseudolabel.models.torchvision_cls import TorchvisionClassifier

    torch.set_num_threads(1)
    out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"threads": 1, "label_counts": list(label_counts), "draws": draws, "datasets": {}}
    for name in datasets:
        data_dir = out / name
        shutil.rmtree(data_dir, ignore_errors=True)
        data_dir.mkdir(parents=True)
        if name == "digits":
            pool, pool_y, test, test_y, classes = _digits(data_dir, 500)
            size = 32
        else:
            pool, pool_y, test, test_y, classes = _fashion(data_dir, fashion_pool, 1000)
            size = 28
        log(f"{name}: pool {len(pool)}, test {len(test)}, {len(classes)} classes")
        rec: dict[str, Any] = {"pool": len(pool), "test": len(test), "accuracy": {m: {} for m in METHODS},
                               "fit_seconds": {m: {} for m in METHODS}}
        cache = out / "cache" / name
        shutil.rmtree(cache, ignore_errors=True)

        # costs: embed pool + test once with efficientnet_lite0 (64 px)
        t = time.perf_counter()
        warm = FrozenBackboneClassifier(classes, epochs=0, device="cpu", cache_dir=cache)
        warm.fit([Annotation(item=pool[0], label=pool_y[0], source="seed")])
        warm.predict_proba_embed([*pool, *test])
        embed_s = time.perf_counter() - t
        rec["lite0_embed_seconds_per_1000"] = round(1000 * embed_s / (len(pool) + len(test)), 2)
        log(f"  efficientnet_lite0 at {warm.input_size_} px: {rec['lite0_embed_seconds_per_1000']} s / 1,000 images")

        t = time.perf_counter()
        settings = PretrainSettings(image_size=size, width=16, batch_size=128, max_steps=ssl_steps,
                                    max_minutes=30.0, checkpoint_every=max(1, ssl_steps // 4), seed=0)
        ssl = pretrain_backbone(pool, settings=settings, cache_dir=out / "pretrain" / name, progress=False,
                                log=lambda s: log("  " + s))
        rec["ssl_steps_per_second"] = round(ssl.trained_now / max(ssl.seconds, 1e-9), 2) if ssl.trained_now else None
        rec["ssl_wall_seconds"] = round(time.perf_counter() - t, 1)
        rec["ssl_final_loss"] = round(ssl.loss, 3)

        for n in label_counts:
            for draw in range(draws):
                idx = np.random.default_rng(1000 * draw + n).choice(len(pool), n, replace=False)
                anns = [Annotation(item=pool[i], label=pool_y[i], source="seed") for i in idx]
                makers: dict[str, Callable[[], Any]] = {
                    "scratch_cnn": lambda: TorchvisionClassifier(classes, arch="small_cnn", image_size=size, epochs=30,
                                                                 min_steps=300, batch_size=32, lr=2e-3, device="cpu",
                                                                 seed=draw),
                    "lite0_linear": lambda: FrozenBackboneClassifier(classes, min_steps=300, device="cpu", seed=draw,
                                                                     cache_dir=cache),
                    "lite0_last_block": lambda: FrozenBackboneClassifier(classes, finetune="last", min_steps=300,
                                                                         device="cpu", seed=draw, cache_dir=cache),
                    "ssl_linear": lambda: FrozenBackboneClassifier(classes, backbone=f"ssl:{ssl.path}", min_steps=300,
                                                                   device="cpu", seed=draw, cache_dir=cache),
                }
                for method, make in makers.items():
                    t = time.perf_counter()
                    model = make().fit(anns)
                    fit_s = time.perf_counter() - t
                    acc = _accuracy(model, test, test_y, classes)
                    rec["accuracy"][method].setdefault(str(n), []).append(acc)
                    rec["fit_seconds"][method].setdefault(str(n), []).append(fit_s)
            log(f"  {n} labels: " + ", ".join(
                f"{m} {np.mean(rec['accuracy'][m][str(n)]):.3f} ({np.mean(rec['fit_seconds'][m][str(n)]):.1f} s)"
                for m in METHODS))
        for key in ("accuracy", "fit_seconds"):
            rec[key + "_mean"] = {m: {n: round(float(np.mean(v)), 3) for n, v in rec[key][m].items()} for m in METHODS}
        result["datasets"][name] = rec
        (out / "bench-repr.json").write_text(json.dumps(result, indent=2))
    return result


def table(result: dict[str, Any]) -> str:
    """Markdown table: accuracy (fit seconds) per dataset, method and label count."""
    counts = [str(n) for n in result["label_counts"]]
    lines = ["| data | method | " + " | ".join(f"{n} labels" for n in counts) + " |",
             "|---|---|" + "---|" * len(counts)]
    for name, rec in result["datasets"].items():
        for m in METHODS:
            cells = [f"{rec['accuracy_mean'][m][n]:.3f} ({rec['fit_seconds_mean'][m][n]:.1f} s)" for n in counts]
            lines.append(f"| {name} | {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line of the representation benchmark (``--help`` lists the options); returns the exit code."""
    p = argparse.ArgumentParser(prog="python -m pseudolabel.sim.bench_repr", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("runs/bench-repr"))
    p.add_argument("--dataset", action="append", choices=("digits", "fashion"))
    p.add_argument("--labels", type=int, nargs="+", default=[20, 100, 200])
    p.add_argument("--draws", type=int, default=2)
    p.add_argument("--fashion-pool", type=int, default=2000)
    p.add_argument("--ssl-steps", type=int, default=400)
    a = p.parse_args(argv)
    res = run(a.out, datasets=a.dataset or ["digits", "fashion"], label_counts=a.labels, draws=a.draws,
              fashion_pool=a.fashion_pool, ssl_steps=a.ssl_steps)
    print(table(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
