"""Helpers for flow tests: the example flows, and a small flow folder written from text."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parent / "examples"


@pytest.fixture
def flow_dir(tmp_path):
    """Write ``flow.dag.yaml`` (dedented) and the given side files into a fresh folder; return the folder."""

    def write(yaml_text: str, files: dict[str, str] | None = None) -> Path:
        folder = tmp_path / "flow"
        folder.mkdir(exist_ok=True)
        (folder / "flow.dag.yaml").write_text(textwrap.dedent(yaml_text).lstrip("\n"))
        for name, text in (files or {}).items():
            (folder / name).write_text(textwrap.dedent(text).lstrip("\n"))
        return folder

    return write


def line_of(path: Path, needle: str, start: int = 1) -> int:
    """The 1-based number of the first line at or after ``start`` that contains ``needle``."""
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if number >= start and needle in line:
            return number
    raise AssertionError(f"{needle!r} not in {path}")
