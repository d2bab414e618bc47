"""The one protocol every model adapter follows, and small helpers shared by adapters.

An adapter wraps a framework (torchvision, Ultralytics, ...) behind :class:`Model` so the
loops never import the framework themselves. Adapters follow scikit-learn conventions:
``__init__`` only stores parameters, ``fit`` returns ``self``, learned state ends in ``_``.
"""

from __future__ import annotations

import hashlib
import inspect
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from typing_extensions import Self

from pseudolabel.types import Annotation, Item, Prediction, TaskType


class NotFittedError(ValueError, AttributeError):
    """A model was asked to predict or save before ``fit`` (or ``load``)."""


@runtime_checkable
class Model(Protocol):
    """What the loops need from a model, whatever the framework behind it — and no more: the
    round, retrain, the benchmark and the ML backend use exactly this, plus the optional
    capabilities a model declares (:data:`CAPABILITIES`, checked with :func:`require`).

    - ``task``: ``"classify"``, ``"detect"`` or ``"segment"``;
    - ``classes``: class names, in the order of the ``probs`` columns of its predictions;
    - ``model_version``: a short string naming the trained weights (stored with every
      prediction; a changed version means old predictions are stale);
    - ``capabilities``: the names of the optional capabilities it has.
    """

    task: TaskType
    classes: list[str]
    capabilities: frozenset[str]

    @property
    def model_version(self) -> str:
        """The version string predictions and checkpoints carry."""

    def fit(self, train: Sequence[Annotation], *, val: Sequence[Annotation] | None = None) -> Self:
        """Train from scratch (or from configured weights) on ``train``; returns ``self``.
        With the ``unlabelled`` capability, ``fit(train, unlabelled=items)`` also learns from
        unlabelled images."""
        ...

    def predict(self, images: Iterable[Item], *, batch_size: int | None = None) -> Iterator[Prediction]:
        """Yield one :class:`Prediction` per item, in input order, streaming; ``batch_size``
        ``None`` lets the model choose (fitted to the device). Classifiers fill ``probs``
        ``(C,)`` and ``embedding`` ``(D,)``; detectors ``boxes``, ``box_probs`` ``(B, C)`` and
        ``embedding``."""
        ...

    def save(self, path: Path) -> None:
        """Write a checkpoint that :meth:`load` rebuilds the model from (its ``format`` key
        names the adapter: see :mod:`pseudolabel.models.registry`)."""
        ...

    @classmethod
    def load(cls, path: Path) -> Self:
        """Rebuild a model written by :meth:`save`."""
        ...


def resolve_device(device: str = "auto") -> torch.device:
    """Turn a device name into a :class:`torch.device`.

    ``"auto"`` picks CUDA when it is available, else CPU. ``"cpu"``, ``"cuda"`` and
    ``"cuda:N"`` are taken as asked; asking for CUDA on a machine without it raises
    :class:`ValueError` rather than silently falling back to CPU.
    """
    if not isinstance(device, str):
        raise ValueError(f"device must be a string ('auto', 'cpu', 'cuda', 'cuda:N'), got {device!r}")
    name = device.strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but CUDA is not available here; use 'auto' or 'cpu'")
        try:
            dev = torch.device(name)
        except RuntimeError as e:
            raise ValueError(f"invalid device {device!r}: {e}") from e
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {device!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist"
            )
        return dev
    raise ValueError(f"unknown device {device!r}; expected 'auto', 'cpu', 'cuda' or 'cuda:N'")


def state_hash(state: Mapping[str, torch.Tensor]) -> str:
    """Short content hash of a state_dict (12 hex chars of sha256): the default model version."""
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().to("cpu").contiguous()
        h.update(key.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:12]


class AdapterBase:
    """The scikit-learn plumbing every adapter shares: constructor parameters, the fitted
    check (learned state lives in ``net_``) and the ``model_version`` property."""

    @classmethod
    def _param_names(cls) -> list[str]:
        return [p for p in inspect.signature(cls.__init__).parameters if p != "self"]

    def get_params(self) -> dict[str, Any]:
        """Constructor parameters as given (scikit-learn style)."""
        return {name: getattr(self, name) for name in self._param_names()}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    # ---- parameter checks shared by the adapters' ``_check_params`` ----------------------

    def _check_classes(self, *, at_least: int) -> None:
        """``classes``: a list of at least ``at_least`` distinct non-empty class names."""
        classes = getattr(self, "classes", None)  # every adapter's constructor parameter
        if isinstance(classes, str) or not isinstance(classes, Sequence) or len(classes) < at_least:
            raise ValueError(f"classes must be a list of at least {at_least} class name"
                             f"{'s' if at_least > 1 else ''}, got {classes!r}")
        for c in classes:
            if not isinstance(c, str) or not c:
                raise ValueError(f"class names must be non-empty strings, got {c!r} in {list(classes)!r}")
        dupes = sorted({c for c in classes if list(classes).count(c) > 1})
        if dupes:
            raise ValueError(f"duplicate class names {dupes!r} in classes")

    def _check_ints(self, **lowest: int) -> None:
        """Each named parameter is an integer (not a bool) >= its lowest value."""
        for name, lo in lowest.items():
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")

    def _check_non_negative(self, *names: str) -> None:
        """Each named parameter is a finite number (not a bool) >= 0."""
        for name in names:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")

    def _check_fitted(self) -> None:
        if not hasattr(self, "net_"):
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet; call fit() or load() first")

    @property
    def model_version(self) -> str:
        """Short hash of the trained weights (12 hex chars), unless the caller set one."""
        self._check_fitted()
        return self.model_version_

    @model_version.setter
    def model_version(self, value: str) -> None:
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"model_version must be a non-empty string, got {value!r}")
        self.model_version_ = value


class EpochProgress:
    """Training progress that is visible wherever it runs: a live bar on a terminal, and a
    plain line about every tenth of the epochs otherwise (cron logs, CI, pipes).

    ``total``: epochs; ``desc``: what trains; ``enabled``: False shows nothing.
    """

    def __init__(self, total: int, desc: str, *, enabled: bool = True) -> None:
        from rich.console import Console

        self.total = int(total)
        self.desc = desc
        self.enabled = enabled and total > 0
        self._console = Console(stderr=True)
        self._bar: Any = None
        self._every = max(1, self.total // 10)
        if self.enabled and self._console.is_terminal:
            from rich.progress import Progress

            self._bar = Progress(console=self._console, transient=True)
            self._bar.start()
            self._task = self._bar.add_task(desc, total=self.total)

    def epoch_done(self, epoch: int, text: str = "") -> None:
        """Report that ``epoch`` (1-based) finished; ``text``: e.g. the loss."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(self._task, completed=epoch, description=f"{self.desc} {text}".strip())
        elif epoch % self._every == 0 or epoch == self.total:
            self._console.print(f"  {self.desc}: epoch {epoch}/{self.total} {text}".rstrip(), highlight=False)

    def close(self) -> None:
        """Stop the live progress bar (if one is shown)."""
        if self._bar is not None:
            self._bar.stop()


# -- capabilities ----------------------------------------------------------------------------
CAPABILITIES: dict[str, str] = {
    "mc_dropout": "stochastic forward passes with dropout on (mc_dropout_probs)",
    "hflip_tta": "predictions on horizontally mirrored images (predict(..., hflip=True))",
    "unlabelled": "training on unlabelled images too (fit(..., unlabelled=...))",
}
"""What a model may do beyond :class:`Model`, by name. An adapter lists what it does in its
``capabilities`` attribute; the loops check with :func:`require` instead of reaching in."""


def capabilities(model: Any) -> frozenset[str]:
    """The optional capabilities ``model`` declares (see :data:`CAPABILITIES`)."""
    return frozenset(getattr(model, "capabilities", ()))


def require(model: Any, capability: str, what: str) -> None:
    """Raise ``ValueError`` naming ``what`` needs ``capability`` when ``model`` lacks it."""
    if capability not in CAPABILITIES:
        raise ValueError(f"unknown capability {capability!r}; known: {', '.join(CAPABILITIES)}")
    if capability not in capabilities(model):
        arch = getattr(model, "arch", None) or getattr(model, "task", None) or ""
        raise ValueError(f"{what} needs a model that supports {CAPABILITIES[capability]}; "
                         f"{type(model).__name__}{f' ({arch})' if arch else ''} does not")


def predict_arrays(model: Any, items: Iterable[Item], *, batch_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """All classification predictions of ``items`` at once: probabilities ``(N, C)`` and
    embeddings ``(N, D)`` (float32, rows in input order), through :meth:`Model.predict`."""
    preds = list(model.predict(items, batch_size=batch_size))
    n_classes = len(model.classes)
    if not preds:
        return np.zeros((0, n_classes), dtype=np.float32), np.zeros((0, 0), dtype=np.float32)
    if any(p.probs is None for p in preds):
        raise ValueError(f"{type(model).__name__} gave predictions without class probabilities: not a classifier")
    emb = [p.embedding for p in preds]
    emb_arr = np.stack([np.asarray(e, dtype=np.float32) for e in emb]) if all(e is not None for e in emb) \
        else np.zeros((len(preds), 0), dtype=np.float32)
    return np.stack([np.asarray(p.probs, dtype=np.float32) for p in preds]), emb_arr
