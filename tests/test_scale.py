"""The slow tier (`make test-slow`): the same behaviours at the sizes users run."""

from __future__ import annotations

import resource

import pytest

import sim
from sim import build
from sim.config.scenario import scenario_from_dict
from tests.conftest import REPO

pytestmark = pytest.mark.slow


def test_a_million_agents_run_and_log_through_the_cli_path(tmp_path):
    run_dir = sim.run(REPO / "scenarios" / "quickstart.yaml", runs_dir=tmp_path,
                      overrides=["population.citizens.count=999000", "steps=6", "log_every=3"])
    view = sim.open_run(run_dir)
    assert view.status == "complete" and view.manifest["agents"] == 1_000_000
    values = view.values()
    assert values["agent"].nunique() == 10_000, "beyond the limit, a seeded sample of agents is logged"
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss < 6 * 1024 * 1024  # KB: well under 6 GB


def test_deffuant_cluster_counts_over_many_seeds():
    """A hundred seeds as a hundred worlds: the mean count is within a quarter of floor(1/(2 eps))."""
    for confidence, expected in ((0.15, 3), (0.25, 2)):
        scenario = scenario_from_dict({
            "name": "many", "seed": 9, "values": ["opinion"], "network": {"generator": "complete"},
            "population": [{"name": "p", "count": 500, "confidence": confidence, "rate": 0.5}],
            "dynamics": ["deffuant"], "metrics": [{"clusters": {"threshold": 0.02, "min_size": 0.05}}]})
        simulation = build(scenario, worlds=100)
        simulation.advance(300)
        (reading,) = [r for r in simulation.observe() if r.metric == "clusters"]
        counts = reading.value[:, -1, 0]
        assert abs(counts.mean().item() - expected) < 0.25, counts.tolist()


def test_large_blocks_stay_in_the_heap_unless_the_user_set_glibcs_own_thresholds():
    """sim asks glibc to reuse freed [B, N, K] blocks instead of page-faulting a fresh mmap each step; a user's
    MALLOC_*_THRESHOLD_ wins. Shown by the page faults of allocating and freeing 64 MiB tensors in a loop."""
    import platform
    import subprocess
    import sys

    from sim import _keep_large_blocks

    assert not _keep_large_blocks({"MALLOC_MMAP_THRESHOLD_": "1"})
    assert not _keep_large_blocks({"MALLOC_TRIM_THRESHOLD_": "1"})
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc only")
    probe = ("import resource, sys\n"
             "if sys.argv[1] == 'sim':\n    import sim\n"
             "import torch\n"
             "for _ in range(20):\n    torch.ones(16 * 2**20)\n"  # the heap grows to fit, then stays
             "before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
             "for _ in range(20):\n    torch.ones(16 * 2**20)\n"
             "print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)\n")
    faults = {how: int(subprocess.run([sys.executable, "-c", probe, how], capture_output=True, text=True,
                                      check=True).stdout) for how in ("sim", "plain")}
    assert faults["sim"] * 5 < faults["plain"], faults  # 20 x 16k pages of 4 KiB without; a round or none with
