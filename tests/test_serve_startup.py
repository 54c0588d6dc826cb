"""`personae serve` slow to listen says why: every thread's stack and the machine's pressure on stderr, until it
listens (a real server process whose generation backend, from the plugins folder, holds its start until told)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from test_crash_streams import ROOT, free_port


def wait_for(path: Path, text: str, process: subprocess.Popen, seconds: float = 180) -> str:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        log = path.read_text(errors="replace")
        if text in log:
            return log
        assert process.poll() is None, log[-3000:]
        time.sleep(0.2)
    raise AssertionError(f"{text!r} not in the server's log after {seconds} s:\n" + path.read_text()[-3000:])


HELD_BACKEND = """
import time
from pathlib import Path

from runtime.hookspecs import hookimpl

RELEASE = Path(__file__).parent / "release"


def held_generator(settings, base):
    while not RELEASE.exists():  # a start that cannot go on until the test says so
        time.sleep(0.1)
    from plugins.local import local_generator

    return local_generator(settings, base)


@hookimpl
def register_backends(register):
    register("held", held_generator)
"""


def test_a_server_not_listening_prints_its_stacks_until_it_listens(tiny_model_folder, isolated_environment):
    plugins = isolated_environment / "plugins"
    plugins.mkdir()
    (plugins / "held_backend.py").write_text(HELD_BACKEND)
    port = free_port()
    env = {**os.environ, "PERSONAE_BASE_MODEL": str(tiny_model_folder), "PYTHONPATH": str(ROOT),
           "PERSONAE_DATA_DIR": str(isolated_environment / "data"), "PERSONAE_PLUGINS_DIR": str(plugins),
           "PERSONAE_BACKEND": "held", "PERSONAE_STARTUP_REPORT_SECONDS": "1"}
    log = isolated_environment / "server.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "runtime", "serve", "--http", f"127.0.0.1:{port}",
                                    "--no-scheduler"], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        # A report a second (the first ones while the libraries import), until one shows where the start waits.
        text = wait_for(log, " in held_generator\n", process)
        report = text[text.rindex("personae serve: http not listening after"):]
        assert "pressure" in report.splitlines()[0] or "no pressure figures" in report.splitlines()[0]
        assert "Thread 0x" in report and "held_backend.py" in report and "in generator" in report, report
        (plugins / "release").touch()
        wait_for(log, "personae serve: listening after", process)
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=30).status_code == 200
        reports = log.read_text().count("not listening after")
        time.sleep(2.5)  # listening now: no further report comes
        assert log.read_text().count("not listening after") == reports
    finally:
        process.terminate()
        process.wait(30)
