"""COCO instances JSON.

``bbox`` ``[x, y, w, h]`` in pixels; ``segmentation`` a list of flat pixel polygons;
``category_id`` refers to ``categories[].id`` (names mapped to the config's classes);
``iscrowd=1`` objects become ``crowd`` boxes (no polygon). Tolerance rules:
:mod:`pseudolabel.data.formats.objects`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pseudolabel.data.errors import DataError, LabelProblem
from pseudolabel.data.formats.objects import (
    DegenerateBox,
    DetSet,
    Multipart,
    Reading,
    assemble,
    check_classes,
    check_write,
    label_index,
    load_json,
    make_box,
    one_polygon,
    pairs,
    size_check,
    unique_names,
)
from pseudolabel.data.geometry import polygon_area
from pseudolabel.data.ingest import DEFAULT_MAX_PIXELS, OnMissing, Quarantined, check_on_missing, reason_of, scan_files
from pseudolabel.types import Box, Item
from pseudolabel.utils import atomic_write_text


def _num(v: Any, *, where: str, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise LabelProblem(f"{where}: {what} = {v!r} is not a number")
    return float(v)



def coco_image_roots(json_path: Path) -> list[Path]:
    """Where a COCO JSON's ``file_name`` may resolve, by convention: the JSON's folder; for
    ``annotations/instances_<split>.json``, ``<root>/images/<split>`` (our export, Ultralytics)
    and ``<root>/<split>`` (the official ``val2017/`` layout)."""
    json_path = Path(json_path)
    out = [json_path.parent]
    split = json_path.stem.removeprefix("instances_")
    if split != json_path.stem:
        out += [json_path.parent.parent / "images" / split, json_path.parent.parent / split]
    return out


def read_coco(
    json_path: Path, *, image_root: Path | None = None, classes: Sequence[str] | None = None,
    multipart: Multipart = "quarantine", progress: bool = False, max_pixels: int | None = DEFAULT_MAX_PIXELS,
    on_missing: OnMissing = "error",
) -> DetSet:
    """Read a COCO instances JSON; ``images[].file_name`` resolves against ``image_root``
    (``None``: the first of :func:`coco_image_roots` holding the first listed image that exists).

    ``classes=None``: the category names ordered by category id; otherwise every category
    name used by an annotation must be one of ``classes`` (one error lists them all).
    ``bbox`` gives the box; ``segmentation`` polygons (flat pixel lists) give the polygon; an
    object of several polygon parts quarantines its image unless ``multipart="largest"``
    (keeps the largest part by area; the box still encloses all). ``iscrowd=1`` annotations
    become ``crowd`` boxes without polygon (kept out of training, ignored in evaluation as
    pycocotools does). A malformed annotation or a declared size that differs from the file
    quarantines its image; a zero-size bbox is skipped (a row). Every image listed must exist
    on disk (``on_missing="quarantine"``: a missing one is quarantined, its annotations
    skipped); images of more than ``max_pixels`` pixels are quarantined; files under
    ``image_root`` that the JSON does not list are not read.
    """
    check_on_missing(on_missing)
    json_path = Path(json_path)
    if multipart not in ("quarantine", "largest"):
        raise DataError(f"multipart {multipart!r} is not one of 'quarantine', 'largest'")
    data = load_json(json_path, what="COCO file")
    if not isinstance(data, dict):
        raise DataError(f"{json_path}: the top level is a {type(data).__name__}; a COCO instances file is an object")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DataError(f"{json_path}: missing list {key!r}; a COCO instances file has "
                            "'images', 'annotations' and 'categories'")
    cats: dict[Any, str] = {}
    for c in sorted(data["categories"], key=lambda c: c.get("id", 0) if isinstance(c, dict) else 0):
        if not isinstance(c, dict) or "id" not in c or not isinstance(c.get("name"), str):
            raise DataError(f"{json_path}: category {c!r} needs an 'id' and a 'name'")
        cats[c["id"]] = c["name"]
    names = check_classes(list(cats.values()) if classes is None else classes, where=json_path)
    if image_root is None:
        # The root holding the first listed image that exists: on a re-read the first one may
        # have been deleted since, and guessing another root would lose every image.
        roots = coco_image_roots(json_path)
        file_names = (img.get("file_name") for img in data["images"] if isinstance(img, dict))
        image_root = next((r for fn in file_names if isinstance(fn, str) for r in roots if (r / fn).is_file()),
                          roots[0])
    image_root = Path(image_root)

    reading = Reading()
    images: dict[Any, Path] = {}
    absent: set[Path] = set()
    declared: dict[Any, tuple[Any, Any]] = {}
    for img in data["images"]:
        if not isinstance(img, dict) or "id" not in img or not isinstance(img.get("file_name"), str):
            raise DataError(f"{json_path}: image entry {img!r} needs an 'id' and a 'file_name'")
        if img["id"] in images:
            raise DataError(f"{json_path}: image id {img['id']!r} is listed twice")
        path = image_root / img["file_name"]
        if not path.is_file():
            reading.missing(path, f"image file not found (image id {img['id']!r} in {json_path})",
                            on_missing=on_missing,
                            error=f"{json_path}: image id {img['id']!r}: file {img['file_name']!r} not found under "
                                  f"{image_root} (set the source's image_root to the folder file_name is relative to)")
            absent.add(path)
        images[img["id"]] = path
        declared[img["id"]] = (img.get("width"), img.get("height"))

    scan = scan_files([p for p in images.values() if p not in absent], progress=progress,
                      description=f"reading {json_path.name}", max_pixels=max_pixels)
    ids = scan.id_of()
    by_id = {it.id: it for it in scan.items}
    per_image: dict[Any, list[Box]] = {k: [] for k in images}
    problem: dict[Any, str] = {}
    sizes: dict[Any, Item] = {}
    for img_id, path in images.items():
        if path in ids:
            it = by_id[ids[path]]
            sizes[img_id] = it
            try:
                size_check(declared[img_id], it, where=f"{json_path}: image id {img_id!r}")
            except LabelProblem as e:
                problem[img_id] = reason_of(str(e), json_path)

    for ann in data["annotations"]:
        where = f"{json_path}: annotation id {ann.get('id') if isinstance(ann, dict) else None!r}"
        if not isinstance(ann, dict) or ann.get("image_id") not in images:
            got = ann.get("image_id") if isinstance(ann, dict) else ann
            reading.quarantined.append(Quarantined(json_path, f"{reason_of(where, json_path)}: image_id {got!r} "
                                                   "is not in 'images'; annotation skipped"))
            continue
        img_id = ann["image_id"]
        if img_id not in sizes or img_id in problem:  # image quarantined, or already left out
            continue
        try:
            box = _coco_box(ann, cats, sizes[img_id], where=where, multipart=multipart, reading=reading)
        except DegenerateBox as e:
            reading.skip_object(json_path, reason_of(str(e), json_path))
            continue
        except LabelProblem as e:
            problem[img_id] = reason_of(str(e), json_path)
            continue
        reading.check_label(box.label, names, where=where)
        per_image[img_id].append(box)
    for img_id, why in problem.items():
        reading.drop_image(json_path, why, image=images[img_id])
    reading.raise_unknown(names, source=json_path, found=cats.values())
    per_path = [(images[k], None if k in problem else tuple(v), f"{json_path}: image id {k!r}")
                for k, v in per_image.items()]
    return assemble(scan, per_path, reading, names, source=json_path)


def _coco_box(ann: Mapping[str, Any], cats: Mapping[Any, str], it: Item, *, where: str, multipart: str,
              reading: Reading) -> Box:
    if ann.get("category_id") not in cats:
        raise LabelProblem(f"{where}: category_id {ann.get('category_id')!r} is not one of the categories "
                           f"{sorted(cats)!r}")
    label = cats[ann["category_id"]]
    bbox = ann.get("bbox")
    if not isinstance(bbox, list) or len(bbox) != 4:
        raise LabelProblem(f"{where}: bbox {bbox!r} is not [x, y, w, h]")
    x, y, bw, bh = (_num(v, where=where, what="bbox value") for v in bbox)
    if bw < 0 or bh < 0:
        raise LabelProblem(f"{where}: bbox {bbox!r} has a negative width or height")
    crowd = bool(ann.get("iscrowd", 0))
    seg = ann.get("segmentation") or []
    polygon = None
    if not crowd:  # a crowd region's RLE mask is not a polygon; its box is what evaluation uses
        if isinstance(seg, dict):
            raise LabelProblem(f"{where}: RLE segmentation on a non-crowd object is not supported; give polygons")
        if seg:
            if not isinstance(seg, list) or not all(isinstance(p, list) for p in seg):
                raise LabelProblem(f"{where}: segmentation {str(seg)[:60]!r} is not a list of flat polygons")
            parts = [pairs([_num(v, where=where, what="segmentation value") for v in part], where=where)
                     for part in seg]
            polygon = one_polygon(parts, multipart=multipart, where=where)
    return make_box(x, y, x + bw, y + bh, label, width=it.width, height=it.height, where=where, polygon=polygon,
                    crowd=crowd, difficult=bool(ann.get("difficult", 0)), reading=reading)


def coco_dict(
    items: Sequence[Item], boxes: Mapping[str, Sequence[Box]], *, classes: Sequence[str],
    image_root: Path | None = None,
) -> dict[str, Any]:
    """COCO instances dict: image ids 1..N in ``items`` order, category ids 1..C in
    ``classes`` order, ``bbox`` in pixels, ``segmentation`` = ``[flat polygon]`` or ``[]``,
    ``area`` = polygon area, else box area; crowd boxes with ``iscrowd: 1``, difficult ones
    with ``"difficult": 1`` (not a COCO key: other tools read them as ordinary objects).
    ``file_name`` is relative to ``image_root`` (else the file name, id-prefixed on clashes)."""
    names = check_classes(classes, where="coco export")
    boxes = check_write(items, boxes, names)
    index = {c: i + 1 for i, c in enumerate(names)}
    rel = unique_names(items, image_root)
    images: list[dict[str, Any]] = []
    anns: list[dict[str, Any]] = []
    for img_id, it in enumerate(items, start=1):
        images.append({"id": img_id, "file_name": rel[it.id], "width": it.width, "height": it.height})
        for k, b in enumerate(boxes[it.id]):
            cat = label_index(b, index, where=f"{it.path}: box {k}")
            seg = [[float(v) for xy in b.polygon for v in xy]] if b.polygon else []
            area = polygon_area(b.polygon) if b.polygon else (b.x2 - b.x1) * (b.y2 - b.y1)
            ann: dict[str, Any] = {
                "id": len(anns) + 1, "image_id": img_id, "category_id": cat,
                "bbox": [b.x1, b.y1, b.x2 - b.x1, b.y2 - b.y1],
                "segmentation": seg, "area": float(area), "iscrowd": int(b.crowd),
            }
            if b.difficult:
                ann["difficult"] = 1
            anns.append(ann)
    return {
        "images": images,
        "annotations": anns,
        "categories": [{"id": i, "name": c, "supercategory": ""} for c, i in index.items()],
    }


def write_coco(
    json_path: Path, items: Sequence[Item], boxes: Mapping[str, Sequence[Box]], *,
    classes: Sequence[str], image_root: Path | None = None,
) -> Path:
    """Write :func:`coco_dict` to ``json_path`` (atomically); returns the path."""
    data = coco_dict(items, boxes, classes=classes, image_root=image_root)
    atomic_write_text(Path(json_path), json.dumps(data))
    return Path(json_path)

