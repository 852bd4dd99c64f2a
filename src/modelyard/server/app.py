"""The FastAPI app: OpenAI routes, the management API, health and metrics.

`create_app()` builds the app around a `Gateway` (database, keys, catalog,
endpoints, usage writer). Starting the app starts the usage writer and the
endpoints' instances in the background; ``/readyz`` says when every
deployment is ready. Stopping it stops the instances and flushes usage.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Match

from ..errors import ModelyardError, from_validation_error, internal_error
from ..settings import Settings
from ..store.usage import database_unavailable
from . import batch_routes, endpoint_routes, feedback_routes, manage_routes, metrics_routes, openai_routes, rollout_routes
from . import router_routes
from . import catalog_routes, spend_routes
from . import cache_routes, flow_routes, index_routes, openapi
from . import distill_routes, finetune_routes
from .admin import is_admin, require_admin
from .ui import install_console
from .http import error_response, json_response
from .state import Gateway

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, *, defaults: bool = False, gateway: Gateway | None = None,
               on_ready: Callable[[], None] | None = None) -> FastAPI:
    """The gateway app. With `defaults`, the `default` and `embed` endpoints are created if missing;
    `on_ready` is called once every deployment has started."""
    settings = settings or Settings.from_env()
    gateway = gateway or Gateway.open(settings)
    if defaults:
        gateway.ensure_default_endpoints()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await gateway.start()
        watcher = asyncio.create_task(_when_ready(gateway, on_ready)) if on_ready else None
        try:
            yield
        finally:
            if watcher:
                watcher.cancel()
            await gateway.close()

    app = FastAPI(title="modelyard", version="0.1.0", lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.gateway = gateway
    app.router.routes.extend(openai_routes.routes)
    app.router.routes.extend(feedback_routes.routes)
    app.include_router(manage_routes.router)
    app.include_router(metrics_routes.router)
    app.include_router(endpoint_routes.router)
    app.include_router(rollout_routes.router)
    app.include_router(batch_routes.router)
    app.include_router(finetune_routes.router)
    app.include_router(finetune_routes.api_router)
    app.include_router(distill_routes.router)  # POST /api/fine_tuning/datasets
    app.include_router(catalog_routes.router)
    app.include_router(spend_routes.router)
    install_console(app)  # the web console at /ui (server/ui/)
    app.include_router(router_routes.router)
    app.include_router(cache_routes.router)
    app.include_router(index_routes.router)
    app.include_router(flow_routes.router)
    # the OpenAI and feedback routes are not FastAPI's, so /openapi.json is told about them
    openapi.install(app, [*openai_routes.routes, *feedback_routes.routes],
                    {**openai_routes.OPENAPI, **feedback_routes.OPENAPI})

    @app.exception_handler(ModelyardError)
    async def _modelyard_error(request: Request, exc: ModelyardError) -> Response:
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        message = f"Unknown route: {request.method} {request.url.path}" if exc.status_code == 404 else str(exc.detail)
        headers = exc.headers
        if exc.status_code == 405:  # Starlette's Allow names the methods of the first route with the path only
            headers = {"allow": _allowed_methods(app, request.scope)}
        return error_response(ModelyardError(message, status=exc.status_code, headers=headers,
                                             code="unknown_route" if exc.status_code == 404 else None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
        return error_response(from_validation_error(exc))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        if database_unavailable(exc):
            log.warning("%s: the database is unavailable (%s)", request.url.path, str(exc).splitlines()[0][:300])
            return error_response(ModelyardError(
                "The database is unavailable right now (down, locked or out of disk space); requests to models are "
                "still answered and their usage is kept until it can be written. Try again shortly.", status=503,
                code="database_unavailable", headers={"retry-after": "5"}))
        log.exception("unhandled error on %s", request.url.path)
        return error_response(internal_error())

    @app.get("/healthz")
    async def healthz() -> Response:
        return json_response({"status": "ok"})

    @app.get("/readyz")
    async def readyz(request: Request) -> Response:
        """Ready or not for anyone (a load balancer's probe); which deployments are in which state only for
        the admin key, since their names say what runs here."""
        ready = gateway.endpoints.ready()
        body: dict[str, Any] = {"status": "ready" if ready else "starting"}
        if is_admin(request):
            body["deployments"] = {f"{e.name}/{d.name}": d.state for e in gateway.endpoints.all()
                                   for d in e.deployments.values()}
        return json_response(body, 200 if ready else 503)

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics(request: Request) -> Response:
        """Prometheus metrics: requests, tokens and cost per endpoint, so the admin key is needed (Prometheus:
        ``authorization: {credentials_file: MODELYARD_HOME/admin.key}``) unless MODELYARD_METRICS_PUBLIC=1."""
        if not gateway.settings.metrics_public:
            require_admin(request)
        return Response(gateway.metrics.render(), media_type="text/plain; version=0.0.4")

    return app


#: the methods a 405's ``Allow`` may name
_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def _allowed_methods(app: FastAPI, scope: dict[str, Any]) -> str:
    """The ``Allow`` header of a 405: the methods some route takes at the request's path (asked of the routes
    themselves, so routers included in the app count too)."""
    allowed = [method for method in _METHODS
               if any(route.matches({**scope, "method": method})[0] == Match.FULL for route in app.router.routes)]
    return ", ".join(allowed)


async def _when_ready(gateway: Gateway, callback: Callable[[], None]) -> None:
    while not gateway.endpoints.ready():
        await asyncio.sleep(0.2)
    callback()


class FastPath:
    """The ASGI app uvicorn serves: the OpenAI POST routes go straight to their
    handlers, everything else through FastAPI.

    The hot routes parse their own bodies and turn every failure into an
    OpenAI error themselves, so FastAPI's middleware stack (exception
    handling, body limits, telemetry) would only add CPU to each request.
    Should one still raise, the client gets the same OpenAI-shaped 500 as
    from the app's own handler, not uvicorn's plain-text one.
    """

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.routes = {route.path: route.endpoint for route in openai_routes.routes if "POST" in (route.methods or ())}

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            handler = self.routes.get(scope["path"])
            if handler is not None:
                scope["app"] = self.app
                try:
                    response = await handler(Request(scope, receive))
                except Exception:
                    log.exception("unhandled error on %s", scope["path"])
                    response = error_response(internal_error())
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
