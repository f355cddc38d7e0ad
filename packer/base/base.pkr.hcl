# farmhand base image: OS updates and the limits, loopback_devices and docker
# roles: the slow, rarely changing layer. Build with `make images` (docker) or
# `make vm-images` (qemu); packer/README.md tells how to bake for AWS, GCE and
# Azure (whose Debian images boot the cloud kernel: the bake swaps it for the
# generic one, which has snd-aloop; playbooks/base.yml).

locals {
  stamp      = formatdate("YYYYMMDDhhmmss", timestamp())
  container  = "packer-${var.image_name}-${local.stamp}"
  vm_ssh_key = var.vm_ssh_key != "" ? var.vm_ssh_key : "${var.vm_image_dir}/id_ed25519"
  qemu_out   = "${var.output_dir}/qemu-${var.image_name}"
  boot_dir   = "${var.image_name}-boot"
  aws_source = var.aws_source_ami_name != "" ? var.aws_source_ami_name : "debian-12-${var.aws_arch}-*"
}

source "docker" "debian12" {
  image  = var.docker_source_image
  pull   = false
  commit = true
  # systemd as PID 1, as on a host: the roles enable and start services.
  run_command = [
    "-d", "--name", local.container, "--tmpfs", "/run", "--tmpfs", "/run/lock", "--tmpfs", "/tmp",
    "--cgroupns=host", "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw",
    "{{.Image}}", "/lib/systemd/systemd",
  ]
  changes = [
    "CMD [\"/lib/systemd/systemd\"]",
    "ENV container=docker",
    "LABEL org.opencontainers.image.title=${var.image_name}",
  ]
}

source "qemu" "debian12" {
  iso_url          = "${var.vm_image_dir}/root.img"
  iso_checksum     = "none"
  disk_image       = true
  format           = "qcow2"
  disk_size        = var.vm_disk_size
  accelerator      = var.vm_accelerator
  headless         = true
  output_directory = local.qemu_out
  vm_name          = "${var.image_name}.qcow2"
  net_device       = "virtio-net"
  disk_interface   = "virtio"
  # The image has no bootloader: qemu boots its kernel directly.
  qemuargs = [
    ["-m", "${var.vm_memory}"],
    ["-smp", "${var.vm_cpus}"],
    ["-kernel", "${var.vm_image_dir}/vmlinuz"],
    ["-initrd", "${var.vm_image_dir}/initrd.img"],
    ["-append", "console=ttyS0 root=/dev/vda rw net.ifnames=0"],
  ]
  communicator         = "ssh"
  ssh_username         = "root"
  ssh_private_key_file = local.vm_ssh_key
  ssh_timeout          = "15m"
  shutdown_command     = "sync && poweroff"
}

source "amazon-ebs" "debian12" {
  region        = var.aws_region
  instance_type = local.aws_instance_type
  subnet_id     = var.aws_subnet_id
  source_ami_filter {
    filters = {
      name                = local.aws_source
      architecture        = local.aws_ami_arch
      root-device-type    = "ebs"
      virtualization-type = "hvm"
    }
    owners      = [var.aws_source_ami_owner]
    most_recent = true
  }
  ami_name     = "${var.image_name}-${local.stamp}"
  ssh_username = var.aws_ssh_username
  launch_block_device_mappings {
    device_name           = "/dev/xvda"
    volume_size           = var.aws_disk_size
    volume_type           = "gp3"
    iops                  = 3000
    throughput            = 125
    delete_on_termination = true
  }
  tags = {
    Name    = var.image_name
    Role    = "farmhand-base"
    Arch    = var.aws_arch
    BuiltAt = local.stamp
  }
}

source "googlecompute" "debian12" {
  project_id              = var.gcp_project_id
  account_file            = var.gcp_account_file
  zone                    = var.gcp_zone
  machine_type            = var.gcp_machine_type
  network                 = var.gcp_network
  subnetwork              = var.gcp_subnetwork
  source_image_family     = var.gcp_source_image_family
  source_image_project_id = [var.gcp_source_image_project]
  disk_size               = var.gcp_disk_size
  disk_type               = "pd-balanced"
  image_name              = "${var.image_name}-${local.stamp}"
  image_family            = var.image_name
  image_description       = "farmhand base layer, from ${var.gcp_source_image_family}"
  image_labels = {
    role     = "farmhand-base"
    built_at = local.stamp
  }
  ssh_username = var.gcp_ssh_username
}

source "azure-arm" "debian12" {
  subscription_id                   = var.azure_subscription_id
  tenant_id                         = var.azure_tenant_id
  client_id                         = var.azure_client_id
  client_secret                     = var.azure_client_secret
  use_azure_cli_auth                = var.azure_use_cli_auth
  location                          = local.azure_location
  build_resource_group_name         = var.azure_build_resource_group
  vm_size                           = var.azure_vm_size
  os_type                           = "Linux"
  image_publisher                   = var.azure_image_publisher
  image_offer                       = var.azure_image_offer
  image_sku                         = var.azure_image_sku
  os_disk_size_gb                   = var.azure_disk_size
  managed_image_name                = "${var.image_name}-${local.stamp}"
  managed_image_resource_group_name = var.azure_resource_group
  ssh_username                      = "packer"
  azure_tags = {
    Name    = var.image_name
    Role    = "farmhand-base"
    BuiltAt = local.stamp
  }
}

build {
  sources = [
    "source.docker.debian12",
    "source.qemu.debian12",
    "source.amazon-ebs.debian12",
    "source.googlecompute.debian12",
    "source.azure-arm.debian12",
  ]

  provisioner "ansible" {
    only          = ["docker.debian12"]
    command       = var.ansible_playbook
    playbook_file = "${path.root}/../playbooks/base.yml"
    user          = "root"
    ansible_env_vars = [
      "ANSIBLE_CONFIG=${path.root}/../ansible.cfg",
    ]
    # Ansible's docker connection into the build container, for this host only
    # (Packer's SSH proxy over `docker exec` loses directory copies).
    inventory_file_template = "{{ .HostAlias }} ansible_host=${local.container} ansible_connection=community.docker.docker ansible_user=root\n"
    extra_arguments         = concat([], var.ansible_extra_vars)
  }

  # Clouds: OS updates and the swap of Debian's cloud kernel for the generic
  # one (playbooks/base.yml, tag os_updates), then Packer reboots the
  # instance into the new kernel (its own reboot, not Ansible's through
  # Packer's SSH proxy, which does not wait for the instance to come back),
  # waits for it, and the whole playbook below runs on the new kernel.
  provisioner "ansible" {
    only          = ["amazon-ebs.debian12", "googlecompute.debian12", "azure-arm.debian12"]
    command       = var.ansible_playbook
    playbook_file = "${path.root}/../playbooks/base.yml"
    user          = "root"
    ansible_env_vars = [
      "ANSIBLE_CONFIG=${path.root}/../ansible.cfg",
    ]
    extra_arguments = concat([
      "--ssh-extra-args", "-o HostKeyAlgorithms=+ssh-rsa -o PubkeyAcceptedKeyTypes=+ssh-rsa",
      "--tags", "os_updates", "-e", "farmhand_reboot_by_packer=true",
    ], var.ansible_extra_vars)
  }
  provisioner "shell" {
    only              = ["amazon-ebs.debian12", "googlecompute.debian12", "azure-arm.debian12"]
    inline            = ["sudo systemctl reboot"]
    expect_disconnect = true
    skip_clean        = true
  }
  provisioner "shell" {
    only         = ["amazon-ebs.debian12", "googlecompute.debian12", "azure-arm.debian12"]
    pause_before = "30s"
    # Each try reconnects; Packer waits longer between tries (up to 30 s).
    max_retries = 20
    inline      = ["systemctl is-system-running --wait || true", "uname -r"]
  }

  provisioner "ansible" {
    except        = ["docker.debian12"]
    command       = var.ansible_playbook
    playbook_file = "${path.root}/../playbooks/base.yml"
    user          = "root"
    ansible_env_vars = [
      "ANSIBLE_CONFIG=${path.root}/../ansible.cfg",
    ]
    # Packer's SSH proxy offers an ssh-rsa host key, which OpenSSH 8.8+ refuses by default.
    extra_arguments = concat([
      "--ssh-extra-args", "-o HostKeyAlgorithms=+ssh-rsa -o PubkeyAcceptedKeyTypes=+ssh-rsa",
    ], var.ansible_extra_vars)
  }

  # The VM boots the kernel found in its image: hand the current one to the app build.
  provisioner "shell" {
    only = ["qemu.debian12"]
    inline = [
      "rm -rf /tmp/${local.boot_dir} && mkdir -p /tmp/${local.boot_dir}",
      "cp \"$(ls /boot/vmlinuz-* | sort -V | tail -n 1)\" /tmp/${local.boot_dir}/vmlinuz",
      "cp \"$(ls /boot/initrd.img-* | sort -V | tail -n 1)\" /tmp/${local.boot_dir}/initrd.img",
    ]
  }
  provisioner "file" {
    only        = ["qemu.debian12"]
    direction   = "download"
    source      = "/tmp/${local.boot_dir}/"
    destination = "${var.output_dir}/"
  }

  # Azure: the agent forgets the build's user and provisioning state, so VMs
  # made from the (generalized) image provision afresh. Last, as it removes
  # the user Packer logs in with.
  provisioner "shell" {
    only            = ["azure-arm.debian12"]
    execute_command = "chmod +x {{ .Path }}; {{ .Vars }} sudo -E sh '{{ .Path }}'"
    inline          = ["if command -v waagent >/dev/null; then waagent -force -deprovision+user; fi", "sync"]
    skip_clean      = true
  }

  post-processor "docker-tag" {
    only       = ["docker.debian12"]
    repository = var.image_name
    tags       = [var.image_tag]
  }

  post-processor "manifest" {
    output     = "${var.output_dir}/manifest-${var.image_name}.json"
    strip_path = false
    custom_data = {
      image = var.image_name
      stamp = local.stamp
    }
  }
}
