"""Start and stop a local Label Studio server, offline and on loopback only.

The server runs from its own virtual environment (``.venv-ls``, made by
``scripts/setup.sh``) because it pins Django, numpy and pyarrow versions that must not leak
into the project's environment. Nothing here imports Label Studio.

Example::

    with LabelStudioServer(Path("work/ls"), images_root=Path("data/images")) as ls:
        client = LabelStudioClient(ls.url, ls.token, "digits", classes, images_root=...)
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections import deque
from pathlib import Path
from types import TracebackType

_DEFAULT_USERNAME = "admin@pseudolabel.local"
_DEFAULT_PASSWORD = "pseudolabel-admin"
_TOKEN_FILE = "token.txt"
_LOG_FILE = "server.log"
# Blackhole proxy: any library inside the server that ignores the telemetry switches and
# tries to reach the internet hits a closed loopback port instead of leaving the machine.
_DEAD_PROXY = "http://127.0.0.1:9"


class LabelStudioNotFound(FileNotFoundError):
    """The ``label-studio`` executable could not be found."""


class LabelStudioStartError(RuntimeError):
    """The server exited or did not answer in time; the message carries the log's tail."""


def repo_root() -> Path:
    """The repository root: the parent of the ``pseudolabel`` package folder."""
    return Path(__file__).resolve().parents[2]


def find_label_studio(ls_bin: Path | None = None) -> Path:
    """Locate the ``label-studio`` executable.

    Order: ``ls_bin`` if given; ``$PSEUDOLABEL_LS_BIN``; ``<repo>/.venv-ls/bin/label-studio``;
    ``label-studio`` on ``PATH``. Raises :class:`LabelStudioNotFound` otherwise.
    """
    if ls_bin is not None:
        if not Path(ls_bin).is_file():
            raise LabelStudioNotFound(f"ls_bin {str(ls_bin)!r} is not a file")
        return Path(ls_bin)
    env = os.environ.get("PSEUDOLABEL_LS_BIN")
    if env:
        if not Path(env).is_file():
            raise LabelStudioNotFound(f"PSEUDOLABEL_LS_BIN={env!r} is not a file")
        return Path(env)
    local = repo_root() / ".venv-ls" / "bin" / "label-studio"
    if local.is_file():
        return local
    found = shutil.which("label-studio")
    if found:
        return Path(found)
    raise LabelStudioNotFound(
        f"label-studio not found (looked at $PSEUDOLABEL_LS_BIN, {str(local)!r} and PATH); "
        "run `bash scripts/setup.sh` to install the server into .venv-ls"
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tail(path: Path, n: int = 40) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return "".join(deque(f, maxlen=n))
    except OSError as exc:
        return f"(no log: {exc})"


def _no_proxy_opener() -> urllib.request.OpenerDirector:
    # Our own health checks go straight to loopback, whatever proxy the caller's env sets.
    return urllib.request.build_opener(urllib.request.ProxyHandler({}))


class LabelStudioServer:
    """A Label Studio server process bound to 127.0.0.1 with telemetry off.

    Parameters are only stored here; :meth:`start` does the work.

    - ``data_dir``: Label Studio's data folder (SQLite DB, ``server.log``, ``token.txt``).
    - ``images_root``: folder whose images are served under
      ``/data/local-files/?d=<path relative to the document root>`` (only folders with a
      local-files storage are served); ``document_root``: the server's
      ``LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT`` (default: ``images_root``'s parent).
    - ``port``: ``None`` picks a free loopback port at start.
    - ``username`` / ``password``: the admin account (an email) created on first start.
    - ``token``: the admin's API token (40 hex chars). ``None``: read ``data_dir/token.txt``
      or generate one and save it there, so restarts on the same data dir reuse it (Label
      Studio only applies the token when the data dir is first created).
    - ``ls_bin``: the ``label-studio`` executable; see :func:`find_label_studio`.
    - ``startup_timeout``: seconds to wait for ``GET /api/version`` (first start runs
      migrations, about 30 s; a restart about 3 s).
    - ``local_ml_backends``: let the server call ML backends (and webhooks) on loopback and
      private addresses: ``USE_DEFAULT_BANNED_SUBNETS=false``; off by default. Label Studio
      refuses those (HTTP 403 "URL resolves to a reserved network address") as a guard
      against server-side request forgery; a backend on this machine (``pseudolabel serve``
      on 127.0.0.1) needs this switch. ``ML_BLOCK_LOCAL_IP=false`` alone is not enough:
      registering a backend also creates a webhook to it, which that guard refuses.
    """

    def __init__(
        self,
        data_dir: Path,
        images_root: Path,
        *,
        port: int | None = None,
        username: str = _DEFAULT_USERNAME,
        password: str = _DEFAULT_PASSWORD,
        token: str | None = None,
        ls_bin: Path | None = None,
        startup_timeout: float = 180.0,
        document_root: Path | None = None,
        local_ml_backends: bool = False,
    ) -> None:
        self.data_dir = data_dir
        self.images_root = images_root
        self.document_root_arg = document_root
        self.port = port
        self.username = username
        self.password = password
        self.token_arg = token
        self.ls_bin = ls_bin
        self.startup_timeout = startup_timeout
        self.local_ml_backends = local_ml_backends
        self._proc: subprocess.Popen[bytes] | None = None
        self._port_: int | None = None
        self._token_: str | None = None

    # ------------------------------------------------------------------ properties

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>`` (known once :meth:`start` has run)."""
        if self._port_ is None:
            raise RuntimeError("LabelStudioServer.url is known only after start()")
        return f"http://127.0.0.1:{self._port_}"

    @property
    def token(self) -> str:
        """The admin's API token (known once :meth:`start` has run)."""
        if self._token_ is None:
            raise RuntimeError("LabelStudioServer.token is known only after start()")
        return self._token_

    @property
    def log_path(self) -> Path:
        """The server's log file (in ``data_dir``)."""
        return Path(self.data_dir) / _LOG_FILE

    @property
    def document_root(self) -> Path:
        """The document root given, else ``images_root``'s parent (Label Studio refuses a
        storage path equal to its document root, so ``images_root`` is at least one level
        below it; see :func:`pseudolabel.review.convert.local_files_url`)."""
        if self.document_root_arg is not None:
            return Path(self.document_root_arg).resolve()
        return Path(self.images_root).resolve().parent

    @property
    def running(self) -> bool:
        """Whether the server process this object started is still alive."""
        return self._proc is not None and self._proc.poll() is None

    # ------------------------------------------------------------------ helpers

    def _resolve_token(self) -> str:
        path = Path(self.data_dir) / _TOKEN_FILE
        if self.token_arg is not None:
            tok = self.token_arg
        elif path.is_file():
            tok = path.read_text(encoding="utf-8").strip()
        else:
            tok = secrets.token_hex(20)
        if len(tok) != 40 or any(c not in "0123456789abcdef" for c in tok.lower()):
            raise ValueError(f"token {tok!r} (from {'argument' if self.token_arg else path}) "
                             "must be 40 hexadecimal characters")
        if not path.is_file():
            path.write_text(tok + "\n", encoding="utf-8")
            path.chmod(0o600)
        return tok

    def environment(self, port: int, token: str) -> dict[str, str]:
        """The environment the server runs with: offline, loopback-only, local files on."""
        env = dict(os.environ)
        env.update(
            {
                "LABEL_STUDIO_BASE_DATA_DIR": str(Path(self.data_dir).resolve()),
                "DJANGO_DB": "sqlite",
                "LATEST_VERSION_CHECK": "false",
                "COLLECT_ANALYTICS": "false",
                "FEATURE_FLAGS_OFFLINE": "true",
                "SENTRY_DSN": "",
                "FRONTEND_SENTRY_DSN": "",
                "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
                "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(self.document_root),
                "LABEL_STUDIO_USERNAME": self.username,
                "LABEL_STUDIO_PASSWORD": self.password,
                "LABEL_STUDIO_USER_TOKEN": token,
                "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
                "http_proxy": _DEAD_PROXY,
                "https_proxy": _DEAD_PROXY,
                "HTTP_PROXY": _DEAD_PROXY,
                "HTTPS_PROXY": _DEAD_PROXY,
                "no_proxy": "127.0.0.1,localhost",
                "NO_PROXY": "127.0.0.1,localhost",
            }
        )
        if self.local_ml_backends:
            env["USE_DEFAULT_BANNED_SUBNETS"] = "false"
        # A VIRTUAL_ENV of the caller's venv must not leak into the server's.
        env.pop("VIRTUAL_ENV", None)
        env.pop("PYTHONPATH", None)
        return env

    @staticmethod
    def _port_in_use(port: int) -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(1.0)
            return s.connect_ex(("127.0.0.1", port)) == 0

    def _answers(self) -> bool:
        try:
            with _no_proxy_opener().open(f"{self.url}/api/version", timeout=5) as r:
                return bool(r.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> LabelStudioServer:
        """Launch the server and wait until ``GET /api/version`` answers; returns ``self``.

        Raises :class:`LabelStudioStartError` with the last 40 log lines if the process
        exits or does not answer within ``startup_timeout`` seconds.
        """
        if self.running:
            return self
        exe = find_label_studio(self.ls_bin)
        images_root = Path(self.images_root)
        if not images_root.is_dir():
            raise ValueError(f"images_root {str(images_root)!r} is not a directory")
        if images_root.resolve() == self.document_root:
            raise ValueError(f"images_root {str(images_root)!r} must not be the filesystem root")
        Path(self.data_dir).mkdir(parents=True, exist_ok=True)
        self._token_ = self._resolve_token()
        self._port_ = self.port if self.port is not None else free_port()
        if self._port_in_use(self._port_):
            raise LabelStudioStartError(
                f"port {self._port_} on 127.0.0.1 is already in use; pick another or port=None"
            )
        cmd = [
            str(exe), "start", "--no-browser",
            "--internal-host", "127.0.0.1",
            "--port", str(self._port_),
            "--host", f"http://127.0.0.1:{self._port_}",
        ]
        log = open(self.log_path, "ab")
        try:
            self._proc = subprocess.Popen(
                cmd,
                cwd=str(self.data_dir),
                env=self.environment(self._port_, self._token_),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group: stop() ends the workers too
            )
        finally:
            log.close()
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self._proc = None
                raise LabelStudioStartError(
                    f"label-studio exited with code {code} during startup; "
                    f"last lines of {self.log_path}:\n{_tail(self.log_path)}"
                )
            if self._answers():
                return self
            if time.monotonic() > deadline:
                self.stop()
                raise LabelStudioStartError(
                    f"label-studio did not answer on {self.url} within {self.startup_timeout} s; "
                    f"last lines of {self.log_path}:\n{_tail(self.log_path)}"
                )
            time.sleep(0.5)

    def stop(self, *, grace: float = 15.0) -> None:
        """SIGTERM the server's process group, SIGKILL it after ``grace`` seconds."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            pgid = os.getpgid(proc.pid)
        except ProcessLookupError:
            proc.wait()
            return
        try:
            os.killpg(pgid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
        # The leader may be gone while workers linger: kill whatever is left in the group.
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()

    def __enter__(self) -> LabelStudioServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
