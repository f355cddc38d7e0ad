"""Write one remote file fast, or read one back: SFTP v3 spoken directly on a channel of its own, many requests in flight.

Why not ``SFTPClient.put``: it sends 32 KiB requests and does per-request
bookkeeping in Python that costs more than the crypto, so it falls far
behind OpenSSH's ``sftp`` (bench/README.md has the figures). Here each write request is as large as the
server accepts (``limits@openssh.com``; 255 KiB on OpenSSH), up to
``requests_in_flight`` of them are outstanding, and replies are parsed in
bulk. The channel speaks only the few messages an upload needs (open, write,
close, the statvfs extension to explain a full disk, and reads, pipelined
the same way, to check what is already on the server); everything else goes
through paramiko's ``SFTPClient`` on another channel.

Large files are written over several such channels at once
(``sftp_ranges``): each takes the next ``Block`` (one write request's bytes,
read with room before them for the request's header, so a request goes out
without copying its data) and writes it at its offset. After an
interruption the remote file may therefore have holes anywhere; nothing
on the server from before is trusted: it is read back (``read_file``) and
compared before an upload continues.
"""

from __future__ import annotations

import struct
from typing import Any, BinaryIO, Callable, Protocol

import paramiko

# Message types and flags of draft-ietf-secsh-filexfer-02 (SFTP v3).
FXP_INIT, FXP_VERSION, FXP_OPEN, FXP_CLOSE, FXP_READ, FXP_WRITE = 1, 2, 3, 4, 5, 6
FXP_STATUS, FXP_HANDLE, FXP_DATA, FXP_EXTENDED, FXP_EXTENDED_REPLY = 101, 102, 103, 200, 201
FXF_READ, FXF_WRITE, FXF_CREAT, FXF_TRUNC = 0x01, 0x02, 0x08, 0x10
FX_OK, FX_EOF, FX_PERMISSION_DENIED, FX_FAILURE = 0, 1, 3, 4
STATUS_NAMES = {
    1: "end of file",
    2: "no such file",
    3: "permission denied",
    4: "failure",
    5: "bad message",
    6: "no connection",
    7: "connection lost",
    8: "operation unsupported",
}
#: What every SFTP server must accept (for writes) and answer in full (for reads); used when the server states no limit.
SAFE_WRITE = 32768
SAFE_READ = 32768


class Hasher(Protocol):
    def update(self, data: bytes | memoryview, /) -> None: ...


def _read_into(src: BinaryIO, view: memoryview) -> int:
    """Fill ``view`` from ``src`` as far as the file goes; the number of bytes read."""
    got = 0
    while got < len(view):
        n = src.readinto(view[got:])  # type: ignore[attr-defined]
        if not n:
            break
        got += n
    return got


#: Bytes kept free before a block's data for the write request's header: the
#: longest handle SFTP allows (256) plus the fixed fields.
HEADROOM = 4 + 1 + 4 + 4 + 256 + 8 + 4


class Block:
    """One write request's worth of a file: ``size`` bytes at ``offset``, stored after ``HEADROOM`` spare bytes."""

    __slots__ = ("offset", "size", "buffer")

    def __init__(self, offset: int, size: int) -> None:
        self.offset, self.size = offset, size
        self.buffer = bytearray(HEADROOM + size)

    @property
    def data(self) -> memoryview:
        """The file's bytes; never changed once read (the hash may still hold a view of them)."""
        return memoryview(self.buffer)[HEADROOM:]

    @classmethod
    def read(cls, src: BinaryIO, offset: int, size: int) -> "Block":
        """The next ``size`` bytes of ``src`` (from its current position, which is ``offset``); short only at its end."""
        block = cls(offset, size)
        with block.data as view:
            got = _read_into(src, view)
        if got < size:
            del block.buffer[HEADROOM + got :]
            block.size = got
        return block


#: What ``write_blocks``'s ``take`` returns when no block will come any more.
END = None
#: What ``take`` returns, when not asked to wait, while no block is ready yet.
NOT_YET: "Block | None | object" = object()


class SourceChanged(Exception):
    """The local file ended before the length we were told to send: it changed under us."""


class StatusError(Exception):
    """The server answered a request with an error status."""

    def __init__(self, op: str, code: int, text: str) -> None:
        self.op, self.code, self.text = op, code, text
        super().__init__(f"{op}: {text or STATUS_NAMES.get(code, f'status {code}')}")


def _string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


class SftpStream:
    """One SFTP session on its own channel, used to write whole files with pipelined requests."""

    def __init__(self, transport: paramiko.Transport, *, timeout: float, request_size: int, in_flight: int) -> None:
        self.channel = transport.open_session(timeout=timeout)
        self.channel.settimeout(timeout)
        self.channel.invoke_subsystem("sftp")
        self._buf = bytearray()
        self._next_id = 1
        self.channel.sendall(struct.pack(">IBI", 5, FXP_INIT, 3))
        kind, body = self._read()
        if kind != FXP_VERSION:
            raise paramiko.SSHException(f"the server's SFTP subsystem did not answer with its version (message {kind})")
        self.extensions = self._parse_extensions(body[4:])
        self.in_flight = max(1, in_flight)
        max_read, max_write = self._server_limits()
        self.request_size = max(1, min(request_size, max_write))
        self.read_size = max(1, min(request_size, max_read))

    # -- framing -------------------------------------------------------------------------
    def _read(self) -> tuple[int, bytes]:
        """The next SFTP message: its type and body."""
        while True:
            if len(self._buf) >= 4:
                (length,) = struct.unpack_from(">I", self._buf)
                if len(self._buf) >= 4 + length:
                    message = bytes(self._buf[4 : 4 + length])
                    del self._buf[: 4 + length]
                    return message[0], message[1:]
            data = self.channel.recv(1 << 16)
            if not data:
                raise EOFError("the SFTP channel was closed by the server")
            self._buf += data

    def _open(self, path: str, flags: int) -> bytes:
        """The handle of remote ``path`` opened with ``flags``; ``StatusError`` when the server refuses."""
        self._send(FXP_OPEN, _string(path.encode()) + struct.pack(">II", flags, 0))
        kind, body = self._read()
        if kind != FXP_HANDLE:
            self._raise_for_status(f"open {path}", kind, body)
        (n,) = struct.unpack_from(">I", body, 4)
        return _string(body[8 : 8 + n])

    def _on_handle(self, path: str, flags: int, work: Callable[[bytes], tuple[Any, "StatusError | None"]]) -> Any:
        """Open ``path``, run ``work`` on its handle, close it; the first refusal (``work``'s, then close's) is raised.

        ``work`` returns its value and the first status the server refused, if any, once every reply in
        flight is drained; if it raises, replies may still be in flight, so the session is closed: it can
        no longer be trusted to pair them up.
        """
        handle = self._open(path, flags)
        try:
            value, failure = work(handle)
        except BaseException:
            self.close()
            raise
        self._send(FXP_CLOSE, handle)
        close_kind, close_body = self._read()
        if failure is not None:
            raise failure
        self._raise_for_status(f"close {path}", close_kind, close_body)
        return value

    def _send(self, kind: int, payload: bytes) -> int:
        rid = self._next_id
        self._next_id = (rid + 1) & 0xFFFFFFFF
        self.channel.sendall(struct.pack(">IBI", len(payload) + 5, kind, rid) + payload)
        return rid

    @staticmethod
    def _raise_for_status(op: str, kind: int, body: bytes) -> None:
        if kind != FXP_STATUS:
            raise StatusError(op, FX_FAILURE, f"unexpected reply (message {kind})")
        (code,) = struct.unpack_from(">I", body, 4)
        if code != FX_OK:
            text = ""
            if len(body) >= 12:
                (n,) = struct.unpack_from(">I", body, 8)
                text = body[12 : 12 + n].decode("utf-8", "replace")
            raise StatusError(op, code, text)

    @staticmethod
    def _parse_extensions(data: bytes) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        pos = 0
        while pos + 4 <= len(data):
            (n,) = struct.unpack_from(">I", data, pos)
            name = data[pos + 4 : pos + 4 + n].decode("ascii", "replace")
            pos += 4 + n
            (m,) = struct.unpack_from(">I", data, pos)
            out[name] = data[pos + 4 : pos + 4 + m]
            pos += 4 + m
        return out

    def _extended(self, name: str, payload: bytes = b"") -> bytes | None:
        """Body of an extension's reply, or None when the server does not offer it."""
        if name not in self.extensions:
            return None
        self._send(FXP_EXTENDED, _string(name.encode()) + payload)
        kind, body = self._read()
        if kind != FXP_EXTENDED_REPLY:
            self._raise_for_status(name, kind, body)
            return None
        return body[4:]

    def _server_limits(self) -> tuple[int, int]:
        """The largest read and write the server accepts (``limits@openssh.com``), or the safe sizes."""
        reply = self._extended("limits@openssh.com")
        if reply is None or len(reply) < 24:
            return SAFE_READ, SAFE_WRITE
        _max_packet, max_read, max_write = struct.unpack_from(">3Q", reply)
        return int(max_read) or SAFE_READ, int(max_write) or SAFE_WRITE

    # -- operations ----------------------------------------------------------------------
    def free_bytes(self, path: str) -> int | None:
        """Bytes available to us on the filesystem holding ``path`` (statvfs@openssh.com), or None if unknown."""
        try:
            reply = self._extended("statvfs@openssh.com", _string(path.encode()))
        except StatusError:
            return None
        if reply is None or len(reply) < 88:
            return None
        _bsize, frsize, _blocks, _bfree, bavail = struct.unpack_from(">5Q", reply)
        return int(frsize * bavail)

    def write_file(
        self,
        path: str,
        src: BinaryIO,
        offset: int,
        length: int,
        hasher: Hasher,
        *,
        truncate: bool = False,
        on_acked: Callable[[int], None] = lambda n: None,
    ) -> None:
        """Write ``length`` bytes of ``src`` (read from its current position) at ``offset`` of remote ``path``.

        Every byte read is fed to ``hasher`` in order. ``on_acked`` hears of
        each write the server confirmed. Raises ``StatusError`` for the first
        write the server refused, after the replies in flight are drained.
        """
        flags = FXF_WRITE | FXF_CREAT | (FXF_TRUNC if truncate else 0)
        self._on_handle(path, flags, lambda handle: (None, self._pipeline(handle, src, offset, length, hasher, on_acked)))

    def _pipeline(self, handle: bytes, src: BinaryIO, offset: int, length: int, hasher: Hasher, on_acked: Callable[[int], None]) -> StatusError | None:
        sizes: dict[int, int] = {}
        end = offset + length
        pos = offset
        failure: StatusError | None = None
        fixed = 1 + 4 + len(handle) + 8 + 4  # after the length word: type, id, handle (with its length), offset, data length
        header_size = 4 + fixed
        while (pos < end and failure is None) or sizes:
            while pos < end and failure is None and len(sizes) < self.in_flight:
                # The request is built in one buffer the file is read straight into: no copy of the data.
                want = min(self.request_size, end - pos)
                packet = bytearray(header_size + want)
                view = memoryview(packet)
                got = _read_into(src, view[header_size:])
                if got == 0:
                    raise SourceChanged(f"the local file ended at byte {pos} of {end}: it changed while being uploaded")
                data = view[header_size : header_size + got]
                hasher.update(data)
                rid = self._next_id
                self._next_id = (rid + 1) & 0xFFFFFFFF
                struct.pack_into(">IBI", packet, 0, fixed + got, FXP_WRITE, rid)
                packet[9 : 9 + len(handle)] = handle
                struct.pack_into(">QI", packet, 9 + len(handle), pos, got)
                self.channel.sendall(view[: header_size + got])
                sizes[rid] = got
                pos += got
            refused = self._write_reply(sizes, on_acked)  # always taken: replies in flight are drained
            failure = failure or refused
        return failure

    def _write_reply(self, sizes: dict[int, int], on_acked: Callable[[int], None]) -> "StatusError | None":
        """Take one write's reply: its bytes count as acknowledged, or its refusal is returned (the writes
        already in flight are still read, so the session stays paired up)."""
        kind, body = self._read()
        (rid,) = struct.unpack_from(">I", body)
        size = sizes.pop(rid, 0)
        try:
            self._raise_for_status("write", kind, body)
        except StatusError as exc:
            return exc
        on_acked(size)
        return None

    def open_write(self, path: str, *, truncate: bool) -> bytes:
        """A handle to write remote ``path`` (created if missing, emptied when ``truncate``); ``StatusError`` if refused."""
        return self._open(path, FXF_WRITE | FXF_CREAT | (FXF_TRUNC if truncate else 0))

    def close_handle(self, path: str, handle: bytes) -> None:
        """Close ``handle``; ``StatusError`` if the server reports a failure (a write it could not finish)."""
        self._send(FXP_CLOSE, handle)
        kind, body = self._read()
        self._raise_for_status(f"close {path}", kind, body)

    def write_blocks(self, handle: bytes, take: Callable[[bool], Any], on_acked: Callable[[int], None]) -> StatusError | None:
        """Write the blocks ``take`` hands out, each at its offset, with up to ``in_flight`` requests outstanding.

        ``take(wait)`` returns a ``Block``, ``END``, or (when ``wait`` is
        false, because replies are due) ``NOT_YET``. The request header is
        written into the block's spare room, so the data is sent where it
        was read. Returns the first refusal once every reply in flight is
        drained (nothing more is taken after it); raises on a broken
        channel, which is then closed.
        """
        sizes: dict[int, int] = {}
        failure: StatusError | None = None
        more = True
        header = 4 + 1 + 4 + len(handle) + 8 + 4
        start = HEADROOM - header
        try:
            while (more and failure is None) or sizes:
                while more and failure is None and len(sizes) < self.in_flight:
                    block = take(not sizes)
                    if block is NOT_YET:
                        break
                    if block is END:
                        more = False
                        break
                    rid = self._next_id
                    self._next_id = (rid + 1) & 0xFFFFFFFF
                    buf = block.buffer
                    struct.pack_into(">IBI", buf, start, header - 4 + block.size, FXP_WRITE, rid)
                    buf[start + 9 : start + 9 + len(handle)] = handle
                    struct.pack_into(">QI", buf, start + 9 + len(handle), block.offset, block.size)
                    self.channel.sendall(memoryview(buf)[start:])
                    sizes[rid] = block.size
                if not sizes:
                    continue
                refused = self._write_reply(sizes, on_acked)  # always taken: replies in flight are drained
                failure = failure or refused
        except BaseException:
            self.close()  # replies may be in flight: the session can no longer pair them up
            raise
        return failure

    def read_file(self, path: str, length: int, consume: Callable[[bytes], bool]) -> int:
        """Read the first ``length`` bytes of remote ``path`` and hand them to ``consume`` in file order.

        Up to ``in_flight`` reads are outstanding; a short answer is asked
        again for the rest. ``consume`` returns False to stop early (the
        replies in flight are drained, the rest is not asked for). Returns the
        number of bytes consumed: less than ``length`` when the file is
        shorter or ``consume`` stopped. Raises ``StatusError`` when the server
        refuses to open or read the file.
        """
        done: int = self._on_handle(path, FXF_READ, lambda handle: self._read_pipeline(handle, length, consume))
        return done

    def _read_pipeline(self, handle: bytes, length: int, consume: Callable[[bytes], bool]) -> tuple[int, StatusError | None]:
        asked: dict[int, tuple[int, int]] = {}  # request id -> (offset, size)
        arrived: dict[int, bytes] = {}  # offset -> data, until the bytes before it have been consumed
        again: list[tuple[int, int]] = []  # the rest of short answers, to ask for again
        pos = done = 0
        asking = consuming = True  # asking stops at the end of the file or a refusal; consuming when consume says so
        failure: StatusError | None = None
        while True:
            while asking and consuming and len(asked) < self.in_flight and (again or pos < length):
                if again:
                    offset, size = again.pop()
                else:
                    offset, size = pos, min(self.read_size, length - pos)
                    pos += size
                asked[self._send(FXP_READ, handle + struct.pack(">QI", offset, size))] = (offset, size)
            if not asked:
                return done, failure
            kind, body = self._read()
            (rid,) = struct.unpack_from(">I", body)
            offset, size = asked.pop(rid, (0, 0))
            if kind == FXP_DATA:
                (n,) = struct.unpack_from(">I", body, 4)
                if n == 0:
                    asking = False
                    continue
                arrived[offset] = body[8 : 8 + min(n, size)]
                if n < size:
                    again.append((offset + n, size - n))
            else:
                try:
                    self._raise_for_status("read", kind, body)
                except StatusError as exc:
                    if exc.code != FX_EOF:
                        failure = failure or exc
                asking = False  # the end of the file (or a refusal): what lies beyond is missing
            while consuming and done in arrived:
                chunk = arrived.pop(done)
                done += len(chunk)
                consuming = consume(chunk)

    @property
    def usable(self) -> bool:
        return not self.channel.closed

    def close(self) -> None:
        self.channel.close()
