"""Soak: minutes of mixed traffic against the real models, watching for errors, leaks and lost usage records.

``modelyard up`` (temporary MODELYARD_HOME) with its default endpoints — ``default``
(Gemma 3 270M, llama.cpp) and ``embed`` (all-MiniLM-L6-v2) — plus:

- ``assistant``: a router endpoint (``rules``: prompts with "prove" go to ``large``,
  the rest to ``small``) whose two tiers are hosted cards on the tests' OpenAI
  stub (``tests/openai_stub.py``, its own process, tiers ``/small/v1`` and
  ``/large/v1``);
- ``cached``: a semantic response cache (``--cache-mode``; the embedding model
  runs in the gateway) in front of a hosted card on the stub (tier ``/cached/v1``),
  asked a few questions over and over, some reworded. ``--cached-backend gemma``
  puts a second Gemma instance (``options: {threads: 1}``) behind it instead:
  on 2 cores two llama.cpp instances and the embedding models slow each other
  down, and the stub keeps the load on ``default`` the only generation load.

Load, a few clients at once (the machine's cores are shared with the gateway
and the models), each sending its next request after a short pause:

| client | what it sends |
|---|---|
| ``chat`` | ``default``, non-streaming, max_tokens 16 |
| ``stream`` | ``default``, streaming with ``include_usage``, max_tokens 24 |
| ``hangup`` | ``default``, streaming, max_tokens 128; closes the connection after the first content chunk |
| ``embed`` | ``embed``, 1–4 inputs |
| ``cached`` | ``cached``, temperature 0, streaming every other time |
| ``router`` | ``assistant``, streaming every other time; every third prompt goes to the large tier |
| ``batch`` | every ``--batch-every`` seconds a batch job of 6 chat lines on ``default``, waited for and read back |

Every answer is checked (status, body, a stream ends with ``[DONE]`` and has no
error event). A warm-up sends every kind once (and each cached question) and runs
one batch job; the measured window starts after it, and its start snapshot is
taken once every client has been running ``--settle-s`` (10) seconds. Reported:

- requests served and errors by kind and by status/code (hang-ups are not errors);
- p50/p99 latency per kind, and the last third of the run against the first
  third (a ratio: does it slow down over time?);
- RSS (and its anonymous part, where a leak shows) and open file descriptors
  (psutil; sockets among them) of the gateway and every instance at the start,
  middle and end: flat means within 10%; open files, which follow the
  connections open at the moment, are flat when the most in the second half of
  the run is at most 2 above the most in the first half; instance restarts;
- usage rows (``MODELYARD_HOME/modelyard.db`` after ``GET /api/usage`` flushed the
  writer) per endpoint against the requests sent, warm-up included; rows with
  status 499 against the hang-ups; rows of batch jobs against their lines.

    .venv/bin/python bench/soak.py                 # 30 minutes
    .venv/bin/python bench/soak.py --minutes 3     # a short check (~5 min in all)

Results: a summary on stdout and ``bench/results/soak.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import shutil
import sqlite3
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _procs  # noqa: E402
import _up  # noqa: E402
from _common import percentile  # noqa: E402
from _http import Connection, ConnectionLost, build_request  # noqa: E402
from _resources import Drift, snapshot  # noqa: E402
from _stub import start_stub, write_stub_cards  # noqa: E402

TARGET_FLAT = 0.10
FD_SLACK = 2  # open files: the second half's most may exceed the first half's by this many
REQUEST_TIMEOUT_S = 300.0
SSE_DONE = b"data: [DONE]\n\n"
#: the first content chunk with text in it (a first chunk may carry only the role and "")
FIRST_TEXT = re.compile(rb'"content":"[^"]')

CHAT_PROMPTS = ["What is the capital of France?", "Name three colours.", "What is two plus two?",
                "Write one sentence about the sea.", "What do bees make?", "Say hello to a friend."]
#: the cached endpoint's questions, each with a rewording a semantic cache should match
CACHED = [("What is the capital of France?", "What's the capital of France?"),
          ("What is the capital of Spain?", "What's the capital city of Spain?"),
          ("What is two plus two?", "What is 2 plus 2?"),
          ("What colour is the sky?", "What color is the sky?")]
ROUTER_PROMPTS = ["Summarise this: the meeting moved to Tuesday.", "Translate 'good morning' to French.",
                  "Prove that the square root of two is irrational."]
SENTENCES = ["a cat sleeps on the mat", "the stock market fell today", "how do I reset my password",
             "a kitten naps on the rug", "rain is expected tomorrow", "the recipe needs two eggs"]

#: client kind -> (endpoint, seconds between requests)
CLIENTS = {"chat": ("default", 2.0), "stream": ("default", 2.0), "hangup": ("default", 5.0),
           "embed": ("embed", 1.0), "cached": ("cached", 0.5), "router": ("assistant", 0.3)}
BATCH_LINES = 6


# --- set-up ---------------------------------------------------------------------------------


def start(args: argparse.Namespace, gw: _up.Gateway) -> Any:
    """The stub, the gateway with its defaults, and the router and cached endpoints."""
    stub = start_stub(gw.home)
    write_stub_cards(gw.home, {"soak-small": (stub.tier_url("small"), (0.15, 0.6)),
                               "soak-large": (stub.tier_url("large"), (2.5, 10.0)),
                               "soak-cached": (stub.tier_url("cached"), (0.15, 0.6))})
    gw.start()
    gw.wait_ready(timeout=300)
    key, url = gw.admin_key, gw.url

    def api(method: str, path: str, body: Any, expect: tuple[int, ...]) -> Any:
        code, answer = _up.http(method, url + path, body, key=key, timeout=300)
        if code not in expect:
            raise RuntimeError(f"{method} {path} answered {code}: {answer}")
        return answer

    api("POST", "/api/endpoints", {"name": "assistant"}, (201,))
    for tier in ("small", "large"):
        api("POST", "/api/endpoints/assistant/deployments", {"name": tier, "model": f"soak-{tier}"}, (201,))
    api("POST", "/api/apply", {"kind": "endpoint", "spec": {
        "name": "assistant", "policy": "router", "tiers": ["small", "large"],
        "router": {"strategy": "rules", "rules": [{"name": "proofs", "when": {"keywords": ["prove"]}, "tier": "large"}]}}},
        (200, 201))
    api("POST", "/api/endpoints", {"name": "cached", "cache": {"mode": args.cache_mode, "ttl": "1d"}}, (201,))
    deployment = ({"name": "gemma", "model": "gemma-3-270m", "options": {"threads": 1}}
                  if args.cached_backend == "gemma" else {"name": "stub", "model": "soak-cached"})
    api("POST", "/api/endpoints/cached/deployments?all_traffic=true", deployment, (201,))
    return stub


# --- requests -------------------------------------------------------------------------------


@dataclass
class Soak:
    """What the clients did; times in seconds from the start of the measured window (warm-up is negative)."""

    t0: float = field(default_factory=time.perf_counter)
    requests: list[dict[str, Any]] = field(default_factory=list)
    batches: list[dict[str, Any]] = field(default_factory=list)
    samples: list[dict[str, Any]] = field(default_factory=list)
    marks: dict[str, Any] = field(default_factory=dict)

    def now(self) -> float:
        return time.perf_counter() - self.t0


def error_code(body: bytes) -> str | None:
    try:
        return json.loads(body)["error"].get("code") or "(no code)"
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


class Clients:
    """Builds each kind's requests and checks their answers."""

    def __init__(self, port: int, key: str) -> None:
        self.port = port
        self.headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        self.rng = random.Random(7)

    def raw(self, path: str, body: dict[str, Any], extra: dict[str, str] | None = None) -> bytes:
        return build_request("127.0.0.1", self.port, path, json.dumps(body).encode(), {**self.headers, **(extra or {})})

    def chat(self, endpoint: str, prompt: str, *, stream: bool, **options: Any) -> bytes:
        body: dict[str, Any] = {"model": endpoint, "messages": [{"role": "user", "content": prompt}], **options}
        if stream:
            body.update(stream=True, stream_options={"include_usage": True})
        return self.raw("/v1/chat/completions", body)

    def next(self, kind: str, n: int) -> tuple[bytes, bool, dict[str, Any]]:
        """The `n`-th request of a client of `kind`: (bytes, streaming, what to check)."""
        if kind == "chat":
            return self.chat("default", CHAT_PROMPTS[n % len(CHAT_PROMPTS)], stream=False, max_tokens=16), False, {}
        if kind == "stream":
            return self.chat("default", CHAT_PROMPTS[n % len(CHAT_PROMPTS)], stream=True, max_tokens=24), True, {}
        if kind == "hangup":
            return self.chat("default", "Tell me a long story about a dragon.", stream=True, max_tokens=128), True, {}
        if kind == "embed":
            inputs = self.rng.sample(SENTENCES, 1 + n % 4)
            return self.raw("/v1/embeddings", {"model": "embed", "input": inputs}), False, {"inputs": len(inputs)}
        if kind == "cached":
            pair = CACHED[(n // 2) % len(CACHED)]
            prompt = pair[n % 2] if n >= 2 * len(CACHED) else pair[0]  # reworded once the originals are stored
            return self.chat("cached", prompt, stream=n % 2 == 1, max_tokens=48, temperature=0), n % 2 == 1, {}
        if kind == "router":
            return (self.chat("assistant", ROUTER_PROMPTS[n % len(ROUTER_PROMPTS)], stream=n % 2 == 1, max_tokens=32),
                    n % 2 == 1, {})
        raise ValueError(kind)


def check(resp: Any, streaming: bool, expect: dict[str, Any]) -> str | None:
    """None when the answer is complete and well-formed, else what is wrong."""
    if resp.status != 200:
        return f"status {resp.status}"
    if streaming:
        if not resp.body.endswith(SSE_DONE):
            return "stream without [DONE]"
        if b'"error"' in resp.body:
            return "error event in the stream"
        return None
    try:
        body = json.loads(resp.body)
    except ValueError:
        return "body is not JSON"
    if "inputs" in expect:
        return None if len(body.get("data") or []) == expect["inputs"] else "wrong number of embeddings"
    choices = body.get("choices") or []
    return None if choices and isinstance(choices[0].get("message", {}).get("content"), str) else "no message"


async def send(conn: Connection, raw: bytes, streaming: bool) -> Any:
    try:
        return await asyncio.wait_for(conn.request(raw, streaming=streaming), REQUEST_TIMEOUT_S)
    except ConnectionLost:  # an idle keep-alive connection was closed: once more on a new one
        await conn.open()
        return await asyncio.wait_for(conn.request(raw, streaming=streaming), REQUEST_TIMEOUT_S)


async def hang_up(port: int, raw: bytes) -> dict[str, Any]:
    """Send a streaming request, read up to the first chunk with text, and close the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    t = time.perf_counter()
    try:
        writer.write(raw)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT_S)
        status = int(head.split(b" ", 2)[1])
        seen = b""
        outcome = "hung up"
        while status == 200 and not FIRST_TEXT.search(seen):
            piece = await asyncio.wait_for(reader.read(65536), REQUEST_TIMEOUT_S)
            if not piece:
                outcome = "closed by the gateway"
                break
            seen += piece
            if SSE_DONE in seen:
                outcome = "finished before the hang-up"
                break
        return {"status": status, "outcome": outcome if status == 200 else "error",
                "latency_ms": (time.perf_counter() - t) * 1000, "body": seen[:200] if status != 200 else b""}
    finally:
        writer.close()  # unread bytes in the socket: the kernel answers with a reset, as for a killed client


async def client(kind: str, clients: Clients, soak: Soak, stop_at: float, count: int | None = None) -> None:
    """One client of `kind`: requests until `stop_at` (or `count` of them), a pause between them."""
    endpoint, pause = CLIENTS[kind]
    conn = Connection("127.0.0.1", clients.port)
    n = 0
    rng = random.Random(kind)
    try:
        while soak.now() < stop_at and (count is None or n < count):
            raw, streaming, expect = clients.next(kind, n)
            n += 1
            rec: dict[str, Any] = {"kind": kind, "endpoint": endpoint, "sent": soak.now(), "stream": streaming}
            try:
                if kind == "hangup":
                    out = await hang_up(clients.port, raw)
                    rec.update(status=out["status"], outcome=out["outcome"], latency_ms=out["latency_ms"])
                    if out["status"] != 200:
                        rec["code"] = error_code(out["body"])
                else:
                    resp = await send(conn, raw, streaming)
                    rec.update(status=resp.status, latency_ms=(resp.end - resp.t0) * 1000)
                    problem = check(resp, streaming, expect)
                    rec["outcome"] = "ok" if problem is None else "error"
                    if problem:
                        rec.update(problem=problem, code=error_code(resp.body), body=resp.body[:300].decode(errors="replace"))
                    for h in (b"x-modelyard-cache", b"x-modelyard-deployment"):
                        if h in resp.headers:
                            rec[h.decode()[12:]] = resp.headers[h].decode()
            except Exception as exc:  # no answer: counted as an error of its own kind
                conn.close()
                rec.update(status=0, outcome="error", problem=f"{type(exc).__name__}: {exc}"[:200])
            rec["end"] = soak.now()
            soak.requests.append(rec)
            if count is None:
                await asyncio.sleep(pause * rng.uniform(0.7, 1.3))
    finally:
        conn.close()


async def batch_job(http: Any, soak: Soak, tag: str) -> dict[str, Any]:
    """Upload `BATCH_LINES` chat lines for ``default``, run them as a batch job, wait, read the output back."""
    lines = [{"custom_id": f"{tag}-{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": "default", "max_tokens": 8,
                       "messages": [{"role": "user", "content": CHAT_PROMPTS[i % len(CHAT_PROMPTS)]}]}}
             for i in range(BATCH_LINES)]
    rec: dict[str, Any] = {"tag": tag, "submitted": soak.now(), "lines": len(lines)}
    try:
        content = "".join(json.dumps(line) + "\n" for line in lines).encode()
        r = await http.post("/v1/files", files={"file": (f"{tag}.jsonl", content, "application/jsonl")},
                            data={"purpose": "batch"})
        r.raise_for_status()
        r = await http.post("/v1/batches", json={"input_file_id": r.json()["id"], "endpoint": "/v1/chat/completions",
                                                 "completion_window": "24h"})
        r.raise_for_status()
        job = r.json()
        rec["id"] = job["id"]
        while job["status"] not in ("completed", "failed", "cancelled", "expired"):
            await asyncio.sleep(1.0)
            r = await http.get(f"/v1/batches/{job['id']}")
            r.raise_for_status()
            job = r.json()
        rec.update(status=job["status"], finished=soak.now(), counts=job.get("request_counts"))
        if job.get("output_file_id"):
            r = await http.get(f"/v1/files/{job['output_file_id']}/content")
            out = [json.loads(line) for line in r.text.splitlines() if line.strip()]
            rec["output_ok"] = sum(1 for o in out if (o.get("response") or {}).get("status_code") == 200)
            rec["output_lines"] = len(out)
        rec["outcome"] = "ok" if job["status"] == "completed" and rec.get("output_ok") == len(lines) else "error"
    except Exception as exc:
        rec.update(outcome="error", problem=f"{type(exc).__name__}: {exc}"[:300])
    return rec


# --- the run --------------------------------------------------------------------------------


def process_pids(gw: _up.Gateway) -> dict[str, int]:
    pids = {"gateway": gw.proc.pid}  # type: ignore[union-attr]
    for inst in gw.instances():
        if inst.get("pid"):
            pids[inst["name"]] = int(inst["pid"])
    return pids


async def run(args: argparse.Namespace, gw: _up.Gateway) -> tuple[Soak, dict[str, Any]]:
    import httpx

    clients = Clients(gw.port, gw.admin_key)
    soak = Soak()
    duration = args.minutes * 60
    info: dict[str, Any] = {}
    async with httpx.AsyncClient(base_url=gw.url, headers={"Authorization": f"Bearer {gw.admin_key}"},
                                 timeout=60) as http:
        # warm-up (negative times): every kind once, every cached question, a small batch job; not in the
        # measured window, but counted as sent for the usage check
        print("warm-up ...", flush=True)
        t_warm = time.perf_counter()
        await asyncio.gather(*(client(kind, clients, soak, float("inf"), count=len(CACHED) * 2 if kind == "cached"
                                      else 3 if kind == "router" else 1) for kind in CLIENTS))
        warm_batch = await batch_job(http, soak, "warmup")
        info["warmup_s"] = time.perf_counter() - t_warm
        if warm_batch["outcome"] != "ok":
            raise RuntimeError(f"the warm-up batch job failed: {warm_batch}")
        soak.batches.append({**warm_batch, "warmup": True})
        bad = [r for r in soak.requests if r["outcome"] not in ("ok", "hung up")]
        if bad:
            raise RuntimeError(f"warm-up requests failed: {bad[:3]}")
        pids = await asyncio.to_thread(process_pids, gw)
        info["pids_start"] = pids
        restarts0 = {i["name"]: i.get("restarts") for i in await asyncio.to_thread(gw.instances)}
        shift = soak.now()  # from here on t = 0 is the start of the measured window
        soak.t0 += shift
        for r in soak.requests:
            r["sent"] -= shift
            r["end"] -= shift
        for b in soak.batches:
            b["submitted"] -= shift
            b["finished"] = b.get("finished", shift) - shift
        print(f"warm-up done in {info['warmup_s']:.1f}s; measuring for {duration:.0f}s; processes {pids}", flush=True)

        async def sampler() -> None:
            marks = {"start": min(args.settle_s, duration / 4), "middle": duration / 2, "end": duration}
            t = 0.0
            machine = _up.CpuMeter()
            while True:
                await asyncio.sleep(max(0.0, t - soak.now()))
                s = snapshot(pids)
                foreign, machine = machine.read()["foreign_cores"], _up.CpuMeter()  # other processes since the last
                soak.samples.append({"t": round(soak.now(), 2), "foreign_cores": round(foreign, 2), **s})
                for name, at in marks.items():
                    if t >= at - 1e-9 and name not in soak.marks:
                        soak.marks[name] = {"t": round(soak.now(), 2), **s}
                if t >= duration:
                    return
                if t and int(t) % 60 == 0:
                    done = [r for r in soak.requests if r["sent"] >= 0]
                    errs = sum(r["outcome"] == "error" for r in done)
                    gw_rss = (s.get("gateway") or {}).get("rss_mib")
                    print(f"  t={t:5.0f}s  requests {len(done)}, errors {errs}, gateway RSS {_up.fmt(gw_rss)} MiB, "
                          f"fds {(s.get('gateway') or {}).get('fds')}", flush=True)
                t = min(t + args.sample_s, duration)

        async def batches() -> None:
            every = args.batch_every or min(300.0, max(60.0, duration / 3))
            t, i = 30.0, 0
            while t < duration - 20:
                await asyncio.sleep(max(0.0, t - soak.now()))
                soak.batches.append(await batch_job(http, soak, f"soak{i}"))
                i += 1
                t += every

        meter = _up.CpuMeter()
        await asyncio.gather(sampler(), batches(), *(client(kind, clients, soak, duration) for kind in CLIENTS))
        info["machine_cpu"] = meter.read()
        info["run_s"] = soak.now()
        status = await asyncio.to_thread(gw.instances)
        info["instances_end"] = [{k: i.get(k) for k in ("endpoint", "deployment", "name", "pid", "state", "restarts")}
                                 for i in status]
        info["restarts"] = {i["name"]: (i.get("restarts") or 0) - (restarts0.get(i["name"]) or 0) for i in status}
        info["pids_end"] = {i["name"]: i.get("pid") for i in status}
    return soak, info


# --- analysis -------------------------------------------------------------------------------


def usage_rows(gw: _up.Gateway) -> dict[str, Any]:
    code, body = _up.http("GET", gw.url + "/api/usage?days=1", key=gw.admin_key)  # flushes the usage writer
    if code != 200:
        raise RuntimeError(f"/api/usage answered {code}: {body}")
    con = sqlite3.connect(f"file:{gw.home / 'modelyard.db'}?mode=ro", uri=True, timeout=10)
    try:
        rows = con.execute("SELECT endpoint, status, batch_id IS NOT NULL, COUNT(*) FROM usage_records "
                           "GROUP BY endpoint, status, batch_id IS NOT NULL").fetchall()
    finally:
        con.close()
    live: dict[str, dict[str, int]] = {}
    batch: dict[str, int] = {}
    for endpoint, status, in_batch, n in rows:
        if in_batch:
            batch[str(status)] = batch.get(str(status), 0) + n
        else:
            live.setdefault(endpoint, {})[str(status)] = n
    api_total = {r["endpoint"]: r["requests"] for r in body["data"]}
    return {"live_by_endpoint_status": live, "batch_by_status": batch, "api_usage_requests": api_total}


def analyse(soak: Soak, usage: dict[str, Any], info: dict[str, Any], duration: float) -> dict[str, Any]:
    reqs = soak.requests
    measured = [r for r in reqs if r["sent"] >= 0]
    kinds: dict[str, Any] = {}
    third = duration / 3
    for kind in CLIENTS:
        rs = [r for r in measured if r["kind"] == kind]
        ok = [r["latency_ms"] for r in rs if r["outcome"] == "ok"]
        first = [r["latency_ms"] for r in rs if r["outcome"] == "ok" and r["sent"] < third]
        last = [r["latency_ms"] for r in rs if r["outcome"] == "ok" and r["sent"] >= 2 * third]
        errors: dict[str, int] = {}
        for r in rs:
            if r["outcome"] == "error":
                label = f"{r['status']} {r.get('code') or r.get('problem', '')}".strip()
                errors[label] = errors.get(label, 0) + 1
        outcomes: dict[str, int] = {}
        for r in rs:
            outcomes[r["outcome"]] = outcomes.get(r["outcome"], 0) + 1
        p50_first, p50_last = percentile(first, 50), percentile(last, 50)
        kinds[kind] = {"sent": len(rs), "outcomes": outcomes, "errors": errors, "served": len(ok),
                       "p50_ms": percentile(ok, 50), "p99_ms": percentile(ok, 99),
                       "p50_first_third_ms": p50_first, "p50_last_third_ms": p50_last,
                       "last_vs_first": p50_last / p50_first if p50_first and p50_last else None}
        if kind == "cached":
            kinds[kind]["cache"] = _count(r.get("cache") for r in rs)
        if kind == "router":
            kinds[kind]["deployment"] = _count(r.get("deployment") for r in rs)
    snaps = [soak.marks.get(k) or {} for k in ("start", "middle", "end")]
    procs = [p for p in snaps[0] if p != "t"]
    resources = {p: {fig: Drift.of(p, snaps, fig).as_dict() for fig in ("rss_mib", "anon_mib", "file_mib", "fds", "sockets")}
                 for p in procs}
    rss_flat = {p: Drift.of(p, snaps, "rss_mib").within(TARGET_FLAT) for p in procs}
    # a ramp that levels off (allocations warming up) or growth that goes on (a leak): the second half tells
    anon_second_half = {p: Drift.of(p, snaps[1:], "anon_mib").max_change for p in procs}
    anon_flat = {p: Drift.of(p, snaps, "anon_mib").within(TARGET_FLAT) for p in procs}
    # Connections come and go (a client between requests, an upstream pool growing), so open files are judged
    # on the whole series: the most in the second half of the run against the most in the first half.
    fds_flat, fds_halves = {}, {}
    for p in procs:
        halves = [[(s.get(p) or {}).get("fds") for s in soak.samples
                   if s["t"] >= soak.marks["start"]["t"] - 0.5 and (s["t"] < duration / 2) == first]
                  for first in (True, False)]
        if any(None in h or not h for h in halves):
            fds_flat[p], fds_halves[p] = False, None
            continue
        fds_halves[p] = [max(halves[0]), max(halves[1])]
        fds_flat[p] = fds_halves[p][1] - fds_halves[p][0] <= FD_SLACK
    thirds = [[s["foreign_cores"] for s in soak.samples if s["t"] >= 1 and i * third < s["t"] <= (i + 1) * third + 1e-6]
              for i in range(3)]
    foreign_thirds = [sum(x) / len(x) if x else None for x in thirds]

    # usage rows against requests sent (warm-up included): every live request, whatever its outcome, is one row
    sent: dict[str, int] = {}
    for r in reqs:
        sent[r["endpoint"]] = sent.get(r["endpoint"], 0) + 1
    live = usage["live_by_endpoint_status"]
    rows = {ep: sum(live.get(ep, {}).values()) for ep in sorted(set(sent) | set(live))}
    hangups = sum(1 for r in reqs if r["kind"] == "hangup" and r["outcome"] == "hung up")
    rows_499 = sum(v.get("499", 0) for v in live.values())
    batch_lines = sum(b["lines"] for b in soak.batches if b.get("id"))
    batch_rows = sum(usage["batch_by_status"].values())
    measured_batches = [b for b in soak.batches if not b.get("warmup")]
    return {
        "duration_s": duration, "kinds": kinds,
        "requests_served": sum(k["served"] for k in kinds.values()),
        "requests_sent": len(measured), "errors": sum(r["outcome"] == "error" for r in measured),
        "hangups": sum(1 for r in measured if r["kind"] == "hangup" and r["outcome"] == "hung up"),
        "batches": {"jobs": len(measured_batches), "ok": sum(b["outcome"] == "ok" for b in measured_batches),
                    "lines": sum(b["lines"] for b in measured_batches),
                    "seconds": [round(b["finished"] - b["submitted"], 1) for b in measured_batches if "finished" in b],
                    "problems": [b for b in measured_batches if b["outcome"] != "ok"]},
        "resources": resources, "rss_flat": rss_flat, "anon_second_half": anon_second_half,
        "fds_max_by_half": fds_halves, "foreign_cores_by_third": foreign_thirds, "anon_flat": anon_flat, "fds_flat": fds_flat,
        "restarts": info.get("restarts"), "pid_changes": {n: (info["pids_start"].get(n), p) for n, p in
                                                          (info.get("pids_end") or {}).items()
                                                          if info["pids_start"].get(n) not in (None, p)},
        "usage": {"sent_by_endpoint": sent, "rows_by_endpoint": rows, "rows_match": rows == {ep: sent.get(ep, 0) for ep in rows},
                  "hangups_all": hangups, "rows_499": rows_499, "hangups_match": hangups == rows_499,
                  "batch_lines_all": batch_lines, "batch_rows": batch_rows, "batch_rows_by_status": usage["batch_by_status"],
                  "api_usage_requests": usage["api_usage_requests"], "live_by_endpoint_status": live},
        "error_examples": [r for r in measured if r["outcome"] == "error"][:10],
        "machine_cpu": info.get("machine_cpu"),
    }


def _count(values: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[str(v)] = out.get(str(v), 0) + 1
    return out


def report(a: dict[str, Any], env: dict[str, Any], runtime_s: float, args: argparse.Namespace) -> dict[str, bool]:
    f = _up.fmt
    print()
    print(f"Soak: {a['duration_s'] / 60:.1f} min of mixed traffic on modelyard up (default: Gemma 3 270M, embed: "
          f"all-MiniLM-L6-v2, assistant: rules router on stub tiers, cached: {args.cached_backend} behind a "
          f"{args.cache_mode} cache); run took {runtime_s:.0f} s")
    print(f"load average {env['loadavg_start']} -> {_up.loadavg()}; other processes used "
          f"{(a['machine_cpu'] or {}).get('foreign_cores', 0):.2f} cores on average (by third of the window: "
          f"{' / '.join(f(x, 2) for x in a['foreign_cores_by_third'])})")
    print()
    rows = []
    for kind, k in a["kinds"].items():
        rows.append([kind, k["sent"], k["served"], sum(k["errors"].values()), k["outcomes"].get("hung up", 0),
                     f(k["p50_ms"]), f(k["p99_ms"]), f(k["p50_first_third_ms"]), f(k["p50_last_third_ms"]),
                     f(k["last_vs_first"], 2)])
    print(_up.table(rows, ["kind", "sent", "served", "errors", "hung up", "p50 ms", "p99 ms", "p50 1st third",
                           "p50 last third", "last/first"]))
    print()
    print(f"requests served: {a['requests_served']} of {a['requests_sent']} sent in the window "
          f"({a['hangups']} hung up on purpose); errors: {a['errors']}")
    for kind, k in a["kinds"].items():
        if k["errors"]:
            print(f"  errors of {kind}: {k['errors']}")
    for kind in ("cached", "router"):
        extra = a["kinds"][kind].get("cache") or a["kinds"][kind].get("deployment")
        print(f"  {kind}: {extra}")
    b = a["batches"]
    print(f"batch jobs: {b['ok']}/{b['jobs']} completed with every line answered ({b['lines']} lines; seconds each "
          f"{b['seconds']})")
    print()
    rows = []
    for p, r in a["resources"].items():
        rss, anon, fds, socks = r["rss_mib"], r["anon_mib"], r["fds"], r["sockets"]
        rows.append([p, " / ".join(f(v) for v in rss["values"]),
                     f(None if rss["max_change"] is None else 100 * rss["max_change"]),
                     " / ".join(f(v) for v in anon["values"]),
                     f(None if anon["max_change"] is None else 100 * anon["max_change"]),
                     f(None if a["anon_second_half"][p] is None else 100 * a["anon_second_half"][p]),
                     " / ".join(f(v, 0) for v in fds["values"]),
                     " / ".join(str(v) for v in a["fds_max_by_half"][p]) if a["fds_max_by_half"].get(p) else "-",
                     " / ".join(f(v, 0) for v in socks["values"]),
                     a["restarts"].get(p, "") if a["restarts"] else ""])
    print(_up.table(rows, ["process", "RSS MiB start/mid/end", "max +%", "anonymous MiB", "max +%",
                           "mid->end +%", "open fds", "most 1st/2nd half", "sockets", "restarts"]))
    u = a["usage"]
    print()
    print(f"usage rows by endpoint (live, warm-up included): {u['rows_by_endpoint']} for requests sent "
          f"{dict(sorted(u['sent_by_endpoint'].items()))}")
    print(f"status 499 rows: {u['rows_499']} for {u['hangups_all']} hang-ups; batch rows: {u['batch_rows']} "
          f"{u['batch_rows_by_status']} for {u['batch_lines_all']} batch lines")
    gw_ok = a["rss_flat"].get("gateway", False)
    verdicts = {
        "no errors": a["errors"] == 0,
        f"gateway RSS flat within {TARGET_FLAT:.0%}": gw_ok,
        f"instance RSS flat within {TARGET_FLAT:.0%}": all(v for p, v in a["rss_flat"].items() if p != "gateway"),
        "open file descriptors flat": all(a["fds_flat"].values()),
        "no instance restarts": not any((a["restarts"] or {}).values()) and not a["pid_changes"],
        "usage rows = requests sent": u["rows_match"],
        "499 rows = hang-ups": u["hangups_match"],
        "batch jobs complete": b["ok"] == b["jobs"],
    }
    print()
    for k, v in verdicts.items():
        print(f"Verdict: {k}: {'met' if v else 'NOT MET'}")
    return verdicts


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=30.0, help="length of the measured window (default 30)")
    ap.add_argument("--batch-every", type=float, default=0.0,
                    help="seconds between batch jobs (default: a third of the run, 60-300 s)")
    ap.add_argument("--sample-s", type=float, default=10.0, help="seconds between resource samples (default 10)")
    ap.add_argument("--cache-mode", choices=("exact", "semantic"), default="semantic")
    ap.add_argument("--cached-backend", choices=("stub", "gemma"), default="stub",
                    help="what answers the cached endpoint's misses (default: the stub)")
    ap.add_argument("--settle-s", type=float, default=10.0,
                    help="seconds into the window for the start snapshot (every client connected; default 10)")
    ap.add_argument("--keep-home", action="store_true", help="keep the temporary MODELYARD_HOME (logs, database)")
    ap.add_argument("--out", type=Path, default=_up.RESULTS / "soak.json")
    args = ap.parse_args()
    _up.install_signal_handlers()
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass

    env = _up.environment()
    t_start = time.monotonic()
    home = Path(tempfile.mkdtemp(prefix="modelyard-bench-"))
    gw = _up.Gateway(home, log_name="soak", log_level="info")
    stopped = False
    try:
        start(args, gw)
        print(f"gateway pid {gw.proc.pid} on {gw.url} ready after {time.monotonic() - t_start:.1f}s", flush=True)  # type: ignore[union-attr]
        soak, info = asyncio.run(run(args, gw))
        usage = usage_rows(gw)
        log_text = gw.log_path.read_text(errors="replace")
        gw.stop()
        stopped = True
    except BaseException:
        if not stopped:
            print(gw.logs_report(), file=sys.stderr)
        raise
    finally:
        if not stopped:
            gw.stop()
        _procs.stop_all()
        if args.keep_home:
            print(f"MODELYARD_HOME kept: {home}", file=sys.stderr)
        else:
            shutil.rmtree(home, ignore_errors=True)

    runtime = time.monotonic() - t_start
    a = analyse(soak, usage, info, args.minutes * 60)
    verdicts = report(a, env, runtime, args)
    log_problems = [line for line in log_text.splitlines() if " ERROR " in line or " WARNING " in line
                    or "Traceback" in line]
    if log_problems:
        print(f"gateway log: {len(log_problems)} WARNING/ERROR/Traceback lines, e.g.:")
        for line in log_problems[:5]:
            print(f"  {line[:220]}")
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "benchmark": "soak", "settings": settings, "environment": env, "runtime_s": runtime, "info": info,
        "result": a, "verdicts": verdicts, "gateway_log_problems": log_problems[:200],
        "requests": soak.requests, "batches": soak.batches, "samples": soak.samples,
    }, indent=2, default=str) + "\n")
    print(f"\nwrote {args.out}")
    return 0 if all(verdicts.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
