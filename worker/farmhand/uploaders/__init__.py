"""Where finished work goes. The engine talks to an ``Uploader`` and never to a protocol.

Each scheme (``file://`` and ``sftp://``, each in its own module) registers a
factory; the engine asks ``uploader_for(target)``. An uploader must only
return a location once the bytes there are verified: the engine deletes local
copies on the strength of that answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Protocol
from urllib.parse import urlsplit

from farmhand.errors import UploadFailed

if TYPE_CHECKING:
    from farmhand.config import WorkerConfig


@dataclass(frozen=True)
class UploadItem:
    local_path: Path
    remote_name: str  # relative path under the task's folder, "/"-separated
    size: int
    sha256: str


#: ``report(message, **fields)``: fields, when given, are ``bytes_done``, ``bytes_total`` and ``rate`` (bytes/s).
ReportFn = Callable[..., None]


class Uploader(Protocol):
    def upload(self, task_id: str, items: list[UploadItem], report: ReportFn) -> dict[str, str]:
        """Upload ``items`` under the task's folder; return remote_name -> location of each verified copy."""
        ...

    def location(self, task_id: str, remote_name: str) -> str:
        """Where ``remote_name`` of ``task_id`` lives (or would live) in the warehouse."""
        ...


def has_control_characters(text: str) -> bool:
    return any(ord(c) < 32 or ord(c) == 127 for c in text)


def check_name(name: str, what: str = "artifact name") -> list[str]:
    """The components of a relative remote name, or ``UploadFailed`` for anything that could leave the task's folder.

    Every uploader calls this, so what a warehouse may be asked to write is one rule for all protocols.
    """
    if not name or name.startswith("/") or "\\" in name or has_control_characters(name):
        raise UploadFailed(f"refusing to upload {what} {name!r}: not a plain relative name (absolute, empty, backslash or control characters)")
    parts = name.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise UploadFailed(f"refusing to upload {what} {name!r}: not a plain relative name ('..', '.' or empty components)")
    return parts


#: Builds an uploader for a target URI, with the host's config (keys, trust...).
UploaderFactory = Callable[[str, "WorkerConfig"], Uploader]
_FACTORIES: dict[str, UploaderFactory] = {}


def register(scheme: str, factory: UploaderFactory) -> None:
    _FACTORIES[scheme] = factory


def supported_schemes() -> list[str]:
    return sorted(_FACTORIES)


def uploader_for(target: str, config: "WorkerConfig") -> Uploader:
    scheme = urlsplit(target).scheme
    factory = _FACTORIES.get(scheme)
    if factory is None:
        raise UploadFailed(f"upload target {target!r}: no uploader for scheme {scheme!r} (this worker supports: {', '.join(supported_schemes())})")
    return factory(target, config)


def _sftp(target: str, config: "WorkerConfig") -> Uploader:
    """Imported on first use: paramiko costs start-up time that file:// hosts need not pay."""
    from farmhand.uploaders.sftp import SftpUploader

    return SftpUploader(target, config)


def _register_builtin() -> None:
    from farmhand.uploaders.file import FileUploader

    register("file", FileUploader)
    register("sftp", _sftp)


_register_builtin()
