"""The [plugins.vllm] table: which vLLM servers to use, or how to start one."""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass, field
from urllib.parse import urlparse

from runtime.config import ConfigError

KEYS = ("urls", "command", "args", "host", "port", "start_timeout", "request_timeout", "max_loras",
        "max_lora_rank", "retry_dead", "env", "log_dir", "full_urls", "full_command", "max_full_servers",
        "restart_attempts", "restart_backoff")
ZERO_ALLOWED = ("port", "max_full_servers", "restart_attempts")  # 0: a free port, no own servers, no restarts
FULL_REF = re.compile(r"^[a-z0-9][a-z0-9._-]*@[0-9]+$")


@dataclass
class VllmConfig:
    """Parsed, checked [plugins.vllm] settings."""

    urls: list[str] = field(default_factory=list)  # running servers (the scale-out case)
    command: list[str] = field(default_factory=list)  # how to start a server ourselves (before --model)
    args: list[str] = field(default_factory=list)  # extra `vllm serve` arguments
    host: str = "127.0.0.1"
    port: int = 0  # 0: a free port
    start_timeout: float = 600.0  # seconds for a started server to answer /health (model load, compile)
    request_timeout: float = 600.0  # seconds without a byte from a server before a reply fails
    max_loras: int = 8  # vLLM's LoRA slots per batch (--max-loras) for a server we start
    max_lora_rank: int = 64
    retry_dead: float = 5.0  # seconds before a dead endpoint is probed again
    env: dict = field(default_factory=dict)  # extra environment for a server we start
    log_dir: str = ""  # where a started server's log goes; empty: DATA_DIR/logs
    api_key: str = ""  # from $VLLM_API_KEY only (secrets never live in personae.toml)
    # Full fine-tunes: a running server per version ('pixel@3' -> URL) on its materialised folder, or how to
    # start one on it (like `command`; `args`, `host`, `env` apply too). Neither: the local generator answers.
    full_urls: dict = field(default_factory=dict)
    full_command: list[str] = field(default_factory=list)
    # Each own server is a whole model plus its KV cache (on a GPU, vLLM takes most of its memory): at most this
    # many run at once; 2 lets a promotion from one full version to the next overlap. 0: none (answered locally).
    max_full_servers: int = 2
    restart_attempts: int = 3  # an own server that fails or dies is started again this many times in a row
    restart_backoff: float = 5.0  # seconds before the first restart, doubled for each next one (up to 5 minutes)


def _url(value, key: str = "urls") -> str:
    parsed = urlparse(str(value))
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ConfigError(f"[plugins.vllm] {key}: {value!r} is not an http(s) URL of a vLLM server "
                          "(write it like 'http://10.0.0.5:8000')")
    return str(value).rstrip("/").removesuffix("/v1")


def parse_config(table: dict) -> VllmConfig:
    """Check the table and return its settings; a wrong key or value is a ConfigError naming it."""
    unknown = sorted(set(table) - set(KEYS))
    if unknown:
        raise ConfigError(f"[plugins.vllm]: unknown setting(s) {', '.join(unknown)} (known: {', '.join(KEYS)})")
    if "api_key" in table:
        raise ConfigError("[plugins.vllm]: put the API key in $VLLM_API_KEY, not in the settings file")
    config = VllmConfig(api_key=os.environ.get("VLLM_API_KEY", ""))
    urls = table.get("urls", [])
    if isinstance(urls, str):
        urls = [urls]
    config.urls = [_url(u) for u in urls]
    command = table.get("command", "")
    config.command = shlex.split(command) if isinstance(command, str) else [str(c) for c in command]
    full_command = table.get("full_command", "")
    config.full_command = shlex.split(full_command) if isinstance(full_command, str) else [str(c) for c in full_command]
    full_urls = table.get("full_urls", {})
    if not isinstance(full_urls, dict) or not all(FULL_REF.match(str(ref)) for ref in full_urls):
        raise ConfigError(f"[plugins.vllm] full_urls = {full_urls!r}: write a table of versions to URLs, like "
                          "full_urls = { \"pixel@3\" = \"http://10.0.0.7:8000\" }")
    config.full_urls = {str(ref): _url(url, "full_urls") for ref, url in full_urls.items()}
    args = table.get("args", [])
    config.args = shlex.split(args) if isinstance(args, str) else [str(a) for a in args]
    if bool(config.urls) == bool(config.command):
        raise ConfigError("backend 'vllm' needs exactly one of [plugins.vllm] urls = [\"http://HOST:PORT\", ...] "
                          "(running servers) or command = \".venv-vllm/bin/python -m vllm.entrypoints.openai.api_server\" (start one; see `make vllm`)")
    for name in ("host", "log_dir"):
        if name in table:
            setattr(config, name, str(table[name]))
    for name, kind in (("port", int), ("max_loras", int), ("max_lora_rank", int), ("start_timeout", float),
                       ("request_timeout", float), ("retry_dead", float), ("max_full_servers", int),
                       ("restart_attempts", int), ("restart_backoff", float)):
        if name in table:
            try:
                value = kind(table[name])
            except (TypeError, ValueError):
                raise ConfigError(f"[plugins.vllm] {name} = {table[name]!r} is not a number") from None
            if value < 0 or (value == 0 and name not in ZERO_ALLOWED):
                least = "0 or more" if name in ZERO_ALLOWED else "positive"
                raise ConfigError(f"[plugins.vllm] {name} = {table[name]!r} must be {least}")
            setattr(config, name, value)
    env = table.get("env", {})
    if not isinstance(env, dict):
        raise ConfigError("[plugins.vllm] env must be a table of environment variables")
    config.env = {str(k): str(v) for k, v in env.items()}
    return config
