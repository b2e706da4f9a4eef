"""Shared fixtures: small worlds built straight from the contracts, and a scenario writer."""

from __future__ import annotations

import sys
from pathlib import Path

import networkx as nx
import pytest
import torch
import yaml

from sim.core.network import edges_to_network
from sim.contracts import AgentParams, Group, State, World
from sim.core.valuespace import ValueSpace

REPO = Path(__file__).resolve().parent.parent


def make_world(values: torch.Tensor, graph: nx.Graph | None = None, confidence=0.3, rate=0.5, anchoring=0.0,
               zealot=None) -> tuple[World, State]:
    """A one-group world around ``values`` [B, N, K]; parameters are numbers or [B or 1, N] tensors."""
    b, n, k = values.shape
    graph = graph if graph is not None else nx.complete_graph(n)

    def param(v):
        return v.to(torch.float32) if torch.is_tensor(v) else torch.full((1, n), float(v))

    params = AgentParams(confidence=param(confidence), rate=param(rate), anchoring=param(anchoring),
                         zealot=torch.zeros((1, n), dtype=torch.bool) if zealot is None else zealot)
    world = World(space=ValueSpace("test", tuple(f"d{i}" for i in range(k))), groups=(Group("all_", "human", 0, n),),
                  network=edges_to_network(n, graph), params=params, initial=values.clone(),
                  group_index=torch.zeros(n, dtype=torch.int64), honest=torch.ones(n, dtype=torch.bool))
    return world, State(values=values.clone(), active=torch.ones((b, n), dtype=torch.bool))


@pytest.fixture
def write_scenario(tmp_path):
    """Write a scenario mapping (or YAML text) to tmp_path and return its path."""

    def write(data, name: str = "scenario.yaml") -> Path:
        path = tmp_path / name
        path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
        return path

    return write


def small_scenario(**changes) -> dict:
    data = {
        "name": "small", "seed": 3, "steps": 12, "log_every": 3, "values": ["a", "b"],
        "network": {"generator": "erdos_renyi", "params": {"mean_degree": 6}},
        "population": [
            {"name": "people", "count": 150, "confidence": 0.3, "rate": 0.3},
            {"name": "stubborn", "count": 30, "init": {"dist": "constant", "value": [0.9, 0.1]},
             "confidence": 0.2, "rate": 0.2, "anchoring": 0.5, "zealots": 0.5},
        ],
        "dynamics": [{"deffuant": {}}, "friedkin_johnsen", {"noise": {"sigma": 0.01}}],
        "metrics": ["mean_values", "drift", "polarization", "clusters", "consensus_time"],
    }
    data.update(changes)
    return data


@pytest.fixture
def ray_head():
    """A Ray head in processes of its own (``ray start --head``), on this machine only, stopped afterwards.

    It runs in a new session, so its processes (GCS, raylet, workers) share one process group, killed at the end:
    ``ray stop`` would stop every Ray process on the machine, other people's too. Every port is a free one, none
    of Ray's fixed defaults (6379, 8265, 10001, 52365), so it cannot meet another instance on this machine. It
    asks for a token of its own (Ray's token authentication: a head started where ``~/.ray/auth_token`` exists
    refuses drivers without one), handed to the driver in ``env``.
    """
    pytest.importorskip("ray", reason="the ray extra: pip install 'valuesim[ray]'")
    import os
    import secrets
    import shutil
    import socket
    import subprocess
    import tempfile

    def free_port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    port = free_port()
    # short: Ray puts unix sockets under it, and their paths are limited to 107 characters
    temp = Path(tempfile.mkdtemp(prefix="vsray", dir="/tmp"))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    command = [str(Path(sys.executable).with_name("ray")), "start", "--head", "--node-ip-address=127.0.0.1",
               f"--port={port}", "--num-cpus=1", "--include-dashboard=false", "--disable-usage-stats",
               f"--dashboard-port={free_port()}", f"--ray-client-server-port={free_port()}",
               f"--dashboard-agent-listen-port={free_port()}", f"--temp-dir={temp}"]
    # ray start returns once the head is up; its daemons stay in the new session's process group
    starter = subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = starter.communicate(timeout=120)
        assert starter.returncode == 0, output
        yield {"address": f"127.0.0.1:{port}", "port": port, "temp": temp, "env": env}
    finally:
        if starter.poll() is None:
            starter.kill()
        _stop_process_group(starter.pid)
        shutil.rmtree(temp, ignore_errors=True)


def _stop_process_group(group: int) -> None:
    """SIGTERM to every process of the group, SIGKILL to what is left after 10 s; back when none is left."""
    import os
    import signal
    import time

    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(group, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.killpg(group, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)


def run_driver(command: list[str], ray_head: dict, timeout: float = 300) -> tuple[int, int, str]:
    """Run ``command`` as a driver of ``ray_head``'s cluster (``RAY_ADDRESS`` and its token): (pid, exit code,
    output); killed if it outlives ``timeout``."""
    import subprocess

    driver = subprocess.Popen(command, env={**ray_head["env"], "RAY_ADDRESS": ray_head["address"]},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = driver.communicate(timeout=timeout)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    return driver.pid, driver.returncode, output
