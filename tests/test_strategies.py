"""Unit tests for pseudolabel.strategies: score functions, k-center, select, registry."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from pseudolabel.strategies import (
    SCORE_FUNCTIONS,
    STRATEGIES,
    STRATEGY_NAMES,
    Selection,
    entropy,
    get_strategy,
    kcenter_greedy,
    least_confidence,
    margin,
    random_scores,
    register,
    select,
)
from pseudolabel.strategies.selection import balanced_top_k, top_k

SCORE_FNS = [least_confidence, margin, entropy]


def _prob_rows(n_rows: int | None = None, max_classes: int = 8):
    """Hypothesis strategy: (N, C) rows of non-negative weights normalised to sum to 1."""

    @st.composite
    def build(draw):
        n = draw(st.integers(1, 12)) if n_rows is None else n_rows
        c = draw(st.integers(2, max_classes))
        w = draw(
            arrays(np.float64, (n, c), elements=st.floats(0, 1, allow_nan=False, width=32))
        )
        w[:, 0] += 1e-3  # no all-zero row
        return w / w.sum(axis=1, keepdims=True)

    return build()


def _upper_bound(fn, c: int) -> float:
    return {least_confidence: 1 - 1 / c, margin: 1.0, entropy: math.log(c)}[fn]


# --- score functions: direction --------------------------------------------------------


@pytest.mark.parametrize("fn", SCORE_FNS)
def test_uniform_row_scores_above_confident_row(fn):
    probs = np.array([[0.25, 0.25, 0.25, 0.25], [0.97, 0.01, 0.01, 0.01]])
    s = fn(probs)
    assert s[0] > s[1]


@pytest.mark.parametrize("fn", SCORE_FNS)
def test_one_hot_row_scores_zero_and_uniform_scores_max(fn):
    c = 5
    probs = np.vstack([np.eye(c)[2], np.full(c, 1 / c)])
    s = fn(probs)
    assert s[0] == pytest.approx(0.0, abs=1e-12)
    assert s[1] == pytest.approx(_upper_bound(fn, c))


def test_margin_orders_two_way_tie_above_confident_row():
    s = margin(np.array([[0.5, 0.5, 0.0], [0.9, 0.05, 0.05]]))
    assert s[0] > s[1]
    assert s[0] == pytest.approx(1.0)
    assert s[1] == pytest.approx(1 - 0.85)


def test_margin_uses_top_two_not_first_two_columns():
    # Top two are columns 2 and 1; a column-order implementation would be wrong.
    assert margin(np.array([[0.1, 0.3, 0.6]]))[0] == pytest.approx(1 - 0.3)


def test_entropy_is_in_nats_and_normalised_variant_in_unit_interval():
    probs = np.array([[0.5, 0.5, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25]])
    assert entropy(probs) == pytest.approx([math.log(2), math.log(4)])
    assert entropy(probs, normalise=True) == pytest.approx([0.5, 1.0])


def test_single_class_scores_are_zero():
    probs = np.ones((3, 1))
    for fn in SCORE_FNS:
        assert np.all(fn(probs) == 0)
    assert np.all(entropy(probs, normalise=True) == 0)


# --- score functions: invariants (hypothesis) ------------------------------------------


@settings(max_examples=60, deadline=None)
@given(probs=_prob_rows())
def test_scores_shape_bounds_and_class_permutation_invariance(probs):
    n, c = probs.shape
    col_perm = np.random.default_rng(c).permutation(c)
    for fn in SCORE_FNS:
        s = fn(probs)
        assert s.shape == (n,)
        assert s.dtype == np.float64
        assert np.all(s >= -1e-12)
        assert np.all(s <= _upper_bound(fn, c) + 1e-9)
        # Relabelling the classes must not change how uncertain an item is.
        np.testing.assert_allclose(fn(probs[:, col_perm]), s, atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(probs=_prob_rows(), seed=st.integers(0, 2**16))
def test_scores_are_row_permutation_equivariant(probs, seed):
    perm = np.random.default_rng(seed).permutation(probs.shape[0])
    for fn in SCORE_FNS:
        np.testing.assert_allclose(fn(probs[perm]), fn(probs)[perm], atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(probs=_prob_rows())
def test_sharpening_a_row_never_raises_uncertainty(probs):
    # Moving mass from every class to the argmax makes each row more confident.
    sharp = 0.5 * probs
    sharp[np.arange(probs.shape[0]), probs.argmax(axis=1)] += 0.5
    for fn in SCORE_FNS:
        assert np.all(fn(sharp) <= fn(probs) + 1e-9)


# --- validation ------------------------------------------------------------------------


@pytest.mark.parametrize("fn", SCORE_FNS)
@pytest.mark.parametrize(
    ("bad", "pattern"),
    [
        (np.array([[0.5, 0.5], [np.nan, 1.0]]), r"row 1 .*non-finite.*nan"),
        (np.array([[0.5, 0.5], [0.2, 0.8], [np.inf, 0.0]]), r"row 2 .*non-finite.*inf"),
        (np.array([[1.2, -0.2]]), r"row 0 .*negative.*-0\.2"),
        (np.array([[0.5, 0.5], [0.6, 0.6]]), r"row 1 sums to 1\.2"),
        (np.array([[3.0, 1.0]]), r"row 0 sums to 4\.0.*logits"),
        (np.array([0.5, 0.5]), r"2-D.*1-D.*\(2,\)"),
        (np.ones((2, 2, 2)) / 2, r"2-D.*3-D"),
        (np.empty((3, 0)), r"at least one class"),
    ],
)
def test_invalid_probs_raise_value_error_naming_the_problem(fn, bad, pattern):
    with pytest.raises(ValueError, match=pattern):
        fn(bad)


def test_row_sum_tolerance_is_1e_3():
    entropy(np.array([[0.5, 0.5009]]))  # within tolerance: accepted
    with pytest.raises(ValueError, match="row 0 sums to"):
        entropy(np.array([[0.5, 0.502]]))


def test_non_numeric_probs_raise_value_error():
    with pytest.raises(ValueError, match="numeric"):
        entropy([["a", "b"]])


def test_random_scores_seeded_and_validated():
    a = random_scores(50, rng=3)
    assert a.shape == (50,) and np.all((a >= 0) & (a < 1))
    np.testing.assert_array_equal(a, random_scores(50, rng=np.random.default_rng(3)))
    assert not np.array_equal(a, random_scores(50, rng=4))
    with pytest.raises(ValueError, match="non-negative int"):
        random_scores(-1, rng=0)


# --- k-center --------------------------------------------------------------------------


def _three_clusters(rng: np.random.Generator, per: int = 30) -> tuple[np.ndarray, np.ndarray]:
    centres = np.array([[0.0, 0.0], [100.0, 0.0], [0.0, 100.0]])
    x = np.concatenate([c + rng.normal(scale=0.5, size=(per, 2)) for c in centres])
    cluster = np.repeat(np.arange(3), per)
    return x, cluster


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_kcenter_picks_one_point_per_far_apart_cluster(seed):
    x, cluster = _three_clusters(np.random.default_rng(seed))
    picks = kcenter_greedy(x, 3, seed=seed)
    assert picks.dtype == np.int64 and picks.shape == (3,)
    assert sorted(cluster[picks]) == [0, 1, 2]


def test_kcenter_avoids_clusters_already_labelled():
    rng = np.random.default_rng(0)
    x, cluster = _three_clusters(rng)
    labelled = x[cluster == 0][:5]
    picks = kcenter_greedy(x, 2, already_selected=labelled)
    assert sorted(cluster[picks]) == [1, 2]


def _brute_force_kcenter(x: np.ndarray, k: int, first: int | None, labelled: np.ndarray | None):
    d = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)  # N x N, fine for a reference
    if labelled is not None:
        min_d = ((x[:, None, :] - labelled[None, :, :]) ** 2).sum(-1).min(1)
        first = int(np.argmax(min_d))
    else:
        min_d = np.full(x.shape[0], np.inf)
    picks = [first]
    min_d = np.minimum(min_d, d[first])
    for _ in range(k - 1):
        min_d[picks] = -np.inf
        nxt = int(np.argmax(min_d))
        picks.append(nxt)
        min_d = np.minimum(min_d, d[nxt])
    return np.array(picks)


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 4096])
@pytest.mark.parametrize("with_labelled", [False, True])
def test_kcenter_chunked_equals_brute_force_reference(chunk_size, with_labelled):
    rng = np.random.default_rng(42)
    x = rng.normal(size=(150, 6))
    # 1100 labelled rows: more than one labelled block (1024 rows).
    labelled = rng.normal(size=(1100, 6)) if with_labelled else None
    got = kcenter_greedy(x, 25, already_selected=labelled, start=None if with_labelled else 11, chunk_size=chunk_size)
    want = _brute_force_kcenter(x, 25, 11, labelled)
    np.testing.assert_array_equal(got, want)


def test_kcenter_random_start_is_seeded_and_picks_are_unique():
    x = np.random.default_rng(0).normal(size=(200, 4))
    a = kcenter_greedy(x, 50, seed=5)
    np.testing.assert_array_equal(a, kcenter_greedy(x, 50, seed=5))
    assert len(set(a.tolist())) == 50
    firsts = {int(kcenter_greedy(x, 1, seed=s)[0]) for s in range(10)}
    assert len(firsts) > 1  # the first pick really depends on the seed


def test_kcenter_with_duplicates_still_returns_unique_indices():
    x = np.zeros((10, 3))
    picks = kcenter_greedy(x, 10, already_selected=np.zeros((2, 3)))
    assert sorted(picks.tolist()) == list(range(10))


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"k": 0}, r"k must be an int in \[1, N=5\]; got 0"),
        ({"k": 6}, r"k must be an int in \[1, N=5\]; got 6"),
        ({"k": 2, "already_selected": np.zeros((1, 3))}, r"D=3 .*D=2"),
        ({"k": 2, "start": 5}, r"start must be a pool index"),
        ({"k": 2, "chunk_size": 0}, r"chunk_size must be a positive int"),
    ],
)
def test_kcenter_rejects_bad_arguments(kwargs, pattern):
    x = np.zeros((5, 2))
    with pytest.raises(ValueError, match=pattern):
        kcenter_greedy(x, **kwargs)


def test_kcenter_rejects_non_finite_and_non_2d_embeddings():
    x = np.zeros((5, 2))
    x[3, 1] = np.nan
    with pytest.raises(ValueError, match=r"embeddings row 3 .*non-finite"):
        kcenter_greedy(x, 2, chunk_size=2)
    with pytest.raises(ValueError, match=r"2-D.*1-D"):
        kcenter_greedy(np.zeros(5), 2)


# --- select ----------------------------------------------------------------------------


def _random_probs(n: int, c: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).dirichlet(np.full(c, 0.5), size=n)


@pytest.mark.parametrize("name", ["least_confidence", "margin", "entropy"])
def test_select_uncertainty_returns_top_k_most_uncertain_first(name):
    probs = _random_probs(300, 4)
    sel = select(name, k=20, probs=probs)
    all_scores = SCORE_FUNCTIONS[name](probs)
    assert isinstance(sel, Selection) and sel.strategy == name
    assert sel.indices.dtype == np.int64 and sel.indices.shape == (20,)
    assert len(set(sel.indices.tolist())) == 20
    np.testing.assert_allclose(sel.scores, all_scores[sel.indices])
    assert np.all(np.diff(sel.scores) <= 0)  # most uncertain first
    # Nothing left out scores above anything picked.
    rest = np.setdiff1d(np.arange(300), sel.indices)
    assert all_scores[rest].max() <= sel.scores.min()


def test_top_k_breaks_ties_by_lower_index():
    s = np.array([0.1, 0.9, 0.5, 0.9, 0.5, 0.5])
    np.testing.assert_array_equal(top_k(s, 4), [1, 3, 2, 4])
    np.testing.assert_array_equal(top_k(s, 10), [1, 3, 2, 4, 5, 0])


@pytest.mark.parametrize("name", STRATEGY_NAMES)
def test_select_k_at_least_n_returns_every_item_once(name):
    probs = _random_probs(12, 3)
    emb = np.random.default_rng(1).normal(size=(12, 5))
    for k in (12, 50):
        sel = select(name, k=k, probs=probs, embeddings=emb)
        assert sorted(sel.indices.tolist()) == list(range(12))
        assert sel.scores.shape == (12,)


@pytest.mark.parametrize("name", STRATEGY_NAMES)
@pytest.mark.parametrize("balance", [False, True])
def test_select_is_deterministic_given_seed_and_returns_unique_indices(name, balance):
    probs = _random_probs(200, 5, seed=3)
    emb = np.random.default_rng(4).normal(size=(200, 8))
    a = select(name, k=17, probs=probs, embeddings=emb, class_balance=balance, seed=9)
    b = select(name, k=17, probs=probs, embeddings=emb, class_balance=balance, seed=9)
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_array_equal(a.scores, b.scores)
    assert a.indices.shape == (17,) and len(set(a.indices.tolist())) == 17
    assert not a.indices.flags.writeable


def test_select_random_depends_on_seed_and_reports_entropy():
    probs = _random_probs(500, 4)
    a = select("random", k=30, probs=probs, seed=1)
    b = select("random", k=30, probs=probs, seed=2)
    assert set(a.indices.tolist()) != set(b.indices.tolist())
    np.testing.assert_allclose(a.scores, entropy(probs)[a.indices])
    only_emb = select("random", k=5, embeddings=np.zeros((10, 2)))
    np.testing.assert_array_equal(only_emb.scores, np.zeros(5))


def test_select_kcenter_spreads_over_clusters_and_reports_entropy_or_zero():
    x, cluster = _three_clusters(np.random.default_rng(0))
    sel = select("kcenter", k=3, embeddings=x)
    assert sorted(cluster[sel.indices]) == [0, 1, 2]
    np.testing.assert_array_equal(sel.scores, np.zeros(3))
    probs = _random_probs(len(x), 3)
    sel_p = select("kcenter", k=3, embeddings=x, probs=probs)
    np.testing.assert_allclose(sel_p.scores, entropy(probs)[sel_p.indices])
    lab = select("kcenter", k=2, embeddings=x, labelled_embeddings=x[cluster == 1][:3])
    assert sorted(cluster[lab.indices]) == [0, 2]


def _min_pairwise_distance(x: np.ndarray) -> float:
    d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
    return float(d[np.triu_indices(len(x), 1)].min())


def test_hybrid_picks_from_uncertain_set_and_spreads_more_than_top_k():
    # 20 near-duplicate very uncertain items in one spot, 40 slightly less uncertain items
    # spread out, 120 confident items. Plain top-k takes the duplicates; hybrid spreads.
    rng = np.random.default_rng(0)
    k, factor = 8, 5
    emb = np.concatenate(
        [rng.normal(scale=0.01, size=(20, 2)), rng.uniform(-50, 50, size=(40, 2)), rng.uniform(-50, 50, size=(120, 2))]
    )
    probs = np.concatenate(
        [
            np.tile([0.34, 0.33, 0.33], (20, 1)),
            np.tile([0.5, 0.3, 0.2], (40, 1)),
            np.tile([0.98, 0.01, 0.01], (120, 1)),
        ]
    )
    probs[:60] += rng.uniform(0, 1e-4, size=(60, 3))
    probs /= probs.sum(1, keepdims=True)
    plain = select("entropy", k=k, probs=probs)
    hyb = select("hybrid", k=k, probs=probs, embeddings=emb, hybrid_factor=factor)
    candidate_set = set(top_k(entropy(probs), factor * k).tolist())
    assert set(hyb.indices.tolist()) <= candidate_set
    assert plain.indices.max() < 20  # plain top-k spends the batch on the duplicates
    assert np.count_nonzero(hyb.indices < 20) == 1  # hybrid takes one of them
    assert len(set(hyb.indices.tolist())) == k
    assert _min_pairwise_distance(emb[hyb.indices]) > 10 * _min_pairwise_distance(emb[plain.indices])
    # No labelled set: the first pick is the most uncertain item.
    assert hyb.indices[0] == plain.indices[0]
    np.testing.assert_allclose(hyb.scores, entropy(probs)[hyb.indices])


def test_hybrid_uses_the_requested_uncertainty_score():
    probs = _random_probs(100, 4)
    emb = np.random.default_rng(0).normal(size=(100, 3))
    sel = select("hybrid", k=5, probs=probs, embeddings=emb, uncertainty="margin", hybrid_factor=1)
    # hybrid_factor=1: the candidates are exactly the top-k by margin.
    assert set(sel.indices.tolist()) == set(select("margin", k=5, probs=probs).indices.tolist())
    np.testing.assert_allclose(sel.scores, margin(probs)[sel.indices])


def _skewed_probs(n_a: int = 200, n_b: int = 20, n_c: int = 20) -> np.ndarray:
    # Class 0 items are the most uncertain of all; plain top-k would take only class 0.
    a = np.tile([0.40, 0.30, 0.30], (n_a, 1))
    b = np.tile([0.10, 0.80, 0.10], (n_b, 1))
    c = np.tile([0.05, 0.05, 0.90], (n_c, 1))
    probs = np.concatenate([a, b, c])
    probs += np.random.default_rng(0).uniform(0, 1e-3, size=probs.shape)
    return probs / probs.sum(1, keepdims=True)


def test_class_balance_spreads_picks_across_predicted_classes():
    probs = _skewed_probs()
    plain = select("entropy", k=9, probs=probs)
    assert set(probs[plain.indices].argmax(1).tolist()) == {0}
    bal = select("entropy", k=9, probs=probs, class_balance=True)
    assert np.bincount(probs[bal.indices].argmax(1), minlength=3).tolist() == [3, 3, 3]
    assert np.all(np.diff(bal.scores) <= 0)
    # Within each class the picks are that class's most uncertain items.
    ent = entropy(probs)
    cls = probs.argmax(1)
    for c in range(3):
        picked = bal.indices[cls[bal.indices] == c]
        others = np.setdiff1d(np.flatnonzero(cls == c), picked)
        assert ent[others].max() <= ent[picked].min()


def test_class_balance_small_class_is_exhausted_then_others_fill_up():
    probs = _skewed_probs(n_a=50, n_b=2, n_c=50)
    bal = select("least_confidence", k=12, probs=probs, class_balance=True)
    assert np.bincount(probs[bal.indices].argmax(1), minlength=3).tolist() == [5, 2, 5]


def test_class_balance_uses_labels_pred_when_given():
    probs = _skewed_probs()
    labels = np.arange(len(probs)) % 4
    bal = select("entropy", k=8, probs=probs, labels_pred=labels, class_balance=True)
    assert np.bincount(labels[bal.indices], minlength=4).tolist() == [2, 2, 2, 2]


@pytest.mark.parametrize("name", ["kcenter", "hybrid", "random"])
def test_class_balance_applies_to_every_builtin_strategy(name):
    probs = _skewed_probs()
    emb = np.random.default_rng(0).normal(size=(len(probs), 4))
    bal = select(name, k=9, probs=probs, embeddings=emb, class_balance=True)
    assert np.bincount(probs[bal.indices].argmax(1), minlength=3).tolist() == [3, 3, 3]


def test_balanced_top_k_round_robin_order():
    scores = np.array([0.9, 0.8, 0.7, 0.1, 0.2, 0.5])
    classes = np.array([0, 0, 0, 1, 1, 2])
    # Round 1: best of each class by score (0.9, 0.5, 0.2); round 2: (0.8, 0.1); round 3: 0.7.
    np.testing.assert_array_equal(balanced_top_k(scores, classes, 6), [0, 5, 4, 1, 3, 2])


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"strategy": "entropy", "k": 0}, r"k must be a positive int.*got 0"),
        ({"strategy": "entropy", "k": -3}, r"k must be a positive int.*got -3"),
        ({"strategy": "entropy", "k": 2.0}, r"k must be a positive int"),
        ({"strategy": "entropy", "k": 2, "probs": None}, r"needs probs"),
        ({"strategy": "kcenter", "k": 2}, r"needs embeddings"),
        ({"strategy": "hybrid", "k": 2, "uncertainty": "bald"}, r"unknown uncertainty 'bald'; choose one of: least_confidence, margin, entropy"),
        ({"strategy": "hybrid", "k": 2, "hybrid_factor": 0}, r"hybrid_factor must be an int >= 1"),
        ({"strategy": "entropy", "k": 2, "embeddings": np.zeros((4, 2))}, r"probs has 5, embeddings has 4"),
        ({"strategy": "entropy", "k": 2, "labels_pred": np.zeros(5), "class_balance": True}, r"labels_pred must be a 1-D integer"),
        ({"strategy": "entropy", "k": 2, "probs": np.full((5, 2), 0.6)}, r"row 0 sums to"),
        ({"strategy": "kcenter", "k": 2, "embeddings": np.zeros((5, 2)), "labelled_embeddings": np.zeros((1, 3))}, r"D=3 .*D=2"),
    ],
)
def test_select_rejects_bad_input(kwargs, pattern):
    args = {"probs": np.full((5, 2), 0.5), **kwargs}
    strategy = args.pop("strategy")
    with pytest.raises(ValueError, match=pattern):
        select(strategy, **args)


def test_select_needs_a_pool():
    with pytest.raises(ValueError, match="needs probs .* or embeddings"):
        select("random", k=3)
    with pytest.raises(ValueError, match="class_balance=True needs labels_pred"):
        select("kcenter", k=3, embeddings=np.zeros((5, 2)), class_balance=True)


def test_select_empty_pool_returns_empty_selection():
    sel = select("entropy", k=3, probs=np.empty((0, 4)))
    assert sel.indices.shape == (0,) and sel.scores.shape == (0,)


def test_top_k_on_a_million_items_runs():
    # Not a timed assertion: checks the argpartition path handles 10^6 x 10 in one go.
    probs = np.random.default_rng(0).dirichlet(np.ones(10), size=1_000_000)
    sel = select("margin", k=1000, probs=probs)
    assert sel.indices.shape == (1000,)
    s = margin(probs)
    assert s[sel.indices].min() >= np.partition(s, -1000)[-1000] - 1e-15


# --- registry --------------------------------------------------------------------------


def test_registry_lists_builtin_names():
    assert STRATEGY_NAMES == ("random", "least_confidence", "margin", "entropy", "kcenter", "hybrid")
    assert set(STRATEGY_NAMES) <= set(STRATEGIES)
    for name in STRATEGY_NAMES:
        assert callable(get_strategy(name))


def test_unknown_strategy_error_lists_the_choices():
    with pytest.raises(ValueError, match=r"unknown strategy 'bogus'; choose one of: random, least_confidence, margin, entropy, kcenter, hybrid"):
        get_strategy("bogus")
    with pytest.raises(ValueError, match=r"unknown strategy 'bogus'"):
        select("bogus", k=1, probs=np.full((2, 2), 0.5))


def test_register_adds_a_strategy_usable_by_select():
    name = "_test_first_k"
    try:

        @register(name)
        def first_k(req):
            idx = np.arange(req.k)
            return Selection(idx, np.zeros(req.k))

        sel = select(name, k=3, probs=np.full((10, 2), 0.5))
        np.testing.assert_array_equal(sel.indices, [0, 1, 2])
        assert sel.strategy == name
        with pytest.raises(ValueError, match="already registered"):
            register(name)
    finally:
        STRATEGIES.pop(name, None)
