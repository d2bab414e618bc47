"""Pascal VOC XML.

One XML per image; ``<object><name>`` and ``<bndbox>`` ``xmin ymin xmax ymax`` in pixels, read
and written as continuous coordinates (no 1-based shift); ``<difficult>1</difficult>`` becomes
a ``difficult`` box. Polygons travel in an optional ``<polygon><x1/><y1/><x2/>...`` element (as
Roboflow writes it). ``ImageSets/Main/<split>.txt`` selects the images of a split. Tolerance
rules: :mod:`pseudolabel.data.formats.objects`.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from pathlib import Path, PureWindowsPath

from pseudolabel.data.errors import DataError, LabelProblem
from pseudolabel.data.formats.objects import (
    DegenerateBox,
    DetSet,
    Reading,
    assemble,
    check_classes,
    check_write,
    fmt_num,
    make_box,
    pairs,
    size_check,
    unique_names,
)
from pseudolabel.data.images import IMAGE_SUFFIXES
from pseudolabel.data.ingest import DEFAULT_MAX_PIXELS, OnMissing, check_on_missing, reason_of, scan_files
from pseudolabel.types import Box, Item
from pseudolabel.utils import atomic_write_text


def _xml_float(el: ET.Element | None, tag: str, *, where: str) -> float:
    node = None if el is None else el.find(tag)
    if node is None or node.text is None or not node.text.strip():
        raise LabelProblem(f"{where}: missing <{tag}>")
    try:
        return float(node.text.strip())
    except ValueError:
        raise LabelProblem(f"{where}: <{tag}> = {node.text.strip()!r} is not a number") from None


def _xml_flag(el: ET.Element, tag: str, *, where: str) -> bool:
    text = (el.findtext(tag) or "0").strip().lower()
    if text in ("0", "", "false", "no"):
        return False
    if text in ("1", "true", "yes"):
        return True
    raise LabelProblem(f"{where}: <{tag}> = {text!r} is not 0 or 1")


def _parse_xml(path: Path) -> ET.Element:
    try:
        return ET.parse(path).getroot()
    except ET.ParseError as e:
        raise LabelProblem(f"{path}:{e.position[0]}: not valid XML ({e})") from None


def read_voc_file(
    xml_path: Path, *, width: int, height: int, classes: Sequence[str] | None = None,
    reading: Reading | None = None,
) -> tuple[Box, ...]:
    """Objects of one VOC XML on a ``width`` x ``height`` image (see the module doc for units).

    ``<difficult>1</difficult>`` gives a ``difficult`` box. With ``reading``, zero-area boxes
    are skipped with a quarantine row and names not in ``classes`` are collected (reported by
    the caller); without it they raise. Other problems raise :class:`LabelProblem`."""
    xml_path = Path(xml_path)
    root = _parse_xml(xml_path)
    size = root.find("size")
    if size is not None and size.find("width") is not None and size.find("height") is not None:
        size_check((size.findtext("width", "").strip(), size.findtext("height", "").strip()),
                   Item("", xml_path, width, height), where=f"{xml_path}: <size>")
    out = []
    for k, obj in enumerate(root.findall("object"), start=1):
        where = f"{xml_path}: object {k}"
        name = (obj.findtext("name") or "").strip()
        if not name:
            raise LabelProblem(f"{where}: missing or empty <name>")
        if classes is not None and name not in classes:
            if reading is None:
                raise DataError(f"{where}: class {name!r} is not one of the accepted classes {list(classes)!r}")
            reading.check_label(name, classes, where=where)
        bb = obj.find("bndbox")
        if bb is None:
            raise LabelProblem(f"{where}: missing <bndbox>")
        x1, y1, x2, y2 = (_xml_float(bb, t, where=where) for t in ("xmin", "ymin", "xmax", "ymax"))
        polygon = None
        poly_el = obj.find("polygon")
        if poly_el is not None:
            flat: list[float] = []
            for i in range(1, len(poly_el) // 2 + 2):
                if poly_el.find(f"x{i}") is None and poly_el.find(f"y{i}") is None:
                    break
                flat += [_xml_float(poly_el, f"x{i}", where=where), _xml_float(poly_el, f"y{i}", where=where)]
            if len(poly_el) != len(flat):
                raise LabelProblem(f"{where}: <polygon> must hold x1 y1 x2 y2 ... in order "
                                   f"({len(poly_el)} children, {len(flat)} read)")
            polygon = pairs(flat, where=where)
        try:
            out.append(make_box(x1, y1, x2, y2, name, width=width, height=height, where=where, polygon=polygon,
                                difficult=_xml_flag(obj, "difficult", where=where), reading=reading))
        except DegenerateBox as e:
            if reading is None:
                raise
            reading.skip_object(xml_path, reason_of(str(e), xml_path))
    return tuple(out)


def voc_splits(voc_root: Path) -> list[str]:
    """Names of the split lists in ``voc_root/ImageSets/Main`` (``train``, ``val``, ...), not
    the per-class lists (``<class>_<split>.txt``)."""
    main = Path(voc_root) / "ImageSets" / "Main"
    if not main.is_dir():
        return []
    stems = sorted(p.stem for p in main.glob("*.txt"))
    return [s for s in stems if not any(s.endswith(f"_{t}") and s != t for t in stems)]


def _voc_ids(list_file: Path) -> list[str]:
    ids = []
    for line in list_file.read_text(encoding="utf-8-sig").splitlines():
        if line.strip():
            ids.append(line.split()[0])
    return ids


def _voc_image(xml: Path, root: ET.Element, *, folder: Path, reading: Reading, on_missing: OnMissing = "error"
               ) -> Path | None:
    """The image an annotation XML describes, under ``folder``: ``<filename>``; with a known
    image extension added when it has none (older LabelImg); ``<path>`` (as given, then its
    file name); the XML's own stem with a known extension. None exists: :class:`DataError`, or
    with ``on_missing="quarantine"`` a row for the first candidate in ``reading`` and ``None``."""
    tried: list[Path] = []
    exts = sorted(IMAGE_SUFFIXES) + sorted(s.upper() for s in IMAGE_SUFFIXES)

    def with_exts(stem: str) -> list[Path]:
        return [folder / f"{stem}{e}" for e in exts]

    fn = (root.findtext("filename") or "").strip()
    if fn:
        tried.append(folder / fn)
        if Path(fn).suffix.lower() not in IMAGE_SUFFIXES:
            tried += with_exts(fn)
    raw_path = (root.findtext("path") or "").strip()
    if raw_path:
        # LabelImg on Windows writes C:\...\img.jpg; PureWindowsPath reads both separators.
        tried.append(Path(raw_path))
        tried.append(folder / PureWindowsPath(raw_path).name)
    tried += with_exts(xml.stem)
    for p in tried:
        if p.is_file():
            return p
    shown = ", ".join(str(p) for p in tried[:3]) + (f" and {len(tried) - 3} more" if len(tried) > 3 else "")
    reading.missing(tried[0], f"image file not found (named by {xml})", on_missing=on_missing,
                    error=f"{xml}: image not found (<filename> {fn!r}, <path> {raw_path!r}); tried {shown}; set the "
                          "source's image_root to the images folder")
    return None


def read_voc(
    annotations_dir: Path, *, image_root: Path, classes: Sequence[str] | None = None, split: str | None = None,
    progress: bool = False, max_pixels: int | None = DEFAULT_MAX_PIXELS, on_missing: OnMissing = "error",
) -> DetSet:
    """Read the VOC XMLs under ``annotations_dir`` (recursive, sorted).

    ``split``: read only the ids listed in ``<annotations_dir>/../ImageSets/Main/<split>.txt``.
    Without ``split``, a VOC root with two or more split lists is an error (reading them all
    would mix train and val); with exactly one, that list is read; with none, every XML.

    The image of ``annotations_dir/a/b.xml`` is found under ``image_root/a/`` (see
    :func:`_voc_image` for the fallbacks). ``classes=None``: the sorted set of names found;
    otherwise names must be in ``classes`` (one error lists them all). A missing image, or an
    id of the split list without its XML, raises (``on_missing="quarantine"``: is quarantined);
    an undecodable image, or one of more than ``max_pixels`` pixels, is quarantined; an XML
    that does not parse or has a bad object leaves its image out (quarantined with the reason).
    """
    check_on_missing(on_missing)
    annotations_dir, image_root = Path(annotations_dir), Path(image_root)
    if not annotations_dir.is_dir():
        raise DataError(f"VOC annotations folder {annotations_dir} does not exist or is not a directory")
    names = None if classes is None else check_classes(classes, where=annotations_dir)
    reading = Reading()
    voc_root = annotations_dir.parent
    available = voc_splits(voc_root)
    main = voc_root / "ImageSets" / "Main"
    if split is None and len(available) > 1:
        raise DataError(f"{main} has the split lists {', '.join(available)}; reading every XML would mix them: "
                        "set the source's split to one of them")
    if split is None and len(available) == 1:
        split = available[0]
        reading.notes.append(f"{main / (split + '.txt')}: the only split list; read its ids")
    if split is not None:
        list_file = main / f"{split}.txt"
        if not list_file.is_file():
            raise DataError(f"VOC split list {list_file} does not exist; splits here: "
                            f"{', '.join(available) or 'none (leave split unset to read every XML)'}")
        xmls = []
        for i in _voc_ids(list_file):
            x = annotations_dir / f"{i}.xml"
            if not x.is_file():
                reading.missing(x, f"annotation file not found (id {i!r} listed in {list_file})",
                                on_missing=on_missing, error=f"{list_file}: id {i!r} has no annotation file {x}")
                continue
            xmls.append(x)
    else:
        xmls = sorted(annotations_dir.rglob("*.xml"))
    pairs_: list[tuple[Path, Path]] = []
    for x in xmls:
        try:
            root = _parse_xml(x)
        except LabelProblem as e:
            reading.drop_image(x, reason_of(str(e), x))
            continue
        img = _voc_image(x, root, folder=image_root / x.relative_to(annotations_dir).parent, reading=reading,
                         on_missing=on_missing)
        if img is not None:
            pairs_.append((x, img))
    scan = scan_files([p for _, p in pairs_], progress=progress, description=f"reading {annotations_dir}",
                      max_pixels=max_pixels)
    ids = scan.id_of()
    by_id = {it.id: it for it in scan.items}
    per_path: list[tuple[Path, tuple[Box, ...] | None, str]] = []
    for x, img in pairs_:
        if img not in ids:
            continue
        it = by_id[ids[img]]
        try:
            bxs: tuple[Box, ...] | None = read_voc_file(x, width=it.width, height=it.height, classes=names,
                                                        reading=reading)
        except LabelProblem as e:
            reading.drop_image(x, reason_of(str(e), x), image=img)
            bxs = None
        per_path.append((img, bxs, str(x)))
    found = {b.label for _, bxs, _ in per_path for b in bxs or ()}
    reading.raise_unknown(names, source=annotations_dir, found=found)
    if names is None:
        names = tuple(sorted(found))
    return assemble(scan, per_path, reading, names, source=annotations_dir)


def voc_xml(item: Item, boxes: Sequence[Box], *, filename: str | None = None) -> str:
    """VOC XML text for one image (pixel coordinates; polygon in ``<polygon>`` if any;
    ``<difficult>1</difficult>`` for difficult boxes and for crowd regions — VOC has no crowd
    flag, and difficult is what keeps a region out of training and evaluation there)."""
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = Path(item.path).parent.name
    ET.SubElement(root, "filename").text = filename or Path(item.path).name
    size = ET.SubElement(root, "size")
    ET.SubElement(size, "width").text = str(item.width)
    ET.SubElement(size, "height").text = str(item.height)
    ET.SubElement(size, "depth").text = "3"
    ET.SubElement(root, "segmented").text = "1" if any(b.polygon for b in boxes) else "0"
    for b in boxes:
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = b.label
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = "0"
        ET.SubElement(obj, "difficult").text = "1" if (b.difficult or b.crowd) else "0"
        bb = ET.SubElement(obj, "bndbox")
        for tag, v in (("xmin", b.x1), ("ymin", b.y1), ("xmax", b.x2), ("ymax", b.y2)):
            ET.SubElement(bb, tag).text = fmt_num(v)
        if b.polygon:
            poly = ET.SubElement(obj, "polygon")
            for i, (x, y) in enumerate(b.polygon, start=1):
                ET.SubElement(poly, f"x{i}").text = fmt_num(x)
                ET.SubElement(poly, f"y{i}").text = fmt_num(y)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


def write_voc(
    annotations_dir: Path, items: Sequence[Item], boxes: Mapping[str, Sequence[Box]], *,
    classes: Sequence[str] | None = None, image_root: Path | None = None,
) -> dict[str, Path]:
    """One XML per item under ``annotations_dir`` (mirroring ``image_root``'s sub-folders,
    else named after the image, id-prefixed on clashes); returns id -> XML path.
    ``classes``, when given, is checked against every box label."""
    names = None if classes is None else check_classes(classes, where=annotations_dir)
    boxes = check_write(items, boxes, names)
    rel = unique_names(items, image_root)
    out = {}
    for it in items:
        path = Path(annotations_dir) / Path(rel[it.id]).with_suffix(".xml")
        atomic_write_text(path, voc_xml(it, boxes[it.id], filename=Path(rel[it.id]).name))
        out[it.id] = path
    return out

