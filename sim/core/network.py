"""From what a network generator returns to the CSR :class:`~sim.core.state.Network`.

A generator (a ``valuesim.networks`` plugin, see ``sim.core.contracts.NetworkGenerator``)
returns either a ``networkx`` graph on nodes ``0..N-1`` or an ``[E, 2]`` integer
edge array. Either way the edges are cleaned up here, once: direction is
dropped, self-loops and duplicate edges are removed, each undirected edge is
stored in both rows and every row's neighbours are sorted ascending.

Everything is vectorised numpy: a million nodes and ten million edges take
about a second.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import torch

from .contracts import NetworkGenerator, NetworkRequest
from .state import Network


def edges_to_network(n: int, edges: Any) -> Network:
    """The CSR network on ``n`` nodes of a ``networkx`` graph or an ``[E, 2]`` edge array.

    A graph's nodes must be exactly ``0..n-1``; an array's entries must be
    integers in ``[0, n)``. Edges are undirected: ``(u, v)`` and ``(v, u)`` are
    one edge. Self-loops and duplicates are dropped. Raises ``ValueError`` on
    anything else.
    """
    if n < 0:
        raise ValueError(f"the number of nodes must be >= 0, got {n}")
    pairs = _graph_edges(n, edges) if _is_graph(edges) else _array_edges(n, edges)
    keys = _symmetric_keys(n, pairs)
    rows, cols = np.divmod(keys, max(n, 1))
    rowptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n), out=rowptr[1:])
    return Network(n=n, rowptr=torch.from_numpy(rowptr), col=torch.from_numpy(cols.astype(np.int64, copy=False)))


def build_network(generator: NetworkGenerator, request: NetworkRequest) -> Network:
    """Run ``generator.build(request)`` and turn its result into the CSR network.

    Raises ``ValueError`` naming the generator if it returned something that
    is not a graph on nodes ``0..request.n-1`` or a valid edge array.
    """
    built = generator.build(request)
    try:
        return edges_to_network(request.n, built)
    except ValueError as error:
        raise ValueError(f"network generator {type(generator).__name__}: {error}") from None


def stack_networks(networks: list[Network], graph: torch.Tensor) -> Network:
    """One network holding ``networks`` (one graph each, over the same N agents) as per-world graphs.

    ``graph`` [B] int64 names each world's entry of ``networks``. Graph g's row
    pointers are shifted by the edges stored before it, so that they index the
    one concatenated ``cols`` (see :class:`~sim.core.state.Network`).
    """
    if len(networks) == 1:
        return networks[0]
    n = networks[0].n
    if any(net.n != n for net in networks):
        raise ValueError("per-world graphs must all have the same number of agents")
    offsets = torch.tensor([0] + [int(net.col.numel()) for net in networks]).cumsum(0)
    rowptrs = torch.stack([net.rowptr + offsets[g] for g, net in enumerate(networks)])
    return Network(n, rowptrs, torch.cat([net.col for net in networks]), graph.to(torch.int64))


def _is_graph(edges: Any) -> bool:
    # Duck-typed so that sim does not need networkx at import time for arrays.
    return hasattr(edges, "nodes") and hasattr(edges, "edges") and hasattr(edges, "number_of_nodes")


def _graph_edges(n: int, graph: Any) -> np.ndarray:
    """``[E, 2]`` int64 edges of a networkx graph whose nodes must be 0..n-1."""
    if graph.number_of_nodes() != n or set(graph.nodes) != set(range(n)):
        sample = sorted(map(repr, itertools.islice(graph.nodes, 5)))
        raise ValueError(
            f"the graph's nodes must be the integers 0..{n - 1}; it has {graph.number_of_nodes()} nodes "
            f"(for example {', '.join(sample)}). Relabel with networkx.convert_node_labels_to_integers"
        )
    m = graph.number_of_edges()
    # fromiter over the flattened pairs is several times faster than np.array(list(...)).
    flat = np.fromiter(itertools.chain.from_iterable((u, v) for u, v, *_ in graph.edges), dtype=np.int64, count=2 * m)
    return flat.reshape(m, 2)


def _array_edges(n: int, edges: Any) -> np.ndarray:
    """Validated ``[E, 2]`` int64 view of an edge array."""
    array = np.asarray(edges)
    if array.size == 0:
        return np.empty((0, 2), dtype=np.int64)
    if array.ndim != 2 or array.shape[1] != 2:
        raise ValueError(f"an edge array must have shape [E, 2], got {list(array.shape)}")
    if array.dtype.kind not in "iu":
        raise ValueError(f"an edge array must hold integer node indices, got dtype {array.dtype}")
    low, high = array.min(), array.max()
    if low < 0 or high >= n:
        raise ValueError(f"edge endpoints must be in [0, {n}), got values from {low} to {high}")
    return array.astype(np.int64, copy=False)


def _symmetric_keys(n: int, pairs: np.ndarray) -> np.ndarray:
    """Sorted unique ``row * n + col`` of both directions of every non-loop edge.

    Encoding a pair as one int64 turns symmetrising, de-duplicating and
    sorting rows and columns into one sort (n**2 fits int64 up to n = 3e9).
    """
    u, v = pairs[:, 0], pairs[:, 1]
    keep = u != v
    u, v = u[keep], v[keep]
    keys = np.concatenate([u * n + v, v * n + u])
    # np.sort + mask, not np.unique: np.unique is ~100x slower on 1e7 int64 in numpy 2.4.
    keys.sort()
    if keys.size:
        keys = keys[np.concatenate(([True], keys[1:] != keys[:-1]))]
    return keys
