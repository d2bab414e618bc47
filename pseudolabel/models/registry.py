"""One place that builds models from the config and loads them from checkpoints.

``build(cfg, n_train=...)`` picks the adapter from ``model.arch`` (and ``task``):

=============================  ==========================================================
``small_cnn`` / ``resnet18``   :class:`~pseudolabel.models.torchvision_cls.TorchvisionClassifier`
``frozen``                     :class:`~pseudolabel.models.backbone.FrozenBackboneClassifier`
``yolo``                       :class:`~pseudolabel.models.ultralytics_yolo.YoloModel`
                               (``task`` detect, segment or classify)
=============================  ==========================================================

``load(path, cfg=...)`` reads the checkpoint's own ``format`` key to choose the adapter, so a
round resumes and the ML backend serves whatever the round saved, whichever family it is.
Frameworks are imported only when a model of theirs is built or loaded.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pseudolabel.types import Item

if TYPE_CHECKING:
    from pseudolabel.config import Config

# Adapter name -> (module, class, checkpoint ``format`` prefix); a new family joins with a line.
ADAPTERS: dict[str, tuple[str, str, str]] = {
    "torchvision": ("pseudolabel.models.torchvision_cls", "TorchvisionClassifier", "pseudolabel.torchvision_cls/"),
    "yolo": ("pseudolabel.models.ultralytics_yolo", "YoloModel", "pseudolabel.ultralytics_yolo/"),
    "frozen": ("pseudolabel.models.backbone.classifier", "FrozenBackboneClassifier", "pseudolabel.frozen_backbone/"),
}


def available_adapters() -> list[str]:
    """Adapter names accepted by :func:`get_adapter`."""
    return sorted(ADAPTERS)


def get_adapter(name: str) -> Any:
    """The adapter class registered under ``name`` (its framework imported on first use)."""
    import importlib

    if name not in ADAPTERS:
        raise ValueError(f"unknown model adapter {name!r}; choose one of {available_adapters()!r}")
    module, cls, _ = ADAPTERS[name]
    return getattr(importlib.import_module(module), cls)


def training_plan(cfg: Config, n_train: int) -> dict[str, int]:
    """Epochs and optimiser steps a round's training runs: ``model.epochs``, raised so that at
    least ``model.min_steps`` steps run on ``n_train`` images at ``model.batch_size`` (20
    seed images are one step per epoch; the round prints this plan before training)."""
    m = cfg.model
    steps_per_epoch = max(1, math.ceil(max(n_train, 1) / m.batch_size))
    epochs = max(m.epochs, math.ceil(m.min_steps / steps_per_epoch)) if m.min_steps else m.epochs
    return {"epochs": int(epochs), "steps_per_epoch": int(steps_per_epoch), "steps": int(epochs * steps_per_epoch)}


def build(cfg: Config, *, n_train: int = 0, progress: bool = False, previous: Path | None = None,
          pool: Callable[[], Sequence[Item]] | None = None) -> Any:
    """An untrained model for ``cfg`` (see the module table).

    ``n_train``: training set size (YOLO's epochs follow :func:`training_plan`); ``previous``:
    the last round's checkpoint, YOLO's starting point with ``model.warm_start``; ``pool``:
    returns the pool's items, for ``backbone: ssl`` (self-supervised pretraining on them).
    """
    m = cfg.model
    if m.arch == "yolo":
        from pseudolabel.models.ultralytics_yolo import YoloModel

        weights = previous if m.warm_start and previous is not None and previous.is_file() else m.weights
        return YoloModel(
            cfg.classes, task=cfg.task, model_yaml=m.yolo_yaml, weights=weights, image_size=m.image_size,
            epochs=training_plan(cfg, n_train)["epochs"], batch_size=m.batch_size, device=m.device, seed=m.seed,
            conf=m.conf, iou=m.iou, workdir=cfg.workdir / "yolo", config_dir=cfg.workdir / "ultralytics",
            train_args=dict(m.train_args), runtime=m.runtime, progress=progress,
        )
    if m.arch == "frozen":
        return _frozen(cfg, progress=progress, pool=pool)
    from pseudolabel.models.torchvision_cls import TorchvisionClassifier

    if m.arch is None:  # Config's validator sets it from the task; only an unvalidated Config lacks it
        raise ValueError("model.arch is not set: build the model from a validated Config")
    c = cfg.consistency
    return TorchvisionClassifier(
        classes=cfg.classes, arch=m.arch, image_size=m.image_size, epochs=m.epochs,
        batch_size=m.batch_size, lr=m.lr, device=m.device, seed=m.seed, weights=m.weights,
        min_steps=m.min_steps, progress=progress, consistency=c.enabled, consistency_threshold=c.threshold,
        consistency_weight=c.weight, unlabelled_ratio=c.unlabelled_ratio, strong_ratio=c.strong_ratio,
        pseudo_per_epoch=cfg.pseudo.per_epoch, pseudo_ratio=cfg.pseudo.ratio, allow_download=m.allow_download,
    )


def _frozen(cfg: Config, *, progress: bool, pool: Callable[[], Sequence[Item]] | None) -> Any:
    """A frozen-backbone classifier; ``backbone: ssl`` first pretrains (or reuses) a
    self-supervised backbone on the pool. Embeddings are cached in ``<workdir>/embeddings``,
    pretraining in ``<workdir>/pretrain``."""
    from pseudolabel.models.backbone import FrozenBackboneClassifier
    from pseudolabel.models.backbone.ssl import PretrainSettings, pretrain_backbone

    m, p = cfg.model, cfg.pretrain
    backbone = m.backbone
    if backbone == "ssl":
        if pool is None:
            raise ValueError("model.backbone ssl pretrains on the pool: build(..., pool=...) must give its items")
        settings = PretrainSettings(image_size=p.image_size, width=p.width, max_steps=p.max_steps,
                                    max_minutes=p.max_minutes, batch_size=p.batch_size, lr=p.lr,
                                    temperature=p.temperature, checkpoint_every=p.checkpoint_every,
                                    max_images=p.max_images, seed=m.seed)
        backbone = "ssl:" + str(pretrain_backbone(list(pool()), settings=settings, cache_dir=cfg.workdir / "pretrain",
                                                  allow_train=p.enabled, device=m.device, progress=progress).path)
    default_size = type(m).model_fields["image_size"].default
    return FrozenBackboneClassifier(
        cfg.classes, backbone=backbone, weights=m.weights,
        # image_size left at its default: the backbone's own (64 px for ImageNet, pretrain.image_size for ssl)
        image_size=None if m.image_size == default_size else m.image_size, head=m.head,
        finetune=m.finetune, epochs=m.epochs, batch_size=m.batch_size, lr=m.lr, min_steps=m.min_steps,
        device=m.device, seed=m.seed, cache_dir=cfg.workdir / "embeddings", allow_download=m.allow_download,
        progress=progress)


def checkpoint_format(path: Path) -> str:
    """The ``format`` key of a checkpoint written by an adapter's ``save``."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"model checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
        raise ValueError(f"{path}: not a pseudolabel model checkpoint ({type(exc).__name__}: {exc})") from None
    fmt = obj.get("format") if isinstance(obj, Mapping) else None
    if not isinstance(fmt, str):
        raise ValueError(f"{path}: not a pseudolabel model checkpoint (no 'format' key)")
    return fmt


def load(path: Path, *, cfg: Config | None = None, device: str | None = None) -> Any:
    """Rebuild the model saved at ``path``, by the checkpoint's own metadata.

    ``cfg`` (when given) supplies where a model keeps its working files (YOLO's workdir and
    settings, the embedding cache) and the device / runtime; ``device`` overrides the device.
    """
    fmt = checkpoint_format(path)
    adapter = next((a for a, (_, _, prefix) in ADAPTERS.items() if fmt.startswith(prefix)), None)
    if adapter is None:
        raise ValueError(f"{path}: checkpoint format {fmt!r} is not one of "
                         f"{sorted(p + '*' for _, _, p in ADAPTERS.values())}; save the model with its adapter's save()")
    cls = get_adapter(adapter)
    dev = device if device is not None else (cfg.model.device if cfg is not None else "auto")
    if adapter == "yolo":
        extra: dict[str, Any] = {"device": dev}
        if cfg is not None:
            extra |= {"workdir": cfg.workdir / "yolo", "config_dir": cfg.workdir / "ultralytics",
                      "runtime": cfg.model.runtime}
        return cls.load(path, **extra)
    if adapter == "frozen":
        return cls.load(path, device=dev, cache_dir=None if cfg is None else cfg.workdir / "embeddings")
    return cls.load(path, device=dev)
