"""Ray Data pseudo-labelling: same shards as the single-machine engine, resume, and no
non-loopback connection from any Ray process.

One local Ray node (2 CPUs, session files in the test's tmp dir) serves the whole module.

Network check, and why it covers the worker processes: tests/netguard.py guards only this
test process. Ray's other Python processes (actors and task workers, the dashboard agent,
the runtime-env agent, the log monitor) are started by the raylet with this process's
environment, so the fixture puts a ``sitecustomize.py`` first on their ``PYTHONPATH``. It
installs a ``sys.addaudithook`` that runs netguard's own host check on every
``socket.connect`` / ``socket.sendto`` / ``socket.getaddrinfo`` event: a non-loopback
attempt is written to a log file and aborted (the audit hook raises before the system call,
so nothing leaves the machine). Each process writes a ``LOADED`` line when the hook is
active. ``test_workers_are_guarded`` proves the guard is live inside a Ray worker (a
deliberate connect to a TEST-NET address is blocked and logged there); the module fixture's
teardown fails on any other logged attempt, e.g. Ray's usage-stats / cloud-metadata probes.
Ray's C++ processes (GCS, raylet) are not Python; ``test_node_is_on_loopback`` checks the
address they serve on is 127.0.0.1 (a manual ``strace -f -e trace=connect`` of a whole run
showed only 127.0.0.1, ::1 and Unix sockets: see docs/ray.md).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import fsspec
import numpy as np
import pyarrow.fs as pafs
import pytest
from fsspec.implementations.dirfs import DirFileSystem
from PIL import Image

from pseudolabel.data.images import ImageError, load_rgb, rgb_from_bytes, sha256_file
from pseudolabel.data.ingest import scan_folder
from pseudolabel.data.boxes import boxes_and_probs_from_json
from pseudolabel.distributed import (
    _boxes_cell,
    _Predictor,
    _predictions,
    init_ray,
    load_model,
    pseudo_label_ray,
    pseudo_label_ray_source,
    ray_safe_env,
)
from pseudolabel.inference import load_box_predictions, load_predictions, pseudo_label, write_shard
from pseudolabel.models.torchvision_cls import TorchvisionClassifier
from pseudolabel.types import Annotation, Box, Item, Prediction

# Ray is imported only after init_ray has set its environment (some switches are read at import).
pytestmark = pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray[data] not installed")

CLASSES = ["cat", "dog", "fox"]
TESTS_DIR = Path(__file__).resolve().parent

_SITECUSTOMIZE = '''
import os, socket, sys
_log = os.environ.get("PL_NETAUDIT_LOG")
if _log:
    import netguard

    def _host(event, args):
        if event in ("socket.connect", "socket.sendto"):
            sock, address = args[0], args[-1]
            if sock.family in (socket.AF_INET, socket.AF_INET6) and isinstance(address, tuple):
                return address[0]
        elif event == "socket.getaddrinfo" and args[0] is not None:
            return args[0].decode() if isinstance(args[0], bytes) else args[0]
        return None

    def _hook(event, args):
        if not event.startswith("socket."):
            return
        host = _host(event, args)
        if host is None:
            return
        try:
            netguard._check_host(host, event)
        except netguard.NonLoopbackConnection:
            with open(_log, "a") as f:
                f.write(f"BLOCKED {os.getpid()} {event} {host!r} {' '.join(sys.argv)[:200]}\\n")
            raise

    sys.addaudithook(_hook)
    with open(_log, "a") as f:
        f.write(f"LOADED {os.getpid()} {os.path.basename(sys.argv[0] if sys.argv else '')}\\n")
'''

PROBE_HOST = "192.0.2.123"  # TEST-NET-1: never routed; the guard blocks it before connect(2)


def _read_log(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


@pytest.fixture(scope="module")
def ray_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A local Ray node with every Python process audited; yields the audit log path."""
    root = tmp_path_factory.mktemp("ray")
    site = root / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    log = root / "netaudit.log"
    saved = {k: os.environ.get(k) for k in ("PYTHONPATH", "PL_NETAUDIT_LOG", *ray_safe_env(root))}
    os.environ["PYTHONPATH"] = os.pathsep.join([str(site), str(TESTS_DIR), *sys.path])
    os.environ["PL_NETAUDIT_LOG"] = str(log)
    assert init_ray(num_cpus=2, temp_dir=root / "r")
    import ray
    try:
        yield log
    finally:
        ray.shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    blocked = [line for line in _read_log(log) if line.startswith("BLOCKED") and PROBE_HOST not in line]
    assert not blocked, "Ray processes attempted non-loopback connections:\n" + "\n".join(blocked)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Item]]:
    """A tiny trained classifier (saved) and 40 random 12x12 PNG items."""
    root = tmp_path_factory.mktemp("model")
    rng = np.random.default_rng(0)
    items, anns = [], []
    for i in range(40):
        path = root / "img" / f"{i}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(path)
        item = Item(sha256_file(path), path, 12, 12)
        items.append(item)
        anns.append(Annotation(item=item, label=CLASSES[i % 3], source="seed"))
    model = TorchvisionClassifier(CLASSES, epochs=1, batch_size=8, image_size=12, device="cpu").fit(anns[:12])
    model.save(root / "model.pt")
    return root / "model.pt", items


def test_matches_single_machine_engine_and_resumes(
    ray_node: Path, trained: tuple[Path, list[Item]], tmp_path: Path
) -> None:
    model_path, items = trained
    model = load_model(model_path, device="cpu")
    ref = pseudo_label(model, items, tmp_path / "single", batch_size=8, shard_size=15, progress=False)

    out = tmp_path / "ray"
    first = pseudo_label_ray(model_path, items[:25], out, batch_size=8, shard_size=15)
    assert (first.n_scored, first.n_skipped) == (25, 0)
    assert [p.name for p in first.shards] == ["predictions-00000.parquet", "predictions-00001.parquet"]
    # Resume: the 25 already scored are skipped, only the 15 new ones go through Ray.
    second = pseudo_label_ray(model_path, items, out, batch_size=8, shard_size=15)
    assert (second.n_items, second.n_scored, second.n_skipped) == (40, 15, 25)
    assert second.model_version == ref.model_version == model.model_version

    f_ref, p_ref, e_ref = load_predictions(tmp_path / "single")
    f_ray, p_ray, e_ray = load_predictions(out)
    assert f_ray["item_id"].tolist() == [it.id for it in items] == f_ref["item_id"].tolist()
    assert f_ray["label"].tolist() == f_ref["label"].tolist()
    np.testing.assert_allclose(p_ray, p_ref, atol=1e-6)
    assert e_ray.shape == e_ref.shape == (40, model.embedding_dim_)
    np.testing.assert_allclose(e_ray, e_ref, atol=1e-5)

    # Everything done: nothing is scored and no shard is rewritten.
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    third = pseudo_label_ray(model_path, items, out, batch_size=8, shard_size=15)
    assert (third.n_scored, third.n_skipped) == (0, 40)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps


def test_workers_are_guarded(ray_node: Path) -> None:
    """The audit hook is live inside Ray workers: a deliberate non-loopback connect from a
    Ray task is aborted there and logged (so the module check above can fail)."""

    import ray

    @ray.remote(num_cpus=0.5)
    def probe() -> tuple[int, str]:
        import socket

        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.connect((PROBE_HOST, 9))
        except ConnectionError as e:
            return os.getpid(), type(e).__name__
        finally:
            s.close()
        return os.getpid(), "connected"

    pid, outcome = ray.get(probe.remote(), timeout=120)
    assert pid != os.getpid()
    assert outcome == "NonLoopbackConnection"
    lines = _read_log(ray_node)
    assert any(line.startswith(f"LOADED {pid} ") for line in lines)
    assert any(line.startswith(f"BLOCKED {pid} ") and PROBE_HOST in line for line in lines)
    # Ray's own Python processes (not only task workers) run with the hook too.
    assert len({line.split()[1] for line in lines if line.startswith("LOADED")}) >= 2


def test_node_is_on_loopback(ray_node: Path) -> None:
    import ray

    nodes = ray.nodes()
    assert nodes and all(n["NodeManagerAddress"] == "127.0.0.1" for n in nodes)
    gcs = ray.get_runtime_context().gcs_address
    assert gcs.startswith("127.0.0.1:"), gcs


# --- folder and object-store sources ------------------------------------------------------------


def _pool_folder(items: list[Item], root: Path) -> Path:
    """6 of the images under ``root`` (two in a subfolder, one with an upper-case suffix), a
    copy of the first, a file with an image suffix that is not an image, and a README."""
    root.mkdir(parents=True)
    (root / "sub").mkdir()
    names = ["a.png", "b.PNG", "c.png", "d.png", "sub/e.png", "sub/f.png"]
    for it, name in zip(items, names):
        shutil.copyfile(it.path, root / name)
    shutil.copyfile(items[0].path, root / "sub/a-copy.png")
    (root / "broken.png").write_bytes(b"this is not a png")
    (root / "README.txt").write_text("not a candidate")
    return root


def _same_predictions(out: Path, ref: Path) -> None:
    f_ref, p_ref, e_ref = load_predictions(ref)
    f_out, p_out, e_out = load_predictions(out)
    assert f_out["item_id"].tolist() == f_ref["item_id"].tolist()
    assert f_out["label"].tolist() == f_ref["label"].tolist()
    assert f_out["model_version"].tolist() == f_ref["model_version"].tolist()
    np.testing.assert_allclose(p_out, p_ref, atol=1e-6)
    assert e_out.shape == e_ref.shape and e_out.shape[1] > 0
    np.testing.assert_allclose(e_out, e_ref, atol=1e-5)


def test_folder_source_matches_ingest_then_engine_and_resumes(
    ray_node: Path, trained: tuple[Path, list[Item]], tmp_path: Path
) -> None:
    """A folder scored by Ray from its bytes gives what ingest (scan_folder) + pseudo_label give
    on the same files: same ids, predictions, quarantine and duplicates; a rerun reads nothing
    it has scored."""
    model_path, items = trained
    folder = _pool_folder(items, tmp_path.resolve() / "pool")
    scan = scan_folder(folder)
    assert len(scan.items) == 6 and len(scan.quarantined) == len(scan.duplicates) == 1
    ref = pseudo_label(load_model(model_path, device="cpu"), scan.items, tmp_path / "single",
                       batch_size=4, shard_size=4, progress=False)

    out = tmp_path / "ray"
    first = pseudo_label_ray_source(model_path, folder, out, batch_size=4, shard_size=4)
    assert (first.n_items, first.n_scored, first.n_skipped) == (8, 6, 1)
    assert first.model_version == ref.model_version
    assert [(q.path, q.reason) for q in first.quarantined] == [(q.path, q.reason) for q in scan.quarantined]
    assert first.duplicates == [(str(p), i) for p, i in scan.duplicates]
    assert [p.name for p in first.shards] == [p.name for p in ref.shards]
    _same_predictions(out, tmp_path / "single")

    # Rerun after changes. Files in a shard are skipped *before reading*: c.png, its bytes
    # reversed (not an image: quarantined if it were read) under the same size and mtime, goes
    # unseen (the documented trust in mtimes, as ingest's known files). A renamed file is read,
    # hashed and found in a shard; the broken file is read and quarantined again; a new image
    # is the only thing scored, and no shard is rewritten.
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    st = (folder / "c.png").stat()
    (folder / "c.png").write_bytes((folder / "c.png").read_bytes()[::-1])
    os.utime(folder / "c.png", ns=(st.st_atime_ns, st.st_mtime_ns))
    (folder / "d.png").rename(folder / "sub" / "d-renamed.png")
    shutil.copyfile(items[6].path, folder / "g.png")
    second = pseudo_label_ray_source(model_path, folder, out, batch_size=4, shard_size=4)
    assert (second.n_items, second.n_scored, second.n_skipped, len(second.quarantined)) == (9, 1, 7, 1)
    assert second.duplicates == [(str(folder / "sub" / "d-renamed.png"), items[3].id)]
    assert {name: (out / name).stat().st_mtime_ns for name in stamps} == stamps
    frame, _, _ = load_predictions(out)
    assert frame["item_id"].tolist() == [it.id for it in scan.items] + [items[6].id]


def test_object_store_source(ray_node: Path, trained: tuple[Path, list[Item]], tmp_path: Path) -> None:
    """A non-local pyarrow filesystem, pickled to the workers: fsspec through FSSpecHandler
    (the route s3fs / gcsfs take), keys ``bucket/pool/...`` that are not local paths.
    fsspec's "memory" filesystem cannot stand in for a bucket here: its store lives in the
    driver process, and Ray reads on worker processes, which would see it empty."""
    model_path, items = trained
    _pool_folder(items, tmp_path / "store" / "bucket" / "pool")
    local = fsspec.filesystem("file")
    store = pafs.PyFileSystem(pafs.FSSpecHandler(DirFileSystem(path=str(tmp_path / "store"), fs=local)))
    scan = scan_folder(tmp_path / "store" / "bucket" / "pool")
    pseudo_label(load_model(model_path, device="cpu"), scan.items, tmp_path / "single",
                 batch_size=4, shard_size=4, progress=False)

    out = tmp_path / "ray"
    result = pseudo_label_ray_source(model_path, "bucket/pool", out, filesystem=store, batch_size=4, shard_size=4)
    assert (result.n_items, result.n_scored, result.n_skipped) == (8, 6, 1)
    assert [(str(q.path), q.reason) for q in result.quarantined] == [
        ("bucket/pool/broken.png", "not an image (cannot identify format)")
    ]
    assert result.duplicates == [("bucket/pool/sub/a-copy.png", items[0].id)]
    _same_predictions(out, tmp_path / "single")

    # Resume: with the broken file gone, every file is in a shard: nothing is read (Ray is not
    # even needed), nothing scored, nothing rewritten.
    store.delete_file("bucket/pool/broken.png")
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    again = pseudo_label_ray_source(model_path, "bucket/pool", out, filesystem=store, batch_size=4, shard_size=4)
    assert (again.n_items, again.n_scored, again.n_skipped, again.quarantined, again.duplicates) == (7, 0, 7, [], [])
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps


# --- no Ray needed ----------------------------------------------------------------------------


def test_safe_env_switches(tmp_path: Path) -> None:
    env = ray_safe_env(tmp_path)
    assert env["RAY_USAGE_STATS_ENABLED"] == "0" and env["RAY_AUTH_MODE"] == "disabled"
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        assert env[name].startswith("http://127.0.0.1:")
    assert "127.0.0.1" in env["no_proxy"] and "localhost" in env["NO_PROXY"]
    assert env["RAY_TMPDIR"] == str(tmp_path)
    assert env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"
    # Joining a cluster must keep the node's reachable address.
    assert "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" not in ray_safe_env(tmp_path, local=False)


def test_detection_fields_survive_the_trip() -> None:
    boxes = (
        Box(1.0, 2.0, 30.5, 40.0, "dog", 0.9),
        Box(5.0, 6.0, 7.0, 8.0, "cat", 0.4, polygon=((5.0, 6.0), (7.0, 6.0), (7.0, 8.0))),
    )
    bp = np.array([[0.1, 0.9, 0.0], [0.4, 0.2, 0.1]], dtype=np.float32)
    pred = Prediction("a" * 64, "v1", boxes=boxes, box_probs=bp)
    back, back_bp = boxes_and_probs_from_json(_boxes_cell(pred))
    assert back == boxes
    np.testing.assert_array_equal(back_bp, bp)
    assert boxes_and_probs_from_json(_boxes_cell(Prediction("b" * 64, "v1"))) == ((), None)


def test_bad_input_is_rejected_before_ray_starts(tmp_path: Path, trained: tuple[Path, list[Item]]) -> None:
    model_path, items = trained
    with pytest.raises(ValueError, match="duplicate item id"):
        pseudo_label_ray(model_path, [items[0], items[0]], tmp_path)
    with pytest.raises(ValueError, match="batch_size"):
        pseudo_label_ray(model_path, items, tmp_path, batch_size=0)
    with pytest.raises(ValueError, match="num_cpus_per_actor"):
        pseudo_label_ray(model_path, items, tmp_path, num_cpus_per_actor=-1)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt"):
        load_model(junk)


class _FakeDetector:
    """Two boxes on even items, none on odd ones; a 4-d embedding."""

    classes = ["cat", "dog"]

    def predict(self, images, *, batch_size):  # type: ignore[no-untyped-def]
        for i, it in enumerate(images):
            boxes = (Box(1.0, 2.0, 9.0, 8.0, "dog", 0.8), Box(0.0, 0.0, 3.0, 3.0, "cat", 0.3)) if i % 2 == 0 else ()
            bp = np.array([[0.1, 0.8], [0.3, 0.05]], dtype=np.float32) if boxes else np.zeros((0, 2), np.float32)
            yield Prediction(it.id, "det-v1", embedding=np.full(4, i, np.float32), boxes=boxes, box_probs=bp)


def test_detection_batch_goes_through_the_engine_shard_writer(tmp_path: Path) -> None:
    """The actor's batch output for a detection model, rebuilt on the driver and written by the
    engine's writer, loads back with load_box_predictions unchanged."""
    actor = _Predictor.__new__(_Predictor)  # skip loading a checkpoint: the model is a fake
    actor.model, actor.batch_size = _FakeDetector(), 4
    ids = [f"{i:064x}" for i in range(4)]
    out = actor({
        "id": np.array(ids, dtype=object), "path": np.array([f"/p/{i}.png" for i in range(4)], dtype=object),
        "width": np.full(4, 10), "height": np.full(4, 10),
    })
    assert out["probs"].shape == (4, 0) and out["embedding"].shape == (4, 4)
    preds = list(_predictions(out))
    assert [p.item_id for p in preds] == ids and preds[0].probs is None
    write_shard(tmp_path, 0, preds, _FakeDetector.classes)
    frame, back = load_box_predictions(tmp_path)
    assert frame["item_id"].tolist() == ids
    assert [len(p.boxes) for p in back] == [2, 0, 2, 0]
    assert back[0].boxes == preds[0].boxes
    np.testing.assert_allclose(back[2].box_probs, [[0.1, 0.8], [0.3, 0.05]])
    np.testing.assert_array_equal(back[3].embedding, np.full(4, 3, np.float32))


def test_bad_source_is_rejected_before_ray_starts(tmp_path: Path, trained: tuple[Path, list[Item]]) -> None:
    model_path, _ = trained
    with pytest.raises(ValueError, match="no such folder or prefix"):
        pseudo_label_ray_source(model_path, tmp_path / "missing", tmp_path / "out")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "README.txt").write_text("no images here")
    with pytest.raises(ValueError, match=r"no image files under .*docs \(suffixes .*\.png"):
        pseudo_label_ray_source(model_path, tmp_path / "docs", tmp_path / "out")
    with pytest.raises(ValueError, match="is a file; give the folder"):
        pseudo_label_ray_source(model_path, tmp_path / "docs" / "README.txt", tmp_path / "out")
    with pytest.raises(ValueError, match="pyarrow cannot open this URI"):
        pseudo_label_ray_source(model_path, "nosuchscheme://bucket/pool", tmp_path / "out")
    with pytest.raises(ValueError, match="filesystem must be a pyarrow.fs.FileSystem"):
        pseudo_label_ray_source(model_path, "pool", tmp_path / "out", filesystem=fsspec.filesystem("file"))
    with pytest.raises(ValueError, match="shard_size"):
        pseudo_label_ray_source(model_path, tmp_path / "docs", tmp_path / "out", shard_size=0)
    assert not (tmp_path / "out").exists()


def test_bytes_decode_like_files(tmp_path: Path) -> None:
    """The actor's decoder is load_rgb's: EXIF orientation applied, errors name the source."""
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown rotated 90 degrees
    Image.fromarray(np.arange(8 * 4 * 3, dtype=np.uint8).reshape(4, 8, 3)).save(path, exif=exif)
    with load_rgb(path) as a, rgb_from_bytes(path.read_bytes(), name="s3://b/rotated.jpg") as b:
        assert a.size == b.size == (4, 8)
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(ImageError, match=r"^s3://b/x\.png: zero-byte file"):
        rgb_from_bytes(b"", name="s3://b/x.png")
    with pytest.raises(ImageError, match=r"^s3://b/x\.png: not an image"):
        rgb_from_bytes(b"junk", name="s3://b/x.png")
    data = path.read_bytes()
    with pytest.raises(ImageError, match="truncated"):
        rgb_from_bytes(data[: len(data) // 2], name="s3://b/cut.jpg")


def test_ragged_result_blocks() -> None:
    """Ray concatenates small actor outputs into one block; a batch with no "ok" row has zero
    widths, so the block's probs/embedding arrive as object columns of 1-d arrays."""
    ragged = np.empty(3, dtype=object)
    ragged[:] = [np.ones(3, np.float32), np.zeros(0, np.float32), np.full(3, 2, np.float32)]
    batch = {
        "item_id": np.array(["a", "b", "c"], dtype=object),
        "status": np.array(["ok", "bad", "ok"], dtype=object),
        "model_version": np.array(["v", "", "v"], dtype=object),
        "probs": ragged,
        "embedding": ragged,
        "boxes": np.array(["", "", ""], dtype=object),
    }
    a, bad, c = _predictions(batch)
    assert bad is None and a is not None and c is not None
    np.testing.assert_array_equal(c.probs, np.full(3, 2, np.float32))
    assert a.item_id == "a" and a.embedding is not None and a.embedding.shape == (3,)


def test_label_source_cli(ray_node: Path, trained: tuple[Path, list[Item]], tmp_path: Path) -> None:
    """``pseudolabel label-source`` runs the folder path on the Ray already started here and
    reports what it did; a bad source exits 2 with the reason."""
    from typer.testing import CliRunner

    from pseudolabel.cli import app

    model_path, items = trained
    folder = _pool_folder(items, tmp_path / "pool")
    out = tmp_path / "shards"
    args = ["label-source", "--model", str(model_path), "--source", str(folder), "--out", str(out),
            "--batch-size", "4", "--shard-size", "4"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "8 image files: 6 scored, 1 already scored, 1 quarantined" in " ".join(res.output.split())
    assert "broken.png" in res.output
    assert len(load_predictions(out)[0]) == 6
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0 and "0 scored" in again.output
    bad = CliRunner().invoke(app, [*args[:4], "--source", str(tmp_path / "missing"), "--out", str(out)])
    assert bad.exit_code == 2 and "missing" in bad.output
