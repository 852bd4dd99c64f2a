"""Files into documents: text, Markdown, HTML and PDF; what cannot be read says why."""

from __future__ import annotations

import hashlib
import sys

import pytest

from modelyard.index.loaders import UnreadableDocument, find_files, load_file, parse

from .helpers import make_pdf


def test_a_text_file_keeps_its_text_and_is_described(tmp_path):
    file = tmp_path / "notes.txt"
    file.write_bytes(b"Rotate the keys every month.\r\nKeep backups.\r\n")
    doc = load_file(file, "team/notes.txt")
    assert doc.path == "team/notes.txt"
    assert doc.text == "Rotate the keys every month.\nKeep backups.\n"
    assert doc.sha256 == hashlib.sha256(file.read_bytes()).hexdigest()
    assert doc.metadata["title"] == "notes" and doc.metadata["format"] == "text"
    assert doc.metadata["bytes"] == len(file.read_bytes()) and doc.metadata["mtime"].endswith("+00:00")
    assert doc.sections == []


def test_windows_1252_text_is_read_too():
    doc = parse("Café prices: 5€".encode("cp1252"), "menu.txt")
    assert doc.text == "Café prices: 5€"


MARKDOWN = """# The handbook

Welcome.

```bash
# a comment, not a heading
```

## Rotating keys ##
Create the new key first.

Backups
-------
Nightly at 2am.
"""


def test_markdown_keeps_its_text_and_makes_each_heading_a_section():
    doc = parse(MARKDOWN.encode(), "handbook.md")
    assert doc.text == MARKDOWN
    assert doc.metadata["title"] == "The handbook" and doc.metadata["format"] == "markdown"
    assert [meta["section"] for _, meta in doc.sections] == ["The handbook", "Rotating keys", "Backups"]
    starts = [doc.text[offset:].split("\n", 1)[0] for offset, _ in doc.sections]
    assert starts == ["# The handbook", "## Rotating keys ##", "Backups"]


def test_markdown_front_matter_names_the_document():
    doc = parse(b"---\ntitle: 'Key rotation'\ntags: [ops]\n---\n# Something else\n\ntext\n", "k.md")
    assert doc.metadata["title"] == "Key rotation"
    assert doc.sections[0][1] == {"section": "Something else"}


HTML = b"""<!doctype html><html><head><title>Ops  handbook</title>
<style>body { color: red }</style><script>var secret = "do not index";</script></head>
<body><nav>Home</nav><h1>Keys</h1><p>Rotate   a key <b>every</b> month &amp; log it.</p>
<ul><li>first</li><li>second</li></ul><noscript>enable js</noscript>
<h2>Backups</h2><p>Nightly&nbsp;at 2am.</p><pre>keep
  this   layout</pre></body></html>"""


def test_html_becomes_the_text_a_reader_sees():
    doc = parse(HTML, "site/ops.html")
    assert "secret" not in doc.text and "color" not in doc.text and "enable js" not in doc.text
    assert "Rotate a key every month & log it." in doc.text
    assert "first\nsecond" in doc.text
    assert "keep\n  this   layout" in doc.text  # <pre> keeps its layout
    assert doc.metadata["title"] == "Ops handbook" and doc.metadata["format"] == "html"
    assert [(doc.text[o:o + len(m["section"])], m["section"]) for o, m in doc.sections] == [
        ("Keys", "Keys"), ("Backups", "Backups")]


def test_html_without_a_title_is_named_by_its_first_heading():
    assert parse(b"<h1>Guide</h1><p>x</p>", "g.htm").metadata["title"] == "Guide"


@pytest.mark.parametrize("name, data, reason", [
    ("image.png", b"\x89PNG...", "not a type an index reads"),
    ("blob.txt", b"abc\x00\x01\x02", "binary"),
    ("empty.md", b"  \n\n", "no text"),
    ("empty.html", b"<html><script>x()</script></html>", "no text"),
])
def test_what_cannot_be_read_says_why(name, data, reason):
    with pytest.raises(UnreadableDocument) as raised:
        parse(data, name)
    assert raised.value.path == name and reason in raised.value.reason


def test_a_missing_file_is_unreadable_not_a_crash(tmp_path):
    with pytest.raises(UnreadableDocument, match="cannot be read"):
        load_file(tmp_path / "gone.md")


def test_find_files_picks_the_supported_types_and_leaves_hidden_ones_out(tmp_path):
    for name in ("a.md", "b/c.txt", "b/d.HTML", "e.pdf", "f.docx", ".hidden.md", ".git/g.md"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    found, other = find_files(tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in found] == ["a.md", "e.pdf", "b/c.txt", "b/d.HTML"]
    assert [p.name for p in other] == ["f.docx"]


def test_pdf_without_pypdf_is_unreadable_and_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "pypdf", None)  # as if it were not installed
    with pytest.raises(UnreadableDocument) as raised:
        parse(make_pdf(["hello"]), "manual.pdf")
    assert "pip install 'modelyard[index]'" in raised.value.reason


def test_pdf_pages_become_sections():
    pytest.importorskip("pypdf", reason="pypdf (the 'index' extra) is not installed")
    doc = parse(make_pdf(["Rotate keys monthly", "Backups run nightly"], title="Ops manual"), "ops.pdf")
    assert doc.metadata["title"] == "Ops manual" and doc.metadata["format"] == "pdf"
    assert "Rotate keys monthly" in doc.text and "Backups run nightly" in doc.text
    assert [m for _, m in doc.sections] == [{"page": 1}, {"page": 2}]
    assert doc.text[doc.sections[1][0]:].startswith("Backups")


def test_a_damaged_pdf_is_unreadable():
    pytest.importorskip("pypdf", reason="pypdf (the 'index' extra) is not installed")
    with pytest.raises(UnreadableDocument, match="not a readable PDF"):
        parse(b"%PDF-1.4\nthis is not really a pdf", "broken.pdf")
