"""Self-supervised pretraining on the pool (SimCLR) when no pretrained weights fit the data.

:func:`pretrain_backbone` trains :class:`~.nets.SSLNet` with the SimCLR objective (Chen et al.
2020): two random views of each image (:func:`ssl_views`: crop + resize, flip, brightness /
contrast / saturation jitter, random grey, all on whole batches of tensors), a projection
MLP, and the NT-Xent loss that pulls the two views of an image together and pushes the other
images of the batch away (:func:`nt_xent`). The result is a backbone file for
``FrozenBackboneClassifier(backbone="ssl:<path>")``.

Bounded, resumable, cached:

- it stops at ``max_steps`` or when ``max_minutes`` of training have been spent, counted over
  every run (a rerun after a crash continues where the last checkpoint left, with the clock it
  had); raising either budget later continues training from the saved state;
- a checkpoint (network, projection, optimiser, random generator, step, elapsed seconds) is
  written atomically every ``checkpoint_every`` steps and at the end;
- everything lives under ``<cache_dir>/<key>/``, ``key`` a hash of the pool's item ids and the
  settings that change the result (not the budgets), so another campaign on the same pool
  reuses it and a changed pool trains anew.

Progress: a bar on a terminal, otherwise a log line (step, loss, steps/s, ETA) every
``log_every`` seconds and at each checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pseudolabel.data.images import load_chw_batch
from pseudolabel.models.backbone.nets import PM1_MEAN, PM1_STD, SSLNet
from pseudolabel.models.base import resolve_device
from pseudolabel.types import Item

SSL_FORMAT = "pseudolabel.ssl_backbone/1"
CHECKPOINT = "checkpoint.pt"
BACKBONE = "backbone.pt"
# Settings that do not change what is learnt per step: left out of the cache key, so a larger
# budget continues the same run.
_BUDGET_FIELDS = frozenset({"max_steps", "max_minutes", "checkpoint_every", "log_every"})


@dataclass(frozen=True)
class PretrainSettings:
    """SimCLR settings. Sizes in pixels, budgets in steps and minutes.

    ``image_size``: images are resized to this square side; ``width``: channels of the
    network's first stage (x2, x4, x8 after); ``batch_size``: images per step (2 views each);
    ``lr`` / ``weight_decay``: AdamW, linear warm-up over the first 50 steps then constant
    (constant, so a run can be extended); ``temperature``: NT-Xent temperature;
    ``proj_dim``: projection output size; ``max_images``: at most this many pool images
    (a seeded sample) are decoded into memory and trained on; ``log_every``: seconds between
    log lines when not on a terminal.
    """

    image_size: int = 32
    width: int = 16
    max_steps: int = 2000
    max_minutes: float = 10.0
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 1e-4
    temperature: float = 0.2
    proj_dim: int = 64
    checkpoint_every: int = 100
    max_images: int = 20_000
    seed: int = 0
    log_every: float = 15.0

    def check(self) -> None:
        """Raise ``ValueError`` naming the first bad setting and what is accepted."""
        for name, lo in (("image_size", 8), ("width", 4), ("max_steps", 1), ("batch_size", 2), ("proj_dim", 2),
                         ("checkpoint_every", 1), ("max_images", 2), ("seed", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"pretrain.{name} must be an integer >= {lo}, got {v!r}")
        for name in ("max_minutes", "lr", "temperature", "log_every"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise ValueError(f"pretrain.{name} must be a finite number > 0, got {v!r}")
        wd = self.weight_decay
        if isinstance(wd, bool) or not isinstance(wd, (int, float)) or not math.isfinite(wd) or wd < 0:
            raise ValueError(f"pretrain.weight_decay must be a finite number >= 0, got {wd!r}")


@dataclass(frozen=True)
class PretrainResult:
    """``path``: the backbone file; ``key``: its cache key; ``steps`` done in total;
    ``seconds`` of training in total; ``stopped``: ``max_steps`` / ``time_budget``;
    ``trained_now``: steps run by this call (0: everything came from the cache); ``loss``: the
    mean loss over the last checkpoint interval (NaN when unknown)."""

    path: Path
    key: str
    steps: int
    seconds: float
    stopped: str
    trained_now: int
    loss: float


class PretrainNotAllowed(RuntimeError):
    """Pretraining is needed but switched off (``pretrain.enabled: false``)."""


# --------------------------------------------------------------------------------------
# augmentations and loss


def _gray(x: torch.Tensor) -> torch.Tensor:
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])


def ssl_views(x: torch.Tensor, *, generator: torch.Generator, min_scale: float = 0.3, flip: bool = True,
              brightness: float = 0.4, contrast: float = 0.4, saturation: float = 0.4,
              gray_p: float = 0.2) -> torch.Tensor:
    """One random view of every image of a batch, all at once.

    ``x``: ``(B, 3, S, S)`` float in [0, 1] on any device; returns the same shape, in [0, 1].
    Per image: a crop of ``min_scale``..1 of the area with aspect ratio 3/4..4/3 at a random
    place, resized back to S (bilinear, one ``grid_sample`` for the batch); a horizontal flip
    with probability 1/2 when ``flip``; brightness, contrast and saturation factors drawn
    from ``1 +- brightness`` etc.; converted to grey with probability ``gray_p``. Random
    numbers come only from ``generator`` (a CPU generator), drawn on the CPU.
    """
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"x must be (B, 3, H, W), got {tuple(x.shape)}")
    b, dev = x.shape[0], x.device

    def draw(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator).to(dev)

    area = min_scale + (1.0 - min_scale) * draw(b)
    log_r = math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * draw(b)
    ratio = torch.exp(log_r)
    sw = torch.sqrt(area * ratio).clamp(max=1.0)
    sh = torch.sqrt(area / ratio).clamp(max=1.0)
    tx = (2 * draw(b) - 1) * (1 - sw)
    ty = (2 * draw(b) - 1) * (1 - sh)
    sign = torch.where(draw(b) < 0.5, -1.0, 1.0) if flip else torch.ones(b, device=dev)
    theta = torch.zeros(b, 2, 3, device=dev, dtype=x.dtype)
    theta[:, 0, 0] = sw * sign
    theta[:, 0, 2] = tx
    theta[:, 1, 1] = sh
    theta[:, 1, 2] = ty
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    out = out * (1 + brightness * (2 * draw(b, 1, 1, 1) - 1))
    mean = _gray(out).mean((1, 2, 3), keepdim=True)
    out = (out - mean) * (1 + contrast * (2 * draw(b, 1, 1, 1) - 1)) + mean
    g = _gray(out)
    out = g + (out - g) * (1 + saturation * (2 * draw(b, 1, 1, 1) - 1))
    to_gray = draw(b, 1, 1, 1) < gray_p
    out = torch.where(to_gray, _gray(out).expand_as(out), out)
    return out.clamp(0.0, 1.0)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's NT-Xent loss: ``z1``, ``z2`` ``(B, P)`` projections of two views of the same
    B images; each of the 2B vectors must pick its partner among the other 2B - 1 (cosine
    similarity / ``temperature``, cross-entropy). Lower = views of an image agree more."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = z @ z.T / temperature
    n = len(z1)
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, target)


class _Projection(nn.Sequential):
    def __init__(self, dim: int, out: int) -> None:
        super().__init__(nn.Linear(dim, 256), nn.ReLU(inplace=True), nn.Linear(256, out))


# --------------------------------------------------------------------------------------
# the run


def pool_key(item_ids: Sequence[str], settings: PretrainSettings) -> str:
    """24 hex chars naming a pretraining run: the sorted pool item ids plus every setting but
    the budgets."""
    h = hashlib.sha256()
    for i in sorted(set(item_ids)):
        h.update(i.encode())
        h.update(b"\n")
    h.update(json.dumps({k: v for k, v in asdict(settings).items() if k not in _BUDGET_FIELDS},
                        sort_keys=True).encode())
    return h.hexdigest()[:24]


def _save_atomic(obj: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _fmt_seconds(s: float) -> str:
    if not math.isfinite(s):
        return "?"
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _stderr_line(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def pretrain_backbone(
    items: Sequence[Item],
    *,
    settings: PretrainSettings,
    cache_dir: Path | str,
    allow_train: bool = True,
    device: str = "auto",
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> PretrainResult:
    """Pretrain (or reuse, or continue) a SimCLR backbone on ``items``; see the module docstring.

    ``items``: the unlabelled pool (readable images; their labels are never looked at).
    ``allow_train`` False: only a finished run from the cache is accepted, else
    :class:`PretrainNotAllowed`. ``log``: where log lines go (default: stderr). Returns a
    :class:`PretrainResult`; the backbone file is ``<cache_dir>/<key>/backbone.pt``.
    """
    settings.check()
    items = list(items)
    if len(items) < 2:
        raise ValueError(f"self-supervised pretraining needs at least 2 pool images, got {len(items)}")
    say = log or _stderr_line
    key = pool_key([it.id for it in items], settings)
    folder = Path(cache_dir) / key
    ckpt_path, out_path = folder / CHECKPOINT, folder / BACKBONE
    state = torch.load(ckpt_path, map_location="cpu", weights_only=True) if ckpt_path.is_file() else None
    step = int(state["step"]) if state else 0
    elapsed = float(state["elapsed"]) if state else 0.0
    budget_s = float(settings.max_minutes) * 60.0

    def finished() -> str | None:
        if step >= settings.max_steps:
            return "max_steps"
        if elapsed >= budget_s:
            return "time_budget"
        return None

    last_loss = float(state["last_loss"]) if state else float("nan")
    if finished() is not None and out_path.is_file():
        return PretrainResult(out_path, key, step, elapsed, str(finished()), 0, last_loss)
    if finished() is None and not allow_train:
        raise PretrainNotAllowed(
            f"backbone ssl: no finished self-supervised pretraining for this pool under {folder} "
            f"({step} of {settings.max_steps} steps done) and pretrain.enabled is false; enable it to train")

    dev = resolve_device(device)
    gen = torch.Generator().manual_seed(settings.seed)
    order = torch.randperm(len(items), generator=gen)[: settings.max_images].tolist()
    sample = sorted((items[i] for i in order), key=lambda it: it.id)
    with torch.random.fork_rng(devices=[]):  # initial weights from the seed, the caller's RNG untouched
        torch.manual_seed(settings.seed)
        net = SSLNet(width=settings.width)
        proj = _Projection(net.embed_dim, settings.proj_dim)
    net.to(dev)
    proj.to(dev)
    params = list(net.parameters()) + list(proj.parameters())
    opt = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    loss_sum, loss_n = 0.0, 0
    if state is not None:
        net.load_state_dict(state["net"])
        proj.load_state_dict(state["proj"])
        opt.load_state_dict(state["opt"])
        gen.set_state(state["generator"])
        say(f"ssl pretraining: resuming {folder.name} at step {step} ({_fmt_seconds(elapsed)} spent)")
    else:
        folder.mkdir(parents=True, exist_ok=True)
    if finished() is None:
        folder.mkdir(parents=True, exist_ok=True)
        t_decode = time.perf_counter()
        x_all = load_chw_batch([it.path for it in sample], settings.image_size)  # (N, 3, S, S) uint8
        say(f"ssl pretraining on {len(sample)} pool images at {settings.image_size} px: steps {step}/"
            f"{settings.max_steps}, budget {settings.max_minutes:g} min (decoded in "
            f"{time.perf_counter() - t_decode:.1f} s)")
    mean = torch.tensor(PM1_MEAN, device=dev).view(1, 3, 1, 1)
    std = torch.tensor(PM1_STD, device=dev).view(1, 3, 1, 1)

    def checkpoint() -> None:
        _save_atomic({"step": step, "elapsed": elapsed, "net": net.state_dict(), "proj": proj.state_dict(),
                      "opt": opt.state_dict(), "generator": gen.get_state(), "last_loss": last_loss,
                      "settings": asdict(settings)}, ckpt_path)

    bar = None
    if progress and sys.stderr.isatty():
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        bar = Progress(TextColumn("ssl pretraining {task.description}"), BarColumn(), MofNCompleteColumn(),
                       TimeRemainingColumn(), transient=True)
        bar.start()
        task = bar.add_task("", total=settings.max_steps, completed=step)
    start_step = step
    t_run = time.perf_counter()
    t_last_log = t_run
    try:
        while finished() is None:
            t0 = time.perf_counter()
            net.train()
            proj.train()
            idx = torch.randint(0, len(x_all), (settings.batch_size,), generator=gen)
            xb = x_all[idx].to(dev).float() / 255.0
            views = torch.cat([ssl_views(xb, generator=gen), ssl_views(xb, generator=gen)])
            z = proj(net((views - mean) / std))
            loss = nt_xent(z[: settings.batch_size], z[settings.batch_size:], settings.temperature)
            warm = min(1.0, (step + 1) / 50)
            for group in opt.param_groups:
                group["lr"] = settings.lr * warm
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            elapsed += time.perf_counter() - t0
            loss_sum += float(loss.detach())
            loss_n += 1
            done = finished()
            if step % settings.checkpoint_every == 0 or done is not None:
                last_loss = loss_sum / max(loss_n, 1)
                loss_sum, loss_n = 0.0, 0
                checkpoint()
            now = time.perf_counter()
            rate = (step - start_step) / max(now - t_run, 1e-9)
            eta = min((settings.max_steps - step) / max(rate, 1e-9), max(budget_s - elapsed, 0.0))
            if bar is not None:
                bar.update(task, completed=step, description=f"loss {float(loss.detach()):.3f}")
            elif now - t_last_log >= settings.log_every or step % settings.checkpoint_every == 0 or done:
                say(f"ssl pretraining: step {step}/{settings.max_steps}, loss {float(loss.detach()):.3f}, "
                    f"{rate:.2f} steps/s, ETA {_fmt_seconds(eta)}")
                t_last_log = now
    finally:
        if bar is not None:
            bar.stop()
    stopped = str(finished())
    if not out_path.is_file() or step > start_step:
        net.to("cpu")
        _save_atomic({"format": SSL_FORMAT,
                      "config": {"width": settings.width, "image_size": settings.image_size, "steps": step,
                                 "seconds": elapsed, "stopped": stopped, "key": key, "pool_size": len(items),
                                 "images_used": len(sample), "last_loss": last_loss,
                                 "settings": {f.name: getattr(settings, f.name) for f in fields(settings)}},
                      "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()}}, out_path)
    say(f"ssl pretraining: done ({stopped}) at step {step}, {_fmt_seconds(elapsed)} of training, loss "
        f"{last_loss:.3f}; backbone {out_path}")
    return PretrainResult(out_path, key, step, elapsed, stopped, step - start_step, last_loss)
