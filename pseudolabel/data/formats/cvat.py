"""CVAT for images 1.1 XML: one ``annotations.xml`` for a task (or project) export.

Layout (CVAT's "XML annotation format" page, docs.cvat.ai ``format-xml``; its writer is
``cvat/apps/dataset_manager/formats/cvat.py``; an export zip holds ``images/`` and
``annotations.xml``)::

    <annotations><version>1.1</version>
      <meta><task>...<labels><label><name>car</name>...</label></labels>...</task></meta>
      <image id="0" name="sub/a.jpg" width="640" height="480">
        <box label="car" source="manual" occluded="0" xtl="10.50" ytl="20.00" xbr="100.25" ybr="80.00" z_order="0">
          <attribute name="difficult">false</attribute></box>
        <polygon label="car" source="manual" occluded="0" points="x0,y0;x1,y1;..." z_order="0"/>
        <tag label="day" source="manual"/>
      </image>
    </annotations>

Units: **pixels**, continuous (CVAT writes two decimals). ``name`` is the image path
relative to the images folder. A ``<box>`` with a non-zero ``rotation`` or any other shape
(``polyline``, ``points``, ``mask``, ``ellipse``, ``cuboid``, ``skeleton``) leaves the image out
(quarantined): a detector trained without those objects would learn them as background.
An attribute ``difficult`` / ``is_crowd`` (``true`` / ``1``) sets the box flags. ``<tag>``
is the class for classification. Video exports (``<track>``) are refused: export the task as
"CVAT for images". An ``<image>`` whose file does not exist is an error on a set's first read
(``on_missing="error"``), a quarantine row on a re-read (``on_missing="quarantine"``); images
of more than ``max_pixels`` pixels are quarantined.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from pathlib import Path

from pseudolabel.data.errors import DataError, LabelProblem
from pseudolabel.data.ingest import DEFAULT_MAX_PIXELS, OnMissing, check_on_missing, reason_of, scan_files
from pseudolabel.data.formats.labelled import LabelledSet, assemble_labels, single_class
from pseudolabel.data.formats.objects import (
    DegenerateBox,
    DetSet,
    Reading,
    assemble,
    check_classes,
    check_write,
    fmt_num,
    make_box,
    size_check,
    unique_names,
)
from pseudolabel.data.geometry import polygon_bounds
from pseudolabel.types import Box, Item
from pseudolabel.utils import atomic_write_text

SHAPES = ("box", "polygon")
OTHER_SHAPES = ("polyline", "points", "mask", "ellipse", "cuboid", "skeleton")
_TRUE = ("true", "1", "yes")
_CROWD = ("is_crowd", "iscrowd", "crowd")


def _root(xml_path: Path) -> ET.Element:
    xml_path = Path(xml_path)
    if xml_path.is_dir() and (xml_path / "annotations.xml").is_file():
        xml_path = xml_path / "annotations.xml"
    if not xml_path.is_file():
        raise DataError(f"CVAT annotations file {xml_path} does not exist (CVAT exports annotations.xml)")
    try:
        root = ET.parse(xml_path).getroot()
    except ET.ParseError as e:
        raise DataError(f"{xml_path}:{e.position[0]}: not valid XML ({e})") from None
    if root.tag != "annotations":
        raise DataError(f"{xml_path}: the root element is <{root.tag}>; a CVAT XML export starts with <annotations>")
    if root.find("track") is not None:
        raise DataError(f"{xml_path}: has <track> elements (CVAT for video); export the task as 'CVAT for images 1.1'")
    return root


def meta_labels(root: ET.Element) -> list[str]:
    """Label names declared in ``<meta>`` (task or project export), in file order."""
    out = []
    for lab in root.iterfind("./meta//labels/label"):
        name = (lab.findtext("name") or "").strip()
        if name and name not in out:
            out.append(name)
    return out


def _images(root: ET.Element, xml_path: Path, image_root: Path, *, reading: Reading, on_missing: OnMissing
            ) -> list[tuple[ET.Element, Path]]:
    """``(<image>, path)`` of every listed image that exists; a missing one raises, or with
    ``on_missing="quarantine"`` gets a row in ``reading``."""
    out = []
    seen: set[str] = set()
    for el in root.iterfind("image"):
        name = el.get("name")
        if not name:
            raise DataError(f"{xml_path}: <image id={el.get('id')!r}> has no name")
        if name in seen:
            raise DataError(f"{xml_path}: image {name!r} is listed twice")
        seen.add(name)
        path = image_root / name
        if not path.is_file():
            reading.missing(path, f"image file not found (<image name={name!r}> in {xml_path})",
                            on_missing=on_missing,
                            error=f"{xml_path}: image {name!r} not found under {image_root} (set the source's "
                                  "image_root to the folder the names are relative to; CVAT exports put them in "
                                  "images/)")
            continue
        out.append((el, path))
    return out


def _default_root(xml_path: Path, image_root: Path | None) -> tuple[Path, Path]:
    xml_path = Path(xml_path)
    if xml_path.is_dir():
        xml_path = xml_path / "annotations.xml"
    if image_root is not None:
        return xml_path, Path(image_root)
    images = xml_path.parent / "images"
    return xml_path, images if images.is_dir() else xml_path.parent


def _attr_flag(el: ET.Element, names: Sequence[str]) -> bool:
    for a in el.iterfind("attribute"):
        if (a.get("name") or "").strip().lower() in names and (a.text or "").strip().lower() in _TRUE:
            return True
    return False


def _float(el: ET.Element, name: str, *, where: str) -> float:
    v = el.get(name)
    if v is None:
        raise LabelProblem(f"{where}: missing attribute {name}")
    try:
        return float(v)
    except ValueError:
        raise LabelProblem(f"{where}: {name} = {v!r} is not a number") from None


def _points(text: str | None, *, where: str) -> list[tuple[float, float]]:
    pts = []
    for pair in (text or "").split(";"):
        if not pair.strip():
            continue
        xy = pair.split(",")
        try:
            if len(xy) != 2:
                raise ValueError
            pts.append((float(xy[0]), float(xy[1])))
        except ValueError:
            raise LabelProblem(f"{where}: point {pair!r} is not 'x,y'") from None
    if len(pts) < 3:
        raise LabelProblem(f"{where}: polygon has {len(pts)} point(s); at least 3 are needed")
    return pts


def read_cvat_image(
    el: ET.Element, *, item: Item, xml_path: Path, classes: Sequence[str] | None = None,
    reading: Reading | None = None,
) -> tuple[Box, ...]:
    """The objects of one ``<image>`` element on ``item``'s image (see the module doc)."""
    name = el.get("name")
    size_check((el.get("width"), el.get("height")), item, where=f"{xml_path}: image {name!r}")
    out = []
    for k, shape in enumerate(el, start=1):
        where = f"{xml_path}: image {name!r} <{shape.tag}> {k}"
        if shape.tag in ("tag", "attribute"):
            continue
        if shape.tag in OTHER_SHAPES:
            raise LabelProblem(f"{where}: <{shape.tag}> is not supported (box, polygon); convert it or remove it")
        if shape.tag not in SHAPES:
            continue
        label = (shape.get("label") or "").strip()
        if not label:
            raise LabelProblem(f"{where}: no label")
        if reading is not None:
            reading.check_label(label, classes, where=where)
        elif classes is not None and label not in classes:
            raise DataError(f"{where}: class {label!r} is not one of the accepted classes {list(classes)!r}")
        crowd, difficult = _attr_flag(shape, _CROWD), _attr_flag(shape, ("difficult",))
        polygon = None
        if shape.tag == "box":
            if shape.get("rotation") is not None and _float(shape, "rotation", where=where) % 360 != 0:
                raise LabelProblem(f"{where}: rotated box (rotation = {shape.get('rotation')}); an xyxy box "
                                   "cannot hold it")
            x1, y1, x2, y2 = (_float(shape, a, where=where) for a in ("xtl", "ytl", "xbr", "ybr"))
        else:
            polygon = _points(shape.get("points"), where=where)
            x1, y1, x2, y2 = polygon_bounds(polygon)
        try:
            out.append(make_box(x1, y1, x2, y2, label, width=item.width, height=item.height, where=where,
                                polygon=polygon, crowd=crowd, difficult=difficult, reading=reading))
        except DegenerateBox as e:
            if reading is None:
                raise
            reading.skip_object(xml_path, reason_of(str(e), xml_path))
    return tuple(out)


def read_cvat(
    xml_path: Path, *, classes: Sequence[str] | None, image_root: Path | None = None, progress: bool = False,
    max_pixels: int | None = DEFAULT_MAX_PIXELS, on_missing: OnMissing = "error",
) -> DetSet:
    """Read a CVAT for images XML (or a folder holding ``annotations.xml``): every
    ``<image>`` is in the set (one without shapes has no objects).

    ``image_root``: where ``name`` resolves (default ``images/`` beside the XML, CVAT's export
    layout, else the XML's folder). ``classes=None``: the ``<meta>`` labels (else the names
    found); otherwise every label used must be one (one error lists them all). ``max_pixels``,
    ``on_missing``: see the module doc."""
    check_on_missing(on_missing)
    xml_path, root_dir = _default_root(xml_path, image_root)
    root = _root(xml_path)
    declared = meta_labels(root)
    names = None if classes is None else check_classes(classes, where=xml_path)
    reading = Reading()
    images = _images(root, xml_path, root_dir, reading=reading, on_missing=on_missing)
    scan = scan_files([p for _, p in images], progress=progress, description=f"reading {xml_path.name}",
                      max_pixels=max_pixels)
    ids = scan.id_of()
    by_id = {it.id: it for it in scan.items}
    per_path: list[tuple[Path, tuple[Box, ...] | None, str]] = []
    for el, path in images:
        if path not in ids:
            continue
        try:
            bxs: tuple[Box, ...] | None = read_cvat_image(el, item=by_id[ids[path]], xml_path=xml_path,
                                                          classes=names, reading=reading)
        except LabelProblem as e:
            reading.drop_image(xml_path, reason_of(str(e), xml_path), image=path)
            bxs = None
        per_path.append((path, bxs, f"{xml_path}: image {el.get('name')!r}"))
    found = {b.label for _, bxs, _ in per_path for b in bxs or ()}
    reading.raise_unknown(names, source=xml_path, found=[*declared, *found])
    if names is None:
        names = tuple(declared) or tuple(sorted(found))
    return assemble(scan, per_path, reading, names, source=xml_path)


def read_cvat_tags(
    xml_path: Path, *, classes: Sequence[str], image_root: Path | None = None, progress: bool = False,
    max_pixels: int | None = DEFAULT_MAX_PIXELS, on_missing: OnMissing = "error",
) -> LabelledSet:
    """Classification from each ``<image>``'s ``<tag label>`` (a :class:`LabelledSet`). No tag
    (not classified yet) or several leave the image out (quarantined); a tag that is no class
    name is an error. ``max_pixels``, ``on_missing``: see the module doc."""
    check_on_missing(on_missing)
    xml_path, root_dir = _default_root(xml_path, image_root)
    root = _root(xml_path)
    names = check_classes(classes, where=xml_path)
    reading = Reading()
    images = _images(root, xml_path, root_dir, reading=reading, on_missing=on_missing)
    scan = scan_files([p for _, p in images], progress=progress, description=f"reading {xml_path.name}",
                      max_pixels=max_pixels)
    per_path: list[tuple[Path, str | None, str]] = []
    for el, path in images:
        where = f"{xml_path}: image {el.get('name')!r}"
        tags = [(t.get("label") or "").strip() for t in el.iterfind("tag")]
        label = single_class(tags, names, where=where, reading=reading, source=xml_path, image=path,
                             reason=f"image {el.get('name')!r}: ", none="no <tag> (not classified yet)",
                             several=f"{len(tags)} tags")
        if label is not None:
            per_path.append((path, label, where))
    return assemble_labels(scan, per_path, reading.quarantined, names, source=xml_path)


# --------------------------------------------------------------------------- writing


def _document(classes: Sequence[str], *, flags: bool, name: str, size: int) -> ET.Element:
    root = ET.Element("annotations")
    ET.SubElement(root, "version").text = "1.1"
    meta = ET.SubElement(root, "meta")
    task = ET.SubElement(meta, "task")
    ET.SubElement(task, "name").text = name
    ET.SubElement(task, "size").text = str(size)
    ET.SubElement(task, "mode").text = "annotation"
    labels = ET.SubElement(task, "labels")
    for c in classes:
        lab = ET.SubElement(labels, "label")
        ET.SubElement(lab, "name").text = c
        attrs = ET.SubElement(lab, "attributes")
        if flags:  # declared so that CVAT accepts the attributes on import
            for a in ("difficult", "is_crowd"):
                at = ET.SubElement(attrs, "attribute")
                ET.SubElement(at, "name").text = a
                ET.SubElement(at, "mutable").text = "False"
                ET.SubElement(at, "input_type").text = "checkbox"
                ET.SubElement(at, "default_value").text = "false"
                ET.SubElement(at, "values").text = "false\ntrue"
    return root


def cvat_xml(
    items: Sequence[Item], boxes: Mapping[str, Sequence[Box]] | None = None, *, classes: Sequence[str],
    names: Mapping[str, str], labels: Mapping[str, str] | None = None, task_name: str = "pseudolabel export",
) -> str:
    """CVAT for images 1.1 XML for ``items`` (``names``: item id -> image path relative to the
    images folder): ``<box>`` for a box, ``<polygon>`` for a box with a polygon, ``<tag>`` for
    a class from ``labels``."""
    flagged = boxes is not None and any(b.crowd or b.difficult for bs in boxes.values() for b in bs)
    root = _document(classes, flags=flagged, name=task_name, size=len(items))
    for i, it in enumerate(items):
        img = ET.SubElement(root, "image", {"id": str(i), "name": names[it.id], "width": str(it.width),
                                            "height": str(it.height)})
        for b in (boxes or {}).get(it.id, ()):
            common = {"label": b.label, "source": "manual", "occluded": "0"}
            if b.polygon:
                el = ET.SubElement(img, "polygon", common | {
                    "points": ";".join(f"{fmt_num(x)},{fmt_num(y)}" for x, y in b.polygon), "z_order": "0"})
            else:
                el = ET.SubElement(img, "box", common | {"xtl": fmt_num(b.x1), "ytl": fmt_num(b.y1),
                                                         "xbr": fmt_num(b.x2), "ybr": fmt_num(b.y2), "z_order": "0"})
            if flagged:
                ET.SubElement(el, "attribute", {"name": "difficult"}).text = "true" if b.difficult else "false"
                ET.SubElement(el, "attribute", {"name": "is_crowd"}).text = "true" if b.crowd else "false"
        if labels is not None:
            ET.SubElement(img, "tag", {"label": labels[it.id], "source": "manual"})
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def write_cvat(
    xml_path: Path, items: Sequence[Item], boxes: Mapping[str, Sequence[Box]], *, classes: Sequence[str],
    image_root: Path | None = None,
) -> Path:
    """Write a CVAT for images XML of ``items`` and their ``boxes`` (names relative to
    ``image_root``, else file names); returns the path."""
    names = check_classes(classes, where=xml_path)
    boxes = check_write(items, boxes, names)
    text = cvat_xml(items, boxes, classes=names, names=unique_names(items, image_root))
    atomic_write_text(Path(xml_path), text)
    return Path(xml_path)


def write_cvat_tags(
    xml_path: Path, items: Sequence[Item], labels: Mapping[str, str], *, classes: Sequence[str],
    image_root: Path | None = None,
) -> Path:
    """Write a CVAT for images XML with one ``<tag>`` per image (classification)."""
    names = check_classes(classes, where=xml_path)
    for it in items:
        if labels.get(it.id) not in names:
            raise DataError(f"{it.path}: class {labels.get(it.id)!r} is not one of the accepted classes {list(names)!r}")
    text = cvat_xml(items, None, classes=names, names=unique_names(items, image_root), labels=labels)
    atomic_write_text(Path(xml_path), text)
    return Path(xml_path)
