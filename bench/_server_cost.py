"""What the HTTP server stack alone costs per request: raw ASGI on uvicorn vs FastAPI, no gateway logic.

    .venv/bin/python bench/_server_cost.py [--requests 2000]

Both servers run under uvicorn with uvloop and httptools (as ``modelyard up`` does) and answer
``POST /v1/chat/completions`` with the stub's fixed bytes (JSON, or the same 20 SSE chunks + [DONE]):

- ``raw``: ``tests/openai_stub.py`` (a plain ASGI callable);
- ``fastapi``: a FastAPI app shaped like modelyard's server (an ``APIRouter`` under ``/v1``, the
  body read from ``request.stream()``, exception handlers, a ``Response`` / ``StreamingResponse``
  with six ``x-`` headers), but no validation, pipeline or upstream call.

The server process's CPU per request is what the framework costs on top of uvicorn's floor.
Run with ``--serve fastapi --port N`` it is the FastAPI server itself.
"""


import argparse
import asyncio
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))


def fastapi_app():
    import orjson
    from fastapi import APIRouter, FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException as StarletteHTTPException
    from starlette.responses import Response, StreamingResponse

    from tests import openai_stub as stub

    router = APIRouter(prefix="/v1")
    headers = {"x-request-id": "req-0123456789abcdef01234567", "x-modelyard-endpoint": "bench",
               "x-modelyard-deployment": "stub", "x-modelyard-cache": "off", "x-modelyard-route": "split:stub",
               "x-modelyard-overhead-ms": "0.030"}
    chunks, final, _usage = stub._STREAMS["chat"]
    body = stub._BODIES["chat"]

    async def events():
        for c in chunks:
            yield c
        yield final
        yield stub._DONE

    @router.post("/chat/completions")
    async def chat(request: Request) -> Response:
        parts = [c async for c in request.stream()]
        raw = b"".join(parts)
        if orjson.loads(raw).get("stream"):
            return StreamingResponse(events(), media_type="text/event-stream", headers=headers)
        return Response(body, media_type="application/json", headers={**headers, "x-modelyard-cost-usd": "0.00005000"})

    app = FastAPI(docs_url="/docs", redoc_url=None)
    app.include_router(router)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        return Response(b"{}", status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        return Response(b"{}", status_code=400)

    @app.get("/healthz")
    async def healthz() -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    return app


async def drive(port: int, pid: int, streaming: bool, conc: int, n: int) -> float:
    from _http import Connection, build_request
    from _procs import cpu_ns

    body = b'{"model":"bench","messages":[{"role":"user","content":"hi"}],"max_tokens":20%s}' % (
        b',"stream":true' if streaming else b"")
    raw = build_request("127.0.0.1", port, "/v1/chat/completions", body, {"Content-Type": "application/json"})
    conns = [Connection("127.0.0.1", port) for _ in range(conc)]
    for c in conns:
        await c.open()

    async def run(count: int) -> None:
        left = count

        async def worker(conn: Connection) -> None:
            nonlocal left
            while left > 0:
                left -= 1
                r = await conn.request(raw, streaming=streaming)
                assert r.status == 200 and (not streaming or r.body.endswith(b"data: [DONE]\n\n")), r.body[:200]

        await asyncio.gather(*(worker(c) for c in conns))

    await run(100)
    c0 = cpu_ns(pid)
    await run(n)
    cpu = cpu_ns(pid) - c0
    for c in conns:
        c.close()
    return cpu / n / 1e6


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--serve", choices=("fastapi",), help="run the FastAPI server (used by the benchmark itself)")
    p.add_argument("--port", type=int, default=0)
    args = p.parse_args()
    if args.serve:
        import uvicorn

        uvicorn.run(fastapi_app(), host="127.0.0.1", port=args.port, log_level="warning", access_log=False,
                    loop="uvloop", http="httptools")
        return 0

    import uvloop

    import _procs
    from _common import free_port

    home = Path(tempfile.mkdtemp(prefix="modelyard-servercost-"))
    try:
        servers = {}
        for name, argv in (("raw ASGI (stub)", [str(ROOT / "tests" / "openai_stub.py")]),
                           ("FastAPI", [str(Path(__file__).resolve()), "--serve", "fastapi"])):
            port = free_port()
            child = _procs.Child(name, [sys.executable, *argv, "--port", str(port)], log=home / f"{len(servers)}.log")
            child.wait_http(f"http://127.0.0.1:{port}/healthz", timeout=60)
            servers[name] = (port, child)
        print(f"server CPU per request (ms), {args.requests} requests each, uvicorn + uvloop + httptools")
        print(f"{'scenario':<22} " + " ".join(f"{n:>16}" for n in servers) + f" {'difference':>11}")
        for streaming in (False, True):
            for conc in (1, 32):
                got = [uvloop.run(drive(port, child.pid, streaming, conc, args.requests)) for port, child in servers.values()]
                name = f"{'streaming' if streaming else 'non-streaming'} c={conc}"
                print(f"{name:<22} " + " ".join(f"{g:>16.3f}" for g in got) + f" {got[1] - got[0]:>11.3f}", flush=True)
        return 0
    finally:
        _procs.stop_all()
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
