"""``pseudolabel`` command line: a thin layer that parses options and calls ``loops/``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Semi-automatic image labelling with active learning, reviewed in Label Studio.")
console = Console()

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="campaign YAML (see configs/)")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="override a config key: section.key=value")]


def _load(config: Path, overrides: list[str] | None):  # noqa: ANN202
    from pseudolabel.config import ConfigError, load_config

    try:
        return load_config(config, overrides=overrides or [])
    except ConfigError as e:
        console.print(f"[red]error:[/] {e}")
        raise typer.Exit(2) from None


def _client(cfg):  # noqa: ANN001, ANN202
    from pseudolabel.config import ConfigError
    from pseudolabel.review.client import LabelStudioClient

    try:
        token = cfg.label_studio.token()
    except ConfigError as e:
        console.print(f"[red]error:[/] {e}")
        raise typer.Exit(2) from None
    if cfg.label_studio.images_root is None:
        console.print("[red]error:[/] label_studio.images_root is not set: it must be the folder Label Studio "
                      "serves local files from (LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT), with your images under it")
        raise typer.Exit(2)
    client = LabelStudioClient(url=cfg.label_studio.url, token=token,
                               project_title=cfg.label_studio.project_title or cfg.project,
                               classes=cfg.classes, task_type=cfg.task, images_root=cfg.label_studio.images_root,
                               overlap=cfg.review.overlap)
    try:
        client.ensure_project()
    except ValueError as e:
        console.print(f"[red]error:[/] {e}")
        raise typer.Exit(2) from None
    return client


@app.command()
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
    from loops.demo import run_demo
    from pseudolabel.config import ConfigError
    from pseudolabel.strategies import STRATEGIES

    if task not in ("classify", "detect", "segment"):
        console.print(f"[red]error:[/] --task {task!r}: choose classify, detect or segment")
        raise typer.Exit(2)
    names = [s.strip() for s in strategy.split(",") if s.strip()]
    if task != "classify":
        from pseudolabel.strategies.detection import DETECTION_STRATEGIES as STRATEGIES  # noqa: N811
    bad = [s for s in names if s not in STRATEGIES]
    if bad or not names:
        console.print(f"[red]error:[/] unknown strategy {bad or strategy!r}; choose from: {', '.join(STRATEGIES)}")
        raise typer.Exit(2)
    if not 0.0 <= error_rate <= 1.0:
        console.print(f"[red]error:[/] --error-rate must be between 0 and 1, got {error_rate}")
        raise typer.Exit(2)
    try:
        run_demo(workdir, strategies=names, error_rate=error_rate, seed=seed, overrides=set_ or [],
                 console=console, progress=not no_progress, task=task)
    except (ConfigError, ValueError, FileNotFoundError) as e:
        console.print(f"[red]error:[/] {e}")
        raise typer.Exit(2) from None


@app.command("round")
def round_(config: ConfigOpt, set_: SetOpt = None,
           offline: Annotated[bool, typer.Option(help="no Label Studio: train, evaluate, select only")] = False) -> None:
    """Run (or resume) one scheduled round against the configured Label Studio."""
    from loops.round import run_round

    cfg = _load(config, set_)
    client = None if offline else _client(cfg)
    res = run_round(cfg, client, log=console.print)
    metric_keys = ("accuracy", "macro_f1") if cfg.task == "classify" else (
        "map50", "map50_95") + (("mask_map50", "mask_map50_95", "miou") if cfg.task == "segment" else ())
    console.print(json.dumps({"round": res.round_id, "resumed": res.resumed, "labels_used": res.labels_used,
                              **{k: res.metrics.get(k) for k in metric_keys},
                              "queued": res.queued, "stop": res.stop_reason, "seconds": round(res.seconds, 1)}))


@app.command()
def run(config: ConfigOpt, set_: SetOpt = None,
        wait: Annotated[float, typer.Option(help="minutes to wait for reviewers between rounds (0: stop and "
                                                 "let the next scheduled run continue)")] = 0.0) -> None:
    """Run rounds until a threshold or the label budget is met (waiting for reviewers between rounds)."""
    from loops.campaign import rounds_table, run_campaign
    from loops.review import wait_for_reviews

    cfg = _load(config, set_)
    client = _client(cfg)
    answer = None
    if wait > 0:
        def answer(res):  # noqa: ANN001, ANN202
            return wait_for_reviews(client, res, timeout_s=wait * 60, console=console)
    res = run_campaign(cfg, client, answer=answer, console=console)
    console.print(rounds_table(res.rows))
    console.print(f"stopped: {res.termination}")


@app.command()
def sync(config: ConfigOpt, set_: SetOpt = None,
         full: Annotated[bool, typer.Option(help="pull everything, not only since the last sweep")] = False) -> None:
    """Pull reviewers' answers from Label Studio into the ledger now (safe to run any time)."""
    from loops.review import sync_reviews
    from loops.round import ledger_for

    cfg = _load(config, set_)
    client = _client(cfg)
    with ledger_for(cfg) as ledger:
        res = sync_reviews(ledger, client, round_id=None, full=full, overlap=cfg.review.overlap,
                           consensus=cfg.review.consensus, min_agreement=cfg.review.min_agreement,
                           classes=cfg.classes)
    console.print(json.dumps(res.__dict__))


@app.command()
def status(config: ConfigOpt, set_: SetOpt = None,
           as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False) -> None:
    """Where the campaign stands: rounds, labels by source, review queue, metrics."""
    from loops.round import ledger_for

    cfg = _load(config, set_)
    db = cfg.workdir / "ledger.sqlite"
    if not db.exists():
        console.print(f"no campaign yet in {cfg.workdir} (no ledger.sqlite); run `pseudolabel round -c {config}`")
        raise typer.Exit(1)
    with ledger_for(cfg) as ledger:
        info = {
            "project": cfg.project, "workdir": str(cfg.workdir),
            "items": ledger.split_counts(), "labels_by_source": ledger.label_counts(),
            "review_tasks": ledger.task_counts(), "termination": ledger.get_meta("termination"),
            "metric": cfg.stop.metric,
            "rounds": [{"round": r["id"], "status": r["status"], "stages": r["stages"],
                        "accuracy": r["metrics"].get("accuracy"), "macro_f1": r["metrics"].get("macro_f1"),
                        cfg.stop.metric: r["metrics"].get(cfg.stop.metric),
                        "labels_used": r["metrics"].get("labels_used"), "model_version": r["model_version"]}
                       for r in ledger.rounds()],
        }
    if as_json:
        print(json.dumps(info, indent=2))
        return
    console.print(f"[bold]{info['project']}[/]  ({info['workdir']})")
    console.print("items: " + ", ".join(f"{k} {v}" for k, v in info["items"].items()))
    console.print("labels by source: " + ", ".join(f"{k} {v}" for k, v in info["labels_by_source"].items()))
    console.print("review tasks: " + ", ".join(f"{k} {v}" for k, v in info["review_tasks"].items()))
    t = Table(title="rounds")
    metric = cfg.stop.metric
    for c in ("round", "status", "labels used", f"holdout {metric}", "stages done"):
        t.add_column(c)
    for r in info["rounds"]:
        t.add_row(str(r["round"]), r["status"], str(r["labels_used"] or "-"),
                  f"{r[metric]:.4f}" if r.get(metric) is not None else "-", ",".join(r["stages"]))
    console.print(t)
    term = info["termination"]
    console.print(f"termination: {term['reason'] if term else 'not stopped yet'}")


@app.command()
def export(
    config: ConfigOpt,
    out: Annotated[Path, typer.Option("--out", "-o", help="new folder to write the dataset to")],
    fmt: Annotated[str, typer.Option("--format", "-f", help="yolo | coco | voc (detect/segment); "
                                                             "imagefolder | csv (classify)")] = "",
    with_pseudo: Annotated[bool, typer.Option("--with-pseudo", help="add confident pseudo-labels of "
                                                                    "images nobody labelled")] = False,
    no_holdout: Annotated[bool, typer.Option("--no-holdout", help="do not write the holdout as a val split")] = False,
    set_: SetOpt = None,
) -> None:
    """Export the current labels (seed + human, optionally pseudo) for training elsewhere."""
    from loops.export import export_campaign, formats_for
    from loops.round import ledger_for

    cfg = _load(config, set_)
    fmt = fmt or formats_for(cfg.task)[0]
    if not (cfg.workdir / "ledger.sqlite").exists():
        console.print(f"[red]error:[/] no campaign in {cfg.workdir} (no ledger.sqlite); run a round first")
        raise typer.Exit(1)
    try:
        with ledger_for(cfg) as ledger:
            res = export_campaign(cfg, ledger, out, fmt=fmt, include_pseudo=with_pseudo,
                                  include_holdout=not no_holdout)
    except ValueError as e:
        console.print(f"[red]error:[/] {e}")
        raise typer.Exit(2) from None
    console.print(json.dumps({"out": str(res.out_dir), "format": res.format, "train_labels_by_source": res.counts,
                              "val_images": res.holdout, "entry": str(res.entry)}))


_PASSTHROUGH = {"context_settings": {"allow_extra_args": True, "ignore_unknown_options": True,
                                     "help_option_names": []}, "add_help_option": False}


@app.command(**_PASSTHROUGH)
def benchmark(ctx: typer.Context) -> None:
    """Simulated labelling campaigns: strategies side by side with random, same seeds
    (`pseudolabel benchmark --help` for the options)."""
    from loops.benchmark import main as bench_main

    raise typer.Exit(bench_main(list(ctx.args)))


@app.command(**_PASSTHROUGH)
def retrain(ctx: typer.Context) -> None:
    """Semi-supervised retraining run; publishes a model only if it beats the last one
    (`pseudolabel retrain --help` for the options)."""
    from loops.retrain import main as retrain_main

    raise typer.Exit(retrain_main(list(ctx.args)))


@app.command("label-source")
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

    try:
        res = pseudo_label_ray_source(model, source, out, address=address, num_actors=actors,
                                      num_gpus_per_actor=gpus_per_actor, num_cpus_per_actor=cpus_per_actor,
                                      batch_size=batch_size, shard_size=shard_size)
    except ValueError as e:
        console.print(f"[red]error:[/] {e}")
        raise typer.Exit(2) from None
    console.print(f"{res.n_items} image files: {res.n_scored} scored, {res.n_skipped} already scored, "
                  f"{len(res.quarantined)} quarantined, {len(res.duplicates)} duplicates; "
                  f"{len(res.shards)} shards in {res.out_dir} ({res.seconds:.1f} s)")
    for q in res.quarantined:
        console.print(f"  quarantined {q.path}: {q.reason}")


@app.command("bench-infer")
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
) -> None:
    """Pseudo-labelling throughput: our engine vs Ultralytics predict vs a per-image loop vs the
    model alone (the ceiling), on Fashion-MNIST scenes written as JPEG files."""
    import torch

    from loops.bench_infer import run_bench_infer

    if threads is not None:
        torch.set_num_threads(threads)
    run_bench_infer(out, n_images=n_images, image_size=image_size, scene_size=image_size, batch_size=batch_size,
                    device=device, workers=workers, model_yaml=model_yaml, repeats=repeats, runtime=runtime)


@app.command("bench-memory")
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
    from loops.bench_memory import run_bench_memory

    try:
        run_bench_memory(out, sizes=tuple(sizes or (10_000, 100_000)), image_size=image_size,
                         scene_size=scene_size, batch_size=batch_size, shard_size=shard_size, threads=threads,
                         pool_dir=pool)
    except ValueError as e:
        console.print(f"[red]error:[/] {e}")
        raise typer.Exit(2) from None


@app.command("bench-select", **_PASSTHROUGH)
def bench_select(ctx: typer.Context) -> None:
    """Selection timings (top-k uncertainty, k-center, hybrid) at 10^4..10^6 items
    (`pseudolabel bench-select --help` for the options)."""
    from loops.bench_select import main as select_main

    raise typer.Exit(select_main(list(ctx.args)))


# -- `pseudolabel weights ...`: pretrained weights store (fetch / pack / import / verify / list) --
from pseudolabel.cli_weights import weights_app  # noqa: E402

app.add_typer(weights_app, name="weights")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
