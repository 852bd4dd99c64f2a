"""The folder of indexes: ``MODELYARD_HOME/indexes``, one `DocumentIndex` file per name.

An index is opened on first use and kept open (opening reads its vectors:
quick from its saved in-memory index, slow to rebuild for a large one);
`close` saves and closes them all. Listing reads each file's settings and
counts without opening it.
"""

from __future__ import annotations

import json
import logging
import shutil
import sqlite3
import threading
from pathlib import Path
from typing import Any

from ..errors import ModelyardError, invalid, not_found
from .spec import IndexSettings, check_name
from .store import ANN_MIN, DocumentIndex, disk_bytes, iso

log = logging.getLogger(__name__)


class IndexRegistry:
    """The indexes in one folder (``MODELYARD_HOME/indexes``), each opened once and shared by its users."""

    def __init__(self, root: Path, *, ann_min: int = ANN_MIN) -> None:
        self.root = Path(root)
        self.ann_min = ann_min
        self._open: dict[str, DocumentIndex] = {}
        self._lock = threading.Lock()

    def path(self, name: str) -> Path:
        try:
            check_name(name)
        except ValueError as exc:
            raise invalid(f"Invalid index name: {exc}.", param="name") from None
        return self.root / f"{name}.db"

    def names(self) -> list[str]:
        """Every index's name, sorted."""
        if not self.root.is_dir():
            return []
        found = []
        for file in self.root.glob("*.db"):
            try:
                found.append(check_name(file.stem))
            except ValueError:
                continue
        return sorted(found)

    def exists(self, name: str) -> bool:
        return self.path(name).is_file()

    def create(self, name: str, settings: IndexSettings) -> DocumentIndex:
        """A new, empty index; 409 when one has this name."""
        path = self.path(name)
        with self._lock:
            try:
                index = DocumentIndex.create(path, settings, ann_min=self.ann_min)
            except FileExistsError:
                raise ModelyardError(f"An index named '{name}' exists already; add documents to it, or delete it "
                                     "first.", status=409, param="name", code="index_exists") from None
            self._open[name] = index
            return index

    def get(self, name: str) -> DocumentIndex:
        """The index called `name`, opened on first use (that reads its vectors: slow for a large one); 404
        when there is none."""
        path = self.path(name)
        with self._lock:
            index = self._open.get(name)
            if index is None:
                try:
                    index = DocumentIndex(path, ann_min=self.ann_min)
                except FileNotFoundError:
                    raise not_found(f"There is no index named '{name}'; GET /api/indexes lists them.", param="name",
                                    code="index_not_found") from None
                except (ValueError, KeyError, sqlite3.DatabaseError) as exc:  # damaged, or of another version
                    log.error("index file %s cannot be opened: %s", path, exc)
                    raise ModelyardError(f"The index '{name}' cannot be opened: {exc}", status=500,
                                         code="index_unreadable") from None
                self._open[name] = index
            return index

    def delete(self, name: str) -> None:
        """Close the index and delete its files; 404 when there is none."""
        path = self.path(name)
        with self._lock:
            index = self._open.pop(name, None)
            if index is not None:
                index.close()
            elif not path.is_file():
                raise not_found(f"There is no index named '{name}'.", param="name", code="index_not_found")
            for file in (path, *(path.with_name(path.name + s) for s in ("-wal", "-shm", "-journal"))):
                file.unlink(missing_ok=True)
            saved = path.with_suffix(".vectors")
            for folder in (saved, saved.with_name(saved.name + ".tmp"), saved.with_name(saved.name + ".old")):
                shutil.rmtree(folder, ignore_errors=True)

    def close(self) -> None:
        """Close every open index (saving their vectors)."""
        with self._lock:
            for index in self._open.values():
                index.close()
            self._open.clear()

    def summaries(self) -> list[dict[str, Any]]:
        """Every index's settings and counts, by name; read from the files, so listing opens no index."""
        found = []
        for name in self.names():
            with self._lock:
                index = self._open.get(name)
            if index is not None:
                summary = index.stats()
            else:
                try:
                    summary = _peek(self.path(name))
                except (sqlite3.Error, ValueError, KeyError, OSError) as exc:
                    log.warning("index file %s cannot be read: %s", self.path(name), exc)
                    summary = {"name": name, "error": f"cannot be read: {exc}"}
            found.append(summary)
        return found


def _peek(path: Path) -> dict[str, Any]:
    """An index's settings and counts, read without opening it."""
    conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=30)
    try:
        stored = dict(conn.execute("SELECT key, value FROM settings"))
        settings = IndexSettings.model_validate_json(stored["settings"])
        documents, chars = conn.execute("SELECT COUNT(*), COALESCE(SUM(chars), 0) FROM documents").fetchone()
        chunks = conn.execute("SELECT COUNT(*) FROM chunks").fetchone()[0]
    finally:
        conn.close()
    return {"name": path.stem, **settings.model_dump(), "documents": documents, "chunks": chunks, "chars": chars,
            "created_at": iso(float(json.loads(stored.get("created_at", "0")))), "disk_bytes": disk_bytes(path)}
