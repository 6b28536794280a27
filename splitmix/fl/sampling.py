"""Which clients take part in a round (docs/paper.md#federated-loop, ``UserSampler``)."""

from __future__ import annotations

from splitmix.errors import ConfigError
from splitmix.seeding import rng


def sample_clients(seed: int, round_idx: int, num_clients: int, participation: int) -> list[int]:
    """Clients of round ``round_idx``: all in index order, or ``participation`` distinct ones.

    Each round draws from its own stream ``sample/<round>`` so that a resumed run samples exactly
    what an uninterrupted one would, without replaying earlier rounds' draws.
    """
    if participation == -1 or participation == num_clients:
        return list(range(num_clients))
    if not 1 <= participation <= num_clients:
        raise ConfigError(
            f"participation={participation} must be -1 (all) or between 1 and the number of "
            f"clients ({num_clients})"
        )
    picked = rng(seed, f"sample/{round_idx}").choice(num_clients, participation, replace=False)
    return [int(k) for k in picked]
