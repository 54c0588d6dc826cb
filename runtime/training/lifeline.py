"""Tie a training child's life to its parent: the kernel's parent-death signal, and a watchdog as a fallback."""

from __future__ import annotations

import os
import signal
import sys
import threading

PARENT_VARIABLE = "PERSONAE_TRAINING_PARENT"
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def child_setup(parent_pid: int, nice: int):
    """A preexec_fn: die with the parent (Linux: prctl PR_SET_PDEATHSIG), then lower our priority."""

    def setup() -> None:
        if sys.platform.startswith("linux"):
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent_pid:
            os._exit(1)  # the parent died before the signal was armed: nobody will collect our result
        if nice > 0:
            os.nice(nice)  # chats keep the CPU first

    return setup


def watch_parent(poll_seconds: float = 1.0) -> threading.Thread | None:
    """In the child: exit at once when the parent named in the environment is gone (any platform)."""
    wanted = os.environ.get(PARENT_VARIABLE)
    if not wanted or not wanted.isdigit():
        return None
    parent = int(wanted)

    def alive() -> bool:
        try:
            os.kill(parent, 0)  # the serving process, whether it is our parent or our launcher's (ranks)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def watch() -> None:
        while True:
            if not alive():
                os._exit(1)  # the serving process died; its staging folder is swept when training next starts
            threading.Event().wait(poll_seconds)

    thread = threading.Thread(target=watch, name="parent-watch", daemon=True)
    thread.start()
    return thread
