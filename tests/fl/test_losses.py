"""Masked cross-entropy (docs/paper.md#federated-loop, #pitfalls): absent classes' logits are
zeroed, not -inf."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from splitmix.fl.losses import make_loss, masked_cross_entropy, use_masked_loss


def test_masked_ce_hand_computed():
    logits = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.5, -1.0, 2.0, 7.0]])
    y = torch.tensor([0, 2])  # classes 1 and 3 are absent -> their logits become 0
    row0 = math.log(math.e**1 + 1 + math.e**3 + 1) - 1.0
    row1 = math.log(math.e**0.5 + 1 + math.e**2 + 1) - 2.0
    got = masked_cross_entropy(logits, y).item()
    assert abs(got - (row0 + row1) / 2) < 1e-6
    # -inf masking would drop the two "+1" terms of each row: a clearly different number
    inf_masked = (math.log(math.e + math.e**3) - 1 + math.log(math.e**0.5 + math.e**2) - 2) / 2
    assert abs(got - inf_masked) > 0.1


def test_absent_class_logits_get_no_gradient():
    logits = torch.randn(3, 5, requires_grad=True)
    y = torch.tensor([4, 1, 4])
    masked_cross_entropy(logits, y).backward()
    assert torch.all(logits.grad[:, [0, 2, 3]] == 0)
    assert torch.all(logits.grad[:, [1, 4]] != 0)


def test_all_classes_present_equals_plain_ce():
    logits = torch.randn(6, 3)
    y = torch.tensor([0, 1, 2, 2, 1, 0])
    assert torch.allclose(masked_cross_entropy(logits, y), F.cross_entropy(logits, y))


def test_masked_loss_default_follows_split_kind():
    assert use_masked_loss(None, "class") is True
    assert use_masked_loss(None, "iid") is False
    assert use_masked_loss(None, "feature") is False
    assert use_masked_loss(True, "iid") is True
    assert use_masked_loss(False, "class") is False
    assert make_loss(True) is masked_cross_entropy
    assert make_loss(False) is F.cross_entropy
