"""Jinja2 prompt templates, and chat templates split into messages by role lines.

A template is a ``.jinja2`` file next to the flow (``source.path``) or inline
text (``source: {type: inline, content: ...}``). It is compiled when the
flow loads, so a syntax error is reported then, naming the template file and
its line. Rendering follows prompt flow: ``trim_blocks`` and a kept trailing
newline, undefined variables render empty, no HTML escaping. Templates run in
Jinja's sandbox, because a flow may be uploaded by someone other than the
operator.

A **chat** template (an ``llm`` node with ``api: chat``) becomes messages by
prompt flow's convention: a line holding only a role and a colon starts a
message, optionally after ``#``::

    # system:
    You answer from the context only.
    {% for turn in chat_history %}
    user:
    {{ turn.inputs.question }}
    assistant:
    {{ turn.outputs.answer }}
    {% endfor %}
    user:
    {{ question }}

Roles are ``system``, ``developer``, ``user``, ``assistant``, ``tool`` and
``function`` (any case). Each message's content is stripped of surrounding
blank space. Text before the first role line is an error, as in prompt flow.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from jinja2 import TemplateSyntaxError, meta
from jinja2.sandbox import SandboxedEnvironment
from pydantic import BaseModel, ConfigDict, PrivateAttr

from ..wire import ChatMessage
from .errors import FlowError

CHAT_ROLES = ("system", "developer", "user", "assistant", "tool", "function")
_ROLE_LINE = re.compile(r"^[ \t]*#?[ \t]*(" + "|".join(CHAT_ROLES) + r")[ \t]*:[ \t]*\r?$",
                        re.IGNORECASE | re.MULTILINE)

_ENV = SandboxedEnvironment(trim_blocks=True, keep_trailing_newline=True, autoescape=False)


class Template(BaseModel):
    """A compiled prompt template.

    ``origin`` names it in errors (the file path relative to the flow folder,
    or ``<inline>``); ``variables`` are the names it reads from its caller,
    which the node's inputs must provide.
    """

    model_config = ConfigDict(frozen=True)

    text: str
    origin: str
    variables: frozenset[str]
    _compiled: Any = PrivateAttr(default=None)

    def __deepcopy__(self, memo: dict[int, Any] | None = None) -> Template:
        return self  # immutable; and a compiled Jinja template cannot be deep-copied

    def render_text(self, variables: Mapping[str, Any]) -> str:
        """The template rendered to one string (``prompt`` nodes, the completion API)."""
        if self._compiled is None:  # built from data (model_validate) rather than compile_template()
            self._compiled = compile_template(self.text, self.origin)._compiled
        try:
            return self._compiled.render(dict(variables))
        except Exception as exc:  # a template's own runtime error: name the template and its line
            raise FlowError(f"template failed to render: {type(exc).__name__}: {exc}",
                            source=self.origin, line=_template_line(exc, self.origin)) from exc

    def render_chat(self, variables: Mapping[str, Any]) -> list[ChatMessage]:
        """The template rendered and split into chat messages on role lines."""
        return split_chat(self.render_text(variables), origin=self.origin)


def compile_template(text: str, origin: str) -> Template:
    """A `Template` from source text; a syntax error is a `FlowError` with ``origin`` and the template line."""
    try:
        tree = _ENV.parse(text, name=origin, filename=origin)
        code = _ENV.compile(tree, name=origin, filename=origin)
    except TemplateSyntaxError as exc:
        raise FlowError(f"template syntax error: {exc.message}", source=origin, line=exc.lineno) from None
    template = Template(text=text, origin=origin, variables=frozenset(meta.find_undeclared_variables(tree)))
    template._compiled = _ENV.template_class.from_code(_ENV, code, _ENV.make_globals(None))
    return template


def render_text(template: Template, variables: Mapping[str, Any]) -> str:
    """``template`` rendered with ``variables`` to one string."""
    return template.render_text(variables)


def render_chat(template: Template, variables: Mapping[str, Any]) -> list[ChatMessage]:
    """``template`` rendered with ``variables`` and split into chat messages (role, content)."""
    return template.render_chat(variables)


def split_chat(text: str, origin: str = "<chat>") -> list[ChatMessage]:
    """Rendered chat-template text as messages: each role line starts one."""
    messages: list[ChatMessage] = []
    matches = list(_ROLE_LINE.finditer(text))
    before = text[: matches[0].start()] if matches else text
    if before.strip():
        first = before.strip().splitlines()[0][:60]
        raise FlowError("a chat template must start with a role line such as 'system:' or '# user:' "
                        f"(text before the first role: {first!r})", source=origin)
    for i, match in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        content = text[match.end(): end].strip()
        messages.append(ChatMessage(role=match.group(1).lower(), content=content))
    return messages


def _template_line(exc: BaseException, origin: str) -> int | None:
    """The template line a render error came from: Jinja maps its frames to the template file."""
    line = None
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == origin:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line
