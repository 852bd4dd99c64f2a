"""Value types: flow inputs (`bind_inputs`), literal checks, and LLM request parameters.

Flow inputs and outputs have prompt flow's types. A value is converted the
way a user sending JSON or a CLI string expects, and refused otherwise:

============  =============================================================
type          accepted
============  =============================================================
string        a string
int           an int, an integral float, or a string of digits (``"3"``)
double        an int or float, or a numeric string (``"0.2"``)
bool          true/false, or the strings ``"true"``/``"false"`` (any case)
list          a list, or a JSON string of one
object        a mapping, or a JSON string of one
chat_history  a list of mappings (``{"inputs": {...}, "outputs": {...}}``
              turns, or ``{"role", "content"}`` messages), or a JSON string
============  =============================================================

LLM request parameters (`LLM_PARAMS`) are converted the same way, because
prompt flow's editor writes them as strings (``max_tokens: '256'``,
``temperature: '0.2'``, ``echo: 'False'``) and an empty string means "not set"
(``stop: ''``, ``logit_bias: ''``): `coerce_llm_param()` returns `UNSET` for
those, and the parameter is left out of the request.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .errors import FlowError

if TYPE_CHECKING:
    from .model import Flow


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


#: Returned by `coerce_llm_param` for a parameter written as ``''`` or null: leave it out of the request.
UNSET: Any = _Unset()


def coerce_value(value: Any, type_: str) -> Any:
    """``value`` as flow value type ``type_``; a `ValueError` says what was expected."""
    if type_ == "string":
        if isinstance(value, str):
            return value
        raise ValueError(f"expected a string, got {_kind(value)}")
    if type_ == "int":
        return _int(value)
    if type_ == "double":
        return _float(value)
    if type_ == "bool":
        return _bool(value)
    if type_ == "list":
        return _json(value, list, "a list")
    if type_ == "object":
        return _json(value, dict, "an object")
    if type_ == "chat_history":
        turns = _json(value, list, "a list of chat turns")
        for i, turn in enumerate(turns):
            if not isinstance(turn, Mapping):
                raise ValueError(f"chat history item {i} must be an object, got {_kind(turn)}")
        return turns
    raise ValueError(f"unknown value type {type_!r}")


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the bool {value}"
    if isinstance(value, (int, float, str)):
        return f"{type(value).__name__} {value!r}"
    return f"a {type(value).__name__}"


def _int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError(f"expected an int, got {_kind(value)}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise ValueError(f"expected an int, got {_kind(value)}")


def _float(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {_kind(value)}")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            pass
        else:
            if math.isfinite(number):
                return number
    raise ValueError(f"expected a number, got {_kind(value)}")


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ValueError(f"expected true or false, got {_kind(value)}")


def _json(value: Any, want: type, what: str) -> Any:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise ValueError(f"expected {what}, got a string that is not JSON") from None
    if isinstance(value, want):
        return value
    raise ValueError(f"expected {what}, got {_kind(value)}")


# -- flow inputs at run time ------------------------------------------------


def bind_inputs(flow: Flow, given: Mapping[str, Any]) -> dict[str, Any]:
    """The flow inputs of one run: ``given`` checked and converted, defaults filled in.

    A `FlowError` (``field="inputs.<name>"``; ``to_error()`` gives the 400)
    names the first input that is unknown, missing or of the wrong type, and
    lists every such problem. An input with no default and no value is
    missing, except a chat history, which starts empty.
    """
    problems: list[FlowError] = []
    bound: dict[str, Any] = {}
    for name in given:
        if name not in flow.inputs:
            declared = ", ".join(flow.inputs) or "none"
            problems.append(FlowError(f"unknown flow input '{name}'; the flow declares: {declared}",
                                      field=f"inputs.{name}"))
    for name, spec in flow.inputs.items():
        if name in given and given[name] is not None:
            try:
                bound[name] = coerce_value(given[name], "chat_history" if spec.is_chat_history else spec.type)
            except ValueError as exc:
                problems.append(FlowError(f"flow input '{name}' is {spec.type}: {exc}", field=f"inputs.{name}"))
                continue
            if spec.enum is not None and bound[name] not in spec.enum:
                problems.append(FlowError(f"flow input '{name}' must be one of {spec.enum!r}, got {bound[name]!r}",
                                          field=f"inputs.{name}"))
        elif spec.has_default:
            bound[name] = spec.default
        elif spec.is_chat_history:
            bound[name] = []
        else:
            problems.append(FlowError(f"missing required flow input '{name}' ({spec.type})", field=f"inputs.{name}"))
    if problems:
        raise FlowError.combine(problems)
    return bound


# -- LLM request parameters -------------------------------------------------

#: Inputs of an ``llm`` node that are request parameters, not template variables, and their kinds.
#: (``logprobs`` is a bool for the chat API and an int for completions.)
LLM_PARAMS: dict[str, str] = {
    "max_tokens": "int",
    "max_completion_tokens": "int",
    "temperature": "double",
    "top_p": "double",
    "n": "int",
    "stop": "stop",
    "presence_penalty": "double",
    "frequency_penalty": "double",
    "logit_bias": "object",
    "seed": "int",
    "user": "string",
    "response_format": "response_format",
    "logprobs": "logprobs",
    "top_logprobs": "int",
    "echo": "bool",
    "suffix": "string",
    "best_of": "int",
    "tools": "list",
    "tool_choice": "str_or_object",
    "functions": "list",
    "function_call": "str_or_object",
}


def coerce_llm_param(name: str, value: Any, api: str = "chat") -> Any:
    """An LLM request parameter as the OpenAI request wants it, `UNSET` for ``''``/null; `ValueError` if wrong."""
    if value is None or (isinstance(value, str) and value.strip() == ""):
        return UNSET
    kind = LLM_PARAMS[name]
    if kind == "logprobs":
        kind = "bool" if api == "chat" else "int"
    if kind == "stop":
        if isinstance(value, list) and all(isinstance(s, str) for s in value):
            return value
        if isinstance(value, str):
            try:
                parsed = json.loads(value)
            except ValueError:
                return value
            if isinstance(parsed, list) and all(isinstance(s, str) for s in parsed):
                return parsed or UNSET
            return value
        raise ValueError(f"expected a string or a list of strings, got {_kind(value)}")
    if kind == "response_format":
        if isinstance(value, str) and value.strip() in ("text", "json_object"):
            return {"type": value.strip()}
        return _json(value, dict, 'an object like {"type": "json_object"}')
    if kind == "str_or_object":
        if isinstance(value, str) and value.lstrip().startswith("{"):
            return _json(value, dict, "an object")
        if isinstance(value, (str, dict)):
            return value
        raise ValueError(f"expected a string or an object, got {_kind(value)}")
    return coerce_value(value, kind)
