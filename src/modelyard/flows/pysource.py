"""Python nodes: find the tool function in a ``.py`` file by reading it, never by running it.

The file is parsed with `ast`; the function is the one named by
``source.function``, or else the single top-level function decorated with
``@tool`` (any spelling that ends in ``tool``: ``@tool``, ``@tool()``,
``@promptflow.tool``, ``@pf.tool(...)``). What the engine needs to call it
later is kept in a `PythonTool`: the file, the function, its parameters and
whether it is ``async``. Importing and running the file is the engine's job,
and only once the whole flow has been checked.
"""

from __future__ import annotations

import ast
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from .errors import FlowError


class PythonParameter(BaseModel):
    """One parameter of a tool function, as written in the source."""

    model_config = ConfigDict(frozen=True)

    name: str
    annotation: str | None = None  # the annotation's source text (``int``, ``list[str]``)
    required: bool = True  # no default value
    keyword_only: bool = False


class PythonTool(BaseModel):
    """The function a ``python`` node calls: file, name, parameters; nothing imported."""

    model_config = ConfigDict(frozen=True)

    path: Path  # absolute
    origin: str  # the path as the flow names it, for messages
    function: str
    line: int
    parameters: tuple[PythonParameter, ...] = ()
    accepts_kwargs: bool = False  # has ``**kwargs``: takes any input
    is_async: bool = False

    def parameter(self, name: str) -> PythonParameter | None:
        return next((p for p in self.parameters if p.name == name), None)


def inspect_python_tool(path: Path, origin: str, function: str | None = None) -> PythonTool:
    """The tool function of the file at ``path``; a `FlowError` says what is missing (file, syntax, function)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FlowError(f"python file '{origin}' does not exist", field="source.path") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise FlowError(f"python file '{origin}' cannot be read ({exc})", field="source.path") from None
    try:
        tree = ast.parse(text, filename=origin)
    except SyntaxError as exc:
        raise FlowError(f"python syntax error: {exc.msg}", source=origin, line=exc.lineno) from None
    functions = {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    if function is not None:
        chosen = functions.get(function)
        if chosen is None:
            have = ", ".join(functions) or "none"
            raise FlowError(f"python file '{origin}' has no top-level function '{function}' (functions: {have})",
                            field="source.function")
    else:
        tools = [f for f in functions.values() if any(_is_tool_decorator(d) for d in f.decorator_list)]
        if not tools:
            raise FlowError(f"python file '{origin}' has no function decorated with @tool; "
                            "decorate one, or name it with source.function", field="source.path")
        if len(tools) > 1:
            names = ", ".join(f.name for f in tools)
            raise FlowError(f"python file '{origin}' has several @tool functions ({names}); "
                            "name one with source.function", field="source.path")
        chosen = tools[0]
    return PythonTool(path=path, origin=origin, function=chosen.name, line=chosen.lineno,
                      parameters=_parameters(chosen.args), accepts_kwargs=chosen.args.kwarg is not None,
                      is_async=isinstance(chosen, ast.AsyncFunctionDef))


def _is_tool_decorator(node: ast.expr) -> bool:
    if isinstance(node, ast.Call):
        node = node.func
    if isinstance(node, ast.Name):
        return node.id == "tool"
    if isinstance(node, ast.Attribute):
        return node.attr == "tool"
    return False


def _parameters(args: ast.arguments) -> tuple[PythonParameter, ...]:
    positional = [*args.posonlyargs, *args.args]
    first_default = len(positional) - len(args.defaults)
    params = [
        PythonParameter(name=a.arg, annotation=_source(a.annotation), required=i < first_default)
        for i, a in enumerate(positional)
    ]
    params += [
        PythonParameter(name=a.arg, annotation=_source(a.annotation), required=default is None, keyword_only=True)
        for a, default in zip(args.kwonlyargs, args.kw_defaults)
    ]
    return tuple(params)


def _source(node: ast.expr | None) -> str | None:
    return ast.unparse(node) if node is not None else None
