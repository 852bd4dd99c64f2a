"""modelyard: a self-hosted model platform, usable as a library.

The server (``modelyard up``) and the CLI are thin layers over these::

    import asyncio
    import modelyard

    async def main():
        gateway = modelyard.Gateway.open(modelyard.Settings.from_env())
        gateway.ensure_default_endpoints()
        await gateway.start(wait=True)
        try:
            request = modelyard.ChatCompletionRequest(model="default",
                                                      messages=[{"role": "user", "content": "Hi"}])
            call = await gateway.pipeline(modelyard.Call(kind="chat", request=request, api_key=gateway.admin_key))
            print(call.body["choices"][0]["message"]["content"], call.cost_usd)
        finally:
            await gateway.close()

    asyncio.run(main())

Names are imported on first use, so ``import modelyard`` stays light (no
web framework, no torch) until a name that needs one is touched.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: public name -> the module that defines it
_EXPORTS = {
    # settings and errors
    "Settings": "modelyard.settings",
    "ModelyardError": "modelyard.errors",
    # the catalog
    "Catalog": "modelyard.catalog.registry",
    "ModelCard": "modelyard.catalog.card",
    "resolve_path": "modelyard.catalog.sources",
    # specs a user applies
    "EndpointSpec": "modelyard.serving.spec",
    "DeploymentSpec": "modelyard.serving.spec",
    "RouterSpec": "modelyard.routing.spec",
    "BudgetSpec": "modelyard.telemetry.budget",
    "CacheSpec": "modelyard.cache.spec",
    # the OpenAI wire format
    "ChatCompletionRequest": "modelyard.wire",
    "CompletionRequest": "modelyard.wire",
    "EmbeddingRequest": "modelyard.wire",
    # a gateway in this process, and one request through it
    "Gateway": "modelyard.server.state",
    "Call": "modelyard.gateway.pipeline",
    # calling a deployment and accounting for it
    "Metered": "modelyard.telemetry.metering",
    "MeteredStream": "modelyard.telemetry.metering",
    "complete": "modelyard.telemetry.metering",
    # offline evaluation
    "load_outcomes": "modelyard.routing.data",
    "evaluate_router": ("modelyard.routing.evaluate", "evaluate"),
    "load_cache_pairs": ("modelyard.cache.evaluate", "load_pairs"),
    "evaluate_cache": ("modelyard.cache.evaluate", "evaluate"),
}

__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    target = _EXPORTS.get(name)
    if target is None:
        raise AttributeError(f"module 'modelyard' has no attribute {name!r}")
    module, attribute = target if isinstance(target, tuple) else (target, name)
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value  # the next look-up is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # for type checkers and editors; at run time the names above load lazily
    from .cache.evaluate import evaluate as evaluate_cache
    from .cache.evaluate import load_pairs as load_cache_pairs
    from .cache.spec import CacheSpec
    from .catalog.card import ModelCard
    from .catalog.registry import Catalog
    from .catalog.sources import resolve_path
    from .errors import ModelyardError
    from .gateway.pipeline import Call
    from .routing.data import load_outcomes
    from .routing.evaluate import evaluate as evaluate_router
    from .routing.spec import RouterSpec
    from .telemetry.budget import BudgetSpec
    from .serving.spec import DeploymentSpec, EndpointSpec
    from .server.state import Gateway
    from .settings import Settings
    from .telemetry.metering import Metered, MeteredStream, complete
    from .wire import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
