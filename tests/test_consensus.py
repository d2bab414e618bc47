"""Consensus: majority vote, adjudication flags, Dawid-Skene EM."""

from __future__ import annotations

import numpy as np
import pytest

from pseudolabel.consensus import ConsensusResult, dawid_skene, majority_vote, needs_adjudication


def test_majority_vote_counts_and_agreement():
    out = majority_vote({"a": ["cat", "cat", "dog"], "b": ["dog"], 7: ("cat", "cat", "cat", "dog")})
    assert out["a"] == ConsensusResult("cat", 2 / 3, 3, False, {"cat": 2, "dog": 1})
    assert out["b"].label == "dog" and out["b"].agreement == 1.0 and out["b"].n == 1
    assert out[7].label == "cat" and out[7].agreement == 0.75 and not out[7].tie


def test_ties_have_no_label_and_need_adjudication():
    out = majority_vote({"x": ["cat", "dog"], "y": ["cat", "dog", "bird", "bird", "cat"]})
    for key in ("x", "y"):
        assert out[key].tie and out[key].label is None
        assert needs_adjudication(out[key])
    assert out["y"].agreement == 0.4


def test_needs_adjudication_threshold():
    two_of_three = majority_vote({"a": ["cat", "cat", "dog"]})["a"]
    assert not needs_adjudication(two_of_three)  # 0.667 >= 0.66
    assert needs_adjudication(two_of_three, min_agreement=0.7)
    unanimous = majority_vote({"a": ["cat"] * 3})["a"]
    assert not needs_adjudication(unanimous, min_agreement=1.0)
    with pytest.raises(ValueError, match="min_agreement"):
        needs_adjudication(unanimous, min_agreement=1.5)


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"a": []}, "item 'a' has no votes"),
        ({"a": "cat"}, "expected a sequence of labels"),
        ({"a": ["cat", None]}, "item 'a': label must be a non-empty"),
        ({"a": ["cat", ""]}, "non-empty"),
    ],
)
def test_majority_vote_rejects_bad_input(bad, match):
    with pytest.raises(ValueError, match=match):
        majority_vote(bad)


CLASSES = ["a", "b", "c"]


def _synthetic(n_items: int = 300, good_acc: float = 0.7, seed: int = 0):
    """Two good annotators (``good_acc``, errors uniform) and an adversary who always
    answers the next class (a consistent permutation, never the truth)."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(3, size=n_items)
    ann = []
    for i, t in enumerate(truth):
        for who in ("good1", "good2"):
            if rng.random() < good_acc:
                lab = t
            else:
                lab = rng.choice([c for c in range(3) if c != t])
            ann.append((f"item{i}", who, CLASSES[lab]))
        ann.append((f"item{i}", "adversary", CLASSES[(t + 1) % 3]))
    return truth, ann


def test_dawid_skene_recovers_truth_with_an_adversarial_annotator():
    truth, ann = _synthetic()
    labels, conf, post = dawid_skene(ann, CLASSES)
    ds_acc = np.mean([labels[f"item{i}"] == CLASSES[t] for i, t in enumerate(truth)])
    votes: dict[str, list[str]] = {}
    for item, _, lab in ann:
        votes.setdefault(item, []).append(lab)
    mv = majority_vote(votes)
    mv_acc = np.mean([mv[f"item{i}"].label == CLASSES[t] for i, t in enumerate(truth)])
    assert ds_acc >= 0.95
    assert ds_acc > mv_acc + 0.1  # majority vote is misled by the adversary, DS is not
    # DS learned who is who: the adversary's mass sits off the diagonal, on c -> c+1.
    adv = conf["adversary"]
    assert adv.shape == (3, 3)
    np.testing.assert_allclose(adv.sum(axis=1), 1.0)
    assert np.diag(adv).max() < 0.1
    assert min(adv[c, (c + 1) % 3] for c in range(3)) > 0.9
    for who in ("good1", "good2"):
        assert 0.6 < np.diag(conf[who]).mean() < 0.8
    p = post["item0"]
    assert p.shape == (3,) and abs(p.sum() - 1) < 1e-9


def test_dawid_skene_unanimous_and_single_annotator_known_answers():
    ann = [("i1", "r1", "a"), ("i1", "r2", "a"), ("i2", "r1", "b"), ("i2", "r2", "b"), ("i3", "r1", "c")]
    res = dawid_skene(ann, CLASSES)
    assert res.labels == {"i1": "a", "i2": "b", "i3": "c"}
    assert res.posteriors["i1"][0] > 0.9
    assert res.n_iter >= 1 and res.priors.shape == (3,)


@pytest.mark.parametrize(
    "ann, classes, match",
    [
        ([], CLASSES, "annotations is empty"),
        ([("i", "r", "zebra")], CLASSES, r"annotations\[0\]: label 'zebra' is not one of"),
        ([("i", "r")], CLASSES, r"annotations\[0\] must be \(item_id, annotator, label\)"),
        ([("i", "r", "a")], ["a", "a"], "distinct"),
    ],
)
def test_dawid_skene_rejects_bad_input(ann, classes, match):
    with pytest.raises(ValueError, match=match):
        dawid_skene(ann, classes)
