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


def gallery_options(func: Any) -> Any:
    """Declared gallery values; the gallery.* checks compare them with what the disk supports."""
    return _stack(func, [
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
                     help="Image definition end-of-life date (ISO-8601, in the future)."),
    ])


def declaration_of(opts: dict[str, Any], accelerated: bool | None) -> Any:
    """A checks.gallery.Declaration of the gallery options, or None when none was given."""
    from vhdtool.checks.gallery import Declaration
    values = {"security_type": opts.get("security_type"),
              "disk_controllers": tuple(opts["disk_controller"].split(","))
              if opts.get("disk_controller") else None,
              "accelerated_networking": accelerated,
              **{k: opts.get(k) for k in ("publisher", "offer", "sku", "gallery", "definition",
                                           "end_of_life")},
              "version": opts.get("image_version")}
    if all(v is None for v in values.values()):
        return None
    return Declaration(**values)
