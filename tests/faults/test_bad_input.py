"""User mistakes: each ends in one or two lines (what is wrong, where, what would be
accepted) and a non-zero exit, without a traceback (``--debug`` shows it), and loses nothing.

Every mistake is made on a campaign that already has a round, answers and a synced ledger;
after the failed command the invariants of :mod:`faults.invariants` are all 0 and the ledger
holds exactly what it held. Mistakes that only a new campaign can make (an empty or
incomplete seed set) run in a fresh workdir, which must hold no round afterwards.
"""

from __future__ import annotations

import functools
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from pseudolabel.data.ledger import Ledger
from pseudolabel.review.server import free_port

from . import table
from .campaign import Campaign, CliResult
from .invariants import INVARIANTS
from .proxy import FaultProxy, Rule

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Output that must never reach a terminal or a cron mail.
LEAKS = ("traceback (most recent call last)", "set-cookie", "csrftoken", "sessionid", "authorization",
         "www-authenticate", "headers:")


@dataclass
class Mistake:
    """``args``: extra CLI arguments; ``token``: the API token to use (None: unset);
    ``fresh``: run in a new workdir; ``expect``: exit code and substrings of the error."""

    name: str
    args: list[str]
    code: int
    says: list[str]
    token: str | None = "<server>"
    fresh: bool = False
    extra: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory, fault_data: Any, label_studio: Any) -> Campaign:
    """A campaign with one round, answers, and a sync: something to lose."""
    c = Campaign("bad-input", tmp_path_factory.mktemp("bad") / "work", fault_data, label_studio)
    assert c.cli("round").code == 0
    c.answer(limit=6)
    assert c.cli("sync").code == 0
    return c


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, fault_data: Any) -> Path:
    """Bad data sets next to copies of the good ones."""
    d = tmp_path_factory.mktemp("bad-data")
    seed = fault_data.root / "seed"
    rows = [(p, p.parent.name) for p in sorted(seed.glob("*/*.png"))]

    def csv(name: str, text: str, encoding: str = "utf-8") -> None:
        (d / name).write_bytes(text.encode(encoding))

    csv("no_label_column.csv", "path,class\n" + "".join(f"{p},{c}\n" for p, c in rows))
    csv("unknown_class.csv", "path,label\n" + "".join(f"{p},{c}\n" for p, c in rows[:5]) + f"{rows[5][0]},eleven\n")
    csv("missing_file.csv", "path,label\n" + "".join(f"{p},{c}\n" for p, c in rows[:5]) + f"{seed}/0/gone.png,0\n")
    csv("latin1.csv", "path,label\n" + "".join(f"{p},{c}\n" for p, c in rows) + f"{d}/café.png,0\n", "latin-1")
    csv("header_only.csv", "path,label\n")
    shutil.copytree(seed, d / "conflict")
    first = sorted((seed / "0").glob("*.png"))[0]
    shutil.copyfile(first, d / "conflict" / "1" / first.name)
    shutil.copytree(seed, d / "extra_folder")
    shutil.copytree(seed / "7", d / "extra_folder" / "seven")
    for c in ("0", "1"):
        (d / "empty_seed" / c).mkdir(parents=True)
        (d / "empty_holdout" / c).mkdir(parents=True)
    return d


@pytest.fixture(scope="module")
def not_label_studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A plain ``http.server`` on a free port (another program where Label Studio should be)."""
    root = tmp_path_factory.mktemp("www")
    (root / "index.html").write_text("<html><body>my other service</body></html>")
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(SimpleHTTPRequestHandler, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def error_lines(output: str) -> list[str]:
    """The error a user reads: from the first ``error:`` line to the end."""
    lines = [ln for ln in output.splitlines() if ln.strip()]
    start = next((i for i, ln in enumerate(lines) if ln.startswith("error:")), len(lines))
    return lines[start:]


def ledger_state(c: Campaign, workdir: Path | None = None) -> tuple[Any, ...]:
    path = (workdir or c.workdir) / "ledger.sqlite"
    if not path.exists():
        return ()
    with Ledger(path) as ledger:
        return (ledger.all_labels(), ledger.rounds(), ledger.review_tasks(), ledger.split_counts(include_gone=True))


def mistakes(d: Path, seed: Path, pool: Path, other: str, web: str) -> list[Mistake]:
    csv = ["--set", "data.seed.format=csv", "--set"]
    return [
        Mistake("conflicting labels for identical bytes", ["--set", f"data.seed.path={d / 'conflict'}"], 2,
                ["conflicting labels for identical image bytes", "/conflict/0/", "/conflict/1/", "give the image one label"]),
        Mistake("a CSV without a label column", [*csv, f"data.seed.path={d / 'no_label_column.csv'}"], 2,
                ["no_label_column.csv:1: missing required column(s) label", "must contain path,label"]),
        Mistake("an unknown class in a CSV", [*csv, f"data.seed.path={d / 'unknown_class.csv'}"], 2,
                ["unknown_class.csv:7: unknown class 'eleven'", "accepted class names", "'0', '1'"]),
        Mistake("a CSV listing a missing file (new campaign)", [*csv, f"data.seed.path={d / 'missing_file.csv'}"],
                2, ["missing_file.csv:7: image file", "gone.png", "not found"], fresh=True),
        Mistake("a missing seed folder", ["--set", f"data.seed.path={d / 'no_such_folder'}"], 2,
                ["no_such_folder does not exist"]),
        Mistake("a missing pool folder", ["--set", f"data.pool.path={pool.parent / 'no_such_pool'}"], 2,
                ["no_such_pool does not exist"]),
        Mistake("an empty seed set (new campaign)", ["--set", f"data.seed.path={d / 'empty_seed'}"], 2,
                ["empty_seed: no usable labelled image", "need at least one image"], fresh=True),
        Mistake("a seed CSV with a header only (new campaign)", [*csv, f"data.seed.path={d / 'header_only.csv'}"],
                2, ["header_only.csv: no usable labelled image", "need at least one image"], fresh=True),
        Mistake("an empty holdout (new campaign)", ["--set", f"data.holdout.path={d / 'empty_holdout'}"], 2,
                ["empty_holdout: no usable labelled image", "need at least one image"], fresh=True),
        Mistake("a seed folder that is not a class", ["--set", f"data.seed.path={d / 'extra_folder'}"], 2,
                ["folder 'seven' is not a known class", "accepted class names"]),
        Mistake("a Latin-1 CSV", [*csv, f"data.seed.path={d / 'latin1.csv'}"], 2,
                ["latin1.csv:22: not UTF-8", "must be UTF-8", "iconv -f latin1 -t utf-8"]),
        Mistake("Label Studio unreachable (wrong port)",
                ["--set", f"label_studio.url={other}", "--set", "label_studio.retry_seconds=2"], 4,
                [f"cannot reach Label Studio at {other}", "is the server running"]),
        Mistake("API token missing", [], 2, ["Label Studio token missing", "LABEL_STUDIO_API_KEY"], token=None),
        Mistake("API token invalid (legacy token)", [], 4, ["refused the token", "LABEL_STUDIO_API_KEY",
                "Personal Access Token"], token="0123456789abcdef0123456789abcdef01234567"),
        Mistake("API token invalid (personal access token)", [], 4, ["refused the token", "LABEL_STUDIO_API_KEY"],
                token="eyJhbGciOiJIUzI1NiJ9.eyJ0b2tlbl90eXBlIjoicmVmcmVzaCJ9.c2lnbmF0dXJl"),
        Mistake("not Label Studio: a plain http.server on the port", ["--set", f"label_studio.url={web}"], 4,
                [web, "is it Label Studio"]),
    ]


def test_user_mistakes(base: Campaign, files: Path, fault_data: Any, not_label_studio: str,
                       tmp_path: Path) -> None:
    other = f"http://127.0.0.1:{free_port()}"
    failures = []
    for m in mistakes(files, fault_data.root / "seed", fault_data.root / "pool", other, not_label_studio):
        workdir = tmp_path / m.name.replace(" ", "_") if m.fresh else None
        args = ["round", *m.args] + (["--set", f"workdir={workdir}"] if workdir else [])
        snap = base.snapshot()
        before = ledger_state(base)
        token = base.server.token if m.token == "<server>" else m.token
        r = base.cli(*args, token=token) if token is not None else _without_token(base, args)
        problems = _judge(m, r, token)
        counts = base.check(snap)
        if ledger_state(base) != before:
            problems.append("the campaign's ledger changed")
        if workdir is not None and ledger_state(base, workdir) and ledger_state(base, workdir)[1]:
            problems.append("the new campaign has a round")
        if {k: counts[k] for k in INVARIANTS} != dict.fromkeys(INVARIANTS, 0):
            problems.append(f"invariants {counts['detail']}")
        lines = error_lines(r.output)
        table.record("bad input", m.name, run=f"exit {r.code}, {len(lines)} line(s)", rerun="-", counts=counts,
                     seconds=r.seconds, note=(lines[0][7:] if lines else r.output[-120:]).replace("|", "/"))
        if problems:
            failures.append(f"{m.name}: {'; '.join(problems)}\n{r.output}")
    assert not failures, "\n\n".join(failures)
    assert base.cli("round").code == 0  # the campaign goes on


def _without_token(c: Campaign, args: list[str]) -> CliResult:
    from typer.testing import CliRunner

    from pseudolabel.cli import app

    argv = [args[0], "-c", str(c.config_path), *args[1:]]
    t = time.perf_counter()
    r = CliRunner().invoke(app, argv, env={"LABEL_STUDIO_API_KEY": None})
    return CliResult(r.exit_code, r.output, time.perf_counter() - t,
                     r.exception if not isinstance(r.exception, SystemExit) else None)


def _judge(m: Mistake, r: CliResult, token: str | None) -> list[str]:
    problems = []
    lines = error_lines(r.output)
    if r.code != m.code:
        problems.append(f"exit {r.code}, expected {m.code}")
    if r.exception is not None:
        problems.append(f"uncaught {type(r.exception).__name__}")
    if not 1 <= len(lines) <= 2:
        problems.append(f"{len(lines)} error lines")
    text = "\n".join(lines)
    problems += [f"does not say {s!r}" for s in m.says if s not in text]
    low = r.output.lower()
    problems += [f"shows {s!r}" for s in LEAKS if s.lower() in low]
    if token and m.code == 4 and token in r.output:
        problems.append("shows the token")
    return problems


def test_server_answers_every_page(base: Campaign, label_studio: Any) -> None:
    """A web page answering HTTP 200 for every path (a proxy login page, another app)."""
    with FaultProxy(label_studio.url) as proxy:
        proxy.set(Rule("body", status=200, body=b"<html><body>Please log in</body></html>"))
        snap = base.snapshot()
        url = proxy.url
        r = base.cli("round", "--set", f"label_studio.url={url}")
        counts = base.check(snap)
    lines = error_lines(r.output)
    table.record("bad input", "a web page answering HTTP 200 for everything", run=f"exit {r.code}, "
                 f"{len(lines)} line(s)", rerun="-", counts=counts, seconds=r.seconds, note=lines[0][7:] if lines else "")
    assert r.code == 4 and 1 <= len(lines) <= 2 and r.exception is None, r.output
    assert url in lines[0] and "not Label Studio's API" in lines[0]
    assert {k: counts[k] for k in INVARIANTS} == dict.fromkeys(INVARIANTS, 0)


def test_debug_shows_the_traceback(base: Campaign, files: Path) -> None:
    """As a real process: no traceback without --debug, the traceback with it."""
    args = ["round", "-c", str(base.config_path), "--offline", "--set", f"data.seed.path={files / 'latin1.csv'}",
            "--set", "data.seed.format=csv"]
    plain = base.run_process(*args)
    debug = base.run_process("--debug", *args)
    assert plain.code == 2 and "Traceback" not in plain.output, plain.output
    assert len(error_lines(plain.output)) == 1 and "latin1.csv:22: not UTF-8" in plain.output
    assert debug.code != 0 and "Traceback" in debug.output and "latin1.csv:22" in debug.output
