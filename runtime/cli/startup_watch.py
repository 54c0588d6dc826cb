"""Why `personae serve` is slow to listen: while it is, every thread's stack and the machine's pressure, on stderr."""

from __future__ import annotations

import faulthandler
import os
import sys
import threading
import time
from pathlib import Path


def machine_pressure() -> str:
    """Load, free memory and Linux's pressure stall figures: a starved start looks unlike a stuck one."""
    parts = []
    try:
        parts.append("load {:.1f} {:.1f} {:.1f}".format(*os.getloadavg()))
    except OSError:
        pass
    try:
        available = next(line for line in Path("/proc/meminfo").read_text().splitlines()
                         if line.startswith("MemAvailable"))
        parts.append(" ".join(available.split()))
    except (OSError, StopIteration):
        pass
    for kind in ("memory", "io", "cpu"):
        try:
            lines = (Path("/proc/pressure") / kind).read_text().splitlines()
        except OSError:
            continue
        parts.append(f"{kind} pressure {lines[-1]}")
    return "; ".join(parts) or "no pressure figures on this system"


class StartupWatch:
    """Reports every `seconds` while `pending()` names platforms that do not listen yet; stops when none."""

    def __init__(self, seconds: float, pending, stream=None):
        self.seconds, self.pending, self.stream = seconds, pending, stream or sys.stderr
        self.started = time.monotonic()
        self.reports = 0
        self._stop = threading.Event()

    def start(self) -> StartupWatch:
        if self.seconds > 0:
            threading.Thread(target=self._watch, name="startup-watch", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _watch(self) -> None:
        next_report = self.started + self.seconds
        while not self._stop.wait(0.2):
            waiting = self.pending()
            elapsed = time.monotonic() - self.started
            if not waiting:
                if self.reports:
                    self._write(f"personae serve: listening after {elapsed:.0f} s\n")
                return
            if time.monotonic() >= next_report:
                self.reports += 1
                next_report += self.seconds
                self._write(f"personae serve: {', '.join(waiting)} not listening after {elapsed:.0f} s; "
                            f"{machine_pressure()}; every thread's stack follows\n")
                # A thread stuck on a lock, a file or the disk shows where; one merely starved shows progress.
                faulthandler.dump_traceback(file=self.stream, all_threads=True)

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            pass  # stderr closed: nothing to report to
