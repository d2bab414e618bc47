"""Ultralytics YOLO adapter (detect / segment / classify) behind the Model protocol.

This is the only module that imports ``ultralytics``, and it does so lazily inside
:func:`_import_ultralytics`, which first switches off every network call Ultralytics makes
(a bare ``import ultralytics`` looks up public DNS names and checks PyPI):

- ``YOLO_OFFLINE=1``: no DNS probe at import, no PyPI update check, no analytics;
- ``YOLO_CONFIG_DIR=<config_dir>``: settings are written there, never to ``~/.config``;
- ``Arial.ttf`` / ``Arial.Unicode.ttf``: copied from matplotlib's DejaVuSans.ttf into the
  Ultralytics config folder, because Ultralytics downloads the font even with ``plots=False``;
- settings ``sync=False``; training always runs with ``amp=False`` (the AMP check on CUDA
  downloads a model) and ``plots=False``.

Ultralytics reads ``YOLO_CONFIG_DIR`` once, when it is first imported: the first model to
import it fixes the config folder for the whole process (later calls reuse it).

Networks are built from YAML (``yolo11n.yaml``, ``yolo11n-seg.yaml``, ``yolo11n-cls.yaml``);
initial weights come only from a local file (``weights``). ``YOLO("yolo11n.pt")`` would try to
download, so a weights path that does not exist is an error, never a download.

Predictions (:meth:`YoloModel.predict`), for an image of ``W x H`` pixels:

- ``boxes``: pixel ``xyxy`` boxes (clipped to the image) with class name and confidence;
  ``polygon`` (pixel points) for ``segment``;
- ``box_probs``: ``(B, C)`` float32, the **raw per-class sigmoid scores** of each kept box,
  gathered from the head output at the anchors NMS kept. Ultralytics' class scores are
  independent sigmoids: a row does not sum to 1; its max is the box confidence and its argmax
  the box class. :func:`pseudolabel.strategies.detection.normalise_box_probs` turns rows into
  distributions (sum 1) for entropy / margin;
- ``embedding``: ``(D,)`` float32, the last backbone feature map averaged over space (from the
  same forward pass);
- ``probs``: ``(C,)`` softmax vector (``classify`` only).

Checkpoints written by :meth:`YoloModel.save` hold the state_dict, the network YAML and our
parameters: plain tensors and containers that ``torch.load(weights_only=True)`` reads.
Ultralytics' own ``.pt`` files are pickles that can run code when loaded: pass them as
``weights`` only when they come from a trusted source.

Why this module is over 400 lines: the only module importing ultralytics (the offline switches
live in one place), one adapter for detect, segment and classify, which share training,
prediction and checkpoint code.
"""

from __future__ import annotations

import logging
import os
import pickle
import shutil
import sys
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from itertools import islice
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from typing_extensions import Self

from pseudolabel.data.geometry import box_polygon, clip_xyxy
from pseudolabel.data.images import load_rgb
from pseudolabel.models.base import AdapterBase, resolve_device, state_hash
from pseudolabel.runtime import OnnxForward, resolve_runtime
from pseudolabel.types import Annotation, Box, Item, Prediction, TaskType

CHECKPOINT_FORMAT = "pseudolabel.ultralytics_yolo/1"
TASKS: tuple[TaskType, ...] = ("detect", "segment", "classify")
_DEFAULT_YAML = {"detect": "yolo11n.yaml", "segment": "yolo11n-seg.yaml", "classify": "yolo11n-cls.yaml"}
_FONTS = ("Arial.ttf", "Arial.Unicode.ttf")


# --------------------------------------------------------------------------------------
# importing Ultralytics offline


def _import_ultralytics(config_dir: Path) -> Any:
    """Import ``ultralytics`` with its network calls switched off; returns the module.

    ``config_dir``: where Ultralytics keeps its settings (``<config_dir>/Ultralytics``). Only
    the first call in a process decides it (Ultralytics reads it at import); the fonts are
    put into whatever folder Ultralytics actually uses, every call.
    """
    config_dir = Path(config_dir)
    os.environ["YOLO_OFFLINE"] = "1"
    if "ultralytics" not in sys.modules:
        os.environ["YOLO_CONFIG_DIR"] = str(config_dir)
    (config_dir / "Ultralytics").mkdir(parents=True, exist_ok=True)

    import ultralytics
    from PIL import Image
    from ultralytics.utils import SETTINGS, USER_CONFIG_DIR, patches

    # Ultralytics replaces PIL.Image.open process-wide with a wrapper that, on an unreadable
    # file, tries to install pi-heif (a pip call) and raises ModuleNotFoundError instead of
    # PIL's UnidentifiedImageError — which would break ingest's quarantine of broken files.
    original_open = getattr(patches, "_image_open", None)
    if original_open is not None and Image.open is not original_open:
        Image.open = original_open

    font_src = _dejavu_font()
    for target_dir in {Path(USER_CONFIG_DIR), config_dir / "Ultralytics"}:
        target_dir.mkdir(parents=True, exist_ok=True)
        for name in _FONTS:
            if not (target_dir / name).exists():
                shutil.copyfile(font_src, target_dir / name)
    # No analytics sync and no experiment-tracker callbacks: Ray Tune (imported when ray is
    # installed), Comet, ClearML, MLflow, W&B, DVC may contact servers or start services.
    off = {k: False for k in ("sync", "raytune", "clearml", "comet", "dvc", "mlflow", "wandb", "tensorboard")
           if SETTINGS.get(k, False)}
    if off:
        SETTINGS.update(off)
    return ultralytics


def _dejavu_font() -> Path:
    import matplotlib

    path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: matplotlib's DejaVuSans.ttf is missing; Ultralytics needs a local font")
    return path


# --------------------------------------------------------------------------------------
# helpers



def _plain(obj: Any) -> Any:
    """Containers of str/int/float/bool/None only (what ``weights_only=True`` accepts)."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    return str(obj)


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.symlink(Path(src).resolve(), dst)
    except OSError:
        shutil.copyfile(src, dst)


# --------------------------------------------------------------------------------------
# the adapter


class YoloModel(AdapterBase):
    """Ultralytics YOLO behind the :class:`~pseudolabel.models.base.Model` protocol.

    Parameters (stored as given; checked by :meth:`fit`):

    - ``classes``: class names; ``box_probs`` / ``probs`` columns follow this order;
    - ``task``: ``"detect"``, ``"segment"`` or ``"classify"``;
    - ``model_yaml``: network definition; default ``yolo11n.yaml`` / ``-seg`` / ``-cls`` by task;
    - ``weights``: optional local file to start from: a checkpoint from :meth:`save`, or an
      Ultralytics ``.pt`` (a pickle: trusted files only). Never downloaded;
    - ``image_size``: training / inference side in pixels (multiple of 32);
    - ``epochs``, ``batch_size``: training schedule;
    - ``device``: ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda"``, ``"cuda:N"``;
    - ``seed``: Ultralytics' training seed (deterministic mode on);
    - ``conf`` / ``iou`` / ``max_det``: NMS confidence threshold, IoU threshold, boxes per image;
    - ``workdir``: folder for Ultralytics runs (``runs/``) and the temporary training dataset;
      ``None``: a fresh temporary folder;
    - ``config_dir``: Ultralytics settings folder; ``None``: ``<workdir>/ultralytics``;
    - ``train_args``: extra keyword arguments for ``YOLO.train`` (e.g. ``{"mosaic": 0.0}``);
    - ``runtime``: where detect / segment inference runs: ``"auto"`` (ONNX Runtime on a CPU
      when installed, else PyTorch), ``"torch"`` or ``"onnx"`` (CPU only); see
      :mod:`pseudolabel.runtime`. Training always uses PyTorch.

    Learned attributes (after :meth:`fit` or :meth:`load`): ``net_`` (the torch module),
    ``classes_``, ``model_version_``, ``device_``, ``yaml_`` (the network definition).
    """

    def __init__(
        self,
        classes: Sequence[str],
        *,
        task: TaskType = "detect",
        model_yaml: str | None = None,
        weights: Path | str | None = None,
        image_size: int = 640,
        epochs: int = 50,
        batch_size: int = 16,
        device: str = "auto",
        seed: int = 0,
        conf: float = 0.25,
        iou: float = 0.7,
        max_det: int = 300,
        workdir: Path | str | None = None,
        config_dir: Path | str | None = None,
        train_args: Mapping[str, Any] | None = None,
        runtime: str = "auto",
        progress: bool = True,
    ) -> None:
        self.classes = list(classes) if not isinstance(classes, str) else classes
        self.task = task
        self.model_yaml = model_yaml
        self.weights = weights
        self.image_size = image_size
        self.epochs = epochs
        self.batch_size = batch_size
        self.device = device
        self.seed = seed
        self.conf = conf
        self.iou = iou
        self.max_det = max_det
        self.workdir = workdir
        self.config_dir = config_dir
        self.train_args = train_args
        self.runtime = runtime
        self.progress = progress

    # ---- parameters -------------------------------------------------------------------

    capabilities: frozenset[str] = frozenset({"hflip_tta"})

    def _check_params(self) -> None:
        self._check_classes(at_least=1)
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; choose one of {list(TASKS)!r}")
        if self.task == "classify" and len(self.classes) < 2:
            raise ValueError(f"classify needs at least 2 classes, got {list(self.classes)!r}")
        self._check_ints(image_size=32, epochs=1, batch_size=1, seed=0, max_det=1)
        if self.image_size % 32:
            raise ValueError(f"image_size must be a multiple of 32 (the network stride), got {self.image_size!r}")
        for name in ("conf", "iou"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
                raise ValueError(f"{name} must be a number in [0, 1], got {v!r}")
        if self.weights is not None and not Path(self.weights).is_file():
            raise ValueError(
                f"weights {str(self.weights)!r} does not exist; give a local .pt file (a checkpoint from "
                "YoloModel.save or a trusted Ultralytics .pt) or weights=None to train from scratch. "
                "Model names such as 'yolo11n.pt' are never downloaded"
            )
        resolve_runtime(self.runtime, resolve_device(self.device))

    def _yaml_name(self) -> str:
        return self.model_yaml or _DEFAULT_YAML[self.task]

    def _workdir(self) -> Path:
        if self.workdir is None:
            if not hasattr(self, "_tmp_workdir"):
                self._tmp_workdir = Path(tempfile.mkdtemp(prefix="pseudolabel-yolo-"))
            return self._tmp_workdir
        return Path(self.workdir)

    def _ultralytics(self) -> Any:
        config_dir = Path(self.config_dir) if self.config_dir is not None else self._workdir() / "ultralytics"
        return _import_ultralytics(config_dir)

    def _config(self) -> dict[str, Any]:
        params = self.get_params()
        params["classes"] = [str(c) for c in self.classes]
        for key in ("weights", "workdir", "config_dir"):
            params[key] = None if params[key] is None else str(params[key])
        params["train_args"] = _plain(dict(self.train_args or {}))
        return params

    # ---- learned state ----------------------------------------------------------------


    def _set_net(self, net: torch.nn.Module, yaml: Mapping[str, Any]) -> None:
        self.device_ = resolve_device(self.device)
        self.net_ = net.float().eval().to(self.device_)
        self.yaml_ = _plain(dict(yaml))
        self.classes_ = [str(c) for c in self.classes]
        self.model_version_ = state_hash(net.state_dict())

    # ---- training ---------------------------------------------------------------------

    def _write_dataset(
        self, root: Path, train: Sequence[Annotation], val: Sequence[Annotation] | None
    ) -> Path:
        """Write a YOLO-format dataset under ``root``; returns the path for ``data=``."""
        index = {c: i for i, c in enumerate(self.classes)}
        splits = {"train": train, "val": val if val else train}
        if self.task == "classify":
            for split, anns in splits.items():
                for c in self.classes:
                    (root / split / c).mkdir(parents=True, exist_ok=True)
                for n, ann in enumerate(anns):
                    if ann.label not in index:
                        raise ValueError(
                            f"annotation {n} of {split} (item {ann.item.id}, {ann.item.path}) has label "
                            f"{ann.label!r}; expected one of {self.classes!r}"
                        )
                    dst = root / split / ann.label / f"{ann.item.id}{ann.item.path.suffix.lower()}"
                    if not dst.exists():
                        _link_or_copy(ann.item.path, dst)
            return root
        for split, anns in splits.items():
            (root / split / "images").mkdir(parents=True, exist_ok=True)
            (root / split / "labels").mkdir(parents=True, exist_ok=True)
            for n, ann in enumerate(anns):
                item = ann.item
                if item.width <= 0 or item.height <= 0:
                    raise ValueError(f"item {item.id} ({item.path}) has size {item.width}x{item.height}; expected > 0")
                lines = []
                for b, box in enumerate(ann.boxes):
                    if box.label not in index:
                        raise ValueError(
                            f"box {b} of annotation {n} of {split} (item {item.id}, {item.path}) has label "
                            f"{box.label!r}; expected one of {self.classes!r}"
                        )
                    if not (box.x2 > box.x1 and box.y2 > box.y1):
                        raise ValueError(
                            f"box {b} of annotation {n} of {split} ({item.path}) is not xyxy with x1<x2, y1<y2: "
                            f"{(box.x1, box.y1, box.x2, box.y2)!r}"
                        )
                    cls = index[box.label]
                    if self.task == "segment":
                        pts = [
                            f"{min(max(x / item.width, 0.0), 1.0):.6f} {min(max(y / item.height, 0.0), 1.0):.6f}"
                            for x, y in box_polygon(box)
                        ]
                        lines.append(f"{cls} " + " ".join(pts))
                    else:
                        x1, y1, x2, y2 = clip_xyxy(box.x1, box.y1, box.x2, box.y2, width=item.width,
                                                   height=item.height)
                        cx, cy = (x1 + x2) / 2 / item.width, (y1 + y2) / 2 / item.height
                        w, h = (x2 - x1) / item.width, (y2 - y1) / item.height
                        lines.append(f"{cls} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}")
                stem = f"{n:06d}_{item.id[:16]}"
                _link_or_copy(item.path, root / split / "images" / f"{stem}{item.path.suffix.lower()}")
                (root / split / "labels" / f"{stem}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))
        names = "\n".join(f"  {i}: {c!r}" for i, c in enumerate(self.classes))
        data = root / "data.yaml"
        data.write_text(f"path: {str(root)!r}\ntrain: train/images\nval: val/images\nnames:\n{names}\n")
        return data

    def _initial_yolo(self, ul: Any) -> Any:
        """A ``YOLO`` object: from YAML, from one of our checkpoints, or a trusted Ultralytics .pt."""
        if self.weights is None:
            return ul.YOLO(self._yaml_name(), task=self.task)
        path = Path(self.weights)
        ckpt = _read_checkpoint(path, strict=False)
        if ckpt is None:  # not ours: an Ultralytics pickle (trusted by the caller)
            return ul.YOLO(str(path), task=self.task)
        yolo = ul.YOLO(self._yaml_name(), task=self.task)
        net = _build_net(ckpt["task"], ckpt["yaml"], len(ckpt["classes"]))
        net.load_state_dict(ckpt["state_dict"])
        yolo.model = net
        # train() transfers weights from ``self.model`` (shape-matched layers only) when a
        # checkpoint is attached; this marks our loaded module as that checkpoint.
        yolo.ckpt = {"pseudolabel_weights": str(path)}
        return yolo

    def fit(self, train: Sequence[Annotation], *, val: Sequence[Annotation] | None = None) -> Self:
        """Train on ``train`` (boxes / polygons / class labels); returns ``self``.

        Writes a temporary YOLO-format dataset (images symlinked) under ``workdir`` and runs
        ``YOLO.train`` there with plots, AMP and the network switched off. Without ``val`` the
        final validation runs on the training set (Ultralytics always validates the last epoch).
        """
        self._check_params()
        if not train:
            raise ValueError("train is empty; need at least one annotation to fit")
        ul = self._ultralytics()
        device = resolve_device(self.device)
        workdir = self._workdir()
        workdir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="dataset-", dir=workdir) as tmp:
            data = self._write_dataset(Path(tmp), train, val)
            yolo = self._initial_yolo(ul)
            args: dict[str, Any] = dict(
                data=str(data),
                epochs=self.epochs,
                imgsz=self.image_size,
                batch=self.batch_size,
                device="cpu" if device.type == "cpu" else str(device.index or 0),
                seed=self.seed,
                deterministic=True,
                workers=0,
                project=str((workdir / "runs").resolve()),
                name="train",
                exist_ok=True,
                plots=False,
                val=False,
                verbose=False,
                amp=False,
            )
            args.update(dict(self.train_args or {}))
            # progress False (benchmarks, the ML backend): Ultralytics' per-epoch bars and its
            # argument dump are silenced (its progress bars follow its logger's level); warnings stay.
            logger = logging.getLogger("ultralytics")
            level = logger.level
            if not self.progress:
                logger.setLevel(logging.WARNING)
            try:
                yolo.train(**args)
            finally:
                logger.setLevel(level)
        self._set_net(yolo.model, yolo.model.yaml)
        return self

    # ---- inference --------------------------------------------------------------------

    def predict(
        self,
        images: Iterable[Item],
        *,
        batch_size: int | None = None,
        hflip: bool = False,
        workers: int | None = None,
        gpu_decode: bool | None = None,
    ) -> Iterator[Prediction]:
        """Yield one :class:`Prediction` per item, in input order (see the module docstring).

        Detect / segment run through :mod:`pseudolabel.engine`: files decoded in ``workers``
        processes (``None``: ``min(4, cpus - 1)``; 0: in this process), or plain JPEGs on the
        GPU (``gpu_decode``; ``None``: on CUDA), letterboxed on the device, one forward pass
        per batch (Conv+BN fused; on CUDA channels-last PyTorch with fp16 autocast, on a CPU
        ONNX Runtime by default: see ``runtime``), NMS on the device.
        Items are consumed lazily: memory stays flat however many are streamed.

        ``batch_size``: images per forward pass; ``None``: fitted to free CUDA memory, or on a
        CPU to the image size, 2 at 640 px (:func:`pseudolabel.engine.default_batch_size`);
        classification: 32.

        ``hflip=True`` predicts on horizontally mirrored images and reports boxes in the
        **mirrored** image's pixel coordinates (test-time augmentation for
        :func:`pseudolabel.strategies.detection.localisation_stability`).
        """
        self._check_fitted()
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
            raise ValueError(f"batch_size must be an integer >= 1 or None (automatic), got {batch_size!r}")
        self._ultralytics()
        if self.task == "classify":
            it = iter(images)
            while batch := list(islice(it, batch_size or 32)):
                arrays = []
                for item in batch:
                    arr = np.asarray(load_rgb(item.path), dtype=np.uint8)
                    arrays.append(np.ascontiguousarray(arr[:, ::-1]) if hflip else arr)
                yield from self._predict_classify(batch, arrays)
            return
        from pseudolabel.engine import default_batch_size, stream_images

        if batch_size is None:
            batch_size = default_batch_size(self.device_, int(self.image_size))
        for batch_items, batch_images in stream_images(
            images, batch_size=batch_size, device=self.device_, workers=workers, gpu_decode=gpu_decode, hflip=hflip
        ):
            yield from self._predict_batch(batch_items, batch_images)

    def _embedding_layer(self, net: torch.nn.Module | None = None) -> torch.nn.Module:
        net = self.net_ if net is None else net
        layers = net.model
        if not isinstance(layers, torch.nn.Sequential):
            raise TypeError(f"{type(net).__name__}.model is a {type(layers).__name__}; expected the "
                            "nn.Sequential of layers an Ultralytics model holds")
        n_backbone = len(self.yaml_.get("backbone", [])) or len(layers) - 1
        return layers[n_backbone - 1]

    def _forward_embed(
        self, x: torch.Tensor, net: torch.nn.Module | None = None, *, half: bool = False
    ) -> tuple[torch.Tensor, ...]:
        """One PyTorch forward pass of ``net`` (default ``net_``): :class:`_HeadAndEmbedding`'s
        outputs. ``half``: fp16 autocast (CUDA only)."""
        net = self.net_ if net is None else net
        with torch.inference_mode(), torch.autocast(
            x.device.type, dtype=torch.float16, enabled=half and x.device.type == "cuda"
        ):
            return _HeadAndEmbedding(net, self._embedding_layer(net))(x)

    def _inference_net(self) -> torch.nn.Module:
        """A copy of ``net_`` for inference only: Conv+BN fused (as Ultralytics' predictor
        does) and channels-last (faster convolutions on CPU and GPU). Rebuilt when ``net_`` is
        replaced (fit / load); ``net_`` itself is untouched, so fit / save are unaffected."""
        cached = getattr(self, "_inference_cache", None)
        if cached is not None and cached[0] is self.net_:
            return cached[1]
        import copy

        # an Ultralytics model: fuse() is its own method, not nn.Module's
        net: Any = copy.deepcopy(self.net_).eval()
        net = net.fuse(verbose=False) if hasattr(net, "fuse") else net
        net = net.to(self.device_, memory_format=torch.channels_last).eval()
        self._inference_cache = (self.net_, net)
        return net

    def _onnx_forward(self) -> OnnxForward:
        """The fused inference network exported to ONNX Runtime (rebuilt when ``net_`` is
        replaced, or when the torch thread count changed since the session was made)."""
        cached = getattr(self, "_onnx_cache", None)
        if cached is not None and cached[0] is self.net_ and cached[1].threads == torch.get_num_threads():
            return cached[1]
        net = self._inference_net()
        names = ["head", "protos", "embedding"] if self.task == "segment" else ["head", "embedding"]
        size = int(self.image_size)
        fwd = OnnxForward(_HeadAndEmbedding(net, self._embedding_layer(net)), torch.zeros(1, 3, size, size), names)
        self._onnx_cache = (self.net_, fwd)
        return fwd

    def _engine_forward(self, x: torch.Tensor, *, onnx: bool) -> tuple[torch.Tensor, ...]:
        """The detect / segment forward pass on a letterboxed batch: ONNX Runtime, or the fused
        channels-last network on PyTorch (fp16 autocast on CUDA)."""
        if onnx:
            return tuple(self._onnx_forward()(x))
        return self._forward_embed(x, self._inference_net(), half=True)

    def _predict_batch(self, items: Sequence[Item], images: Sequence[torch.Tensor]) -> list[Prediction]:
        """Predictions for ``items`` from their decoded images (``(3, H, W)`` uint8 RGB tensors on
        ``device_``, already mirrored for hflip): letterbox, forward, NMS, all on the device;
        one device-to-host copy of the batch's boxes and class vectors."""
        from ultralytics.utils import nms, ops

        from pseudolabel.engine import letterbox

        size = int(self.image_size)
        onnx = resolve_runtime(self.runtime, self.device_) == "onnx"
        x, infos = letterbox(images, size, channels_last=not onnx)
        # detect: (N, 4 + C, A) head, (N, D) embedding; segment: head (N, 4 + C + 32, A),
        # protos (N, 32, S/4, S/4), embedding.
        *outs, emb_t = self._engine_forward(x, onnx=onnx)
        head, protos = (outs[0], outs[1]) if self.task == "segment" else (outs[0], None)
        head = head.float()
        nc = len(self.classes_)
        kept, keep_idx = nms.non_max_suppression(
            head, float(self.conf), float(self.iou), max_det=int(self.max_det), nc=nc, return_idxs=True
        )
        # (B_n, 4 + 1 + 1 + C): pixel xyxy in the original image, confidence, class, class vector.
        rows = []
        for n in range(len(items)):
            det, idx = kept[n], keep_idx[n]
            # scale_boxes returns the array type it is given (its annotation says Tensor | ndarray)
            xyxy = cast(torch.Tensor, ops.scale_boxes((int(x.shape[2]), int(x.shape[3])), det[:, :4].clone(),
                                                      infos[n].shape))
            rows.append(torch.cat([xyxy, det[:, 4:6], head[n, 4 : 4 + nc, idx.long().reshape(-1)].T], dim=1))
        counts = [len(r) for r in rows]
        table = torch.cat(rows).cpu().numpy() if rows else np.zeros((0, 6 + nc), np.float32)
        emb = emb_t.cpu().numpy().astype(np.float32)
        preds = []
        start = 0
        for n, item in enumerate(items):
            t = table[start : start + counts[n]]
            start += counts[n]
            polygons: list[np.ndarray | None] = [None] * len(t)
            if protos is not None and len(t):
                det = kept[n]
                masks = ops.process_mask(protos[n].float(), det[:, 6:], det[:, :4], x.shape[2:], upsample=True)
                segs = ops.masks2segments(masks)
                polygons = [
                    ops.scale_coords(x.shape[2:], np.asarray(s, dtype=np.float32), infos[n].shape) if len(s) else None
                    for s in segs
                ]
            box_probs = np.ascontiguousarray(t[:, 6:], dtype=np.float32).reshape(len(t), nc)  # (B, C)
            cls = t[:, 5].astype(int)
            boxes = []
            for b in range(len(t)):
                poly = polygons[b]
                boxes.append(
                    Box(
                        float(t[b, 0]),
                        float(t[b, 1]),
                        float(t[b, 2]),
                        float(t[b, 3]),
                        self.classes_[int(cls[b])],
                        score=float(t[b, 4]),
                        polygon=None
                        if poly is None or len(poly) < 3
                        else tuple((float(px), float(py)) for px, py in poly),
                    )
                )
            preds.append(
                Prediction(
                    item_id=item.id,
                    model_version=self.model_version,
                    embedding=emb[n],
                    boxes=tuple(boxes),
                    box_probs=box_probs,
                )
            )
        return preds

    def _predict_classify(self, items: Sequence[Item], arrays: Sequence[np.ndarray]) -> list[Prediction]:
        from PIL import Image
        from ultralytics.data.augment import classify_transforms

        tf = classify_transforms(size=int(self.image_size))
        x = torch.stack([tf(Image.fromarray(a)) for a in arrays]).to(self.device_)
        probs_t, emb_t = self._forward_embed(x)
        emb = emb_t.cpu().numpy().astype(np.float32)
        probs = probs_t.float().cpu().numpy()
        return [
            Prediction(item_id=item.id, model_version=self.model_version, probs=probs[n].astype(np.float32), embedding=emb[n])
            for n, item in enumerate(items)
        ]

    # ---- persistence ------------------------------------------------------------------

    def save(self, path: Path) -> None:
        """Write state_dict + network YAML + parameters (``torch.load(weights_only=True)``-safe)."""
        self._check_fitted()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().clone() for k, v in self.net_.state_dict().items()}
        ckpt = {
            "format": CHECKPOINT_FORMAT,
            "task": self.task,
            "config": self._config(),
            "classes": list(self.classes_),
            "yaml": self.yaml_,
            "state_dict": state,
            "model_version": self.model_version_,
        }
        tmp = path.with_name(f".{path.name}.tmp")
        torch.save(ckpt, tmp)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path, **overrides: Any) -> Self:
        """Rebuild a model written by :meth:`save` (``overrides`` replace saved parameters,
        e.g. ``device="cpu"`` or ``workdir=...``)."""
        ckpt = _read_checkpoint(Path(path), strict=True)
        if ckpt is None:  # unreachable: strict=True raises instead
            raise ValueError(f"{path}: not a YoloModel checkpoint")
        config = {**ckpt["config"], **overrides}
        model = cls(**config)
        model._ultralytics()
        net = _build_net(ckpt["task"], ckpt["yaml"], len(ckpt["classes"]))
        net.load_state_dict(ckpt["state_dict"])
        model._set_net(net, ckpt["yaml"])
        model.model_version_ = str(ckpt["model_version"])
        return model

    @classmethod
    def from_yaml(cls, classes: Sequence[str], **params: Any) -> Self:
        """An **untrained** network built from ``model_yaml`` (default by ``task``), ready to
        predict: for benchmarks and tests of the inference path. ``params`` are the
        constructor's; ``weights`` must be None (use :meth:`load` for trained weights)."""
        model = cls(classes, **params)
        if model.weights is not None:
            raise ValueError(f"from_yaml builds an untrained network; got weights={model.weights!r} (use load())")
        model._check_params()
        ul = model._ultralytics()
        yolo = ul.YOLO(model._yaml_name(), task=model.task)
        net = _build_net(model.task, yolo.model.yaml, len(model.classes))
        model._set_net(net, yolo.model.yaml)
        return model


class _HeadAndEmbedding(torch.nn.Module):
    """``net`` returning, from one forward pass, a flat tuple of its head output's tensors
    (detect: the head; segment: head and mask protos; classify: the probabilities) followed by
    the ``(N, D)`` float32 image embedding: ``layer``'s output averaged over space, taken with
    a forward hook. The same module is what :class:`~pseudolabel.runtime.OnnxForward`
    exports, so both runtimes compute the same outputs."""

    def __init__(self, net: torch.nn.Module, layer: torch.nn.Module) -> None:
        super().__init__()
        self.net = net
        self.layer = layer

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        feats: list[torch.Tensor] = []
        hook = self.layer.register_forward_hook(lambda m, i, o: feats.append(o))
        try:
            out = self.net(x)
        finally:
            hook.remove()
        head = out[0] if isinstance(out, (tuple, list)) else out
        emb = feats[0].float().mean(dim=(2, 3))
        return (*head, emb) if isinstance(head, (tuple, list)) else (head, emb)


def _build_net(task: str, yaml: Mapping[str, Any], nc: int) -> torch.nn.Module:
    from ultralytics.nn.tasks import ClassificationModel, DetectionModel, SegmentationModel

    cls = {"detect": DetectionModel, "segment": SegmentationModel, "classify": ClassificationModel}[task]
    net = cls(cfg=dict(yaml), nc=nc, verbose=False)
    return net


def _read_checkpoint(path: Path, *, strict: bool) -> dict[str, Any] | None:
    """Our checkpoint at ``path``; ``None`` when it is not ours and ``strict`` is False."""
    if not path.is_file():
        raise ValueError(f"{path} does not exist (expected a checkpoint written by YoloModel.save)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as e:
        if not strict:
            return None
        raise ValueError(
            f"{path}: cannot be read with torch.load(weights_only=True) ({e}); expected a checkpoint "
            "written by YoloModel.save (Ultralytics .pt pickles go in weights=, trusted files only)"
        ) from e
    if not isinstance(obj, Mapping) or obj.get("format") != CHECKPOINT_FORMAT:
        if not strict:
            return None
        raise ValueError(f"{path}: not a YoloModel checkpoint (expected format {CHECKPOINT_FORMAT!r})")
    return dict(obj)
