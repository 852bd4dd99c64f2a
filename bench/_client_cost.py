"""What the upstream HTTP client alone costs per request: httpx (as modelyard's backend configures it) vs raw asyncio.

    .venv/bin/python bench/_client_cost.py [--requests 2000]

Starts the stub, then for each client, concurrency (1, 32) and mode (JSON, 20-chunk SSE) sends the
requests from this process and reports this process's CPU per request. The raw client
(``_http.Connection``: prebuilt bytes, one write, chunked reading) is the floor any client pays
for the syscalls and the event loop; the difference is the client library's own cost, which the
gateway pays on every proxied request. No gateway is involved.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _procs  # noqa: E402
from _common import free_port  # noqa: E402
from _http import Connection, build_request  # noqa: E402

BODY = b'{"model":"bench","messages":[{"role":"user","content":"Say hello in twenty tokens."}],"max_tokens":20%s}'


async def run_httpx(port: int, conc: int, streaming: bool, n: int, module: str = "httpx") -> tuple[float, int]:
    import importlib

    httpx = importlib.import_module(module)

    # As OpenAICompatBackend builds it (src/modelyard/backends/openai_compat.py).
    client = httpx.AsyncClient(headers={"content-type": "application/json", "user-agent": "modelyard"},
                               timeout=httpx.Timeout(90.0, connect=5.0),
                               limits=httpx.Limits(max_connections=64, max_keepalive_connections=64, keepalive_expiry=4.0))
    url = httpx.URL(f"http://127.0.0.1:{port}/v1/chat/completions")
    body = BODY % (b',"stream":true,"stream_options":{"include_usage":true}' if streaming else b"")
    left = n
    ok = 0

    async def worker() -> None:
        nonlocal left, ok
        while left > 0:
            left -= 1
            if streaming:
                response = await client.send(client.build_request("POST", url, content=body), stream=True)
                try:
                    async for _ in response.aiter_bytes():
                        pass
                finally:
                    await response.aclose()
                ok += response.status_code == 200
            else:
                response = await client.post(url, content=body)
                ok += response.status_code == 200 and bool(response.content)

    left_warm = left
    left = 100
    await asyncio.gather(*(worker() for _ in range(conc)))
    left = left_warm
    c0 = time.process_time()
    await asyncio.gather(*(worker() for _ in range(conc)))
    cpu = time.process_time() - c0
    await client.aclose()
    return cpu / n * 1000, ok - 100


async def run_raw(port: int, conc: int, streaming: bool, n: int) -> tuple[float, int]:
    body = BODY % (b',"stream":true,"stream_options":{"include_usage":true}' if streaming else b"")
    raw = build_request("127.0.0.1", port, "/v1/chat/completions", body, {"Content-Type": "application/json"})
    conns = [Connection("127.0.0.1", port) for _ in range(conc)]
    for c in conns:
        await c.open()
    left = n
    ok = 0

    async def worker(conn: Connection) -> None:
        nonlocal left, ok
        while left > 0:
            left -= 1
            resp = await conn.request(raw, streaming=streaming)
            ok += resp.status == 200

    left_warm = left
    left = 100
    await asyncio.gather(*(worker(c) for c in conns))
    left = left_warm
    c0 = time.process_time()
    await asyncio.gather(*(worker(c) for c in conns))
    cpu = time.process_time() - c0
    for c in conns:
        c.close()
    return cpu / n * 1000, ok - 100


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--concurrency", default="1,32", help="comma-separated, e.g. 1,4,16,32")
    args = p.parse_args()
    import uvloop

    home = Path(tempfile.mkdtemp(prefix="modelyard-clientcost-"))
    port = free_port()
    stub = _procs.Child("stub", [sys.executable, str(HERE.parent / "tests" / "openai_stub.py"), "--port", str(port)],
                        log=home / "stub.log")
    try:
        stub.wait_http(f"http://127.0.0.1:{port}/healthz", timeout=30)
        print(f"client CPU per request (ms) against the stub, {args.requests} requests each, this process only")
        try:
            import httpx2  # noqa: F401  (pydantic's fork, with the connection-pool fixes; openai depends on it)
            others = ["httpx2"]
        except ImportError:
            others = []
        print(f"{'scenario':<22} {'raw asyncio':>11} {'httpx':>8} {'httpx - raw':>11}" + "".join(f" {m:>8}" for m in others))
        rows = []
        for streaming in (False, True):
            for conc in [int(c) for c in args.concurrency.split(",")]:
                raw, ok_raw = uvloop.run(run_raw(port, conc, streaming, args.requests))
                hx, ok_hx = uvloop.run(run_httpx(port, conc, streaming, args.requests))
                name = f"{'streaming' if streaming else 'non-streaming'} c={conc}"
                assert ok_raw == args.requests and ok_hx == args.requests, (name, ok_raw, ok_hx)
                extra = {}
                for m in others:
                    ms, ok_m = uvloop.run(run_httpx(port, conc, streaming, args.requests, m))
                    assert ok_m == args.requests, (name, m, ok_m)
                    extra[m] = ms
                print(f"{name:<22} {raw:>11.3f} {hx:>8.3f} {hx - raw:>11.3f}" + "".join(f" {v:>8.3f}" for v in extra.values()),
                      flush=True)
                rows.append({"scenario": name, "raw_ms": raw, "httpx_ms": hx, **{f"{m}_ms": v for m, v in extra.items()}})
        return 0
    finally:
        _procs.stop_all()
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
