"""The language-model side of the ``advice`` protocol: advisors' messages, clients' replies and choices.

Every call is one batch for every world and client that speaks this turn (through the run's response
cache, ``plugins.decisions.speakers``):

- an LLM **advisor** arm writes each of its clients a message, read into a value vector by its reader;
  from the second turn its prompt also holds what it said last and what the client replied;
- with ``client:`` (a full LLM dialogue) every client that heard a message **replies** through the client
  persona, speaking from its own current values (the persona's system prompt filled with them); a
  parametric advisor's message is put to the client in words first (what the message vector stresses);
- at the choice, the client persona's **choice call** picks an option, its prompt holding the dialogue
  (steered by the choice logits on ``scripted``, scored by the real model's token probabilities on
  ``transformers``).

The dialogue's texts live in the protocol's carry as UTF-8 bytes (``message_text`` and ``reply_text``,
``[B, clients, turns, TEXT_BYTES]`` uint8, zero-padded), so the next turn's prompts, a checkpoint and a
restarted world see them as they see every other piece of run state; a longer text is cut at a
character boundary.
"""

from __future__ import annotations

import torch

from .domains import Domain
from .speakers import describe

TEXT_BYTES = 384
"""Bytes kept per message and reply in the carry (a reply of about 60 words)."""


def transcript(b: int, n: int, turns: int, device) -> dict[str, torch.Tensor]:
    """An empty dialogue per client: ``message_text`` and ``reply_text`` [B, n, turns, TEXT_BYTES] uint8."""
    empty = torch.zeros((b, n, turns, TEXT_BYTES), dtype=torch.uint8, device=device)
    return {"message_text": empty, "reply_text": empty.clone()}


def encode(text: str) -> torch.Tensor:
    """``text`` as at most TEXT_BYTES bytes of UTF-8, zero-padded, cut where a character starts."""
    data = text.encode("utf-8")
    if len(data) > TEXT_BYTES:  # decoding the cut drops only a character left incomplete at its end
        data = data[:TEXT_BYTES].decode("utf-8", errors="ignore").encode("utf-8")
    row = torch.zeros(TEXT_BYTES, dtype=torch.uint8)
    row[:len(data)] = torch.tensor(list(data), dtype=torch.uint8)
    return row


def decode(row: torch.Tensor) -> str:
    data = bytes(row.cpu().tolist())
    return data.rstrip(b"\0").decode("utf-8", errors="replace")


def spoken(message: torch.Tensor, dims) -> str:
    """A parametric advisor's message vector put in words: the two values it stresses most."""
    values = {d: float(v) for d, v in zip(dims, message.tolist())}
    return f"Think about what matters most to you here: {describe(values, top=2)}."


def _history(carry, b: int, i: int, turn: int) -> tuple[str, str] | None:
    """What the advisor said and the client replied at the turn before ``turn`` (None on the first)."""
    if "reply_text" not in carry or turn < 2:
        return None
    return decode(carry["message_text"][b, i, turn - 2]), decode(carry["reply_text"][b, i, turn - 2])


# ---------------------------------------------------------------- advisors


def advisor_messages(arm, x, goal, eps, world, carry, rng, setup, turn, speaking, first_row: int):
    """One batch of chat requests for the arm's clients addressed this turn, read into vectors.

    Returns the messages [B, n, K] (NaN where none), the events, and each message's text by (world, client).
    """
    from sim.llm import complete

    talk, dims = arm["speaker"], world.space.dimensions
    shown = torch.full_like(x, float("nan"))
    where = speaking.nonzero().tolist()
    if not where:
        return shown, [], {}
    seeds = rng.integers(f"advice/{arm['group'].name}/seed", 2**31 - 1, tuple(speaking.shape)).cpu()
    xs, goals, bounds = x.cpu(), goal.cpu(), eps.cpu()
    requests = []
    for b, i in where:
        domain = setup["domains"][int(carry["domain"][b])]
        tactic = arm["tactics"][(int(turn[b]) - 1) % len(arm["tactics"])] if arm["tactics"] else None
        client = {d: round(float(v), 3) for d, v in zip(dims, xs[b, i].tolist())}
        aim = {d: round(float(v), 3) for d, v in zip(dims, goals[b, i].tolist())}
        requests.append(advice_request(talk, world.space.name, domain, client, aim, float(bounds[b, i]), tactic,
                                       int(seeds[b, i]), {"world": b, "agent": i, "turn": int(turn[b])},
                                       _history(carry, b, i, int(turn[b]))))
    responses = complete(talk.backend, requests)
    vectors, notes = talk.reader.read(responses, dims, talk.backend)
    events, texts = [], {}
    for (b, i), request, response, vector, note in zip(where, requests, responses, vectors, notes):
        if vector is not None:
            shown[b, i] = torch.tensor(vector, dtype=shown.dtype)
            texts[(b, i)] = response.text
        events.append({"event": "advice_message", "persona": talk.persona.name, "world": b,
                       "client": first_row + i, "turn": int(turn[b]),
                       "tactic": request.hints["tactics"][0] if request.hints.get("tactics") else None,
                       "prompt_hash": request.prompt_hash(), "response": response.text,
                       "message": None if vector is None else [round(float(v), 4) for v in vector],
                       "cached": response.cached, "error": response.error, "reader": str(note) or None})
    return shown, events, texts


def advice_request(talk, space, domain: Domain, client, aim, bound, tactic, seed, tag, history=None):
    from sim.llm import ChatRequest

    options = "; ".join(domain.describe(j) for j in range(domain.size))
    system = talk.system(space, aim, [tactic] if tactic else None)
    user = (f"You are advising one person on a decision: {domain.question} The options: {options}. "
            f"The person cares most about {describe(client, top=3)}.")
    if history is not None:
        user += f' Last time you told them: "{history[0]}" They replied: "{history[1]}"'
    user += (" Write one short message (at most two sentences) to them."
             + (f" Use this tactic: {tactic.replace('_', ' ')}." if tactic else ""))
    hints = {"purpose": "message", "profile": dict(talk.persona.values[space]), "strategy": talk.persona.strategy,
             "goal": aim, "audience": client, "bound": round(bound, 4), "tactics": [tactic] if tactic else []}
    return ChatRequest(messages=({"role": "system", "content": system}, {"role": "user", "content": user}),
                       sampling=talk.sampling, seed=seed, hints=hints, tag=tag)


# ---------------------------------------------------------------- clients


def client_replies(talk, world, carry, setup, x, messages, texts, heard, turn, slot, rng, first_row: int):
    """Every client that heard a message this turn replies, one batch; the texts go into the carry.

    ``texts`` holds the LLM advisors' message texts by (world, client); any other message (a parametric
    advisor's, one written in from outside) is put in words from its vector. Returns the new
    ``message_text`` and ``reply_text`` and one ``advice_reply`` event per reply.
    """
    from sim.llm import ChatRequest, complete

    where = heard.nonzero().tolist()
    message_text, reply_text = carry["message_text"].clone(), carry["reply_text"].clone()
    if not where:
        return message_text, reply_text, []
    dims, space = world.space.dimensions, world.space.name
    seeds = rng.integers("advice/client/reply_seed", 2**31 - 1, tuple(heard.shape)).cpu()
    xs, shown = x.cpu(), messages.cpu()
    requests, said = [], []
    for b, i in where:
        domain = setup["domains"][int(carry["domain"][b])]
        text = texts.get((b, i)) or spoken(shown[b, i], dims)
        own = {d: round(float(v), 3) for d, v in zip(dims, xs[b, i].tolist())}
        options = "; ".join(domain.describe(j) for j in range(domain.size))
        user = (f"You are deciding: {domain.question} The options: {options}. Your advisor says: \"{text}\" "
                "Reply to your advisor in one or two short sentences, in your own words.")
        requests.append(ChatRequest(
            messages=({"role": "system", "content": talk.system(space, None, profile=own)},
                      {"role": "user", "content": user}),
            sampling=talk.sampling, seed=int(seeds[b, i]),
            hints={"purpose": "message", "profile": own, "strategy": "neutral"},
            tag={"world": b, "agent": first_row + i, "turn": int(turn[b]), "purpose": "reply"}))
        said.append(text)
    responses = complete(talk.backend, requests)
    events = []
    for (b, i), request, response, text in zip(where, requests, responses, said):
        k = int(slot[b])
        message_text[b, i, k] = encode(text).to(message_text.device)
        reply_text[b, i, k] = encode(response.text).to(reply_text.device)
        events.append({"event": "advice_reply", "persona": talk.persona.name, "world": b, "client": first_row + i,
                       "turn": int(turn[b]), "message": text, "response": response.text,
                       "prompt_hash": request.prompt_hash(), "cached": response.cached, "error": response.error})
    return message_text, reply_text, events


def dialogue_lines(carry, b: int, i: int) -> list[str]:
    """The dialogue so far as lines ``Advisor: ...`` / ``You: ...`` (empty without a transcript)."""
    if "reply_text" not in carry:
        return []
    lines = []
    for k in range(carry["reply_text"].shape[2]):
        message, reply = decode(carry["message_text"][b, i, k]), decode(carry["reply_text"][b, i, k])
        if message:
            lines += [f"Advisor: {message}", f"You: {reply}"]
    return lines


def client_choice(talk, setup, world, out, x, logits, choice, asking, rng, first_row: int):
    """The clients' choices through the client persona's choice call, one batch; ``logits`` steer ``scripted``.

    The prompt holds the client's own values ``x`` [B, n, K] and the dialogue it had. Returns the choices [B, n] (the
    logit choice where the backend gave none) and one ``advice_client_choice`` event per client.
    """
    from sim.llm import ChoiceRequest, choose

    dims, space = world.space.dimensions, world.space.name
    where = asking.nonzero().tolist()
    seeds = rng.integers("advice/client/seed", 2**31 - 1, tuple(asking.shape)).cpu()
    logits, xs = logits.cpu(), x.cpu()
    requests = []
    for b, i in where:
        domain = setup["domains"][int(out["domain"][b])]
        k = domain.size
        lines = dialogue_lines(out, b, i)
        system = talk.system(space, None, profile={d: round(float(v), 3) for d, v in zip(dims, xs[b, i].tolist())})
        user = "\n".join(([*lines, ""] if lines else []) + [domain.question]
                         + [f"- {domain.describe(j)}" for j in range(k)])
        requests.append(ChoiceRequest(messages=({"role": "system", "content": system},
                                                {"role": "user", "content": user}),
                                      options=domain.labels, sampling=talk.sampling, seed=int(seeds[b, i]),
                                      hints={"purpose": "choice",
                                             "scores": [round(float(v), 6) for v in logits[b, i, :k]]},
                                      tag={"world": b, "agent": first_row + i}))
    responses = choose(talk.backend, requests)
    picked, events = choice.clone(), []
    for (b, i), response in zip(where, responses):
        if response.index is not None:
            picked[b, i] = response.index
        events.append({"event": "advice_client_choice", "persona": talk.persona.name, "world": b,
                       "client": first_row + i, "option": response.option, "error": response.error,
                       "logprobs": None if response.logprobs is None else [round(v, 4) for v in response.logprobs],
                       "cached": response.cached})
    return picked, events
