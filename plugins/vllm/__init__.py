"""The `vllm` backend: vLLM OpenAI-compatible servers generate, Personae keeps cards, prompts, log and registry.

Set `backend = "vllm"` and a [plugins.vllm] table: `urls` of running servers, or `command` (the
vllm program, e.g. .venv-vllm/bin/vllm from `make vllm`) to start one on the base model.
"""

from __future__ import annotations

from runtime.hookspecs import hookimpl


def vllm_generator(settings, base):
    """A VllmGenerator over the configured servers, starting one first when `command` is set."""
    from plugins.vllm.config import parse_config
    from plugins.vllm.generator import VllmGenerator
    from plugins.vllm.server import ManagedServer

    config = parse_config(settings.plugin_settings("vllm"))
    server, urls = None, config.urls
    if config.command:
        server = ManagedServer(config.command, base.folder, host=config.host, port=config.port, args=config.args,
                               env=config.env, log_dir=config.log_dir or settings.data_path / "logs",
                               max_loras=config.max_loras, max_lora_rank=config.max_lora_rank)
        server.start(config.start_timeout)
        urls = [server.url]
    try:
        return VllmGenerator(settings, base, config, urls, server)
    except BaseException:
        if server is not None:
            server.stop()
        raise


@hookimpl
def register_backends(register):
    register("vllm", vllm_generator)
