"""A task through the running farmhand.service, end to end (molecule vm scenario).

Not a worker of the test's own: the service site.yml installed (after the
stop/start of test_reboot_wiped_disks.py when that runs, since pytest takes the
modules in name order), its embedded broker, its policy and its SFTP
warehouse (prepare.yml: an sshd of its own on 127.0.0.1:2222, key-only, its
host key pinned in the role's known_hosts). The task is submitted as the
service's user, its result read back, and its artifact and log found in the
warehouse with what the container wrote: the raised limits included.
"""

import json
import re
import shlex
import uuid
from pathlib import Path

FARMHAND = "/opt/farmhand/venv/bin/farmhand"
PYTHON = "/opt/farmhand/venv/bin/python"
AS_WORKER = "runuser -u farmhand -g farmhand -- "
IMAGE = "farmhand-molecule/service-task:1"
#: A new id each run: the service returns a stored result unchanged for an id it already ran.
TASK_ID = f"service-{uuid.uuid4().hex[:12]}"
WAREHOUSE = "/srv/warehouse"

#: Run in the VM, which has no registry: the task's image is made there from its own dash.
DASH_IMAGE = (Path(__file__).resolve().parents[3] / "scripts" / "dash-image.sh").read_text()

TASK = {
    "task_id": TASK_ID,
    "image": IMAGE,
    "pull": "never",
    "network": "none",
    "max_run_time": 600,
    "command": ["/usr/bin/dash", "-c", "echo limits nofile=$(ulimit -n) stack=$(ulimit -s); echo made by the service > /tmp/hello.txt"],
    "artifacts": [{"path": "/tmp/hello.txt", "name": "hello.txt"}],
}


def zstd_text(host, path: str) -> str:
    return host.check_output(
        f"{PYTHON} -c 'import sys, zstandard; "
        f"sys.stdout.write(zstandard.ZstdDecompressor().decompressobj().decompress(open(sys.argv[1], \"rb\").read()).decode())' {path}"
    )


def test_a_task_submitted_to_the_service_runs_and_lands_in_the_warehouse(host):
    assert host.service("farmhand").is_running and host.service("warehouse-sshd").is_running
    host.check_output(f"sh -c {shlex.quote(DASH_IMAGE)} dash-image {IMAGE}")
    host.check_output(f"rm -rf {WAREHOUSE}/{TASK_ID}")
    task_file = "/run/farmhand-service-task.json"
    host.check_output(f"printf %s {shlex.quote(json.dumps(TASK))} > {task_file} && chmod 0644 {task_file}")

    out = host.run(f"{AS_WORKER}{FARMHAND} --config /etc/farmhand/config.yml submit --wait --timeout 900 --json {task_file}")
    assert out.rc == 0, out.stdout + out.stderr
    result = json.loads(out.stdout)  # --wait --json: the result document itself
    assert result["state"] == "succeeded", result

    # The artifact, in the warehouse, as the container wrote it.
    (artifact,) = result["artifacts"]
    assert artifact["location"].startswith(f"sftp://warehouse@127.0.0.1:2222{WAREHOUSE}/{TASK_ID}/"), artifact
    stored = artifact["location"].split(":2222", 1)[1]
    assert host.file(stored).content_string == "made by the service\n"
    assert host.file(stored).user == "warehouse"

    # The log too, and in it the limits the task's container got from the service's host.
    log = result["log"]["location"]
    assert log.startswith(f"sftp://warehouse@127.0.0.1:2222{WAREHOUSE}/{TASK_ID}/"), log
    found = re.search(r"limits nofile=(\S+) stack=(\S+)", zstd_text(host, log.split(":2222", 1)[1]))
    assert found and found.groups() == ("1048576", "unlimited"), found

    # The service, not a worker of the test's own, ran it: its journal says so.
    journal = host.check_output("journalctl -u farmhand -o cat --no-pager -b")
    assert TASK_ID in journal
