"""The raised limits reach task containers, not only the daemons (molecule default scenario).

A task container's processes are children of a containerd shim, so they
inherit containerd.service's limits; dockerd's are never consulted. The docker
role therefore overrides both units, and this test runs a real task through
`farmhand run-task` (the worker's own container options, no ulimits asked for)
and reads `ulimit -n` and `ulimit -s` inside it.

No image can be pulled: the task image is made here from this host's own dash
and the libraries `ldd` names (`docker import`).
"""

import json
import re

import pytest

VENV = "/opt/farmhand/venv"
IMAGE = "farmhand-molecule/limits-probe:latest"
WORK = "/var/tmp/farmhand-limits-test"
# What the scenario converges with: docker_limit_nofile's default, and a
# docker_limit_stack (16M) that is not the manager's default (infinity), so
# only containerd's override can give a task this stack.
NOFILE = 1048576
STACK = 16 * 2**20


def hard_nofile(host, pid):
    (line,) = [x for x in host.file(f"/proc/{pid}/limits").content_string.splitlines() if x.startswith("Max open files")]
    return int(line.split()[4])


def limits_of(host, pid, name):
    """(soft, hard) of /proc/PID/limits line NAME, 'unlimited' kept as a string."""
    (line,) = [x for x in host.file(f"/proc/{pid}/limits").content_string.splitlines() if x.startswith(name)]
    soft, hard = re.split(r"\s{2,}", line.strip())[1:3]
    return soft, hard


@pytest.fixture(scope="module")
def task_limits(host):
    """Run one task that prints its limits; return {'nofile': ..., 'stack': ...} as the shell printed them."""
    build = f"""
        set -e
        rm -rf {WORK} && mkdir -p {WORK}/rootfs {WORK}/wd
        cd {WORK}/rootfs
        for f in /usr/bin/dash $(ldd /usr/bin/dash | grep -o '/[^ ]*'); do cp --parents -L "$f" .; done
        tar -C {WORK}/rootfs -c . | docker import -c 'CMD ["/usr/bin/dash"]' - {IMAGE} >/dev/null
    """
    host.check_output(f"bash -c {quote(build)}")
    config = {"working_dir": f"{WORK}/wd", "images": {"allowed": ["farmhand-molecule/*"]}}
    task = {
        "image": IMAGE,
        "pull": "never",
        "network": "none",
        "max_run_time": 120,
        "command": ["/usr/bin/dash", "-c", "echo limits nofile=$(ulimit -n) stack=$(ulimit -s)"],
    }
    host.check_output(f"printf %s {quote(json.dumps(config))} > {WORK}/config.yml")
    host.check_output(f"printf %s {quote(json.dumps(task))} > {WORK}/task.json")
    res = host.run(f"{VENV}/bin/farmhand --config {WORK}/config.yml run-task --json -q {WORK}/task.json")
    assert res.rc == 0, res.stdout + res.stderr
    result = json.loads(res.stdout)
    assert result["state"] == "succeeded", result
    log_path = result["log"]["location"].removeprefix("file://")
    log = host.check_output(
        f"{VENV}/bin/python -c 'import sys, zstandard; "
        f"sys.stdout.write(zstandard.ZstdDecompressor().decompressobj().decompress(open(sys.argv[1], \"rb\").read()).decode())' "
        f"{log_path}"
    )
    found = re.search(r"limits nofile=(\S+) stack=(\S+)", log)
    assert found, log
    yield {"nofile": found.group(1), "stack": found.group(2)}
    host.run(f"docker image rm -f {IMAGE}; rm -rf {WORK}")


def quote(text):
    return "'" + text.replace("'", "'\"'\"'") + "'"


@pytest.mark.parametrize("unit", ["docker", "containerd"])
def test_both_units_carry_the_limits_override(host, unit):
    dropin = f"/etc/systemd/system/{unit}.service.d/farmhand-limits.conf"
    assert host.file(dropin).is_file
    assert dropin in host.check_output(f"systemctl show -p DropInPaths --value {unit}")
    # Debian's containerd.service says LimitNOFILE=infinity: the override must win.
    assert host.check_output(f"systemctl show -p LimitNOFILE --value {unit}") == str(NOFILE)
    assert host.check_output(f"systemctl show -p LimitSTACK --value {unit}") == str(STACK)


def test_containerd_runs_with_the_limits(host):
    pid = host.check_output("systemctl show -p MainPID --value containerd")
    assert pid != "0"
    # The container cannot go above the hard limit its own PID 1 was given.
    ceiling = min(NOFILE, hard_nofile(host, 1))
    assert limits_of(host, pid, "Max open files") == (str(ceiling), str(ceiling))
    assert limits_of(host, pid, "Max stack size") == (str(STACK), str(STACK))


def test_a_task_container_gets_the_limits(host, task_limits):
    ceiling = min(NOFILE, hard_nofile(host, 1))
    assert task_limits == {"nofile": str(ceiling), "stack": str(STACK // 1024)}  # ulimit -s counts KiB
