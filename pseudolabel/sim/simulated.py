"""A simulated reviewer: an oracle that answers queued tasks through the real Label Studio API.

Used by tests and benchmarks to run whole labelling campaigns without people. It reads the
pending tasks like a reviewer would (lowest prediction score first, i.e. most uncertain
first), keeps the pre-drawn prediction when it is right and writes the true class when it
is wrong, and can inject mistakes at a given rate.
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pseudolabel.review.client import LabelStudioClient
from pseudolabel.review.convert import validate_classes


@dataclass
class ReviewStats:
    """What one :meth:`SimulatedReviewer.answer_pending` call did.

    ``accepted``: answers equal to the pre-drawn prediction; ``corrected``: answers that
    differ from it (or tasks without a prediction); ``errors_injected``: answers deliberately
    wrong (counted in ``accepted``/``corrected`` too); ``seconds``: wall time.
    """

    answered: int = 0
    accepted: int = 0
    corrected: int = 0
    errors_injected: int = 0
    seconds: float = 0.0


class SimulatedReviewer:
    """Oracle reviewer for classification projects.

    - ``client``: the project's :class:`LabelStudioClient` (its token's user is the author
      of the annotations Label Studio records; ``reviewer`` is only this object's name);
    - ``truth``: item id → true class name;
    - ``error_rate``: probability (0..1) of answering a uniformly drawn *wrong* class;
    - ``seed``: the draws depend only on ``(seed, item id)``, so the answers are the same
      whatever the order or batching of calls.
    """

    def __init__(
        self,
        client: LabelStudioClient,
        truth: Mapping[str, str],
        classes: Sequence[str],
        *,
        error_rate: float = 0.0,
        seed: int = 0,
        reviewer: str = "simulated",
    ) -> None:
        self.client = client
        self.truth = truth
        self.classes = classes
        self.error_rate = error_rate
        self.seed = seed
        self.reviewer = reviewer

    def _answer(self, item_id: str, classes: tuple[str, ...]) -> tuple[str, bool]:
        """(class to write, whether it is an injected error) for ``item_id``."""
        if item_id not in self.truth:
            raise ValueError(f"item {item_id!r} has a task but no entry in truth")
        true = self.truth[item_id]
        if true not in classes:
            raise ValueError(f"truth for item {item_id!r} is {true!r}, not one of {list(classes)!r}")
        rng = random.Random(f"{self.seed}:{item_id}")
        if len(classes) > 1 and rng.random() < self.error_rate:
            return rng.choice([c for c in classes if c != true]), True
        return true, False

    def answer_pending(self, *, limit: int | None = None) -> ReviewStats:
        """Answer up to ``limit`` (default: all) tasks that have no annotation yet.

        Each answer is an ``annotations.create`` call on the real server with
        ``parent_prediction`` set to the task's pre-drawn prediction.
        """
        if not 0.0 <= self.error_rate <= 1.0:
            raise ValueError(f"error_rate {self.error_rate!r} must be between 0 and 1")
        if limit is not None and limit < 0:
            raise ValueError(f"limit {limit!r} must be >= 0 or None")
        if self.client.task_type != "classify":
            raise ValueError(
                f"SimulatedReviewer answers classification projects, not {self.client.task_type!r}"
            )
        classes = validate_classes(self.classes)
        t0 = time.perf_counter()
        stats = ReviewStats()
        pending = self.client.pending()
        if limit is not None:
            pending = pending[:limit]
        for task in pending:
            label, injected = self._answer(task.item_id, classes)
            self.client.annotate(task.task_id, label, parent_prediction=task.prediction_id)
            stats.answered += 1
            stats.errors_injected += int(injected)
            if task.predicted_label is not None and label == task.predicted_label:
                stats.accepted += 1
            else:
                stats.corrected += 1
        stats.seconds = time.perf_counter() - t0
        return stats
