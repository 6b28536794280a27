"""Split-Mix ensemble of bases (docs/paper.md#split-mix): logit mean, width -> bases,
independence."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from splitmix.errors import ConfigError
from splitmix.models import (
    DigitModel,
    DualBatchNorm,
    count_params,
    set_bn_mode,
)
from splitmix.splitmix import Ensemble, bases_for_width, build_ensemble


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: these tests check maths, and 2 OpenMP threads on a shared 2-core
    machine spin against other processes and run 10x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _x(n: int = 4) -> torch.Tensor:
    return torch.rand(n, 3, 28, 28, generator=torch.Generator().manual_seed(0))


def test_ensemble_output_is_mean_of_base_logits():
    ens = build_ensemble("digit", atom=0.125, seed=0).eval()
    x = _x()
    logits = [b(x) for b in ens.bases]
    assert len(logits) == 8
    torch.testing.assert_close(ens(x), torch.stack(logits).mean(0))
    torch.testing.assert_close(ens(x, [5, 2]), (logits[5] + logits[2]) / 2)
    assert torch.equal(ens(x, [3]), logits[3])
    ens.set_width(0.5)
    assert ens.num_active == 4 and ens.width == 0.5
    torch.testing.assert_close(ens(x), sum(logits[:4]) / 4)
    assert not torch.allclose(logits[0], logits[1])  # bases are independently initialised


def test_ensemble_bases_are_configured_split_mix_bases():
    ens = build_ensemble("digit", atom=0.25, max_width=1.0, seed=1)
    assert len(ens.bases) == 4 and ens.atom == 0.25
    for base in ens.bases:
        assert isinstance(base, DigitModel) and base.width == 0.25
        assert base.rescale_init and base.rescale_layer
    keys = list(ens.state_dict())
    assert keys[0].startswith("bases.0.") and any(k.startswith("bases.3.fc3") for k in keys)
    per_base = count_params(ens.bases[0])
    assert count_params(ens) == 4 * per_base
    assert count_params(ens.select(range(2))) == 2 * per_base
    assert count_params(ens.select(range(3))) == 3 * per_base
    assert ens.select([1]).bases[0] is ens.bases[1]  # shared module, no copy
    plain = build_ensemble("digit", atom=0.5, rescale_init=False, rescale_layer=False)
    assert not any(b.rescale_layer for b in plain.bases)


def test_only_selected_bases_receive_gradients():
    ens = build_ensemble("digit", atom=0.25, seed=2).train()
    nn.functional.cross_entropy(ens(_x(8), [2]), torch.arange(8) % 10).backward()
    for i, base in enumerate(ens.bases):
        has_grad = [p.grad is not None and p.grad.abs().sum() > 0 for p in base.parameters()]
        assert all(has_grad) if i == 2 else not any(has_grad)


def test_dual_bn_mode_reaches_every_base():
    ens = build_ensemble("digit", atom=0.5, norm="dual", rescale_init=False, rescale_layer=False)
    assert set_bn_mode(ens, 0.3) == 2 * 5
    assert all(m.mode == 0.3 for m in ens.modules() if isinstance(m, DualBatchNorm))


def test_width_to_bases_and_errors():
    assert bases_for_width(0.375, 0.125) == 3
    assert bases_for_width(0.3, 0.1) == 3  # 0.3 / 0.1 = 2.9999999999999996 in floats
    with pytest.raises(ConfigError, match="not a positive multiple"):
        bases_for_width(0.3, 0.125)
    ens = Ensemble(nn.ModuleList([DigitModel(0.125), DigitModel(0.125)]))
    assert ens.atom == 0.125
    with pytest.raises(ConfigError, match="needs 4 bases"):
        ens.set_width(0.5)
