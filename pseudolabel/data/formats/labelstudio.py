"""Label Studio JSON export (``format: labelstudio``): the list of tasks Label Studio's
"Export → JSON" writes, read as labels; and the same layout written, importable as tasks
with annotations.

Layout (Label Studio's export; what ``label_studio_sdk.converter`` reads)::

    [{"id": 1, "data": {"image": "/data/local-files/?d=images/a.jpg"},
      "annotations": [{"id": 7, "was_cancelled": false, "ground_truth": false, "result": [
          {"id": "r1", "type": "rectanglelabels", "from_name": "label", "to_name": "image",
           "original_width": 640, "original_height": 480, "image_rotation": 0,
           "value": {"x": 10.0, "y": 20.0, "width": 30.0, "height": 40.0, "rotation": 0,
                     "rectanglelabels": ["car"]}},
          {"type": "polygonlabels", "value": {"points": [[x%, y%], ...], "polygonlabels": ["car"]}, ...},
          {"type": "choices", "value": {"choices": ["day"]}, ...}]}],
      "predictions": [...]}, ...]

Units: **percent** of the image (0..100); the geometry is converted by
:mod:`pseudolabel.review.convert` (the same code that talks to the server), with the size
of the image file (percent does not depend on it; an ``original_width/height`` whose aspect
ratio differs from the file's means another image, and quarantines it).

Which annotation: cancelled ones (skips) are ignored; one marked ``ground_truth`` wins; else
the task's annotations must agree (several that disagree leave the image out with the
reason: resolve them in Label Studio). Predictions are never labels. A task with no
annotation is not labelled yet: a quarantine row, not in the set.

Image URLs resolve against ``image_root``: ``/data/local-files/?d=<path>`` as
``image_root/<path>`` (``image_root`` = Label Studio's ``LOCAL_FILES_DOCUMENT_ROOT``);
``/data/upload/<project>/<file>`` as ``image_root/upload/<project>/<file>`` (``image_root`` =
Label Studio's media folder), else by file name, with or without the 8-character prefix
Label Studio adds to uploads; other URLs and paths by their file name under ``image_root``.
A task whose image is not found is an error on a set's first read (``on_missing="error"``), a
quarantine row on a re-read (``on_missing="quarantine"``); images of more than ``max_pixels``
pixels are quarantined.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

from pseudolabel.data.errors import DataError, LabelProblem
from pseudolabel.data.images import IMAGE_SUFFIXES
from pseudolabel.data.ingest import DEFAULT_MAX_PIXELS, OnMissing, Quarantined, check_on_missing, reason_of, scan_files
from pseudolabel.data.formats.labelled import LabelledSet, assemble_labels, single_class
from pseudolabel.data.formats.objects import (
    DegenerateBox,
    DetSet,
    Reading,
    assemble,
    check_classes,
    check_write,
    load_json,
    make_box,
)
from pseudolabel.review import convert
from pseudolabel.types import Box, Item
from pseudolabel.utils import atomic_write_text

BOX_TYPES = ("rectanglelabels", "polygonlabels")
OTHER_REGION_TYPES = ("keypointlabels", "brushlabels", "ellipselabels", "polylinelabels", "rectangle", "polygon",
                      "keypoint", "brush", "ellipse")
_UPLOAD_PREFIX = re.compile(r"^[0-9a-f]{8}-")


def _load_tasks(json_path: Path) -> list[dict[str, Any]]:
    json_path = Path(json_path)
    data = load_json(json_path, what="Label Studio export")
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list) or not all(isinstance(t, dict) for t in data):
        raise DataError(f"{json_path}: expected Label Studio's JSON export, a list of tasks")
    for t in data[:1]:
        if "data" not in t:
            raise DataError(f"{json_path}: tasks have no 'data' key: this looks like the JSON-MIN or CSV export; "
                            "export the project as 'JSON'")
    return data


def _image_url(task: Mapping[str, Any], *, data_key: str | None, where: str) -> str:
    data = task.get("data")
    if not isinstance(data, dict):
        raise DataError(f"{where}: 'data' is not an object")
    if data_key is not None:
        if not isinstance(data.get(data_key), str):
            raise DataError(f"{where}: data has no string {data_key!r} (keys: {sorted(data)})")
        return str(data[data_key])
    if isinstance(data.get("image"), str):
        return str(data["image"])
    urls = [v for v in data.values() if isinstance(v, str) and (
        "/data/" in v or Path(urlparse(v).path).suffix.lower() in IMAGE_SUFFIXES)]
    if len(urls) != 1:
        raise DataError(f"{where}: cannot tell which data key holds the image (keys: {sorted(data)}); Label Studio's "
                        "default is 'image'")
    return urls[0]


def resolve_image(url: str, *, image_root: Path) -> list[Path]:
    """Candidate local paths of a task's image URL (see the module doc), best first."""
    parsed = urlparse(url)
    out: list[Path] = []
    if parsed.path.rstrip("/").endswith("/data/local-files"):
        d = parse_qs(parsed.query).get("d", [""])[-1]  # decoded once, the last value wins (as Label Studio)
        if d:
            out.append(image_root / d.lstrip("/"))
            out.append(image_root / Path(d).name)
        return out
    path = unquote(parsed.path)
    name = Path(path).name
    m = re.match(r"^/?data/upload/(.+)$", path)
    if m:
        out.append(image_root / "upload" / m.group(1))
        out.append(image_root / m.group(1))
    if parsed.scheme in ("", "file") and path:
        p = Path(path)
        out.append(p if p.is_absolute() else image_root / p)
    if name:
        out.append(image_root / name)
        if _UPLOAD_PREFIX.match(name):
            out.append(image_root / _UPLOAD_PREFIX.sub("", name))
    return out


def _find_image(task: Mapping[str, Any], *, data_key: str | None, image_root: Path, where: str, reading: Reading,
                on_missing: OnMissing = "error") -> Path | None:
    """The local file of a task's image. Not found: :class:`DataError`, or with
    ``on_missing="quarantine"`` a row in ``reading`` (for the best candidate) and ``None``."""
    url = _image_url(task, data_key=data_key, where=where)
    tried = resolve_image(url, image_root=image_root)
    for p in tried:
        if p.is_file():
            return p
    reading.missing(tried[0] if tried else Path(url), f"image file not found ({url!r} of {where})",
                    on_missing=on_missing,
                    error=f"{where}: image {url!r} not found (tried {', '.join(map(str, tried[:3])) or 'nothing'}); "
                          "set the source's image_root to Label Studio's local-files document root or the images "
                          "folder")
    return None


def _annotation(task: Mapping[str, Any], *, where: str) -> list[dict[str, Any]] | None:
    """The result list of the task's answer (see the module doc); ``None``: no annotation."""
    anns = [a for a in task.get("annotations") or [] if isinstance(a, dict) and not a.get("was_cancelled")]
    if not anns:
        return None
    truth = [a for a in anns if a.get("ground_truth")]
    if truth:
        anns = truth[:1]
    results = [a.get("result") or [] for a in anns]
    if any(not isinstance(r, list) for r in results):
        raise LabelProblem(f"{where}: an annotation's result is not a list")
    first = results[0]
    for other, ann in zip(results[1:], anns[1:]):
        if _result_key(other) != _result_key(first):
            raise LabelProblem(f"{where}: annotations {anns[0].get('id')} and {ann.get('id')} disagree; resolve them "
                               "in Label Studio (or mark one as ground truth)")
    return first


def _result_key(result: Sequence[Mapping[str, Any]]) -> list[str]:
    return sorted(json.dumps({"type": r.get("type"), "value": r.get("value")}, sort_keys=True) for r in result)


def _aspect_ok(region: Mapping[str, Any], item: Item) -> bool:
    w, h = region.get("original_width"), region.get("original_height")
    if not isinstance(w, (int, float)) or not isinstance(h, (int, float)) or not w or not h:
        return True
    return abs(w / h - item.width / item.height) <= 0.01 * (item.width / item.height)


def boxes_of_result(
    result: Sequence[Mapping[str, Any]], *, item: Item, where: str, reading: Reading | None = None,
    source: Path | None = None,
) -> tuple[Box, ...]:
    """Pixel boxes of a result list on ``item``'s image (rectangle and polygon regions;
    image-level regions such as choices are not objects). :class:`LabelProblem` for an
    unsupported region, a rotated rectangle or a size of another aspect ratio. With
    ``reading``, zero-area regions are skipped with a quarantine row on ``source``."""
    out = []
    for k, region in enumerate(result, start=1):
        rtype = region.get("type")
        at = f"{where} region {k}"
        if rtype in OTHER_REGION_TYPES:
            raise LabelProblem(f"{at}: region type {rtype!r} is not supported (rectanglelabels, polygonlabels)")
        if rtype not in BOX_TYPES:
            continue
        if not _aspect_ok(region, item):
            raise LabelProblem(f"{at}: Label Studio saw a {region.get('original_width')}x{region.get('original_height')} "
                               f"image but {item.path.name} is {item.width}x{item.height} pixels")
        # Percent is relative to the image, so convert with the file's own size.
        sized = dict(region) | {"original_width": item.width, "original_height": item.height}
        try:
            b = convert.box_from_rectangle(sized) if rtype == "rectanglelabels" else convert.box_from_polygon(sized)
        except (KeyError, TypeError, ValueError) as e:
            raise LabelProblem(f"{at}: {e}") from None
        try:
            out.append(make_box(b.x1, b.y1, b.x2, b.y2, b.label, width=item.width, height=item.height, where=at,
                                polygon=b.polygon, reading=reading))
        except DegenerateBox as e:
            if reading is None:
                raise
            path = source if source is not None else item.path
            reading.skip_object(path, reason_of(str(e), path))
    return tuple(out)


def _tasks_with_images(
    json_path: Path, image_root: Path | None, data_key: str | None, reading: Reading, *, on_missing: OnMissing
) -> list[tuple[int, dict[str, Any], Path, list[dict[str, Any]] | None, str]]:
    json_path = Path(json_path)
    root = Path(image_root) if image_root is not None else json_path.parent
    out: list[tuple[int, dict[str, Any], Path, list[dict[str, Any]] | None, str]] = []
    for n, task in enumerate(_load_tasks(json_path), start=1):
        where = f"{json_path}: task {task.get('id', f'#{n}')}"
        img = _find_image(task, data_key=data_key, image_root=root, where=where, reading=reading,
                          on_missing=on_missing)
        if img is None:
            continue
        try:
            result = _annotation(task, where=where)
        except LabelProblem as e:
            reading.drop_image(json_path, reason_of(str(e), json_path), image=img)
            continue
        if result is None:
            reading.quarantined.append(Quarantined(json_path, f"{reason_of(where, json_path)}: no annotation (not "
                                                              f"labelled yet, or skipped); image {img} not in the set"))
            continue
        out.append((n, task, img, result, where))
    return out


def read_labelstudio(
    json_path: Path, *, classes: Sequence[str] | None, image_root: Path | None = None, data_key: str | None = None,
    progress: bool = False, max_pixels: int | None = DEFAULT_MAX_PIXELS, on_missing: OnMissing = "error",
) -> DetSet:
    """Read a Label Studio JSON export as boxes and polygons (see the module doc).

    ``classes=None``: the sorted names found; otherwise every label must be one (one error
    lists them all). Zero-area regions are skipped with a row; anything else wrong with a
    task's regions quarantines its image. ``max_pixels``, ``on_missing``: see the module doc."""
    check_on_missing(on_missing)
    json_path = Path(json_path)
    names = None if classes is None else check_classes(classes, where=json_path)
    reading = Reading()
    tasks = _tasks_with_images(json_path, image_root, data_key, reading, on_missing=on_missing)
    scan = scan_files([img for _, _, img, _, _ in tasks], progress=progress, description=f"reading {json_path.name}",
                      max_pixels=max_pixels)
    ids = scan.id_of()
    by_id = {it.id: it for it in scan.items}
    per_path: list[tuple[Path, tuple[Box, ...] | None, str]] = []
    for _, _, img, result, where in tasks:
        if img not in ids:
            continue
        try:
            bxs: tuple[Box, ...] | None = boxes_of_result(result or [], item=by_id[ids[img]], where=where,
                                                          reading=reading, source=json_path)
            for b in bxs or ():
                reading.check_label(b.label, names, where=where)
        except LabelProblem as e:
            reading.drop_image(json_path, reason_of(str(e), json_path), image=img)
            bxs = None
        per_path.append((img, bxs, where))
    found = {b.label for _, bxs, _ in per_path for b in bxs or ()}
    reading.raise_unknown(names, source=json_path, found=found)
    return assemble(scan, per_path, reading, names if names is not None else tuple(sorted(found)), source=json_path)


def read_labelstudio_choices(
    json_path: Path, *, classes: Sequence[str], image_root: Path | None = None, data_key: str | None = None,
    progress: bool = False, max_pixels: int | None = DEFAULT_MAX_PIXELS, on_missing: OnMissing = "error",
) -> LabelledSet:
    """Classification from a Label Studio JSON export: each task's ``choices`` (a
    :class:`LabelledSet`). No choice or several leave the image out (quarantined); a choice
    that is no class name is an error. ``max_pixels``, ``on_missing``: see the module doc."""
    check_on_missing(on_missing)
    json_path = Path(json_path)
    names = check_classes(classes, where=json_path)
    reading = Reading()
    tasks = _tasks_with_images(json_path, image_root, data_key, reading, on_missing=on_missing)
    scan = scan_files([img for _, _, img, _, _ in tasks], progress=progress, description=f"reading {json_path.name}",
                      max_pixels=max_pixels)
    per_path: list[tuple[Path, str | None, str]] = []
    for _, _, img, result, where in tasks:
        chosen = [c for r in result or [] if r.get("type") == "choices"
                  for c in (r.get("value") or {}).get("choices", [])]
        label = single_class(chosen, names, where=where, reading=reading, source=json_path, image=img,
                             reason=f"{reason_of(where, json_path)}: ", none="no choice made",
                             several=f"{len(chosen)} choices")
        if label is not None:
            per_path.append((img, label, where))
    return assemble_labels(scan, per_path, reading.quarantined, names, source=json_path)


# --------------------------------------------------------------------------- writing


def _url(it: Item, document_root: Path) -> str:
    root = Path(document_root)
    return convert.local_files_url(it.path, root, document_root=root)


def labelstudio_tasks(
    items: Sequence[Item], boxes: Mapping[str, Sequence[Box]] | None = None, *, document_root: Path,
    task: str = "detect", labels: Mapping[str, str] | None = None, data_key: str = "image",
    from_name: str = "label", to_name: str = "image",
) -> list[dict[str, Any]]:
    """Label Studio tasks (importable JSON) with one annotation each: rectangles (and, with
    ``task="segment"``, polygons for boxes that have one), or a ``choices`` region from
    ``labels``. Image URLs are ``/data/local-files/?d=<path relative to document_root>``.
    Crowd and difficult boxes are not written (Label Studio has no such flag)."""
    out = []
    for it in items:
        if labels is not None:
            result = convert.choices_result(labels[it.id], from_name=from_name, to_name=to_name)
        else:
            result = []
            for k, b in enumerate((boxes or {}).get(it.id, ())):
                if b.crowd or b.difficult:
                    continue
                conv = convert.polygon_result if (task == "segment" and b.polygon) else convert.rectangle_result
                region = conv(replace(b, score=None), width=it.width, height=it.height, from_name=from_name,
                              to_name=to_name)
                region["id"] = f"{it.id[:8]}{k}"
                result.append(region)
        out.append({"data": {data_key: _url(it, document_root)},
                    "annotations": [{"result": result, "was_cancelled": False, "ground_truth": False}]})
    return out


def write_labelstudio(
    json_path: Path, items: Sequence[Item], boxes: Mapping[str, Sequence[Box]], *, classes: Sequence[str],
    document_root: Path, task: str = "detect",
) -> Path:
    """Write :func:`labelstudio_tasks` for boxes to ``json_path``; returns the path."""
    names = check_classes(classes, where=json_path)
    boxes = check_write(items, boxes, names)
    tasks = labelstudio_tasks(items, boxes, document_root=document_root, task=task)
    atomic_write_text(Path(json_path), json.dumps(tasks, indent=1) + "\n")
    return Path(json_path)


def write_labelstudio_choices(
    json_path: Path, items: Sequence[Item], labels: Mapping[str, str], *, classes: Sequence[str],
    document_root: Path,
) -> Path:
    """Write tasks with one ``choices`` annotation each (classification); returns the path."""
    names = check_classes(classes, where=json_path)
    for it in items:
        if labels.get(it.id) not in names:
            raise DataError(f"{it.path}: class {labels.get(it.id)!r} is not one of the accepted classes {list(names)!r}")
    tasks = labelstudio_tasks(items, None, document_root=document_root, labels=labels)
    atomic_write_text(Path(json_path), json.dumps(tasks, indent=1) + "\n")
    return Path(json_path)
