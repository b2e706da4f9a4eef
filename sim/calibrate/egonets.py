"""Synthetic ego networks and value trajectories observed on them, for calibration studies.

The bounded-confidence value-change study fitted its model on 275 Facebook ego
networks (an ego, its friends, and the friendships among them). Those data are
not public, so ``scenarios/ego_networks.yaml`` stands on networks of the same
shape drawn from networkx generators, and on value trajectories simulated with
a known confidence bound and rate plus observation noise: the ground truth a
calibration must recover.

``python -m sim.calibrate.egonets`` rewrites the scenario's data files
(``scenarios/ego_networks/edges.txt`` and ``observed.parquet``) from the
parameters below; ``tests/test_calibrate.py`` checks that they still match.
"""

from __future__ import annotations

from pathlib import Path

import networkx as nx
import numpy as np

# How the shipped data were made (the scenario's confidence and rate are the ground truth).
NETWORKS = 275
FRIENDS = (8, 32)  # friends per ego, uniform on this range (inclusive)
NETWORK_SEED = 2750
TRUTH_SEED = 27_500  # the stream the "real" trajectories were drawn on; calibration uses other seeds
OBSERVED_STEPS = 6  # snapshots at steps 0..5
OBSERVATION_NOISE = 0.01  # standard deviation of the Gaussian error on each observed value


def ego_networks(count: int = NETWORKS, friends: tuple[int, int] = FRIENDS,
                 seed: int = NETWORK_SEED) -> tuple[np.ndarray, np.ndarray]:
    """``count`` disjoint ego networks as one graph: (``[E, 2]`` int64 edges, ``[count]`` sizes).

    Network k is an ego (its first node) linked to each of its friends, the
    friends linked among themselves by a Holme-Kim graph (preferential
    attachment with triangle closure: hubs and clustering, as friendship
    circles have). Nodes are numbered network after network.
    """
    rng = np.random.default_rng(seed)
    edges, sizes, start = [], [], 0
    for _ in range(count):
        m = int(rng.integers(friends[0], friends[1] + 1))
        circle = nx.powerlaw_cluster_graph(m, 2, 0.3, seed=int(rng.integers(2**31)))
        among = np.array(circle.edges, dtype=np.int64).reshape(-1, 2) + 1
        ego = np.stack([np.zeros(m, dtype=np.int64), np.arange(1, m + 1)], axis=1)
        edges.append(np.concatenate([ego, among]) + start)
        sizes.append(m + 1)
        start += m + 1
    return np.concatenate(edges), np.array(sizes, dtype=np.int64)


def components(edges: np.ndarray, n: int) -> np.ndarray:
    """``[n]`` the connected component of each node (an ego network's index, for standard errors by network)."""
    import scipy.sparse as sp
    from scipy.sparse.csgraph import connected_components

    graph = sp.coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def observe(scenario, steps: int = OBSERVED_STEPS, noise: float = OBSERVATION_NOISE, seed: int = TRUTH_SEED,
            agents: np.ndarray | None = None):
    """Trajectories of ``scenario`` run on ``seed``, as observed with Gaussian ``noise`` (clipped to [0, 1]).

    Returns a pandas frame: agent, step, one column per dimension (the
    format ``valuesim calibrate`` reads), snapshots at steps 0..steps-1.
    """
    import pandas as pd
    import torch

    from ..config.build import build_simulation
    from ..core.rng import Streams

    simulation = build_simulation(scenario, seed=seed, worlds=1)
    dims = list(scenario.spec.values.dimensions)
    n = simulation.world.n
    agents = np.arange(n) if agents is None else np.asarray(agents)
    frames = []
    for step in range(steps):
        if step:
            simulation.step()
        true = simulation.state.values[0].double()
        # the observation error is drawn from the run's own streams, under a purpose of its own
        error = Streams.of(seed, 1).at(step).normal("observation/noise", (1, *true.shape), torch.float64)[0]
        seen = (true + noise * error).clamp(0.0, 1.0).numpy()[agents]
        frame = pd.DataFrame(np.round(seen, 4), columns=dims)
        frame.insert(0, "step", step)
        frame.insert(0, "agent", agents)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def write_data(folder: Path) -> None:
    """Write ``edges.txt`` and ``observed.parquet`` of ``scenarios/ego_networks.yaml`` into ``folder``."""
    from ..config.scenario import load_scenario

    edges, _ = ego_networks()
    folder.mkdir(parents=True, exist_ok=True)
    np.savetxt(folder / "edges.txt", edges, fmt="%d")
    scenario = load_scenario(folder.parent / "ego_networks.yaml")
    observe(scenario).to_parquet(folder / "observed.parquet", index=False, compression="zstd")


if __name__ == "__main__":
    write_data(Path(__file__).resolve().parents[2] / "scenarios" / "ego_networks")
