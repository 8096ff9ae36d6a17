"""Preloaded first by the forkserver prefetch starts: its children begin with Ctrl-C ignored.

A worker ignores SIGINT first thing in `worker.main`, but a Ctrl-C that lands while the
forkserver is still importing numpy, or while multiprocessing is still setting a fresh
worker up, would print a KeyboardInterrupt traceback from a process the user never asked
about. The forkserver itself ignores SIGINT once its preloads are imported, and it hands its
children the handlers it had right after preloading; ignoring SIGINT here — first, before
anything slow is imported, and only inside the forkserver — closes both windows. (Other
libraries' workers forked by the same server also start with SIGINT ignored; their parent
still gets the KeyboardInterrupt and ends them.)
"""

from __future__ import annotations

import signal
import sys


def _inside_forkserver() -> bool:
    server = sys.modules.get("multiprocessing.forkserver")
    if server is None:
        return False
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code is server.main.__code__:
            return True
        frame = frame.f_back
    return False


if _inside_forkserver():
    signal.signal(signal.SIGINT, signal.SIG_IGN)
