"""Where a network's forward pass runs: PyTorch, or ONNX Runtime on the CPU.

On a CPU, ONNX Runtime runs the same YOLO graph markedly faster than eager PyTorch (measured
on this project's 2-core machine: yolo11n at 640 px, one thread, 10.4 vs 7.0 images/s at
batch 1; see README, "Benchmarks"), so the inference engine uses it there when it is
installed. On CUDA PyTorch stays (fp16 autocast, device-side NMS and letterbox).

- :func:`resolve_runtime`: ``"auto" | "torch" | "onnx"`` + device -> ``"torch"`` or ``"onnx"``;
- :class:`OnnxForward`: a torch module exported **once, in memory** (no file is written) with
  a dynamic batch axis and run by an ONNX Runtime session; called with a torch tensor, it
  returns torch tensors, so the code around the forward pass is the same for both runtimes.

Outputs agree with the PyTorch forward to float32 rounding (the tests compare both against
Ultralytics' ``predict``).
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import io
import warnings
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch

RUNTIMES = ("auto", "torch", "onnx")
Runtime = Literal["auto", "torch", "onnx"]

# Opset of the TorchScript-based exporter; 17 is the newest every ONNX Runtime >= 1.14 runs.
_OPSET = 17


@functools.cache
def onnx_available() -> bool:
    """ONNX Runtime and the ``onnx`` package (needed by the exporter) are importable (looked
    up once per process: the engine asks on every batch)."""
    return importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnx") is not None


def resolve_runtime(runtime: str, device: torch.device | str) -> Literal["torch", "onnx"]:
    """The runtime to use for ``device``.

    ``"auto"``: ONNX Runtime on a CPU when it is installed, else PyTorch. ``"onnx"`` is CPU
    only (the CUDA path is PyTorch's fp16 one) and needs ``onnxruntime`` and ``onnx``.
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; choose one of {list(RUNTIMES)!r}")
    device = torch.device(device)
    if runtime == "torch":
        return "torch"
    if runtime == "auto":
        return "onnx" if device.type == "cpu" and onnx_available() else "torch"
    if device.type != "cpu":
        raise ValueError(f"runtime 'onnx' runs on the CPU only, got device {str(device)!r}; use 'torch' or 'auto'")
    if not onnx_available():
        raise ValueError("runtime 'onnx' needs the onnxruntime and onnx packages (pip install onnxruntime onnx); "
                         "or use runtime 'torch'")
    return "onnx"


class OnnxForward:
    """``module`` exported to ONNX in memory and run by ONNX Runtime on the CPU.

    ``module(x)`` must return a tensor or a (nested) tuple / list of tensors; they are
    flattened, in order, into the outputs named ``output_names``. ``example`` fixes every
    input dimension except the batch (dimension 0), which stays dynamic. ``threads``: intra-op
    threads of the session (default: ``torch.get_num_threads()``, so ``--threads`` applies).

    The module is deep-copied before export, so cached state that a forward pass under
    ``torch.inference_mode`` left behind (inference tensors cannot be traced) is rebuilt on
    the copy and the caller's module is untouched.
    """

    def __init__(self, module: torch.nn.Module, example: torch.Tensor, output_names: Sequence[str], *,
                 threads: int | None = None) -> None:
        import onnxruntime as ort

        if example.ndim < 1 or example.shape[0] < 1:
            raise ValueError(f"example must be a batch with at least one item, got shape {tuple(example.shape)}")
        self.output_names = list(output_names)
        self.threads = int(threads or torch.get_num_threads())
        net = _fresh_copy(module)
        buf = io.BytesIO()
        with warnings.catch_warnings(), torch.no_grad():
            # The TorchScript-based exporter is deprecated in favour of the torch.export one, which
            # takes ~20x longer on YOLO (11 s vs 0.6 s) for the same graph; torch is pinned (2.14).
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            # torch annotates `f` as a path, but the TorchScript exporter writes to a file object too
            torch.onnx.export(
                net, (example.detach().cpu().float().contiguous(),), buf,  # type: ignore[arg-type]
                input_names=["images"],
                output_names=self.output_names, opset_version=_OPSET, dynamo=False,
                dynamic_axes={name: {0: "batch"} for name in ["images", *self.output_names]},
            )
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3  # errors only
        self.session = ort.InferenceSession(buf.getvalue(), opts, providers=["CPUExecutionProvider"])
        got = [o.name for o in self.session.get_outputs()]
        if got != self.output_names:
            raise RuntimeError(f"the exported graph has outputs {got!r}, expected {self.output_names!r}")

    def __call__(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The outputs for the batch ``x`` (float32, on the CPU), as CPU torch tensors."""
        if x.device.type != "cpu":
            raise ValueError(f"OnnxForward runs on the CPU; got a tensor on {x.device}")
        arr = np.ascontiguousarray(x.detach().float().numpy())
        return [torch.from_numpy(o) for o in self.session.run(self.output_names, {"images": arr})]


def _fresh_copy(module: torch.nn.Module) -> torch.nn.Module:
    """A float32, contiguous-format, eval copy of ``module`` whose inference-mode leftovers
    (Ultralytics' heads cache anchors / strides per input shape) are dropped."""
    net = copy.deepcopy(module).float().eval().to(memory_format=torch.contiguous_format)
    for m in net.modules():
        if hasattr(m, "anchors") and hasattr(m, "shape"):
            m.shape = None  # type: ignore[assignment]  # forces anchors to be rebuilt while tracing
        for name, buf in list(m.named_buffers(recurse=False)):
            if buf is not None and buf.is_inference():
                setattr(m, name, buf.clone())
    return net

