"""Strategy registry: selection strategies resolved by name.

A strategy is a function ``(SelectionRequest) -> Selection`` (see
:mod:`pseudolabel.strategies.selection`). New strategies (BALD, BADGE, ...) register
themselves with the decorator::

    @register("bald")
    def _bald(req: SelectionRequest) -> Selection: ...

Registration only adds an entry to :data:`STRATEGIES`; it does no other work.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from .selection import Selection, SelectionRequest

    Strategy = Callable[[SelectionRequest], Selection]
else:
    Strategy = Callable

__all__ = ["STRATEGIES", "STRATEGY_NAMES", "Strategy", "get_strategy", "needs_probs", "register",
           "uses_labelled_embeddings", "without_probs"]

STRATEGY_NAMES: tuple[str, ...] = (
    "random",
    "least_confidence",
    "margin",
    "entropy",
    "kcenter",
    "hybrid",
)
"""The built-in strategy names. ``tuple(STRATEGIES)`` also lists any registered later."""

STRATEGIES: dict[str, Strategy] = {}
"""Strategy functions by name; filled by :func:`register` when the package is imported."""


_USES_LABELLED: set[str] = set()
_NEEDS_PROBS: set[str] = set()


def register(name: str, *, labelled_embeddings: bool = False, probs: bool = False) -> Callable[[Strategy], Strategy]:
    """Decorator adding a strategy function to :data:`STRATEGIES` under ``name``.

    ``labelled_embeddings=True`` says the strategy reads ``labelled_embeddings`` (the
    already-labelled set), so callers compute them only for such strategies.
    ``probs=True`` says it needs class probabilities (or MC samples of them); the others also
    run on precomputed ``scores`` (detection's image scores), so every task can use them.

    Raises:
        ValueError: ``name`` is empty, not a string, or already registered.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"strategy name must be a non-empty string; got {name!r}")
    if name in STRATEGIES:
        raise ValueError(f"strategy {name!r} is already registered; pick another name")

    def decorator(fn: Strategy) -> Strategy:
        STRATEGIES[name] = fn
        if labelled_embeddings:
            _USES_LABELLED.add(name)
        if probs:
            _NEEDS_PROBS.add(name)
        return fn

    return decorator


def get_strategy(name: str) -> Strategy:
    """Return the strategy registered as ``name``.

    Raises:
        ValueError: ``unknown strategy 'x'; choose one of: ...`` listing the valid names.
    """
    try:
        return STRATEGIES[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown strategy {name!r}; choose one of: {', '.join(STRATEGIES)}"
        ) from None


def uses_labelled_embeddings(name: str) -> bool:
    """Whether the strategy registered as ``name`` reads the labelled set's embeddings."""
    get_strategy(name)
    return name in _USES_LABELLED


def needs_probs(name: str) -> bool:
    """Whether the strategy registered as ``name`` needs class probabilities."""
    get_strategy(name)
    return name in _NEEDS_PROBS


def without_probs() -> tuple[str, ...]:
    """The registered strategies that run without class probabilities (any task)."""
    return tuple(n for n in STRATEGIES if n not in _NEEDS_PROBS)
