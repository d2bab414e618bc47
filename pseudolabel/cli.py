"""``pseudolabel`` command line: a thin layer that parses options and calls ``loops/``.

Every command is a typer command. Errors a user can cause (config, data, Label Studio,
a busy workdir) end in one or two lines and a non-zero exit, never a traceback (``--debug``
shows it); Ctrl-C says where the round stopped. Exit codes: 0 done (also: nothing to do),
1 failed, 2 bad config or input, 3 the workdir is in use by another command, 4 Label
Studio unreachable or failing, 130 interrupted.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional, TypeVar

import typer
from rich.console import Console
from typing_extensions import TypeIs

if TYPE_CHECKING:
    from pseudolabel.selftrain import Mode
    from pseudolabel.types import TaskType

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Semi-automatic image labelling with active learning, reviewed in Label Studio.")
console = Console()
err_console = Console(stderr=True)

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="campaign YAML (see configs/)")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="override a config key: section.key=value")]
WaitLockOpt = Annotated[float, typer.Option("--wait-lock", help="seconds to wait when another command holds "
                                            "the workdir (default: exit at once, code 3)")]


def _is_task(value: str) -> TypeIs[TaskType]:
    """Whether ``value`` is a task name (classify, detect, segment)."""
    return value in ("classify", "detect", "segment")


def _is_mode(value: str) -> TypeIs[Mode]:
    """Whether ``value`` is a pseudo-label threshold mode (global, flexmatch, freematch)."""
    return value in ("global", "flexmatch", "freematch")


_state: dict[str, Any] = {"debug": False, "cfg": None}
F = TypeVar("F", bound=Callable[..., Any])


@app.callback()
def _main(debug: Annotated[bool, typer.Option("--debug", help="show tracebacks of errors")] = False) -> None:
    """Semi-automatic image labelling with active learning, reviewed in Label Studio."""
    _state["debug"] = debug


def _fail(msg: str, code: int) -> typer.Exit:
    err_console.print(f"[red]error:[/] {msg}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def _where_stopped() -> str:
    """'round 3 stopped before stage train' from the ledger of the command's campaign."""
    cfg = _state.get("cfg")
    if cfg is None or not (cfg.workdir / "ledger.sqlite").exists():
        return "interrupted"
    from pseudolabel.data.ledger import Ledger

    with Ledger(cfg.workdir / "ledger.sqlite") as ledger:
        rid = ledger.running_round()
        if rid is None:
            return "interrupted between rounds"
        from loops.round import STAGES

        done = set(ledger.round(rid)["stages"])
        nxt = next((s for s in STAGES if s not in done), "finish")
        return f"interrupted: round {rid} stopped in stage {nxt} (completed: {', '.join(s for s in STAGES if s in done) or 'none'})"


def handles_errors(fn: F) -> F:
    """Turn the errors a user can cause into one line and an exit code (see the module doc)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from pseudolabel.config import ConfigError
        from pseudolabel.lock import WorkdirLocked
        from pseudolabel.review.server import LabelStudioNotFound, LabelStudioStartError
        from pseudolabel.review.transport import LabelStudioError, LabelStudioUnavailable

        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except KeyboardInterrupt:
            if _state["debug"]:
                raise
            raise _fail(f"{_where_stopped()}; run the same command again to resume (completed stages are kept, "
                        "nothing is lost)", 130) from None
        except Exception as exc:  # noqa: BLE001 - translated to one line below, re-raised with --debug
            if _state["debug"]:
                raise
            if isinstance(exc, WorkdirLocked):
                raise _fail(str(exc), 3) from None
            if isinstance(exc, LabelStudioUnavailable):
                raise _fail(str(exc), 4) from None
            if isinstance(exc, LabelStudioError):
                raise _fail(str(exc), 4) from None
            if isinstance(exc, (ConfigError, ValueError, FileNotFoundError, LabelStudioNotFound,
                                LabelStudioStartError, UnicodeDecodeError)):
                msg = str(exc) if not isinstance(exc, UnicodeDecodeError) else \
                    f"a file is not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8"
                raise _fail(msg, 2) from None
            raise _fail(f"{type(exc).__name__}: {exc} (run with --debug for the traceback)", 1) from None

    return wrapper  # type: ignore[return-value]


def _load(config: Path, overrides: list[str] | None) -> Any:
    from pseudolabel.config import load_config

    cfg = load_config(config, overrides=overrides or [])
    _state["cfg"] = cfg
    return cfg


def _instructions(cfg: Any) -> str:
    """Labelling instructions written from the config (``label_studio.instructions`` overrides)."""
    if cfg.label_studio.instructions:
        return str(cfg.label_studio.instructions)
    from pseudolabel.review.convert import hotkeys

    keys = hotkeys(cfg.classes)
    classes = ", ".join(f"<b>{c}</b>" + (f" (key {keys[c]})" if c in keys else "") for c in cfg.classes)
    order = ("<p>Images come most uncertain first: the model's guess is already there. Accept it when it is "
             "right, fix it when it is wrong; that is the whole job.</p>")
    if cfg.task == "classify":
        what = f"<p>Choose the class of each image: {classes}. Skip an image only when no class fits.</p>"
    else:
        shape = "a box" if cfg.task == "detect" else "an outline (polygon)"
        what = (f"<p>Draw {shape} around every object of these classes: {classes}. Pre-drawn shapes are the "
                "model's: fix, relabel or delete them, and add the ones it missed. Submit with no shapes when the "
                "image has no such object. A note above the image marks low-confidence guesses.</p>")
    return what + order + "<p>A note above the image says when a task came back for a second look.</p>"


def _client(cfg: Any) -> Any:
    from pseudolabel.review.client import LabelStudioClient
    from pseudolabel.review.transport import RetryPolicy

    token = cfg.label_studio.token()
    if cfg.label_studio.images_root is None:
        raise ValueError("label_studio.images_root is not set: the folder (inside Label Studio's "
                         "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT) that holds the images tasks show")
    ls = cfg.label_studio
    client = LabelStudioClient(
        url=ls.url, token=token, project_title=ls.project_title or cfg.project, classes=cfg.classes,
        task_type=cfg.task, images_root=ls.images_root, document_root=ls.effective_document_root(),
        overlap=cfg.review.overlap, instructions=_instructions(cfg), token_env=ls.token_env,
        retry=RetryPolicy(timeout=ls.timeout, retry_seconds=ls.retry_seconds),
        log=lambda m: console.print(f"  [dim]{m}[/]", highlight=False),
    )
    client.ensure_project()
    return client


def _adopt_if_asked(cfg: Any, client: Any) -> None:
    """``review.adopt_foreign``: adopt answered tasks made by hand before the sync (loops/adopt.py)."""
    if not cfg.review.adopt_foreign:
        return
    from loops.adopt import adopt_foreign
    from pseudolabel.data.ledger import Ledger

    with Ledger(cfg.workdir / "ledger.sqlite") as ledger:
        adopt_foreign(cfg, ledger, client, log=lambda m: console.print(m, highlight=False))


def _lock(cfg: Any, wait: float) -> Any:
    from pseudolabel.lock import workdir_lock

    return workdir_lock(cfg.workdir, wait=wait)


@app.command()
@handles_errors
def demo(
    workdir: Annotated[Path, typer.Option(help="where data, ledger and Label Studio's data go")] = Path("runs/demo"),
    task: Annotated[str, typer.Option(help="classify (digits) | detect | segment (Fashion-MNIST scenes)")] = "classify",
    strategy: Annotated[str, typer.Option(help="strategy, or a comma-separated list to compare in one run")] = "hybrid",
    error_rate: Annotated[float, typer.Option(help="probability that the simulated reviewer answers wrongly")] = 0.0,
    seed: Annotated[int, typer.Option(help="data split seed")] = 0,
    set_: SetOpt = None,
    no_progress: Annotated[bool, typer.Option("--no-progress")] = False,
) -> None:
    """Run a whole campaign on real images with a local Label Studio and a simulated reviewer:
    digits for --task classify, scenes of Fashion-MNIST items for --task detect / segment."""
    from pseudolabel.sim.demo import run_demo
    from pseudolabel.strategies import STRATEGIES
    from pseudolabel.strategies.detection import detection_strategies

    if not _is_task(task):
        raise _fail(f"--task {task!r}: choose classify, detect or segment", 2)
    names = [s.strip() for s in strategy.split(",") if s.strip()]
    choices = list(STRATEGIES) if task == "classify" else list(detection_strategies())
    bad = [s for s in names if s not in choices]
    if bad or not names:
        raise _fail(f"unknown strategy {bad or strategy!r}; choose from: {', '.join(choices)}", 2)
    if not 0.0 <= error_rate <= 1.0:
        raise _fail(f"--error-rate must be between 0 and 1, got {error_rate}", 2)
    run_demo(workdir, strategies=names, error_rate=error_rate, seed=seed, overrides=set_ or [],
             console=console, progress=not no_progress, task=task)


def _round_summary(cfg: Any, res: Any) -> dict[str, Any]:
    metric_keys = ("accuracy", "macro_f1") if cfg.task == "classify" else (
        "map50", "map50_95") + (("mask_map50", "mask_map50_95", "miou") if cfg.task == "segment" else ())
    per = res.metrics.get("per_class_f1") if cfg.task == "classify" else res.metrics.get("per_class_ap50")
    return {"round": res.round_id, "resumed": res.resumed, "labels_used": res.labels_used,
            **{k: res.metrics.get(k) for k in metric_keys},
            "per_class": per, "pseudo_per_class": res.pseudo_per_class or None,
            "queued": res.queued, "stop": res.stop_reason, "idle": res.idle, "seconds": round(res.seconds, 1)}


@app.command()
@handles_errors
def studio(
    config: ConfigOpt,
    data: Annotated[Path, typer.Option(help="Label Studio's data folder (its SQLite database, token.txt, "
                                            "server.log); created on first start")] = Path("label-studio-data"),
    set_: SetOpt = None,
) -> None:
    """Start a local Label Studio for the campaign, in the foreground (Ctrl-C stops it): from
    .venv-ls, on the host and port of label_studio.url (loopback), with local files served
    from label_studio.document_root, telemetry and version checks off. The first start creates
    the database (about 30 s, minutes on a busy machine) and an admin with a token."""
    import time as _time
    from urllib.parse import urlparse

    from pseudolabel.review.server import LabelStudioServer

    cfg = _load(config, set_)
    ls = cfg.label_studio
    if ls.images_root is None:
        raise _fail("label_studio.images_root is not set (the folder inside the document root that holds the "
                    "images)", 2)
    url = urlparse(ls.url)
    if url.hostname not in ("127.0.0.1", "localhost"):
        raise _fail(f"label_studio.url {ls.url} is not on this machine (127.0.0.1): start that server there, "
                    "or point label_studio.url at http://127.0.0.1:PORT", 2)
    data = data.resolve()
    data.mkdir(parents=True, exist_ok=True)
    first = not (data / "label_studio.sqlite3").exists()
    server = LabelStudioServer(data, ls.images_root, port=url.port or 8080, document_root=ls.effective_document_root(),
                               startup_timeout=900)
    console.print(f"starting Label Studio ({'first start: creating the database, ~30 s or more' if first else 'restart'})"
                  f" with LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT={server.document_root} ...", highlight=False)
    t0 = _time.monotonic()
    server.start()
    console.print(f"Label Studio is up at {server.url} after {_time.monotonic() - t0:.0f} s\n"
                  f"  log in as {server.username} / {server.password} (change it in Account & Settings)\n"
                  f"  token: export {ls.token_env}=$(cat {data / 'token.txt'})\n"
                  "  Ctrl-C stops it", highlight=False)
    import signal

    def _stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)          # `kill`, systemd, docker stop: stop it cleanly too
    try:
        while server.running:
            _time.sleep(1)
        raise _fail(f"Label Studio exited; see {server.log_path}", 1)
    except KeyboardInterrupt:
        console.print("stopping Label Studio")
    finally:
        server.stop()


@app.command("round")
@handles_errors
def round_(config: ConfigOpt, set_: SetOpt = None,
           offline: Annotated[bool, typer.Option(help="no Label Studio: train, evaluate, select only")] = False,
           force: Annotated[bool, typer.Option(help="run a round even after a stop rule fired or with nothing "
                                                    "new to learn from; ignore the stop rules in it")] = False,
           wait_lock: WaitLockOpt = 0.0) -> None:
    """Run (or resume) one scheduled round against the configured Label Studio."""
    cfg = _load(config, set_)
    with _lock(cfg, wait_lock):
        from loops.round import run_round

        client = None if offline else _client(cfg)
        if client is not None:
            _adopt_if_asked(cfg, client)
        res = run_round(cfg, client, log=lambda m: console.print(m, highlight=False), force=force)
    console.print(json.dumps(_round_summary(cfg, res)), highlight=False, soft_wrap=True)


@app.command()
@handles_errors
def run(config: ConfigOpt, set_: SetOpt = None,
        wait: Annotated[float, typer.Option(help="minutes to wait for reviewers after each round (0: run one round "
                                                 "and stop; the next scheduled run continues)")] = 0.0,
        force: Annotated[bool, typer.Option(help="go on after a stop rule fired")] = False,
        wait_lock: WaitLockOpt = 0.0) -> None:
    """Run a round; with --wait, wait for reviewers and go on until a stop rule fires or nobody answers."""
    cfg = _load(config, set_)
    with _lock(cfg, wait_lock):
        from loops.campaign import rounds_table, run_campaign
        from loops.review import wait_for_reviews

        client = _client(cfg)
        _adopt_if_asked(cfg, client)
        answer = None
        if wait > 0:
            def answer(res: Any) -> dict[str, Any]:
                return wait_for_reviews(client, res, timeout_s=wait * 60, console=console)
        res = run_campaign(cfg, client, answer=answer, console=console, force=force)
    if res.rows:
        console.print(rounds_table(res.rows))
    console.print(f"stopped: {res.termination}  ({client.project_url})", highlight=False)


@app.command()
@handles_errors
def sync(config: ConfigOpt, set_: SetOpt = None,
         full: Annotated[bool, typer.Option(help="pull everything, not only since the last sweep")] = False,
         wait_lock: WaitLockOpt = 0.0) -> None:
    """Pull reviewers' answers from Label Studio into the ledger now (safe to run any time)."""
    from loops.review import sync_reviews
    from pseudolabel.data.ledger import Ledger

    cfg = _load(config, set_)
    with _lock(cfg, wait_lock):
        client = _client(cfg)
        _adopt_if_asked(cfg, client)
        with Ledger(cfg.workdir / "ledger.sqlite") as ledger:
            res = sync_reviews(ledger, client, round_id=None, full=full, overlap=cfg.review.overlap,
                               consensus=cfg.review.consensus, min_agreement=cfg.review.min_agreement,
                               classes=cfg.classes, log=console.print)
    console.print(json.dumps(res.__dict__))


@app.command()
@handles_errors
def status(config: ConfigOpt, set_: SetOpt = None,
           as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
           offline: Annotated[bool, typer.Option(help="do not ask Label Studio (ledger only)")] = False) -> None:
    """Where the campaign stands: rounds, labels, per-class scores, budget, queue, problems."""
    from loops.status import campaign_status, print_status

    cfg = _load(config, set_)
    if not (cfg.workdir / "ledger.sqlite").exists():
        raise _fail(f"no campaign yet in {cfg.workdir} (no ledger.sqlite); run `pseudolabel round -c {config}`", 1)
    info = campaign_status(cfg, client_factory=None if offline else lambda: _client(cfg))
    if as_json:
        print(json.dumps(info, indent=2, default=str))
        return
    print_status(info, console)


@app.command()
@handles_errors
def adopt(config: ConfigOpt, set_: SetOpt = None, wait_lock: WaitLockOpt = 0.0) -> None:
    """Adopt answered tasks made by hand in Label Studio (no pseudolabel item id): ingest their
    images into the pool and store their answers as human labels (see loops/adopt.py)."""
    from loops.adopt import adopt_foreign
    from pseudolabel.data.ledger import Ledger

    cfg = _load(config, set_)
    with _lock(cfg, wait_lock):
        client = _client(cfg)
        with Ledger(cfg.workdir / "ledger.sqlite") as ledger:
            res = adopt_foreign(cfg, ledger, client, log=lambda m: console.print(m, highlight=False))
    console.print(json.dumps({"adopted": res.adopted, "labels": res.labels, "new_items": res.new_items,
                              "quarantined": res.quarantined, "rejected": res.rejected,
                              "not_local": {str(k): v for k, v in res.not_local.items()}}), highlight=False)


@app.command()
@handles_errors
def serve(
    config: ConfigOpt,
    set_: SetOpt = None,
    host: Annotated[str, typer.Option(help="address to listen on (beyond loopback a token is required)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = 9090,
    token_env: Annotated[str, typer.Option(help="environment variable holding the backend's token (required "
                                                "off loopback; Label Studio sends it as the Basic Auth "
                                                "password)")] = "PSEUDOLABEL_BACKEND_TOKEN",
    connect: Annotated[bool, typer.Option(help="register the backend with the campaign's Label Studio project "
                                               "and make the labelling stream ask it")] = False,
    public_url: Annotated[Optional[str], typer.Option(help="the URL Label Studio reaches the backend at "
                                                           "(default http://HOST:PORT)")] = None,
    batch_size: Annotated[int, typer.Option(help="images per model call")] = 32,
    threads: Annotated[Optional[int], typer.Option(help="torch CPU threads")] = None,
) -> None:
    """Serve the campaign's published model as a Label Studio ML backend (reloaded when a round
    publishes a new one): any task opened in Label Studio gets a prediction."""
    import os

    from loops.serve import run_serve
    from pseudolabel.review.backend import check_bind

    cfg = _load(config, set_)
    token = os.environ.get(token_env) or None
    check_bind(host, token)
    if public_url is not None and not public_url.startswith(("http://", "https://")):
        raise _fail(f"--public-url {public_url!r} must start with http:// or https://", 2)
    if batch_size < 1:
        raise _fail(f"--batch-size must be >= 1, got {batch_size}", 2)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    client = _client(cfg) if connect else None
    try:
        run_serve(cfg, host=host, port=port, token=token, batch_size=batch_size, connect=client,
                  public_url=public_url, log=lambda m: console.print(m, highlight=False, soft_wrap=True))
    except KeyboardInterrupt:
        console.print("ML backend stopped")


@app.command()
@handles_errors
def prelabel(
    config: ConfigOpt,
    set_: SetOpt = None,
    chunk: Annotated[int, typer.Option(help="tasks per prediction import")] = 500,
    batch_size: Annotated[int, typer.Option(help="images per model call")] = 32,
    threads: Annotated[Optional[int], typer.Option(help="torch CPU threads")] = None,
) -> None:
    """Give every task still to be labelled (made by hand too) a prediction of the published
    model now, imported in bulk: "Retrieve predictions" without its time-out."""
    from loops.serve import make_backend
    from loops.serve import prelabel as run_prelabel

    cfg = _load(config, set_)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    client = _client(cfg)
    log = lambda m: console.print(m, highlight=False)  # noqa: E731
    res = run_prelabel(make_backend(cfg, token=None, batch_size=batch_size, log=log), client, chunk=chunk, log=log)
    for tid, why in list(res.failed.items())[:10]:
        console.print(f"  task {tid}: {why}", highlight=False)
    console.print(json.dumps({"model_version": res.model_version, "predicted": res.predicted,
                              "failed": len(res.failed), "seconds": round(res.seconds, 1)}), highlight=False)


@app.command()
@handles_errors
def repair(config: ConfigOpt, set_: SetOpt = None,
           dry_run: Annotated[bool, typer.Option("--dry-run", help="only say what would change")] = False,
           wait_lock: WaitLockOpt = 0.0) -> None:
    """Repair the Label Studio project: delete duplicate tasks (keeping the one with answers),
    point tasks at the images under the current label_studio paths, adopt lost tasks."""
    from loops.repair import repair_project
    from pseudolabel.data.ledger import Ledger

    cfg = _load(config, set_)
    with _lock(cfg, wait_lock):
        client = _client(cfg)
        with Ledger(cfg.workdir / "ledger.sqlite") as ledger:
            res = repair_project(ledger, client, dry_run=dry_run, log=console.print)
    console.print(json.dumps(res), highlight=False)


@app.command()
@handles_errors
def export(
    config: ConfigOpt,
    out: Annotated[Path, typer.Option("--out", "-o", help="new folder to write the dataset to")],
    fmt: Annotated[str, typer.Option("--format", "-f", help="yolo | coco | voc (detect/segment); "
                                                             "imagefolder | csv (classify)")] = "",
    with_pseudo: Annotated[bool, typer.Option("--with-pseudo", help="add confident pseudo-labels of "
                                                                    "images nobody labelled")] = False,
    no_holdout: Annotated[bool, typer.Option("--no-holdout", help="do not write the holdout as a val split")] = False,
    set_: SetOpt = None,
    wait_lock: WaitLockOpt = 0.0,
) -> None:
    """Export the current labels (seed + human, optionally pseudo) for training elsewhere."""
    from loops.export import export_campaign, formats_for
    from pseudolabel.data.ledger import Ledger

    cfg = _load(config, set_)
    fmt = fmt or formats_for(cfg.task)[0]
    if not (cfg.workdir / "ledger.sqlite").exists():
        raise _fail(f"no campaign in {cfg.workdir} (no ledger.sqlite); run a round first", 1)
    with _lock(cfg, wait_lock), Ledger(cfg.workdir / "ledger.sqlite") as ledger:
        res = export_campaign(cfg, ledger, out, fmt=fmt, include_pseudo=with_pseudo, include_holdout=not no_holdout)
    console.print(json.dumps({"out": str(res.out_dir), "format": res.format, "train_labels_by_source": res.counts,
                              "val_images": res.holdout, "entry": str(res.entry)}))


@app.command()
def report(
    config: ConfigOpt,
    round_id: Annotated[Optional[int], typer.Option("--round", help="only this round's page (default: every "
                                                                     "round)")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="folder for the HTML files "
                                                                     "(default: WORKDIR/reports)")] = None,
    set_: SetOpt = None,
) -> None:
    """Write the static HTML report: one self-contained page per round plus index.html (no server)."""
    from loops.round import ledger_for
    from pseudolabel.report import write_reports

    cfg = _load(config, set_)
    if not (cfg.workdir / "ledger.sqlite").exists():
        console.print(f"[red]error:[/] no campaign in {cfg.workdir} (no ledger.sqlite); "
                      f"run `pseudolabel round -c {config}` first")
        raise typer.Exit(1)
    try:
        with ledger_for(cfg) as ledger:
            paths = write_reports(cfg, ledger, rounds=None if round_id is None else [round_id], out_dir=out,
                                  log=console.print)
    except ValueError as e:
        console.print(f"[red]error:[/] {e}")
        raise typer.Exit(2) from None
    console.print(f"open {paths[-1]}")


_PASSTHROUGH: dict[str, Any] = {"context_settings": {"allow_extra_args": True, "ignore_unknown_options": True,
                                     "help_option_names": []}, "add_help_option": False}


@app.command(**_PASSTHROUGH)
@handles_errors
def benchmark(ctx: typer.Context) -> None:
    """Simulated labelling campaigns: strategies side by side with random, same seeds
    (`pseudolabel benchmark --help` for the options)."""
    from pseudolabel.sim.benchmark import main as bench_main

    raise typer.Exit(bench_main(list(ctx.args)))


@app.command()
@handles_errors
def retrain(
    config: ConfigOpt,
    set_: SetOpt = None,
    mode: Annotated[str, typer.Option(help="pseudo-label thresholds: global | flexmatch | freematch")] = "global",
    teacher: Annotated[Optional[Path], typer.Option(help="model.pt that pseudo-labels the pool "
                                                         "(default: the last round's)")] = None,
    min_gain: Annotated[float, typer.Option(help="publish only if the holdout metric beats the last published "
                                                 "model by more than this")] = 0.0,
    wait_lock: WaitLockOpt = 0.0,
) -> None:
    """Semi-supervised retraining run; publishes a model only if it beats the last one."""
    from loops.retrain import retrain as run_retrain
    from pseudolabel.data.ledger import Ledger
    from pseudolabel.types import utcnow

    if not _is_mode(mode):
        raise _fail(f"--mode {mode!r}: choose global, flexmatch or freematch", 2)
    cfg = _load(config, set_)
    with _lock(cfg, wait_lock), Ledger(cfg.workdir / "ledger.sqlite") as ledger:
        stamp = utcnow().strftime("%Y%m%dT%H%M%S")
        res = run_retrain(cfg, ledger, candidate_dir=cfg.workdir / "retrain" / stamp, teacher=teacher,
                          mode=mode, min_gain=min_gain)
    console.print(("published " + str(res.published)) if res.accepted else "not published", "-", res.reason,
                  "- trained on", res.counts_by_source)


@app.command("label-source")
@handles_errors
def label_source(
    model: Annotated[Path, typer.Option("--model", "-m", help="a round's model.pt (any adapter checkpoint)")],
    source: Annotated[str, typer.Option(help="folder, or s3:// / gs:// / hdfs:// prefix pyarrow can open")],
    out: Annotated[Path, typer.Option("--out", "-o", help="shard folder (resumable: rerun to continue)")],
    address: Annotated[Optional[str], typer.Option(
        help="Ray cluster: auto | ray://host:10001 (default: a local Ray started for this run)")] = None,
    actors: Annotated[int, typer.Option(help="model actors (one model copy each)")] = 1,
    gpus_per_actor: Annotated[float, typer.Option(help="GPUs per actor (> 0 runs the model on CUDA)")] = 0.0,
    cpus_per_actor: Annotated[float, typer.Option(help="CPUs reserved per actor")] = 0.5,
    batch_size: Annotated[int, typer.Option(help="images per actor call")] = 64,
    shard_size: Annotated[int, typer.Option(help="items per parquet shard")] = 10_000,
) -> None:
    """Pseudo-label every image under a folder or object-store prefix on Ray Data, into the
    engine's shard format (see docs/ray.md). No ledger is needed or touched."""
    from pseudolabel.distributed import pseudo_label_ray_source

    res = pseudo_label_ray_source(model, source, out, address=address, num_actors=actors,
                                  num_gpus_per_actor=gpus_per_actor, num_cpus_per_actor=cpus_per_actor,
                                  batch_size=batch_size, shard_size=shard_size)
    console.print(f"{res.n_items} image files: {res.n_scored} scored, {res.n_skipped} already scored, "
                  f"{len(res.quarantined)} quarantined, {len(res.duplicates)} duplicates; "
                  f"{len(res.shards)} shards in {res.out_dir} ({res.seconds:.1f} s)")
    for q in res.quarantined:
        console.print(f"  quarantined {q.path}: {q.reason}")


@app.command("bench-infer")
@handles_errors
def bench_infer(
    out: Annotated[Path, typer.Option(help="folder for the images and bench-infer.json")] = Path("runs/bench-infer"),
    n_images: Annotated[int, typer.Option(help="scenes to pseudo-label")] = 200,
    image_size: Annotated[int, typer.Option(help="model input side in pixels")] = 640,
    batch_size: Annotated[Optional[int], typer.Option(
        help="images per forward pass, every method (default: the engine's automatic choice)")] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N")] = "auto",
    workers: Annotated[Optional[int], typer.Option(help="decode workers (default: min(4, cpus - 1))")] = None,
    model_yaml: Annotated[str, typer.Option(help="YOLO network YAML")] = "yolo11n.yaml",
    repeats: Annotated[int, typer.Option(help="timed rounds per method (best is reported)")] = 1,
    threads: Annotated[Optional[int], typer.Option(help="torch / ONNX Runtime CPU threads")] = None,
    runtime: Annotated[str, typer.Option(help="engine runtime: auto (ONNX Runtime on CPU) | torch | onnx")] = "auto",
    model: Annotated[Optional[Path], typer.Option(
        help="a YOLO detection checkpoint to measure (e.g. a round's model.pt or an earlier bench-infer's "
             "model/model.pt); default: train yolo11n briefly on composited scenes first")] = None,
    conf: Annotated[float, typer.Option(help="confidence threshold of every method (without --model)")] = 0.05,
    train_epochs: Annotated[int, typer.Option(help="epochs of the brief training (without --model)")] = 30,
) -> None:
    """Pseudo-labelling throughput: our engine vs Ultralytics predict vs a per-image loop vs the
    model alone (the ceiling), on Fashion-MNIST scenes written as JPEG files, with a detector
    that keeps boxes (boxes per image are reported)."""
    import torch

    from pseudolabel.sim.bench_infer import run_bench_infer

    if threads is not None:
        torch.set_num_threads(threads)
    run_bench_infer(out, n_images=n_images, image_size=image_size, scene_size=image_size, batch_size=batch_size,
                    device=device, workers=workers, model_yaml=model_yaml, repeats=repeats, runtime=runtime,
                    model=model, conf=conf, train_epochs=train_epochs)


@app.command("bench-memory")
@handles_errors
def bench_memory(
    out: Annotated[Path, typer.Option(help="folder for the image pool, the shards and bench-memory.json")] = Path(
        "runs/bench-memory"),
    sizes: Annotated[Optional[list[int]], typer.Option("--size", help="pool size to run (repeat; default 10000 and "
                                                       "100000)")] = None,
    image_size: Annotated[int, typer.Option(help="model input side in pixels")] = 64,
    scene_size: Annotated[int, typer.Option(help="side of the JPEG scenes in pixels")] = 96,
    batch_size: Annotated[int, typer.Option(help="images per forward pass")] = 16,
    shard_size: Annotated[int, typer.Option(help="predictions per parquet shard")] = 10_000,
    threads: Annotated[int, typer.Option(help="torch / OpenMP threads of each run")] = 1,
    pool: Annotated[Optional[Path], typer.Option(help="image pool folder, written once and reused "
                                                 "(default: OUT/pool)")] = None,
) -> None:
    """Pseudo-labelling memory at pool scale: peak RSS, RSS along the run and its slope per 10k
    items, for each pool size in a fresh process (real JPEG files, untrained yolo11n, CPU)."""
    from pseudolabel.sim.bench_memory import run_bench_memory

    run_bench_memory(out, sizes=tuple(sizes or (10_000, 100_000)), image_size=image_size,
                     scene_size=scene_size, batch_size=batch_size, shard_size=shard_size, threads=threads,
                     pool_dir=pool)


@app.command("bench-select")
@handles_errors
def bench_select(
    sizes: Annotated[Optional[list[int]], typer.Option("--size", help="pool size (repeat; default 10^4, 10^5, "
                                                       "10^6)")] = None,
    dim: Annotated[int, typer.Option(help="embedding dimension")] = 128,
    k: Annotated[int, typer.Option(help="items selected")] = 100,
    device: Annotated[str, typer.Option(help="auto | cpu | torch-cpu | cuda[:N]")] = "auto",
    threads: Annotated[int, typer.Option(help="torch / BLAS threads (shared machines: 1)")] = 1,
) -> None:
    """Selection timings (top-k uncertainty, k-center, hybrid) at 10^4..10^6 items."""
    import torch

    from pseudolabel.sim.bench_select import format_table, run_bench_select

    torch.set_num_threads(threads)
    rows = run_bench_select(list(sizes or (10_000, 100_000, 1_000_000)), dim, k, device)
    console.print(format_table(rows))


# -- `pseudolabel weights ...`: pretrained weights store (fetch / pack / import / verify / list) --
from pseudolabel.cli_weights import weights_app  # noqa: E402

app.add_typer(weights_app, name="weights")


def main() -> None:
    """The ``pseudolabel`` console script: run the Typer app on ``sys.argv``."""
    app()


if __name__ == "__main__":
    main()
