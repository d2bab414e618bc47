"""Pretrained and self-supervised representations: frozen backbones with light heads.

- :mod:`.nets`: backbones cut into a frozen trunk and a trainable last stage;
- :mod:`.cache`: on-disk embedding cache keyed by item id + backbone;
- :mod:`.classifier`: :class:`FrozenBackboneClassifier`, the model adapter;
- :mod:`.ssl`: self-supervised (SimCLR) pretraining on the pool, resumable and cached.

Importing this package imports torch but no weights are read until a model is fitted.
"""

from __future__ import annotations

from pseudolabel.models.backbone.classifier import FrozenBackboneClassifier, load_backbone

__all__ = ["FrozenBackboneClassifier", "load_backbone"]
