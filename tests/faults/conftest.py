"""Fixtures of the fault-injection suite: the digits data under the session's Label Studio
images root, campaigns (one Label Studio project each) and the fault table."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pseudolabel.sim.demo import DemoData

from . import table
from .campaign import Campaign, export_small_digits


@pytest.fixture(scope="session")
def fault_data(label_studio: Any) -> DemoData:
    """Digits PNGs (20 seed, 100 holdout, 200 pool) under the server's images root."""
    return export_small_digits(Path(label_studio.images_root) / "faults")


@pytest.fixture
def make_campaign(tmp_path: Path, fault_data: DemoData, label_studio: Any) -> Callable[..., Campaign]:
    """``make_campaign(name, url=None, **config_overrides)``: a new campaign in ``tmp_path``."""
    def make(name: str, *, url: str | None = None, **overrides: Any) -> Campaign:
        return Campaign(name, tmp_path / name / "work", fault_data, label_studio, overrides=overrides, url=url)

    return make


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not table.ROWS:
        return
    terminalreporter.write_sep("=", "fault table (0 everywhere = nothing duplicated, lost, overwritten or stale)")
    terminalreporter.write_line(table.markdown(table.ROWS))
    out = os.environ.get("PSEUDOLABEL_FAULTS_TABLE")
    if out:
        Path(out).write_text(json.dumps(table.ROWS, indent=2))
