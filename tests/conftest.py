"""Shared fixtures: a real Label Studio server (session-scoped) and real PNG images.

The server runs from ``.venv-ls`` (made by ``scripts/setup.sh``). Where it is missing, the
integration tests are skipped locally and FAIL in CI (``CI=true``), so a CI machine without
the server cannot pass by silently skipping them.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import netguard
from pseudolabel.review.server import LabelStudioNotFound, LabelStudioServer, find_label_studio
from pseudolabel.types import Item


netguard.install()


# A suite started in the background (`cmd &` from a script, nohup) inherits an ignored SIGINT, and
# so does every process it starts: the Ctrl-C tests could never reach their subprocess. Python
# handles SIGINT again here, so the children start with the default disposition (Ctrl-C works).
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--faults-full", action="store_true", default=False,
                     help="also run the full fault-injection matrix (tests marked faults_full; "
                          "`python -m tests.faults.report` runs it and prints the table)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # The full fault matrix takes many minutes: CI runs a representative set (see tests/faults/).
    if config.getoption("--faults-full") or "faults_full" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="full fault matrix: run with --faults-full (or python -m tests.faults.report)")
    for item in items:
        if "faults_full" in item.keywords:
            item.add_marker(skip)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # A library may catch the NonLoopbackConnection it got; the attempt still fails the run.
    if netguard.attempts:
        print("\nnon-loopback connections were attempted during the tests:", *netguard.attempts, sep="\n  ")
        session.exitstatus = 1


def _server_or_skip() -> Path:
    try:
        return find_label_studio()
    except LabelStudioNotFound as exc:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"CI needs the Label Studio server for integration tests: {exc}")
        pytest.skip(f"Label Studio server not installed: {exc}")


@pytest.fixture(scope="session")
def ls_images_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The images root the session's Label Studio serves (one level below its document root)."""
    root = tmp_path_factory.mktemp("ls") / "images"
    root.mkdir()
    return root


@pytest.fixture(scope="session")
def label_studio(
    tmp_path_factory: pytest.TempPathFactory, ls_images_root: Path
) -> Iterator[LabelStudioServer]:
    """A real Label Studio server on a free loopback port, stopped after the session."""
    exe = _server_or_skip()
    # First start runs migrations: 30 s on a quiet machine, minutes on a loaded one.
    server = LabelStudioServer(
        tmp_path_factory.mktemp("ls-data"), ls_images_root, ls_bin=exe, startup_timeout=600
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def ls_images(ls_images_root: Path) -> list[Item]:
    """12 real digit images (scikit-learn's digits, 32x32 PNG) under the images root; the
    true class is the last ``_``-separated part of each file's stem."""
    return write_digit_pngs(ls_images_root / "digits", 12)


@pytest.fixture(scope="session")
def make_digit_pngs():  # type: ignore[no-untyped-def]
    """Factory fixture: ``make_digit_pngs(folder, n, offset=0) -> list[Item]``."""
    return write_digit_pngs


def write_digit_pngs(folder: Path, n: int, *, offset: int = 0) -> list[Item]:
    """Write ``n`` digit PNGs (32x32, grayscale) to ``folder``; item ``i`` shows a digit whose
    class is ``load_digits().target[offset + i]``. Returns Items with sha256 ids."""
    from PIL import Image
    from sklearn.datasets import load_digits

    from pseudolabel.data.images import sha256_file

    digits = load_digits()
    folder.mkdir(parents=True, exist_ok=True)
    items = []
    for i in range(offset, offset + n):
        img = (digits.images[i % len(digits.images)] / 16.0 * 255).astype(np.uint8)
        path = folder / f"digit_{i:05d}_{int(digits.target[i % len(digits.target)])}.png"
        # Images wrap around after 1,797; mark the copy so every file (and id) is unique.
        pil = Image.fromarray(img).resize((32, 32), Image.NEAREST)
        if i >= len(digits.images):
            pil.putpixel((0, 0), i // len(digits.images))
        pil.save(path)
        items.append(Item(id=sha256_file(path), path=path, width=32, height=32))
    return items
