"""Shared fixtures: isolated data dirs, a tiny random model, the real SmolLM2, engines."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from runtime.hookspecs import hookimpl

REPO = Path(__file__).resolve().parent.parent
# Converted base models are cached across test runs (the GGUF conversion takes ~25-45 s).
MODEL_CACHE = Path(os.environ.get("PERSONAE_TEST_CACHE", REPO / ".cache" / "test-models"))

# Benchmarks run only through `make bench` (PERSONAE_BENCH=1), never in `make test`.
collect_ignore = [] if os.environ.get("PERSONAE_BENCH") else ["bench"]


@pytest.fixture(autouse=True)
def isolated_environment(tmp_path, monkeypatch):
    """Every test gets its own data directory and no stray personae.toml."""
    for name in list(os.environ):
        if name.startswith("PERSONAE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("PERSONAE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("PERSONAE_CACHE_DIR", str(MODEL_CACHE))
    monkeypatch.chdir(tmp_path)
    yield tmp_path


@pytest.fixture(scope="session")
def smollm2_folder() -> Path:
    """The real SmolLM2-135M-Instruct, converted from the packaged GGUF once and cached."""
    from runtime.models.base import DEFAULT_BASE, resolve_model_folder

    return resolve_model_folder(DEFAULT_BASE, MODEL_CACHE)


@pytest.fixture(scope="session")
def tiny_model_folder(tmp_path_factory, smollm2_folder) -> Path:
    """A tiny random-weight Llama with SmolLM2's tokenizer and chat template (fast unit tests)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("tiny-model")
    tokenizer = AutoTokenizer.from_pretrained(smollm2_folder)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_base(tiny_model_folder):
    """The tiny model, loaded once per test session."""
    from runtime.models.base import load_base_model

    return load_base_model(str(tiny_model_folder), MODEL_CACHE)


@pytest.fixture(scope="session")
def real_base(smollm2_folder):
    """The real SmolLM2 model, loaded once per test session."""
    from runtime.models.base import DEFAULT_BASE, load_base_model

    return load_base_model(DEFAULT_BASE, MODEL_CACHE)


@pytest.fixture
def make_engine(isolated_environment):
    """Build engines over a fresh data dir; `base` is a loaded BaseModel (tiny_base or real_base)."""
    from runtime.chat.build import build_engine
    from runtime.config import load_settings
    from runtime.plugins import get_plugin_manager

    engines = []

    def build(base, generator=None, **overrides):
        settings = load_settings({"base_model": str(base.folder), **overrides})
        engine = build_engine(settings, pm=get_plugin_manager(settings.plugins_dir, reload=True), base=base,
                              generator=generator)
        engines.append(engine)
        return engine

    yield build
    for engine in engines:
        engine.close()


@pytest.fixture
def server(engine):
    """A live loopback HTTP server (tests/http_server.py) over the test module's own `engine` fixture."""
    from http_server import LiveServer

    live = LiveServer(engine)
    try:
        yield live
    finally:
        live.close()


@pytest.fixture
def generator(tiny_base):
    """Build batching generators on the tiny model; all closed after the test."""
    from runtime.generation.batching import BatchingGenerator

    made = []

    def build(**options):
        gen = BatchingGenerator(tiny_base.model, tiny_base.tokenizer, **options)
        made.append(gen)
        return gen

    yield build
    for gen in made:
        gen.close()


class PromptSpy:
    """Records the chat messages the engine sends to the model (a prompt_messages hook)."""

    def __init__(self):
        self.prompts, self.characters = [], []

    @hookimpl
    def prompt_messages(self, character, messages, turn):
        self.prompts.append([dict(m) for m in messages])
        self.characters.append(character)

    def chat(self, index: int = -1) -> list[str]:
        """The chat part of a recorded prompt: its texts without the card, lore and example dialogue turns."""
        return [m["content"] for m in self.prompts[index] if m["role"] != "system" and not m.get("example")]


@pytest.fixture
def prompt_spy():
    """`prompt_spy(engine)` registers a PromptSpy on the engine's plugins until the test ends."""
    registered = []

    def watch(engine):
        spy = PromptSpy()
        engine.pm.register(spy)
        registered.append((engine, spy))
        return spy

    try:
        yield watch
    finally:
        for engine, spy in registered:
            engine.pm.unregister(spy)
