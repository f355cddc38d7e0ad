#!/usr/bin/env bash
# Vagrant provisioner (runs in the VM as root, before Ansible): a local
# RabbitMQ broker and an SFTP warehouse on this VM, and the worker's key pair
# and known_hosts for it, so that a task runs end to end inside the VM.
#   RabbitMQ: amqp://farmhand:farmhand-dev@127.0.0.1:5672/farmhand
#   SFTP:     sftp://warehouse@127.0.0.1:22/upload/ (chrooted in /srv/warehouse)
# The key pair and known_hosts go to /vagrant-secrets/, where
# vagrant/inventory.yml (Ansible runs in the VM: ansible_local) reads them.
# Also installs what the farmhand role needs on its controller (this VM):
# pip, to build the wheel from the checkout. Idempotent.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

apt-get update -qq
apt-get install -y -qq --no-install-recommends rabbitmq-server openssh-server openssh-client \
  python3-pip python3-venv busybox-static >/dev/null
systemctl enable --now rabbitmq-server >/dev/null

# Broker: a vhost and a user of the worker's own.
rabbitmqctl list_vhosts --silent | grep -qx farmhand || rabbitmqctl add_vhost farmhand
rabbitmqctl list_users --silent | grep -q '^farmhand\b' || rabbitmqctl add_user farmhand farmhand-dev
rabbitmqctl set_permissions -p farmhand farmhand '.*' '.*' '.*' >/dev/null

# Warehouse: an SFTP-only account chrooted in /srv/warehouse, writing to upload/.
id warehouse >/dev/null 2>&1 || useradd --system --home-dir /srv/warehouse --shell /usr/sbin/nologin warehouse
install -d -o root -g root -m 0755 /srv/warehouse
install -d -o warehouse -g warehouse -m 0755 /srv/warehouse/upload
install -d -o root -g root -m 0755 /etc/ssh/authorized_keys.d
cat >/etc/ssh/sshd_config.d/farmhand-warehouse.conf <<'CONF'
Match User warehouse
    AuthorizedKeysFile /etc/ssh/authorized_keys.d/%u
    ChrootDirectory /srv/warehouse
    ForceCommand internal-sftp
    AllowTcpForwarding no
    X11Forwarding no
CONF
systemctl reload ssh

# The worker's key, authorized for the warehouse; the warehouse's host key, trusted by the worker.
install -d -m 0700 /vagrant-secrets
[ -f /vagrant-secrets/id_ed25519 ] || ssh-keygen -q -t ed25519 -N '' -C farmhand-dev -f /vagrant-secrets/id_ed25519
install -m 0644 /vagrant-secrets/id_ed25519.pub /etc/ssh/authorized_keys.d/warehouse
printf '127.0.0.1 %s\n' "$(cut -d' ' -f1,2 /etc/ssh/ssh_host_ed25519_key.pub)" >/vagrant-secrets/known_hosts
echo "warehouse: rabbitmq and sftp://warehouse@127.0.0.1:22/upload/ ready"
