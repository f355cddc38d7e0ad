"""Loopback video and sound devices, each held by one task at a time.

The appliance loads ``v4l2loopback`` (virtual cameras) and ``snd-aloop``
(virtual sound cards); a task that drives a browser or records a screen needs
one of each to itself, since two tasks writing into one camera corrupt each
other's stream. The pool is what this host has, discovered from sysfs and
procfs (never from ``/dev``: the worker's unit has a private ``/dev``, and
dockerd resolves the host paths itself).

Who holds a device is kept in two places, so that it outlives the process
that took it (a running container keeps its device while no worker lives):

- a claim file per device in a lock directory shared by every worker process
  of the host (``loopback_devices.lock_dir``), naming the task's workspace;
  it is read and changed only under that device's ``flock``;
- the task's own journal, ``tasks/ID/devices.json``, listing what it holds.

A claim counts only while the journal it names still lists the device: a
process killed between writing the claim and the journal, a workspace an
operator removed, or a task started over from prepare (its workspace is
emptied) leave a claim nobody holds, and the next task takes the device. A
worker restarted while its task runs finds the journal and keeps the device
(``readopt``); no other task can take it meanwhile, whichever process asks.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

from farmhand.errors import TaskProblem
from farmhand.result import write_json_atomic

VIDEO = "video"
AUDIO = "audio"
KINDS = (VIDEO, AUDIO)
#: The task's own record of the devices it holds, in its workspace.
JOURNAL_NAME = "devices.json"
#: /proc/asound/cards names snd-aloop's cards by this driver name.
ALOOP_DRIVER = "Loopback"

_CARD_LINE = re.compile(r"^\s*(\d+)\s+\[([^\]]*)\]:\s+(\S+)\s+-\s")
_VIDEO_NAME = re.compile(r"^video(\d+)$")


class DeviceUnavailable(TaskProblem):
    """No device of a kind the task asks for came free in time, or this host has none."""

    reason = "device-unavailable"


@dataclass(frozen=True)
class LoopbackDevice:
    """One device of the pool: ``name`` keys its claim (``video10``, ``card10``), ``nodes`` map host to container paths."""

    kind: str
    name: str
    nodes: tuple[tuple[str, str], ...]

    @property
    def docker_devices(self) -> list[str]:
        """docker's ``devices`` entries: each node renamed as device 0, with a cgroup rule for that node alone."""
        return [f"{host}:{inside}:rwm" for host, inside in self.nodes]


def discover_video(sys_root: Path, label: str) -> list[LoopbackDevice]:
    """The v4l2loopback devices whose name is ``label`` (the role's ``card_label``), in device order.

    Other video devices (a real camera, another program's loopback) are never
    handed to tasks.
    """
    base = sys_root / "devices" / "virtual" / "video4linux"
    found: list[tuple[int, LoopbackDevice]] = []
    try:
        entries = list(base.iterdir())
    except OSError:
        return []
    for entry in entries:
        match = _VIDEO_NAME.match(entry.name)
        if match is None:
            continue
        try:
            name = (entry / "name").read_text(encoding="utf-8", errors="replace").strip()
        except OSError:
            continue
        if name != label:
            continue
        found.append((int(match.group(1)), LoopbackDevice(VIDEO, entry.name, ((f"/dev/{entry.name}", "/dev/video0"),))))
    return [dev for _, dev in sorted(found)]


def loopback_cards(cards_text: str) -> list[int]:
    """The indices of snd-aloop's cards in a ``/proc/asound/cards`` text, in order."""
    out = []
    for line in cards_text.splitlines():
        match = _CARD_LINE.match(line)
        if match is not None and match.group(3) == ALOOP_DRIVER:
            out.append(int(match.group(1)))
    return sorted(out)


def discover_audio(proc_root: Path, sys_root: Path) -> list[LoopbackDevice]:
    """snd-aloop's cards with their control and PCM nodes (``/sys/class/sound`` names them), renamed as card 0."""
    try:
        cards = loopback_cards((proc_root / "asound" / "cards").read_text(encoding="utf-8", errors="replace"))
        names = sorted(p.name for p in (sys_root / "class" / "sound").iterdir())
    except OSError:
        return []
    out = []
    for index in cards:
        node = re.compile(rf"^(controlC{index}|pcmC{index}D\d+[pc])$")
        nodes = tuple(
            (f"/dev/snd/{name}", "/dev/snd/" + re.sub(rf"C{index}(?=D|$)", "C0", name, count=1))
            for name in names
            if node.match(name)
        )
        if nodes:
            out.append(LoopbackDevice(AUDIO, f"card{index}", nodes))
    return out


def _read_json(path: Path) -> dict | None:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def journaled(task_dir: Path) -> list[str]:
    """The device names a task's journal says it holds (none when there is no journal)."""
    doc = _read_json(task_dir / JOURNAL_NAME) or {}
    held = doc.get("held")
    return [str(n) for n in held] if isinstance(held, list) else []


class DevicePool:
    """The host's loopback devices and who holds each; one per worker process, shared by its engines.

    Thread-safe and safe between processes: every decision about a device is
    made under that device's ``flock`` in ``lock_dir``.
    """

    def __init__(self, devices: Iterable[LoopbackDevice], lock_dir: Path) -> None:
        self.devices = tuple(devices)
        self.lock_dir = Path(lock_dir)
        self._by_name = {d.name: d for d in self.devices}
        self._journal_lock = threading.Lock()

    @classmethod
    def discover(cls, video_label: str, lock_dir: Path, sys_root: Path = Path("/sys"), proc_root: Path = Path("/proc")) -> "DevicePool":
        """What the host has now: ``sys_root`` and ``proc_root`` are parameters so tests can hand a fake tree."""
        return cls(discover_video(sys_root, video_label) + discover_audio(proc_root, sys_root), lock_dir)

    def of_kind(self, kind: str) -> list[LoopbackDevice]:
        return [d for d in self.devices if d.kind == kind]

    def sizes(self) -> dict[str, int]:
        return {kind: len(self.of_kind(kind)) for kind in KINDS}

    # -- claims -----------------------------------------------------------------------
    def _ensure_lock_dir(self) -> None:
        """The lock directory, made if missing; made by root (``run-task``, ``check``), it is given to the owner of
        its parent (the service's ``RuntimeDirectory``), so the unprivileged worker can still claim devices."""
        if self.lock_dir.is_dir():
            return
        self.lock_dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            parent = self.lock_dir.parent.stat()
            os.chown(self.lock_dir, parent.st_uid, parent.st_gid)

    @contextmanager
    def _locked(self, name: str) -> Iterator[None]:
        self._ensure_lock_dir()
        # Read-only: flock needs no write access, so a lock file another user made still serves.
        fd = os.open(self.lock_dir / f"{name}.lock", os.O_RDONLY | os.O_CREAT, 0o660)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # held for a few file operations, never while a task runs
            yield
        finally:
            os.close(fd)

    def _claim_path(self, name: str) -> Path:
        return self.lock_dir / f"{name}.claim"

    def _holder(self, name: str) -> Path | None:
        """The workspace whose journal still lists ``name`` under a claim for it; call under ``_locked(name)``."""
        claim = _read_json(self._claim_path(name)) or {}
        task_dir = claim.get("task_dir")
        if not isinstance(task_dir, str):
            return None
        return Path(task_dir) if name in journaled(Path(task_dir)) else None

    def holder(self, name: str) -> Path | None:
        """The workspace of the task holding ``name``, or None when it is free."""
        with self._locked(name):
            return self._holder(name)

    def _journal(self, task_dir: Path, add: str | None = None, remove: str | None = None) -> None:
        with self._journal_lock:
            held = [n for n in journaled(task_dir) if n != remove]
            if add is not None and add not in held:
                held.append(add)
            if held:
                write_json_atomic(task_dir / JOURNAL_NAME, {"held": held})
            else:
                (task_dir / JOURNAL_NAME).unlink(missing_ok=True)

    def _take(self, name: str, task_dir: Path) -> bool:
        """Claim ``name`` for ``task_dir`` if nobody else holds it: the claim first, then the journal that makes it count."""
        with self._locked(name):
            current = self._holder(name)
            if current is not None and current != task_dir:
                return False
            write_json_atomic(self._claim_path(name), {"task_dir": str(task_dir), "pid": os.getpid(), "since": time.time()})
            self._journal(task_dir, add=name)
            return True

    def _give_back(self, name: str, task_dir: Path) -> None:
        with self._locked(name):
            self._journal(task_dir, remove=name)
            claim = _read_json(self._claim_path(name)) or {}
            if claim.get("task_dir") == str(task_dir):
                self._claim_path(name).unlink(missing_ok=True)

    # -- what tasks do ------------------------------------------------------------------
    def try_acquire(self, task_dir: Path, kinds: Sequence[str]) -> list[LoopbackDevice] | None:
        """One free device of each kind for the task, or None (and nothing taken) when a kind has none free."""
        taken: list[LoopbackDevice] = []
        for kind in kinds:
            got = next((d for d in self.of_kind(kind) if self._take(d.name, task_dir)), None)
            if got is None:
                for dev in taken:
                    self._give_back(dev.name, task_dir)
                return None
            taken.append(got)
        return taken

    def acquire(
        self,
        task_dir: Path,
        kinds: Sequence[str],
        wait: float,
        cancel: threading.Event,
        report: Callable[[str], None] = lambda message: None,
        interval: float = 0.5,
    ) -> list[LoopbackDevice]:
        """A device of each kind, waiting up to ``wait`` seconds for others to give theirs back.

        Raises ``DeviceUnavailable`` when the host has no device of a kind, or
        none came free in time; returns early (nothing held) when ``cancel`` is
        set, for the caller to report why.
        """
        missing = [kind for kind in kinds if not self.of_kind(kind)]
        if missing:
            from farmhand.in_container import LOOPBACK_DEVICES, hint

            raise DeviceUnavailable(
                f"this host has no loopback {' or '.join(missing)} device (the loopback_devices role sets them up; "
                f"`farmhand check` lists what the worker found){hint(LOOPBACK_DEVICES)}"
            )
        deadline = time.monotonic() + wait
        said = False
        while True:
            got = self.try_acquire(task_dir, kinds)
            if got is not None:
                return got
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                sizes = ", ".join(f"{len(self.of_kind(k))} {k}" for k in kinds)
                raise DeviceUnavailable(
                    f"no loopback {' and '.join(kinds)} device came free within {wait:g}s (limits.device_wait): "
                    f"this host has {sizes}, all held by other tasks"
                )
            if not said:
                report(f"waiting up to {wait:g}s for a free loopback {' and '.join(kinds)} device (all are held by other tasks)")
                said = True
            if cancel.wait(min(interval, remaining)):
                return []

    def held_by(self, task_dir: Path) -> list[LoopbackDevice]:
        """The devices the task's journal lists that this host still has."""
        return [self._by_name[n] for n in journaled(task_dir) if n in self._by_name]

    def readopt(self, task_dir: Path) -> tuple[list[LoopbackDevice], list[str]]:
        """After a restart: the task's journaled devices, claimed again; and what could not be (for its warnings).

        A claim a reboot wiped (``lock_dir`` on tmpfs) is written again; a
        device another task claimed meanwhile, or one the host no longer has,
        is dropped from the journal and reported.
        """
        kept: list[LoopbackDevice] = []
        problems: list[str] = []
        for name in journaled(task_dir):
            dev = self._by_name.get(name)
            if dev is None:
                problems.append(f"loopback device {name} is no longer on this host")
                self._give_back(name, task_dir)
            elif self._take(name, task_dir):
                kept.append(dev)
            else:
                problems.append(f"loopback device {name} is now held by another task ({self.holder(name)})")
                self._journal(task_dir, remove=name)
        return kept, problems

    def release(self, task_dir: Path) -> None:
        """Give back everything the task holds (after its containers are gone)."""
        for name in journaled(task_dir):
            self._give_back(name, task_dir)

    def describe(self) -> list[str]:
        """One line per device: its nodes, and the task holding it, for ``farmhand check``."""
        lines = []
        for dev in self.devices:
            holder = self.holder(dev.name) if self.lock_dir.is_dir() else None
            nodes = ", ".join(host for host, _ in dev.nodes)
            lines.append(f"{dev.name} ({nodes}): " + (f"held by {holder}" if holder else "free"))
        return lines
