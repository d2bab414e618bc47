"""Image classification behind the task seam: ImageFolder / CSV / Labelme / CVAT / Label
Studio sets, accuracy and F1 on the holdout, ``(N, C)`` probabilities from the pool, the
uncertainty scores of :mod:`pseudolabel.strategies`, thresholded pseudo-labels
(global / FlexMatch / FreeMatch), Label Studio ``Choices``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from pseudolabel.data.formats import read_labels
from pseudolabel.data.ingest import OnMissing
from pseudolabel.inference import load_predictions
from pseudolabel.metrics import classification_metrics
from pseudolabel.models.base import predict_arrays, require
from pseudolabel.strategies import SCORE_FUNCTIONS, entropy, select, uses_labelled_embeddings
from pseudolabel.strategies.selection import Selection
from pseudolabel.tasks.base import Label, LabelledSet, PoolPredictions, PseudoContext, Task
from pseudolabel.types import Annotation, Box, Item, Prediction


class Classify(Task):
    """Classification: one class name per image."""

    name = "classify"
    result_type = "Choices"
    metric_names = ("accuracy", "macro_f1")
    per_class_key = "per_class_f1"
    per_class_name = "F1"

    def read(self, which: Literal["seed", "holdout"], *, progress: bool = False,
             on_missing: OnMissing = "error") -> LabelledSet:
        """The seed or holdout set: images and their class names, quarantined files, duplicates."""
        src = self.cfg.data.seed if which == "seed" else self.cfg.data.holdout
        s = read_labels(src.format, src.path, classes=self.cfg.classes, image_root=src.image_root,
                        max_pixels=self.cfg.data.max_pixels, on_missing=on_missing)
        return LabelledSet(list(s.items), dict(s.labels), list(s.quarantined), list(s.duplicates))

    def seed_annotation(self, item: Item, label: Label) -> Annotation:
        """A seed label: ``label`` is the class name."""
        return Annotation(item=item, label=str(label), source="seed", round=0)

    def truth_to_ledger(self, label: Label) -> Any:
        """The class name, as stored in the ledger."""
        return str(label)

    def truth_from_ledger(self, value: Any) -> Label:
        """The class name stored in the ledger."""
        return str(value)

    def evaluate(self, model: Any, holdout: Sequence[Item], truth: Mapping[str, Label], out_dir: Path) -> dict[str, Any]:
        """Accuracy, macro-F1 and per-class F1; the holdout predictions are kept in
        ``out_dir/holdout.parquet`` for the report's confusion matrix."""
        from pseudolabel.report import HOLDOUT_FILE, write_holdout_predictions

        probs, _ = predict_arrays(model, holdout, batch_size=self.cfg.model.infer_batch_size)
        pred = [self.cfg.classes[i] for i in probs.argmax(1)]
        true = [str(truth[it.id]) for it in holdout]
        metrics = classification_metrics(true, pred, classes=self.cfg.classes)
        write_holdout_predictions(out_dir / HOLDOUT_FILE, [it.id for it in holdout], true, pred, probs.max(1))
        return metrics

    def read_predictions(self, pred_dir: Path) -> PoolPredictions:
        """Pool predictions from the shards in ``pred_dir``: probs ``(N, C)``, embeddings ``(N, D)``."""
        df, probs, emb = load_predictions(pred_dir)
        preds = [Prediction(item_id=str(iid), model_version=str(v), probs=probs[j], embedding=emb[j])
                 for j, (iid, v) in enumerate(zip(df["item_id"], df["model_version"]))]
        return PoolPredictions(df, preds, emb, probs)

    def uncertainty(self, preds: PoolPredictions, items: Mapping[str, Item]) -> np.ndarray:
        """``selection.uncertainty`` (entropy, margin or least confidence) of each row's probabilities."""
        p = preds.probs
        return SCORE_FUNCTIONS[self.cfg.selection.uncertainty](p) if p is not None and len(p) else np.zeros(0)

    def pool_uncertainty(self, preds: PoolPredictions, items: Mapping[str, Item]) -> np.ndarray:
        """Normalised entropy ``(N,)`` float in [0, 1] of each row's probabilities."""
        p = preds.probs
        return entropy(p, normalise=True) if p is not None and len(p) else np.zeros(0)

    def confident(self, preds: PoolPredictions, ctx: PseudoContext) -> list[Annotation]:
        """Confident predictions as pseudo-labels (never for labelled items).

        Thresholds per class: ``pseudo.mode`` ``global`` uses ``pseudo.threshold`` for every
        class; ``flexmatch`` / ``freematch`` scale it per class by how well the class is learned
        (see :mod:`pseudolabel.selftrain`; FreeMatch's EMA state is kept in the ledger across
        rounds); ``pseudo.class_thresholds`` overrides single classes. Per class the most
        confident are kept, up to ``ctx.cap``; classes in ``ctx.skip_classes`` get none. Each
        pseudo-label weighs ``pseudo.weight`` (humans weigh 1).
        """
        from pseudolabel.selftrain import FreeMatchState, class_thresholds

        cfg, probs = self.cfg, preds.probs
        if probs is None or not len(probs):
            return []
        labelled = set(ctx.labelled)
        human_mask = preds.frame["item_id"].isin(labelled).to_numpy()
        state = None
        saved = ctx.ledger.freematch_state() if ctx.ledger is not None else None
        if cfg.pseudo.mode == "freematch" and saved:
            state = FreeMatchState(tau=float(saved["tau"]), class_probs=np.asarray(saved["class_probs"]))
        thr, new_state = class_thresholds(probs, threshold=cfg.pseudo.threshold, mode=cfg.pseudo.mode,
                                          human_mask=human_mask, state=state)
        if new_state is not None and ctx.ledger is not None:
            ctx.ledger.save_freematch_state({"tau": float(new_state.tau),
                                             "class_probs": [float(v) for v in new_state.class_probs]},
                                            round_id=ctx.round_id)
        for c, t in cfg.pseudo.class_thresholds.items():
            thr[cfg.classes.index(c)] = t
        if ctx.ledger is not None and ctx.round_id is not None:
            ctx.ledger.update_round(ctx.round_id, info={"pseudo_thresholds": {
                c: round(float(t), 4) for c, t in zip(cfg.classes, thr)}})
        conf, pred = probs.max(1), probs.argmax(1)
        keep = np.flatnonzero((conf >= thr[pred]) & ~human_mask)
        per_class: dict[str, int] = {}
        out: list[Annotation] = []
        for j in keep[np.argsort(-conf[keep], kind="stable")]:
            iid = str(preds.frame.at[int(j), "item_id"])
            label = cfg.classes[int(pred[j])]
            if label in ctx.skip_classes or iid not in ctx.items:
                continue
            if ctx.cap is not None and per_class.get(label, 0) >= ctx.cap:
                continue
            per_class[label] = per_class.get(label, 0) + 1
            out.append(Annotation(item=ctx.items[iid], label=label, source="pseudo", round=ctx.round_id,
                                  model_version=ctx.model_version, weight=cfg.pseudo.weight))
        return out

    def select(self, model: Any, preds: PoolPredictions, *, k: int, items: Mapping[str, Item],
               labelled: Sequence[Item], round_id: int) -> Selection:
        """``selection.strategy`` over the probabilities and embeddings (labelled items'
        embeddings for the diversity strategies; MC-dropout passes for ``bald``)."""
        s = self.cfg.selection
        lab_emb = None
        if uses_labelled_embeddings(s.strategy):
            _, lab_emb = predict_arrays(model, list(labelled), batch_size=self.cfg.model.infer_batch_size)
        mc = None
        if s.strategy == "bald":
            require(model, "mc_dropout", "strategy 'bald'")
            mc = model.mc_dropout_probs([items[i] for i in preds.item_ids], T=s.mc_samples,
                                        batch_size=self.cfg.model.infer_batch_size, seed=s.seed + round_id)
        return select(s.strategy, k=k, probs=preds.probs, embeddings=preds.embeddings, mc_probs=mc,
                      labelled_embeddings=lab_emb, class_balance=s.class_balance, hybrid_factor=s.hybrid_factor,
                      uncertainty=s.uncertainty, seed=s.seed + round_id, options=s.strategy_options())

    def review_prediction(self, pred: Prediction) -> tuple[Prediction, str]:
        """The model's class, pre-selected; no note."""
        return pred, ""

    def trains_on(self, label: str | None, boxes: tuple[Box, ...]) -> bool:
        """A classification answer trains only with a class (``label`` not None)."""
        return label is not None
