"""vhdtool: prepare and validate Linux disk images offline before uploading them to Azure.

Which module to open for what:

* the command line: ``cli`` (click commands; the only place exit codes and logging are set up).
* ``check``: ``pipeline`` (one run: open the disk, the facts, the guest engine, the catalog).
* the disk model: ``disk`` (:class:`~vhdtool.disk.Disk`, the image opened once per run: footer
  as the VHD reader chose it, partition table, partitions probed once); ``blkid`` (the one
  filesystem prober, libblkid's TYPE/UUID/LABEL); ``facts`` (the checks' ``DiskFacts``, a
  projection of the disk).
* the mount core: ``mountplan`` (root, fstab specs, mount order, unreadable reasons, and the
  ``MountBackend`` protocol the engines implement); ``session`` (the timing, session and engine
  base both engines share; warnings and notices through the ``vhdtool`` logger).
* the guest engines: ``engines`` (``--engine auto|native|guestfs``); ``native_engine`` (in-process,
  over ``native_io`` bounded reads, ``native_fs`` filesystems, ``native_view`` the checks' view);
  ``guestfs_engine`` (libguestfs appliance; ``guestfs_view`` read-only and writable views);
  ``procguard`` (no process libguestfs starts outlives vhdtool).
* the command line's shared options: ``options``; start-up and signals: ``entry``, ``signals``.
* ``convert`` (a package: plan, sysio, engine, schedules, result, run), ``bmap`` (its default
  digest), ``atomicfile`` (every output written through a locked partial file and a rename).
* ``manifest`` (the document) and ``upload`` (its commands and ARM fragment), ``info``,
  ``report`` (text, JSON, JUnit, SARIF), ``schemas`` (the outputs' JSON schemas).
* ``formats`` and ``checks``: the format core and the catalog (folders at the top of the source
  tree, installed here; each ``__init__`` says which module holds what).
"""

__version__ = "0.1.0"
