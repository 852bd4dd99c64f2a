"""Reading a batch input file: the checks a job makes before it runs anything.

An input file is JSON Lines, one request per line, as OpenAI's Batch API
takes it::

    {"custom_id": "q1", "method": "POST", "url": "/v1/chat/completions",
     "body": {"model": "default", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 16}}

Problems with the **file** fail the whole job before any line runs, each
named with its line number (OpenAI's ``errors.data[].line``): a line that is
not a JSON object, a missing or wrong ``custom_id``/``method``/``url``/
``body``, a ``url`` other than the job's endpoint, a repeated ``custom_id``,
a ``model`` that names no endpoint (or one the job's key may not call, or
that does not serve this kind of request), no lines at all, too many lines.

Problems with one line's **body** (a field the request models in
`modelyard.wire` refuse) fail only that line, when it runs: the job goes on.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import orjson

from ..store.batches import LineRecord

#: the OpenAI routes a batch line may call, and the request kind of each
BATCH_URLS = {"/v1/chat/completions": "chat", "/v1/completions": "completion", "/v1/embeddings": "embedding"}
#: the width of ``batch_lines.custom_id``
MAX_CUSTOM_ID = 512
#: errors reported for one file; past this the file is not read further
MAX_ERRORS = 100
_LINE_KEYS = {"custom_id", "method", "url", "body"}


@dataclass
class ParsedInput:
    """The lines of a valid file, or the errors that make it invalid."""

    lines: list[LineRecord] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    #: the modelyard endpoints the lines call (``model`` of their bodies, or the job's override)
    models: set[str] = field(default_factory=set)


def line_request_id(batch_id: str, line: int) -> str:
    """The stable id of a line's output (``batch_req_…``): the same however often the line runs."""
    return "batch_req_" + hashlib.sha256(f"{batch_id}:{line}".encode()).hexdigest()[:24]


def parse_input(path: Path, *, url: str, model: str | None, max_lines: int,
                check_model: Callable[[str, str], tuple[str, str] | None]) -> ParsedInput:
    """Read and check an input file for a job on ``url`` (blocking; run it in a thread).

    ``model`` overrides every body's ``model`` (the job names its endpoint);
    ``check_model(name, kind)`` returns ``(code, message)`` when lines may not
    call endpoint ``name``, else None. Blank lines are skipped.
    """
    kind = BATCH_URLS[url]
    out = ParsedInput()
    seen: dict[str, int] = {}
    checked: dict[str, tuple[str, str] | None] = {}

    def error(number: int, code: str, message: str, param: str | None = None) -> None:
        out.errors.append({"code": code, "line": number, "message": message, "param": param})

    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            if len(out.errors) >= MAX_ERRORS:
                break
            if not raw.strip():
                continue
            try:
                item = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                error(number, "invalid_json_line", f"Line {number} is not valid JSON: {exc}.")
                continue
            if not isinstance(item, dict):
                error(number, "invalid_json_line", f"Line {number} must be a JSON object, not {type(item).__name__}.")
                continue
            extra = sorted(set(item) - _LINE_KEYS)
            if extra:
                error(number, "invalid_request", f"Line {number} has unknown field(s) {', '.join(extra)}; a line has "
                      "custom_id, method, url and body.", extra[0])
                continue
            custom_id = item.get("custom_id")
            if not isinstance(custom_id, str) or not custom_id:
                error(number, "invalid_request", f"Line {number} needs a non-empty string 'custom_id'.", "custom_id")
                continue
            if len(custom_id) > MAX_CUSTOM_ID:
                error(number, "invalid_request", f"Line {number}: custom_id is longer than {MAX_CUSTOM_ID} characters.",
                      "custom_id")
                continue
            if "\x00" in custom_id:
                error(number, "invalid_request", f"Line {number}: custom_id contains a NUL character (\\u0000), which "
                      "cannot be stored.", "custom_id")
                continue
            if item.get("method") != "POST":
                error(number, "invalid_request", f"Line {number}: method must be 'POST', not {item.get('method')!r}.",
                      "method")
                continue
            line_url = item.get("url")
            if line_url not in BATCH_URLS:
                error(number, "unsupported_url", f"Line {number}: url {line_url!r} is not supported; a batch line "
                      f"calls one of {', '.join(BATCH_URLS)}.", "url")
                continue
            if line_url != url:
                error(number, "mismatched_url", f"Line {number}: url {line_url!r} differs from the batch's endpoint "
                      f"{url!r}; every line of a batch calls the batch's endpoint.", "url")
                continue
            body = item.get("body")
            if not isinstance(body, dict):
                error(number, "invalid_request", f"Line {number}: body must be a JSON object (the request).", "body")
                continue
            if custom_id in seen:
                error(number, "duplicate_custom_id", f"Line {number}: custom_id {custom_id!r} is already used on line "
                      f"{seen[custom_id]}; each line needs its own.", "custom_id")
                continue
            seen[custom_id] = number
            target = model if model is not None else body.get("model")
            if isinstance(target, str) and target:
                if target not in checked:
                    checked[target] = check_model(target, kind)
                problem = checked[target]
                if problem is not None:
                    error(number, problem[0], f"Line {number}: {problem[1]}", "body.model")
                    continue
                out.models.add(target)
            if len(seen) > max_lines:
                error(number, "too_many_lines", f"The file has more than {max_lines} requests "
                      "(MODELYARD_BATCH_MAX_LINES); split it into several batches.")
                break
            out.lines.append(LineRecord(line=number, custom_id=custom_id, kind=kind,
                                        body=orjson.dumps(body).decode()))
    if not out.lines and not out.errors:
        out.errors.append({"code": "empty_file", "line": None, "param": None,
                           "message": "The input file has no requests: write one JSON object per line."})
    return out
