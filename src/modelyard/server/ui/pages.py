"""The console's pages: one route per page, each a template plus the data its script starts from.

Every page but the sign-in page needs a signed-in session (`auth`); without
one it redirects to ``/ui/login?next=...``. Pages read the catalog and the
live endpoints in-process to render; every change a page makes is a call
to the management API from the browser.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from starlette.responses import FileResponse, RedirectResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from ...errors import ModelyardError
from ...serving import consume
from ...serving.flows import describe as describe_flow
from ..catalog_routes import card_view
from . import views
from .auth import COOKIE, SESSION_TTL_S, read_form, safe_next, session_id, sessions_for

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
NODE_MODULES = HERE / "node_modules"
#: The npm files the pages load, by the name they are served under (``/ui/vendor/NAME``).
VENDOR_FILES = {
    "chart.js": NODE_MODULES / "chart.js" / "dist" / "chart.umd.min.js",
    "js-yaml.js": NODE_MODULES / "js-yaml" / "dist" / "js-yaml.min.js",
}
#: Content-Security-Policy of every page: scripts, styles and connections to this gateway only.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
#: The windows the monitoring page offers.
WINDOWS = ("15m", "1h", "6h", "24h", "7d")

router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=str(HERE / "templates"))
templates.env.filters.update(views.FILTERS)

NAV = [("catalog", "Catalog", "/ui/catalog"), ("endpoints", "Endpoints", "/ui/endpoints"),
       ("monitoring", "Monitoring", "/ui/monitoring"), ("usage", "Usage & cost", "/ui/usage"),
       ("batches", "Batch jobs", "/ui/batches"), ("finetune", "Fine-tuning", "/ui/fine-tuning"),
       ("flows", "Flows", "/ui/flows")]


class _NoCacheStatic(StaticFiles):
    """The console's own files, revalidated on every load (cheap 304s) so an upgrade shows at once."""

    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers["cache-control"] = "no-cache"
        return response


def static_app() -> StaticFiles:
    return _NoCacheStatic(directory=str(HERE / "static"))


def _headers() -> dict[str, str]:
    return {"content-security-policy": CSP, "x-frame-options": "DENY", "referrer-policy": "same-origin",
            "x-content-type-options": "nosniff", "cache-control": "no-store"}


def _render(request: Request, template: str, *, page: str, title: str, data: Any = None, status: int = 200,
            **context: Any) -> Response:
    sid = session_id(request)
    csrf = sessions_for(request.app).csrf_token(sid) if sid else ""
    return templates.TemplateResponse(request, template, {
        "page": page, "title": title, "nav": NAV, "csrf": csrf, "data": data if data is not None else {},
        "vendor_missing": [name for name, path in VENDOR_FILES.items() if not path.is_file()], **context,
    }, status_code=status, headers=_headers())


def _login_redirect(request: Request) -> Response:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/ui/login?next={quote(target)}", status_code=303)


def _gateway(request: Request) -> Any:
    return request.app.state.gateway


def _not_found(request: Request, message: str) -> Response:
    return _render(request, "missing.html", page="", title="Not found", message=message, status=404)


# --- signing in -------------------------------------------------------------------


@router.get("/ui")
@router.get("/ui/")
async def home(request: Request) -> Response:
    return RedirectResponse("/ui/catalog" if session_id(request) else "/ui/login", status_code=303)


@router.get("/ui/login")
async def login_page(request: Request) -> Response:
    if session_id(request):
        return RedirectResponse(safe_next(request.query_params.get("next")), status_code=303)
    return _render(request, "login.html", page="login", title="Sign in",
                   next=safe_next(request.query_params.get("next")), error=None,
                   key_file=str(_gateway(request).settings.admin_key_file))


@router.post("/ui/login")
async def login(request: Request) -> Response:
    """Check the admin key; on success set the session cookie and go on to ``next``."""
    form = await read_form(request)
    gateway = _gateway(request)
    target = safe_next(form.get("next"))
    info = gateway.keys.verify(form.get("key", "").strip())
    if info is None or not info.is_admin:
        await asyncio.sleep(0.25)  # slows guessing a little; the key has 192 bits anyway
        error = ("That is not the admin key." if info is None else
                 "That key is an endpoint key; the console needs the admin key.")
        log.warning("console sign-in refused from %s", request.client.host if request.client else "?")
        return _render(request, "login.html", page="login", title="Sign in", next=target, error=error,
                       key_file=str(gateway.settings.admin_key_file), status=401)
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(COOKIE, sessions_for(request.app).issue(), max_age=SESSION_TTL_S, path="/",
                        httponly=True, samesite="strict", secure=request.url.scheme == "https")
    return response


@router.post("/ui/logout")
async def logout(request: Request) -> Response:
    form = await read_form(request)
    sid = session_id(request)
    if sid is not None and form.get("csrf") == sessions_for(request.app).csrf_token(sid):
        sessions_for(request.app).revoke(request.cookies.get(COOKIE))
    response = RedirectResponse("/ui/login", status_code=303)
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
    return response


@router.get("/ui/vendor/{name}")
async def vendor(request: Request, name: str) -> Response:
    """A browser library from ``node_modules`` (installed by ``make install``), by its served name."""
    path = VENDOR_FILES.get(name)
    if path is None or not path.is_file():
        raise ModelyardError(f"No console library {name!r} here; run `make install` (npm ci) to install them.",
                             status=404, code="unknown_route")
    return FileResponse(path, media_type="text/javascript", headers={"cache-control": "public, max-age=3600"})


# --- pages ---------------------------------------------------------------------------


@router.get("/ui/catalog")
async def catalog_page(request: Request) -> Response:
    if not session_id(request):
        return _login_redirect(request)
    gateway = _gateway(request)
    cards = await asyncio.to_thread(lambda: [card_view(c, gateway) for c in gateway.catalog.cards()])
    facets = {name: sorted({str(c[name]) for c in cards if c.get(name)}) for name in ("task", "format", "license")}
    return _render(request, "catalog.html", page="catalog", title="Catalog", cards=cards, facets=facets)


@router.get("/ui/models/{model_id}")
async def model_page(request: Request, model_id: str) -> Response:
    if not session_id(request):
        return _login_redirect(request)
    gateway = _gateway(request)
    if model_id not in gateway.catalog:
        return _not_found(request, f"The model '{model_id}' is not in the catalog.")
    card = await asyncio.to_thread(card_view, gateway.catalog.get(model_id), gateway)
    ready = [d for d in card["deployments"] if d["state"] == "ready"]
    return _render(request, "model.html", page="catalog", title=card.get("name") or card["id"], card=card,
                   data={"model": card["id"], "task": card["task"], "targets": ready})


@router.get("/ui/deploy")
async def deploy_page(request: Request) -> Response:
    if not session_id(request):
        return _login_redirect(request)
    gateway = _gateway(request)
    cards = await asyncio.to_thread(lambda: [card_view(c, gateway) for c in gateway.catalog.cards()])
    models = [{k: c.get(k) for k in ("id", "name", "task", "format", "size", "size_bytes", "license", "available",
                                     "availability", "memory_mb")} | {"hosted": c["format"] == "hosted",
                                                                       "source": c["source"]["type"]}
              for c in cards]
    endpoints = [{"name": e.name, "policy": e.spec.policy, "traffic": e.spec.traffic,
                  "deployments": list(e.deployments)} for e in gateway.endpoints.all()]
    data = {"models": models, "endpoints": endpoints, "model": request.query_params.get("model"),
            "endpoint": request.query_params.get("endpoint")}
    return _render(request, "deploy.html", page="endpoints", title="Deploy a model", data=data)


@router.get("/ui/endpoints")
async def endpoints_page(request: Request) -> Response:
    if not session_id(request):
        return _login_redirect(request)
    gateway = _gateway(request)
    data = {"endpoints": [e.describe() for e in gateway.endpoints.all()]}
    return _render(request, "endpoints.html", page="endpoints", title="Endpoints", data=data)


@router.get("/ui/endpoints/{name}")
async def endpoint_page(request: Request, name: str) -> Response:
    if not session_id(request):
        return _login_redirect(request)
    gateway = _gateway(request)
    try:
        endpoint = gateway.endpoints.get(name)
    except ModelyardError:
        return _not_found(request, f"There is no endpoint '{name}'.")
    desc = await asyncio.to_thread(endpoint.describe)
    cards = {c.id: c for c in gateway.catalog.cards()}
    task = views.endpoint_task(desc, cards)
    base_url = str(request.base_url).rstrip("/") + "/v1"
    return _render(request, "endpoint.html", page="endpoints", title=f"Endpoint {name}", endpoint=desc,
                   snippets=consume.snippets(name, base_url, task), base_url=base_url, task=task,
                   deployment_header=views.DEPLOYMENT_HEADER, data={"endpoint": desc, "task": task})


@router.get("/ui/monitoring")
async def monitoring_index(request: Request) -> Response:
    if not session_id(request):
        return _login_redirect(request)
    names = [e.name for e in _gateway(request).endpoints.all()]
    if names:
        return RedirectResponse(f"/ui/monitoring/{quote(names[0])}", status_code=303)
    return _render(request, "monitoring.html", page="monitoring", title="Monitoring", endpoint=None, names=[],
                   windows=WINDOWS, data={})


@router.get("/ui/monitoring/{name}")
async def monitoring_page(request: Request, name: str) -> Response:
    if not session_id(request):
        return _login_redirect(request)
    gateway = _gateway(request)
    names = [e.name for e in gateway.endpoints.all()]
    if name not in names:
        return _not_found(request, f"There is no endpoint '{name}' to monitor.")
    window = request.query_params.get("window", "1h")
    data = {"endpoint": name, "window": window if window in WINDOWS else "1h",
            "deployment": request.query_params.get("deployment") or ""}
    return _render(request, "monitoring.html", page="monitoring", title=f"Monitoring {name}", endpoint=name,
                   names=names, windows=WINDOWS, data=data)


@router.get("/ui/usage")
async def usage_page(request: Request) -> Response:
    if not session_id(request):
        return _login_redirect(request)
    return _render(request, "usage.html", page="usage", title="Usage & cost", data={})


@router.get("/ui/batches")
async def batches_page(request: Request) -> Response:
    if not session_id(request):
        return _login_redirect(request)
    return _render(request, "batches.html", page="batches", title="Batch jobs", data={})


@router.get("/ui/batches/{batch_id}")
async def batch_page(request: Request, batch_id: str) -> Response:
    if not session_id(request):
        return _login_redirect(request)
    return _render(request, "batch.html", page="batches", title=f"Batch {batch_id}", data={"id": batch_id})


@router.get("/ui/fine-tuning")
async def finetune_page(request: Request) -> Response:
    if not session_id(request):
        return _login_redirect(request)
    return _render(request, "finetune.html", page="finetune", title="Fine-tuning", data={})


@router.get("/ui/fine-tuning/{job_id}")
async def finetune_job_page(request: Request, job_id: str) -> Response:
    """One job: loss curves, events, checkpoints, lineage, and Deploy (into the endpoints listed here)."""
    if not session_id(request):
        return _login_redirect(request)
    gateway = _gateway(request)
    runner = getattr(gateway, "finetune", None)
    if runner is not None:
        try:
            await runner.get(job_id, None)
        except ModelyardError:
            return _not_found(request, f"There is no fine-tuning job '{job_id[:64]}'.")
    endpoints = [{"name": e.name, "policy": e.spec.policy, "deployments": list(e.deployments)}
                 for e in gateway.endpoints.all()]
    return _render(request, "finetune_job.html", page="finetune", title=f"Fine-tuning job {job_id}",
                   data={"id": job_id, "endpoints": endpoints})


@router.get("/ui/flows")
async def flows_page(request: Request) -> Response:
    if not session_id(request):
        return _login_redirect(request)
    flows = [describe_flow(f) for f in _gateway(request).flows.all()]
    return _render(request, "flows.html", page="flows", title="Flows", flows=flows, data={"flows": flows})


@router.get("/ui/flows/{name}")
async def flow_page(request: Request, name: str) -> Response:
    if not session_id(request):
        return _login_redirect(request)
    loaded = _gateway(request).flows.get(name)
    if loaded is None:
        return _not_found(request, f"There is no flow '{name}'.")
    flow = describe_flow(loaded, with_files=True)
    data = {"flow": {k: v for k, v in flow.items() if k not in ("yaml", "files")},
            "streamed_node": views.streamed_node(flow)}
    return _render(request, "flow.html", page="flows", title=f"Flow {name}", flow=flow,
                   graph=views.dag_layout(flow["nodes"]), data=data)
