"""The report's figures: plain arrays in, PNG bytes out (matplotlib's Agg renderer).

Figures are built with :class:`matplotlib.figure.Figure` directly, never ``pyplot``: no global
figure state, no GUI backend, nothing left open between calls. Thumbnails are drawn with Pillow.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image, ImageDraw

from pseudolabel.types import Box

DPI = 100
SOURCE_COLOURS = {"seed": "#4c72b0", "human": "#55a868", "consensus": "#8172b3", "pseudo": "#dd8452"}
OUTCOME_COLOURS = {"accepted": "#55a868", "corrected": "#c44e52", "skipped": "#b0b0b0"}


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    return buf.getvalue()


def class_colours(classes: Sequence[str]) -> dict[str, tuple[float, float, float, float]]:
    """A distinct colour per class name (tab10 / tab20, or evenly spaced hues past 20)."""
    n = len(classes)
    if n <= 20:
        cmap = colormaps["tab10" if n <= 10 else "tab20"]
        return {c: cmap(i) for i, c in enumerate(classes)}
    cmap = colormaps["hsv"]
    return {c: cmap(i / n) for i, c in enumerate(classes)}


def learning_curve(labels: Sequence[int | None], values: Sequence[float | None], rounds: Sequence[int], *,
                   metric: str, target: float, current: int | None = None) -> bytes:
    """Holdout ``metric`` against labels used, one point per round (numbered), with the stop
    target as a dashed line; ``current`` round circled."""
    fig = Figure(figsize=(7, 3.6))
    ax = fig.add_subplot()
    pts = [(lab, v, r) for lab, v, r in zip(labels, values, rounds) if lab is not None and v is not None]
    if pts:
        x, y, rr = zip(*pts)
        ax.plot(x, y, "o-", color="#4c72b0", lw=2, ms=5, label=f"holdout {metric}")
        for xi, yi, ri in pts:
            ax.annotate(f"r{ri}", (xi, yi), textcoords="offset points", xytext=(0, 7), ha="center", fontsize=8)
            if ri == current:
                ax.plot([xi], [yi], "o", ms=13, mfc="none", mec="#c44e52", mew=2)
    ax.axhline(target, ls="--", color="#c44e52", lw=1.2, label=f"stop target {target:g}")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if pts and min(p[0] for p in pts) == max(p[0] for p in pts):  # same labels every round: widen the axis
        ax.set_xlim(pts[0][0] - 5, pts[0][0] + 5)
    ax.set_xlabel("labelled items used for training (seed + human)")
    ax.set_ylabel(f"holdout {metric}")
    hi = max([target, *[p[1] for p in pts]]) if pts else target
    lo = min([p[1] for p in pts]) if pts else 0.0
    ax.set_ylim(max(0.0, min(lo, target) - 0.05), min(1.02, hi + 0.05) if hi <= 1.0 else hi * 1.05)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=9)
    if not pts:
        ax.text(0.5, 0.5, "no evaluated round yet", transform=ax.transAxes, ha="center", va="center")
    return _png(fig)


def per_class_heatmap(per_class: dict[str, list[float | None]], rounds: Sequence[int], *, name: str) -> bytes:
    """Classes (rows) x rounds (columns) heat map of a per-class score in [0, 1]; undefined
    values (a class absent from the holdout) are grey, marked "n/a"."""
    classes = list(per_class)
    data = np.array([[np.nan if v is None else v for v in per_class[c]] for c in classes], dtype=float)
    data = data.reshape(len(classes), len(rounds))
    fig = Figure(figsize=(min(2.0 + 0.7 * len(rounds), 14), 1.0 + 0.32 * len(classes)))
    ax = fig.add_subplot()
    cmap = colormaps["RdYlGn"].with_extremes(bad="#dddddd")
    im = ax.imshow(np.ma.masked_invalid(data), cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(rounds)), [f"r{r}" for r in rounds])
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("round")
    if len(rounds) * len(classes) <= 400:
        for i in range(len(classes)):
            for j in range(len(rounds)):
                v = data[i, j]
                ax.text(j, i, "n/a" if np.isnan(v) else f"{v:.2f}", ha="center", va="center", fontsize=7,
                        color="black")
    fig.colorbar(im, ax=ax, label=f"holdout {name}", fraction=0.04)
    return _png(fig)


def confusion(matrix: np.ndarray, classes: Sequence[str]) -> bytes:
    """Row-normalised confusion matrix (rows = true class, columns = predicted), each cell
    printed with its count."""
    m = np.asarray(matrix, dtype=float)
    rows = m.sum(axis=1, keepdims=True)
    frac = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    side = 1.6 + 0.45 * len(classes)
    fig = Figure(figsize=(min(side + 1.2, 16), min(side, 15)))
    ax = fig.add_subplot()
    im = ax.imshow(frac, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(len(classes)), classes, rotation=90 if max(len(c) for c in classes) > 3 else 0)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true (holdout)")
    if len(classes) <= 30:
        for i in range(len(classes)):
            for j in range(len(classes)):
                if m[i, j]:
                    ax.text(j, i, str(int(m[i, j])), ha="center", va="center", fontsize=7,
                            color="white" if frac[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, label="share of the true class", fraction=0.04)
    return _png(fig)


def per_class_bars(values: dict[str, float | None], *, name: str) -> bytes:
    """One bar per class (detection: per-class AP of the round); undefined values marked n/a."""
    classes = list(values)
    fig = Figure(figsize=(min(2.5 + 0.45 * len(classes), 14), 3.2))
    ax = fig.add_subplot()
    vals = [float(v) if (v := values[c]) is not None else 0.0 for c in classes]
    bars = ax.bar(range(len(classes)), vals, color="#4c72b0")
    for b, c in zip(bars, classes):
        ax.text(b.get_x() + b.get_width() / 2, b.get_height() + 0.01,
                "n/a" if values[c] is None else f"{values[c]:.2f}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(classes)), classes, rotation=45 if len(classes) > 8 else 0)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel(f"holdout {name}")
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def stacked_bars(rounds: Sequence[int], series: dict[str, Sequence[int]], colours: dict[str, str], *,
                 ylabel: str, rate: Sequence[float | None] | None = None, rate_label: str = "") -> bytes:
    """Bars stacked per round (one colour per series), optionally a rate in [0, 1] on a
    second axis."""
    fig = Figure(figsize=(7, 3.4))
    ax = fig.add_subplot()
    x = np.arange(len(rounds))
    bottom = np.zeros(len(rounds))
    for name, vals in series.items():
        v = np.asarray(vals, dtype=float)
        ax.bar(x, v, bottom=bottom, color=colours.get(name), label=name, width=0.7)
        bottom += v
    ax.set_xticks(x, [f"r{r}" for r in rounds])
    ax.set_xlabel("round")
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    handles, names = ax.get_legend_handles_labels()
    two_axes = rate is not None and any(r is not None for r in rate)
    if rate is not None and two_axes:
        ax2 = ax.twinx()
        xs = [xi for xi, r in zip(x, rate) if r is not None]
        ys = [r for r in rate if r is not None]
        (line,) = ax2.plot(xs, ys, "o-", color="black", lw=1.5, ms=4)
        ax2.set_ylim(0, 1.05)
        ax2.set_ylabel(rate_label)
        handles.append(line)
        names.append(rate_label)
    ax.legend(handles, names, fontsize=8, loc="upper left", bbox_to_anchor=(1.12 if two_axes else 1.0, 1.0))
    if not bottom.any():
        ax.text(0.5, 0.5, "nothing yet", transform=ax.transAxes, ha="center", va="center", color="#777")
    return _png(fig)


def uncertainty_histogram(uncertainty: np.ndarray, selected: np.ndarray, *, name: str) -> bytes:
    """Histogram of the pool's uncertainty (log count axis), the selected items' own histogram
    on top."""
    u = np.asarray(uncertainty, dtype=float)
    sel = np.asarray(selected, dtype=bool)
    fig = Figure(figsize=(7, 3.2))
    ax = fig.add_subplot()
    lo, hi = (0.0, 1.0) if u.size == 0 or (u.min() >= 0 and u.max() <= 1) else (float(u.min()), float(u.max()))
    bins = np.linspace(lo, hi, 41).tolist()
    ax.hist(u, bins=bins, color="#9db4d6", label=f"pool ({u.size:,})")
    if sel.any():
        ax.hist(u[sel], bins=bins, color="#c44e52", label=f"selected for review ({int(sel.sum())})")
    ax.set_yscale("log")
    ax.set_xlabel(f"{name} (higher = more uncertain)")
    ax.set_ylabel("items (log scale)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _png(fig)


def embedding_map(xy: np.ndarray, predicted: Sequence[str], selected: np.ndarray, classes: Sequence[str], *,
                  explained: tuple[float, float] | None = None) -> bytes:
    """Scatter of 2-D points coloured by predicted class; selected items drawn on top as black
    rings."""
    xy = np.asarray(xy, dtype=float)
    sel = np.asarray(selected, dtype=bool)
    names = list(classes) + sorted(set(predicted) - set(classes))
    colours = class_colours(names)
    fig = Figure(figsize=(7.5, 5.5))
    ax = fig.add_subplot()
    pred = np.asarray(predicted, dtype=object)
    for c in names:
        m = (pred == c) & ~sel
        if m.any():
            ax.scatter(xy[m, 0], xy[m, 1], s=9, color=colours[c], alpha=0.6, lw=0, label=c)
    if sel.any():
        ax.scatter(xy[sel, 0], xy[sel, 1], s=55, facecolors=[colours[c] for c in pred[sel]], edgecolors="black",
                   linewidths=1.4, label="selected", zorder=3)
    ax.set_xticks([])
    ax.set_yticks([])
    if explained is not None:
        ax.set_xlabel(f"PC1 ({explained[0]:.0%} of variance)")
        ax.set_ylabel(f"PC2 ({explained[1]:.0%} of variance)")
    ax.legend(fontsize=7, markerscale=1.5, loc="upper left", bbox_to_anchor=(1.0, 1.0),
              ncol=1 if len(names) <= 20 else 2, title="predicted class")
    return _png(fig)


def thumbnail(path: Path, *, side: int = 128, boxes: Sequence[Box] = (), classes: Sequence[str] = (),
              min_score: float = 0.0) -> tuple[bytes, str]:
    """The image at ``path`` scaled so its longer side is ``side`` pixels (small images enlarged
    with nearest-neighbour, so their pixels stay crisp), with ``boxes`` (pixels of the original
    image; only those with ``score >= min_score``) drawn in their class colour.

    Returns ``(bytes, mime type)``: PNG for images up to 64 pixels a side (exact pixels, a few
    hundred bytes), JPEG (quality 85) for larger ones (photos: ~5 KB instead of ~30 KB).

    Raises whatever reading the image raises (the caller shows a placeholder)."""
    from pseudolabel.data.images import load_rgb, resize_image

    img = load_rgb(path)
    w, h = img.size
    scale = side / max(w, h)
    resample = Image.Resampling.NEAREST if scale >= 2 else Image.Resampling.LANCZOS
    img = resize_image(img, (max(1, round(w * scale)), max(1, round(h * scale))), resample=resample)
    if boxes:
        colours = class_colours(list(classes) + sorted({b.label for b in boxes} - set(classes)))
        draw = ImageDraw.Draw(img)
        for b in boxes:
            if (b.score if b.score is not None else 1.0) < min_score:
                continue
            r, g, bl, _ = colours[b.label]
            draw.rectangle([b.x1 * scale, b.y1 * scale, b.x2 * scale, b.y2 * scale],
                           outline=(int(r * 255), int(g * 255), int(bl * 255)), width=2)
    buf = io.BytesIO()
    if max(w, h) <= 64:
        img.save(buf, format="PNG", optimize=True)
        return buf.getvalue(), "image/png"
    img.save(buf, format="JPEG", quality=85)
    return buf.getvalue(), "image/jpeg"
