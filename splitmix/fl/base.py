"""Shared machinery of methods whose server holds one ``nn.Module`` (or a ModuleList of bases).

What a subclass writes: ``build_model()`` (a fresh, randomly initialised global model), ``plan``,
``train_step``, ``eval_widths``, ``assemble`` and, when a client exchanges only part of the state,
``exchange_blocks(task)``. Everything else lives here:

* one server module ``self.server`` and ONE persistent "running" module the clients train in turn
  (``download`` copies tensors into it, nothing is deep-copied per client,
  docs/paper.md#federated-loop);
* local tensors (``cfg.bn == 'local'``, FedBN): the keys ``models.local_state_keys`` selects by
  layer type are never uploaded and never averaged; each client's copy is kept here (client-side
  in a real deployment), loaded on ``download`` and ``assemble``; a client that never trained
  starts from the server's initial values of those tensors;
* aggregation streams: ``begin_aggregate`` opens a ``MaskedAverage`` over
  ``self.server.state_dict()``, ``accumulate`` folds each upload in as it arrives (a subclass
  re-weights by overriding it), ``end_aggregate`` writes the means (docs/paper.md#pitfalls);
* byte accounting of both directions from the tensors actually exchanged
  (``download_bytes``, which the engine asks for; ``Update.nbytes`` for the upload);
* ``state_dict``/``load_state_dict`` = ``{server, local, extra}`` for an exact resume.

A block (``splitmix.fl.blocks``) names part of a server tensor: per dimension a slice (HeteroFL's
prefix) or a set of indices (a wrapping window, a random subset). The running module may be the
full model (blocks are then taken from its tensors) or a smaller model whose tensors have exactly
the block's shape; ``_copy_in``/``_take`` handle both.
"""

from __future__ import annotations

import copy
from abc import abstractmethod
from typing import Any

import torch
from torch import nn

from splitmix.fl import blocks
from splitmix.fl.aggregate import MaskedAverage
from splitmix.fl.algorithm import Algorithm, Task, Update
from splitmix.fl.blocks import Block
from splitmix.models import local_state_keys


def _copy_in(dst: torch.Tensor, src: torch.Tensor, block: Block | None) -> None:
    """Write ``src[block]`` into ``dst`` (the whole of ``dst`` if it has the block's shape, else
    the same block of ``dst``, a full-size tensor)."""
    part = blocks.read(src, block)
    if dst.shape == part.shape:
        dst.copy_(part)
    else:
        blocks.write_(dst, block, part)


def _take(src: torch.Tensor, block: Block | None, full_shape: torch.Size) -> torch.Tensor:
    """A detached copy of the ``block`` of a running-model tensor whose server shape is
    ``full_shape`` (the running tensor may already be exactly the block)."""
    if block is None or src.shape != full_shape:
        return src.detach().clone()
    part = blocks.read(src.detach(), block)
    return part.clone() if blocks.is_contiguous(block) else part


class ServerModelAlgorithm(Algorithm):
    """Common machinery for methods whose server holds one nn.Module (see module docstring)."""

    server: nn.Module

    # ---- what a subclass provides -------------------------------------------------------------
    @abstractmethod
    def build_model(self) -> nn.Module:
        """A fresh global model, initialised from torch's global RNG (seeded by ``init_global``)."""

    def exchange_blocks(self, task: Task) -> dict[str, Block | None]:
        """The server-state keys ``task``'s client uses, with the block of each (None = whole).

        Includes local keys (they are loaded from the client's own copy, never sent). The default
        is the whole state, as in FedAvg.
        """
        return dict.fromkeys(self._server_state)

    def running_model(self, task: Task) -> nn.Module:
        """The module ``task``'s client trains; by default one persistent copy of the server."""
        if self._running is None:
            self._running = copy.deepcopy(self.server)
        return self._running

    def extra_state(self) -> dict[str, Any]:
        """Method state beyond tensors (e.g. a sampler) needed for an exact resume."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        del state

    # ---- set-up ----------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return torch.device(self.cfg.device)

    @property
    def local_bn(self) -> bool:
        return self.cfg.bn == "local"

    def init_global(self, generator: torch.Generator) -> None:
        # build_model draws from torch's global RNG (nn layers' default init); fork it so that init
        # depends only on ``generator`` and leaves the caller's global stream untouched.
        seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = self.build_model()
        self._set_server(model.to(self.device))

    def _set_server(self, model: nn.Module) -> None:
        self.server = model
        # state_dict() tensors share storage with the module; cache the dict (rebuilt per call
        # otherwise) since load/merge write into these tensors in place.
        self._server_state: dict[str, torch.Tensor] = self.server.state_dict()
        self.local_keys: frozenset[str] = (
            frozenset(local_state_keys(self.server)) if self.local_bn else frozenset()
        )
        self.local: dict[int, dict[str, torch.Tensor]] = {}
        self._running: nn.Module | None = None
        self._running_states: dict[int, tuple[nn.Module, dict[str, torch.Tensor]]] = {}
        self._eval: nn.Module | None = None

    def _require_server(self) -> None:
        if getattr(self, "server", None) is None:
            raise RuntimeError(f"{self.name}: call init_global() before using the method")

    def state_view(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """``model``'s tensors keyed by SERVER state keys (storage shared with ``model``).

        The default is ``model.state_dict()``; a method whose running model is a different module
        (e.g. a dense sub-network) re-keys it here.
        """
        return model.state_dict()

    def _state_of(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Cached ``state_view`` of a persistent module (keyed by identity)."""
        entry = self._running_states.get(id(model))
        if entry is None or entry[0] is not model:
            entry = self._running_states[id(model)] = (model, self.state_view(model))
        return entry[1]

    # ---- tensors in and out ------------------------------------------------------------------
    def _client_value(self, client: int, key: str) -> torch.Tensor:
        """The tensor a client holds for ``key``: its own copy of local keys, else the server's."""
        if key in self.local_keys:
            own = self.local.get(client)
            if own is not None and key in own:
                return own[key]
        return self._server_state[key]

    def load_client_state(
        self, model: nn.Module, client: int | None, used: dict[str, Block | None]
    ) -> None:
        """Copy the server's (and the client's local) tensors of ``used`` (key -> block) into
        ``model``."""
        state = self._state_of(model)
        with torch.no_grad():
            for key, block in used.items():
                src = self._server_state[key] if client is None else self._client_value(client, key)
                _copy_in(state[key], src, block)

    def download_bytes(self, task: Task, model: nn.Module | None = None) -> int:
        """Bytes the server sends ``task``'s client: the non-local blocks it uses (the running
        module may hold more, e.g. bases the client does not train)."""
        del model
        total = 0
        for key, block in self.exchange_blocks(task).items():
            if key not in self.local_keys:
                t = self._server_state[key]
                total += blocks.shape(t, block).numel() * t.element_size()
        return total

    def download(self, task: Task) -> nn.Module:
        self._require_server()
        model = self.running_model(task)
        self.load_client_state(model, task.client, self.exchange_blocks(task))
        model.train()
        for p in model.parameters():
            p.requires_grad_(True)
        return model

    def upload(self, task: Task, model: nn.Module) -> Update:
        state = self._state_of(model)
        tensors: dict[str, torch.Tensor] = {}
        sent: dict[str, Block] = {}
        for key, block in self.exchange_blocks(task).items():
            full = self._server_state[key]
            if key in self.local_keys:
                self._keep_local(task.client, key, state[key], block)
                continue
            tensors[key] = _take(state[key], block, full.shape)
            if block is not None:
                sent[key] = block
        return Update(tensors=tensors, blocks=sent)

    def _keep_local(self, client: int, key: str, value: torch.Tensor, block: Block | None) -> None:
        own = self.local.setdefault(client, {})
        if key not in own:
            own[key] = self._server_state[key].detach().clone()
        with torch.no_grad():
            if value.shape != blocks.shape(own[key], block):
                value = blocks.read(value, block)  # a full-size running tensor: take the block
            blocks.write_(own[key], block, value)

    def begin_aggregate(self, round_idx: int | None = None) -> None:
        del round_idx
        self._require_server()
        self._merge: MaskedAverage | None = MaskedAverage(self._server_state)

    def accumulate(self, task: Task, update: Update, weight: float) -> None:
        merge = getattr(self, "_merge", None)
        if merge is None:
            raise RuntimeError(f"{self.name}: accumulate() called before begin_aggregate()")
        leaked = self.local_keys.intersection(update.tensors)
        if leaked:
            raise ValueError(f"local tensors must not be uploaded: {sorted(leaked)[:3]}")
        merge.add_update(update, weight)

    def end_aggregate(self) -> None:
        merge = getattr(self, "_merge", None)
        if merge is None:
            raise RuntimeError(f"{self.name}: end_aggregate() called before begin_aggregate()")
        self._merge = None
        merge.merge()

    # ---- evaluation ----------------------------------------------------------------------------
    def eval_model(self, client: int | None) -> nn.Module:
        """A persistent eval-mode full model holding the server state plus ``client``'s local
        tensors (server values for a client that never trained). Reused between calls: finish
        with one assembled model before asking for the next."""
        self._require_server()
        if self._eval is None:
            self._eval = copy.deepcopy(self.server)
        self.load_client_state(self._eval, client, dict.fromkeys(self._server_state))
        self._eval.eval()
        return self._eval

    # ---- serving every width -------------------------------------------------------------------
    def serving_blocks(self, width: float) -> dict[str, Block | None]:
        """The server-state blocks (key -> block, None = whole) that the model of ``width``
        consists of, i.e. what ``deploy(width)`` holds. The default is the whole state: one
        model of one width (FedAvg)."""
        del width
        return dict.fromkeys(self._server_state)

    def storage_nbytes(self, widths: list[float]) -> int:
        """Bytes of the union of ``serving_blocks`` over ``widths``: a tensor element used by
        several widths (a prefix inside a wider prefix, a base in several ensembles) is stored
        once."""
        self._require_server()
        used: dict[str, torch.Tensor] = {}
        for width in widths:
            for key, block in self.serving_blocks(width).items():
                t = self._server_state[key]
                mask = used.setdefault(key, torch.zeros(t.shape, dtype=torch.bool))
                blocks.write_(mask, block, torch.ones(blocks.shape(t, block), dtype=torch.bool))
        return sum(
            int(mask.sum()) * self._server_state[key].element_size() for key, mask in used.items()
        )

    # ---- checkpointing -----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        self._require_server()
        return {
            "server": {k: v.detach().clone() for k, v in self._server_state.items()},
            "local": {c: {k: v.clone() for k, v in d.items()} for c, d in self.local.items()},
            "extra": self.extra_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if getattr(self, "server", None) is None:
            # Resuming without init_global: the architecture is rebuilt, its init overwritten below.
            self.init_global(torch.Generator().manual_seed(0))
        self.server.load_state_dict(state["server"])
        self.local = {
            int(c): {k: v.to(self.device) for k, v in d.items()}
            for c, d in state.get("local", {}).items()
        }
        self.load_extra_state(state.get("extra", {}))

    def describe(self) -> dict[str, Any]:
        self._require_server()
        return {
            "server_params": sum(p.numel() for p in self.server.parameters()),
            "local_keys": sorted(self.local_keys),
        }
