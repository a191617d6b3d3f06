"""Messages between fh_utils' own processes: length-prefixed pickles over Unix sockets.

Only processes of one session talk over these sockets (socket pairs, never a path others can
reach), so pickle is safe here. File descriptors travel with `send_fds` (the zygote hands the
listening socket and channels to the workers it forks).
"""

from __future__ import annotations

import asyncio
import pickle
import socket
import struct
from typing import Any

__all__ = ["Channel", "recv", "send"]

_HEADER = struct.Struct("!I")
_MAX_FDS = 4


def send(sock: socket.socket, message: Any, fds: list[int] | None = None) -> None:
    """Send one message (blocking), with file descriptors if given."""
    data = pickle.dumps(message)
    frame = _HEADER.pack(len(data)) + data
    if fds:
        socket.send_fds(sock, [frame[:1]], fds)
        frame = frame[1:]
    sock.sendall(frame)


def recv(sock: socket.socket) -> tuple[Any, list[int]] | None:
    """Receive one message (blocking) and the descriptors sent with it; None at end of file."""
    first, fds, _flags, _addr = socket.recv_fds(sock, 1, _MAX_FDS)
    if not first:
        return None
    header = first + _exactly(sock, _HEADER.size - 1)
    (size,) = _HEADER.unpack(header)
    return pickle.loads(_exactly(sock, size)), list(fds)


def _exactly(sock: socket.socket, size: int) -> bytes:
    chunks = []
    while size:
        chunk = sock.recv(size)
        if not chunk:
            raise EOFError("the channel closed in the middle of a message")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


class Channel:
    """The asyncio side of a socket: `send` and `recv` whole messages (no descriptors)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._reader is None or self._writer is None:
            self.sock.setblocking(False)
            self._reader, self._writer = await asyncio.open_unix_connection(sock=self.sock)
        return self._reader, self._writer

    async def send(self, message: Any) -> None:
        _, writer = await self._open()
        data = pickle.dumps(message)
        writer.write(_HEADER.pack(len(data)) + data)
        await writer.drain()

    async def recv(self) -> Any:
        """The next message; None once the other side has gone."""
        reader, _ = await self._open()
        try:
            (size,) = _HEADER.unpack(await reader.readexactly(_HEADER.size))
            return pickle.loads(await reader.readexactly(size))
        except (asyncio.IncompleteReadError, ConnectionError):
            return None

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        else:
            self.sock.close()
