"""One seed, passed down: a run turns its seed into named child generators once.

Each consumer gets its own stream, so adding a metric never changes the
dynamics, and a checkpoint saves every stream's state so a resumed run
continues bit for bit. Nothing here touches global random state.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

STREAMS = ("population", "network", "dynamics", "policies", "metrics", "log")


def child_seeds(seed: int) -> dict[str, int]:
    """Independent 63-bit seeds for each stream, derived from the run seed (numpy SeedSequence)."""
    children = np.random.SeedSequence(seed).spawn(len(STREAMS))
    return {name: int(c.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1)) for name, c in zip(STREAMS, children)}


@dataclass
class Generators:
    """The torch generators of one run. ``dynamics`` and ``policies`` live on the run's device."""

    seeds: dict[str, int]
    population: torch.Generator
    dynamics: torch.Generator
    policies: torch.Generator
    metrics: torch.Generator
    log: torch.Generator

    @classmethod
    def from_seed(cls, seed: int, device: torch.device | str = "cpu") -> "Generators":
        seeds = child_seeds(seed)

        def make(name: str, where) -> torch.Generator:
            g = torch.Generator(device=where)
            g.manual_seed(seeds[name])
            return g

        return cls(seeds=seeds, population=make("population", "cpu"), dynamics=make("dynamics", device),
                   policies=make("policies", device), metrics=make("metrics", "cpu"), log=make("log", "cpu"))

    @property
    def network_seed(self) -> int:
        return self.seeds["network"] % (2**32)  # networkx hands seeds to numpy/random, which take 32 bits happily

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name).get_state() for name in ("population", "dynamics", "policies",
                                                                    "metrics", "log")}

    def load_state_dict(self, states: dict[str, torch.Tensor]) -> None:
        for name, state in states.items():
            getattr(self, name).set_state(state)
