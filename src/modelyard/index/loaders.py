"""Files into text: plain text, Markdown, HTML and PDF, each a `Document`.

A `Document` is the text to cut into chunks plus what is known about it:
its path (as the index names it), the sha256 of its bytes (an unchanged file
is not embedded again), its title, format, size and modification time, and
its *sections* — where a part of the text starts and the metadata its chunks
get from there on:

- Markdown keeps its text as written (the markup is little noise for an
  embedding model and keeps code blocks readable); every heading starts a
  section ``{"section": "Rotating keys"}``. A front matter ``title:`` names
  the document, else its first level-1 heading.
- HTML becomes the text a reader sees: ``script``, ``style`` and the like
  are dropped, block elements end lines, headings start sections; the
  ``<title>`` (else the first ``<h1>``) names it. Only the standard
  library's ``html.parser``, which never refuses a page.
- PDF goes through `pypdf` (the ``index`` extra), page by page; each page
  starts a section ``{"page": 3}``. An encrypted PDF, a damaged one and a
  scanned one (no text layer) are unreadable.

Whatever cannot be read raises `UnreadableDocument`, which says why: the
builder skips the file and lists it, the rest goes on.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from ..errors import ModelyardError
from ..extras import require

#: the file types an index reads, by suffix (lower case)
FORMATS = {".txt": "text", ".text": "text", ".md": "markdown", ".markdown": "markdown",
           ".html": "html", ".htm": "html", ".pdf": "pdf"}

#: a section: where it starts in the text, and the metadata its chunks get
Section = tuple[int, dict[str, Any]]


class UnreadableDocument(ValueError):
    """A file that yields no text: not a supported type, not text, damaged, encrypted, empty."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


@dataclass
class Document:
    """A file's text and what is known about it, ready to be cut into chunks."""

    #: how the index names it (relative to the folder it came from, with ``/``)
    path: str
    text: str
    #: the sha256 of the file's bytes (of the text's UTF-8 when only the text was given)
    sha256: str
    #: title, format, bytes, mtime, and anything the caller adds; filters match on these
    metadata: dict[str, Any] = field(default_factory=dict)
    sections: list[Section] = field(default_factory=list)


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load_file(file: Path, name: str | None = None) -> Document:
    """Read and parse `file`; the index calls it `name` (default: the path as given)."""
    name = name or Path(file).as_posix()
    try:
        data = Path(file).read_bytes()
        mtime = os.stat(file).st_mtime
    except OSError as exc:
        raise UnreadableDocument(name, f"cannot be read ({exc.strerror or exc})") from None
    return parse(data, name, mtime=mtime)


def parse(data: bytes, name: str, *, filename: str | None = None, mtime: float | None = None) -> Document:
    """The `Document` in `data`, read as the type its `filename`'s suffix says (default: `name`'s)."""
    suffix = Path(filename or name).suffix.lower()
    kind = FORMATS.get(suffix)
    if kind is None:
        raise UnreadableDocument(name, f"'{suffix or 'no suffix'}' is not a type an index reads "
                                       f"({', '.join(sorted(FORMATS))})")
    if kind == "pdf":
        text, title, sections = _pdf(data, name)
    else:
        raw = _decode(data, name)
        if kind == "html":
            text, title, sections = _html(raw)
        elif kind == "markdown":
            text, title, sections = _markdown(raw)
        else:
            text, title, sections = raw, None, []
    if not text.strip():
        raise UnreadableDocument(name, "holds no text")
    metadata: dict[str, Any] = {"title": title or Path(name).stem, "format": kind, "bytes": len(data)}
    if mtime is not None:
        metadata["mtime"] = datetime.fromtimestamp(mtime, timezone.utc).isoformat(timespec="seconds")
    return Document(name, text, sha256_of(data), metadata, sections)


def find_files(root: Path) -> tuple[list[Path], list[Path]]:
    """The files under `root` an index reads, and the others; sorted. Hidden files and folders (``.git``)
    are left out of both."""
    found: list[Path] = []
    other: list[Path] = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith("."):
                continue
            path = Path(folder) / name
            (found if path.suffix.lower() in FORMATS else other).append(path)
    return found, other


# --- text, Markdown ------------------------------------------------------------------------


def _decode(data: bytes, name: str) -> str:
    if b"\x00" in data[:8192]:
        raise UnreadableDocument(name, "is binary, not text")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        try:
            text = data.decode("cp1252")  # what editors on Windows long wrote
        except UnicodeDecodeError:
            raise UnreadableDocument(name, "is neither UTF-8 nor Windows-1252 text") from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


_ATX = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_FRONT_TITLE = re.compile(r"^title:\s*(.+?)\s*$", re.M)


def _markdown(text: str) -> tuple[str, str | None, list[Section]]:
    title = None
    start = 0
    if text.startswith("---\n"):  # front matter
        end = text.find("\n---\n", 4)
        if end != -1:
            found = _FRONT_TITLE.search(text, 4, end)
            if found:
                title = found.group(1).strip("'\"")
            start = end + 5
    sections: list[Section] = []
    first_h1 = None
    fence = None
    offset = start
    previous: tuple[int, str] | None = None  # the line before, while it may be a setext heading's text
    for line in text[start:].split("\n"):
        here = offset
        offset += len(line) + 1
        marker = _FENCE.match(line)
        if fence is not None:
            if marker and marker.group(1)[0] == fence[0] and len(marker.group(1)) >= len(fence):
                fence = None
            continue
        if marker:
            fence, previous = marker.group(1), None
            continue
        atx = _ATX.match(line)
        setext = _SETEXT.match(line)
        if atx and atx.group(2):
            heading, level = atx.group(2).strip(), len(atx.group(1))
            sections.append((here, {"section": heading}))
            if level == 1 and first_h1 is None:
                first_h1 = heading
            previous = None
        elif setext and previous is not None:
            sections.append((previous[0], {"section": previous[1]}))
            if setext.group(1)[0] == "=" and first_h1 is None:
                first_h1 = previous[1]
            previous = None
        else:
            previous = (here, line.strip()) if line.strip() and not line.startswith(("    ", "\t")) else None
    return text, title or first_h1, sections


# --- HTML ---------------------------------------------------------------------------------

_SKIP = {"script", "style", "noscript", "template", "svg", "math", "iframe", "object", "canvas", "select"}
_PARAGRAPH = {"p", "div", "section", "article", "header", "footer", "nav", "aside", "main", "blockquote", "pre",
              "table", "ul", "ol", "dl", "form", "figure", "figcaption", "details", "summary", "fieldset", "address",
              "h1", "h2", "h3", "h4", "h5", "h6", "hr", "body"}
_LINE = {"li", "br", "tr", "dt", "dd", "caption", "option"}
_CELL = {"td", "th"}
_HEADINGS = {"h1", "h2", "h3", "h4", "h5", "h6"}
_VOID = {"br", "hr", "img", "input", "meta", "link", "area", "base", "col", "embed", "source", "track", "wbr"}


class _PageText(HTMLParser):
    """The text a reader sees, with exact offsets for the headings."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.length = 0
        self.newlines = 0  # how many newlines the text ends with
        self.space = False  # a space is owed before the next word on this line
        self.skip = 0
        self.pre = 0
        self.in_title = False
        self.title: list[str] = []
        self.heading: tuple[int, list[str]] | None = None
        self.first_h1: str | None = None
        self.sections: list[Section] = []

    def _emit(self, text: str) -> None:
        self.parts.append(text)
        self.length += len(text)

    def _newline(self, count: int) -> None:
        self.space = False
        if self.length and self.newlines < count:
            self._emit("\n" * (count - self.newlines))
            self.newlines = count

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIP:
            self.skip += tag not in _VOID
            return
        if tag == "title":
            self.in_title = True
        elif tag in _PARAGRAPH:
            self._newline(2)
        elif tag in _LINE:
            self._newline(1)
        elif tag in _CELL:
            self.space = self.newlines == 0 and self.length > 0
        if tag == "pre":
            self.pre += 1
        if tag in _HEADINGS and not self.skip:
            self.heading = (self.length, [])

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _LINE or tag == "hr":
            self._newline(1 if tag != "hr" else 2)

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP:
            self.skip = max(0, self.skip - 1)
            return
        if tag == "title":
            self.in_title = False
        if tag == "pre":
            self.pre = max(0, self.pre - 1)
        if tag in _HEADINGS and self.heading is not None:
            offset, words = self.heading
            heading = " ".join(" ".join(words).split())
            if heading:
                self.sections.append((offset, {"section": heading}))
                if tag == "h1" and self.first_h1 is None:
                    self.first_h1 = heading
            self.heading = None
        if tag in _PARAGRAPH:
            self._newline(2)
        elif tag in _LINE - {"br"}:
            self._newline(1)

    def handle_data(self, data: str) -> None:
        if self.skip:
            return
        if self.in_title:
            self.title.append(data)
            return
        if self.pre:
            if data:
                self._emit(data)
                stripped = data.rstrip("\n")
                self.newlines = len(data) - len(stripped) if stripped else self.newlines + len(data)
                self.space = False
            return
        words = data.split()
        if not words:
            self.space = self.space or (bool(data) and self.newlines == 0 and self.length > 0)
            return
        if self.heading is not None:
            self.heading[1].append(data)
        lead = " " if (self.space or data[0].isspace()) and self.newlines == 0 and self.length else ""
        self._emit(lead + " ".join(words))
        self.newlines = 0
        self.space = data[-1].isspace()


def _html(raw: str) -> tuple[str, str | None, list[Section]]:
    page = _PageText()
    page.feed(raw)
    page.close()
    text = "".join(page.parts).rstrip()
    title = " ".join("".join(page.title).split()) or page.first_h1
    return text, title, page.sections


# --- PDF ----------------------------------------------------------------------------------


def _pdf(data: bytes, name: str) -> tuple[str, str | None, list[Section]]:
    try:
        pypdf = require("pypdf", "index", "reading PDF files")
    except ModelyardError as exc:
        raise UnreadableDocument(name, exc.message) from None
    pages: list[str] = []
    title = None
    try:
        reader = pypdf.PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise UnreadableDocument(name, "is an encrypted PDF")
        for page in reader.pages:
            pages.append((page.extract_text() or "").replace("\x00", ""))
        info = reader.metadata
        title = str(info.title).strip() if info is not None and info.title else None
    except UnreadableDocument:
        raise
    except Exception as exc:  # a damaged PDF can fail in many ways inside pypdf; any of them means unreadable
        raise UnreadableDocument(name, f"is not a readable PDF ({type(exc).__name__}: {str(exc)[:200]})") from None
    parts: list[str] = []
    sections: list[Section] = []
    offset = 0
    for number, page_text in enumerate(pages, start=1):
        page_text = page_text.strip()
        if not page_text:
            continue
        if parts:
            parts.append("\n\n")
            offset += 2
        sections.append((offset, {"page": number}))
        parts.append(page_text)
        offset += len(page_text)
    if not parts and pages:
        raise UnreadableDocument(name, "has no text layer (a scanned PDF needs OCR first)")
    return "".join(parts), title, sections
