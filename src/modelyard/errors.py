"""Errors are data: one exception type, one OpenAI-shaped body.

Every failure a client can see is a `ModelyardError` carrying the HTTP status
and the four fields of OpenAI's error object::

    {"error": {"message": "...", "type": "invalid_request_error",
               "param": "max_tokens", "code": "invalid_value"}}

The server turns it into a response with `error_body()`; the worker does the
same, so an instance's error travels through the gateway unchanged.
"""

from __future__ import annotations

from typing import Any


class ModelyardError(Exception):
    """A failure with an HTTP status and an OpenAI error object."""

    def __init__(
        self,
        message: str,
        *,
        status: int = 400,
        type: str | None = None,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        #: response headers that go with the error (``retry-after`` on a 429)
        self.headers = headers or {}
        self.status = status
        self.type = type or _default_type(status)
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        return error_body(self.message, type=self.type, param=self.param, code=self.code)

    @classmethod
    def from_body(cls, status: int, body: Any) -> "ModelyardError":
        """Rebuild an error from an upstream OpenAI-shaped response body."""
        err = body.get("error") if isinstance(body, dict) else None
        if isinstance(err, dict):
            return cls(
                str(err.get("message") or f"upstream returned {status}"),
                status=status,
                type=err.get("type"),
                param=err.get("param"),
                code=err.get("code"),
            )
        return cls(f"upstream returned HTTP {status}: {str(body)[:200]}", status=status)


def error_body(message: str, *, type: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def _default_type(status: int) -> str:
    if status == 401:
        return "authentication_error"
    if status == 403:
        return "permission_error"
    if status == 404:
        return "not_found_error"
    if status == 429:
        return "rate_limit_error"
    if status >= 500:
        return "server_error"
    return "invalid_request_error"


def invalid(message: str, param: str | None = None, code: str = "invalid_value") -> ModelyardError:
    return ModelyardError(message, status=400, param=param, code=code)


def too_long(param: str | None, limit: int, length: int | None = None, *, what: str | None = None) -> ModelyardError:
    """The 400 of a string longer than ``limit`` characters (or bytes), in OpenAI's words and code; ``what``
    names it when ``param`` alone would not (a filename is part of the ``file`` parameter)."""
    got = f", but got a string with length {length} instead" if length is not None else ""
    return ModelyardError(f"Invalid {what or repr(param)}: string too long. Expected a string with maximum length "
                          f"{limit}{got}.", status=400, param=param, code="string_above_max_length")


def not_found(message: str, param: str | None = None, code: str = "not_found") -> ModelyardError:
    return ModelyardError(message, status=404, param=param, code=code)


def internal_error() -> ModelyardError:
    """The 500 for a failure of the gateway itself (the details go to the log, not to the client)."""
    return ModelyardError("The gateway failed while answering this request.", status=500, code="internal_error")


def from_validation_error(exc: Any) -> ModelyardError:
    """Turn a pydantic ValidationError into a 400 that names the first bad field."""
    first = exc.errors()[0]
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body",)]
    param = ".".join(loc) or None
    msg = first.get("msg", "invalid value").removeprefix("Value error, ")
    if first.get("type") == "missing":
        text = f"Missing required parameter: '{param}'."
        return ModelyardError(text, status=400, param=param, code="missing_required_parameter")
    if first.get("type") == "string_too_long":  # the value is not repeated: it may be very long
        return too_long(param, first.get("ctx", {}).get("max_length", 0), len(first.get("input") or ""))
    if first.get("type") == "extra_forbidden":
        return ModelyardError(f"Unrecognized request argument supplied: {param}", status=400, param=param, code="unknown_parameter")
    if first.get("type") == "value_error":  # our own validators say what was wrong, value included
        where = f"Invalid value for '{param}': " if param else "Invalid request: "
        return ModelyardError(f"{where}{msg}.", status=400, param=param, code="invalid_value")
    value = first.get("input")
    shown = repr(value) if not isinstance(value, (dict, list)) else type(value).__name__
    return ModelyardError(f"Invalid value for '{param}': {msg} (got {shown}).", status=400, param=param, code="invalid_value")
