"""Errors and warnings of the data readers, in one place.

- :class:`DataError` (a ``ValueError``): a user mistake in the data or its description that
  stops reading: a missing file or folder, an unknown class, class names that disagree with
  the config, conflicting labels for identical image bytes, a CSV without its columns or in
  another encoding, an empty seed set or holdout. The message is one line naming the file
  (and line, where there is one), what is wrong and what would be accepted, so a command
  line can print it without a traceback.
- :class:`LabelProblem` (a :class:`DataError`): something wrong with the labels of ONE
  image (a malformed line, a coordinate far outside the image, a size that disagrees with the
  file). Readers of a whole data set catch it and quarantine that image with the message as
  the reason; the other images are read. Called directly (``parse_yolo_line`` and the like),
  it is raised like any other error.
- :class:`DataWarning`: what was accepted but changed (boxes clipped to the image, class ids
  mapped by name); readers also list these in their result's ``notes``.
"""

from __future__ import annotations


class DataError(ValueError):
    """A data set or label file that cannot be used as it is; the message says where, what
    and what would be accepted (one line)."""


class LabelProblem(DataError):
    """The labels of one image cannot be used; a data-set reader quarantines that image."""


class DataWarning(UserWarning):
    """Labels were accepted with a change (clipping, mapping of class ids by name)."""
