"""The `llamacpp` backend: the base's 4-bit GGUF in llama.cpp (llama-cpp-python), LoRAs in fp32 on top.

Set `backend = "llamacpp"` (after `make llamacpp`, which compiles llama-cpp-python); an optional
[plugins.llamacpp] table sets `gguf` (default: the packaged SmolLM2 Q4_1 the base was converted from),
`threads`, `context` (KV cells per lane), `slots` (chats per lane decoded together), `lanes` (LoRAs
held at once, one llama.cpp context each), `parallel` (lanes decoded at the same time, each on
threads / parallel of the threads) and `sampler` ("llamacpp": llama.cpp's sampler chain for every request
it covers; "python": the runtime's sampler for all).
"""

from __future__ import annotations

import os
from pathlib import Path

from runtime.hookspecs import hookimpl

KEYS = {"gguf": str, "threads": int, "context": int, "slots": int, "lanes": int, "parallel": int, "sampler": str}
# parallel 2: on the quiet-machine bench, 8 chats on 8 LoRAs ran 4.5x faster than lanes in turn (README).
DEFAULTS = {"context": 4096, "slots": 4, "lanes": 8, "parallel": 2, "sampler": "llamacpp"}
SAMPLERS = ("llamacpp", "python")


def parse_config(settings) -> dict:
    """The checked [plugins.llamacpp] table with defaults filled in; a wrong key or value is a ConfigError."""
    from runtime.config import ConfigError

    table = settings.plugin_settings("llamacpp")
    unknown = sorted(set(table) - set(KEYS))
    if unknown:
        raise ConfigError(f"[plugins.llamacpp]: unknown setting(s) {', '.join(unknown)} (known: {', '.join(KEYS)})")
    config = dict(DEFAULTS, threads=settings.threads or os.cpu_count() or 1)
    for name, value in table.items():
        try:
            config[name] = KEYS[name](value)
        except (TypeError, ValueError):
            raise ConfigError(f"[plugins.llamacpp] {name} = {value!r} is not a {KEYS[name].__name__}") from None
        if KEYS[name] is int and config[name] < 1:
            raise ConfigError(f"[plugins.llamacpp] {name} = {value!r} must be at least 1")
    if config["sampler"] not in SAMPLERS:
        raise ConfigError(f"[plugins.llamacpp] sampler = {config['sampler']!r} is not one of {', '.join(SAMPLERS)}")
    return config


def base_gguf(settings, config: dict, folder=None) -> Path:
    """The GGUF llama.cpp loads: the configured one, or the packaged file the default base comes from."""
    import json

    from runtime.config import ConfigError
    from runtime.models.base import DEFAULT_BASE, GGUF_FILE, packaged_gguf

    if config.get("gguf"):
        path = Path(config["gguf"]).expanduser()
        if not path.is_file():
            raise ConfigError(f"[plugins.llamacpp] gguf = {config['gguf']!r}: no such file")
        return path
    source = Path(folder or "") / "personae-source.json"  # written when the packaged GGUF was converted
    converted = source.is_file() and json.loads(source.read_text()).get("gguf") == GGUF_FILE
    if settings.base_model != DEFAULT_BASE and not converted:
        raise ConfigError(f"backend 'llamacpp' needs a GGUF of base model {settings.base_model!r}: set "
                          "[plugins.llamacpp] gguf = \"path/to/model.gguf\" (llama.cpp's convert_hf_to_gguf.py "
                          "makes one)")
    return packaged_gguf()


def llamacpp_generator(settings, base):
    """A LlamaCppGenerator over the base's GGUF."""
    from plugins.llamacpp.generator import LlamaCppGenerator

    config = parse_config(settings)
    return LlamaCppGenerator(settings, base, base_gguf(settings, config, base.folder), threads=config["threads"],
                             context=config["context"], slots=config["slots"], lanes=config["lanes"],
                             parallel=config["parallel"], sampler=config["sampler"],
                             cache_dir=Path(settings.cache_dir).expanduser() / "llamacpp-lora")


@hookimpl
def register_backends(register):
    register("llamacpp", llamacpp_generator)
