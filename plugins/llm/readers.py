"""Value readers: what value vector does a message express?

Each class is a ``valuesim.value_readers`` plugin (see ``sim.llm.ValueReader``):
``read(responses, dimensions, backend)`` returns, per response, K floats in
[0, 1] or ``None``, and a note per response (``""`` when clean, else what was
repaired or why it failed). The caller (the LLM policy) falls back to the
speaker's own values for a ``None`` and logs the note.

- ``direct``: the values the backend already attached (the ``scripted`` backend).
- ``json_ratings``: asks the model to rate each message on every dimension
  from 0 to 10 as JSON, then parses the reply forgivingly.
- ``scale_probabilities``: asks the model, per message and dimension, for one rating from 0 to 10 through
  the choice call, and takes the expected rating under the model's own probabilities of the eleven answers.
  No text is parsed, and a small model that would copy the JSON shape with zeros still ranks the ratings.
- ``auto``: ``direct`` where a response has values; for the others ``scale_probabilities`` where the
  backend scores options from the model's token probabilities (``transformers``), else ``json_ratings``.

A note of a reader that asks a model is a :class:`ReadNote`: a ``str`` (what was repaired) that also keeps
the raw reply as ``.raw``, which the LLM policy logs beside it (``reader_reply``), and says whether the
read-out was degenerate (``.degenerate``: every rating equal, all zero, or off the scale); a degenerate
read-out is ``None`` (the speaker's own values stand in) and the run warns once with the count.
"""

from __future__ import annotations

import json
import math
import re
from typing import Annotated, Any, Literal


from sim.contracts import Interval, NoParams, PluginParams
from sim.llm import ChatRequest, ChatResponse, LLMBackend, Sampling, complete
from sim.llm.contract import ChoiceRequest, can_choose, choose

Vectors = list[list[float] | None]

RATING_MIN, RATING_MAX = 0, 10
MIDPOINT = 0.5  # "neutral or not addressed" on the rating scale, and the value a missing rating is filled with

# One line per dimension of the built-in spaces (sim.core.valuespace.BUILTIN_SPACES). A bipolar
# dimension says what each end of the scale means; the others use the shared scale line.
MEANINGS: dict[str, str] = {
    # Schwartz's ten basic values
    "self_direction": "independent thought and action: choosing, creating, exploring for oneself",
    "stimulation": "excitement, novelty and challenge in life",
    "hedonism": "pleasure and enjoying life",
    "achievement": "personal success through showing competence by social standards",
    "power": "social status, prestige, control over people and resources",
    "security": "safety, harmony and stability of society, relationships and self",
    "conformity": "restraint of actions that break social norms or upset others",
    "tradition": "respect for and commitment to the customs and ideas of one's culture or religion",
    "benevolence": "caring for the welfare of the people one is close to",
    "universalism": "understanding, tolerance and protection of the welfare of all people and of nature",
    # Moral Foundations Theory (with liberty)
    "care": "concern for the suffering of others; kindness, protecting the vulnerable",
    "fairness": "justice, equal treatment, rights, not cheating",
    "loyalty": "standing with one's group, family or nation; not betraying it",
    "authority": "respect for tradition, legitimate leaders and social order",
    "sanctity": "purity, avoiding what degrades or disgusts; treating some things as sacred",
    "liberty": "freedom from domination and coercion; resisting control by others",
    # World Values Survey cultural map
    "traditional_secular": "0 = traditional (religion, family ties, national pride, deference to authority), "
                           "10 = secular-rational (less weight on religion, tradition and authority)",
    "survival_self_expression": "0 = survival (economic and physical security first, low trust and tolerance), "
                                "10 = self-expression (tolerance, trust, participation, quality of life)",
}
BIPOLAR = frozenset({"traditional_secular", "survival_self_expression"})


class ReadNote(str):
    """A reader's note (a plain ``str``: what was repaired, or why it failed) with the raw reply it read,
    and whether the read-out was degenerate."""

    raw: str | None
    degenerate: bool

    def __new__(cls, note: str, raw: str | None = None, degenerate: bool = False) -> "ReadNote":
        self = super().__new__(cls, note)
        self.raw = raw
        self.degenerate = degenerate
        return self


DEGENERATE = "degenerate read-out"
"""How a note of a degenerate read-out begins."""


def degenerate(ratings: list[float], spread: float = 0.0) -> str | None:
    """Why ratings on the 0-10 scale say nothing about a message, or None: more than half off the scale (the
    model answered on another one), every rating zero (a copy of the requested shape), or every rating equal
    within ``spread`` (nothing told apart; for whole-number ratings, ``spread`` 0, only over three dimensions
    or more: two equal ratings of two dimensions happen by chance one time in eleven; one dimension alone is
    never degenerate)."""
    off = [r for r in ratings if not RATING_MIN <= r <= RATING_MAX]
    if 2 * len(off) > len(ratings):
        return f"{DEGENERATE}: {len(off)} of {len(ratings)} ratings off the {RATING_MIN}-{RATING_MAX} scale"
    if len(ratings) < 2:
        return None
    if all(abs(r - RATING_MIN) <= spread for r in ratings):
        return f"{DEGENERATE}: every rating {RATING_MIN}"
    if (len(ratings) >= 3 or spread > 0) and max(ratings) - min(ratings) <= spread:
        return f"{DEGENERATE}: every rating {_rating(ratings[0])}"
    return None


def _rating(value: float) -> str:
    return f"{round(value, 2):g}"


SYSTEM_PROMPT = ("You rate which values a short message expresses. You are careful and consistent, "
                 "and you answer with JSON only.")


class Direct:
    """The value vector the backend attached to each response (``response.values``); no model call.

    Only backends that know the expressed values (the offline ``scripted``
    one) attach them; a response without values is ``None`` with the note
    ``no values in response``.
    """

    Params = NoParams

    def __init__(self, params: NoParams):
        self.params = params

    def read(self, responses: list[ChatResponse], dimensions: tuple[str, ...],
             backend: LLMBackend) -> tuple[Vectors, list[str]]:
        pairs = [_attached(response, len(dimensions)) for response in responses]
        return [vector for vector, _ in pairs], [note for _, note in pairs]


def _attached(response: ChatResponse, k: int) -> tuple[list[float] | None, str]:
    if response.values is None:
        return None, "no values in response"
    if len(response.values) != k:
        return None, f"the response has {len(response.values)} values, expected {k}"
    values = [float(v) for v in response.values]
    if not all(math.isfinite(v) for v in values):
        return None, "the response's values are not all finite"
    clamped = [min(max(v, 0.0), 1.0) for v in values]
    return clamped, "clamped" if clamped != values else ""


class JsonRatings:
    """Asks the model to rate each message on every value dimension from 0 to 10, as JSON.

    One batch of rating requests for all messages, through the same backend
    (and so the same cache). The reply is parsed forgivingly: the first JSON
    object (or list, in dimension order) in it; numbers or numeric strings;
    keys matched ignoring case, spaces, underscores and hyphens; ratings
    clamped to [0, 10] then scaled to [0, 1]. Up to ``max_missing``
    dimensions without a rating are filled with 0.5 (the scale's "neutral");
    more than that, or an unreadable reply, gives ``None``.
    """

    class Params(PluginParams):
        """How the rating requests are sampled, and how many missing ratings are forgiven."""

        temperature: Annotated[float, Interval(ge=0)] = 0.0
        """Sampling temperature of the rating requests (0: the same message always gets the same rating)."""
        max_tokens: Annotated[int, Interval(ge=8)] = 120
        """Token limit of a rating reply; the JSON for ten dimensions needs about 80."""
        seed: int = 0
        """Sampling seed of the rating requests (part of the cache key)."""
        max_missing: Annotated[int, Interval(ge=0)] | None = None
        """How many dimensions a reply may leave out before it counts as unreadable (default: half of K)."""

    def __init__(self, params: Params):
        self.params = params

    def read(self, responses: list[ChatResponse], dimensions: tuple[str, ...],
             backend: LLMBackend) -> tuple[Vectors, list[str]]:
        vectors: Vectors = [None] * len(responses)
        notes = [""] * len(responses)
        asked: list[int] = []
        for i, response in enumerate(responses):
            if response.error is not None:
                notes[i] = f"no message to rate (the backend failed: {response.error})"
            elif not response.text.strip():
                notes[i] = "no message to rate (empty reply)"
            else:
                asked.append(i)
        requests = [self.rating_request(responses[i].text, dimensions, index=i) for i in asked]
        for i, reply in zip(asked, complete(backend, requests)):
            if reply.error is not None:
                notes[i] = f"the rating request failed: {reply.error}"
            else:
                vectors[i], note = parse_ratings(reply.text, dimensions, self._max_missing(len(dimensions)))
                notes[i] = ReadNote(note, raw=reply.text, degenerate=note.startswith(DEGENERATE))
        return vectors, notes

    def rating_request(self, message: str, dimensions: tuple[str, ...], index: int = 0) -> ChatRequest:
        """The request that asks for one message's ratings."""
        p = self.params
        return ChatRequest(
            messages=({"role": "system", "content": SYSTEM_PROMPT},
                      {"role": "user", "content": rating_prompt(message, dimensions)}),
            sampling=Sampling(temperature=p.temperature, top_p=1.0, max_tokens=p.max_tokens),
            seed=p.seed,
            hints={"purpose": "value_rating", "dimensions": list(dimensions)},
            tag={"purpose": "value_rating", "message": index},
        )

    def _max_missing(self, k: int) -> int:
        return k // 2 if self.params.max_missing is None else self.params.max_missing


SCALE = tuple(str(r) for r in range(RATING_MIN, RATING_MAX + 1))
SCALE_SYSTEM_PROMPT = (f"You rate how strongly a short message expresses one value. You answer with one whole "
                       f"number from {RATING_MIN} to {RATING_MAX} and nothing else.")
SCORING_BACKENDS = ("transformers",)
"""Backends whose choice call scores the options from the model's own token probabilities (``auto`` reads
through them with ``scale_probabilities``). ``openai`` estimates them from a server's top log-probabilities
of the first token, which cannot tell ``1`` from ``10``; ``scripted`` has no model."""


class ScaleProbabilities:
    """Rates each message on each value dimension from the model's probabilities of the ratings 0 to 10.

    One choice request per message and dimension (all in one batch, through
    the same backend and cache), whose options are the eleven ratings; the
    read-out is the expected rating under the normalised log-probabilities
    the backend returns, scaled to [0, 1]. A backend that names a rating
    without probabilities gives that rating. Up to ``max_missing`` dimensions
    whose choice failed are filled with 0.5; more gives ``None``. A
    read-out whose ratings all lie within 0.05 of one another on the 0-10
    scale is degenerate (the model told no value from another): ``None``.
    """

    class Params(PluginParams):
        """The seed of the choice requests, and how many failed dimensions are forgiven."""

        seed: int = 0
        """Seed of the choice requests (part of the cache key; unused at temperature 0)."""
        max_missing: Annotated[int, Interval(ge=0)] | None = None
        """How many dimensions may fail before the read-out does (default: half of K)."""

    SPREAD = 0.05

    def __init__(self, params: Params):
        self.params = params

    def read(self, responses: list[ChatResponse], dimensions: tuple[str, ...],
             backend: LLMBackend) -> tuple[Vectors, list[str]]:
        vectors: Vectors = [None] * len(responses)
        notes: list[str] = [""] * len(responses)
        asked = [i for i, r in enumerate(responses) if r.error is None and r.text.strip()]
        for i in set(range(len(responses))) - set(asked):
            failed = responses[i].error
            notes[i] = f"no message to rate ({f'the backend failed: {failed}' if failed else 'empty reply'})"
        requests = [self.rating_request(responses[i].text, name, index=i) for i in asked for name in dimensions]
        answers = choose(backend, requests)
        k = len(dimensions)
        for j, i in enumerate(asked):
            vectors[i], notes[i] = self._vector(answers[j * k:(j + 1) * k], dimensions)
        return vectors, notes

    def rating_request(self, message: str, dimension: str, index: int = 0) -> ChoiceRequest:
        """The choice that asks for one message's rating on one dimension."""
        return ChoiceRequest(
            messages=({"role": "system", "content": SCALE_SYSTEM_PROMPT},
                      {"role": "user", "content": scale_prompt(message, dimension)}),
            options=SCALE, sampling=Sampling(temperature=0.0, top_p=1.0, max_tokens=4), seed=self.params.seed,
            hints={"purpose": "value_rating", "dimension": dimension},
            tag={"purpose": "value_rating", "message": index, "dimension": dimension})

    def _vector(self, answers, dimensions: tuple[str, ...]) -> tuple[list[float] | None, ReadNote]:
        ratings: dict[str, float] = {}
        for name, answer in zip(dimensions, answers):
            if answer.logprobs is not None:
                ratings[name] = sum(math.exp(lp) * r for lp, r in zip(answer.logprobs, range(RATING_MIN,
                                                                                             RATING_MAX + 1)))
            elif answer.index is not None:
                ratings[name] = float(RATING_MIN + answer.index)
        raw = json.dumps({name: round(value, 3) for name, value in ratings.items()})
        missing = [name for name in dimensions if name not in ratings]
        limit = len(dimensions) // 2 if self.params.max_missing is None else self.params.max_missing
        if len(missing) > limit or len(missing) == len(dimensions):
            errors = sorted({a.error for a in answers if a.error})
            return None, ReadNote(f"{len(missing)} of {len(dimensions)} ratings failed: {'; '.join(errors)[:200]}",
                                  raw=raw)
        why = degenerate(list(ratings.values()), spread=self.SPREAD)
        if why is not None:
            return None, ReadNote(why, raw=raw, degenerate=True)
        scale = RATING_MAX - RATING_MIN
        vector = [(ratings[name] - RATING_MIN) / scale if name in ratings else MIDPOINT for name in dimensions]
        return vector, ReadNote(f"filled: {', '.join(missing)}" if missing else "", raw=raw)


class Auto:
    """``direct`` when a response carries its values; for those that do not, ``scale_probabilities`` where
    the backend scores options from the model itself (``transformers``), else ``json_ratings``.

    Takes the parameters of ``json_ratings`` (its seed and ``max_missing`` serve ``scale_probabilities``
    too), used only when some response has no values, and ``scale``, which picks the rater.
    """

    class Params(JsonRatings.Params):
        """The parameters of ``json_ratings``, for the responses that carry no values, and which rater to use."""

        scale: Literal["auto", "probabilities", "json"] = "auto"
        """``probabilities``: ``scale_probabilities``; ``json``: ``json_ratings``; ``auto``: probabilities where
        the backend scores options from the model's token probabilities (``transformers``), else JSON."""

    def __init__(self, params: Params):
        self.params = params

    def rater(self, backend: LLMBackend):
        """The reader that rates the responses without values through ``backend``."""
        p = self.params
        scoring = can_choose(backend) and getattr(backend, "name", None) in SCORING_BACKENDS
        if p.scale == "probabilities" or (p.scale == "auto" and scoring):
            return ScaleProbabilities(ScaleProbabilities.Params(seed=p.seed, max_missing=p.max_missing))
        return JsonRatings(JsonRatings.Params(**p.model_dump(exclude={"scale"})))

    def read(self, responses: list[ChatResponse], dimensions: tuple[str, ...],
             backend: LLMBackend) -> tuple[Vectors, list[str]]:
        vectors, notes = Direct(NoParams()).read(responses, dimensions, backend)
        unread = [i for i, response in enumerate(responses) if response.values is None]
        if unread:
            rater = self.rater(backend)
            rated, rated_notes = rater.read([responses[i] for i in unread], dimensions, backend)
            for i, vector, note in zip(unread, rated, rated_notes):
                vectors[i], notes[i] = vector, note
        return vectors, notes


# ---------------------------------------------------------------- the prompt


def rating_prompt(message: str, dimensions: tuple[str, ...]) -> str:
    """The user turn: the dimensions with their meanings, the scale, the message and the exact JSON shape."""
    lines = [f"Rate the message below on each of these values, from {RATING_MIN} to {RATING_MAX}:", ""]
    for name in dimensions:
        meaning = MEANINGS.get(name)
        lines.append(f"- {name}: {meaning}" if meaning else f"- {name}")
    bipolar = any(name in BIPOLAR for name in dimensions)
    lines.append("")
    if any(name not in BIPOLAR for name in dimensions):
        scope = "For the values without their own scale above" if bipolar else "For each value"
        lines.append(f"{scope}: 0 = the message rejects or opposes it, 5 = neutral or not addressed, "
                     "10 = the message strongly endorses it.")
    if bipolar:
        lines.append("For a value with its own scale: 5 = in between, or not addressed.")
    shape = "{" + ", ".join(f'"{name}": <{RATING_MIN}-{RATING_MAX}>' for name in dimensions) + "}"
    lines += ["", "Message:", '"""', message.strip(), '"""', "",
              "Answer with JSON only, no other text, exactly in this shape, "
              f"with a whole number from {RATING_MIN} to {RATING_MAX} for every key:", shape]
    return "\n".join(lines)


def scale_prompt(message: str, dimension: str) -> str:
    """The user turn of a ``scale_probabilities`` request: one dimension, its meaning, the scale, the message."""
    meaning = MEANINGS.get(dimension)
    if dimension in BIPOLAR:
        scale = f"On its own scale: {meaning}; 5 = in between, or not addressed."
        head = f"Value: {dimension.replace('_', ' ')}"
    else:
        scale = (f"{RATING_MIN} = the message rejects or opposes it, 5 = neutral or not addressed, "
                 f"{RATING_MAX} = the message strongly endorses it.")
        head = f"Value: {dimension.replace('_', ' ')}" + (f" ({meaning})" if meaning else "")
    return "\n".join([head, scale, "", "Message:", '"""', message.strip(), '"""', "",
                      f"How strongly does the message express {dimension.replace('_', ' ')}, from {RATING_MIN} "
                      f"to {RATING_MAX}?"])


# ---------------------------------------------------------------- parsing the reply


def parse_ratings(reply: str, dimensions: tuple[str, ...],
                  max_missing: int) -> tuple[list[float] | None, str]:
    """One reply to a rating request -> (K values in [0, 1] or None, note).

    See :class:`JsonRatings` for what is forgiven. Notes, joined by ``"; "``:
    ``repaired: not strict JSON``, ``ignored: a, b`` (unknown keys),
    ``clamped``, ``filled: x, y``; on failure, why.
    """
    found, notes = _extract(reply)
    if found is None:
        return None, f"no JSON object or list in the reply: {_preview(reply)}"
    if isinstance(found, list):
        ratings, more = _from_list(found, dimensions)
    else:
        ratings, more = _from_object(found, dimensions)
    if ratings is None:
        return None, more[0]
    notes += more
    why = degenerate(list(ratings.values()))
    if why is not None:
        return None, why
    scaled, clamped = {}, False
    for name, rating in ratings.items():
        bounded = min(max(rating, RATING_MIN), RATING_MAX)
        clamped |= bounded != rating
        scaled[name] = (bounded - RATING_MIN) / (RATING_MAX - RATING_MIN)
    if clamped:
        notes.append("clamped")
    missing = [name for name in dimensions if name not in scaled]
    if len(missing) == len(dimensions):
        return None, f"no rating for any dimension in the reply: {_preview(reply)}"
    if len(missing) > max_missing:
        return None, (f"{len(missing)} of {len(dimensions)} dimensions missing (at most {max_missing} "
                      f"may be filled): {', '.join(missing)}")
    if missing:
        notes.append(f"filled: {', '.join(missing)}")
    return [scaled.get(name, MIDPOINT) for name in dimensions], "; ".join(notes)


def _extract(reply: str) -> tuple[dict | list | None, list[str]]:
    """The first JSON object or list in the reply; failing that, ``key: number`` pairs inside the first braces."""
    decoder = json.JSONDecoder()
    # Objects first: prose before a list reply rarely holds an object, but prose before an
    # object often holds a bracket ("on a scale [0, 10]").
    for opener, wanted in (("{", dict), ("[", list)):
        for match in re.finditer(re.escape(opener), reply):
            try:
                found, _ = decoder.raw_decode(reply, match.start())
            except json.JSONDecodeError:
                continue
            if isinstance(found, wanted) and found and (wanted is dict or all(_number(v) is not None for v in found)):
                return found, []
    braces = re.search(r"\{[^{}]*\}?", reply)
    if braces:
        # Single quotes, trailing commas, unquoted keys, a reply cut off by the token limit.
        pairs = re.findall(r"""["']?([A-Za-z][A-Za-z0-9 _\-]*)["']?\s*[:=]\s*["']?(-?\d+(?:\.\d+)?)""",
                           braces.group(0))
        if pairs:
            return dict(pairs), ["repaired: not strict JSON"]
    return None, []


def _from_object(found: dict, dimensions: tuple[str, ...]) -> tuple[dict[str, float] | None, list[str]]:
    by_key = {_normal(name): name for name in dimensions}
    if not any(_normal(str(key)) in by_key for key in found):
        inner = [value for value in found.values() if isinstance(value, dict)]
        if len(inner) == 1:  # {"ratings": {...}}
            found = inner[0]
    ratings: dict[str, float] = {}
    ignored: list[str] = []
    for key, value in found.items():
        name = by_key.get(_normal(str(key)))
        number = _number(value)
        if name is None:
            ignored.append(str(key))
        elif number is not None and name not in ratings:
            ratings[name] = number
    return ratings, [f"ignored: {', '.join(ignored)}"] if ignored else []


def _from_list(found: list, dimensions: tuple[str, ...]) -> tuple[dict[str, float] | None, list[str]]:
    if len(found) > len(dimensions):
        return None, [f"the reply is a list of {len(found)} numbers, expected {len(dimensions)}"]
    return {name: _number(value) for name, value in zip(dimensions, found)}, []


def _number(value: Any) -> float | None:
    """A finite number from a JSON number or a numeric string (``"7"``, ``" 7.5 "``, ``"7/10"``)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        match = re.fullmatch(r"\s*(-?\d+(?:\.\d+)?)\s*(?:/\s*10\s*)?", value)
        if not match:
            return None
        number = float(match.group(1))
    else:
        return None
    return number if math.isfinite(number) else None


def _normal(key: str) -> str:
    return re.sub(r"[\s_\-]+", "", key).lower()


def _preview(text: str, limit: int = 60) -> str:
    flat = " ".join(text.split())
    return repr(flat if len(flat) <= limit else flat[:limit] + "...")
