"""The engine on a synthetic federation with the toy linear Algorithm (tests/fl/toy.py)."""

from __future__ import annotations

import dataclasses
import json
import math

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from splitmix.errors import ConfigError
from splitmix.fl.checkpoint import load_checkpoint
from splitmix.fl.engine import batch_spans, batches, local_steps
from splitmix.fl.losses import masked_cross_entropy
from splitmix.fl.sampling import sample_clients
from splitmix.methods import resolve_params
from splitmix.training import run_training

from .toy import ToyLinear, toy_config, toy_federation


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """One 6-round run of the toy, shared by the read-only checks below."""
    out = tmp_path_factory.mktemp("straight")
    fed = toy_federation()
    result = run_training(toy_config(), out, federation=fed, progress=False)
    return out, fed, result, ToyLinear.last


def test_lone_leftover_sample_joins_the_previous_batch():
    g = torch.Generator().manual_seed(0)
    got = list(batches(9, 4, local_steps(9, 4, 1), g))
    assert [len(b) for b in got] == [4, 5]  # never a batch of one (BN cannot train on it)
    assert sorted(torch.cat(got).tolist()) == list(range(9))


def test_batches_cover_each_epoch_then_repermute():
    g = torch.Generator().manual_seed(0)
    got = list(batches(10, 4, 7, g))
    assert [len(b) for b in got] == [4, 4, 2, 4, 4, 2, 4]  # drop_last False, restart when empty
    for epoch in (got[0:3], got[3:6]):
        assert sorted(torch.cat(epoch).tolist()) == list(range(10))
    assert torch.cat(got[0:3]).tolist() != torch.cat(got[3:6]).tolist()


def test_n33_b32_is_one_step_of_33_per_epoch():
    assert batch_spans(33, 32) == [(0, 33)]
    assert local_steps(33, 32, 1) == 1  # not ceil(33/32) = 2: that was an extra pass per round
    got = list(batches(33, 32, local_steps(33, 32, 1), torch.Generator().manual_seed(0)))
    assert [len(b) for b in got] == [33]
    assert sorted(got[0].tolist()) == list(range(33))


def test_n65_b32_two_epochs_each_sample_once_per_epoch():
    assert batch_spans(65, 32) == [(0, 32), (32, 65)]
    steps = local_steps(65, 32, 2)
    assert steps == 4
    got = list(batches(65, 32, steps, torch.Generator().manual_seed(0)))
    assert [len(b) for b in got] == [32, 33, 32, 33]
    for epoch in (got[0:2], got[2:4]):
        assert sorted(torch.cat(epoch).tolist()) == list(range(65))


@pytest.mark.parametrize("b", [2, 3, 8, 32])
def test_local_steps_is_what_batches_yields(b):
    """For every size: the step count is the number of batches, every sample is used exactly once
    per epoch, and no batch has one sample."""
    for n in range(2, 3 * b + 3):
        for epochs in (1, 2):
            steps = local_steps(n, b, epochs)
            got = list(batches(n, b, steps, torch.Generator().manual_seed(n)))
            assert len(got) == steps
            assert min(len(x) for x in got) >= 2, (n, b)
            per_epoch = steps // epochs
            for e in range(epochs):
                epoch = torch.cat(got[e * per_epoch : (e + 1) * per_epoch])
                assert sorted(epoch.tolist()) == list(range(n)), (n, b, e)


def test_local_steps_formula():
    assert local_steps(37, 8, 1) == 5
    assert local_steps(40, 8, 3) == 15
    assert local_steps(41, 8, 3) == 15  # 41 = 4*8 + 9: the lone 41st sample joins batch 5
    assert local_steps(1, 32, 2) == 2


def test_step_count_per_client_round(tmp_path):
    fed = toy_federation()  # 37, 20, 50, 9 training samples, batch 8
    run_training(toy_config(rounds=2, local_epochs=2), tmp_path, federation=fed, progress=False)
    steps = ToyLinear.last.steps
    per_epoch = {37: 5, 20: 3, 50: 7, 9: 1}  # 9 = 8 + a lone sample: one batch of 9
    expected = {(r, c.index): per_epoch[len(c.train_y)] * 2 for r in range(2) for c in fed.clients}
    assert dict(steps) == expected


@pytest.mark.parametrize("n", [0, 1])
def test_client_with_fewer_than_two_samples_is_a_config_error(tmp_path, n):
    fed = toy_federation(n_train=(37, 20, n))
    with pytest.raises(ConfigError) as err:
        run_training(toy_config(), tmp_path / "out", federation=fed, progress=False)
    msg = str(err.value)
    assert "\n" not in msg
    assert f"client toy-2 (index 2) has {n} training sample(s)" in msg
    assert "fewer clients" in msg and "percent" in msg and "val_ratio" in msg
    assert not (tmp_path / "out").exists()  # nothing written


def test_fresh_optimizer_every_client_round(straight):
    _, fed, _, toy = straight
    # one check per client per round; each says the first step was plain SGD (no momentum)
    assert len(toy.first_step_plain) == 6 * len(fed.clients)
    assert all(toy.first_step_plain)


def test_training_learns(straight):
    out, _, _, _ = straight
    log = pd.read_csv(out / "log.csv")
    assert log["val_acc@1"].iloc[-1] >= 0.8  # 4 classes, chance 0.25
    assert log["train_loss"].iloc[-1] < log["train_loss"].iloc[0]


def _val_by_hand(state, fed, keep_frac, loss_fn, spans):
    """Mean over clients of val accuracy/loss of the toy's width-``keep_frac`` model, the loss
    taken batch by batch over ``spans`` (``(start, end)`` per batch, written out by the caller)."""
    dim = state["weight"].shape[1]
    keep = math.ceil(keep_frac * dim)
    accs, losses = [], []
    for c in fed.clients:
        x = c.val_x.float().div(255).flatten(1)
        x[:, keep:] = 0
        logits = x @ state["weight"].T + state["bias"]
        accs.append((logits.argmax(1) == c.val_y).float().mean().item())
        parts = [loss_fn(logits[i:j], c.val_y[i:j]).item() * (j - i) for i, j in spans]
        assert sum(j - i for i, j in spans) == len(c.val_y)
        losses.append(sum(parts) / len(c.val_y))
    return sum(accs) / len(accs), sum(losses) / len(losses)


@pytest.mark.parametrize("masked", [False, True])
def test_validation_every_client_and_width(tmp_path, masked):
    fed = toy_federation()  # 16 val samples per client
    cfg = toy_config(rounds=3, masked_loss=masked, test_batch_size=5)  # batch_size 8
    run_training(cfg, tmp_path, federation=fed, progress=False)
    state = load_checkpoint(tmp_path / "checkpoint.pt")["algorithm"]
    last = pd.read_csv(tmp_path / "log.csv").iloc[-1]
    loss_fn = masked_cross_entropy if masked else F.cross_entropy
    for width in (0.25, 1.0):
        acc, loss = _val_by_hand(state, fed, width, loss_fn, [(0, 8), (8, 16)])
        key = f"{width:g}"
        assert last[f"val_acc@{key}"] == pytest.approx(acc, abs=1e-9)
        assert last[f"val_loss@{key}"] == pytest.approx(loss, rel=1e-5)
    assert last["metric"] == last["val_acc@1"]  # no AT: metric = widest width's accuracy
    assert last["val_acc@0.25"] != last["val_acc@1"]


@pytest.mark.parametrize(
    ("val_batch_size", "n_val", "spans"),
    [
        (None, 17, [(0, 8), (8, 17)]),  # training batch size 8; the lone 17th joins batch 2
        (6, 16, [(0, 6), (6, 12), (12, 16)]),
    ],
)
def test_validation_uses_the_validation_batch_size(tmp_path, val_batch_size, n_val, spans):
    """The masked loss depends on which samples share a batch, so the logged loss tells the
    batches validation used: the training batch size by default (the original validates with its
    training loader), ``val_batch_size`` when set, never ``test_batch_size``."""
    fed = toy_federation(n_val=n_val)
    cfg = toy_config(rounds=1, masked_loss=True, val_batch_size=val_batch_size)
    assert cfg.val_batch == (val_batch_size or cfg.batch_size)
    run_training(cfg, tmp_path, federation=fed, progress=False)
    state = load_checkpoint(tmp_path / "checkpoint.pt")["algorithm"]
    logged = pd.read_csv(tmp_path / "log.csv").iloc[-1]["val_loss@1"]
    _, loss = _val_by_hand(state, fed, 1.0, masked_cross_entropy, spans)
    assert logged == pytest.approx(loss, rel=1e-5)
    test_spans = [(0, 16), (16, n_val)] if n_val > 16 else [(0, 16)]  # test_batch_size 16
    _, other = _val_by_hand(state, fed, 1.0, masked_cross_entropy, test_spans)
    assert logged != pytest.approx(other, rel=1e-5)


def test_log_columns_and_eval_every(tmp_path):
    fed = toy_federation()
    run_training(toy_config(rounds=7, eval_every=3), tmp_path, federation=fed, progress=False)
    log = pd.read_csv(tmp_path / "log.csv")
    assert list(log.columns) == [
        "round", "lr", "seconds", "train_loss", "bytes_up", "bytes_down", "n_clients",
        "val_acc@0.25", "val_acc@1", "val_loss@0.25", "val_loss@1", "metric",
    ]  # fmt: skip
    assert log["round"].tolist() == list(range(7))
    evaluated = log["metric"].notna().tolist()
    assert evaluated == [False, False, True, False, False, True, True]  # every 3rd and the last
    assert log["lr"].tolist() == pytest.approx(
        [0.1 * (1 + math.cos(math.pi * t / 7)) / 2 for t in range(7)]
    )


def test_best_checkpoint_is_argmax_round(straight):
    out, _, result, _ = straight
    log = pd.read_csv(out / "log.csv")
    best = load_checkpoint(out / "best.pt")
    assert best["round"] == int(log["metric"].idxmax()) == result["best_round"]
    assert best["metric"] == pytest.approx(log["metric"].max())
    # best.pt holds the model of that round: its val accuracy recomputed equals the logged one
    fed = toy_federation()
    acc, _ = _val_by_hand(best["algorithm"], fed, 1.0, F.cross_entropy, [(0, 16)])
    assert acc == pytest.approx(log["val_acc@1"].iloc[best["round"]])


def test_comm_bytes_are_the_exchanged_tensors(straight):
    out, fed, _, toy = straight
    comm = pd.read_csv(out / "comm.csv")
    assert len(comm) == 6 * len(fed.clients)
    for row in comm.itertuples():
        assert row.bytes_up == toy.upload_bytes[(row.round, row.client)]
    k, d = fed.num_classes, 3 * 4 * 4
    assert (comm["bytes_down"] == (k * d + k) * 4).all()  # the downloaded linear layer's state
    log = pd.read_csv(out / "log.csv")
    per_round = comm.groupby("round")[["bytes_up", "bytes_down"]].sum()
    assert log["bytes_up"].tolist() == per_round["bytes_up"].tolist()
    assert log["bytes_down"].tolist() == per_round["bytes_down"].tolist()


def test_partial_participation(tmp_path):
    fed = toy_federation(num_clients=6)
    cfg = toy_config(rounds=4, participation=2, seed=3)
    run_training(cfg, tmp_path, federation=fed, progress=False)
    comm = pd.read_csv(tmp_path / "comm.csv")
    for r in range(4):
        assert comm[comm["round"] == r]["client"].tolist() == sample_clients(3, r, 6, 2)
    assert (pd.read_csv(tmp_path / "log.csv")["n_clients"] == 2).all()
    # validation still covers every client: recompute from the final state
    state = load_checkpoint(tmp_path / "checkpoint.pt")["algorithm"]
    acc, _ = _val_by_hand(state, fed, 1.0, F.cross_entropy, [(0, 16)])
    assert pd.read_csv(tmp_path / "log.csv")["val_acc@1"].iloc[-1] == pytest.approx(acc)


def test_run_record(straight):
    out, fed, result, _ = straight
    rec = json.loads((out / "run.json").read_text())
    cfg = toy_config()  # resolved: the engine records (and hashes) the resolved params
    assert rec["config_hash"] == cfg.config_hash() == result["config_hash"]
    given = dataclasses.replace(cfg, method_params={})  # as given, without the defaults
    assert given.config_hash() != cfg.config_hash()
    assert resolve_params(given).config_hash() == cfg.config_hash()
    assert rec["config"]["algorithm"] == "toy-linear"
    assert set(rec["versions"]) == {"python", "torch", "numpy", "splitmix"}
    # describe()'s facts, and the capabilities the report reads instead of the method's name
    assert rec["algorithm"] == {"toy": True, "one_run_per_width": False}
    # the method's declared defaults are recorded though the config sets none of them
    assert rec["config"]["method_params"] == {"noise": 0.05, "widths": [0.25, 1.0]}
    assert rec["best_round"] == result["best_round"]
    assert rec["federation"]["num_clients"] == len(fed.clients)
    assert rec["federation"]["n_train"] == sum(len(c.train_y) for c in fed.clients)
    assert rec["wall_time_s"] > 0


def test_validation_assembles_once_per_width_when_bn_is_shared(tmp_path):
    """Without local BN every client's model of a width is the same (the assemble contract),
    so validation builds and converts it once per width and validates every client on it."""
    fed = toy_federation(num_clients=3)
    run_training(toy_config(rounds=2, eval_every=2), tmp_path, federation=fed, progress=False)
    calls = ToyLinear.last.assembled
    assert sorted(calls) == sorted((w, None, None) for w in (0.25, 1.0))


def test_validation_calls_assemble_for_every_client_with_local_bn(tmp_path):
    fed = toy_federation(num_clients=3)
    cfg = toy_config(rounds=2, eval_every=2, bn="local")
    run_training(cfg, tmp_path, federation=fed, progress=False)
    calls = ToyLinear.last.assembled
    assert sorted(calls) == sorted((w, None, k) for w in (0.25, 1.0) for k in range(3))


def test_adversarial_validation_mixes_sa_and_ra(tmp_path):
    fed = toy_federation(num_clients=3)
    cfg = toy_config(rounds=2, adv={"lam": 0.25, "eps": 0.3, "steps": 3, "step_size": 0.15})
    run_training(cfg, tmp_path, federation=fed, progress=False)
    log = pd.read_csv(tmp_path / "log.csv")
    assert {"val_ra@0.25", "val_ra@1"} <= set(log.columns)
    last = log.iloc[-1]
    # the metric is linear in SA and RA, so the mean over clients mixes the column means
    assert last["metric"] == pytest.approx(0.75 * last["val_acc@1"] + 0.25 * last["val_ra@1"])
    assert last["val_ra@1"] < last["val_acc@1"]  # a 0.3-ball PGD hurts a linear model
    lams = {lam for _, lam, _ in ToyLinear.last.assembled}
    assert lams == {0.0, 1.0}  # SA on the clean path, RA on the noise path
