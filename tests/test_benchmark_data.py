"""`pseudolabel benchmark --data DIR` on your own labelled data: the seed / holdout / pool split
of a real ImageFolder tree (scikit-learn digits written as PNG files) and of a real YOLO /
COCO detection set (Fashion-MNIST composites), one-line errors for unusable folders, and
end-to-end runs through the CLI with the in-process oracle."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pseudolabel.sim.bench_data import BenchDataError, detect_layout, pixel_embeddings, prepare
from pseudolabel.data.images import sha256_file

ROOT = Path(__file__).resolve().parents[1]


def _digits_tree(root: Path, *, per_class: int = 40, classes: int = 10, size: int = 16) -> dict[str, str]:
    """Write digits as root/<class>/*.png; returns item id -> class."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = (d.images / 16.0 * 255.0).round().astype(np.uint8)
    truth: dict[str, str] = {}
    count: Counter[int] = Counter()
    for i, y in enumerate(d.target):
        if y >= classes or count[y] >= per_class:
            continue
        count[y] += 1
        p = root / f"digit{y}" / f"img_{i:04d}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i], mode="L").resize((size, size), Image.Resampling.BICUBIC).save(p)
        truth[sha256_file(p)] = f"digit{y}"
    return truth


@pytest.fixture(scope="module")
def digits_tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("digits_tree") / "digits"
    return root, _digits_tree(root)


def _need_fashion() -> None:
    from pseudolabel.sim.fashion import fashion_dir

    if (fashion_dir() / "t10k-images-idx3-ubyte.gz").is_file():
        return
    msg = f"Fashion-MNIST not installed at {fashion_dir()} (apt-get install dataset-fashion-mnist)"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI needs the dataset: {msg}")
    pytest.skip(msg)


@pytest.fixture(scope="module")
def yolo_set(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:  # type: ignore[type-arg]
    """A YOLO set DIR/images + DIR/labels + DIR/data.yaml of 60 composited scenes (64 px)."""
    _need_fashion()
    from pseudolabel.sim.composites import export_scenes

    base = tmp_path_factory.mktemp("scenes")
    scenes = export_scenes(base, n_seed=60, n_pool=0, n_holdout=0, size=64, seed=3, max_objects=2)
    yolo = base / "seed"
    (yolo / "data.yaml").write_text("names:\n" + "".join(f"  {i}: {c}\n" for i, c in enumerate(scenes.classes)))
    return yolo, scenes.truth


# ---- ImageFolder split -------------------------------------------------------------------


def test_imagefolder_split_is_stratified_disjoint_and_seeded(digits_tree: tuple[Path, dict[str, str]],
                                                             tmp_path: Path) -> None:
    src, truth = digits_tree
    bd = prepare(src, tmp_path / "a", seed_per_class=2, n_holdout=100, data_seed=0)
    assert bd.task == "classify" and bd.layout == "imagefolder" and len(bd.classes) == 10
    assert len(bd.seed) == 20 and len(bd.holdout) == 100 and len(bd.pool) == 400 - 120
    assert not (set(bd.seed) & set(bd.holdout)) and not (set(bd.pool) & (set(bd.seed) | set(bd.holdout)))
    assert Counter(truth[i] for i in bd.seed) == {c: 2 for c in bd.classes}
    assert Counter(truth[i] for i in bd.holdout) == {c: 10 for c in bd.classes}     # 100 over 10 equal classes
    assert {i: truth[i] for i in bd.truth} == bd.truth                              # labels come through intact
    # exported as the campaign reads it: seed/holdout by class, the pool flat (no class in the path)
    seed_files = sorted((tmp_path / "a" / "seed").rglob("*.png"))
    assert len(seed_files) == 20 and all(f.parent.name == truth[sha256_file(f)] for f in seed_files)
    pool_files = list((tmp_path / "a" / "pool").iterdir())
    assert len(pool_files) == 280 and all(f.is_file() and f.suffix == ".png" for f in pool_files)
    assert {sha256_file(f) for f in pool_files} == set(bd.pool)
    assert bd.image_size == 16
    # same seed, same split; another seed, another split
    again = prepare(src, tmp_path / "b", seed_per_class=2, n_holdout=100, data_seed=0)
    other = prepare(src, tmp_path / "c", seed_per_class=2, n_holdout=100, data_seed=1)
    assert (again.seed, again.holdout) == (bd.seed, bd.holdout) and set(other.holdout) != set(bd.holdout)


def test_pool_cap_is_stratified_and_default_holdout_is_a_fifth(digits_tree: tuple[Path, dict[str, str]],
                                                               tmp_path: Path) -> None:
    src, truth = digits_tree
    bd = prepare(src, tmp_path / "d", n_pool=50)
    assert len(bd.holdout) == 80 and len(bd.pool) == 50
    assert set(Counter(truth[i] for i in bd.pool).values()) == {5}


def test_cold_start_seed_set_is_label_free_and_covers_the_classes(digits_tree: tuple[Path, dict[str, str]],
                                                                  tmp_path: Path) -> None:
    src, truth = digits_tree
    random_seed = prepare(src, tmp_path / "r", n_holdout=100, seed_strategy="random", data_seed=0)
    typi = prepare(src, tmp_path / "t", n_holdout=100, seed_strategy="typiclust", data_seed=0)
    assert len(typi.seed) == 20 and typi.holdout == random_seed.holdout
    # chosen on pixels without the labels, the 20 typical digits still reach most of the 10 classes
    assert len({truth[i] for i in typi.seed}) >= 7
    emb = pixel_embeddings(sorted(src.rglob("*.png"))[:30], dims=8)
    assert emb.shape == (30, 8) and emb.dtype == np.float32


# ---- detection sets ----------------------------------------------------------------------


def test_yolo_split_keeps_every_box(yolo_set: tuple[Path, dict], tmp_path: Path) -> None:  # type: ignore[type-arg]
    src, truth = yolo_set
    assert detect_layout(src)[0] == "yolo"
    bd = prepare(src, tmp_path / "y", n_seed=10, n_holdout=15, data_seed=0)
    assert bd.task == "detect" and (len(bd.seed), len(bd.holdout), len(bd.pool)) == (10, 15, 35)
    for i in (*bd.seed, *bd.holdout, *bd.pool):
        assert [(b.label, round(b.x1), round(b.y2)) for b in bd.truth[i]] == \
            [(b.label, round(b.x1), round(b.y2)) for b in truth[i]]
    # the exported seed set reads back as YOLO with the same boxes
    from pseudolabel.data.formats import read_yolo

    back = read_yolo(bd.seed_dir, bd.seed_labels, classes=bd.classes)
    assert {it.id for it in back.items} == set(bd.seed)
    assert all(len(back.boxes[i]) == len(truth[i]) for i in bd.seed)
    assert len(list(bd.pool_dir.iterdir())) == 35


def test_coco_json_is_accepted(yolo_set: tuple[Path, dict], tmp_path: Path) -> None:  # type: ignore[type-arg]
    from pseudolabel.data.formats import read_yolo, write_coco
    from pseudolabel.data.formats.yolo import read_yolo_names

    src, truth = yolo_set
    names = read_yolo_names(src / "data.yaml")
    ds = read_yolo(src / "images", src / "labels", classes=names)
    coco = tmp_path / "coco"
    write_coco(coco / "instances.json", ds.items, ds.boxes, classes=names, image_root=src / "images")
    (coco / "images").symlink_to(src / "images")
    layout, parts = detect_layout(coco)
    assert layout == "coco" and parts["json"] == coco / "instances.json"
    bd = prepare(coco / "instances.json", tmp_path / "c", n_seed=5, n_holdout=10)
    assert bd.layout == "coco" and len(bd.seed) == 5 and len(bd.pool) == 45
    assert all(len(bd.truth[i]) == len(truth[i]) for i in bd.pool)


# ---- errors: one line, what was found, what is accepted -----------------------------------


def test_bad_folders_give_one_line_errors(tmp_path: Path, digits_tree: tuple[Path, dict[str, str]]) -> None:
    one_class = tmp_path / "one"
    (one_class / "cat").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(one_class / "cat" / "a.png")
    loose = tmp_path / "loose"
    loose.mkdir()
    Image.new("RGB", (8, 8)).save(loose / "a.png")
    yolo_no_names = tmp_path / "yolo"
    (yolo_no_names / "images").mkdir(parents=True)
    (yolo_no_names / "labels").mkdir()
    two_json = tmp_path / "jsons"
    two_json.mkdir()
    (two_json / "a.json").write_text("{}")
    (two_json / "b.json").write_text("{}")
    cases = [
        (tmp_path / "missing", "does not exist"),
        (one_class, "found 1 class folder"),
        (loose, "sit directly in the folder"),
        (yolo_no_names, "no data.yaml or classes.txt"),
        (two_json, "pass the COCO instances file itself"),
        (one_class / "cat" / "a.png", "is a file"),
    ]
    for path, words in cases:
        with pytest.raises(BenchDataError) as e:
            prepare(path, tmp_path / "out")
        msg = str(e.value)
        assert words in msg and "\n" not in msg and str(path) in msg, msg
    with pytest.raises(BenchDataError, match=r"leave no pool.*lower --holdout"):
        prepare(digits_tree[0], tmp_path / "out", n_holdout=390)
    with pytest.raises(BenchDataError, match="seed strategy 'badge'"):
        prepare(digits_tree[0], tmp_path / "out", seed_strategy="badge")


# ---- end to end through the command line ------------------------------------------------


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "pseudolabel.cli", "benchmark", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_cli_benchmark_on_an_imagefolder_tree(digits_tree: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    src, _ = digits_tree
    out = tmp_path / "bench"
    r = _cli("--data", str(src), "--oracle", "--strategies", "probcover,schedule,random", "--seeds", "0",
             "--rounds", "2", "--batch-size", "10", "--pseudo", "off", "--epochs", "1", "--min-steps", "10",
             "--holdout", "100", "--threads", "1", "--set", "selection.schedule.switch_per_class=2.5",
             "--out", str(out), cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rounds = pd.read_csv(out / "rounds.csv")
    assert sorted(rounds["strategy"].unique()) == ["probcover", "random", "schedule"]
    assert sorted(rounds["labels"].unique().tolist()) == [20, 30, 40]
    assert rounds["accuracy"].between(0, 1).all() and rounds["dataset"].eq("digits").all()
    summary = pd.read_csv(out / "summary.csv")
    assert (summary["metric"] == "accuracy").all() and summary["reference_accuracy"].between(0, 1).all()
    assert (out / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| schedule |" in (out / "summary.md").read_text()
    # the schedule switched: 20 labels < 2.5 x 10 classes ran typiclust, 30 labels ran margin
    sel = out / "runs" / "schedule-nopseudo-s0" / "rounds"
    assert set(pd.read_csv(sel / "0001" / "selection.csv")["strategy"]) == {"schedule:typiclust"}
    assert set(pd.read_csv(sel / "0002" / "selection.csv")["strategy"]) == {"schedule:margin"}


def test_cli_benchmark_rejects_a_bad_folder_in_one_line(tmp_path: Path) -> None:
    r = _cli("--data", str(tmp_path / "nothing"), "--oracle", "--out", str(tmp_path / "o"), cwd=tmp_path)
    assert r.returncode == 2
    lines = [line for line in r.stdout.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: --data") and "ImageFolder tree" in lines[0], r.stdout
    r = _cli("--data", str(tmp_path), "--dataset", "digits", cwd=tmp_path)
    assert r.returncode == 2 and "not allowed with argument" in r.stderr


@pytest.mark.slow
def test_benchmark_on_a_yolo_set_reports_map(yolo_set: tuple[Path, dict], tmp_path: Path) -> None:  # type: ignore[type-arg]
    from pseudolabel.sim.benchmark import run_benchmark

    src, _ = yolo_set
    res = run_benchmark(data=src, strategies=["entropy", "random"], seeds=[0], rounds=1, batch_size=5,
                        pseudo_settings=[False], oracle=True, out_dir=tmp_path / "det", epochs=2, seed_size=10,
                        n_holdout=10, reference=False, torch_threads=1,
                        overrides=["model.image_size=64", "model.batch_size=8"])
    rounds = res.rounds
    assert len(rounds) == 2 * 2 and sorted(rounds["labels"].unique().tolist()) == [10, 15]
    assert rounds["map50"].between(0, 1).all() and rounds["accuracy"].isna().all()
    assert (res.summary["metric"] == "map50").all() and res.summary["labels_to_95"].isna().all()
    assert "No full-data reference" in (tmp_path / "det" / "summary.md").read_text()
    # with the full-data reference: YOLO trained on seed + the whole pool with the true boxes
    ref = run_benchmark(data=src, strategies=["random"], seeds=[0], rounds=1, batch_size=5, pseudo_settings=[False],
                        oracle=True, out_dir=tmp_path / "det2", epochs=2, seed_size=10, n_holdout=10,
                        torch_threads=1, overrides=["model.image_size=64", "model.batch_size=8"])
    assert ref.reference["train_size"] == 10 + 40 and 0 <= ref.reference["map50"] <= 1
    assert ref.reference["metric"] == "map50" and "holdout map50" in (tmp_path / "det2" / "summary.md").read_text()


@pytest.mark.integration
@pytest.mark.slow
def test_benchmark_data_through_label_studio(digits_tree: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    """Without --oracle the campaigns queue real tasks in a local Label Studio and the
    simulated reviewer answers them through its API."""
    from pseudolabel.sim.benchmark import run_benchmark
    from pseudolabel.review.server import LabelStudioNotFound, find_label_studio

    try:
        find_label_studio()
    except LabelStudioNotFound as exc:       # as the label_studio fixture: skip locally, fail in CI
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"CI needs the Label Studio server for integration tests: {exc}")
        pytest.skip(f"Label Studio server not installed: {exc}")
    src, _ = digits_tree
    res = run_benchmark(data=src, strategies=["margin", "random"], seeds=[0], rounds=1, batch_size=5,
                        pseudo_settings=[False], oracle=False, out_dir=tmp_path / "ls", epochs=1, min_steps=5,
                        n_holdout=50, reference=False, torch_threads=1)
    rounds = res.rounds
    assert sorted(rounds["labels"].unique().tolist()) == [20, 25]
    first = rounds[rounds["round"] == 1]
    # the reviewer answered every queued task: 5 per campaign, corrections where the model was wrong
    assert first["corrections"].between(0, 5).all()
    assert (tmp_path / "ls" / "label-studio").is_dir()
