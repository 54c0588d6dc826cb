"""Settings: personae.toml, overridden by PERSONAE_* environment variables."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from runtime.errors import PersonaeError


class ConfigError(PersonaeError, ValueError):
    """A settings file or variable that cannot be used; the message says which and why."""


def _default_data_dir() -> str:
    return str(Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share")) / "personae")


def _default_cache_dir() -> str:
    return str(Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "personae")


@dataclass
class Settings:
    """Every setting of the runtime, with where its value came from."""

    data_dir: str = field(
        default_factory=_default_data_dir,
        metadata={"help": "Folder for personae.db, imported characters and the adapter registry."},
    )
    cache_dir: str = field(
        default_factory=_default_cache_dir,
        metadata={"help": "Folder for converted base models (safe to delete; rebuilt on demand)."},
    )
    base_model: str = field(
        default="smollm2-135m-instruct",
        metadata={
            "help": "Base model: 'smollm2-135m-instruct' (packaged GGUF, converted once), "
            "a local folder, or a Hugging Face id already in the local cache."
        },
    )
    dtype: str = field(
        default="auto",
        metadata={"help": "Weights precision on CPU: auto, float32, bfloat16 or int8 (dynamic quantisation)."},
    )
    device: str = field(default="cpu", metadata={"help": "torch device: cpu, cuda, cuda:1, mps."})
    backend: str = field(
        default="local",
        metadata={"help": "Who generates: 'local' (this process's batching generator), 'vllm' (vLLM servers, "
                          "[plugins.vllm]) or a backend a plugin registers (register_backends)."},
    )
    threads: int = field(default=0, metadata={"help": "torch threads for serving; 0 = torch's default."})
    plugins_dir: str = field(
        default="", metadata={"help": "Folder of extra plugin .py files loaded at start-up."}
    )
    default_character: str = field(
        default="", metadata={"help": "Character used when none is named; empty = the first built-in."}
    )
    temperature: float = field(default=0.7, metadata={"help": "Sampling temperature; 0 = greedy."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling threshold; 1 = off (min_p does the job)."})
    top_k: int = field(default=40, metadata={"help": "Sample from the k likeliest tokens only; 0 = off."})
    min_p: float = field(
        default=0.1,
        metadata={"help": "Drop tokens less likely than this share of the likeliest one (keeps small models "
                          "coherent at chat temperatures); 0 = off."},
    )
    repetition_penalty: float = field(default=1.1, metadata={"help": "Penalty for repeated tokens; 1 = off."})
    repeat_last_n: int = field(
        default=64,
        metadata={"help": "How many recent tokens the repetition penalty covers (-1 = the whole prompt, card "
                          "included; 0 = off)."},
    )
    frequency_penalty: float = field(default=0.0, metadata={"help": "OpenAI-style frequency penalty on the reply's tokens."})
    presence_penalty: float = field(default=0.0, metadata={"help": "OpenAI-style presence penalty on the reply's tokens."})
    dry_multiplier: float = field(
        default=0.0, metadata={"help": "DRY sequence-repetition penalty strength (llama.cpp's; 0.8 is usual); 0 = off."}
    )
    max_new_tokens: int = field(default=160, metadata={"help": "Longest reply, in tokens."})
    context_tokens: int = field(
        default=2048, metadata={"help": "Prompt budget in tokens (capped by the model's own context)."}
    )
    history_turns: int = field(default=40, metadata={"help": "Most logged messages read back as history."})
    max_batch: int = field(default=16, metadata={"help": "Most requests decoded together in one batch."})
    max_adapters: int = field(default=16, metadata={"help": "Most LoRA adapters held in memory (LRU)."})
    max_full_models: int = field(
        default=2, metadata={"help": "Most fully fine-tuned character models held in memory (LRU)."}
    )
    pack_weights: bool = field(
        default=True,
        metadata={"help": "On CPU, serve from Linear weights prepacked for oneDNN: ~1.3-1.5x faster decoding, "
                          "one extra copy of the base model's Linear weights in memory (false = off)."},
    )
    prefix_cache_mb: int = field(
        default=256,
        metadata={"help": "Memory for the keys/values of recent prompts, so a prompt repeating a stored prefix "
                          "(a character's card, a chat's earlier turns) prefills only the rest; 0 = off."},
    )
    expected_batch: int = field(
        default=1,
        metadata={"help": "Typical number of replies generated at once; dtype 'auto' picks bf16 on CPU only "
                          "when this reaches the batch where bf16 beats fp32 here (measured once)."},
    )
    max_queue: int = field(default=64, metadata={"help": "Most requests waiting; past that callers get 'busy'."})
    seed: int = field(default=-1, metadata={"help": "Seed for sampling; -1 = random each reply (0 is a seed too)."})
    training: dict = field(default_factory=dict, metadata={"help": "[training] table: see the README."})
    audit: dict = field(default_factory=dict, metadata={"help": "[audit] table: see the README."})
    plugins: dict = field(
        default_factory=dict,
        metadata={"help": "[plugins.NAME] tables: each plugin's own settings (built-ins: discord, http, vllm)."},
    )

    sources: dict = field(default_factory=dict, repr=False, metadata={"internal": True})

    @property
    def data_path(self) -> Path:
        """The data directory as a Path (created on demand by the users of it)."""
        return Path(self.data_dir).expanduser()

    @property
    def db_path(self) -> Path:
        """Where the SQLite log lives."""
        return self.data_path / "personae.db"

    def plugin_settings(self, name: str) -> dict:
        """The [plugins.NAME] table of one plugin (empty when it has none)."""
        table = self.plugins.get(name, {})
        if not isinstance(table, dict):
            raise ConfigError(f"[plugins.{name}] must be a table, not {type(table).__name__}")
        return table

    def public_items(self):
        """(name, value, help, source) for every user-facing setting."""
        for f in fields(self):
            if f.metadata.get("internal"):
                continue
            yield f.name, getattr(self, f.name), f.metadata.get("help", ""), self.sources.get(f.name, "default")


ENV_PREFIX = "PERSONAE_"


def config_path() -> Path | None:
    """The personae.toml in use: $PERSONAE_CONFIG, else ./personae.toml, else none."""
    explicit = os.environ.get("PERSONAE_CONFIG")
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise ConfigError(f"PERSONAE_CONFIG points to {path}, which is not a file")
        return path
    local = Path("personae.toml")
    return local if local.is_file() else None


def _coerce(name: str, value: Any, kind: type, origin: str) -> Any:
    """Convert a raw value to the setting's type, or fail naming the setting."""
    try:
        if kind is bool:
            if isinstance(value, str):
                return value.strip().lower() in {"1", "true", "yes", "on"}
            return bool(value)
        if kind is dict:
            if not isinstance(value, dict):
                raise TypeError("expected a table")
            return value
        return kind(value)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{origin}: setting '{name}' = {value!r} is not a valid {kind.__name__} ({error})") from None


# The built-in platforms' tables may also be written at the top level ([discord], [http]), as
# earlier versions documented; they mean [plugins.discord] and [plugins.http].
SHORT_PLUGIN_TABLES = ("discord", "http")


def _short_plugin_tables(table: dict, path) -> dict:
    """Move top-level [discord] / [http] tables under [plugins]."""
    table = dict(table)
    plugins = dict(table.get("plugins") or {})
    for name in SHORT_PLUGIN_TABLES:
        if name in table:
            if name in plugins:
                raise ConfigError(f"{path}: both [{name}] and [plugins.{name}] are set; keep one")
            plugins[name] = table.pop(name)
    if plugins:
        table["plugins"] = plugins
    return table


def load_settings(overrides: dict | None = None) -> Settings:
    """Resolve settings: defaults < personae.toml < PERSONAE_* environment < explicit overrides."""
    settings = Settings()
    types = {name: type(value) for name, value, _, _ in settings.public_items()}
    path = config_path()
    if path:
        try:
            table = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"{path}: not valid TOML ({error}); fix the file or set PERSONAE_CONFIG") from None
        table = _short_plugin_tables(table, path)
        for name, value in table.items():
            if name not in types:
                known = ", ".join(sorted(types))
                raise ConfigError(f"{path}: unknown setting '{name}' (known: {known})")
            setattr(settings, name, _coerce(name, value, types[name], str(path)))
            settings.sources[name] = str(path)
    for name, kind in types.items():
        variable = ENV_PREFIX + name.upper()
        if variable in os.environ and kind is not dict:
            setattr(settings, name, _coerce(name, os.environ[variable], kind, variable))
            settings.sources[name] = f"${variable}"
    for name, value in _short_plugin_tables(overrides or {}, "command line").items():
        if value is None:
            continue
        setattr(settings, name, _coerce(name, value, types[name], "command line"))
        settings.sources[name] = "command line"
    return settings
