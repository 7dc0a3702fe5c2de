"""The ``vhdtool`` command line: thin click commands over the pipeline.

Only this module maps exceptions to exit codes and configures logging.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

import click

from formats import FormatError, open_image

from . import __version__
from .exitcodes import Exit
from .info import describe, render_info

log = logging.getLogger("vhdtool")

FORMAT_CHOICE = click.Choice(["raw", "vpc", "vhd", "vhdx", "qcow2"])


class VhdtoolGroup(click.Group):
    """Maps the errors every command can meet to the documented exit codes."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except FormatError as e:
            click.echo(f"vhdtool: error: {e}", err=True)
            sys.exit(Exit.BAD_IMAGE)
        except OSError as e:
            name = f"{e.filename}: " if e.filename else ""
            click.echo(f"vhdtool: error: {name}{e.strerror or e}", err=True)
            sys.exit(Exit.BAD_IMAGE)
        except KeyboardInterrupt:
            click.echo("vhdtool: interrupted", err=True)
            sys.exit(Exit.INTERRUPTED)


@click.group(cls=VhdtoolGroup)
@click.version_option(__version__, prog_name="vhdtool")
@click.option("-v", "--verbose", count=True, help="More detail on stderr (-vv for debug).")
def cli(verbose: int) -> None:
    """Prepare and validate Linux disk images offline before uploading them to Azure."""
    logging.basicConfig(stream=sys.stderr, format="vhdtool: %(message)s",
                        level=logging.WARNING - 10 * min(verbose, 2))


@cli.command()
@click.argument("image", type=click.Path(dir_okay=False))
@click.option("-f", "--format", "fmt", type=FORMAT_CHOICE, default=None,
              help="Image format (probed from magic bytes when omitted).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output on stdout.")
def info(image: str, fmt: str | None, as_json: bool) -> None:
    """Describe IMAGE: format, sizes as each reader sees them, allocation, partitions, problems."""
    with open_image(image, fmt) as img:
        facts = describe(img)
    if as_json:
        click.echo(json.dumps(facts, indent=2))
    else:
        click.echo(render_info(facts))


def main() -> None:
    cli(prog_name="vhdtool")
