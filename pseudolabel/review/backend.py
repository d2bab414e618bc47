"""A Label Studio ML backend: Label Studio asks it for a prediction on any task.

Label Studio's ML backend protocol (what a 1.23 server sends, and what it reads back):

==================  =================================================  =======================================
request             body                                               answer
==================  =================================================  =======================================
``GET /health``     none (1 s time-out)                                ``{"status": "UP", ...}``
``POST /setup``     ``{"project", "schema" (label config), ...}``      ``{"model_version": ...}`` (3 s time-out)
``POST /predict``   ``{"tasks": [task, ...], "label_config", ...}``    ``{"results": [one per task]}``
``POST /webhook``   ``{"action": ..., ...}`` (annotation events)       ``{"status": "ok"}``
==================  =================================================  =======================================

Each element of ``results`` is one prediction ``{"result", "score", "model_version"}`` built
by :func:`pseudolabel.review.convert.prediction_to_ls` (the very format of the predictions a
round pushes), or ``[]`` for a task whose image cannot be read (the reason goes to the log and
to ``errors`` in the answer; Label Studio stores nothing for it and asks again later). The
server sends ``/predict`` when a task is opened in the labelling stream (one task, after
``/health`` and ``/setup``) and for the Data Manager's "Retrieve predictions" action (every
selected task in ONE request, waiting ``ML_TIMEOUT_PREDICT`` = 100 s by default).

What this backend adds to the protocol (the official one answers synchronously, with no
progress and unbounded concurrency):

- one inference at a time (a lock), so concurrent requests queue instead of thrashing the CPU;
- tasks predicted in model batches of ``batch_size``; a long request logs its progress (done /
  total, images per second, time left) and ``GET /health`` shows it (``job``);
- finished predictions are cached by (image content, model version): a "Retrieve
  predictions" that timed out on Label Studio's side resumes where it stopped when asked again;
- ``GET /requests``: the last requests it answered (path, tasks, status, seconds);
- a token: with one set, every request must carry ``Authorization: Token <t>``, ``Bearer <t>``
  or HTTP Basic with the token as password (Label Studio's "Basic Auth" setting for ML
  backends). :func:`check_bind` refuses to listen beyond loopback without one;
- errors are JSON ``{"error": "..."}`` with a 4xx/5xx status.

The model behind it is a :class:`Predictor` (``loops/serve.py`` serves a campaign's published
model and reloads it when a round publishes a new one). The web framework is Starlette,
served by uvicorn in a thread (:class:`BackendServer`).

Why this module is over 400 lines: one HTTP protocol (health, setup, predict, webhook) with its
request validation and the model cache, served by one small server class.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import json
import threading
import time
import traceback
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pseudolabel.data.ingest import DEFAULT_MAX_PIXELS, FileRecord, scan_files
from pseudolabel.review import convert
from pseudolabel.review.decode import Decoder
from pseudolabel.types import Item

__all__ = ["BackendServer", "Job", "MLBackend", "NoModel", "Predictor", "check_bind", "is_loopback"]

# Remembered file records (path -> size, mtime, hash): an unchanged file is not re-read.
_MAX_KNOWN_FILES = 200_000
# A progress line at most this often (seconds) while a long request runs.
_PROGRESS_EVERY = 1.0


class NoModel(RuntimeError):
    """There is no model to serve (yet): the answer is 503 with this message."""


class Predictor(Protocol):
    """The model a backend serves.

    - :meth:`refresh` reloads the model when a newer one was published (cheap when nothing
      changed: called before every ``/setup`` and ``/predict``) and returns the version
      served now; raises :class:`NoModel` when there is none;
    - :meth:`predict` returns one Label Studio prediction (``{"model_version", "score",
      "result"}``, see :func:`~pseudolabel.review.convert.prediction_to_ls`) per item, in order;
    - :meth:`info` describes the served model for ``/health`` (JSON-serialisable).
    """

    def refresh(self) -> str:
        """Reload the model if a newer one was published; returns the version served now."""

    def predict(self, items: Sequence[Item]) -> list[dict[str, Any]]:
        """One Label Studio prediction (``{"model_version", "score", "result"}``) per item, in order."""

    def info(self) -> dict[str, Any]:
        """The served model, for ``/health`` (JSON-serialisable)."""


@dataclass
class Job:
    """Progress of one ``/predict`` request: ``total`` images to run through the model
    (cached ones excluded), ``done`` so far, started at ``started`` (epoch seconds)."""

    id: int
    tasks: int
    total: int
    done: int = 0
    cached: int = 0
    failed: int = 0
    started: float = field(default_factory=time.time)
    finished: float | None = None

    @property
    def rate(self) -> float | None:
        """Images per second so far (``None`` before the first batch is done)."""
        spent = (self.finished or time.time()) - self.started
        return self.done / spent if self.done and spent > 0 else None

    def line(self) -> str:
        """One progress line: images done of total, rate, and time left while running."""
        rate = self.rate
        left = (self.total - self.done) / rate if rate else None
        return (f"predict job {self.id}: {self.done}/{self.total} images"
                + (f", {rate:.1f} img/s" if rate else "")
                + (f", ~{left:.0f} s left" if left is not None and self.finished is None else ""))

    def as_dict(self) -> dict[str, Any]:
        """The job's fields and its rate (images per second), JSON-ready."""
        return {**asdict(self), "rate": self.rate}


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) only accepts connections from this machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def check_bind(host: str, token: str | None) -> None:
    """Refuse to listen beyond loopback without a token (``ValueError`` saying what to do)."""
    if not is_loopback(host) and not token:
        raise ValueError(
            f"binding the ML backend to {host!r} exposes the model and the predictions of your images to the "
            "network: set a token (the environment variable named by --token-env) and give Label Studio the same "
            "token as the Basic Auth password, or bind to 127.0.0.1")


def _authorized(header: str | None, token: str) -> bool:
    """``Token t``, ``Bearer t`` or ``Basic base64(any user:t)``, compared in constant time."""
    if not header or " " not in header:
        return False
    scheme, _, value = header.strip().partition(" ")
    value = value.strip()
    scheme = scheme.lower()
    if scheme == "basic":
        try:
            value = base64.b64decode(value, validate=True).decode("utf-8").partition(":")[2]
        except (binascii.Error, UnicodeDecodeError):
            return False
    elif scheme not in ("token", "bearer"):
        return False
    return hmac.compare_digest(value.encode("utf-8"), token.encode("utf-8"))


class MLBackend:
    """The protocol's logic, without HTTP: each handler takes the parsed JSON body and returns
    ``(status, answer)``. :meth:`app` wraps it in a Starlette application.

    Parameters (stored only):

    - ``predictor``: the model (:class:`Predictor`);
    - ``decoder``: maps a task's image URL to a local file (:meth:`Decoder.image_path`) and
      names the project's classes / task type (checked against the label config in ``/setup``);
    - ``token``: required on every request when set (see the module doc);
    - ``batch_size``: images per model call (>= 1);
    - ``max_pixels``: larger images are refused from their header (as ingest does);
    - ``cache_size``: predictions kept by (image hash, model version) (0: none);
    - ``log``: where request and progress lines go (e.g. ``print``).
    """

    def __init__(
        self,
        predictor: Predictor,
        decoder: Decoder,
        *,
        token: str | None = None,
        batch_size: int = 32,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        cache_size: int = 20_000,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.predictor = predictor
        self.decoder = decoder
        self.token = token
        self.batch_size = batch_size
        self.max_pixels = max_pixels
        self.cache_size = cache_size
        self.log = log
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if isinstance(cache_size, bool) or not isinstance(cache_size, int) or cache_size < 0:
            raise ValueError(f"cache_size must be an integer >= 0, got {cache_size!r}")
        self._lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._known: dict[str, FileRecord] = {}
        self._cache: OrderedDict[tuple[str, str], dict[str, Any]] = OrderedDict()
        self._calls: deque[dict[str, Any]] = deque(maxlen=1000)
        self._job: Job | None = None
        self._last_job: Job | None = None
        self._jobs = 0
        self._waiting = 0
        self._webhooks: dict[str, int] = {}
        self._version: str | None = None

    def _say(self, msg: str) -> None:
        if self.log is not None:
            self.log(msg)

    # ------------------------------------------------------------------ handlers

    def health(self, _body: Mapping[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
        """Never waits for the model: Label Studio gives ``/health`` one second."""
        with self._state_lock:
            job = self._job or self._last_job
            return 200, {
                "status": "UP", "model_class": "pseudolabel", "model_version": self._version,
                "model": self.predictor.info(), "job": None if job is None else job.as_dict(),
                "running": self._job is not None, "waiting": self._waiting,
                "cached_predictions": len(self._cache), "webhooks": dict(self._webhooks),
            }

    def setup(self, body: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
        """Check that the project's labelling config fits the model; answer the version served."""
        schema = body.get("schema")
        if schema:
            problem = self._config_problem(str(schema))
            if problem:
                return 400, {"error": problem}
        # Never wait behind a long /predict (Label Studio gives /setup 3 s): while one runs,
        # answer the version it runs with; it refreshes the model itself.
        if self._lock.acquire(blocking=False):
            try:
                version = self._refresh()
            except NoModel as exc:
                return 503, {"error": str(exc)}
            finally:
                self._lock.release()
        else:
            with self._state_lock:
                current = self._version
            if current is None:
                return 503, {"error": "the model is still loading; try again"}
            version = current
        return 200, {"model_version": version}

    def _config_problem(self, schema: str) -> str | None:
        try:
            project_classes = convert.classes_from_label_config(schema)
        except ValueError as exc:
            return f"the project's labelling config does not fit this backend: {exc}"
        ours = tuple(self.decoder.classes)
        if tuple(project_classes) != ours:
            return (f"the project's labelling config has classes {list(project_classes)!r}; this backend's model "
                    f"predicts {list(ours)!r}")
        wanted = {"classify": "<Choices", "detect": "<RectangleLabels", "segment": "<PolygonLabels"}[
            self.decoder.task_type]
        if wanted not in schema:
            return f"the project's labelling config has no {wanted}> control: the model is a {self.decoder.task_type} model"
        return None

    def _refresh(self) -> str:
        version = self.predictor.refresh()
        with self._state_lock:
            if version != self._version:
                if self._version is not None:
                    self._say(f"serving model {version} (was {self._version})")
                self._version = version
        return version

    def webhook(self, body: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
        """Annotation events: counted (answers are pulled by ``pseudolabel sync``, which misses none)."""
        action = str(body.get("action") or "unknown")
        with self._state_lock:
            self._webhooks[action] = self._webhooks.get(action, 0) + 1
        return 200, {"status": "ok", "action": action}

    def requests(self, _body: Mapping[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
        """``GET /requests``: the last calls it answered (path, status, seconds, tasks, time)."""
        with self._state_lock:
            return 200, {"requests": list(self._calls)}

    def predict(self, body: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
        """One prediction per task, in order (``[]`` for a task whose image cannot be read)."""
        tasks = body.get("tasks")
        if not isinstance(tasks, list) or any(not isinstance(t, Mapping) for t in tasks):
            return 400, {"error": "the body must hold 'tasks': a list of Label Studio task objects"}
        with self._state_lock:
            self._waiting += 1
        with self._lock:  # one inference at a time; later requests wait here
            with self._state_lock:
                self._waiting -= 1
            return self._predict_locked(tasks)

    def _predict_locked(self, tasks: Sequence[Mapping[str, Any]]) -> tuple[int, dict[str, Any]]:
        try:
            version = self._refresh()
        except NoModel as exc:
            return 503, {"error": str(exc)}
        errors: dict[int, str] = {}
        paths: dict[int, Path] = {}
        for i, task in enumerate(tasks):
            data = task.get("data")
            try:
                if not isinstance(data, Mapping):
                    raise ValueError("task has no 'data' object")
                paths[i] = self.decoder.image_path(data)
            except ValueError as exc:
                errors[i] = str(exc)
        scan = scan_files(list(paths.values()), known=self._known, max_pixels=self.max_pixels)
        if len(self._known) > _MAX_KNOWN_FILES:
            self._known.clear()
        self._known.update(scan.files)
        ids = scan.id_of()
        bad = {q.path: q.reason for q in scan.quarantined}
        items = {it.id: it for it in scan.items}
        for i, p in paths.items():
            if p not in ids:
                errors[i] = f"image {p}: {bad.get(p, 'cannot be read')}"
        wanted = list(dict.fromkeys(ids[p] for i, p in paths.items() if i not in errors))
        # Taken now: predicting a long list may push them out of the LRU cache before the answer.
        got = {iid: self._cache[(iid, version)] for iid in wanted if (iid, version) in self._cache}
        todo = [iid for iid in wanted if iid not in got]
        with self._state_lock:
            self._jobs += 1
            job = self._job = Job(self._jobs, tasks=len(tasks), total=len(todo), cached=len(got), failed=len(errors))
        try:
            last_line = time.monotonic()
            for start in range(0, len(todo), self.batch_size):
                chunk = todo[start:start + self.batch_size]
                preds = self.predictor.predict([items[iid] for iid in chunk])
                if len(preds) != len(chunk):
                    raise RuntimeError(f"the model returned {len(preds)} predictions for {len(chunk)} images")
                for iid, pred in zip(chunk, preds):
                    got[iid] = pred
                    self._remember((iid, version), pred)
                with self._state_lock:
                    job.done += len(chunk)
                if job.done < job.total and time.monotonic() - last_line >= _PROGRESS_EVERY:
                    self._say(job.line())
                    last_line = time.monotonic()
        finally:
            with self._state_lock:
                job.finished = time.time()
                self._last_job, self._job = job, None
        results: list[Any] = [[] if i in errors else dict(got[ids[paths[i]]]) for i in range(len(tasks))]
        spent = (job.finished or time.time()) - job.started
        self._say(f"predict: {len(tasks)} task(s) with model {version}: {job.total} predicted, {job.cached} cached, "
                  f"{len(errors)} failed, {spent:.2f} s" + (f" ({job.rate:.1f} img/s)" if job.rate and job.total > 1 else ""))
        for i, why in list(errors.items())[:5]:
            self._say(f"  task {tasks[i].get('id')}: {why}")
        answer: dict[str, Any] = {"results": results, "model_version": version}
        if errors:
            answer["errors"] = [{"task": tasks[i].get("id"), "error": why} for i, why in errors.items()]
        return 200, answer

    def _remember(self, key: tuple[str, str], pred: dict[str, Any]) -> None:
        if self.cache_size == 0:
            return
        self._cache[key] = pred
        self._cache.move_to_end(key)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    # ------------------------------------------------------------------ HTTP

    def record(self, path: str, status: int, seconds: float, tasks: int | None) -> None:
        """Remember one served call for :meth:`requests` (``seconds``: wall time; ``tasks``: count)."""
        with self._state_lock:
            self._calls.append({"path": path, "status": status, "seconds": round(seconds, 4), "tasks": tasks,
                                "at": time.time()})

    def authorized(self, header: str | None) -> bool:
        """Whether the ``Authorization`` header ``header`` carries the token (always, without one)."""
        return not self.token or _authorized(header, self.token)

    def app(self) -> Any:
        """The Starlette application serving :meth:`health`, :meth:`setup`, :meth:`predict`,
        :meth:`webhook` and :meth:`requests` (JSON in, JSON out, errors as ``{"error"}``)."""
        from starlette.applications import Starlette
        from starlette.concurrency import run_in_threadpool
        from starlette.exceptions import HTTPException
        from starlette.requests import Request
        from starlette.responses import JSONResponse, Response
        from starlette.routing import Route

        backend = self

        def endpoint(handler: Callable[[Mapping[str, Any]], tuple[int, dict[str, Any]]], *, body: bool) -> Any:
            async def run(request: Request) -> Response:
                t0 = time.monotonic()
                n_tasks: int | None = None
                if not backend.authorized(request.headers.get("authorization")):
                    status, answer = 401, {"error": "missing or wrong token: send 'Authorization: Token <token>' "
                                                    "(or Basic Auth with the token as password)"}
                    backend.record(request.url.path, status, time.monotonic() - t0, None)
                    return JSONResponse(answer, status, headers={"WWW-Authenticate": 'Basic realm="pseudolabel"'})
                parsed: Any = {}
                if body:
                    raw = await request.body()
                    try:
                        parsed = json.loads(raw) if raw.strip() else {}
                    except ValueError as exc:
                        parsed = None
                        status, answer = 400, {"error": f"the request body is not JSON: {exc}"}
                    if parsed is not None and not isinstance(parsed, dict):
                        status, answer = 400, {"error": f"the request body is a JSON {type(parsed).__name__}, "
                                                        "expected an object"}
                        parsed = None
                    if isinstance(parsed, dict) and isinstance(parsed.get("tasks"), list):
                        n_tasks = len(parsed["tasks"])
                if parsed is not None:
                    try:
                        status, answer = await run_in_threadpool(handler, parsed)
                    except Exception as exc:  # noqa: BLE001 - answered as JSON, logged with the traceback
                        backend._say(f"error in {request.url.path}: {type(exc).__name__}: {exc}\n"
                                     + traceback.format_exc())
                        status, answer = 500, {"error": f"{type(exc).__name__}: {exc}"}
                backend.record(request.url.path, status, time.monotonic() - t0, n_tasks)
                return JSONResponse(answer, status)

            return run

        async def http_error(_request: Request, exc: Exception) -> Response:
            code = exc.status_code if isinstance(exc, HTTPException) else 500
            detail = exc.detail if isinstance(exc, HTTPException) else str(exc)
            hint = " (this ML backend answers GET /health, POST /setup, POST /predict, POST /webhook, " \
                   "GET /requests)"
            return JSONResponse({"error": f"{detail}{hint if code in (404, 405) else ''}"}, code)

        routes = [
            Route("/", endpoint(self.health, body=False), methods=["GET"]),
            Route("/health", endpoint(self.health, body=False), methods=["GET"]),
            Route("/setup", endpoint(self.setup, body=True), methods=["POST"]),
            Route("/predict", endpoint(self.predict, body=True), methods=["POST"]),
            Route("/webhook", endpoint(self.webhook, body=True), methods=["POST"]),
            Route("/requests", endpoint(self.requests, body=False), methods=["GET"]),
        ]
        return Starlette(routes=routes, exception_handlers={HTTPException: http_error})


class BackendServer:
    """Serve an :class:`MLBackend` with uvicorn in a background thread.

    ``host`` / ``port``: where to listen (``port=None``: a free port on ``host``);
    :meth:`check_bind` applies. ``start()`` returns once the socket accepts connections.
    """

    def __init__(self, backend: MLBackend, *, host: str = "127.0.0.1", port: int | None = 9090) -> None:
        self.backend = backend
        self.host = host
        self.port = port
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._port_: int | None = None

    @property
    def url(self) -> str:
        """``http://<host>:<port>`` (known once :meth:`start` has run)."""
        if self._port_ is None:
            raise RuntimeError("BackendServer.url is known only after start()")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self._port_}"

    def start(self, *, timeout: float = 30.0) -> BackendServer:
        """Serve in a background thread; returns self once listening. OSError if it cannot
        listen within ``timeout`` seconds."""
        import uvicorn

        from pseudolabel.review.server import free_port

        check_bind(self.host, self.backend.token)
        self._port_ = self.port if self.port is not None else free_port()
        config = uvicorn.Config(self.backend.app(), host=self.host, port=self._port_, log_config=None,
                                log_level="warning", access_log=False, lifespan="off", loop="asyncio",
                                http="h11", proxy_headers=False, server_header=False)
        self._server = uvicorn.Server(config)
        errors: list[BaseException] = []

        def serve() -> None:
            try:
                self._server.run()
            except BaseException as exc:  # noqa: BLE001 - reported by start()
                errors.append(exc)

        self._thread = threading.Thread(target=serve, name="pseudolabel-ml-backend", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if errors or not self._thread.is_alive():
                why = f": {errors[0]}" if errors else " (is the port in use?)"
                raise OSError(f"the ML backend could not listen on {self.host}:{self._port_}{why}")
            if time.monotonic() > deadline:
                self.stop()
                raise OSError(f"the ML backend did not start listening on {self.host}:{self._port_} in {timeout} s")
            time.sleep(0.02)
        return self

    def wait(self) -> None:
        """Block until the server stops (Ctrl-C in the caller's thread: call :meth:`stop`)."""
        while self._thread is not None and self._thread.is_alive():
            self._thread.join(0.5)

    def stop(self) -> None:
        """Ask the server to exit and wait (up to 10 s) for its thread."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
        self._thread = None

    def __enter__(self) -> BackendServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
