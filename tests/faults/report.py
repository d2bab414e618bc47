"""Run the whole fault matrix and print its table (what the README shows).

    .venv/bin/python -m tests.faults.report [--quick] [--out table.md] [-- extra pytest args]

Runs ``pytest tests/faults --faults-full`` (``--quick``: the CI set only) in a child process
with a real Label Studio server, then prints one Markdown row per injected fault with the
invariant counts measured after it (all must be 0), and the suite's run time. The exit code is
pytest's: a non-zero count fails its test.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .table import markdown

REPO = Path(__file__).resolve().parents[2]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="only the set CI runs")
    ap.add_argument("--out", type=Path, help="also write the table to this Markdown file")
    ap.add_argument("pytest_args", nargs="*", help="more pytest arguments (after --)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        rows_file = Path(tmp) / "rows.json"
        env = os.environ | {"PSEUDOLABEL_FAULTS_TABLE": str(rows_file), "OMP_NUM_THREADS": "1"}
        cmd = [sys.executable, "-m", "pytest", "tests/faults", "-q", "-p", "no:cacheprovider",
               *([] if args.quick else ["--faults-full"]), *args.pytest_args]
        t0 = time.perf_counter()
        code = subprocess.call(cmd, cwd=REPO, env=env)
        seconds = time.perf_counter() - t0
        rows = json.loads(rows_file.read_text()) if rows_file.exists() else []
    text = (f"{markdown(rows)}\n\n{len(rows)} faults, {sum(1 for r in rows if _clean(r))} with every invariant at 0; "
            f"suite run time {seconds / 60:.1f} min ({'CI set' if args.quick else 'full matrix'}, pytest exit {code})")
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return code


def _clean(row: dict[str, object]) -> bool:
    return all(row[k] in (0, None) for k in ("duplicates", "lost_answers", "overwritten", "stale", "running"))


if __name__ == "__main__":
    sys.exit(main())
