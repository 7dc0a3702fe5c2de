#!/usr/bin/env python3
"""Stop a qemu VM through its QMP socket (``qemu -qmp unix:PATH,server=on,wait=off``): used by the
Packer example to stop the VM before the prepared guest boots. Usage: qmp-quit.py PATH."""

import json
import socket
import sys
import time


def main(path: str) -> None:
    for _ in range(100):                      # the socket appears once qemu has started
        try:
            sock = socket.socket(socket.AF_UNIX)
            sock.connect(path)
            break
        except OSError:
            time.sleep(0.1)
    else:
        sys.exit(f"qmp-quit: no QMP socket at {path}")
    f = sock.makefile("rw")
    f.readline()                              # the greeting
    for cmd in ("qmp_capabilities", "quit"):
        f.write(json.dumps({"execute": cmd}) + "\n")
        f.flush()
        f.readline()


if __name__ == "__main__":
    main(sys.argv[1])
