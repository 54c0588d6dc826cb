"""Test helpers: a real vLLM CPU server on loopback (installed by `make vllm`), and direct calls to it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
VLLM_PYTHON = REPO / ".venv-vllm" / "bin" / "python"
VLLM_COMMAND = [str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server"]
# Small and quick to start on a 2-core CPU: no torch.compile, 1 GiB of KV cache, short context; float32 so
# a greedy reply does not depend on which other requests share its batch.
TEST_ARGS = ["--enforce-eager", "--dtype", "float32", "--max-model-len", "2048", "--max-num-seqs", "8"]
TEST_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1"}


def ensure_vllm() -> None:
    """Install vLLM into .venv-vllm once (`make vllm`; a no-op when it is there)."""
    if not (REPO / ".venv-vllm" / ".vllm-installed").is_file():
        subprocess.run(["make", "-s", "vllm"], cwd=REPO, check=True)


def start_server(model_folder, log_dir, args=TEST_ARGS, timeout: float = 900, wait: bool = True):
    """A vLLM server on the model folder, started the way the backend's `command` starts one (wait=False: launched
    only, so it loads while the caller does other work; `.wait_healthy(timeout)` before using it)."""
    from plugins.vllm.server import ManagedServer

    ensure_vllm()
    server = ManagedServer(VLLM_COMMAND, model_folder, args=list(args), env=TEST_ENV, log_dir=log_dir,
                           max_loras=4, max_lora_rank=16)
    return server.start(timeout) if wait else server.launch()


def load_lora(url: str, name: str, folder) -> None:
    """Load an adapter into vLLM ourselves (not through the backend)."""
    answer = httpx.post(f"{url}/v1/load_lora_adapter", json={"lora_name": name, "lora_path": str(folder)}, timeout=60)
    assert answer.status_code == 200 or "already been loaded" in answer.text, answer.text


def served_models(url: str) -> set[str]:
    """The names vLLM serves now (the base and every loaded adapter)."""
    return {m["id"] for m in httpx.get(f"{url}/v1/models", timeout=10).json()["data"]}


def complete(url: str, model: str, input_ids, sampling, **extra) -> str:
    """vLLM called directly on the same token ids and sampling settings: the reference reply."""
    body = {"model": model, "prompt": list(input_ids), "max_tokens": sampling.max_new_tokens,
            "temperature": sampling.temperature, "top_p": sampling.top_p,
            "repetition_penalty": sampling.repetition_penalty, "stop": list(sampling.stop), **extra}
    answer = httpx.post(f"{url}/v1/completions", json=body, timeout=300)
    assert answer.status_code == 200, answer.text
    return answer.json()["choices"][0]["text"]


def running_requests(url: str) -> float:
    """vLLM's own count of requests it is generating now (its Prometheus metrics)."""
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith("vllm:num_requests_running"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError("vLLM's /metrics has no vllm:num_requests_running")
