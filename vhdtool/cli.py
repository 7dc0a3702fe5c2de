"""The ``vhdtool`` command line: thin click commands over the pipeline.

Only this module maps exceptions to exit codes and configures logging.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any, NoReturn

import click

from vhdtool.formats import FormatError, open_image

from . import __version__, signals
from .convert import ConvertError, convert, convert_in_place
from .exitcodes import Exit, FixFailed, GuestUnopenable, OutputError, check_exit
from .options import (FORMAT_CHOICE, IMAGE_PATH, check_selection, data_disk_option, data_disks_of,
                      declaration_of, fail_on_option, gallery_options, guest_options, guest_timeout_option,
                      image_options, manifest_file_options, manifest_setup, profile_of,
                      report_options, run_with_engine, selection_options)
from .session import NOTICE

log = logging.getLogger("vhdtool")

#: the errors every command can meet, and their exit codes: a failed conversion or fix is not a
#: finding about the image; a gate whose report could not be written has not passed
_ERRORS = ((FixFailed, Exit.FIX_FAILED), (ConvertError, Exit.CONVERT_FAILED),
           (OutputError, Exit.FINDINGS), (FormatError, Exit.BAD_IMAGE),
           (GuestUnopenable, Exit.BAD_IMAGE))


class VhdtoolGroup(click.Group):
    """Maps the errors every command can meet to the documented exit codes."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (FixFailed, ConvertError, OutputError, FormatError, GuestUnopenable) as e:
            click.echo(f"vhdtool: error: {e}", err=True)
            sys.exit(next(code for cls, code in _ERRORS if isinstance(e, cls)))
        except OSError as e:
            name = f"{e.filename}: " if e.filename else ""
            click.echo(f"vhdtool: error: {name}{e.strerror or e}", err=True)
            sys.exit(Exit.BAD_IMAGE)
        except KeyboardInterrupt as e:
            _interrupted(e)

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        try:            # click would print "Aborted!" and exit 1 for Ctrl-C while parsing
            return super().make_context(*args, **kwargs)
        except KeyboardInterrupt as e:
            _interrupted(e)


def _interrupted(e: KeyboardInterrupt) -> NoReturn:
    """Ctrl-C, SIGTERM or SIGHUP: one line, and 128 + the signal (Exit.INTERRUPTED for Ctrl-C)."""
    click.echo(f"vhdtool: {signals.describe(e)}", err=True)
    sys.exit(signals.exit_code(e))


@click.group(cls=VhdtoolGroup)
@click.version_option(__version__, prog_name="vhdtool")
@click.option("-v", "--verbose", count=True, help="More detail on stderr (-vv for debug).")
def cli(verbose: int) -> None:
    """Prepare and validate Linux disk images offline before uploading them to Azure."""
    # the "vhdtool" logger only, to the current stderr (also when invoked again in one process)
    for h in [h for h in log.handlers if getattr(h, "vhdtool", False)]:
        log.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler.vhdtool = True  # type: ignore[attr-defined]
    handler.setFormatter(logging.Formatter("vhdtool: %(message)s"))
    log.addHandler(handler)
    log.setLevel(NOTICE - 10 * min(verbose, 2))     # notices (the guest engine chosen) shown
    log.propagate = False


@cli.command()
@click.argument("image", type=IMAGE_PATH)
@click.option("-f", "--format", "fmt", type=FORMAT_CHOICE, default=None,
              help="Image format (probed from magic bytes when omitted).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output on stdout.")
def info(image: str, fmt: str | None, as_json: bool) -> None:
    """Describe IMAGE: format, sizes as each reader sees them, allocation, partitions, problems."""
    from .info import describe, render_info   # imported here: convert need not pay for it

    with open_image(image, fmt) as img:
        facts = describe(img)
    if as_json:
        click.echo(json.dumps(facts, indent=2))
    else:
        click.echo(render_info(facts))


@cli.command("check")
@click.argument("image", type=IMAGE_PATH)
@image_options(os_state_help="How the image will be registered.",
               generation_help="Hyper-V generation(s) intended; auto = what the disk boots.")
@click.option("--role", type=click.Choice(["os", "data"]), default="os", show_default=True)
@click.option("--marketplace", is_flag=True, help="Intended for the Azure Marketplace.")
@click.option("--trusted-launch", is_flag=True, help="Intended for Trusted Launch VMs.")
@click.option("--nvme", is_flag=True, help="Intended for NVMe disk controllers.")
@click.option("--accelerated-networking", is_flag=True, help="Intended for Accelerated Networking.")
@fail_on_option
@selection_options
@report_options
@guest_options
@gallery_options
@data_disk_option
@manifest_file_options("this run")
@click.option("--digests-from", type=click.Path(dir_okay=False), default=None, metavar="JSON",
              help="Manifest: take the digests from `vhdtool convert --json` output when it "
                   "provably describes IMAGE as it is (else they are computed).")
def check_cmd(image: str, fmt: str | None, os_state: str, generation: str, role: str,
              marketplace: bool, trusted_launch: bool, nvme: bool, accelerated_networking: bool,
              fail_on: str, select: tuple[str, ...], ignore: tuple[str, ...],
              formats: tuple[str, ...], output: str | None, color: bool | None,
              show_skipped: bool, guest: bool, guest_timeout: float, engine_name: str,
              data_disks: tuple[Any, ...], manifest_path: str | None, md5: bool,
              digests_from: str | None, **declared: Any) -> None:
    """Check IMAGE against Azure's requirements; see docs/checks.md and docs/exit-codes.md."""
    from vhdtool.checks.catalog import Severity

    from .datadisks import all_results
    from .pipeline import run as run_checks    # imported here: convert need not pay for it
    from .report import render, write_atomic
    outs = _outputs(formats, output, manifest_path)
    profile = profile_of(os_state, generation, role,
                       {"marketplace": marketplace, "trusted_launch": trusted_launch,
                        "nvme": nvme, "accelerated_networking": accelerated_networking})
    check_selection(select, ignore)
    threshold = Severity.parse(fail_on)
    # --accelerated-networking stays a profile feature: with a declaration (any gallery option or
    # --manifest) gallery.accelerated-networking reads it from there
    declaration = declaration_of(declared, None)
    profile, digests, collect = manifest_setup(image, profile, manifest_path, md5, declaration,
                                               digests_from)
    extra_disks = data_disks_of(data_disks, declaration, profile, select, ignore,
                              md5 if manifest_path else None)
    result = run_with_engine(
        "check", image, guest, engine_name, guest_timeout,
        lambda engine: run_checks(image, profile, fmt, select, ignore, guest_engine=engine,
                                  collect=collect))
    result.extra["data_disks"] = extra_disks
    timing = result.extra.get("guest_timing")
    if timing is not None:
        log.info("timing: %s; whole run %.2f s", timing.describe(), result.seconds)
    for out in outs:
        use_color = (color if color is not None else sys.stdout.isatty()) and out.path is None
        text = render(out.fmt, result, threshold, color=bool(use_color),
                      show_skipped=show_skipped)
        if out.path is None:
            click.echo(text, nl=False)
        else:
            write_atomic(out.path, text)
    if manifest_path and digests is not None:
        from .manifest import build, render as render_manifest
        write_atomic(manifest_path, render_manifest(build(result, digests.result(), threshold)))
    sys.exit(check_exit(all_results(result), threshold))


def _outputs(formats: tuple[str, ...], output: str | None, *files: str | None) -> Any:
    """The reports asked for, their folders (and those of ``files``) writable: else exit 2."""
    from .report import check_writable, parse_outputs
    try:
        outs = parse_outputs(formats, output)
        check_writable(*(o.path for o in outs), *files)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    return outs


@cli.command("manifest")
@click.argument("image", type=IMAGE_PATH)
@image_options(os_state_help="Declared osState (checked against the disk).",
               generation_help="Declared hyperVGeneration(s); auto = what the disk boots.")
@gallery_options
@click.option("--accelerated-networking/--no-accelerated-networking", default=None,
              help="Declared IsAcceleratedNetworkSupported (default: derived).")
@click.option("--md5", is_flag=True, help="Also MD5 (hex and Azure's Content-MD5 base64 form).")
@click.option("--digests-from", type=click.Path(dir_okay=False), default=None, metavar="JSON",
              help="Take the digests from `vhdtool convert --json` output when it provably "
                   "describes IMAGE as it is (same file, size, not modified since); else compute.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="Write the manifest to FILE (atomically) instead of stdout.")
@click.option("--commands", "show_commands", is_flag=True,
              help="Print the upload commands (bash) on stdout; the manifest goes to -o FILE.")
@click.option("--resource-group", default=None, help="Upload commands: resource group.")
@click.option("--disk-name", default=None, help="Upload commands: managed disk name.")
@fail_on_option
@guest_options
@data_disk_option
def manifest_cmd(image: str, fmt: str | None, os_state: str, generation: str,
                 accelerated_networking: bool | None, md5: bool, digests_from: str | None,
                 output: str | None,
                 show_commands: bool, resource_group: str | None,
                 disk_name: str | None, fail_on: str, guest: bool, guest_timeout: float,
                 engine_name: str, data_disks: tuple[Any, ...],
                 **declared: Any) -> None:
    """The upload manifest of IMAGE (JSON): file, digests, container, partitions, guest, check
    results, the gallery definition the disk supports with evidence, upload commands and an ARM
    fragment. Exit codes as for check (docs/exit-codes.md)."""
    from vhdtool.checks.catalog import Severity

    from .datadisks import all_results
    from .manifest import Target, build, render as render_manifest, script
    from .pipeline import run as run_checks
    from .report import check_writable, write_atomic
    if show_commands and output is None:
        raise click.UsageError("--commands prints the commands on stdout: give the manifest "
                               "a file with -o FILE")
    try:
        check_writable(output)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    threshold = Severity.parse(fail_on)
    declaration = declaration_of(declared, accelerated_networking)
    profile, digests, collect = manifest_setup(
        image, profile_of(os_state, generation, "os", {}), output or "-", md5, declaration,
        digests_from)
    extra_disks = data_disks_of(data_disks, declaration, profile, md5=md5)
    result = run_with_engine(
        "manifest", image, guest, engine_name, guest_timeout,
        lambda engine: run_checks(image, profile, fmt, guest_engine=engine, collect=collect))
    result.extra["data_disks"] = extra_disks
    doc = build(result, digests.result(), threshold, Target(resource_group, profile.gallery.location, disk_name))
    text = render_manifest(doc)
    if output:
        write_atomic(output, text)
    else:
        click.echo(text, nl=False)
    if show_commands:
        click.echo(script(doc), nl=False)
    for blocker in doc["upload"]["blockers"]:
        click.echo(f"vhdtool: not ready to upload: {blocker}", err=True)
    sys.exit(check_exit(all_results(result), threshold))


@cli.command("fix")
@click.argument("src", type=IMAGE_PATH)
@click.argument("dst", type=click.Path(dir_okay=False))
@image_options(os_state_help="How the image will be registered (--generalize: generalized).",
               generation_help="Hyper-V generation(s) intended; auto = what the disk boots.")
@click.option("--unsafe-fixes", is_flag=True, help="Also apply the unsafe fixes (boot, services).")
@click.option("--generalize", is_flag=True, help="Apply the whole deprovision set (as waagent "
              "-deprovision+user and cloud-init clean --logs --machine-id).")
@click.option("--diff", is_flag=True, help="Print what would change on stdout; write nothing.")
@fail_on_option
@selection_options
@report_options
@guest_timeout_option
@gallery_options
@manifest_file_options("DST")
@click.option("--force", is_flag=True, help="Replace DST if it exists.")
@click.option("--sync/--no-sync", default=False, show_default=True, help="Make DST durable.")
@click.option("--progress/--no-progress", "show_progress", default=None,
              help="Conversion progress on stderr (default: on a terminal).")
def fix_cmd(src: str, dst: str, fmt: str | None, os_state: str, generation: str, **kw: Any) -> None:
    """Fix SRC's findings offline into the fixed VHD DST, then check DST; see docs/fix.md."""
    from vhdtool.checks.catalog import Severity

    from .fixreport import emit
    from .fixrun import FixOptions, fix
    if kw["generalize"] and os_state != "generalized":
        raise click.UsageError("--generalize makes a generalized image: not --os-state specialized")
    outs = [] if kw["diff"] else _outputs(kw["formats"], kw["output"], kw["manifest_path"])
    check_selection(kw["select"], kw["ignore"])
    profile, _, collect = manifest_setup(None, profile_of(os_state, generation, "os", {}),
                                         kw["manifest_path"], kw["md5"], declaration_of(kw, None))
    # the manifest's digests, in the conversion's pass; without --manifest nothing shows any
    # (a bmap alone cost fix 0.5-1.5 s of reading the output back: bench/README.md)
    digests = ("bmap", "sha256", "md5") if kw["md5"] else ("bmap", "sha256")
    opts = FixOptions(profile, fmt, kw["select"], kw["ignore"], kw["unsafe_fixes"],
                      kw["generalize"], kw["diff"], kw["guest_timeout"], kw["show_progress"],
                      kw["sync"], kw["force"], digests if kw["manifest_path"] else ("none",),
                      collect)
    result = run_with_engine("fix", src, True, "guestfs", kw["guest_timeout"],
                             lambda _engine: fix(src, dst, opts))
    _log_fix_timing(result)
    sys.exit(emit(result, src, dst, outs, Severity.parse(kw["fail_on"]), kw))


def _log_fix_timing(result: Any) -> None:
    """``-v``: the seconds of each step of ``vhdtool fix``, and the split of both check runs."""
    steps = result.extra.get("timing")
    if steps:
        log.info("timing: %s; whole run %.2f s",
                 ", ".join(f"{k} {v:.2f} s" for k, v in steps.items()), sum(steps.values()))
    conv = getattr(result.converted, "timings", None)
    if conv is not None:
        log.info("timing of the conversion: plan %.2f s, copy %.2f s, bmap %.2f s",
                 conv.plan, conv.copy, conv.bmap)
    for name, run in (("before", result.before), ("re-check", result.after)):
        timing = run.extra.get("guest_timing") if run is not None else None
        if timing is not None:
            log.info("timing of the %s run: %s", name, timing.describe())


@cli.group("checks")
def checks_group() -> None:
    """The check catalog."""


@checks_group.command("list")
def checks_list() -> None:
    """List every check: id, severity, subject, title."""
    from vhdtool import checks
    from .catalogdoc import list_line
    for _cid, c in sorted(checks.load().items()):
        click.echo(list_line(c))


@checks_group.command("show")
@click.argument("check_id")
def checks_show(check_id: str) -> None:
    """Show one check's declaration."""
    from vhdtool import checks
    from .catalogdoc import show
    catalog = checks.load()
    if check_id not in catalog:
        raise click.UsageError(f"no check {check_id!r} (see vhdtool checks list)")
    click.echo(show(catalog[check_id]), nl=False)


@checks_group.command("docs")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="Write to this file (atomically) instead of stdout.")
def checks_docs(output: str | None) -> None:
    """The catalog reference page (docs/checks.md) in Markdown."""
    from vhdtool import checks
    from .catalogdoc import markdown
    from .report import write_atomic
    text = markdown(checks.load())
    if output:
        write_atomic(output, text)
    else:
        click.echo(text, nl=False)


@cli.command("convert")
@click.argument("src", type=IMAGE_PATH)
@click.argument("dst", type=click.Path(dir_okay=False), required=False)
@click.option("-f", "--format", "fmt", type=FORMAT_CHOICE, default=None,
              help="Source format (probed from magic bytes when omitted).")
@click.option("--digest", "digests", type=click.Choice(["bmap", "sha256", "md5", "none"]),
              multiple=True, default=["bmap"], show_default=True,
              help="bmap: the 4 KiB blocks holding data with a SHA-256 per range, as bmaptool "
                   "makes (cost in proportion to the data); sha256, md5: every byte of the output "
                   "file, holes and footer included (cost in proportion to the size; md5 also in "
                   "Azure's Content-MD5 base64 form). Repeatable.")
@click.option("--bmap", "bmap_path", type=click.Path(dir_okay=False), default=None,
              metavar="FILE", help="Also write the bmap to FILE in bmaptool's format "
                                   "(bmaptool copy --bmap FILE DST TARGET verifies it).")
@click.option("--in-place", is_flag=True,
              help="Raw or fixed-VHD SRC only: grow it to a whole MiB and write the footer, "
                   "without copying data (no DST).")
@click.option("--force", is_flag=True, help="Replace DST if it exists.")
@click.option("--sync/--no-sync", default=False, show_default=True,
              help="Make DST durable (fsync) before giving it its name, for a machine that may "
                   "go down before the upload.  Either way an error, a full disk or Ctrl-C "
                   "never leaves a half-written VHD under that name.")
@click.option("--salvage", is_flag=True,
              help="Convert an image whose structure is damaged (what `vhdtool info` lists as "
                   "errors) anyway, best-effort, as vhdtool reads it; else it is refused "
                   "(exit 3).")
@click.option("--progress/--no-progress", "show_progress", default=None,
              help="Progress on stderr (default: only when stderr is a terminal).")
@click.option("-q", "--quiet", is_flag=True, help="No progress and no summary line.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable result on stdout.")
def convert_cmd(src: str, dst: str | None, fmt: str | None, digests: tuple[str, ...],
                bmap_path: str | None, in_place: bool, force: bool, sync: bool, salvage: bool,
                show_progress: bool | None, quiet: bool, as_json: bool) -> None:
    """Convert SRC (raw, VHD, VHDX, qcow2) to a fixed VHD at DST whose size is a whole MiB."""
    show = False if quiet else show_progress
    if in_place:
        if dst is not None:
            raise click.UsageError("--in-place takes SRC only")
        if salvage:
            raise click.UsageError("--salvage makes a new file: give DST (not --in-place)")
        result = convert_in_place(src, fmt=fmt, digests=digests, progress=show,
                                  bmap_path=bmap_path)
    else:
        if dst is None:
            raise click.UsageError("missing DST (or use --in-place)")
        result = convert(src, dst, fmt=fmt, digests=digests, force=force, progress=show,
                         sync=sync, salvage=salvage, bmap_path=bmap_path)
    try:
        facts = result.as_dict()
        if as_json:
            click.echo(json.dumps(facts, indent=2))
        elif not quiet:
            click.echo(render_convert(facts))
    except KeyboardInterrupt as e:
        raise signals.InterruptedAfterOutput(signals.exit_code(e) - 128,
                                             result.output.path) from e


def render_convert(facts: dict[str, Any]) -> str:
    out, src = facts["output"], facts["source"]
    lines = [f"{out['path']}: fixed VHD, {out['virtual_size']} bytes "
             f"({src['format']} source of {src['virtual_size']} bytes, rounded up by "
             f"{out['rounded_by']}), file {out['file_size']} bytes, {out['allocated']} allocated"]
    for name, value in facts["digests"].items():
        if name == "bmap":
            lines.append(f"bmap: {value['mapped_bytes']} bytes of data in {value['ranges']} "
                         f"ranges, map sha256 {value['sha256']}"
                         + (f" ({value['file']})" if value["file"] else ""))
        elif name != "covers":
            lines.append(f"{name}: {value}")
    if facts["gpt_backup_relocated"]:
        lines.append("GPT backup header and entries moved to the new last LBA")
    lines += [f"warning: {w}" for w in facts["warnings"]]
    return "\n".join(lines)


def main() -> None:
    """The command line; ``vhdtool.entry.main``, the program's entry point, installs the signal
    handlers before importing this module and calls this."""
    cli(prog_name="vhdtool")
