"""Storage and inference latency of a run's deployed models (docs/evaluation.md#deployment).

Per evaluated width, from the module ``Algorithm.deploy`` returns (what ``splitmix.load_run``
and ``python -m splitmix export`` hand out):

* ``export_bytes``: bytes of the TorchScript file the default export writes (the method's fast
  module, BN as evaluated);
* ``latency_b1`` / ``latency_bn``: median seconds per sample at batch 1 and at batch
  ``latency_batch`` of the method's fast module (``Algorithm.inference_model``: Split-Mix's bases
  fused into one grouped network, channels-last layout otherwise), and ``latency_b1_plain`` /
  ``latency_bn_plain`` of the module as assembled (Split-Mix: its bases one after another).

Latency is timed on the model with fixed BN statistics (``freeze_batch_norm`` without
calibration): a batch-statistics model cannot serve one image (docs/deploy.md#batch-norm), and the
values of the statistics do not change the time.

Per run: ``serve_all_bytes``, the bytes a server or device stores to serve every width the run
offers (``Algorithm.storage_nbytes`` over ``deploy_widths``), and the conditions of the timing
(``latency_batch``, ``latency_threads``). The machine they were measured on is the evaluation
record's (``eval.json``, ``record``).
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from typing import Any

import torch

from splitmix.evaluate.latency import LatencyRule, machine_name, seconds_per_sample
from splitmix.evaluate.rows import RunKey
from splitmix.fl.algorithm import Algorithm
from splitmix.models.files import to_bytes
from splitmix.models.serving import freeze_batch_norm

LATENCY_BATCH = 32  # the larger batch of the latency rows: the paper's Digits batch
EXAMPLE_BATCH = 2  # traces the export: batch-statistics BN needs two images


@dataclass(frozen=True)
class DeployOptions:
    """Which deployment rows to measure (``latency: False`` skips the timings)."""

    latency: bool = True
    latency_batch: int = LATENCY_BATCH
    rule: LatencyRule = LatencyRule()


def width_rows(
    alg: Algorithm,
    key: RunKey,
    width: float,
    input_shape: tuple[int, ...],
    device: torch.device,
    options: DeployOptions,
) -> list[dict[str, Any]]:
    """``export_bytes`` and the four latencies of the width-``width`` deployed model."""
    plain = alg.deploy(width, None, None)
    g = torch.Generator().manual_seed(0)
    example = torch.rand((EXAMPLE_BATCH, *input_shape), generator=g).to(device)
    exported = to_bytes(alg.inference_model(plain), example, "torchscript")
    rows = [key.row("export_bytes", len(exported), width=width)]
    if not options.latency:
        return rows
    timed, _ = freeze_batch_norm(plain)
    for suffix, model in (("", alg.inference_model(timed)), ("_plain", timed)):
        for name, batch in (("latency_b1", 1), ("latency_bn", options.latency_batch)):
            value = seconds_per_sample(model, input_shape, batch, rule=options.rule, device=device)
            rows.append(key.row(name + suffix, value, width=width))
    return rows


def run_rows(alg: Algorithm, key: RunKey, options: DeployOptions) -> list[dict[str, Any]]:
    """``serve_all_bytes`` and the timing conditions of the run."""
    rows = []
    stored = alg.storage_nbytes(alg.deploy_widths())
    if stored is not None:
        rows.append(key.row("serve_all_bytes", stored))
    if options.latency:
        rows.append(key.row("latency_batch", options.latency_batch))
        rows.append(key.row("latency_threads", torch.get_num_threads()))
    return rows


def record(device: torch.device, options: DeployOptions) -> dict[str, Any]:
    """What the latencies of one evaluation were measured on (written as ``eval.json``)."""
    return {
        "machine": machine_name(device),
        "device": torch.device(device).type,
        "threads": torch.get_num_threads(),
        "latency_batch": options.latency_batch if options.latency else None,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
