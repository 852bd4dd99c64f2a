"""``/openapi.json``: FastAPI's document of the app, made true where FastAPI cannot see.

FastAPI documents a route from its signature. Two kinds of route here do
not show in theirs what they take:

- the OpenAI routes (``/v1/chat/completions`` …, ``/v1/feedback``) are plain
  Starlette routes, served without FastAPI (see `openai_routes`); their
  modules describe them in an ``OPENAPI`` table next to the routes;
- the management routes read their JSON bodies by hand (`admin.read_model`),
  so that the key is checked before the body is parsed (FastAPI reads a
  declared body first); each names its model with
  ``openapi_extra=json_body(Model)``, and the query values it reads with
  ``query(...)``.

`install` gives the app a document built once, on the first request for it
(nothing is added to any other request), which on top of FastAPI's:

- documents the OpenAI routes, as `APIRoute`s made for the document only;
- puts each request model's JSON schema, as pydantic validates it, in
  ``components.schemas`` under the model's name;
- states errors as they are: any status not listed is the OpenAI error
  object (`errors.error_body`), and FastAPI's 422, never answered here
  (a bad request is a 400), is gone;
- says how to authenticate: a key as a bearer token (or in the ``api-key``
  header) on every route but the probes.
"""

from __future__ import annotations

from typing import Any, Iterable

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from pydantic import BaseModel, TypeAdapter, WithJsonSchema
from starlette.routing import Route

REF = "#/components/schemas/{model}"

#: The OpenAI error object (`errors.error_body`): what every failure answers, whatever its status.
ERROR_SCHEMA: dict[str, Any] = {
    "title": "Error", "type": "object", "required": ["error"], "additionalProperties": False,
    "properties": {"error": {
        "type": "object", "required": ["message", "type", "param", "code"], "additionalProperties": False,
        "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                       "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}}}},
}
ERROR_RESPONSE = {"description": "An error: the OpenAI error object, with the status saying which kind",
                  "content": {"application/json": {"schema": {"$ref": REF.format(model="Error")}}}}

SECURITY_SCHEMES = {
    "bearerKey": {"type": "http", "scheme": "bearer",
                  "description": "An endpoint's key, or the admin key (MODELYARD_HOME/admin.key), which the "
                                 "management API (/api) needs"},
    "apiKeyHeader": {"type": "apiKey", "in": "header", "name": "api-key",
                     "description": "The same key in the header Azure OpenAI clients send"},
}
KEY = [{"bearerKey": []}, {"apiKeyHeader": []}]
#: Routes that need no key: the probes (``/readyz`` says more to the admin key).
OPEN_ROUTES = {("/healthz", "get"): [], ("/readyz", "get"): [{}, *KEY]}


#: The request bodies `json_body` documents, by schema name: the shape and the fields the path sets. Their JSON
#: schemas are made with the document, not when a route module is imported.
_BODIES: dict[str, tuple[Any, frozenset[str]]] = {}


def json_body(shape: Any, *, name: str | None = None, from_path: Iterable[str] = (),
              example: Any = None) -> dict[str, Any]:
    """``openapi_extra`` for a route that reads its JSON body by hand as `shape` (a pydantic model, or a named
    union of them): the request body is its JSON schema as pydantic validates it, in ``components.schemas``
    under `name` (by default the model's). Fields in `from_path` are set from the path, so optional in the body."""
    name = name or shape.__name__
    body = (shape, frozenset(from_path))
    if _BODIES.setdefault(name, body) != body:
        raise ValueError(f"two request bodies are named {name!r}; /openapi.json names each schema once")
    media: dict[str, Any] = {"schema": {"$ref": REF.format(model=name)}}
    if example is not None:
        media["example"] = example
    return {"requestBody": {"required": True, "content": {"application/json": media}}}


def some_fields_of(model: type[BaseModel]) -> WithJsonSchema:
    """The documented schema of a partial update of a `model` (read as a plain object, checked as `model` once
    merged into the current one): an object with some of `model`'s fields, or null."""
    schema = model.model_json_schema()
    if "$defs" in schema:
        raise ValueError(f"{model.__name__} has nested models; document its partial update by hand")
    fields = {"type": "object", "properties": schema["properties"], "additionalProperties": False}
    return WithJsonSchema({"anyOf": [fields, {"type": "null"}]})


def query(name: str, description: str, **schema: Any) -> dict[str, Any]:
    """An optional query parameter, for the ``parameters`` of an ``openapi_extra`` (`schema`: its JSON schema)."""
    return {"name": name, "in": "query", "required": False, "description": description,
            "schema": schema or {"type": "string"}}


def install(app: FastAPI, routes: Iterable[Route], docs: dict[str, dict[str, Any]]) -> None:
    """Serve `document` at the app's ``/openapi.json``: `routes` are Starlette routes FastAPI cannot document,
    `docs` their `APIRoute` arguments (``summary``, ``openapi_extra`` …) by path."""
    routes = list(routes)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document(app, [_doc_route(route, docs[route.path]) for route in routes])
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def document(app: FastAPI, extra_routes: list[APIRoute]) -> dict[str, Any]:
    """The OpenAPI document of `app` and of `extra_routes` (see the module docstring)."""
    doc = get_openapi(title=app.title, version=app.version, description=app.description,
                      routes=[*app.routes, *extra_routes])
    components = doc.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            responses["default"] = ERROR_RESPONSE
            if (path, method) in OPEN_ROUTES:
                operation["security"] = OPEN_ROUTES[path, method]
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    for name, (shape, from_path) in _BODIES.items():
        _add_body(schemas, name, shape, from_path)
    schemas["Error"] = ERROR_SCHEMA
    components["securitySchemes"] = SECURITY_SCHEMES
    doc["security"] = KEY
    return doc


def _doc_route(route: Route, doc: dict[str, Any]) -> APIRoute:
    """An `APIRoute` for the document only (never served) of a Starlette route, its path's values as strings."""
    params = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
              for name in route.param_convertors]
    extra = dict(doc.get("openapi_extra") or {})
    if params:
        extra["parameters"] = params + list(extra.get("parameters", ()))
    methods = sorted((route.methods or set()) - {"HEAD"})
    return APIRoute(route.path, route.endpoint, methods=methods, **{**doc, "openapi_extra": extra})


def _add_body(schemas: dict[str, Any], name: str, shape: Any, from_path: frozenset[str]) -> None:
    """Put the JSON schema of a `json_body` (and of the models it refers to) in `schemas`."""
    schema = TypeAdapter(shape).json_schema(ref_template=REF)
    for sub_name, sub in schema.pop("$defs", {}).items():
        _add(schemas, sub_name, sub)
    schema["title"] = name
    if from_path:
        schema["required"] = [field for field in schema.get("required", ()) if field not in from_path]
        if not schema["required"]:
            del schema["required"]
    _add(schemas, name, schema)


def _add(schemas: dict[str, Any], name: str, schema: dict[str, Any]) -> None:
    if schemas.setdefault(name, schema) != schema:
        raise ValueError(f"two models are named {name!r}; /openapi.json names each schema once")
