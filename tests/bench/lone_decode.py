"""One side of the bench's lone-decode row, each in a fresh process of its own, nothing else loaded in it.

`python tests/bench/lone_decode.py THREADS TOKENS` builds the `llamacpp` backend as `personae chat` does
(settings, base model, generator) and answers JSON lines on stdin ({"prompt": [ids]}) with one greedy
reply of exactly TOKENS tokens each: decode tok/s between the first and the last token, and the process's
CPU ms and voluntary context switches per token over the same span (robust where wall time is not: the
machine is shared). `LlamaServer` is the other side: a fresh llama-server with one slot, measured the same
way from its streamed tokens and its /proc CPU time.
"""

from __future__ import annotations

import json
import os
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _usage():
    """(CPU seconds, voluntary context switches) of this process so far."""
    use = resource.getrusage(resource.RUSAGE_SELF)
    return use.ru_utime + use.ru_stime, use.ru_nvcsw


def serve(threads: int, tokens: int) -> None:
    """The worker: our backend, built as the product builds it, answering prompts from stdin."""
    from runtime.chat.build import build_engine
    from runtime.config import load_settings
    from runtime.generation.types import Request, SamplingSettings

    engine = build_engine(load_settings({"backend": "llamacpp", "threads": threads}))
    sampling = SamplingSettings(temperature=0, repetition_penalty=1.0, max_new_tokens=tokens, min_new_tokens=tokens)
    print(json.dumps({"ready": True, "served_by": engine.generator.where("__base__")}), flush=True)
    for line in sys.stdin:
        stream = engine.generator.submit(Request(json.loads(line)["prompt"], sampling, "__base__"))
        pieces = iter(stream)
        next(pieces)  # the first token: prefill is not decode
        start = _usage()
        for _ in pieces:
            pass
        end = _usage()
        steps = stream.completion_tokens - 1
        print(json.dumps({"tokens": stream.completion_tokens, "text": stream.text,
                          "decode": steps / (stream.finished_at - stream.first_token_at),
                          "cpu_ms": 1000 * (end[0] - start[0]) / steps, "vcsw": (end[1] - start[1]) / steps}),
              flush=True)
    engine.close()


class OurWorker:
    """`serve` in a fresh process."""

    def __init__(self, threads: int, tokens: int, log_path):
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
        self.log = open(log_path, "w")  # noqa: SIM115 - the worker's stderr, open for its whole life
        self.process = subprocess.Popen([sys.executable, __file__, str(threads), str(tokens)], env=env,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True)
        ready = self._read()
        if ready.get("served_by") != "llamacpp":
            raise RuntimeError(f"the lone worker is not on llama.cpp: {ready}")

    def _read(self) -> dict:
        for line in self.process.stdout:
            if line.startswith("{"):
                return json.loads(line)
        raise RuntimeError(f"the lone worker exited with {self.process.wait()}")

    def reply(self, prompt: list[int]) -> dict:
        self.process.stdin.write(json.dumps({"prompt": [int(t) for t in prompt]}) + "\n")
        self.process.stdin.flush()
        return self._read()

    def close(self) -> None:
        self.process.stdin.close()
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _switches(pid: int) -> int:
    """Voluntary context switches of every thread of a process."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        for line in (task / "status").read_text().splitlines():
            if line.startswith("voluntary_ctxt_switches"):
                total += int(line.split()[1])
    return total


def streamed_tokens(url: str, body: dict):
    """(arrival time, text) of each token llama-server streams from /completion, until it says stop."""
    import httpx

    with httpx.stream("POST", url + "/completion", json=body, timeout=600) as response:
        for line in response.iter_lines():
            if not line.startswith("data:"):
                continue
            chunk = json.loads(line[5:])
            if chunk.get("content") or not chunk.get("stop"):
                yield time.perf_counter(), chunk.get("content", "")
            if chunk.get("stop"):
                return


class LlamaServer:
    """A fresh llama-server with one slot and no LoRA, the same threads, measured as `serve` measures ours."""

    def __init__(self, server: Path, gguf: Path, threads: int, tokens: int, log_path):
        import httpx

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self.tokens, self.url = tokens, f"http://127.0.0.1:{port}"
        self.log = open(log_path, "w")  # noqa: SIM115 - the server's output, open for its whole life
        self.process = subprocess.Popen(
            [str(server), "-m", str(gguf), "-t", str(threads), "-tb", str(threads), "-np", "1", "-c", "4096",
             "--host", "127.0.0.1", "--port", str(port)],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.close()
        raise RuntimeError(f"llama-server did not start: {Path(log_path).read_text()[-2000:]}")

    def reply(self, prompt: list[int]) -> dict:
        body = {"prompt": [int(t) for t in prompt], "n_predict": self.tokens, "temperature": 0, "ignore_eos": True,
                "stream": True, "repeat_penalty": 1.0, "cache_prompt": False}
        stamps, text, start = [], "", None
        for stamp, content in streamed_tokens(self.url, body):
            stamps.append(stamp)
            text += content
            if start is None:
                start = _cpu_seconds(self.process.pid), _switches(self.process.pid)
        end = _cpu_seconds(self.process.pid), _switches(self.process.pid)
        steps = len(stamps) - 1
        return {"tokens": len(stamps), "text": text, "decode": steps / (stamps[-1] - stamps[0]),
                "cpu_ms": 1000 * (end[0] - start[0]) / steps, "vcsw": (end[1] - start[1]) / steps}

    def close(self) -> None:
        self.process.kill()
        self.process.wait()
        self.log.close()


if __name__ == "__main__":
    serve(int(sys.argv[1]), int(sys.argv[2]))
