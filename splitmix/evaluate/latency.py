"""Inference latency: measured seconds per sample of a deployed model, on a named machine.

Latency is a measurement, never a formula: FLOPs say how much arithmetic a model needs, latency
how long this machine takes for it, which on small models is mostly per-operation overhead
(docs/evaluation.md#latency). So it is reported in its own rows, beside the machine, the device
and the thread count it was measured with, and never mixed with FLOPs.

One measurement: ``warmup`` untimed calls (allocator, oneDNN primitive caches), then timed calls
until at least ``min_seconds`` have passed and ``min_repeats`` calls were made (at most
``max_repeats``); the result is the MEDIAN call time divided by the batch size, so a call slowed
by another process on the machine does not move it. Inputs are uniform in [0, 1], fixed by a seed
(the arithmetic does not depend on the values).
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn


@dataclass(frozen=True)
class LatencyRule:
    """How one latency is measured (module docstring)."""

    warmup: int = 3
    min_repeats: int = 7
    max_repeats: int = 200
    min_seconds: float = 0.1


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_per_sample(
    model: nn.Module,
    input_shape: tuple[int, ...],
    batch: int,
    *,
    rule: LatencyRule = LatencyRule(),
    device: torch.device | str = "cpu",
) -> float:
    """Median wall seconds of one forward of ``model`` on ``batch`` inputs, per sample."""
    device = torch.device(device)
    g = torch.Generator().manual_seed(0)
    x = torch.rand((batch, *input_shape), generator=g).to(device)
    times: list[float] = []
    with torch.inference_mode():
        for _ in range(rule.warmup):
            model(x)
        _sync(device)
        start = time.perf_counter()
        while len(times) < rule.max_repeats and (
            len(times) < rule.min_repeats or time.perf_counter() - start < rule.min_seconds
        ):
            t0 = time.perf_counter()
            model(x)
            _sync(device)
            times.append(time.perf_counter() - t0)
    return statistics.median(times) / batch


def _cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux), else what ``platform`` says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine_name(device: torch.device | str) -> str:
    """What latencies measured on ``device`` were measured on: the GPU's name for CUDA, the
    CPU's model name otherwise."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cores = os.cpu_count()
    return f"{_cpu_model()}, {cores} cores" if cores else _cpu_model()
