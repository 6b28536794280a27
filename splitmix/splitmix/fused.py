"""Fused bases: k same-architecture Split-Mix bases in ONE forward/backward (not in the paper).

A client with budget R trains k = R/atom independent bases on the same batch
(docs/paper.md#split-mix). The reference loop runs k small networks one after another; on a CPU
each of them is too small to keep the cores busy, so most of the time goes to per-op overhead.
Because the bases share nothing, they can be laid side by side as ONE wide network whose every
layer is block-diagonal over the bases:

* ``Conv2d`` -> the k weights stacked along the output dim and a ``groups=k`` convolution; a layer
  that sees the shared model input (the first conv) runs an ordinary wider convolution instead
  (same result as repeating the input k times, k times cheaper);
* ``Linear`` -> one batched matmul over the k weight matrices (``baddbmm``);
* BatchNorm over C channels -> BatchNorm over k*C channels (per-channel statistics are independent,
  so this is exactly k separate BNs, running statistics included);
* everything else (ReLU, max-pool, the train-time Scaler, ``flatten``) is channel-wise or keeps the
  base-major order of the channels, so the base model's own ``forward`` runs unchanged.

Activations are laid out base-major: a tensor of k*C channels holds base 0's C channels, then base
1's, and a flattened (k*C, H, W) map is k blocks of C*H*W features in each base's own flatten order.
The logits come out as (B, k*classes) and are viewed as (B, k, classes).

The mathematics is that of the sequential loop: the same per-base losses, the gradient of each
stacked parameter is the stack of the per-base gradients, and SGD (momentum, weight decay) acts
elementwise, so one step on the stacked tensors equals one step on each base (up to float
summation order, ~1e-7). Only models whose tensors live in Conv2d / Linear / BatchNorm leaves are
supported; anything else is refused rather than silently mis-fused.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from splitmix.errors import ConfigError

#: architectures whose fused training is tested to equal the sequential loop
FUSED_ARCHS = ("digit",)


def check_fusable(arch: str, adv_lam: float) -> None:
    """One-line ConfigError unless fused training is available for this run."""
    if arch not in FUSED_ARCHS:
        raise ConfigError(
            f"method parameter fused=true supports arch {', '.join(FUSED_ARCHS)} only, got "
            f"{arch!r}; set fused: false"
        )
    if adv_lam > 0:
        raise ConfigError(
            f"method parameter fused=true does not support adversarial training (adv.lam="
            f"{adv_lam}); set fused: false"
        )


def _same(mods: Sequence[nn.Module], attrs: tuple[str, ...], name: str) -> None:
    ref = mods[0]
    for m in mods[1:]:
        for a in attrs:
            if getattr(m, a) != getattr(ref, a):
                raise ValueError(f"cannot fuse {name!r}: bases differ in {a}")


def _stack_param(tensors: Sequence[torch.Tensor], dim_cat: bool) -> nn.Parameter:
    data = [t.detach() for t in tensors]
    return nn.Parameter(torch.cat(data) if dim_cat else torch.stack(data))


_CONV_ATTRS = (
    "in_channels",
    "out_channels",
    "kernel_size",
    "stride",
    "padding",
    "dilation",
    "groups",
    "padding_mode",
)


class FusedConv2d(nn.Module):
    """k Conv2d layers as one: weights stacked on the output dim, block-diagonal via ``groups``."""

    def __init__(self, convs: Sequence[nn.Conv2d], name: str = "") -> None:
        super().__init__()
        _same(convs, _CONV_ATTRS, name)
        ref = convs[0]
        if ref.padding_mode != "zeros" or isinstance(ref.padding, str):
            raise ValueError(f"cannot fuse {name!r}: only numeric zero padding is supported")
        self.k = len(convs)
        self.in_channels, self.out_channels, self.groups = (
            ref.in_channels,
            ref.out_channels,
            ref.groups,
        )
        self.stride, self.padding, self.dilation = ref.stride, ref.padding, ref.dilation
        self.weight = _stack_param([c.weight for c in convs], dim_cat=True)
        self.bias = (
            _stack_param([c.bias for c in convs], dim_cat=True) if ref.bias is not None else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        if c == self.k * self.in_channels:
            groups = self.k * self.groups  # each base convolves its own channel block
        elif c == self.in_channels and self.groups == 1:
            groups = 1  # shared input (the model input): one wider conv
        else:
            raise ValueError(
                f"fused conv expects {self.in_channels} (shared) or {self.k * self.in_channels} "
                f"(per-base) input channels, got {c}"
            )
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, groups)

    def base_tensors(self) -> dict[str, list[torch.Tensor]]:
        out = {"weight": list(self.weight.detach().chunk(self.k))}
        if self.bias is not None:
            out["bias"] = list(self.bias.detach().chunk(self.k))
        return out


class FusedLinear(nn.Module):
    """k Linear layers as one batched matmul; input and output features are base-major."""

    def __init__(self, linears: Sequence[nn.Linear], name: str = "") -> None:
        super().__init__()
        _same(linears, ("in_features", "out_features"), name)
        ref = linears[0]
        self.k = len(linears)
        self.in_features, self.out_features = ref.in_features, ref.out_features
        self.weight = _stack_param([m.weight for m in linears], dim_cat=False)  # (k, out, in)
        self.bias = (
            _stack_param([m.bias for m in linears], dim_cat=False) if ref.bias is not None else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, f = x.shape[0], x.shape[1]
        if x.dim() != 2:
            raise ValueError(f"fused linear expects a 2-D input, got shape {tuple(x.shape)}")
        k, fin, fout = self.k, self.in_features, self.out_features
        if f == k * fin:
            # W @ x^T per base, so the weight gradient comes out in the weight's own (k, out, in)
            # layout (x^T W^T would leave a transposed gradient that costs a weight-sized copy).
            xt = x.view(b, k, fin).permute(1, 2, 0)  # (k, in, B)
            if self.bias is None:
                yt = torch.bmm(self.weight, xt)
            else:
                yt = torch.baddbmm(self.bias.unsqueeze(2), self.weight, xt)
            return yt.permute(2, 0, 1).reshape(b, k * fout)  # (k, out, B) -> (B, k*out)
        if f == fin:  # shared input
            bias = None if self.bias is None else self.bias.reshape(k * fout)
            return F.linear(x, self.weight.reshape(k * fout, fin), bias)
        raise ValueError(
            f"fused linear expects {fin} (shared) or {k * fin} (per-base) features, got {f}"
        )

    def base_tensors(self) -> dict[str, list[torch.Tensor]]:
        out = {"weight": list(self.weight.detach().unbind(0))}
        if self.bias is not None:
            out["bias"] = list(self.bias.detach().unbind(0))
        return out


def _fused_bn(bns: Sequence[_BatchNorm], name: str) -> _BatchNorm:
    """One BN of the same class over k*C features holding the k BNs' tensors side by side."""
    _same(bns, ("num_features", "eps", "momentum", "affine", "track_running_stats"), name)
    ref = bns[0]
    if ref.track_running_stats and ref.momentum is None:
        # a cumulative average weights by num_batches_tracked, which may differ between bases
        raise ValueError(f"cannot fuse {name!r}: BatchNorm with momentum=None is not supported")
    fused = type(ref)(
        len(bns) * ref.num_features,
        eps=ref.eps,
        momentum=ref.momentum,
        affine=ref.affine,
        track_running_stats=ref.track_running_stats,
    )
    fused.train(ref.training)
    with torch.no_grad():
        if ref.affine:
            fused.weight.copy_(torch.cat([m.weight for m in bns]))
            fused.bias.copy_(torch.cat([m.bias for m in bns]))
        if ref.track_running_stats:
            fused.running_mean.copy_(torch.cat([m.running_mean for m in bns]))
            fused.running_var.copy_(torch.cat([m.running_var for m in bns]))
            fused.num_batches_tracked.zero_()  # counts the fused steps; added back per base
    return fused


def _bn_base_tensors(bn: _BatchNorm, k: int) -> dict[str, list[torch.Tensor]]:
    out: dict[str, list[torch.Tensor]] = {}
    for key in ("weight", "bias", "running_mean", "running_var"):
        t = getattr(bn, key, None)
        if t is not None:
            out[key] = list(t.detach().chunk(k))
    return out


_LEAF_TYPES = (nn.Conv2d, nn.Linear, _BatchNorm)


def _fuse_leaf(mods: Sequence[nn.Module], name: str) -> nn.Module:
    ref = mods[0]
    if type(ref) is nn.Conv2d:
        return FusedConv2d(mods, name)  # type: ignore[arg-type]
    if type(ref) is nn.Linear:
        return FusedLinear(mods, name)  # type: ignore[arg-type]
    return _fused_bn(mods, name)  # type: ignore[arg-type]


def _has_own_tensors(m: nn.Module) -> bool:
    return bool(list(m.parameters(recurse=False)) or list(m.buffers(recurse=False)))


class FusedBases(nn.Module):
    """k bases of one architecture trained as one wide network; ``forward`` -> (B, k, classes).

    Build it from the bases (their tensors are copied in), train it with any optimizer over its
    parameters, then ``write_back`` the trained tensors into the same bases.
    """

    def __init__(self, bases: Sequence[nn.Module]) -> None:
        super().__init__()
        if not bases:
            raise ValueError("FusedBases needs at least one base")
        self.k = len(bases)
        net = copy.deepcopy(bases[0])
        self._leaves: list[str] = []
        self._base_counts: dict[str, list[torch.Tensor]] = {}
        for name, mod in list(bases[0].named_modules()):
            if not _has_own_tensors(mod):
                continue
            if not name:
                raise ValueError("cannot fuse a model that holds tensors outside its layers")
            if type(mod) not in (nn.Conv2d, nn.Linear) and not isinstance(mod, _BatchNorm):
                raise ValueError(
                    f"cannot fuse layer {name!r} of type {type(mod).__name__}: only Conv2d, Linear "
                    "and BatchNorm layers hold tensors in a fusable model"
                )
            mods = [b.get_submodule(name) for b in bases]
            if any(type(m) is not type(mod) for m in mods):
                raise ValueError(f"cannot fuse {name!r}: the bases' layer types differ")
            fused = _fuse_leaf(mods, name)
            if isinstance(mod, _BatchNorm) and mod.track_running_stats:
                self._base_counts[name] = [m.num_batches_tracked.detach().clone() for m in mods]
            _set_submodule(net, name, fused)
            self._leaves.append(name)
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:
            # oneDNN's grouped convolutions and max-pooling are markedly faster in NHWC on CPU;
            # the layout propagates through conv/BN/ReLU/pool and flatten(1) restores (C, H, W)
            # order, so the values are those of the NCHW computation.
            x = x.contiguous(memory_format=torch.channels_last)
        out = self.net(x)
        b = x.shape[0]
        if out.dim() != 2 or out.shape[0] != b or out.shape[1] % self.k:
            raise ValueError(
                f"fused forward gave shape {tuple(out.shape)}; expected (batch={b}, k*classes) "
                f"with k={self.k} (the model's forward must keep the batch dim and flatten(1))"
            )
        return out.view(b, self.k, out.shape[1] // self.k)

    def base_tensors(self) -> list[dict[str, torch.Tensor]]:
        """Each base's tensors under the base model's own state_dict keys (detached views)."""
        per_base: list[dict[str, torch.Tensor]] = [{} for _ in range(self.k)]
        for name in self._leaves:
            mod = self.net.get_submodule(name)
            if isinstance(mod, FusedConv2d | FusedLinear):
                parts = mod.base_tensors()
            else:
                parts = _bn_base_tensors(mod, self.k)  # type: ignore[arg-type]
                counts = self._base_counts.get(name)
                if counts is not None:
                    parts["num_batches_tracked"] = [c + mod.num_batches_tracked for c in counts]
            for key, values in parts.items():
                for j, v in enumerate(values):
                    per_base[j][f"{name}.{key}"] = v
        return per_base

    @torch.no_grad()
    def write_back(self, bases: Sequence[nn.Module]) -> None:
        """Copy the fused tensors into ``bases`` (the ones it was built from, same order)."""
        if len(bases) != self.k:
            raise ValueError(f"write_back needs {self.k} bases, got {len(bases)}")
        for j, tensors in enumerate(self.base_tensors()):
            state = bases[j].state_dict()
            for key, value in tensors.items():
                state[key].copy_(value)


def _set_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, attr, new)
