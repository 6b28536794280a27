"""A model as a standalone file: TorchScript or ONNX bytes, and the runtimes that run them.

``to_bytes`` traces an eval-mode module on an example batch with a dynamic batch dimension, so
the file holds exactly the computation the module ran on it (data-dependent choices such as a
dual-BN mixing lambda are baked in): ``torch.jit.trace`` for TorchScript (load with plain
``torch.jit.load``), ``torch.onnx.export`` (the dynamo exporter; needs onnx and onnxscript) for
ONNX (run with ``onnxruntime``). ``runner`` loads such bytes back into a function images ->
logits, which is how an export is verified before anything is written.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import warnings
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import nn

from splitmix.errors import ConfigError

FORMATS = ("torchscript", "onnx")
ONNX_MODULES = ("onnx", "onnxruntime", "onnxscript")
EXTRA_HINT = (
    "install the optional extra 'export': .venv/bin/pip install -e '.[export]' "
    "(pins onnx, onnxruntime and onnxscript)"
)
INPUT_NAME, OUTPUT_NAME = "images", "logits"
ONNX_OPSET = 20


def require_format(fmt: str) -> None:
    """One-line ConfigError for an unknown format or one whose runtime is not installed."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r} is unknown; use one of {', '.join(FORMATS)}")
    if fmt == "onnx":
        missing = [m for m in ONNX_MODULES if importlib.util.find_spec(m) is None]
        if missing:
            raise ConfigError(f"--format onnx needs {', '.join(missing)}; {EXTRA_HINT}")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporters' warnings and log lines (tracer notes, absent torchvision ops) are not the
    user's business: an export is verified numerically instead."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def to_bytes(model: nn.Module, example: torch.Tensor, fmt: str) -> bytes:
    """The bytes of ``model`` exported in ``fmt`` (checked by ``require_format``), traced on
    ``example`` (a batch of inputs; 2 or more images where BN uses batch statistics)."""
    with _quiet(), torch.no_grad():
        if fmt == "torchscript":
            traced = torch.jit.trace(model, example, check_trace=False)
            buf = io.BytesIO()
            torch.jit.save(traced, buf)
            return buf.getvalue()
        program = torch.onnx.export(
            model,
            (example,),
            None,
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
            opset_version=ONNX_OPSET,
            verbose=False,
        )
        return program.model_proto.SerializeToString()


def runner(data: bytes, fmt: str, device: torch.device) -> Callable[[torch.Tensor], np.ndarray]:
    """Images -> logits (numpy), running exported bytes in the format's own runtime."""
    if fmt == "torchscript":
        with _quiet():  # torch.jit.load warns that TorchScript is deprecated
            loaded = torch.jit.load(io.BytesIO(data), map_location=device)
        return lambda x: loaded(x).detach().cpu().numpy()
    import onnxruntime as ort

    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {INPUT_NAME: x.detach().cpu().numpy()})[0]
