"""read(write(x)) == x for every label format, and for every pair of formats that can hold x.

Hypothesis draws small data sets (real PNG files of random sizes, 0-4 objects each, corners on
a quarter-pixel grid that includes the image edges, polygons of 3-6 points) for each kind of
content; each data set is written in format A, read back, written in format B and read back,
for every pair (A, B) of the formats that can represent that content:

============================  =============================================================
content                       formats
============================  =============================================================
boxes                         yolo, coco, voc, labelme, cvat, labelstudio
polygons (box = its bounds)   yolo (segment), coco, voc, labelme, cvat, labelstudio (segment)
boxes and polygons mixed      coco, voc, labelme, cvat, labelstudio (segment)
difficult objects             coco (its "difficult" key), voc, labelme, cvat
crowd and difficult objects   coco, labelme, cvat
classification                imagefolder, csv, labelme, cvat, labelstudio
============================  =============================================================

Tolerance: 1e-6 px (writers keep 12 significant digits; YOLO and Label Studio go through
normalised / percent values). YOLO is written with the classes in a shuffled order and a
``classes.txt``: reading it with the config's order must map the ids by name.
"""

from __future__ import annotations

import itertools
import os
import random
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from pseudolabel.data import formats
from pseudolabel.data.formats import cvat, labelme, labelstudio
from pseudolabel.data.ingest import scan_files
from pseudolabel.data.formats import DetSet, DetTask
from pseudolabel.types import Box, Item

CLASSES = ("cat", "dog", "bird")
TOL = 1e-6

KINDS: dict[str, tuple[str, ...]] = {
    "boxes": ("yolo", "coco", "voc", "labelme", "cvat", "labelstudio"),
    "polygons": ("yolo", "coco", "voc", "labelme", "cvat", "labelstudio"),
    "mixed": ("coco", "voc", "labelme", "cvat", "labelstudio"),
    "difficult": ("coco", "voc", "labelme", "cvat"),
    "crowd": ("coco", "labelme", "cvat"),
}
CLASSIFY_FORMATS = ("imagefolder", "csv", "labelme", "cvat", "labelstudio")


# --------------------------------------------------------------------------- data sets


@st.composite
def boxes_on(draw: st.DrawFn, w: int, h: int, kind: str) -> tuple[Box, ...]:
    """0-4 objects on a ``w`` x ``h`` image, corners on a quarter-pixel grid (edges included)."""
    def coord(side: int) -> st.SearchStrategy[float]:
        return st.one_of(st.just(0.0), st.just(float(side)), st.integers(0, side * 4).map(lambda v: v / 4))

    out = []
    for _ in range(draw(st.integers(0, 4))):
        label = draw(st.sampled_from(CLASSES))
        with_polygon = kind == "polygons" or (kind == "mixed" and draw(st.booleans()))
        if with_polygon:
            n = draw(st.integers(3, 6))
            pts = draw(st.lists(st.tuples(coord(w), coord(h)), min_size=n, max_size=n, unique=True))
            xs, ys = [p[0] for p in pts], [p[1] for p in pts]
            if max(xs) - min(xs) < 0.25 or max(ys) - min(ys) < 0.25:
                continue
            out.append(Box(min(xs), min(ys), max(xs), max(ys), label, polygon=tuple(pts)))
            continue
        x1, x2 = sorted(draw(st.lists(coord(w), min_size=2, max_size=2, unique=True)))
        y1, y2 = sorted(draw(st.lists(coord(h), min_size=2, max_size=2, unique=True)))
        crowd = kind == "crowd" and draw(st.booleans())
        difficult = kind in ("crowd", "difficult") and not crowd and draw(st.booleans())
        out.append(Box(x1, y1, x2, y2, label, crowd=crowd, difficult=difficult))
    return tuple(out)


@st.composite
def data_sets(draw: st.DrawFn, kind: str) -> list[tuple[int, int, int, tuple[Box, ...]]]:
    """1-3 images: ``(width, height, seed, boxes)``."""
    n = draw(st.integers(1, 3))
    out = []
    for i in range(n):
        w, h = draw(st.integers(4, 48)), draw(st.integers(4, 48))
        out.append((w, h, i, draw(boxes_on(w, h, kind))))
    return out


def _images(root: Path, spec: Sequence[tuple[int, int, int, object]]) -> list[Item]:
    paths = []
    for w, h, i, _ in spec:
        arr = np.random.default_rng([w, h, i]).integers(0, 255, (h, w, 3), dtype=np.uint8)
        p = root / "images" / f"img{i}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(p)
        paths.append(p)
    items = scan_files(paths).items
    assert len(items) == len(spec)
    return items


# --------------------------------------------------------------------------- one format


def write_read(fmt: str, folder: Path, items: Sequence[Item], boxes: Mapping[str, Sequence[Box]], *,
               task: DetTask) -> DetSet:
    """Write ``boxes`` in ``fmt`` under ``folder`` (images stay in ``<root>/images``), read back."""
    img_dir = Path(items[0].path).parent
    folder.mkdir(parents=True)
    if fmt == "yolo":
        shuffled = list(CLASSES)
        random.Random(len(items)).shuffle(shuffled)
        formats.write_yolo(folder / "labels", items, boxes, classes=shuffled, task=task, image_root=img_dir)
        formats.yolo.write_yolo_names(folder / "classes.txt", shuffled)
        return formats.read_yolo(img_dir, folder / "labels", classes=CLASSES, task=task)
    if fmt == "coco":
        formats.write_coco(folder / "c.json", items, boxes, classes=CLASSES, image_root=img_dir)
        return formats.read_coco(folder / "c.json", image_root=img_dir, classes=CLASSES)
    if fmt == "voc":
        formats.write_voc(folder / "Annotations", items, boxes, classes=CLASSES, image_root=img_dir)
        return formats.read_voc(folder / "Annotations", image_root=img_dir, classes=CLASSES)
    if fmt == "labelme":
        labelme.write_labelme(folder, items, boxes, classes=CLASSES, image_root=img_dir)
        return labelme.read_labelme(folder, classes=CLASSES)
    if fmt == "cvat":
        cvat.write_cvat(folder / "annotations.xml", items, boxes, classes=CLASSES, image_root=img_dir)
        return cvat.read_cvat(folder / "annotations.xml", classes=CLASSES, image_root=img_dir)
    if fmt == "labelstudio":
        labelstudio.write_labelstudio(folder / "export.json", items, boxes, classes=CLASSES,
                                      document_root=img_dir.parent, task=task)
        return labelstudio.read_labelstudio(folder / "export.json", classes=CLASSES, image_root=img_dir.parent)
    raise AssertionError(fmt)


def assert_same(want: Mapping[str, Sequence[Box]], got: Mapping[str, Sequence[Box]], *, what: str) -> None:
    assert set(want) == set(got), what
    for k in want:
        a, b = want[k], got[k]
        assert len(a) == len(b), f"{what}: {a} != {b}"
        for p, q in zip(a, b):
            assert (p.label, p.crowd, p.difficult) == (q.label, q.crowd, q.difficult), f"{what}: {p} != {q}"
            assert max(abs(p.x1 - q.x1), abs(p.y1 - q.y1), abs(p.x2 - q.x2), abs(p.y2 - q.y2)) <= TOL, f"{what}: {p} != {q}"
            assert (p.polygon is None) == (q.polygon is None), f"{what}: {p} != {q}"
            if p.polygon is not None and q.polygon is not None:
                assert len(p.polygon) == len(q.polygon), f"{what}: {p} != {q}"
                assert np.abs(np.asarray(p.polygon) - np.asarray(q.polygon)).max() <= TOL, f"{what}: {p} != {q}"


def _check_pairs(spec: list[tuple[int, int, int, tuple[Box, ...]]], kind: str) -> None:
    task: DetTask = "segment" if kind in ("polygons", "mixed") else "detect"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        items = _images(root, spec)
        x = {it.id: s[3] for it, s in zip(items, spec)}
        fmts = KINDS[kind]
        for a, b in itertools.product(fmts, fmts):
            first = write_read(a, root / f"{a}-{b}" / "a", items, x, task=task)
            assert not first.quarantined and first.clipped == 0, (a, first.quarantined)
            assert_same(x, first.boxes, what=f"read({a}(x))")
            second = write_read(b, root / f"{a}-{b}" / "b", first.items, first.boxes, task=task)
            assert not second.quarantined and second.clipped == 0, (b, second.quarantined)
            assert_same(x, second.boxes, what=f"read({b}(read({a}(x))))")


_SETTINGS = settings(max_examples=12, deadline=None, derandomize=True,
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.mark.parametrize("kind", sorted(KINDS))
@_SETTINGS
@given(data=st.data())
def test_every_format_pair_round_trips(kind: str, data: st.DataObject) -> None:
    _check_pairs(data.draw(data_sets(kind), label="data set"), kind)


# --------------------------------------------------------------------------- classification


def write_read_classes(fmt: str, folder: Path, items: Sequence[Item], labels: Mapping[str, str]) -> formats.LabelledSet:
    # After an imagefolder read the images sit in one folder per class: their common folder.
    img_dir = Path(os.path.commonpath([Path(it.path).parent for it in items]))
    folder.mkdir(parents=True)
    if fmt == "imagefolder":
        import shutil

        copied = []
        for it in items:
            dest = folder / labels[it.id] / Path(it.path).name
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(it.path, dest)
            copied.append(dest)
        return formats.read_imagefolder(folder, classes=CLASSES)
    if fmt == "csv":
        lines = ["path,label"] + [f"{Path(it.path).relative_to(img_dir).as_posix()},{labels[it.id]}" for it in items]
        (folder / "l.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
        return formats.read_csv_labels(folder / "l.csv", classes=CLASSES, image_root=img_dir)
    if fmt == "labelme":
        labelme.write_labelme_classes(folder, items, labels, classes=CLASSES, image_root=img_dir)
        return formats.read_labels("labelme", folder, classes=CLASSES)
    if fmt == "cvat":
        cvat.write_cvat_tags(folder / "annotations.xml", items, labels, classes=CLASSES, image_root=img_dir)
        return formats.read_labels("cvat", folder / "annotations.xml", classes=CLASSES, image_root=img_dir)
    if fmt == "labelstudio":
        labelstudio.write_labelstudio_choices(folder / "e.json", items, labels, classes=CLASSES,
                                              document_root=img_dir.parent)
        return formats.read_labels("labelstudio", folder / "e.json", classes=CLASSES, image_root=img_dir.parent)
    raise AssertionError(fmt)


@_SETTINGS
@given(st.lists(st.sampled_from(CLASSES), min_size=1, max_size=4))
def test_every_classification_format_pair_round_trips(classes_drawn: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        items = _images(root, [(8 + i, 6, i, None) for i in range(len(classes_drawn))])
        x = {it.id: c for it, c in zip(items, classes_drawn)}
        for a, b in itertools.product(CLASSIFY_FORMATS, CLASSIFY_FORMATS):
            first = write_read_classes(a, root / f"{a}-{b}" / "a", items, x)
            assert first.labels == x and not first.quarantined, a
            by_id = {it.id: it for it in first.items}
            second = write_read_classes(b, root / f"{a}-{b}" / "b", [by_id[k] for k in x], first.labels)
            assert second.labels == x and not second.quarantined, (a, b)
