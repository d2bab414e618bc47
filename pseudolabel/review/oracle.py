"""An in-process oracle reviewer: the fast stand-in for Label Studio in large sweeps.

It implements the same push / pull contract as the Label Studio client (``push``, ``pull``,
``listing``; flags and model versions are no-ops: there is no reviewer UI) but keeps tasks in memory and answers them from the ground truth. The default path of the demo and the
tests is the real Label Studio server with :class:`~pseudolabel.review.simulated.SimulatedReviewer`;
this one exists so that benchmarks over many seeds and strategies stay cheap.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from pseudolabel.review.client import PullResult, TaskInfo
from pseudolabel.types import Annotation, Candidate, utcnow


@dataclass
class OracleStats:
    answered: int = 0
    accepted: int = 0
    corrected: int = 0
    errors_injected: int = 0


class OracleReviewer:
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
        self._tasks: dict[str, tuple[int, Candidate, str | None]] = {}
        self._done: list[Annotation] = []
        self._next_id = 1

    def push(self, candidates: Sequence[Candidate], *, round_id: int, model_version: str,
             refresh: Sequence[Candidate] = ()) -> dict[str, int]:
        """Queue ``candidates`` (``refresh``: nothing to redraw in memory)."""
        return self.submit(candidates, round_id=round_id, model_version=model_version)

    def submit(self, candidates: Sequence[Candidate], *, round_id: int, model_version: str) -> dict[str, int]:
        out: dict[str, int] = {}
        for c in candidates:
            if c.item.id not in self._tasks:
                pred = None
                if c.prediction is not None and c.prediction.probs is not None:
                    pred = self.classes[int(np.argmax(c.prediction.probs))]
                self._tasks[c.item.id] = (self._next_id, c, pred)
                self._next_id += 1
            out[c.item.id] = self._tasks[c.item.id][0]
        return out

    def answer_pending(self) -> OracleStats:
        st = OracleStats()
        answered = {a.item.id for a in self._done}
        for item_id, (task_id, cand, pred) in self._tasks.items():
            if item_id in answered:
                continue
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

    def collect(self, *, since: datetime | None = None) -> list[Annotation]:
        return [a for a in self._done if since is None or a.created_at >= since]

    def pull(self, *, since: datetime | None = None) -> PullResult:
        """The answers saved since ``since`` (an oracle never gives an unusable answer)."""
        return PullResult(annotations=self.collect(since=since))

    def listing(self) -> list[TaskInfo]:
        """Every task, with its state."""
        answered = {a.item.id for a in self._done}
        return [TaskInfo(task_id=tid, data={"round": None}, overlap=1, is_labeled=iid in answered,
                         total_annotations=int(iid in answered), cancelled_annotations=0, item_id=iid)
                for iid, (tid, _, _) in self._tasks.items()]

    def flag_task(self, task_id: int, note: str) -> None:
        """No reviewer UI to flag in."""

    def check_image(self, path: Path) -> None:
        """No server to serve images: the file only has to exist."""
        if not Path(path).is_file():
            raise FileNotFoundError(f"image {path} does not exist")

    def task_states(self) -> dict[str, str]:
        answered = {a.item.id for a in self._done}
        return {i: ("answered" if i in answered else "queued") for i in self._tasks}
