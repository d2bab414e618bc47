"""A budget schedule: typicality while labels are few, uncertainty once there are enough.

"Active Learning on a Budget" (Hacohen, Dekel & Weinshall, ICML 2022) shows a phase
transition: with few labels the best queries are *typical* items (TypiClust, ProbCover:
Yehuda et al. 2022), with many labels the best are the *uncertain*, atypical ones (margin,
entropy, BADGE). Both papers' low-budget regime is about 1 to 6 labels per class (CIFAR-10
budgets of 10 to 60 labels); uncertainty-based methods lead once the budget is well past it.
Where exactly the switch pays depends on the data and the representation (Hacohen &
Weinshall 2023, "How to select which active learning strategy is best suited for your
specific problem and budget"; with strong foundation-model features uncertainty catches up
early, Gupte et al. 2024), so the default switch, **5 labels per class**, is a starting
point: measure it on your data with ``pseudolabel benchmark --data DIR``.

The ``schedule`` strategy reads its options from ``options["schedule"]``:

- ``low``: the typicality strategy used below the switch (``typiclust``, ``probcover``,
  ``centroid`` or ``kcenter``; default ``typiclust``);
- ``high``: the strategy used from the switch on (``margin`` by default; any registered
  strategy that needs only probs / embeddings, e.g. ``entropy``, ``hybrid``, ``badge``);
- ``switch_per_class``: labels per class at which to switch (default 5): the high strategy
  runs once ``labelled >= switch_per_class * classes``. Labelled = the rows of
  ``labelled_embeddings`` (seed + human labels), classes = the columns of ``probs``.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from .registry import STRATEGIES, get_strategy, register
from .selection import Selection, SelectionRequest

__all__ = ["DEFAULT_SWITCH_PER_CLASS", "HIGH_EXCLUDED", "LOW_STRATEGIES", "schedule_phase", "scheduled_strategy"]

DEFAULT_SWITCH_PER_CLASS = 5.0
"""Labels per class at which the schedule switches from typicality to uncertainty."""
LOW_STRATEGIES: tuple[str, ...] = ("typiclust", "probcover", "centroid", "kcenter")
"""Strategies the schedule accepts for the low-budget phase."""
HIGH_EXCLUDED: tuple[str, ...] = ("schedule", "bald")
"""Not accepted as the high phase: the schedule itself, and bald (needs MC-dropout samples)."""


def schedule_phase(n_labelled: int, n_classes: int, *,
                   switch_per_class: float = DEFAULT_SWITCH_PER_CLASS) -> Literal["low", "high"]:
    """``"low"`` while ``n_labelled < switch_per_class * n_classes``, else ``"high"``.

    Raises:
        ValueError: ``n_labelled < 0``, ``n_classes < 1`` or ``switch_per_class < 0``.
    """
    if isinstance(n_labelled, bool) or not isinstance(n_labelled, int) or n_labelled < 0:
        raise ValueError(f"n_labelled must be an int >= 0; got {n_labelled!r}")
    if isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 1:
        raise ValueError(f"n_classes must be an int >= 1; got {n_classes!r}")
    if isinstance(switch_per_class, bool) or not isinstance(switch_per_class, (int, float)) or switch_per_class < 0:
        raise ValueError(f"switch_per_class must be a number >= 0 (labels per class); got {switch_per_class!r}")
    return "low" if n_labelled < float(switch_per_class) * n_classes else "high"


def scheduled_strategy(n_labelled: int, n_classes: int, *, low: str = "typiclust", high: str = "margin",
                       switch_per_class: float = DEFAULT_SWITCH_PER_CLASS) -> str:
    """The strategy name the schedule runs at this budget (see :func:`schedule_phase`).

    Raises:
        ValueError: ``low`` not in :data:`LOW_STRATEGIES`, ``high`` unknown or in
        :data:`HIGH_EXCLUDED`, or bad counts.
    """
    if low not in LOW_STRATEGIES:
        raise ValueError(f"schedule low {low!r} is not a typicality strategy; choose one of: {', '.join(LOW_STRATEGIES)}")
    if high in HIGH_EXCLUDED or high not in STRATEGIES:
        accepted = [s for s in STRATEGIES if s not in HIGH_EXCLUDED]
        raise ValueError(f"schedule high {high!r} is not accepted; choose one of: {', '.join(accepted)}")
    phase = schedule_phase(n_labelled, n_classes, switch_per_class=switch_per_class)
    return low if phase == "low" else high


@register("schedule", labelled_embeddings=True)
def _schedule_strategy(req: SelectionRequest) -> Selection:
    """Typicality (``low``) below ``switch_per_class`` labels per class, then ``high``;
    ``scores`` are the chosen strategy's, ``strategy`` its name (``select`` reports
    ``"schedule:<name>"``)."""
    opts = dict(req.options.get("schedule") or {})
    unknown = sorted(set(opts) - {"low", "high", "switch_per_class"})
    if unknown:
        raise ValueError(f"unknown schedule options {unknown!r}; accepted: low, high, switch_per_class")
    if req.n_classes is None:
        raise ValueError("strategy 'schedule' needs probs (N, C), or n_classes, to count labels per class")
    n_labelled = 0 if req.labelled_embeddings is None else int(req.labelled_embeddings.shape[0])
    name = scheduled_strategy(n_labelled, req.n_classes, low=str(opts.get("low", "typiclust")),
                              high=str(opts.get("high", "margin")),
                              switch_per_class=float(opts.get("switch_per_class", DEFAULT_SWITCH_PER_CLASS)))
    sel = get_strategy(name)(dataclasses.replace(req, strategy=name))
    return Selection(sel.indices, sel.scores, name)
