"""Run the ``pseudolabel`` CLI in this process, stopping dead at one point of a round.

    python tests/faults/driver.py --point train --signal S [--release R] -- round -c campaign.yaml

The test that starts this process kills it (SIGKILL) once ``S`` exists, to stand for a crash,
an OOM kill or a power cut at that point. The product code is not changed: this driver wraps
a few functions of this process only (monkeypatching), so that at ``--point`` it writes
``S`` (the point and its pid) and then waits, forever or until the file ``R`` exists (then
the round goes on: a holder that a test keeps busy, e.g. for concurrent rounds).

Points, in the order a round reaches them:

- ``sync``: answers are in the ledger, the reconcile and the sync's bookmark are not;
- ``train``: the model is trained, not saved (the train stage is not recorded);
- ``evaluate``: holdout predictions made, metrics not stored;
- ``pseudo_label``: prediction shards written and pseudo-labels stored, stage not recorded;
- ``select``: ``selection.csv`` written, stage not recorded;
- ``mid_push``: the first import call done (imports of 5 tasks each), the others not;
- ``import_record``: every task imported (and the project updated), none recorded in the ledger;
- ``finish``: the push stage recorded, the round not marked finished.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

POINTS = ("sync", "train", "evaluate", "pseudo_label", "select", "mid_push", "import_record", "finish")


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--point", required=True, choices=POINTS)
    ap.add_argument("--signal", required=True, type=Path)
    ap.add_argument("--release", type=Path, default=None)
    ap.add_argument("cli", nargs=argparse.REMAINDER)
    args = ap.parse_args(argv)
    cli = args.cli[1:] if args.cli[:1] == ["--"] else args.cli

    def stop_here(detail: str = "") -> None:
        tmp = args.signal.with_suffix(".tmp")
        tmp.write_text(f"{args.point} {os.getpid()} {detail}\n")
        os.replace(tmp, args.signal)
        while args.release is None or not args.release.exists():
            time.sleep(0.05)

    def after(fn: Callable[..., Any], when: Callable[..., bool] = lambda *a, **k: True) -> Callable[..., Any]:
        def wrapped(*a: Any, **k: Any) -> Any:
            out = fn(*a, **k)
            if when(*a, **k):
                stop_here()
            return out
        return wrapped

    def before(fn: Callable[..., Any], when: Callable[..., bool] = lambda *a, **k: True) -> Callable[..., Any]:
        def wrapped(*a: Any, **k: Any) -> Any:
            if when(*a, **k):
                stop_here()
            return fn(*a, **k)
        return wrapped

    import loops.review
    import loops.round
    import pseudolabel.inference
    from pseudolabel.data.ledger import Ledger
    from pseudolabel.models.torchvision_cls import TorchvisionClassifier

    p = args.point
    if p == "sync":
        loops.review.reconcile = before(loops.review.reconcile)  # type: ignore[assignment]
    elif p == "train":
        TorchvisionClassifier.save = before(TorchvisionClassifier.save)  # type: ignore[method-assign]
    elif p == "evaluate":
        import pseudolabel.tasks.classify as classify

        classify.classification_metrics = before(classify.classification_metrics)  # type: ignore[assignment]
    elif p == "pseudo_label":
        shards: list[Any] = []
        real_write = pseudolabel.inference.write_shard

        def write_shard(*a: Any, **k: Any) -> Any:
            shards.append(a)
            return real_write(*a, **k)

        pseudolabel.inference.write_shard = write_shard  # type: ignore[assignment]
        Ledger.add_labels = after(Ledger.add_labels, lambda *a, **k: bool(shards))  # type: ignore[method-assign]
    elif p == "select":
        loops.round.atomic_write_text = after(  # type: ignore[assignment]
            loops.round.atomic_write_text, lambda path, *a, **k: Path(path).name == "selection.csv")
    elif p == "mid_push":
        from label_studio_sdk.projects.client import ProjectsClient

        from pseudolabel.review.client import LabelStudioClient

        real_init = LabelStudioClient.__init__

        def init(self: Any, *a: Any, **k: Any) -> None:
            real_init(self, *a, **k)
            self.import_chunk = 5

        calls: list[int] = []

        def second_call(*a: Any, **k: Any) -> bool:
            calls.append(1)
            return len(calls) == 2

        LabelStudioClient.__init__ = init  # type: ignore[method-assign]
        ProjectsClient.import_tasks = before(ProjectsClient.import_tasks, second_call)  # type: ignore[method-assign]
    elif p == "import_record":
        Ledger.record_tasks = before(Ledger.record_tasks)  # type: ignore[method-assign]
    elif p == "finish":
        Ledger.finish_round = before(Ledger.finish_round)  # type: ignore[method-assign]

    from pseudolabel.cli import app

    try:
        app(args=cli, prog_name="pseudolabel")
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
