"""Policies: what a group's agents express at a step."""

from __future__ import annotations

from typing import ClassVar

import torch

from sim.contracts import NoParams
from sim.state import Group, State, World


class Honest:
    """Express one's own current values (what the classic opinion-dynamics models assume)."""

    Params: ClassVar = NoParams
    # The dynamics read an honest agent's current values directly, even mid-step.
    expresses_own_values: ClassVar[bool] = True

    def __init__(self, params):
        self.params = params

    def express(self, state: State, world: World, group: Group, generator: torch.Generator) -> torch.Tensor:
        return state.values[:, group.rows]
