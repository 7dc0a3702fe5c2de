"""Outputs written atomically: a partial file beside the final name, renamed when complete.

Every file vhdtool writes (converted VHDs, reports, manifests) is first written to a *partial
file* in the destination's folder, named so that a person can tell what it is and whose it was --
``.NAME.vhdtool-PID.RANDOM.part`` for the final name ``NAME`` -- and locked (``flock``) for as long
as the writer lives.  An error, Ctrl-C or SIGTERM removes it; SIGKILL, a crash or a power cut
cannot, so every writer first removes the partial files in its folder that no live process holds
locked any more (:func:`remove_stale`): the kernel drops a dead process's locks, so a lock that
can be taken is proof that nobody is writing the file.  A live writer's file is never touched.

``vhdtool fix`` works in a *temporary folder* beside its output,
``.NAME.vhdtool-PID.RANDOM.fix`` (the overlay, the converted VHD before its re-check), made and
locked the same way by :func:`create_work_folder` (``flock`` on the folder itself); a dead
writer's folder is removed with everything in it by the same :func:`remove_stale`.

A finished file gets its name atomically (:func:`publish`): ``rename`` when it may replace what
is there, else a hard link, which fails rather than overwrite a file that appeared meanwhile.

References: flock(2) (locks belong to the open file description and go with its last close or
the process's death); rename(2), link(2) (the atomic publish).
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import shutil
import stat
import tempfile

#: ``.NAME.vhdtool-PID.RANDOM.part`` (RANDOM: tempfile's 8 characters)
PARTIAL = re.compile(r"^\.(?P<name>.+)\.vhdtool-(?P<pid>\d+)\.(?P<rand>[a-z0-9_]+)\.part$")
#: ``.NAME.vhdtool-PID.RANDOM.fix``: the temporary folder of ``vhdtool fix``
WORK_FOLDER = re.compile(r"^\.(?P<name>.+)\.vhdtool-(?P<pid>\d+)\.(?P<rand>[a-z0-9_]+)\.fix$")


def create_partial(final: str, mode: int = 0o644) -> tuple[int, str]:
    """(descriptor, path) of a new, locked partial file for ``final``, in its folder, created with
    ``mode`` less the umask.  Keep the descriptor open until the file has its final name: the lock
    is what tells other runs it is alive.  OSError if the folder refuses the file."""
    folder = os.path.dirname(os.path.abspath(final))
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".part",
                               prefix=f".{os.path.basename(final)}.vhdtool-{os.getpid()}.")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.fchmod(fd, mode & ~_umask())
    except BaseException:
        os.close(fd)
        unlink_quietly(tmp)
        raise
    return fd, tmp


def create_work_folder(final: str) -> tuple[int, str]:
    """(descriptor, path) of a new temporary folder for ``final``, in its folder, locked: keep the
    descriptor open for as long as the folder is used (the lock tells other runs it is alive),
    then :func:`remove_work_folder`.  OSError if the folder refuses it."""
    parent = os.path.dirname(os.path.abspath(final))
    while True:
        path = tempfile.mkdtemp(dir=parent, suffix=".fix",
                                prefix=f".{os.path.basename(final)}.vhdtool-{os.getpid()}.")
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.fstat(fd).st_nlink > 0:   # not removed as stale before the lock was taken
                return fd, path
        except BaseException:
            os.close(fd)
            shutil.rmtree(path, ignore_errors=True)
            raise
        os.close(fd)


def remove_work_folder(fd: int, path: str) -> None:
    """Remove the temporary folder ``path`` with its contents, then drop its lock."""
    try:
        shutil.rmtree(path, ignore_errors=True)
    finally:
        os.close(fd)


def remove_stale(folder: str) -> list[str]:
    """Remove the partial files and temporary folders in ``folder`` whose writer is gone (nobody
    holds their lock); return what was removed, in words.  Never follows a link; errors leave a
    file alone."""
    out = []
    try:
        names = [n for n in os.listdir(folder or ".") if PARTIAL.match(n) or WORK_FOLDER.match(n)]
    except OSError:
        return out
    for name in names:
        path = os.path.join(folder, name)
        m = PARTIAL.match(name)
        is_dir = m is None
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(path, flags | (os.O_DIRECTORY if is_dir else 0))
        except OSError:
            continue
        try:
            st = os.fstat(fd)
            if not (stat.S_ISDIR if is_dir else stat.S_ISREG)(st.st_mode):
                continue
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:                 # locked: a live writer's file
            continue
        else:
            if is_dir:
                m = WORK_FOLDER.match(name)
                assert m is not None
                size = _tree_bytes(path)
                shutil.rmtree(path, ignore_errors=True)
                out.append(f"removed {path}, a temporary folder of {m['name']} left by vhdtool "
                           f"process {m['pid']}, which is gone ({size} bytes allocated)")
                continue
            unlink_quietly(path)
            out.append(f"removed {path}, a partial file of {m['name']} left by vhdtool process "
                       f"{m['pid']}, which is gone ({st.st_size} bytes, {st.st_blocks * 512} "
                       f"allocated)")
        finally:
            os.close(fd)
    return out


def _tree_bytes(path: str) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_blocks * 512
            except OSError:
                pass
    return total


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def write_atomic_bytes(path: str, data: bytes) -> list[str]:
    """Write ``data`` to ``path`` through a partial file, fsync and rename; return the stale
    partial files removed on the way.  OSError as raised; nothing is left under either name."""
    folder = os.path.dirname(os.path.abspath(path))
    stale = remove_stale(folder)
    fd, tmp = create_partial(path)
    try:
        write_all(fd, data)
        os.fsync(fd)
        os.replace(tmp, path)
    except BaseException:
        unlink_quietly(tmp)
        raise
    finally:
        os.close(fd)
    return stale


def publish(tmp: str, final: str, replace: bool) -> None:
    """Give the finished file ``tmp`` its name ``final``: atomically replacing what is there with
    ``replace``, else only if ``final`` still does not exist -- FileExistsError (naming it) if it
    appeared meanwhile.  Where the file system has no hard links: a rename, re-checked first."""
    if replace:
        os.replace(tmp, final)
        return
    try:
        os.link(tmp, final)
    except FileExistsError:
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), final) from None
    except OSError:                 # no hard links on this file system: rename, re-checked
        if os.path.lexists(final):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), final) from None
        os.replace(tmp, final)
        return
    os.unlink(tmp)


def fsync_dir(folder: str) -> None:
    """Make a rename in ``folder`` durable."""
    dfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
