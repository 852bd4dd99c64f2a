"""Cutting text into chunks: sizes, overlap, boundaries, sections, offsets."""

from __future__ import annotations

import re

import pytest

from modelyard.index.chunk import split
from modelyard.index.loaders import parse

SENTENCES = " ".join(f"Sentence number {i} says something about keys and backups." for i in range(200))


def covered(text: str, chunks) -> set[int]:
    return {i for c in chunks for i in range(c.offset, c.offset + len(c.text))}


@pytest.mark.parametrize("size, overlap", [(100, 0), (300, 50), (800, 100), (2000, 400)])
def test_chunks_stay_within_the_size_and_cover_the_whole_text(size, overlap):
    chunks = split(SENTENCES, size, overlap)
    assert all(0 < len(c.text) <= size for c in chunks)
    assert all(SENTENCES[c.offset:c.offset + len(c.text)] == c.text for c in chunks)  # offsets are exact
    assert [c.ordinal for c in chunks] == list(range(len(chunks)))
    missing = {i for i, ch in enumerate(SENTENCES) if not ch.isspace()} - covered(SENTENCES, chunks)
    assert not missing


def test_consecutive_chunks_overlap_by_at_most_the_overlap_and_start_at_a_sentence():
    chunks = split(SENTENCES, 300, 80)
    for before, after in zip(chunks, chunks[1:]):
        shared = before.offset + len(before.text) - after.offset
        assert 0 < shared <= 80
        assert after.text.startswith("Sentence number")  # a sentence start, not the middle of one


def test_without_overlap_chunks_follow_each_other():
    chunks = split(SENTENCES, 300, 0)
    for before, after in zip(chunks, chunks[1:]):
        assert after.offset >= before.offset + len(before.text)


def test_chunks_end_at_paragraph_breaks_when_they_can():
    paragraphs = [f"Paragraph {i}. " + "Words about the topic go here. " * 4 for i in range(12)]
    text = "\n\n".join(p.strip() for p in paragraphs)
    chunks = split(text, 400, 0)
    for c in chunks[:-1]:
        assert text[c.offset + len(c.text):].startswith("\n\n")
        assert c.text.startswith("Paragraph")


def test_chunks_end_at_sentences_inside_a_long_paragraph():
    chunks = split(SENTENCES, 250, 0)
    assert all(c.text.endswith(".") for c in chunks)


def test_a_word_longer_than_a_chunk_is_cut_and_overlaps():
    chunks = split("x" * 1000, 300, 50)
    assert [(c.offset, len(c.text)) for c in chunks] == [(0, 300), (250, 300), (500, 300), (750, 250)]


def test_no_chunk_starts_inside_a_word():
    text = " ".join(f"word{i}" for i in range(2000))
    for c in split(text, 200, 60):
        assert c.offset == 0 or text[c.offset - 1] == " "


MARKDOWN = """# Guide
## Install
Run the installer. It takes a minute.

More about installing, which goes on for a while.

## Keys

Rotate a key every month. """ + "Keys are important. " * 30 + """

## Backups

Nightly at 2am.
"""


def test_a_chunk_holds_one_section_and_carries_its_name():
    doc = parse(MARKDOWN.encode(), "guide.md")
    chunks = split(doc.text, 300, 50, doc.sections)
    sections = [c.metadata.get("section") for c in chunks]
    assert sections[0] == "Install"  # "# Guide" alone heads the Install section too
    assert chunks[0].text.startswith("# Guide\n## Install")
    assert "Keys" in sections and sections[-1] == "Backups"
    for c in chunks:
        headings = re.findall(r"^##? .*$", c.text, re.M)
        assert len([h for h in headings if h != "# Guide"]) <= 1, c.text  # never two sections in one chunk
        if c.metadata["section"] == "Keys":
            assert "Backups" not in c.text and "installer" not in c.text
    # the first chunk of a section starts at its heading, without overlap from the one before
    assert any(c.text.startswith("## Keys") for c in chunks)
    assert any(c.text == "## Backups\n\nNightly at 2am." for c in chunks)


def test_text_before_the_first_section_has_no_section():
    chunks = split("Preface text.\n\n# One\n\nBody.", 100, 0, [(15, {"section": "One"})])
    assert chunks[0].metadata == {} and chunks[-1].metadata == {"section": "One"}


@pytest.mark.parametrize("size, overlap", [(0, 0), (100, 100), (100, -1)])
def test_impossible_sizes_are_refused(size, overlap):
    with pytest.raises(ValueError):
        split("text", size, overlap)


def test_empty_and_blank_text_make_no_chunk():
    assert split("", 100, 10) == [] and split("  \n\n ", 100, 10) == []
