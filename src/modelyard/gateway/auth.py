"""The auth stage: a known, unrevoked key that may call this endpoint.

Keys arrive as ``Authorization: Bearer KEY`` or ``api-key: KEY`` (Azure
style); the server puts whichever was sent on the call. Checking costs one
sha256 and a dictionary look-up (see `store.keys.KeyStore.verify`).
"""

from __future__ import annotations

from ..errors import ModelyardError
from .pipeline import Call, Next


class Auth:
    def __init__(self, keys) -> None:
        self.keys = keys

    async def __call__(self, call: Call, call_next: Next) -> None:
        if not call.api_key:
            raise ModelyardError("You didn't provide an API key. Send it as 'Authorization: Bearer KEY' or 'api-key: KEY'.",
                                 status=401, code="missing_api_key")
        key = self.keys.verify(call.api_key)
        if key is None:
            raise ModelyardError("Incorrect API key provided.", status=401, code="invalid_api_key")
        if not key.allows(call.request.model):
            raise ModelyardError(f"This key may not call endpoint '{call.request.model}'.", status=403,
                                 param="model", code="endpoint_not_allowed")
        call.key = key
        await call_next(call)
