"""Image classifier adapter on plain PyTorch / torchvision.

Two architectures:

- ``small_cnn``: a tiny CNN (~65k parameters: four 3x3 conv blocks with batch norm and
  2x2 max-pooling, global average pooling, a 64-d embedding layer, dropout, a linear head).
  About a quarter of a second per epoch on 1.3k 32x32 images on two CPU cores; the dropout
  before the head is what Monte-Carlo dropout strategies switch on at inference.
- ``resnet18``: ``torchvision.models.resnet18(weights=None, num_classes=C)``. For small
  images (``image_size < 64``) the ImageNet stem (7x7 stride-2 conv + max-pool, which would
  shrink a 32x32 image to 8x8 before the first residual block) is replaced by a 3x3 stride-1
  conv and no max-pool, the usual CIFAR variant. Parameter names are torchvision's, so a
  torchvision ``state_dict`` file loads directly (for ``image_size >= 64``).

Images are read with :func:`pseudolabel.data.images.load_rgb`, resized to
``image_size x image_size`` pixels (bilinear, aspect ratio not kept), scaled to [0, 1] and
normalised with ``mean`` / ``std`` per RGB channel.

Initial weights come from ``weights``: a local file, or a named pretrained set
(``resnet18.IMAGENET1K_V1``) found by :func:`pseudolabel.models.weights.resolve_weights` in the
local cache, downloaded only with ``allow_download``. Networks are built with ``weights=None``.
Small images with a named ImageNet set: resnet18 keeps the set's ImageNet stem and images are
resized up to 64 px (``input_size_``); a local file must fit the stem ``image_size`` chooses.

Why this module is over 400 lines: one adapter class (fit with its consistency-training step,
predict, MC dropout, TTA, save/load) whose methods share the network, the transforms and the
checkpoint format; split, each part would need the others' privates.
"""

from __future__ import annotations

import logging
import math
import os
import pickle
from collections.abc import Iterable, Iterator, Mapping, Sequence
from itertools import islice
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset
from typing_extensions import Self

from pseudolabel.augment import strong_augment, weak_augment
from pseudolabel.data.images import load_chw
from pseudolabel.models.base import AdapterBase, EpochProgress, resolve_device, state_hash
from pseudolabel.models.weights import ResolvedWeights, resolve_weights
from pseudolabel.types import Annotation, Item, Prediction, TaskType

logger = logging.getLogger("pseudolabel.models")

ARCHS: tuple[str, ...] = ("small_cnn", "resnet18")
CHECKPOINT_FORMAT = "pseudolabel.torchvision_cls/1"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Keys of the classification head: the only ones allowed to be skipped when initial weights
# come from a model trained on other classes.
_HEAD_KEYS = ("fc.weight", "fc.bias")
_SMALL_IMAGE = 64  # below this, resnet18 uses the 3x3 stride-1 stem
MEMORY_FORMAT = torch.channels_last
"""Layout of the networks' weights and batches. Channels-last is what oneDNN's CPU kernels
(and cuDNN's) are fastest at: measured on a 2-core CPU, one training step of the small CNN on
64 images of 32 px took 23 ms instead of 36 ms, a teacher (eval) pass 8 ms instead of 20 ms.
Values are the same up to float rounding; state_dicts are saved in the logical layout."""
# Unlabelled pools up to this many bytes of decoded pixels are kept in memory during training.
_UNLABELLED_CACHE_BYTES = 512 * 2**20


# --------------------------------------------------------------------------------------
# networks


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class SmallCNN(nn.Module):
    """Tiny CNN: ``(B, 3, H, W)`` -> logits ``(B, C)``; :meth:`forward_features` gives the
    ``(B, embed_dim)`` embedding (after ReLU, before dropout and the head)."""

    def __init__(self, num_classes: int, *, embed_dim: int = 64, dropout: float = 0.25) -> None:
        super().__init__()
        self.features = nn.Sequential(
            _conv_block(3, 16),
            nn.MaxPool2d(2),
            _conv_block(16, 32),
            nn.MaxPool2d(2),
            _conv_block(32, 64),
            nn.MaxPool2d(2),
            _conv_block(64, 64),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.embed = nn.Sequential(nn.Linear(64, embed_dim), nn.ReLU(inplace=True))
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(embed_dim, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Embeddings ``(B, D)`` float32 of images ``x`` ``(B, 3, H, W)`` float32 (normalised)."""
        return self.embed(self.features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, C)`` float32 of images ``x`` ``(B, 3, H, W)`` float32 (normalised)."""
        return self.fc(self.dropout(self.forward_features(x)))


def _build_resnet18(num_classes: int, image_size: int) -> torchvision.models.ResNet:
    net = torchvision.models.resnet18(weights=None, num_classes=num_classes)
    if image_size < _SMALL_IMAGE:
        net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    return net


def _forward(net: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``net`` on a normalised batch ``(B, 3, H, W)``; returns logits ``(B, C)`` and the
    penultimate embedding ``(B, D)``.

    Networks live in channels-last memory format (see :data:`MEMORY_FORMAT`) and the batch is
    laid out the same way here, so every convolution takes the fast path."""
    x = x.contiguous(memory_format=MEMORY_FORMAT)
    if isinstance(net, torchvision.models.ResNet):
        h = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        h = net.layer4(net.layer3(net.layer2(net.layer1(h))))
        emb = torch.flatten(net.avgpool(h), 1)
        return net.fc(emb), emb
    if isinstance(net, SmallCNN):
        emb = net.forward_features(x)
        return net.fc(net.dropout(emb)), emb
    raise TypeError(f"unsupported network type {type(net).__name__}")


# --------------------------------------------------------------------------------------
# data


class _ImageDataset(Dataset[torch.Tensor]):
    """Decodes image files to ``(3, S, S)`` uint8 tensors (resized, not normalised)."""

    def __init__(self, paths: Sequence[Path], image_size: int) -> None:
        self.paths = list(paths)
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        return load_chw(self.paths[i], self.image_size)  # (3, S, S) uint8


class _UnlabelledStream:
    """Endless reshuffled draws of ``batch`` unlabelled pool indices, and their images as uint8
    ``(B, 3, S, S)``.

    Every image is drawn once per pass over the pool, in an order from ``generator``. A pool
    that fits in ``cache_bytes`` is decoded once and kept in memory; a larger one is decoded
    as the images are asked for, so a big pool never sits in memory. ``confidence`` (N,)
    keeps each image's teacher confidence from its last visit (-1 = never evaluated).
    """

    def __init__(
        self, paths: Sequence[Path], image_size: int, batch: int, generator: torch.Generator, cache_bytes: int
    ) -> None:
        self.dataset = _ImageDataset(paths, image_size)
        self.batch = min(batch, len(paths))
        self.generator = generator
        self.cache: torch.Tensor | None = None
        if len(paths) * 3 * image_size * image_size <= cache_bytes:
            self.cache = torch.cat(list(DataLoader(self.dataset, batch_size=256, shuffle=False)))
        self.order: list[int] = []
        self.confidence = torch.full((len(paths),), -1.0)

    def draw(self, n: int | None = None) -> torch.Tensor:
        """The next ``n`` (default ``batch``; at most the pool size) pool indices, (n,) int64."""
        n = self.batch if n is None else min(max(int(n), 1), len(self.dataset))
        while len(self.order) < n:
            self.order += torch.randperm(len(self.dataset), generator=self.generator).tolist()
        idx, self.order = self.order[:n], self.order[n:]
        return torch.tensor(idx, dtype=torch.long)

    def images(self, idx: torch.Tensor) -> torch.Tensor:
        if self.cache is not None:
            return self.cache[idx]
        return torch.stack([self.dataset[int(i)] for i in idx])


class _BoundedPseudoBatches:
    """Batch sampler for :class:`TensorDataset` rows: each epoch every ``keep`` row plus a
    fresh random ``cap`` of the ``pseudo`` rows, shuffled together, in batches of ``batch``
    (a final batch of one is dropped: batch norm cannot train on it)."""

    def __init__(self, keep: torch.Tensor, pseudo: torch.Tensor, cap: int, batch: int,
                 generator: torch.Generator) -> None:
        self.keep, self.pseudo, self.cap, self.batch, self.generator = keep, pseudo, cap, batch, generator
        self.n = len(keep) + cap
        self.drop_last = self.n > batch and self.n % batch == 1

    def __len__(self) -> int:
        return self.n // self.batch if self.drop_last else -(-self.n // self.batch)

    def __iter__(self) -> Iterator[list[int]]:
        chosen = self.pseudo[torch.randperm(len(self.pseudo), generator=self.generator)[: self.cap]]
        pool = torch.cat([self.keep, chosen])
        rows: list[int] = pool[torch.randperm(len(pool), generator=self.generator)].tolist()
        for i in range(len(self)):
            yield rows[i * self.batch : (i + 1) * self.batch]


def _read_state_file(path: Path) -> Any:
    if not path.is_file():
        raise ValueError(f"{path} does not exist (expected a local state_dict / checkpoint file)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as e:
        raise ValueError(
            f"{path}: cannot be read with torch.load(weights_only=True) ({e}); "
            "expected a state_dict (or a checkpoint written by TorchvisionClassifier.save)"
        ) from e


# --------------------------------------------------------------------------------------
# the adapter


class TorchvisionClassifier(AdapterBase):
    """Image classifier behind the :class:`~pseudolabel.models.base.Model` protocol.

    Parameters (stored as given; checked by :meth:`fit`):

    - ``classes``: class names; ``probs`` columns follow this order;
    - ``arch``: ``"small_cnn"`` or ``"resnet18"``;
    - ``image_size``: side in pixels images are resized to (square);
    - ``epochs``, ``batch_size``, ``lr``, ``weight_decay``: AdamW with cosine decay;
    - ``min_steps``: train for at least this many optimiser steps (more epochs on tiny sets);
    - ``device``: ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda"``;
    - ``seed``: training is deterministic given the seed (on CPU; cuDNN may add noise on GPU);
    - ``weights``: optional local file to start from (a state_dict, or a checkpoint from
      :meth:`save`), or a named pretrained set (``resnet18.IMAGENET1K_V1``); head weights are
      skipped when the classes differ (recorded in ``weights_skipped_``, with a logged
      message), any other mismatch is an error;
    - ``allow_download``: a named set missing from the local cache may be downloaded;
    - ``num_workers``: DataLoader worker processes for decoding;
    - ``augment``: random translation of up to ``pad`` pixels; ``hflip`` adds horizontal
      flips (off by default: digits and text are not flip-invariant);
    - ``dropout``: dropout before the head (small_cnn only);
    - ``mean`` / ``std``: per-channel normalisation of [0, 1] RGB;
    - ``progress``: show a progress bar while training;
    - ``consistency``, ``consistency_threshold``, ``consistency_weight``,
      ``unlabelled_ratio``, ``strong_ratio``: FixMatch-style consistency training on the
      ``unlabelled`` images given to :meth:`fit` (see there); off by default;
    - ``pseudo_per_epoch``, ``pseudo_ratio``: bound the pseudo-labelled annotations
      (``source == "pseudo"``) an epoch trains on: at most ``pseudo_per_epoch``, and at most
      ``pseudo_ratio`` x the number of other (seed / human) annotations; a fresh random
      sample each epoch. ``None`` for both: every pseudo-label in every epoch.

    Learned attributes (after :meth:`fit` or :meth:`load`): ``net_``, ``classes_``,
    ``model_version_``, ``device_``, ``embedding_dim_``, ``history_`` (per-epoch
    ``{"epoch", "loss", "val_accuracy"}``, plus ``"loss_x"``, ``"loss_u"``, ``"mask_rate"`` with
    consistency training), ``weights_skipped_``, ``n_unlabelled_`` (unlabelled images used by
    consistency training; 0 when it was off), ``pseudo_per_epoch_`` (pseudo-labelled
    annotations each epoch trained on).
    """

    task: TaskType = "classify"

    @property
    def capabilities(self) -> frozenset[str]:
        """Trains on unlabelled images (consistency); MC dropout with ``small_cnn`` (resnet18
        has no dropout layer)."""
        return frozenset({"unlabelled", "mc_dropout"} if self.arch == "small_cnn" else {"unlabelled"})

    def __init__(
        self,
        classes: Sequence[str],
        *,
        arch: Literal["small_cnn", "resnet18"] | str = "small_cnn",
        image_size: int = 32,
        epochs: int = 30,
        batch_size: int = 64,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        device: str = "auto",
        seed: int = 0,
        weights: Path | str | None = None,
        num_workers: int = 0,
        augment: bool = True,
        pad: int = 2,
        hflip: bool = False,
        dropout: float = 0.25,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        progress: bool = False,
        min_steps: int = 0,
        consistency: bool = False,
        consistency_threshold: float = 0.95,
        consistency_weight: float = 1.0,
        unlabelled_ratio: int = 1,
        strong_ratio: float = 0.5,
        pseudo_per_epoch: int | None = None,
        pseudo_ratio: float | None = None,
        allow_download: bool = False,
    ) -> None:
        self.classes = list(classes) if not isinstance(classes, str) else classes
        self.arch = arch
        self.image_size = image_size
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.device = device
        self.seed = seed
        self.weights = weights
        self.num_workers = num_workers
        self.augment = augment
        self.pad = pad
        self.hflip = hflip
        self.dropout = dropout
        self.mean = mean
        self.std = std
        self.progress = progress
        self.min_steps = min_steps
        self.consistency = consistency
        self.consistency_threshold = consistency_threshold
        self.consistency_weight = consistency_weight
        self.unlabelled_ratio = unlabelled_ratio
        self.strong_ratio = strong_ratio
        self.pseudo_per_epoch = pseudo_per_epoch
        self.pseudo_ratio = pseudo_ratio
        self.allow_download = allow_download

    # ---- parameters -------------------------------------------------------------------

    def _check_params(self) -> None:
        self._check_classes(at_least=2)
        if self.arch not in ARCHS:
            raise ValueError(f"unknown arch {self.arch!r}; choose one of {list(ARCHS)!r}")
        self._check_ints(image_size=8, epochs=0, batch_size=1, num_workers=0, pad=0, seed=0, min_steps=0,
                         unlabelled_ratio=1)
        sr = self.strong_ratio
        if isinstance(sr, bool) or not isinstance(sr, (int, float)) or not math.isfinite(sr) or not 0 < sr <= 1:
            raise ValueError(f"strong_ratio must be a number in (0, 1] (the share of a step's unlabelled images "
                             f"trained on), got {sr!r}")
        ppe = self.pseudo_per_epoch
        if ppe is not None and (isinstance(ppe, bool) or not isinstance(ppe, int) or ppe < 0):
            raise ValueError(f"pseudo_per_epoch must be an integer >= 0 or None, got {ppe!r}")
        pr = self.pseudo_ratio
        if pr is not None and (isinstance(pr, bool) or not isinstance(pr, (int, float)) or not math.isfinite(pr)
                               or pr < 0):
            raise ValueError(f"pseudo_ratio must be a number >= 0 or None, got {pr!r}")
        if not isinstance(self.consistency, bool):
            raise ValueError(f"consistency must be True or False, got {self.consistency!r}")
        thr = self.consistency_threshold
        if isinstance(thr, bool) or not isinstance(thr, (int, float)) or not 0 < thr <= 1:
            raise ValueError(
                f"consistency_threshold must be a probability in (0, 1] (the weak-view confidence a "
                f"pseudo-label needs), got {thr!r}"
            )
        cw = self.consistency_weight
        if isinstance(cw, bool) or not isinstance(cw, (int, float)) or not math.isfinite(cw) or cw < 0:
            raise ValueError(f"consistency_weight must be a finite number >= 0, got {cw!r}")
        self._check_non_negative("lr", "weight_decay")
        if self.lr == 0:
            raise ValueError("lr must be > 0, got 0")
        if not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        for name in ("mean", "std"):
            v = getattr(self, name)
            if len(v) != 3 or not all(isinstance(x, (int, float)) and math.isfinite(x) for x in v):
                raise ValueError(f"{name} must be 3 finite numbers (R, G, B), got {v!r}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std values must be > 0, got {self.std!r}")
        resolve_device(self.device)  # raises for an unusable device

    def _config(self) -> dict[str, Any]:
        """Parameters as plain types (for the checkpoint)."""
        params = self.get_params()
        params["classes"] = [str(c) for c in self.classes]
        params["weights"] = None if self.weights is None else str(self.weights)
        params["mean"] = [float(x) for x in self.mean]
        params["std"] = [float(x) for x in self.std]
        return params

    # ---- learned state ----------------------------------------------------------------


    def _build_net(self, num_classes: int) -> nn.Module:
        if self.arch == "small_cnn":
            return SmallCNN(num_classes, dropout=float(self.dropout))
        return _build_resnet18(num_classes, self._input_size())

    def _input_size(self) -> int:
        """Side images are resized to: ``image_size``, or 64 for resnet18 started from a named
        ImageNet set at a smaller ``image_size`` (set by :meth:`fit` / :meth:`load`)."""
        return int(getattr(self, "input_size_", None) or self.image_size)

    def _normalise(self, x: torch.Tensor, device: torch.device) -> torch.Tensor:
        """uint8 ``(B, 3, S, S)`` -> normalised float32 on ``device``."""
        return self._standardise(x.to(device, non_blocking=True).float() / 255.0)

    def _standardise(self, x: torch.Tensor) -> torch.Tensor:
        """float ``(B, 3, S, S)`` in [0, 1] -> ``(x - mean) / std`` per channel, same device."""
        mean = torch.tensor(self.mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    def _encode(
        self, annotations: Sequence[Annotation], index: Mapping[str, int], *, what: str
    ) -> tuple[list[Path], torch.Tensor, torch.Tensor]:
        paths: list[Path] = []
        targets: list[int] = []
        weights: list[float] = []
        for i, ann in enumerate(annotations):
            if not isinstance(ann, Annotation):
                raise ValueError(f"{what}[{i}] is a {type(ann).__name__}, expected an Annotation")
            path = ann.item.path
            if ann.label is None:
                raise ValueError(
                    f"{what}[{i}] ({path}): annotation has no class label (label=None); "
                    "a classifier needs one of the classes"
                )
            if ann.label not in index:
                raise ValueError(
                    f"{what}[{i}] ({path}): unknown class {ann.label!r}; expected one of {list(index)!r}"
                )
            w = ann.weight
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
                raise ValueError(f"{what}[{i}] ({path}): weight must be a finite number >= 0, got {w!r}")
            paths.append(Path(path))
            targets.append(index[ann.label])
            weights.append(float(w))
        return paths, torch.tensor(targets, dtype=torch.long), torch.tensor(weights, dtype=torch.float32)

    def _decode_all(self, paths: Sequence[Path]) -> torch.Tensor:
        """Decode every file once: uint8 ``(N, 3, S, S)`` kept in memory for all epochs."""
        if not paths:
            s = self._input_size()
            return torch.empty((0, 3, s, s), dtype=torch.uint8)
        loader = DataLoader(
            _ImageDataset(paths, self._input_size()),
            batch_size=256,
            shuffle=False,
            num_workers=int(self.num_workers),
        )
        return torch.cat(list(loader))

    def _load_initial_weights(self, net: nn.Module, path: Path) -> list[str]:
        """Copy weights from the file ``path`` (``self.weights`` resolved) into ``net``; returns
        the head keys skipped."""
        obj = _read_state_file(path)
        skip_head = False
        if isinstance(obj, Mapping) and obj.get("format") == CHECKPOINT_FORMAT:
            config = obj["config"]
            if config["arch"] != self.arch:
                raise ValueError(f"{path}: checkpoint is for arch {config['arch']!r}, this model is {self.arch!r}")
            skip_head = list(config["classes"]) != list(self.classes)
            obj = obj["state_dict"]
        if not isinstance(obj, Mapping) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
        ):
            raise ValueError(f"{path}: expected a state_dict (a mapping of names to tensors)")
        own = net.state_dict()
        unexpected = sorted(set(obj) - set(own))
        missing = sorted(
            k for k in set(own) - set(obj) if k not in _HEAD_KEYS and not k.endswith("num_batches_tracked")
        )
        if unexpected or missing:
            raise ValueError(
                f"{path}: state_dict does not fit arch {self.arch!r} (image_size={self.image_size}): "
                f"unexpected keys {unexpected[:5]!r}, missing keys {missing[:5]!r}"
            )
        skipped: list[str] = []
        merged = dict(own)
        for key, value in obj.items():
            if key in _HEAD_KEYS and (skip_head or value.shape != own[key].shape):
                skipped.append(key)
                continue
            if value.shape != own[key].shape:
                raise ValueError(
                    f"{path}: {key} has shape {tuple(value.shape)}, arch {self.arch!r} with "
                    f"image_size={self.image_size} needs {tuple(own[key].shape)}"
                )
            merged[key] = value
        skipped.extend(k for k in _HEAD_KEYS if k not in obj and k in own)
        net.load_state_dict(merged, strict=True)
        if skipped:
            logger.warning("head replaced: %s has a head for other classes; a new %d-class head is trained",
                           self.weights, len(self.classes))
        return sorted(set(skipped))

    # ---- protocol ---------------------------------------------------------------------

    def fit(
        self,
        train: Sequence[Annotation],
        *,
        val: Sequence[Annotation] | None = None,
        unlabelled: Sequence[Item] | None = None,
    ) -> Self:
        """Train from scratch (or from ``weights``) on ``train``; returns ``self``.

        Each annotation's ``weight`` scales its cross-entropy term (loss = mean over the
        batch of ``weight * CE``), so pseudo-labels with weight < 1 pull less and weight-0
        samples give no gradient. ``val``, when given, is scored after every epoch into
        ``history_`` (no early stopping). Raises ``ValueError`` for an unknown class, a
        missing label or a bad weight, naming the item's path.

        Pseudo-labels per epoch (``pseudo_per_epoch`` / ``pseudo_ratio``): when the
        annotations with ``source == "pseudo"`` outnumber the bound, every epoch trains on all
        the other annotations plus a fresh random sample of that many pseudo-labels, so a
        round with 40 human labels and 1,000 pseudo-labels costs about what 80 labels cost
        (the epoch count and ``min_steps`` apply to these shorter epochs). Over the epochs
        every pseudo-label still gets its turn.

        Consistency training (FixMatch, Sohn et al. 2020), when ``consistency`` is on and
        ``unlabelled`` images are given (otherwise they are ignored): every optimiser step
        also draws ``U = unlabelled_ratio * B`` unlabelled pool images, B the labelled
        batch of that step (capped at the pool size; the pool is reshuffled after each pass),
        and trains on
        ``S = ceil(strong_ratio * U)`` of them: those the teacher found confident at their last
        visit first (never-seen ones and ties in random order), since only a confident image's
        strong view carries loss. Their weak view (:func:`~pseudolabel.augment.weak_augment`,
        the same shift / flip as the labelled batch) is predicted without gradient by the
        current network in eval mode (running batch-norm statistics, no dropout: a teacher
        pass); the pseudo-label is the argmax, and it counts (mask 1) only when its
        probability is >= ``consistency_threshold``. All S get a strong view
        (:func:`~pseudolabel.augment.strong_augment`: the weak view, RandAugment with 2 ops,
        Cutout; flips only when ``hflip``) and one train-mode forward pass runs on the
        labelled and strong images together (batch-norm statistics shared, as in FixMatch).
        The loss is FixMatch's, over the S images::

            mean_labelled(weight * CE(logits, label))
              + consistency_weight * mean_S(mask * CE(logits_strong, pseudo_label))

        Cost of a step, in supervised steps (forward + backward of the labelled batch): about
        ``1 + unlabelled_ratio * strong_ratio * (1 + 0.35 + 0.5)`` (the strong images' training
        pass, the teacher pass, the augmentation), i.e. about 1.9 with the defaults
        (``unlabelled_ratio=1``, ``strong_ratio=0.5``: FixMatch with half as many unlabelled
        images as labelled ones per step); ``python -m pseudolabel.sim.bench_ssl`` measures it.
        ``unlabelled_ratio=7, strong_ratio=1`` is the FixMatch paper's setting, ~10x the cost.

        The number of steps is as without consistency (epochs over the labelled set, at least
        ``min_steps``). ``history_`` then records per epoch the supervised part ``loss_x``,
        the unsupervised part ``loss_u`` and ``mask_rate``, the fraction of the unlabelled
        images the teacher evaluated that passed the threshold. ``unlabelled`` items must be readable images; their
        labels, if any, are never looked at.
        """
        self._check_params()
        classes = list(self.classes)
        index = {c: i for i, c in enumerate(classes)}
        paths, targets, weights = self._encode(train, index, what="train")
        if not paths:
            raise ValueError("fit needs at least one annotation in train, got none")
        if float(weights.sum()) <= 0:
            raise ValueError("every training annotation has weight 0: nothing to learn from")
        val_paths, val_targets, _ = self._encode(val or [], index, what="val")
        is_pseudo = torch.tensor([a.source == "pseudo" for a in train], dtype=torch.bool)
        if int((~is_pseudo).sum()) + self._pseudo_cap(int(is_pseudo.sum()), int((~is_pseudo).sum())) == 0:
            raise ValueError(f"train holds only pseudo-labels and pseudo_per_epoch={self.pseudo_per_epoch!r} lets none "
                             "into an epoch: nothing to train on; give seed / human labels or raise the bound")
        u_paths: list[Path] = []
        if unlabelled is not None:
            if isinstance(unlabelled, (str, Path)) or not isinstance(unlabelled, Sequence):
                raise ValueError(f"unlabelled must be a sequence of Items, got {type(unlabelled).__name__}")
            for i, it in enumerate(unlabelled):
                if not isinstance(it, Item):
                    raise ValueError(f"unlabelled[{i}] is a {type(it).__name__}, expected an Item")
            if self.consistency:
                u_paths = [Path(it.path) for it in unlabelled]
        device = resolve_device(self.device)

        fork_devices = [device.index or 0] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=fork_devices):
            # fork_rng: seeding here must not change the caller's global RNG streams.
            torch.manual_seed(self.seed)
            resolved: ResolvedWeights | None = None
            if self.weights is not None:
                resolved = resolve_weights(self.weights, allow_download=bool(self.allow_download))
            self.input_size_ = int(self.image_size)
            if resolved is not None and resolved.source != "file" and self.arch == "resnet18":
                # a named ImageNet set keeps its 7x7 stride-2 stem: images go in at 64 px at least
                self.input_size_ = max(int(self.image_size), _SMALL_IMAGE)
            net = self._build_net(len(classes))
            skipped = self._load_initial_weights(net, resolved.path) if resolved is not None else []
            # torch's Module.to overloads omit memory_format, which Module.to accepts at run time
            net.to(device=device, memory_format=MEMORY_FORMAT)  # type: ignore[call-overload]
            x_train = self._decode_all(paths)
            x_val = self._decode_all(val_paths)
            stream = None
            if u_paths:
                stream = _UnlabelledStream(
                    u_paths,
                    self._input_size(),
                    int(self.unlabelled_ratio) * int(self.batch_size),
                    torch.Generator().manual_seed(self.seed + 2),
                    _UNLABELLED_CACHE_BYTES,
                )
            history = self._train(net, x_train, targets, weights, x_val, val_targets, device, stream, is_pseudo)

        net.eval()
        self.net_ = net
        self.classes_ = classes
        self.device_ = device
        self.embedding_dim_ = int(net.fc.in_features)  # type: ignore[union-attr,arg-type]
        self.history_ = history
        self.weights_skipped_ = skipped
        self.weights_info_ = None if resolved is None else resolved.as_dict()
        self.n_unlabelled_ = len(u_paths)
        self.pseudo_per_epoch_ = self._pseudo_cap(int(is_pseudo.sum()), int((~is_pseudo).sum()))
        self.model_version_ = state_hash(net.state_dict())
        return self

    def _pseudo_cap(self, n_pseudo: int, n_other: int) -> int:
        """Pseudo-labelled annotations per epoch under ``pseudo_per_epoch`` / ``pseudo_ratio``."""
        cap = n_pseudo
        if self.pseudo_per_epoch is not None:
            cap = min(cap, int(self.pseudo_per_epoch))
        if self.pseudo_ratio is not None and n_other > 0:
            # Relative to the other labels; with none (a pseudo-only set) there is nothing to
            # be relative to, and only pseudo_per_epoch bounds the epoch.
            cap = min(cap, math.ceil(float(self.pseudo_ratio) * n_other))
        return cap

    def _train(
        self,
        net: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        w: torch.Tensor,
        x_val: torch.Tensor,
        y_val: torch.Tensor,
        device: torch.device,
        stream: _UnlabelledStream | None = None,
        is_pseudo: torch.Tensor | None = None,
    ) -> list[dict[str, float]]:
        epochs = int(self.epochs)
        n = len(x)
        gen = torch.Generator().manual_seed(self.seed)
        aug_gen = torch.Generator().manual_seed(self.seed + 1)
        u_aug_gen = torch.Generator().manual_seed(self.seed + 3)
        pseudo = torch.zeros(n, dtype=torch.bool) if is_pseudo is None else is_pseudo
        cap = self._pseudo_cap(int(pseudo.sum()), int((~pseudo).sum()))
        loader: DataLoader[Any]
        if cap < int(pseudo.sum()):
            loader = DataLoader(TensorDataset(x, y, w), batch_sampler=_BoundedPseudoBatches(
                torch.nonzero(~pseudo).view(-1), torch.nonzero(pseudo).view(-1), cap, int(self.batch_size), gen))
        else:
            # A final batch of one sample breaks batch norm in train mode: drop it (it is a
            # different sample every epoch, since batches are reshuffled).
            drop_last = n > self.batch_size and n % self.batch_size == 1
            loader = DataLoader(TensorDataset(x, y, w), batch_size=int(self.batch_size), shuffle=True, generator=gen,
                                drop_last=drop_last)
        if epochs > 0 and self.min_steps:
            # Active learning starts from a handful of labels: 20 images at batch 32 is one
            # optimiser step per epoch. Train for at least ``min_steps`` steps whatever the
            # set size, so round 1 is not judged on an untrained model.
            epochs = max(epochs, -(-int(self.min_steps) // len(loader)))
        opt = torch.optim.AdamW(net.parameters(), lr=float(self.lr), weight_decay=float(self.weight_decay))
        steps = max(1, epochs * len(loader))
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
        history: list[dict[str, float]] = []
        progress = EpochProgress(epochs, f"training {self.arch}", enabled=bool(self.progress))
        try:
            for epoch in range(epochs):
                net.train()
                total, count = 0.0, 0
                u_sums = [0.0, 0.0, 0.0, 0.0]  # loss_x, loss_u, masked images, unlabelled images
                for xb, yb, wb in loader:
                    xf = self._normalise(xb, device)
                    if self.augment:
                        xf = self._augment(xf, aug_gen)
                    yb, wb = yb.to(device), wb.to(device)
                    if stream is None:
                        logits, _ = _forward(net, xf)
                        loss = (F.cross_entropy(logits, yb, reduction="none") * wb).mean()
                    else:
                        loss, parts = self._consistency_loss(net, xf, yb, wb, stream, device, u_aug_gen)
                        for k in range(4):
                            u_sums[k] += parts[k]
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    sched.step()
                    total += float(loss.detach()) * len(yb)
                    count += len(yb)
                record = {"epoch": float(epoch + 1), "loss": total / max(count, 1)}
                if stream is not None:
                    steps_done = max(len(loader), 1)
                    record["loss_x"] = u_sums[0] / steps_done
                    record["loss_u"] = u_sums[1] / steps_done
                    record["mask_rate"] = u_sums[2] / max(u_sums[3], 1.0)
                if len(x_val):
                    probs, _ = self._infer_tensor(net, x_val, device)
                    record["val_accuracy"] = float((probs.argmax(1) == y_val.numpy()).mean())
                history.append(record)
                progress.epoch_done(epoch + 1, f"loss={record['loss']:.3f}")
        finally:
            progress.close()
        return history

    def _augment(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Random shift of up to ``pad`` pixels, plus horizontal flips when ``hflip``."""
        return weak_augment(x, generator=generator, pad=int(self.pad), hflip=bool(self.hflip))

    def _consistency_loss(
        self,
        net: nn.Module,
        xf: torch.Tensor,
        yb: torch.Tensor,
        wb: torch.Tensor,
        stream: _UnlabelledStream,
        device: torch.device,
        generator: torch.Generator,
    ) -> tuple[torch.Tensor, tuple[float, float, float, float]]:
        """FixMatch loss for one step (see :meth:`fit`). ``xf``: the labelled batch, normalised
        and augmented; ``stream``: the unlabelled pool. Returns the loss and ``(loss_x,
        loss_u, confident count, evaluated count)`` as floats for the history."""
        # unlabelled_ratio images per labelled image of *this* batch: a small labelled set (a
        # short last batch, or fewer labels than batch_size) does not get a larger share.
        drawn = stream.draw(int(self.unlabelled_ratio) * len(xf))
        n_strong = min(len(drawn), max(1, math.ceil(float(self.strong_ratio) * len(drawn))))
        # Images confident at their last visit first (ties and never-seen ones in random order):
        # they are the ones whose strong view is likely to carry loss.
        noise = torch.rand(len(drawn), generator=generator) * 1e-3
        chosen = drawn[torch.argsort(stream.confidence[drawn] + noise, descending=True)[:n_strong]]
        u01 = stream.images(chosen).to(device, non_blocking=True).float() / 255.0
        u_weak = self._augment(u01, generator) if self.augment else u01
        # Teacher pass: no gradient, eval mode (no dropout, running batch-norm statistics).
        net.eval()
        with torch.no_grad():
            logits_weak, _ = _forward(net, self._standardise(u_weak))
            conf, pseudo = torch.softmax(logits_weak.float(), dim=1).max(dim=1)
        net.train()
        stream.confidence[chosen] = conf.cpu()
        mask = (conf >= float(self.consistency_threshold)).float()
        u_strong = strong_augment(u01, generator=generator, hflip=bool(self.hflip),
                                  pad=int(self.pad) if self.augment else 0)
        n = len(xf)
        logits_all, _ = _forward(net, torch.cat([xf, self._standardise(u_strong)]))
        logits, logits_strong = logits_all[:n], logits_all[n:]
        loss_x = (F.cross_entropy(logits, yb, reduction="none") * wb).mean()
        loss_u = (F.cross_entropy(logits_strong, pseudo, reduction="none") * mask).mean()
        loss = loss_x + float(self.consistency_weight) * loss_u
        return loss, (float(loss_x.detach()), float(loss_u.detach()), float(mask.sum()), float(len(mask)))

    @torch.inference_mode()
    def _infer_batch(self, net: nn.Module, xb: torch.Tensor, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
        net.eval()
        logits, emb = _forward(net, self._normalise(xb, device))
        probs = torch.softmax(logits.float(), dim=1)
        return probs.cpu().numpy().astype(np.float32), emb.float().cpu().numpy().astype(np.float32)

    def _infer_tensor(self, net: nn.Module, x: torch.Tensor, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
        parts = [self._infer_batch(net, x[i : i + 256], device) for i in range(0, len(x), 256)]
        return np.concatenate([p for p, _ in parts]), np.concatenate([e for _, e in parts])

    def predict(self, images: Iterable[Item], *, batch_size: int | None = None) -> Iterator[Prediction]:
        """Yield one :class:`Prediction` per item, in input order, streaming.

        ``probs``: ``(C,)`` float32 softmax over ``classes``; ``embedding``: ``(D,)`` float32
        penultimate features (D = 64 for small_cnn, 512 for resnet18). Items are consumed
        lazily in chunks, so a long iterable never sits in memory. An unreadable image raises
        :class:`~pseudolabel.data.images.ImageError` naming the file. ``batch_size``: images per
        forward pass (``None``: 256).
        """
        self._check_fitted()
        batch_size = 256 if batch_size is None else batch_size
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        return self._predict_iter(images, batch_size)

    def _predict_iter(self, images: Iterable[Item], batch_size: int) -> Iterator[Prediction]:
        net, device, version = self.net_, self.device_, self.model_version_
        chunk_len = batch_size * max(1, int(self.num_workers)) * 4
        iterator = iter(images)
        n_seen = 0
        while chunk := list(islice(iterator, chunk_len)):
            for j, item in enumerate(chunk):
                if not isinstance(item, Item):
                    raise ValueError(f"images[{n_seen + j}] is a {type(item).__name__}, expected an Item")
            n_seen += len(chunk)
            loader = DataLoader(
                _ImageDataset([it.path for it in chunk], self._input_size()),
                batch_size=batch_size,
                shuffle=False,
                num_workers=int(self.num_workers),
            )
            offset = 0
            for xb in loader:
                probs, emb = self._infer_batch(net, xb, device)
                for k in range(len(xb)):
                    yield Prediction(
                        item_id=chunk[offset + k].id, model_version=version, probs=probs[k], embedding=emb[k]
                    )
                offset += len(xb)

    def predict_proba_embed(
        self, images: Iterable[Item], *, batch_size: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """All predictions at once: probabilities ``(N, C)`` and embeddings ``(N, D)``, float32,
        rows in input order."""
        preds = list(self.predict(images, batch_size=batch_size))
        if not preds:
            return (
                np.zeros((0, len(self.classes_)), dtype=np.float32),
                np.zeros((0, self.embedding_dim_), dtype=np.float32),
            )
        return np.stack([p.probs for p in preds]), np.stack([p.embedding for p in preds])  # type: ignore[misc]

    def mc_dropout_probs(self, items: Sequence[Item], *, T: int = 10, batch_size: int | None = 64,
                         seed: int | None = 0) -> np.ndarray:
        """The ``mc_dropout`` capability: ``T`` forward passes with dropout on, ``(T, N, C)``
        float32 softmax probabilities (columns in ``classes_`` order, rows in ``items`` order).

        Images are decoded as :meth:`predict` decodes them. Batch-norm layers stay in eval
        mode; only dropout layers are switched to training mode, and every module's mode is
        restored afterwards, so later ``predict`` calls are unaffected. ``seed``: torch seed of
        the dropout masks (the global RNG state is restored after); ``None`` leaves the RNG
        alone. Raises ``ValueError`` when not fitted, when the network has no dropout layer
        with p > 0 (every pass would be identical, e.g. ``resnet18``), or for bad ``T`` /
        ``batch_size`` / items.
        """
        self._check_fitted()
        batch_size = 64 if batch_size is None else batch_size
        for name, value in (("T", T), ("batch_size", batch_size)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be an int >= 1; got {value!r}")
        net = self.net_
        dropouts = [m for m in net.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]
        if not dropouts or all(float(getattr(m, "p", 0.0)) == 0.0 for m in dropouts):
            raise ValueError(
                f"{type(net).__name__} has no dropout layer with p > 0, so all T passes would be "
                "identical; use arch='small_cnn' (dropout before the head) for BALD"
            )
        items = list(items)
        for i, it in enumerate(items):
            if not isinstance(it, Item):
                raise ValueError(f"items[{i}] is a {type(it).__name__}, expected an Item")
        out = np.empty((int(T), len(items), len(self.classes_)), dtype=np.float32)
        if not items:
            return out
        device = self.device_
        modes = {m: m.training for m in net.modules()}
        fork_devices = [device] if device.type == "cuda" else []
        try:
            net.eval()
            for m in dropouts:
                m.train()
            with torch.random.fork_rng(devices=fork_devices, enabled=seed is not None), torch.no_grad():
                if seed is not None:
                    torch.manual_seed(int(seed))
                for lo in range(0, len(items), int(batch_size)):
                    batch = items[lo : lo + int(batch_size)]
                    x = self._normalise(self._decode_all([Path(it.path) for it in batch]), device)
                    for t in range(int(T)):
                        logits, _ = _forward(net, x)
                        out[t, lo : lo + x.shape[0]] = torch.softmax(logits.float(), dim=1).cpu().numpy()
        finally:
            for module, mode in modes.items():
                module.training = mode
        return out

    def save(self, path: Path | str) -> None:
        """Write ``{"format", "config", "state_dict"}`` to ``path`` atomically.

        Everything is plain Python types or tensors, so ``torch.load(path, weights_only=True)``
        reads it. ``config`` holds the constructor parameters plus ``model_version``,
        ``embedding_dim`` and the training ``history``.
        """
        self._check_fitted()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        config = self._config()
        config.update(
            model_version=str(self.model_version_),
            embedding_dim=int(self.embedding_dim_),
            history=[dict(h) for h in self.history_],
            n_unlabelled=int(getattr(self, "n_unlabelled_", 0)),
            pseudo_per_epoch=int(getattr(self, "pseudo_per_epoch_", 0)),
            torch_version=str(torch.__version__),
            input_size=self._input_size(),
            weights_info=getattr(self, "weights_info_", None),
        )
        ckpt = {
            "format": CHECKPOINT_FORMAT,
            "config": config,
            "state_dict": {k: v.detach().to("cpu").contiguous() for k, v in self.net_.state_dict().items()},
        }
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            torch.save(ckpt, tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    @classmethod
    def load(cls, path: Path | str, *, device: str = "auto") -> Self:
        """Rebuild a model written by :meth:`save` (read with ``weights_only=True``) on ``device``."""
        path = Path(path)
        obj = _read_state_file(path)
        if not isinstance(obj, Mapping) or obj.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(
                f"{path}: not a {cls.__name__} checkpoint (expected format {CHECKPOINT_FORMAT!r})"
            )
        config = dict(obj["config"])
        params = {k: config[k] for k in cls._param_names() if k in config}
        params["device"] = device
        model = cls(**params)
        model._check_params()
        model.input_size_ = int(config.get("input_size", model.image_size))
        net = model._build_net(len(model.classes))
        try:
            net.load_state_dict(obj["state_dict"], strict=True)
        except RuntimeError as e:
            raise ValueError(f"{path}: weights do not fit the stored config ({e})") from e
        dev = resolve_device(device)
        # torch's Module.to overloads omit memory_format, which Module.to accepts at run time
        net.to(device=dev, memory_format=MEMORY_FORMAT).eval()  # type: ignore[call-overload]
        model.net_ = net
        model.classes_ = list(model.classes)
        model.device_ = dev
        model.embedding_dim_ = int(config["embedding_dim"])
        model.history_ = list(config.get("history", []))
        model.weights_skipped_ = []
        model.weights_info_ = config.get("weights_info")
        model.n_unlabelled_ = int(config.get("n_unlabelled", 0))
        model.pseudo_per_epoch_ = int(config.get("pseudo_per_epoch", 0))
        model.model_version_ = str(config["model_version"])
        return model
