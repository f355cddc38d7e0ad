"""Task networks reach neither the host nor link-local (cloud metadata) addresses: `farmhand firewall`.

Real iptables, real dockerd, real tasks. Nothing leaves the machine: the host
listener is this process; the "metadata service" answers at 169.254.169.254
inside a network namespace made here, behind a veth pair and a /32 route that
the test checks before any container sends a packet.

Each probe is also made from a container on a plain Docker network (no
farmhand bridge), which must get through: what stops a task is the rule, not
a listener that never answered. The rules are removed at the end (as
`farmhand firewall remove` does), so other tests see the host as it was.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import Iterator

import docker
import pytest

from farmhand.engine import Engine
from farmhand.network_pool import BRIDGE_OPTION, BRIDGE_PREFIX, POOL_LABEL, NetworkPool
from support import BUSYBOX, busybox_task, free_port, read_log, wait_for_port, web_service

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("iptables") or not shutil.which("ip"),
    reason="needs root, iptables and ip (iproute2)",
)

HOST_BANNER = "farmhand-host-listener"
METADATA_BANNER = "farmhand-fake-metadata"
METADATA = "169.254.169.254"


def farmhand(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "farmhand", *args], capture_output=True, text=True, timeout=120)


def sh(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


def iptables_state() -> list[str]:
    """farmhand's rules, v4 and v6, as iptables lists them (dockerd's own rules come and go with other tests' networks)."""
    listing = sh("iptables", "-w", "-S") + (sh("ip6tables", "-w", "-S") if shutil.which("ip6tables") else "")
    return [line for line in listing.splitlines() if "farmhand" in line.lower()]


def _farmhand_chains_present() -> bool:
    return "FARMHAND-" in sh("iptables", "-w", "-S")


@pytest.fixture
def firewall_owned_by_test(tmp_path: Path) -> Iterator[Path]:
    """The host without farmhand's rules before and after; yields the config path to run the commands with."""
    if _farmhand_chains_present():
        pytest.skip("this host's farmhand firewall is in place: the test would take it away")
    cfg = tmp_path / "firewall-config.yml"
    cfg.write_text(f"working_dir: {tmp_path / 'work'}\n")
    try:
        yield cfg
    finally:
        removed = farmhand("firewall", "remove")
        assert removed.returncode == 0, removed.stderr
        assert not _farmhand_chains_present()


class BannerServer:
    """Accepts on (address, port) and writes one line to each connection."""

    def __init__(self, address: str, port: int, banner: str) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((address, port))
        self.sock.listen(16)
        self.banner = banner.encode() + b"\n"
        self.accepted = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            with conn:
                conn.sendall(self.banner)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def host_listener() -> Iterator[int]:
    """A service of the host's own, on every address (as sshd or a broker listens): yields its port."""
    port = free_port()
    server = BannerServer("0.0.0.0", port, HOST_BANNER)
    try:
        wait_for_port(port)
        yield port
    finally:
        server.close()


METADATA_SERVER = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(16)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    c.sendall(sys.argv[3].encode() + b"\\n")
    c.close()
"""


@pytest.fixture
def metadata_service() -> Iterator[int]:
    """169.254.169.254:PORT answered inside a namespace of the test's own; yields PORT.

    The host reaches it through a veth pair (host end 169.254.169.1/32) and a
    /32 route, as it would reach a cloud's metadata service through its uplink.
    """
    tag = uuid.uuid4().hex[:6]
    ns, host_end, ns_end = f"fhtest-meta-{tag}", f"fhtm{tag}h", f"fhtm{tag}n"
    port = free_port()
    proc = None
    sh("ip", "netns", "add", ns)
    try:
        sh("ip", "link", "add", host_end, "type", "veth", "peer", "name", ns_end)
        sh("ip", "link", "set", ns_end, "netns", ns)
        sh("ip", "addr", "add", "169.254.169.1/32", "dev", host_end)
        sh("ip", "link", "set", host_end, "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", ns, "addr", "add", f"{METADATA}/32", "dev", ns_end)
        sh("ip", "-n", ns, "link", "set", ns_end, "up")
        sh("ip", "-n", ns, "route", "add", "169.254.169.1/32", "dev", ns_end)
        sh("ip", "-n", ns, "route", "add", "default", "via", "169.254.169.1", "dev", ns_end)
        # `add`, never `replace`: if anything else routes this address, fail here rather than take it over.
        sh("ip", "route", "add", f"{METADATA}/32", "dev", host_end)
        route = sh("ip", "route", "get", METADATA)
        assert f"dev {host_end}" in route, f"{METADATA} must go to the test's namespace, not off the machine: {route}"
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-c", METADATA_SERVER, METADATA, str(port), METADATA_BANNER],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        yield port
    finally:
        if proc is not None:
            proc.kill()
            proc.wait(10)
        subprocess.run(["ip", "route", "del", f"{METADATA}/32", "dev", host_end], capture_output=True)
        subprocess.run(["ip", "link", "del", host_end], capture_output=True)  # takes its peer along
        sh("ip", "netns", "del", ns)


def host_address() -> str | None:
    """One of the host's own global IPv4 addresses outside Docker's bridges and the test's veth."""
    for line in sh("ip", "-4", "-o", "addr", "show", "scope", "global").splitlines():
        fields = line.split()
        ifname, addr = fields[1], fields[3].split("/")[0]
        if not ifname.startswith(("docker", "br-", BRIDGE_PREFIX, "veth", "fhtm")):
            return addr
    return None


def probe_script(host_port: int, metadata_port: int) -> str:
    """Tries the host through the network's gateway and its own address, then the metadata service."""
    targets = [("gateway", "$gw", host_port), ("metadata", METADATA, metadata_port)]
    addr = host_address()
    if addr:
        targets.append(("hostaddr", addr, host_port))
    lines = ["gw=$(ip route | awk '/^default/ {print $3}')"]
    for name, target, port in targets:
        lines.append(f'echo "{name}=[$(nc -w 5 {target} {port} </dev/null 2>&1)]"')
    return "\n".join(lines)


def probe_line(output: str, name: str) -> str:
    return next(line for line in output.splitlines() if f"{name}=[" in line)  # a task's log lines start with a timestamp


def reached(output: str, name: str) -> bool:
    line = probe_line(output, name)
    return HOST_BANNER in line or METADATA_BANNER in line


def probe_from_plain_network(client: docker.DockerClient, script: str) -> str:
    """The same probes from a container on an ordinary Docker bridge network (no farmhand bridge name)."""
    net = client.networks.create(f"fhtest-plain-{uuid.uuid4().hex[:8]}", driver="bridge")
    try:
        out = client.containers.run(BUSYBOX, ["sh", "-c", script], network=net.name, remove=True)
        return out.decode()
    finally:
        net.remove()


def test_a_task_reaches_neither_the_host_nor_metadata_but_its_services(
    client, config, firewall_owned_by_test, host_listener, metadata_service
):
    applied = farmhand("--config", str(firewall_owned_by_test), "firewall", "apply")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    script = probe_script(host_listener, metadata_service)

    control = probe_from_plain_network(client, script)
    for name in ("gateway", "metadata") + (("hostaddr",) if host_address() else ()):
        assert reached(control, name), f"{name}: a container off farmhand's bridges must get through:\n{control}"

    task = busybox_task(script + "\nwget -q -O- http://web:8080/", services=[web_service("echo service-$(hostname)")])
    result = Engine(config, client).run(task)
    assert result.state == "succeeded", result.message
    log = read_log(result.log.location).decode()
    for name in ("gateway", "metadata") + (("hostaddr",) if host_address() else ()):
        assert not reached(log, name), f"{name}: the task got through:\n{log}"
        assert "refused" in probe_line(log, name), f"{name}: refused at once (a reset), not left to time out:\n{log}"
    assert log.strip().endswith("service-web"), f"the task's service (by name, through 127.0.0.11) must answer:\n{log}"


def test_apply_is_idempotent_check_reports_and_remove_undoes(firewall_owned_by_test):
    cfg = str(firewall_owned_by_test)
    before = iptables_state()
    missing = farmhand("--config", cfg, "firewall", "check")
    assert missing.returncode == 3 and "missing" in missing.stdout, missing.stdout + missing.stderr

    first = farmhand("--config", cfg, "firewall", "apply")
    assert first.returncode == 0 and "changed:" in first.stdout and "unchanged" not in first.stdout, first.stdout + first.stderr
    after_first = iptables_state()
    assert f"-A INPUT -i {BRIDGE_PREFIX}+ -m comment --comment farmhand -j FARMHAND-INPUT" in after_first
    assert f"-A DOCKER-USER -i {BRIDGE_PREFIX}+ -m comment --comment farmhand -j FARMHAND-FORWARD" in after_first
    second = farmhand("--config", cfg, "firewall", "apply")
    assert second.returncode == 0 and "unchanged" in second.stdout, second.stdout + second.stderr
    assert iptables_state() == after_first, "a second apply adds nothing"

    ok = farmhand("--config", cfg, "firewall", "check")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    host_check = farmhand("--config", cfg, "check")
    assert any(line.startswith("ok   firewall:") for line in host_check.stdout.splitlines()), host_check.stdout

    # A rule deleted by hand (or a firewall reload) is noticed, and apply puts it back.
    sh("iptables", "-w", "-D", "FARMHAND-FORWARD", "-d", "169.254.0.0/16", "-m", "comment", "--comment", "farmhand", "-j", "FARMHAND-REJECT")
    broken = farmhand("--config", cfg, "check")
    assert any(line.startswith("FAIL firewall:") for line in broken.stdout.splitlines()), broken.stdout
    assert farmhand("--config", cfg, "firewall", "apply").returncode == 0
    assert iptables_state() == after_first

    for _ in range(2):
        removed = farmhand("firewall", "remove")
        assert removed.returncode == 0, removed.stderr
        assert iptables_state() == before == []


def test_the_pool_hands_out_only_networks_on_a_farmhand_bridge(client):
    owner = f"test-{uuid.uuid4().hex[:8]}"
    pool = NetworkPool(client, owner, keep=2)
    try:
        name = pool.acquire()
        bridge = client.api.inspect_network(name)["Options"][BRIDGE_OPTION]
        assert bridge.startswith(BRIDGE_PREFIX) and len(bridge) <= 15
        assert f"{bridge}:" in sh("ip", "-o", "link", "show", bridge), "dockerd made the interface the rules match"
        # A network an older worker created (dockerd's br-* name) goes back idle, and is never handed out.
        legacy = client.networks.create(f"farmhand-net-{uuid.uuid4().hex[:12]}", driver="bridge", labels={POOL_LABEL: owner}).name
        assert pool.release(name) == [] and pool.release(legacy) == []
        handed = {pool.acquire(), pool.acquire()}
        assert legacy not in handed
        assert legacy not in {n["Name"] for n in client.api.networks(filters={"label": f"{POOL_LABEL}={owner}"})}
        for n in handed:
            assert pool.release(n) == []
    finally:
        pool.close()
        for net in client.api.networks(filters={"label": f"{POOL_LABEL}={owner}"}):
            client.api.remove_network(net["Id"])
