"""Masked Deffuant step (some agents absent) against the unmasked one (not a test).

Times ``plugins.dynamics._numba.deffuant`` on an Erdos-Renyi graph of mean degree 10 (CSR built with
numpy), one step of N pairs, for B worlds whose masks differ per world, with 0%, 10% and 50% of the
agents absent, under ``absence: aligned``. ``--old FILE`` also times another copy of the kernel module
(e.g. ``git show d5ecc6e:plugins/dynamics/_numba.py``, the kernel before the one-pass masked draw, with
its relative import made absolute; benchmarks/README.md), the two alternating in one process, and checks
that both give the same values bit for bit.

    python benchmarks/masked_pairs.py --sizes 10000,1000000 --worlds 1,64 --dims 2,10
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time

import sim  # noqa: F401  before torch and numba: the thread settings (DEVELOPERS.md)

import numpy as np

from plugins.dynamics import _numba


def graph(n: int, degree: float, seed: int = 0):
    """CSR of a G(n, m) multigraph with mean degree ``degree`` (both directions), ``rowptrs`` [1, n + 1]."""
    rng = np.random.default_rng(seed)
    m = int(n * degree / 2)
    a, c = rng.integers(0, n, m), rng.integers(0, n, m)
    keep = a != c
    src = np.concatenate([a[keep], c[keep]])
    dst = np.concatenate([c[keep], a[keep]])
    order = np.lexsort((dst, src))
    src, dst = src[order], dst[order]
    rowptr = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(src, minlength=n), out=rowptr[1:])
    return rowptr[None, :], dst.astype(np.int64)


def case(n, b, k, absent, seed=0):
    rng = np.random.default_rng(seed + 1)
    values = rng.random((b, n, k), dtype=np.float32)
    active = rng.random((b, n)) >= absent
    return dict(values=values, x=np.empty_like(values), shown=values, fixed=np.zeros((1, n), np.bool_),
                graph=np.zeros(b, np.int64), keys_focal=rng.integers(0, 2**62, b),
                keys_partner=rng.integers(0, 2**62, b),
                used=np.full(b, n, np.int64), active=active, masked=absent > 0, eps=np.full((1, n), 0.3, np.float32),
                mu=np.full((1, n), 0.3, np.float32))


def step(module, rowptrs, col, c):
    module.deffuant(c["values"], c["x"], c["shown"], c["fixed"], rowptrs, col, c["graph"], c["keys_focal"],
                    c["keys_partner"], c["used"], c["active"], c["masked"], c["eps"], c["mu"], 0, np.inf)
    return c["x"]


def timed(module, rowptrs, col, c, seconds):
    step(module, rowptrs, col, c)
    best, total, runs = np.inf, 0.0, 0
    while total < seconds or runs < 3:
        start = time.perf_counter()
        step(module, rowptrs, col, c)
        t = time.perf_counter() - start
        best, total, runs = min(best, t), total + t, runs + 1
    return best


def load(path):
    """A copy of the kernel module imported by name from its folder (numba's cache needs a real module)."""
    folder, name = os.path.split(os.path.abspath(path))
    sys.path.insert(0, folder)
    return importlib.import_module(name.removesuffix(".py"))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="10000,1000000")
    p.add_argument("--worlds", default="1,64")
    p.add_argument("--dims", default="2,10")
    p.add_argument("--absent", default="0,0.1,0.5")
    p.add_argument("--seconds", type=float, default=0.3, help="timed per cell and kernel per round")
    p.add_argument("--rounds", type=int, default=3, help="alternations of old and new (best taken)")
    p.add_argument("--old", help="another copy of _numba.py to time beside this one")
    p.add_argument("--max-entries", type=float, default=2e8, help="skip cells with more B*N*K")
    args = p.parse_args()
    kernels = {"new": _numba}
    if args.old:
        kernels = {"old": load(args.old), **kernels}
    print("| N | B | K | absent | " + " | ".join(f"{name} ms" for name in kernels) +
          " | " + " | ".join(f"{name} M pairs/s" for name in kernels) + " |")
    print("| ---: " * (4 + 2 * len(kernels)) + "|")
    for n in map(int, args.sizes.split(",")):
        rowptrs, col = graph(n, 10.0)
        for b in map(int, args.worlds.split(",")):
            for k in map(int, args.dims.split(",")):
                if n * b * k > args.max_entries:
                    continue
                for absent in map(float, args.absent.split(",")):
                    c = case(n, b, k, absent)
                    outs = {name: step(m, rowptrs, col, c).copy() for name, m in kernels.items()}
                    if len(outs) == 2:
                        assert np.array_equal(*outs.values()), "old and new kernels differ"
                    best = {name: np.inf for name in kernels}
                    for _ in range(args.rounds):
                        for name, m in kernels.items():
                            best[name] = min(best[name], timed(m, rowptrs, col, c, args.seconds))
                    pairs = n * b
                    print(f"| {n:.0e} | {b} | {k} | {absent:.0%} | " +
                          " | ".join(f"{best[m] * 1e3:.2f}" for m in kernels) + " | " +
                          " | ".join(f"{pairs / best[m] / 1e6:.1f}" for m in kernels) + " |", flush=True)


if __name__ == "__main__":
    main()
