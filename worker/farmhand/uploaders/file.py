"""The ``file://`` warehouse: a directory on this host (or a mount of a shared one)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable
from urllib.parse import unquote, urlsplit

from farmhand.digest import sha256_file
from farmhand.durable import fsync_dir, fsync_path, make_dirs, replace
from farmhand.errors import UploadFailed
from farmhand.uploaders import UploadItem, check_name


class FileUploader:
    """Copies each file to a temporary name, verifies size and sha256, then renames it into place.

    A reader of the warehouse therefore never sees a partial file, and a file
    that is already there, complete and identical, is not copied again.
    """

    def __init__(self, target: str, config: object = None) -> None:
        parts = urlsplit(target)
        if parts.netloc not in ("", "localhost"):
            raise UploadFailed(f"upload target {target!r}: file:// targets must be local (no host part)")
        self.root = Path(unquote(parts.path))
        self.target = target

    def _destination(self, task_id: str, remote_name: str) -> Path:
        parts = check_name(task_id, "task id") + check_name(remote_name[:-1] if remote_name.endswith("/") else remote_name)
        return self.root.joinpath(*parts)

    def location(self, task_id: str, remote_name: str) -> str:
        return self._destination(task_id, remote_name).as_uri() + ("/" if remote_name.endswith("/") else "")

    def upload(self, task_id: str, items: list[UploadItem], report: Callable[[str], None]) -> dict[str, str]:
        locations: dict[str, str] = {}
        for item in items:
            dest = self._destination(task_id, item.remote_name)
            try:
                locations[item.remote_name] = self._put(item, dest)
            except OSError as exc:
                raise UploadFailed(f"cannot write {dest}: {exc.strerror or exc}") from exc
            report(f"uploaded {item.remote_name} ({item.size} bytes)")
        return locations

    def _put(self, item: UploadItem, dest: Path) -> str:
        make_dirs(dest.parent)
        if dest.is_file() and dest.stat().st_size == item.size and sha256_file(dest) == item.sha256:
            # A predecessor may have renamed it into place and died before the syncs below.
            fsync_path(dest)
            fsync_dir(dest.parent)
            return dest.as_uri()
        tmp = dest.with_name(f".{dest.name}.part")
        with open(item.local_path, "rb") as src, open(tmp, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
            out.flush()
            os.fsync(out.fileno())
        if tmp.stat().st_size != item.size or sha256_file(tmp) != item.sha256:
            tmp.unlink(missing_ok=True)
            raise UploadFailed(f"copy of {item.remote_name} to {dest} does not match its sha256; source changed or disk is failing")
        # The new name is only on disk once its directory is: the caller deletes its local copy after this.
        replace(tmp, dest)
        return dest.as_uri()
