"""The command line as a user runs it (typer's runner, real files, a real small model)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from pseudolabel.sim.demo import demo_config, export_digits
from pseudolabel.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def cfg_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli")
    export_digits(root / "data", seed_per_class=2, holdout=200, seed=0)
    raw = demo_config(root / "work", root / "data", strategy="entropy", project="cli-test",
                      **{"model.epochs": 2, "model.min_steps": 20})
    f = root / "c.yaml"
    f.write_text(yaml.safe_dump(raw))
    return f


def test_offline_round_then_status(cfg_file: Path) -> None:
    r = runner.invoke(app, ["round", "-c", str(cfg_file), "--offline"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["status", "-c", str(cfg_file), "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.output)
    assert info["labels_by_source"]["seed"] == 20
    assert info["items"] == {"seed": 20, "pool": 1577, "holdout": 200}
    assert info["rounds"][0]["round"] == 1 and info["rounds"][0]["status"] == "done"
    assert "push" in info["rounds"][0]["stages"]
    assert 0.0 <= info["rounds"][0]["accuracy"] <= 1.0
    r = runner.invoke(app, ["status", "-c", str(cfg_file)])
    assert r.exit_code == 0 and "labels by source" in r.output


def test_bad_config_is_a_clear_error(tmp_path: Path, cfg_file: Path) -> None:
    raw = yaml.safe_load(cfg_file.read_text())
    raw["model"]["layers"] = 3
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(raw))
    r = runner.invoke(app, ["round", "-c", str(bad), "--offline"])
    assert r.exit_code == 2
    assert "model.layers" in r.output and "unknown key" in r.output


def test_missing_token_names_the_variable(cfg_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LABEL_STUDIO_API_KEY", raising=False)
    r = runner.invoke(app, ["round", "-c", str(cfg_file)])
    assert r.exit_code == 2 and "LABEL_STUDIO_API_KEY" in r.output


def test_demo_rejects_unknown_strategy() -> None:
    r = runner.invoke(app, ["demo", "--strategy", "entropy,psychic"])
    assert r.exit_code == 2 and "psychic" in r.output and "margin" in r.output


def test_demo_refuses_to_delete_a_foreign_folder(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    r = runner.invoke(app, ["demo", "--workdir", str(tmp_path)])
    assert r.exit_code == 2 and "not a demo workdir" in r.output
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_export_command(cfg_file: Path, tmp_path: Path) -> None:
    r = runner.invoke(app, ["round", "-c", str(cfg_file), "--offline"])   # makes sure a ledger exists
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["export", "-c", str(cfg_file), "-o", str(tmp_path / "ds"), "--format", "csv"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["train_labels_by_source"] == {"seed": 20} and out["val_images"] == 200
    r = runner.invoke(app, ["export", "-c", str(cfg_file), "-o", str(tmp_path / "ds2"), "--format", "coco"])
    assert r.exit_code == 2 and "does not fit task classify" in r.output


def test_demo_rejects_unknown_task() -> None:
    r = runner.invoke(app, ["demo", "--task", "keypoints"])
    assert r.exit_code == 2 and "choose classify, detect or segment" in r.output
    r = runner.invoke(app, ["demo", "--task", "detect", "--strategy", "bald"])
    assert r.exit_code == 2 and "unknown strategy" in r.output


def test_ctrl_c_says_where_the_round_stopped_and_the_rerun_resumes(cfg_file: Path, tmp_path: Path) -> None:
    import signal
    import sqlite3
    import subprocess
    import sys
    import time

    raw = yaml.safe_load(cfg_file.read_text())
    raw["workdir"] = str(tmp_path / "work")
    raw["model"]["min_steps"] = 3000          # long enough to interrupt while training
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump(raw))
    cmd = [sys.executable, "-m", "pseudolabel.cli", "round", "-c", str(f), "--offline"]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    db = tmp_path / "work" / "ledger.sqlite"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and p.poll() is None:
        try:
            with sqlite3.connect(db) as con:
                if con.execute("SELECT 1 FROM stages WHERE round = 1 AND stage = 'sync'").fetchone():
                    break
        except sqlite3.Error:
            pass
        time.sleep(0.2)
    time.sleep(1.0)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 130, (out, err)
    assert "interrupted: round 1 stopped in stage train" in err and "run the same command again" in err
    assert "Traceback" not in err
    raw["model"]["min_steps"] = 20
    f.write_text(yaml.safe_dump(raw))
    r = runner.invoke(app, ["round", "-c", str(f), "--offline"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output.strip().splitlines()[-1])["resumed"] is True


def test_a_round_after_the_stop_rule_fired_says_so_and_exits_0(cfg_file: Path, tmp_path: Path) -> None:
    raw = yaml.safe_load(cfg_file.read_text())
    raw["workdir"] = str(tmp_path / "work")
    raw["stop"]["max_rounds"] = 1
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump(raw))
    r = runner.invoke(app, ["round", "-c", str(f), "--offline"])
    assert r.exit_code == 0 and json.loads(r.output.strip().splitlines()[-1])["stop"].startswith("max_rounds")
    r = runner.invoke(app, ["round", "-c", str(f), "--offline"])
    assert r.exit_code == 0, r.output
    last = json.loads(r.output.strip().splitlines()[-1])
    assert last["idle"].startswith("the campaign stopped at round 1") and last["round"] == 1
    assert "train:" not in r.output                               # nothing was trained
    r = runner.invoke(app, ["round", "-c", str(f), "--offline", "--force"])
    assert r.exit_code == 0 and json.loads(r.output.strip().splitlines()[-1])["round"] == 2
