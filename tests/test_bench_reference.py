"""benchmarks/bench_reference.py: its rows are the issue's configuration, and its floor (the bare
PyTorch loop the engine's time is held against) does the engine's mathematics, step for step."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

from splitmix.data.budgets import assign_budgets

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))  # the scripts import their shared module as ``_common``

import bench_reference as br  # noqa: E402
from _common import synthetic_digits  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(key: str, root: Path, rounds: int = 2):
    row = next(r for r in br.ROWS if r.key == key)
    return br.row_config(row, root=str(root), rounds=rounds, threads=1, device="cpu")


def _tiny(cfg):
    """Four Digits-shaped clients (2 batches each: 32 + a short one), one per budget of 8-4-2-1
    (the real split's 6 clients repeat two of them)."""
    fed = synthetic_digits(4, n_train=40, n_val=10)
    budgets = assign_budgets(cfg.budgets, len(fed.clients), mode="index", seed=cfg.seed)
    for c, b in zip(fed.clients, budgets, strict=True):
        c.budget = float(b)
    return fed


def test_rows_are_the_issue_configuration(tmp_path):
    for row in br.ROWS:
        cfg = _cfg(row.key, tmp_path, rounds=3)
        sc = cfg.split_config
        assert (sc.kind, sc.clients_per_domain, sc.percent, sc.domains) == (
            "feature",
            2,
            0.3,
            ("mnist", "usps", "mnistm"),
        )
        assert (cfg.dataset, cfg.batch_size, cfg.local_epochs, cfg.lr_schedule) == (
            "digits",
            32,
            1,
            "cos",
        )
        assert (cfg.budgets, cfg.rounds, cfg.eval_every, cfg.device) == ("8-4-2-1", 3, 1, "cpu")
        assert cfg.bn == ("tracked" if row.key == "splitmix-at" else "batch")
        assert (cfg.adv.lam > 0) == (row.key == "splitmix-at")
    at = _cfg("splitmix-at", tmp_path)
    assert at.adv.lam == 0.5 and at.adv.steps == 7
    assert at.adv.eps == pytest.approx(8 / 255) and at.adv.step_size == pytest.approx(10 / 255 / 7)
    params = at.method_params  # (resolved configs also carry the method's other defaults)
    assert (params["atom"], params["rescale_init"], params["rescale_layer"]) == (
        0.125,
        False,
        False,
    )
    assert _cfg("splitmix", tmp_path).lr == 0.01  # the paper's Split-Mix lr on digits
    assert _cfg("splitmix-fused", tmp_path).method_params["fused"] is True
    assert _cfg("fedavg-x0.125", tmp_path).method_params["width"] == 0.125


# full-width models and PGD make these rows cost 10-30 s each on a shared 2-core machine
SLOW_ROWS = ("sheterofl", "fedavg-x1", "splitmix-at")


@pytest.mark.parametrize(
    "key",
    [pytest.param(k, marks=pytest.mark.slow) if k in SLOW_ROWS else k for k in br.ROW_KEYS],
)
def test_floor_takes_the_engines_steps(key, tmp_path):
    """Same round-0 training loss (every step's loss, summed over bases / widths, averaged over
    steps) and the same server state after two rounds: the floor times the same arithmetic."""
    cfg = _cfg(key, tmp_path)
    fed = _tiny(cfg)
    rounds, state, loss0 = br.engine_run(cfg, fed)
    assert len(rounds) == 2 and all(t > 0 and v > 0 for t, v in rounds)
    floor = br.make_floor(cfg, fed)
    timed = floor.run(cfg.rounds)
    assert len(timed) == 2 and all(t > 0 and v > 0 for t, v in timed)
    assert math.isfinite(loss0) and loss0 > 0
    assert floor.train_losses[0] == pytest.approx(loss0, rel=1e-5)
    # where the floor runs the engine's kernels the states agree to the last bit; fused training
    # (its channels-last pass is off by up to ~1e-3 relative on some gradients, measured) and
    # SHeteroFL (views of the full model vs contiguous sub-tensors) sum in another order
    tol = {"splitmix-fused": 2e-3, "sheterofl": 1e-4}.get(key, 1e-6)
    assert br.max_state_diff(state, floor.server_state()) < tol
    assert set(floor.val_acc) == set(floor.widths)


def test_prefix_model_holds_only_the_budget_blocks(tmp_path):
    """A SHeteroFL client's sub-model is its budget's size, and at every width <= budget it
    computes what the full slimmable model computes there."""
    import torch

    cfg = _cfg("sheterofl", tmp_path)
    floor = br.make_floor(cfg, _tiny(cfg))
    full = floor.server
    sub, blocks = br.prefix_model(full, 0.5)
    assert sub.conv1.weight.shape[0] == 32 and sub.fc1.weight.shape == (1024, 64 * 49)
    x = torch.rand(5, 3, 28, 28, generator=torch.Generator().manual_seed(0))
    for w in (0.125, 0.25, 0.5):
        for train in (True, False):
            full.set_width(w).train(train)
            sub.set_width(w).train(train)
            torch.testing.assert_close(sub(x), full(x), rtol=1e-5, atol=1e-6)


def test_verdict_is_3x_or_within_1_1x_of_the_floor():
    assert br.column_ok(original=3.0, ours=1.0, floor=0.1)  # 3x faster
    assert br.column_ok(original=3.0, ours=1.5, floor=1.4)  # bound by the arithmetic
    assert br.column_ok(original=3.0, ours=1.5, floor=2.0)  # below the floor (batching)
    assert not br.column_ok(original=3.0, ours=1.6, floor=1.4)
    res = br.Result(br.ROWS[0], None, ours=(1.6, 0.1), floor=(1.4, 0.1), diff=0.0, val_acc=0.5)
    assert br.table([res]).splitlines()[-1].endswith("| MISSES (train) |")


def test_missing_data_names_the_command(tmp_path):
    with pytest.raises(SystemExit) as exc:
        br.ensure_data(str(tmp_path), "/mirror", prepare=False)
    msg = str(exc.value)
    assert "digits/mnist,usps,mnistm not prepared" in msg
    assert "--source raw --mirror /mirror --offline --root " + str(tmp_path) in msg
    assert "\n" not in msg


def test_cuda_is_skipped_with_a_message_where_there_is_none(capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert br.main(["--device", "cuda", "--root", "/nonexistent"]) == 0
    assert capsys.readouterr().out.startswith("skipped: --device cuda but no CUDA device")
