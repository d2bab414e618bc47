"""Model adapters behind one protocol (:class:`~pseudolabel.models.base.Model`).

Frameworks stay behind their adapter modules; ``TorchvisionClassifier`` is imported lazily
so that ``import pseudolabel.models`` stays cheap.
"""

from __future__ import annotations

from typing import Any

from pseudolabel.models.base import Model, NotFittedError, resolve_device
from pseudolabel.models.registry import available_adapters, get_adapter

__all__ = [
    "Model",
    "NotFittedError",
    "TorchvisionClassifier",
    "available_adapters",
    "get_adapter",
    "resolve_device",
]


def __getattr__(name: str) -> Any:
    if name == "TorchvisionClassifier":
        from pseudolabel.models.torchvision_cls import TorchvisionClassifier

        return TorchvisionClassifier
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
