"""Selection at 10^6 scale: top-k uncertainty, greedy k-center and the hybrid, on the GPU
when there is one, with memory bounded by the embeddings themselves (never N x N).

- :func:`top_k_uncertain`: score ``(N, C)`` probabilities and take the k highest with
  ``np.argpartition`` (O(N)); only the k picks are sorted.
- :func:`kcenter_greedy_device`: greedy k-center. On CPU it *is*
  :func:`~pseudolabel.strategies.diversity.kcenter_greedy` (chunked numpy). On CUDA the same
  algorithm runs in torch: the embeddings are copied to the GPU once (N x D float32, 512 MB
  at 10^6 x 128), the state is one (N,) min-distance vector, each pick costs one (N, D) x (D,)
  product; the labelled set is compared in blocks of ``chunk_size x 1024``. Picks equal the
  numpy path's except where two candidates' distances agree to float32 rounding.
- :func:`hybrid_device`: the ``hybrid`` strategy of
  :mod:`~pseudolabel.strategies.selection` (top ``hybrid_factor * k`` by uncertainty, then
  k-center among them) with the k-center step on the device.

Scores point one way: higher = more uncertain. Distances are squared Euclidean.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pseudolabel.strategies.diversity import DEFAULT_CHUNK_SIZE, kcenter_greedy, validate_embeddings
from pseudolabel.strategies.selection import top_k
from pseudolabel.strategies.uncertainty import KERNELS, validate_probs

__all__ = ["hybrid_device", "kcenter_greedy_device", "resolve_backend", "top_k_uncertain"]

_LABELLED_BLOCK = 1024


def resolve_backend(device: str = "auto") -> str:
    """``"numpy"`` for CPU, or the torch CUDA device name (``"cuda"``, ``"cuda:1"``).

    ``"auto"``: CUDA when torch sees one, else numpy. ``"cpu"``: numpy. ``"torch-cpu"``:
    the torch code on the CPU (for tests and comparison). ``"cuda[:N]"``: CUDA, or
    ValueError when there is none.
    """
    if device in ("cpu", "numpy"):
        return "numpy"
    if device == "torch-cpu":
        return "cpu"
    try:
        import torch
    except ImportError:
        if device == "auto":
            return "numpy"
        raise ValueError(f"device {device!r} needs torch, which is not installed") from None
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "numpy"
    if device == "cuda" or device.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but CUDA is not available; use 'auto' or 'cpu'")
        return device
    raise ValueError(f"unknown device {device!r}; expected 'auto', 'cpu', 'torch-cpu', 'cuda' or 'cuda:N'")


def top_k_uncertain(probs: np.ndarray, k: int, *, score: str = "entropy") -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` most uncertain rows of ``probs`` (N, C).

    Returns ``(indices (k,) int64, scores (k,) float64)``, most uncertain first (ties to the
    lower index). ``score``: ``entropy`` (nats), ``margin`` or ``least_confidence``.
    O(N C) scoring + O(N) partition + O(k log k) sort.
    """
    if score not in KERNELS:
        raise ValueError(f"unknown score {score!r}; choose one of: {', '.join(sorted(KERNELS))}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive int; got {k!r}")
    p = validate_probs(probs)
    s = KERNELS[score](p)
    picks = top_k(s, int(min(k, s.shape[0])))
    return picks.astype(np.int64), s[picks].astype(np.float64)


def kcenter_greedy_device(
    embeddings: np.ndarray,
    k: int,
    *,
    already_selected: np.ndarray | None = None,
    seed: int | np.random.Generator | None = 0,
    start: int | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    device: str = "auto",
) -> np.ndarray:
    """Greedy k-center on ``device``; arguments and result as
    :func:`~pseudolabel.strategies.diversity.kcenter_greedy` ((k,) int64 pool indices in
    pick order). ``device``: see :func:`resolve_backend`."""
    backend = resolve_backend(device)
    if backend == "numpy":
        return kcenter_greedy(
            embeddings, k, already_selected=already_selected, seed=seed, start=start, chunk_size=chunk_size
        )
    return _kcenter_torch(embeddings, k, already_selected, seed, start, chunk_size, backend)


def _kcenter_torch(
    embeddings: np.ndarray,
    k: int,
    already_selected: np.ndarray | None,
    seed: int | np.random.Generator | None,
    start: int | None,
    chunk_size: int,
    device: str,
) -> np.ndarray:
    import torch

    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int; got {chunk_size!r}")
    chunk_size = int(chunk_size)
    arr = validate_embeddings(embeddings, chunk_size=chunk_size)
    n = arr.shape[0]
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= n:
        raise ValueError(f"k must be an int in [1, N={n}]; got {k!r}")
    if start is not None and (
        isinstance(start, bool) or not isinstance(start, (int, np.integer)) or not 0 <= start < n
    ):
        raise ValueError(f"start must be a pool index in [0, {n}); got {start!r}")
    lab = None
    if already_selected is not None:
        lab = validate_embeddings(already_selected, name="already_selected", chunk_size=chunk_size)
        if lab.shape[0] > 0 and lab.shape[1] != arr.shape[1]:
            raise ValueError(
                f"already_selected has dimension D={lab.shape[1]} but embeddings have D={arr.shape[1]}; "
                "both must come from the same embedding model"
            )

    dev = torch.device(device)
    x = torch.from_numpy(arr).to(dev)
    x_sq = torch.einsum("ij,ij->i", x, x)
    if lab is not None and lab.shape[0] > 0:
        min_dist = _min_dist_to_set_torch(x, x_sq, torch.from_numpy(lab).to(dev), chunk_size)
        first = int(start) if start is not None else int(torch.argmax(min_dist))
    else:
        min_dist = torch.full((n,), float("inf"), dtype=torch.float32, device=dev)
        if start is not None:
            first = int(start)
        else:
            rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
            first = int(rng.integers(n))

    picks = np.empty(int(k), dtype=np.int64)
    pick = first
    for i in range(int(k)):
        picks[i] = pick
        d = x_sq - 2.0 * (x @ x[pick]) + x_sq[pick]
        d.clamp_(min=0.0)
        torch.minimum(min_dist, d, out=min_dist)
        min_dist[pick] = -float("inf")  # never picked twice, even among exact duplicates
        if i + 1 < k:
            # torch.argmax returns the first maximal index, like numpy: ties to the lowest.
            pick = int(torch.argmax(min_dist))
    return picks


def _min_dist_to_set_torch(x: Any, x_sq: Any, others: Any, chunk_size: int) -> Any:
    import torch

    o_sq = torch.einsum("ij,ij->i", others, others)
    out = torch.full((x.shape[0],), float("inf"), dtype=torch.float32, device=x.device)
    for lo in range(0, x.shape[0], chunk_size):
        hi = lo + chunk_size
        for olo in range(0, others.shape[0], _LABELLED_BLOCK):
            ohi = olo + _LABELLED_BLOCK
            block = x_sq[lo:hi, None] - 2.0 * (x[lo:hi] @ others[olo:ohi].T) + o_sq[None, olo:ohi]
            torch.minimum(out[lo:hi], block.min(dim=1).values, out=out[lo:hi])
    return out.clamp_(min=0.0)


def hybrid_device(
    probs: np.ndarray,
    embeddings: np.ndarray,
    k: int,
    *,
    hybrid_factor: int = 5,
    uncertainty: str = "entropy",
    labelled_embeddings: np.ndarray | None = None,
    seed: int | None = 0,
    device: str = "auto",
) -> tuple[np.ndarray, np.ndarray]:
    """``hybrid`` selection: the ``hybrid_factor * k`` most uncertain of ``probs`` (N, C),
    then greedy k-center among their ``embeddings`` (N, D), keeping away from
    ``labelled_embeddings`` (M, D). Same picks as ``select("hybrid", ...)`` on CPU.

    Returns ``(indices (k,) int64, scores (k,) float64 uncertainty)`` in pick order.
    """
    if isinstance(hybrid_factor, bool) or not isinstance(hybrid_factor, (int, np.integer)) or hybrid_factor < 1:
        raise ValueError(f"hybrid_factor must be an int >= 1; got {hybrid_factor!r}")
    p = validate_probs(probs)
    if np.shape(embeddings)[0] != p.shape[0]:
        raise ValueError(f"probs has {p.shape[0]} rows but embeddings has {np.shape(embeddings)[0]}")
    k = int(min(k, p.shape[0]))
    cand, _ = top_k_uncertain(p, min(hybrid_factor * k, p.shape[0]), score=uncertainty)
    u = KERNELS[uncertainty](p)
    nothing_labelled = labelled_embeddings is None or np.shape(labelled_embeddings)[0] == 0
    emb = np.asarray(embeddings)[cand]
    local = kcenter_greedy_device(
        emb, k, already_selected=labelled_embeddings, start=0 if nothing_labelled else None, seed=seed, device=device
    )
    picks = cand[local]
    return picks, u[picks].astype(np.float64)
