"""llama.cpp backend: GGUF models in this process, one request at a time.

Generation runs in a worker thread (llama.cpp blocks) and hands chunks to the
event loop through a queue; a client that goes away sets a flag the thread
checks after every token, so an abandoned request stops generating at once.

Log-probabilities come from the logits of the sampling step. llama-cpp-python
only fills its score matrix with ``logits_all=True``, which keeps vocabulary ×
context floats (about 2 GB for Gemma 3); instead, right after each token is
sampled, the last row of logits is still in the context and is read there.
"""

from __future__ import annotations

import asyncio
import codecs
import logging
import os
import random
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, AsyncIterator

import numpy as np

from ..errors import ModelyardError, invalid
from ..extras import require
from ..wire import ChatCompletionRequest, CompletionRequest, EmbeddingRequest, new_id, now, usage
from .templates import get_template

log = logging.getLogger(__name__)

DEFAULT_CONTEXT = 4096


class LlamaCppBackend:
    """Runs one GGUF file with llama.cpp.

    Options (a deployment's ``options``): ``context_length`` (tokens the
    instance keeps, default min(card, 4096)), ``threads`` and
    ``threads_batch`` (generation and prompt threads; the deployment divides
    the cores among its instances), ``batch_size``, ``path`` (a GGUF file to
    use instead of resolving the card's source).
    """

    max_concurrency = 1
    #: After handing over the first text, the generating thread waits (up to this long) until the event loop
    #: has sent it on before it decodes the next token. See `_run`.
    first_chunk_wait_s = 0.05

    def __init__(self, card: Any, *, context_length: int | None = None, threads: int | None = None,
                 threads_batch: int | None = None, batch_size: int = 512, path: str | None = None) -> None:
        self.card = card
        self.n_ctx = int(context_length or min(card.context_length, DEFAULT_CONTEXT))
        self.threads = threads or max(1, os.cpu_count() or 1)
        # Prompt processing uses as many threads as generation: left to llama.cpp it takes every core,
        # and instances sharing a machine then spin against each other on each prompt.
        self.threads_batch = threads_batch or self.threads
        self.batch_size = batch_size
        self.path = path
        self.template = get_template(card.chat_template) if card.chat_template else None
        self.llm: Any = None
        self._lock = asyncio.Lock()
        self._busy = threading.Lock()
        # One long-lived thread runs every generation: ggml's OpenMP team is built per calling thread,
        # and a new thread per request cost ~10 ms of time to first token (bench/local_generation.py).
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llama-generate")

    async def start(self) -> None:
        await asyncio.to_thread(self._load)

    def _load(self) -> None:
        Llama = require("llama_cpp", "local", "a GGUF model (llama.cpp)").Llama

        path = self.path or _no_path(self.card)
        adapter = getattr(self.card, "adapter", None)
        if adapter is not None and not os.path.isfile(adapter.path):
            raise FileNotFoundError(f"{self.card.id}: its LoRA adapter {adapter.path} is missing")
        log.info("loading %s from %s%s (n_ctx=%d, threads=%d)", self.card.id, path,
                 f" with adapter {adapter.path}" if adapter else "", self.n_ctx, self.threads)
        self.llm = Llama(model_path=path, n_ctx=self.n_ctx, n_threads=self.threads, n_threads_batch=self.threads_batch,
                         n_batch=self.batch_size,
                         logits_all=False, verbose=False)
        if adapter is not None:
            _apply_adapter(self.llm, adapter.path, adapter.scale)
        if self.template is None and not self.llm.metadata.get("tokenizer.chat_template"):
            log.warning("%s has no chat template in its card or its file: chat requests will be refused", self.card.id)

    async def close(self) -> None:
        self._thread.shutdown(wait=False, cancel_futures=True)
        if self.llm is not None:
            _release_sampler(self.llm)
            self.llm.close()
            self.llm = None

    async def embed(self, request: EmbeddingRequest) -> dict[str, Any]:
        raise invalid(f"model {self.card.id!r} is a {self.card.task} model and does not make embeddings", param="model")

    # --- request preparation -------------------------------------------------

    def _check_common(self, request: ChatCompletionRequest | CompletionRequest) -> None:
        if request.n not in (None, 1):
            raise invalid("n > 1 is not supported by the llama.cpp backend; send several requests instead", param="n", code="unsupported_value")
        if request.logit_bias:
            raise invalid("logit_bias is not supported by the llama.cpp backend", param="logit_bias", code="unsupported_parameter")

    def _chat_prompt(self, request: ChatCompletionRequest) -> tuple[list[int], list[str]]:
        self._check_common(request)
        if request.tools:
            raise invalid("tools are not supported by the llama.cpp backend", param="tools", code="unsupported_parameter")
        if request.response_format and request.response_format.get("type") not in (None, "text"):
            raise invalid("response_format other than text is not supported by the llama.cpp backend", param="response_format", code="unsupported_value")
        for i, m in enumerate(request.messages):
            if isinstance(m.content, list) and any(p.type != "text" for p in m.content):
                raise invalid("only text content parts are supported by this model", param=f"messages.{i}.content", code="unsupported_value")
        if self.template is not None:
            text = self.template.render(request.messages)
            stops = list(self.template.stop) + [s for s in self.card.stop if s not in self.template.stop]
            tokens = self.llm.tokenize(text.encode(), add_bos=True, special=True)
        else:
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter

            tmpl = self.llm.metadata.get("tokenizer.chat_template")
            if not tmpl:
                raise invalid(f"model {self.card.id!r} has no chat template; use /v1/completions or set chat_template in its card", param="messages")
            eos = self.llm.detokenize([self.llm.token_eos()]).decode(errors="ignore")
            bos = self.llm.detokenize([self.llm.token_bos()]).decode(errors="ignore")
            fmt = Jinja2ChatFormatter(tmpl, eos_token=eos, bos_token=bos)
            result = fmt(messages=[m.model_dump(exclude_none=True) for m in request.messages])
            stops = list(self.card.stop) + ([result.stop] if isinstance(result.stop, str) else list(result.stop or []))
            tokens = self.llm.tokenize(result.prompt.encode(), add_bos=not result.added_special, special=True)
        return tokens, stops

    def _completion_prompt(self, request: CompletionRequest) -> tuple[list[int], str]:
        self._check_common(request)
        if request.suffix:
            raise invalid("suffix is not supported by the llama.cpp backend", param="suffix", code="unsupported_parameter")
        if request.best_of not in (None, 1):
            raise invalid("best_of > 1 is not supported by the llama.cpp backend", param="best_of", code="unsupported_value")
        prompt = request.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
            if len(prompt) != 1:
                raise invalid("a list of several prompts is not supported by the llama.cpp backend; send one prompt per request", param="prompt", code="unsupported_value")
            prompt = prompt[0]
        if isinstance(prompt, str):
            return self.llm.tokenize(prompt.encode(), add_bos=True, special=False), prompt
        tokens = list(prompt)
        n_vocab = self.llm.n_vocab()
        if any(not 0 <= t < n_vocab for t in tokens):
            raise invalid(f"prompt token ids must be in [0, {n_vocab})", param="prompt")
        return tokens, self.llm.detokenize(tokens).decode(errors="replace")

    def _budget(self, n_prompt: int, request: ChatCompletionRequest | CompletionRequest, param: str) -> int:
        limit = request.token_limit
        if n_prompt == 0:
            raise invalid("the prompt is empty", param=param)
        if n_prompt >= self.n_ctx or (limit is not None and n_prompt + limit > self.n_ctx):
            asked = f"{n_prompt + (limit or 0)} tokens ({n_prompt} in the {param}, {limit or 0} for the completion)"
            raise ModelyardError(
                f"This model's maximum context length is {self.n_ctx} tokens. However, you requested {asked}. "
                "Please reduce the length of the prompt or max_tokens.",
                status=400, param=param, code="context_length_exceeded")
        return limit if limit is not None else self.n_ctx - n_prompt

    # --- generation ------------------------------------------------------------

    async def generate(self, kind: str, request: ChatCompletionRequest | CompletionRequest) -> AsyncIterator[dict[str, Any]]:
        if self.llm is None:
            raise ModelyardError("model is not loaded", status=503, code="not_ready")
        if kind == "chat":
            tokens, stops = self._chat_prompt(request)  # type: ignore[arg-type]
            echo_text = ""
            param = "messages"
            want_lp = bool(request.logprobs)
            top_n = (request.top_logprobs or 0) if want_lp else 0
        else:
            tokens, prompt_text = self._completion_prompt(request)  # type: ignore[arg-type]
            stops = []
            echo_text = prompt_text if request.echo else ""
            param = "prompt"
            want_lp = request.logprobs is not None
            top_n = request.logprobs or 0
        stops += request.stop_list
        max_new = self._budget(len(tokens), request, param)
        rid = new_id("chatcmpl" if kind == "chat" else "cmpl")
        created = now()
        seed = request.seed if request.seed is not None else random.getrandbits(31)
        temperature = 1.0 if request.temperature is None else request.temperature
        top_p = 1.0 if request.top_p is None else request.top_p

        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        cancel = threading.Event()
        first_sent = threading.Event()  # set once the consumer has passed the first text on (or left)

        def put(item: Any) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop is gone: nobody is listening any more
                cancel.set()

        def run() -> None:
            # `_busy` is held by the generating thread itself: a consumer cancelled mid-stream cannot
            # wait for its thread, and the next request must not touch llama.cpp before that thread ends.
            with self._busy:
                try:
                    self._run(tokens, max_new, stops, temperature, top_p, seed, request, want_lp, top_n, cancel, put,
                              kind == "chat", first_sent)
                except BaseException as exc:  # handed to the consumer, which re-raises it
                    put(exc)
                finally:
                    put(None)

        async with self._lock:  # requests queue here, in arrival order
            self._thread.submit(run)
            try:
                async for chunk in self._consume(kind, queue, rid, created, echo_text, want_lp, len(tokens),
                                                 first_sent):
                    yield chunk
            finally:
                cancel.set()  # the thread stops after the token it is on
                first_sent.set()

    async def _consume(self, kind: str, queue: asyncio.Queue[Any], rid: str, created: int,
                       echo_text: str, want_lp: bool, n_prompt: int,
                       first_sent: threading.Event) -> AsyncIterator[dict[str, Any]]:
        """Turn what the generating thread hands over into OpenAI chunks.

        `first_sent` is set when the consumer asks for the chunk after the first one that
        carries text: by then it has passed that one on (a worker has written it to its socket).
        """
        started = False
        while True:
            item = await queue.get()
            if item is None:
                break
            if isinstance(item, BaseException):
                raise item
            text, finish, lps, counts = item
            if not started:
                started = True
                if kind == "chat":
                    yield _chat_chunk(rid, created, self.card.id, {"role": "assistant", "content": ""}, None)
                if echo_text:
                    yield _text_chunk(rid, created, self.card.id, echo_text, None, None)
            if text or finish or lps:
                if kind == "chat":
                    lp = {"content": lps} if want_lp else None
                    delta = {"content": text} if text else {}
                    yield _chat_chunk(rid, created, self.card.id, delta, finish, lp)
                else:
                    yield _text_chunk(rid, created, self.card.id, text, finish,
                                      _legacy_logprobs(lps) if want_lp else None)
                first_sent.set()
            if finish:
                yield {"id": rid, "object": "chat.completion.chunk" if kind == "chat" else "text_completion",
                       "created": created, "model": self.card.id, "choices": [], "usage": usage(n_prompt, counts)}

    def _run(self, tokens: list[int], max_new: int, stops: list[str], temperature: float, top_p: float, seed: int,
             request: Any, want_lp: bool, top_n: int, cancel: threading.Event, put: Any, strip_lead: bool,
             first_sent: threading.Event) -> None:
        """The generation loop (in a thread). Hands ``(text, finish, logprobs, tokens so far)`` to `put`.

        Text that could be the start of a stop sequence is held back until it is
        clear it is not; a token's logprob entry travels with the text it starts in,
        so the entries of a stop sequence are never reported.

        Once the first text is handed over, the loop waits for `first_sent` (at most
        `first_chunk_wait_s`) before the next token: decoding takes every core the
        instance has, and the event loop that sends the first token on would
        otherwise wait for a core (and the GIL) behind it, which is time to first
        token. Waiting costs the next token the event loop's turn, a fraction of a
        millisecond, once per request.
        """
        import llama_cpp

        if cancel.is_set():  # the caller left while this request waited for the model
            return
        llm = self.llm
        llm.set_seed(seed)
        if request.seed is not None:
            # Reusing the cached prompt prefix evaluates the last prompt token alone, which shifts the
            # logits slightly; a caller who fixes the seed wants the same text, so evaluate it all.
            llm.reset()
        # llama-cpp-python samples straight from the context's logits when the whole prompt is already
        # cached, and that path can abort in native code (GGML_ASSERT logits != nullptr, seen here):
        # flagging the state stale makes it re-evaluate the last prompt token instead (one token's work).
        llm._requires_eval = True
        vocab = llm._model.vocab
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        text = ""
        sent = 0
        count = 0
        pending_lp: list[tuple[int, dict[str, Any]]] = []  # (offset in text where the token starts, entry)
        hold = max((len(s) for s in stops), default=0)
        finish = None
        gen = llm.generate(tokens, top_k=0, top_p=top_p, min_p=0.0, typical_p=1.0, temp=temperature,
                           repeat_penalty=1.0, frequency_penalty=request.frequency_penalty or 0.0,
                           presence_penalty=request.presence_penalty or 0.0, reset=True)

        def take_lp(upto: int) -> list[dict[str, Any]]:
            nonlocal pending_lp
            out = [e for start, e in pending_lp if start < upto]
            pending_lp = [(start, e) for start, e in pending_lp if start >= upto]
            return out

        try:
            for token in gen:
                count += 1
                if llama_cpp.llama_vocab_is_eog(vocab, token):
                    finish = "stop"
                    break
                entry = self._logprob_entry(token, top_n) if want_lp else None
                start_at = len(text)
                text += decoder.decode(llm.detokenize([token], special=False))
                if strip_lead and sent == 0:
                    text = text.lstrip()  # "Assistant:" is followed by a space the reply should not start with
                    start_at = 0
                if entry is not None:
                    pending_lp.append((start_at, entry))
                if stops:
                    cut = min((i for i in (text.find(s, max(0, sent - hold)) for s in stops) if i >= 0), default=-1)
                    if cut >= 0:
                        text = text[:cut]
                        finish = "stop"
                        break
                    safe = len(text) - _partial_stop(text, stops)
                else:
                    safe = len(text)
                if count >= max_new:
                    finish = "length"
                    break
                if cancel.is_set():
                    return
                if safe > sent:
                    put((text[sent:safe], None, take_lp(safe), count))
                    if sent == 0:
                        first_sent.wait(self.first_chunk_wait_s)
                    sent = safe
        finally:
            gen.close()
            _release_sampler(llm)
        if finish == "length":
            text += decoder.decode(b"", final=True)
        # At a stop, the entries of the stop sequence (past the cut) are dropped; at the length limit, none are.
        put((text[sent:], finish or "stop", take_lp(len(text) if finish == "stop" else sys.maxsize), count))

    def _logprob_entry(self, token: int, top_n: int) -> dict[str, Any]:
        import llama_cpp

        llm = self.llm
        n_vocab = llm.n_vocab()
        ptr = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1)
        logits = np.ctypeslib.as_array(ptr, shape=(n_vocab,)).astype(np.float64)
        top = logits.max()
        logsum = top + np.log(np.exp(logits - top).sum())
        entry = _token_entry(llm, token, float(logits[token] - logsum))
        if top_n:
            best = np.argpartition(-logits, top_n)[:top_n]
            best = best[np.argsort(-logits[best])]
            entry["top_logprobs"] = [_token_entry(llm, int(t), float(logits[t] - logsum)) for t in best]
        else:
            entry["top_logprobs"] = []
        return entry


def _release_sampler(llm: Any) -> None:
    """Free the sampler chain that ``Llama.generate`` built for the request just finished, now.

    Once it has sampled, a chain holds a candidates buffer of n_vocab entries (3 MiB for Gemma 3's
    262,144 tokens), and llama-cpp-python's ``LlamaSampler`` sits in a reference cycle with its own
    ExitStack, so a dropped one is freed only by a full garbage collection, which a long-lived
    process runs rarely. The chains piled up: the instance's anonymous memory grew 212 -> 293 MiB in
    a 30-minute soak, and 192 -> 345 MiB over 200 requests in bench/instance_memory.py (a bare
    ``Llama.create_completion`` loop grows alike); with this, 177 -> 180 MiB.
    """
    sampler = getattr(llm, "_sampler", None)
    llm._sampler = None
    if sampler is not None:
        sampler.close()  # frees the chain and empties the ExitStack, which breaks the cycle


def _token_entry(llm: Any, token: int, logprob: float) -> dict[str, Any]:
    raw = llm.detokenize([token], special=True)
    return {"token": raw.decode(errors="replace"), "logprob": logprob, "bytes": list(raw)}


def _partial_stop(text: str, stops: list[str]) -> int:
    """Length of the longest tail of `text` that could still become a stop sequence."""
    best = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:k]):
                best = k
                break
    return best


def _chat_chunk(rid: str, created: int, model: str, delta: dict[str, Any], finish: str | None,
                logprobs: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}]}


def _text_chunk(rid: str, created: int, model: str, text: str, finish: str | None,
                logprobs: dict[str, Any] | None) -> dict[str, Any]:
    return {"id": rid, "object": "text_completion", "created": created, "model": model,
            "choices": [{"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish}]}


def _legacy_logprobs(entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "tokens": [e["token"] for e in entries],
        "token_logprobs": [e["logprob"] for e in entries],
        "top_logprobs": [{t["token"]: t["logprob"] for t in e["top_logprobs"]} for e in entries],
        "text_offset": [],
    }


def _no_path(card: Any) -> str:
    raise ValueError(f"backend for '{card.id}' needs the path of its weights (options.path)")


def _apply_adapter(llm: Any, path: str, scale: float) -> None:
    """Apply a LoRA adapter to a loaded model's context, keeping the base file memory-mapped.

    ``Llama(lora_path=…)`` turns mmap off, so every tuned instance held a private copy of its base
    (a 270M base: 355 MiB each, against 123 MiB for an instance sharing the mapped file —
    `bench/adapter_memory.py`). llama.cpp applies an adapter in the compute graph and never writes
    the base weights, so the adapter is loaded and set here through llama.cpp's own calls on a model
    loaded with mmap: instances of one base, tuned or not, share its pages.
    """
    import ctypes

    import llama_cpp

    handle = llama_cpp.llama_adapter_lora_init(llm._model.model, path.encode("utf-8"))
    if not handle:
        raise ValueError(f"llama.cpp could not load the LoRA adapter {path}")
    # llama.cpp frees an adapter with its model, which the Llama object closes after the context
    adapters = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(handle)
    scales = (ctypes.c_float * 1)(scale)
    if llama_cpp.llama_set_adapters_lora(llm._ctx.ctx, adapters, 1, scales):
        raise ValueError(f"llama.cpp could not apply the LoRA adapter {path}")

