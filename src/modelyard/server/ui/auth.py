"""Signing in to the web console, and how its cookie reaches the management API.

The console is a browser page, so it cannot hold the admin key the way the
CLI does. Signing in (``POST /ui/login`` with the admin key) gives the browser
a **session cookie** instead:

- ``HttpOnly`` (page scripts never see it), ``SameSite=Strict`` (another
  site's page cannot make the browser send it), ``Secure`` when served over
  HTTPS, valid for `SESSION_TTL_S`;
- its value is ``SID.EXPIRES.SIGNATURE``, an HMAC-SHA256 keyed by a secret
  derived from the admin key: no server-side table, sessions outlive a
  gateway restart, and replacing the admin key ends every session. Signing
  out ends the session on this gateway process (its id is remembered as revoked).

The management API (``/api/...``, `server.admin.require_admin`) accepts the cookie
in place of ``Authorization: Bearer ADMIN_KEY`` through `console_session`.
State-changing requests (anything but GET/HEAD/OPTIONS) must also send the
session's CSRF token in the ``X-Modelyard-CSRF`` header: a header a
cross-site form or script cannot set, and a value only the console's own
pages know (it is in their ``<meta name="csrf-token">``).

`ConsoleProxy` lets the console call the OpenAI routes (``/v1/...``: the
Try-it chat, the Test tab, batch jobs) with the same cookie: it checks the
session and the CSRF header, then hands the request to ``/v1/...`` with the
admin key, so those calls take exactly the path (and are recorded exactly
like) any other client's.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
import time
from typing import Any
from urllib.parse import parse_qs

from starlette.requests import Request

from ...errors import ModelyardError
from ..http import error_response, read_body

log = logging.getLogger(__name__)

#: The session cookie's name.
COOKIE = "modelyard_session"
#: The header that carries the CSRF token on state-changing requests.
CSRF_HEADER = "x-modelyard-csrf"
#: How long a session lasts, in seconds (12 hours).
SESSION_TTL_S = 12 * 3600
#: Methods that change nothing and need no CSRF token.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: Where the console proxy forwards to, and what it accepts.
PROXY_PREFIX = "/ui/proxy"
#: The largest sign-in or sign-out form read, in bytes.
FORM_LIMIT = 16_384


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class ConsoleSessions:
    """Issues and checks the console's signed session tokens.

    >>> sessions = ConsoleSessions("my-admin-key")
    >>> token = sessions.issue()
    >>> sessions.verify(token) is not None, sessions.verify(token + "x")
    (True, None)
    """

    def __init__(self, admin_key: str, ttl_s: int = SESSION_TTL_S) -> None:
        self._secret = hashlib.sha256(b"modelyard-console-session\0" + admin_key.encode()).digest()
        self.ttl_s = ttl_s
        self._revoked: dict[str, float] = {}  # sid -> expiry, forgotten once expired

    def _sign(self, text: str) -> str:
        return _b64(hmac.new(self._secret, text.encode(), hashlib.sha256).digest())

    def issue(self) -> str:
        """A new session token, valid for `ttl_s` seconds."""
        payload = f"{secrets.token_urlsafe(16)}.{int(time.time()) + self.ttl_s}"
        return f"{payload}.{self._sign(payload)}"

    def verify(self, token: str | None) -> str | None:
        """The session id of a valid, unexpired, not signed-out token; None otherwise."""
        if not token or token.count(".") != 2:
            return None
        sid, expires, signature = token.split(".")
        if not hmac.compare_digest(signature, self._sign(f"{sid}.{expires}")):
            return None
        if not expires.isdigit() or int(expires) < time.time() or sid in self._revoked:
            return None
        return sid

    def revoke(self, token: str | None) -> None:
        """Sign a session out: its token stops working on this gateway."""
        sid = self.verify(token)
        if sid is not None:
            now = time.time()
            self._revoked = {s: exp for s, exp in self._revoked.items() if exp > now}
            self._revoked[sid] = int(token.split(".")[1])  # type: ignore[union-attr]

    def csrf_token(self, sid: str) -> str:
        """The CSRF token of a session: the pages embed it, state-changing requests send it back."""
        return self._sign(f"csrf:{sid}")


def sessions_for(app: Any) -> ConsoleSessions:
    """The app's `ConsoleSessions`, made on first use from the gateway's admin key."""
    sessions = getattr(app.state, "console_sessions", None)
    if sessions is None:
        sessions = app.state.console_sessions = ConsoleSessions(app.state.gateway.admin_key)
    return sessions


def session_id(request: Request) -> str | None:
    """The signed-in console session of this request, or None."""
    if COOKIE not in request.cookies:
        return None
    return sessions_for(request.app).verify(request.cookies.get(COOKIE))


def check_csrf(request: Request, sid: str) -> None:
    """Refuse a state-changing request that lacks the session's CSRF token (403 ``csrf_failed``)."""
    if request.method in SAFE_METHODS:
        return
    sent = request.headers.get(CSRF_HEADER, "")
    if not hmac.compare_digest(sent.encode(), sessions_for(request.app).csrf_token(sid).encode()):
        raise ModelyardError(
            "This request carries the console's session cookie but not its CSRF token "
            f"(header {CSRF_HEADER}); reload the console page and try again.",
            status=403, param=CSRF_HEADER, code="csrf_failed")


def console_session(request: Request) -> bool:
    """Whether the request is the signed-in console's (cookie valid, CSRF token present where needed).

    Used by the management API when no key was sent. Raises a 403 for a
    valid cookie on a state-changing request without the CSRF header.
    """
    sid = session_id(request)
    if sid is None:
        return False
    check_csrf(request, sid)
    return True


def safe_next(value: str | None) -> str:
    """Where to go after signing in: a console path only (never another site)."""
    if value and value.startswith("/ui") and not value.startswith("//") and "\\" not in value:
        return value
    return "/ui/catalog"


async def read_form(request: Request) -> dict[str, str]:
    """A small ``application/x-www-form-urlencoded`` body (the sign-in form) as a dict.

    Anyone may post here, before signing in: a body declared larger than `FORM_LIMIT` is refused (413)
    before any of it is read, and one sent in chunks as soon as it passes the limit.
    """
    raw = await read_body(request, FORM_LIMIT)
    return {k: v[0] for k, v in parse_qs(raw.decode("utf-8", "replace")).items()}


class ConsoleProxy:
    """ASGI app at ``/ui/proxy/v1/...``: the console's calls to the OpenAI routes.

    Checks the session cookie (and, for POSTs, the CSRF header), then passes
    the request to ``/v1/...`` on the same app with ``Authorization: Bearer
    ADMIN_KEY`` in place of the cookie. Any other path is a 404.
    """

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        request = Request(scope, receive)
        try:
            sid = session_id(request)
            if sid is None:
                raise ModelyardError("Sign in to the console first (/ui/login).", status=401, code="invalid_api_key")
            check_csrf(request, sid)
            path = scope["path"][len(PROXY_PREFIX):]
            if not path.startswith("/v1/"):
                raise ModelyardError(f"The console proxy serves /v1 routes only, not {path!r}.", status=404,
                                     code="unknown_route")
        except ModelyardError as err:
            await error_response(err)(scope, receive, send)
            return
        admin_key = scope["app"].state.gateway.admin_key
        headers = [(k, v) for k, v in scope["headers"] if k not in (b"authorization", b"api-key", b"cookie")]
        headers.append((b"authorization", f"Bearer {admin_key}".encode()))
        child = {**scope, "path": path, "raw_path": path.encode(), "root_path": "", "headers": headers}
        await scope["app"](child, receive, send)
