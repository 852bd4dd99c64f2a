"""HTTP plumbing shared by the routes: bodies, keys, errors, headers and query values."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import orjson
from starlette.requests import Request
from starlette.responses import Response

from ..errors import ModelyardError, invalid, not_found

#: The largest id a database row can have: the id columns are ``Integer``, which PostgreSQL stores in 32 bits
#: (SQLite in 64), so anything larger would be refused by the database as a 500, not found as a 404.
MAX_DB_INT = 2**31 - 1


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)


def error_response(err: ModelyardError, headers: dict[str, str] | None = None) -> Response:
    if err.headers:
        headers = {**(headers or {}), **err.headers}
    return json_response(err.body(), err.status, headers)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing more than `limit` bytes with 413 (declared or sent)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def header_value(text: str) -> str:
    r"""`text` made safe for a response header: printable ASCII as it is, anything else (a line break, a
    character outside Latin-1 …) and ``%`` percent-encoded as UTF-8, so ``urllib.parse.unquote`` gives `text` back.

    Header values built from what a client sent or an operator wrote (a model name, a router rule's name)
    go through here: a raw one could fail to encode (a 500) or, with CR/LF, add headers of its own.

    >>> header_value("split:blue"), header_value("modèle\r\nx: y")
    ('split:blue', 'mod%C3%A8le%0D%0Ax: y')
    """
    if text.isascii() and text.isprintable() and "%" not in text:  # the usual case, checked in C
        return text
    return quote(text, safe=_HEADER_SAFE)


#: printable ASCII but ``%``: left as it is by `header_value`
_HEADER_SAFE = "".join(chr(c) for c in range(32, 127) if chr(c) != "%")


def int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    """The query parameter `name` as a whole number from `low` to `high` (`default` when absent); otherwise
    a 400 that names it. Bounding it keeps a value the database or `datetime` cannot hold from becoming a 500."""
    raw = request.query_params.get(name)
    if raw is None:
        return default
    value = _whole_number(raw, name)
    if not low <= value <= high:
        raise invalid(f"Invalid value for '{name}': must be between {low} and {high}, not {raw[:40]}.", param=name)
    return value


def row_id(text: str, name: str, what: str) -> int:
    """A path's integer id (`name`, the id of a `what`), or the 404 of a missing `what` (code
    ``{what}_not_found``) when no row can have it: not a whole number, below 1, or past `MAX_DB_INT`."""
    value = int(text) if text.isascii() and text.isdigit() and len(text) <= 19 else 0
    if not 1 <= value <= MAX_DB_INT:
        raise not_found(f"There is no {what} with id {text[:40]!r}.", param=name, code=f"{what}_not_found")
    return value


def _whole_number(text: str, name: str) -> int:
    try:
        return int(text)  # more than 4300 digits is a ValueError too
    except ValueError:
        raise invalid(f"Invalid value for '{name}': {text[:40]!r} is not a whole number.", param=name) from None


def _too_large(limit: int) -> ModelyardError:
    return ModelyardError(f"Request body is larger than the limit of {limit} bytes.", status=413,
                          code="request_too_large")


def parse_json(raw: bytes) -> Any:
    if not raw:
        raise ModelyardError("The request body is empty; send a JSON object.", status=400, code="invalid_json")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ModelyardError(f"The request body is not valid JSON: {exc}", status=400, code="invalid_json") from None


def api_key(request: Request) -> str | None:
    auth = request.headers.get("authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return request.headers.get("api-key") or None
