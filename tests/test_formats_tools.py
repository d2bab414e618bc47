"""Label files as other tools write them.

Two kinds of evidence:

- files written by a real tool in this environment: Label Studio's own converter
  (``label_studio_sdk.converter``, the SDK the project pins) turns a Label Studio JSON export
  into YOLO (``classes.txt`` sorted alphabetically), Pascal VOC (coordinates truncated with
  ``int()``) and COCO; its YOLO importer reads our YOLO export;
- hand-written files in each tool's exact layout, each citing where the layout comes from
  (the tool's writer or its documented example). Images are real PNGs written here.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pseudolabel.data import formats
from pseudolabel.data.errors import DataError
from pseudolabel.data.formats import labelstudio
from pseudolabel.data.ingest import scan_files
from pseudolabel.types import Box

# The case: the data set's own order, and the order Label Studio's YOLO export writes.
DATASET_ORDER = ("T-shirt_top", "Trouser", "Sneaker", "Bag")
SORTED_ORDER = ("Bag", "Sneaker", "T-shirt_top", "Trouser")


def _png(path: Path, w: int, h: int, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def _xyxy(b: Box) -> tuple[float, float, float, float]:
    return (b.x1, b.y1, b.x2, b.y2)


def _by_name(ds: formats.DetSet) -> dict[str, tuple[Box, ...]]:
    return {it.path.name: ds.boxes[it.id] for it in ds.items}


# --------------------------------------------------------------------------- Label Studio's own converter


def _rect(x: float, y: float, w: float, h: float, label: str, W: int, H: int, rid: str) -> dict:  # noqa: N803
    # A rectanglelabels region as Label Studio 1.x exports it (percent of the image).
    return {"id": rid, "type": "rectanglelabels", "from_name": "label", "to_name": "image", "origin": "manual",
            "original_width": W, "original_height": H, "image_rotation": 0,
            "value": {"x": x, "y": y, "width": w, "height": h, "rotation": 0, "rectanglelabels": [label]}}


@pytest.fixture
def ls_export(tmp_path: Path) -> Path:
    """A Label Studio JSON export ("Export -> JSON": a list of tasks with their annotations,
    the keys Label Studio 1.23 writes) over two local-files images under ``docroot/images``."""
    _png(tmp_path / "docroot" / "images" / "shirt_01.png", 160, 120, 1)
    _png(tmp_path / "docroot" / "images" / "bag_02.png", 100, 80, 2)
    tasks = [
        {"id": 1, "data": {"image": "/data/local-files/?d=images/shirt_01.png"},
         "annotations": [{"id": 11, "completed_by": 1, "was_cancelled": False, "ground_truth": False,
                          "lead_time": 3.2, "created_at": "2024-05-01T10:00:00.000000Z",
                          "updated_at": "2024-05-01T10:00:00.000000Z", "task": 1, "project": 1,
                          "result": [_rect(10.0, 12.5, 40.0, 50.0, "T-shirt_top", 160, 120, "a1"),
                                     _rect(60.0, 20.0, 30.4, 40.0, "Trouser", 160, 120, "a2"),
                                     # 0.64 px wide: Label Studio's VOC export writes xmin = xmax = 144
                                     _rect(90.0, 5.0, 0.4, 10.0, "Sneaker", 160, 120, "a3")]}],
         "drafts": [], "predictions": [], "meta": {}, "inner_id": 1, "total_annotations": 1,
         "cancelled_annotations": 0, "total_predictions": 0, "project": 1, "file_upload": None},
        {"id": 2, "data": {"image": "/data/local-files/?d=images/bag_02.png"},
         "annotations": [{"id": 12, "completed_by": 1, "was_cancelled": False, "ground_truth": False, "task": 2,
                          "result": [_rect(25.0, 25.0, 50.0, 50.0, "Bag", 100, 80, "b1")]}],
         "drafts": [], "predictions": [], "project": 1},
    ]
    path = tmp_path / "export.json"
    path.write_text(json.dumps(tasks, indent=2))
    (tmp_path / "config.xml").write_text(
        '<View><Image name="image" value="$image"/><RectangleLabels name="label" toName="image">'
        + "".join(f'<Label value="{c}"/>' for c in DATASET_ORDER) + "</RectangleLabels></View>")
    return path


def test_label_studio_converter_outputs_read_back(ls_export: Path) -> None:
    """Label Studio's converter writes YOLO / VOC / COCO from the export; each reads back as
    the export itself reads (ours), within what the format keeps."""
    from label_studio_sdk.converter import Converter

    root = ls_export.parent
    # Where the converter finds local-files images (what Label Studio's server passes it).
    conv = Converter(str(root / "config.xml"), project_dir=str(root), download_resources=False,
                     local_files_resolver=lambda d: str(root / "docroot" / d))
    for fmt in ("YOLO", "VOC", "COCO"):  # the entry point Label Studio's export uses
        conv.convert(str(ls_export), str(root / fmt.lower()), fmt, is_dir=False)

    want = _by_name(labelstudio.read_labelstudio(ls_export, classes=DATASET_ORDER, image_root=root / "docroot"))
    assert [b.label for b in want["shirt_01.png"]] == ["T-shirt_top", "Trouser", "Sneaker"]
    assert _xyxy(want["shirt_01.png"][1]) == pytest.approx((96.0, 24.0, 144.64, 72.0))

    # YOLO: classes.txt is sorted alphabetically, not in the label config's order.
    assert (root / "yolo" / "classes.txt").read_text().split() == list(SORTED_ORDER)
    yolo = formats.read_objects("yolo", root / "docroot" / "images", classes=DATASET_ORDER,
                                   labels=root / "yolo" / "labels")
    assert any("mapped by name" in n for n in yolo.notes)
    got = _by_name(yolo)
    for name, boxes in want.items():
        assert [b.label for b in got[name]] == [b.label for b in boxes]
        for p, q in zip(got[name], boxes):
            assert _xyxy(p) == pytest.approx(_xyxy(q), abs=1e-6)
    # Without its names file the ids would be read in the config's order: every label wrong,
    # which is why the reader says where the order came from.
    os.remove(root / "yolo" / "classes.txt")
    blind = formats.read_objects("yolo", root / "docroot" / "images", classes=DATASET_ORDER,
                                    labels=root / "yolo" / "labels")
    assert [b.label for b in _by_name(blind)["bag_02.png"]] == ["T-shirt_top"]
    assert any("no names file" in n for n in blind.notes)

    # VOC: int() truncation (within 1 px), and the 0.64 px box becomes xmin = xmax: skipped, with a row.
    voc = formats.read_objects("voc", root / "voc" / "Annotations", classes=DATASET_ORDER,
                                  image_root=root / "docroot" / "images")
    got = _by_name(voc)
    assert [b.label for b in got["shirt_01.png"]] == ["T-shirt_top", "Trouser"]
    for p, q in zip(got["shirt_01.png"], want["shirt_01.png"]):
        assert _xyxy(p) == pytest.approx(_xyxy(q), abs=1.0)
    (row,) = voc.quarantined
    assert row.path.name == "shirt_01.xml" and row.reason.startswith("object 3: zero-area box x1=144.0")

    # COCO: file_name relative to the JSON's folder ("../docroot/images/..."), pixel floats.
    coco = formats.read_objects("coco", root / "coco" / "result.json", classes=DATASET_ORDER)
    got = _by_name(coco)
    for name, boxes in want.items():
        assert [(b.label, *map(round, _xyxy(b), [6] * 4)) for b in got[name]] == \
               [(b.label, *map(round, _xyxy(b), [6] * 4)) for b in boxes]


def test_label_studio_yolo_importer_reads_our_export(tmp_path: Path) -> None:
    """Our YOLO export writes classes.txt; Label Studio's YOLO importer (which reads
    classes.txt, images/ and labels/ of one flat split) turns it back into the same boxes."""
    from label_studio_sdk.converter.imports.yolo import convert_yolo_to_ls

    a = _png(tmp_path / "src" / "a.png", 64, 48, 3)
    b = _png(tmp_path / "src" / "b.png", 40, 40, 4)
    items = scan_files([a, b]).items
    boxes = {items[0].id: (Box(0, 0, 16, 12, "Sneaker"), Box(32, 24, 64, 48, "Bag")),
             items[1].id: (Box(4, 4, 20, 36, "T-shirt_top"),)}
    out = tmp_path / "export"
    formats.export_labels("yolo", out, items, boxes, classes=DATASET_ORDER)
    assert (out / "classes.txt").read_text().split() == list(DATASET_ORDER)
    flat = tmp_path / "flat"  # the importer's layout: one split, no sub-folders
    flat.mkdir()
    (flat / "images").symlink_to(out / "images" / "train")
    (flat / "labels").symlink_to(out / "labels" / "train")
    shutil.copy(out / "classes.txt", flat / "classes.txt")
    convert_yolo_to_ls(str(flat), str(tmp_path / "tasks.json"), image_root_url="/data/local-files/?d=images",
                       image_ext=".png")
    back = labelstudio.read_labelstudio(tmp_path / "tasks.json", classes=DATASET_ORDER,
                                        image_root=out / "images" / "train")
    assert set(back.boxes) == set(boxes)
    for k, bs in boxes.items():
        assert [b.label for b in back.boxes[k]] == [b.label for b in bs]
        for p, q in zip(back.boxes[k], bs):
            assert _xyxy(p) == pytest.approx(_xyxy(q), abs=1e-9)


# --------------------------------------------------------------------------- YOLO layouts


def test_ultralytics_layout_maps_ids_by_data_yaml_names(tmp_path: Path) -> None:
    """Ultralytics' dataset layout (docs "Detect datasets"): data.yaml with path / train / val
    and names as {index: name}; images/<split>, labels/<split>. The data set's order is not the
    config's: ids are mapped by name, and a name the config lacks is an error showing both."""
    root = tmp_path / "fashion"
    root.mkdir()
    (root / "data.yaml").write_text(
        "path: ../fashion\ntrain: images/train\nval: images/val\nnames:\n  0: T-shirt_top\n  1: Trouser\n"
        "  2: Sneaker\n  3: Bag\n")
    _png(root / "images" / "train" / "0001.png", 28, 28)
    (root / "labels" / "train").mkdir(parents=True)
    (root / "labels" / "train" / "0001.txt").write_text("0 0.5 0.5 0.5 0.5\n3 0.25 0.25 0.1 0.1\n")
    ds = formats.read_objects("yolo", root / "images" / "train", classes=SORTED_ORDER)
    assert [b.label for b in next(iter(ds.boxes.values()))] == ["T-shirt_top", "Bag"]
    (note,) = [n for n in ds.notes if "mapped by name" in n]
    assert "data.yaml" in note and str(list(DATASET_ORDER)) in note and str(list(SORTED_ORDER)) in note
    with pytest.raises(DataError, match=r"'T-shirt_top' \(first at .*0001\.txt \(object 1\)\)\. Config classes "
                                        r"\(in order\): \['Bag', 'Sneaker', 'Trouser'\]"):
        formats.read_objects("yolo", root / "images" / "train", classes=("Bag", "Sneaker", "Trouser"))


def test_labelimg_classes_txt_among_the_label_files(tmp_path: Path) -> None:
    """LabelImg's YOLO mode saves classes.txt in the folder of the .txt labels: it is the
    names file, not a label file without an image."""
    _png(tmp_path / "imgs" / "a.png", 30, 20)
    (tmp_path / "lbl").mkdir()
    (tmp_path / "lbl" / "classes.txt").write_text("dog\ncat\n")
    (tmp_path / "lbl" / "a.txt").write_text("0 0.500000 0.500000 0.400000 0.500000\n")
    ds = formats.read_objects("yolo", tmp_path / "imgs", classes=("cat", "dog"), labels=tmp_path / "lbl")
    assert [b.label for b in next(iter(ds.boxes.values()))] == ["dog"]
    (tmp_path / "lbl" / "classes.txt").write_text("dog\n\ncat\n")
    with pytest.raises(DataError, match=r"classes\.txt:2: blank line between class names"):
        formats.read_objects("yolo", tmp_path / "imgs", classes=("cat", "dog"), labels=tmp_path / "lbl")


# --------------------------------------------------------------------------- COCO


def test_coco_official_layout_with_crowd_and_sparse_category_ids(tmp_path: Path) -> None:
    """instances_val2017.json's layout (cocodataset.org "Data format"): info / licenses,
    category ids not contiguous (1 person, 18 dog), iscrowd=1 objects with an RLE mask
    ({"counts": [...], "size": [h, w]}) and bbox, area."""
    _png(tmp_path / "val2017" / "000000000139.png", 64, 48)
    data = {
        "info": {"description": "COCO 2017 Dataset", "version": "1.0", "year": 2017},
        "licenses": [{"url": "http://creativecommons.org/licenses/by-nc-sa/2.0/", "id": 1, "name": "BY-NC-SA"}],
        "images": [{"license": 1, "file_name": "000000000139.png", "coco_url": "", "height": 48, "width": 64,
                    "date_captured": "2013-11-21 01:34:01", "flickr_url": "", "id": 139}],
        "annotations": [
            {"segmentation": [[10.5, 10.0, 30.25, 10.0, 30.25, 40.0, 10.5, 40.0]], "area": 592.5, "iscrowd": 0,
             "image_id": 139, "bbox": [10.5, 10.0, 19.75, 30.0], "category_id": 1, "id": 2001},
            {"segmentation": {"counts": [100, 20, 28, 20, 3000], "size": [48, 64]}, "area": 40.0, "iscrowd": 1,
             "image_id": 139, "bbox": [40.0, 2.0, 20.0, 20.0], "category_id": 18, "id": 900100139},
        ],
        "categories": [{"supercategory": "person", "id": 1, "name": "person"},
                       {"supercategory": "animal", "id": 18, "name": "dog"}],
    }
    path = tmp_path / "annotations" / "instances_val2017.json"
    path.parent.mkdir()
    path.write_text(json.dumps(data))
    ds = formats.read_objects("coco", path, classes=("dog", "person"), image_root=tmp_path / "val2017")
    person, dog = next(iter(ds.boxes.values()))
    assert person.label == "person" and not person.crowd and person.polygon is not None
    assert dog.label == "dog" and dog.crowd and dog.polygon is None and _xyxy(dog) == (40.0, 2.0, 60.0, 22.0)
    assert not ds.quarantined


# --------------------------------------------------------------------------- Pascal VOC


def _voc_root(root: Path) -> None:
    """VOC2012's devkit layout: Annotations/, JPEGImages/, ImageSets/Main/{train,val}.txt and
    the per-class lists <class>_<split>.txt ("id  1" / "id -1")."""
    for i, name in enumerate(("2008_000008", "2008_000015", "2008_000019")):
        _png(root / "JPEGImages" / f"{name}.png", 50, 40, i)
        difficult = "1" if name == "2008_000015" else "0"
        (root / "Annotations").mkdir(parents=True, exist_ok=True)
        (root / "Annotations" / f"{name}.xml").write_text(f"""<annotation>
	<folder>VOC2012</folder>
	<filename>{name}.png</filename>
	<source>
		<database>The VOC2008 Database</database>
		<annotation>PASCAL VOC2008</annotation>
		<image>flickr</image>
	</source>
	<size>
		<width>50</width>
		<height>40</height>
		<depth>3</depth>
	</size>
	<segmented>0</segmented>
	<object>
		<name>horse</name>
		<pose>Left</pose>
		<truncated>0</truncated>
		<occluded>1</occluded>
		<bndbox>
			<xmin>5</xmin>
			<ymin>4</ymin>
			<xmax>45</xmax>
			<ymax>40</ymax>
		</bndbox>
		<difficult>0</difficult>
	</object>
	<object>
		<name>person</name>
		<pose>Unspecified</pose>
		<truncated>1</truncated>
		<occluded>0</occluded>
		<bndbox>
			<xmin>1</xmin>
			<ymin>1</ymin>
			<xmax>10</xmax>
			<ymax>12</ymax>
		</bndbox>
		<difficult>{difficult}</difficult>
	</object>
</annotation>
""")
    main = root / "ImageSets" / "Main"
    main.mkdir(parents=True)
    (main / "train.txt").write_text("2008_000008\n2008_000015\n")
    (main / "val.txt").write_text("2008_000019\n")
    (main / "horse_train.txt").write_text("2008_000008  1\n2008_000015  1\n")


def test_voc_devkit_splits_and_difficult(tmp_path: Path) -> None:
    _voc_root(tmp_path / "VOC2012")
    ann = tmp_path / "VOC2012" / "Annotations"
    assert formats.voc.voc_splits(tmp_path / "VOC2012") == ["train", "val"]  # horse_train is a class list
    with pytest.raises(DataError, match=r"split lists train, val; reading every XML would mix them"):
        formats.read_objects("voc", ann, classes=("horse", "person"))
    train = formats.read_objects("voc", ann, classes=("horse", "person"), split="train")
    val = formats.read_objects("voc", ann, classes=("horse", "person"), split="val")
    assert sorted(_by_name(train)) == ["2008_000008.png", "2008_000015.png"]
    assert sorted(_by_name(val)) == ["2008_000019.png"]
    flags = {n: [b.difficult for b in bs] for n, bs in _by_name(train).items()}
    assert flags == {"2008_000008.png": [False, False], "2008_000015.png": [False, True]}
    with pytest.raises(DataError, match=r"test\.txt does not exist; splits here: train, val"):
        formats.read_objects("voc", ann, classes=("horse", "person"), split="test")


def test_voc_labelimg_file_without_extension_and_windows_path(tmp_path: Path) -> None:
    """Older LabelImg (PascalVocWriter) writes <filename> without the extension and <path>
    as the absolute path on the labeller's machine (a Windows one here)."""
    _png(tmp_path / "imgs" / "IMG_0042.png", 40, 30)
    _png(tmp_path / "imgs" / "other.png", 40, 30, 1)
    (tmp_path / "ann").mkdir()
    (tmp_path / "ann" / "IMG_0042.xml").write_text("""<annotation verified="no">
  <folder>imgs</folder>
  <filename>IMG_0042</filename>
  <path>C:\\Users\\me\\Desktop\\imgs\\IMG_0042.png</path>
  <source>
    <database>Unknown</database>
  </source>
  <size>
    <width>40</width>
    <height>30</height>
    <depth>3</depth>
  </size>
  <segmented>0</segmented>
  <object>
    <name>cat</name>
    <pose>Unspecified</pose>
    <truncated>0</truncated>
    <difficult>0</difficult>
    <bndbox>
      <xmin>3</xmin>
      <ymin>4</ymin>
      <xmax>20</xmax>
      <ymax>25</ymax>
    </bndbox>
  </object>
</annotation>
""")
    # Only <path> says which image: its file name is found under the image folder.
    (tmp_path / "ann" / "shot.xml").write_text(
        "<annotation><filename></filename><path>C:\\data\\other.png</path><size><width>40</width>"
        "<height>30</height></size></annotation>")
    ds = formats.read_objects("voc", tmp_path / "ann", classes=("cat",), image_root=tmp_path / "imgs")
    got = _by_name(ds)
    assert [_xyxy(b) for b in got["IMG_0042.png"]] == [(3, 4, 20, 25)] and got["other.png"] == ()


# --------------------------------------------------------------------------- Labelme


def _labelme5(image: str, shapes: list[dict], w: int, h: int, flags: dict | None = None) -> str:
    # Labelme 5's LabelFile.save (labelme/_label_file.py): version, flags, shapes, imagePath,
    # imageData, imageHeight, imageWidth; each shape label, points, group_id, description,
    # shape_type, flags, mask; json.dump(..., ensure_ascii=False, indent=2).
    return json.dumps({"version": "5.5.0", "flags": flags or {}, "shapes": shapes, "imagePath": image,
                       "imageData": None, "imageHeight": h, "imageWidth": w}, ensure_ascii=False, indent=2)


def _shape(label: str, points: list, kind: str, group: int | None = None, flags: dict | None = None) -> dict:
    return {"label": label, "points": points, "group_id": group, "description": "", "shape_type": kind,
            "flags": flags or {}, "mask": None}


def test_labelme_files_as_labelme_writes_them(tmp_path: Path) -> None:
    d = tmp_path / "data_annotated"
    _png(d / "2011_000025.png", 100, 80, 1)
    _png(d / "2011_000006.png", 60, 50, 2)
    _png(d / "sub" / "three.png", 60, 50, 3)
    _png(d / "circle.png", 60, 50, 4)
    # Labelme 5: a polygon, a rectangle drawn from bottom-right to top-left with a per-shape
    # difficult flag (--labelflags), a rectangle and a polygon grouped into one object.
    (d / "2011_000025.json").write_text(_labelme5("2011_000025.png", [
        _shape("bus", [[26.0, 2.3], [19.4, 2.0], [12.5, 4.0], [8.9, 10.2], [42.9, 37.4]], "polygon"),
        _shape("car", [[90.5, 60.0], [41.0, 16.9]], "rectangle", flags={"difficult": True}),
        _shape("car", [[0, 60], [10, 70]], "rectangle", group=3),
        _shape("car", [[20, 60], [40, 60], [40, 79], [20, 79]], "polygon", group=3),
    ], 100, 80))
    # Labelme 3 (examples/bbox_detection before shape_type existed): line_color / fill_color,
    # polygons without shape_type, no version / imageHeight / imageWidth.
    (d / "2011_000006.json").write_text(json.dumps({
        "flags": {}, "shapes": [{"label": "person", "line_color": None, "fill_color": None,
                                 "points": [[40, 8], [47, 8], [47, 11], [40, 11]]}],
        "lineColor": [0, 255, 0, 128], "fillColor": [255, 0, 0, 128], "imagePath": "2011_000006.png",
        "imageData": None}, indent=2))
    # Saved on Windows: imagePath with backslashes, relative to the JSON.
    (d / "sub" / "three.json").write_text(_labelme5("..\\sub\\three.png", [], 60, 50))
    (d / "circle.json").write_text(_labelme5("circle.png", [_shape("car", [[30, 25], [35, 25]], "circle")], 60, 50))
    ds = formats.read_objects("labelme", d, classes=("bus", "car", "person"))
    got = _by_name(ds)
    assert "2011_000025.png" not in got
    grouped = formats.read_objects("labelme", d, classes=("bus", "car", "person"), multipart="largest")
    bus, car, two_parts = _by_name(grouped)["2011_000025.png"]
    assert bus.polygon is not None and _xyxy(bus) == (8.9, 2.0, 42.9, 37.4)
    assert _xyxy(car) == (41.0, 16.9, 90.5, 60.0) and car.difficult and car.polygon is None
    assert _xyxy(two_parts) == (0, 60, 40, 79)  # the box encloses both parts
    assert two_parts.polygon == ((20, 60), (40, 60), (40, 79), (20, 79))  # the larger part
    # Two parts, one object: quarantined by default (multipart) -- see the next test; here one
    # part is a rectangle, so with "largest" it is the polygon that stays. Default: left out.
    (person,) = got["2011_000006.png"]
    assert _xyxy(person) == (40, 8, 47, 11) and person.polygon is not None
    assert got["three.png"] == ()
    reasons = {q.path.name: q.reason for q in ds.quarantined}
    assert "shape_type 'circle' is not supported" in reasons["circle.json"]
    assert "2 polygon parts" in reasons["2011_000025.json"] and "multipart: largest" in reasons["2011_000025.json"]


def test_labelme_classification_flags(tmp_path: Path) -> None:
    """examples/classification/data_annotated/0001.json: image-level flags with __ignore__."""
    for i, flags in enumerate([{"__ignore__": False, "cat": True, "dog": False},
                               {"__ignore__": True, "cat": False, "dog": True},
                               {"__ignore__": False, "cat": False, "dog": False}]):
        _png(tmp_path / f"000{i}.png", 20, 20, i)
        (tmp_path / f"000{i}.json").write_text(_labelme5(f"000{i}.png", [], 20, 20, flags))
    ls = formats.read_labels("labelme", tmp_path, classes=("cat", "dog"))
    assert list(ls.labels.values()) == ["cat"]
    assert sorted(q.reason.split(";")[0] for q in ls.quarantined) == [
        "flag __ignore__ is set", "no class flag is set (not classified yet)"]


# --------------------------------------------------------------------------- CVAT


CVAT_XML = """<?xml version="1.0" encoding="utf-8"?>
<annotations>
  <version>1.1</version>
  <meta>
    <task>
      <id>4</id>
      <name>segmentation</name>
      <size>3</size>
      <mode>annotation</mode>
      <overlap>0</overlap>
      <bugtracker></bugtracker>
      <flipped>False</flipped>
      <created>2018-09-25 11:34:24.617558+03:00</created>
      <updated>2018-09-25 11:38:27.301183+03:00</updated>
      <labels>
        <label>
          <name>car</name>
          <attributes>
          </attributes>
        </label>
        <label>
          <name>traffic_line</name>
          <attributes>
          </attributes>
        </label>
        <label>
          <name>plate</name>
          <attributes>
            <attribute>
              <name>difficult</name>
              <mutable>False</mutable>
              <input_type>checkbox</input_type>
              <default_value>false</default_value>
              <values>false
true</values>
            </attribute>
          </attributes>
        </label>
      </labels>
      <owner>
        <username>admin</username>
        <email></email>
      </owner>
    </task>
    <dumped>2018-09-25 11:38:28.799808+03:00</dumped>
  </meta>
  <image id="0" name="filename000.png" width="160" height="120">
    <box label="plate" source="manual" occluded="0" xtl="79.73" ytl="87.09" xbr="96.55" ybr="92.89" z_order="4">
      <attribute name="difficult">true</attribute>
    </box>
    <polygon label="car" source="manual" occluded="0" points="56.13,91.62;56.13,84.28;55.47,76.16;60.98,50.95;105.80,56.46;120.38,91.62" z_order="1">
    </polygon>
    <tag label="good_frame" source="manual">
    </tag>
  </image>
  <image id="1" name="sub/filename001.png" width="160" height="120">
    <polyline label="traffic_line" source="manual" occluded="0" points="46.21,0.00;12.68,120.00" z_order="3">
    </polyline>
    <box label="car" source="manual" occluded="0" xtl="10.00" ytl="10.00" xbr="20.00" ybr="20.00" z_order="0">
    </box>
  </image>
  <image id="2" name="filename002.png" width="160" height="120">
  </image>
</annotations>
"""


def test_cvat_for_images_export(tmp_path: Path) -> None:
    """CVAT's "XML annotation format" page example (version 1.1, annotation mode) in its
    export layout: annotations.xml beside images/. A <polyline> leaves its image out."""
    for i, name in enumerate(("filename000.png", "sub/filename001.png", "filename002.png")):
        _png(tmp_path / "images" / name, 160, 120, i)
    (tmp_path / "annotations.xml").write_text(CVAT_XML)
    ds = formats.read_objects("cvat", tmp_path / "annotations.xml", classes=("car", "plate", "traffic_line"))
    got = _by_name(ds)
    plate, car = got["filename000.png"]
    assert plate.difficult and _xyxy(plate) == (79.73, 87.09, 96.55, 92.89)
    assert car.polygon is not None and _xyxy(car) == (55.47, 50.95, 120.38, 91.62)
    assert got["filename002.png"] == () and "filename001.png" not in got
    (q,) = ds.quarantined
    assert "<polyline> is not supported" in q.reason and "filename001.png left out" in q.reason
    with pytest.raises(DataError, match=r"'plate' \(first at .*\)\. Config classes \(in order\): \['car'\]; names in "
                                        r"the files: \['car', 'plate', 'traffic_line'\]"):
        formats.read_objects("cvat", tmp_path / "annotations.xml", classes=("car",))
    # The same file as classification: one <tag> per image.
    tags = formats.read_labels("cvat", tmp_path / "annotations.xml", classes=("good_frame", "bad_frame"))
    assert list(tags.labels.values()) == ["good_frame"] and len(tags.quarantined) == 2


# --------------------------------------------------------------------------- Label Studio JSON export


def test_label_studio_export_annotations_predictions_and_uploads(tmp_path: Path) -> None:
    """Which annotation counts: cancelled ones (skips) never; predictions never; a task
    without annotation is not labelled; uploads resolve by file name (with or without the
    8-character prefix Label Studio adds)."""
    _png(tmp_path / "media" / "upload" / "3" / "0ab1c2d3-photo.png", 80, 60, 1)
    _png(tmp_path / "media" / "upload" / "3" / "77aa88bb-second.png", 80, 60, 2)
    _png(tmp_path / "media" / "upload" / "3" / "9f9f9f9f-third.png", 80, 60, 3)
    _png(tmp_path / "media" / "upload" / "3" / "12345678-fourth.png", 40, 60, 4)
    r = _rect(10, 10, 50, 50, "car", 80, 60, "x")
    tasks = [
        {"id": 21, "data": {"image": "/data/upload/3/0ab1c2d3-photo.png"},
         "annotations": [{"id": 1, "was_cancelled": True, "result": []},
                         {"id": 2, "was_cancelled": False, "ground_truth": False, "result": [r]}],
         "predictions": [{"model_version": "v1", "score": 0.5, "result": [_rect(0, 0, 10, 10, "bus", 80, 60, "p")]}]},
        {"id": 22, "data": {"image": "/data/upload/3/77aa88bb-second.png"}, "annotations": [],
         "predictions": [{"result": [r]}]},
        {"id": 23, "data": {"image": "/data/upload/3/9f9f9f9f-third.png"},
         "annotations": [{"id": 3, "result": [r]}, {"id": 4, "result": [_rect(10, 10, 50, 50, "bus", 80, 60, "y")]}]},
        # Label Studio saw a 80x60 image, the file is 40x60: another image, left out.
        {"id": 24, "data": {"image": "/data/upload/3/12345678-fourth.png"}, "annotations": [{"id": 5, "result": [r]}]},
    ]
    path = tmp_path / "project-3-at-2024-05-01.json"
    path.write_text(json.dumps(tasks))
    ds = formats.read_objects("labelstudio", path, classes=("bus", "car"), image_root=tmp_path / "media")
    ((name, (b,)),) = _by_name(ds).items()
    assert name == "0ab1c2d3-photo.png" and b.label == "car" and _xyxy(b) == pytest.approx((8, 6, 48, 36))
    reasons = sorted(q.reason for q in ds.quarantined)
    assert reasons[0].startswith("task 22: no annotation")
    assert reasons[1].startswith("task 23: annotations 3 and 4 disagree")
    assert reasons[2].startswith("task 24 region 1: Label Studio saw a 80x60 image but 12345678-fourth.png is 40x60")
