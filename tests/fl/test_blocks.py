"""Index-set blocks: reading, writing and the per-element masked average over uploads that cover
non-contiguous (wrapping, random) parts of a server tensor."""

from __future__ import annotations

import pytest
import torch

from splitmix.fl import blocks
from splitmix.fl.aggregate import MaskedAverage
from splitmix.fl.algorithm import Update


def _idx(*values: int) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.long)


def test_read_write_follow_the_block_order():
    t = torch.arange(20.0).reshape(5, 4)
    block = (_idx(4, 0), slice(1, 3))  # rows 4 then 0 (a window wrapping past the end)
    part = blocks.read(t, block)
    assert part.tolist() == [[17.0, 18.0], [1.0, 2.0]]
    assert blocks.shape(t, block) == part.shape
    blocks.write_(t, block, -part)
    assert t[4, 1:3].tolist() == [-17.0, -18.0] and t[0, 1:3].tolist() == [-1.0, -2.0]
    assert t[2].tolist() == [8.0, 9.0, 10.0, 11.0]  # untouched


def test_masked_average_counts_every_element_over_its_contributors():
    """Two clients on a 4x3 tensor: A covers rows {3, 0} (a wrapped window) with weight 1, B
    rows {0, 1} with weight 3. Row 0 is the weighted mean of both, rows 1 and 3 take their one
    contributor's value, row 2 keeps the server's."""
    server = {"w": torch.full((4, 3), 9.0)}
    avg = MaskedAverage(server)
    a = torch.tensor([[1.0, 1.0, 1.0], [2.0, 2.0, 2.0]])  # rows 3, 0
    b = torch.tensor([[6.0, 6.0, 6.0], [4.0, 4.0, 4.0]])  # rows 0, 1
    avg.add_update(Update({"w": a}, {"w": (_idx(3, 0),)}), 1.0)
    avg.add_update(Update({"w": b}, {"w": (_idx(0, 1),)}), 3.0)
    avg.merge()
    w = server["w"]
    assert w[0].tolist() == [(2.0 * 1 + 6.0 * 3) / 4] * 3  # 5.0
    assert w[1].tolist() == [4.0] * 3
    assert w[2].tolist() == [9.0] * 3
    assert w[3].tolist() == [1.0] * 3


def test_index_blocks_on_two_dimensions_mix_with_slices():
    """An output window {2, 0} x input window {1, 2} beside a plain prefix block of the same
    tensor: each element is averaged over exactly the uploads that held it."""
    server = {"w": torch.zeros(3, 3)}
    avg = MaskedAverage(server)
    avg.add("w", torch.ones(2, 2), 1.0, (_idx(2, 0), _idx(1, 2)))
    avg.add("w", torch.full((2, 2), 3.0), 1.0, (slice(0, 2), slice(0, 2)))
    avg.merge()
    expected = torch.tensor([[3.0, 2.0, 1.0], [3.0, 3.0, 0.0], [0.0, 1.0, 1.0]])
    assert torch.equal(server["w"], expected)


def test_bad_index_blocks_are_refused():
    avg = MaskedAverage({"w": torch.zeros(4)})
    with pytest.raises(ValueError, match="repeats"):
        avg.add("w", torch.ones(2), 1.0, (_idx(1, 1),))
    with pytest.raises(ValueError, match="outside"):
        avg.add("w", torch.ones(2), 1.0, (_idx(3, 4),))
    with pytest.raises(ValueError, match="has 3 entries"):
        avg.add("w", torch.ones(2), 1.0, (_idx(0, 1, 2),))


def test_every_task_carries_its_round_and_the_methods_payload(tmp_path, monkeypatch):
    """The engine sets ``Task.round`` on whatever ``plan`` returns and hands the method's
    ``payload`` through untouched to download and upload."""
    from splitmix.fl.algorithm import register
    from splitmix.training import run_training

    from .toy import ToyLinear, accept_toy_runs, toy_config, toy_federation

    accept_toy_runs(monkeypatch)

    @register
    class ToyRounds(ToyLinear):
        name = "toy-rounds"
        seen: list[tuple[str, int, int]] = []

        def plan(self, round_idx, clients, rng):
            tasks = super().plan(round_idx, clients, rng)
            return [type(t)(client=t.client, payload={"offset": 7 * round_idx}) for t in tasks]

        def download(self, task):
            ToyRounds.seen.append(("down", task.round, task.payload["offset"]))
            return super().download(task)

        def upload(self, task, model):
            ToyRounds.seen.append(("up", task.round, task.payload["offset"]))
            return super().upload(task, model)

    cfg = toy_config(algorithm="toy-rounds", rounds=3, participation=1)
    run_training(cfg, tmp_path, federation=toy_federation(), progress=False)
    assert ToyRounds.seen == [(verb, r, 7 * r) for r in range(3) for verb in ("down", "up")]
