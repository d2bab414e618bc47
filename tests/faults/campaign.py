"""One labelling campaign for fault trials: digits data, a tiny model, the real Label Studio.

A :class:`Campaign` writes its config (the digits demo data, a small CNN trained for 20 steps,
a 200-image pool), runs the real CLI (in this process with typer's runner, or as a separate
process that :mod:`faults.driver` stops at a chosen point), answers tasks with the simulated
reviewer through the API, and counts the invariants (:mod:`faults.invariants`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from typer.testing import CliRunner

from pseudolabel.sim.demo import DemoData, demo_config, export_digits
from pseudolabel.review.client import LabelStudioClient
from pseudolabel.sim.simulated import SimulatedReviewer

from . import invariants

REPO = Path(__file__).resolve().parents[2]
DRIVER = Path(__file__).with_name("driver.py")
POOL_SIZE = 200
# Small enough that one round is seconds of work on 2 cores.
TINY = {"model.epochs": 2, "model.min_steps": 20, "selection.batch_size": 10, "selection.max_queued": 1000,
        "stop.target": 0.999, "stop.label_budget": 100_000, "stop.max_rounds": 1000}


def export_small_digits(root: Path) -> DemoData:
    """The digits demo data under ``root`` (2 seed images per class, 100 holdout) with the
    pool cut to :data:`POOL_SIZE` images."""
    data = export_digits(root, seed_per_class=2, holdout=100, seed=0)
    pool = sorted((root / "pool").glob("*.png"))
    for p in pool[POOL_SIZE:]:
        p.unlink()
    return data


@dataclass
class CliResult:
    code: int
    output: str
    seconds: float
    exception: BaseException | None = None

    def lines(self) -> list[str]:
        return [ln for ln in self.output.splitlines() if ln.strip()]


@dataclass
class Spawned:
    """A CLI process stopped at a driver point (or still on its way there)."""

    proc: subprocess.Popen[str]
    signal_file: Path
    release_file: Path
    log: Path

    def wait_point(self, timeout: float = 600.0) -> str:
        """Block until the process reached its point; returns the driver's line."""
        deadline = time.monotonic() + timeout
        while not self.signal_file.exists():
            if self.proc.poll() is not None:
                raise AssertionError(f"the process ended (exit {self.proc.returncode}) before its point:\n"
                                     + self.log.read_text(errors="replace")[-3000:])
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"the process did not reach its point in {timeout:.0f} s:\n"
                                     + self.log.read_text(errors="replace")[-3000:])
            time.sleep(0.05)
        return self.signal_file.read_text().strip()

    def kill(self) -> int:
        """SIGKILL (kill -9) and reap; returns the exit status (-9)."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        return self.proc.wait(timeout=60)

    def release(self, timeout: float = 600.0) -> int:
        """Let a held process go on; returns its exit code."""
        self.release_file.write_text("go")
        return self.proc.wait(timeout=timeout)


@dataclass
class Campaign:
    """A campaign in ``workdir`` with its own Label Studio project ``faults-<name>``."""

    name: str
    workdir: Path
    data: DemoData
    server: Any                      # LabelStudioServer
    overrides: dict[str, Any] = field(default_factory=dict)
    url: str | None = None           # where the CLI talks to Label Studio (a proxy); default the server

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.project = f"faults-{self.name}"
        self.config_path = self.workdir.parent / f"{self.name}.yaml"
        self.write_config()
        self.client = LabelStudioClient(self.server.url, self.server.token, self.project, [str(d) for d in range(10)],
                                        images_root=Path(self.server.images_root))
        self.reviewer = SimulatedReviewer(self.client, self.data.truth, [str(d) for d in range(10)], seed=0)
        self._spawned = 0

    @property
    def ledger_path(self) -> Path:
        return self.workdir / "ledger.sqlite"

    def write_config(self, **more: Any) -> Path:
        over = {**TINY, **self.overrides, **more}
        raw = demo_config(self.workdir, self.data.root, strategy="entropy", project=self.project, **over)
        raw["label_studio"]["images_root"] = str(self.server.images_root)
        raw["label_studio"]["url"] = self.url or self.server.url
        self.config_path.write_text(yaml.safe_dump(raw))
        return self.config_path

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
        env |= {"LABEL_STUDIO_API_KEY": self.server.token, "OMP_NUM_THREADS": "1",
                "PYTHONPATH": os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
        return env

    # ------------------------------------------------------------------ running the CLI

    def cli(self, *args: str, token: str | None = None) -> CliResult:
        """``pseudolabel <args>`` in this process (typer's runner); ``-c`` is added for
        commands that take a config."""
        from pseudolabel.cli import app

        argv = list(args)
        if argv and argv[0] in ("round", "run", "sync", "status", "repair", "export", "retrain"):
            argv[1:1] = ["-c", str(self.config_path)]
        t = time.perf_counter()
        r = CliRunner().invoke(app, argv, env={"LABEL_STUDIO_API_KEY": token or self.server.token})
        exc = r.exception if not isinstance(r.exception, SystemExit) else None
        return CliResult(r.exit_code, r.output, time.perf_counter() - t, exc)

    def spawn(self, point: str, *args: str, hold: bool = False) -> Spawned:
        """Start ``pseudolabel <args>`` (default ``round -c <config>``) as its own process,
        stopping at driver point ``point`` (held there until :meth:`Spawned.release` when
        ``hold``, else until killed)."""
        self._spawned += 1
        base = self.workdir.parent / f"{self.name}-{self._spawned}-{point}"
        sig, rel, log = base.with_suffix(".signal"), base.with_suffix(".release"), base.with_suffix(".log")
        argv = list(args) or ["round", "-c", str(self.config_path)]
        cmd = [sys.executable, str(DRIVER), "--point", point, "--signal", str(sig)]
        if hold:
            cmd += ["--release", str(rel)]
        with open(log, "w") as out:
            proc = subprocess.Popen([*cmd, "--", *argv], cwd=REPO, env=self.env(), stdout=out,
                                    stderr=subprocess.STDOUT, text=True)
        return Spawned(proc, sig, rel, log)

    def run_process(self, *args: str, timeout: float = 600.0) -> CliResult:
        """``python -m pseudolabel.cli <args>`` as a separate process (real stdout/stderr)."""
        t = time.perf_counter()
        p = subprocess.run([sys.executable, "-m", "pseudolabel.cli", *args], cwd=REPO, env=self.env(),
                           capture_output=True, text=True, timeout=timeout)
        return CliResult(p.returncode, p.stdout + p.stderr, time.perf_counter() - t)

    # ------------------------------------------------------------------ reviewers and checks

    def answer(self, limit: int | None = None) -> int:
        """The simulated reviewer answers up to ``limit`` queued tasks; returns how many."""
        return self.reviewer.answer_pending(limit=limit).answered

    def skip(self, n: int) -> int:
        """Skip (cancel) ``n`` queued tasks, as a reviewer who presses Skip."""
        pending = self.client.pending()[:n]
        for t in pending:
            self.client.annotate(t.task_id, was_cancelled=True)
        return len(pending)

    def snapshot(self) -> invariants.Snapshot:
        return invariants.snapshot(self.ledger_path, self.client)

    def check(self, before: invariants.Snapshot) -> dict[str, Any]:
        return invariants.count(self.ledger_path, self.client, before)
