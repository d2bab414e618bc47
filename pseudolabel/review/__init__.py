"""Review layer: Label Studio server launcher, client adapter, answer decoding, pure
converters and the ML backend. Importing this package imports neither Label Studio nor its
SDK. (The simulated reviewers of the demos and benchmarks are in :mod:`pseudolabel.sim`.)"""

from pseudolabel.review.client import LabelStudioClient, LabelStudioError, PendingTask
from pseudolabel.review.server import (
    LabelStudioNotFound,
    LabelStudioServer,
    LabelStudioStartError,
    find_label_studio,
)

__all__ = [
    "LabelStudioClient",
    "LabelStudioError",
    "LabelStudioNotFound",
    "LabelStudioServer",
    "LabelStudioStartError",
    "PendingTask",
    "find_label_studio",
]
