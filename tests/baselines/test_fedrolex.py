"""FedRolex / Federated Dropout as methods: per-entry averaging over index blocks, equality with
HeteroFL under static extraction, configuration errors, and exact resume through the engine."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
import torch
from fl.test_baselines import make, run_round, server_state
from fl.toy import toy_config, toy_federation
from torch import nn

from baselines.fedrolex import rolling_window, window_blocks
from splitmix.config import RunConfig
from splitmix.errors import ConfigError
from splitmix.fl.aggregate import MaskedAverage
from splitmix.fl.algorithm import Update
from splitmix.fl.blocks import read
from splitmix.fl.checkpoint import load_checkpoint
from splitmix.models.layers import SlimmableConv2d, SlimmableLinear
from splitmix.models.norm import SlimmableBatchNorm
from splitmix.training import run_training

SHAPE = (3, 28, 28)

pytestmark = pytest.mark.usefixtures("one_thread")


# ---- per-entry averaging on a tiny layer stack ---------------------------------------------------
class _Tiny(nn.Module):
    """conv 3->8 (input fixed), BN over 8, linear over a (8, 2, 2)-flatten -> 4 classes."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = SlimmableConv2d(3, 8, 1, fixed_in=True)
        self.bn = SlimmableBatchNorm(8, 2)
        self.fc = SlimmableLinear(8 * 4, 4, fixed_out=True, in_group=4)


def _merge_two_clients(w_a: float, w_b: float) -> dict[str, torch.Tensor]:
    """Round 3, server entries all -1; client A (width 1/2) sends 1s, B (width 1/4) sends 3s."""
    model = _Tiny()
    state = {k: torch.full_like(v, -1.0) for k, v in model.state_dict().items()}
    merge = MaskedAverage(state)
    for width, value, weight in ((0.5, 1.0, w_a), (0.25, 3.0, w_b)):
        blocks = window_blocks(model, width, lambda k, n: rolling_window(k, n, 3))
        tensors = {key: torch.full_like(read(state[key], b), value) for key, b in blocks.items()}
        merge.add_update(Update(tensors=tensors, blocks=blocks), weight)
    merge.merge()
    return state


@pytest.mark.parametrize(("w_a", "w_b", "both"), [(0.5, 0.5, 2.0), (0.25, 0.75, 2.5)])
def test_each_entry_is_averaged_over_the_clients_whose_window_covered_it(
    w_a: float, w_b: float, both: float
) -> None:
    # K = 8, t = 3: roll(arange(8), 3) = [5, 6, 7, 0, 1, 2, 3, 4]; A keeps its first 4 entries
    # {5, 6, 7, 0}, B its first 2 {5, 6}. Channels 5, 6: both clients; 0, 7: A alone; 1-4: nobody.
    per_channel = torch.tensor([1.0, -1, -1, -1, -1, both, both, 1.0])
    state = _merge_two_clients(w_a, w_b)
    assert torch.equal(state["conv.weight"], per_channel[:, None, None, None].expand(8, 3, 1, 1))
    for key in ("conv.bias", "bn.weight", "bn.bias"):
        assert torch.equal(state[key], per_channel), key
    # fc reads channel c as features 4c .. 4c+3 and keeps all 4 outputs
    assert torch.equal(state["fc.weight"], per_channel.repeat_interleave(4).expand(4, 32))
    assert torch.equal(state["fc.bias"], torch.full((4,), both))  # both clients send it whole


# ---- the method ------------------------------------------------------------------------------
def test_static_extraction_trains_exactly_like_heterofl() -> None:
    rolex, hetero = make("fedrolex", extraction="static"), make("heterofl")
    for r in range(2):
        run_round(rolex, r, [0, 1, 2, 3])
        run_round(hetero, r, [0, 1, 2, 3])
    a, b = server_state(rolex), server_state(hetero)
    for key, t in a.items():
        assert torch.equal(t, b[key]), key


def test_rolling_round_changes_exactly_the_windows_entries() -> None:
    alg = make("fedrolex", k=4)
    before = server_state(alg)
    run_round(alg, 5, [0])  # client 0 of 8-4-2-1 over 4 clients: width 1/8
    after = server_state(alg)
    (width,) = alg.client_widths[0]
    assert width == 0.125
    kept = set(rolling_window(64, 8, 5).tolist())  # conv1: channels 59..63 and 0..2
    assert kept == {59, 60, 61, 62, 63, 0, 1, 2}
    changed = (after["conv1.weight"] != before["conv1.weight"]).flatten(1).any(1)
    assert set(torch.nonzero(changed).flatten().tolist()) == kept
    # fc1 reads conv3's window (K = 128, 16 kept at t = 5) as 49 features per channel
    fc1 = (after["fc1.weight"] != before["fc1.weight"]).any(0)
    channels = set((torch.nonzero(fc1).flatten() // 49).tolist())
    assert channels == set(rolling_window(128, 16, 5).tolist())


def test_upload_and_download_bytes_are_the_window_and_match_heterofl() -> None:
    rolex, hetero = make("fedrolex"), make("heterofl")
    for task, htask in zip(
        rolex.plan(7, [0, 1, 2, 3], np.random.default_rng(0)),
        hetero.plan(7, [0, 1, 2, 3], np.random.default_rng(0)),
        strict=True,
    ):
        assert task.round == 7
        update = rolex.upload(task, rolex.download(task))
        href = hetero.upload(htask, hetero.download(htask))
        assert update.nbytes() == href.nbytes()  # a window has the prefix's shape
        assert rolex.download_bytes(task, None) == update.nbytes()
        assert update.blocks.keys() == rolex.exchange_blocks(task).keys()


def test_feddropout_plans_seeded_random_windows() -> None:
    alg = make("feddropout")
    assert alg.extraction == "random"
    tasks = alg.plan(0, [0, 1, 2, 3], np.random.default_rng(4))
    again = alg.plan(0, [0, 1, 2, 3], np.random.default_rng(4))
    assert [t.payload["seed"] for t in tasks] == [t.payload["seed"] for t in again]
    assert len({t.payload["seed"] for t in tasks}) == 4


def test_configuration_errors_are_one_line_config_errors() -> None:
    with pytest.raises(ConfigError, match="bn: batch"):
        make("fedrolex", bn="tracked")
    with pytest.raises(ConfigError, match="extraction"):
        make("fedrolex", extraction="sliding")
    with pytest.raises(ConfigError, match="unknown parameter"):
        make("feddropout", extraction="rolling")


@pytest.mark.parametrize("algorithm", ["fedrolex", "feddropout"])
def test_state_dict_round_trip_resumes_identically(algorithm: str) -> None:
    a = make(algorithm)
    run_round(a, 0, [0, 1, 2, 3])
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    run_round(a, 1, [0, 1, 2, 3])
    b = make(algorithm, seed=99)
    buf.seek(0)
    b.load_state_dict(torch.load(buf, weights_only=False))
    run_round(b, 1, [0, 1, 2, 3])
    for key, t in server_state(a).items():
        assert torch.equal(t, server_state(b)[key]), key


# ---- end to end through the engine -------------------------------------------------------------
def _federation():
    fed = toy_federation(num_clients=4, n_train=(12, 9, 10, 8), n_val=4, num_classes=10,
                         shape=SHAPE)  # fmt: skip
    for client, budget in zip(fed.clients, (1.0, 0.5, 0.25, 0.125), strict=True):
        client.budget = budget
    return fed


@pytest.mark.slow  # 4 rounds of the Digits model in all: ~12 s on 2 shared cores
@pytest.mark.parametrize("algorithm", ["fedrolex", "feddropout"])
def test_engine_run_trains_and_resumes_bit_identically(tmp_path, algorithm: str) -> None:
    cfg = toy_config(algorithm=algorithm, arch="digit", budgets="8-4-2-1", rounds=2,
                     checkpoint_every=1)  # fmt: skip
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run_training(cfg, straight, federation=_federation(), progress=False)
    res = run_training(cfg, resumed, federation=_federation(), progress=False, stop_after=1)
    assert res["stopped"]
    run_training(cfg, resumed, federation=_federation(), progress=False)
    a = load_checkpoint(straight / "checkpoint.pt")["algorithm"]["server"]
    b = load_checkpoint(resumed / "checkpoint.pt")["algorithm"]["server"]
    assert a.keys() == b.keys() == make(algorithm).state_dict()["server"].keys()
    for key, value in a.items():
        assert torch.equal(value, b[key]), key
    logs = [pd.read_csv(d / "log.csv").drop(columns=["seconds"]) for d in (straight, resumed)]
    pd.testing.assert_frame_equal(logs[0], logs[1], check_exact=True)
    # it trained: every round sent windows up and the loss fell from the first round to the last
    assert len(logs[0]) == 2 and (logs[0]["bytes_up"] > 0).all()
    assert logs[0]["train_loss"].iloc[-1] < logs[0]["train_loss"].iloc[0]


def test_run_validation_refuses_an_unknown_extraction_before_any_job() -> None:
    from splitmix.methods import check_params

    cfg = RunConfig(dataset="digits-mini", split="feature", method="rolex", algorithm="fedrolex",
                    method_params={"extraction": "sliding"})  # fmt: skip
    with pytest.raises(ConfigError, match=r"methods\.rolex\.params\.extraction.*rolling"):
        check_params(cfg)


# ---- client batching (training.client_batching) --------------------------------------------------
def _one_round_float64(cfg: RunConfig, out, budgets: tuple[float, ...], round_idx: int):
    """Round ``round_idx`` of a float64 run: ``(uploads with their blocks by client, clients the
    sequential loop trained)``. As tests/fl/test_batched.py does for HeteroFL, in float64 so that
    the two paths differ only by summation order."""
    from fl.test_batched import digits_federation

    from splitmix.fl.engine import make_generator
    from splitmix.training import training_run

    out.mkdir()
    run = training_run(cfg, out, digits_federation(budgets=budgets))
    alg = run.algorithm
    alg.init_global(make_generator(cfg.seed, "init", torch.device("cpu")))
    alg._set_server(alg.server.double())
    run.augment = lambda x, g: x.double()
    alg._same_function = lambda stand_in, width: True  # its check feeds float32
    for w in alg.widths:
        alg.dense_for(w).model.double()
    uploads, sequential = {}, []
    upload, train_client = alg.upload, run.train_client

    def spy_upload(task, model):
        update = upload(task, model)
        uploads[task.client] = update
        return update

    def spy_train(model, task, client, lr, r):
        sequential.append(task.client)
        return train_client(model, task, client, lr, r)

    alg.upload, run.train_client = spy_upload, spy_train
    run.train_round(round_idx)
    return uploads, sequential


@pytest.mark.parametrize("algorithm", ["fedrolex", "feddropout"])
def test_client_batching_trains_the_windows_as_the_sequential_loop(algorithm, tmp_path) -> None:
    """Round 4 (not validated): wrapped rolling windows (conv1 at x1/8 keeps 60..63, 0..3) or
    random subsets.
    Widths 1/8 (clients 0, 1) and 1/2 (3-5) are batched groups; the lone 1/4 client stays
    sequential. Every upload covers the same blocks and agrees to float64 rounding."""
    from fl.test_batched import digits_config

    budgets = (0.125, 0.125, 0.25, 0.5, 0.5, 0.5)
    runs = {}
    for batching in (False, True):
        cfg = digits_config(batching, algorithm=algorithm, method_params={}, rounds=8)
        runs[batching] = _one_round_float64(cfg, tmp_path / str(batching), budgets, 4)
    (seq, _), (bat, sequential) = runs[False], runs[True]
    assert sequential == [2]
    assert seq.keys() == bat.keys() == set(range(6))
    for client, update in seq.items():
        other = bat[client]
        assert update.blocks.keys() == other.blocks.keys()
        for key, block in update.blocks.items():
            for a, b in zip(block, other.blocks[key], strict=True):
                assert a == b if isinstance(a, slice) else torch.equal(a, b), (client, key)
        diff = max(float((t - other.tensors[k]).abs().max()) for k, t in update.tensors.items())
        assert diff < 1e-9, (client, diff)
    assert isinstance(seq[0].blocks["conv1.weight"][0], torch.Tensor)  # a non-prefix window
