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

variable "aws_arch" {
  type        = string
  default     = "amd64"
  description = "CPU architecture of the AMI: amd64 (x86_64) or arm64 (Graviton). It picks the source AMI and the default instance type; the bake installs the kernel of the running architecture."

  validation {
    condition     = contains(["amd64", "arm64"], var.aws_arch)
    error_message = "The aws_arch variable must be amd64 or arm64."
  }
}

variable "aws_instance_type" {
  type        = string
  default     = ""
  description = "Instance type of the build instance; empty: m5d.large (amd64) or m6gd.large (arm64), both with instance store."
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

# googlecompute source. Credentials: Application Default Credentials
# (GOOGLE_APPLICATION_CREDENTIALS, `gcloud auth application-default login`,
# or the build machine's service account), or gcp_account_file.
variable "gcp_project_id" {
  type        = string
  default     = env("GOOGLE_CLOUD_PROJECT")
  description = "Project the build instance runs in and the image is stored in (default: $GOOGLE_CLOUD_PROJECT)."
}

variable "gcp_zone" {
  type        = string
  default     = "us-central1-a"
  description = "Zone of the build instance."
}

variable "gcp_machine_type" {
  type        = string
  default     = "n2-standard-2"
  description = "Machine type of the build instance."
}

variable "gcp_disk_size" {
  type        = number
  default     = 16
  description = "Boot disk size in GB (pd-balanced)."
}

variable "gcp_network" {
  type        = string
  default     = ""
  description = "Network of the build instance; empty: the project's default network."
}

variable "gcp_subnetwork" {
  type        = string
  default     = ""
  description = "Subnetwork of the build instance (needed on custom-mode networks)."
}

variable "gcp_ssh_username" {
  type        = string
  default     = "packer"
  description = "User Packer creates (through instance metadata) to log in to the build instance."
}

variable "gcp_account_file" {
  type        = string
  default     = ""
  description = "Path of a service account key file; empty: Application Default Credentials."
}

# azure-arm source. Credentials: a service principal (azure_client_id,
# azure_client_secret, azure_tenant_id, read from the ARM_* environment
# variables by default), the Azure CLI's login (azure_use_cli_auth), or,
# with none of them, the build machine's managed identity.
variable "azure_subscription_id" {
  type        = string
  default     = env("ARM_SUBSCRIPTION_ID")
  description = "Subscription the image is built in (default: $ARM_SUBSCRIPTION_ID)."
}

variable "azure_tenant_id" {
  type        = string
  default     = env("ARM_TENANT_ID")
  description = "Tenant of the service principal (default: $ARM_TENANT_ID)."
}

variable "azure_client_id" {
  type        = string
  default     = env("ARM_CLIENT_ID")
  description = "Service principal's application id (default: $ARM_CLIENT_ID); empty: CLI login or managed identity."
}

variable "azure_client_secret" {
  type        = string
  default     = env("ARM_CLIENT_SECRET")
  sensitive   = true
  description = "Service principal's secret (default: $ARM_CLIENT_SECRET); never written in a file of the repository."
}

variable "azure_use_cli_auth" {
  type        = bool
  default     = false
  description = "Use the Azure CLI's login (`az login`) instead of a service principal."
}

variable "azure_resource_group" {
  type        = string
  default     = "farmhand-images"
  description = "Existing resource group the managed images are stored in (the app build finds its base image there)."
}

variable "azure_location" {
  type        = string
  default     = "westeurope"
  description = "Region of the build VM's temporary resource group (unused with azure_build_resource_group)."
}

variable "azure_build_resource_group" {
  type        = string
  default     = ""
  description = "Existing resource group to build in; empty: Packer creates a temporary one in azure_location."
}

variable "azure_vm_size" {
  type        = string
  default     = "Standard_D2ds_v5"
  description = "Size of the build VM."
}

variable "azure_disk_size" {
  type        = number
  default     = 30
  description = "OS disk size in GB (Debian's Azure images have 30)."
}

# Derived from the variables above, for both templates.
locals {
  # AWS's name of the architecture (the AMI filter's "architecture"); an
  # unknown aws_arch is reported by its validation rule alone.
  aws_ami_arch      = lookup({ amd64 = "x86_64", arm64 = "arm64" }, var.aws_arch, "")
  aws_instance_type = var.aws_instance_type != "" ? var.aws_instance_type : lookup({ amd64 = "m5d.large", arm64 = "m6gd.large" }, var.aws_arch, "")
  # Packer creates a temporary resource group in a location, or builds in an existing group: not both.
  azure_location = var.azure_build_resource_group == "" ? var.azure_location : ""
}
