"""The set every classification reader returns, and what the readers share.

Every reader (:mod:`.imagefolder`, :mod:`.csvlabels`, and the classification variants of
:mod:`.labelme`, :mod:`.cvat`, :mod:`.labelstudio`) returns a :class:`LabelledSet`: items are
deduplicated by content (item id = sha256 of the bytes), unreadable images are quarantined
with the reason, and the same bytes labelled with two different classes is an error naming
both places. Errors are :class:`~pseudolabel.data.errors.DataError` (a ``ValueError``) with a
one-line message.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pseudolabel.data.errors import DataError
from pseudolabel.data.formats.objects import Reading
from pseudolabel.data.formats.objects import check_not_empty as no_usable_image
from pseudolabel.data.ingest import Quarantined, ScanResult
from pseudolabel.types import Item, validate_classes


@dataclass
class LabelledSet:
    """Items with one class label each.

    - ``items``: usable images, one per distinct content;
    - ``labels``: item id -> class name, for every item;
    - ``quarantined``: files that could not be used (not in ``labels``);
    - ``duplicates``: ``(path, item_id)`` for files whose bytes equal an earlier item's;
    - ``classes``: the class names in their canonical order (as given, or sorted).
    """

    items: list[Item]
    labels: dict[str, str]
    quarantined: list[Quarantined] = field(default_factory=list)
    duplicates: list[tuple[Path, str]] = field(default_factory=list)
    classes: tuple[str, ...] = ()


def optional_classes(classes: Sequence[str] | None, *, where: object) -> tuple[str, ...] | None:
    """``None`` (take the classes from the data) or a validated tuple."""
    if classes is None:
        return None
    try:
        return validate_classes(classes, where=where)
    except ValueError as e:
        raise DataError(str(e)) from None


def conflicting_labels(first: str, first_label: str, second: str, second_label: str) -> DataError:
    """The error for identical image bytes given two classes: where each came from and which."""
    return DataError(
        f"conflicting labels for identical image bytes: {first} is {first_label!r} "
        f"but {second} is {second_label!r}; give the image one label"
    )


def unknown_class(where: str, label: str, accepted: Sequence[str]) -> DataError:
    """The error for a class name the config does not list."""
    return DataError(f"{where}: unknown class {label!r}; accepted class names (config order): "
                     f"{', '.join(map(repr, accepted))}")


def single_class(labels: Sequence[str], names: Sequence[str], *, where: str, reading: Reading, source: Path,
                 image: Path, reason: str, none: str, several: str) -> str | None:
    """The one class an image-level annotation names (CVAT tags, Label Studio choices, Labelme
    flags). A name the config does not list is an error (:func:`unknown_class` at ``where``);
    none or several leave the image out, quarantined under ``source`` as ``reason`` + ``none``
    or ``reason`` + ``several`` + the names; returns the class, or None when left out."""
    for name in labels:
        if name not in names:
            raise unknown_class(where, name, names)
    if len(labels) == 1:
        return labels[0]
    reading.drop_image(source, reason + (none if not labels else f"{several} ({', '.join(labels)}); one is needed"),
                       image=image)
    return None


def assemble_labels(
    scan: ScanResult, per_path: Sequence[tuple[Path, str | None, str]], quarantined: Sequence[Quarantined],
    classes: tuple[str, ...], *, source: object,
) -> LabelledSet:
    """A :class:`LabelledSet` from a scan and, per image path, its class (``None`` = left out,
    its quarantine row is in ``quarantined``) and where the label came from. Identical bytes
    must carry one class (else :class:`DataError` naming both places); an item whose every
    copy was left out is not in the set; an empty set is an error."""
    ids = scan.id_of()
    labels: dict[str, str] = {}
    first: dict[str, str] = {}
    for path, label, where in per_path:
        item_id = ids.get(path)
        if item_id is None or label is None:
            continue
        if item_id in labels and labels[item_id] != label:
            raise conflicting_labels(first[item_id], labels[item_id], where, label)
        labels.setdefault(item_id, label)
        first.setdefault(item_id, where)
    items = [it for it in scan.items if it.id in labels]
    out = LabelledSet(items, labels, [*scan.quarantined, *quarantined],
                      [(p, i) for p, i in scan.duplicates if i in labels], classes)
    check_not_empty(out, source=source)
    return out


def check_not_empty(ls: LabelledSet, *, source: object) -> None:
    """:class:`DataError` when a labelled set has no usable image (a seed set or a holdout
    needs one), naming the first quarantine reasons."""
    no_usable_image(ls.items, ls.quarantined, source=source)
