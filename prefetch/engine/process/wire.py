"""Framed messages over a Unix stream socket, with file descriptors riding along.

A frame is a 10-byte header — payload length (8 bytes) and how many fds belong to it
(2 bytes), little-endian — then the payload. A frame's fds are sent as SCM_RIGHTS ancillary
data with its first bytes, so they have arrived by the time the frame is complete; the
reader queues every fd it receives and hands each frame the ones it claims, in order.

Two ends share the parser (`FrameReader`):

- `LoopEnd`, in the main process: never blocks. Sends are queued and written as far as the
  socket takes them; the rest waits for the event loop's writer callback. Reads happen on the
  reader callback and parse whatever has arrived. So the loop can never deadlock against a
  worker that is itself blocked sending a large result on the same socket.
- `BlockingEnd`, in a worker: plain blocking I/O (a worker does one thing at a time).
"""

from __future__ import annotations

import array
import os
import socket
import struct
from collections import deque
from collections.abc import Callable
from typing import Any

HEADER = struct.Struct("<QH")
MAX_FDS_PER_FRAME = 32
_CHUNK_BYTES = 256 * 1024  # one read's buffer; a larger frame is received straight into its own
_ANC_BYTES = socket.CMSG_SPACE(MAX_FDS_PER_FRAME * array.array("i").itemsize)
_MSG_CTRUNC = int(getattr(socket, "MSG_CTRUNC", 0))  # a plain int: `&` on the enum costs a Python call per read


class ProtocolError(RuntimeError):
    """The byte stream from the other end is not a sequence of frames (it is corrupt or cut)."""


class FrameReader:
    """Turns bytes received into whole frames: (payload, fds)."""

    def __init__(self) -> None:
        self.frames: deque[tuple[bytes | bytearray, list[int]]] = deque()
        self._buf = bytearray()
        self._scratch = memoryview(bytearray(_CHUNK_BYTES))
        self._fds: deque[int] = deque()
        self._body: bytearray | None = None  # a large frame's payload, filled in place
        self._filled = 0
        self._body_fds = 0
        self.drained = False  # the last read took less than it asked for: the socket had no more

    def receive(self, sock: socket.socket) -> int:
        """One read (may raise BlockingIOError); returns bytes read, 0 at end of stream."""
        if self._body is not None:
            target = memoryview(self._body)[self._filled:]
        else:
            target = self._scratch
        n, ancdata, flags, _ = sock.recvmsg_into([target], _ANC_BYTES)
        self.drained = n < len(target)
        for level, kind, data in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds = array.array("i")
                fds.frombytes(data[: len(data) - (len(data) % fds.itemsize)])
                self._fds.extend(fds)
        if flags & _MSG_CTRUNC:
            raise ProtocolError("file descriptors were cut off in transit")
        if n == 0:
            return 0
        if self._body is not None:
            self._filled += n
            if self._filled == len(self._body):
                body, self._body = self._body, None
                self._complete(body, self._body_fds)
            return n
        self._buf += target[:n]
        self._parse()
        return n

    def _parse(self) -> None:
        buf = self._buf
        pos, end = 0, len(buf)
        while end - pos >= HEADER.size:
            length, nfds = HEADER.unpack_from(buf, pos)
            start = pos + HEADER.size
            if end - start >= length:
                self._complete(bytes(buf[start:start + length]), nfds)
                pos = start + length
                continue
            if length > _CHUNK_BYTES:  # large: the rest goes straight into its own buffer
                body = bytearray(length)
                got = end - start
                body[:got] = buf[start:end]
                self._body, self._filled, self._body_fds = body, got, nfds
                pos = end
            break
        del buf[:pos]

    def _complete(self, payload: bytes | bytearray, nfds: int) -> None:
        if nfds > len(self._fds):
            raise ProtocolError(f"a frame claims {nfds} file descriptors, {len(self._fds)} arrived")
        self.frames.append((payload, [self._fds.popleft() for _ in range(nfds)]))

    def close(self) -> None:
        """Close fds received but never claimed: of frames not taken, and not yet framed."""
        while self.frames:
            for fd in self.frames.popleft()[1]:
                _close(fd)
        while self._fds:
            _close(self._fds.popleft())


def _close(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def _header(payload: bytes, fds: list[int]) -> bytes:
    if len(fds) > MAX_FDS_PER_FRAME:
        raise ValueError(f"at most {MAX_FDS_PER_FRAME} fds per frame, got {len(fds)}")
    return HEADER.pack(len(payload), len(fds))


def _ancillary(fds: list[int]) -> list:
    return [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []


class LoopEnd:
    """The main process's end of one worker's socket; see the module docstring.

    `on_frame(payload, fds)` runs on the loop for each frame; `on_closed()` once, when the
    stream ends or breaks (the worker is gone: its process sentinel tells how).
    """

    def __init__(self, sock: socket.socket, on_frame: Callable[[Any, list[int]], None],
                 on_closed: Callable[[], None]):
        sock.setblocking(False)
        self.sock = sock
        self.fd = sock.fileno()
        self._on_frame = on_frame
        self._on_closed = on_closed
        self._reader = FrameReader()
        # Queued output: [memoryview still to send, fds to send with its first byte (owned)].
        self._out: deque[list] = deque()
        self._loop: Any = None
        self._writing = False
        self._flush_soon = False
        self.closed = False

    def attach(self, loop: Any) -> None:
        """Watch the socket on `loop` (the engine loop's thread)."""
        self.detach()
        if self.closed:
            return
        self._loop = loop
        loop.add_reader(self.fd, self._on_readable)
        if self._out:
            self._want_write()

    def detach(self) -> None:
        loop, self._loop = self._loop, None
        self._writing = False
        self._flush_soon = False  # a flush scheduled there no longer runs (see _flush_on)
        if loop is None or loop.is_closed():
            return
        for remove in (loop.remove_reader, loop.remove_writer):
            try:
                remove(self.fd)
            except (ValueError, OSError, RuntimeError):
                pass

    def send(self, payload: bytes, fds: list[int] | tuple = ()) -> None:
        """Queue one frame; never blocks. `fds` are duplicated: the caller keeps its own."""
        if self.closed:
            return
        fds = list(fds)
        owned = [os.dup(fd) for fd in fds]
        head = _header(payload, fds)
        if len(payload) <= _CHUNK_BYTES:
            self._out.append([memoryview(head + payload), owned])
        else:  # no copy of a large payload: its header goes first, on its own
            self._out.append([memoryview(head), owned])
            self._out.append([memoryview(payload), []])
        if not self._writing and not self._flush_soon:
            if self._loop is None:
                self._flush()
            else:
                # Written at the end of this loop iteration: several frames queued meanwhile
                # (a burst of jobs) cost one system call and one wake-up of the worker.
                self._flush_soon = True
                self._loop.call_soon(self._flush_on, self._loop)

    def _want_write(self) -> None:
        if self._loop is not None and not self._writing:
            self._writing = True
            self._loop.add_writer(self.fd, self._flush)

    def _flush_on(self, loop: Any) -> None:
        """The flush `send` scheduled: nothing if this end left that loop since (its output
        waits for the next attach, and `close` may be emptying it from another thread)."""
        if loop is self._loop:
            self._flush()

    def _flush(self) -> None:
        self._flush_soon = False
        if self.closed:
            return
        out = self._out
        if len(out) > 1 and not out[0][1] and not out[1][1]:
            self._coalesce()
        try:
            while out:
                entry = out[0]
                view, fds = entry
                n = self.sock.sendmsg([view], _ancillary(fds))
                if fds:
                    for fd in fds:
                        _close(fd)
                    entry[1] = []
                if n < len(view):
                    entry[0] = view[n:]
                    self._want_write()
                    return
                out.popleft()
        except (BlockingIOError, InterruptedError):
            self._want_write()
            return
        except OSError:
            # The worker is gone (EPIPE, ECONNRESET): what it owed is reported from its
            # process's exit; nothing more can be sent to it.
            self._drop_output()
            self._shut()
            return
        if self._writing and self._loop is not None:
            self._writing = False
            try:
                self._loop.remove_writer(self.fd)
            except (ValueError, OSError, RuntimeError):
                pass

    def _coalesce(self) -> None:
        """Join queued frames without fds into one buffer (up to the first with fds)."""
        out = self._out
        parts: list[memoryview] = []
        while out and not out[0][1] and len(parts) < 256:
            parts.append(out.popleft()[0])
        out.appendleft([memoryview(b"".join(parts)), []])

    def _drop_output(self) -> None:
        while self._out:
            for fd in self._out.popleft()[1]:
                _close(fd)

    def drain(self) -> None:
        """Take every frame already in the socket (on the loop's thread)."""
        self._on_readable()

    def _on_readable(self) -> None:
        reader = self._reader
        try:
            for _ in range(64):  # bounded: other workers' sockets get their turn
                if not reader.receive(self.sock):
                    self._shut()
                    break
                while reader.frames and not self.closed:
                    payload, fds = reader.frames.popleft()
                    self._on_frame(payload, fds)
                if reader.drained:
                    # A read that got less than it asked for emptied the socket: another
                    # would only fail (a system call and an exception per wake-up); the
                    # loop calls again when more arrives.
                    break
        except (BlockingIOError, InterruptedError):
            pass
        except (OSError, ProtocolError):
            self._shut()
        while reader.frames and not self.closed:
            payload, fds = reader.frames.popleft()
            self._on_frame(payload, fds)

    def _shut(self) -> None:
        if self.closed:
            return
        self.detach()
        self.closed = True
        self._on_closed()

    def close(self) -> None:
        """Stop using the socket (any thread, after detach on the loop's thread)."""
        self.closed = True
        self._drop_output()
        self._reader.close()
        try:
            self.sock.close()
        except OSError:
            pass


class BlockingEnd:
    """A worker's end of its socket: blocking sends and receives of whole frames."""

    def __init__(self, sock: socket.socket):
        sock.setblocking(True)
        self.sock = sock
        self._reader = FrameReader()

    def send(self, payload: bytes, fds: list[int] | tuple = ()) -> None:
        fds = list(fds)
        parts = [memoryview(_header(payload, fds)), memoryview(payload)]
        anc = _ancillary(fds)
        while parts:
            n = self.sock.sendmsg(parts, anc)
            anc = []
            while parts and n >= len(parts[0]):
                n -= len(parts[0])
                parts.pop(0)
            if parts and n:
                parts[0] = parts[0][n:]

    def recv(self) -> tuple[bytes | bytearray, list[int]]:
        """The next frame; EOFError when the other end is gone."""
        reader = self._reader
        while not reader.frames:
            if not reader.receive(self.sock):
                raise EOFError("the main process closed the connection")
        return reader.frames.popleft()
