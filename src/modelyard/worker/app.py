"""The instance process: one Backend behind the OpenAI wire format.

An instance starts serving at once (``/healthz`` answers while the model
loads) and reports ready on ``/readyz`` when the backend has loaded. It
validates requests with the same models as the gateway, so it can be called
directly, and refuses work it cannot do with the same OpenAI error shape.

Run by the local runtime as ``python -m modelyard.worker``; its card and
options arrive as JSON in the ``MODELYARD_WORKER_SPEC`` environment variable.

An instance listens on 127.0.0.1, where any local user could reach it, so
its model routes answer only requests that carry the token the runtime gave
it (``MODELYARD_INSTANCE_TOKEN``, a fresh random one per process, as a bearer
token): keys, budgets and usage records cannot be bypassed by calling an
instance directly. ``/healthz`` and ``/readyz`` stay open (they say nothing).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import signal
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

import orjson
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from ..backends.base import Backend
from ..errors import ModelyardError, from_validation_error
from ..wire import KINDS, SSE_DONE, gather, sse

log = logging.getLogger(__name__)


def json_response(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def error_response(err: ModelyardError) -> Response:
    return Response(orjson.dumps(err.body()), status_code=err.status, media_type="application/json",
                    headers=err.headers or None)


def _opens_chat(chunk: dict[str, Any]) -> bool:
    """A chat stream's opening chunk: the assistant's role, no text, not the end."""
    choices = chunk.get("choices") or ()
    return (len(choices) == 1 and choices[0].get("delta") == {"role": "assistant", "content": ""}
            and not choices[0].get("finish_reason"))


def build_app(backend: Backend, *, name: str = "instance", token: str | None = None) -> Starlette:
    state: dict[str, Any] = {"ready": False, "error": None}

    async def load() -> None:
        try:
            await backend.start()
            state["ready"] = True
            log.info("%s ready", name)
        except Exception as exc:  # the runtime sees the exit and reports it
            log.exception("%s failed to load its model", name)
            state["error"] = str(exc)
            os.kill(os.getpid(), signal.SIGTERM)

    async def orphan_watch() -> None:
        # An instance outlives no gateway: if the parent dies (even by SIGKILL), stop too.
        parent = os.getppid()
        while os.getppid() == parent:
            await asyncio.sleep(1.0)
        log.warning("%s: the gateway (pid %d) is gone; stopping", name, parent)
        os.kill(os.getpid(), signal.SIGTERM)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        tasks = [asyncio.create_task(load()), asyncio.create_task(orphan_watch())]
        yield
        for task in tasks:
            task.cancel()
        await backend.close()

    async def healthz(request: Request) -> Response:
        return json_response({"status": "ok"})

    async def readyz(request: Request) -> Response:
        if state["ready"]:
            return json_response({"status": "ready"})
        return json_response({"status": "loading", "error": state["error"]}, 503)

    expected = f"Bearer {token}".encode() if token else None

    def handler(kind: str):
        model_cls = KINDS[kind]

        async def endpoint(request: Request) -> Response:
            if expected is not None and not hmac.compare_digest(
                    request.headers.get("authorization", "").encode(), expected):
                return error_response(ModelyardError("This instance answers only its gateway (the instance token "
                                                     "is missing or wrong).", status=401, code="invalid_api_key"))
            if not state["ready"]:
                return error_response(ModelyardError("instance is still loading its model", status=503, code="not_ready"))
            try:
                req = model_cls.model_validate_json(await request.body())
            except ValidationError as exc:
                return error_response(from_validation_error(exc))
            try:
                if kind == "embedding":
                    return json_response(await backend.embed(req))  # type: ignore[arg-type]
                stream = backend.generate(kind, req)  # type: ignore[arg-type]
                if not req.stream:
                    chunks = await _collect_unless_gone(request, stream)
                    if chunks is None:  # the caller hung up (or timed out): nobody reads the answer
                        return Response(status_code=499)
                    return json_response(gather(kind, chunks))
                first = await anext(stream)  # errors before the first chunk are still plain 4xx/5xx
            except ModelyardError as err:
                return error_response(err)
            except StopAsyncIteration:
                return error_response(ModelyardError("backend produced no output", status=500))
            except Exception:
                log.exception("%s: request failed", name)
                return error_response(ModelyardError("the instance failed while answering", status=500, code="instance_error"))
            return StreamingResponse(_events(first, stream, req.include_usage), media_type="text/event-stream")

        return endpoint

    async def _collect_unless_gone(request: Request, stream: AsyncIterator[dict[str, Any]]) -> list[dict[str, Any]] | None:
        """Gather a whole answer, but stop generating as soon as the caller disconnects.

        A streaming response notices a disconnect by itself; a plain one would
        run to its end, keeping the model busy for an answer no one reads.
        """

        async def collect() -> list[dict[str, Any]]:
            return [c async for c in stream]

        async def caller_gone() -> None:
            while (await request.receive())["type"] != "http.disconnect":
                pass

        work, watch = asyncio.create_task(collect()), asyncio.create_task(caller_gone())
        try:
            await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (work, watch):
                if not task.done():
                    task.cancel()
            await asyncio.gather(work, watch, return_exceptions=True)
            await stream.aclose()  # type: ignore[attr-defined]
        if work.cancelled():
            return None
        return work.result()  # re-raises a backend error (a ModelyardError becomes its response)

    async def _events(first: dict[str, Any], stream: AsyncIterator[dict[str, Any]], include_usage: bool) -> AsyncIterator[bytes]:
        def wanted(chunk: dict[str, Any]) -> bool:
            return include_usage or not (chunk.get("usage") and not chunk.get("choices"))

        # A chat stream's role chunk comes with its first text (a local backend hands them over together):
        # it is held back to leave in one write with that text, so the gateway and its client wake once for it.
        held = sse(first) if _opens_chat(first) else b""
        try:
            chunk: dict[str, Any] | None = await anext(stream, None) if held else first
            while chunk is not None:
                if wanted(chunk):
                    yield held + sse(chunk)
                    held = b""
                chunk = await anext(stream, None)
        except ModelyardError as err:
            yield held + sse(err.body())
            held = b""
        finally:
            await stream.aclose()  # type: ignore[attr-defined]
        yield held + SSE_DONE

    routes = [
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/v1/chat/completions", handler("chat"), methods=["POST"]),
        Route("/v1/completions", handler("completion"), methods=["POST"]),
        Route("/v1/embeddings", handler("embedding"), methods=["POST"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)
