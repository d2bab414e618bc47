"""Typed configuration: one pydantic schema, loaded from YAML, overridden by env and CLI.

Precedence (later wins): defaults < YAML file < environment (``PSEUDOLABEL__SECTION__KEY``)
< CLI ``--set section.key=value`` overrides.

Unknown keys anywhere are errors naming the key and the accepted keys. Secrets (the Label
Studio token) never live in the file: the file names the environment variable to read.

Why this module is over 400 lines: one pydantic schema: each section is short, but the
cross-section checks (task vs. keys, formats vs. options) need every section in one place.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pseudolabel.types import CLASSIFY_FORMATS, OBJECT_FORMATS
from pseudolabel.utils import read_text_utf8

ENV_PREFIX = "PSEUDOLABEL__"


class ConfigError(ValueError):
    """A config that cannot be used; the message names the key, the file and what is accepted."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# Which LabelSource options each format uses (the others must stay unset).
_FORMAT_OPTIONS: dict[str, tuple[str, ...]] = {
    "imagefolder": (),
    "csv": ("image_root",),
    "yolo": ("labels", "names", "train_difficult"),
    "coco": ("image_root", "multipart", "train_difficult"),
    "voc": ("image_root", "split", "train_difficult"),
    "labelme": ("image_root", "multipart", "train_difficult"),
    "cvat": ("image_root", "train_difficult"),
    "labelstudio": ("image_root",),
}


class LabelSource(_Section):
    """A labelled set (see the README section "Label formats" for each tool's layout).

    Classification: an ImageFolder tree (``root/<class>/<image>``), a CSV (``path,label``,
    UTF-8), Labelme JSON files (image ``flags``), a CVAT for images XML (``<tag>``) or a Label
    Studio JSON export (``choices``). Detection / segmentation: ``yolo`` (``path`` = images
    folder, ``labels`` = the txt folder, default: ``path`` with its last ``images`` component
    replaced by ``labels``; ``names`` = data.yaml / classes.txt naming the ids, default: found
    beside the labels), ``coco`` (``path`` = the instances JSON, ``image_root`` = where
    ``file_name`` resolves, default the JSON's folder, or ``images/<split>`` / ``<split>`` beside
    ``annotations/`` for ``annotations/instances_<split>.json``), ``voc`` (``path`` = the XML folder,
    ``image_root`` = the images folder, default ``<path>/../JPEGImages``, ``split`` =
    ``ImageSets/Main/<split>.txt``), ``labelme`` (``path`` = the folder of JSON files),
    ``cvat`` (``path`` = annotations.xml, images in ``images/`` beside it) or ``labelstudio``
    (``path`` = the exported JSON, ``image_root`` = Label Studio's local-files document root).
    """

    format: Literal["imagefolder", "csv", "yolo", "coco", "voc", "labelme", "cvat", "labelstudio"] = "imagefolder"
    path: Path
    image_root: Path | None = Field(
        default=None, description="csv/coco/voc/labelme/cvat/labelstudio: folder that image paths resolve against"
    )
    labels: Path | None = Field(default=None, description="yolo only: folder of the .txt label files")
    names: Path | None = Field(default=None, description="yolo only: data.yaml or classes.txt naming the class ids "
                               "(ids are then mapped by name); default: the one beside the labels, if any")
    split: str | None = Field(default=None, description="voc only: read ImageSets/Main/<split>.txt (needed when "
                              "the folder has several split lists)")
    multipart: Literal["quarantine", "largest"] = Field(
        default="quarantine", description="coco/labelme: an object drawn as several polygons: quarantine its "
        "image, or keep the largest part (the box still encloses all)")
    train_difficult: bool = Field(default=False, description="objects flagged difficult (VOC <difficult>, CVAT / "
                                  "Labelme attribute): train on them as ordinary boxes (default: left out of "
                                  "training; always ignored in evaluation)")

    @model_validator(mode="after")
    def _options_fit_format(self) -> "LabelSource":
        used = _FORMAT_OPTIONS[self.format]
        # By value, not by model_fields_set: path resolution assigns every option (None stays None).
        given = {k for k in _OPTION_NAMES if getattr(self, k) != LabelSource.model_fields[k].default}
        extra = sorted(given - set(used))
        if extra:
            raise ValueError(f"format {self.format!r} does not use {', '.join(extra)}; it takes: "
                             f"{', '.join(('path',) + used)}")
        return self


_OPTION_NAMES = ("image_root", "labels", "names", "split", "multipart", "train_difficult")


class PoolSource(_Section):
    """The unlabelled pool: every image under ``path`` (jpg/png/webp/bmp/tiff)."""

    path: Path
    recursive: bool = True


class DataConfig(_Section):
    """Where the labelled seed, the unlabelled pool and the holdout are, and image limits."""

    seed: LabelSource
    pool: PoolSource
    holdout: LabelSource
    max_pixels: int = Field(
        default=40_000_000, gt=0, le=178_956_970,
        description="images with more pixels (width x height) are quarantined from their header, never "
                    "decoded: 40 M = an 8000x5000 frame, 120 MB as RGB; Pillow opens nothing above 178,956,970")


class ModelConfig(_Section):
    """The model trained each round. Classification: a torchvision ``arch``; detection and
    segmentation: Ultralytics YOLO built from ``yolo_yaml`` (or ``weights``, a local .pt)."""

    arch: Literal["small_cnn", "resnet18", "yolo", "frozen"] | None = Field(
        default=None, description="null: small_cnn for classify, yolo for detect/segment; frozen: a pretrained "
        "backbone (model.backbone) with a light head")
    weights: str | None = Field(default=None, description="weights to start from: a local file, or a named "
                                "pretrained set (resnet18.IMAGENET1K_V1, efficientnet_lite0) found in the local "
                                "cache; downloaded only with model.allow_download")
    yolo_yaml: str | None = Field(default=None, description="YOLO network YAML, e.g. yolo11n.yaml "
                                  "(default by task: yolo11n.yaml / yolo11n-seg.yaml)")
    warm_start: bool = Field(default=False, description="YOLO: start each round from the previous round's "
                             "model instead of from scratch / weights")
    conf: float = Field(default=0.05, ge=0, le=1, description="YOLO: NMS confidence floor of kept boxes")
    iou: float = Field(default=0.6, gt=0, le=1, description="YOLO: NMS IoU threshold")
    train_args: dict[str, Any] = Field(default_factory=dict, description="YOLO: extra YOLO.train arguments")
    runtime: Literal["auto", "torch", "onnx"] = Field(
        default="auto", description="YOLO inference: auto = ONNX Runtime on a CPU (when installed), PyTorch on "
        "CUDA; onnx is CPU only")
    image_size: int = Field(default=32, ge=8, le=2048)
    epochs: int = Field(default=30, ge=1, le=10_000)
    min_steps: int = Field(default=300, ge=0, description="at least this many optimiser steps, however few labels")
    batch_size: int = Field(default=64, ge=1, le=4096)
    lr: float = Field(default=2e-3, gt=0, le=10)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: int = 0
    infer_batch_size: int | None = Field(
        default=None, ge=1, le=65_536, description="images per inference batch; null: automatic (YOLO: fitted "
        "to free GPU memory, or the CPU default; classifiers: 256)")
    # -- representations (arch: frozen): a pretrained or self-supervised backbone, embedded once and
    # cached, and a light head trained in seconds per round --
    backbone: str = Field(default="efficientnet_lite0", description="arch frozen: efficientnet_lite0 (offline, "
                          "from its wheel), a torchvision name (resnet18.IMAGENET1K_V1), ssl (self-supervised "
                          "pretraining on the pool, see pretrain:) or ssl:<backbone file>")
    head: Literal["linear", "mlp"] = Field(default="linear", description="arch frozen: the classifier on the "
                                           "embeddings")
    finetune: Literal["none", "last"] = Field(default="none", description="arch frozen: none = backbone frozen; "
                                              "last = its last block trains too (on cached features)")
    allow_download: bool = Field(default=False, description="download named weights missing from the local cache "
                                 "(model.weights / model.backbone); off: a one-line error says what to fetch")

    @field_validator("backbone")
    @classmethod
    def _known_backbone(cls, v: str) -> str:
        v = v.strip()
        if v in ("ssl", "efficientnet_lite0"):
            return v
        if v.startswith("ssl:"):
            if not v[4:].strip():
                raise ValueError("backbone 'ssl:' needs a file after the colon (ssl:<backbone file>), or use 'ssl'")
            return v
        from pseudolabel.models.weights import WeightsError, parse_weights_name

        try:
            spec = parse_weights_name(v)
        except WeightsError as e:
            raise ValueError(f"{e}; or 'ssl' (self-supervised pretraining on the pool)") from None
        if spec.arch is None:
            raise ValueError(f"backbone {v!r} names no network: use efficientnet_lite0, a torchvision name "
                             "(resnet18.IMAGENET1K_V1) or ssl; a weights URL goes in model.weights")
        return v


class ProbCoverConfig(_Section):
    """ProbCover's ball radius (see :mod:`pseudolabel.strategies.probcover`)."""

    delta: float | None = Field(default=None, ge=0, le=2, description="ball radius in the L2-normalised "
                                "embedding space (0..2); null: the largest radius whose balls stay pure")
    purity: float = Field(default=0.95, gt=0, le=1, description="share of pure balls delta must keep")
    n_clusters: int | None = Field(default=None, ge=2, description="k-means clusters for the purity; "
                                   "null: the number of classes")


class ScheduleConfig(_Section):
    """The ``schedule`` strategy: typicality while labels are few, uncertainty after (see
    :mod:`pseudolabel.strategies.schedule` for the literature's rule of thumb)."""

    low: Literal["typiclust", "probcover", "centroid", "kcenter"] = "typiclust"
    high: str = Field(default="margin", description="strategy from the switch on (margin, entropy, hybrid, ...)")
    switch_per_class: float = Field(default=5.0, ge=0, description="labels per class at which to switch")

    @field_validator("high")
    @classmethod
    def _known_high(cls, v: str) -> str:
        from pseudolabel.strategies import STRATEGIES
        from pseudolabel.strategies.schedule import HIGH_EXCLUDED

        accepted = [s for s in STRATEGIES if s not in HIGH_EXCLUDED]
        if v not in accepted:
            raise ValueError(f"schedule high {v!r} is not accepted; choose one of: {', '.join(accepted)}")
        return v


class SelectionConfig(_Section):
    """How the round ranks the pool. Detection: each box gets ``uncertainty`` from its class
    vector, the image score aggregates its boxes (``aggregate``; an image with no confident box
    counts as uncertain) and, with ``localisation`` > 0, mixes in the box instability under
    horizontal-flip test-time augmentation (a second forward pass). Detection strategies:
    random, least_confidence / margin / entropy (the per-box score), kcenter, hybrid, dbal, and on the
    embeddings alone typiclust, centroid, probcover. Low budgets: ``typiclust``, ``centroid``,
    ``probcover`` (options under ``probcover``) and ``schedule`` (options under ``schedule``)."""

    strategy: str = "hybrid"
    batch_size: int = Field(default=20, ge=1, description="tasks queued for review per round")
    max_queued: int | None = Field(default=None, ge=1, description="at most this many tasks wait for reviewers; a "
                                   "round only tops the queue up to it (null: batch_size), so scheduled rounds "
                                   "nobody answers do not flood the queue")
    uncertainty: Literal["entropy", "margin", "least_confidence"] = Field(
        default="entropy", description="the score the hybrid and dbal strategies rank by"
    )
    hybrid_factor: int = Field(default=5, ge=1, description="hybrid and dbal pre-select the hybrid_factor x k most "
                               "uncertain items")
    class_balance: bool = False
    mc_samples: int = Field(default=10, ge=2, le=1000, description="bald: MC-dropout forward passes")
    aggregate: Literal["max", "mean", "sum", "topk"] = Field(default="mean", description="detection: box -> image")
    topk: int = Field(default=3, ge=1, description="detection: boxes averaged by aggregate=topk")
    min_box_score: float = Field(default=0.0, ge=0, le=1, description="detection: boxes less confident than "
                                 "this are left out of the image score (background let through by model.conf)")
    localisation: float = Field(default=0.0, ge=0, le=1, description="detection: weight (0..1) of the "
                                "flip-TTA box instability in the image score; > 0 costs a second forward pass")
    predraw_conf: float = Field(default=0.25, ge=0, le=1, description="detection: boxes at least this "
                                "confident are pre-drawn in Label Studio")
    predraw_fallback: int = Field(default=3, ge=0, le=100, description="detection: when no box reaches "
                                  "predraw_conf, pre-draw this many best boxes, with a note that they are "
                                  "low-confidence guesses (0: show nothing)")
    embeddings: str = Field(
        default="model", description="detection: the image embeddings of the diversity strategies (kcenter, hybrid, "
        "typiclust, centroid, probcover): model = the detector's own features (trained on a few labels in the first "
        "rounds); a backbone (efficientnet_lite0: ImageNet features, offline; a torchvision name or a weights file, "
        "see model.backbone) = that pretrained network's, embedded once per image and cached in <workdir>/embeddings")
    probcover: ProbCoverConfig = ProbCoverConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    seed: int = 0

    @field_validator("embeddings")
    @classmethod
    def _known_embeddings(cls, v: str) -> str:
        if v == "model":
            return v
        v = v.strip()
        accepted = ("accepted: model (the detector's own), efficientnet_lite0, a torchvision name such as "
                    "resnet18.IMAGENET1K_V1, or a backbone weights file")
        if v == "ssl" or v.startswith("ssl:"):
            raise ValueError(f"a self-supervised backbone is for classification (model.backbone ssl); {accepted}")
        if v == "efficientnet_lite0":
            return v
        from pseudolabel.models.weights import WeightsError, parse_weights_name

        try:
            spec = parse_weights_name(v)
        except WeightsError:
            raise ValueError(f"unknown embeddings {v!r}; {accepted}") from None
        if spec.arch is None:
            raise ValueError(f"embeddings {v!r} names no network; {accepted}")
        return v

    def strategy_options(self) -> dict[str, dict[str, Any]]:
        """Strategy-specific options as :func:`pseudolabel.strategies.select` takes them."""
        pc = {k: v for k, v in self.probcover.model_dump().items() if v is not None}
        return {"probcover": pc, "schedule": self.schedule.model_dump()}

    @field_validator("strategy")
    @classmethod
    def _known_strategy(cls, v: str) -> str:
        from pseudolabel.strategies import STRATEGIES

        if v not in STRATEGIES:
            raise ValueError(f"unknown strategy {v!r}; choose one of: {', '.join(STRATEGIES)}")
        return v


class PseudoConfig(_Section):
    """Self-training: confident pseudo-labels join the training set, weighted below humans."""

    enabled: bool = True
    mode: Literal["global", "flexmatch", "freematch"] = Field(
        default="global", description="global threshold, or class-adaptive thresholds scaled by how well "
        "each class is learned (FlexMatch / FreeMatch style)")
    threshold: float = Field(default=0.98, gt=0, le=1, description="minimum max-probability (classification)")
    box_threshold: float = Field(default=0.5, gt=0, le=1, description="detection: minimum box confidence")
    class_thresholds: dict[str, float] = Field(
        default_factory=dict, description="per-class overrides of threshold / box_threshold")
    weight: float = Field(default=0.5, ge=0, le=1, description="loss weight relative to human labels")
    max_per_class: int | None = Field(default=None, ge=1, description="at most this many pseudo-labels per class")
    max_ratio: float | None = Field(default=5.0, gt=0, description="at most this many times the mean number of "
                                    "labelled items per class, per class (class-balanced: an easy class cannot "
                                    "flood the training set); null: no relative cap")
    min_class_score: float = Field(default=0.5, ge=0, le=1, description="a class whose holdout F1 (classify) "
                                   "or AP50 (detect/segment) is below this gets no pseudo-labels: a model bad at "
                                   "a class would teach its own mistakes (0: off)")
    per_epoch: int | None = Field(default=None, ge=0, description="classification: at most this many "
                                  "pseudo-labels per training epoch (a fresh random sample each epoch); null: no cap")
    ratio: float | None = Field(default=1.0, ge=0, description="classification: at most ratio x the seed + human "
                                "labels in pseudo-labels per epoch (keeps rounds fast as pseudo-labels pile up); "
                                "null: no cap")

    @field_validator("class_thresholds")
    @classmethod
    def _thresholds(cls, v: dict[str, float]) -> dict[str, float]:
        for k, t in v.items():
            if not 0 < float(t) <= 1:
                raise ValueError(f"class_thresholds[{k!r}] = {t!r} must be in (0, 1]")
        return v


class ConsistencyConfig(_Section):
    """FixMatch-style consistency training (classification): unlabelled pool images whose
    weakly augmented view is predicted with confidence >= ``threshold`` train the model to give
    the same class on a strongly augmented view, with loss weight ``weight``."""

    enabled: bool = False
    threshold: float = Field(default=0.95, gt=0, le=1)
    weight: float = Field(default=1.0, ge=0, le=100)
    unlabelled_ratio: int = Field(default=1, ge=1, le=64, description="unlabelled images per labelled one in a step")
    strong_ratio: float = Field(default=0.5, gt=0, le=1, description="share of a step's unlabelled images trained "
                                "on (those confident at their last visit first); with the defaults a step costs about "
                                "1.9 supervised steps")


class PretrainConfig(_Section):
    """Self-supervised pretraining (SimCLR) on the pool's images, for ``model.backbone: ssl``:
    bounded by ``max_steps`` and ``max_minutes`` (counted over every run), checkpointed every
    ``checkpoint_every`` steps (a rerun continues), cached per pool under
    ``<workdir>/pretrain/`` (a changed pool trains anew)."""

    enabled: bool = Field(default=True, description="false: never train here, use a finished pretraining from "
                          "the cache (an error otherwise)")
    max_minutes: float = Field(default=10.0, gt=0, le=10_000, description="training time budget, all runs together")
    max_steps: int = Field(default=2000, ge=1, le=10_000_000)
    batch_size: int = Field(default=128, ge=2, le=8192, description="images per step (two views each)")
    image_size: int = Field(default=32, ge=8, le=512, description="pixels; also the backbone's input size")
    width: int = Field(default=16, ge=4, le=256, description="channels of the first stage (x2, x4, x8 after)")
    lr: float = Field(default=2e-3, gt=0, le=10)
    temperature: float = Field(default=0.2, gt=0, le=10)
    checkpoint_every: int = Field(default=100, ge=1)
    max_images: int = Field(default=20_000, ge=2, description="pool images decoded and trained on at most")


class QualityConfig(_Section):
    """Label-quality check (confident learning): seed / human labels the model strongly
    disagrees with are queued again for a second review, flagged ``relabel`` in Label Studio."""

    enabled: bool = False
    max_per_round: int = Field(default=10, ge=1, description="second-review tasks queued per round at most")
    min_labels: int = Field(default=50, ge=10, description="run only once this many labels exist")
    folds: int = Field(default=3, ge=2, le=10, description="cross-validation folds for out-of-sample probabilities")


class ReviewConfig(_Section):
    """Several reviewers per task: ``overlap`` annotations are asked for each task; the label
    is decided by ``consensus``; tasks whose agreement is below ``min_agreement`` go back for
    adjudication."""

    overlap: int = Field(default=1, ge=1, le=10)
    consensus: Literal["majority", "dawid_skene"] = "majority"
    min_agreement: float = Field(default=0.5, gt=0, le=1)
    adopt_foreign: bool = Field(
        default=False, description="before each sync (sync, round, run): adopt answered tasks made by hand in Label "
        "Studio (no pseudolabel item id) whose image is a local file under document_root: ingest the image into the "
        "pool and store the answers as human labels (`pseudolabel adopt` does it on demand)")


class StopConfig(_Section):
    """When the campaign stops: the holdout metric and its target, the label budget, the
    round limit and the optional rules (each, when it fires, is the termination reason)."""

    metric: Literal["accuracy", "macro_f1", "map50", "map50_95", "mask_map50", "mask_map50_95", "miou"] = Field(
        default="accuracy", description="classification: accuracy / macro_f1; detection: map50 / map50_95; "
        "segmentation: also mask_map50 / mask_map50_95 / miou")
    target: float = Field(default=0.95, gt=0, le=1)
    label_budget: int = Field(default=200, ge=1, description="max human labels (seed + reviewed)")
    max_rounds: int = Field(default=10, ge=1)
    # Optional rules (off when null); each one, when it fires, is the run's termination reason.
    plateau_rounds: int | None = Field(default=None, ge=1, description="stop when the metric gained <= "
                                       "plateau_min_delta over this many rounds")
    plateau_min_delta: float = Field(default=0.002, ge=0)
    stable_kappa: float | None = Field(default=None, gt=0, le=1, description="stop when Cohen's kappa between "
                                       "consecutive models' pool predictions reaches this")
    pool_uncertainty: float | None = Field(default=None, gt=0, le=1, description="stop when the mean "
                                           "normalised entropy over the pool falls to this")
    acceptance_rate: float | None = Field(default=None, gt=0, le=1, description="stop when reviewers accept "
                                          "at least this share of the last round's predictions")
    min_answered: int = Field(default=10, ge=1, description="acceptance_rate needs this many answers")


class ReportConfig(_Section):
    """The HTML report every round writes (:mod:`pseudolabel.report`)."""

    enabled: bool = Field(default=True, description="write <workdir>/reports/round-NNNN.html and index.html at "
                          "the end of every round (`pseudolabel report` writes them on demand either way)")
    max_points: int = Field(default=3000, ge=10, description="pool items drawn on the 2-D map (a random "
                            "sample plus every selected item)")
    max_thumbnails: int = Field(default=100, ge=0, description="selected items shown as thumbnails")


class LabelStudioConfig(_Section):
    """Where the review happens. Images: Label Studio serves local files from its document
    root (``LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT``); the project gets a local-files storage on
    ``images_root``, a folder strictly inside it (any depth) that holds every image a task shows
    (the pool, and the seed / holdout if they are sent back for review). Task URLs are
    ``/data/local-files/?d=<image path relative to document_root>``."""

    url: str = "http://127.0.0.1:8080"
    token_env: str = Field(default="LABEL_STUDIO_API_KEY", description="env var holding the API token")
    project_title: str | None = None
    images_root: Path | None = Field(
        default=None,
        description="folder holding the images tasks show; strictly inside document_root",
    )
    document_root: Path | None = Field(
        default=None,
        description="Label Studio's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT (null: the parent of images_root)",
    )
    instructions: str | None = Field(
        default=None, description="labelling instructions shown to reviewers (HTML); null: written from the config")
    timeout: float = Field(default=30.0, gt=0, le=3600, description="seconds one request may take")
    retry_seconds: float = Field(default=60.0, ge=0, le=86_400, description="seconds spent retrying a failing "
                                 "request (connection errors, 5xx, time-outs) before giving up")

    @field_validator("url")
    @classmethod
    def _http(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError(f"url must start with http:// or https://, got {v!r}")
        return v.rstrip("/")

    def token(self) -> str:
        """The API token from the environment variable ``token_env``; :class:`ConfigError` if unset."""
        tok = os.environ.get(self.token_env, "")
        if not tok:
            raise ConfigError(
                f"Label Studio token missing: set the environment variable {self.token_env} "
                f"(label_studio.token_env) to your Personal Access Token (Label Studio: Account & Settings)"
            )
        return tok

    def effective_document_root(self) -> Path | None:
        """``document_root``, or the parent of ``images_root`` when not set."""
        if self.document_root is not None:
            return self.document_root
        return None if self.images_root is None else self.images_root.parent


class Config(_Section):
    """The whole configuration of one labelling campaign."""

    project: str = Field(description="campaign name; also the default Label Studio project title")
    task: Literal["classify", "detect", "segment"] = "classify"
    workdir: Path
    classes: list[str] = Field(min_length=1)
    data: DataConfig
    model: ModelConfig = ModelConfig()
    selection: SelectionConfig = SelectionConfig()
    pseudo: PseudoConfig = PseudoConfig()
    consistency: ConsistencyConfig = ConsistencyConfig()
    pretrain: PretrainConfig = PretrainConfig()
    quality: QualityConfig = QualityConfig()
    review: ReviewConfig = ReviewConfig()
    stop: StopConfig = StopConfig()
    report: ReportConfig = ReportConfig()
    label_studio: LabelStudioConfig = LabelStudioConfig()

    @field_validator("classes")
    @classmethod
    def _unique_classes(cls, v: list[str]) -> list[str]:
        seen: set[str] = set()
        for c in v:
            if not c or c != c.strip():
                raise ValueError(f"class names must be non-empty without surrounding spaces, got {c!r}")
            if c in seen:
                raise ValueError(f"class {c!r} is listed twice")
            seen.add(c)
        return v

    @model_validator(mode="after")
    def _resolve(self) -> "Config":
        if self.label_studio.project_title is None:
            self.label_studio.project_title = self.project
        det = self.task in ("detect", "segment")
        if self.model.arch is None:
            self.model.arch = "yolo" if det else "small_cnn"
        if self.task == "classify" and len(self.classes) < 2:
            raise ValueError(f"task classify needs at least 2 classes, got {self.classes!r}")
        if self.consistency.enabled and det:
            raise ValueError("consistency (FixMatch) training is for classification; for detect / segment use "
                             "pseudo-labels (pseudo.enabled, pseudo.box_threshold)")
        if self.model.warm_start and not det:
            raise ValueError("model.warm_start is for YOLO (task detect / segment); classifiers retrain from scratch")
        # values, not "was it set": a saved snapshot repeats every default
        frozen_keys = [k for k in ("backbone", "head", "finetune")
                       if getattr(self.model, k) != ModelConfig.model_fields[k].default]
        if self.model.arch != "frozen" and frozen_keys:
            raise ValueError(f"model.{frozen_keys[0]} is for model.arch frozen (a pretrained backbone with a light "
                             f"head); arch is {self.model.arch!r}")
        if self.model.arch == "frozen" and self.consistency.enabled:
            raise ValueError("consistency (FixMatch) training needs a network trained on images; model.arch frozen "
                             "trains a head on cached embeddings: use arch small_cnn / resnet18, or switch consistency off")
        if det and self.model.arch != "yolo":
            raise ValueError(f"task {self.task} trains YOLO: model.arch must be yolo (or null), got {self.model.arch!r}")
        for name, src in (("seed", self.data.seed), ("holdout", self.data.holdout)):
            fmts = OBJECT_FORMATS if det else CLASSIFY_FORMATS
            if src.format not in fmts:
                raise ValueError(f"data.{name}.format {src.format!r} does not fit task {self.task}; "
                                 f"choose one of: {', '.join(fmts)}")
        if det and self.stop.metric in ("accuracy", "macro_f1"):
            if "metric" in self.stop.model_fields_set:
                raise ValueError(f"stop.metric {self.stop.metric!r} is a classification metric; task {self.task} "
                                 "reports map50, map50_95" + (", mask_map50, mask_map50_95, miou"
                                                              if self.task == "segment" else ""))
            self.stop.metric = "mask_map50" if self.task == "segment" else "map50"
        if self.task == "detect" and self.stop.metric in ("mask_map50", "mask_map50_95", "miou"):
            raise ValueError(f"stop.metric {self.stop.metric!r} needs task segment")
        if not det and self.stop.metric not in ("accuracy", "macro_f1"):
            raise ValueError(f"stop.metric {self.stop.metric!r} needs task detect/segment; classify reports "
                             "accuracy, macro_f1")
        from pseudolabel.strategies.detection import detection_strategies

        if det and self.selection.strategy not in detection_strategies():
            raise ValueError(f"selection.strategy {self.selection.strategy!r} is for classification; task "
                             f"{self.task} accepts: {', '.join(detection_strategies())}")
        unknown = sorted(set(self.pseudo.class_thresholds) - set(self.classes))
        if unknown:
            raise ValueError(f"pseudo.class_thresholds names unknown classes {unknown!r}; classes are {self.classes!r}")
        self._check_keys_fit(det)
        return self

    def _check_keys_fit(self, det: bool) -> None:
        """Keys that do nothing for this task or model are errors saying why (compared by value
        with their default, not by "was it set": a saved round config repeats every default)."""
        def changed(section: BaseModel, *keys: str) -> list[str]:
            fields = type(section).model_fields
            return [k for k in keys if getattr(section, k) != fields[k].get_default(call_default_factory=True)]

        rules: list[tuple[str, BaseModel, tuple[str, ...], str]] = []
        if det:
            rules += [
                ("selection", self.selection, ("class_balance", "mc_samples"),
                 f"needs each image's class probabilities (classification), not task {self.task}'s boxes"),
                ("quality", self.quality, ("enabled",), "turns on the label-quality check (confident learning), "
                 "which is for classification"),
                ("pseudo", self.pseudo, ("mode", "threshold"), "is for classification; boxes use pseudo.box_threshold "
                 "and pseudo.class_thresholds"),
                ("pseudo", self.pseudo, ("per_epoch", "ratio"), "bounds the pseudo-labels per epoch of a classifier; "
                 "YOLO trains on every pseudo-labelled image"),
            ]
        else:
            rules += [
                ("selection", self.selection, ("aggregate", "topk", "min_box_score", "localisation", "predraw_conf",
                                               "predraw_fallback", "embeddings"),
                 "is for boxes (task detect / segment); a classifier's embeddings come from model.arch / model.backbone"),
                ("pseudo", self.pseudo, ("box_threshold",), "is for boxes; classification uses pseudo.threshold"),
            ]
        if self.model.arch != "yolo":
            rules.append(("model", self.model, ("yolo_yaml", "conf", "iou", "train_args", "runtime"),
                          f"is for model.arch yolo; arch is {self.model.arch!r}"))
        for name, section, keys, why in rules:
            bad = changed(section, *keys)
            if bad:
                raise ValueError(f"{name}.{bad[0]} {why}")
        if self.model.arch == "yolo" and self.consistency.enabled:
            raise ValueError("consistency (FixMatch) training needs model.arch small_cnn or resnet18; YOLO does not "
                             "train on unlabelled images (use pseudo-labels)")

    def snapshot(self) -> dict[str, Any]:
        """Plain, YAML-serialisable dict of the effective config (no secrets in it)."""
        return self.model_dump(mode="json")


def set_dotted(tree: dict[str, Any], dotted: str, value: Any, *, origin: str) -> None:
    """Set ``tree["a"]["b"] = value`` for ``dotted="a.b"``, creating sections; errors name ``origin``."""
    keys = [k for k in dotted.split(".") if k]
    if not keys:
        raise ConfigError(f"{origin}: empty key")
    node = tree
    for k in keys[:-1]:
        nxt = node.setdefault(k, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"{origin}: {'.'.join(keys)}: {k!r} is not a section")
        node = nxt
    node[keys[-1]] = value


def _env_overrides(environ: Mapping[str, str]) -> list[tuple[str, Any, str]]:
    out = []
    for name, raw in sorted(environ.items()):
        if name.startswith(ENV_PREFIX) and len(name) > len(ENV_PREFIX):
            dotted = name[len(ENV_PREFIX):].lower().replace("__", ".")
            out.append((dotted, yaml.safe_load(raw) if raw != "" else None, f"environment {name}"))
    return out


def _format_validation(err: ValidationError, origin: str) -> str:
    lines = [f"invalid config ({origin}):"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        if e["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key{_accepted_keys(e['loc'])}")
        elif e["type"] == "literal_error":
            lines.append(f"  {key}: {e['input']!r} is not accepted; {e['msg'].lower()}")
        elif e["type"] == "missing":
            lines.append(f"  {key}: required key is missing")
        elif not e["loc"]:
            lines.append(f"  {e['msg'].removeprefix('Value error, ')}")   # a rule across keys: the message names them
        else:
            lines.append(f"  {key}: {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def _accepted_keys(loc: Sequence[Any]) -> str:
    model: Any = Config
    for part in loc[:-1]:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return ""
        ann = field.annotation
        model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
        if model is None:
            return ""
    return "; accepted keys: " + ", ".join(model.model_fields)


def load_config(
    path: Path | str | None = None,
    *,
    data: Mapping[str, Any] | None = None,
    overrides: Sequence[str] = (),
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Load a config from a YAML ``path`` (or a ``data`` dict), apply env and CLI overrides.

    ``overrides`` are ``"section.key=value"`` strings (value parsed as YAML). Relative paths in
    the file resolve against the file's folder, so a config works from any working directory.
    """
    origin = str(path) if path is not None else "<dict>"
    tree: dict[str, Any]
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            loaded = yaml.safe_load(read_text_utf8(p))
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML: {e}") from e
        except ValueError as e:  # not UTF-8
            raise ConfigError(str(e)) from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: the top level must be a mapping of keys, got {type(loaded).__name__}")
        tree = loaded
        base = p.resolve().parent
    else:
        tree = dict(data or {})
        base = Path.cwd()
    tree = _deepcopy(tree)
    for dotted, value, where in _env_overrides(os.environ if environ is None else environ):
        set_dotted(tree, dotted, value, origin=where)
    for ov in overrides:
        if "=" not in ov:
            raise ConfigError(f"override {ov!r}: expected section.key=value, e.g. model.epochs=5")
        k, v = ov.split("=", 1)
        set_dotted(tree, k.strip(), yaml.safe_load(v) if v != "" else None, origin=f"override {ov!r}")
    try:
        cfg = Config.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(_format_validation(e, origin)) from None
    return _resolve_paths(cfg, base)


def _deepcopy(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: _deepcopy(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_deepcopy(v) for v in tree]
    return tree


def _resolve_paths(cfg: Config, base: Path) -> Config:
    def r(p: Path | None) -> Path | None:
        return None if p is None else (p if p.is_absolute() else (base / p).resolve())

    cfg.workdir = r(cfg.workdir)  # type: ignore[assignment]
    for src in (cfg.data.seed, cfg.data.holdout):
        src.path = r(src.path)  # type: ignore[assignment]
        src.image_root = r(src.image_root)
        src.labels = r(src.labels)
        src.names = r(src.names)
    cfg.data.pool.path = r(cfg.data.pool.path)  # type: ignore[assignment]
    from pseudolabel.models.weights import looks_like_path

    w = cfg.model.weights
    if w is not None and looks_like_path(w):  # a file (resolved against the config's folder), not a name
        cfg.model.weights = str(r(Path(w).expanduser()))
    if cfg.model.backbone.startswith("ssl:"):
        cfg.model.backbone = "ssl:" + str(r(Path(cfg.model.backbone[4:].strip()).expanduser()))
    cfg.label_studio.images_root = r(cfg.label_studio.images_root)
    cfg.label_studio.document_root = r(cfg.label_studio.document_root)
    _check_image_paths(cfg)
    return cfg


def _inside(child: Path, parent: Path) -> bool:
    try:
        child.relative_to(parent)
        return True
    except ValueError:
        return False


def _check_image_paths(cfg: Config) -> None:
    """The one image rule (see :class:`LabelStudioConfig`): images_root strictly inside the
    document root, the pool inside images_root."""
    ls = cfg.label_studio
    if ls.images_root is None:
        return
    doc = ls.effective_document_root()
    assert doc is not None  # images_root is set
    root = ls.images_root
    if root == doc:
        raise ConfigError(
            f"label_studio.images_root {root} is Label Studio's document root itself; Label Studio refuses a "
            f"storage there: put the images in a folder inside it (e.g. images_root: {doc / 'images'}) or set "
            "label_studio.document_root to the folder above")
    if not _inside(root, doc):
        raise ConfigError(
            f"label_studio.images_root {root} is not inside label_studio.document_root {doc} (Label Studio's "
            "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT): Label Studio only serves files under its document root")
    if not _inside(cfg.data.pool.path, root):
        raise ConfigError(
            f"data.pool.path {cfg.data.pool.path} is not inside label_studio.images_root {root}: pool images are "
            "shown to reviewers, so they must lie under the folder Label Studio serves")


def dump_config(cfg: Config, path: Path) -> None:
    """Write the effective config as YAML, atomically."""
    from pseudolabel.utils import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(cfg.snapshot(), sort_keys=False))
