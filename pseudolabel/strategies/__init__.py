"""Selection strategies: which pool items reviewers see first.

Three layers (modAL / baal style):

1. score functions, (N, C) probabilities -> (N,) scores, higher = more uncertain:
   :func:`least_confidence`, :func:`margin`, :func:`entropy`; :func:`random_scores`;
2. diversity on (N, D) embeddings: :func:`kcenter_greedy` (memory-bounded);
3. :func:`select` composes them into a batch, resolving the strategy by name from
   :data:`STRATEGIES` (extend with :func:`register`).

Importing this package only defines names and fills the strategy registry.
"""

from .diversity import kcenter_greedy
from .registry import STRATEGIES, STRATEGY_NAMES, get_strategy, register
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

__all__ = [
    "SCORE_FUNCTIONS",
    "STRATEGIES",
    "STRATEGY_NAMES",
    "ScoreFn",
    "Selection",
    "SelectionRequest",
    "balanced_top_k",
    "entropy",
    "get_strategy",
    "kcenter_greedy",
    "least_confidence",
    "margin",
    "random_scores",
    "register",
    "select",
    "top_k",
    "validate_probs",
]
