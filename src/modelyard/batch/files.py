"""The file store: batch inputs and outputs under ``MODELYARD_HOME/files``.

A file is its bytes on disk (``files/<id>``) plus a ``batch_files`` row (name,
purpose, size, owner). Bytes are written to a temporary name, flushed to
disk and renamed before the row is added, so a row always points at a
complete file; a crash can leave at most an orphan temporary file, which
`FileStore.sweep()` removes at start-up.

Uploads are streamed: `FileStore.receive()` parses a ``multipart/form-data``
body chunk by chunk (python-multipart's streaming parser), writing the
``file`` part straight to disk and refusing it with 413 as soon as it grows
past the size limit, so neither memory nor disk holds more than the limit.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, AsyncIterator, Iterable

from ..errors import ModelyardError, invalid, not_found
from ..store.batches import BatchStore, FileRecord
from ..store.models import utcnow

log = logging.getLogger(__name__)

#: purposes a client may upload with (OpenAI's values this gateway has a use for)
UPLOAD_PURPOSES = ("batch",)
#: the purpose of files a job writes
OUTPUT_PURPOSE = "batch_output"
#: form fields other than ``file`` are small; more than this is not a form this API takes
MAX_FIELD_BYTES = 4096


def file_id() -> str:
    return "file-" + os.urandom(12).hex()


@dataclass
class Upload:
    """A received multipart upload: where its file part was written, and the other fields."""

    path: Path | None
    filename: str | None
    size: int
    fields: dict[str, str]


class FileStore:
    """Files on disk, rows in the database; ``max_bytes`` bounds uploads."""

    def __init__(self, store: BatchStore, root: Path, *, max_bytes: int) -> None:
        self.store = store
        self.root = root
        self.max_bytes = max_bytes
        root.mkdir(parents=True, exist_ok=True)

    def path(self, fid: str) -> Path:
        if "/" in fid or fid.startswith("."):
            raise not_found(f"No such File object: {fid}", param="file_id", code="file_not_found")
        return self.root / fid

    # --- writing ------------------------------------------------------------------

    def _temp(self) -> Path:
        return self.root / f".tmp-{os.urandom(8).hex()}"

    def _place(self, temp: Path, *, filename: str, purpose: str, size: int, owner_key_id: int | None,
               expires_after_s: int | None = None) -> FileRecord:
        """Give a complete temporary file its id; the caller adds the row."""
        fid = file_id()
        os.replace(temp, self.root / fid)
        now = utcnow()
        return FileRecord(id=fid, filename=filename, purpose=purpose, bytes=size, owner_key_id=owner_key_id,
                          created_at=now,
                          expires_at=now + timedelta(seconds=expires_after_s) if expires_after_s else None)

    def write(self, chunks: Iterable[bytes], *, filename: str, purpose: str = OUTPUT_PURPOSE,
              owner_key_id: int | None = None) -> FileRecord:
        """Write bytes (a job's output) to disk under a new id; blocking, run it in a thread.

        The row is not added here: the job adds it together with its own change of status
        (`BatchStore.set_status(files=...)`); until then `sweep()` would remove the file.
        """
        temp = self._temp()
        size = 0
        try:
            with open(temp, "wb") as f:
                for chunk in chunks:
                    f.write(chunk)
                    size += len(chunk)
                f.flush()
                os.fsync(f.fileno())
            return self._place(temp, filename=filename, purpose=purpose, size=size, owner_key_id=owner_key_id)
        finally:
            temp.unlink(missing_ok=True)

    async def receive(self, content_type: str, body: AsyncIterator[bytes]) -> Upload:
        """Parse a multipart upload as it arrives; the ``file`` part goes to a temporary file.

        The caller owns ``Upload.path`` and must `accept()` or delete it.
        """
        from python_multipart.multipart import MultipartParser, parse_options_header

        mime, options = parse_options_header(content_type or "")
        boundary = options.get(b"boundary")
        if mime != b"multipart/form-data" or not boundary:
            raise invalid("Upload the file as multipart/form-data with the fields 'file' and 'purpose'.",
                          param="file", code="invalid_content_type")
        state: dict[str, Any] = {"headers": {}, "field": b"", "value": b"", "part": None}
        fields: dict[str, str] = {}
        upload = Upload(path=None, filename=None, size=0, fields=fields)
        out: list[Any] = []  # the open temporary file, while the file part streams in

        def on_header_field(data: bytes, start: int, end: int) -> None:
            state["field"] += data[start:end]

        def on_header_value(data: bytes, start: int, end: int) -> None:
            state["value"] += data[start:end]

        def on_header_end() -> None:
            state["headers"][state["field"].lower()] = state["value"]
            state["field"], state["value"] = b"", b""

        def on_headers_finished() -> None:
            _, disposition = parse_options_header(state["headers"].get(b"content-disposition", b""))
            name = disposition.get(b"name", b"").decode("utf-8", "replace")
            if name == "file" and b"filename" in disposition:
                if upload.path is not None:
                    raise invalid("Send one file per upload.", param="file", code="invalid_file")
                upload.filename = disposition[b"filename"].decode("utf-8", "replace")
                upload.path = self._temp()
                out.append(open(upload.path, "wb"))
                state["part"] = "file"
            else:
                state["part"] = name
                state["data"] = b""

        def on_part_data(data: bytes, start: int, end: int) -> None:
            if state["part"] == "file":
                upload.size += end - start
                if upload.size > self.max_bytes:
                    raise _too_large(self.max_bytes)
                out[0].write(data[start:end])
            else:
                state["data"] += data[start:end]
                if len(state["data"]) > MAX_FIELD_BYTES:
                    raise invalid(f"Form field '{state['part']}' is longer than {MAX_FIELD_BYTES} bytes.",
                                  param=state["part"])

        def on_part_end() -> None:
            if state["part"] == "file":
                out[0].close()
            elif state["part"]:
                fields[state["part"]] = state["data"].decode("utf-8", "replace")
            state["headers"], state["part"] = {}, None

        parser = MultipartParser(boundary, {
            "on_header_field": on_header_field, "on_header_value": on_header_value, "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished, "on_part_data": on_part_data, "on_part_end": on_part_end})
        try:
            async for chunk in body:
                parser.write(chunk)
            parser.finalize()
        except ModelyardError:
            self._discard(upload, out)
            raise
        except Exception as exc:
            self._discard(upload, out)
            raise invalid(f"The upload is not a valid multipart/form-data body: {exc}", param="file",
                          code="invalid_multipart") from None
        finally:
            for f in out:
                f.close()
        return upload

    @staticmethod
    def _discard(upload: Upload, out: list[Any]) -> None:
        for f in out:
            f.close()
        if upload.path is not None:
            upload.path.unlink(missing_ok=True)

    def accept(self, upload: Upload, *, purpose: str, owner_key_id: int | None,
               expires_after_s: int | None = None) -> FileRecord:
        """Keep a received upload as a file (its checks done by the caller); blocking."""
        assert upload.path is not None
        with open(upload.path, "rb+") as f:
            os.fsync(f.fileno())
        record = self._place(upload.path, filename=upload.filename or "upload.jsonl", purpose=purpose,
                             size=upload.size, owner_key_id=owner_key_id, expires_after_s=expires_after_s)
        try:
            self.store.add_file(record)
        except Exception:
            self.path(record.id).unlink(missing_ok=True)
            raise
        return record

    # --- reading and deleting -----------------------------------------------------------

    def get(self, fid: str) -> FileRecord:
        record = self.store.get_file(fid)
        if record is not None and record.expires_at is not None and record.expires_at <= utcnow():
            self.delete(fid)  # expired (``expires_after`` at upload)
            record = None
        if record is None:
            raise not_found(f"No such File object: {fid}", param="file_id", code="file_not_found")
        return record

    def delete(self, fid: str) -> None:
        self.store.delete_file(fid)
        self.path(fid).unlink(missing_ok=True)

    def sweep(self) -> int:
        """Remove temporary files and files without a row (left by a crash); returns how many."""
        removed = 0
        for path in self.root.iterdir():
            if path.name.startswith(".tmp-") or (path.is_file() and self.store.get_file(path.name) is None):
                path.unlink(missing_ok=True)
                removed += 1
        if removed:
            log.info("removed %d unfinished files from %s", removed, self.root)
        return removed


def _too_large(limit: int) -> ModelyardError:
    return ModelyardError(f"The file is larger than the limit of {limit} bytes (MODELYARD_BATCH_MAX_FILE_BYTES).",
                          status=413, param="file", code="file_too_large")


def describe_file(record: FileRecord) -> dict[str, Any]:
    """The OpenAI File object."""
    return {
        "id": record.id,
        "object": "file",
        "bytes": record.bytes,
        "created_at": int(record.created_at.timestamp()) if record.created_at else 0,
        "expires_at": int(record.expires_at.timestamp()) if record.expires_at else None,
        "filename": record.filename,
        "purpose": record.purpose,
        "status": "processed",
        "status_details": None,
    }
