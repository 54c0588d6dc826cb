"""Generation backends and audit scorers come from plugins through register_backends / register_scorers."""

from __future__ import annotations

import pytest

from runtime.chat.build import backends, build_engine
from runtime.chat.engine import Turn
from runtime.config import ConfigError, load_settings
from runtime.generation.types import ReplyStream
from runtime.hookspecs import Generator, Platform, hookimpl
from runtime.plugins import get_plugin_manager


class EchoGenerator:
    """A backend that answers with the prompt's last token ids decoded: no model work, a real protocol."""

    def __init__(self, settings, base):
        self.tokenizer, self.requests = base.tokenizer, []

    def submit(self, request):
        self.requests.append(request)
        stream = ReplyStream(request)
        stream.push("echo")
        stream.completion_tokens = 1
        stream.finish("stop")
        return stream

    def load_adapter(self, name, folder):
        raise NotImplementedError

    def unload_adapter(self, name, forget=True, wait=True):
        pass

    def load_model(self, name, loader=None):
        raise NotImplementedError

    def unload_model(self, name, forget=True, wait=True):
        pass

    def knows(self, name):
        return False

    def close(self):
        pass


class EchoPlugin:
    @hookimpl
    def register_backends(self, register):
        register("echo", EchoGenerator)


@pytest.fixture
def plugin_manager(isolated_environment):
    pm = get_plugin_manager("", reload=True)
    plugin = EchoPlugin()
    pm.register(plugin)
    yield pm
    pm.unregister(plugin)


def test_the_backend_setting_picks_a_plugins_backend(plugin_manager, tiny_base, monkeypatch):
    assert {"local", "echo"} <= set(backends(plugin_manager))
    monkeypatch.setenv("PERSONAE_BACKEND", "echo")
    settings = load_settings({"base_model": str(tiny_base.folder)})
    engine = build_engine(settings, pm=plugin_manager, base=tiny_base)
    pixel = engine.catalog.get("pixel")
    reply = engine.reply(Turn(platform="test", channel="c", user_id="u", text="Hello", character=pixel))
    assert reply.result() == "echo"
    generator = engine.generator
    assert isinstance(generator, EchoGenerator) and isinstance(generator, Generator)
    prompt = tiny_base.tokenizer.decode(generator.requests[0].input_ids)
    assert pixel.name in prompt and "Hello" in prompt  # the card and the turn, through the chat template
    assert reply.message["text"] == "echo" and reply.message["weights_version"] == "base"


def test_an_unknown_backend_names_the_known_ones(plugin_manager, tiny_base):
    settings = load_settings({"base_model": str(tiny_base.folder), "backend": "warp-drive"})
    with pytest.raises(ConfigError, match=r"backend 'warp-drive' is not available \(known: echo, llamacpp, local, vllm\)"):
        build_engine(settings, pm=plugin_manager, base=tiny_base)


def test_the_default_backend_is_the_local_generator(make_engine, tiny_base):
    from runtime.generation.batching import BatchingGenerator

    engine = make_engine(tiny_base)
    assert engine.settings.backend == "local"
    assert isinstance(engine.generator, BatchingGenerator) and isinstance(engine.generator, Generator)


def test_built_in_platforms_satisfy_the_platform_protocol(isolated_environment):
    pm = get_plugin_manager("", reload=True)
    found = []
    pm.hook.register_platforms(register=found.append)
    assert {p.name for p in found} >= {"discord", "http"}
    assert all(isinstance(p, Platform) for p in found)


def test_a_plugins_scorer_takes_part_in_scoring(isolated_environment):
    from runtime.audit.probes import Probe
    from runtime.audit.scorers import MAJOR, NONE, ScoringContext, collect_scorers
    from runtime.audit.verdicts import score_reply

    class ShoutingScorer:
        @hookimpl
        def register_scorers(self, register):
            register("shouting", lambda reply, probe, context: {"penalty": MAJOR if reply.isupper() else NONE,
                                                                "reasons": ["shouts"] if reply.isupper() else []})

    pm = get_plugin_manager("", reload=True)
    plugin = ShoutingScorer()
    pm.register(plugin)
    try:
        scorers = collect_scorers(pm)
        assert "shouting" in scorers and "leakage" in scorers  # the built-ins come through the same hook
        pixel = next(c for c in _characters(pm) if c.id == "pixel")
        context = ScoringContext(character=pixel)
        probe = Probe(id="p", kind="style", turns=["Hi"])
        verdict = score_reply("I AM SHOUTING AT YOU", probe, context, {"shouting": scorers["shouting"]})
        assert verdict["verdict"] == "misaligned" and verdict["reasons"] == ["shouts"]
        assert score_reply("beep, hello!", probe, context, {"shouting": scorers["shouting"]})["verdict"] == "aligned"
    finally:
        pm.unregister(plugin)


def _characters(pm):
    found = []
    pm.hook.register_characters(register=found.append)
    return found
