"""``farmhand firewall``: task networks reach neither this host nor link-local (cloud metadata) addresses.

A task's bridge network is NATed to the world by dockerd, and nothing stops
its containers from opening the host's own services (sshd, the broker, a
registry, any port another container publishes) through the network's
gateway or any of the host's addresses, nor a cloud's metadata service at
169.254.169.254, which hands out the instance's credentials. These rules do.

Every task network's bridge is named ``fh-*`` (``network_pool``), so static
rules match them all, whatever networks come and go:

- ``INPUT -i fh-+ -j FARMHAND-INPUT`` (traffic to the host itself, by any of
  its addresses): replies to connections the host opened pass; so do port 53
  of the host's resolvers and the ``host[:PORT[/PROTO]]`` entries of the
  allow list; everything else is rejected.
- ``DOCKER-USER -i fh-+ -j FARMHAND-FORWARD`` (traffic the host forwards;
  ``FORWARD`` itself where dockerd manages no iptables): replies pass, and
  traffic between the task's own containers (``-o fh-+``; dockerd's
  isolation rules still keep networks apart); the host's resolvers on port
  53 and the allow list's networks pass; a connection dockerd's NAT sent to a
  port published on one of the host's addresses is rejected (allowed only
  for ``host`` entries' ports), and so is every network of the block list
  (by default link-local and the metadata addresses clouds keep elsewhere).
  The rest (the internet, the LAN) goes on to dockerd's own rules.

"Pass" is RETURN, never ACCEPT: the host's own firewall and dockerd's rules
still judge what farmhand's chains let through. A refusal goes to
``FARMHAND-REJECT``: a TCP reset for TCP (at once; the ICMP errors the kernel
sends are rate-limited to one a second, which a TCP connect waits out), ICMP
``admin-prohibited`` for the rest, so a task fails fast instead of timing out.

IPv6: dockerd gives a network IPv6 only when asked (``--ipv6``), and
farmhand's networks never ask, so containers on them run with IPv6 disabled.
ip6tables nonetheless gets the same hooks, rejecting everything the bridges
send to the host or beyond (the bridge itself has a link-local IPv6 address,
and sshd listens on ``::``). A host without IPv6 (or without ip6tables) gets
IPv4 rules only, and says so.

The host's resolvers: dockerd's embedded DNS (127.0.0.11 in every container)
forwards what it cannot answer from the container's own network namespace,
so those queries cross the bridge like any packet. Port 53 of each
nameserver dockerd uses (``/etc/resolv.conf``, systemd-resolved's upstream
file, daemon.json's ``dns``) therefore passes, even where it is link-local
(Google Cloud's resolver is its metadata server) or the host itself.

Apply is idempotent: farmhand's chains are rewritten only when they differ
(atomically, ``iptables-restore --noflush`` replaces just those chains), and
a hook is inserted only when ``iptables -C`` does not find it. Every rule
carries the comment ``farmhand``. Run as root: by the systemd unit before the
worker starts (``ExecStartPre=+``), by the Ansible role, or by hand.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

#: Every task network's bridge interface starts so (``network_pool`` names them); iptables' wildcard for all of them.
BRIDGE_PREFIX = "fh-"
INTERFACES = BRIDGE_PREFIX + "+"
COMMENT = "farmhand"
INPUT_CHAIN = "FARMHAND-INPUT"
FORWARD_CHAIN = "FARMHAND-FORWARD"
REJECT_CHAIN = "FARMHAND-REJECT"
DOCKER_USER = "DOCKER-USER"
BINARIES = {"ipv4": "iptables", "ipv6": "ip6tables"}
REJECT_WITH = {"ipv4": "icmp-admin-prohibited", "ipv6": "icmp6-adm-prohibited"}

#: What forwarded task traffic may not reach, besides the host itself (always closed but for
#: the allow list's ``host`` entries): link-local, where AWS, GCP, OpenStack, Oracle and
#: DigitalOcean serve instance metadata (and ECS its task credentials at 169.254.170.2), then
#: Azure's WireServer and Alibaba's metadata service, which live outside it.
DEFAULT_BLOCK = ("169.254.0.0/16", "168.63.129.16/32", "100.100.100.200/32")
DEFAULT_ALLOW: tuple[str, ...] = ()
#: Where dockerd finds the nameservers its embedded DNS forwards to.
RESOLV_CONF = Path("/etc/resolv.conf")
RESOLVED_UPSTREAM = Path("/run/systemd/resolve/resolv.conf")
DAEMON_JSON = Path("/etc/docker/daemon.json")
DNS_PORT = (53, 53)


class FirewallError(Exception):
    """iptables is missing or refused a command; the message says which and why."""


# --- the operator's lists -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Destination:
    """An allow entry: ``host`` (this machine, any of its addresses) or an IPv4 network, with an optional
    port or range and protocol: ``10.0.0.0/8``, ``10.0.0.5:3128/tcp``, ``host:5432/tcp``, ``host:8000-8100``."""

    host: bool
    network: ipaddress.IPv4Network | None
    proto: str | None = None
    ports: tuple[int, int] | None = None

    def __str__(self) -> str:
        text = "host" if self.host else str(self.network)
        if self.ports:
            lo, hi = self.ports
            text += f":{lo}" if lo == hi else f":{lo}-{hi}"
            if self.proto:
                text += f"/{self.proto}"
        return text

    def protocols(self) -> tuple[str | None, ...]:
        """A port without a protocol means both; no port means any protocol."""
        if self.ports and not self.proto:
            return ("tcp", "udp")
        return (self.proto,)


_PORTS = re.compile(r"(\d{1,5})(?:-(\d{1,5}))?")


def parse_destination(text: str) -> Destination:
    """One allow entry; ValueError says what is wrong with it."""
    t = text.strip()
    if not t:
        raise ValueError("an empty destination")
    if t.count(":") > 1:
        raise ValueError(f"{t!r}: IPv4 only (task networks carry no IPv6, and ip6tables rejects all of theirs)")
    target, sep, rest = t.partition(":")
    network = None
    if target != "host":
        try:
            network = ipaddress.IPv4Network(target, strict=True)
        except ValueError as exc:
            if "host bits" in str(exc):
                raise ValueError(f"{t!r}: {exc} (write the network: {ipaddress.IPv4Network(target, strict=False)})") from None
            raise ValueError(f"{t!r}: {target!r} is not an IPv4 address or network (CIDR), nor 'host'") from None
    if not sep:
        return Destination(host=network is None, network=network)
    port_text, slash, proto = rest.partition("/")
    m = _PORTS.fullmatch(port_text)
    lo, hi = (int(m.group(1)), int(m.group(2) or m.group(1))) if m else (0, 0)
    if not m or not (1 <= lo <= hi <= 65535):
        raise ValueError(f"{t!r}: the port must be 1-65535 or a range LOW-HIGH, got {port_text!r}")
    if slash and proto not in ("tcp", "udp"):
        raise ValueError(f"{t!r}: the protocol must be tcp or udp, got {proto!r}")
    return Destination(host=network is None, network=network, proto=proto or None, ports=(lo, hi))


def parse_block(text: str) -> ipaddress.IPv4Network:
    """One block entry: an IPv4 address or network."""
    d = parse_destination(text)
    if d.host or d.ports:
        raise ValueError(f"{text.strip()!r}: block takes IPv4 networks (CIDR) only; the host itself is always blocked")
    assert d.network is not None
    return d.network


@dataclass(frozen=True)
class Policy:
    allow: tuple[Destination, ...] = ()
    block: tuple[ipaddress.IPv4Network, ...] = ()
    resolvers: tuple[ipaddress.IPv4Address, ...] = ()

    def summary(self) -> str:
        blocked = ", ".join(str(n) for n in self.block) or "nothing else"
        allowed = ", ".join(str(d) for d in self.allow) or "nothing"
        resolvers = ", ".join(str(r) for r in self.resolvers) or "none"
        return f"task networks ({INTERFACES}) reach neither this host nor {blocked}; allowed: {allowed}; resolvers on port 53: {resolvers}"


def make_policy(
    allow: Iterable[str] = DEFAULT_ALLOW, block: Iterable[str] = DEFAULT_BLOCK, resolvers: Iterable[str] = ()
) -> Policy:
    """The policy from the operator's lists (ValueError naming the list and entry) and the host's resolvers."""
    parsed_allow, parsed_block = [], []
    for entry in allow:
        try:
            parsed_allow.append(parse_destination(entry))
        except ValueError as exc:
            raise ValueError(f"firewall allow: {exc}") from None
    for entry in block:
        try:
            parsed_block.append(parse_block(entry))
        except ValueError as exc:
            raise ValueError(f"firewall block: {exc}") from None
    return Policy(tuple(parsed_allow), tuple(parsed_block), tuple(ipaddress.IPv4Address(r) for r in resolvers))


def nameservers(resolv_conf: str) -> list[str]:
    """The IPv4 nameservers of a resolv.conf that dockerd's embedded DNS would forward to (not loopback)."""
    found: list[str] = []
    for line in resolv_conf.splitlines():
        fields = line.split()
        if len(fields) < 2 or fields[0] != "nameserver":
            continue
        try:
            addr = ipaddress.ip_address(fields[1])
        except ValueError:
            continue
        if addr.version == 4 and not addr.is_loopback and str(addr) not in found:
            found.append(str(addr))
    return found


def host_resolvers() -> list[str]:
    """Every nameserver dockerd may forward a task's queries to, on this host."""
    found: list[str] = []
    for path in (RESOLV_CONF, RESOLVED_UPSTREAM):
        try:
            found += nameservers(path.read_text())
        except OSError:
            pass
    try:
        daemon: Any = json.loads(DAEMON_JSON.read_text())
        found += nameservers("\n".join(f"nameserver {ns}" for ns in daemon.get("dns") or [] if isinstance(ns, str)))
    except (OSError, ValueError, AttributeError):
        pass
    return list(dict.fromkeys(found))


def policy_from_config(config: Any, allow: Sequence[str] | None = None, block: Sequence[str] | None = None) -> tuple[bool, Policy]:
    """(enabled, policy) from the worker's config section ``firewall`` (enabled, allow, block), where the
    config has one; ``allow``/``block`` given here replace the config's lists."""
    section = getattr(config, "firewall", None)
    enabled = bool(getattr(section, "enabled", True))
    allow = list(allow if allow is not None else getattr(section, "allow", DEFAULT_ALLOW))
    block = list(block if block is not None else getattr(section, "block", DEFAULT_BLOCK))
    return enabled, make_policy(allow, block, host_resolvers())


# --- the rule set: a pure function of the policy ---------------------------------------------------------------

@dataclass(frozen=True)
class Rule:
    """One rule of farmhand's chains. ``dnat``: the connection was destination-NATed on this host (a port
    published on one of its addresses); with ``proto``/``ports`` it matches the original destination port."""

    target: str  # RETURN (on to the host's and dockerd's own rules), REJECT_CHAIN, or REJECT (in REJECT_CHAIN)
    dst: ipaddress.IPv4Network | None = None
    proto: str | None = None
    ports: tuple[int, int] | None = None
    established: bool = False
    out_bridge: bool = False
    dnat: bool = False

    def argv(self, family: str) -> list[str]:
        words: list[str] = []
        ports = None if self.ports is None else str(self.ports[0]) if self.ports[0] == self.ports[1] else f"{self.ports[0]}:{self.ports[1]}"
        if self.established:
            words += ["-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED"]
        if self.out_bridge:
            words += ["-o", INTERFACES]
        if self.dnat:
            words += ["-m", "conntrack", "--ctstate", "DNAT"]
            if self.proto:
                words += ["--ctproto", self.proto]
            if ports:
                words += ["--ctorigdstport", ports]
        else:
            if self.dst is not None:
                words += ["-d", str(self.dst)]
            if self.proto:
                words += ["-p", self.proto]
            if ports:
                words += ["--dport", ports]
        words += ["-m", "comment", "--comment", COMMENT, "-j", self.target]
        if self.target == "REJECT":
            words += ["--reject-with", "tcp-reset" if self.proto == "tcp" else REJECT_WITH[family]]
        return words


def chain_rules(policy: Policy, family: str) -> dict[str, list[Rule]]:
    """farmhand's chains for ``family`` ('ipv4' or 'ipv6'), each rule in order; see the module's docstring."""
    replies = Rule("RETURN", established=True)
    refuse = {REJECT_CHAIN: [Rule("REJECT", proto="tcp"), Rule("REJECT")]}
    if family == "ipv6":
        return {INPUT_CHAIN: [replies, Rule(REJECT_CHAIN)], FORWARD_CHAIN: [Rule(REJECT_CHAIN)], **refuse}
    dns = [Rule("RETURN", dst=ipaddress.IPv4Network(r), proto=p, ports=DNS_PORT) for r in policy.resolvers for p in ("udp", "tcp")]
    to_host = [d for d in policy.allow if d.host]
    elsewhere = [d for d in policy.allow if not d.host]
    forward = [replies, Rule("RETURN", out_bridge=True), *dns]
    forward += [Rule("RETURN", dst=d.network, proto=p, ports=d.ports) for d in elsewhere for p in d.protocols()]
    forward += [Rule("RETURN", dnat=True, proto=p, ports=d.ports) for d in to_host for p in d.protocols()]
    forward += [Rule(REJECT_CHAIN, dnat=True)]
    forward += [Rule(REJECT_CHAIN, dst=n) for n in policy.block]
    inp = [replies, *dns]
    inp += [Rule("RETURN", proto=p, ports=d.ports) for d in to_host for p in d.protocols()]
    inp += [Rule(REJECT_CHAIN)]
    return {INPUT_CHAIN: inp, FORWARD_CHAIN: forward, **refuse}


def restore_text(rules: dict[str, list[Rule]], family: str) -> str:
    """iptables-restore input that (with --noflush) replaces farmhand's chains and touches nothing else."""
    lines = ["*filter", *(f":{chain} - [0:0]" for chain in rules)]
    lines += [" ".join(["-A", chain, *rule.argv(family)]) for chain, chain_rules_ in rules.items() for rule in chain_rules_]
    return "\n".join([*lines, "COMMIT"]) + "\n"


def hook_rules(forward_hook: str) -> list[tuple[str, list[str]]]:
    """The jumps from the host's chains into farmhand's, for the task bridges only."""
    tag = ["-m", "comment", "--comment", COMMENT]
    return [
        ("INPUT", ["-i", INTERFACES, *tag, "-j", INPUT_CHAIN]),
        (forward_hook, ["-i", INTERFACES, *tag, "-j", FORWARD_CHAIN]),
    ]


# --- iptables itself --------------------------------------------------------------------------------------------

class Tables:
    """One family's filter table through its iptables command (whichever backend dockerd uses: the same one)."""

    def __init__(self, family: str) -> None:
        self.family = family
        name = BINARIES[family]
        self.binary = shutil.which(name) or next((p for p in (f"/usr/sbin/{name}", f"/sbin/{name}") if os.path.exists(p)), None)

    def usable(self) -> bool:
        return self.binary is not None and self.run("-S", "INPUT", check=False).returncode == 0

    def run(self, *args: str, check: bool = True, stdin: str | None = None, restore: bool = False) -> subprocess.CompletedProcess[str]:
        if self.binary is None:
            raise FirewallError(f"{BINARIES[self.family]} not found (Debian: apt-get install iptables)")
        binary = self.binary + "-restore" if restore else self.binary
        try:
            proc = subprocess.run([binary, "-w", *args], capture_output=True, text=True, input=stdin, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise FirewallError(f"{binary}: {exc}") from None
        if check and proc.returncode != 0:
            raise FirewallError(f"{os.path.basename(binary)} {' '.join(args)}: {proc.stderr.strip() or f'exit {proc.returncode}'}")
        return proc

    def has_chain(self, chain: str) -> bool:
        return self.run("-S", chain, check=False).returncode == 0

    def has_rule(self, chain: str, argv: Sequence[str]) -> bool:
        return self.run("-C", chain, *argv, check=False).returncode == 0

    def rule_count(self, chain: str) -> int:
        return sum(line.startswith("-A ") for line in self.run("-S", chain).stdout.splitlines())

    def forward_hook(self) -> str:
        """DOCKER-USER, which dockerd keeps ahead of its own rules; FORWARD where dockerd manages no iptables."""
        return DOCKER_USER if self.has_chain(DOCKER_USER) else "FORWARD"


def _families() -> tuple[list[Tables], list[str]]:
    """The usable families, and a note for a missing IPv6; FirewallError when IPv4's iptables is unusable."""
    v4, v6 = Tables("ipv4"), Tables("ipv6")
    if not v4.usable():
        detail = v4.run("-S", "INPUT", check=False).stderr.strip() if v4.binary else "not installed"
        raise FirewallError(f"iptables is unusable ({detail}): task networks cannot be fenced off from this host")
    if v6.usable():
        return [v4, v6], []
    return [v4], ["ip6tables unusable on this host (no IPv6?): IPv4 rules only"]


def _chain_problems(t: Tables, rules: dict[str, list[Rule]]) -> list[str]:
    problems = []
    for chain, wanted in rules.items():
        if not t.has_chain(chain):
            problems.append(f"{BINARIES[t.family]}: chain {chain} is missing")
            continue
        missing = [rule for rule in wanted if not t.has_rule(chain, rule.argv(t.family))]
        problems += [f"{BINARIES[t.family]}: rule missing: -A {chain} {' '.join(r.argv(t.family))}" for r in missing]
        count = t.rule_count(chain)
        if not missing and count != len(wanted):
            problems.append(f"{BINARIES[t.family]}: chain {chain} holds {count} rules where farmhand's policy has {len(wanted)}")
    return problems


def _hook_problems(t: Tables) -> list[str]:
    return [
        f"{BINARIES[t.family]}: jump missing: -A {chain} {' '.join(argv)}"
        for chain, argv in hook_rules(t.forward_hook())
        if not t.has_rule(chain, argv)
    ]


@dataclass
class Report:
    changes: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def apply(policy: Policy) -> Report:
    """Make the rules exactly the policy's; returns what changed (nothing when they already were)."""
    families, notes = _families()
    report = Report(notes=notes)
    for t in families:
        name = BINARIES[t.family]
        rules = chain_rules(policy, t.family)
        if _chain_problems(t, rules):
            t.run("--noflush", stdin=restore_text(rules, t.family), restore=True)
            report.changes.append(f"{name}: wrote {', '.join(rules)} ({sum(map(len, rules.values()))} rules)")
        hook = t.forward_hook()
        if hook == "FORWARD" and t.family == "ipv4":
            report.notes.append("no DOCKER-USER chain (dockerd runs with iptables off?): hooked into FORWARD")
        for chain, argv in hook_rules(hook):
            if not t.has_rule(chain, argv):
                t.run("-I", chain, "1", *argv)
                report.changes.append(f"{name}: -I {chain} 1 {' '.join(argv)}")
        stale = "FORWARD" if hook == DOCKER_USER else DOCKER_USER
        _, argv = hook_rules(stale)[1]
        while t.has_chain(stale) and t.has_rule(stale, argv):
            t.run("-D", stale, *argv)
            report.changes.append(f"{name}: -D {stale} {' '.join(argv)}")
    return report


def check(policy: Policy) -> list[str]:
    """What is missing or different from the policy's rules; empty when they are in place."""
    families, _ = _families()
    problems: list[str] = []
    for t in families:
        problems += _chain_problems(t, chain_rules(policy, t.family)) + _hook_problems(t)
    return problems


def remove() -> Report:
    """Take every farmhand rule and chain away (idempotent: nothing to do is no error)."""
    families, notes = _families()
    report = Report(notes=notes)
    for t in families:
        name = BINARIES[t.family]
        for chain, argv in hook_rules(DOCKER_USER) + hook_rules("FORWARD")[1:]:
            while t.has_chain(chain) and t.has_rule(chain, argv):
                t.run("-D", chain, *argv)
                report.changes.append(f"{name}: -D {chain} {' '.join(argv)}")
        for chain in (INPUT_CHAIN, FORWARD_CHAIN, REJECT_CHAIN):  # the last one once nothing jumps to it
            if t.has_chain(chain):
                t.run("-F", chain)
                t.run("-X", chain)
                report.changes.append(f"{name}: -X {chain}")
    return report


def host_check(config: Any) -> tuple[str, bool, str]:
    """The ``firewall`` line of ``farmhand check``."""
    from farmhand.in_container import FIREWALL, hint

    if os.geteuid() != 0:
        return ("firewall", True, f"not checked: reading iptables needs root (run `farmhand firewall check` as root){hint(FIREWALL)}")
    try:
        enabled, policy = policy_from_config(config)
        if not enabled:
            return ("firewall", True, "disabled by the config: task networks may reach this host and link-local addresses")
        problems = check(policy)
    except (ValueError, FirewallError) as exc:
        return ("firewall", False, f"{exc}{hint(FIREWALL)}")
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        return ("firewall", False, f"{problems[0]}{more}: run `farmhand firewall apply` as root, or restart farmhand{hint(FIREWALL)}")
    return ("firewall", True, policy.summary())
