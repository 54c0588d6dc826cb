"""The generator's KV cache: appends into spare room, same numbers as transformers' DynamicCache."""

from __future__ import annotations

from types import SimpleNamespace

from runtime.generation.kv_cache import CHUNK, new_cache


def decode(model, cache, prompt, steps):
    """Prefill then greedy-decode `steps` tokens with the given cache; (logits per step, cache)."""
    import torch

    logits = []
    with torch.inference_mode():
        out = model(input_ids=torch.tensor([prompt]), past_key_values=cache, use_cache=True)
        for _ in range(steps):
            logits.append(out.logits[:, -1])
            token = out.logits[:, -1].argmax(-1, keepdim=True)
            out = model(input_ids=token, past_key_values=out.past_key_values, use_cache=True)
    return logits, out.past_key_values


def test_growing_cache_matches_dynamic_cache_and_reallocates_once_per_chunk(tiny_base):
    import torch
    from transformers import DynamicCache

    model, prompt = tiny_base.model, [1, 5, 9, 33, 2, 17]
    mine, cache = decode(model, new_cache(model), prompt, 5)
    theirs, reference = decode(model, DynamicCache(), prompt, 5)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(mine, theirs))
    assert cache.get_seq_length() == reference.get_seq_length() == len(prompt) + 5
    layer = cache.layers[0]
    assert type(layer).__name__ == "GrowingLayer"
    assert torch.allclose(layer.keys, reference.layers[0].keys, atol=1e-5)
    buffer = layer._keys_buffer
    assert buffer.shape[-2] == len(prompt) + CHUNK  # room was made once, at the prefill
    _, cache = decode(model, cache, [7], CHUNK - 8)  # fill the room almost up: no new buffer
    assert cache.layers[0]._keys_buffer is buffer


def test_assigned_tensors_are_never_written_into(tiny_base):
    """Rows joining or leaving assign new tensors; the next step must copy them, not write past their end."""
    import torch

    model = tiny_base.model
    _, cache = decode(model, new_cache(model), [1, 5, 9], 1)
    for layer in cache.layers:  # e.g. a second row stacked into the batch by the generator
        layer.keys = torch.cat([layer.keys, layer.keys], dim=0)
        layer.values = torch.cat([layer.values, layer.values], dim=0)
    shared = cache.layers[0].keys
    snapshot = shared.clone()
    assert cache.layers[0]._keys_buffer.shape[-2] == 4 == cache.get_seq_length()  # taken as is: no spare room
    with torch.inference_mode():
        model(input_ids=torch.tensor([[3], [4]]), past_key_values=cache, use_cache=True)
    assert torch.equal(shared, snapshot)
    assert cache.layers[0].keys.shape[-2] == 5 and cache.layers[0].keys.data_ptr() != shared.data_ptr()


def test_models_with_sliding_window_layers_keep_transformers_cache():
    from transformers import DynamicCache, MistralConfig

    config = MistralConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                           num_key_value_heads=1, sliding_window=8, vocab_size=64)
    cache = new_cache(SimpleNamespace(config=config))
    assert type(cache) is DynamicCache and type(cache.layers[0]).__name__ == "DynamicSlidingWindowLayer"
