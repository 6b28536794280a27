"""Client-batched local training (splitmix/fl/batched.py) against the sequential reference loop.

Every comparison trains the same round twice from the same initial state, once per path, and
compares each client's upload (and the round's train loss). Clients have unequal sizes, so some
drop out of the batch early and last batches are short; two local epochs make the clients still
training at one step non-contiguous in the stack (the gather/scatter path).

Float32 and kinks: ReLU and max-pool make the gradient jump where a pre-activation crosses 0 or
two pooled values swap order, and float32 rounding (which differs between a convolution and the
grouped convolution vmap runs) can push a value across. Then the sequential loop's own float32
result is off from its float64 result by far more than 1e-5 (measured: 8e-4 for one x1 client of
37 samples after 3 steps; 1 vs 2 threads also moved another client by 6e-5), and so is either
path from the other. So the SAME MATHEMATICS is shown in float64 (model and inputs), where the two
paths agree to ~1e-15 whatever the data; the float32 comparisons at 1e-5 use federations measured
free of such flips (sequential float32 within 5e-7 of float64 on this machine).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.func import vmap

import splitmix.fl.batched as batched_mod
from splitmix.config import RunConfig
from splitmix.data.clients import Federation
from splitmix.fl.batched import BatchedTraining
from splitmix.fl.checkpoint import load_checkpoint
from splitmix.fl.engine import make_generator
from splitmix.fl.losses import masked_cross_entropy
from splitmix.training import run_training, training_run

from .toy import toy_config, toy_federation

pytestmark = pytest.mark.usefixtures("one_thread")

# batch 16: 40 -> 16,16,8; 24 -> 16,8; 58 -> 16,16,16,10; 21 -> 16,5; 64 -> 4 x 16;
# 37 -> 16,16,5. Two epochs: 6, 4, 8, 4, 8, 6 steps.
SIZES = (40, 24, 58, 21, 64, 37)
X1_SIZES = SIZES[:4]  # one epoch: 3, 2, 4, 2 steps (x1 has ~10x the kinks of x1/8)


def digits_federation(
    sizes: tuple[int, ...] = SIZES, budgets: tuple[float, ...] | None = None
) -> Federation:
    fed = toy_federation(num_clients=len(sizes), n_train=sizes, num_classes=10, shape=(3, 28, 28))
    for client, budget in zip(fed.clients, budgets or (), strict=False):
        client.budget = budget
    return fed


def digits_config(batching: bool, **overrides) -> RunConfig:
    values = {
        "algorithm": "fedavg",
        "method_params": {"width": 0.125},
        "arch": "digit",
        "batch_size": 16,
        "local_epochs": 2,
        "lr": 0.01,
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "masked_loss": True,  # the class-non-IID loss: its mask must work under vmap too
        "rounds": 2,
        "eval_every": 2,  # round 0 trains only
        "client_batching": batching,
    }
    values.update(overrides)
    return toy_config(**values)


def train_one_round(
    cfg: RunConfig,
    out: Path,
    *,
    double: bool = False,
    sizes: tuple[int, ...] = SIZES,
    budgets: tuple[float, ...] | None = None,
):
    """``(uploads by client, the round's log row, clients trained sequentially)``."""
    out.mkdir()
    run = training_run(cfg, out, digits_federation(sizes, budgets))
    alg = run.algorithm
    alg.init_global(make_generator(cfg.seed, "init", torch.device("cpu")))
    if double:  # float64 model and inputs: the paths must agree to rounding of float64
        alg._set_server(alg.server.double())
        run.augment = lambda x, g: x.double()
        if hasattr(alg, "dense_for"):  # HeteroFL's dense stand-ins, built here in float64
            alg._same_function = lambda stand_in, width: True  # its check feeds float32
            for w in alg.widths:
                alg.dense_for(w).model.double()
    uploads: dict[int, dict[str, torch.Tensor]] = {}
    upload = alg.upload

    def spy_upload(task, model):
        update = upload(task, model)
        uploads[task.client] = {k: v.clone() for k, v in update.tensors.items()}
        for k, v in alg.local.get(task.client, {}).items():  # local BN stays client-side
            uploads[task.client][f"local:{k}"] = v.clone()
        return update

    sequential: list[int] = []
    train_client = run.train_client

    def spy_train(model, task, client, lr, r):
        sequential.append(task.client)
        return train_client(model, task, client, lr, r)

    alg.upload = spy_upload
    run.train_client = spy_train
    row = run.train_round(0)
    return uploads, row, sequential


def max_diff(a: dict[int, dict[str, torch.Tensor]], b: dict[int, dict[str, torch.Tensor]]):
    assert a.keys() == b.keys()
    out = {}
    for client in a:
        assert a[client].keys() == b[client].keys()
        out[client] = max(float((a[client][k] - b[client][k]).abs().max()) for k in a[client])
    return out


@pytest.mark.parametrize(
    "width",
    [0.125, pytest.param(1.0, marks=pytest.mark.slow)],
)
def test_every_client_update_equals_the_sequential_one(width, tmp_path):
    """FedAvg x1/8 and x1, momentum and weight decay on: every client's update within 1e-5."""
    params: dict = {"method_params": {"width": width}}
    sizes = SIZES
    if width == 1.0:
        params["local_epochs"] = 1
        sizes = X1_SIZES
    seq, seq_row, seq_clients = train_one_round(
        digits_config(False, **params), tmp_path / "s", sizes=sizes
    )
    bat, bat_row, bat_clients = train_one_round(
        digits_config(True, **params), tmp_path / "b", sizes=sizes
    )
    assert sorted(seq_clients) == list(range(len(sizes)))
    assert bat_clients == []  # every client went through the batch
    diffs = max_diff(seq, bat)
    assert max(diffs.values()) < 1e-5, diffs
    # the clients trained: their updates moved far beyond the tolerance
    fed = digits_federation(sizes)
    init = training_run(digits_config(False, **params), tmp_path / "i", fed)
    init.algorithm.init_global(make_generator(1, "init", torch.device("cpu")))
    start = init.algorithm.server.state_dict()
    for client in seq:
        assert (seq[client]["fc3.weight"] - start["fc3.weight"]).abs().max() > 1e-4
    assert bat_row["train_loss"] == pytest.approx(seq_row["train_loss"], rel=1e-6, abs=1e-6)
    assert math.isfinite(bat_row["train_loss"])


@pytest.mark.parametrize("bn", ["batch", "tracked", "local"])
def test_same_mathematics_in_float64(bn, tmp_path):
    """In float64 the two paths differ only by summation order: the batched step is the same
    maths, including BN running statistics (tracked, local) and a 2-sample last batch."""
    sizes = (40, 24, 50, 21, 64, 37)  # 50 -> 16,16,16,2: the worst-conditioned BN batch
    cfg = {"bn": bn, "lr": 0.05}
    seq, seq_row, _ = train_one_round(
        digits_config(False, **cfg), tmp_path / "s", double=True, sizes=sizes
    )
    bat, bat_row, clients = train_one_round(
        digits_config(True, **cfg), tmp_path / "b", double=True, sizes=sizes
    )
    assert clients == []
    if bn != "batch":
        assert any("running_mean" in k for k in seq[0])
    assert max(max_diff(seq, bat).values()) < 1e-9
    assert bat_row["train_loss"] == pytest.approx(seq_row["train_loss"], rel=1e-12)


def test_heterofl_batches_each_width_and_leaves_single_clients_sequential(tmp_path):
    """Widths 1/8 (clients 0, 1) and 1/2 (clients 3-5) are two groups of different shapes; the
    one width-1/4 client is left to the sequential loop. In float64: in float32 one client's
    update sat at 9.8e-6 from the sequential one (a kink, see the module docstring)."""
    budgets = (0.125, 0.125, 0.25, 0.5, 0.5, 0.5)
    runs = {}
    for batching in (False, True):
        cfg = digits_config(batching, algorithm="heterofl", method_params={}, bn="tracked")
        out = tmp_path / str(batching)
        runs[batching] = train_one_round(cfg, out, double=True, budgets=budgets)
    (seq, _, _), (bat, _, sequential) = runs[False], runs[True]
    assert sequential == [2]
    assert seq[0]["conv1.weight"].dtype == torch.float64
    diffs = max_diff(seq, bat)
    assert max(diffs.values()) < 1e-9, diffs
    assert diffs[2] == 0.0  # the same sequential loop, bit for bit


def test_small_groups_and_the_gather_path_change_nothing(tmp_path, monkeypatch):
    """Groups cut into chunks by the memory bound, and steps whose clients are not contiguous in
    the stack (gathered and scattered back), give the same updates."""
    # x1/8 Digits: 0.86 MiB of parameters, 2.57 MiB with momentum and gradients: chunks of 3
    # clients, by step count (8, 8, 6 and 6, 4, 4 steps); in the first, the client of 40 samples
    # (16, 16, 8) joins the first of 64 (16 x 4) at step 3 while the second's (58) batch is short
    monkeypatch.setattr(batched_mod, "GROUP_BYTES", 9 * 2**20)
    kinds: list[str] = []
    chunk_sizes: list[list[int]] = []
    rows, chunks = batched_mod._rows, batched_mod._chunks

    def spy_rows(slots, device):
        out = rows(slots, device)
        kinds.append("slice" if isinstance(out, slice) else "index")
        return out

    def spy_chunks(members, per_member):
        out = chunks(members, per_member)
        chunk_sizes.append([len(c) for c in out])
        return out

    monkeypatch.setattr(batched_mod, "_rows", spy_rows)
    monkeypatch.setattr(batched_mod, "_chunks", spy_chunks)
    seq, _, _ = train_one_round(digits_config(False), tmp_path / "s")
    bat, _, sequential = train_one_round(digits_config(True), tmp_path / "b")
    assert chunk_sizes == [[3, 3]]
    assert sequential == []
    assert "index" in kinds and "slice" in kinds
    assert max(max_diff(seq, bat).values()) < 1e-5


def test_chunks_keep_clients_of_similar_length_together(monkeypatch):
    monkeypatch.setattr(batched_mod, "GROUP_BYTES", 100)
    members = [batched_mod._Member(i, None, None, steps, [16]) for i, steps in enumerate(
        [2, 8, 4, 8, 2])]  # fmt: skip
    chunks = batched_mod._chunks(members, per_member=40)  # at most 2 per chunk
    assert [[m.index for m in c] for c in chunks] == [[1, 3], [2, 0], [4]]


def test_whole_two_round_run_equals_the_sequential_run(tmp_path):
    """Two rounds (aggregation in between, validation at the end): the final state and the
    logged train losses agree."""
    results = {}
    for batching in (False, True):
        out = tmp_path / str(batching)
        cfg = digits_config(batching, eval_every=1, local_epochs=1)
        run_training(cfg, out, federation=digits_federation(), progress=False)
        ckpt = load_checkpoint(out / "checkpoint.pt")
        results[batching] = (ckpt["algorithm"]["server"], ckpt["log_rows"])
    (s_state, s_log), (b_state, b_log) = results[False], results[True]
    for key in s_state:
        torch.testing.assert_close(b_state[key], s_state[key], atol=1e-5, rtol=0)
    for s_row, b_row in zip(s_log, b_log, strict=True):
        assert b_row["train_loss"] == pytest.approx(s_row["train_loss"], abs=1e-6)
        assert b_row["val_acc@0.125"] == pytest.approx(s_row["val_acc@0.125"], abs=1e-9)


def test_the_option_defaults_to_off_and_leaves_the_hash_alone():
    cfg = toy_config()
    assert cfg.client_batching is False
    assert RunConfig(dataset="d", split="s", method="m", algorithm="a").client_batching is False
    values = cfg.to_dict()
    assert values["client_batching"] is False
    on = toy_config(client_batching=True)
    assert on.config_hash() != cfg.config_hash()  # a batched run does not resume a sequential
    # off hashes as before the field existed (finished results keep their hash)
    import hashlib
    import json

    del values["client_batching"]
    blob = json.dumps(values, sort_keys=True, default=list).encode()
    assert cfg.config_hash() == hashlib.sha256(blob).hexdigest()[:16]


def test_a_step_that_draws_random_numbers_is_refused(tmp_path):
    """A method that declared a plain step but draws from torch's RNG (say, dropout) fails loudly
    instead of silently drawing other numbers than the sequential loop."""
    cfg = digits_config(True)
    run = training_run(cfg, tmp_path, digits_federation())  # writes nothing here
    run.algorithm.init_global(make_generator(1, "init", torch.device("cpu")))

    def noisy_loss(logits, y):
        return F.cross_entropy(logits + 0.01 * torch.randn_like(logits), y)

    tasks = run.algorithm.plan(0, [0, 1], None)
    with pytest.raises(RuntimeError, match="random"):
        BatchedTraining(
            run.algorithm, tasks, run.fed.clients, cfg=cfg, lr=0.1, round_idx=0,
            loss_fn=noisy_loss, augment=None, device=torch.device("cpu"),
        )  # fmt: skip


def test_masked_loss_runs_under_vmap():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 10, generator=g)
    y = torch.randint(0, 4, (3, 5), generator=g)  # classes 4..9 absent: masked
    got = vmap(masked_cross_entropy)(logits, y)
    want = torch.stack([masked_cross_entropy(logits[i], y[i]) for i in range(3)])
    torch.testing.assert_close(got, want)
    # the mask zeroes absent classes' logits (not -inf): differs from plain cross-entropy
    assert not torch.allclose(got[0], F.cross_entropy(logits[0], y[0]))
