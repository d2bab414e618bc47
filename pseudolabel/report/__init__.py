"""Per-round HTML report: one self-contained page per round plus an index, no server needed.

- :mod:`.data` gathers what a page shows from the workdir and the ledger (no plotting);
- :mod:`.plots` draws the figures (matplotlib Agg, Pillow thumbnails) as PNG bytes;
- :mod:`.html` lays the pages out (inline CSS, base64 images, no JavaScript);
- :mod:`.writer` writes ``<workdir>/reports/round-NNNN.html`` and ``index.html``.

Importing this package loads no plotting library; matplotlib is imported when a page is drawn.
"""

from pseudolabel.report.data import (
    HOLDOUT_FILE,
    SECTIONS,
    RoundReport,
    gather_round,
    read_holdout_predictions,
    write_holdout_predictions,
)
from pseudolabel.report.writer import default_out_dir, report_round, write_index, write_reports, write_round_page

__all__ = [
    "HOLDOUT_FILE",
    "SECTIONS",
    "RoundReport",
    "default_out_dir",
    "gather_round",
    "read_holdout_predictions",
    "report_round",
    "write_holdout_predictions",
    "write_index",
    "write_reports",
    "write_round_page",
]
