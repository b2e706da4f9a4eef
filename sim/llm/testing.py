"""A fake OpenAI-compatible chat server: a test double for the ``openai`` backend.

:class:`FakeChatServer` answers ``POST /v1/chat/completions`` on 127.0.0.1
(an ephemeral port) from a thread of this process, so tests and benchmarks
make real HTTP calls without a model or a network. It is not a model: its
answer is a short deterministic echo of the last user message and the seed,
with ``usage`` token counts, so a test can predict every byte.

Faults are injected per instance, per request:

- ``per_prompt``: ``{last user message: [fault, ...]}``, consumed one per
  request carrying that message. Deterministic under concurrency, since the
  order in which requests for different prompts arrive is not.
- ``script``: ``[fault, ...]`` consumed in arrival order by the other requests.
- ``fault_rates``: ``{fault: probability}`` drawn from a generator seeded by
  ``seed`` once the two lists are used up (for load tests).

A fault is ``"ok"``, an HTTP status as a string (``"429"`` comes with a
``Retry-After`` of ``retry_after``; ``"401"`` echoes the Authorization header
in its error message, as careless servers do), ``"hang"`` (answer nothing for
``hang_s``, longer than any client timeout under test), ``"malformed"`` (a
body that is not JSON), ``"no_choices"`` (JSON without ``choices``),
``"echo_auth"`` (a normal answer whose text repeats the Authorization header,
as a careless server or a prompt-injected model might) or ``"huge"`` (a normal
answer of ``huge_chars`` characters, 4 MiB by default).

One more fault, ``"off_format"``, is a normal answer that ignores the
format asked for (the echo), as a model that does not follow instructions
gives.

Every request is recorded in ``requests`` (path, headers, parsed body, the
fault applied); ``max_in_flight`` is the most requests ever handled at once.

Run it by hand: ``python -m sim.llm.testing --port 8000 --latency 0.05``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .choice import OPTIONS_PATTERN, normalised

# plus any HTTP status given as a string, e.g. "500"
FAULTS = ("ok", "hang", "malformed", "no_choices", "echo_auth", "huge", "off_format")


def fake_reply(body: dict[str, Any], follow_format: bool = True) -> str:
    """The fake's answer to a request body, deterministic in the body.

    Like a cooperative model it follows the answer formats valuesim asks
    for: a JSON object when the prompt ends with the JSON shape of value
    ratings (``{"name": <0-10>, ...}``), one number when it asks for one
    number from 1 to 6, the most likely option of :func:`fake_choice` when it
    asks for one of a list of options. Anything else (and everything, when
    ``follow_format`` is false) gets an echo of the seed and the start of the
    last user message.
    """
    users = [m.get("content", "") for m in body.get("messages", []) if m.get("role") == "user"]
    last = users[-1] if users else ""
    digest = hashlib.sha256(f"{body.get('seed')}:{last}".encode()).digest()
    choice = fake_choice(body) if follow_format else None
    if choice:
        options, logprobs = choice
        return options[logprobs.index(max(logprobs))]
    shape = re.search(r"\{(\s*\"\w+\": <0-10>,?)+\s*\}\s*$", last) if follow_format else None
    if shape:
        keys = re.findall(r'"(\w+)": <0-10>', shape.group(0))
        return json.dumps({k: digest[i % len(digest)] % 11 for i, k in enumerate(keys)})
    if follow_format and "one number from 1 to 6" in last:
        return str(1 + digest[0] % 6)
    words = f"echo seed={body.get('seed')}: {last}".split()
    return " ".join(words[: max(1, int(body.get("max_tokens") or 16))])


FILLER_TOKEN = "Well"
FILLER_MASS = 0.1
"""The probability the fake gives a first token that starts no option."""


def fake_choice(body: dict[str, Any]) -> tuple[tuple[str, ...], tuple[float, ...]] | None:
    """For a prompt asking for one of a list of options (``sim.llm.choice.ask_for_option``): the options and
    the fake's log-probability of each as the reply's first token, ``None`` for any other prompt.

    They are deterministic in the seed and the prompt; their probabilities sum
    to 0.9, the rest going to ``FILLER_TOKEN``, so a client must normalise them.
    """
    match = OPTIONS_PATTERN.search(_last_user(body))
    if not match:
        return None
    options = tuple(line[2:] for line in match.group(1).splitlines() if line.startswith("- "))
    digest = hashlib.sha256(f"{body.get('seed')}:{_last_user(body)}".encode()).digest()
    logprobs = normalised([(digest[i % len(digest)] % 40) / 10 for i in range(len(options))])
    return options, tuple(p + math.log(1 - FILLER_MASS) for p in logprobs)


def count_tokens(text: str) -> int:
    """The fake's tokenizer: whitespace-separated words."""
    return len(text.split())


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024  # the default backlog of 5 drops connections under a burst of 128 clients
    fake: "FakeChatServer"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real servers do
    # Headers and body go out as two writes: with Nagle's algorithm the body waits for the client's delayed
    # ACK of the headers, which adds ~40 ms to every answer on Linux.
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
        pass  # a test double should not print a line per request

    def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.fake._handle(self, raw)

    def send(self, status: int, payload: bytes, headers: dict[str, str] | None = None) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a timeout under test): nothing to answer


class FakeChatServer:
    """Test double: an OpenAI-compatible chat endpoint with injected latency and faults.

    Use it as a context manager; ``base_url`` ends in ``/v1``. Attributes set
    after construction take effect on the next request.
    """

    def __init__(self, *, latency_s: float = 0.0, script: list[str] | None = None,
                 per_prompt: dict[str, list[str]] | None = None, fault_rates: dict[str, float] | None = None,
                 retry_after: str = "0", hang_s: float = 10.0, usage: bool = True, seed: int = 0,
                 huge_chars: int = 4 * 1024 * 1024, host: str = "127.0.0.1", port: int = 0):
        self.latency_s = latency_s
        self.script = list(script or [])
        self.per_prompt = {k: list(v) for k, v in (per_prompt or {}).items()}
        self.fault_rates = dict(fault_rates or {})
        self.retry_after = retry_after
        self.hang_s = hang_s
        self.usage = usage
        self.huge_chars = huge_chars
        for fault in [*self.script, *self.fault_rates, *(f for v in self.per_prompt.values() for f in v)]:
            if fault not in FAULTS and not (fault.isdigit() and len(fault) == 3):
                raise ValueError(f"unknown fault {fault!r}; faults are {', '.join(FAULTS)} or an HTTP status")
        self.requests: list[dict[str, Any]] = []
        self.max_in_flight = 0
        self._in_flight = 0
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self._stopping = threading.Event()
        self._address = (host, port)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        if self._server is None:
            raise RuntimeError("FakeChatServer is not running; use it as a context manager or call start()")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> "FakeChatServer":
        self._server = _Server(self._address, _Handler)
        self._server.fake = self
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="FakeChatServer", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Wake every hanging or sleeping handler, stop serving and close the socket."""
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = None

    def __enter__(self) -> "FakeChatServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def attempts(self, prompt: str) -> int:
        """How many requests arrived whose last user message is ``prompt``."""
        return sum(1 for r in self.requests if r["prompt"] == prompt)

    # ------------------------------------------------------------ request handling (server threads)

    def _handle(self, handler: _Handler, raw: bytes) -> None:
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            body = {}
        prompt = _last_user(body)
        with self._lock:
            fault = self._next_fault(prompt)
            self.requests.append({"path": handler.path, "headers": dict(handler.headers.items()), "body": body,
                                  "prompt": prompt, "fault": fault, "time": time.monotonic()})
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
        try:
            self._stopping.wait(self.latency_s)  # the model "thinking"; cut short when the server stops
            self._answer(handler, body, fault)
        finally:
            with self._lock:
                self._in_flight -= 1

    def _next_fault(self, prompt: str) -> str:
        queue = self.per_prompt.get(prompt)
        if queue:
            return queue.pop(0)
        if self.script:
            return self.script.pop(0)
        draw = self._rng.random()
        for fault, rate in self.fault_rates.items():
            if draw < rate:
                return fault
            draw -= rate
        return "ok"

    def _answer(self, handler: _Handler, body: dict[str, Any], fault: str) -> None:
        if handler.path.rstrip("/") != "/v1/chat/completions":
            return handler.send(404, _json({"error": {"message": f"no route {handler.path}"}}))
        if fault == "hang":
            self._stopping.wait(self.hang_s)
            return handler.send(504, _json({"error": {"message": "hung"}}))
        if fault == "malformed":
            return handler.send(200, b'{"choices": [{"message": {"content": "trunc')
        if fault == "no_choices":
            return handler.send(200, _json({"id": "fake", "object": "chat.completion", "choices": []}))
        if fault.isdigit():
            return self._answer_status(handler, int(fault))
        if fault == "echo_auth":
            text = f"{fake_reply(body)} (you sent Authorization: {handler.headers.get('Authorization', '')})"
            return handler.send(200, _json(self._completion(body, text)))
        if fault == "huge":
            return handler.send(200, _json(self._completion(body, "x" * self.huge_chars)))
        if fault == "off_format":
            return handler.send(200, _json(self._completion(body, fake_reply(body, follow_format=False))))
        handler.send(200, _json(self._completion(body)))

    def _answer_status(self, handler: _Handler, status: int) -> None:
        headers = {"Retry-After": self.retry_after} if status == 429 else None
        message = f"fake fault {status}"
        if status == 401:
            message = f"Incorrect API key provided: {handler.headers.get('Authorization', '')}"
        handler.send(status, _json({"error": {"message": message}}), headers)

    def _completion(self, body: dict[str, Any], text: str | None = None) -> dict[str, Any]:
        text = fake_reply(body) if text is None else text
        answer: dict[str, Any] = {"id": "fake", "object": "chat.completion", "model": body.get("model"),
                                  "choices": [{"index": 0, "finish_reason": "stop",
                                               "message": {"role": "assistant", "content": text}}]}
        if body.get("logprobs"):
            answer["choices"][0]["logprobs"] = _choice_logprobs(body, text)
        if self.usage:
            prompt_tokens = sum(count_tokens(m.get("content", "")) for m in body.get("messages", []))
            answer["usage"] = {"prompt_tokens": prompt_tokens, "completion_tokens": count_tokens(text),
                               "total_tokens": prompt_tokens + count_tokens(text)}
        return answer


def _choice_logprobs(body: dict[str, Any], text: str) -> dict[str, Any] | None:
    """OpenAI's ``logprobs`` for the fake's answer to a choice prompt: one token, the option, with the
    ``top_logprobs`` most likely first tokens; ``None`` for other prompts or an answer the fake did not choose."""
    choice = fake_choice(body)
    if choice is None or text not in choice[0]:
        return None
    top = sorted([*zip(*choice), (FILLER_TOKEN, math.log(FILLER_MASS))], key=lambda t: -t[1])
    top = top[:int(body.get("top_logprobs") or 0)]
    return {"content": [{"token": text, "logprob": dict(zip(*choice))[text],
                         "top_logprobs": [{"token": token, "logprob": logprob} for token, logprob in top]}]}


def _last_user(body: dict[str, Any]) -> str:
    users = [m.get("content", "") for m in body.get("messages", []) if isinstance(m, dict) and m.get("role") == "user"]
    return users[-1] if users else ""


def _json(data: Any) -> bytes:
    return json.dumps(data).encode()


def main(argv: list[str] | None = None) -> None:
    """Serve until interrupted (for trying a client by hand, or a benchmark in a separate process)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="0: an ephemeral port (printed)")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before each answer")
    args = parser.parse_args(argv)
    with FakeChatServer(latency_s=args.latency, port=args.port) as server:
        print(server.base_url, flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
