# Variables of the app image only (the shared ones are in common-variables.pkr.hcl);
# each is documented in packer/README.md.

variable "image_name" {
  type        = string
  default     = "farmhand-app"
  description = "Name of the image: docker repository, qemu disk file, AMI name prefix."
}

# docker source
variable "base_image_name" {
  type        = string
  default     = "farmhand-base"
  description = "Name the base image was built with (its image_name): the docker image, qemu output and AMI to start from."
}

variable "base_image_tag" {
  type        = string
  default     = "latest"
  description = "Docker tag of the base image."
}

variable "farmhand_wheel" {
  type        = string
  default     = ""
  description = "The farmhand wheel to install; empty: the farmhand role builds one from the checkout."
}

# qemu source
variable "vm_image_dir" {
  type        = string
  default     = "/var/cache/farmhand-vm/debian12-latest"
  description = "Output directory of scripts/build-vm-image.sh: its id_ed25519 logs in to the base image too."
}

variable "aws_base_ami_owner" {
  type        = string
  default     = "self"
  description = "Owner of the base AMI (the newest AMI named base_image_name-* is used)."
}

variable "azure_base_image" {
  type        = string
  default     = ""
  description = "Name of the base's managed image in azure_resource_group (e.g. farmhand-base-20240101120000: the base build's manifest)."
}
