"""A task end to end in a real container: outcomes of the run stage and their reasons."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from urllib.parse import urlsplit

from farmhand.resources import HostCapacity
from support import BUSYBOX, Recorder, busybox_task, read_decompressed, read_log


def _path(uri: str) -> Path:
    return Path(urlsplit(uri).path)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_success_with_file_and_directory_artifacts(run_task, workdir):
    rec = Recorder()
    result = run_task(
        busybox_task(
            "echo out-line; echo err-line >&2; mkdir -p /out/tree/sub; printf 'answer 42' > /out/a.txt;"
            "printf one > /out/tree/1.txt; printf two > /out/tree/sub/2.txt; echo id=$FARMHAND_TASK_ID",
            task_id="ok-1",
            artifacts=[
                {"path": "/out/a.txt", "name": "a.txt"},
                {"path": "/out/tree", "name": "tree", "type": "directory"},
            ],
            labels={"team": "zim"},
        ),
        reporter=rec,
    )
    doc = result.to_dict()
    assert (doc["state"], doc["reason"], doc["exit_code"]) == ("succeeded", None, 0), doc["message"]
    assert doc["labels"] == {"team": "zim"}
    assert list(doc["stages"]) == ["prepare", "run", "collect", "cleanup", "upload"]
    assert all(s["outcome"] == "ok" and s["duration"] >= 0 for s in doc["stages"].values())
    assert [e for e in rec.events if e[0] != "progress"][:2] == [("start", "prepare"), ("end", "prepare", "ok")]

    a, tree = doc["artifacts"]
    uploaded = _path(a["location"])
    assert uploaded.read_bytes() == b"answer 42"
    assert a["sha256"] == _sha(uploaded) == hashlib.sha256(b"answer 42").hexdigest()
    assert a["size"] == 9
    tree_root = _path(tree["location"])
    files = {f["path"]: f for f in tree["files"]}
    assert set(files) == {"1.txt", "sub/2.txt"}
    for rel, entry in files.items():
        assert _sha(tree_root / rel) == entry["sha256"]
    manifest = "".join(f"{files[p]['sha256']}  {p}\n" for p in sorted(files))
    assert tree["sha256"] == hashlib.sha256(manifest.encode()).hexdigest()
    assert tree["size"] == 6

    log = read_log(doc["log"]["location"]).decode()
    assert "out-line" in log and "err-line" in log and "id=ok-1" in log
    assert log.splitlines()[0][:4].isdigit(), "each line is timestamped"
    assert doc["log"]["sha256"] == hashlib.sha256(read_log(doc["log"]["location"])).hexdigest()
    assert doc["log"]["compressed_sha256"] == _sha(_path(doc["log"]["location"]))
    assert doc["log"]["truncated"] is False

    ws = workdir / "tasks" / "ok-1"
    assert json.loads((ws / "result.json").read_text())["state"] == "succeeded"
    assert not (ws / "task.log").exists() and not (ws / "artifacts").exists(), "local copies go once the upload is confirmed"
    assert not (ws / "task.log.zst").exists()


def test_nonzero_exit_fails_and_keeps_the_log(run_task):
    result = run_task(busybox_task("echo about to fail; exit 3"))
    assert (result.state, result.reason, result.exit_code) == ("failed", "nonzero-exit", 3)
    assert "about to fail" in read_log(result.log.location).decode()


def test_max_run_time_stops_the_task(run_task):
    result = run_task(busybox_task("echo started; sleep 300", max_run_time=2))
    assert (result.state, result.reason) == ("failed", "max-run-time")
    assert result.stages["run"]["duration"] < 15
    assert "started" in read_log(result.log.location).decode()


def test_idle_timeout_stops_a_silent_task_but_not_a_chatty_one(run_task):
    silent = run_task(busybox_task("echo hello; sleep 300", idle_timeout=2))
    assert (silent.state, silent.reason) == ("failed", "idle-timeout")
    assert silent.stages["run"]["duration"] < 15
    chatty = run_task(busybox_task("for i in 1 2 3 4 5 6 7 8; do echo tick $i; sleep 0.5; done", idle_timeout=2))
    assert (chatty.state, chatty.reason) == ("succeeded", None)


def test_memory_limit_gives_oom_killed(run_task):
    result = run_task(busybox_task("dd if=/dev/zero of=/dev/null bs=256M count=1", resources={"memory": "32m"}))
    assert (result.state, result.reason) == ("failed", "oom-killed")


def test_fork_bomb_is_held_by_the_pids_limit(run_task, client):
    result = run_task(busybox_task("bomb() { bomb | bomb & }; bomb; sleep 10", max_run_time=6, resources={"pids": 40}))
    assert result.state == "failed"
    assert result.reason in ("max-run-time", "nonzero-exit")
    if result.usage["samples"]:
        assert result.usage["peak_pids"] <= 40
    assert "can't fork" in read_log(result.log.location).decode()
    # The host is still able to start containers.
    assert client.containers.run("farmhand-test/busybox:latest", ["true"], remove=True) == b""


def test_retry_on_exit_codes_means_intermittent(run_task):
    result = run_task(busybox_task("exit 75", retry_on_exit_codes=[75, 76]))
    assert (result.state, result.reason, result.exit_code) == ("exception", "intermittent", 75)


def test_secret_values_are_masked_and_never_stored(run_task, workdir):
    secret = "hunter2-XYZZY-0123456789"
    result = run_task(
        busybox_task(
            # Printed whole, then in two writes, then on stderr.
            'echo "token=$API_TOKEN"; printf "%s" "${API_TOKEN%%-*}"; sleep 0.2; printf "%s\\n" "-${API_TOKEN#*-}"; echo "$API_TOKEN" >&2; echo "user=$USER_NAME"',
            task_id="secret-1",
            env={"API_TOKEN": secret, "USER_NAME": "visible-user"},
            secret_env=["API_TOKEN"],
        )
    )
    assert result.state == "succeeded", result.message
    log = read_log(result.log.location).decode()
    assert secret not in log and "hunter2" not in log
    assert "token=***" in log and "user=visible-user" in log
    stored_files = [p for p in (workdir / "tasks" / "secret-1").rglob("*") if p.is_file()]
    assert stored_files, "the task's workspace keeps its log and result"
    for stored in stored_files:
        assert secret.encode() not in read_decompressed(stored), stored
    assert secret not in json.dumps(result.to_dict())


def test_hardening_no_new_privileges_and_reduced_capabilities(run_task):
    result = run_task(busybox_task("grep -E '^(NoNewPrivs|CapEff)' /proc/self/status; ping -c1 -W1 127.0.0.1 && echo PING-OK || echo PING-DENIED"))
    assert result.state == "succeeded", result.message
    log = read_log(result.log.location).decode()
    assert "NoNewPrivs:\t1" in log
    cap_eff = int(log.split("CapEff:\t")[1].split()[0], 16)
    assert not cap_eff & (1 << 13), "CAP_NET_RAW must be dropped"
    assert not cap_eff & (1 << 21), "CAP_SYS_ADMIN must be dropped"
    assert "PING-DENIED" in log


def test_network_none_has_only_loopback(run_task):
    # Only lo, and lo works: a server on 127.0.0.1 answers a client that names it "localhost".
    result = run_task(
        busybox_task(
            "ls /sys/class/net; mkdir /tmp/www; echo served-here > /tmp/www/index.html;"
            "httpd -p 127.0.0.1:8080 -h /tmp/www && wget -q -O- http://localhost:8080/",
            network="none",
        )
    )
    assert result.state == "succeeded", result.message
    lines = read_log(result.log.location).decode().splitlines()
    assert [line.split(" ", 1)[1] for line in lines] == ["lo", "served-here"]


def test_limits_reach_the_container(run_task):
    result = run_task(
        busybox_task(
            "ulimit -n; ulimit -s; df -k /dev/shm | tail -1",
            resources={"ulimits": {"nofile": {"soft": 2048, "hard": 4096}, "stack": 16384}, "shm_size": "16m"},
        )
    )
    assert result.state == "succeeded", result.message
    lines = [line.split(" ", 1)[1] for line in read_log(result.log.location).decode().splitlines()]
    assert lines[0] == "2048"
    assert lines[1] == "16"  # ulimit -s reports KiB: 16384 bytes
    assert " 16384 " in lines[2]


def test_a_task_that_names_no_memory_is_held_to_the_default_share(run_task):
    # The shipped default: half of the host's memory, so no task can take all of it.
    result = run_task(busybox_task("cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes"))
    assert result.state == "succeeded", result.message
    limit = int(read_log(result.log.location).decode().splitlines()[0].split(" ", 1)[1])
    page = os.sysconf("SC_PAGE_SIZE")
    assert HostCapacity.measure().memory // 2 - page < limit <= HostCapacity.measure().memory // 2


def test_log_is_capped_and_truncation_marked(run_task, make_config):
    cfg = make_config(logs={"max_bytes": "64k"})
    result = run_task(busybox_task("yes 0123456789abcdef0123456789abcdef | head -c 2000000; echo; echo done"), cfg)
    assert result.state == "succeeded", result.message
    assert result.log.truncated is True
    assert result.log.dropped_bytes > 1_000_000
    data = read_log(result.log.location)
    assert len(data) <= 64 * 1024 + 200
    assert b"[farmhand] log truncated" in data
    assert result.log.size == len(data)


def test_a_command_that_cannot_start_fails_the_task(run_task):
    result = run_task(busybox_task("unused", command=["/no/such/binary"]))
    assert (result.state, result.reason) == ("failed", "start-failed")
    assert "/no/such/binary" in result.message
    other = run_task(busybox_task("id", user="nosuchuser"))
    assert (other.state, other.reason) == ("failed", "start-failed")
    assert "nosuchuser" in other.message


def test_output_of_fast_exiting_tasks_is_captured_to_the_last_byte(client):
    """Docker 20.10 can end a follow stream before the log's end when the container exits; nothing may be lost."""
    from farmhand.docker_logs import OutputStream

    for _ in range(15):
        container = client.containers.create(BUSYBOX, ["sh", "-c", "yes 0123456789abcdef0123456789abcdef | head -c 2000000; echo; echo last-line"])
        try:
            container.start()
            captured = b"".join(OutputStream(client, container.id))
            container.wait()
            assert captured == container.logs(timestamps=True)
            assert captured.endswith(b" last-line\n")
        finally:
            container.remove(force=True)


def test_a_child_killed_for_memory_does_not_fail_a_command_that_recovers(run_task):
    result = run_task(busybox_task("dd if=/dev/zero of=/dev/null bs=256M count=1 || echo recovered", resources={"memory": "32m"}))
    assert (result.state, result.reason) == ("succeeded", None)
    assert any("lack of memory" in w for w in result.warnings)
    assert "recovered" in read_log(result.log.location).decode()


# -- secrets across lines and Docker's 16 KiB split; a re-adopted log whose head Docker rotated away --

_PEM = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\n"
    "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\n"
    "QyNTUxOQAAACD7rX2kJ1vA7cF0sB8dQk1pN3mQ9xZyWvUu2sT4aLhKcQAAAJgAAAAAAAAA\n"
    "-----END OPENSSH PRIVATE KEY-----"
)
_JSON_CREDENTIAL = '{\n  "type": "service_account",\n  "private_key_id": "5f1c0ffee0ddba11",\n  "client_secret": "qX9-zz81-PLUGH"\n}'
_LONG_TOKEN = "".join(f"{i:05d}-long-token-" for i in range(1600))  # 25.6 kB, no newline: Docker splits it at 16 KiB


def test_multi_line_and_long_secrets_are_masked_as_the_task_printed_them(run_task, workdir):
    result = run_task(
        busybox_task(
            'echo "pem: $PEM_KEY"; echo "json: $JSON_CRED"; printf "long: %s end\\n" "$LONG_TOKEN"; echo after',
            task_id="secret-lines",
            env={"PEM_KEY": _PEM, "JSON_CRED": _JSON_CREDENTIAL, "LONG_TOKEN": _LONG_TOKEN},
            secret_env=["PEM_KEY", "JSON_CRED", "LONG_TOKEN"],
        )
    )
    assert result.state == "succeeded", result.message
    log = read_log(result.log.location).decode()
    for secret in (_PEM, _JSON_CREDENTIAL, _LONG_TOKEN):
        for line in secret.splitlines()[1:-1] or [secret[:32], secret[-32:]]:
            assert line not in log, line
    assert "b3BlbnNzaC1" not in log and "qX9-zz81-PLUGH" not in log
    assert "00000-long-token" not in log and "01599-long-token" not in log
    lines = log.splitlines()
    assert [line.split(" ", 1)[1] for line in lines] == ["pem: ***", "json: ***", "long: *** end", "after"]
    assert all(line[:4].isdigit() and line[29:31] == "Z " for line in lines), "each line is timestamped"
    for stored in (p for p in (workdir / "tasks" / "secret-lines").rglob("*") if p.is_file()):
        assert _LONG_TOKEN[:64].encode() not in read_decompressed(stored), stored


def _wait_for(condition, timeout: float = 60.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def _adopt(client, make_config, container, log_path: Path):
    from farmhand.container_run import adopt_container
    from farmhand.task import parse_task

    task = parse_task(busybox_task("unused"), task_id="adopted-1")
    said: list[str] = []
    outcome = adopt_container(client, make_config(), task, container, log_path, said.append)
    return outcome, said


def _rotating_container(client, script: str):
    from docker.types import LogConfig

    return client.containers.run(
        BUSYBOX, ["sh", "-c", script], detach=True, log_config=LogConfig(type="json-file", config={"max-size": "1k", "max-file": "2"})
    )


_CHATTY = 'echo first; until [ -e /tmp/go ]; do sleep 0.05; done; i=0; while [ $i -lt 200 ]; do echo "line-$i-padding-padding-padding"; i=$((i+1)); done; echo last'


def test_a_re_adopted_log_whose_head_docker_rotated_away_is_incomplete(client, make_config, tmp_path):
    container = _rotating_container(client, _CHATTY)
    try:
        container.exec_run(["touch", "/tmp/go"])
        container.wait(timeout=60)
        assert b"first" not in container.logs(), "Docker has rotated the head away"
        log_path = tmp_path / "task.log"
        outcome, said = _adopt(client, make_config, container, log_path)
        assert outcome.exit_code == 0
        assert outcome.log.complete is False
        assert outcome.log.warnings and "rotated" in outcome.log.warnings[0]
        assert any("rotated" in message for message in said)
        data = log_path.read_bytes()
        assert data.startswith(b"[farmhand] ") and b"rotated" in data.splitlines()[0]
        assert data.endswith(b" last\n") and outcome.log.size == len(data)
    finally:
        container.remove(force=True)


def test_a_re_adopted_log_that_starts_later_than_the_earlier_worker_s_is_incomplete(client, make_config, tmp_path):
    """The earlier worker's log (left in the workspace) shows where the output began: the exact check."""
    container = _rotating_container(client, _CHATTY)
    try:
        _wait_for(lambda: b"first" in container.logs())
        log_path = tmp_path / "task.log"
        log_path.write_bytes(container.logs(timestamps=True))  # what the earlier worker had read
        container.exec_run(["touch", "/tmp/go"])
        container.wait(timeout=60)
        outcome, _ = _adopt(client, make_config, container, log_path)
        assert outcome.log.complete is False
        assert outcome.log.warnings[0].startswith("Docker rotated the head of this task's log away"), "the exact check, not a maybe"
        assert b" first\n" not in log_path.read_bytes()
    finally:
        container.remove(force=True)


def test_a_re_adopted_log_with_its_head_still_there_is_complete(client, make_config, tmp_path):
    # Rotated once (a second file exists), but the head is still in it: the earlier worker's log proves it.
    container = _rotating_container(client, 'echo first; until [ -e /tmp/go ]; do sleep 0.05; done; i=0; while [ $i -lt 12 ]; do echo "line-$i-padding-padding-padding"; i=$((i+1)); done; echo last')
    try:
        _wait_for(lambda: b"first" in container.logs())
        log_path = tmp_path / "task.log"
        log_path.write_bytes(container.logs(timestamps=True))
        container.exec_run(["touch", "/tmp/go"])
        container.wait(timeout=60)
        assert container.logs().startswith(b"first\n")
        assert Path(client.api.inspect_container(container.id)["LogPath"] + ".1").exists(), "Docker has rotated once"
        outcome, said = _adopt(client, make_config, container, log_path)
        assert outcome.log.complete is True and outcome.log.warnings == []
        assert log_path.read_bytes() == container.logs(timestamps=True)
        assert not any("rotated" in message for message in said)
    finally:
        container.remove(force=True)
    # And without an earlier log, a container whose log never rotated is complete too.
    quiet = client.containers.run(BUSYBOX, ["sh", "-c", "echo only line"], detach=True)
    try:
        quiet.wait(timeout=60)
        log_path = tmp_path / "quiet.log"
        outcome, _ = _adopt(client, make_config, quiet, log_path)
        assert outcome.log.complete is True
        assert log_path.read_bytes() == quiet.logs(timestamps=True)
    finally:
        quiet.remove(force=True)
