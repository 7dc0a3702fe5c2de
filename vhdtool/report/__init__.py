"""Reports of a ``vhdtool check`` run: text, JSON, JUnit XML and SARIF 2.1.0.

``--format NAME[:FILE]`` picks a report and where it goes (stdout without a file); ``-o FILE``
sends the first report that names no file there.  Files are written atomically.

References:
  JUnit XML as read by Jenkins/GitLab/Azure DevOps (testsuites/testsuite/testcase with failure,
  error, skipped); OASIS SARIF 2.1.0 (errata01); vhdtool/schemas/check-report.schema.json.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from vhdtool.checks.catalog import Severity

from ..atomicfile import write_atomic_bytes
from ..exitcodes import OutputError
from ..pipeline import CheckRun

log = logging.getLogger("vhdtool")

FORMATS = ("text", "json", "junit", "sarif")


@dataclass(frozen=True)
class Output:
    fmt: str
    path: str | None        #: None = stdout


def parse_outputs(specs: Sequence[str], output: str | None) -> list[Output]:
    """``--format`` values (``NAME`` or ``NAME:FILE``) and ``-o`` into outputs; ValueError if bad.

    ``-o FILE`` goes to the first format without a file (``text`` when no --format is given);
    at most one report may go to stdout.
    """
    outs: list[Output] = []
    for spec in specs or ("text",):
        name, _, path = spec.partition(":")
        if name not in FORMATS:
            raise ValueError(f"unknown report format {name!r} (choose from {', '.join(FORMATS)})")
        outs.append(Output(name, path or None))
    if output is not None:
        i = next((i for i, o in enumerate(outs) if o.path is None), None)
        if i is None:
            raise ValueError("-o FILE given but every --format already names its file")
        outs[i] = Output(outs[i].fmt, output)
    if sum(o.path is None for o in outs) > 1:
        raise ValueError("only one report can go to stdout: give the others a file "
                         "(--format json:report.json)")
    paths = [o.path for o in outs if o.path]
    if len(set(paths)) != len(paths):
        raise ValueError("two reports name the same file")
    return outs


def render(fmt: str, run: CheckRun, fail_on: Severity, color: bool = False,
           show_skipped: bool = False) -> str:
    from . import jsonreport, junit, sarif, text
    renderers: dict[str, Callable[..., str]] = {
        "text": lambda: text.render(run, fail_on, color, show_skipped),
        "json": lambda: jsonreport.render(run, fail_on),
        "junit": lambda: junit.render(run, fail_on),
        "sarif": lambda: sarif.render(run),
    }
    return renderers[fmt]()


def check_writable(*paths: str | None) -> None:
    """Before a run: each output file's folder exists and is writable, or ValueError naming the
    file (a typo in a report path should not be found after a 30-second guest launch)."""
    for path in paths:
        if not path:
            continue
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            raise ValueError(f"{path}: cannot write it: folder {folder} does not exist")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise ValueError(f"{path}: cannot write it: folder {folder} is not writable")


def write_atomic(path: str, data: str) -> None:
    """Write ``data`` to ``path`` atomically (``vhdtool.atomicfile``); OutputError naming
    ``path`` if that fails (nothing is left under either name)."""
    try:
        stale = write_atomic_bytes(path, data.encode("utf-8"))
    except OSError as e:
        raise OutputError(f"{path}: writing it failed: {e.strerror or e}") from e
    for msg in stale:
        log.warning("%s", msg)
