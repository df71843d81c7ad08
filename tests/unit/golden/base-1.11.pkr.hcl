# base: the Debian 12 golden image every other family builds on.
# Rendered by `factory render base`; every value is quoted by the hcl filter.
# Per-build values (ids, names, tags, the resolved source AMI) arrive as Packer variables,
# so the rendered text (and its digest) changes only when the template or its inputs do.
packer {
  required_plugins {
    amazon = {
      version = ">= 1.2.0"
      source  = "github.com/hashicorp/amazon"
    }
  }
}

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

source "amazon-ebs" "base" {
  region                     = "us-east-1"
  skip_region_validation     = true
  skip_metadata_api_check    = true
  skip_credential_validation = true

  instance_type   = "t3.micro"
  ami_name        = var.ami_name
  ami_description = "ami-factory base: Debian 12 golden image"
  ssh_username    = "admin"
  ssh_timeout     = "10m"

  # owner-pinned, and pinned to the image the factory resolved when the build started
  source_ami_filter {
    owners      = ["136693071363"]
    most_recent = true
    filters = {
      name     = "debian-12-amd64-*"
      image-id = var.source_ami
    }
  }

  launch_block_device_mappings {
    device_name           = "/dev/xvda"
    volume_size           = 8
    volume_type           = "gp3"
    iops                  = 3000
    throughput            = 125
    delete_on_termination = true
  }

  temporary_key_pair_name = "factory-${var.build_id}"
  tags                    = merge({}, var.image_tags)
  snapshot_tags           = merge({}, var.image_tags)
  run_tags                = var.run_tags
  run_volume_tags         = var.run_tags
}

build {
  sources = ["source.amazon-ebs.base"]

  provisioner "shell" {
    environment_vars = [
      "DEBIAN_FRONTEND=noninteractive",
      "FACTORY_FAMILY=base",
      "FACTORY_VERSION=${var.version}",
      "FACTORY_BUILD_ID=${var.build_id}",
      "FACTORY_EXTRA_PACKAGES=",
    ]
    execute_command = "sudo -n env {{ .Vars }} bash '{{ .Path }}'"
    scripts = [
      "provisioners/base/10-updates.sh",
      "provisioners/base/20-hardening.sh",
      "provisioners/base/30-timesync.sh",
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
