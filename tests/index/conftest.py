from __future__ import annotations

import pytest

from modelyard.index import IndexRegistry, IndexSettings

from .helpers import HashEmbedder


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def registry(tmp_path):
    registry = IndexRegistry(tmp_path / "indexes")
    yield registry
    registry.close()


@pytest.fixture
def settings() -> IndexSettings:
    return IndexSettings(embed="embed", chunk_size=200, overlap=40)


@pytest.fixture
def embedder() -> HashEmbedder:
    return HashEmbedder()


@pytest.fixture
def docs(tmp_path):
    """A small handbook folder: Markdown, text, HTML, and one file that cannot be read."""
    root = tmp_path / "docs"
    files = {
        "keys.md": "# Keys\n\n## Rotating keys\n\nTo rotate a key, create the new key, deploy it, then revoke "
                   "the old key. Rotate every key each month.\n\n## Storing keys\n\nStore keys in the vault, "
                   "never in the repository.\n",
        "backups.txt": "Backups run nightly at 2am. A backup is kept for thirty days. Restore a backup with the "
                       "restore command and check the checksum.\n",
        "cafeteria.html": "<html><head><title>Cafeteria</title></head><body><h1>Lunch</h1><p>The cafeteria "
                          "serves lunch from noon. Soup on Fridays.</p></body></html>",
        "guide/onboarding.md": "# Onboarding\n\nNew people get a laptop, a badge and a mentor on the first day. "
                               "The mentor explains how we work.\n",
        "broken.txt": b"\x00\x01binary junk",
    }
    for name, body in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body if isinstance(body, bytes) else body.encode())
    return root
