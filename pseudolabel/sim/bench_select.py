"""Time selection at pool scale: top-k entropy, greedy k-center and the hybrid.

    python -m pseudolabel.sim.bench_select                       # 1e4, 1e5, 1e6 x 128, k=100
    python -m pseudolabel.sim.bench_select --sizes 10000 --device torch-cpu

Synthetic inputs (the timings do not depend on what the numbers mean): probabilities are
Dirichlet(0.3) over 10 classes, embeddings standard normal float32 (N, dim). ``peak_rss_mb``
is the process's peak resident memory after that size ran (it only grows: sizes run in
increasing order, so each row is that size's peak); ``data_mb`` is probs (float64, as
``validate_probs`` returns them) + embeddings.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from pseudolabel.sim.scale import hybrid_device, kcenter_greedy_device, resolve_backend, top_k_uncertain


def _peak_rss_mb() -> float:
    # ru_maxrss is KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _timed(fn: Any) -> tuple[float, Any]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def run_bench_select(
    sizes: Sequence[int] = (10_000, 100_000, 1_000_000),
    dim: int = 128,
    k: int = 100,
    device: str = "auto",
    *,
    num_classes: int = 10,
    hybrid_factor: int = 5,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """One row per size: ``n, dim, k, backend, topk_entropy_s, kcenter_s, hybrid_s,
    peak_rss_mb, data_mb``. Times are wall seconds of one call each (k-center: ``k`` picks
    over all N rows; hybrid: top ``hybrid_factor * k`` by entropy, then k-center on those)."""
    backend = resolve_backend(device)
    rows = []
    for n in sorted(int(s) for s in sizes):
        rng = np.random.default_rng(seed)
        probs = rng.dirichlet(np.full(num_classes, 0.3), size=n)
        emb = rng.standard_normal((n, dim), dtype=np.float32)
        if backend not in ("numpy", "cpu"):
            kcenter_greedy_device(emb[: min(n, 1000)], 2, device=device)  # CUDA context + kernels warm
        t_top, _ = _timed(lambda: top_k_uncertain(probs, k))
        t_kc, _ = _timed(lambda: kcenter_greedy_device(emb, k, seed=seed, device=device))
        t_hy, _ = _timed(lambda: hybrid_device(probs, emb, k, hybrid_factor=hybrid_factor, device=device))
        rows.append(
            {
                "n": n, "dim": dim, "k": k, "backend": backend,
                "topk_entropy_s": round(t_top, 4), "kcenter_s": round(t_kc, 4), "hybrid_s": round(t_hy, 4),
                "peak_rss_mb": round(_peak_rss_mb(), 1),
                "data_mb": round((probs.nbytes + emb.nbytes) / 2**20, 1),
            }
        )
        del probs, emb
    return rows


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """``rows`` (one dict per run) as a fixed-width text table."""
    cols = ["n", "dim", "k", "backend", "topk_entropy_s", "kcenter_s", "hybrid_s", "data_mb", "peak_rss_mb"]
    widths = [max(len(c), *(len(str(r[c])) for r in rows)) for c in cols]
    lines = ["  ".join(c.rjust(w) for c, w in zip(cols, widths))]
    lines += ["  ".join(str(r[c]).rjust(w) for c, w in zip(cols, widths)) for r in rows]
    return "\n".join(lines)
