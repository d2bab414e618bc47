"""BALD, BADGE and TypiClust: known answers, directional checks, registry wiring."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from pseudolabel.strategies import STRATEGIES, STRATEGY_NAMES, select
from pseudolabel.strategies.badge import badge, gradient_embeddings
from pseudolabel.strategies.bayesian import _bald_strategy, bald, select_bald
from pseudolabel.strategies.typiclust import typicality, typiclust

LOG2 = float(np.log(2.0))


def test_new_strategies_registered_without_changing_builtin_names():
    assert {"bald", "badge", "typiclust"} <= set(STRATEGIES)
    assert "bald" not in STRATEGY_NAMES  # built-in tuple stays as the config/CLI know it


# --- BALD -----------------------------------------------------------------------------


def test_bald_known_answers():
    mc = np.array(
        [
            [[1.0, 0.0], [0.5, 0.5], [0.9, 0.1]],
            [[0.0, 1.0], [0.5, 0.5], [0.9, 0.1]],
        ]
    )  # (T=2, N=3, C=2)
    s = bald(mc)
    assert s.shape == (3,) and s.dtype == np.float64
    np.testing.assert_allclose(s, [LOG2, 0.0, 0.0], atol=1e-12)


def test_bald_disagreement_beats_agreement_at_equal_mean_uncertainty():
    rng = np.random.default_rng(0)
    t, c = 20, 3
    # Item 0: every pass says the same, near-uniform distribution (aleatoric).
    agree = np.tile([0.34, 0.33, 0.33], (t, 1))
    # Item 1: each pass is confident in a random class; averaged it is near-uniform too.
    confident = np.eye(c)[rng.integers(c, size=t)] * 0.9 + 0.1 / c
    disagree = confident / confident.sum(axis=1, keepdims=True)
    mc = np.stack([agree, disagree], axis=1)  # (T, 2, C)
    mean = mc.mean(axis=0)
    # Both items are about equally uncertain on average ...
    ent = -(mean * np.log(mean)).sum(axis=1)
    assert abs(ent[0] - ent[1]) < 0.1
    s = bald(mc)
    # ... but only the disagreeing one has epistemic uncertainty.
    assert s[1] > 0.5 and s[0] < 1e-9
    sel = select_bald(mc, k=1)
    assert sel.indices.tolist() == [1] and sel.strategy == "bald"


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.full((3, 2), 0.5), "3-D"),
        (np.full((2, 3, 2), 0.6), "sums to"),
        (np.array([[[1.5, -0.5]]]), r"mc_probs\[0, 0, 1\]"),
        (np.zeros((0, 3, 2)), "T >= 1"),
    ],
)
def test_bald_rejects_bad_input(bad, match):
    with pytest.raises(ValueError, match=match):
        bald(bad)


def test_select_bald_orders_by_score_and_class_balances():
    rng = np.random.default_rng(1)
    mc = rng.dirichlet(np.ones(4) * 0.3, size=(8, 60))  # (8, 60, 4)
    s = bald(mc)
    sel = select_bald(mc, k=10)
    np.testing.assert_allclose(sel.scores, s[sel.indices])
    assert np.all(np.diff(sel.scores) <= 0)
    assert s[np.setdiff1d(np.arange(60), sel.indices)].max() <= sel.scores.min()
    labels = np.arange(60) % 2  # two "classes"
    bal = select_bald(mc, k=10, class_balance=True, labels_pred=labels)
    assert np.bincount(labels[bal.indices], minlength=2).tolist() == [5, 5]


def test_bald_via_registry_needs_mc_probs():
    probs = np.full((5, 2), 0.5)
    with pytest.raises(ValueError, match="select_bald"):
        select("bald", k=2, probs=probs)
    # Forward-compatible path: a request carrying mc_probs is ranked by BALD.
    mc = np.stack([np.tile([0.5, 0.5], (5, 1))] * 2)
    mc[0, 3], mc[1, 3] = [1.0, 0.0], [0.0, 1.0]
    req = SimpleNamespace(mc_probs=mc, n=5, k=1, class_balance=False, labels_pred=None)
    out = _bald_strategy(req)  # type: ignore[arg-type]
    assert out.indices.tolist() == [3]
    np.testing.assert_allclose(out.scores, [LOG2])


@pytest.fixture(scope="module")
def tiny_items(tmp_path_factory: pytest.TempPathFactory):
    from pseudolabel.types import Annotation, Item

    root: Path = tmp_path_factory.mktemp("mc")
    rng = np.random.default_rng(0)
    anns = []
    for i in range(12):
        label = "dark" if i % 2 else "light"
        base = 40 if label == "dark" else 210
        px = np.clip(base + rng.normal(0, 20, (16, 16, 3)), 0, 255).astype(np.uint8)
        path = root / f"{i}.png"
        Image.fromarray(px).save(path)
        anns.append(Annotation(item=Item(id=f"id{i}", path=path, width=16, height=16), label=label))
    return anns


def test_mc_dropout_samples_differ_and_model_is_restored(tiny_items):
    from pseudolabel.models.torchvision_cls import TorchvisionClassifier

    model = TorchvisionClassifier(
        ["light", "dark"], epochs=1, image_size=16, device="cpu", dropout=0.5, batch_size=12
    ).fit(tiny_items)
    items = [a.item for a in tiny_items]
    before, _ = model.predict_proba_embed(items)
    mc = model.mc_dropout_probs(items, T=6, batch_size=5, seed=3)
    assert mc.shape == (6, 12, 2) and mc.dtype == np.float32
    np.testing.assert_allclose(mc.sum(axis=2), 1.0, atol=1e-5)
    assert np.ptp(mc, axis=0).max() > 1e-4  # dropout really was on: passes differ
    np.testing.assert_array_equal(mc, model.mc_dropout_probs(items, T=6, batch_size=5, seed=3))
    assert not model.net_.training and not any(m.training for m in model.net_.modules())
    after, _ = model.predict_proba_embed(items)
    np.testing.assert_array_equal(before, after)  # eval-mode predictions unaffected
    assert bald(mc).shape == (12,)


def test_mc_dropout_refuses_models_without_dropout(tiny_items):
    from pseudolabel.models.torchvision_cls import TorchvisionClassifier

    model = TorchvisionClassifier(["light", "dark"], epochs=1, image_size=16, device="cpu", dropout=0.0)
    with pytest.raises(ValueError, match="fitted"):
        model.mc_dropout_probs([a.item for a in tiny_items])
    model.fit(tiny_items[:4])
    with pytest.raises(ValueError, match="no dropout"):
        model.mc_dropout_probs([a.item for a in tiny_items])


# --- BADGE ----------------------------------------------------------------------------


def test_gradient_embeddings_known_answer():
    g = gradient_embeddings(np.array([[0.7, 0.3], [0.2, 0.8]]), np.array([[1.0, 2.0], [3.0, 0.0]]))
    # Row 0: yhat = 0, a = [0.3, -0.3]; row 1: yhat = 1, a = [-0.2, 0.2].
    np.testing.assert_allclose(g, [[0.3, 0.6, -0.3, -0.6], [-0.6, 0.0, 0.6, 0.0]], atol=1e-6)


def _kmeanspp_reference(g: np.ndarray, k: int, seed: int) -> list[int]:
    """Textbook k-means++ on explicit embeddings, same first pick and RNG use as badge."""
    rng = np.random.default_rng(seed)
    g = g.astype(np.float64)
    picks = [int(np.argmax((g**2).sum(axis=1)))]
    d = ((g - g[picks[0]]) ** 2).sum(axis=1)
    while len(picks) < k:
        d[picks] = 0.0
        nxt = int(rng.choice(len(g), p=d / d.sum()))
        picks.append(nxt)
        d = np.minimum(d, ((g - g[nxt]) ** 2).sum(axis=1))
    return picks


def test_badge_matches_kmeanspp_on_explicit_gradient_embeddings():
    rng = np.random.default_rng(5)
    probs = rng.dirichlet(np.ones(4), size=80)
    h = rng.normal(size=(80, 6))
    got = badge(probs, h, 7, seed=11, chunk_size=13)  # small chunks: the blocking is exercised
    ref = _kmeanspp_reference(gradient_embeddings(probs, h), 7, seed=11)
    assert got.tolist() == ref


def _groups_pool():
    """Three groups of exact-duplicate uncertain items with different gradient directions,
    plus confident items (gradient ~ 0)."""
    unc0, unc1 = [0.55, 0.45], [0.45, 0.55]
    rows = (
        [(unc0, [5.0, 0.0])] * 10  # group 0
        + [(unc0, [0.0, 5.0])] * 10  # group 1: orthogonal features
        + [(unc1, [5.0, 0.0])] * 10  # group 2: same features, other predicted class
        + [([0.999, 0.001], [5.0, 0.0])] * 10  # confident
    )
    probs = np.array([r[0] for r in rows])
    h = np.array([r[1] for r in rows])
    return probs, h, np.repeat([0, 1, 2, 3], 10)


def test_badge_picks_one_item_per_duplicate_group():
    probs, h, group = _groups_pool()
    keep = group < 3  # uncertain groups only
    for seed in range(20):
        picks = badge(probs[keep], h[keep], 3, seed=seed)
        assert sorted(group[keep][picks].tolist()) == [0, 1, 2]  # never a duplicate


def test_badge_prefers_large_gradients_and_spreads_picks():
    probs, h, group = _groups_pool()
    # First pick: the largest gradient norm (an uncertain item), deterministically.
    assert group[badge(probs, h, 1, seed=0)[0]] < 3
    covered, confident = [], 0
    for seed in range(100):
        picks = badge(probs, h, 3, seed=seed)
        assert len(set(picks.tolist())) == 3
        covered.append(len(set(group[picks].tolist()) - {3}))
        confident += int(np.sum(group[picks] == 3))
    # Uniform random picks would take a confident item 25% of the time, top-3 by norm
    # would cover 1 group; BADGE covers more than 2 on average and rarely wastes a pick.
    assert np.mean(covered) > 2.2
    assert confident / 300 < 0.2


def test_badge_through_select_and_validation():
    probs, h, _ = _groups_pool()
    sel = select("badge", k=3, probs=probs, embeddings=h, seed=0)
    assert sel.indices.shape == (3,) and sel.strategy == "badge"
    assert np.all(sel.scores >= 0)
    with pytest.raises(ValueError, match="needs embeddings"):
        select("badge", k=3, probs=probs)
    with pytest.raises(ValueError, match="class_balance"):
        select("badge", k=3, probs=probs, embeddings=h, class_balance=True)
    with pytest.raises(ValueError, match="N=40 rows but embeddings has N=39"):
        badge(probs, h[:-1], 2)
    with pytest.raises(ValueError, match=r"k must be an int in \[1, N=40\]"):
        badge(probs, h, 41)


# --- TypiClust ------------------------------------------------------------------------

CENTRES = np.array([[0.0, 0.0], [20.0, 0.0], [0.0, 20.0]])


def _blobs():
    """Three dense 2-D blobs of 40 points, each with one fringe point 3 units out."""
    rng = np.random.default_rng(0)
    pts, blob, fringe = [], [], []
    for b, c in enumerate(CENTRES):
        pts.append(c + rng.normal(0, 0.5, size=(40, 2)))
        pts.append(c[None] + [[3.0, 3.0]])
        blob += [b] * 41
        fringe += [False] * 40 + [True]
    return np.concatenate(pts), np.array(blob), np.array(fringe)


def test_typicality_dense_beats_outlier():
    x, blob, fringe = _blobs()
    t = typicality(x[blob == 0])
    assert t[-1] == t.min()  # the fringe point is the least typical of its blob
    assert np.argmax(t) != 40


def test_typiclust_picks_one_dense_centre_per_cluster():
    x, blob, fringe = _blobs()
    picks = typiclust(x, 3, seed=0)
    assert sorted(blob[picks].tolist()) == [0, 1, 2]
    assert not fringe[picks].any()
    # Each pick is near its blob's centre (blob std is 0.5 per axis).
    dist = np.linalg.norm(x[picks] - CENTRES[blob[picks]], axis=1)
    assert dist.max() < 0.6


def test_typiclust_skips_clusters_already_labelled():
    x, blob, _ = _blobs()
    labelled = CENTRES[[0]] + 0.1
    picks = typiclust(x, 2, labelled_embeddings=labelled, seed=0)
    assert sorted(blob[picks].tolist()) == [1, 2]


def test_typiclust_more_picks_than_clusters_stays_unique_and_deterministic():
    x, _, _ = _blobs()
    a = typiclust(x, 10, seed=1)
    assert len(set(a.tolist())) == 10
    np.testing.assert_array_equal(a, typiclust(x, 10, seed=1))


def test_typiclust_through_select_without_probs():
    x, blob, _ = _blobs()
    sel = select("typiclust", k=3, embeddings=x, seed=0)
    assert sorted(blob[sel.indices].tolist()) == [0, 1, 2]
    np.testing.assert_array_equal(sel.scores, np.zeros(3))
    with pytest.raises(ValueError, match="D=3 but embeddings have D=2"):
        typiclust(x, 2, labelled_embeddings=np.zeros((1, 3)))
    with pytest.raises(ValueError, match=r"k must be an int in \[1, N=123\]"):
        typiclust(x, 0)
