"""`FlowError`: what is wrong with a flow, where, and as a 400 for a client.

One problem reads like a compiler message, so an editor can jump to it::

    flow.dag.yaml:14: node 'answer': field 'inputs.question': unknown node 'rewrte' in ${rewrte.output}

A template's syntax error names the template file and its own line instead
(``answer.jinja2:3: node 'answer': template syntax error: ...``).

Validation collects every problem it can find in one pass, so a user fixes a
file once rather than once per error: the raised `FlowError` describes the
first problem in its attributes and holds all of them in `problems`
(itself first). ``str()`` prints them one per line.

`FlowError.to_error()` gives modelyard's OpenAI-shaped `ModelyardError`
(status 400, ``code="invalid_flow"``, ``param`` naming the node and field),
so the server can answer a bad flow, or bad inputs to a flow, like any other
bad request.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..errors import ModelyardError

#: The ``code`` of the OpenAI error object for every flow problem.
ERROR_CODE = "invalid_flow"


class FlowError(Exception):
    """A flow that cannot be used, or inputs that do not fit it.

    ``message`` says what is wrong; ``node`` names the node (None for the
    flow's own inputs/outputs or the file as a whole); ``field`` is the dotted
    path inside the node or the file (``inputs.question``, ``source.path``);
    ``line`` is 1-based in ``source`` (the flow file, or a template or python
    file next to it); ``variant`` names the node variant the problem is in.
    """

    def __init__(
        self,
        message: str,
        *,
        node: str | None = None,
        line: int | None = None,
        field: str | None = None,
        source: str | None = None,
        variant: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.node = node
        self.line = line
        self.field = field
        self.source = source
        self.variant = variant
        #: every problem found in the same pass, this one first
        self.problems: tuple[FlowError, ...] = (self,)

    @classmethod
    def combine(cls, problems: Iterable[FlowError]) -> FlowError:
        """One error that carries several problems (the first gives its attributes)."""
        found = [p for error in problems for p in error.problems]
        if not found:
            raise ValueError("no problems to combine")
        first = found[0]
        error = cls(first.message, node=first.node, line=first.line, field=first.field,
                    source=first.source, variant=first.variant)
        error.problems = (error, *found[1:])
        return error

    def describe(self) -> str:
        """This one problem as ``source:line: node 'x' (variant 'v'): field 'f': message``."""
        where = ""
        if self.source:
            where = f"{self.source}:{self.line}: " if self.line else f"{self.source}: "
        elif self.line:
            where = f"line {self.line}: "
        who = ""
        if self.node:
            who = f"node '{self.node}'" + (f" (variant '{self.variant}')" if self.variant else "") + ": "
        what = f"field '{self.field}': " if self.field else ""
        return f"{where}{who}{what}{self.message}"

    def __str__(self) -> str:
        return "\n".join(p.describe() for p in self.problems)

    @property
    def param(self) -> str | None:
        """The OpenAI ``param``: ``nodes.<node>.<field>``, or the field alone for flow-level problems."""
        if self.node:
            return f"nodes.{self.node}" + (f".{self.field}" if self.field else "")
        return self.field

    def to_error(self, status: int = 400) -> ModelyardError:
        """This error as modelyard's OpenAI-shaped error (400, ``code="invalid_flow"``)."""
        return ModelyardError(str(self), status=status, param=self.param, code=ERROR_CODE)
