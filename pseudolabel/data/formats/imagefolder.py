"""Classification from folders: ``root/<class>/<images>`` (images may sit in sub-folders of a
class folder)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pseudolabel.data.errors import DataError
from pseudolabel.data.formats.labelled import LabelledSet, check_not_empty, conflicting_labels, optional_classes
from pseudolabel.data.ingest import DEFAULT_MAX_PIXELS, is_image_path, list_image_files, scan_files


def read_imagefolder(
    root: Path, *, classes: Sequence[str] | None = None, progress: bool = False,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> LabelledSet:
    """Read ``root/<class>/<images>``; each class folder is scanned recursively.

    ``classes``: the accepted class names (their order is kept); ``None`` means the sorted
    names of the sub-folders. Folders whose name starts with ``.`` (``.ipynb_checkpoints``,
    ``.git``) are not class folders. Raises ValueError for a missing root, a sub-folder not
    in ``classes`` (naming it and the accepted names), an image directly under ``root``
    (it has no class), or identical bytes under two classes (naming both files).
    """
    root = Path(root)
    if not root.is_dir():
        state = "is not a directory" if root.exists() else "does not exist"
        raise DataError(f"imagefolder root {root} {state}")
    accepted = optional_classes(classes, where=root)

    entries = sorted(root.iterdir(), key=lambda p: p.name)
    stray = [p for p in entries if p.is_file() and is_image_path(p)]
    if stray:
        raise DataError(
            f"imagefolder {root}: image {stray[0].name!r} sits directly under the root, so it "
            f"has no class; move it into {root}/<class>/ ({len(stray)} such file(s))"
        )
    folders = [p for p in entries if p.is_dir() and not p.name.startswith(".")]
    if accepted is None:
        if not folders:
            raise DataError(f"imagefolder {root}: no class sub-folders found")
        accepted = tuple(p.name for p in folders)
    for folder in folders:
        if folder.name not in accepted:
            raise DataError(
                f"imagefolder {root}: folder {folder.name!r} is not a known class; "
                f"accepted class names (config order): {', '.join(map(repr, accepted))}; "
                f"class folders found: {', '.join(repr(f.name) for f in folders)}"
            )

    labelled = [(path, f.name) for f in folders for path in list_image_files(f, recursive=True)]
    scan = scan_files([p for p, _ in labelled], progress=progress, description=f"reading {root}",
                      max_pixels=max_pixels)
    ids = scan.id_of()
    labels: dict[str, str] = {}
    first_path: dict[str, Path] = {}
    for path, name in labelled:
        item_id = ids.get(path)
        if item_id is None:  # quarantined
            continue
        if item_id in labels and labels[item_id] != name:
            raise conflicting_labels(str(first_path[item_id]), labels[item_id], str(path), name)
        labels.setdefault(item_id, name)
        first_path.setdefault(item_id, path)
    out = LabelledSet(scan.items, labels, scan.quarantined, scan.duplicates, accepted)
    check_not_empty(out, source=f"imagefolder {root}")
    return out
