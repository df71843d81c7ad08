# app: a small HTTP service on the latest verified base image.
# Rendered by `factory render app`; every value is quoted by the hcl filter.
# Per-build values (ids, names, tags, the resolved source AMI) arrive as Packer variables,
# so the rendered text (and its digest) changes only when the template or its inputs do.
variable "build_id" {
  type = string
}

variable "version" {
  type = string
}

variable "ami_name" {
  type = string
}

variable "source_ami" {
  type = string
}

variable "endpoint" {
  type    = string
  default = ""
}

variable "image_tags" {
  type = map(string)
}

variable "run_tags" {
  type = map(string)
}

source "amazon-ebs" "app" {
  region                     = "us-east-1"
  custom_endpoint_ec2        = var.endpoint
  skip_region_validation     = true
  skip_metadata_api_check    = true
  skip_credential_validation = true

  instance_type   = "t3.micro"
  ami_name        = var.ami_name
  ami_description = "ami-factory app: HTTP service on the base image"
  ssh_username    = "admin"
  ssh_timeout     = "10m"

  # our own account's images only, pinned to the verified parent resolved at build start
  source_ami_filter {
    owners      = ["self"]
    most_recent = true
    filters = {
      "tag:factory:family" = "base"
      image-id             = var.source_ami
    }
  }

  temporary_key_pair_name = "factory-${var.build_id}"
  tags                    = var.image_tags
  snapshot_tags           = var.image_tags
  run_tags                = var.run_tags
  run_volume_tags         = var.run_tags
}

build {
  sources = ["source.amazon-ebs.app"]

  provisioner "shell" {
    environment_vars = [
      "DEBIAN_FRONTEND=noninteractive",
      "FACTORY_FAMILY=app",
      "FACTORY_VERSION=${var.version}",
      "FACTORY_BUILD_ID=${var.build_id}",
      "FACTORY_APP_PORT=8080",
    ]
    execute_command = "sudo -n env {{ .Vars }} bash '{{ .Path }}'"
    scripts = [
      "provisioners/app/10-service.sh",
      "provisioners/common/40-release.sh",
      "provisioners/common/90-cleanup.sh",
    ]
  }

  # AMI ids come from here, never from Packer's log lines; each build has its own file
  post-processor "manifest" {
    output     = "manifest.json"
    strip_path = true
  }
}
