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
Everything else a client sends is bounded as it arrives too, with or without
a Content-Length (a chunked body has none): the whole body (the file's limit
plus `UPLOAD_OVERHEAD_BYTES`), each part's headers (`MAX_PART_HEADER_BYTES`),
the number of parts (`MAX_PARTS`), a field's name and value, the filename
(the width of its column). A refused upload leaves nothing on disk.

**Quota.** An endpoint key keeps at most `KeyQuota` bytes in so many files
(`holding()` before an upload, again under a lock when it is kept); the admin
key has none. **Expiry.** A file uploaded with ``expires_after`` is gone once
it expires: `get()` no longer finds it and `remove_expired()` (the runner's
sweeper) deletes it — unless a batch that has not finished reads it.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, AsyncIterator, Iterable

from ..errors import ModelyardError, invalid, not_found, too_long
from ..store.batches import ID_WIDTH, WIDTHS, BatchStore, FileRecord, storable
from ..store.models import utcnow

log = logging.getLogger(__name__)

#: purposes a client may upload with (OpenAI's values this gateway has a use for): batch inputs, fine-tuning data
UPLOAD_PURPOSES = ("batch", "fine-tune")
#: the purpose of files a job writes
OUTPUT_PURPOSE = "batch_output"
#: form fields other than ``file`` are small; more than this is not a form this API takes
MAX_FIELD_BYTES = 4096
#: the longest name of a form field (the API's are ``file``, ``purpose`` and ``expires_after[seconds]``)
MAX_FIELD_NAME = 128
#: the headers of one part, all together (a client sends a Content-Disposition and a Content-Type: ~200 bytes)
MAX_PART_HEADER_BYTES = 16 * 1024
#: parts in one upload: the file, ``purpose``, ``expires_after[anchor]``, ``expires_after[seconds]`` and room
MAX_PARTS = 16
#: the multipart framing and form fields around an uploaded file: a body may be this much larger than the file
UPLOAD_OVERHEAD_BYTES = 64 * 1024
#: the longest filename a file row holds
MAX_FILENAME = WIDTHS["batch_files.filename"]


def file_id() -> str:
    return "file-" + os.urandom(12).hex()


@dataclass
class Upload:
    """A received multipart upload: where its file part was written, and the other fields."""

    path: Path | None
    filename: str | None
    size: int
    fields: dict[str, str]


@dataclass(frozen=True)
class KeyQuota:
    """What one endpoint key may keep stored, its inputs and its jobs' outputs together
    (MODELYARD_BATCH_KEY_QUOTA_BYTES, MODELYARD_BATCH_KEY_QUOTA_FILES)."""

    bytes: int
    files: int


@dataclass(frozen=True)
class Holding:
    """What a key keeps stored now, against its quota."""

    files: int
    bytes: int
    quota: KeyQuota

    @property
    def room(self) -> int:
        """Bytes the key may still upload."""
        return max(self.quota.bytes - self.bytes, 0)

    def refusal(self, *, adding: bool = False) -> ModelyardError:
        """The 413 of an upload past the quota.

        OpenAI answers a full file storage 400 with no code; this is 413 ``storage_quota_exceeded``: waiting does
        not help (a 429 would be retried by the ``openai`` client, and would read as a rate limit), deleting files
        does, and it is the size of what the key stores that is too large.
        """
        fits = "; this file does not fit" if adding else ""
        return ModelyardError(
            f"You have exceeded this key's file storage quota: it keeps {self.files} files of {self.bytes} bytes, and "
            f"a key may keep at most {self.quota.files} files (MODELYARD_BATCH_KEY_QUOTA_FILES) and "
            f"{self.quota.bytes} bytes (MODELYARD_BATCH_KEY_QUOTA_BYTES){fits}. Delete files it no longer needs "
            "(DELETE /v1/files/{file_id}; the output files of its batches count too), or ask the gateway's admin "
            "for a larger quota.", status=413, param="file", code="storage_quota_exceeded")


class FileStore:
    """Files on disk, rows in the database; ``max_bytes`` bounds uploads, ``quota`` what an endpoint key keeps."""

    def __init__(self, store: BatchStore, root: Path, *, max_bytes: int, quota: KeyQuota | None = None) -> None:
        self.store = store
        self.root = root
        self.max_bytes = max_bytes
        self.quota = quota
        #: held while a quota is checked and the file's row added, so that two uploads cannot both take the room
        self._quota_lock = threading.Lock()
        root.mkdir(parents=True, exist_ok=True)

    def path(self, fid: str) -> Path:
        if not storable(fid, ID_WIDTH) or "/" in fid or fid.startswith("."):
            raise not_found(f"No such File object: {fid[:ID_WIDTH]}", param="file_id", code="file_not_found")
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
              owner_key_id: int | None = None, expires_after_s: int | None = None) -> FileRecord:
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
            return self._place(temp, filename=filename, purpose=purpose, size=size, owner_key_id=owner_key_id,
                               expires_after_s=expires_after_s)
        finally:
            temp.unlink(missing_ok=True)

    def holding(self, owner_key_id: int) -> Holding:
        """What key ``owner_key_id`` keeps; the 413 when it has no room for another file (blocking)."""
        assert self.quota is not None
        files, size = self.store.stored_by(owner_key_id)
        held = Holding(files, size, self.quota)
        if files >= self.quota.files or size >= self.quota.bytes:
            raise held.refusal()
        return held

    async def receive(self, content_type: str, body: AsyncIterator[bytes], *, declared_length: str | None = None,
                      holding: Holding | None = None) -> Upload:
        """Parse a multipart upload as it arrives; the ``file`` part goes to a temporary file.

        ``declared_length`` is the request's Content-Length, if it has one; with ``holding`` (an endpoint key's),
        the file may not pass the key's room either. The caller owns ``Upload.path`` and must `accept()` or
        delete it.
        """
        from python_multipart.multipart import MultipartParser, parse_options_header

        mime, options = parse_options_header(content_type or "")
        boundary = options.get(b"boundary")
        if mime != b"multipart/form-data" or not boundary:
            raise invalid("Upload the file as multipart/form-data with the fields 'file' and 'purpose'.",
                          param="file", code="invalid_content_type")
        body_limit = self.max_bytes + UPLOAD_OVERHEAD_BYTES
        if declared_length and declared_length.isdigit() and int(declared_length) > body_limit:
            raise self._body_too_large()
        if holding is not None and holding.room < self.max_bytes:
            file_limit, over_limit = holding.room, holding.refusal(adding=True)
        else:
            file_limit, over_limit = self.max_bytes, _too_large(self.max_bytes)
        state: dict[str, Any] = {"headers": {}, "field": b"", "value": b"", "part": None, "header_bytes": 0,
                                 "parts": 0, "ended": False}
        fields: dict[str, str] = {}
        upload = Upload(path=None, filename=None, size=0, fields=fields)
        out: list[Any] = []  # the open temporary file, while the file part streams in

        def count_header_bytes(n: int) -> None:
            state["header_bytes"] += n
            if state["header_bytes"] > MAX_PART_HEADER_BYTES:
                raise ModelyardError(f"The headers of a part of the upload are larger than {MAX_PART_HEADER_BYTES} "
                                     "bytes; a part needs a Content-Disposition and perhaps a Content-Type.",
                                     status=413, param="file", code="part_headers_too_large")

        def on_part_begin() -> None:
            state["parts"] += 1
            if state["parts"] > MAX_PARTS:
                raise invalid(f"The upload has more than {MAX_PARTS} parts; it takes 'file', 'purpose' and "
                              "'expires_after'.", param="file", code="too_many_parts")
            state["header_bytes"] = 0

        def on_header_field(data: bytes, start: int, end: int) -> None:
            count_header_bytes(end - start)
            state["field"] += data[start:end]

        def on_header_value(data: bytes, start: int, end: int) -> None:
            count_header_bytes(end - start)
            state["value"] += data[start:end]

        def on_header_end() -> None:
            state["headers"][state["field"].lower()] = state["value"]
            state["field"], state["value"] = b"", b""

        def on_headers_finished() -> None:
            _, disposition = parse_options_header(state["headers"].get(b"content-disposition", b""))
            name = disposition.get(b"name", b"").decode("utf-8", "replace")
            if len(name) > MAX_FIELD_NAME:
                raise too_long("file", MAX_FIELD_NAME, len(name), what="form field name")
            if name == "file" and b"filename" in disposition:
                if upload.path is not None:
                    raise invalid("Send one file per upload.", param="file", code="invalid_file")
                upload.filename = _filename(disposition[b"filename"])
                upload.path = self._temp()
                out.append(open(upload.path, "wb"))
                state["part"] = "file"
            else:
                state["part"] = name
                state["data"] = b""

        def on_part_data(data: bytes, start: int, end: int) -> None:
            if state["part"] == "file":
                upload.size += end - start
                if upload.size > file_limit:
                    raise over_limit
                out[0].write(data[start:end])
            else:
                state["data"] += data[start:end]
                if len(state["data"]) > MAX_FIELD_BYTES:
                    raise too_long(state["part"] or None, MAX_FIELD_BYTES,
                                   what=None if state["part"] else "form field without a name")

        def on_part_end() -> None:
            if state["part"] == "file":
                out[0].close()
            elif state["part"]:
                fields[state["part"]] = state["data"].decode("utf-8", "replace")
            state["headers"], state["part"] = {}, None

        def on_end() -> None:
            state["ended"] = True

        callbacks = {"on_part_begin": on_part_begin, "on_header_field": on_header_field,
                     "on_header_value": on_header_value, "on_header_end": on_header_end,
                     "on_headers_finished": on_headers_finished, "on_part_data": on_part_data,
                     "on_part_end": on_part_end, "on_end": on_end}
        try:
            # A part's headers are bounded above, all together, as they stream in. Recent python-multipart
            # versions also bound each header line (4 KiB) and their number (8) themselves, with a vaguer error:
            # leave the bytes to the check above.
            parser = MultipartParser(boundary, callbacks, max_header_size=sys.maxsize, max_header_count=64)
        except TypeError:  # an older python-multipart: no bounds of its own
            parser = MultipartParser(boundary, callbacks)
        received = 0
        try:
            async for chunk in body:
                received += len(chunk)
                if received > body_limit:  # a chunked body has no Content-Length to refuse up front
                    raise self._body_too_large()
                parser.write(chunk)
            parser.finalize()
            if not state["ended"]:
                raise invalid(f"The upload ended before its closing boundary ('--{boundary.decode('latin-1')}--'); "
                              "send the whole multipart/form-data body.", param="file", code="invalid_multipart")
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

    def _body_too_large(self) -> ModelyardError:
        return ModelyardError(f"The upload is larger than the file's limit of {self.max_bytes} bytes "
                              f"(MODELYARD_BATCH_MAX_FILE_BYTES) plus {UPLOAD_OVERHEAD_BYTES} bytes of form fields.",
                              status=413, param="file", code="file_too_large")

    @staticmethod
    def _discard(upload: Upload, out: list[Any]) -> None:
        for f in out:
            f.close()
        if upload.path is not None:
            upload.path.unlink(missing_ok=True)

    def accept(self, upload: Upload, *, purpose: str, owner_key_id: int | None,
               expires_after_s: int | None = None, quota: bool = False) -> FileRecord:
        """Keep a received upload as a file (its checks done by the caller); with ``quota``, only if the key
        ``owner_key_id`` still has room for it (the 413 otherwise). Blocking."""
        assert upload.path is not None
        with open(upload.path, "rb+") as f:
            os.fsync(f.fileno())
        with self._quota_lock if quota else nullcontext():
            if quota:
                assert self.quota is not None and owner_key_id is not None
                held = Holding(*self.store.stored_by(owner_key_id), self.quota)
                if held.files + 1 > self.quota.files or held.bytes + upload.size > self.quota.bytes:
                    raise held.refusal(adding=True)
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
        self.path(fid)  # an id no row can have is not looked up
        record = self.store.get_file(fid)
        now = utcnow()
        if record is not None and record.expires_at is not None and record.expires_at <= now:
            self._remove_expired(fid, now)  # expired (``expires_after`` at upload): gone for the client
            record = None
        if record is None:
            raise not_found(f"No such File object: {fid}", param="file_id", code="file_not_found")
        return record

    def delete(self, fid: str) -> None:
        self.store.delete_file(fid)
        self.path(fid).unlink(missing_ok=True)

    def _remove_expired(self, fid: str, now: datetime) -> bool:
        """Delete an expired file, unless a batch that has not finished reads it (then it stays until the batch
        has, and a later sweep takes it)."""
        if not self.store.delete_file(fid, expired_by=now):
            return False
        self.path(fid).unlink(missing_ok=True)
        return True

    def remove_expired(self) -> int:
        """Delete every file past its ``expires_at`` that no unfinished batch reads; returns how many (blocking)."""
        now = utcnow()
        removed = 0
        while done := sum(self._remove_expired(fid, now) for fid in self.store.expired_files(now)):
            removed += done
        if removed:
            log.info("removed %d expired files from %s", removed, self.root)
        return removed

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


def _filename(raw: bytes) -> str:
    """The file part's filename, if its row can hold it (the 400 naming ``file`` otherwise)."""
    name = raw.decode("utf-8", "replace")
    if len(name) > MAX_FILENAME:
        raise too_long("file", MAX_FILENAME, len(name), what="filename of 'file'")
    if "\x00" in name:
        raise invalid("Invalid filename of 'file': it contains a NUL character (\\u0000).", param="file")
    return name


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
