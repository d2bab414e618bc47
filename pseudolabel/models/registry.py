"""Model adapters by name, so a config can say ``model: {adapter: torchvision, ...}``.

Adapters are imported only when asked for: importing this module imports no framework
(Ultralytics in particular must stay unimported until a YOLO model is requested).
"""

from __future__ import annotations

import importlib
from typing import Any

# name -> "module:ClassName"; a later adapter joins by adding a line.
_ADAPTERS: dict[str, str] = {
    "torchvision": "pseudolabel.models.torchvision_cls:TorchvisionClassifier",
    "yolo": "pseudolabel.models.ultralytics_yolo:YoloModel",
}


def available_adapters() -> list[str]:
    """Adapter names accepted by :func:`get_adapter`."""
    return sorted(_ADAPTERS)


def get_adapter(name: str) -> Any:
    """The adapter class registered under ``name`` (imported on first use)."""
    if name not in _ADAPTERS:
        raise ValueError(f"unknown model adapter {name!r}; choose one of {available_adapters()!r}")
    module, _, attr = _ADAPTERS[name].partition(":")
    return getattr(importlib.import_module(module), attr)
