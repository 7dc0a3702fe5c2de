# Packer: boot a Debian disk image with the qemu builder, then let vhdtool fix what it can offline
# (`vhdtool fix --generalize`: the deprovision state the boot left, on a copy), turn the artifact
# into an Azure-ready fixed VHD, check it again and write its upload manifest. Every step fails the
# build on error: shell-local runs the lines with `sh -e`, and `vhdtool fix` / `vhdtool manifest`
# exit 1 when a check of the fixed image fails at or above --fail-on (see docs/exit-codes.md,
# docs/fix.md). To convert without fixing, replace the `fix` line by
#   vhdtool convert --force disk.raw disk.vhd && vhdtool check disk.vhd --format ...
#
#   packer build -var source_image=debian-12.raw docs/examples/packer/azure-debian.pkr.hcl
#
# A failing step fails the build, and Packer then deletes the build's artifacts: the findings are
# in the build log (the check's text report).
#
# The fix's text report (each finding before -> after, then the check of disk.vhd) is printed in
# the build log. Outputs in var.output_dir: disk.vhd (upload it), check.sarif and check.junit.xml
# (CI reports of the fixed image), manifest.json (keep it: sizes, digests, the gallery definition with its evidence) and
# upload.sh (az disk create / azcopy / az sig commands from the manifest).

variable "source_image" {
  type        = string
  description = "A bootable raw disk image (for example from fixtures/ or debootstrap)."
}

variable "output_dir" {
  type    = string
  default = "output-azure"
}

variable "accelerator" {
  type        = string
  default     = "kvm"
  description = "qemu accelerator: kvm, or tcg where /dev/kvm is missing."
}

variable "vhdtool" {
  type    = string
  default = "vhdtool"
}

variable "gallery_args" {
  type        = string
  default     = ""
  description = "Declared gallery values, e.g. --publisher myorg --offer debian --sku 12 --gallery my_gallery --definition debian-12 --image-version 1.0.0"
}

source "qemu" "debian" {
  iso_url          = var.source_image
  iso_checksum     = "none"
  disk_image       = true
  use_backing_file = false
  skip_resize_disk = true
  format           = "raw"
  accelerator      = var.accelerator
  headless         = true
  memory           = 1024
  # This example only re-packages an image that is already prepared (deprovisioned): with no
  # communicator, the shell-local provisioner below stops the VM through QMP right after it
  # starts, before the generalized guest boots (booting it would provision it). A build that
  # customises the image uses an ssh communicator, provisioners, and a shutdown_command that
  # deprovisions (waagent -force -deprovision+user; cloud-init clean --logs --machine-id).
  communicator     = "none"
  boot_wait        = "0s"
  shutdown_timeout = "5m"
  qemuargs         = [["-qmp", "unix:${var.output_dir}.qmp,server=on,wait=off"]]
  output_directory = var.output_dir
  vm_name          = "disk.raw"
}

build {
  sources = ["source.qemu.debian"]

  provisioner "shell-local" {
    inline = ["python3 ${path.root}/qmp-quit.py ${var.output_dir}.qmp"]
  }

  post-processor "shell-local" {
    inline = [
      "${var.vhdtool} fix --force --no-progress --generalize ${var.output_dir}/disk.raw ${var.output_dir}/disk.vhd --format text --format sarif:${var.output_dir}/check.sarif --format junit:${var.output_dir}/check.junit.xml ${var.gallery_args}",
      "${var.vhdtool} manifest ${var.output_dir}/disk.vhd --md5 -o ${var.output_dir}/manifest.json --commands ${var.gallery_args} > ${var.output_dir}/upload.sh",
    ]
  }
}
