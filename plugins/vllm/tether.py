"""Run a vLLM server tied to the Personae process that started it: if that process dies, even by SIGKILL, the server goes too.

Run as a script (`python tether.py PARENT_PID -- COMMAND...`), stdlib only: it runs in the project's interpreter
before anything else is imported. The server is started in the tether's own process group (ManagedServer makes a new
session), so one `killpg` reaches the tether, vLLM and vLLM's engine processes alike.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

POLL_SECONDS = 1.0
GRACE_SECONDS = 20.0  # vLLM's own shutdown (engine processes, shared memory) before SIGKILL


def parent_alive(pid: int) -> bool:
    """Whether the process that started us still exists (a zombie counts as gone once we are re-parented)."""
    if os.getppid() != pid:
        return False  # re-parented: our parent died, even if its pid was reused since
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def end_group(server: subprocess.Popen) -> int:
    """SIGTERM to the whole group (vLLM shuts down cleanly), SIGKILL after the grace period."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the group signal also reaches us: we stay to finish the job
    os.killpg(0, signal.SIGTERM)
    deadline = time.monotonic() + GRACE_SECONDS
    while server.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(0, signal.SIGKILL)  # anything vLLM left behind (and us)
    return 1


def main(argv: list[str]) -> int:
    """Start the command, forward a stop to it, and end the group when the parent is gone."""
    if len(argv) < 3 or argv[1] != "--" or not argv[0].isdigit():
        print("usage: tether.py PARENT_PID -- COMMAND...", file=sys.stderr)
        return 2
    parent = int(argv[0])
    try:
        server = subprocess.Popen(argv[2:])  # same process group as the tether
    except OSError as error:
        print(f"cannot start {argv[2]!r}: {error.strerror}", file=sys.stderr)
        return 127
    # A stop from ManagedServer (SIGTERM to the group) reaches vLLM directly; we only wait for it to finish.
    signal.signal(signal.SIGTERM, lambda *_: None)
    while server.poll() is None:
        if not parent_alive(parent):
            print(f"personae process {parent} is gone: stopping vLLM", file=sys.stderr, flush=True)
            return end_group(server)
        time.sleep(POLL_SECONDS)
    code = server.returncode
    return code if code >= 0 else 128 - code  # killed by a signal: the shell's convention


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
