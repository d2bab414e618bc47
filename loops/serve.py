"""``pseudolabel serve``: a campaign's published model as a Label Studio ML backend.

Which model is served: the newest of the latest round's ``rounds/NNNN/model.pt`` (the model
whose predictions that round pushed) and the retrain's published model
(``models/published.json``, when written after that round's model). Before every ``/setup``
and ``/predict`` the backend looks again (a directory listing and two ``stat`` calls) and
loads a newer model when one appeared; a model that fails to load is reported and the
previous one stays in service.

A served prediction is the one a round would push for that image: the same converter
(:func:`pseudolabel.review.convert.prediction_to_ls`), the same uncertainty score
(``selection.uncertainty`` for classes; for boxes the round's image score) and, for boxes,
the same choice of what is drawn (boxes at least ``selection.predraw_conf`` confident, else
the ``selection.predraw_fallback`` best guesses). The reviewer's note that goes with such
guesses lives in a pushed task's data and cannot travel in a ``/predict`` answer.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


from loops.retrain import models_dir, published_info
from pseudolabel.config import Config
from pseudolabel.models import registry
from pseudolabel.tasks import PoolPredictions, task_for
from pseudolabel.review import convert
from pseudolabel.review.backend import BackendServer, MLBackend, NoModel
from pseudolabel.review.decode import Decoder
from pseudolabel.types import Item


def load_model(cfg: Config, path: Path) -> Any:
    """The model saved at ``path`` (a round's or a retrain's ``model.pt``) on ``model.device``."""
    return registry.load(path, cfg=cfg)


def published_model_path(cfg: Config) -> Path | None:
    """The checkpoint to serve now (see the module doc), or None before the first round trains."""
    latest: Path | None = None
    rounds = cfg.workdir / "rounds"
    if rounds.is_dir():
        for d in sorted((p for p in rounds.iterdir() if p.name.isdigit()), key=lambda p: int(p.name), reverse=True):
            if (d / "model.pt").is_file():
                latest = d / "model.pt"
                break
    pointer = models_dir(cfg) / "published.json"
    try:
        info = published_info(cfg)
    except (OSError, ValueError):
        info = None  # unreadable pointer: the rounds' models still serve
    if info and info.get("path") and Path(info["path"]).is_file():
        published = Path(info["path"])
        if latest is None or pointer.stat().st_mtime_ns > latest.stat().st_mtime_ns:
            return published
    return latest


class PublishedModel:
    """A campaign's current published model behind the :class:`~pseudolabel.review.backend.Predictor`
    protocol (thread-safe: :meth:`refresh` swaps the model under a lock; a prediction uses the
    model it started with).

    ``batch_size``: images per forward pass (``None``: ``model.infer_batch_size``, or the
    adapter's own choice); ``log``: where "loaded model ..." lines go.
    """

    def __init__(self, cfg: Config, *, batch_size: int | None = None,
                 log: Callable[[str], None] | None = None) -> None:
        self.cfg = cfg
        self.batch_size = batch_size
        self.log = log
        self._lock = threading.Lock()
        self._model: Any = None
        self._signature: tuple[str, int, int] | None = None
        self._failed: tuple[str, int, int] | None = None
        self._loaded_at: float | None = None
        self._error: str | None = None

    def _say(self, msg: str) -> None:
        if self.log is not None:
            self.log(msg)

    def refresh(self) -> str:
        """Load the newest published model if it changed; returns the version served now.
        Raises :class:`NoModel` when there is none (or it could not be loaded)."""
        path = published_model_path(self.cfg)
        with self._lock:
            loaded, failed, have = self._signature, self._failed, self._model is not None
        if path is None and not have:
            raise NoModel(f"no trained model in {self.cfg.workdir / 'rounds'} yet: run `pseudolabel round` first")
        if path is not None:
            try:
                st = path.stat()
                sig: tuple[str, int, int] | None = (str(path), st.st_mtime_ns, st.st_size)
            except OSError:
                sig = None  # replaced between the listing and now: the next call sees the new one
            if sig is not None and sig != loaded and sig != failed:
                self._load(path, sig)
        with self._lock:
            if self._model is None:
                raise NoModel(f"the model at {path} could not be loaded: {self._error}")
            return str(self._model.model_version)

    def _load(self, path: Path, sig: tuple[str, int, int]) -> None:
        """Load outside the lock (a YOLO load takes seconds; ``/health`` must not wait), swap under it.
        Callers serialise refreshes (the backend refreshes under its inference lock)."""
        t0 = time.monotonic()
        try:
            model = load_model(self.cfg, path)
            if list(model.classes) != list(self.cfg.classes):
                raise ValueError(f"its classes {list(model.classes)!r} are not the config's {list(self.cfg.classes)!r}")
        except Exception as exc:  # noqa: BLE001 - a bad checkpoint must not take the backend down
            with self._lock:
                self._failed, self._error = sig, f"{type(exc).__name__}: {exc}"
                previous = self._model is not None
            self._say(f"could not load {path}: {type(exc).__name__}: {exc}"
                      + ("; still serving the previous model" if previous else ""))
            return
        with self._lock:
            self._model, self._signature, self._failed, self._error = model, sig, None, None
            self._loaded_at = time.time()
        self._say(f"loaded model {model.model_version} from {path} ({time.monotonic() - t0:.2f} s)")

    def info(self) -> dict[str, Any]:
        """The served model for ``/health``: path, version, task, classes, load time, last load error."""
        with self._lock:
            return {"path": None if self._signature is None else self._signature[0],
                    "version": None if self._model is None else str(self._model.model_version),
                    "task": self.cfg.task, "classes": list(self.cfg.classes), "loaded_at": self._loaded_at,
                    "load_error": self._error}

    def predict(self, items: Sequence[Item]) -> list[dict[str, Any]]:
        """One Label Studio prediction per item (see the module doc for what it holds)."""
        with self._lock:
            model = self._model
        if model is None:
            raise NoModel("no model loaded")
        if not items:
            return []
        cfg = self.cfg
        bs = self.batch_size or cfg.model.infer_batch_size or len(items)
        task = task_for(cfg)
        # YOLO decodes in this process: decode workers would be started (and stopped) per request.
        extra = {"workers": 0} if cfg.model.arch == "yolo" else {}
        preds = list(model.predict(items, batch_size=bs, **extra))
        scores = task.uncertainty(PoolPredictions.of(preds, classes=cfg.classes), {it.id: it for it in items})
        shown = [task.review_prediction(p)[0] for p in preds]
        return [convert.prediction_to_ls(p, classes=cfg.classes, task_type=cfg.task, width=it.width,
                                         height=it.height, uncertainty=float(u))
                for p, it, u in zip(shown, items, scores)]


def make_backend(cfg: Config, *, token: str | None, batch_size: int = 32, cache_size: int = 20_000,
                 log: Callable[[str], None] | None = None) -> MLBackend:
    """The ML backend of a campaign: its published model, its Label Studio image paths."""
    if cfg.label_studio.images_root is None:
        raise ValueError("label_studio.images_root is not set: the backend maps task image URLs to files with it")
    decoder = Decoder(tuple(cfg.classes), cfg.task, Path(cfg.label_studio.images_root),
                      cfg.label_studio.effective_document_root())
    return MLBackend(PublishedModel(cfg, batch_size=batch_size, log=log), decoder, token=token,
                     batch_size=batch_size, max_pixels=cfg.data.max_pixels, cache_size=cache_size, log=log)


@dataclass
class PrelabelResult:
    """``predicted``: tasks that got a prediction; ``failed``: task id → why not (an image
    that is not a local file, unreadable...); ``seconds``: wall time."""

    model_version: str
    predicted: int = 0
    failed: dict[int, str] = field(default_factory=dict)
    seconds: float = 0.0


def prelabel(backend: MLBackend, client: Any, *, chunk: int = 500,
             log: Callable[[str], None] = lambda s: None) -> PrelabelResult:
    """Give every task of the project still to be labelled a prediction of the served model
    now: what Label Studio's "Retrieve predictions" does, without its time-out. The backend
    predicts ``chunk`` tasks at a time (in its model batches, reusing its cache) and each
    chunk is imported in one call (Label Studio's action saves predictions one by one: about
    0.25 s each on a busy 2-core machine, so 400 tasks hit its 100 s limit). Safe to rerun: only
    tasks without a prediction of this model version are asked for."""
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    t0 = time.monotonic()
    version = backend.predictor.refresh()
    tasks = client.tasks_to_prelabel(version)
    out = PrelabelResult(version)
    log(f"prelabel: {len(tasks)} task(s) without a prediction of model {version}")
    for start in range(0, len(tasks), chunk):
        part = tasks[start:start + chunk]
        status, answer = backend.predict({"tasks": part})
        if status != 200:
            raise RuntimeError(f"the backend answered {status}: {answer.get('error')}")
        preds = [{"task": t["id"], **r} for t, r in zip(part, answer["results"]) if r]
        out.predicted += client.add_predictions(preds)
        out.failed.update({int(e["task"]): str(e["error"]) for e in answer.get("errors", [])})
        done = start + len(part)
        rate = done / max(time.monotonic() - t0, 1e-9)
        log(f"prelabel: {done}/{len(tasks)} tasks, {rate:.1f} tasks/s"
            + (f", ~{(len(tasks) - done) / rate:.0f} s left" if done < len(tasks) else ""))
    out.seconds = time.monotonic() - t0
    return out


def run_serve(cfg: Config, *, host: str, port: int, token: str | None, batch_size: int = 32,
              connect: Any = None, public_url: str | None = None,
              log: Callable[[str], None] = print) -> None:
    """Serve until interrupted (Ctrl-C or SIGTERM). ``connect``: a Label Studio client; when
    given, the backend is registered with its project once it listens
    (:meth:`LabelStudioClient.connect_ml_backend`), under ``public_url`` (the address Label
    Studio reaches it at; default ``http://host:port``), and removed again when it stops: a
    registered backend that does not answer leaves the labelling stream with no prediction at
    all (a crash does that: run ``pseudolabel serve --connect`` again, or remove the backend in
    the project's Settings → Model)."""
    import signal

    backend = make_backend(cfg, token=token, batch_size=batch_size, log=log)
    version = backend.predictor.refresh()  # fail now, clearly, when there is nothing to serve
    if threading.current_thread() is threading.main_thread():
        def stop(_sig: int, _frame: Any) -> None:
            raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, stop)  # a container's stop: the same clean exit as Ctrl-C
    server = BackendServer(backend, host=host, port=port).start()
    connected: int | None = None
    try:
        url = public_url or server.url
        log(f"ML backend for {cfg.project!r} on {server.url}: model {version} ({cfg.task}, {len(cfg.classes)} classes)"
            + ("" if token else "; no token (loopback only)"))
        if connect is not None:
            connected = connect.connect_ml_backend(url, model_version=version, token=token)
            log(f"connected to Label Studio project {connect.project_id} as ML backend {connected} ({url}); "
                f"tasks opened in the labelling stream get this model's prediction")
        log("Ctrl-C stops it")
        server.wait()
    finally:
        if connected is not None:
            try:
                connect.disconnect_ml_backend(connected)
                log(f"ML backend {connected} removed from Label Studio project {connect.project_id}")
            except Exception as exc:  # noqa: BLE001 - reported; stopping goes on
                log(f"could not remove ML backend {connected} from the project ({exc}): remove it in Settings → "
                    "Model, or the labelling stream shows no predictions")
        server.stop()
