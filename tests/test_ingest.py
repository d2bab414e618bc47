"""Ingest and classification label formats, on real image files written with PIL."""

from __future__ import annotations

import csv
import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pseudolabel.data import ingest
from pseudolabel.data.errors import DataError
from pseudolabel.data.formats import (
    CLASSIFY_FORMATS,
    read_csv_labels,
    read_imagefolder,
    read_labels,
)
from pseudolabel.data.images import load_rgb
from pseudolabel.data.ingest import (
    Quarantined,
    read_quarantine_csv,
    scan_files,
    scan_folder,
    write_quarantine_csv,
)


def _rgb(w: int = 8, h: int = 6, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def save_png(path: Path, *, w: int = 8, h: int = 6, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    _rgb(w, h, seed).save(path, format="PNG")
    return path


def save_jpeg(path: Path, *, w: int = 32, h: int = 24, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    _rgb(w, h, seed).save(path, format="JPEG", quality=90)
    return path


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def by_name(items) -> dict[str, object]:
    return {i.path.name: i for i in items}


# ---------------------------------------------------------------- scan_folder


def test_good_images_become_items_with_content_hash_and_size(tmp_path: Path) -> None:
    png = save_png(tmp_path / "a.png", w=8, h=6)
    jpg = save_jpeg(tmp_path / "b.jpg", w=32, h=24, seed=1)
    res = scan_folder(tmp_path)
    assert [i.path for i in res.items] == [png, jpg]
    assert [i.id for i in res.items] == [sha(png), sha(jpg)]
    assert [(i.width, i.height) for i in res.items] == [(8, 6), (32, 24)]
    assert res.quarantined == [] and res.duplicates == []


def test_broken_files_are_quarantined_with_reason_not_raised(tmp_path: Path) -> None:
    save_png(tmp_path / "good.png")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("this is not a picture\n" * 20)
    full = save_jpeg(tmp_path / "src" / "full.jpg", w=64, h=64, seed=3).read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(full[: len(full) // 2])
    shutil.rmtree(tmp_path / "src")

    res = scan_folder(tmp_path)
    assert [i.path.name for i in res.items] == ["good.png"]
    reasons = {q.path.name: q.reason for q in res.quarantined}
    assert set(reasons) == {"empty.png", "text.jpg", "truncated.jpg"}
    assert "zero-byte" in reasons["empty.png"]
    assert "not an image" in reasons["text.jpg"]
    assert "truncated" in reasons["truncated.jpg"]
    # The path is its own field; the reason does not repeat it.
    assert all(str(q.path) not in q.reason for q in res.quarantined)


@pytest.mark.parametrize(
    ("name", "make"),
    [
        ("gray.png", lambda: Image.new("L", (7, 5), 128)),
        ("rgba.png", lambda: Image.new("RGBA", (7, 5), (255, 0, 0, 0))),
        (
            "deep.png",
            lambda: Image.fromarray((np.arange(35, dtype=np.uint16).reshape(5, 7) * 1000)),
        ),
        ("cmyk.jpg", lambda: Image.new("CMYK", (7, 5), (0, 255, 0, 0))),
        ("palette.png", lambda: Image.new("RGB", (7, 5), (10, 200, 30)).convert("P")),
        ("upper.JPG", lambda: Image.new("RGB", (7, 5), (1, 2, 3))),
    ],
)
def test_image_modes_load_as_rgb_with_right_size(tmp_path: Path, name: str, make) -> None:
    img = make()
    fmt = "JPEG" if name.lower().endswith(".jpg") else "PNG"
    img.save(tmp_path / name, format=fmt)
    with Image.open(tmp_path / name) as raw:
        expected_mode = raw.mode
    assert expected_mode == img.mode  # the file on disk really has that mode
    res = scan_folder(tmp_path)
    assert res.quarantined == []
    (item,) = res.items
    assert (item.width, item.height) == (7, 5)
    with load_rgb(item.path) as loaded:
        assert loaded.mode == "RGB"


def test_exif_orientation_swaps_width_and_height(tmp_path: Path) -> None:
    img = _rgb(40, 20)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    img.save(tmp_path / "rotated.jpg", format="JPEG", exif=exif.tobytes())
    img.save(tmp_path / "plain.jpg", format="JPEG")
    items = by_name(scan_folder(tmp_path).items)
    assert (items["plain.jpg"].width, items["plain.jpg"].height) == (40, 20)
    assert (items["rotated.jpg"].width, items["rotated.jpg"].height) == (20, 40)


def test_duplicates_collapse_to_first_and_id_survives_rename(tmp_path: Path) -> None:
    a = save_png(tmp_path / "a.png", seed=5)
    shutil.copy(a, tmp_path / "b_copy.png")
    (tmp_path / "sub").mkdir()
    shutil.copy(a, tmp_path / "sub" / "c_copy.png")
    other = save_png(tmp_path / "d.png", seed=6)

    res = scan_folder(tmp_path)
    assert [i.path for i in res.items] == [a, other]
    assert res.duplicates == [
        (tmp_path / "b_copy.png", sha(a)),
        (tmp_path / "sub" / "c_copy.png", sha(a)),
    ]

    renamed = tmp_path / "renamed.png"
    a.rename(renamed)
    again = scan_folder(tmp_path)
    assert renamed in again.id_of()
    assert again.id_of()[renamed] == sha(renamed) == res.items[0].id


def test_non_image_suffix_ignored_but_fake_image_suffix_quarantined(tmp_path: Path) -> None:
    save_png(tmp_path / "img.png")
    (tmp_path / "README.txt").write_text("hello")
    (tmp_path / "labels.csv").write_text("path,label\n")
    save_png(tmp_path / "actually_png.dat")  # a real image, but not an image suffix
    (tmp_path / "fake.webp").write_text("not webp")
    res = scan_folder(tmp_path)
    assert [i.path.name for i in res.items] == ["img.png"]
    assert [q.path.name for q in res.quarantined] == ["fake.webp"]


def test_recursive_flag_and_sorted_order(tmp_path: Path) -> None:
    save_png(tmp_path / "z.png", seed=1)
    save_png(tmp_path / "a" / "m.png", seed=2)
    save_png(tmp_path / "b.png", seed=3)
    assert [i.path.name for i in scan_folder(tmp_path).items] == ["m.png", "b.png", "z.png"]
    flat = scan_folder(tmp_path, recursive=False)
    assert [i.path.name for i in flat.items] == ["b.png", "z.png"]


def test_scan_folder_progress_bar_does_not_change_result(tmp_path: Path) -> None:
    save_png(tmp_path / "a.png", seed=1)
    save_png(tmp_path / "b.png", seed=2)
    assert scan_folder(tmp_path, progress=True) == scan_folder(tmp_path)


def test_scan_folder_bad_root(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(DataError, match="nope.*does not exist"):
        scan_folder(missing)
    f = save_png(tmp_path / "file.png")
    with pytest.raises(DataError, match="file.png.*not a directory"):
        scan_folder(f)


def test_scan_files_quarantines_missing_path(tmp_path: Path) -> None:
    good = save_png(tmp_path / "good.png")
    res = scan_files([good, tmp_path / "gone.png", good])
    assert [i.path for i in res.items] == [good]
    assert [q.path.name for q in res.quarantined] == ["gone.png"]
    assert "cannot read" in res.quarantined[0].reason
    assert res.duplicates == []  # the same path twice is one file, not a duplicate


# ---------------------------------------------------------------- imagefolder


def make_imagefolder(root: Path) -> None:
    save_png(root / "cat" / "c1.png", seed=1)
    save_png(root / "cat" / "c2.png", seed=2)
    save_png(root / "dog" / "d1.png", seed=3)
    save_png(root / "dog" / "nested" / "d2.png", seed=4)


def test_imagefolder_labels_every_item_by_folder(tmp_path: Path) -> None:
    make_imagefolder(tmp_path)
    (tmp_path / "dog" / "broken.jpg").write_bytes(b"\xff\xd8garbage")
    (tmp_path / "notes.txt").write_text("ignored")
    ls = read_imagefolder(tmp_path, classes=None)
    assert ls.classes == ("cat", "dog")
    names = {i.path.name: ls.labels[i.id] for i in ls.items}
    assert names == {"c1.png": "cat", "c2.png": "cat", "d1.png": "dog", "d2.png": "dog"}
    assert [q.path.name for q in ls.quarantined] == ["broken.jpg"]
    assert set(ls.labels) == {i.id for i in ls.items}


def test_imagefolder_unknown_class_folder_names_folder_and_choices(tmp_path: Path) -> None:
    make_imagefolder(tmp_path)
    save_png(tmp_path / "horse" / "h.png", seed=9)
    with pytest.raises(DataError, match="horse") as err:
        read_imagefolder(tmp_path, classes=["cat", "dog"])
    assert "'cat'" in str(err.value) and "'dog'" in str(err.value)
    # Given classes keep their order, even with a class that has no folder.
    shutil.rmtree(tmp_path / "horse")
    ls = read_imagefolder(tmp_path, classes=["dog", "cat", "bird"])
    assert ls.classes == ("dog", "cat", "bird")


def test_imagefolder_same_bytes_two_classes_is_an_error(tmp_path: Path) -> None:
    make_imagefolder(tmp_path)
    shutil.copy(tmp_path / "cat" / "c1.png", tmp_path / "dog" / "also_c1.png")
    with pytest.raises(DataError, match="conflicting labels") as err:
        read_imagefolder(tmp_path, classes=None)
    assert "c1.png" in str(err.value) and "also_c1.png" in str(err.value)


def test_imagefolder_same_bytes_same_class_collapses(tmp_path: Path) -> None:
    make_imagefolder(tmp_path)
    shutil.copy(tmp_path / "cat" / "c1.png", tmp_path / "cat" / "c1_again.png")
    ls = read_imagefolder(tmp_path, classes=None)
    assert len(ls.items) == 4
    assert ls.duplicates == [(tmp_path / "cat" / "c1_again.png", sha(tmp_path / "cat" / "c1.png"))]


def test_imagefolder_image_at_root_has_no_class(tmp_path: Path) -> None:
    make_imagefolder(tmp_path)
    save_png(tmp_path / "loose.png", seed=11)
    with pytest.raises(DataError, match="loose.png"):
        read_imagefolder(tmp_path, classes=None)


# ---------------------------------------------------------------- csv


def write_csv(path: Path, rows: list[list[str]]) -> Path:
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    return path


def test_csv_reads_labels_relative_to_csv_folder_and_image_root(tmp_path: Path) -> None:
    save_png(tmp_path / "imgs" / "a.png", seed=1)
    save_png(tmp_path / "imgs" / "b.png", seed=2)
    rows = [["path", "label", "note"], ["imgs/a.png", "cat", "x"], ["imgs/b.png", "dog", ""]]
    ls = read_csv_labels(write_csv(tmp_path / "labels.csv", rows), classes=["cat", "dog"])
    assert {i.path.name: ls.labels[i.id] for i in ls.items} == {"a.png": "cat", "b.png": "dog"}

    other = tmp_path / "elsewhere"
    other.mkdir()
    rows2 = [["label", "path"], ["dog", "a.png"]]
    ls2 = read_csv_labels(
        write_csv(other / "l.csv", rows2), classes=None, image_root=tmp_path / "imgs"
    )
    assert ls2.classes == ("dog",)
    assert [ls2.labels[i.id] for i in ls2.items] == ["dog"]


def test_csv_unknown_class_names_line_and_choices(tmp_path: Path) -> None:
    save_png(tmp_path / "a.png", seed=1)
    save_png(tmp_path / "b.png", seed=2)
    p = write_csv(tmp_path / "l.csv", [["path", "label"], ["a.png", "cat"], ["b.png", "horse"]])
    with pytest.raises(DataError, match=r"l\.csv:3: unknown class 'horse'") as err:
        read_csv_labels(p, classes=["cat", "dog"])
    assert "'cat', 'dog'" in str(err.value)


def test_csv_missing_column_says_which(tmp_path: Path) -> None:
    p = write_csv(tmp_path / "l.csv", [["path", "class"], ["a.png", "cat"]])
    with pytest.raises(DataError, match=r"l\.csv:1: missing required column\(s\) label"):
        read_csv_labels(p, classes=None)


def test_csv_missing_file_names_line(tmp_path: Path) -> None:
    save_png(tmp_path / "a.png", seed=1)
    p = write_csv(
        tmp_path / "l.csv", [["path", "label"], ["a.png", "cat"], [], ["gone.png", "cat"]]
    )
    # Line 3 is blank and skipped; the missing file is on line 4.
    with pytest.raises(DataError, match=r"l\.csv:4: image file 'gone.png' not found"):
        read_csv_labels(p, classes=None)


def test_csv_empty_label_names_line(tmp_path: Path) -> None:
    save_png(tmp_path / "a.png", seed=1)
    p = write_csv(tmp_path / "l.csv", [["path", "label"], ["a.png", "  "]])
    with pytest.raises(DataError, match=r"l\.csv:2: empty label"):
        read_csv_labels(p, classes=None)


def test_csv_conflicting_labels_for_identical_bytes_names_both_lines(tmp_path: Path) -> None:
    a = save_png(tmp_path / "a.png", seed=1)
    shutil.copy(a, tmp_path / "a_copy.png")
    save_png(tmp_path / "b.png", seed=2)
    p = write_csv(
        tmp_path / "l.csv",
        [["path", "label"], ["a.png", "cat"], ["b.png", "dog"], ["a_copy.png", "dog"]],
    )
    with pytest.raises(DataError, match=r"l\.csv:2.*'cat'.*l\.csv:4.*'dog'"):
        read_csv_labels(p, classes=None)

    # Same bytes with the same label collapse into one item.
    p2 = write_csv(
        tmp_path / "l2.csv", [["path", "label"], ["a.png", "cat"], ["a_copy.png", "cat"]]
    )
    ls = read_csv_labels(p2, classes=None)
    assert [i.path for i in ls.items] == [a]
    assert ls.duplicates == [(tmp_path / "a_copy.png", sha(a))]


def test_csv_in_latin1_names_file_line_and_encoding(tmp_path: Path) -> None:
    """Excel on Windows saves "CSV" as Windows-1252: the error is one line naming the file,
    the line of the first bad byte and the encoding expected (not a bare UnicodeDecodeError)."""
    save_png(tmp_path / "cafe.png", seed=1)
    p = tmp_path / "l.csv"
    p.write_bytes("path,label\ncafe.png,caf\u00e9\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"l\.csv:2: not UTF-8 \(byte 0xe9 .*label CSVs must be UTF-8") as err:
        read_csv_labels(p, classes=None)
    assert "\n" not in str(err.value)
    p.write_bytes("path,label\ncafe.png,caf\u00e9\n".encode("utf-8-sig"))  # the same file as UTF-8 reads
    assert list(read_csv_labels(p, classes=None).labels.values()) == ["caf\u00e9"]


def test_empty_labelled_set_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnope")
    p = write_csv(tmp_path / "l.csv", [["path", "label"], ["bad.png", "cat"]])
    with pytest.raises(DataError, match=r"l\.csv: no usable labelled image; quarantined: .*bad\.png"):
        read_csv_labels(p, classes=None)
    (tmp_path / "folder" / "cat").mkdir(parents=True)
    with pytest.raises(DataError, match=r"no usable labelled image \(no image files found\)"):
        read_imagefolder(tmp_path / "folder", classes=None)


def test_csv_unreadable_image_is_quarantined(tmp_path: Path) -> None:
    save_png(tmp_path / "a.png", seed=1)
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnope")
    p = write_csv(tmp_path / "l.csv", [["path", "label"], ["a.png", "cat"], ["bad.png", "dog"]])
    ls = read_csv_labels(p, classes=None)
    assert [i.path.name for i in ls.items] == ["a.png"]
    assert [q.path.name for q in ls.quarantined] == ["bad.png"]
    assert list(ls.labels.values()) == ["cat"]


# ---------------------------------------------------------------- dispatcher


def test_read_labels_dispatches_and_rejects_unknown_format(tmp_path: Path) -> None:
    make_imagefolder(tmp_path / "folder")
    via = read_labels("imagefolder", tmp_path / "folder", classes=None)
    direct = read_imagefolder(tmp_path / "folder", classes=None)
    assert via == direct
    assert CLASSIFY_FORMATS == ("imagefolder", "csv", "labelme", "cvat", "labelstudio")
    with pytest.raises(DataError, match="'yolo'.*'imagefolder', 'csv', 'labelme', 'cvat', 'labelstudio'"):
        read_labels("yolo", tmp_path, classes=None)


# ---------------------------------------------------------------- quarantine csv


def test_quarantine_csv_merges_without_duplicate_rows(tmp_path: Path) -> None:
    out = tmp_path / "work" / "quarantine.csv"
    write_quarantine_csv(out, [Quarantined(Path("a.png"), "zero-byte file")])
    first = read_quarantine_csv(out)
    write_quarantine_csv(
        out,
        [
            Quarantined(Path("a.png"), "zero-byte file"),  # already there
            Quarantined(Path("b.jpg"), "not an image"),
            Quarantined(Path("b.jpg"), "not an image"),  # repeated in one call
            Quarantined(Path("a.png"), "truncated image file"),  # same path, new reason
        ],
    )
    rows = read_quarantine_csv(out)
    assert [(r["path"], r["reason"]) for r in rows] == [
        ("a.png", "zero-byte file"),
        ("b.jpg", "not an image"),
        ("a.png", "truncated image file"),
    ]
    assert rows[0]["time"] == first[0]["time"]  # an existing row keeps its time
    assert out.read_text().splitlines()[0] == "path,reason,time"
    assert [p.name for p in out.parent.iterdir()] == ["quarantine.csv"]  # no temp left


def test_quarantine_csv_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "quarantine.csv"
    write_quarantine_csv(out, [Quarantined(Path("a.png"), "zero-byte file")])
    before = out.read_bytes()

    def failing_replace(src: str, dst: object) -> None:
        raise OSError("disk went away")

    import pseudolabel.utils as utils

    monkeypatch.setattr(utils.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk went away"):
        write_quarantine_csv(out, [Quarantined(Path("b.png"), "not an image")])
    assert out.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["quarantine.csv"]


def test_quarantine_csv_rejects_foreign_header(tmp_path: Path) -> None:
    out = tmp_path / "quarantine.csv"
    out.write_text("file,why\nx,y\n")
    with pytest.raises(ValueError, match="quarantine.csv.*path,reason,time"):
        write_quarantine_csv(out, [Quarantined(Path("a.png"), "r")])


def test_a_file_and_its_bytes_are_judged_the_same_way(tmp_path: Path) -> None:
    """ingest (files) and the Ray actors (bytes from an object store) share usable_size."""
    from pseudolabel.data.images import ImageError, sha256_bytes, sha256_file
    from pseudolabel.data.ingest import reason_of, usable_size

    good = save_png(tmp_path / "good.png", w=40, h=30)
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(good.read_bytes()[:60])
    assert usable_size(good) == usable_size(good.read_bytes(), name="s3://b/good.png") == (40, 30)
    assert sha256_bytes(good.read_bytes()) == sha256_file(good)
    for src, name in ((truncated, truncated), (truncated.read_bytes(), "s3://b/cut.png")):
        with pytest.raises(ImageError) as e:
            usable_size(src, name=name)
        assert str(e.value).startswith(f"{name}: ")
        assert "truncated" in reason_of(str(e.value), name) or "corrupt" in reason_of(str(e.value), name)
    for src in (good, good.read_bytes()):
        with pytest.raises(ImageError, match="image too large: 40x30 = 1,200 pixels > max_pixels 1,000"):
            usable_size(src, max_pixels=1_000)
