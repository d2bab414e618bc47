"""Files that vanish or change under the campaign, and images too large to decode safely.

Real files, real SQLite, real small models: a pool file deleted and a seed file replaced
between rounds never stop the next round (the item is gone, its labels kept, the new bytes are
a new item); a file deleted or replaced between select and push is not pushed; an image above
``data.max_pixels`` is quarantined from its header, so memory stays bounded; both hold in
every label format (YOLO, COCO, VOC, Labelme, CVAT, Label Studio, CSV)."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pseudolabel.sim.demo import demo_config, export_digits
from loops.ingest import ingest
from loops.round import ledger_for, run_round
from pseudolabel.config import load_config
from pseudolabel.data import ingest as ingest_mod
from pseudolabel.data.formats import read_csv_labels
from pseudolabel.data.images import sha256_file
from pseudolabel.data.ingest import (DEFAULT_MAX_PIXELS, PILLOW_MAX_PIXELS, read_quarantine_csv, recheck,
                                     scan_files, scan_folder)
from pseudolabel.types import Annotation, Item


def read_labelled(cfg, which: str):  # noqa: ANN001, ANN201
    """A labelled set read as the round's ingest reads it (the task's reader, first read)."""
    from pseudolabel.tasks import task_for

    return task_for(cfg).read(which)


def big_png(path: Path, width: int, height: int) -> Path:
    """A valid 8-bit grayscale PNG of ``width`` x ``height`` black pixels, written row by row
    (never held in memory: a 13000 x 13000 file is ~170 KB on disk, 169 M pixels decoded)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    z = zlib.compressobj(9)
    row = b"\0" * (width + 1)  # filter byte + pixels
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def _digits(tmp_path: Path, **over: object):  # noqa: ANN202
    data = export_digits(tmp_path / "data", seed_per_class=2, holdout=50, seed=0)
    raw = demo_config(tmp_path / "w", data.root, strategy="entropy", project="file-changes", **{
        "model.epochs": 2, "model.min_steps": 5, "model.image_size": 16, "stop.max_rounds": 5,
        "pseudo.enabled": False, **over})
    return data, load_config(data=raw, environ={})


# -- the pixel limit ----------------------------------------------------------------------------
def test_pixel_limit_quarantines_with_the_exact_size(tmp_path: Path) -> None:
    pool = tmp_path / "pool"
    pool.mkdir()
    Image.new("RGB", (40, 30), "white").save(pool / "small.png")
    Image.new("RGB", (50, 30), "white").save(pool / "wide.png")
    res = scan_folder(pool, max_pixels=1_200)
    assert [it.path.name for it in res.items] == ["small.png"]
    assert [(q.path.name, q.reason) for q in res.quarantined] == [
        ("wide.png", "image too large: 50x30 = 1,500 pixels > max_pixels 1,200 (raise data.max_pixels to accept it)")]
    # a file known from an earlier scan is not opened, and still held to the limit
    known = {k: v for k, v in scan_folder(pool, max_pixels=None).files.items()}
    again = scan_folder(pool, max_pixels=1_200, known=known)
    assert again.reused == 1 and [q.path.name for q in again.quarantined] == ["wide.png"]
    with pytest.raises(ValueError, match="max_pixels must be an int in"):
        scan_folder(pool, max_pixels=PILLOW_MAX_PIXELS + 1)
    assert load_config(data={**_digits_cfg_stub(tmp_path)}, environ={}).data.max_pixels == DEFAULT_MAX_PIXELS
    with pytest.raises(ValueError, match="max_pixels"):
        load_config(data={**_digits_cfg_stub(tmp_path), "data": {**_digits_cfg_stub(tmp_path)["data"],
                                                                "max_pixels": 200_000_000}}, environ={})


def _digits_cfg_stub(tmp_path: Path) -> dict:
    return demo_config(tmp_path / "w", tmp_path / "d", strategy="entropy", project="stub")


# Peak resident memory of a fresh process, from /proc (VmHWM): getrusage's ru_maxrss would
# include the forked pytest process's own peak, which Linux keeps across exec.
_PEAK = """
import sys, warnings
from pathlib import Path
from pseudolabel.data.ingest import scan_folder
warnings.simplefilter("ignore")
limit = None if sys.argv[2] == "none" else int(sys.argv[2])
res = scan_folder(Path(sys.argv[1]), max_pixels=limit)
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(len(res.items), len(res.quarantined), hwm // 1024)
"""


def test_a_13000_pixel_square_png_is_quarantined_without_decoding(tmp_path: Path) -> None:
    pool = tmp_path / "pool"
    pool.mkdir()
    big_png(pool / "huge.png", 13_000, 13_000)
    Image.new("RGB", (32, 32), "white").save(pool / "ok.png")
    res = scan_folder(pool)
    assert [q.reason for q in res.quarantined] == [
        "image too large: 13000x13000 = 169,000,000 pixels > max_pixels 40,000,000 (raise data.max_pixels to accept it)"]

    def peak_mib(limit: str) -> tuple[int, int, int]:
        out = subprocess.run([sys.executable, "-c", _PEAK, str(pool), limit], capture_output=True, text=True,
                             check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        n_items, n_quarantined, peak = map(int, out.stdout.split())
        return n_items, n_quarantined, peak

    items, quarantined, bounded = peak_mib(str(DEFAULT_MAX_PIXELS))
    assert (items, quarantined) == (1, 1)
    items, quarantined, unbounded = peak_mib("none")   # the release's behaviour: decoded in full
    assert (items, quarantined) == (2, 0)
    assert unbounded - bounded > 400, (bounded, unbounded)  # 169 M pixels as RGB = 507 MB


# -- recheck just before a push -------------------------------------------------------------------
def test_recheck_reads_only_what_changed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(4):
        p = tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    res = scan_folder(tmp_path)
    items = res.items
    hashed: list[Path] = []
    real = ingest_mod.sha256_file
    monkeypatch.setattr(ingest_mod, "sha256_file", lambda p: hashed.append(Path(p)) or real(p))

    paths[0].unlink()                                             # deleted
    Image.new("RGB", (8, 8), "red").save(paths[1])                # replaced: new bytes
    os.utime(paths[2], ns=(1, 1))                                 # touched: same bytes, new mtime
    ok, bad = recheck(items, res.files)
    assert [it.path for it in ok] == [paths[2], paths[3]]
    assert {i: q.reason for i, q in bad.items()} == {
        items[0].id: "file deleted since it was scanned",
        items[1].id: f"file changed since it was scanned: new bytes are item {real(paths[1])}"}
    assert hashed == [paths[1], paths[2]]                         # the unchanged file is not read
    ok, bad = recheck(items[3:])                                  # without records: hashed, still ok
    assert ok == items[3:] and bad == {}


# -- files deleted or replaced between rounds ------------------------------------------------------
def test_csv_set_missing_file_is_an_error_first_then_quarantined(tmp_path: Path) -> None:
    Image.new("RGB", (8, 8), "white").save(tmp_path / "a.png")
    (tmp_path / "labels.csv").write_text("path,label\na.png,x\nb.png,y\n")
    with pytest.raises(ValueError, match=r"labels.csv:3: image file 'b.png' not found"):
        read_csv_labels(tmp_path / "labels.csv")
    res = read_csv_labels(tmp_path / "labels.csv", on_missing="quarantine")
    assert len(res.items) == 1
    assert [(q.path.name, q.reason) for q in res.quarantined] == [
        ("b.png", f"image file not found (listed at {tmp_path / 'labels.csv'}:3)")]


def test_detection_sets_quarantine_a_deleted_image_when_asked(tmp_path: Path) -> None:
    import json

    from pseudolabel.data import formats

    img, lab, ann = tmp_path / "images", tmp_path / "labels", tmp_path / "ann"
    for d in (img, lab, ann):
        d.mkdir()
    Image.new("RGB", (40, 30), "white").save(img / "a.png")
    for name in ("a", "b"):
        (lab / f"{name}.txt").write_text("0 0.5 0.5 0.2 0.2\n")
        (ann / f"{name}.xml").write_text(
            f"<annotation><filename>{name}.png</filename><object><name>x</name><bndbox><xmin>1</xmin><ymin>1</ymin>"
            "<xmax>5</xmax><ymax>5</ymax></bndbox></object></annotation>")
    coco = tmp_path / "c.json"
    coco.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "b.png"}],
        "categories": [{"id": 1, "name": "x"}],
        "annotations": [{"id": i, "image_id": i, "category_id": 1, "bbox": [1, 1, 4, 4]} for i in (1, 2)]}))
    readers = {
        "yolo": lambda **kw: formats.read_yolo(img, lab, classes=["x"], **kw),
        "coco": lambda **kw: formats.read_coco(coco, image_root=img, classes=["x"], **kw),
        "voc": lambda **kw: formats.read_voc(ann, image_root=img, classes=["x"], **kw),
    }
    for name, read in readers.items():
        with pytest.raises(ValueError, match=r"b\.(txt|png)"):      # a file missing from a first read: an error
            read()
        ds = read(on_missing="quarantine")
        assert [it.path.name for it in ds.items] == ["a.png"], name
        assert len(ds.boxes[ds.items[0].id]) == 1, name
        assert [q.path.name for q in ds.quarantined] == ["b.txt" if name == "yolo" else "b.png"], name


def _abc(folder: Path, *, shade: int = 0) -> list[Item]:
    """a.png and b.png (40 x 30 = 1,200 px) and c.png (60 x 50 = 3,000 px), distinct bytes
    (another ``shade``: other bytes again)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, size, grey in (("a", (40, 30), 250), ("b", (40, 30), 128), ("c", (60, 50), 5)):
        Image.new("L", size, grey - shade).save(folder / f"{name}.png")
    return scan_files(sorted(folder.glob("*.png"))).items


TOO_LARGE_C = "image too large: 60x50 = 3,000 pixels > max_pixels 2,000 (raise data.max_pixels to accept it)"


@pytest.mark.parametrize("fmt", ["yolo", "coco", "voc", "labelme", "cvat", "labelstudio"])
def test_every_object_format_honours_max_pixels_and_on_missing(tmp_path: Path, fmt: str) -> None:
    from pseudolabel.data import formats
    from pseudolabel.data.errors import DataError
    from pseudolabel.types import Box

    items = _abc(tmp_path / "src")
    out = tmp_path / "out"
    entry = formats.export_labels(fmt, out, items, {it.id: (Box(2, 2, 20, 20, "x"),) for it in items},
                                     classes=["x"])
    path = {"yolo": out / "images" / "train", "voc": out / "Annotations"}.get(fmt, entry)
    kw: dict[str, object] = {"classes": ["x"], "image_root": out if fmt == "labelstudio" else None,
                             "split": "train" if fmt == "voc" else None}
    ds = formats.read_objects(fmt, path, max_pixels=2_000, **kw)  # type: ignore[arg-type]
    assert sorted(it.path.name for it in ds.items) == ["a.png", "b.png"]
    assert [(q.path.name, q.reason) for q in ds.quarantined] == [("c.png", TOO_LARGE_C)]
    assert all([(b.label, *(round(v, 6) for v in (b.x1, b.y1, b.x2, b.y2))) for b in ds.boxes[it.id]]
               == [("x", 2, 2, 20, 20)] for it in ds.items)                # YOLO: normalised, exact to 1e-6

    next(it.path for it in ds.items if it.path.name == "b.png").unlink()   # deleted after the first read
    gone = "b.txt" if fmt == "yolo" else "b.png"
    with pytest.raises(DataError, match=gone.replace(".", r"\.")) as err:  # a first read: an error
        formats.read_objects(fmt, path, **kw)  # type: ignore[arg-type]
    assert "\n" not in str(err.value)
    ds = formats.read_objects(fmt, path, on_missing="quarantine", **kw)  # type: ignore[arg-type]
    assert sorted(it.path.name for it in ds.items) == ["a.png", "c.png"]
    assert [q.path.name for q in ds.quarantined] == [gone]
    assert "not found" in ds.quarantined[0].reason or "no image" in ds.quarantined[0].reason
    if fmt == "voc":  # an id of the split list whose XML is gone too
        (out / "Annotations" / "b.xml").unlink()
        with pytest.raises(DataError, match=r"train\.txt: id 'b' has no annotation file"):
            formats.read_objects(fmt, path, **kw)  # type: ignore[arg-type]
        ds = formats.read_objects(fmt, path, on_missing="quarantine", **kw)  # type: ignore[arg-type]
        assert [(q.path.name, q.reason.split(" (")[0]) for q in ds.quarantined] == [
            ("b.xml", "annotation file not found")]


@pytest.mark.parametrize("fmt", ["csv", "labelme", "cvat", "labelstudio"])
def test_every_classification_format_honours_max_pixels_and_on_missing(tmp_path: Path, fmt: str) -> None:
    from pseudolabel.data.formats import cvat, labelme, labelstudio
    from pseudolabel.data.errors import DataError
    from pseudolabel.data.formats import read_labels

    src = tmp_path / "src"
    items = _abc(src)
    labels = {it.id: "y" if it.path.name == "b.png" else "x" for it in items}
    classes = ["x", "y"]
    if fmt == "csv":
        path = src / "labels.csv"
        path.write_text("path,label\n" + "".join(f"{it.path.name},{labels[it.id]}\n" for it in items))
    elif fmt == "labelme":
        labelme.write_labelme_classes(src, items, labels, classes=classes, image_root=src)
        path = src
    elif fmt == "cvat":
        path = cvat.write_cvat_tags(src / "annotations.xml", items, labels, classes=classes, image_root=src)
    else:
        path = labelstudio.write_labelstudio_choices(src / "ls.json", items, labels, classes=classes,
                                                     document_root=src)
    root = src if fmt == "labelstudio" else None
    ls = read_labels(fmt, path, classes=classes, image_root=root, max_pixels=2_000)
    assert sorted((it.path.name, ls.labels[it.id]) for it in ls.items) == [("a.png", "x"), ("b.png", "y")]
    assert [(q.path.name, q.reason) for q in ls.quarantined] == [("c.png", TOO_LARGE_C)]

    (src / "b.png").unlink()
    with pytest.raises(DataError, match=r"b\.png") as err:
        read_labels(fmt, path, classes=classes, image_root=root)
    assert "\n" not in str(err.value)
    ls = read_labels(fmt, path, classes=classes, image_root=root, on_missing="quarantine")
    assert sorted(it.path.name for it in ls.items) == ["a.png", "c.png"]
    assert [(q.path.name, q.reason.split(" (")[0]) for q in ls.quarantined] == [("b.png", "image file not found")]


def test_detection_ingest_reads_every_format_with_both_options(tmp_path: Path) -> None:
    """The round's ingest passes data.max_pixels and on_missing through read_labelled: a seed
    in Labelme JSON whose image is deleted after the first ingest is quarantined (the item is
    gone, its label kept) instead of stopping the round; on a first ingest it is an error."""
    from pseudolabel.data.formats import labelme
    from pseudolabel.data.errors import DataError
    from pseudolabel.types import Box

    items = _abc(tmp_path / "seed")
    labelme.write_labelme(tmp_path / "seed", items, {it.id: (Box(2, 2, 20, 20, "x"),) for it in items},
                          classes=["x"], image_root=tmp_path / "seed")
    hold = _abc(tmp_path / "hold", shade=3)
    labelme.write_labelme(tmp_path / "hold", hold, {it.id: () for it in hold}, classes=["x"],
                          image_root=tmp_path / "hold")
    (tmp_path / "pool").mkdir()
    raw = {"project": "formats-and-files", "task": "detect", "workdir": str(tmp_path / "work"), "classes": ["x"],
           "data": {"max_pixels": 2_000, "pool": {"path": str(tmp_path / "pool")},
                    "seed": {"format": "labelme", "path": str(tmp_path / "seed")},
                    "holdout": {"format": "labelme", "path": str(tmp_path / "hold")}}}
    cfg = load_config(data=raw, environ={})
    (tmp_path / "hold" / "b.png").unlink()                        # missing at the first ingest: a typo
    with ledger_for(cfg) as led, pytest.raises(DataError, match=r"b\.json: image 'b\.png' not found"):
        ingest(cfg, led)
    _abc(tmp_path / "hold", shade=3)                              # the same bytes again
    with ledger_for(cfg) as led:
        first = ingest(cfg, led)
        assert (first["seed"], first["holdout"], first["gone"]) == (2, 2, 0)   # c.png: above max_pixels
        b = next(it for it in items if it.path.name == "b.png")
        (tmp_path / "seed" / "b.png").unlink()
        again = ingest(cfg, led)
        assert again["gone"] == 1 and b.id in led.gone_items()
        assert [r.source for r in led.label_history(b.id)] == ["seed"]
    rows = {(Path(r["path"]).name, r["reason"]) for r in read_quarantine_csv(cfg.workdir / "quarantine.csv")}
    assert ("c.png", TOO_LARGE_C) in rows and ("b.png", "file deleted since it was scanned") in rows
    assert any(name == "b.png" and reason.startswith("image file not found (named by ") for name, reason in rows)
    with pytest.raises(DataError, match=r"b\.json: image 'b\.png' not found"):
        read_labelled(cfg, "seed")                                  # read_labelled's default: a first read


def test_ingest_marks_deleted_and_replaced_files_gone_and_keeps_their_labels(tmp_path: Path) -> None:
    data, cfg = _digits(tmp_path)
    pool = sorted((data.root / "pool").glob("*.png"))
    seed = sorted((data.root / "seed").rglob("*.png"))
    hold = sorted((data.root / "holdout").rglob("*.png"))
    with ledger_for(cfg) as led:
        first = ingest(cfg, led)
        assert first["gone"] == 0 and first["pool"] == len(pool)
        ids = {p: sha256_file(p) for p in (pool[0], pool[1], pool[2], seed[0], hold[0])}
        led.add_labels([Annotation(led.item(ids[pool[0]]), label="3", source="human", round=1, ls_annotation_id=7)])

        pool[0].unlink()                                          # a reviewed pool file deleted
        shutil.move(pool[1], pool[1].with_name("renamed.png"))    # a pool file renamed
        shutil.copyfile(pool[2], data.root / "pool" / "copy.png")  # a second copy, then the first deleted
        pool[2].unlink()
        seed_class = seed[0].parent.name
        Image.new("L", (32, 32), 128).save(seed[0])               # a seed file replaced: new bytes
        new_seed = sha256_file(seed[0])
        hold[0].unlink()                                          # a holdout file deleted

        again = ingest(cfg, led)
        assert again["gone"] == 3 and again["seed"] == 1

        gone = led.gone_items()
        assert set(gone) == {ids[pool[0]], ids[seed[0]], ids[hold[0]]}
        assert gone[ids[pool[0]]].reason == "file deleted since it was scanned"
        assert gone[ids[seed[0]]].reason == f"file changed since it was scanned: new bytes are item {new_seed}"
        present = {it.id for it in led.items()}
        assert not set(gone) & present and new_seed in present
        # labels kept, but no longer anyone's current label
        assert [r.label for r in led.label_history(ids[pool[0]])] == ["3"]
        assert [r.source for r in led.label_history(ids[seed[0]])] == ["seed"]
        assert ids[pool[0]] not in led.current_labels() and ids[seed[0]] not in led.current_labels()
        assert led.current_labels()[new_seed].label == seed_class     # the new bytes: a new seed item
        # renamed / surviving copy: same item, at the path that holds it now
        assert led.item(ids[pool[1]]).path == pool[1].with_name("renamed.png")
        assert led.item(ids[pool[2]]).path == data.root / "pool" / "copy.png"
        rows = {(r["path"], r["reason"]) for r in read_quarantine_csv(cfg.workdir / "quarantine.csv")}
        assert (str(pool[0]), "file deleted since it was scanned") in rows
        assert (str(hold[0]), "file deleted since it was scanned") in rows
        assert (str(seed[0]), f"file changed since it was scanned: new bytes are item {new_seed}") in rows

        assert ingest(cfg, led)["gone"] == 0                      # nothing new: no new rows, nothing re-marked
        assert len(read_quarantine_csv(cfg.workdir / "quarantine.csv")) == len(rows)
        Image.new("L", (32, 32), 7).save(pool[0])                 # other bytes at the deleted path: a new item
        assert ingest(cfg, led)["pool"] == 1 and ids[pool[0]] in led.gone_items()


def test_round_goes_on_after_files_are_deleted_and_replaced(tmp_path: Path) -> None:
    data, cfg = _digits(tmp_path, **{"data.max_pixels": 20_000_000})
    big_png(data.root / "pool" / "huge.png", 5_000, 5_000)        # 25 M pixels: above this campaign's limit
    r1 = run_round(cfg, None, progress=False)
    assert r1.stop_reason is None
    pool = sorted((data.root / "pool").glob("digit_*.png"))
    seed = sorted((data.root / "seed").rglob("*.png"))
    hold = sorted((data.root / "holdout").rglob("*.png"))
    old_pool, old_seed = sha256_file(pool[0]), sha256_file(seed[0])
    with ledger_for(cfg) as led:  # a reviewer answered the pool item before its file was deleted
        led.add_labels([Annotation(led.item(old_pool), label="5", source="human", round=1, ls_annotation_id=1)])
    pool[0].unlink()
    Image.new("L", (32, 32), 128).save(seed[0])
    new_seed = sha256_file(seed[0])
    hold[0].unlink()

    r2 = run_round(cfg, None, progress=False)                      # the release exited 1 here
    assert r2.round_id == 2 and r2.metrics["n"] == len(hold) - 1  # evaluated on the holdout that is left
    with ledger_for(cfg) as led:
        assert led.round(2)["info"]["train_counts"]["human_or_seed"] == len(seed)   # the gone item's label unused
        gone = led.gone_items()
        assert old_pool in gone and old_seed in gone and len(gone) == 3
        assert [r.label for r in led.label_history(old_pool)] == ["5"]
        assert new_seed in {it.id for it in led.items("seed")}
        assert led.split_counts()["pool"] == len(pool) - 1
    reasons = [r["reason"] for r in read_quarantine_csv(cfg.workdir / "quarantine.csv")]
    assert "image too large: 5000x5000 = 25,000,000 pixels > max_pixels 20,000,000 " \
           "(raise data.max_pixels to accept it)" in reasons
    assert reasons.count("file deleted since it was scanned") == 2


# -- files deleted or replaced between select and push (real Label Studio) -------------------------
@pytest.mark.integration
@pytest.mark.slow
def test_files_deleted_or_replaced_before_the_push_are_not_pushed(tmp_path: Path, label_studio,  # noqa: ANN001
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import loops.round as round_mod
    from pseudolabel.review.client import LabelStudioClient

    data = export_digits(Path(label_studio.images_root) / "file-changes", seed_per_class=2, holdout=50, seed=0)
    raw = demo_config(tmp_path / "w", data.root, strategy="entropy", project="file-changes-push", **{
        "model.epochs": 2, "model.min_steps": 5, "model.image_size": 16, "pseudo.enabled": False})
    raw["label_studio"]["images_root"] = str(label_studio.images_root)
    cfg = load_config(data=raw, environ={})
    client = LabelStudioClient(url=label_studio.url, token=label_studio.token,
                               project_title=cfg.label_studio.project_title or cfg.project, classes=cfg.classes,
                               images_root=Path(label_studio.images_root))
    client.ensure_project()

    # Another process deletes one selected file and rewrites another after selection, before the
    # push (the moment is fixed here by wrapping the step that builds the candidates).
    touched: dict[str, Path] = {}
    real_candidates = round_mod._candidates

    def candidates_then_files_change(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        cands = real_candidates(*args, **kwargs)
        if touched or not cands:        # the files change once, after the selection's candidates
            return cands
        deleted, replaced = cands[0].item, cands[1].item
        deleted.path.unlink()
        Image.new("L", (32, 32), 200).save(replaced.path)
        touched.update(deleted=deleted.path, replaced=replaced.path, deleted_id=deleted.id, replaced_id=replaced.id)
        return cands

    monkeypatch.setattr(round_mod, "_candidates", candidates_then_files_change)
    res = run_round(cfg, client, progress=False)
    assert res.queued == cfg.selection.batch_size - 2
    assert client.count_tasks() == cfg.selection.batch_size - 2
    new_bytes = sha256_file(touched["replaced"])
    with ledger_for(cfg) as led:
        pushed = {t["item_id"] for t in led.review_tasks()}
        assert touched["deleted_id"] not in pushed and touched["replaced_id"] not in pushed
        assert set(client.existing_tasks([touched["deleted_id"], touched["replaced_id"]])) == set()
        gone = led.gone_items()
        assert gone[touched["deleted_id"]].reason == "file deleted since it was scanned"
        assert gone[touched["replaced_id"]].reason == f"file changed since it was scanned: new bytes are item {new_bytes}"
        rows = {(r["path"], r["reason"]) for r in read_quarantine_csv(cfg.workdir / "quarantine.csv")}
        assert (str(touched["deleted"]), "file deleted since it was scanned") in rows
        # the next scan: the new bytes are a new pool item, the old ones stay gone
        ingest(cfg, led)
        assert new_bytes in {it.id for it in led.items("pool")}
        assert touched["replaced_id"] in led.gone_items()
