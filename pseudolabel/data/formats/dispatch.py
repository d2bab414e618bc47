"""Format name -> reader or writer: :func:`read_labels` (classification),
:func:`read_objects` and :func:`export_labels` (detection / segmentation).

The names are :data:`~pseudolabel.types.CLASSIFY_FORMATS` and
:data:`~pseudolabel.types.OBJECT_FORMATS`; what each format's files hold is in its module.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pseudolabel.data.errors import DataError
from pseudolabel.data.formats.coco import read_coco, write_coco
from pseudolabel.data.formats.csvlabels import read_csv_labels
from pseudolabel.data.formats.cvat import read_cvat, read_cvat_tags, write_cvat
from pseudolabel.data.formats.imagefolder import read_imagefolder
from pseudolabel.data.formats.labelled import LabelledSet
from pseudolabel.data.formats.labelme import read_labelme, read_labelme_classes, write_labelme
from pseudolabel.data.formats.labelstudio import read_labelstudio, read_labelstudio_choices, write_labelstudio
from pseudolabel.data.formats.objects import (
    DetSet,
    DetTask,
    Multipart,
    check_classes,
    check_task,
    check_write,
    unique_names,
)
from pseudolabel.data.formats.voc import read_voc, write_voc
from pseudolabel.data.formats.yolo import read_yolo, write_yolo, write_yolo_names
from pseudolabel.data.images import sha256_file
from pseudolabel.data.ingest import DEFAULT_MAX_PIXELS, OnMissing, check_on_missing
from pseudolabel.types import CLASSIFY_FORMATS, OBJECT_FORMATS, Box, Item
from pseudolabel.utils import atomic_write_text

# --------------------------------------------------------------------------- classification


def _read_imagefolder_fmt(
    path: Path, *, classes: Sequence[str] | None, image_root: Path | None, progress: bool,
    max_pixels: int | None, on_missing: OnMissing,
) -> LabelledSet:
    if image_root is not None:
        raise DataError(
            f"format 'imagefolder' takes no image_root (images live under {path}); "
            f"got image_root={image_root}"
        )
    # on_missing does not apply: the folder listing only names files that exist.
    return read_imagefolder(path, classes=classes, progress=progress, max_pixels=max_pixels)


def _read_csv_fmt(
    path: Path, *, classes: Sequence[str] | None, image_root: Path | None, progress: bool,
    max_pixels: int | None, on_missing: OnMissing,
) -> LabelledSet:
    return read_csv_labels(path, classes=classes, image_root=image_root, progress=progress,
                           max_pixels=max_pixels, on_missing=on_missing)


def _read_labelme_fmt(
    path: Path, *, classes: Sequence[str] | None, image_root: Path | None, progress: bool,
    max_pixels: int | None, on_missing: OnMissing,
) -> LabelledSet:
    return read_labelme_classes(path, classes=_need_classes(classes, "labelme"), image_root=image_root,
                                progress=progress, max_pixels=max_pixels, on_missing=on_missing)


def _read_cvat_fmt(
    path: Path, *, classes: Sequence[str] | None, image_root: Path | None, progress: bool,
    max_pixels: int | None, on_missing: OnMissing,
) -> LabelledSet:
    return read_cvat_tags(path, classes=_need_classes(classes, "cvat"), image_root=image_root, progress=progress,
                          max_pixels=max_pixels, on_missing=on_missing)


def _read_labelstudio_fmt(
    path: Path, *, classes: Sequence[str] | None, image_root: Path | None, progress: bool,
    max_pixels: int | None, on_missing: OnMissing,
) -> LabelledSet:
    return read_labelstudio_choices(path, classes=_need_classes(classes, "labelstudio"), image_root=image_root,
                                    progress=progress, max_pixels=max_pixels, on_missing=on_missing)


def _need_classes(classes: Sequence[str] | None, fmt: str) -> tuple[str, ...]:
    if classes is None:
        raise DataError(f"format {fmt!r} needs the class names (classes=...) to tell labels from other flags")
    return tuple(classes)


_READERS: dict[str, Callable[..., LabelledSet]] = {
    "imagefolder": _read_imagefolder_fmt,
    "csv": _read_csv_fmt,
    "labelme": _read_labelme_fmt,
    "cvat": _read_cvat_fmt,
    "labelstudio": _read_labelstudio_fmt,
}


def read_labels(
    fmt: str,
    path: Path,
    *,
    classes: Sequence[str] | None = None,
    image_root: Path | None = None,
    progress: bool = False,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    on_missing: OnMissing = "error",
) -> LabelledSet:
    """Read a labelled set in format ``fmt`` (one of :data:`~pseudolabel.types.CLASSIFY_FORMATS`) from ``path``.

    ``path`` is the root folder for ``imagefolder``, the CSV file for ``csv``, the folder of
    JSON files for ``labelme``, the XML for ``cvat`` and the JSON export for ``labelstudio``;
    ``max_pixels``, ``on_missing``: see :mod:`pseudolabel.data.formats`.
    Raises :class:`DataError` for an unknown format, listing the accepted ones.
    """
    check_on_missing(on_missing)
    reader = _READERS.get(fmt)
    if reader is None:
        raise DataError(
            f"unknown label format {fmt!r}; accepted formats: {', '.join(map(repr, CLASSIFY_FORMATS))}"
        )
    return reader(Path(path), classes=classes, image_root=image_root, progress=progress,
                  max_pixels=max_pixels, on_missing=on_missing)


# --------------------------------------------------------------------------- objects


def read_objects(
    fmt: str, path: Path, *, classes: Sequence[str], task: DetTask = "detect", image_root: Path | None = None,
    labels: Path | None = None, names: Path | None = None, split: str | None = None,
    multipart: Multipart = "quarantine", progress: bool = False, max_pixels: int | None = DEFAULT_MAX_PIXELS,
    on_missing: OnMissing = "error",
) -> DetSet:
    """Read a detection / segmentation set in format ``fmt`` (one of :data:`OBJECT_FORMATS`).

    ``path`` and the defaults per format:

    - ``yolo``: the images folder; ``labels`` defaults to ``path`` with its last ``images``
      component replaced by ``labels``; ``names`` to :func:`find_names_file`;
    - ``coco``: the instances JSON; ``image_root`` defaults to the JSON's folder, or for
      ``annotations/instances_<split>.json`` to ``images/<split>`` or ``<split>`` beside
      ``annotations`` (:func:`coco_image_roots`: the first holding the first listed image that exists);
    - ``voc``: the ``Annotations`` folder; ``image_root`` defaults to ``<path>/../JPEGImages``;
      ``split`` selects ``ImageSets/Main/<split>.txt``;
    - ``labelme``: the folder of Labelme JSON files (images beside them, or ``image_root``);
    - ``cvat``: the CVAT for images XML (``annotations.xml``); ``image_root`` defaults to
      ``images/`` beside it (CVAT's export layout), else its folder;
    - ``labelstudio``: Label Studio's JSON export; ``image_root`` is the local-files document
      root (default: the JSON's folder).

    Options a format does not use must stay ``None`` (an error names them). Every format
    quarantines images of more than ``max_pixels`` pixels; ``on_missing`` says what a file the
    labels name that does not exist is: an error (``"error"``, a set's first read) or a
    quarantine row (``"quarantine"``, a re-read: deleted since).
    """
    check_on_missing(on_missing)
    limits: dict[str, Any] = {"max_pixels": max_pixels, "on_missing": on_missing}
    path = Path(path)
    unused = {k: v for k, v in (("labels", labels), ("names", names), ("split", split)) if v is not None}
    uses = {"yolo": {"labels", "names"}, "voc": {"split"}}.get(fmt, set())
    extra = sorted(set(unused) - uses)
    if fmt in OBJECT_FORMATS and extra:
        raise DataError(f"format {fmt!r} does not use {', '.join(extra)} (given for {path}); remove it")
    if fmt == "yolo":
        if image_root is not None:
            raise DataError(f"format 'yolo' takes no image_root (images are under {path}); remove it")
        if labels is None:
            parts = list(path.parts)
            if "images" not in parts:
                raise DataError(f"{path} has no 'images' folder to replace by 'labels' (the YOLO convention); "
                                "set the source's labels to the .txt folder")
            i = len(parts) - 1 - parts[::-1].index("images")
            labels = Path(*parts[:i], "labels", *parts[i + 1:])
        return read_yolo(path, Path(labels), classes=classes, task=task, names=names, progress=progress, **limits)
    if fmt == "coco":
        return read_coco(path, image_root=image_root, classes=classes, multipart=multipart, progress=progress,
                         **limits)
    if fmt == "voc":
        return read_voc(path, image_root=image_root or path.parent / "JPEGImages", classes=classes, split=split,
                        progress=progress, **limits)
    if fmt == "labelme":
        return read_labelme(path, classes=classes, image_root=image_root, multipart=multipart,
                                    progress=progress, **limits)
    if fmt == "cvat":
        return read_cvat(path, classes=classes, image_root=image_root, progress=progress, **limits)
    if fmt == "labelstudio":
        return read_labelstudio(path, classes=classes, image_root=image_root, progress=progress,
                                            **limits)
    raise DataError(f"unknown object label format {fmt!r}; accepted: {', '.join(map(repr, OBJECT_FORMATS))}")


# --------------------------------------------------------------------------- export


def _copy_images(items: Sequence[Item], dest: Path) -> dict[str, str]:
    """Copy ``items`` into ``dest`` keeping their file names; a name already taken there by
    other bytes (an earlier split) or by another item gets the id prefixed."""
    rel = unique_names(items, None)
    dest.mkdir(parents=True, exist_ok=True)
    for it in items:
        target = dest / rel[it.id]
        if target.exists() and sha256_file(target) != it.id:
            rel[it.id] = f"{it.id[:12]}_{Path(it.path).name}"
            target = dest / rel[it.id]
        shutil.copy2(it.path, target)
    return rel


def export_labels(
    fmt: str, out_dir: Path, items: Sequence[Item], boxes: Mapping[str, Sequence[Box]], *,
    classes: Sequence[str], task: DetTask = "detect", split: str = "train",
) -> Path:
    """Write a training-ready dataset of ``items`` (images copied) in format ``fmt``.

    Layout per format (``<split>`` defaults to ``train``; call again with ``split="val"``
    for a validation split):

    - ``yolo``: ``images/<split>/``, ``labels/<split>/``, ``data.yaml`` (``path``, one key
      per split present, ``val`` = ``train`` until a ``val`` split exists, ``names``) and
      ``classes.txt`` (Label Studio's YOLO importer reads it); returns ``data.yaml``;
    - ``coco``: ``images/<split>/``, ``annotations/instances_<split>.json``; returns the JSON;
    - ``voc``: ``JPEGImages/``, ``Annotations/``, ``ImageSets/Main/<split>.txt``; returns
      the ``ImageSets`` file;
    - ``labelme``: ``<split>/`` with each image and its Labelme JSON beside it; returns the folder;
    - ``cvat``: ``<split>/images/`` and ``<split>/annotations.xml`` (CVAT's export layout: zip the
      folder to import it); returns the XML;
    - ``labelstudio``: ``images/<split>/`` and ``<split>.json`` (tasks with annotations, image
      URLs ``/data/local-files/?d=images/<split>/...``: serve ``out_dir`` as the document root);
      returns the JSON.

    Image files keep their names (id-prefixed when two share one). Raises :class:`DataError`
    for an unknown ``fmt`` (listing the choices), a label not in ``classes`` or an item
    missing from ``boxes``.
    """
    if fmt not in OBJECT_FORMATS:
        raise DataError(f"unknown export format {fmt!r}; choose one of {', '.join(map(repr, OBJECT_FORMATS))}")
    check_task(task)
    if not split or "/" in split or split.startswith("."):
        raise DataError(f"split {split!r} must be a plain folder name such as 'train' or 'val'")
    names = check_classes(classes, where=f"export to {out_dir}")
    boxes = check_write(items, boxes, names)
    out_dir = Path(out_dir)

    def copied_to(img_dir: Path) -> list[Item]:
        rel = _copy_images(items, img_dir)
        return [Item(it.id, img_dir / rel[it.id], it.width, it.height) for it in items]

    if fmt == "yolo":
        img_dir = out_dir / "images" / split
        write_yolo(out_dir / "labels" / split, copied_to(img_dir), boxes, classes=names, task=task,
                   image_root=img_dir)
        splits = sorted(p.name for p in (out_dir / "images").iterdir() if p.is_dir())
        lines = [f"path: {json.dumps(str(out_dir.resolve()))}"]
        lines += [f"{s}: images/{s}" for s in splits]
        if "val" not in splits:
            lines.append(f"val: images/{'train' if 'train' in splits else splits[0]}")
        lines.append("names:")
        lines += [f"  {i}: {json.dumps(c)}" for i, c in enumerate(names)]
        path = out_dir / "data.yaml"
        atomic_write_text(path, "\n".join(lines) + "\n")
        write_yolo_names(out_dir / "classes.txt", names)
        return path
    if fmt == "coco":
        img_dir = out_dir / "images" / split
        return write_coco(out_dir / "annotations" / f"instances_{split}.json", copied_to(img_dir), boxes,
                          classes=names, image_root=img_dir)
    if fmt == "voc":
        img_dir = out_dir / "JPEGImages"
        copied = copied_to(img_dir)
        write_voc(out_dir / "Annotations", copied, boxes, classes=names, image_root=img_dir)
        path = out_dir / "ImageSets" / "Main" / f"{split}.txt"
        atomic_write_text(path, "".join(Path(it.path).stem + "\n" for it in copied))
        return path
    if fmt == "labelme":
        folder = out_dir / split
        write_labelme(folder, copied_to(folder), boxes, classes=names, image_root=folder)
        return folder
    if fmt == "cvat":
        img_dir = out_dir / split / "images"
        return write_cvat(out_dir / split / "annotations.xml", copied_to(img_dir), boxes, classes=names,
                          image_root=img_dir)
    img_dir = out_dir / "images" / split
    return write_labelstudio(out_dir / f"{split}.json", copied_to(img_dir), boxes, classes=names,
                             document_root=out_dir, task=task)
