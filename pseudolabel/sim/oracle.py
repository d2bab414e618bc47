"""An in-process oracle reviewer: the fast stand-in for Label Studio in large sweeps.

It implements the same push / pull contract as the Label Studio client (``push``, ``pull``,
``listing``; flags and model versions are no-ops: there is no reviewer UI) but keeps tasks in memory and answers them from the ground truth. The default path of the demo and the
tests is the real Label Studio server with :class:`~pseudolabel.sim.simulated.SimulatedReviewer`;
this one exists so that benchmarks over many seeds and strategies stay cheap.
:class:`BoxOracleReviewer` does the same for boxes and polygons.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np

from pseudolabel.review.client import PullResult, TaskInfo
from pseudolabel.types import Annotation, Box, Candidate, utcnow

if TYPE_CHECKING:
    from pseudolabel.sim.simulated_boxes import BoxReviewStats


@dataclass
class OracleStats:
    """What the oracle reviewer did: tasks answered, accepted, corrected, errors injected."""

    answered: int = 0
    accepted: int = 0
    corrected: int = 0
    errors_injected: int = 0


class _InMemoryQueue:
    """The review back end the round talks to (``push`` / ``pull`` / ``listing``), in memory:
    tasks are kept in a dict and answered by the subclass's ``answer_pending``. Flags and
    model versions are no-ops: there is no reviewer UI."""

    project_title: str
    reviewer: str

    def _init_queue(self) -> None:
        self._tasks: dict[str, tuple[int, Candidate]] = {}
        self._done: list[Annotation] = []
        self._next_id = 1

    def push(self, candidates: Sequence[Candidate], *, round_id: int, model_version: str,
             refresh: Sequence[Candidate] = ()) -> dict[str, int]:
        """Queue ``candidates`` (``refresh``: nothing to redraw in memory)."""
        return self.submit(candidates, round_id=round_id, model_version=model_version)

    def submit(self, candidates: Sequence[Candidate], *, round_id: int, model_version: str) -> dict[str, int]:
        """Queue each candidate once; returns item id -> task id."""
        out: dict[str, int] = {}
        for c in candidates:
            if c.item.id not in self._tasks:
                self._tasks[c.item.id] = (self._next_id, c)
                self._next_id += 1
            out[c.item.id] = self._tasks[c.item.id][0]
        return out

    def _pending(self) -> list[tuple[str, int, Candidate]]:
        answered = {a.item.id for a in self._done}
        return [(iid, tid, c) for iid, (tid, c) in self._tasks.items() if iid not in answered]

    def collect(self, *, since: datetime | None = None) -> list[Annotation]:
        """The answers saved since ``since``."""
        return [a for a in self._done if since is None or a.created_at >= since]

    def pull(self, *, since: datetime | None = None) -> PullResult:
        """The answers saved since ``since`` (an oracle never gives an unusable answer)."""
        return PullResult(annotations=self.collect(since=since))

    def listing(self) -> list[TaskInfo]:
        """Every task, with its state."""
        answered = {a.item.id for a in self._done}
        return [TaskInfo(task_id=tid, data={"round": None}, overlap=1, is_labeled=iid in answered,
                         total_annotations=int(iid in answered), cancelled_annotations=0, item_id=iid)
                for iid, (tid, _) in self._tasks.items()]

    def flag_task(self, task_id: int, note: str) -> None:
        """No reviewer UI to flag in."""

    def delete_task(self, task_id: int) -> None:
        """Forget the task ``task_id`` (its item can be queued again)."""
        self._tasks = {iid: v for iid, v in self._tasks.items() if v[0] != int(task_id)}

    def check_image(self, path: Path) -> None:
        """No server to serve images: the file only has to exist."""
        if not Path(path).is_file():
            raise FileNotFoundError(f"image {path} does not exist")

    def task_states(self) -> dict[str, str]:
        """Item id -> ``"answered"`` or ``"queued"``."""
        answered = {a.item.id for a in self._done}
        return {i: ("answered" if i in answered else "queued") for i in self._tasks}


class OracleReviewer(_InMemoryQueue):
    """Answers queued candidates from ``truth`` (item id -> class), wrong with ``error_rate``."""

    def __init__(self, truth: Mapping[str, str], classes: Sequence[str], *, error_rate: float = 0.0,
                 seed: int = 0, project_title: str = "oracle", reviewer: str = "oracle@pseudolabel.local") -> None:
        if not 0.0 <= error_rate <= 1.0:
            raise ValueError(f"error_rate must be in [0, 1], got {error_rate}")
        self.truth = truth
        self.classes = list(classes)
        self.error_rate = error_rate
        self.seed = seed
        self.project_title = project_title
        self.reviewer = reviewer
        self._rng = np.random.default_rng(seed)
        self._init_queue()

    def answer_pending(self) -> OracleStats:
        """Answer every waiting task from the truth (wrong with ``error_rate``)."""
        st = OracleStats()
        for item_id, task_id, cand in self._pending():
            pred = None
            if cand.prediction is not None and cand.prediction.probs is not None:
                pred = self.classes[int(np.argmax(cand.prediction.probs))]
            true = self.truth[item_id]
            label = true
            if self.error_rate and self._rng.random() < self.error_rate:
                label = str(self._rng.choice([c for c in self.classes if c != true]))
                st.errors_injected += 1
            outcome = "accepted" if label == pred else "corrected"
            st.accepted += outcome == "accepted"
            st.corrected += outcome == "corrected"
            st.answered += 1
            self._done.append(Annotation(item=cand.item, label=label, source="human", reviewer=self.reviewer,
                                         review_outcome=outcome, ls_task_id=task_id,
                                         ls_annotation_id=task_id, created_at=utcnow()))
        return st


class BoxOracleReviewer(_InMemoryQueue):
    """The in-process stand-in for :class:`~pseudolabel.sim.simulated_boxes.SimulatedBoxReviewer`
    (detection / segmentation): same ``submit`` / ``collect`` contract as the Label Studio
    client, answers from ``truth`` (item id -> true pixel boxes) with the edits a person
    would make to the pre-drawn boxes (:func:`~pseudolabel.sim.simulated_boxes.plan_edits`),
    counted in :class:`~pseudolabel.sim.simulated_boxes.BoxReviewStats`.

    ``sizes``: item id -> image ``(width, height)`` in pixels (segmentation compares masks).
    """

    def __init__(self, truth: Mapping[str, Sequence[Box]], classes: Sequence[str], *,
                 sizes: Mapping[str, tuple[int, int]], task: str = "detect", project_title: str = "oracle",
                 reviewer: str = "oracle@pseudolabel.local") -> None:
        if task not in ("detect", "segment"):
            raise ValueError(f"task must be 'detect' or 'segment', got {task!r}")
        self.truth = truth
        self.classes = list(classes)
        self.sizes = sizes
        self.task = task
        self.project_title = project_title
        self.reviewer = reviewer
        self._init_queue()

    def answer_pending(self) -> "BoxReviewStats":
        """Answer every queued task from the true boxes (keep, fix, delete, add); returns counts."""
        from pseudolabel.sim.simulated_boxes import BoxReviewStats, plan_edits

        st = BoxReviewStats()
        for item_id, task_id, cand in self._pending():
            if item_id not in self.truth:
                raise ValueError(f"item {item_id!r} was queued but has no entry in truth")
            predicted = cand.prediction.boxes if cand.prediction is not None else ()
            plan = plan_edits(predicted, self.truth[item_id], task=self.task, image_size=self.sizes.get(item_id))
            accepted = plan.edits == 0 and cand.prediction is not None
            st.answered += 1
            st.accepted += int(accepted)
            st.corrected += int(not accepted)
            st.edits += plan.edits
            st.kept += plan.kept
            st.relabelled += plan.relabelled
            st.reshaped += plan.reshaped
            st.deleted += plan.deleted
            st.added += plan.added
            st.per_item.append((item_id, plan.edits))
            self._done.append(Annotation(item=cand.item, boxes=tuple(plan.final), source="human",
                                         reviewer=self.reviewer, review_outcome="accepted" if accepted else "corrected",
                                         ls_task_id=task_id, ls_annotation_id=task_id, created_at=utcnow(),
                                         empty_ok=True))
        return st
