"""What the management routes (``/api``) share: the admin check and a JSON body read into a model."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from ..errors import ModelyardError, from_validation_error
from .http import api_key, parse_json, read_body
from .ui.auth import console_session


def require_admin(request: Request) -> Any:
    """The gateway, for a request that carries the admin key or the web console's session cookie; 401 or 403
    otherwise. Routes take it as a dependency: ``gateway=Depends(require_admin)``."""
    gateway = request.app.state.gateway
    key = api_key(request)
    if key is None and console_session(request):  # the web console's session cookie (server/ui/auth.py)
        return gateway
    info = gateway.keys.verify(key or "")
    if info is None:
        raise ModelyardError("The management API needs the admin key (MODELYARD_HOME/admin.key).", status=401,
                             code="invalid_api_key")
    if not info.is_admin:
        raise ModelyardError("This key is not an admin key.", status=403, code="not_admin")
    return gateway


def is_admin(request: Request) -> bool:
    """Whether the request carries the admin key or the console's session cookie (never raises)."""
    try:
        require_admin(request)
    except ModelyardError:
        return False
    return True


async def read_model(request: Request, model: type[BaseModel], **extra: Any) -> Any:
    """The request's JSON object validated as `model` (with `extra` fields added); 400 naming the field."""
    raw = await read_body(request, request.app.state.gateway.settings.max_body_bytes)
    data = parse_json(raw)
    if not isinstance(data, dict):
        raise ModelyardError("The request body must be a JSON object.", status=400, code="invalid_json")
    try:
        return model.model_validate({**data, **extra})
    except ValidationError as exc:
        raise from_validation_error(exc) from None
