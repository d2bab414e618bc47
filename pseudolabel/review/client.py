"""Label Studio adapter: the only module of pseudolabel that imports ``label_studio_sdk``.

It turns :class:`~pseudolabel.types.Candidate` objects into Label Studio tasks with the
model's prediction pre-drawn, and the reviewers' annotations back into
:class:`~pseudolabel.types.Annotation` objects. Only the SDK's public API is used; the SDK is
imported on first use. (Over 400 lines: one class over one HTTP API, whose methods share the
project, the retry policy and the task lookups; the pure parts live in ``convert`` and
``decode``, the retry and error handling in ``transport``.)

Conventions:

- each task's ``data`` carries our item id under ``item_id_key`` (default
  ``"pseudolabel_id"``). Label Studio duplicates re-imported tasks and its task ids are not
  stable keys, so every push looks our ids up first, an import whose answer was lost is
  reconciled by that lookup before anything is sent again (the SDK's own retries are off),
  and tasks a failed import created twice are removed (:meth:`submit`);
- review order: the project uses "Uncertainty sampling", which serves the task with the
  **lowest** prediction score *among the predictions of the project's model version* first.
  We send ``score = 1 / (1 + exp(uncertainty))`` (strictly decreasing), set the project's
  model version to the current model at every push (:meth:`set_model_version`) and give
  still-queued tasks of earlier rounds a prediction of the current model
  (:meth:`refresh`), so the labelling stream serves the most uncertain queued task first,
  with the current model's prediction pre-drawn, in every round;
- reviewer columns: ``predicted`` (class, or a box summary), ``confidence`` and
  ``uncertainty`` (numbers, shown as numbers in the "pseudolabel review" Data Manager tab),
  ``round``, ``strategy``; the item id and image size are hidden there;
- images: the project gets a local-files storage on ``images_root``; task data points at
  ``/data/local-files/?d=<path relative to document_root>`` (``document_root`` is the
  server's ``LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT``, default ``images_root``'s parent;
  ``images_root`` must lie strictly inside it). :meth:`check_image` fetches one image
  through the server so a wrong rule fails loudly instead of showing reviewers 404s.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pseudolabel.review import convert
from pseudolabel.review.decode import Decoder, Rejected, as_int, get, parse_time
from pseudolabel.review.transport import (
    AmbiguousWrite,
    LabelStudioError,
    LabelStudioProtocolError,
    LabelStudioUnavailable,
    RetryPolicy,
    call,
)
from pseudolabel.types import Annotation, Box, Candidate, Item, TaskType

if TYPE_CHECKING:
    from label_studio_sdk import LabelStudio

__all__ = ["ForeignTask", "LabelStudioClient", "LabelStudioError", "PendingTask", "PullResult", "Rejected",
           "TaskInfo"]

SAMPLING = "Uncertainty sampling"
# The description of the ML backends pseudolabel registers (their title must follow the
# project's model version: see connect_ml_backend).
ML_BACKEND_DESCRIPTION = "pseudolabel serve"
ML_BACKEND_USER = "pseudolabel"
REVIEW_VIEW = "pseudolabel review"
_DM_DATETIME = "%Y-%m-%dT%H:%M:%S.%fZ"
# Item ids per Data Manager lookup: keeps the GET query string well under URL limits.
_LOOKUP_CHUNK = 200
# Data keys a reviewer needs to see as numbers / does not need to see in the review tab.
_NUMBER_COLUMNS = ("confidence", "uncertainty", "round", "width", "height")
_HIDDEN_COLUMNS = ("width", "height", "kind")


@dataclass(frozen=True)
class PendingTask:
    """A task without any annotation yet, as a reviewer would see it.

    ``prediction_score`` is Label Studio's score (lower = served first);
    ``predicted_label`` is the pre-drawn class (classification) or ``None``;
    ``predicted_boxes`` the pre-drawn boxes in pixels (detection / segmentation).
    """

    task_id: int
    item_id: str
    prediction_id: int | None
    prediction_score: float | None
    predicted_label: str | None
    predicted_boxes: tuple[Box, ...] = ()


@dataclass(frozen=True)
class TaskInfo:
    """One task's review state: ``overlap`` = distinct reviewers it asks for;
    ``is_labeled`` = Label Studio considers it done (no longer served)."""

    task_id: int
    data: dict[str, Any]
    overlap: int
    is_labeled: bool
    total_annotations: int
    cancelled_annotations: int
    item_id: str = ""

    @property
    def state(self) -> str:
        """``"answered"`` (a submitted annotation), ``"skipped"`` (only skips) or ``"queued"``."""
        if self.total_annotations > 0:
            return "answered"
        return "skipped" if self.cancelled_annotations > 0 else "queued"


@dataclass(frozen=True)
class ForeignTask:
    """A task that does not carry our item id (imported by hand, made in the UI) but has at
    least one annotation: ``task`` is the task as listed (data, annotations, predictions)."""

    task_id: int
    data: dict[str, Any]
    task: Any


@dataclass
class PullResult:
    """What a pull returned: usable annotations (oldest first), rejected ones, and the note
    shown on each pulled task (task id → note; a flag is cleared once the answer is fixed)."""

    annotations: list[Annotation] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    notes: dict[int, str] = field(default_factory=dict)


class LabelStudioClient:
    """Push candidates to, and pull annotations from, one Label Studio project.

    Parameters (stored only; the first call connects):

    - ``url``, ``token``: server address (``http://127.0.0.1:8080``) and API token
      (personal access token or legacy token); ``token_env``: the variable it came from
      (named in errors);
    - ``project_title``: the project to find or create (3 to 50 characters);
    - ``classes``: class names, in the model's class-index order;
    - ``task_type``: ``"classify"`` (Choices), ``"detect"`` (RectangleLabels) or
      ``"segment"`` (PolygonLabels);
    - ``images_root``: every pushed image must lie under it; ``document_root``: the server's
      ``LOCAL_FILES_DOCUMENT_ROOT`` (default ``images_root``'s parent);
    - ``data_key``: the task data key of the image; ``item_id_key``: the key of our item id;
    - ``page_size``: tasks per page when listing; ``import_chunk``: tasks per import call;
    - ``overlap``: reviewers asked to answer each task (``maximum_annotations``);
    - ``note_key``: task data key of the note shown above the image;
    - ``instructions``: labelling instructions shown to reviewers (HTML allowed);
    - ``retry``: timeouts and retry budget (:class:`RetryPolicy`); ``log``: progress lines
      (retries, repairs), e.g. ``print``.
    """

    def __init__(
        self,
        url: str,
        token: str,
        project_title: str,
        classes: Sequence[str],
        *,
        task_type: TaskType = "classify",
        images_root: Path,
        document_root: Path | None = None,
        data_key: str = "image",
        item_id_key: str = "pseudolabel_id",
        page_size: int = 1000,
        import_chunk: int = 500,
        overlap: int = 1,
        note_key: str = "note",
        instructions: str | None = None,
        retry: RetryPolicy | None = None,
        token_env: str | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.project_title = project_title
        self.classes = classes
        self.task_type = task_type
        self.images_root = images_root
        self.document_root = document_root
        self.data_key = data_key
        self.item_id_key = item_id_key
        self.page_size = page_size
        self.import_chunk = import_chunk
        self.overlap = overlap
        self.note_key = note_key
        self.instructions = instructions
        self.retry = retry if retry is not None else RetryPolicy()
        self.token_env = token_env
        self.log = log
        self._sdk_: LabelStudio | None = None
        self._project_id_: int | None = None
        self._emails_: dict[int, str] = {}
        self._auth_header_: dict[str, str] | None = None

    # ------------------------------------------------------------------ plumbing

    def _sdk(self) -> LabelStudio:
        if self._sdk_ is None:
            from label_studio_sdk import LabelStudio

            # No SDK retries: it retries POSTs on a dropped connection, which duplicates
            # imports. Retries happen in transport.call, after reconciling. The SDK checks a
            # personal access token when it is built (expired, no expiry: HTTP 401), so that
            # goes through call too: one line naming the token's variable, no headers.
            self._sdk_ = self._call("connect", lambda: LabelStudio(
                base_url=self.url, api_key=self.token, timeout=self.retry.timeout, max_retries=0))
        return self._sdk_

    def _call(self, what: str, fn: Callable[[], Any], *, idempotent: bool = True) -> Any:
        return call(what, fn, url=self.url, policy=self.retry, idempotent=idempotent, token_env=self.token_env,
                    on_retry=self.log)

    @property
    def project_id(self) -> int:
        """The project's id (finds or creates the project on first use)."""
        if self._project_id_ is None:
            self.ensure_project()
        assert self._project_id_ is not None  # set by ensure_project; not user input
        return self._project_id_

    @property
    def project_url(self) -> str:
        """The project's Data Manager page, for people."""
        return f"{self.url}/projects/{self.project_id}/data"

    def _classes(self) -> tuple[str, ...]:
        return convert.validate_classes(self.classes)

    def _decoder(self) -> Decoder:
        return Decoder(self._classes(), self.task_type, Path(self.images_root), self.document_root,
                       data_key=self.data_key, item_id_key=self.item_id_key)

    def _label_config(self) -> str:
        return convert.label_config(
            self._classes(), task_type=self.task_type, data_key=self.data_key, note_key=self.note_key
        )

    def _overlap(self) -> int:
        o = self.overlap
        if isinstance(o, bool) or not isinstance(o, int) or not 1 <= o <= 100:
            raise ValueError(f"overlap {o!r} must be an int from 1 to 100 (reviewers per task)")
        return o

    def _list_tasks(
        self, items: Sequence[Mapping[str, Any]] = (), *, conjunction: str = "and", fields: str = "all",
        what: str = "list tasks",
    ) -> list[Any]:
        """Tasks of the project matching Data Manager filter ``items``, in task-id order."""
        query: dict[str, Any] = {"ordering": ["tasks:id"]}
        if items:
            query["filters"] = {"conjunction": conjunction, "items": list(items)}
        pid = self.project_id

        def fetch() -> list[Any]:
            return list(self._sdk().tasks.list(project=pid, query=json.dumps(query),
                                               fields=fields, page_size=self.page_size))

        return list(self._call(what, fetch))

    def _data_filter(self, item_ids: Sequence[str]) -> dict[str, Any]:
        return {
            "filter": f"filter:tasks:data.{self.item_id_key}",
            "operator": "in_list",
            "type": "List",
            "value": list(item_ids),
        }

    def _email(self, user_id: Any) -> str | None:
        if user_id is None:
            return None
        uid = as_int(user_id, "annotator id")
        if uid not in self._emails_:
            for user in self._call("list users", lambda: list(self._sdk().users.list())):
                if user.id is not None and user.email:
                    self._emails_[int(user.id)] = user.email
        return self._emails_.get(uid, f"user:{uid}")

    def ensure_user(self, email: str) -> int:
        """The id of the user with ``email``, created (without a password) if missing.

        For simulated reviewers: :meth:`annotate` with ``completed_by=`` saves answers as them.
        """
        if not isinstance(email, str) or "@" not in email:
            raise ValueError(f"email {email!r} is not an email address")
        sdk = self._sdk()
        for user in self._call("list users", lambda: list(sdk.users.list())):
            if user.email == email and user.id is not None:
                return int(user.id)
        made = self._call("create user", lambda: sdk.users.create(username=email, email=email), idempotent=False)
        if made.id is None:
            raise LabelStudioError(f"creating user {email!r} returned no id")
        self._emails_[int(made.id)] = email
        return int(made.id)

    # ------------------------------------------------------------------ server and project

    def check_server(self) -> str:
        """The server's version; a clear error when nothing, or not Label Studio, answers at ``url``."""
        try:
            info = self._call("GET /api/version", lambda: self._sdk().versions.get())
        except LabelStudioError as exc:
            if "HTTP 404" in str(exc):
                raise LabelStudioProtocolError(
                    f"the server at {self.url} has no /api/version: is it Label Studio? (label_studio.url)") from None
            raise
        release = get(info, "release") or get(info, "label-studio-os-package")
        if not release and not isinstance(info, Mapping) and not hasattr(info, "release"):
            raise LabelStudioProtocolError(f"the server at {self.url} answered /api/version without a version: "
                                           "is it Label Studio? (label_studio.url)")
        return str(get(release, "version") or release or "unknown")

    def ensure_project(self) -> int:
        """Find the project by title or create it; returns its id.

        A new project gets the label config generated from ``classes`` (hotkeys that match the
        class names where they are single characters; no rotation of boxes), "Uncertainty
        sampling" and the instructions; an existing
        one must declare exactly the same classes (``ValueError`` naming the difference) and
        is brought up to date (sampling, overlap, instructions, a label config generated by
        an older version). A local-files storage on ``images_root`` is created once.
        """
        title = self.project_title
        if not isinstance(title, str) or not 3 <= len(title) <= 50:
            raise ValueError(f"project_title {title!r} must be a string of 3 to 50 characters")
        classes = self._classes()
        overlap = self._overlap()
        root = Path(self.images_root).resolve()
        if not root.is_dir():
            raise ValueError(f"label_studio.images_root {str(self.images_root)!r} is not a directory")
        sdk = self._sdk()
        self.check_server()
        found = [p for p in self._call("list projects", lambda: list(sdk.projects.list(title=title)))
                 if p.title == title]
        if len(found) > 1:
            raise ValueError(
                f"{len(found)} Label Studio projects are titled {title!r} (ids "
                f"{sorted(int(p.id) for p in found if p.id is not None)}); titles must be unique"
            )
        settings: dict[str, Any] = {}
        if self.instructions:
            settings = {"expert_instruction": self.instructions, "show_instruction": True}
        if found:
            pid = int(found[0].id)
            project = self._call("get project", lambda: sdk.projects.get(pid))
            existing = convert.classes_from_label_config(project.label_config or "")
            if tuple(existing) != classes:
                missing = [c for c in classes if c not in existing]
                extra = [c for c in existing if c not in classes]
                raise ValueError(
                    f"Label Studio project {title!r} (id {pid}) has classes {list(existing)!r}, "
                    f"but {list(classes)!r} were given: missing {missing!r}, unexpected {extra!r}"
                    + ("" if missing or extra else ", different order")
                )
            update: dict[str, Any] = {}
            if project.sampling != SAMPLING:
                update["sampling"] = SAMPLING
            if (project.maximum_annotations or 1) != overlap or (
                overlap > 1 and project.overlap_cohort_percentage != 100
            ):
                update |= {"maximum_annotations": overlap, "overlap_cohort_percentage": 100}
            if settings and (project.expert_instruction or "") != self.instructions:
                update |= settings
            if "hotkey=" not in (project.label_config or ""):
                update["label_config"] = self._label_config()  # written by an older version: same classes
            if update:
                self._call("update project", lambda: sdk.projects.update(pid, **update))
        else:
            created = self._call("create project", lambda: sdk.projects.create(
                title=title, label_config=self._label_config(), sampling=SAMPLING,
                maximum_annotations=overlap, overlap_cohort_percentage=100, show_collab_predictions=True,
                **settings,
            ), idempotent=False)
            if created.id is None:
                raise LabelStudioError(f"creating project {title!r} returned no id")
            pid = int(created.id)
        storages = self._call("list storages", lambda: list(sdk.import_storage.local.list(project=pid)))
        if not any(s.path and Path(s.path).resolve() == root for s in storages):
            self._call("create local-files storage", lambda: sdk.import_storage.local.create(
                project=pid, path=str(root), title="pseudolabel images", use_blob_urls=False), idempotent=False)
        self._project_id_ = pid
        return pid

    def _get_json(self, path: str, what: str) -> Any:
        """``GET <url><path>`` as JSON, for the few endpoints the SDK does not wrap."""
        import httpx

        headers = self._auth_header()

        def fetch() -> Any:
            r = httpx.get(f"{self.url}{path}", headers=headers, timeout=self.retry.timeout)
            r.raise_for_status()
            return r.json()

        return self._call(what, fetch)

    def ensure_review_view(self) -> None:
        """A Data Manager tab, "pseudolabel review", where our numbers are numbers and the long
        id, image size and Label Studio's transformed score are hidden.

        Built after tasks exist (Label Studio only knows data columns it has seen), from the
        server's own column defaults, so its other columns show as in a default tab. No
        ordering or filter: "Label All Tasks" from this tab uses the project's uncertainty
        sampling (a tab with an ordering would serve in that order instead).
        """
        pid = self.project_id
        sdk = self._sdk()
        cols = self._get_json(f"/api/dm/columns?project={pid}", "list Data Manager columns").get("columns", [])

        def cid(c: Mapping[str, Any]) -> str:
            return f"tasks:{'data.' if c.get('parent') == 'data' else ''}{c['id']}"

        ours = [f"tasks:data.{k}" for k in (self.item_id_key, *_HIDDEN_COLUMNS)] + ["tasks:predictions_score"]
        reviewer = [f"tasks:data.{k}" for k in ("predicted", "confidence", "uncertainty", "round", "strategy",
                                                  self.note_key)]
        hidden = {
            "explore": sorted({cid(c) for c in cols if c.get("visibility_defaults", {}).get("explore") is False}
                              | set(ours)),
            "labeling": sorted({cid(c) for c in cols if c.get("visibility_defaults", {}).get("labeling") is False}
                               | set(ours) | set(reviewer)),
        }
        data = {
            "title": REVIEW_VIEW, "hiddenColumns": hidden,
            "columnsDisplayType": {f"tasks:data.{k}": "Number" for k in _NUMBER_COLUMNS},
            "filters": {"conjunction": "and", "items": []},
        }
        views = self._call("list views", lambda: list(sdk.views.list(project=pid)))
        mine = [v for v in views if (get(get(v, "data") or {}, "title") or "") == REVIEW_VIEW]
        if not mine:
            self._call("create review view", lambda: sdk.views.create(project=pid, data=data),
                       idempotent=False)
        elif {k: get(get(mine[0], "data") or {}, k) for k in data} != data:
            vid = str(get(mine[0], "id"))
            self._call("update review view", lambda: sdk.views.update(vid, project=pid, data=data))

    def set_model_version(self, model_version: str) -> None:
        """Make ``model_version`` the project's prediction version.

        Label Studio keeps the version of the *first* import; the labelling stream then sends
        only that version's predictions and ranks only tasks that have one. Called at every push.
        """
        pid = self.project_id
        self._call("set project model version", lambda: self._sdk().projects.update(
            pid, model_version=model_version, show_collab_predictions=True))
        self._follow_ml_backends(model_version)

    # ------------------------------------------------------------------ ML backend

    def ml_backends(self) -> list[Any]:
        """The project's ML backends that pseudolabel registered (``pseudolabel serve --connect``).

        Listing them makes Label Studio call each backend's ``/health`` and ``/setup``."""
        pid = self.project_id
        found = self._call("list ML backends", lambda: list(self._sdk().ml.list(project=pid)))
        return [b for b in found if (get(b, "description") or "").startswith(ML_BACKEND_DESCRIPTION)]

    def connect_ml_backend(self, url: str, *, model_version: str, token: str | None = None,
                           timeout: float = 100.0) -> int:
        """Register the ML backend at ``url`` with the project (or update the one registered
        there) and make the labelling stream ask it; returns its Label Studio id.

        Label Studio asks a backend for predictions only while the project's model version
        (Settings → Annotation → predictions) equals the backend's *title*. The title is set
        to the project's model version (the version of the last push, whose predictions the
        stream serves as they are), or to ``model_version`` (the served model) when nothing
        was pushed yet; every later push renames it (:meth:`set_model_version`). ``token``:
        the backend's token, sent by Label Studio as the Basic Auth password (also set on
        the webhook Label Studio creates for the backend). Label Studio calls the backend's
        ``/health`` and ``/setup`` while registering it: it must be up, and reachable from the
        server (a loopback address needs ``ML_BLOCK_LOCAL_IP=false`` or
        ``USE_DEFAULT_BANNED_SUBNETS=false`` on the server).
        """
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"ML backend url {url!r} must start with http:// or https://")
        url = url.rstrip("/")
        pid = self.project_id
        sdk = self._sdk()
        title = self.project_model_version() or model_version
        auth: dict[str, Any] = {"auth_method": "NONE"}
        if token:
            auth = {"auth_method": "BASIC_AUTH", "basic_auth_user": ML_BACKEND_USER, "basic_auth_pass": token}
        fields: dict[str, Any] = {"url": url, "title": title, "description": f"{ML_BACKEND_DESCRIPTION}: "
                                  f"{self.project_title}", "is_interactive": False, "timeout": float(timeout), **auth}
        every = self._call("list ML backends", lambda: list(sdk.ml.list(project=pid)))
        same = [b for b in every if (get(b, "url") or "").rstrip("/") == url]
        # Label Studio asks one backend per project (the first it finds): ours from an earlier
        # address are stale and go; someone else's is reported.
        for b in every:
            if b in same:
                continue
            bid = as_int(get(b, "id"), "ML backend id")
            if (get(b, "description") or "").startswith(ML_BACKEND_DESCRIPTION):
                self._call(f"remove stale ML backend {bid}", partial(sdk.ml.delete, bid))
                if self.log:
                    self.log(f"removed ML backend {bid} ({get(b, 'url')}): registered by an earlier `pseudolabel serve`")
            elif self.log:
                self.log(f"the project also has ML backend {bid} ({get(b, 'url')}, {get(b, 'title')!r}); Label Studio "
                         "asks only one backend per project: remove it if predictions do not come from pseudolabel")
        try:
            if same:
                bid = as_int(get(same[0], "id"), "ML backend id")
                self._call("update ML backend", lambda: sdk.ml.update(bid, project=pid, **fields))
            else:
                made = self._call("register ML backend", lambda: sdk.ml.create(project=pid, **fields),
                                  idempotent=False)
                bid = as_int(get(made, "id"), "ML backend id")
        except LabelStudioError as exc:
            if "reserved network address" in str(exc):
                raise LabelStudioError(
                    f"Label Studio at {self.url} refuses ML backends on loopback and private addresses ({url}): "
                    "start it with USE_DEFAULT_BANNED_SUBNETS=false, or give --public-url an address it may "
                    "reach") from None
            raise
        if self.project_model_version() != title:
            self.set_model_version(title)
        if token:
            hook = f"{url}/webhook"
            for w in self._call("list webhooks", lambda: list(sdk.webhooks.list(project=str(pid)))):
                if (get(w, "url") or "").rstrip("/") == hook:
                    wid = as_int(get(w, "id"), "webhook id")
                    self._call("set webhook token", partial(
                        sdk.webhooks.update, wid, url=hook, headers={"Authorization": f"Token {token}"}))
        return bid

    def tasks_to_prelabel(self, model_version: str) -> list[dict[str, Any]]:
        """Tasks still to be labelled (not done) that have no prediction of ``model_version``,
        as ``{"id", "data"}`` (what an ML backend's ``/predict`` reads), in task-id order."""
        out = []
        for task in self._list_tasks(fields="all", what="list tasks to prelabel"):
            if get(task, "is_labeled") or any(get(p, "model_version") == model_version
                                              for p in (get(task, "predictions") or [])):
                continue
            out.append({"id": as_int(get(task, "id"), "task id"), "data": dict(get(task, "data") or {})})
        return out

    def add_predictions(self, predictions: Sequence[Mapping[str, Any]]) -> int:
        """Import predictions in one call (``{"task", "result", "score", "model_version"}``
        each): Label Studio saves them in bulk, where its "Retrieve predictions" action saves
        them one by one. Not idempotent: a caller that retries looks the tasks up again first
        (:meth:`tasks_to_prelabel`). Returns how many were sent."""
        preds = [dict(p) for p in predictions]
        if preds:
            pid = self.project_id
            # the SDK annotates `request` with its pydantic models but sends plain dicts as they are
            self._call(f"add {len(preds)} predictions",
                       lambda: self._sdk().projects.import_predictions(pid, request=preds),  # type: ignore[arg-type]
                       idempotent=False)
        return len(preds)

    def disconnect_ml_backend(self, backend_id: int) -> None:
        """Remove an ML backend from the project, keeping the project's model version.

        While the project names a backend that does not answer, Label Studio's labelling
        stream shows *no* prediction at all, not even the pushed ones (measured with 1.23.2),
        so a backend that stops must go. Label Studio clears the project's model version when
        it named the removed backend; it is set back, so the pushed predictions show again.
        """
        version = self.project_model_version()
        bid = int(backend_id)
        self._call(f"remove ML backend {bid}", lambda: self._sdk().ml.delete(bid))
        if version and self.project_model_version() != version:
            self.set_model_version(version)

    def _follow_ml_backends(self, model_version: str) -> None:
        """Rename our ML backends to ``model_version`` so the stream keeps asking them. Best
        effort: a backend that is down cannot be renamed (Label Studio checks it first); the
        stream then shows pushed predictions only, until ``pseudolabel serve --connect``."""
        try:
            backends = self.ml_backends()
        except LabelStudioError as exc:
            if self.log:
                self.log(f"could not list the project's ML backends: {exc}")
            return
        pid = self.project_id
        for b in backends:
            if get(b, "title") == model_version:
                continue
            bid = as_int(get(b, "id"), "ML backend id")
            fields: dict[str, Any] = {"project": pid, "url": get(b, "url"), "title": model_version}
            if str(get(b, "auth_method") or "") == "BASIC_AUTH":
                # An empty password keeps the stored one.
                fields |= {"auth_method": "BASIC_AUTH", "basic_auth_user": get(b, "basic_auth_user"),
                           "basic_auth_pass": ""}
            try:
                self._call("rename ML backend", lambda: self._sdk().ml.update(bid, **fields))
            except LabelStudioError as exc:
                if self.log:
                    self.log(f"ML backend {bid} ({get(b, 'url')}) could not follow model version {model_version}: "
                             f"{exc}; run `pseudolabel serve --connect` again once it is up")

    def project_model_version(self) -> str | None:
        """The project's current prediction version (what the labelling stream serves)."""
        pid = self.project_id
        return self._call("get project", lambda: self._sdk().projects.get(pid)).model_version or None

    # ------------------------------------------------------------------ push

    def _prediction(self, cand: Candidate, model_version: str | None) -> list[dict[str, Any]]:
        if cand.prediction is None:
            return []
        return [convert.prediction_to_ls(
            cand.prediction, classes=self._classes(), task_type=self.task_type, width=cand.item.width,
            height=cand.item.height, uncertainty=cand.score, model_version=model_version)]

    def _columns(self, cand: Candidate) -> dict[str, Any]:
        """What the reviewer reads in the Data Manager: predicted class (or a box summary),
        confidence (0..1) and uncertainty (our score), as numbers."""
        pred = cand.prediction
        predicted: str | None = None
        confidence: float | None = None
        if pred is not None and pred.probs is not None and len(pred.probs):
            idx = int(pred.label_index or 0)
            predicted = self._classes()[idx] if idx < len(self._classes()) else None
            confidence = float(pred.probs[idx])
        elif pred is not None:
            counts: dict[str, int] = {}
            for b in pred.boxes:
                counts[b.label] = counts.get(b.label, 0) + 1
            predicted = ", ".join(f"{n} {c}" for c, n in sorted(counts.items())) or "no boxes"
            scores = [float(b.score) for b in pred.boxes if b.score is not None]
            confidence = max(scores) if scores else 0.0
        conf = None if confidence is None or not math.isfinite(confidence) else round(confidence, 4)
        return {"predicted": predicted, "confidence": conf, "uncertainty": round(float(cand.score), 6)}

    def _task(self, cand: Candidate, round_id: int, model_version: str | None) -> dict[str, Any]:
        return {
            "data": {
                self.data_key: self.image_url(cand.item.path),
                **self._columns(cand),
                "round": int(round_id),
                "strategy": cand.strategy,
                "kind": cand.kind,
                self.note_key: self._note(cand),
                "width": int(cand.item.width),
                "height": int(cand.item.height),
                self.item_id_key: cand.item.id,
            },
            "predictions": self._prediction(cand, model_version),
        }

    def image_url(self, path: Path) -> str:
        """The task data URL of an image file (``/data/local-files/?d=...``)."""
        return convert.local_files_url(path, self.images_root, document_root=self.document_root)

    def _note(self, cand: Candidate) -> str:
        """What the reviewer reads above the image: the candidate's note, or for a relabel task
        why it came back."""
        if cand.kind != "relabel":
            return cand.note
        pred = cand.prediction
        if self.task_type == "classify" and pred is not None and pred.label_index is not None \
                and pred.label_index < len(self._classes()):
            return (f"Second review: this image already has a label, but the model suggests "
                    f"{self._classes()[pred.label_index]!r}. Please check it.")
        return "Second review: the model doubts this image's current label. Please check it."

    def tasks_by_item(self, item_ids: Sequence[str]) -> dict[str, list[int]]:
        """Item id → every task id that carries it (more than one = duplicates), ascending."""
        found: dict[str, list[int]] = {}
        ids = list(dict.fromkeys(item_ids))
        for start in range(0, len(ids), _LOOKUP_CHUNK):
            chunk = ids[start : start + _LOOKUP_CHUNK]
            for task in self._list_tasks([self._data_filter(chunk)], fields="task_only", what="look up tasks"):
                iid = str((task.data or {}).get(self.item_id_key))
                found.setdefault(iid, []).append(int(task.id))
        return {k: sorted(v) for k, v in found.items()}

    def existing_tasks(self, item_ids: Sequence[str]) -> dict[str, int]:
        """Item id → task id for those of ``item_ids`` that already have a task (the oldest
        task where an item has several: duplicates are reported by :meth:`listing`)."""
        return {iid: tids[0] for iid, tids in self.tasks_by_item(item_ids).items()}

    def submit(
        self, candidates: Sequence[Candidate], *, round_id: int, model_version: str | None = None
    ) -> dict[str, int]:
        """Queue ``candidates`` as tasks with their prediction pre-drawn, exactly once.

        Items that already have a task are left as they are; the others are imported in
        chunks of ``import_chunk``. An import that fails in a way that leaves open whether the
        server applied it (dropped connection, time-out, 5xx) is reconciled: our ids are
        looked up until the answer is stable, found tasks are adopted, only the rest is sent
        again; tasks that a lost-and-repeated import created twice are deleted (the
        extra ones are new and unanswered). Returns item id → task id for every candidate.

        Raises ``ValueError`` for an image outside ``images_root``, a repeated item id, or a
        prediction that does not fit the class list; nothing is imported then.
        """
        ids = [c.item.id for c in candidates]
        dupes = sorted({i for i in ids if ids.count(i) > 1}) if len(set(ids)) != len(ids) else []
        if dupes:
            raise ValueError(f"candidates repeat item ids {dupes[:5]!r}; each item may be queued once")
        # Build every task first so that bad input fails before anything is imported.
        tasks = {c.item.id: self._task(c, round_id, model_version) for c in candidates}
        before = self.tasks_by_item(ids)
        mapping = {i: t[0] for i, t in before.items()}
        missing = [i for i in ids if i not in mapping]
        for start in range(0, len(missing), self.import_chunk):
            chunk = missing[start : start + self.import_chunk]
            mapping.update(self._import_exactly_once(chunk, tasks))
        if missing:
            self._drop_new_duplicates(missing, mapping)
        return {i: mapping[i] for i in ids}

    def _import_exactly_once(self, chunk: Sequence[str], tasks: Mapping[str, dict[str, Any]]) -> dict[str, int]:
        sdk = self._sdk()
        pid = self.project_id
        remaining = list(chunk)
        found: dict[str, int] = {}
        start, delay = time.monotonic(), self.retry.initial_delay
        while remaining:
            batch = [tasks[i] for i in remaining]
            try:
                # the SDK annotates `request` with its pydantic models but sends plain dicts as they are
                resp = self._call(f"import {len(batch)} tasks", lambda: sdk.projects.import_tasks(
                    pid, request=batch, return_task_ids=True), idempotent=False)  # type: ignore[arg-type]
            except AmbiguousWrite as exc:
                if self.log:
                    self.log(f"{exc}; looking the items up before importing again")
                found.update(self._settled_lookup(remaining))
                remaining = [i for i in remaining if i not in found]
                spent = time.monotonic() - start
                if remaining and spent + delay > self.retry.retry_seconds:
                    raise LabelStudioUnavailable(
                        f"{exc} ({len(remaining)} of {len(chunk)} tasks not imported after {spent:.0f} s); "
                        "nothing is lost: run the command again") from exc
                if remaining:
                    time.sleep(delay)
                    delay = min(2 * delay, self.retry.max_delay)
                continue
            task_ids = [as_int(t, "imported task id") for t in (get(resp, "task_ids") or [])]
            made = self.existing_tasks(remaining)
            if len(task_ids) != len(remaining) or len(made) != len(remaining):
                raise LabelStudioError(
                    f"imported {len(remaining)} tasks but Label Studio returned {len(task_ids)} ids and the "
                    f"lookup by {self.item_id_key!r} found {len(made)}"
                )
            found.update(made)
            remaining = []
        return found

    def _settled_lookup(self, item_ids: Sequence[str], *, tries: int = 5, pause: float = 1.0) -> dict[str, int]:
        """Look ``item_ids`` up until two lookups ``pause`` seconds apart agree (an import may
        still be committing when its response was lost)."""
        last = self.existing_tasks(item_ids)
        for _ in range(tries):
            time.sleep(pause)
            now = self.existing_tasks(item_ids)
            if now == last:
                return now
            last = now
        return last

    def _drop_new_duplicates(self, item_ids: Sequence[str], mapping: Mapping[str, int]) -> None:
        """Delete tasks of ``item_ids`` other than ``mapping``'s, when they have no answer (made
        twice by an import whose first response was lost while the server still worked)."""
        for iid, tids in self.tasks_by_item(item_ids).items():
            for tid in tids:
                if tid == mapping.get(iid):
                    continue
                info = self.task_info(tid)
                if info.total_annotations == 0 and info.cancelled_annotations == 0:
                    self._call(f"delete duplicate task {tid}", lambda: self._sdk().tasks.delete(str(tid)))
                    if self.log:
                        self.log(f"deleted task {tid}: a duplicate of task {mapping.get(iid)} made by a retried import")

    def push(
        self, candidates: Sequence[Candidate], *, round_id: int, model_version: str,
        refresh: Sequence[Candidate] = (),
    ) -> dict[str, int]:
        """One round's push: :meth:`submit` the new ``candidates``, give the still-queued
        tasks in ``refresh`` the current prediction (:meth:`refresh`), then make
        ``model_version`` the project's prediction version (:meth:`set_model_version`), so the
        labelling stream serves every queued task in the current model's order with its
        prediction pre-drawn. Returns item id → task id of ``candidates``."""
        mapping = self.submit(candidates, round_id=round_id, model_version=model_version)
        if refresh:
            self.refresh(refresh, model_version=model_version)
        self.set_model_version(model_version)
        if mapping:
            self.ensure_review_view()
        return mapping

    def refresh(
        self, candidates: Sequence[Candidate], *, model_version: str
    ) -> int:
        """Give already-queued tasks the current model's prediction and columns.

        For each candidate whose item has a task that Label Studio would still serve (not
        ``is_labeled``) and no prediction of ``model_version`` yet: one prediction of
        ``model_version`` (its score from the candidate, so the task takes its place in the
        review order) and updated ``predicted`` / ``confidence`` / ``uncertainty`` columns.
        Idempotent; returns how many tasks got a new prediction.
        """
        by_id = {c.item.id: c for c in candidates}
        ids = list(by_id)
        sdk = self._sdk()
        pid = self.project_id
        preds: list[dict[str, Any]] = []
        updates: list[tuple[int, dict[str, Any]]] = []
        for start in range(0, len(ids), _LOOKUP_CHUNK):
            chunk = ids[start : start + _LOOKUP_CHUNK]
            for task in self._list_tasks([self._data_filter(chunk)], fields="all", what="look up queued tasks"):
                data = dict(task.data or {})
                cand = by_id.get(str(data.get(self.item_id_key)))
                if cand is None or get(task, "is_labeled"):
                    continue
                if any(get(p, "model_version") == model_version for p in (get(task, "predictions") or [])):
                    continue
                for p in self._prediction(cand, model_version):
                    preds.append({"task": int(task.id), **p})
                cols = self._columns(cand)
                if any(data.get(k) != v for k, v in cols.items()):
                    updates.append((int(task.id), data | cols))
        if preds:
            # Not idempotent on the wire, but a repeat is harmless: the lookup above skips
            # tasks that already have this version.
            # the SDK annotates `request` with its pydantic models but sends plain dicts as they are
            self._call(f"add {len(preds)} predictions",
                       lambda: sdk.projects.import_predictions(pid, request=preds),  # type: ignore[arg-type]
                       idempotent=False)
        for tid, data in updates:
            self._call(f"update task {tid}", partial(sdk.tasks.update, str(tid), data=data))
        return len(preds)

    def submit_relabel(
        self, candidates: Sequence[Candidate], *, round_id: int, model_version: str | None = None
    ) -> dict[str, int]:
        """Queue ``kind="relabel"`` candidates (labels sent back for a second look).

        Items without a task are imported as by :meth:`submit`. An item that already has a
        task (it was reviewed before) cannot be imported again, so that task is served again
        instead: it gets the candidate's prediction, ``kind="relabel"``, the "Second review"
        note and the round, and its overlap rises by one (:meth:`requeue_task`). Returns item
        id → task id. Not idempotent for existing tasks: callers record that they asked.
        """
        bad = [c.item.id for c in candidates if c.kind != "relabel"]
        if bad:
            raise ValueError(f"submit_relabel takes kind='relabel' candidates only; got other kinds for {bad[:5]!r}")
        existing = self.existing_tasks([c.item.id for c in candidates])
        fresh = [c for c in candidates if c.item.id not in existing]
        again = [c for c in candidates if c.item.id in existing]
        preds = {c.item.id: self._prediction(c, model_version) for c in again}  # validate first
        mapping = self.submit(fresh, round_id=round_id, model_version=model_version) if fresh else {}
        sdk = self._sdk()
        for c in again:
            tid = existing[c.item.id]
            for p in preds[c.item.id]:
                self._call("add prediction", partial(
                    sdk.predictions.create, task=tid, result=p["result"], score=p["score"],
                    model_version=p["model_version"]), idempotent=False)
            self.requeue_task(tid, kind="relabel", note=self._note(c), round=int(round_id),
                              strategy=c.strategy, uncertainty=float(c.score))
            mapping[c.item.id] = tid
        return {c.item.id: mapping[c.item.id] for c in candidates}

    # ------------------------------------------------------------------ images

    def _auth_header(self) -> dict[str, str]:
        """``Authorization`` for plain HTTP calls: a legacy token as is; a personal access
        token (a JWT refresh token) exchanged for an access token (``/api/token/refresh``)."""
        if self._auth_header_ is None:
            import httpx

            if self.token.count(".") == 2:
                def refresh() -> str:
                    r = httpx.post(f"{self.url}/api/token/refresh", json={"refresh": self.token},
                                   timeout=self.retry.timeout)
                    r.raise_for_status()
                    return str(r.json()["access"])

                self._auth_header_ = {"Authorization": f"Bearer {self._call('refresh access token', refresh)}"}
            else:
                self._auth_header_ = {"Authorization": f"Token {self.token}"}
        return self._auth_header_

    def image_status(self, image_url: str) -> int:
        """HTTP status of ``GET <url><image_url>`` through the server, as a reviewer's browser does."""
        import httpx

        headers = self._auth_header()

        def fetch() -> int:
            with httpx.stream("GET", f"{self.url}{image_url}", headers=headers, timeout=self.retry.timeout) as r:
                if r.status_code >= 500:
                    r.raise_for_status()
                return int(r.status_code)

        return int(self._call("fetch an image", fetch))

    def check_image(self, path: Path) -> None:
        """Fail loudly unless Label Studio serves ``path`` under the URL our tasks use."""
        url = self.image_url(path)
        status = self.image_status(url)
        if status != 200:
            doc = Path(self.document_root) if self.document_root is not None else Path(self.images_root).resolve().parent
            raise LabelStudioError(
                f"Label Studio cannot serve the task images: GET {self.url}{url} answered HTTP {status}. "
                f"The URL is {path} relative to label_studio.document_root {doc}; Label Studio must run with "
                f"LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true and LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT={doc} "
                f"(or set label_studio.document_root to the server's value); images_root is {self.images_root}"
            )

    # ------------------------------------------------------------------ pull

    def pull(self, *, since: datetime | None = None) -> PullResult:
        """Human annotations saved (created or updated) after ``since``, oldest first, and the
        ones that could not be used (:class:`~pseudolabel.review.decode.Rejected`).

        ``since`` must be timezone-aware (the largest save time of the previous pull, on the
        server's clock). Every annotation of a task is returned (several reviewers → several
        Annotations); see :meth:`Decoder.annotation` for the mapping. Tasks without our item
        id (not pushed by pseudolabel) are skipped.
        """
        items: list[dict[str, Any]]
        if since is not None:
            if since.tzinfo is None:
                raise ValueError(f"since={since!r} must be timezone-aware (e.g. UTC)")
            # One second of slack on the server-side filter; exact comparison below.
            lower = (since - timedelta(seconds=1)).astimezone(timezone.utc)
            items = [{"filter": "filter:tasks:updated_at", "operator": "greater",
                      "type": "Datetime", "value": lower.strftime(_DM_DATETIME)}]
            conj = "and"
        else:
            items = [
                {"filter": "filter:tasks:total_annotations", "operator": "greater",
                 "type": "Number", "value": 0},
                {"filter": "filter:tasks:cancelled_annotations", "operator": "greater",
                 "type": "Number", "value": 0},
            ]
            conj = "or"
        out = PullResult()
        dec = self._decoder()
        for task in self._list_tasks(items, conjunction=conj, fields="all", what="pull annotations"):
            data = get(task, "data") or {}
            if not isinstance(data, Mapping) or self.item_id_key not in data:
                continue  # a task not pushed by pseudolabel: not ours to interpret
            task_id = get(task, "id")
            if _maybe_int(task_id) is not None:
                out.notes[int(task_id)] = str(data.get(self.note_key) or "")
            try:
                item = dec.item(data)
            except (ValueError, TypeError) as exc:
                out.rejected.append(Rejected(_maybe_int(task_id), None, str(data.get(self.item_id_key)),
                                             f"task data unusable: {exc}"))
                continue
            anns = get(task, "annotations") or []
            if not isinstance(anns, list):
                out.rejected.append(Rejected(_maybe_int(task_id), None, item.id, "annotations are not a list"))
                continue
            for ann in anns:
                self._pull_one(dec, task, ann, item, since, out)
        out.annotations.sort(key=lambda a: (a.created_at, a.ls_annotation_id or 0))
        return out

    def _pull_one(self, dec: Decoder, task: Any, ann: Any, item: Any, since: datetime | None, out: PullResult) -> None:
        saved = None
        try:
            if not isinstance(ann, Mapping) and not hasattr(ann, "result"):
                raise ValueError(f"annotation is {type(ann).__name__}, not an object")
            saved = parse_time(get(ann, "updated_at") or get(ann, "created_at"))
            if since is not None and saved <= since:
                return
            a, warnings = dec.annotation(task, ann, item, reviewer=self._email(get(ann, "completed_by")))
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            out.rejected.append(Rejected(_maybe_int(get(task, "id")), _maybe_int(get(ann, "id")), item.id,
                                         str(exc), saved_at=saved))
            return
        out.annotations.append(a)
        for w in warnings:
            out.rejected.append(Rejected(a.ls_task_id, a.ls_annotation_id, item.id, w, action="used", saved_at=saved))

    def foreign_tasks(self) -> list[ForeignTask]:
        """Tasks with at least one annotation (or skip) that carry no item id of ours: made
        by hand in Label Studio, so :meth:`pull` skips them. Oldest first."""
        items = [
            {"filter": "filter:tasks:total_annotations", "operator": "greater", "type": "Number", "value": 0},
            {"filter": "filter:tasks:cancelled_annotations", "operator": "greater", "type": "Number", "value": 0},
        ]
        out = []
        for task in self._list_tasks(items, conjunction="or", fields="all", what="list tasks made by hand"):
            data = get(task, "data") or {}
            if isinstance(data, Mapping) and self.item_id_key not in data:
                out.append(ForeignTask(as_int(get(task, "id"), "task id"), dict(data), task))
        return out

    def image_path(self, data: Mapping[str, Any]) -> Path:
        """The local file behind a task's image URL (see :meth:`Decoder.image_path`)."""
        return self._decoder().image_path(data)

    def foreign_annotations(self, task: ForeignTask, item: Item) -> PullResult:
        """Every annotation of a task made by hand, read as if it showed ``item`` (reviewer,
        Label Studio ids, the prediction it started from: as :meth:`pull`)."""
        out = PullResult()
        dec = self._decoder()
        anns = get(task.task, "annotations") or []
        if not isinstance(anns, list):
            out.rejected.append(Rejected(task.task_id, None, item.id, "annotations are not a list"))
            return out
        for ann in anns:
            self._pull_one(dec, task.task, ann, item, None, out)
        out.annotations.sort(key=lambda a: (a.created_at, a.ls_annotation_id or 0))
        return out

    def adopt_task(self, task_id: int, item: Item) -> None:
        """Make a task ours: its data gets ``item``'s id and image size (every other key
        stays), so :meth:`pull` reads its answers from now on."""
        self.update_task_data(task_id, **{self.item_id_key: item.id, "width": int(item.width),
                                          "height": int(item.height), "kind": "adopted"})

    def collect(self, *, since: datetime | None = None) -> list[Annotation]:
        """The usable annotations of :meth:`pull` (rejected ones are left out)."""
        return self.pull(since=since).annotations

    # ------------------------------------------------------------------ state

    def listing(self) -> list[TaskInfo]:
        """Every task of the project that carries our item id (one listing, no annotations)."""
        out = []
        for task in self._list_tasks(fields="task_only", what="list tasks"):
            data = dict(get(task, "data") or {})
            if self.item_id_key not in data:
                continue
            out.append(self._info(task))
        return out

    def task_states(self) -> dict[str, str]:
        """Item id → ``"queued"``, ``"answered"`` or ``"skipped"`` (see :attr:`TaskInfo.state`)."""
        return {str(t.data[self.item_id_key]): t.state for t in self.listing()}

    def task_info(self, task_id: int) -> TaskInfo:
        """The review state of one task (its data, overlap, answers, whether it is done)."""
        return self._info(self._call(f"get task {task_id}", lambda: self._sdk().tasks.get(str(int(task_id)))))

    def _info(self, task: Any) -> TaskInfo:
        data = dict(get(task, "data") or {})
        return TaskInfo(
            task_id=as_int(get(task, "id"), "task id"), data=data,
            overlap=int(get(task, "overlap") or 1),
            is_labeled=bool(get(task, "is_labeled")),
            total_annotations=int(get(task, "total_annotations") or 0),
            cancelled_annotations=int(get(task, "cancelled_annotations") or 0),
            item_id=str(data.get(self.item_id_key, "")),
        )

    def update_task_data(self, task_id: int, **changes: Any) -> None:
        """Set data keys of one task (every other key stays)."""
        info = self.task_info(task_id)
        data = {**info.data, **changes}
        self._call(f"update task {task_id}", lambda: self._sdk().tasks.update(str(int(task_id)), data=data))

    def flag_task(self, task_id: int, note: str) -> None:
        """Show ``note`` above the image of ``task_id`` (e.g. why its answer could not be used)."""
        self.update_task_data(task_id, **{self.note_key: note})

    def delete_task(self, task_id: int) -> None:
        """Delete one task (used to remove duplicates without answers)."""
        self._call(f"delete task {task_id}", lambda: self._sdk().tasks.delete(str(int(task_id))))

    def requeue_task(self, task_id: int, *, kind: str, note: str, **extra: Any) -> None:
        """Serve an answered task again to one more reviewer.

        The task's data gets ``kind``, the note shown above the image and ``extra`` keys
        (every other data key stays, and so do its predictions and annotations); its
        overlap rises by one above the answers it already has, and it is marked not done,
        so Label Studio hands it to a reviewer who has not answered it yet.
        """
        info = self.task_info(task_id)
        if self.item_id_key not in info.data:
            raise ValueError(f"task {task_id} has no {self.item_id_key!r} in its data: not a pseudolabel task")
        data = {**info.data, **extra, "kind": kind, self.note_key: note}
        answered = info.total_annotations + info.cancelled_annotations
        self._call(f"requeue task {task_id}", lambda: self._sdk().tasks.update(
            str(int(task_id)), data=data, overlap=max(info.overlap, answered) + 1, is_labeled=False))

    def request_adjudication(self, task_id: int, *, reason: str) -> None:
        """Send a task whose reviewers disagree back for one more (deciding) answer
        (``kind="adjudicate"``, the note "Adjudication: <reason>", overlap + 1)."""
        if not isinstance(reason, str) or not reason.strip():
            raise ValueError(f"reason must be a non-empty string; got {reason!r}")
        self.requeue_task(
            task_id, kind="adjudicate", note=f"Adjudication: {reason}", adjudication_reason=reason
        )

    def count_tasks(self) -> int:
        """Number of tasks in the project."""
        pid = self.project_id
        return int(self._call("get project", lambda: self._sdk().projects.get(pid)).task_number or 0)

    def pending(self) -> list[PendingTask]:
        """Tasks with no annotation at all (not even a skip), in Label Studio's serving
        order under uncertainty sampling: lowest prediction score first, then task id.
        Only predictions of the project's model version count, as in the labelling stream."""
        version = self.project_model_version()
        items = [
            {"filter": "filter:tasks:total_annotations", "operator": "equal", "type": "Number", "value": 0},
            {"filter": "filter:tasks:cancelled_annotations", "operator": "equal", "type": "Number", "value": 0},
        ]
        out: list[PendingTask] = []
        dec = self._decoder()
        for task in self._list_tasks(items, fields="all", what="list pending tasks"):
            data = task.data or {}
            if self.item_id_key not in data:
                continue
            current = [p for p in (get(task, "predictions") or []) if version is None
                       or get(p, "model_version") == version]
            pred = dec.latest_prediction({"predictions": current})
            label: str | None = None
            boxes: tuple[Box, ...] = ()
            if pred is not None:
                label, boxes = dec.result(get(pred, "result") or [], dec.item(data))
            score = None if pred is None else get(pred, "score")
            out.append(PendingTask(
                task_id=int(task.id),
                item_id=str(data[self.item_id_key]),
                prediction_id=None if pred is None else int(get(pred, "id")),
                prediction_score=None if score is None else float(score),
                predicted_label=label,
                predicted_boxes=boxes,
            ))
        inf = float("inf")
        out.sort(key=lambda t: (inf if t.prediction_score is None else t.prediction_score, t.task_id))
        return out

    def annotate(
        self,
        task_id: int,
        label: str | None = None,
        *,
        boxes: Sequence[Box] = (),
        width: int | None = None,
        height: int | None = None,
        parent_prediction: int | None = None,
        was_cancelled: bool = False,
        completed_by: int | None = None,
        result: list[dict[str, Any]] | None = None,
    ) -> int:
        """Save an annotation on ``task_id`` as the token's user (or as user id
        ``completed_by``, e.g. from :meth:`ensure_user`); returns its id.

        Classification: ``label`` (a class name). Detection/segmentation: pixel ``boxes``
        on a ``width`` x ``height`` image. ``was_cancelled=True`` records a skip (no result).
        ``result``: a raw Label Studio result list instead (tests of bad answers).
        """
        if result is None and was_cancelled:
            result = []
        elif result is None and self.task_type == "classify":
            if label not in self._classes():
                raise ValueError(f"label {label!r} is not among {list(self._classes())!r}")
            result = convert.choices_result(label)
        elif result is None:
            if width is None or height is None:
                raise ValueError("width and height (pixels) are needed to annotate boxes")
            result = convert.boxes_result(boxes, width=width, height=height, task_type=self.task_type)
        kwargs: dict[str, Any] = {"result": result, "was_cancelled": was_cancelled}
        if parent_prediction is not None:
            kwargs["parent_prediction"] = parent_prediction
        if completed_by is not None:
            kwargs["completed_by"] = int(completed_by)
        ann = self._call(f"annotate task {task_id}", lambda: self._sdk().annotations.create(id=task_id, **kwargs),
                         idempotent=False)
        if ann.id is None:
            raise LabelStudioError(f"annotating task {task_id} returned no annotation id")
        return int(ann.id)


def _maybe_int(value: Any) -> int | None:
    try:
        return as_int(value, "id")
    except ValueError:
        return None
