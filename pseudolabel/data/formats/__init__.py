"""Label formats: reading labelled image sets from the usual on-disk formats, and writing them.

One module per format, each reading and writing its files:

- classification: :mod:`.imagefolder` (``root/<class>/<images>``), :mod:`.csvlabels` (a
  ``path,label`` CSV), and the image-level labels of :mod:`.labelme` (``flags``), :mod:`.cvat`
  (``<tag>``) and :mod:`.labelstudio` (``choices``); every reader returns a
  :class:`~.labelled.LabelledSet`;
- detection / segmentation: :mod:`.yolo`, :mod:`.coco`, :mod:`.voc`, :mod:`.labelme`,
  :mod:`.cvat`, :mod:`.labelstudio`; every reader returns a :class:`~.objects.DetSet`, and
  :mod:`.objects` states our representation (pixel ``xyxy`` boxes, pixel polygons, the
  ``crowd`` / ``difficult`` flags) and the tolerance rules shared by every format;
- :mod:`.dispatch`: format name -> reader (:func:`read_labels`, :func:`read_objects`) or
  writer (:func:`export_labels`).

Options every reader takes: ``max_pixels`` (images with more pixels are quarantined from their
header, see :func:`~pseudolabel.data.ingest.scan_files`) and, where a list names the images
(every format but ``imagefolder``), ``on_missing`` (:data:`~pseudolabel.data.ingest.OnMissing`):
``"error"`` (default: a listed file that does not exist is a typo to fix) or ``"quarantine"``
(a set re-read every round: a file deleted since must not stop the campaign). A set with no
usable image is an error either way (a seed set and a holdout need one). Errors are
:class:`~pseudolabel.data.errors.DataError` (a ``ValueError``) with a one-line message.

The entry points are importable from here; helpers from their module.
"""

from pseudolabel.data.formats.coco import read_coco, write_coco
from pseudolabel.data.formats.csvlabels import read_csv_labels
from pseudolabel.data.formats.cvat import read_cvat, read_cvat_tags, write_cvat, write_cvat_tags
from pseudolabel.data.formats.dispatch import export_labels, read_labels, read_objects
from pseudolabel.data.formats.imagefolder import read_imagefolder
from pseudolabel.data.formats.labelled import LabelledSet
from pseudolabel.data.formats.labelme import read_labelme, read_labelme_classes, write_labelme, write_labelme_classes
from pseudolabel.data.formats.labelstudio import (
    read_labelstudio,
    read_labelstudio_choices,
    write_labelstudio,
    write_labelstudio_choices,
)
from pseudolabel.data.formats.objects import DetSet, DetTask
from pseudolabel.data.formats.voc import read_voc, write_voc
from pseudolabel.data.formats.yolo import read_yolo, write_yolo
from pseudolabel.types import CLASSIFY_FORMATS, OBJECT_FORMATS

__all__ = [
    "CLASSIFY_FORMATS",
    "OBJECT_FORMATS",
    "DetSet",
    "DetTask",
    "LabelledSet",
    "export_labels",
    "read_coco",
    "read_csv_labels",
    "read_cvat",
    "read_cvat_tags",
    "read_imagefolder",
    "read_labelme",
    "read_labelme_classes",
    "read_labels",
    "read_labelstudio",
    "read_labelstudio_choices",
    "read_objects",
    "read_voc",
    "read_yolo",
    "write_coco",
    "write_cvat",
    "write_cvat_tags",
    "write_labelme",
    "write_labelme_classes",
    "write_labelstudio",
    "write_labelstudio_choices",
    "write_voc",
    "write_yolo",
]
