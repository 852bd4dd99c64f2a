"""A minimal HTTP/1.1 keep-alive client on raw asyncio streams, for load generation.

The benchmark needs a client whose own cost is small and the same for every
target, so this one does the least a correct client can: the request is
prebuilt bytes, the response head is split once, the body is read by
``Content-Length`` or by chunked framing, and nothing is decoded beyond what
the checks need. It is *not* a general HTTP client (no redirects, no
compression, no pipelining); it speaks to uvicorn, which is all it must do.

Timing is taken around the socket: ``t0`` just before the request is
written, ``first`` when the first body chunk carrying generated text has
been read, ``end`` when the last byte of the response has been read.
"""

from __future__ import annotations

import asyncio
import socket
import time
from dataclasses import dataclass

_CRLF = b"\r\n"
_HEAD_END = b"\r\n\r\n"
#: How a chunk of generated text starts in the stub's (and the gateway's) orjson SSE events.
CONTENT_MARK = b'"content":"'


class ConnectionLost(Exception):
    """The server closed the connection before a response started (e.g. keep-alive expired)."""


@dataclass(slots=True)
class Response:
    status: int
    headers: dict[bytes, bytes]
    body: bytes
    t0: float
    first: float | None  # first body chunk with generated text (streams only)
    end: float


def build_request(host: str, port: int, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class Connection:
    """One keep-alive connection; one request at a time."""

    __slots__ = ("host", "port", "reader", "writer", "opened")

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.opened = 0

    async def open(self) -> None:
        self.close()
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port, limit=1 << 20)
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.opened += 1

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def request(self, raw: bytes, *, streaming: bool) -> Response:
        """Send one prebuilt request and read the whole response."""
        if self.writer is None:
            await self.open()
        reader, writer = self.reader, self.writer
        assert reader is not None and writer is not None
        t0 = time.perf_counter()
        writer.write(raw)
        try:
            head = await reader.readuntil(_HEAD_END)
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            self.close()
            raise ConnectionLost(str(exc)) from None
        status_line, _, rest = head[:-4].partition(_CRLF)
        status = int(status_line.split(b" ", 2)[1])
        headers: dict[bytes, bytes] = {}
        for line in rest.split(_CRLF):
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        first = None
        if headers.get(b"transfer-encoding") == b"chunked":
            parts = []
            while True:
                size_line = await reader.readuntil(_CRLF)
                size = int(size_line.split(b";", 1)[0], 16)
                if size == 0:
                    await reader.readuntil(_CRLF)  # the (empty) trailer
                    break
                data = (await reader.readexactly(size + 2))[:-2]
                if first is None and streaming and CONTENT_MARK in data:
                    first = time.perf_counter()
                parts.append(data)
            body = b"".join(parts)
        else:
            length = int(headers.get(b"content-length", b"0"))
            body = await reader.readexactly(length) if length else b""
            if first is None and streaming and CONTENT_MARK in body:
                first = time.perf_counter()
        end = time.perf_counter()
        if headers.get(b"connection") == b"close":
            self.close()
        return Response(status, headers, body, t0, first, end)
