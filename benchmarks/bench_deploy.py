"""Inference latency of deployed models: Split-Mix's bases fused against one after another, and
the exported files (TorchScript, ONNX Runtime) against eager PyTorch, for the Digits model.

Every model is freshly initialised (latency does not depend on the weights), its BN statistics
fixed as the evaluation's latency rows have them (``evaluate.deployment``), and timed by the
evaluation's own ``seconds_per_sample`` (median per call after warm-up), on one thread unless
``--threads``. Prints one line per (method, width) with milliseconds per sample at batch 1 and at
``--batch``, and the ratios that matter:

* ``seq/fused``: Split-Mix's sequential bases over its fused module (> 1: fusing pays);
* ``eager/TS``, ``eager/ORT``: eager PyTorch over the exported TorchScript and ONNX files, run in
  their own runtimes (> 1: the file is faster than the model in the suite).

    .venv/bin/python benchmarks/bench_deploy.py
    .venv/bin/python benchmarks/bench_deploy.py --threads 2 --batch 128 --no-onnx
"""

from __future__ import annotations

import argparse
import importlib.util

import numpy as np
import torch
from torch import nn

from splitmix.evaluate.latency import LatencyRule, machine_name, seconds_per_sample
from splitmix.models import build_model
from splitmix.models.fast import inference_model
from splitmix.models.files import runner, to_bytes
from splitmix.models.serving import freeze_batch_norm
from splitmix.splitmix.ensemble import build_ensemble
from splitmix.splitmix.inference import ensemble_inference_model

SHAPE = (3, 28, 28)
WIDTHS = (0.125, 0.25, 0.5, 1.0)


class _Runtime(nn.Module):
    """An exported file as a module, so the same timer measures it (inputs go through numpy)."""

    def __init__(self, data: bytes, fmt: str) -> None:
        super().__init__()
        self.run = runner(data, fmt, torch.device("cpu"))

    def forward(self, x: torch.Tensor) -> np.ndarray:
        return self.run(x)


def _models(width: float) -> dict[str, tuple[nn.Module, nn.Module]]:
    """(method, (plain module, fast module)) at ``width``, BN statistics fixed."""
    ens = build_ensemble("digit", atom=0.125, norm="batch", seed=0)
    split = freeze_batch_norm(ens.select(list(range(int(width * 8)))).eval())[0]
    dense = freeze_batch_norm(build_model("digit", width=width, norm="batch", seed=0).eval())[0]
    return {
        "splitmix": (split, ensemble_inference_model(split)),
        "dense (HeteroFL, FedAvg)": (dense, inference_model(dense)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--onnx", action=argparse.BooleanOptionalAction, default=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    onnx = args.onnx and importlib.util.find_spec("onnxruntime") is not None
    rule = LatencyRule(min_repeats=15, min_seconds=0.3)
    print(f"machine: {machine_name('cpu')}, {args.threads} thread(s); ms per sample")
    for width in WIDTHS:
        for method, (plain, fast) in _models(width).items():
            example = torch.rand((2, *SHAPE), generator=torch.Generator().manual_seed(0))
            files = {"TS": to_bytes(fast, example, "torchscript")}
            if onnx:
                files["ORT"] = to_bytes(fast, example, "onnx")
            line = [f"{method:>24} x{width:<5g}"]
            for batch in (1, args.batch):
                t = {
                    "plain": seconds_per_sample(plain, SHAPE, batch, rule=rule),
                    "fast": seconds_per_sample(fast, SHAPE, batch, rule=rule),
                }
                for name, data in files.items():
                    fmt = "torchscript" if name == "TS" else "onnx"
                    t[name] = seconds_per_sample(_Runtime(data, fmt), SHAPE, batch, rule=rule)
                parts = [f"{k} {1e3 * v:.3f}" for k, v in t.items()]
                ratios = []
                if method == "splitmix":
                    ratios.append(f"seq/fused {t['plain'] / t['fast']:.2f}x")
                ratios += [f"eager/{k} {t['fast'] / t[k]:.2f}x" for k in files]
                line.append(f"b{batch}: {', '.join(parts)} ({', '.join(ratios)})")
            print(" | ".join(line))


if __name__ == "__main__":
    main()
