"""What every backend's choice call shares: the draw among scored options, and the text format.

A backend that scores the options (``scripted``, ``transformers``) turns its
scores into log-probabilities with :func:`normalised` and picks with
:func:`pick`. A backend that can only answer in text (``openai``) asks for one
of the options with :func:`ask_for_option` and reads the answer back with
:func:`read_choice`; :func:`first_token_logprobs` estimates the options'
log-probabilities from a server's top log-probabilities of the first token.
The loopback test server (:mod:`sim.llm.testing`) recognises the request
through :data:`OPTIONS_PATTERN`.
"""

from __future__ import annotations

import math
import random
import re
from typing import Iterable, Sequence

CHOICE_INSTRUCTION = "Answer with exactly one of these options and nothing else:"
OPTIONS_PATTERN = re.compile(re.escape(CHOICE_INSTRUCTION) + r"\n((?:- [^\n]+(?:\n|$))+)\s*$")
"""Matches the end of a user message made by :func:`ask_for_option`; group 1 holds the ``- option`` lines."""
_TRIM = " \t\r\n\"'`*_.,;:!?-"


def normalised(scores: Sequence[float]) -> tuple[float, ...]:
    """Log-probabilities ``scores - logsumexp(scores)``: their exponentials sum to 1."""
    top = max(scores)
    if math.isinf(top):  # all -inf: nothing to prefer, so no option is preferred
        return tuple(-math.log(len(scores)) for _ in scores)
    total = top + math.log(sum(math.exp(s - top) for s in scores))
    return tuple(s - total for s in scores)


def pick(logprobs: Sequence[float], temperature: float, seed: int) -> int:
    """The most likely option at temperature 0 (the first on a tie), else a draw from
    ``softmax(logprobs / temperature)`` by a generator seeded with ``seed`` alone."""
    if temperature <= 0:
        return max(range(len(logprobs)), key=lambda i: (logprobs[i], -i))
    weights = [math.exp(p) for p in normalised([p / temperature for p in logprobs])]
    draw = random.Random(seed).random()
    for index, weight in enumerate(weights):
        draw -= weight
        if draw < 0:
            return index
    return max(i for i, w in enumerate(weights) if w > 0)  # rounding left a sliver at the end


def ask_for_option(messages: Sequence[dict[str, str]], options: Sequence[str]) -> tuple[dict[str, str], ...]:
    """``messages`` with the instruction to answer with one of ``options`` (one ``- option`` a line)
    at the end of the last user message, or in a user message of its own when the last is not the user's."""
    suffix = CHOICE_INSTRUCTION + "\n" + "\n".join(f"- {option}" for option in options)
    messages = [dict(m) for m in messages]
    if messages and messages[-1].get("role") == "user":
        messages[-1]["content"] = f"{messages[-1]['content']}\n\n{suffix}"
    else:
        messages.append({"role": "user", "content": suffix})
    return tuple(messages)


def read_choice(text: str, options: Sequence[str]) -> int | None:
    """Which option a reply names: exactly, then ignoring case, then as the reply's first words
    (the longest option that starts it, ``"Blue, clearly."`` → ``blue``); ``None`` if none or several."""
    reply = text.strip(_TRIM)
    for same in (str.__eq__, lambda a, b: a.casefold() == b.casefold()):
        found = [i for i, option in enumerate(options) if same(reply, option.strip(_TRIM))]
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            return None
    folded = reply.casefold()
    starts = [i for i, option in enumerate(options) if _starts_with_words(folded, option.strip(_TRIM).casefold())]
    longest = max((len(options[i]) for i in starts), default=0)
    starts = [i for i in starts if len(options[i]) == longest]
    return starts[0] if len(starts) == 1 else None


def first_token_logprobs(top: Iterable[tuple[str, float]], options: Sequence[str]) -> tuple[float, ...] | None:
    """The options' log-probabilities, normalised over them, from a server's most likely first tokens.

    ``top`` is ``(token, logprob)`` at the reply's first position. A token
    counts for an option when, trimmed and ignoring case, it is a non-empty
    start of that option and of no other; an option's mass is the sum over
    its tokens. ``None`` when some option gets no token (it is not among the
    top ones, or shares its first token with another option): the tokens
    do not tell the options apart.
    """
    folded = [option.strip(_TRIM).casefold() for option in options]
    mass: list[list[float]] = [[] for _ in options]
    for token, logprob in top:
        piece = token.strip(_TRIM).casefold()
        owners = [i for i, option in enumerate(folded) if piece and option.startswith(piece)]
        if len(owners) == 1:
            mass[owners[0]].append(logprob)
    if not all(mass):
        return None
    return normalised([_logsumexp(m) for m in mass])


def _starts_with_words(text: str, prefix: str) -> bool:
    return bool(prefix) and text.startswith(prefix) and (len(text) == len(prefix) or not text[len(prefix)].isalnum())


def _logsumexp(values: Sequence[float]) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))
