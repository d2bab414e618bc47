"""Selection strategies: which pool items reviewers see first.

Three layers (modAL / baal style):

1. score functions, (N, C) probabilities -> (N,) scores, higher = more uncertain:
   :func:`least_confidence`, :func:`margin`, :func:`entropy`; :func:`random_scores`;
2. diversity on (N, D) embeddings: :func:`kcenter_greedy` (memory-bounded);
3. :func:`select` composes them into a batch, resolving the strategy by name from
   :data:`STRATEGIES` (extend with :func:`register`).

Further registered strategies: ``dbal`` (:mod:`.dbal`, the most uncertain items clustered
by k-means, one per cluster), ``badge`` (:mod:`.badge`, gradient embeddings + k-means++),
``bald`` (:mod:`.bayesian`, needs MC-dropout samples: use :func:`select_bald`), and for low
budgets on good (pretrained / self-supervised) embeddings ``typiclust`` (:mod:`.typiclust`),
``centroid`` (:mod:`.coldstart`, with :func:`cold_start` for the very first labels),
``probcover`` (:mod:`.probcover`) and ``schedule`` (:mod:`.schedule`: typicality while labels
per class are few, then uncertainty).

Importing this package only defines names and fills the strategy registry.
"""

from .badge import badge, gradient_embeddings
from .bayesian import bald, select_bald
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
from .coldstart import COLD_START_METHODS, centroid, cold_start
from .probcover import probcover, purity_delta
from .dbal import dbal
from .schedule import schedule_phase, scheduled_strategy

__all__ = [
    "COLD_START_METHODS",
    "SCORE_FUNCTIONS",
    "STRATEGIES",
    "STRATEGY_NAMES",
    "ScoreFn",
    "Selection",
    "SelectionRequest",
    "bald",
    "badge",
    "balanced_top_k",
    "centroid",
    "cold_start",
    "dbal",
    "entropy",
    "get_strategy",
    "gradient_embeddings",
    "kcenter_greedy",
    "least_confidence",
    "margin",
    "probcover",
    "purity_delta",
    "random_scores",
    "register",
    "uses_labelled_embeddings",
    "schedule_phase",
    "scheduled_strategy",
    "select",
    "select_bald",
    "top_k",
    "typiclust",
    "validate_probs",
]
