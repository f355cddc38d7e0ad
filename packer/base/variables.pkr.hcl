# Variables of the base image only (the shared ones are in common-variables.pkr.hcl);
# each is documented in packer/README.md.

variable "image_name" {
  type        = string
  default     = "farmhand-base"
  description = "Name of the image: docker repository, qemu disk file, AMI name prefix."
}

# docker source
variable "docker_source_image" {
  type        = string
  default     = "farmhand-test/debian12-systemd:latest"
  description = "Local Debian 12 image with systemd to start from (scripts/build-systemd-image.sh); never pulled."
}

# qemu source
variable "vm_image_dir" {
  type        = string
  default     = "/var/cache/farmhand-vm/debian12-latest"
  description = "Output directory of scripts/build-vm-image.sh: root.img, vmlinuz, initrd.img, id_ed25519."
}

variable "aws_source_ami_name" {
  type        = string
  default     = ""
  description = "Name pattern of the source AMI (the newest match of aws_arch is used); empty: debian-12-AWS_ARCH-*."
}

variable "aws_source_ami_owner" {
  type        = string
  default     = "136693071363"
  description = "Owner account of the source AMI (Debian's official AMIs)."
}

variable "gcp_source_image_family" {
  type        = string
  default     = "debian-12"
  description = "Image family of the source image (the newest image of the family is used)."
}

variable "gcp_source_image_project" {
  type        = string
  default     = "debian-cloud"
  description = "Project of the source image family (Debian's images: debian-cloud)."
}

variable "azure_image_publisher" {
  type        = string
  default     = "Debian"
  description = "Publisher of the source Marketplace image."
}

variable "azure_image_offer" {
  type        = string
  default     = "debian-12"
  description = "Offer of the source Marketplace image."
}

variable "azure_image_sku" {
  type        = string
  default     = "12-gen2"
  description = "SKU of the source Marketplace image (12-gen2: Hyper-V generation 2, UEFI)."
}
