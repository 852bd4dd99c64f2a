"""The web console at ``/ui``: catalog, deploy wizard, endpoints, monitoring, usage, batch jobs, fine-tuning, flows.

Server-rendered pages (Jinja2 templates in ``templates/``) with small ES
modules (``static/``) for the parts that change while one looks: the Try-it
chat, the wizard, the traffic editor, live charts. Chart.js and js-yaml come
from npm (``package.json`` and ``package-lock.json`` beside this file,
installed into ``node_modules/`` by ``make install`` with ``npm ci``) and are
served from there by name (`pages.VENDOR_FILES`); nothing third-party is
copied into the repository.

The console changes state only through the management API (``/api/...``),
which accepts its signed-in session cookie (see `auth`); it reads the catalog
and endpoints in-process to render pages.
"""

from __future__ import annotations

from typing import Any


def install_console(app: Any) -> None:
    """Add the console's pages, static files and ``/ui/proxy`` to a gateway app."""
    from starlette.routing import Route

    from .auth import PROXY_PREFIX, ConsoleProxy
    from .pages import router, static_app

    app.include_router(router)
    app.mount("/ui/static", static_app(), name="ui-static")
    app.router.routes.append(Route(PROXY_PREFIX + "/{path:path}", ConsoleProxy(),
                                   methods=["GET", "POST", "DELETE"], include_in_schema=False))
