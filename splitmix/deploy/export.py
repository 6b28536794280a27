"""Export one model of a trained run as a file that runs without this package.

Two formats: ``torchscript`` (``torch.jit.trace``; load with plain ``torch.jit.load``) and
``onnx`` (``torch.onnx.export``; run with ``onnxruntime``, the optional extra ``export``). The
model is traced on a batch of the run's own test images, with a dynamic batch dimension, so the
file holds exactly the computation of that (width, lambda): a dual-BN mixing lambda is baked in.

Nothing is written before the export is verified: the file is built in memory, loaded back with
the format's own runtime, and its logits on a fixed batch of the run's test data (the first
evaluation batch of the first client with test data, plus the first three images of it, which
checks the batch dimension) must equal the in-suite model's within ``tolerance`` (below). Then the
provenance JSON is written beside it (``<file>.json``: the run and its config hash, width, lambda,
BN mode, the rows' test accuracy of that width, MACs, parameters, bytes on disk), and last the
model file itself, both atomically.
"""

from __future__ import annotations

import hashlib
import json
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from splitmix.atomic import atomic_write_bytes, atomic_write_text
from splitmix.deploy.run import TrainedRun
from splitmix.errors import ConfigError, DataError
from splitmix.evaluate.cost import model_cost
from splitmix.models.files import (
    INPUT_NAME,
    ONNX_OPSET,
    OUTPUT_NAME,
    require_format,
    runner,
    to_bytes,
)
from splitmix.models.serving import uses_batch_statistics
from splitmix.version import __version__

RTOL = 2e-3  # |exported - in-suite| <= RTOL * max(1, max |in-suite logit|)


def tolerance(reference: torch.Tensor) -> float:
    """The largest logit difference an export may show against the in-suite model.

    Float32 arithmetic in another order (another runtime, fused kernels) moves logits by ~2e-6
    relative for models with running BN statistics, but by up to ~5e-4 for batch-statistics BN,
    whose variance of a nearly constant channel is badly conditioned in float32: PyTorch's own
    two-pass variance moves them as much as ONNX Runtime does (measured on the CI grid). A wrong
    export (another width, lambda or a lost layer) moves them by 1e-1 and more."""
    return RTOL * max(1.0, float(reference.abs().max()))


def check_out(out: Path) -> Path:
    """``out`` must name a file in an existing folder (checked before any work is done)."""
    out = Path(out)
    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder; give the model file, e.g. {out / 'model.pt'}")
    if not out.parent.is_dir():
        raise ConfigError(
            f"--out {out}: folder {out.parent} does not exist; create it or write elsewhere"
        )
    return out


def provenance_path(out: Path) -> Path:
    return Path(f"{out}.json")


# ---- the export -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Request:
    width: float
    lam: float | None = None
    client: str | None = None
    bn: str = "keep"
    fast: bool = True


def _bn_note(model: nn.Module, seen: int) -> dict[str, Any]:
    if uses_batch_statistics(model):
        return {
            "mode": "batch statistics",
            "min_batch": 2,
            "note": "every BN layer normalises with the statistics of the batch it is given, as "
            "the run's evaluation did: feed batches of many images (the rows used the run's "
            "test_batch_size). On ONE image a BatchNorm1d layer sees variance 0 and outputs its "
            "bias, so every single image gets the same logits; export with --bn freeze to serve "
            "one image at a time.",
        }
    if seen:
        return {
            "mode": "frozen statistics",
            "calibration_images": seen,
            "note": "the run's batch-statistics BN layers were given fixed statistics estimated "
            "on the clients' training images (a cumulative average); every image is computed "
            "on its own, at any batch size; its test accuracy differs from the rows' "
            "(test_acc_measured).",
        }
    return {
        "mode": "running statistics",
        "note": "BN uses the statistics the run tracked in training: every image is computed on "
        "its own, at any batch size.",
    }


def export_model(run: TrainedRun, req: Request, fmt: str, out: Path) -> dict[str, Any]:
    """Export ``req``'s model of ``run`` to ``out`` in ``fmt``; return the provenance written to
    ``<out>.json``. Raises before writing anything on bad input or a failed verification."""
    require_format(fmt)
    out = check_out(out)
    plain = run.model(req.width, req.lam, client=req.client, bn=req.bn, fast=False)
    model = run.faster(plain) if req.fast else plain
    client, x, _ = next(run.test_batches(model, req.client), (None, None, None))
    if x is None:
        raise DataError(f"run {run.path} has no test images to verify an export on")
    with torch.inference_mode():
        ref = model(x)
        ref_small = model(x[:3])
    data = to_bytes(model, x, fmt)
    run_exported = runner(data, fmt, run.device)
    diff = max(
        float(np.abs(run_exported(x) - ref.cpu().numpy()).max()),
        float(np.abs(run_exported(x[:3]) - ref_small.cpu().numpy()).max()),
    )
    tol = tolerance(ref)
    if not diff <= tol:
        raise DataError(
            f"the {fmt} export of {run.path} at width {req.width:g} differs from the in-suite "
            f"model by {diff:.3g} in a logit (tolerance {tol:.3g}); nothing was written"
        )
    cost = model_cost(plain, run.input_shape)
    froze = req.bn == "freeze" and uses_batch_statistics(
        run.model(req.width, req.lam, client=req.client, fast=False)
    )
    seen = run.calibration_size(req.client) if froze else 0
    record = _provenance(run, req, fmt, out, data, model, cost, diff, tol, x, client, seen)
    atomic_write_text(provenance_path(out), json.dumps(record, indent=2) + "\n")
    atomic_write_bytes(out, data)
    return record


def _provenance(run, req, fmt, out, data, model, cost, diff, tol, x, client, seen):
    rec = run.loaded.record
    rows_acc = run.rows_accuracy(req.width, req.lam)
    bn = _bn_note(model, seen)
    measured = None
    if seen or rows_acc is None:
        measured = run.test_accuracy(model, req.client)
    c, h, w = run.input_shape
    return {
        "file": out.name,
        "format": fmt,
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "run": {
            "path": str(run.path),
            "config_hash": rec.get("config_hash"),
            "dataset": run.loaded.cfg.dataset,
            "split": run.loaded.cfg.split,
            "method": run.method,
            "algorithm": run.loaded.cfg.algorithm,
            "seed": run.loaded.cfg.seed,
            "best_round": run.loaded.best_round,
        },
        "width": req.width,
        "lam": req.lam,
        "client": req.client,
        "implementation": type(model).__name__ if req.fast else "as assembled",
        "bn": bn,
        "input": {
            "name": INPUT_NAME,
            "shape": ["batch", c, h, w],
            "dtype": "float32",
            "values": "pixels / 255, in [0, 1], RGB, no normalisation",
        },
        "output": {"name": OUTPUT_NAME, "shape": ["batch", run.num_classes], "kind": "logits"},
        "test_acc": rows_acc,
        "test_acc_source": "eval.csv: mean over clients" if rows_acc is not None else None,
        "test_acc_measured": measured,
        "test_batch_size": int(run.loaded.cfg.test_batch_size),
        "macs_per_sample": cost.macs,
        "params": cost.params,
        "state_bytes": cost.model_bytes,
        "verification": {
            "images": f"first {int(x.shape[0])} test images of client {client.name}, and the "
            "first 3 of them",
            "max_abs_logit_diff": diff,
            "tolerance": tol,
        },
        "software": {
            "splitmix": __version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
            **({"onnx_opset": ONNX_OPSET} if fmt == "onnx" else {}),
        },
    }
