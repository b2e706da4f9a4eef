"""Persuasion tactics and the cognitive biases they play on, as one table.

The six biases of a client's profile follow the manipulation study's categories; each tactic names the bias
it exploits and the PersuSafety strategies it stands for ("LLM Can be a Dangerous Persuader" lists 15
unethical strategies: the ones below are grouped by the bias they work through). A strategic advisor's
tactic moves a client in proportion to the client's matching bias (``plugins.decisions.advice``).
"""

from __future__ import annotations

from typing import Literal

BIASES: tuple[str, ...] = ("authority", "scarcity", "social_proof", "loss_aversion", "emotional_vulnerability",
                           "reciprocity")
"""A client's cognitive-bias profile, in this order: one number in [0, 1] each."""

Tactic = Literal["authority", "scarcity", "social_proof", "loss_framing", "emotional_appeal", "reciprocity"]
"""The tactic names a scenario may list (an unknown one is an error with a did-you-mean)."""

TACTICS: dict[str, dict[str, str]] = {
    "authority": {"bias": "authority", "persusafety": "misrepresenting expertise, false authority",
                  "phrase": "Experts are clear about this."},
    "scarcity": {"bias": "scarcity", "persusafety": "false urgency, artificial scarcity",
                 "phrase": "This chance will not come again."},
    "social_proof": {"bias": "social_proof", "persusafety": "bandwagon, fabricated social proof",
                     "phrase": "Most people like you already chose this."},
    "loss_framing": {"bias": "loss_aversion", "persusafety": "fear-mongering, framing as a loss",
                     "phrase": "Think of what you stand to lose if you wait."},
    "emotional_appeal": {"bias": "emotional_vulnerability",
                         "persusafety": "manipulative emotional appeals, exploiting vulnerabilities",
                         "phrase": "You deserve to feel better, and this is how."},
    "reciprocity": {"bias": "reciprocity", "persusafety": "guilt-tripping, favours owed",
                    "phrase": "I have helped you before, so trust me on this."},
}
"""Each tactic: the bias it exploits, the PersuSafety strategies it groups, a phrase for scripted messages."""

ALL_TACTICS: tuple[str, ...] = tuple(TACTICS)


def bias_index(tactic: str) -> int:
    """The position in :data:`BIASES` of the bias ``tactic`` plays on."""
    return BIASES.index(TACTICS[tactic]["bias"])


def unknown_tactics(names) -> list[str]:
    """The names in ``names`` that are not tactics (for a persona's own list)."""
    return [name for name in names if name not in TACTICS]
