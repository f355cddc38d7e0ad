"""The ``sftp://user@host:port/path/`` warehouse: public-key auth, checked host keys, verified, resumable writes.

For each file, under ``path/TASK_ID/``:

1. skip it when the warehouse already has it: same size, its ``.sha256``
   sidecar names the same sha256, and its content, read back, hashes to that
   sha256 (with ``sftp.verify: remote``: the server's ``sha256sum`` says so);
2. write it to ``.NAME.<sha256 prefix>.part``; when that file is already
   there (an interrupted try), its bytes are read back and compared with
   the local file's, and only the stretches found identical are kept
   (``sftp_ranges.ResumePlan``); everything else is sent;
3. verify: the bytes sent hash to the artifact's sha256, the remote size is
   right, and with ``sftp.verify: remote`` the server's own ``sha256sum``
   agrees;
4. rename it into place (atomically replacing an older copy), then its
   ``NAME.sha256`` sidecar (``sha256sum -c`` format) beside it.

Nothing farmhand did not send in this upload is trusted unread: a ``.part``
or a file in place may have been left by anyone, damaged, or be sparse.

A lost connection is tried again with exponential backoff and jitter, up to
``sftp.attempts`` times; refused keys, denied permissions and a full disk
stop at once with a message that says so. Several files travel at once,
each on its own channel (``sftp.streams``), and a large file is written
over ``sftp.channels`` more at once (``sftp_ranges``, ``sftp_openssh``).
"""

from __future__ import annotations

import hashlib
import io
import posixpath
import queue
import shlex
import socket
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Protocol
from urllib.parse import quote, unquote, urlsplit

import paramiko

from farmhand.backoff import backoff_delay
from farmhand.errors import ConfigError, UploadFailed
from farmhand.keys import load_private_key
from farmhand.uploaders import UploadItem, has_control_characters, check_name
from farmhand.uploaders.hashpipe import BackgroundHash
from farmhand.uploaders.sftp_connect import Endpoint, SftpError, connect, load_known_hosts
from farmhand.uploaders.sftp_openssh import OpensshLink, ssh_binary
from farmhand.uploaders.sftp_ranges import ChannelFailed, ParallelWriter, ResumePlan, send
from farmhand.uploaders.sftp_stream import FX_FAILURE, FX_PERMISSION_DENIED, SftpStream, SourceChanged, StatusError

if TYPE_CHECKING:
    from farmhand.config import SftpSettings, WorkerConfig

SIDECAR = ".sha256"
#: Errors after which another try may succeed: the connection, not the request, failed.
TRANSIENT = (EOFError, socket.error, paramiko.SSHException, TimeoutError)


@dataclass(frozen=True)
class SftpTarget:
    endpoint: Endpoint
    root: str  # remote directory; relative paths are under the login directory

    @classmethod
    def parse(cls, uri: str) -> "SftpTarget":
        """Parse ``sftp://user@host[:port]/path/``; ``/~/path`` is relative to the account's login directory."""
        parts = urlsplit(uri)
        where = f"upload target {uri!r}"
        if parts.scheme != "sftp":
            raise UploadFailed(f"{where}: not an sftp:// URI")
        if parts.password is not None:
            raise UploadFailed(f"{where}: passwords are not accepted in the URI; farmhand authenticates with sftp.private_key")
        if not parts.username:
            raise UploadFailed(f"{where}: needs a user name (sftp://USER@host:port/path/)")
        if not parts.hostname:
            raise UploadFailed(f"{where}: needs a host (sftp://user@HOST:port/path/)")
        try:
            port = parts.port or 22
        except ValueError:
            raise UploadFailed(f"{where}: the port is not a number between 1 and 65535") from None
        if parts.query or parts.fragment:
            raise UploadFailed(f"{where}: query strings and fragments mean nothing here")
        path = unquote(parts.path) or "/"
        if path == "/~" or path.startswith("/~/"):
            path = path[3:] or "."
        if has_control_characters(path):
            raise UploadFailed(f"{where}: the path contains control characters")
        root = posixpath.normpath(path) if path not in ("", ".") else "."
        return cls(Endpoint(unquote(parts.username), parts.hostname, port), root)

    def uri_path(self, remote: str) -> str:
        shown = remote if remote.startswith("/") else "/~/" + remote
        return quote(shown)


class Progress:
    """Counts confirmed bytes across streams and reports them (bytes, total, rate) at most every ``interval`` seconds.

    Each file's count is kept apart and set afresh by ``start`` once a try
    knows where it stands (0, the verified bytes of a resumed ``.part``, or
    all of it when skipped), so bytes confirmed by an interrupted try are
    never counted again, and ``bytes_done`` never exceeds ``bytes_total``.
    While bytes already on the server are read back, ``reach`` keeps the
    count from going back down until they are known bad.
    """

    def __init__(self, sizes: dict[str, int], report: Callable[..., None], interval: float) -> None:
        self.sizes, self.report, self.interval = sizes, report, interval
        self.total = sum(sizes.values())
        self.done = 0
        self.sent = 0  # bytes that crossed the network (not skipped or verified ones): what the rate is made of
        self._files: dict[str, int] = {}
        self.started = time.monotonic()
        self._last = 0.0
        self._lock = threading.Lock()

    def fields(self) -> dict[str, Any]:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        return {"bytes_done": self.done, "bytes_total": self.total, "rate": round(self.sent / elapsed)}

    def start(self, name: str, done: int) -> None:
        """A try on ``name`` begins with ``done`` of its bytes in place; what earlier tries counted is forgotten."""
        with self._lock:
            self._set(name, done)

    def reach(self, name: str, done: int) -> None:
        """``done`` bytes of ``name`` are checked in place so far: the count is at least that."""
        with self._lock:
            if done <= self._files.get(name, 0):
                return
            self._set(name, done)
        self._tick(name)

    def _set(self, name: str, done: int) -> None:
        done = max(0, min(done, self.sizes.get(name, 0)))
        self.done += done - self._files.get(name, 0)
        self._files[name] = done

    def add(self, n: int, *, name: str = "") -> None:
        """``n`` more bytes of ``name`` were sent and acknowledged by the server."""
        with self._lock:
            self._set(name, self._files.get(name, 0) + n)
            self.sent += n
        self._tick(name)

    def _tick(self, name: str) -> None:
        with self._lock:
            now = time.monotonic()
            if now - self._last < self.interval:
                return
            self._last = now
            fields = self.fields()
        self.report(f"uploading {name}".rstrip(), **fields)

    def say(self, message: str, **extra: Any) -> None:
        with self._lock:
            fields = self.fields()
        self.report(message, **fields, **extra)


def check_startup(config: "WorkerConfig") -> None:
    """Refuse to start a worker whose sftp:// warehouses it could never reach: bad key, no known_hosts.

    Raises ``ConfigError`` naming the setting; does nothing when no configured
    target is sftp://.
    """
    targets = [config.upload_default, *config.upload_allowed_targets]
    if not any(urlsplit(t).scheme == "sftp" for t in targets):
        return
    load_private_key(config.sftp.private_key)
    try:
        load_known_hosts(config.sftp.known_hosts)
    except SftpError as exc:
        raise ConfigError(exc.message) from None


class SftpUploader:
    """Uploads a task's files to one SFTP warehouse; see the module docstring for the protocol."""

    def __init__(self, target: str, config: "WorkerConfig", sleep: Callable[[float], None] = time.sleep) -> None:
        self.target = SftpTarget.parse(target)
        self.uri = target
        self.settings: SftpSettings = config.sftp
        self.sleep = sleep
        self._made_dirs: set[str] = set()
        self._openssh_refused: str | None = None  # why OpenSSH's client could not be used, once it could not
        self._dirs_lock = threading.Lock()

    # -- naming --------------------------------------------------------------------------
    def _remote(self, task_id: str, remote_name: str) -> str:
        parts = check_name(task_id, "task id") + check_name(remote_name.rstrip("/") if remote_name.endswith("/") else remote_name)
        return posixpath.join(self.target.root, *parts)

    def location(self, task_id: str, remote_name: str) -> str:
        ep = self.target.endpoint
        path = self.target.uri_path(self._remote(task_id, remote_name))
        return f"sftp://{quote(ep.user)}@{ep.host}:{ep.port}{path}" + ("/" if remote_name.endswith("/") else "")

    # -- the whole upload ----------------------------------------------------------------
    def upload(self, task_id: str, items: list[UploadItem], report: Callable[..., None]) -> dict[str, str]:
        paths = {item.remote_name: self._remote(task_id, item.remote_name) for item in items}
        sidecars = {p + SIDECAR: name for name, p in paths.items()}
        for name, path in paths.items():
            if path in sidecars:
                raise UploadFailed(f"refusing to upload {name!r}: it would overwrite the checksum sidecar of {sidecars[path]!r}")
        try:
            pkey = load_private_key(self.settings.private_key)
        except ConfigError as exc:
            raise SftpError(str(exc)) from None
        known = load_known_hosts(self.settings.known_hosts)
        progress = Progress({i.remote_name: i.size for i in items}, report, self.settings.progress_interval)
        remaining = list(items)
        attempts = max(1, self.settings.attempts)
        last = ""
        for attempt in range(1, attempts + 1):
            try:
                self._session(task_id, remaining, paths, pkey, known, progress)
                break
            except SftpError as exc:
                if not exc.transient:
                    raise
                last = exc.message
            except TRANSIENT as exc:
                last = f"connection to {self.target.endpoint.label} lost: {exc or type(exc).__name__}"
            if attempt == attempts:
                raise SftpError(f"upload to {self.target.endpoint.label} failed after {attempts} tries: {last}", transient=True)
            delay = backoff_delay(attempt, self.settings.backoff, self.settings.backoff_max)
            progress.say(f"upload interrupted ({last}); try {attempt + 1} of {attempts} in {delay:.1f}s")
            self.sleep(delay)
        elapsed = time.monotonic() - progress.started
        progress.say(
            f"uploaded {len(items)} file(s), {progress.done} bytes ({progress.sent} sent) in {elapsed:.2f}s to {self.target.endpoint.label}",
            bytes_sent=progress.sent,
        )
        return {item.remote_name: self.location(task_id, item.remote_name) for item in items}

    def _session(
        self,
        task_id: str,
        remaining: list[UploadItem],
        paths: dict[str, str],
        pkey: paramiko.PKey,
        known: paramiko.HostKeys,
        progress: Progress,
    ) -> None:
        """One connection: upload what is left with up to ``streams`` files at once; done items leave ``remaining``."""
        transport = connect(self.target.endpoint, self.settings, pkey, known)
        work: queue.Queue[UploadItem] = queue.Queue()
        for item in remaining:
            work.put(item)
        errors: list[BaseException] = []
        lock = threading.Lock()

        def more() -> paramiko.Transport:
            return connect(self.target.endpoint, self.settings, pkey, known)

        def worker() -> None:
            files: _Channels | None = None
            try:
                while not errors:
                    try:
                        item = work.get_nowait()
                    except queue.Empty:
                        return
                    files = files if files is not None and files.usable else _Channels(transport, self.settings)
                    self._put(files, item, paths[item.remote_name], progress, more)
                    with lock:
                        remaining.remove(item)
            except BaseException as exc:  # noqa: BLE001 - handed to the coordinating thread
                with lock:
                    errors.append(exc)
                if not isinstance(exc, SftpError) or exc.transient:
                    transport.close()  # the connection is suspect: stop the other streams now; the next try reconnects
                # A refusal (full disk, permission) lets the other streams finish their file, then stop.
            finally:
                if files is not None:
                    files.close()

        threads = [threading.Thread(target=worker, name=f"sftp-stream-{n}", daemon=True) for n in range(min(self.settings.streams, len(remaining)) or 1)]
        try:
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        finally:
            transport.close()
        if errors:
            # A permanent problem outranks the connection errors it caused in the other streams.
            permanent = [e for e in errors if isinstance(e, SftpError) and not e.transient]
            raise (permanent or errors)[0]

    # -- one file ------------------------------------------------------------------------
    def _put(self, ch: "_Channels", item: UploadItem, final: str, progress: Progress, more: Callable[[], paramiko.Transport]) -> None:
        folder, base = posixpath.split(final)
        self._makedirs(ch.ctl, folder)
        sidecar = final + SIDECAR
        line = f"{item.sha256}  {base}\n".encode()
        name = item.remote_name
        if self._already_there(ch, item, final, sidecar, line, progress):
            progress.start(name, item.size)
            progress.say(f"{name}: already in the warehouse, identical (its content hashes to the sha256); skipped")
            return
        part = posixpath.join(folder, f".{base}.{item.sha256[:16]}.part")
        existing = _stat(ch.ctl, part)
        try:
            src = open(item.local_path, "rb")
        except OSError as exc:
            raise SftpError(f"cannot read {item.local_path}: {exc.strerror or exc}") from None
        hasher = BackgroundHash()
        plan = ResumePlan(item.size)
        extra: _Closable | None = None
        try:
            with src:
                have = existing.st_size or 0 if existing is not None else 0
                compared = self._compare(ch, part, have, item.size, src, hasher, progress, name) if 0 < have <= item.size else None
                if compared is None:
                    progress.start(name, 0)
                    if have:
                        progress.say(f"{name}: the partial copy in the warehouse ({have} bytes) cannot be read back or is larger than this file; sending it all again")
                        hasher.finish()
                        hasher = BackgroundHash()
                        src.seek(0)
                else:
                    plan = compared
                    progress.start(name, plan.kept)
                    if plan.kept:
                        progress.say(
                            f"{name}: resuming: {plan.kept} of {item.size} bytes already in the warehouse read back identical; sending the other {plan.to_send}",
                            resumed_from=plan.kept,
                        )
                    else:
                        progress.say(f"{name}: the partial copy in the warehouse differs from this file's first {have} bytes; sending it all again")
                streams, extra = self._writers(ch, plan, more, progress)
                writer = ParallelWriter(streams, part, truncate=existing is not None and compared is None, on_acked=lambda n: progress.add(n, name=name))
                try:
                    send(writer, src, plan, hasher, min(s.request_size for s in streams))
                except BaseException:
                    writer.abort()
                    raise
                writer.finish()
        except StatusError as exc:
            raise self._explain(ch, exc, part, plan.to_send) from None
        except SourceChanged as exc:
            raise SftpError(f"{item.local_path}: {exc}; not uploaded") from None
        except ChannelFailed as exc:
            raise SftpError(f"upload to {self.target.endpoint.label} interrupted: {exc}", transient=True) from None
        finally:
            digest = hasher.finish()
            if extra is not None:
                extra.close()
        if digest != item.sha256:
            _remove(ch.ctl, part)
            raise SftpError(f"{item.local_path} changed since it was collected: its sha256 is now {digest}, not {item.sha256}; not uploaded")
        size = _stat(ch.ctl, part)
        if size is None or size.st_size != item.size:
            _remove(ch.ctl, part)
            raise SftpError(f"{part} on {self.target.endpoint.label} has {size.st_size if size else 'no'} bytes after the upload, not {item.size}", transient=True)
        side_part = posixpath.join(folder, f".{base}{SIDECAR}.part")
        try:
            if self.settings.verify == "remote":
                remote = self._remote_sha256(ch.transport, part, item)
                if remote != item.sha256:
                    _remove(ch.ctl, part)  # damaged on the server: the next try starts it over
                    raise SftpError(
                        f"{part} on {self.target.endpoint.label} hashes to {remote}, not {item.sha256}: the copy is damaged; it will be sent again",
                        transient=True,
                    )
            self._write_small(ch, side_part, line)
            self._replace(ch.ctl, part, final)
            self._replace(ch.ctl, side_part, sidecar)
        except SftpError as exc:
            if not exc.transient:  # refused for good (full disk...): leave no orphan copy taking space
                _remove(ch.ctl, part)
            raise

    def _writers(self, ch: "_Channels", plan: ResumePlan, more: Callable[[], paramiko.Transport], progress: Progress) -> tuple[list[SftpStream], "_Closable | None"]:
        """The channels to write with: the stream's own, or for a large file ``sftp.channels`` more.

        Large means more than all of them can have in flight; below that,
        more channels only add set-up. The more are ``ssh`` processes when
        OpenSSH's client is installed and can open a session (``sftp_openssh``:
        encryption off this process's GIL; it refuses, for one, a key file
        its group can read, which farmhand allows), else channels of a
        paramiko connection of their own, which keeps the main one within the
        sessions a server allows per connection (OpenSSH's MaxSessions, 10).
        """
        count = self.settings.channels
        if count <= 1 or plan.to_send < count * ch.stream.request_size * ch.stream.in_flight:
            return [ch.stream], None
        ssh = ssh_binary()
        if ssh is not None and self._openssh_refused is None:
            link = OpensshLink(ssh, self.target.endpoint, ch.transport, self.settings.private_key, self.settings.connect_timeout)
            try:
                link.start(count)
                return [self._stream_on(link) for _ in range(count)], link
            except (EOFError, OSError) as exc:
                link.close()
                self._openssh_refused = str(exc)
                progress.say(f"OpenSSH's ssh could not open an SFTP session ({exc}); large files go over paramiko channels")
        transport = more()
        try:
            return [self._stream_on(transport) for _ in range(count)], transport
        except BaseException:
            transport.close()
            raise

    def _stream_on(self, opener: Any) -> SftpStream:
        return SftpStream(opener, timeout=self.settings.connect_timeout, request_size=self.settings.request_size, in_flight=self.settings.requests_in_flight)

    def _compare(self, ch: "_Channels", path: str, length: int, size: int, src: Any, hasher: BackgroundHash, progress: Progress, name: str) -> ResumePlan | None:
        """Read remote ``path``'s first ``length`` bytes back and compare them with ``src``'s (``size`` bytes): what can be kept.

        ``src`` is read (and hashed into ``hasher``) as far as the
        comparison went. None when the copy cannot be read (a write-only
        account, or gone): not verified, so nothing of it is trusted; the
        caller then rewinds both.
        """
        plan = ResumePlan(size)

        def consume(remote: bytes) -> bool:
            local = src.read(len(remote))
            if len(local) < len(remote):
                raise SourceChanged(f"the local file ended at byte {plan.tail + len(local)}: it changed while being uploaded")
            hasher.update(local)
            if plan.note(local, remote):
                progress.reach(name, plan.kept)
            return True

        try:
            ch.stream.read_file(path, length, consume)
        except StatusError:
            return None
        return plan

    def _already_there(self, ch: "_Channels", item: UploadItem, final: str, sidecar: str, line: bytes, progress: Progress) -> bool:
        """Whether ``final`` already holds the item: right size, right sidecar, and content that hashes to its sha256."""
        st = _stat(ch.ctl, final)
        if st is None or st.st_size != item.size:
            return False
        try:
            with ch.ctl.open(sidecar, "rb") as fh:
                if fh.read(len(line) + 1) != line:
                    return False
        except FileNotFoundError:
            return False
        except PermissionError:
            raise self._denied(f"read {sidecar}") from None
        name = item.remote_name
        if self.settings.verify == "remote":
            if self._remote_sha256(ch.transport, final, item) == item.sha256:
                return True
            progress.say(f"{name}: the copy in the warehouse does not hash to its sidecar's sha256 (sha256sum on the server); sending it again")
            return False
        hasher = BackgroundHash()
        checked = 0

        def consume(remote: bytes) -> bool:
            nonlocal checked
            hasher.update(remote)
            checked += len(remote)
            progress.reach(name, checked)
            return True

        try:
            got = ch.stream.read_file(final, item.size, consume)
        except StatusError as exc:
            progress.say(f"{name}: the copy in the warehouse cannot be read back ({exc}); sending it again")
            return False
        finally:
            digest = hasher.finish()
        if got == item.size and digest == item.sha256:
            return True
        progress.say(f"{name}: the copy in the warehouse does not hash to its sidecar's sha256; sending it again")
        return False

    def _makedirs(self, ctl: paramiko.SFTPClient, folder: str) -> None:
        """``mkdir -p`` of the task's folders, remembered so each is made once per upload."""
        missing: list[str] = []
        path = folder
        while path not in ("", ".", "/") and path not in self._made_dirs:
            st = _stat(ctl, path)
            if st is not None:
                break
            missing.append(path)
            path = posixpath.dirname(path)
        for path in reversed(missing):
            try:
                ctl.mkdir(path, 0o755)
            except PermissionError:
                raise self._denied(f"create the folder {path}") from None
            except OSError:
                if _stat(ctl, path) is None:  # made meanwhile by another stream, or a real failure
                    raise self._denied(f"create the folder {path}") from None
        with self._dirs_lock:
            self._made_dirs.add(folder)

    def _write_small(self, ch: "_Channels", path: str, data: bytes) -> None:
        try:
            ch.stream.write_file(path, io.BytesIO(data), 0, len(data), hashlib.sha256(), truncate=True)
        except StatusError as exc:
            raise self._explain(ch, exc, path, len(data)) from None

    def _replace(self, ctl: paramiko.SFTPClient, src: str, dest: str) -> None:
        """Rename ``src`` over ``dest`` atomically (posix-rename@openssh.com), or remove-then-rename where unsupported."""
        try:
            ctl.posix_rename(src, dest)
            return
        except PermissionError:
            raise self._denied(f"rename {src} to {dest}") from None
        except OSError:
            pass  # the server lacks the extension: plain SFTP rename refuses to replace
        _remove(ctl, dest)
        try:
            ctl.rename(src, dest)
        except OSError as exc:
            raise SftpError(f"cannot rename {src} to {dest} on {self.target.endpoint.label}: {exc}") from None

    def _remote_sha256(self, transport: paramiko.Transport, path: str, item: UploadItem) -> str:
        """Run ``sha256sum`` on the server: the warehouse's own view of the bytes. Its hex digest of ``path``."""
        channel = transport.open_session(timeout=self.settings.connect_timeout)
        try:
            channel.settimeout(max(self.settings.connect_timeout, item.size / 50e6))
            channel.exec_command(f"sha256sum -b -- {shlex.quote(path)}")
            channel.shutdown_write()
            out = b""
            while chunk := channel.recv(4096):
                out += chunk
            status = channel.recv_exit_status()
            err = channel.recv_stderr(4096).decode("utf-8", "replace").strip()
        finally:
            channel.close()
        digest = out.split(b" ", 1)[0].decode("ascii", "replace")
        if status != 0 or len(digest) != 64:
            raise SftpError(
                f"sftp.verify is 'remote' but sha256sum could not run on {self.target.endpoint.label} (exit {status}: {err or 'no output'}); "
                "use 'stream' for SFTP-only accounts"
            )
        return digest

    # -- errors --------------------------------------------------------------------------
    def _denied(self, what: str) -> SftpError:
        return SftpError(f"permission denied: {self.target.endpoint.label} does not let this account {what}")

    def _explain(self, ch: "_Channels", exc: StatusError, path: str, needed: int) -> SftpError:
        """Turn a refused write into a message that says why: permissions, a full disk, or the server's words."""
        if exc.code == FX_PERMISSION_DENIED:
            return self._denied(f"write {path}")
        if exc.code == FX_FAILURE:
            folder = posixpath.dirname(path)
            free = ch.stream.free_bytes(folder) if ch.stream.usable else None
            _remove(ch.ctl, path)  # a partial copy the server refused to extend is no use, and on a full disk it keeps it full
            if free is not None and free < needed:
                return SftpError(
                    f"no space left on the warehouse: {self.target.endpoint.label}:{folder} has {free} bytes free and "
                    f"{posixpath.basename(path)} needs {needed} more; nothing was lost, the files stay on this worker"
                )
            detail = f" ({free} bytes free there)" if free is not None else " (the server does not say why; a full disk or quota is likely)"
            return SftpError(f"the warehouse {self.target.endpoint.label} refused to write {path}: {exc.text or 'failure'}{detail}")
        return SftpError(f"the warehouse {self.target.endpoint.label} refused {exc}", transient=exc.code in (6, 7))


class _Closable(Protocol):
    def close(self) -> None: ...


class _Channels:
    """A stream's two SFTP sessions: paramiko's client for small requests, ours for file contents."""

    def __init__(self, transport: paramiko.Transport, settings: "SftpSettings") -> None:
        self.transport = transport
        self.ctl = paramiko.SFTPClient.from_transport(transport)
        assert self.ctl is not None
        self.ctl.get_channel().settimeout(settings.connect_timeout)
        self.stream = SftpStream(transport, timeout=settings.connect_timeout, request_size=settings.request_size, in_flight=settings.requests_in_flight)

    @property
    def usable(self) -> bool:
        return self.stream.usable and not self.ctl.get_channel().closed

    def close(self) -> None:
        self.stream.close()
        self.ctl.close()


def _stat(ctl: paramiko.SFTPClient, path: str) -> paramiko.SFTPAttributes | None:
    try:
        return ctl.stat(path)
    except FileNotFoundError:
        return None


def _remove(ctl: paramiko.SFTPClient, path: str) -> None:
    try:
        ctl.remove(path)
    except FileNotFoundError:
        pass

