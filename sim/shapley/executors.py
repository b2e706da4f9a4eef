"""Where chunks of worlds are evaluated: in this process (``local``, the default) or on Ray (``ray``).

An executor has one method, ``map(fn, tasks)``: it calls ``fn(*task)`` for every task and yields the
results in the order of the tasks. Ray is optional (the ``ray`` extra) and imported only here; it
connects to ``RAY_ADDRESS`` when that is set (a cluster), else starts a local Ray instance.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Iterable, Iterator, Protocol

from ..errors import ScenarioError, ValuesimError

EXECUTORS = ("local", "ray")


class Executor(Protocol):
    def map(self, fn: Callable[..., Any], tasks: Iterable[tuple]) -> Iterator[Any]: ...


class LocalExecutor:
    """Every chunk in this process, one after the other."""

    name = "local"

    def map(self, fn, tasks):
        for task in tasks:
            yield fn(*task)


class RayExecutor:
    """Chunks as Ray tasks, all submitted at once, results yielded in order as they arrive.

    ``address``: a Ray cluster (default ``RAY_ADDRESS``; none starts a local instance).
    ``num_cpus``: CPUs a local instance may use. ``task_cpus``: CPUs each chunk asks for.
    """

    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: int | None = None, task_cpus: float = 1):
        try:
            import ray
        except ImportError:
            raise ValuesimError("--executor ray needs Ray, which is not installed: "
                                "pip install 'valuesim[ray]'") from None
        self.ray = ray
        self.task_cpus = task_cpus
        started_local = False
        if not ray.is_initialized():
            address = address or os.environ.get("RAY_ADDRESS") or None
            kwargs = {"address": address} if address else {"num_cpus": num_cpus, "include_dashboard": False}
            ray.init(ignore_reinit_error=True, log_to_driver=False, **kwargs)
            started_local = not address
        self.cluster = ray_cluster(ray, started_local)  # where the chunks ran, for the manifest
        self._remote: dict[Callable, Any] = {}

    def map(self, fn, tasks):
        remote = self._remote.get(fn)
        if remote is None:
            remote = self._remote[fn] = self.ray.remote(num_cpus=self.task_cpus)(fn)
        refs = [remote.remote(*task) for task in tasks]
        for ref in refs:
            yield self.ray.get(ref)


def ray_cluster(ray, local: bool) -> dict[str, Any]:
    """Where work runs, for a manifest or ``train.json``: the GCS address of the connected Ray instance
    (``RAY_ADDRESS``'s cluster or a local one), whether it is a local one this process started, and the
    number of its nodes alive."""
    return {"address": ray.get_runtime_context().gcs_address, "local": local,
            "nodes": len([n for n in ray.nodes() if n.get("Alive")])}


def get_executor(name: str | Executor | None) -> Executor:
    """``local``, ``ray`` or an executor object."""
    if name is None or name == "local":
        return LocalExecutor()
    if name == "ray":
        return RayExecutor()
    if isinstance(name, str):
        raise ScenarioError(f"must be one of {', '.join(EXECUTORS)}, got {name!r}", location="--executor")
    return name
