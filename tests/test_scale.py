"""Selection at scale: the device/torch paths pick what the numpy paths and brute force pick."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import cdist
from scipy.stats import entropy

from pseudolabel.strategies.diversity import kcenter_greedy
from pseudolabel.sim.scale import (
    hybrid_device,
    kcenter_greedy_device,
    resolve_backend,
    top_k_uncertain,
)
from pseudolabel.strategies.selection import select


def _brute_kcenter(x: np.ndarray, k: int, first: int, labelled: np.ndarray | None = None) -> list[int]:
    """Farthest-first traversal from the full float64 distance matrix."""
    d = cdist(x.astype(np.float64), x.astype(np.float64), "sqeuclidean")
    min_d = np.full(len(x), np.inf)
    if labelled is not None:
        min_d = cdist(x.astype(np.float64), labelled.astype(np.float64), "sqeuclidean").min(axis=1)
    picks = [first]
    for _ in range(k - 1):
        min_d = np.minimum(min_d, d[picks[-1]])
        min_d[picks] = -np.inf
        picks.append(int(np.argmax(min_d)))
    return picks


def _probs(rng: np.random.Generator, n: int, c: int) -> np.ndarray:
    return rng.dirichlet(np.full(c, 0.3), size=n)


@pytest.mark.parametrize("device", ["cpu", "torch-cpu"])
def test_kcenter_matches_brute_force(device: str) -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((300, 16)).astype(np.float32)
    picks = kcenter_greedy_device(x, 25, start=7, device=device, chunk_size=64)
    assert picks.tolist() == _brute_kcenter(x, 25, 7)


@pytest.mark.parametrize("device", ["cpu", "torch-cpu"])
def test_kcenter_with_labelled_set_matches_brute_force(device: str) -> None:
    rng = np.random.default_rng(2)
    x = rng.standard_normal((400, 8)).astype(np.float32)
    lab = rng.standard_normal((1500, 8)).astype(np.float32)  # > one labelled block of 1024
    picks = kcenter_greedy_device(x, 20, already_selected=lab, device=device, chunk_size=100)
    first = int(np.argmax(cdist(x, lab, "sqeuclidean").min(axis=1)))
    assert picks.tolist() == _brute_kcenter(x, 20, first, lab)


def test_torch_path_equals_numpy_path_and_handles_duplicates() -> None:
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2000, 32)).astype(np.float32)
    np.testing.assert_array_equal(
        kcenter_greedy_device(x, 50, seed=5, device="torch-cpu"), kcenter_greedy(x, 50, seed=5)
    )
    dup = np.repeat(x[:3], 4, axis=0)  # 12 rows, 3 distinct points
    picks = kcenter_greedy_device(dup, 12, start=0, device="torch-cpu")
    assert sorted(picks.tolist()) == list(range(12))  # every row once, never a repeat


def test_top_k_uncertain_is_the_brute_force_top_k() -> None:
    rng = np.random.default_rng(4)
    p = _probs(rng, 5000, 6)
    idx, sc = top_k_uncertain(p, 40)
    ent = entropy(p, axis=1)
    assert idx.tolist() == np.argsort(-ent, kind="stable")[:40].tolist()
    np.testing.assert_allclose(sc, ent[idx])
    assert np.all(np.diff(sc) <= 0)  # most uncertain first
    lc_idx, _ = top_k_uncertain(p, 40, score="least_confidence")
    assert lc_idx.tolist() == np.argsort(p.max(axis=1), kind="stable")[:40].tolist()


@pytest.mark.parametrize("labelled", [False, True])
def test_hybrid_equals_select_hybrid(labelled: bool) -> None:
    rng = np.random.default_rng(5)
    p = _probs(rng, 3000, 5)
    emb = rng.standard_normal((3000, 12)).astype(np.float32)
    lab = rng.standard_normal((30, 12)).astype(np.float32) if labelled else None
    ref = select("hybrid", k=30, probs=p, embeddings=emb, labelled_embeddings=lab, hybrid_factor=4)
    for device in ("cpu", "torch-cpu"):
        idx, sc = hybrid_device(p, emb, 30, hybrid_factor=4, labelled_embeddings=lab, device=device)
        assert idx.tolist() == ref.indices.tolist()
        np.testing.assert_allclose(sc, ref.scores)


def test_bad_input() -> None:
    x = np.zeros((5, 2), dtype=np.float32)
    with pytest.raises(ValueError, match="k must be an int in"):
        kcenter_greedy_device(x, 6, device="torch-cpu")
    bad = x.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="row 3"):
        kcenter_greedy_device(bad, 2, device="torch-cpu")
    with pytest.raises(ValueError, match="unknown device"):
        resolve_backend("tpu")
    with pytest.raises(ValueError, match="unknown score"):
        top_k_uncertain(np.full((3, 2), 0.5), 1, score="bald")
    assert resolve_backend("cpu") == "numpy"
