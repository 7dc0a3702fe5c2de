"""Every process vhdtool starts ends with it, even when vhdtool is killed with SIGKILL.

libguestfs (its ``direct`` backend, Debian 12's 1.48) runs ``qemu-img create -b`` for the drive's
overlay, ``supermin --build``, ``dmesg`` and the appliance's qemu; its "recovery process" (a fork
of vhdtool that kills qemu once vhdtool is gone, polling every 2 s) covers the appliance alone: a
``qemu-img`` left spinning on a hostile backing chain outlives a killed vhdtool. So, while the
libguestfs engine is in use, :class:`Guard`

* puts a marker, ``VHDTOOL_RUN_ID=<uuid>``, in vhdtool's environment: every process started from
  then on inherits it, and ``/proc/PID/environ`` (the environment a program was started with)
  shows it -- vhdtool's own does not, nor a fork that has not yet called exec;
* starts a guard process (``python -m vhdtool.procguard UUID``) in its own session (a Ctrl-C on
  the terminal does not reach it), its environment without the marker, its stdin a pipe from
  vhdtool. It blocks reading that pipe; end-of-file comes when vhdtool closes it or exits in any
  way, SIGKILL included (the kernel closes the descriptor). It then SIGKILLs every process whose
  environment carries the marker, scanning again until none is left, and exits.

The guard also keeps the launch's time limit: when it passes before vhdtool disarms it, the guard
kills every marked process, ``qemu-img`` included, and tells vhdtool so. Linux only: where
``/proc`` cannot be read, :func:`supported` is False, no guard is started and libguestfs' recovery
process is kept.

References: proc(5) (``/proc/PID/environ``: the initial environment, empty for a zombie;
``/proc/PID/stat``), setsid(2), pipe(7) (read returns 0 once every write end is closed),
guestfs(3) ``set_recovery_proc``, libguestfs ``lib/launch-direct.c`` (what it spawns).
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

MARKER = "VHDTOOL_RUN_ID"
#: vhdtool -> guard: the time limit no longer applies; guard -> vhdtool: the limit passed (and
#: the marked processes were killed), the disarm was received (nothing is killed at the limit now)
DISARM, FIRED, ACK = b"d", b"f", b"a"
#: rounds of scanning for marked processes after a kill (a fork that had not yet exec'ed)
_ROUNDS = 20
_PAUSE = 0.05


def supported() -> bool:
    """Whether marked processes can be found here (Linux with a readable /proc)."""
    try:
        with open(f"/proc/{os.getpid()}/environ", "rb"):
            return True
    except OSError:
        return False


def _pids() -> Iterator[int]:
    try:
        names = os.listdir("/proc")
    except OSError:
        return
    for name in names:
        if name.isdigit():
            yield int(name)


def marked(run_id: str, name: str = MARKER) -> list[int]:
    """The live processes started with ``name=run_id`` in their environment (``VHDTOOL_RUN_ID``
    by default; other users' processes are unreadable: skipped), this one excepted."""
    needle = f"{name}={run_id}".encode()
    me = os.getpid()
    out = []
    for pid in _pids():
        if pid == me:
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read()
        except OSError:          # gone, another user's, or a kernel thread
            continue
        if needle in env.split(b"\0"):
            out.append(pid)
    return out


def kill_marked(run_id: str, name: str = MARKER) -> list[int]:
    """SIGKILL every process marked ``name=run_id``, again until none is left; the pids killed."""
    killed: list[int] = []
    quiet = 0
    for _ in range(_ROUNDS):
        pids = marked(run_id, name)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except OSError:
                pass
        quiet = 0 if pids else quiet + 1
        if quiet >= 2:           # two empty scans in a row: nothing was still being forked
            break
        time.sleep(_PAUSE)
    return killed


class Guard:
    """Marks the processes started from now on and starts the guard process (see the module doc).

    With ``limit`` (seconds), the guard also kills every marked process when that time has
    passed, unless :meth:`disarm` was called first: a deadline kept outside vhdtool, as
    libguestfs' Python binding holds the interpreter lock during calls such as
    ``add_drive_opts`` (no thread of vhdtool runs while its ``qemu-img`` spins). :meth:`fired`
    says whether it did. ``close()`` kills what is left of the marked processes, ends the guard
    and removes the marker. Where :func:`supported` is False, ``active`` is False and the guard
    does nothing.
    """

    def __init__(self, limit: float | None = None) -> None:
        self.run_id = uuid.uuid4().hex
        self.active = supported()
        self._proc: subprocess.Popen[bytes] | None = None
        self._fired = False
        self._previous = os.environ.get(MARKER)
        if not self.active:
            return
        env = {k: v for k, v in os.environ.items() if k != MARKER}
        argv = [sys.executable, "-m", "vhdtool.procguard", self.run_id]
        self._proc = subprocess.Popen(
            argv + ([f"{limit:.3f}"] if limit is not None else []), stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, close_fds=True,
            start_new_session=True)
        os.environ[MARKER] = self.run_id

    def disarm(self) -> None:
        """Cancel the time limit (what it bounded has finished); once this returns, the guard
        kills nothing before vhdtool ends, and :meth:`fired` says whether it did already."""
        if self._proc is None or self._proc.stdin is None:
            return
        try:
            self._proc.stdin.write(DISARM)
            self._proc.stdin.flush()
        except OSError:
            return
        self._replies(until=ACK, wait=10.0)

    def fired(self) -> bool:
        """Whether the time limit passed and the marked processes were killed."""
        if not self._fired:
            self._replies(until=None, wait=0.0)
        return self._fired

    def _replies(self, until: bytes | None, wait: float) -> None:
        """Read the guard's replies (until ``until`` arrives, or what is there)."""
        out = self._proc.stdout if self._proc is not None else None
        if out is None:
            return
        while select.select([out], [], [], wait)[0]:
            data = os.read(out.fileno(), 64)
            self._fired = self._fired or FIRED in data
            if not data or (until is not None and until in data) or until is None:
                return

    def kill(self) -> list[int]:
        """SIGKILL every marked process now; the pids killed."""
        return kill_marked(self.run_id) if self.active else []

    def close(self) -> None:
        if self._proc is None:
            return
        if self._previous is None:
            os.environ.pop(MARKER, None)
        else:
            os.environ[MARKER] = self._previous
        self.kill()
        proc, self._proc = self._proc, None
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.close()   # end-of-file: the guard scans once more and exits
        except OSError:
            pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()

    def __enter__(self) -> Guard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def main(argv: list[str]) -> int:
    """The guard process: until end-of-file on stdin, kill the marked processes at the limit;
    then kill them all and exit."""
    if len(argv) not in (1, 2):
        print("usage: python -m vhdtool.procguard RUN_ID [LIMIT_SECONDS]", file=sys.stderr)
        return 2
    run_id = argv[0]
    deadline = time.monotonic() + float(argv[1]) if len(argv) == 2 else None
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_IGN)   # only vhdtool going away ends the guard
    while True:
        wait = None if deadline is None else max(0.0, deadline - time.monotonic())
        if not select.select([0], [], [], wait)[0]:
            deadline = None
            try:
                os.write(1, FIRED)
            except OSError:
                pass
            kill_marked(run_id)
            continue
        try:
            data = os.read(0, 64)
        except OSError:
            break
        if not data:
            break
        if DISARM in data:
            deadline = None
            try:
                os.write(1, ACK)
            except OSError:
                pass
    kill_marked(run_id)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
