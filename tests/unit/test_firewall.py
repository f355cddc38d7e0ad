"""The firewall's rule set for task networks, as a pure function of the policy.

Nothing here runs iptables: ``firewall.chain_rules`` turns a policy (allowed
destinations, blocked networks, the host's resolvers) into rules, and these
tests judge them two ways: by walking them as the kernel would for a few
packets a task might send (``verdict`` below, which reads the rules' fields),
and by the iptables words they render to. The real rules on a real host are
proved by tests/integration/test_network_isolation.py.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import pytest

from farmhand import firewall
from farmhand.network_pool import BRIDGE_PREFIX, bridge_name

HOST = "host"  # where a packet goes: the worker host itself (INPUT), or elsewhere (FORWARD)


@dataclass
class Packet:
    dst: str
    proto: str = "tcp"
    dport: int = 80
    to_host: bool = False  # local delivery: one of the host's own addresses (INPUT)
    dnat: bool = False  # destination-NATed on the host: a port published on one of its addresses
    out_bridge: bool = False  # forwarded to another task container (the same task's network)
    established: bool = False


def verdict(policy: firewall.Policy, packet: Packet, family: str = "ipv4") -> str:
    """'pass' (back to the host's and Docker's own rules) or 'reject', walking the chain the packet enters."""
    rules = firewall.chain_rules(policy, family)
    chain = rules[firewall.INPUT_CHAIN if packet.to_host else firewall.FORWARD_CHAIN]
    for rule in chain:
        if rule.established and not packet.established:
            continue
        if rule.out_bridge and not packet.out_bridge:
            continue
        if rule.dnat and not packet.dnat:
            continue
        if rule.dst is not None and ipaddress.ip_address(packet.dst) not in rule.dst:
            continue
        if rule.proto is not None and rule.proto != packet.proto:
            continue
        if rule.ports is not None and not (rule.ports[0] <= packet.dport <= rule.ports[1]):
            continue
        return "pass" if rule.target == "RETURN" else "reject" if rule.target == firewall.REJECT_CHAIN else f"?{rule.target}"
    return "pass"


DEFAULT = firewall.make_policy()


# --- what the default policy refuses and lets through ---------------------------------------------------------

@pytest.mark.parametrize(
    "packet",
    [
        Packet("172.30.0.1", dport=22, to_host=True),  # sshd through the task network's gateway
        Packet("192.0.2.2", dport=5672, to_host=True),  # the broker on the host's LAN address
        Packet("192.0.2.2", proto="udp", dport=53, to_host=True),  # a resolver on the host not in resolv.conf
        Packet("169.254.169.254", dport=80),  # AWS, GCP, OpenStack, Oracle metadata
        Packet("169.254.170.2", dport=80),  # ECS task credentials
        Packet("168.63.129.16", dport=80),  # Azure WireServer
        Packet("100.100.100.200", dport=80),  # Alibaba metadata
        Packet("203.0.113.9", dport=8080, dnat=True),  # a port another container publishes on the host
    ],
    ids=["gateway-ssh", "host-broker", "host-dns", "imds", "ecs-credentials", "azure-wireserver", "alibaba", "published-port"],
)
def test_the_default_policy_refuses(packet):
    assert verdict(DEFAULT, packet) == "reject"


@pytest.mark.parametrize(
    "packet",
    [
        Packet("93.184.215.14", dport=443),  # the internet, through Docker's NAT
        Packet("10.1.2.3", dport=3128),  # the LAN (private ranges are the operator's call)
        Packet("172.30.0.3", dport=8080, out_bridge=True),  # a service of the same task
        Packet("169.254.169.254", dport=80, established=True),  # replies to what the host opened
        Packet("172.30.0.1", dport=40000, to_host=True, established=True),
    ],
    ids=["internet", "lan", "service", "established-forward", "established-input"],
)
def test_the_default_policy_lets_through(packet):
    assert verdict(DEFAULT, packet) == "pass"


def test_the_hosts_resolvers_answer_on_port_53_only():
    policy = firewall.make_policy(resolvers=["169.254.169.254", "192.0.2.2"])  # GCP's metadata server is its DNS
    for proto in ("udp", "tcp"):
        assert verdict(policy, Packet("169.254.169.254", proto=proto, dport=53)) == "pass"
        assert verdict(policy, Packet("192.0.2.2", proto=proto, dport=53, to_host=True)) == "pass"
    assert verdict(policy, Packet("169.254.169.254", dport=80)) == "reject"
    assert verdict(policy, Packet("192.0.2.2", dport=22, to_host=True)) == "reject"


def test_allowed_host_ports_open_the_host_and_its_published_ports_for_them_only():
    policy = firewall.make_policy(allow=["host:3128/tcp"])
    assert verdict(policy, Packet("172.30.0.1", dport=3128, to_host=True)) == "pass"
    assert verdict(policy, Packet("203.0.113.9", dport=3128, dnat=True)) == "pass"
    assert verdict(policy, Packet("172.30.0.1", proto="udp", dport=3128, to_host=True)) == "reject"
    assert verdict(policy, Packet("172.30.0.1", dport=22, to_host=True)) == "reject"
    assert verdict(policy, Packet("203.0.113.9", dport=22, dnat=True)) == "reject"


def test_an_allowed_network_is_reachable_though_blocked_and_the_host_stays_closed():
    policy = firewall.make_policy(allow=["169.254.169.123/32:123/udp"], block=[*firewall.DEFAULT_BLOCK, "10.0.0.0/8"])
    assert verdict(policy, Packet("169.254.169.123", proto="udp", dport=123)) == "pass"  # AWS's time server
    assert verdict(policy, Packet("169.254.169.254", dport=80)) == "reject"
    assert verdict(policy, Packet("10.1.2.3", dport=3128)) == "reject"
    # An allowed network names other machines: the host's own addresses stay closed even inside it.
    wide = firewall.make_policy(allow=["192.0.2.0/24"])
    assert verdict(wide, Packet("192.0.2.7", dport=22)) == "pass"
    assert verdict(wide, Packet("192.0.2.2", dport=22, to_host=True)) == "reject"


def test_a_blocked_private_range_still_lets_a_tasks_services_talk():
    policy = firewall.make_policy(block=["172.16.0.0/12"])
    assert verdict(policy, Packet("172.30.0.3", dport=8080, out_bridge=True)) == "pass"
    assert verdict(policy, Packet("172.17.0.5", dport=8080)) == "reject"


def test_ipv6_from_a_task_network_goes_nowhere():
    rules = firewall.chain_rules(DEFAULT, "ipv6")
    assert [r.target for r in rules[firewall.INPUT_CHAIN]] == ["RETURN", firewall.REJECT_CHAIN]
    assert rules[firewall.INPUT_CHAIN][0].established
    assert [r.target for r in rules[firewall.FORWARD_CHAIN]] == [firewall.REJECT_CHAIN]
    assert all(r.dst is None for chain in rules.values() for r in chain)  # no IPv4 address leaks into ip6tables


# --- the words iptables gets ----------------------------------------------------------------------------------

def test_every_rule_is_tagged_and_a_refusal_is_immediate():
    for family, reject_with in (("ipv4", "icmp-admin-prohibited"), ("ipv6", "icmp6-adm-prohibited")):
        rules = firewall.chain_rules(firewall.make_policy(allow=["host:22/tcp", "10.0.0.0/8"], resolvers=["10.0.0.2"]), family)
        for chain in rules.values():
            for rule in chain:
                words = rule.argv(family)
                assert words[words.index("--comment") + 1] == firewall.COMMENT
        # TCP gets a reset (the kernel rate-limits ICMP errors to one a second, which connect() would wait out).
        c = f"-m comment --comment {firewall.COMMENT}"
        assert [" ".join(r.argv(family)) for r in rules[firewall.REJECT_CHAIN]] == [
            f"-p tcp {c} -j REJECT --reject-with tcp-reset",
            f"{c} -j REJECT --reject-with {reject_with}",
        ]
        others = [r for name, chain in rules.items() if name != firewall.REJECT_CHAIN for r in chain]
        assert {r.target for r in others} == {"RETURN", firewall.REJECT_CHAIN}


def test_rendered_rules_read_as_iptables_writes_them():
    policy = firewall.make_policy(allow=["host:5432/tcp", "10.0.0.0/8:8000-8100/udp"], resolvers=["10.0.0.2"])
    forward = [" ".join(r.argv("ipv4")) for r in firewall.chain_rules(policy, "ipv4")[firewall.FORWARD_CHAIN]]
    c = f"-m comment --comment {firewall.COMMENT}"
    assert forward == [
        f"-m conntrack --ctstate RELATED,ESTABLISHED {c} -j RETURN",
        f"-o {BRIDGE_PREFIX}+ {c} -j RETURN",
        f"-d 10.0.0.2/32 -p udp --dport 53 {c} -j RETURN",
        f"-d 10.0.0.2/32 -p tcp --dport 53 {c} -j RETURN",
        f"-d 10.0.0.0/8 -p udp --dport 8000:8100 {c} -j RETURN",
        f"-m conntrack --ctstate DNAT --ctproto tcp --ctorigdstport 5432 {c} -j RETURN",
        f"-m conntrack --ctstate DNAT {c} -j FARMHAND-REJECT",
        f"-d 169.254.0.0/16 {c} -j FARMHAND-REJECT",
        f"-d 168.63.129.16/32 {c} -j FARMHAND-REJECT",
        f"-d 100.100.100.200/32 {c} -j FARMHAND-REJECT",
    ]
    inp = [" ".join(r.argv("ipv4")) for r in firewall.chain_rules(policy, "ipv4")[firewall.INPUT_CHAIN]]
    assert inp == [
        f"-m conntrack --ctstate RELATED,ESTABLISHED {c} -j RETURN",
        f"-d 10.0.0.2/32 -p udp --dport 53 {c} -j RETURN",
        f"-d 10.0.0.2/32 -p tcp --dport 53 {c} -j RETURN",
        f"-p tcp --dport 5432 {c} -j RETURN",
        f"{c} -j FARMHAND-REJECT",
    ]


def test_restore_text_replaces_only_farmhands_chains():
    text = firewall.restore_text(firewall.chain_rules(DEFAULT, "ipv4"), "ipv4")
    lines = text.splitlines()
    assert lines[0] == "*filter" and lines[-1] == "COMMIT"
    ours = {firewall.INPUT_CHAIN, firewall.FORWARD_CHAIN, firewall.REJECT_CHAIN}
    assert {line[1:].split()[0] for line in lines if line.startswith(":")} == ours
    appended = {line.split()[1] for line in lines if line.startswith("-")}
    assert appended == ours, "never a rule in INPUT, FORWARD or DOCKER-USER"
    assert all(line.startswith("-A ") for line in lines if line.startswith("-"))


def test_hooks_send_only_task_bridges_to_farmhands_chains():
    hooks = firewall.hook_rules("DOCKER-USER")
    assert hooks == [
        ("INPUT", ["-i", f"{BRIDGE_PREFIX}+", "-m", "comment", "--comment", firewall.COMMENT, "-j", firewall.INPUT_CHAIN]),
        ("DOCKER-USER", ["-i", f"{BRIDGE_PREFIX}+", "-m", "comment", "--comment", firewall.COMMENT, "-j", firewall.FORWARD_CHAIN]),
    ]


# --- the operator's lists -------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "text, host, dst, proto, ports",
    [
        ("10.0.0.5", False, "10.0.0.5/32", None, None),
        ("10.0.0.0/8", False, "10.0.0.0/8", None, None),
        ("10.0.0.5:3128", False, "10.0.0.5/32", None, (3128, 3128)),
        ("10.0.0.0/8:3128/tcp", False, "10.0.0.0/8", "tcp", (3128, 3128)),
        ("10.0.0.0/8:8000-8100/udp", False, "10.0.0.0/8", "udp", (8000, 8100)),
        ("host", True, None, None, None),
        ("host:5432/tcp", True, None, "tcp", (5432, 5432)),
        (" host:53 ", True, None, None, (53, 53)),
    ],
)
def test_allow_entries(text, host, dst, proto, ports):
    d = firewall.parse_destination(text)
    assert (d.host, str(d.network) if d.network else None, d.proto, d.ports) == (host, dst, proto, ports)
    assert firewall.parse_destination(str(d)) == d, "an entry reads back from its own text"


@pytest.mark.parametrize(
    "text, says",
    [
        ("", "empty"),
        ("fe80::1", "IPv4"),
        ("metadata.google.internal", "not an IPv4 address"),
        ("10.0.0.1/8", "host bits"),
        ("10.0.0.0/33", "not an IPv4 address"),
        ("10.0.0.1:0", "port"),
        ("10.0.0.1:65536", "port"),
        ("10.0.0.1:90-80", "port"),
        ("10.0.0.1:53/icmp", "tcp or udp"),
        ("10.0.0.1/tcp", "not an IPv4 address"),
        ("host:ssh", "port"),
    ],
)
def test_bad_allow_entries_say_why(text, says):
    with pytest.raises(ValueError, match=says):
        firewall.parse_destination(text)


def test_block_entries_are_networks_only():
    assert [str(n) for n in firewall.make_policy(block=["169.254.169.254", "10.0.0.0/8"]).block] == ["169.254.169.254/32", "10.0.0.0/8"]
    for bad in ("host", "10.0.0.0/8:80", "fd00:ec2::254"):
        with pytest.raises(ValueError):
            firewall.make_policy(block=[bad])


def test_resolvers_are_read_as_docker_forwards_to_them():
    conf = "# generated\nnameserver 127.0.0.53\nnameserver 10.0.0.2\nnameserver fd00::53\nsearch example\nnameserver 10.0.0.2\nnameserver\n"
    assert firewall.nameservers(conf) == ["10.0.0.2"]  # loopback is replaced by Docker, IPv6 never used by a task


# --- the bridges the rules match ------------------------------------------------------------------------------

def test_task_bridges_have_the_prefix_and_fit_an_interface_name():
    name = bridge_name("farmhand-net-0123456789ab")
    assert name.startswith(BRIDGE_PREFIX) and len(name) <= 15
    assert firewall.INTERFACES == BRIDGE_PREFIX + "+"


# --- from the worker's config ---------------------------------------------------------------------------------

def test_the_config_section_sets_the_lists_and_the_command_line_replaces_them(monkeypatch):
    from types import SimpleNamespace

    monkeypatch.setattr(firewall, "host_resolvers", lambda: ["10.0.0.2"])
    enabled, policy = firewall.policy_from_config(SimpleNamespace())  # a config without the section: the defaults
    assert enabled and policy.allow == () and [str(n) for n in policy.block] == list(firewall.DEFAULT_BLOCK)
    assert [str(r) for r in policy.resolvers] == ["10.0.0.2"]
    section = SimpleNamespace(enabled=False, allow=["host:22/tcp"], block=["10.0.0.0/8"])
    enabled, policy = firewall.policy_from_config(SimpleNamespace(firewall=section))
    assert not enabled and [str(d) for d in policy.allow] == ["host:22/tcp"] and [str(n) for n in policy.block] == ["10.0.0.0/8"]
    _, policy = firewall.policy_from_config(SimpleNamespace(firewall=section), allow=[], block=["192.168.0.0/16"])
    assert policy.allow == () and [str(n) for n in policy.block] == ["192.168.0.0/16"]
    with pytest.raises(ValueError, match=r"firewall allow: 'host:99999'"):
        firewall.policy_from_config(SimpleNamespace(firewall=SimpleNamespace(allow=["host:99999"])))


def test_host_resolvers_follow_docker_resolv_conf_resolved_and_daemon_json(tmp_path, monkeypatch):
    (tmp_path / "resolv.conf").write_text("nameserver 127.0.0.53\n")
    (tmp_path / "upstream.conf").write_text("nameserver 169.254.169.254\n")
    (tmp_path / "daemon.json").write_text('{"dns": ["10.0.0.2", "169.254.169.254", "::1"]}')
    monkeypatch.setattr(firewall, "RESOLV_CONF", tmp_path / "resolv.conf")
    monkeypatch.setattr(firewall, "RESOLVED_UPSTREAM", tmp_path / "upstream.conf")
    monkeypatch.setattr(firewall, "DAEMON_JSON", tmp_path / "daemon.json")
    assert firewall.host_resolvers() == ["169.254.169.254", "10.0.0.2"]
    (tmp_path / "daemon.json").write_text("not json")
    (tmp_path / "upstream.conf").unlink()
    assert firewall.host_resolvers() == []


def test_farmhand_check_as_the_service_user_says_it_could_not_look(monkeypatch):
    monkeypatch.setattr(firewall.os, "geteuid", lambda: 990)
    name, ok, detail = firewall.host_check(object())
    assert (name, ok) == ("firewall", True) and detail.startswith("not checked") and "as root" in detail
