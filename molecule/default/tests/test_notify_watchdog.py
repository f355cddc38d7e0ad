"""farmhand.service under systemd's notify protocol and watchdog (molecule default scenario).

The unit is Type=notify: `systemctl restart` returns only once the worker has
said READY=1, which it says when it consumes its queues (the same datagram
carries its STATUS=). Its consumer loop feeds WatchdogSec=; a worker whose
main process stops (SIGSTOP: as hung as a process gets) is killed by the
watchdog and started again by Restart=always, and the new process takes the
node's tasks back as after kill -9 (the integration suite proves that part).
"""

import time


def show(host, *props):
    out = host.check_output("systemctl show farmhand " + " ".join(f"-p {p}" for p in props))
    return dict(line.split("=", 1) for line in out.splitlines())


def wait_for(predicate, timeout, what):
    """Poll a condition (never a fixed sleep): systemd acts on its own timers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def test_the_unit_is_type_notify_with_a_watchdog(host):
    props = show(host, "Type", "NotifyAccess", "WatchdogUSec", "Restart")
    assert props["Type"] == "notify"
    assert props["NotifyAccess"] == "main"
    assert props["WatchdogUSec"] not in ("0", "infinity", "")
    assert props["Restart"] == "always"


def test_the_unit_is_active_only_once_the_worker_said_ready(host):
    # With Type=notify the restart job ends when READY=1 arrives; the STATUS= sent with it is then already there.
    host.check_output("systemctl restart farmhand")
    props = show(host, "ActiveState", "SubState", "StatusText", "MainPID")
    assert (props["ActiveState"], props["SubState"]) == ("active", "running")
    assert props["StatusText"].startswith("consuming "), props
    # The worker logged its own readiness before it told systemd.
    journal = host.check_output(f"journalctl --no-pager -o cat _PID={props['MainPID']}")
    assert " ready." in journal


def test_a_stopped_worker_is_killed_by_the_watchdog_and_restarted(host):
    before = show(host, "MainPID", "NRestarts")
    assert int(before["MainPID"]) > 0
    host.check_output(f"kill -STOP {before['MainPID']}")
    try:
        after = wait_for(
            lambda: (p := show(host, "MainPID", "NRestarts", "ActiveState", "StatusText"))
            and p["ActiveState"] == "active"
            and p["MainPID"] not in ("0", before["MainPID"])
            and p["StatusText"].startswith("consuming ")
            and p,
            180,
            "the watchdog to kill the stopped worker and systemd to start a new one",
        )
    finally:
        host.run(f"kill -CONT {before['MainPID']}")  # only if the watchdog did not act: let the test fail cleanly
    assert int(after["NRestarts"]) > int(before["NRestarts"])
    journal = host.check_output("journalctl --no-pager -u farmhand -o cat --since '-5min'")
    assert "Watchdog timeout" in journal, journal[-2000:]
