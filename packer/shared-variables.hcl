# Variables both images take: packer/base and packer/app link this file in as
# common-variables.pkr.hcl (Packer reads one directory per template);
# each is documented in packer/README.md.

variable "image_tag" {
  type        = string
  default     = "latest"
  description = "Docker tag of the image (the qemu and AWS images are named with a timestamp)."
}

variable "output_dir" {
  type        = string
  default     = "build/packer"
  description = "Where qemu disks, boot files and manifests are written (relative to the working directory)."
}

variable "ansible_playbook" {
  type        = string
  default     = ".venv-appliance/bin/ansible-playbook"
  description = "The ansible-playbook command that provisions the image (scripts/setup-appliance-tools.sh installs it)."
}

variable "ansible_extra_vars" {
  type        = list(string)
  default     = []
  description = "More arguments for ansible-playbook, e.g. [\"-e\", \"docker_edition=ce\"]."
}

variable "vm_ssh_key" {
  type        = string
  default     = ""
  description = "SSH private key for root on the VM; empty means vm_image_dir/id_ed25519."
}

variable "vm_accelerator" {
  type        = string
  default     = "tcg"
  description = "qemu accelerator: tcg (software; KVM hangs on the CI machines) or kvm."
}

variable "vm_memory" {
  type        = number
  default     = 2048
  description = "Memory of the build VM in MiB."
}

variable "vm_cpus" {
  type        = number
  default     = 2
  description = "Virtual CPUs of the build VM."
}

variable "vm_disk_size" {
  type        = string
  default     = "10G"
  description = "Size of the qemu disk (the VM image is grown to it)."
}

# amazon-ebs source
variable "aws_region" {
  type        = string
  default     = "us-east-1"
  description = "AWS region the AMI is built and registered in."
}

variable "aws_instance_type" {
  type        = string
  default     = "m5d.large"
  description = "Instance type of the build instance."
}

variable "aws_disk_size" {
  type        = number
  default     = 16
  description = "Root volume size in GiB."
}

variable "aws_ssh_username" {
  type        = string
  default     = "admin"
  description = "Login user of the source AMI (Debian's AMIs: admin)."
}

variable "aws_subnet_id" {
  type        = string
  default     = ""
  description = "Subnet of the build instance; empty: the default VPC's."
}
