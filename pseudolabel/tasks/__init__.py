"""Tasks: classification, detection, segmentation behind one interface (:class:`Task`).

``task_for(cfg)`` returns the task object of a config; see :mod:`pseudolabel.tasks.base` for
what a task answers. Importing this package imports no model framework.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pseudolabel.tasks.base import Label, LabelledSet, PoolPredictions, PseudoContext, Task

if TYPE_CHECKING:
    from pseudolabel.config import Config

__all__ = ["Label", "LabelledSet", "PoolPredictions", "PseudoContext", "Task", "task_for"]


def task_for(cfg: Config) -> Task:
    """The :class:`Task` of ``cfg.task`` (classify, detect or segment)."""
    if cfg.task == "classify":
        from pseudolabel.tasks.classify import Classify

        return Classify(cfg)
    from pseudolabel.tasks.detect import Detect, Segment

    if cfg.task == "detect":
        return Detect(cfg)
    if cfg.task == "segment":
        return Segment(cfg)
    raise ValueError(f"task {cfg.task!r} is not one of classify, detect, segment")
