"""The command-line options and their meaning, declared once for the commands that share them
(``check``, ``manifest``, and the coming ``fix``): the image argument and format, the profile
(OS state, generation), ``--fail-on``, the guest engine options, the declared gallery values;
and how a command runs with the chosen guest engine."""

from __future__ import annotations

import sys
from typing import Any

import click

from .exitcodes import Exit

FORMAT_CHOICE = click.Choice(["raw", "vpc", "vhd", "vhdx", "qcow2"])
#: an image argument: any path; what is not a readable disk image (a directory, a FIFO, a file
#: that cannot be read) is the format core's error, exit 3, not a usage error
IMAGE_PATH = click.Path(readable=False)


# The check catalog is imported only by the commands that use it (convert need not pay for it);
# these choices spell its constants (checks.catalog GENERALIZED, SPECIALIZED, V1, V2) — a test
# holds them equal.
OS_STATES = ("generalized", "specialized")
#: checks.gallery.SECURITY_TYPES, spelled here for the same reason
SECURITY_TYPES = ("Standard", "TrustedLaunchSupported", "TrustedLaunch", "ConfidentialVmSupported",
                  "ConfidentialVM", "TrustedLaunchAndConfidentialVmSupported")
GENERATIONS: dict[str, tuple[str, ...] | None] = {"1": ("V1",), "2": ("V2",), "both": ("V1", "V2"),
                                                  "auto": None}


def profile_of(os_state: str, generation: str, role: str, features: dict[str, bool]) -> Any:
    from vhdtool.checks.catalog import Profile

    gens = GENERATIONS[generation]
    return Profile(os_state=os_state, generations=None if gens is None else frozenset(gens),
                   role=role, features=frozenset(name for name, on in features.items() if on))


def _stack(func: Any, opts: list[Any]) -> Any:
    """``func`` decorated with ``opts`` (listed in the order --help shows them)."""
    for opt in reversed(opts):
        func = opt(func)
    return func


def image_options(os_state_help: str, generation_help: str) -> Any:
    """-f/--image-format, --os-state and --generation, shared by check and manifest (and fix):
    what the image is and how it will be registered; each command words the help its way."""

    def apply(func: Any) -> Any:
        return _stack(func, [
            click.option("-f", "--image-format", "fmt", type=FORMAT_CHOICE, default=None,
                         help="Image format (probed from magic bytes when omitted)."),
            click.option("--os-state", type=click.Choice(OS_STATES), default=OS_STATES[0],
                         show_default=True, help=os_state_help),
            click.option("--generation", type=click.Choice(list(GENERATIONS)), default="auto",
                         show_default=True, help=generation_help)])
    return apply


def fail_on_option(func: Any) -> Any:
    """--fail-on, shared by check and manifest."""
    return click.option("--fail-on", type=click.Choice(["error", "warning", "info"]),
                        default="error", show_default=True,
                        help="Exit 1 when a finding is at or above this severity.")(func)


guest_timeout_option = click.option(
    "--guest-timeout", type=float, default=300.0, show_default=True,
    help="Seconds allowed for the libguestfs appliance to start.")


def selection_options(func: Any) -> Any:
    """--select and --ignore, shared by check and fix."""
    return _stack(func, [
        click.option("--select", multiple=True, metavar="ID", help="Run only these ids or prefixes."),
        click.option("--ignore", multiple=True, metavar="ID", help="Skip these ids or prefixes.")])


def report_options(func: Any) -> Any:
    """--format, -o, --color and --show-skipped: the reports of check (and fix)."""
    return _stack(func, [
        click.option("--format", "formats", multiple=True, metavar="NAME[:FILE]",
                     help="Report: text, json, junit or sarif, optionally to FILE; repeatable."),
        click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
                     help="File for the first --format that names none."),
        click.option("--color/--no-color", default=None,
                     help="Colour the text report (default: on a TTY)."),
        click.option("--show-skipped", is_flag=True,
                     help="Text report: list the checks that did not apply, with the reason "
                          "(else counted).")])


def manifest_file_options(of: str) -> Any:
    """--manifest FILE and --md5, shared by check and fix; ``of`` says what it describes."""
    def apply(func: Any) -> Any:
        return _stack(func, [
            click.option("--manifest", "manifest_path", type=click.Path(dir_okay=False),
                         default=None, help=f"Also write the upload manifest (JSON) of {of} to "
                                            "FILE."),
            click.option("--md5", is_flag=True,
                         help="Manifest: also MD5 (hex and Azure's base64 form).")])
    return apply


def check_selection(select: tuple[str, ...], ignore: tuple[str, ...]) -> None:
    """Every --select/--ignore pattern matches a check id, else a usage error."""
    from vhdtool import checks
    from vhdtool.checks.catalog import selected
    known = checks.load()
    for pattern in select + ignore:
        if not any(selected(cid, [pattern], []) for cid in known):
            raise click.UsageError(f"--select/--ignore {pattern!r} matches no check id")


def manifest_setup(image: str, profile: Any, manifest_path: str | None, md5: bool,
                   declaration: Any, digests_from: str | None = None) -> tuple[Any, Any, Any]:
    """(profile with the declaration, digests started in a thread, collect hook) for a run.

    A manifest implies a (possibly empty) declaration, so the gallery.* checks run.  ``image``
    None: no digests are started (``vhdtool fix`` takes them from its conversion).
    """
    from vhdtool.checks.gallery import Declaration, declare
    if declaration is None and manifest_path is None:
        return profile, None, None
    profile = declare(profile, declaration or Declaration())
    if manifest_path is None:
        return profile, None, None
    from .manifest import Digests, collect
    return profile, Digests(image, md5, digests_from) if image else None, collect


def guest_options(func: Any) -> Any:
    """--guest/--no-guest, --guest-timeout and --engine, shared by check and manifest."""
    return _stack(func, [
        click.option("--guest/--no-guest", default=True, show_default=True,
                     help="Open the guest read-only (see --engine) and run the guest checks "
                          "(--no-guest: disk-level checks only, no guest engine needed)."),
        guest_timeout_option,
        click.option("--engine", "engine_name", type=click.Choice(["auto", "native", "guestfs"]),
                     default="auto", show_default=True,
                     help="Guest engine: native (in-process readers, no appliance), guestfs "
                          "(libguestfs), auto (native when it reads every filesystem the guest "
                          "mounts)."),
    ])


def _data_disks(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> Any:
    from .datadisks import parse
    try:
        return parse(values)
    except ValueError as e:
        raise click.BadParameter(str(e), ctx=ctx, param=param) from None


def data_disk_option(func: Any) -> Any:
    """--data-disk LUN=FILE (repeatable), shared by check and manifest (and fix): the image's
    data disks, each checked at disk level with the data-disk role (vhdtool/datadisks.py)."""
    return click.option("--data-disk", "data_disks", multiple=True, metavar="LUN=FILE",
                        callback=_data_disks,
                        help="A data disk of the image at its LUN (0-63, unique); repeatable. "
                             "Each is read and checked as a data disk (fixed VHD, whole MiB, "
                             "size limit) and carried by the manifest and its commands.")(func)


def run_with_engine(command: str, image: str, guest: bool, engine_name: str, timeout: float,
                     run: Any) -> Any:
    """``run(engine)`` with the chosen guest engine; exit 4 when no engine can open the guest."""
    from .engines import AutoEngine
    from .guestfs_engine import GuestEngineUnavailable
    from .native_engine import NativeEngineUnavailable
    engine = AutoEngine(engine_name, timeout=timeout) if guest else None
    try:
        result = run(engine)
    except (GuestEngineUnavailable, NativeEngineUnavailable) as e:
        click.echo(f"vhdtool: error: {e}\nvhdtool: run `vhdtool {command} --no-guest {image}` for "
                   "the disk-level facts and checks only", err=True)
        sys.exit(Exit.MISSING_TOOL)
    if engine is not None and engine.skip_reason:
        click.echo(f"vhdtool: warning: guest checks skipped: {engine.skip_reason}", err=True)
    return result


def _pairs(param: str, values: tuple[str, ...], sep: str = "=") -> list[tuple[str, str]]:
    out = []
    for v in values:
        key, eq, value = v.partition(sep)
        if not eq or not key:
            raise click.BadParameter(f"{v!r} is not KEY{sep}VALUE", param_hint=param)
        out.append((key, value))
    return out


def _int(param: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not an integer", param_hint=param) from None


def parse_range(param: str, text: str | None) -> tuple[int | None, int | None] | None:
    """``MIN-MAX``, ``MIN-`` or ``-MAX`` (or ``N``: MIN=MAX=N)."""
    if text is None:
        return None
    low, dash, high = text.partition("-")
    if not dash:
        return (_int(param, low), _int(param, low))
    return (_int(param, low) if low else None, _int(param, high) if high else None)


def parse_regions(values: tuple[str, ...]) -> tuple[tuple[str, int | None], ...] | None:
    """``REGION`` or ``REGION=COUNT``, as az's --target-regions spells them."""
    if not values:
        return None
    out = []
    for v in values:
        name, eq, count = v.partition("=")
        if not name or (eq and not count):
            raise click.BadParameter(f"{v!r} is not REGION[=COUNT]", param_hint="--target-region")
        out.append((name, _int("--target-region", count) if eq else None))
    return tuple(out)


GALLERY_FILE_HELP = ("Declaration file (YAML or JSON, vhdtool/schemas/gallery.schema.json, the "
                     "keys of the manifest's gallery.declared); options given on the command "
                     "line win over it.")


def gallery_options(func: Any) -> Any:
    """Declared gallery values (the image definition, the version, its replication, sharing and
    source; docs/gallery.md); the gallery.* checks compare them with the disk and Azure's rules.
    ``--location`` is the source region (also where the upload commands create the disk)."""
    return _stack(func, [
        click.option("--gallery-file", type=click.Path(dir_okay=False), default=None,
                     metavar="FILE", help=GALLERY_FILE_HELP),
        click.option("--security-type", type=click.Choice(SECURITY_TYPES), default=None,
                     help="Declared features SecurityType (TrustedLaunchSupported needs a "
                          "Microsoft-signed shim and Gen2)."),
        click.option("--disk-controller", type=click.Choice(["SCSI", "SCSI,NVMe", "NVMe"]),
                     default=None, help="Declared DiskControllerTypes."),
        click.option("--publisher", default=None, help="Image definition publisher."),
        click.option("--offer", default=None, help="Image definition offer."),
        click.option("--sku", default=None, help="Image definition SKU."),
        click.option("--gallery", default=None, help="Azure Compute Gallery name."),
        click.option("--definition", default=None, help="Image definition name."),
        click.option("--image-version", default=None, help="Image version (MAJOR.MINOR.PATCH)."),
        click.option("--end-of-life", default=None, metavar="DATE",
                     help="End-of-life date of the definition and the version (ISO-8601, in "
                          "the future)."),
        click.option("--description", default=None, help="Image definition description."),
        click.option("--eula", default=None, help="Image definition EULA text."),
        click.option("--privacy-statement-uri", default=None, metavar="URI"),
        click.option("--release-note-uri", default=None, metavar="URI"),
        click.option("--tag", "tags", multiple=True, metavar="K=V",
                     help="Tag of the definition and the version; repeatable."),
        click.option("--vcpus", default=None, metavar="MIN-MAX",
                     help="Recommended vCPUs (MIN-MAX, MIN- or -MAX)."),
        click.option("--memory", default=None, metavar="MIN-MAX",
                     help="Recommended memory in MB (MIN-MAX; passed unchanged to az's "
                          "--minimum/maximum-memory and the fragment's recommended.memory)."),
        click.option("--disallowed-disk-type", "disallowed_disk_types", multiple=True,
                     metavar="TYPE", help="Disk type the image must not use (e.g. Standard_LRS); "
                                          "repeatable."),
        click.option("--plan-publisher", default=None, help="Purchase plan publisher."),
        click.option("--plan-name", default=None, help="Purchase plan name."),
        click.option("--plan-product", default=None, help="Purchase plan product."),
        click.option("--location", default=None,
                     help="Source region: where the disk is uploaded and the version created."),
        click.option("--target-region", "target_regions", multiple=True, metavar="REGION[=N]",
                     help="Replication target region, with its replica count; repeatable (the "
                          "source region must be among them)."),
        click.option("--replica-count", type=int, default=None,
                     help="Replicas in each target region that gives no count."),
        click.option("--storage-account-type", default=None, metavar="TYPE",
                     help="Storage of the replicas: Standard_LRS, Standard_ZRS or Premium_LRS."),
        click.option("--exclude-from-latest/--no-exclude-from-latest", default=None,
                     help="Keep this version out of 'latest'."),
        click.option("--replication-mode", type=click.Choice(["Full", "Shallow"]), default=None,
                     help="Full (copies, for scale) or Shallow (no copy, development and test)."),
        click.option("--sharing", type=click.Choice(["private", "direct", "community"]),
                     default=None, help="Who the gallery reaches: private (RBAC), direct "
                                        "(subscriptions or tenants), community (everyone)."),
        click.option("--source", type=click.Choice(["managed-disk", "managed-image",
                                                   "storage-vhd"]), default=None,
                     help="What the version is made from (default managed-disk)."),
        click.option("--publisher-uri", default=None, metavar="URI",
                     help="Community gallery: the publisher's website (public)."),
        click.option("--publisher-email", default=None, metavar="ADDRESS",
                     help="Community gallery: the publisher's support e-mail (public)."),
        click.option("--community-eula", default=None, metavar="URI",
                     help="Community gallery: its end-user license agreement, a link (az sig "
                          "update --eula; not the definition's --eula)."),
        click.option("--public-name-prefix", default=None, metavar="PREFIX",
                     help="Community gallery: prefix of its public name."),
    ])


def declaration_of(opts: dict[str, Any], accelerated: bool | None) -> Any:
    """A checks.gallery.Declaration of the gallery options over the ``--gallery-file`` values,
    or None when neither declares anything."""
    from vhdtool.checks.gallery import Declaration
    values: dict[str, Any] = {}
    if opts.get("gallery_file"):
        from .galleryfile import GalleryFileError, load
        try:
            values.update(load(opts["gallery_file"]))
        except GalleryFileError as e:
            raise click.BadParameter(str(e), param_hint="--gallery-file") from None
    given = {
        "security_type": opts.get("security_type"),
        "disk_controllers": tuple(opts["disk_controller"].split(","))
        if opts.get("disk_controller") else None,
        "accelerated_networking": accelerated,
        **{k: opts.get(k) for k in ("publisher", "offer", "sku", "gallery", "definition",
                                     "end_of_life", "description", "eula",
                                     "privacy_statement_uri", "release_note_uri", "plan_publisher",
                                     "plan_name", "plan_product", "location", "replica_count",
                                     "storage_account_type", "exclude_from_latest",
                                     "replication_mode", "sharing", "source", "publisher_uri",
                                     "publisher_email", "community_eula",
                                     "public_name_prefix")},
        "version": opts.get("image_version"),
        "tags": tuple(_pairs("--tag", opts.get("tags") or ())) or None,
        "vcpus": parse_range("--vcpus", opts.get("vcpus")),
        "memory": parse_range("--memory", opts.get("memory")),
        "disallowed_disk_types": tuple(opts.get("disallowed_disk_types") or ()) or None,
        "target_regions": parse_regions(tuple(opts.get("target_regions") or ())),
    }
    values.update({k: v for k, v in given.items() if v is not None})
    if not values:
        return None
    try:
        return Declaration(**values)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--gallery-file") from None


def data_disks_of(disks: tuple[Any, ...], declaration: Any, profile: Any,
                select: tuple[str, ...] = (), ignore: tuple[str, ...] = (),
                md5: bool | None = None) -> list[Any]:
    """Check each ``--data-disk`` (before the OS disk's guest is opened: an unreadable data
    disk stops the run early, exit 3 naming it); usage error when the route cannot carry them."""
    from .datadisks import route_problem, run_all
    problem = route_problem(disks, getattr(declaration, "source", None))
    if problem:
        raise click.BadParameter(problem, param_hint="--data-disk")
    return run_all(disks, profile, select, ignore, md5)
