"""Low-budget strategies on embeddings: ProbCover (delta from purity, ball graph, greedy
coverage), the centroid cold start, cold_start by name, and the typicality -> uncertainty
schedule. Known answers on small data checked against brute force; directions and
invariants on blobs."""

from __future__ import annotations

import importlib
import tracemalloc

import numpy as np
import pytest

from pseudolabel.strategies import STRATEGIES, centroid, cold_start, probcover, purity_delta, select
from pseudolabel.strategies.diversity import l2_normalise
from pseudolabel.strategies.probcover import ball_graph, nearest_other_cluster
from pseudolabel.strategies.schedule import schedule_phase, scheduled_strategy
from pseudolabel.strategies.typiclust import typiclust


def _blobs(n_per: int = 50, k: int = 4, d: int = 8, spread: float = 0.3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """k well-separated Gaussian blobs: (k * n_per, d) float32 points and their blob ids."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d)) * 6
    x = np.concatenate([c + rng.normal(scale=spread, size=(n_per, d)) for c in centres]).astype(np.float32)
    return x, np.repeat(np.arange(k), n_per)


def _brute_sq(x: np.ndarray) -> np.ndarray:
    return ((x[:, None, :].astype(np.float64) - x[None, :, :]) ** 2).sum(-1)


def test_new_strategies_are_registered() -> None:
    assert {"probcover", "centroid", "schedule", "typiclust"} <= set(STRATEGIES)


# ---- ProbCover: delta from the purity --------------------------------------------------


def test_purity_delta_is_the_largest_delta_keeping_the_purity() -> None:
    from sklearn.cluster import KMeans

    rng = np.random.default_rng(1)
    x = l2_normalise(rng.normal(size=(120, 5)).astype(np.float32))
    alpha = 0.9
    delta = purity_delta(x, n_clusters=3, purity=alpha, seed=0, normalise=False)
    clusters = KMeans(n_clusters=3, random_state=0, n_init=3).fit_predict(x)
    d = np.sqrt(_brute_sq(x))

    def purity(r: float) -> float:   # ball = points closer than r, pure = one cluster in it
        return float(np.mean([(clusters[d[i] < r] == clusters[i]).all() for i in range(len(x))]))

    assert purity(delta) >= alpha
    # any larger radius that lets in one more point of another cluster drops below alpha
    larger = np.unique(d[d > delta + 1e-6])[0] + 1e-6
    assert purity(larger) < alpha
    assert 0 < delta < 2


def test_purity_delta_separates_blobs() -> None:
    x, _ = _blobs()
    xn = l2_normalise(x)
    delta = purity_delta(x, n_clusters=4)
    d = np.sqrt(_brute_sq(xn))
    same = np.equal.outer(np.repeat(np.arange(4), 50), np.repeat(np.arange(4), 50))
    # the radius is wider than a blob's inner spread, yet at least 95 % of the balls stay
    # inside one blob (k-means recovers the blobs)
    assert delta > np.median(d[same])
    impure = ((d < delta - 1e-5) & ~same).any(axis=1)     # float32 distances: allow rounding
    assert impure.mean() <= 0.05


def test_nearest_other_cluster_matches_brute_force() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(60, 4)).astype(np.float32)
    c = rng.integers(0, 3, size=60)
    rows = np.array([0, 5, 17, 59])
    d = np.sqrt(_brute_sq(x))
    want = [d[r][c != c[r]].min() for r in rows]
    np.testing.assert_allclose(nearest_other_cluster(x, c, rows), want, rtol=1e-4, atol=1e-4)


def test_ball_graph_matches_brute_force_and_is_symmetric(monkeypatch: pytest.MonkeyPatch) -> None:
    pc = importlib.import_module("pseudolabel.strategies.probcover")   # the package's `probcover` is the function
    rng = np.random.default_rng(3)
    x = rng.normal(size=(90, 3)).astype(np.float32)
    delta = 1.0
    want = _brute_sq(x) < delta**2
    monkeypatch.setattr(pc, "BLOCK_FLOATS", 90 * 7)    # blocks of 7 rows: chunking must not matter
    g = ball_graph(x, delta).toarray()
    # pairs within float rounding of delta may go either way; none elsewhere differ
    d = np.sqrt(_brute_sq(x))
    clear = np.abs(d - delta) > 1e-4
    np.testing.assert_array_equal(g[clear], want[clear])
    np.testing.assert_array_equal(g, g.T)
    assert g.diagonal().all()


def test_ball_graph_refuses_too_many_edges() -> None:
    x = np.random.default_rng(0).normal(size=(200, 2)).astype(np.float32)
    with pytest.raises(ValueError, match=r"more than 1,000 pairs.*selection.probcover.delta"):
        ball_graph(x, 10.0, max_edges=1000)


# ---- ProbCover: greedy coverage ----------------------------------------------------------


def test_probcover_first_pick_covers_the_most_points() -> None:
    rng = np.random.default_rng(4)
    x = l2_normalise(rng.normal(size=(150, 4)).astype(np.float32))
    delta = 0.6
    picks = probcover(x, 5, delta=delta, normalise=False)
    degree = (_brute_sq(x) < delta**2).sum(1)
    assert degree[picks[0]] == degree.max()
    assert len(set(picks.tolist())) == 5


def test_probcover_covers_each_blob_once_and_skips_labelled_blobs() -> None:
    x, blob = _blobs()
    picks = probcover(x, 4, n_clusters=4)
    assert sorted(blob[picks].tolist()) == [0, 1, 2, 3]
    # blob 0 already has a label: the 3 picks go to the other blobs
    picks = probcover(x, 3, n_clusters=4, labelled_embeddings=x[:2])
    assert sorted(blob[picks].tolist()) == [1, 2, 3]


def test_probcover_fills_randomly_once_all_is_covered_and_is_deterministic() -> None:
    x, _ = _blobs(n_per=10)
    a = probcover(x, 25, n_clusters=4, seed=7)
    assert len(set(a.tolist())) == 25
    np.testing.assert_array_equal(a, probcover(x, 25, n_clusters=4, seed=7))
    # delta 0: no ball holds anything, every pick is random but still unique
    z = probcover(x, 10, delta=0.0)
    assert len(set(z.tolist())) == 10


def test_probcover_never_builds_an_n_by_n_matrix(monkeypatch: pytest.MonkeyPatch) -> None:
    pc = importlib.import_module("pseudolabel.strategies.probcover")
    monkeypatch.setattr(pc, "BLOCK_FLOATS", 4000 * 100)    # distance blocks of 100 rows (1.5 MiB)
    rng = np.random.default_rng(5)
    n = 4000
    x = rng.normal(size=(n, 16)).astype(np.float32)
    tracemalloc.start()
    try:
        probcover(x, 20, delta=0.5)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < n * n * 4 / 8, f"peak {peak / 2**20:.1f} MiB"    # an N x N float32 matrix is 61 MiB


@pytest.mark.parametrize(
    "kwargs, word",
    [
        ({"k": 0}, "k must be"),
        ({"k": 3}, "delta or n_clusters"),
        ({"k": 3, "delta": -1.0}, "delta must be"),
        ({"k": 3, "n_clusters": 1}, "n_clusters must be"),
        ({"k": 3, "n_clusters": 2, "purity": 1.5}, "purity"),
        ({"k": 3, "delta": 0.5, "labelled_embeddings": np.zeros((2, 3))}, "D=3"),
    ],
)
def test_probcover_bad_input(kwargs: dict, word: str) -> None:  # type: ignore[type-arg]
    x, _ = _blobs(n_per=5)
    k = kwargs.pop("k")
    with pytest.raises(ValueError, match=word):
        probcover(x, k, **kwargs)


def test_probcover_through_select_takes_classes_from_probs_and_options() -> None:
    x, blob = _blobs()
    probs = np.full((len(x), 4), 0.25)
    sel = select("probcover", k=4, probs=probs, embeddings=x, seed=0)
    assert sorted(blob[sel.indices].tolist()) == [0, 1, 2, 3]
    np.testing.assert_allclose(sel.scores, np.log(4))            # entropy of the picks
    same = select("probcover", k=4, embeddings=x, options={"probcover": {"n_clusters": 4}})
    np.testing.assert_array_equal(sel.indices, same.indices)
    with pytest.raises(ValueError, match="delta or n_clusters"):
        select("probcover", k=4, embeddings=x)
    with pytest.raises(ValueError, match="class_balance"):
        select("probcover", k=4, probs=probs, embeddings=x, class_balance=True)


# ---- centroid cold start and cold_start by name ----------------------------------------


def test_centroid_picks_the_point_nearest_each_blob_centre() -> None:
    x, blob = _blobs()
    picks = centroid(x, 4, normalise=False)
    assert sorted(blob[picks].tolist()) == [0, 1, 2, 3]
    for p in picks:
        members = x[blob == blob[p]]
        dist = np.linalg.norm(members - members.mean(0), axis=1)
        # the pick is among the 3 members nearest the blob's mean
        assert np.linalg.norm(x[p] - members.mean(0)) <= np.sort(dist)[2] + 1e-6


def test_centroid_skips_covered_clusters_and_stays_unique() -> None:
    x, blob = _blobs()
    picks = centroid(x, 3, labelled_embeddings=x[50:52])          # blob 1 is labelled
    assert 1 not in blob[picks].tolist() and len(set(blob[picks].tolist())) == 3
    many = centroid(x, 30, seed=2)
    assert len(set(many.tolist())) == 30
    np.testing.assert_array_equal(many, centroid(x, 30, seed=2))


@pytest.mark.parametrize("method", ["centroid", "typiclust", "probcover", "kcenter", "random"])
def test_cold_start_every_method_gives_k_unique_rows(method: str) -> None:
    x, blob = _blobs()
    picks = cold_start(x, 8, method=method, n_classes=4, seed=0)
    assert picks.dtype == np.int64 and len(set(picks.tolist())) == 8
    assert picks.min() >= 0 and picks.max() < len(x)
    if method != "random":     # representative methods reach every blob with 8 picks
        assert set(blob[picks].tolist()) == {0, 1, 2, 3}
    np.testing.assert_array_equal(picks, cold_start(x, 8, method=method, n_classes=4, seed=0))


def test_cold_start_unknown_method() -> None:
    with pytest.raises(ValueError, match="choose one of: centroid, typiclust, probcover, kcenter, random"):
        cold_start(np.zeros((5, 2)), 2, method="badge")


# ---- schedule ------------------------------------------------------------------------------


def test_schedule_phase_switches_at_labels_per_class() -> None:
    assert schedule_phase(49, 10, switch_per_class=5) == "low"
    assert schedule_phase(50, 10, switch_per_class=5) == "high"
    assert schedule_phase(0, 10, switch_per_class=0) == "high"
    assert scheduled_strategy(20, 10, low="probcover", high="hybrid") == "probcover"
    assert scheduled_strategy(60, 10, low="probcover", high="hybrid") == "hybrid"
    with pytest.raises(ValueError, match="not a typicality strategy"):
        scheduled_strategy(0, 10, low="margin")
    with pytest.raises(ValueError, match="schedule high 'bald' is not accepted"):
        scheduled_strategy(0, 10, high="bald")
    with pytest.raises(ValueError, match="switch_per_class"):
        schedule_phase(0, 10, switch_per_class=-1)


def test_schedule_runs_typicality_then_uncertainty() -> None:
    x, _ = _blobs()
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(4), size=len(x))
    opts = {"schedule": {"low": "typiclust", "high": "margin", "switch_per_class": 2}}
    few = x[:7]                        # 7 labels < 2 per class x 4 classes
    enough = x[:8]
    low = select("schedule", k=5, probs=probs, embeddings=x, labelled_embeddings=few, options=opts)
    want_low = typiclust(x, 5, labelled_embeddings=few, seed=0)
    np.testing.assert_array_equal(low.indices, want_low)
    high = select("schedule", k=5, probs=probs, embeddings=x, labelled_embeddings=enough, options=opts)
    want_high = select("margin", k=5, probs=probs)
    np.testing.assert_array_equal(high.indices, want_high.indices)
    np.testing.assert_allclose(high.scores, want_high.scores)
    assert high.strategy == "schedule:margin" and low.strategy == "schedule:typiclust"
    # defaults: typiclust below 5 per class, margin from there on; no labels at all = low
    np.testing.assert_array_equal(select("schedule", k=5, probs=probs, embeddings=x).indices,
                                  typiclust(x, 5, seed=0))
    with pytest.raises(ValueError, match="unknown schedule options"):
        select("schedule", k=5, probs=probs, embeddings=x, options={"schedule": {"swtich": 3}})
    with pytest.raises(ValueError, match="needs probs"):
        select("schedule", k=5, embeddings=x)


def test_select_rejects_malformed_options() -> None:
    with pytest.raises(ValueError, match="options must map strategy names"):
        select("margin", k=1, probs=np.full((3, 2), 0.5), options={"probcover": 0.3})  # type: ignore[dict-item]


# ---- detection: image selection on embeddings from any source ----------------------------


def test_detection_select_images_on_backbone_embeddings() -> None:
    from pseudolabel.strategies.detection import detection_strategies, select_images

    x, blob = _blobs()
    scores = np.linspace(0, 1, len(x))            # the last blob is the most uncertain
    for name in ("typiclust", "centroid", "probcover", "kcenter"):
        sel = select_images(scores, 4, strategy=name, embeddings=x, n_classes=4, seed=0)
        assert len(set(sel.indices.tolist())) == 4, name
        if name != "kcenter":
            assert sorted(blob[sel.indices].tolist()) == [0, 1, 2, 3], name
        np.testing.assert_allclose(sel.scores, scores[sel.indices])
    top = select_images(scores, 3, strategy="entropy")
    assert top.indices.tolist() == [199, 198, 197]
    hyb = select_images(scores, 3, strategy="hybrid", embeddings=x, hybrid_factor=2)
    assert set(hyb.indices.tolist()) <= set(range(194, 200)) and hyb.indices[0] == 199
    lab = select_images(scores, 3, strategy="typiclust", embeddings=x, labelled_embeddings=x[150:152])
    assert 3 not in blob[lab.indices].tolist()
    assert "probcover" in detection_strategies()
    with pytest.raises(ValueError, match="needs embeddings"):
        select_images(scores, 3, strategy="kcenter")
    with pytest.raises(ValueError, match="not one of"):
        select_images(scores, 3, strategy="badge", embeddings=x)
    with pytest.raises(ValueError, match="same backbone"):
        select_images(scores, 3, strategy="kcenter", embeddings=x, labelled_embeddings=np.zeros((2, 3)))


def test_config_carries_strategy_options() -> None:
    from pseudolabel.config import ConfigError, load_config

    base = {"project": "p", "workdir": "/tmp/w", "classes": ["a", "b"],
            "data": {"seed": {"path": "/tmp/s"}, "pool": {"path": "/tmp/p"}, "holdout": {"path": "/tmp/h"}}}
    cfg = load_config(data=base, environ={}, overrides=[
        "selection.strategy=schedule", "selection.schedule.low=probcover", "selection.schedule.high=hybrid",
        "selection.schedule.switch_per_class=3", "selection.probcover.delta=0.4"])
    opts = cfg.selection.strategy_options()
    assert opts["schedule"] == {"low": "probcover", "high": "hybrid", "switch_per_class": 3.0}
    assert opts["probcover"] == {"delta": 0.4, "purity": 0.95}
    with pytest.raises(ConfigError, match="schedule high 'bald' is not accepted"):
        load_config(data=base, environ={}, overrides=["selection.schedule.high=bald"])
    with pytest.raises(ConfigError, match="selection.probcover.delta"):
        load_config(data=base, environ={}, overrides=["selection.probcover.delta=3"])
