"""backend = "llamacpp": characters answering from the packaged 4-bit GGUF in llama.cpp, their LoRAs in fp32 on top.

The configuration errors and the PEFT -> GGUF conversion need no llama.cpp; the rest runs the real
SmolLM2 Q4_1 through llama-cpp-python (installed by `make llamacpp`).
"""

from __future__ import annotations

import importlib.util
import json
import threading

import pytest
from helpers_adapters import train_tiny_lora

from runtime.chat.engine import Turn
from runtime.config import ConfigError
from runtime.errors import PersonaeError

# llama-cpp-python compiles llama.cpp, so `make test` does not install it: `make llamacpp` (and `make bench`) do.
needs_llama_cpp = pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                                     reason="llama-cpp-python is not installed; `make llamacpp` compiles it")
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def llamacpp_engine(make_engine, base, **table):
    return make_engine(base, backend="llamacpp", threads=1, plugins={"llamacpp": table})


def chat(engine, character, channel, max_new_tokens=24, text="Ahoy there! Who are you?", **sampling):
    return engine.reply(Turn(platform="test", channel=channel, user_id=channel, user_name="Ann", text=text,
                             character=engine.catalog.get(character),
                             sampling={"temperature": 0, "max_new_tokens": max_new_tokens, **sampling}))


# --- no llama.cpp needed ---------------------------------------------------------------------


def test_bad_settings_are_one_line_config_errors(make_engine, tiny_base):
    with pytest.raises(ConfigError) as error:
        llamacpp_engine(make_engine, tiny_base, slot=2).generator
    assert "unknown setting(s) slot" in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(ConfigError) as error:
        llamacpp_engine(make_engine, tiny_base, lanes=0).generator
    assert "lanes = 0 must be at least 1" in str(error.value)
    with pytest.raises(ConfigError) as error:
        llamacpp_engine(make_engine, tiny_base, sampler="numpy").generator
    assert "sampler = 'numpy' is not one of llamacpp, python" in str(error.value)
    with pytest.raises(ConfigError) as error:  # a base other than the packaged one needs its own GGUF
        llamacpp_engine(make_engine, tiny_base).generator
    assert "needs a GGUF of base model" in str(error.value) and "[plugins.llamacpp] gguf" in str(error.value)
    with pytest.raises(ConfigError) as error:
        llamacpp_engine(make_engine, tiny_base, gguf="missing.gguf").generator
    assert "missing.gguf" in str(error.value) and "no such file" in str(error.value)


def test_a_peft_lora_becomes_a_llama_cpp_lora_gguf(tiny_base, tmp_path):
    import gguf
    import numpy as np
    from safetensors.torch import load_file

    from plugins.llamacpp.lora_gguf import _permute, cached_lora

    folder = train_tiny_lora(tiny_base, tmp_path / "lora", steps=2, rank=4, target_modules=("q_proj", "down_proj"))
    path = cached_lora(folder, tiny_base.model, tmp_path / "cache")
    assert cached_lora(folder, tiny_base.model, tmp_path / "cache") == path  # converted once
    reader = gguf.GGUFReader(path)
    assert reader.fields["general.type"].contents() == "adapter"
    assert reader.fields["adapter.type"].contents() == "lora"
    assert reader.fields["adapter.lora.alpha"].contents() == 0.0  # PEFT's scale is inside B
    tensors = {t.name: np.array(t.data) for t in reader.tensors}
    assert len(tensors) == 2 * 2 * 2  # two modules, two layers, A and B
    peft = load_file(str(folder / "adapter_model.safetensors"))
    prefix = "base_model.model.model.layers.1."
    a = peft[prefix + "self_attn.q_proj.lora_A.weight"].numpy()
    b = peft[prefix + "self_attn.q_proj.lora_B.weight"].numpy() * 2.0  # alpha 8 / r 4
    assert tensors["blk.1.attn_q.weight.lora_a"].dtype == np.float32  # LoRA stays fp32 on the 4-bit base
    np.testing.assert_allclose(tensors["blk.1.attn_q.weight.lora_a"], a, rtol=1e-6)
    np.testing.assert_allclose(tensors["blk.1.attn_q.weight.lora_b"], _permute(b, 4), rtol=1e-6)  # rope row order
    down = peft[prefix + "mlp.down_proj.lora_B.weight"].numpy() * 2.0
    np.testing.assert_allclose(tensors["blk.1.ffn_down.weight.lora_b"], down, rtol=1e-6)


def test_a_lora_with_saved_modules_is_refused_with_the_reason(tiny_base, tmp_path):
    from plugins.llamacpp.lora_gguf import convert_lora

    folder = train_tiny_lora(tiny_base, tmp_path / "hybrid", steps=1, modules_to_save=["lm_head"])
    with pytest.raises(PersonaeError) as error:
        convert_lora(folder, tiny_base.model, tmp_path / "out.gguf")
    assert "modules_to_save (lm_head) have no llama.cpp LoRA form" in str(error.value)
    assert not (tmp_path / "out.gguf").exists()


# --- the real SmolLM2 Q4_1 in llama.cpp ----------------------------------------------------------


@pytest.fixture(scope="module")
def loras(real_base, tmp_path_factory):
    """Two real PEFT LoRAs on SmolLM2 (every projection, rank 8), and one hybrid with modules_to_save."""
    root = tmp_path_factory.mktemp("llamacpp-loras")
    made = {f"v{i}": train_tiny_lora(real_base, root / f"v{i}", steps=2, rank=8, seed=i, target_modules=TARGETS,
                                     lr=3e-2) for i in (1, 2)}
    made["hybrid"] = train_tiny_lora(real_base, root / "hybrid", steps=1, rank=8, seed=5, modules_to_save=["lm_head"])
    return made


@needs_llama_cpp
@pytest.mark.real_model
def test_the_converted_lora_moves_llama_cpp_like_peft_moves_the_fp32_model(real_base, loras, tmp_path):
    import numpy as np
    import torch
    from peft import PeftModel

    from plugins.llamacpp.lora_gguf import cached_lora
    from plugins.llamacpp.native import Lane, Model
    from runtime.models.base import packaged_gguf

    prompt = real_base.tokenizer.apply_chat_template([{"role": "user", "content": "Tell me about the sea."}],
                                                     add_generation_prompt=True, tokenize=True, return_dict=False)
    model = Model(packaged_gguf(), threads=1)
    adapter = model.adapter(cached_lora(loras["v1"], real_base.model, tmp_path))
    lanes = {name: Lane(model, handle, slots=1, n_ctx=512) for name, handle in (("base", None), ("lora", adapter))}
    quantised = {name: lane.logits(lane.decode([(lane.slots[0], prompt)])[0]).copy() for name, lane in lanes.items()}
    with torch.inference_mode():
        ids = torch.tensor([prompt])
        fp32_base = real_base.model(ids).logits[0, -1].numpy()
        peft = PeftModel.from_pretrained(real_base.model, loras["v1"])
        fp32_lora = peft(ids).logits[0, -1].numpy()
        peft.unload()  # the shared session base is plain again
    for lane in lanes.values():
        lane.close()
    model.free_adapter(adapter)
    model.close()

    def cosine(x, y):
        return float(np.dot(x, y) / np.linalg.norm(x) / np.linalg.norm(y))

    # The 4-bit base reads like the fp32 copy dequantised from it, and the LoRA moves both the same way
    # (a wrong q/k row order or scale would turn the change elsewhere).
    assert cosine(quantised["base"], fp32_base) > 0.99
    assert cosine(quantised["lora"] - quantised["base"], fp32_lora - fp32_base) > 0.9
    assert np.abs(fp32_lora - fp32_base).max() > 0.5  # the LoRA does change the model


@needs_llama_cpp
@pytest.mark.real_model
def test_lora_characters_answer_through_llama_cpp_like_llama_cpp_itself(make_engine, real_base, loras):
    from llama_cpp import Llama

    engine = llamacpp_engine(make_engine, real_base)
    engine.weights.registry.add(loras["v1"], "pixel", activate=True)
    engine.weights.registry.add(loras["v2"], "professor-quill", activate=True)
    replies = {}

    def run(character):
        reply = chat(engine, character, f"chan-{character}", repetition_penalty=1.0)
        reply.result()
        replies[character] = reply

    threads = [threading.Thread(target=run, args=(c,)) for c in ("pixel", "professor-quill")]
    [t.start() for t in threads]
    [t.join(timeout=300) for t in threads]
    assert set(replies) == {"pixel", "professor-quill"}

    for character in ("pixel", "professor-quill"):
        reply, request = replies[character], replies[character].stream.request
        lora = engine.generator.lora_file(f"lora:{character}@1")
        assert lora.suffix == ".gguf" and lora.parent.name == "llamacpp-lora"  # converted once, in the cache
        direct = Llama(model_path=str(engine.generator.model.path), lora_path=str(lora), n_ctx=1024, n_threads=1,
                       verbose=False)
        tokens = []
        for token in direct.generate(list(request.input_ids), temp=0.0, repeat_penalty=1.0):
            if token == real_base.tokenizer.eos_token_id or len(tokens) == request.sampling.max_new_tokens:
                break
            tokens.append(token)
        expected = real_base.tokenizer.decode(tokens, skip_special_tokens=True)
        assert reply.stream.text == expected and expected.strip()  # what llama.cpp itself answers with that LoRA
        assert reply.message["weights_version"] == f"lora:{character}@1"
        meta = json.loads(reply.message["meta"])
        assert meta["backend"] == "llamacpp" and meta["model"] == "SmolLM2-135M-Instruct.Q4_1.gguf"
        assert reply.message["prompt_tokens"] == len(request.input_ids) and reply.message["completion_tokens"] > 0
    engine.weights.registry.rollback("pixel")  # back to the bare base
    base = chat(engine, "pixel", "chan-base2", repetition_penalty=1.0)
    assert base.result() and base.message["weights_version"] == "base"
    assert base.stream.text != replies["pixel"].stream.text  # the adapter matters


@needs_llama_cpp
@pytest.mark.real_model
def test_streams_sampling_stops_and_the_prompt_cache(make_engine, real_base):
    engine = llamacpp_engine(make_engine, real_base, slots=2)
    first = chat(engine, "pixel", "same", max_new_tokens=40, temperature=0.8, seed=7, logprobs=2)
    pieces = list(first)
    assert len(pieces) > 1 and "".join(pieces) == first.stream.text  # streamed piece by piece
    assert len(first.stream.logprobs) == first.stream.completion_tokens or first.stream.finish_reason == "stop"
    assert all(len(lp.top) == 2 for lp in first.stream.logprobs)
    again = chat(engine, "pixel", "same2", max_new_tokens=40, temperature=0.8, seed=7, logprobs=2)
    assert again.result() == first.stream.text  # the row's own seeded sampler: same seed, same reply
    stats = engine.generator.stats
    assert stats["reused_tokens"] > 0  # the second prompt's start (the card) came from the slot's cache
    stopped = chat(engine, "pixel", "stop", max_new_tokens=60, stop=[" "])
    assert " " not in stopped.result() and stopped.stream.finish_reason == "stop"


@needs_llama_cpp
@pytest.mark.real_model
def test_a_hybrid_version_falls_back_to_the_local_generator_and_says_so(make_engine, real_base, loras, caplog):
    engine = llamacpp_engine(make_engine, real_base)
    engine.weights.registry.add(loras["hybrid"], "pixel", activate=True)
    with caplog.at_level("WARNING", logger="personae.llamacpp"):
        reply = chat(engine, "pixel", "hybrid", max_new_tokens=12)
        reply.result()
    meta = json.loads(reply.message["meta"])
    assert meta["backend"] == "local" and "modules_to_save" in meta["fallback"]
    assert reply.message["weights_version"] == "hybrid:pixel@1" and reply.stream.text
    assert "served by the local generator, not llama.cpp" in caplog.text
    assert engine.generator.where("hybrid:pixel@1").startswith("local")


@needs_llama_cpp
@pytest.mark.real_model
def test_cancel_frees_the_slot_and_a_full_queue_is_busy(make_engine, real_base):
    from runtime.errors import Busy

    engine = llamacpp_engine(make_engine, real_base, slots=1, lanes=1)
    engine.settings.max_queue = 1
    long = chat(engine, "pixel", "long", max_new_tokens=400, min_new_tokens=400)
    pieces = iter(long)
    assert next(pieces)
    waiting = chat(engine, "pixel", "waiting", max_new_tokens=4)  # queued: the only slot is busy
    with pytest.raises(Busy):
        for i in range(3):
            chat(engine, "pixel", f"over{i}")
    long.cancel()
    "".join(pieces)
    assert long.stream.finish_reason == "cancelled" and long.message is None
    assert waiting.result() and waiting.message is not None  # the freed slot served the queued one


@needs_llama_cpp
@pytest.mark.real_model
def test_lanes_decoded_side_by_side_reply_what_lanes_in_turn_reply(make_engine, real_base, loras):
    from runtime.generation.types import Request, SamplingSettings

    prompt = real_base.tokenizer.apply_chat_template([{"role": "user", "content": "Who are you?"}],
                                                     add_generation_prompt=True, tokenize=True, return_dict=False)
    texts = {}
    for parallel, threads in ((1, 1), (2, 2)):  # in turn on one thread; two lanes at once, one thread each
        gen = make_engine(real_base, backend="llamacpp", threads=threads,
                          plugins={"llamacpp": {"parallel": parallel}}).generator
        for name in ("v1", "v2"):
            gen.load_adapter(name, loras[name])
        sampling = SamplingSettings(temperature=0, max_new_tokens=24, repetition_penalty=1.0)
        streams = [gen.submit(Request(list(prompt), sampling, name)) for name in ("v1", "v2", "__base__")]
        texts[parallel] = [stream.result() for stream in streams]
        assert (gen.stats["parallel_rounds"] > 0) == (parallel == 2)
    assert texts[2] == texts[1] and len(set(texts[1])) == 3  # three different weights, the same replies


@needs_llama_cpp
@pytest.mark.real_model
def test_json_schema_and_logit_bias_are_followed_on_llama_cpp(make_engine, real_base):
    """response_format (and so forced tool calls) run in the runtime's sampler, logit_bias in llama.cpp's chain."""
    engine = llamacpp_engine(make_engine, real_base)
    schema = {"type": "object", "properties": {"mood": {"enum": ["happy", "sad"]}}, "required": ["mood"],
              "additionalProperties": False}
    shaped = chat(engine, "pixel", "json", max_new_tokens=30, guard=False,
                  response_format={"type": "json_schema", "json_schema": {"schema": schema}})
    assert json.loads(shaped.result())["mood"] in ("happy", "sad")
    hello = real_base.tokenizer.encode(" hello", add_special_tokens=False)
    forced = chat(engine, "pixel", "bias", max_new_tokens=3, logit_bias={hello[0]: 100.0})
    assert len(hello) == 1 and forced.result() == "hello hello hello"
    assert json.loads(forced.message["meta"])["backend"] == "llamacpp"
