"""The references the checks rest on: one registry of titles and URLs, and how a check cites them.

A check's ``source`` is a tuple of citations, each a key of :data:`REFERENCES`, optionally followed
by ``": "`` and a detail (a section, a test number, the file of a repository); a detail holding
"U" marks what no source confirmed (a design inference, hence mostly warnings). The catalog test
proves every key resolves, every URL is https, and no entry goes unused; the docs, ``vhdtool
checks show`` and the SARIF rules (``helpUri``) show the links.
"""

from __future__ import annotations

from dataclasses import dataclass

LEARN = "https://learn.microsoft.com/azure/virtual-machines"
TROUBLESHOOT = "https://learn.microsoft.com/troubleshoot/azure/virtual-machines/linux"
WAAGENT = "https://github.com/Azure/WALinuxAgent"


@dataclass(frozen=True)
class Reference:
    title: str
    url: str


REFERENCES: dict[str, Reference] = {
    # -- Microsoft Learn: preparing and uploading Linux images ---------------------------------
    "GEN": Reference("Azure: Prepare Linux for imaging in Azure (generic distributions)",
                     f"{LEARN}/linux/create-upload-generic"),
    "RHEL": Reference("Azure: Prepare a Red Hat-based virtual machine for Azure",
                      f"{LEARN}/linux/redhat-create-upload-vhd"),
    "UBU": Reference("Azure: Prepare an Ubuntu virtual machine for Azure",
                     f"{LEARN}/linux/create-upload-ubuntu"),
    "IMGL": Reference("Azure: Bring and create Linux images in Azure", f"{LEARN}/linux/imaging"),
    "UPL": Reference("Azure: Upload a VHD to Azure or copy a managed disk (Azure CLI)",
                     f"{LEARN}/linux/disks-upload-vhd-to-managed-disk-cli"),
    "NOAG": Reference("Azure: Creating generalized images without a provisioning agent",
                      f"{LEARN}/linux/no-agent"),
    "MKT": Reference("Microsoft Marketplace: Azure VM certification troubleshooting (Linux test "
                     "cases, VHD specifications)",
                     "https://learn.microsoft.com/partner-center/marketplace-offers/"
                     "azure-vm-certification-faq"),
    # -- Microsoft Learn: generations, galleries, Trusted Launch, NVMe, networking -------------
    "GEN2": Reference("Azure: Support for generation 2 VMs", f"{LEARN}/generation-2"),
    "ACG": Reference("Azure Compute Gallery overview", f"{LEARN}/azure-compute-gallery"),
    "ACG-OV": Reference("Azure: Store and share images in an Azure Compute Gallery (image "
                        "definitions)", f"{LEARN}/shared-image-galleries"),
    "IMGV": Reference("Azure: Create an image definition and an image version",
                      f"{LEARN}/image-version"),
    "ACG-UPD": Reference("Azure: Update resources in an Azure Compute Gallery",
                         f"{LEARN}/update-image-resources"),
    "ACG-SHARE": Reference("Azure: Share gallery resources (private, direct shared, community)",
                           f"{LEARN}/share-gallery"),
    "ACG-COMM": Reference("Azure: Share images using a community gallery (limitations)",
                          f"{LEARN}/share-gallery-community"),
    "AZ-SIG": Reference("Azure CLI 2.91.0: az sig create / az sig update (--permissions "
                        "Community with --publisher-uri, --publisher-email, --eula, "
                        "--public-name-prefix)", "https://learn.microsoft.com/cli/azure/sig"),
    "ACG-REPL": Reference("Azure Compute Gallery: scaling, replication and shallow replication",
                          f"{LEARN}/azure-compute-gallery#scaling"),
    "SDK-GAL": Reference("azure-mgmt-compute 34.1.0 models (API 2023-07-03): GalleryImage, "
                         "GalleryImageVersionPublishingProfile, StorageAccountType, "
                         "DiskStorageAccountTypes", "https://pypi.org/project/azure-mgmt-compute/"),
    "REGIONS": Reference("Azure public regions (names as `az account list-locations` gives them), "
                         "as listed by Azure/karpenter-provider-azure hack/code/prices_gen.go",
                         "https://github.com/Azure/karpenter-provider-azure/blob/"
                         "6872c29c4181ffc908018fd9013d79394145bc4f/hack/code/prices_gen.go"),
    "DPS6": Reference("Azure: Dpsv6 sizes series (Arm64)",
                      f"{LEARN}/sizes/general-purpose/dpsv6-series"),
    "TL": Reference("Azure: Trusted Launch for Azure virtual machines", f"{LEARN}/trusted-launch"),
    "TLF": Reference("Azure: Trusted Launch FAQ", f"{LEARN}/trusted-launch-faq"),
    "UEFIK": Reference("Azure: Trusted Launch Secure Boot custom UEFI keys",
                       f"{LEARN}/trusted-launch-secure-boot-custom-uefi"),
    "NVME": Reference("Azure: Converting virtual machines running Linux from SCSI to NVMe",
                      f"{LEARN}/nvme-linux"),
    "NVF": Reference("Azure: NVMe FAQ", f"{LEARN}/enable-nvme-faqs"),
    "AN": Reference("Azure: How Accelerated Networking works in Linux and FreeBSD VMs",
                    "https://learn.microsoft.com/azure/virtual-network/"
                    "accelerated-networking-how-it-works"),
    "MANA": Reference("Azure: Linux VMs with Azure MANA",
                      "https://learn.microsoft.com/azure/virtual-network/"
                      "accelerated-networking-mana-linux"),
    # -- Microsoft Learn: troubleshooting --------------------------------------------------------
    "HVD": Reference("Azure: Linux VM boot failures caused by Hyper-V driver issues",
                     f"{TROUBLESHOOT}/linux-vm-no-boot-hyper-v-driver-issues"),
    "UEFIB": Reference("Azure: Linux VM UEFI boot failures",
                       f"{TROUBLESHOOT}/azure-linux-vm-uefi-boot-failures"),
    "PROVE": Reference("Azure: Troubleshoot Linux custom image provisioning errors",
                       f"{TROUBLESHOOT}/linux-custom-image-provisioning-errors"),
    "SBC": Reference("Azure: Secure Boot certificate updates for Linux VMs with Trusted Launch",
                     "https://github.com/MicrosoftDocs/SupportArticles-docs/blob/main/support/"
                     "azure/virtual-machines/linux/"
                     "linux-vm-secure-boot-cert-updates-trusted-launch.md"),
    "DOCS-12407": Reference("azure-docs issue 12407 (the provisioning CD-ROM needs sr_mod)",
                            "https://github.com/MicrosoftDocs/azure-docs/issues/12407"),
    "ASE-3029": Reference("Azure Storage Explorer issue 3029 (upload size limits)",
                          "https://github.com/microsoft/AzureStorageExplorer/issues/3029"),
    # -- the agents --------------------------------------------------------------------------------
    "WA-CONF": Reference("WALinuxAgent README: configuration (waagent.conf)",
                         f"{WAAGENT}/blob/master/README.md#configuration"),
    "WA-DP": Reference("WALinuxAgent: deprovisioning (azurelinuxagent/pa/deprovision/default.py)",
                       f"{WAAGENT}/blob/master/azurelinuxagent/pa/deprovision/default.py"),
    "WA-PROV": Reference("WALinuxAgent: provisioning (azurelinuxagent/pa/provision)",
                         f"{WAAGENT}/tree/master/azurelinuxagent/pa/provision"),
    "WA-706": Reference("WALinuxAgent issue 706 (a leftover 'provisioned' marker)",
                        f"{WAAGENT}/issues/706"),
    "CI": Reference("cloud-init: the Azure datasource",
                    "https://docs.cloud-init.io/en/latest/reference/datasources/azure.html"),
    "CI-CLEAN": Reference("cloud-init: cloud-init clean (cloudinit/cmd/clean.py)",
                          "https://github.com/canonical/cloud-init/blob/main/cloudinit/cmd/"
                          "clean.py"),
    "AVU": Reference("azure-vm-utils (udev rules for Azure disks and NICs)",
                     "https://github.com/Azure/azure-vm-utils"),
    "WA-SRIOV": Reference("WALinuxAgent: config/68-azure-sriov-nm-unmanaged.rules (NetworkManager "
                          "ignores the Accelerated Networking VFs)",
                          f"{WAAGENT}/blob/master/config/68-azure-sriov-nm-unmanaged.rules"),
    "WA-2921": Reference("WALinuxAgent issue 2921 (no Python interpreter found on the box)",
                         f"{WAAGENT}/issues/2921"),
    "EXT-361": Reference("azure-linux-extensions issue 361 (/usr/bin/env: python: No such file or "
                         "directory)", "https://github.com/Azure/azure-linux-extensions/issues/361"),
    "TIME": Reference("Azure: Time sync for Linux VMs in Azure (chrony and the PTP clock source)",
                      f"{LEARN}/linux/time-sync"),
    "DEVN": Reference("Azure: Troubleshoot Linux VM device name changes (fstab nofail)",
                      f"{TROUBLESHOOT}/troubleshoot-device-names-problems"),
    # -- peers: validators and migration tools --------------------------------------------------
    "LISA": Reference("microsoft/lisa: the Azure image standard test suite "
                      "(testsuites/core/azure_image_standard.py)",
                      "https://github.com/microsoft/lisa/blob/main/lisa/microsoft/testsuites/core/"
                      "azure_image_standard.py"),
    "LISA-TS": Reference("microsoft/lisa: the time-sync test suite (testsuites/core/timesync.py)",
                         "https://github.com/microsoft/lisa/blob/main/lisa/microsoft/testsuites/"
                         "core/timesync.py"),
    "CIV": Reference("osbuild/cloud-image-val: Azure tests (test_suite/cloud/test_azure.py)",
                     "https://github.com/osbuild/cloud-image-val/blob/main/test_suite/cloud/"
                     "test_azure.py"),
    "GCE-TR": Reference("Google Compute Engine image import: the translate scripts "
                        "(daisy_workflows/image_import, linux_common/utils/common.py)",
                        "https://github.com/GoogleCloudPlatform/compute-image-import"),
    "AWS-VMIE": Reference("AWS VM Import/Export: programmatic modifications to VMs",
                          "https://docs.aws.amazon.com/vm-import/latest/userguide/"
                          "import-modify-vm.html"),
    "SELINUX": Reference("Red Hat Enterprise Linux 9: Using SELinux (changing SELinux states and "
                         "modes; relabeling on the next boot)",
                         "https://docs.redhat.com/en/documentation/red_hat_enterprise_linux/9/html/"
                         "using_selinux/changing-selinux-states-and-modes_using-selinux"),
    # -- formats and firmware ----------------------------------------------------------------------
    "VHDSPEC": Reference("Virtual Hard Disk Image Format Specification v1.0",
                         "https://www.microsoft.com/en-us/download/details.aspx?id=23850"),
    "VHDX": Reference("[MS-VHDX]: Virtual Hard Disk v2 (VHDX) File Format",
                      "https://learn.microsoft.com/openspecs/windows_protocols/ms-vhdx/"
                      "83e061f8-f6e2-4de1-91bd-5d518a43d477"),
    "VHDU": Reference("azure-vhd-utils (vhdcore/footer, vhdcore/validator/validator.go)",
                      "https://github.com/Microsoft/azure-vhd-utils"),
    "QEMU-VPC": Reference("QEMU block/vpc.c (vpc_open: the size each creator's VHD is read at)",
                          "https://gitlab.com/qemu-project/qemu/-/blob/master/block/vpc.c"),
    "UEFI": Reference("UEFI Specification 2.10", "https://uefi.org/specs/UEFI/2.10/"),
    "BLS": Reference("UAPI Group: Boot Loader Specification (type #1 entries, options)",
                     "https://uapi-group.org/specifications/specs/boot_loader_specification/"),
}


def split(citation: str) -> tuple[str, str]:
    """(key, detail) of a citation ``"KEY"`` or ``"KEY: detail"``."""
    key, _, detail = citation.partition(": ")
    return key, detail


def reference(citation: str) -> Reference:
    key = split(citation)[0]
    try:
        return REFERENCES[key]
    except KeyError:
        raise KeyError(f"source {key!r} is not in checks.sources.REFERENCES") from None


def text(citations: tuple[str, ...]) -> str:
    """Plain text: ``Title (detail) <URL>; ...`` (reports and ``vhdtool checks show``)."""
    parts = []
    for c in citations:
        ref, detail = reference(c), split(c)[1]
        parts.append(f"{ref.title}" + (f" ({detail})" if detail else "") + f" <{ref.url}>")
    return "; ".join(parts)


def markdown(citations: tuple[str, ...]) -> str:
    """Markdown links: ``[Title](URL) (detail); ...`` (docs/checks.md)."""
    parts = []
    for c in citations:
        ref, detail = reference(c), split(c)[1]
        parts.append(f"[{ref.title}]({ref.url})" + (f" ({detail})" if detail else ""))
    return "; ".join(parts)


__all__ = ["REFERENCES", "Reference", "markdown", "reference", "split", "text"]
