"""What semi-supervised training costs per optimiser step: supervised vs consistency (FixMatch).

Measured through the public API only: :meth:`TorchvisionClassifier.fit` trains for exactly
``min_steps`` steps when the labelled set is one batch and ``epochs=1``; fitting with ``S``
and ``2 S`` steps and taking the difference removes the one-off costs (decoding the images,
building the network), so ``(t(2S) - t(S)) / S`` is the time of one step. Also timed: the
two augmentations alone on one unlabelled batch (``unlabelled_ratio * batch_size`` images).

Times are CPU seconds of this process (``time.process_time``), so with one torch thread
other work on a shared machine does not inflate them the way it inflates wall time.

Data: scikit-learn's digits written as ``image_size``-pixel PNGs (real images, no download).
Run with one torch thread on a shared machine::

    python -m pseudolabel.sim.bench_ssl --threads 1 --out runs/bench_ssl.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np


def _digits(root: Path, *, n_labelled: int, n_unlabelled: int, size: int) -> tuple[list[Any], list[Any]]:
    from PIL import Image
    from sklearn.datasets import load_digits

    from pseudolabel.types import Annotation, Item

    d = load_digits()
    images = (d.images / 16.0 * 255.0).round().astype(np.uint8)
    root.mkdir(parents=True, exist_ok=True)
    items = []
    for i in range(n_labelled + n_unlabelled):
        p = root / f"d{i:04d}.png"
        if not p.exists():
            Image.fromarray(images[i], mode="L").resize((size, size), Image.Resampling.BICUBIC).save(p)
        items.append(Item(id=f"d{i}", path=p, width=size, height=size))
    train = [Annotation(item=it, label=str(d.target[i]), source="seed") for i, it in enumerate(items[:n_labelled])]
    return train, items[n_labelled:]


def _best(fn: Any, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return min(times)


def measure(*, workdir: Path, steps: int = 30, batch_size: int = 64, unlabelled_ratio: int | None = None,
            strong_ratio: float | None = None, image_size: int = 32, arch: str = "small_cnn",
            repeats: int = 2) -> dict[str, Any]:
    """Seconds per optimiser step, supervised and with consistency training, and the time of
    the weak / strong augmentation of one unlabelled batch. Returns a JSON-able dict.

    ``unlabelled_ratio`` / ``strong_ratio`` ``None`` keep the classifier's defaults. The four fits (supervised and
    consistency, ``S`` and ``2 S`` steps) are interleaved and each one's best of ``repeats``
    is kept, so a machine busy with other work skews both sides alike."""
    import torch

    from pseudolabel.augment import strong_augment, weak_augment
    from pseudolabel.models.torchvision_cls import TorchvisionClassifier

    if steps < 1 or batch_size < 1 or repeats < 1 or (unlabelled_ratio is not None and unlabelled_ratio < 1):
        raise ValueError("steps, batch_size, unlabelled_ratio and repeats must be >= 1")
    extra: dict[str, Any] = {} if unlabelled_ratio is None else {"unlabelled_ratio": unlabelled_ratio}
    if strong_ratio is not None:
        extra["strong_ratio"] = strong_ratio
    probe = TorchvisionClassifier(["a", "b"], **extra)
    ratio = probe.unlabelled_ratio
    train, pool = _digits(workdir, n_labelled=batch_size, n_unlabelled=max(ratio * batch_size, 200),
                          size=image_size)

    def fit(n: int, consistency: bool) -> float:
        m = TorchvisionClassifier([str(c) for c in range(10)], arch=arch, image_size=image_size, epochs=1,
                                  batch_size=batch_size, min_steps=n, device="cpu", consistency=consistency,
                                  consistency_threshold=0.5, **extra)
        t0 = time.process_time()
        m.fit(train, unlabelled=pool if consistency else None)
        return time.process_time() - t0

    out: dict[str, Any] = {"arch": arch, "image_size": image_size, "batch_size": batch_size,
                           "unlabelled_ratio": ratio, "strong_ratio": getattr(probe, "strong_ratio", None),
                           "steps": steps, "threads": torch.get_num_threads()}
    best: dict[tuple[bool, int], float] = {}
    ratios: list[float] = []
    for _ in range(repeats):
        t: dict[tuple[bool, int], float] = {}
        for cons in (False, True):
            for n in (steps, 2 * steps):
                t[cons, n] = fit(n, cons)
                best[cons, n] = min(best.get((cons, n), float("inf")), t[cons, n])
        per_step = {c: max(t[c, 2 * steps] - t[c, steps], 1e-9) / steps for c in (False, True)}
        ratios.append(per_step[True] / per_step[False])
    for name, cons in (("supervised", False), ("consistency", True)):
        out[f"{name}_step_s"] = max(best[cons, 2 * steps] - best[cons, steps], 0.0) / steps
    # Two estimates: from the fastest fit of each kind, and the median of the ratios measured
    # back to back within each repeat (robust to the machine's load drifting between repeats).
    out["consistency_over_supervised"] = out["consistency_step_s"] / max(out["supervised_step_s"], 1e-12)
    out["ratio_per_repeat"] = [round(r, 3) for r in ratios]
    out["ratio_median"] = float(np.median(ratios))
    g = torch.Generator().manual_seed(0)
    u = torch.rand(ratio * batch_size, 3, image_size, image_size, generator=g)
    out["weak_augment_batch_s"] = _best(lambda: weak_augment(u, generator=g, pad=2, hflip=False), repeats + 1)
    out["strong_augment_batch_s"] = _best(lambda: strong_augment(u, generator=g, pad=2, hflip=False), repeats + 1)
    return out


def measure_pseudo(*, workdir: Path, n_human: int = 40, n_pseudo: int = 1079, ratio: float = 1.0,
                   image_size: int = 32, batch_size: int = 32, epochs: int = 30, min_steps: int = 300,
                   arch: str = "small_cnn") -> dict[str, Any]:
    """CPU seconds of one round's training with ``n_human`` labels and ``n_pseudo``
    pseudo-labels (weight 0.5), every pseudo-label in every epoch vs at most ``ratio`` x
    ``n_human`` of them per epoch (the demo's model settings by default)."""
    from pseudolabel.models.torchvision_cls import TorchvisionClassifier
    from pseudolabel.types import Annotation

    train, _ = _digits(workdir, n_labelled=n_human + n_pseudo, n_unlabelled=0, size=image_size)
    train = [a if i < n_human else Annotation(item=a.item, label=a.label, source="pseudo", weight=0.5)
             for i, a in enumerate(train)]
    out: dict[str, Any] = {"n_human": n_human, "n_pseudo": n_pseudo, "ratio": ratio, "batch_size": batch_size,
                           "epochs": epochs, "min_steps": min_steps}
    for name, bound in (("all_pseudo_s", None), ("bounded_s", ratio)):
        m = TorchvisionClassifier([str(c) for c in range(10)], arch=arch, image_size=image_size, epochs=epochs,
                                  batch_size=batch_size, min_steps=min_steps, device="cpu", pseudo_ratio=bound)
        t0 = time.process_time()
        m.fit(train)
        out[name] = time.process_time() - t0
    out["speedup"] = out["all_pseudo_s"] / max(out["bounded_s"], 1e-12)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Command line of the self-supervised pretraining benchmark (``--help``); returns the exit code."""
    p = argparse.ArgumentParser(prog="python -m pseudolabel.sim.bench_ssl", description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--unlabelled-ratio", type=int, default=None, help="default: the classifier's")
    p.add_argument("--strong-ratio", type=float, default=None, help="default: the classifier's")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--arch", default="small_cnn")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--workdir", type=Path, default=Path("runs/bench_ssl_data"))
    p.add_argument("--out", type=Path, default=None, help="also write the result as JSON here")
    p.add_argument("--pseudo-round", action="store_true",
                   help="instead: one round's training with 40 labels + 1,079 pseudo-labels, unbounded vs bounded")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    try:
        if args.pseudo_round:
            res = measure_pseudo(workdir=args.workdir, image_size=args.image_size, arch=args.arch)
        else:
            res = measure(workdir=args.workdir, steps=args.steps, batch_size=args.batch_size,
                          unlabelled_ratio=args.unlabelled_ratio, strong_ratio=args.strong_ratio,
                          image_size=args.image_size, arch=args.arch, repeats=args.repeats)
    except ValueError as e:
        print(f"error: {e}")
        return 2
    text = json.dumps(res, indent=2)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
