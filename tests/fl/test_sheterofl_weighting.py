"""SHeteroFL's aggregation weight: the original's per-width accumulator and the per-client option.

The oracle below is the original accumulator (``SlimmableModelAccumulator.add`` as ``fed_hfl.py``
calls it) reduced to one tensor: for every entry of ``slim_bias_idx = [0] * n_widths`` it adds the
whole width-R_k prefix with weight w_k to the sum and to the per-entry weight sum.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fl.test_baselines import train_client
from splitmix.config import RunConfig
from splitmix.data.budgets import assign_budgets
from splitmix.errors import ConfigError
from splitmix.fl.algorithm import Algorithm, FederationInfo, Task, Update
from splitmix.fl.base import ServerModelAlgorithm
from splitmix.methods import get_algorithm

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPE = (3, 28, 28)


def make(budgets: str, weights: list[float], **params: object) -> Algorithm:
    k = len(weights)
    info = FederationInfo(
        num_clients=k,
        budgets=assign_budgets(budgets, k),
        weights=np.asarray(weights, dtype=float),
        num_classes=10,
        input_shape=SHAPE,
        arch="digit",
    )
    cfg = RunConfig(
        dataset="digits",
        split="s",
        method="sheterofl",
        algorithm="sheterofl",
        budgets=budgets,
        method_params=dict(params),
    )
    alg = get_algorithm("sheterofl")(cfg, info)
    alg.init_global(torch.Generator().manual_seed(1))
    return alg


def original_accumulator(
    server: torch.Tensor, uploads: list[tuple[torch.Tensor, int, float]]
) -> torch.Tensor:
    """The original's merge of ``(prefix value, widths trained, weight)`` uploads into ``server``:
    one pass per trained width, each adding the whole prefix (shift 0), then sum / weight sum
    where covered."""
    accum = torch.zeros_like(server)
    wsum = torch.zeros_like(server)
    for value, n_widths, w in uploads:
        block = tuple(slice(0, s) for s in value.shape)
        for _shift in [0] * n_widths:
            accum[block] += w * value
            wsum[block] += w
    covered = wsum.abs() > 1e-6
    return torch.where(covered, accum / torch.where(covered, wsum, 1.0), server)


def constant_updates(alg: Algorithm, values: dict[int, float]) -> list[tuple[Task, Update, float]]:
    """One upload per client of ``values``: every entry of its blocks equal to its value."""
    state = alg.server.state_dict()
    out = []
    for task in alg.plan(0, sorted(values), np.random.default_rng(0)):
        blocks = alg.exchange_blocks(task)
        tensors = {
            key: torch.full_like(state[key][block], values[task.client])
            for key, block in blocks.items()
        }
        update = Update(tensors=tensors, blocks=dict(blocks))
        out.append((task, update, float(alg.info.weights[task.client])))
    return out


# conv2.weight of the slimmable digit model is 64 x 64 x 5 x 5; width r covers [:ceil(64 r)]^2
KEY = "conv2.weight"


def test_two_clients_by_hand() -> None:
    """Client A trained 3 widths (1/8, 1/2, 1) and uploads 3; client B trained 1 width (1/8) and
    uploads 1; equal weights. Where both cover: (3*3 + 1*1) / (3 + 1) = 2.5 per width, (3 + 1) / 2
    = 2.0 per client; where A alone covers: 3."""
    per_width = make("8-2-1", [0.25, 0.5, 0.25])
    per_client = make("8-2-1", [0.25, 0.5, 0.25], weighting="per_client")
    assert per_width.client_widths[2] == (0.125, 0.5, 1.0)
    assert per_width.client_widths[0] == (0.125,)
    for alg, inner in ((per_width, 2.5), (per_client, 2.0)):
        alg.aggregate(constant_updates(alg, {0: 1.0, 2: 3.0}))
        got = alg.server.state_dict()[KEY]
        assert torch.all(got[:8, :8] == inner)
        assert torch.all(got[8:] == 3.0)
        assert torch.all(got[:8, 8:] == 3.0)
    # the oracle gives the same numbers on the same uploads
    server = torch.zeros(64, 64)
    merged = original_accumulator(
        server, [(torch.full((64, 64), 3.0), 3, 0.5), (torch.ones(8, 8), 1, 0.5)]
    )
    assert torch.all(merged[:8, :8] == 2.5) and torch.all(merged[8:] == 3.0)


def test_three_clients_match_the_original_accumulator_on_every_key() -> None:
    """Budgets 1/8, 1/2, 1 with unequal weights: the per-width default equals the original's
    accumulator entry by entry. In the ring [8:32) only the 1/2 (2 widths, value 0) and full
    (3 widths, value 3) clients cover: the original gives 3*3*w2 / (2*w1 + 3*w2), not the 2:1
    split of a per-width-block count."""
    weights = [0.5, 0.3, 0.2]
    values = {0: 1.0, 1: 0.0, 2: 3.0}
    alg = make("8-2-1", weights)
    before = {k: v.clone() for k, v in alg.server.state_dict().items()}
    updates = constant_updates(alg, values)
    alg.aggregate(updates)
    after = alg.server.state_dict()
    checked = 0
    for key, server in before.items():
        if not server.is_floating_point():
            continue
        uploads = [(u.tensors[key], len(t.widths), w) for t, u, w in updates if key in u.tensors]
        assert torch.allclose(after[key], original_accumulator(server, uploads), atol=1e-6), key
        checked += 1
    assert checked == len([v for v in before.values() if v.is_floating_point()])
    ring = after[KEY][8:32, 8:32]
    assert torch.allclose(ring, torch.tensor(9 * 0.2 / (2 * 0.3 + 3 * 0.2)))
    inner = (1 * 0.5 + 0 * 2 * 0.3 + 3 * 3 * 0.2) / (0.5 + 2 * 0.3 + 3 * 0.2)
    assert torch.allclose(after[KEY][:8, :8], torch.tensor(inner))


def _train_round(alg: Algorithm) -> list[tuple[Task, Update, float]]:
    """Every client's update after two local steps (the server is left as it was)."""
    tasks = alg.plan(0, list(range(alg.info.num_clients)), np.random.default_rng(0))
    return [(t, train_client(alg, t), float(alg.info.weights[t.client])) for t in tasks]


def test_per_client_is_the_plain_masked_average_on_a_trained_model() -> None:
    """On a trained slimmable model, ``per_client`` is exactly the masked average with the
    client weights (the aggregation before this option existed); ``per_width`` is the masked
    average with weights scaled by the widths trained, and differs from it."""
    weights = [0.4, 0.35, 0.25]
    algs = {
        name: make("8-4-2", weights, weighting=weighting)
        for name, weighting in (
            ("per_client", "per_client"),
            ("per_width", "per_width"),
            ("plain", "per_client"),  # merged below by the base class, bypassing the option
            ("scaled", "per_client"),
        )
    }
    updates = _train_round(algs["per_client"])  # download/upload leave the server untouched
    algs["per_client"].aggregate(updates)
    algs["per_width"].aggregate(updates)
    ServerModelAlgorithm.aggregate(algs["plain"], updates)
    ServerModelAlgorithm.aggregate(
        algs["scaled"], [(t, u, w * len(t.widths)) for t, u, w in updates]
    )
    state = {name: alg.server.state_dict() for name, alg in algs.items()}
    assert [len(t.widths) for t, _, _ in updates] == [1, 2, 3]
    for key, t in state["plain"].items():
        assert torch.equal(state["per_client"][key], t), key
        assert torch.equal(state["per_width"][key], state["scaled"][key]), key
    assert not torch.allclose(state["per_width"][KEY], state["plain"][KEY])


def test_bytes_up_count_each_entry_once() -> None:
    """The per-width weight is server-side arithmetic: the upload is one model on the wire."""
    per_width = make("8-2-1", [0.25, 0.5, 0.25])
    per_client = make("8-2-1", [0.25, 0.5, 0.25], weighting="per_client")
    task = Task(client=2, widths=per_width.client_widths[2])
    up = per_width.upload(task, per_width.download(task))
    state = per_width.server.state_dict()
    prefix = sum(state[k][b].numel() for k, b in per_width.exchange_blocks(task).items())
    assert up.nbytes() == 4 * prefix == per_client.upload(task, per_client.download(task)).nbytes()
    assert len(task.widths) == 3


def test_weighting_is_recorded_and_checked() -> None:
    assert make("8-1", [0.5, 0.5]).describe()["weighting"] == "per_width"
    assert make("8-1", [0.5, 0.5], weighting="per_client").describe()["weighting"] == "per_client"
    with pytest.raises(ConfigError) as err:
        make("8-1", [0.5, 0.5], weighting="per_block")
    msg = str(err.value)
    assert "\n" not in msg
    assert "weighting='per_block'" in msg and "per_width" in msg and "per_client" in msg
