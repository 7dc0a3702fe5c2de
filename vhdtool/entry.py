"""The ``vhdtool`` program's entry point: signals first, then the command line.

Kept tiny and imported before anything heavy (click, construct, the catalog), so that Ctrl-C or
SIGTERM while vhdtool is still starting ends it with one line and exit 130/143, never a traceback.
"""

from __future__ import annotations

import sys

from . import signals


def main() -> None:
    signals.install()
    try:
        from .cli import main as cli_main
        cli_main()
    except KeyboardInterrupt as e:
        print(f"vhdtool: {signals.describe(e)}", file=sys.stderr, flush=True)
        sys.exit(signals.exit_code(e))
