"""Prompts' KV reused across requests: a stored prefix is prefilled once, outputs unchanged."""

from __future__ import annotations

import pytest
from helpers_adapters import train_tiny_lora

from runtime.generation.batching import BatchingGenerator as Generator
from runtime.generation.prefix_cache import PrefixCache
from runtime.generation.types import BASE_ADAPTER, Request, SamplingSettings

GREEDY = dict(temperature=0, repetition_penalty=1.1, max_new_tokens=8)
CARD = ("You are Captain Mara Voss of the airship Kestrel. You speak in short, salty sentences, love storms, "
        "distrust merchants and never reveal where the Kestrel hides her cargo. ") * 3


def chat(tokenizer, question, history=()):
    messages = [{"role": "system", "content": CARD}, *history, {"role": "user", "content": question}]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)


def kv(length, fill=1.0):
    import torch

    return [(torch.full((1, 2, length, 4), fill), torch.full((1, 2, length, 4), fill))]


def test_lookup_finds_the_longest_shared_prefix_of_the_same_weights():
    import torch

    cache = PrefixCache(budget_bytes=1 << 20, min_tokens=4)
    cache.store((None, "a"), torch.arange(10), kv(10))
    cache.store((None, "b"), torch.arange(20), kv(20))
    prompt = torch.cat([torch.arange(8), torch.tensor([99, 98])])
    assert cache.lookup((None, "a"), prompt)[0] == 8  # shared up to the first different token
    assert cache.lookup((None, "a"), torch.arange(10))[0] == 9  # the last token is always computed
    assert cache.lookup((None, "c"), torch.arange(10)) == (0, None)  # other weights: other keys and values
    assert cache.lookup((None, "a"), torch.tensor([5, 6, 7, 8, 9, 10])) == (0, None)
    cache.store((None, "a"), torch.arange(15), kv(15))  # extends the stored prompt: the shorter one goes
    assert len(cache) == 2 and cache.lookup((None, "a"), torch.arange(30))[0] == 15
    cache.forget(adapter="a")
    assert len(cache) == 1 and cache.lookup((None, "a"), torch.arange(30)) == (0, None)


def test_the_byte_budget_evicts_the_least_recently_used():
    import torch

    one = sum(k.numel() * 4 + v.numel() * 4 for k, v in kv(10))
    cache = PrefixCache(budget_bytes=2 * one, min_tokens=4)
    for start in (0, 100, 200):
        cache.store((None, "a"), torch.arange(start, start + 10), kv(10))
    assert len(cache) == 2 and cache.bytes == 2 * one
    assert cache.lookup((None, "a"), torch.arange(0, 12)) == (0, None)  # the oldest went
    assert cache.lookup((None, "a"), torch.arange(200, 212))[0] == 10


def test_a_shared_card_is_prefilled_once_and_replies_do_not_change(generator, tiny_base, tmp_path):
    tokenizer = tiny_base.tokenizer
    folder = train_tiny_lora(tiny_base, tmp_path / "voice", steps=2, seed=3)
    first, second = chat(tokenizer, "Where is the cargo?"), chat(tokenizer, "Do you like storms?")
    turn = chat(tokenizer, "And merchants?", [{"role": "user", "content": "Where is the cargo?"},
                                               {"role": "assistant", "content": "Not telling."}])
    cached, plain = generator(), generator(prefix_cache_mb=0)
    for gen in (cached, plain):
        gen.register_adapter("voice", folder)
    replies = {}
    for label, gen in (("cached", cached), ("plain", plain)):
        replies[label] = [gen.submit(Request(p, SamplingSettings(**GREEDY), weights)).result()
                          for weights in (BASE_ADAPTER, "voice") for p in (first, second, turn)]
    assert replies["cached"] == replies["plain"]
    stats = cached.prefixes.stats
    assert stats["hits"] == 4 and stats["misses"] == 2  # each weights' first prompt misses; the rest reuse it
    assert cached.stats["prefill_tokens"] < 0.5 * plain.stats["prefill_tokens"]
    cached.load_adapter("voice")  # replaced: its stored prompts were computed by the old weights
    assert all(entry.weights[1] != "voice" for entry in cached.prefixes._entries.values())


@pytest.mark.real_model
def test_real_smollm2_character_prompt_reuses_the_card(real_base):
    from runtime.characters.catalog import Catalog
    from runtime.characters.prompt import build_messages
    from runtime.config import load_settings
    from runtime.plugins import get_plugin_manager

    settings = load_settings()
    character = Catalog(get_plugin_manager(settings.plugins_dir), settings.data_dir).get("pixel")
    tokenizer = real_base.tokenizer
    prompts = [tokenizer.apply_chat_template(build_messages(character, [{"role": "user", "content": q}], tokenizer,
                                                            2048), add_generation_prompt=True, tokenize=True,
                                             return_dict=False) for q in ("Hi!", "What game should I play?")]
    cached = Generator(real_base.model, tokenizer)
    plain = Generator(real_base.model, tokenizer, prefix_cache_mb=0)
    try:
        texts = [[g.submit(Request(p, SamplingSettings(**GREEDY))).result() for p in prompts] for g in (cached, plain)]
    finally:
        cached.close()
        plain.close()
    assert texts[0] == texts[1]
    assert cached.prefixes.stats["hits"] == 1 and cached.prefixes.stats["tokens_reused"] > 300
