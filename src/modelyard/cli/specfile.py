"""Endpoint and deployment spec files: read them with errors that name the line, write them back.

A file holds one YAML document or several separated by ``---``; each is an
endpoint or a deployment, told apart by an explicit ``kind:`` key or, without
one, by ``endpoint_name`` (only deployments have it)::

    name: chat
    traffic: {blue: 100}
    ---
    name: blue
    endpoint_name: chat
    model: gemma-3-270m
    instance_count: 2

Every document is checked against `EndpointSpec` / `DeploymentSpec` here,
before anything is sent to the server, so a typo costs no request. A problem
is a `SpecFileError` whose message reads ``endpoint.yml:7: field
'request_settings.request_timeout_ms': ...`` — the line is found by walking
the YAML node tree to the key that failed.

`dump_yaml()` goes the other way: from the server's description of an
endpoint or deployment to a spec file that `modelyard apply -f` reads back
unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union

import typer
import yaml
from pydantic import BaseModel, ValidationError
from rich.console import Console
from rich.markup import escape

from ..serving.spec import DeploymentSpec, EndpointSpec

Kind = Literal["endpoint", "deployment"]
Spec = Union[EndpointSpec, DeploymentSpec]

SPEC_MODELS: dict[str, type[BaseModel]] = {"endpoint": EndpointSpec, "deployment": DeploymentSpec}

#: Key order of a written file (Azure ML's order); fields not listed follow in model order.
FIELD_ORDER: dict[str, tuple[str, ...]] = {
    "endpoint": ("name", "description", "auth_mode", "policy", "traffic", "mirror_traffic"),
    "deployment": ("name", "endpoint_name", "model", "instance_count", "request_settings", "liveness_probe",
                   "readiness_probe", "environment_variables", "options"),
}
#: Fields a written file always shows, even when they hold the default.
ALWAYS_WRITTEN: dict[str, tuple[str, ...]] = {
    "endpoint": ("name", "auth_mode", "traffic"),
    "deployment": ("name", "endpoint_name", "model", "instance_count", "request_settings"),
}
#: Keys a file may carry that are not spec fields and are dropped (Azure files start with ``$schema``).
IGNORED_KEYS = ("$schema",)


class SpecFileError(Exception):
    """A spec file that cannot be used; `message` names the file and, where known, the line."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class SpecDocument:
    """One validated document of a spec file."""

    kind: Kind
    spec: Spec
    source: str
    line: int  # 1-based line where the document starts

    @property
    def label(self) -> str:
        """``endpoint chat`` / ``deployment chat/blue``."""
        if isinstance(self.spec, DeploymentSpec):
            return f"deployment {self.spec.endpoint_name}/{self.spec.name}"
        return f"endpoint {self.spec.name}"

    def body(self) -> dict[str, Any]:
        """The fields the file sets (defaults left to the server), as JSON."""
        return self.spec.model_dump(mode="json", exclude_unset=True)


# --- reading ------------------------------------------------------------------------


def read_spec_file(path: Path | str) -> list[SpecDocument]:
    """Read and validate every document of one file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecFileError(f"{path}: no such file") from None
    except OSError as exc:
        raise SpecFileError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    return parse_specs(text, str(path))


def read_spec_files(paths: Iterable[Path | str]) -> list[SpecDocument]:
    """Read several files; all are checked before the caller sends anything."""
    docs: list[SpecDocument] = []
    for path in paths:
        docs.extend(read_spec_file(path))
    return docs


def parse_specs(text: str, source: str = "<string>") -> list[SpecDocument]:
    """Validate every non-empty document of ``text``; ``source`` names it in errors."""
    docs = []
    for node, data in _load_documents(text, source):
        if data is None:
            continue  # an empty document, e.g. after a trailing ``---``
        docs.append(_document(node, data, source))
    if not docs:
        raise SpecFileError(f"{source}: holds no endpoint or deployment")
    return docs


def _load_documents(text: str, source: str) -> Iterator[tuple[yaml.Node, Any]]:
    """Each document as its node tree (for line numbers) and its data."""
    loader = yaml.SafeLoader(text)
    try:
        while loader.check_node():
            node = loader.get_node()
            yield node, loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark is not None else source
        problem = getattr(exc, "problem", None) or str(exc)
        context, context_mark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
        if context and context_mark is not None and (mark is None or context_mark.line != mark.line):
            context += f" that starts at line {context_mark.line + 1}"
        raise SpecFileError(f"{where}: not valid YAML: {problem}" + (f" ({context})" if context else "")) from None
    finally:
        loader.dispose()


def _document(node: yaml.Node, data: Any, source: str) -> SpecDocument:
    start = node.start_mark.line + 1
    if not isinstance(data, dict):
        raise SpecFileError(f"{source}:{start}: a document must be a mapping (an endpoint or a deployment), "
                            f"not a {type(data).__name__}")
    data = {k: v for k, v in data.items() if k not in IGNORED_KEYS}
    kind = _kind(data, node, source)
    data.pop("kind", None)
    try:
        spec = SPEC_MODELS[kind].model_validate(data)
    except ValidationError as exc:
        name = data.get("name")
        what = f"{kind} '{name}'" if isinstance(name, str) else kind
        lines = [f"{source}:{_line_of(node, err['loc'])}: {what}: {_describe(err)}" for err in exc.errors()]
        raise SpecFileError("\n".join(lines)) from None
    return SpecDocument(kind, spec, source, start)  # type: ignore[arg-type]


def _kind(data: dict[str, Any], node: yaml.Node, source: str) -> Kind:
    if "kind" in data:
        kind = str(data["kind"]).strip().lower()
        if kind not in SPEC_MODELS:
            raise SpecFileError(f"{source}:{_line_of(node, ('kind',))}: kind must be 'endpoint' or 'deployment', "
                                f"not {data['kind']!r}")
        return kind  # type: ignore[return-value]
    return "deployment" if "endpoint_name" in data else "endpoint"


def _describe(err: dict[str, Any]) -> str:
    field = ".".join(str(p) for p in err["loc"])
    if err["type"] == "extra_forbidden":
        return f"field '{field}' is not a known field"
    if err["type"] == "missing":
        return f"field '{field}' is required"
    return f"field '{field}': {problem(err)}"


def problem(err: dict[str, Any]) -> str:
    """A pydantic error's message and the value it refused, without pydantic's ``Value error,`` prefix."""
    message, got = str(err["msg"]).removeprefix("Value error, "), err.get("input")
    if got is None or isinstance(got, (dict, list)) or repr(got) in message:
        return message
    return f"{message} (got {got!r})"


def _line_of(node: yaml.Node, loc: Iterable[Any]) -> int:
    """The 1-based line of the key at ``loc`` (a pydantic error location), or of the nearest parent found."""
    mark = node.start_mark
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.value == str(part):
                    mark, node = key.start_mark, value
                    break
            else:
                break
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            node = node.value[part]
            mark = node.start_mark
        else:
            break
    return mark.line + 1


@contextmanager
def spec_errors_exit() -> Iterator[None]:
    """Print a `SpecFileError` in red on stderr and exit 2, as a bad command-line argument does."""
    try:
        yield
    except SpecFileError as exc:
        Console(stderr=True, highlight=False).print(f"[red]error:[/] {escape(exc.message)}", soft_wrap=True)
        raise typer.Exit(2) from None


# --- writing ------------------------------------------------------------------------


def spec_from_description(description: dict[str, Any], kind: Kind, endpoint_name: str | None = None) -> Spec:
    """The spec inside a server description: the spec fields only, runtime state dropped."""
    model = SPEC_MODELS[kind]
    data = {k: v for k, v in description.items() if k in model.model_fields}
    if kind == "deployment" and endpoint_name is not None:
        data.setdefault("endpoint_name", endpoint_name)
    return model.model_validate(data)  # type: ignore[return-value]


def spec_dict(spec: Spec) -> dict[str, Any]:
    """The spec as an ordered mapping: Azure's key order, fields at their default left out unless always shown."""
    kind: Kind = "deployment" if isinstance(spec, DeploymentSpec) else "endpoint"
    values = spec.model_dump(mode="json")
    defaults = _defaults(kind)
    order = FIELD_ORDER[kind] + tuple(f for f in values if f not in FIELD_ORDER[kind])
    return {f: values[f] for f in order
            if f in values and (f in ALWAYS_WRITTEN[kind] or values[f] != defaults.get(f))}


def dump_yaml(description: dict[str, Any], kind: Kind, endpoint_name: str | None = None) -> str:
    """A spec file for an endpoint or deployment description, ready for ``modelyard apply -f``.

    A deployment description does not always carry its endpoint's name; pass
    ``endpoint_name`` then.
    """
    return _dump(spec_dict(spec_from_description(description, kind, endpoint_name)))


def _dump(data: dict[str, Any]) -> str:
    return yaml.dump(data, Dumper=yaml.SafeDumper, sort_keys=False, allow_unicode=True, width=100)


def _defaults(kind: Kind) -> dict[str, Any]:
    model = SPEC_MODELS[kind]
    values: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        if field.is_required():
            continue
        value = field.get_default(call_default_factory=True)
        values[name] = value.model_dump(mode="json") if isinstance(value, BaseModel) else value
    return values
