# farmhand app image, on a base image (packer/base): the farmhand role and the
# ephemeral_storage role set to run at every boot. Rebuilt for each release.
# Build with `make images` (docker) or `make vm-images` (qemu); packer/README.md
# tells how to bake for AWS, GCE and Azure.

locals {
  stamp      = formatdate("YYYYMMDDhhmmss", timestamp())
  container  = "packer-${var.image_name}-${local.stamp}"
  vm_ssh_key = var.vm_ssh_key != "" ? var.vm_ssh_key : "${var.vm_image_dir}/id_ed25519"
  base_out   = "${var.output_dir}/qemu-${var.base_image_name}"
  base_boot  = "${var.output_dir}/${var.base_image_name}-boot"
  qemu_out   = "${var.output_dir}/qemu-${var.image_name}"
  boot_dir   = "${var.image_name}-boot"
  wheel_args = var.farmhand_wheel != "" ? ["-e", "farmhand_wheel=${var.farmhand_wheel}"] : []
}

source "docker" "debian12" {
  image  = "${var.base_image_name}:${var.base_image_tag}"
  pull   = false
  commit = true
  run_command = [
    "-d", "--name", local.container, "--tmpfs", "/run", "--tmpfs", "/run/lock", "--tmpfs", "/tmp",
    "--cgroupns=host", "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw",
    "{{.Image}}", "/lib/systemd/systemd",
  ]
  changes = [
    "CMD [\"/lib/systemd/systemd\"]",
    "ENV container=docker",
    "ENV PATH=/opt/farmhand/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV FARMHAND_CONFIG=/etc/farmhand/config.yml",
    "LABEL org.opencontainers.image.title=${var.image_name}",
  ]
}

source "qemu" "debian12" {
  iso_url          = "${local.base_out}/${var.base_image_name}.qcow2"
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
  # No bootloader: qemu boots the kernel the base build left next to its disk.
  qemuargs = [
    ["-m", "${var.vm_memory}"],
    ["-smp", "${var.vm_cpus}"],
    ["-kernel", "${local.base_boot}/vmlinuz"],
    ["-initrd", "${local.base_boot}/initrd.img"],
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
      name                = "${var.base_image_name}-*"
      architecture        = local.aws_ami_arch
      root-device-type    = "ebs"
      virtualization-type = "hvm"
    }
    owners      = [var.aws_base_ami_owner]
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
    Role    = "farmhand-app"
    Arch    = var.aws_arch
    BuiltAt = local.stamp
  }
}

source "googlecompute" "debian12" {
  project_id   = var.gcp_project_id
  account_file = var.gcp_account_file
  zone         = var.gcp_zone
  machine_type = var.gcp_machine_type
  network      = var.gcp_network
  subnetwork   = var.gcp_subnetwork
  # The newest image of the base's family, in this project.
  source_image_family     = var.base_image_name
  source_image_project_id = [var.gcp_project_id]
  disk_size               = var.gcp_disk_size
  disk_type               = "pd-balanced"
  image_name              = "${var.image_name}-${local.stamp}"
  image_family            = var.image_name
  image_description       = "farmhand app layer, from the ${var.base_image_name} family"
  image_labels = {
    role     = "farmhand-app"
    built_at = local.stamp
  }
  ssh_username = var.gcp_ssh_username
}

source "azure-arm" "debian12" {
  subscription_id           = var.azure_subscription_id
  tenant_id                 = var.azure_tenant_id
  client_id                 = var.azure_client_id
  client_secret             = var.azure_client_secret
  use_azure_cli_auth        = var.azure_use_cli_auth
  location                  = local.azure_location
  build_resource_group_name = var.azure_build_resource_group
  vm_size                   = var.azure_vm_size
  os_type                   = "Linux"
  # Managed images have no "newest of a family": the base is named exactly.
  custom_managed_image_name                = var.azure_base_image
  custom_managed_image_resource_group_name = var.azure_resource_group
  os_disk_size_gb                          = var.azure_disk_size
  managed_image_name                       = "${var.image_name}-${local.stamp}"
  managed_image_resource_group_name        = var.azure_resource_group
  ssh_username                             = "packer"
  azure_tags = {
    Name    = var.image_name
    Role    = "farmhand-app"
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
    playbook_file = "${path.root}/../playbooks/app.yml"
    user          = "root"
    ansible_env_vars = [
      "ANSIBLE_CONFIG=${path.root}/../ansible.cfg",
    ]
    # Ansible's docker connection into the build container, for this host only
    # (Packer's SSH proxy over `docker exec` loses directory copies).
    inventory_file_template = "{{ .HostAlias }} ansible_host=${local.container} ansible_connection=community.docker.docker ansible_user=root\n"
    extra_arguments         = concat([], local.wheel_args, var.ansible_extra_vars)
  }

  provisioner "ansible" {
    except        = ["docker.debian12"]
    command       = var.ansible_playbook
    playbook_file = "${path.root}/../playbooks/app.yml"
    user          = "root"
    ansible_env_vars = [
      "ANSIBLE_CONFIG=${path.root}/../ansible.cfg",
    ]
    # Packer's SSH proxy offers an ssh-rsa host key, which OpenSSH 8.8+ refuses by default.
    extra_arguments = concat([
      "--ssh-extra-args", "-o HostKeyAlgorithms=+ssh-rsa -o PubkeyAcceptedKeyTypes=+ssh-rsa",
    ], local.wheel_args, var.ansible_extra_vars)
  }

  # The VM boots the kernel found in its image: keep it next to the disk.
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
      image      = var.image_name
      base_image = var.base_image_name
      stamp      = local.stamp
    }
  }
}
