"""The public face of the plugin contracts: ``from sim.contracts import PluginParams, State, World``.

The contracts themselves live in ``sim.core.contracts`` and the batched
state in ``sim.core.state``; this module gathers what a plugin author needs.
"""

from .core.contracts import (  # noqa: F401
    AlignmentRule, Dynamics, Metric, NetworkGenerator, NetworkRequest, NoParams, PluginParams, Policy, PolicyOutput,
    Protocol, ProtocolOutput, Reading, StepOutput,
)
from .core.interval import Interval  # noqa: F401
from .core.perworld import per_world  # noqa: F401
from .core.rng import Streams  # noqa: F401
from .core.state import AgentParams, Group, Network, State, World  # noqa: F401

__all__ = [
    "AgentParams", "AlignmentRule", "Dynamics", "Group", "Interval", "Metric", "Network", "NetworkGenerator",
    "NetworkRequest", "NoParams", "PluginParams", "Policy", "PolicyOutput", "Protocol", "ProtocolOutput", "Reading",
    "State", "StepOutput", "Streams", "World", "per_world",
]
