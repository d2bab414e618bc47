"""Label Studio adapter: the only module of pseudolabel that imports ``label_studio_sdk``.

It turns :class:`~pseudolabel.types.Candidate` objects into Label Studio tasks with the
model's prediction pre-drawn, and the reviewers' annotations back into
:class:`~pseudolabel.types.Annotation` objects. Only the SDK's public API is used
(``LabelStudio(base_url=..., api_key=...)``); the SDK is imported on first use, not at
import time.

Conventions (see also :mod:`pseudolabel.review.convert`):

- each task's ``data`` carries our item id under ``item_id_key`` (default
  ``"pseudolabel_id"``), so a retried push finds the existing task instead of duplicating it
  (Label Studio itself duplicates re-imported tasks, and its task ids are not stable keys);
- review order: the project uses "Uncertainty sampling", which serves the task with the
  **lowest** prediction score first. We send ``score = 1 / (1 + exp(uncertainty))``
  (:func:`~pseudolabel.review.convert.ls_prediction_score`), strictly decreasing in our
  uncertainty, so the most uncertain item is reviewed first. The raw uncertainty is kept in
  ``data["uncertainty"]``;
- images: the project gets a local-files storage on ``images_root``; task data points at
  ``/data/local-files/?d=<images_root name>/<relative path>`` (the server's document root
  is ``images_root``'s parent, see :class:`~pseudolabel.review.server.LabelStudioServer`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pseudolabel.review import convert
from pseudolabel.types import Annotation, Box, Candidate, Item, TaskType

if TYPE_CHECKING:
    from label_studio_sdk import LabelStudio

SAMPLING = "Uncertainty sampling"
_DM_DATETIME = "%Y-%m-%dT%H:%M:%S.%fZ"
# Item ids per Data Manager lookup: keeps the GET query string well under URL limits.
_LOOKUP_CHUNK = 200


class LabelStudioError(RuntimeError):
    """Label Studio answered something this adapter cannot use; the message says what."""


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


def _parse_dt(value: Any) -> datetime:
    """Label Studio timestamps come back as datetimes or ISO strings (``...Z``)."""
    if isinstance(value, datetime):
        dt = value
    elif isinstance(value, str):
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    else:
        raise LabelStudioError(f"timestamp {value!r} is neither a datetime nor an ISO string")
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=timezone.utc)


def _get(obj: Any, key: str, default: Any = None) -> Any:
    """Field of an SDK model or of a plain dict (task annotations come back as dicts)."""
    if isinstance(obj, Mapping):
        return obj.get(key, default)
    return getattr(obj, key, default)


class LabelStudioClient:
    """Push candidates to, and pull annotations from, one Label Studio project.

    Parameters (stored only; the first call connects):

    - ``url``, ``token``: server address (``http://127.0.0.1:8080``) and API token
      (legacy 40-hex token or personal access token);
    - ``project_title``: the project to find or create (3 to 50 characters);
    - ``classes``: class names, in the model's class-index order;
    - ``task_type``: ``"classify"`` (Choices), ``"detect"`` (RectangleLabels) or
      ``"segment"`` (PolygonLabels);
    - ``images_root``: every pushed image must lie under it; ``document_root``: the server's
      ``LOCAL_FILES_DOCUMENT_ROOT`` (default ``images_root``'s parent);
    - ``data_key``: the task data key of the image; ``item_id_key``: the key of our item id;
    - ``page_size``: tasks per page when listing; ``import_chunk``: tasks per import call;
    - ``overlap``: reviewers asked to answer each task (Label Studio's
      ``maximum_annotations``, applied to every task); Label Studio counts *distinct* users,
      so a task with overlap 3 needs three different reviewers;
    - ``note_key``: task data key of the note shown above the image (a ``<Header>`` in the
      label config of projects this adapter creates): empty for ordinary tasks, "Second
      review: ..." for ``kind="relabel"``, "Adjudication: ..." for tasks sent back by
      :meth:`request_adjudication`.
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
    ) -> None:
        self.url = url
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
        self._sdk_: LabelStudio | None = None
        self._project_id_: int | None = None
        self._emails_: dict[int, str] = {}

    # ------------------------------------------------------------------ plumbing

    def _sdk(self) -> LabelStudio:
        if self._sdk_ is None:
            from label_studio_sdk import LabelStudio

            self._sdk_ = LabelStudio(base_url=self.url.rstrip("/"), api_key=self.token)
        return self._sdk_

    @property
    def project_id(self) -> int:
        """The project's id (finds or creates the project on first use)."""
        if self._project_id_ is None:
            self.ensure_project()
        assert self._project_id_ is not None  # set by ensure_project; not user input
        return self._project_id_

    def _classes(self) -> tuple[str, ...]:
        return convert.validate_classes(self.classes)

    def _label_config(self) -> str:
        return convert.label_config(
            self._classes(), task_type=self.task_type, data_key=self.data_key, note_key=self.note_key
        )

    def _overlap(self) -> int:
        o = self.overlap
        if isinstance(o, bool) or not isinstance(o, int) or not 1 <= o <= 100:
            raise ValueError(f"overlap {o!r} must be an int from 1 to 100 (reviewers per task)")
        return o

    def _iter_tasks(
        self,
        items: Sequence[Mapping[str, Any]] = (),
        *,
        conjunction: str = "and",
        fields: str = "all",
    ) -> Iterator[Any]:
        """Tasks of the project matching Data Manager filter ``items``, in task-id order."""
        query: dict[str, Any] = {"ordering": ["tasks:id"]}
        if items:
            query["filters"] = {"conjunction": conjunction, "items": list(items)}
        pager = self._sdk().tasks.list(
            project=self.project_id,
            query=json.dumps(query),
            fields=fields,  # type: ignore[arg-type]
            page_size=self.page_size,
        )
        yield from pager

    def _data_filter(self, item_ids: Sequence[str]) -> dict[str, Any]:
        return {
            "filter": f"filter:tasks:data.{self.item_id_key}",
            "operator": "in_list",
            "type": "List",
            "value": list(item_ids),
        }

    def _email(self, user_id: int | None) -> str | None:
        if user_id is None:
            return None
        if user_id not in self._emails_:
            for user in self._sdk().users.list():
                if user.id is not None and user.email:
                    self._emails_[int(user.id)] = user.email
        return self._emails_.get(user_id, f"user:{user_id}")

    def ensure_user(self, email: str) -> int:
        """The id of the user with ``email``, created (without a password) if missing.

        For simulated reviewers: :meth:`annotate` with ``completed_by=`` saves answers as them.
        """
        if not isinstance(email, str) or "@" not in email:
            raise ValueError(f"email {email!r} is not an email address")
        sdk = self._sdk()
        for user in sdk.users.list():
            if user.email == email and user.id is not None:
                return int(user.id)
        made = sdk.users.create(username=email, email=email)
        if made.id is None:
            raise LabelStudioError(f"creating user {email!r} returned no id")
        self._emails_[int(made.id)] = email
        return int(made.id)

    # ------------------------------------------------------------------ project

    def ensure_project(self) -> int:
        """Find the project by title or create it; returns its id.

        A new project gets the label config generated from ``classes`` and "Uncertainty
        sampling"; an existing one must declare exactly the same classes (``ValueError``
        naming the difference otherwise) and is switched to uncertainty sampling if needed.
        A local-files storage on ``images_root`` is created once. The project asks for
        ``overlap`` reviewers on every task (``maximum_annotations``, cohort 100 %); an existing
        project with another setting is updated (Label Studio then resets every task's overlap).
        """
        title = self.project_title
        if not isinstance(title, str) or not 3 <= len(title) <= 50:
            raise ValueError(f"project_title {title!r} must be a string of 3 to 50 characters")
        classes = self._classes()
        overlap = self._overlap()
        root = Path(self.images_root).resolve()
        if not root.is_dir():
            raise ValueError(f"images_root {str(self.images_root)!r} is not a directory")
        sdk = self._sdk()
        found = [p for p in sdk.projects.list(title=title) if p.title == title]
        if len(found) > 1:
            raise ValueError(
                f"{len(found)} Label Studio projects are titled {title!r} (ids "
                f"{sorted(int(p.id) for p in found if p.id is not None)}); titles must be unique"
            )
        if found:
            pid = int(found[0].id)  # type: ignore[arg-type]
            project = sdk.projects.get(pid)
            existing = convert.classes_from_label_config(project.label_config or "")
            if tuple(existing) != classes:
                missing = [c for c in classes if c not in existing]
                extra = [c for c in existing if c not in classes]
                raise ValueError(
                    f"Label Studio project {title!r} (id {pid}) has classes {list(existing)!r}, "
                    f"but {list(classes)!r} were given: missing {missing!r}, unexpected {extra!r}"
                    + ("" if missing or extra else ", different order")
                )
            if project.sampling != SAMPLING:
                sdk.projects.update(pid, sampling=SAMPLING)
            if (project.maximum_annotations or 1) != overlap or (
                overlap > 1 and project.overlap_cohort_percentage != 100
            ):
                sdk.projects.update(pid, maximum_annotations=overlap, overlap_cohort_percentage=100)
        else:
            created = sdk.projects.create(
                title=title, label_config=self._label_config(), sampling=SAMPLING,
                maximum_annotations=overlap, overlap_cohort_percentage=100,
            )
            if created.id is None:
                raise LabelStudioError(f"creating project {title!r} returned no id")
            pid = int(created.id)
        storages = sdk.import_storage.local.list(project=pid)
        if not any(s.path and Path(s.path).resolve() == root for s in storages):
            sdk.import_storage.local.create(
                project=pid, path=str(root), title="pseudolabel images", use_blob_urls=False
            )
        self._project_id_ = pid
        return pid

    # ------------------------------------------------------------------ push

    def _prediction(self, cand: Candidate, model_version: str | None) -> list[dict[str, Any]]:
        pred = cand.prediction
        if pred is None:
            return []
        classes = self._classes()
        if self.task_type == "classify":
            if pred.probs is None:
                raise ValueError(f"candidate {cand.item.id!r} has a prediction without probs")
            if len(pred.probs) != len(classes):
                raise ValueError(
                    f"candidate {cand.item.id!r}: probs has {len(pred.probs)} entries, "
                    f"expected one per class ({len(classes)})"
                )
            idx = pred.label_index
            assert idx is not None  # probs checked above
            result = convert.choices_result(classes[idx])
        else:
            bad = sorted({b.label for b in pred.boxes} - set(classes))
            if bad:
                raise ValueError(
                    f"candidate {cand.item.id!r}: box labels {bad!r} are not among {list(classes)!r}"
                )
            result = convert.boxes_result(
                pred.boxes, width=cand.item.width, height=cand.item.height, task_type=self.task_type
            )
        return [
            {
                "model_version": model_version if model_version is not None else pred.model_version,
                "score": convert.ls_prediction_score(cand.score),
                "result": result,
            }
        ]

    def _task(self, cand: Candidate, round_id: int, model_version: str | None) -> dict[str, Any]:
        url = convert.local_files_url(
            cand.item.path, self.images_root, document_root=self.document_root
        )
        return {
            "data": {
                self.data_key: url,
                self.item_id_key: cand.item.id,
                "round": int(round_id),
                "kind": cand.kind,
                self.note_key: self._note(cand),
                "strategy": cand.strategy,
                "uncertainty": float(cand.score),
                "width": int(cand.item.width),
                "height": int(cand.item.height),
            },
            "predictions": self._prediction(cand, model_version),
        }

    def _note(self, cand: Candidate) -> str:
        """What the reviewer reads above the image: nothing for an ordinary task."""
        if cand.kind != "relabel":
            return ""
        pred = cand.prediction
        if self.task_type == "classify" and pred is not None and pred.label_index is not None \
                and pred.label_index < len(self._classes()):
            return (f"Second review: this image already has a label, but the model suggests "
                    f"{self._classes()[pred.label_index]!r}. Please check it.")
        return "Second review: the model doubts this image's current label. Please check it."

    def existing_tasks(self, item_ids: Sequence[str]) -> dict[str, int]:
        """Item id → task id for those of ``item_ids`` that already have a task.

        Raises :class:`LabelStudioError` if an item has several tasks (a duplicate made
        outside this adapter).
        """
        found: dict[str, int] = {}
        ids = list(dict.fromkeys(item_ids))
        for start in range(0, len(ids), _LOOKUP_CHUNK):
            chunk = ids[start : start + _LOOKUP_CHUNK]
            for task in self._iter_tasks([self._data_filter(chunk)], fields="task_only"):
                iid = str(task.data.get(self.item_id_key))
                if iid in found and found[iid] != task.id:
                    raise LabelStudioError(
                        f"item {iid!r} has several tasks ({found[iid]}, {task.id}) in project "
                        f"{self.project_title!r}; delete the duplicates"
                    )
                found[iid] = int(task.id)
        return found

    def submit(
        self, candidates: Sequence[Candidate], *, round_id: int, model_version: str | None = None
    ) -> dict[str, int]:
        """Queue ``candidates`` as tasks with their prediction pre-drawn; idempotent.

        Items that already have a task are left as they are; the others are imported in
        chunks of ``import_chunk``. ``model_version`` labels the predictions (default: each
        prediction's own). Returns item id → task id for every candidate.

        Raises ``ValueError`` for an image outside ``images_root``, a repeated item id, or a
        prediction that does not fit the class list; nothing is imported then.
        """
        ids = [c.item.id for c in candidates]
        dupes = sorted({i for i in ids if ids.count(i) > 1}) if len(set(ids)) != len(ids) else []
        if dupes:
            raise ValueError(f"candidates repeat item ids {dupes[:5]!r}; each item may be queued once")
        # Build every task first so that bad input fails before anything is imported.
        tasks = {c.item.id: self._task(c, round_id, model_version) for c in candidates}
        mapping = self.existing_tasks(ids)
        missing = [i for i in ids if i not in mapping]
        sdk = self._sdk()
        for start in range(0, len(missing), self.import_chunk):
            chunk = missing[start : start + self.import_chunk]
            resp = sdk.projects.import_tasks(
                self.project_id, request=[tasks[i] for i in chunk], return_task_ids=True
            )
            task_ids = list(resp.task_ids or [])
            if len(task_ids) != len(chunk):
                raise LabelStudioError(
                    f"imported {len(chunk)} tasks but Label Studio returned {len(task_ids)} ids"
                )
            # Map ids through our own key rather than trusting the response order.
            made = self.existing_tasks(chunk)
            if set(made.values()) != {int(t) for t in task_ids} or len(made) != len(chunk):
                raise LabelStudioError(
                    f"imported tasks {sorted(task_ids)[:10]} do not match the lookup by "
                    f"{self.item_id_key!r} ({sorted(made.values())[:10]})"
                )
            mapping.update(made)
        return {i: mapping[i] for i in ids}

    def submit_relabel(
        self, candidates: Sequence[Candidate], *, round_id: int, model_version: str | None = None
    ) -> dict[str, int]:
        """Queue ``kind="relabel"`` candidates (labels sent back for a second look).

        Items without a task are imported as by :meth:`submit`. An item that already has a
        task (it was reviewed before) cannot be imported again, so that task is served again
        instead: it gets the candidate's prediction (the current model's suggestion, pre-drawn
        as the latest prediction), ``kind="relabel"``, the "Second review" note and the
        round, and its overlap rises by one (:meth:`requeue_task`). Returns item id → task id.

        Not idempotent for existing tasks: each call raises their overlap again; callers
        record that they asked (the round's push stage runs once).
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
                sdk.predictions.create(task=tid, result=p["result"], score=p["score"], model_version=p["model_version"])
            self.requeue_task(tid, kind="relabel", note=self._note(c), round=int(round_id),
                              strategy=c.strategy, uncertainty=float(c.score))
            mapping[c.item.id] = tid
        return {c.item.id: mapping[c.item.id] for c in candidates}

    # ------------------------------------------------------------------ pull

    def _item(self, data: Mapping[str, Any]) -> Item:
        url = str(data.get(self.data_key, ""))
        path = (
            convert.path_from_local_files_url(url, self.images_root, document_root=self.document_root)
            if url.startswith(convert.LOCAL_FILES_PREFIX)
            else Path(url)
        )
        return Item(
            id=str(data[self.item_id_key]),
            path=path,
            width=int(data.get("width", 0) or 0),
            height=int(data.get("height", 0) or 0),
        )

    def _decode(self, result: Sequence[Mapping[str, Any]], item: Item) -> tuple[str | None, tuple[Box, ...]]:
        if self.task_type == "classify":
            label = convert.label_from_choices(result)
            if label is not None and label not in self._classes():
                raise LabelStudioError(
                    f"item {item.id!r}: label {label!r} is not among {list(self._classes())!r}"
                )
            return label, ()
        size = (item.width or None, item.height or None)
        return None, convert.boxes_from_result(result, width=size[0], height=size[1])

    @staticmethod
    def _latest_prediction(task: Any, prediction_id: int | None = None) -> Any | None:
        preds = list(_get(task, "predictions") or [])
        if prediction_id is not None:
            for p in preds:
                if _get(p, "id") == prediction_id:
                    return p
        return max(preds, key=lambda p: _get(p, "id") or 0) if preds else None

    def collect(self, *, since: datetime | None = None) -> list[Annotation]:
        """Human annotations saved (created or updated) after ``since``, oldest first.

        ``since`` must be timezone-aware; pass the largest ``created_at`` of the previous
        pull (it is the server's save time, so both sides use the server clock). Every
        annotation of a task is returned (several reviewers → several Annotations).

        Mapping: ``label`` = chosen class (``boxes`` for detection/segmentation);
        ``review_outcome`` = ``"accepted"`` when the result equals the pre-drawn prediction
        it was made from (``parent_prediction``, else the task's latest prediction),
        ``"corrected"`` otherwise (also when there was no prediction), ``"skipped"`` for a
        cancelled/skipped annotation or an empty classification submission (for detection an
        empty submission means "no objects": ``boxes=()``, ``empty_ok=True``);
        ``created_at`` = the annotation's last save time; ``reviewer`` = the annotator's
        email; ``model_version`` = the reviewed prediction's model version; ``round`` = the
        round the task was pushed in; ``item.width``/``height`` come from the task data
        (0 when the task was not pushed by this adapter).
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
        out: list[Annotation] = []
        for task in self._iter_tasks(items, conjunction=conj, fields="all"):
            data = task.data or {}
            if self.item_id_key not in data:
                continue  # a task not pushed by pseudolabel: not ours to interpret
            item = self._item(data)
            for ann in _get(task, "annotations") or []:
                saved = _parse_dt(_get(ann, "updated_at") or _get(ann, "created_at"))
                if since is not None and saved <= since:
                    continue
                out.append(self._annotation(task, ann, item, saved))
        out.sort(key=lambda a: (a.created_at, a.ls_annotation_id or 0))
        return out

    def _annotation(self, task: Any, ann: Any, item: Item, saved: datetime) -> Annotation:
        pred = self._latest_prediction(task, _get(ann, "parent_prediction"))
        round_id = task.data.get("round")
        common: dict[str, Any] = dict(
            item=item,
            source="human",
            round=None if round_id is None else int(round_id),
            reviewer=self._email(_get(ann, "completed_by")),
            model_version=None if pred is None else _get(pred, "model_version"),
            created_at=saved,
            ls_task_id=int(task.id),
            ls_annotation_id=int(_get(ann, "id")),
        )
        result = _get(ann, "result") or []
        cancelled = bool(_get(ann, "was_cancelled"))
        label, boxes = (None, ()) if cancelled else self._decode(result, item)
        # Detection: a submitted annotation with no region means "no objects here" (a real
        # answer); classification: no choice means the reviewer gave no label.
        empty_answer = not cancelled and self.task_type != "classify"
        if label is None and not boxes and not empty_answer:
            return Annotation(review_outcome="skipped", **common)
        outcome = "corrected"
        if pred is not None:
            p_label, p_boxes = self._decode(_get(pred, "result") or [], item)
            same = label == p_label if self.task_type == "classify" else convert.same_boxes(boxes, p_boxes)
            outcome = "accepted" if same else "corrected"
        return Annotation(label=label, boxes=boxes, review_outcome=outcome, empty_ok=empty_answer, **common)

    # ------------------------------------------------------------------ state

    def task_states(self) -> dict[str, str]:
        """Item id → ``"queued"`` (no annotation), ``"answered"`` (at least one submitted
        annotation) or ``"skipped"`` (only cancelled/skipped annotations)."""
        states: dict[str, str] = {}
        for task in self._iter_tasks(fields="task_only"):
            iid = (task.data or {}).get(self.item_id_key)
            if iid is None:
                continue
            if (task.total_annotations or 0) > 0:
                states[str(iid)] = "answered"
            elif (task.cancelled_annotations or 0) > 0:
                states[str(iid)] = "skipped"
            else:
                states[str(iid)] = "queued"
        return states

    def task_info(self, task_id: int) -> TaskInfo:
        """The review state of one task (its data, overlap, answers, whether it is done)."""
        task = self._sdk().tasks.get(str(int(task_id)))
        return TaskInfo(
            task_id=int(task_id),
            data=dict(_get(task, "data") or {}),
            overlap=int(_get(task, "overlap") or 1),
            is_labeled=bool(_get(task, "is_labeled")),
            total_annotations=int(_get(task, "total_annotations") or 0),
            cancelled_annotations=int(_get(task, "cancelled_annotations") or 0),
        )

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
        self._sdk().tasks.update(
            str(int(task_id)), data=data, overlap=max(info.overlap, answered) + 1, is_labeled=False
        )

    def request_adjudication(self, task_id: int, *, reason: str) -> None:
        """Send a task whose reviewers disagree back for one more (deciding) answer.

        Data: ``kind="adjudicate"``, ``adjudication_reason=reason`` and the note
        "Adjudication: <reason>"; overlap + 1 (see :meth:`requeue_task`). Calling it twice
        raises the overlap twice: callers record that they asked (``loops.review`` does).
        """
        if not isinstance(reason, str) or not reason.strip():
            raise ValueError(f"reason must be a non-empty string; got {reason!r}")
        self.requeue_task(
            task_id, kind="adjudicate", note=f"Adjudication: {reason}", adjudication_reason=reason
        )

    def count_tasks(self) -> int:
        """Number of tasks in the project."""
        return int(self._sdk().projects.get(self.project_id).task_number or 0)

    def pending(self) -> list[PendingTask]:
        """Tasks with no annotation at all (not even a skip), in Label Studio's serving
        order under uncertainty sampling: lowest prediction score first, then task id."""
        items = [
            {"filter": "filter:tasks:total_annotations", "operator": "equal", "type": "Number", "value": 0},
            {"filter": "filter:tasks:cancelled_annotations", "operator": "equal", "type": "Number", "value": 0},
        ]
        out: list[PendingTask] = []
        for task in self._iter_tasks(items, fields="all"):
            data = task.data or {}
            if self.item_id_key not in data:
                continue
            pred = self._latest_prediction(task)
            label: str | None = None
            boxes: tuple[Box, ...] = ()
            if pred is not None:
                label, boxes = self._decode(_get(pred, "result") or [], self._item(data))
            score = None if pred is None else _get(pred, "score")
            out.append(PendingTask(
                task_id=int(task.id),
                item_id=str(data[self.item_id_key]),
                prediction_id=None if pred is None else int(_get(pred, "id")),
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
    ) -> int:
        """Save an annotation on ``task_id`` as the token's user (or as user id
        ``completed_by``, e.g. from :meth:`ensure_user`); returns its id.

        Classification: ``label`` (a class name). Detection/segmentation: pixel ``boxes``
        on a ``width`` x ``height`` image. ``was_cancelled=True`` records a skip (no result).
        """
        if was_cancelled:
            result: list[dict[str, Any]] = []
        elif self.task_type == "classify":
            if label not in self._classes():
                raise ValueError(f"label {label!r} is not among {list(self._classes())!r}")
            result = convert.choices_result(label)  # type: ignore[arg-type]
        else:
            if width is None or height is None:
                raise ValueError("width and height (pixels) are needed to annotate boxes")
            result = convert.boxes_result(boxes, width=width, height=height, task_type=self.task_type)
        kwargs: dict[str, Any] = {"result": result, "was_cancelled": was_cancelled}
        if parent_prediction is not None:
            kwargs["parent_prediction"] = parent_prediction
        if completed_by is not None:
            kwargs["completed_by"] = int(completed_by)
        ann = self._sdk().annotations.create(id=task_id, **kwargs)
        if ann.id is None:
            raise LabelStudioError(f"annotating task {task_id} returned no annotation id")
        return int(ann.id)
