"""`python -m benchmarks.named_threads serve ...`: `chatd serve ...` whose Python threads
carry their names into the OS (as Python 3.14 does by itself), so a benchmark can read
the CPU time of the thread named "chatd-engine" from /proc/PID/task/*/comm.

Naming a thread is one prctl call when it starts; nothing else of chatd changes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading

from chatd.cli import main

PR_SET_NAME = 15  # linux/prctl.h; the kernel keeps the first 15 bytes


def _name_os_threads() -> None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return  # not Linux: nothing to name, and nothing in /proc to read either
    start = threading.Thread._bootstrap_inner  # type: ignore[attr-defined]

    def named_start(self: threading.Thread) -> None:
        prctl(PR_SET_NAME, self.name.encode()[:15], 0, 0, 0)
        start(self)

    threading.Thread._bootstrap_inner = named_start  # type: ignore[attr-defined]


if __name__ == "__main__":
    _name_os_threads()
    main()
