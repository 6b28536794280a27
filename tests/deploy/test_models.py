"""Deployed models from the mathematics: Split-Mix's width-r model is the logit mean of its first
r/atom bases, a slimmable method's is its prefix cut, and what a server stores to serve every
width is counted by hand, tensor by tensor, for a small model of each method."""

from __future__ import annotations

import io
import math

import pytest
import torch
from fl.test_baselines import make

from splitmix.deploy.export import tolerance
from splitmix.models import build_model, prefix_blocks
from splitmix.models.files import runner, to_bytes
from splitmix.models.serving import freeze_batch_norm, uses_batch_statistics

pytestmark = pytest.mark.usefixtures("one_thread")
FORMATS = ["torchscript", pytest.param("onnx", marks=pytest.mark.slow)]
F32 = 4  # bytes per float32 element


def _images(n: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.rand((n, 3, 28, 28), generator=torch.Generator().manual_seed(seed))


def _exported(model: torch.nn.Module, x: torch.Tensor, fmt: str):
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
    return runner(to_bytes(model, x, fmt), fmt, torch.device("cpu"))


# ---- Split-Mix: the width-r model is the mean of the first r/atom bases' logits ------------------
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("bn", ["batch", "tracked"])
def test_splitmix_export_at_a_quarter_is_the_mean_of_its_first_two_bases(fmt, bn):
    alg = make("splitmix", bn=bn, atom=0.125)
    x = _images()
    bases = [alg.server.bases[i].eval() for i in (0, 1)]
    with torch.no_grad():
        expected = (bases[0](x) + bases[1](x)) / 2
    deployed = alg.deploy(0.25)
    assert sum(p.numel() for p in deployed.parameters()) == 2 * sum(
        p.numel() for p in bases[0].parameters()
    )  # only the two bases travel with the model
    run = _exported(alg.inference_model(deployed), x, fmt)  # the fused form, as exported
    got = torch.from_numpy(run(x))
    assert (got - expected).abs().max() <= tolerance(expected)
    assert not torch.allclose(bases[0](x), bases[1](x))  # the mean is not a single base


def test_splitmix_offers_every_multiple_of_its_atom():
    alg = make("splitmix", atom=0.125)
    assert alg.deploy_widths() == [k / 8 for k in range(1, 9)]
    x = _images()
    model = alg.deploy(0.375)  # not a budget width: the first three bases
    with torch.no_grad():
        expected = sum(alg.server.bases[i].eval()(x) for i in range(3)) / 3
        assert torch.allclose(model(x), expected, atol=1e-6)


# ---- HeteroFL: the width-r model is the prefix cut of the slimmable model ---------------------
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("method", ["heterofl", "sheterofl", "fjord", "fedrolex"])
def test_a_slimmable_export_at_a_half_is_the_prefix_cut(fmt, method):
    alg = make(method)
    x = _images()
    slim = alg.server
    slim.set_width(0.5)
    slim.eval()
    with torch.no_grad():
        expected = slim(x)
    deployed = alg.deploy(0.5)
    # the deployed model holds exactly the prefix blocks, value for value
    state = slim.state_dict()
    blocks = prefix_blocks(slim, 0.5)
    held = sorted(t.numel() for t in deployed.state_dict().values())
    assert held == sorted(state[k][b].numel() for k, b in blocks.items())
    w = deployed.state_dict()["conv2.weight"]
    assert torch.equal(w, state["conv2.weight"][blocks["conv2.weight"]])
    got = torch.from_numpy(_exported(alg.inference_model(deployed), x, fmt)(x))
    assert (got - expected).abs().max() <= tolerance(expected)


# ---- storage to serve every width, by hand -----------------------------------------------------
def digit_numel(w: float, tracked: bool = False) -> int:
    """Entries of a dense DigitModel of width ``w`` (``int(w * c)`` channels), by layer."""
    c1, c2, c3, f1, f2 = (int(w * c) for c in (64, 64, 128, 2048, 512))

    def bn(c: int) -> int:
        return 2 * c + (2 * c if tracked else 0)

    return (
        (3 * c1 * 25 + c1) + bn(c1) + (c1 * c2 * 25 + c2) + bn(c2) + (c2 * c3 * 25 + c3) + bn(c3)
        + (c3 * 49 * f1 + f1) + bn(f1) + (f1 * f2 + f2) + bn(f2) + (f2 * 10 + 10)
    )  # fmt: skip


def bn_counters(tracked: bool) -> int:
    """Bytes of the five ``num_batches_tracked`` counters (int64) of a tracked DigitModel."""
    return 5 * 8 if tracked else 0


def test_hand_count_matches_the_model():
    for w in (0.125, 0.5, 1.0):
        for tracked in (False, True):
            model = build_model("digit", width=w, norm="tracked" if tracked else "batch")
            numel = sum(t.numel() for k, t in model.state_dict().items() if "num_batches" not in k)
            assert numel == digit_numel(w, tracked)


@pytest.mark.parametrize("bn", ["batch", "tracked"])
def test_fedavg_stores_its_one_model(bn):
    alg = make("fedavg", bn=bn, width=0.25)
    assert alg.storage_nbytes(alg.deploy_widths()) == F32 * digit_numel(
        0.25, bn == "tracked"
    ) + bn_counters(bn == "tracked")


@pytest.mark.parametrize("bn", ["batch", "tracked"])
def test_splitmix_stores_each_base_once(bn):
    alg = make("splitmix", bn=bn, atom=0.125)
    base = F32 * digit_numel(0.125, bn == "tracked") + bn_counters(bn == "tracked")
    assert alg.storage_nbytes(alg.deploy_widths()) == 8 * base  # eight bases, each once
    assert alg.storage_nbytes([0.125]) == base  # the smallest model is the first base
    assert alg.storage_nbytes([0.25, 0.5]) == 4 * base  # the first two are inside the first four


@pytest.mark.parametrize("method", ["heterofl", "sheterofl", "fjord", "fedrolex"])
def test_a_nested_method_stores_its_widest_model(method):
    alg = make(method)
    # batch-statistics BN: the slimmable model's tensors are the full model's (BN affine only)
    assert alg.storage_nbytes(alg.deploy_widths()) == F32 * digit_numel(1.0)
    assert alg.storage_nbytes([0.125, 0.5]) == F32 * digit_numel(0.5)  # the 1/8 prefix inside


def test_a_nested_method_with_tracked_bn_also_stores_every_width_private_bn():
    alg = make("heterofl", bn="tracked")
    weights = digit_numel(1.0) - 2 * sum(int(c) for c in (64, 64, 128, 2048, 512))  # no BN
    private = sum(
        4 * math.ceil(w * c) for w in (0.125, 0.25, 0.5, 1.0) for c in (64, 64, 128, 2048, 512)
    )  # affine + running statistics of each width's own BN
    counters = 4 * 5 * 8  # one int64 counter per BN layer and width
    assert alg.storage_nbytes(alg.deploy_widths()) == F32 * (weights + private) + counters


def _sep_conv(cin: int, cout: int) -> int:
    """DepthFL's SepConv: depthwise 3x3, pointwise, BN, depthwise 3x3, pointwise, BN."""
    return cin * 9 + cin * cin + 2 * cin + cin * 9 + cin * cout + 2 * cout


def test_depthfl_stores_its_deepest_model():
    alg = make("depthfl")
    exits = [_sep_conv(64, 128) + 128 * 10 + 10, _sep_conv(64, 128) + 128 * 10 + 10,
             _sep_conv(128, 128) + 128 * 10 + 10]  # fmt: skip
    assert alg.storage_nbytes(alg.deploy_widths()) == F32 * (digit_numel(1.0) + sum(exits))
    # depth 1 (width label 1/8): conv1 + bn1 and the first exit
    assert alg.storage_nbytes([0.125]) == F32 * (3 * 64 * 25 + 64 + 2 * 64 + exits[0])


# ---- batch normalisation of a deployed model -----------------------------------------------------
def test_a_batch_statistics_model_gives_every_single_image_the_same_logits():
    """What docs/deploy.md warns of: one image through BatchNorm1d has variance 0."""
    model = build_model("digit", width=0.125, norm="batch").eval()
    x = _images(4)
    run = _exported(model, x, "torchscript")
    singles = torch.cat([torch.from_numpy(run(x[i : i + 1])) for i in range(4)])
    assert (singles - singles[0]).abs().max() < 1e-5  # float noise, whatever the image
    batch = torch.from_numpy(run(x))
    assert (batch - batch[0]).abs().max() > 1e-3  # in a batch the images differ


def test_frozen_statistics_are_the_calibration_images_statistics_in_an_eval_network():
    model = build_model("digit", width=0.125, norm="batch", rescale_layer=True).eval()
    batches = [_images(8, seed=s) for s in range(3)]
    frozen, seen = freeze_batch_norm(model, batches)
    assert seen == 24 and not uses_batch_statistics(frozen)
    with torch.no_grad():
        # the Scaler (/width in training) stays off: bn1 saw the eval-mode conv1 outputs
        acts = torch.cat([frozen.conv1(b) for b in batches])
        assert torch.allclose(frozen.bn1.running_mean, acts.mean((0, 2, 3)), atol=1e-5)
        # every image is computed on its own now
        x = _images(5, seed=9)
        whole = frozen(x)
        for i in range(5):
            assert torch.allclose(frozen(x[i : i + 1])[0], whole[i], atol=1e-5)


def test_a_frozen_model_exports_and_serves_single_images():
    model = build_model("digit", width=0.125, norm="batch").eval()
    frozen, _ = freeze_batch_norm(model, [_images(16)])
    x = _images(4, seed=3)
    data = to_bytes(frozen, x, "torchscript")
    loaded = torch.jit.load(io.BytesIO(data))
    with torch.no_grad():
        for i in range(4):
            assert torch.allclose(loaded(x[i : i + 1]), frozen(x[i : i + 1]), atol=1e-6)
