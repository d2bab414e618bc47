"""Selection strategies: which pool items reviewers see first.

Three layers (modAL / baal style):

1. score functions, (N, C) probabilities -> (N,) scores, higher = more uncertain:
   :func:`least_confidence`, :func:`margin`, :func:`entropy`; :func:`random_scores`;
2. diversity on (N, D) embeddings: :func:`kcenter_greedy` (memory-bounded);
3. :func:`select` composes them into a batch, resolving the strategy by name from
   :data:`STRATEGIES` (extend with :func:`register`).

Further registered strategies: ``badge`` (:mod:`.badge`, gradient embeddings + k-means++),
``typiclust`` (:mod:`.typiclust`, cold start) and ``bald`` (:mod:`.bayesian`, needs
MC-dropout samples: use :func:`select_bald`).

Importing this package only defines names and fills the strategy registry.
"""

from .badge import badge, gradient_embeddings
from .bayesian import bald, mc_dropout_probs, select_bald
from .diversity import kcenter_greedy
from .registry import STRATEGIES, STRATEGY_NAMES, get_strategy, register, uses_labelled_embeddings
from .selection import Selection, SelectionRequest, balanced_top_k, select, top_k
from .uncertainty import (
    SCORE_FUNCTIONS,
    ScoreFn,
    entropy,
    least_confidence,
    margin,
    random_scores,
    validate_probs,
)
from .typiclust import typiclust

__all__ = [
    "SCORE_FUNCTIONS",
    "STRATEGIES",
    "STRATEGY_NAMES",
    "ScoreFn",
    "Selection",
    "SelectionRequest",
    "bald",
    "badge",
    "balanced_top_k",
    "entropy",
    "get_strategy",
    "gradient_embeddings",
    "kcenter_greedy",
    "least_confidence",
    "margin",
    "mc_dropout_probs",
    "random_scores",
    "register",
    "uses_labelled_embeddings",
    "select",
    "select_bald",
    "top_k",
    "typiclust",
    "validate_probs",
]
