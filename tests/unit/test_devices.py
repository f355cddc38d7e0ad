"""The loopback device pool (farmhand.devices) on fake sysfs/procfs trees.

Discovery reads what the kernel would show; claims and journals are real
files under flock, so several pools in one process or in several processes
stand for several worker processes of one host.
"""

from __future__ import annotations

import multiprocessing
import threading
from pathlib import Path

import pytest
import yaml

from farmhand.config import WorkerConfig, load_config
from farmhand.devices import (
    AUDIO,
    JOURNAL_NAME,
    VIDEO,
    DevicePool,
    DeviceUnavailable,
    discover_audio,
    discover_video,
    journaled,
    loopback_cards,
)
from farmhand.errors import PolicyDenied
from farmhand.policy import check as policy_check
from farmhand.task import parse_task

LABEL = "farmhand-loopback"

CARDS = """\
 0 [PCH            ]: HDA-Intel - HDA Intel PCH
                      HDA Intel PCH at 0xf7f10000 irq 31
 1 [Loopback       ]: Loopback - Loopback
                      Loopback 1
10 [Loopback_1     ]: Loopback - Loopback
                      Loopback 1
"""


def fake_host(root: Path, videos: dict[int, str] | None = None, cards: str = CARDS) -> tuple[Path, Path]:
    """A /sys and /proc with the entries the pool reads: video4linux names, the cards list, /sys/class/sound."""
    sys_root, proc_root = root / "sys", root / "proc"
    videos = {2: LABEL, 10: LABEL, 0: "Integrated Camera", 3: "OBS Virtual Camera"} if videos is None else videos
    for n, name in videos.items():
        d = sys_root / "devices" / "virtual" / "video4linux" / f"video{n}"
        d.mkdir(parents=True)
        (d / "name").write_text(name + "\n")
    (proc_root / "asound").mkdir(parents=True)
    (proc_root / "asound" / "cards").write_text(cards)
    sound = sys_root / "class" / "sound"
    sound.mkdir(parents=True)
    for name in ["card0", "controlC0", "pcmC0D0p", "pcmC0D0c", "card1", "controlC1", "pcmC1D0p", "pcmC1D0c", "pcmC1D1p", "pcmC1D1c",
                 "card10", "controlC10", "pcmC10D0p", "pcmC10D0c", "pcmC10D1p", "pcmC10D1c", "timer", "seq"]:
        (sound / name).mkdir()
    return sys_root, proc_root


@pytest.fixture
def host(tmp_path: Path) -> tuple[Path, Path]:
    return fake_host(tmp_path / "host")


@pytest.fixture
def lock_dir(tmp_path: Path) -> Path:
    return tmp_path / "run" / "devices"


def new_pool(host: tuple[Path, Path], lock_dir: Path) -> DevicePool:
    """What a worker process finds at its start."""
    sys_root, proc_root = host
    return DevicePool.discover(LABEL, lock_dir, sys_root, proc_root)


def task_dir(tmp_path: Path, name: str) -> Path:
    d = tmp_path / "work" / "tasks" / name
    d.mkdir(parents=True, exist_ok=True)
    return d


# --- discovery -------------------------------------------------------------------

def test_video_devices_are_those_of_the_roles_label_in_device_order(host):
    devs = discover_video(host[0], LABEL)
    assert [d.name for d in devs] == ["video2", "video10"]  # numeric order; the real and the foreign camera are not ours
    assert devs[1].docker_devices == ["/dev/video10:/dev/video0:rwm"]
    assert discover_video(host[0], "no-such-label") == []


def test_loopback_cards_are_read_from_proc_asound_cards():
    assert loopback_cards(CARDS) == [1, 10]
    assert loopback_cards("--- no soundcards ---\n") == []


def test_a_loopback_card_is_mapped_as_card_0_with_all_its_nodes(host):
    cards = discover_audio(host[1], host[0])
    assert [c.name for c in cards] == ["card1", "card10"]
    ten = cards[1]
    assert sorted(ten.docker_devices) == sorted([
        "/dev/snd/controlC10:/dev/snd/controlC0:rwm",
        "/dev/snd/pcmC10D0p:/dev/snd/pcmC0D0p:rwm",
        "/dev/snd/pcmC10D0c:/dev/snd/pcmC0D0c:rwm",
        "/dev/snd/pcmC10D1p:/dev/snd/pcmC0D1p:rwm",
        "/dev/snd/pcmC10D1c:/dev/snd/pcmC0D1c:rwm",
    ])
    # card 1's nodes are not card 10's, though their names share a prefix; the real card 0 is nobody's.
    assert all("C1D" not in entry.split(":")[0] and "controlC1:" not in entry for entry in ten.docker_devices)
    assert len(cards[0].docker_devices) == 5


def test_a_host_without_the_modules_has_an_empty_pool(tmp_path, lock_dir):
    pool = DevicePool.discover(LABEL, lock_dir, tmp_path / "nosys", tmp_path / "noproc")
    assert pool.devices == () and pool.sizes() == {VIDEO: 0, AUDIO: 0}


# --- allocation, exhaustion, release ---------------------------------------------

def test_each_task_gets_a_device_no_other_task_holds(host, lock_dir, tmp_path):
    pool = new_pool(host, lock_dir)
    a = pool.try_acquire(task_dir(tmp_path, "a"), [VIDEO, AUDIO])
    b = pool.try_acquire(task_dir(tmp_path, "b"), [VIDEO, AUDIO])
    assert a is not None and b is not None
    assert {d.name for d in a}.isdisjoint({d.name for d in b})
    assert sorted(journaled(task_dir(tmp_path, "a"))) == sorted(d.name for d in a)
    assert pool.holder(a[0].name) == task_dir(tmp_path, "a")


def test_an_exhausted_pool_takes_nothing_and_all_or_nothing(host, lock_dir, tmp_path):
    pool = new_pool(host, lock_dir)
    assert pool.try_acquire(task_dir(tmp_path, "a"), [AUDIO]) is not None
    assert pool.try_acquire(task_dir(tmp_path, "b"), [AUDIO]) is not None
    # Audio is exhausted: a task asking video and audio gets neither (no video kept while it waits).
    c = task_dir(tmp_path, "c")
    assert pool.try_acquire(c, [VIDEO, AUDIO]) is None
    assert journaled(c) == []
    assert [pool.holder(d.name) for d in pool.of_kind(VIDEO)] == [None, None]


def test_release_gives_the_devices_back(host, lock_dir, tmp_path):
    pool = new_pool(host, lock_dir)
    a, b = task_dir(tmp_path, "a"), task_dir(tmp_path, "b")
    got = pool.try_acquire(a, [VIDEO, AUDIO])
    pool.try_acquire(b, [VIDEO, AUDIO])
    assert pool.try_acquire(task_dir(tmp_path, "c"), [VIDEO]) is None
    pool.release(a)
    assert not (a / JOURNAL_NAME).exists()
    assert all(pool.holder(d.name) is None for d in got)
    again = pool.try_acquire(task_dir(tmp_path, "c"), [VIDEO, AUDIO])
    assert again is not None and {d.name for d in again} == {d.name for d in got}


def test_a_waiting_task_gets_the_device_given_back(host, lock_dir, tmp_path):
    pool = new_pool(host, lock_dir)
    holders = [task_dir(tmp_path, f"h{i}") for i in range(2)]
    for h in holders:
        assert pool.try_acquire(h, [VIDEO])
    waiting = threading.Event()
    got: list = []
    waiter = threading.Thread(
        target=lambda: got.extend(pool.acquire(task_dir(tmp_path, "w"), [VIDEO], 3600, threading.Event(), lambda m: waiting.set(), interval=0.01))
    )
    waiter.start()
    assert waiting.wait(60), "the task never said it waits"
    assert got == []
    pool.release(holders[1])
    waiter.join(60)
    assert [d.name for d in got] == ["video10"]
    assert pool.holder("video10") == task_dir(tmp_path, "w")


def test_waiting_is_bounded_and_fails_with_device_unavailable(host, lock_dir, tmp_path):
    pool = new_pool(host, lock_dir)
    for i in range(2):
        pool.try_acquire(task_dir(tmp_path, f"h{i}"), [VIDEO])
    with pytest.raises(DeviceUnavailable) as exc:
        pool.acquire(task_dir(tmp_path, "w"), [VIDEO], 0, threading.Event())
    assert exc.value.reason == "device-unavailable" and exc.value.state == "exception"
    assert "limits.device_wait" in exc.value.message and "2 video" in exc.value.message


def test_a_kind_the_host_lacks_fails_at_once(tmp_path, lock_dir):
    pool = DevicePool.discover(LABEL, lock_dir, *fake_host(tmp_path / "h", cards="--- no soundcards ---\n"))
    with pytest.raises(DeviceUnavailable, match="no loopback audio device"):
        pool.acquire(task_dir(tmp_path, "a"), [VIDEO, AUDIO], 3600, threading.Event())
    assert journaled(task_dir(tmp_path, "a")) == []


def test_a_cancel_ends_the_wait_holding_nothing(host, lock_dir, tmp_path):
    pool = new_pool(host, lock_dir)
    for i in range(2):
        pool.try_acquire(task_dir(tmp_path, f"h{i}"), [VIDEO])
    cancel = threading.Event()
    cancel.set()
    assert pool.acquire(task_dir(tmp_path, "w"), [VIDEO], 3600, cancel) == []
    assert journaled(task_dir(tmp_path, "w")) == []


# --- restarts: the journal decides ---------------------------------------------------

def _acquire_and_exit(host: tuple[Path, Path], lock_dir: Path, task: Path) -> None:
    assert new_pool(host, lock_dir).try_acquire(task, [VIDEO, AUDIO]) is not None


def test_a_restarted_worker_keeps_a_running_tasks_devices(host, lock_dir, tmp_path):
    a = task_dir(tmp_path, "a")
    # A worker process takes the devices for its task, then dies (its container runs on).
    proc = multiprocessing.get_context("fork").Process(target=_acquire_and_exit, args=(host, lock_dir, a))
    proc.start()
    proc.join(60)
    assert proc.exitcode == 0
    later = new_pool(host, lock_dir)
    held = later.held_by(a)
    assert sorted(d.kind for d in held) == [AUDIO, VIDEO]
    # The next process never hands those devices out...
    others = [later.try_acquire(task_dir(tmp_path, f"o{i}"), [VIDEO, AUDIO]) for i in range(2)]
    assert others[0] is not None and others[1] is None
    assert {d.name for d in others[0]}.isdisjoint({d.name for d in held})
    # ...and re-adopting the task keeps exactly what it had.
    kept, problems = later.readopt(a)
    assert problems == [] and [d.name for d in kept] == [d.name for d in held]
    assert all(later.holder(d.name) == a for d in held)


def test_a_claim_without_its_journal_holds_nothing(host, lock_dir, tmp_path):
    pool = new_pool(host, lock_dir)
    a, b = task_dir(tmp_path, "a"), task_dir(tmp_path, "b")
    pool.try_acquire(a, [VIDEO])
    pool.try_acquire(b, [VIDEO])
    # a started over from prepare (its workspace emptied); b's workspace was removed by an operator.
    (a / JOURNAL_NAME).unlink()
    (b / JOURNAL_NAME).unlink()
    b.rmdir()
    assert [pool.holder(d.name) for d in pool.of_kind(VIDEO)] == [None, None]
    assert pool.try_acquire(task_dir(tmp_path, "c"), [VIDEO]) is not None


def test_readopt_after_the_claims_were_wiped_reports_a_device_taken_meanwhile(host, lock_dir, tmp_path):
    import shutil

    a = task_dir(tmp_path, "a")
    pool = new_pool(host, lock_dir)
    pool.try_acquire(a, [VIDEO])  # video2
    shutil.rmtree(lock_dir)  # a reboot empties /run
    pool.try_acquire(task_dir(tmp_path, "b"), [VIDEO])  # takes video2: no claim says otherwise
    kept, problems = pool.readopt(a)
    assert kept == [] and len(problems) == 1 and "video2" in problems[0] and "held by another task" in problems[0]
    assert journaled(a) == []
    assert pool.holder("video2") == task_dir(tmp_path, "b")


def _grab(args: tuple[str, str, str, str, str, str]) -> str | None:
    sys_root, proc_root, lock, work, name, _ = args
    pool = DevicePool.discover(LABEL, Path(lock), Path(sys_root), Path(proc_root))
    d = Path(work) / name
    d.mkdir(parents=True, exist_ok=True)
    got = pool.try_acquire(d, [VIDEO])
    return got[0].name if got else None


def test_worker_processes_of_one_host_never_share_a_device(host, lock_dir, tmp_path):
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(8) as procs:
        for round_ in range(10):
            args = [(str(host[0]), str(host[1]), str(lock_dir), str(tmp_path / f"w{round_}"), f"t{i}", "") for i in range(8)]
            got = [name for name in procs.map(_grab, args) if name is not None]
            assert sorted(got) == ["video10", "video2"], f"round {round_}: {got}"
            for i in range(8):
                d = tmp_path / f"w{round_}" / f"t{i}"
                (d / JOURNAL_NAME).unlink(missing_ok=True)  # the round's tasks end


# --- the contract and the policy --------------------------------------------------------

def config_with(tmp_path: Path, **doc: object) -> WorkerConfig:
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump({"working_dir": str(tmp_path / "work"), "images": {"allowed": ["farmhand-test/*"]}, **doc}))
    return load_config(path, environ={})


def test_the_policy_decides_whether_tasks_may_ask(tmp_path):
    def make_config(**doc: object) -> WorkerConfig:
        return config_with(tmp_path, **doc)

    task = parse_task({"image": "farmhand-test/busybox:latest", "max_run_time": 60, "loopback_devices": {"video": True, "audio": True}})
    assert task.loopback_devices == (VIDEO, AUDIO)
    with pytest.raises(PolicyDenied) as exc:
        policy_check(make_config(), task)
    assert exc.value.errors == [
        "task.loopback_devices.video: loopback devices are not allowed on this worker (allow.loopback_devices)",
        "task.loopback_devices.audio: loopback devices are not allowed on this worker (allow.loopback_devices)",
    ]
    policy_check(make_config(allow={"loopback_devices": True}), task)
    plain = parse_task({"image": "farmhand-test/busybox:latest", "max_run_time": 60, "loopback_devices": {"video": False}})
    assert plain.loopback_devices == ()
    policy_check(make_config(), plain)


def test_check_lists_the_pool_and_advises_concurrency(tmp_path, host, lock_dir):
    from farmhand.check import _loopback_devices

    cfg = config_with(tmp_path, allow={"loopback_devices": True}, worker={"concurrency": 4}, loopback_devices={"lock_dir": str(lock_dir)})
    new_pool(host, lock_dir).try_acquire(task_dir(tmp_path, "a"), [VIDEO])
    name, ok, detail = _loopback_devices(cfg, *host)
    assert ok and name == "loopback devices"
    assert detail.startswith("2 video, 2 audio: video2 (/dev/video2): held by ")
    assert "card10 (/dev/snd/controlC10, /dev/snd/pcmC10D0c" in detail
    assert "CONCURRENCY is 4: at most 2 tasks" in detail and "set CONCURRENCY to 2" in detail
    fits = config_with(tmp_path, allow={"loopback_devices": True}, worker={"concurrency": 2}, loopback_devices={"lock_dir": str(lock_dir)})
    assert "CONCURRENCY" not in _loopback_devices(fits, *host)[2]
    empty = _loopback_devices(cfg, tmp_path / "nosys", tmp_path / "noproc")
    assert not empty[1] and "has none" in empty[2]
    off = config_with(tmp_path, loopback_devices={"lock_dir": str(lock_dir)})
    assert _loopback_devices(off, *host)[1]
