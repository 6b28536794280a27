"""Run-level evaluation logic on a synthetic federation: sort_bases and local-BN assembly."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from splitmix.config import RunConfig
from splitmix.data.budgets import assign_budgets
from splitmix.data.clients import Client, Federation
from splitmix.evaluate.accuracy import client_accuracy
from splitmix.evaluate.run import LoadedRun, _client_results, prepare_evaluation
from splitmix.fl.algorithm import FederationInfo
from splitmix.methods import get_algorithm

pytestmark = pytest.mark.usefixtures("one_thread")


def _federation(n_val: int = 20) -> Federation:
    g = torch.Generator().manual_seed(0)

    def imgs(n: int) -> torch.Tensor:
        return torch.randint(0, 256, (n, 3, 28, 28), generator=g, dtype=torch.uint8)

    clients = [
        Client(
            index=k,
            name=f"d{k}-0",
            domain=f"d{k}",
            train_x=imgs(4),
            train_y=torch.zeros(4, dtype=torch.long),
            val_x=imgs(n_val),
            val_y=torch.zeros(n_val, dtype=torch.long),
            test_x=imgs(n_val),
            test_y=torch.zeros(n_val, dtype=torch.long),
            budget=b,
            weight=0.5,
        )
        for k, b in enumerate(assign_budgets("8-4", 2))
    ]
    return Federation("digits", "s", ("d0", "d1"), 10, (3, 28, 28), clients)


def _run(fed: Federation, bn: str = "batch", **params: object) -> LoadedRun:
    cfg = RunConfig(
        dataset="digits",
        split="s",
        method="splitmix",
        algorithm="splitmix",
        bn=bn,
        budgets="8-4",
        method_params=dict(params),
    )
    info = FederationInfo(
        num_clients=2,
        budgets=fed.budgets,
        weights=fed.weights,
        num_classes=10,
        input_shape=(3, 28, 28),
        arch="digit",
    )
    alg = get_algorithm("splitmix")(cfg, info)
    alg.init_global(torch.Generator().manual_seed(0))
    return LoadedRun(None, {}, cfg, 0, alg, fed)  # type: ignore[arg-type]


def test_sort_bases_puts_the_base_of_best_validation_accuracy_first():
    fed = _federation()
    run = _run(fed, sort_bases=True)
    # label every validation and test image with base 1's own prediction: base 1 is then perfect
    # on validation, base 0 is not (one batch of 20 < test_batch_size, so batch BN sees the same
    # batch here and in the evaluation)
    base1 = run.algorithm.assemble_bases([1])
    with torch.no_grad():
        for c in fed.clients:
            c.val_y = base1(c.val_x.float() / 255).argmax(1)
            c.test_y = base1(c.test_x.float() / 255).argmax(1)
    prepare_evaluation(run)
    assert run.algorithm.base_order == [1, 0]
    res = _client_results(run, 0.125, None, attack=None, large=1024)
    assert all(r.acc == 1.0 for r in res.values())  # width 1/8 is now base 1 alone

    plain = _run(fed)  # sort_bases off: no sorting, width 1/8 is base 0
    prepare_evaluation(plain)
    assert plain.algorithm.base_order == [0, 1]
    assert all(r.acc < 1.0 for r in _client_results(plain, 0.125, None, None, 1024).values())


@pytest.mark.parametrize(("val_batch_size", "expected"), [(None, 32), (7, 7)])
def test_sort_bases_validates_in_validation_batches(monkeypatch, val_batch_size, expected):
    """Base sorting reads validation data in the run's validation batches (training batch size
    32 unless val_batch_size is set), not test_batch_size (128): with batch BN they differ."""
    import splitmix.evaluate.run as evaluate_run

    fed = _federation(n_val=40)
    run = _run(fed, sort_bases=True)
    run.cfg = dataclasses.replace(run.cfg, val_batch_size=val_batch_size)
    used = []

    def spy(model, x, y, batch_size, attack=None):
        used.append(batch_size)
        return client_accuracy(model, x, y, batch_size, attack)

    monkeypatch.setattr(evaluate_run, "client_accuracy", spy)
    prepare_evaluation(run)
    assert used == [expected] * 4  # 2 bases x 2 clients
    assert run.cfg.test_batch_size == 128


def test_local_bn_evaluates_each_client_with_its_own_bn():
    fed = _federation()
    run = _run(fed, bn="local")
    alg = run.algorithm
    # give client 1 its own (very different) BN tensors, as training would have
    alg.local[1] = {k: alg.server.state_dict()[k].clone() for k in alg.local_keys}
    g = torch.Generator().manual_seed(3)
    for k, v in alg.local[1].items():
        if k.endswith(("weight", "bias")):
            v.copy_(3 * torch.randn(v.shape, generator=g))
    c1 = fed.clients[1]
    with torch.no_grad():
        own = alg.assemble(0.125, None, 1)(c1.test_x.float() / 255).argmax(1)
        server = alg.assemble(0.125, None, 0)(c1.test_x.float() / 255).argmax(1)
    assert not torch.equal(own, server)  # the local BN matters for these inputs
    c1.test_y = own
    got = _client_results(run, 0.125, None, attack=None, large=1024)
    assert got["d1-0"].acc == 1.0  # evaluated with client 1's own BN, not the shared model
