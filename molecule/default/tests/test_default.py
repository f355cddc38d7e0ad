"""What site.yml must leave on a container host (molecule default scenario).

The container shares the CI host's kernel, which has no loadable modules and
no device-mapper: here the loopback role may only write configuration and the
storage role must find no disk. Everything else is the real thing: systemd
reports the limits, a nested dockerd answers, the worker's unit runs.
"""

import json

import pytest

WORKING_DIR = "/var/lib/farmhand"
VENV = "/opt/farmhand/venv"


def systemd_show(host, prop, unit=None):
    cmd = f"systemctl show -p {prop} --value" + (f" {unit}" if unit else "")
    return host.check_output(cmd)


@pytest.mark.parametrize("conf", ["system.conf.d", "user.conf.d"])
def test_limit_dropins(host, conf):
    f = host.file(f"/etc/systemd/{conf}/50-farmhand-limits.conf")
    assert f.is_file and f.user == "root" and f.mode == 0o644
    assert "DefaultLimitNOFILE=1048576" in f.content_string
    assert "DefaultLimitSTACK=infinity" in f.content_string
    # The role adds drop-ins; the distribution's files stay as shipped.
    assert "DefaultLimitNOFILE=1048576" not in host.file(f"/etc/systemd/{conf.replace('.d', '')}").content_string


def test_manager_reports_the_limits(host):
    # Proves daemon-reexec ran: the manager itself reports the new defaults.
    assert systemd_show(host, "DefaultLimitNOFILE") == "1048576"
    assert systemd_show(host, "DefaultLimitSTACK") == "infinity"


def test_loopback_configuration_without_modules(host):
    modprobe = host.file("/etc/modprobe.d/farmhand-loopback.conf").content_string
    # The pools follow farmhand_concurrency (1 here): one camera and one card per task slot.
    assert "options v4l2loopback devices=1 video_nr=10 exclusive_caps=1 card_label=farmhand-loopback\n" in modprobe
    assert "options snd-aloop enable=1 index=10 pcm_substreams=8\n" in modprobe
    load = host.file("/etc/modules-load.d/farmhand-loopback.conf").content_string.split()
    assert "v4l2loopback" in load and "snd-aloop" in load
    rule = host.file("/etc/udev/rules.d/70-farmhand-loopback.rules").content_string
    assert 'SUBSYSTEM=="video4linux"' in rule and 'GROUP="video"' in rule
    # A container cannot build or load modules: nothing was installed for it.
    assert not host.package("v4l2loopback-dkms").is_installed


def test_no_ephemeral_volume_in_a_container(host):
    assert "/mnt" not in [line.split()[1] for line in host.file("/etc/fstab").content_string.splitlines()
                          if line.strip() and not line.startswith("#")]
    assert not host.package("lvm2").is_installed


def test_daemon_json(host):
    f = host.file("/etc/docker/daemon.json")
    assert f.user == "root" and f.mode == 0o644
    cfg = json.loads(f.content_string)
    assert cfg["data-root"] == "/var/lib/docker"
    assert cfg["live-restore"] is True
    assert cfg["log-driver"] == "json-file"
    assert cfg["log-opts"] == {"max-size": "50m", "max-file": "3"}
    assert cfg["storage-driver"] == "vfs"


def test_docker_runs_with_its_config_and_limits(host):
    assert host.service("docker").is_running and host.service("docker").is_enabled
    info = json.loads(host.check_output("docker info --format '{{json .}}'"))
    assert info["DockerRootDir"] == "/var/lib/docker" and info["Driver"] == "vfs"
    assert info["LiveRestoreEnabled"] is True
    assert systemd_show(host, "LimitNOFILE", "docker") == "1048576"
    assert systemd_show(host, "LimitSTACK", "docker") == str(16 * 2**20)  # the scenario's docker_limit_stack


def test_farmhand_user_and_dirs(host):
    user = host.user("farmhand")
    assert user.exists and user.uid < 1000 and user.group == "farmhand"
    assert "docker" not in user.groups  # not asked for: the unit gets the group instead
    wd = host.file(WORKING_DIR)
    assert wd.is_directory and wd.user == "farmhand" and wd.group == "farmhand"
    assert wd.mode == 0o2770


def test_farmhand_installed_from_the_wheel(host):
    assert host.file(f"{VENV}/bin/farmhand").is_file
    out = host.run(f"{VENV}/bin/python -c 'import farmhand, sys; print(farmhand.__file__)'")
    assert out.rc == 0 and out.stdout.startswith(f"{VENV}/lib/")
    assert host.file("/opt/farmhand/installed-wheelhouse.sha256").is_file


def test_config_rendered(host):
    f = host.file("/etc/farmhand/config.yml")
    assert f.user == "root" and f.group == "farmhand" and f.mode == 0o640
    assert host.file("/etc/farmhand").mode == 0o750
    cfg = host.run(
        f"{VENV}/bin/python -c 'import json, yaml; print(json.dumps(yaml.safe_load(open(\"/etc/farmhand/config.yml\"))))'"
    )
    cfg = json.loads(cfg.stdout)
    assert cfg["working_dir"] == WORKING_DIR
    assert cfg["worker"]["node_name"] == "molecule-default"
    assert cfg["worker"]["concurrency"] == 1
    assert cfg["worker"]["queues"] == ["default", "molecule"]
    assert cfg["broker"]["password"] == "not-a-real-secret"
    assert cfg["sftp"]["private_key"] == "/etc/farmhand/id_rsa"


def test_sftp_credentials(host):
    key = host.file("/etc/farmhand/id_rsa")
    assert key.user == "farmhand" and key.group == "farmhand" and key.mode == 0o600
    assert "OPENSSH PRIVATE KEY" in host.check_output("head -1 /etc/farmhand/id_rsa")
    kh = host.file("/etc/farmhand/known_hosts")
    assert kh.user == "root" and kh.mode == 0o644
    assert kh.content_string.startswith("[warehouse.invalid]:2222 ssh-ed25519 ")


def test_unit_hardened_enabled_and_running(host):
    svc = host.service("farmhand")
    assert svc.is_enabled and svc.is_running
    props = dict(
        line.split("=", 1)
        for line in host.check_output(
            "systemctl show farmhand -p User -p Group -p SupplementaryGroups -p Restart -p LimitNOFILE"
            " -p NoNewPrivileges -p ProtectSystem -p ReadWritePaths -p PrivateTmp -p ExecStart -p TimeoutStopUSec"
        ).splitlines()
    )
    assert props["User"] == "farmhand" and props["Group"] == "farmhand"
    assert props["SupplementaryGroups"] == "docker"
    assert props["Restart"] == "always"
    assert props["LimitNOFILE"] == "1048576"
    assert props["NoNewPrivileges"] == "yes"
    assert props["ProtectSystem"] == "strict"
    assert props["ReadWritePaths"] == WORKING_DIR
    assert props["PrivateTmp"] == "yes"
    assert props["TimeoutStopUSec"] == "1min"
    assert f"path={VENV}/bin/farmhand" in props["ExecStart"]
    assert "--config /etc/farmhand/config.yml worker" in props["ExecStart"]


def test_worker_process_runs_as_farmhand_with_the_limits(host):
    pid = host.check_output("systemctl show -p MainPID --value farmhand")
    assert pid != "0"
    status = host.file(f"/proc/{pid}/status").content_string
    uid = host.user("farmhand").uid
    assert f"Uid:\t{uid}\t{uid}" in status
    assert "NoNewPrivs:\t1" in status
    # The unit asks for 1048576; a container cannot go above the hard limit
    # its own PID 1 got from the CI host's dockerd (20000 here), so the worker
    # must get exactly the smaller of the two (the VM scenario proves 1048576).
    def nofile(p):
        line = [x for x in host.file(f"/proc/{p}/limits").content_string.splitlines() if x.startswith("Max open files")]
        return [int(v) for v in line[0].split()[3:5]]

    ceiling = min(1048576, nofile(1)[1])
    assert nofile(pid) == [ceiling, ceiling]


def test_farmhand_check_as_the_service_user(host):
    # The same command the role ends with, as the unit's identity would run it.
    out = host.run(
        f"runuser -u farmhand -g farmhand -G docker -- {VENV}/bin/farmhand --config /etc/farmhand/config.yml check"
    )
    assert out.rc == 0, out.stdout + out.stderr


def test_task_network_firewall_in_place(host):
    # The unit's ExecStartPre (+, as root) and the role put farmhand's chains in
    # place; the worker's own user could not have (nor can it read them).
    assert "firewall apply" in host.check_output("systemctl show farmhand -p ExecStartPre --value")
    out = host.run(f"{VENV}/bin/farmhand --config /etc/farmhand/config.yml firewall check")
    assert out.rc == 0, out.stdout + out.stderr
    assert "-A INPUT -i fh-+ -m comment --comment farmhand -j FARMHAND-INPUT" in host.check_output("iptables -S INPUT")
    assert "-j FARMHAND-FORWARD" in host.check_output("iptables -S DOCKER-USER")
    assert "-d 169.254.0.0/16" in host.check_output("iptables -S FARMHAND-FORWARD")


def test_the_unit_puts_the_firewall_back_at_every_start(host):
    # Rules lost (a firewall reload, a reboot): the next start of the unit restores them, as root.
    farmhand = f"{VENV}/bin/farmhand --config /etc/farmhand/config.yml firewall"
    assert host.run(f"{farmhand} remove").rc == 0
    assert host.run(f"{farmhand} check").rc == 3
    host.check_output("systemctl restart farmhand")
    assert host.service("farmhand").is_running
    out = host.run(f"{farmhand} check")
    assert out.rc == 0, out.stdout + out.stderr


def test_docker_socket_only_through_the_docker_group(host):
    # The unit's SupplementaryGroups is what opens the socket: without the
    # group the worker's user is refused, with it dockerd answers.
    base = "runuser -u farmhand -g farmhand {} -- docker version --format '{{{{.Server.Version}}}}'"
    assert host.run(base.format("-G docker")).rc == 0
    assert host.run(base.format("")).rc != 0


def test_the_engine_check_timer_runs_and_finds_the_engine_answering(host):
    timer = host.service("farmhand-engine-check.timer")
    assert timer.is_enabled and timer.is_running
    unit = host.file("/etc/systemd/system/farmhand-engine-check.service")
    assert unit.user == "root" and unit.mode == 0o644
    assert "engine-check --restart" in unit.content_string
    out = host.run(f"{VENV}/bin/farmhand --config /etc/farmhand/config.yml engine-check --state /run/farmhand/engine-check-test.json")
    assert out.rc == 0, out.stdout + out.stderr
    assert out.stdout.startswith("engine-check: the Docker engine answers")
