"""A finished training run as a source of models: in-situ customisation after training.

``splitmix.load_run(path)`` returns a :class:`TrainedRun`. It lists what the run offers, read
from the run itself (its method's ``deploy_widths``, the test lambdas of its record when the model
has dual BN, its clients when BN is local) and hands out a plain ``torch.nn.Module`` in eval mode
for any offered ``(width, lam)``. How a model of a width is made is the method's business (the
``Algorithm.deploy`` hook): Split-Mix takes the first bases of that width, a slimmable method cuts
its prefix, DepthFL its depth, FedAvg has its one width. Nothing here names a method.

    run = splitmix.load_run("results/digits-mini/feature/splitmix/seed1")
    run.widths                 # (0.125, 0.25, ..., 1.0)
    model = run.model(0.25)    # eval-mode nn.Module: images in [0, 1], NCHW -> logits

A width, lambda or client the run does not offer is a one-line ``ConfigError`` listing what it
does offer.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from splitmix.data.clients import Client
from splitmix.errors import ConfigError, DataError
from splitmix.evaluate.accuracy import eval_batch_size
from splitmix.evaluate.rows import read_rows
from splitmix.evaluate.run import LoadedRun, is_dual, restore_run
from splitmix.fl.steps import batch_spans
from splitmix.models.serving import freeze_batch_norm, uses_batch_statistics
from splitmix.runfolder import EVAL

BN_CHOICES = ("keep", "freeze")
_TOL = 1e-6


def _fmt(values: tuple[float, ...]) -> str:
    return ", ".join(f"{v:g}" for v in values)


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """Stored images (uint8) as the model's inputs: float in [0, 1]."""
    return x.float().div_(255) if x.dtype == torch.uint8 else x.float()


@dataclass
class TrainedRun:
    """A finished run restored at its best-validation state (see module docstring)."""

    loaded: LoadedRun

    # ---- what the run offers ---------------------------------------------------------------
    @property
    def path(self) -> Path:
        return self.loaded.run_dir

    @property
    def method(self) -> str:
        return self.loaded.cfg.method

    @property
    def widths(self) -> tuple[float, ...]:
        """Every width this run can deploy (``Algorithm.deploy_widths``)."""
        return tuple(float(w) for w in self.loaded.algorithm.deploy_widths())

    @property
    def evaluated_widths(self) -> tuple[float, ...]:
        """The widths the evaluation rows report (``Algorithm.eval_widths``)."""
        return tuple(float(w) for w in self.loaded.algorithm.eval_widths())

    @property
    def dual(self) -> bool:
        """Whether the model has dual BN, i.e. a robustness knob lambda in [0, 1]."""
        if not hasattr(self, "_dual"):
            alg = self.loaded.algorithm
            self._dual = is_dual(alg.assemble(self.widths[-1], None, None))
        return self._dual

    @property
    def lams(self) -> tuple[float, ...]:
        """The test lambdas the run's record evaluates (any lambda in [0, 1] deploys); empty
        without dual BN."""
        return tuple(sorted(float(x) for x in self.loaded.cfg.adv.test_lams)) if self.dual else ()

    @property
    def local_bn(self) -> bool:
        """BN kept per client (FedBN): a deployed model is some client's model."""
        return self.loaded.cfg.bn == "local"

    @property
    def clients(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.loaded.federation.clients)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.loaded.federation.input_shape)

    @property
    def num_classes(self) -> int:
        return int(self.loaded.federation.num_classes)

    # ---- checking a request ------------------------------------------------------------------
    def check_width(self, width: float) -> float:
        for w in self.widths:
            if abs(w - float(width)) < _TOL:
                return w
        raise ConfigError(
            f"width {float(width):g} is not offered by run {self.path} (method {self.method}); "
            f"it offers {_fmt(self.widths)}"
        )

    def check_lam(self, lam: float | None) -> float | None:
        if lam is None:
            return None
        if not self.dual:
            raise ConfigError(
                f"run {self.path} (method {self.method}) has no dual BN, so it offers no lambda; "
                "leave --lam out"
            )
        if not (math.isfinite(float(lam)) and 0.0 <= float(lam) <= 1.0):
            raise ConfigError(
                f"lambda {lam!r} is outside [0, 1]; run {self.path} offers any lambda in [0, 1] "
                f"(evaluated: {_fmt(self.lams)})"
            )
        return float(lam)

    def check_client(self, client: str | None) -> Client | None:
        if client is None:
            if self.local_bn:
                raise ConfigError(
                    f"run {self.path} keeps BN per client (bn: local), so a model is one client's; "
                    f"pass a client, one of {', '.join(self.clients)}"
                )
            return None
        if not self.local_bn:
            raise ConfigError(
                f"run {self.path} shares its BN across clients, so every client gets the same "
                "model; leave the client out"
            )
        for c in self.loaded.federation.clients:
            if c.name == client:
                return c
        raise ConfigError(
            f"client {client!r} is not a client of run {self.path}; its clients: "
            f"{', '.join(self.clients)}"
        )

    def check_bn(self, bn: str) -> str:
        if bn not in BN_CHOICES:
            raise ConfigError(f"bn {bn!r} is invalid; use one of {', '.join(BN_CHOICES)}")
        return bn

    # ---- models --------------------------------------------------------------------------------
    def model(
        self,
        width: float,
        lam: float | None = None,
        *,
        client: str | None = None,
        bn: str = "keep",
        fast: bool = True,
    ) -> nn.Module:
        """An eval-mode module of ``width`` (dual BN mixed by ``lam``, ``client``'s BN when BN is
        local); images in [0, 1], NCHW, float32 -> logits.

        ``bn``: ``keep`` normalises as the run's evaluation did (batch statistics for a
        ``bn: batch`` run, so feed it batches of many images); ``freeze`` gives batch-statistics
        layers fixed statistics estimated on the training images (of ``client`` with local BN,
        else of every client), so the model serves one image at a time (docs/deploy.md).
        ``fast``: the method's faster equivalent (``Algorithm.inference_model``: Split-Mix's
        bases fused into one grouped network, channels-last layout otherwise); else the module
        as the method assembles it.
        """
        w, lam, c = self.check_width(width), self.check_lam(lam), self.check_client(client)
        self.check_bn(bn)
        model = self.loaded.algorithm.deploy(w, lam, None if c is None else c.index)
        if bn == "freeze" and uses_batch_statistics(model):
            freeze_batch_norm(model, self.calibration_batches(c))
        return self.faster(model) if fast else model.eval()

    def faster(self, model: nn.Module) -> nn.Module:
        """The method's faster equivalent of a model ``model(..., fast=False)`` returned."""
        return self.loaded.algorithm.inference_model(model.eval()).eval()

    def calibration_size(self, client: str | None = None) -> int:
        """Number of training images ``bn="freeze"`` estimates statistics on."""
        c = self.check_client(client)
        clients = [c] if c is not None else self.loaded.federation.clients
        return sum(int(k.train_y.shape[0]) for k in clients)

    @property
    def device(self) -> torch.device:
        return torch.device(self.loaded.cfg.device)

    def calibration_batches(self, client: Client | None = None) -> Iterator[torch.Tensor]:
        """Training images (one client's, or every client's) in the run's training batches."""
        clients = [client] if client is not None else self.loaded.federation.clients
        bs = int(self.loaded.cfg.batch_size)
        for c in clients:
            for start, end in batch_spans(int(c.train_y.shape[0]), bs):
                yield to_unit(c.train_x[start:end]).to(self.device)

    def test_batches(
        self, model: nn.Module, client: str | None = None
    ) -> Iterator[tuple[Client, torch.Tensor, torch.Tensor]]:
        """``(client, images, labels)`` of every client's test set (one client's with
        ``client``) in the batches the evaluation used for ``model`` (the run's
        ``test_batch_size`` where BN uses batch statistics)."""
        bs = eval_batch_size(model, self.loaded.cfg.test_batch_size)
        for c in self.loaded.federation.clients:
            if client is not None and c.name != client:
                continue
            for start, end in batch_spans(int(c.test_y.shape[0]), bs):
                yield c, to_unit(c.test_x[start:end]).to(self.device), c.test_y[start:end]

    def test_accuracy(self, model: nn.Module, client: str | None = None) -> float:
        """Mean over clients of the test accuracy of ``model`` (the rows' definition)."""
        correct: dict[str, list[int]] = {}
        with torch.inference_mode():
            for c, x, y in self.test_batches(model, client):
                hit = int((model(x).argmax(1).cpu() == y).sum())
                got = correct.setdefault(c.name, [0, 0])
                got[0] += hit
                got[1] += int(y.shape[0])
        accs = [k / n for k, n in correct.values() if n]
        return sum(accs) / len(accs) if accs else math.nan

    def rows_accuracy(self, width: float, lam: float | None = None) -> float | None:
        """The mean test accuracy the run's ``eval.csv`` reports for ``(width, lam)`` (lambda 0
        on a dual-BN run when ``lam`` is None), or None without rows for it."""
        path = self.path / EVAL
        if not path.is_file():
            return None
        df = read_rows(path)
        sel = df[
            (df["metric"] == "acc")
            & (df["client"] == "mean")
            & (df["domain"] == "all")
            & ((df["width"] - float(width)).abs() < _TOL)
        ]
        if self.dual:
            sel = sel[(sel["lam"] - (0.0 if lam is None else float(lam))).abs() < _TOL]
        return float(sel["value"].iloc[0]) if len(sel) else None


def load_run(path: str | Path, *, device: str | None = None) -> TrainedRun:
    """The finished run in folder ``path`` (``results/<dataset>/<split>/<method>/seed<N>``),
    restored at its best-validation state; ``device`` overrides the run's (e.g. ``cpu``).

    One-line ``DataError`` for a folder that holds no finished run or a damaged ``best.pt``."""
    path = Path(path)
    if not path.is_dir():
        raise DataError(
            f"{path}: no such run folder; give results/<dataset>/<split>/<method>/seed<N>"
        )
    return TrainedRun(restore_run(path, device=device))
