"""Cutting a document's text into chunks of about N characters that overlap.

A chunk never holds more than `size` characters, and never more than one
section (a Markdown or HTML heading, a PDF page): a section start always
ends a chunk, and the next one starts there afresh, without overlap — so a
chunk's ``section`` metadata is exact and a filter on it returns only that
section's text. (A heading directly followed by another, "# Guide" then
"## Install", stays with the second.) Inside a section, a chunk ends, looking
back from `size` characters on but never before a quarter of it (no crumbs),
at the latest

1. paragraph break (a blank line);
2. end of a sentence;
3. line break, then any whitespace;
4. and only when a "word" is longer than the window, right at `size`.

The next chunk starts about `overlap` characters before the end of the one
before, at the first sentence start in that stretch (else the first word),
so it repeats at most `overlap` characters and never starts inside a word
(unless it was cut inside one).

Each chunk knows its ordinal, its offset in the text and the metadata of
its section (none before the first).

    >>> [c.text for c in split("One. Two. Three. " * 30, size=100, overlap=20)][:2]  # doctest: +ELLIPSIS
    ['One. Two. Three. One. Two. Three. ...', 'Three. One. Two. Three. ...']
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass, field
from typing import Any, Iterable

_PARAGRAPH = re.compile(r"\n[ \t]*\n")
_SENTENCE_END = re.compile(r"[.!?。！？…][\"'”’)\]]*(?=\s)")
_SENTENCE_START = re.compile(r"(?:[.!?。！？…][\"'”’)\]]*\s+|\n\s*)(?=\S)")
_WHITESPACE = re.compile(r"\s")
_WORD_START = re.compile(r"\s+(?=\S)")


@dataclass(frozen=True)
class Chunk:
    """One piece of a document: what is embedded and what a query returns."""

    ordinal: int
    text: str
    #: where the chunk starts in the document's text
    offset: int
    #: the metadata of its section (``section``, ``page``), empty before the first one
    metadata: dict[str, Any] = field(default_factory=dict)


def split(text: str, size: int = 800, overlap: int = 100,
          sections: Iterable[tuple[int, dict[str, Any]]] = ()) -> list[Chunk]:
    """`text` cut into chunks of at most `size` characters, each repeating about `overlap` characters of
    the one before it (see the module docstring); `sections` are ``(offset, metadata)`` pairs."""
    if size < 1:
        raise ValueError(f"a chunk size must be positive, not {size}")
    if not 0 <= overlap < size:
        raise ValueError(f"the overlap must be from 0 to less than the chunk size ({size}), not {overlap}")
    marks = sorted((min(max(int(o), 0), len(text)), meta) for o, meta in sections)
    starts = [o for o, _ in marks]
    heads = set(starts)
    least = max(1, size // 4)
    chunks: list[Chunk] = []
    start = _skip_space(text, 0)
    while start < len(text):
        limit = start + size
        label_at, end, fresh = start, len(text), True
        i = bisect.bisect_right(starts, start)
        while i < len(starts) and starts[i] <= limit and starts[i] < len(text):
            if label_at in heads and "\n" not in text[label_at:starts[i]].strip():
                label_at = starts[i]  # nothing but a heading so far: it heads the next section with it
                i += 1
                continue
            end = starts[i]
            break
        else:
            if limit < len(text):
                end, fresh = _break(text, start + least, limit), False
        piece = text[start:end].rstrip()
        if piece:
            i = bisect.bisect_right(starts, label_at) - 1
            chunks.append(Chunk(len(chunks), piece, start, dict(marks[i][1]) if i >= 0 else {}))
        if end >= len(text):
            break
        following = _skip_space(text, end) if fresh or overlap == 0 else _overlap_start(text, start, end, overlap)
        start = max(following, start + 1)
    return chunks


def _skip_space(text: str, at: int) -> int:
    while at < len(text) and text[at].isspace():
        at += 1
    return at


def _last(pattern: re.Pattern[str], text: str, lo: int, hi: int) -> re.Match[str] | None:
    found = None
    for found in pattern.finditer(text, lo, hi):
        pass
    return found


def _break(text: str, lo: int, hi: int) -> int:
    """Where to end a chunk in text[lo:hi]: the best boundary, latest first."""
    paragraph = _last(_PARAGRAPH, text, lo, hi)
    if paragraph:
        return paragraph.start()
    sentence = _last(_SENTENCE_END, text, lo, hi)
    if sentence:
        return sentence.end()
    newline = text.rfind("\n", lo, hi)
    if newline > lo:
        return newline
    space = _last(_WHITESPACE, text, lo, hi)
    if space and space.start() > lo:
        return space.start()
    return hi


def _overlap_start(text: str, start: int, end: int, overlap: int) -> int:
    """Where the chunk after text[start:end] starts: the first sentence start in its last `overlap`
    characters, else the first word start there; past `end` when there is none."""
    lo = max(end - overlap, start + 1)
    sentence = _SENTENCE_START.search(text, lo, end)
    if sentence and sentence.end() < end:
        return sentence.end()
    if lo < end and not text[lo].isspace() and text[lo - 1].isspace():
        return lo  # already at a word start
    word = _WORD_START.search(text, lo, end)
    if word and word.end() < end:
        return word.end()
    if end < len(text) and not text[end].isspace() and not text[end - 1].isspace():
        return lo  # the chunk was cut inside an overlong "word": overlap inside it too
    return _skip_space(text, end)
