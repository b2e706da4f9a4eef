"""Players of a simulation game: which agents each player is.

``--players`` takes

- ``groups``: one player per population group;
- ``agents``: one player per agent (a small population: at most ``MAX_AGENT_PLAYERS`` agents);
- a comma-separated list of ``NAME=SELECTOR`` (or a bare group name, a player of that group), where a
  selector is one of

  ============================  ==========================================================
  ``group:G``                   the agents of group G
  ``index:START:STOP``          agents START..STOP-1 (the ``agent`` column of the run log)
  ``value:DIM>X``               agents whose initial value of DIM is above X (also ``<``, ``>=``, ``<=``)
  ``degree:top:K``              the K agents of highest degree in the network (ties: lower index first)
  ============================  ==========================================================

  and any selector may end in ``@G`` to keep only the agents of group G
  (``hubs=degree:top:5@people``, ``keen=value:security>0.7@people``).

Agents of no player always act by their own policy. Players must not share agents. A value condition
is read from each world's own initial values, so with random initial values a player is "the agents
that start that way" in every replicate.
"""

from __future__ import annotations

import difflib
import operator
import re
from dataclasses import dataclass

import torch

from ..errors import ScenarioError
from ..core.state import World

MAX_AGENT_PLAYERS = 1000
_COMPARE = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}


def _error(message: str) -> ScenarioError:
    return ScenarioError(message, location="--players")


@dataclass(frozen=True)
class Player:
    """One player: a name and how its agents are chosen (``kind`` group/index/value/degree and arguments)."""

    name: str
    kind: str
    args: tuple
    within: str | None = None
    text: str = ""

    def mask(self, world: World) -> torch.Tensor:
        """``[B or 1, N]`` bool: the player's agents in each world."""
        n, device = world.n, world.device
        if self.kind == "group":
            g = world.group(self.args[0])
            mask = torch.zeros((1, n), dtype=torch.bool, device=device)
            mask[:, g.rows] = True
        elif self.kind == "index":
            mask = torch.zeros((1, n), dtype=torch.bool, device=device)
            mask[:, self.args[0]:self.args[1]] = True
        elif self.kind == "value":
            dim, op, threshold = self.args
            column = world.initial[..., world.space.dimensions.index(dim)]
            mask = _COMPARE[op](column, threshold)
        else:  # degree
            mask = self._top_degree(world)
        if self.within is not None and self.kind != "degree":
            mask = mask & _group_mask(world, self.within)
        return mask

    def _top_degree(self, world: World) -> torch.Tensor:
        if not world.network.shared:  # a player is the same agents in every world; each graph has its own hubs
            raise _error(f"player {self.name!r}: degree:top:{self.args[0]} needs one network shared by the "
                         "replicates, but network.independent: true gives each its own graph; set independent: "
                         "false, or name the players by group or index")
        degree = world.network.degree().to(torch.float64)
        eligible = _group_mask(world, self.within)[0] if self.within else torch.ones_like(degree, dtype=torch.bool)
        k = self.args[0]
        if k > int(eligible.sum()):
            raise _error(f"player {self.name!r}: degree:top:{k} asks for more agents than the "
                         f"{int(eligible.sum())} it can choose from")
        score = torch.where(eligible, degree, torch.tensor(-1.0, dtype=torch.float64, device=degree.device))
        # stable sort: among equal degrees the lower index comes first
        top = torch.sort(-score, stable=True).indices[:k]
        mask = torch.zeros((1, world.n), dtype=torch.bool, device=world.device)
        mask[0, top] = True
        return mask


def _group_mask(world: World, name: str) -> torch.Tensor:
    g = world.group(name)
    mask = torch.zeros((1, world.n), dtype=torch.bool, device=world.device)
    mask[:, g.rows] = True
    return mask


def parse_players(text: str, groups: list[str], n_agents: int, dimensions: tuple[str, ...]) -> list[Player]:
    """Players from the ``--players`` text for a population of these groups, agents and value dimensions."""
    text = (text or "").strip()
    if text == "groups":
        return [Player(g, "group", (g,), text=f"group:{g}") for g in groups]
    if text == "agents":
        if n_agents > MAX_AGENT_PLAYERS:
            raise _error(f"'agents' makes every agent a player, at most {MAX_AGENT_PLAYERS}; this population has "
                         f"{n_agents} (name sets of agents instead: NAME=SELECTOR,...)")
        return [Player(f"agent{i}", "index", (i, i + 1), text=f"index:{i}:{i + 1}") for i in range(n_agents)]
    if not text:
        raise _error("no players given (groups, agents, or NAME=SELECTOR,...)")
    players = [_parse_item(item.strip(), groups, n_agents, dimensions) for item in text.split(",")]
    names = [p.name for p in players]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise _error(f"player names must differ; given twice: {', '.join(twice)}")
    return players


def _parse_item(item: str, groups: list[str], n_agents: int, dimensions: tuple[str, ...]) -> Player:
    if "=" not in item:
        _check_group(item, groups)
        return Player(item, "group", (item,), text=f"group:{item}")
    name, selector = (part.strip() for part in item.split("=", 1))
    if not re.match(r"^[A-Za-z0-9_.\-]+$", name):
        raise _error(f"a player name is letters, digits, '_', '-' or '.', got {name!r}")
    within = None
    if "@" in selector:
        selector, within = selector.rsplit("@", 1)
        _check_group(within, groups)
    kind, _, rest = selector.partition(":")
    if kind == "group":
        _check_group(rest, groups)
        return Player(name, "group", (rest,), within, item)
    if kind == "index":
        match = re.fullmatch(r"(\d+):(\d+)", rest)
        if not match or not int(match[1]) < int(match[2]) <= n_agents:
            raise _error(f"player {name!r}: index:START:STOP with 0 <= START < STOP <= {n_agents}, got {selector!r}")
        return Player(name, "index", (int(match[1]), int(match[2])), within, item)
    if kind == "value":
        match = re.fullmatch(r"([^<>=]+)(>=|<=|>|<)\s*([-+0-9.eE]+)", rest)
        if not match:
            raise _error(f"player {name!r}: value:DIM>X (or <, >=, <=), got {selector!r}")
        dim = match[1].strip()
        if dim not in dimensions:
            raise _error(f"player {name!r}: unknown value dimension {dim!r}{_did_you_mean(dim, dimensions)} "
                         f"(dimensions: {', '.join(dimensions)})")
        return Player(name, "value", (dim, match[2], float(match[3])), within, item)
    if kind == "degree":
        match = re.fullmatch(r"top:(\d+)", rest)
        if not match or int(match[1]) < 1:
            raise _error(f"player {name!r}: degree:top:K with K >= 1, got {selector!r}")
        return Player(name, "degree", (int(match[1]),), within, item)
    raise _error(f"player {name!r}: unknown selector {selector!r} (selectors: group:G, index:START:STOP, "
                 "value:DIM>X, degree:top:K, each optionally @GROUP)")


def _check_group(name: str, groups: list[str]) -> None:
    if name not in groups:
        raise _error(f"unknown group {name!r}{_did_you_mean(name, groups)} (groups: {', '.join(groups)})")


def _did_you_mean(name: str, options) -> str:
    close = difflib.get_close_matches(name, list(options), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def player_masks(players: list[Player], world: World) -> torch.Tensor:
    """``[P, B or 1, N]`` bool (1 when no player's agents differ between worlds); every player has an agent in
    every world and no two players share one."""
    masks = [p.mask(world) for p in players]
    rows = 1 if all(m.shape[0] == 1 for m in masks) else world.b
    masks = torch.stack([m.expand(rows, world.n) for m in masks])
    empty = ~masks.any(dim=2)  # [P, B]
    if bool(empty.any()):
        p, b = (int(i) for i in empty.nonzero()[0])
        raise _error(f"player {players[p].name!r} ({players[p].text}) has no agent in world {b} "
                     f"(stream {b} of this check)")
    shared = masks.sum(dim=0) > 1
    if bool(shared.any()):
        b, i = (int(x) for x in shared.nonzero()[0])
        owners = [players[p].name for p in range(len(players)) if bool(masks[p, b, i])]
        raise _error(f"players must not share agents: agent {i} is in {', '.join(owners)}")
    return masks
