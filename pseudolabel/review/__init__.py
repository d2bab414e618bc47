"""Review layer: Label Studio server launcher, client adapter, pure converters and a
simulated reviewer. Importing this package imports neither Label Studio nor its SDK."""

from pseudolabel.review.client import LabelStudioClient, LabelStudioError, PendingTask
from pseudolabel.review.server import (
    LabelStudioNotFound,
    LabelStudioServer,
    LabelStudioStartError,
    find_label_studio,
)
from pseudolabel.review.simulated import ReviewStats, SimulatedReviewer

__all__ = [
    "LabelStudioClient",
    "LabelStudioError",
    "LabelStudioNotFound",
    "LabelStudioServer",
    "LabelStudioStartError",
    "PendingTask",
    "ReviewStats",
    "SimulatedReviewer",
    "find_label_studio",
]
