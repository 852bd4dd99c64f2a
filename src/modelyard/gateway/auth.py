"""The auth stage: a known, unrevoked key that may call this endpoint.

Keys arrive as ``Authorization: Bearer KEY`` or ``api-key: KEY`` (Azure
style); the server puts whichever was sent on the call. Checking costs one
sha256 and a dictionary look-up (see `store.keys.KeyStore.verify`).
"""

from __future__ import annotations

from typing import Any

from ..errors import ModelyardError
from ..store.keys import KeyInfo
from .pipeline import Call, Next


def verify_key(keys: Any, plain: str | None) -> KeyInfo:
    """The key behind `plain` (`store.keys.KeyStore.verify`), or the 401 that says what is wrong with it.
    Every route that takes a client's key checks it here."""
    if not plain:
        raise ModelyardError("You didn't provide an API key. Send it as 'Authorization: Bearer KEY' or 'api-key: KEY'.",
                             status=401, code="missing_api_key")
    key = keys.verify(plain)
    if key is None:
        raise ModelyardError("Incorrect API key provided.", status=401, code="invalid_api_key")
    return key


class Auth:
    def __init__(self, keys) -> None:
        self.keys = keys

    async def __call__(self, call: Call, call_next: Next) -> None:
        key = verify_key(self.keys, call.api_key)
        if not key.allows(call.request.model):
            raise ModelyardError(f"This key may not call endpoint '{call.request.model}'.", status=403,
                                 param="model", code="endpoint_not_allowed")
        call.key = key
        await call_next(call)
