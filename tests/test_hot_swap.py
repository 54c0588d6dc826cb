"""Hot swap: promote and roll back a character's weights while chats are in flight (real threads)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from helpers_adapters import train_tiny_lora

from runtime.chat.engine import Turn


def chat(engine, channel, max_new_tokens=30):
    return engine.reply(Turn(platform="test", channel=channel, user_id=channel, user_name="Ann", text="Ahoy there!",
                             character=engine.catalog.get("pixel"), sampling={"temperature": 0, "max_new_tokens": max_new_tokens}))


def reference(base, folder, input_ids, max_new_tokens):
    """The same prompt generated alone by PEFT on one adapter."""
    import copy

    import torch
    from peft import PeftModel

    model = PeftModel.from_pretrained(copy.deepcopy(base.model), folder)
    ids = torch.tensor([input_ids])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False,
                         repetition_penalty=1.1, pad_token_id=base.tokenizer.pad_token_id)
    return base.tokenizer.decode(out[0, len(input_ids):], skip_special_tokens=True)


def test_promote_and_rollback_while_chats_run(make_engine, tiny_base, tmp_path):
    engine = make_engine(tiny_base)
    registry = engine.weights.registry
    old = train_tiny_lora(tiny_base, tmp_path / "old", steps=2, seed=1, target_modules=("q_proj", "v_proj", "o_proj"))
    new = train_tiny_lora(tiny_base, tmp_path / "new", steps=2, seed=2, target_modules=("q_proj", "v_proj", "o_proj"))
    registry.add(old, "pixel", activate=True)
    registry.add(new, "pixel")

    started, promoted = threading.Barrier(5), threading.Event()

    def in_flight(channel):
        reply = chat(engine, channel)
        pieces = iter(reply)
        first = next(pieces, "")
        started.wait(timeout=60)  # all four are decoding when the promotion happens
        promoted.wait(timeout=60)
        return reply, first + "".join(pieces)

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(in_flight, f"old{i}") for i in range(4)]
        started.wait(timeout=60)
        assert engine.generator.active_rows > 0
        registry.promote("pixel", 2)
        promoted.set()
        after = [pool.submit(lambda c=c: chat(engine, c).result() and None, ) for c in ("new0", "new1")]
        finished = [f.result(timeout=120) for f in futures]
        [f.result(timeout=120) for f in after]

    for reply, text in finished:  # started on version 1: finished on version 1, none failed
        assert reply.message is not None and reply.message["weights_version"] == "lora:pixel@1"
        expected = reference(tiny_base, old, reply.stream.request.input_ids, 30)
        assert text and expected.startswith(text)
    logged = {row["channel"]: row for row in engine.store.recent(50) if row["role"] == "assistant"}
    assert logged["new0"]["weights_version"] == logged["new1"]["weights_version"] == "lora:pixel@2"
    engine.generator._call(lambda: None, 30)  # let posted unloads run
    assert engine.generator.loaded()["adapters"] == ["lora:pixel@2"]  # the retired one left memory

    late = chat(engine, "new2")
    late.result()
    assert late.message["weights_version"] == "lora:pixel@2"
    assert late.stream.text and reference(tiny_base, new, late.stream.request.input_ids, 30).startswith(
        late.stream.text)

    registry.rollback("pixel")
    back = chat(engine, "back")
    back.result()
    assert back.message["weights_version"] == "lora:pixel@1"
