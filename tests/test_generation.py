"""The batching generator on the tiny model: mixed-adapter batches, continuous batching, cancel, busy, stops."""

from __future__ import annotations

import copy

import pytest
from helpers_adapters import train_tiny_lora

from runtime.generation.batching import BatchingGenerator as Generator
from runtime.generation.types import BASE_ADAPTER, GeneratorBusy, Request, SamplingSettings

GREEDY = dict(temperature=0, repetition_penalty=1.1)
PROMPTS = ["Hello there", "What is the sea like tonight, captain?", "Tell me a story about a long voyage"]


def encode(tokenizer, text):
    return tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                         tokenize=True, return_dict=False)


def hf_greedy(model, tokenizer, ids, max_new_tokens):
    """transformers' own generate, one request alone: the reference text."""
    import torch

    tensor = torch.tensor([ids])
    with torch.inference_mode():
        out = model.generate(tensor, attention_mask=torch.ones_like(tensor), max_new_tokens=max_new_tokens,
                             do_sample=False, repetition_penalty=1.1, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, len(ids):], skip_special_tokens=True)


def peft_reference(base, folder, prompts, max_new_tokens):
    """Each prompt generated alone by PEFT on this one adapter (a copy of the model)."""
    from peft import PeftModel

    model = PeftModel.from_pretrained(copy.deepcopy(base.model), folder)
    return [hf_greedy(model, base.tokenizer, p, max_new_tokens) for p in prompts]


@pytest.fixture(scope="module")
def adapters(tiny_base, tmp_path_factory):
    """Two real LoRA adapters (different ranks and targets) and one hybrid (lm_head trained fully)."""
    root = tmp_path_factory.mktemp("adapters")
    folders = {
        "a0": train_tiny_lora(tiny_base, root / "a0", steps=2, seed=0, rank=4,
                              target_modules=("q_proj", "k_proj", "v_proj", "o_proj")),
        "a1": train_tiny_lora(tiny_base, root / "a1", steps=2, seed=1, rank=8),  # different rank and targets
    }
    folders["hybrid"] = train_tiny_lora(tiny_base, root / "hybrid", steps=2, seed=9, modules_to_save=["lm_head"])
    return folders


@pytest.fixture(scope="module")
def references(tiny_base, adapters):
    prompts = [encode(tiny_base.tokenizer, p) for p in PROMPTS]
    refs = {name: peft_reference(tiny_base, folder, prompts, 10) for name, folder in adapters.items()}
    refs[BASE_ADAPTER] = [hf_greedy(tiny_base.model, tiny_base.tokenizer, p, 10) for p in prompts]
    return prompts, refs


def test_mixed_adapter_batch_equals_each_adapter_alone(generator, adapters, references):
    prompts, refs = references
    gen = generator(max_batch=32)
    for name, folder in adapters.items():
        gen.register_adapter(name, folder)
    streams = {(name, i): gen.submit(Request(p, SamplingSettings(max_new_tokens=10, **GREEDY), name))
               for name in refs for i, p in enumerate(prompts)}
    for (name, i), stream in streams.items():
        assert stream.result() == refs[name][i], (name, i)
        assert stream.finish_reason in ("length", "stop")
    assert gen.stats["mixed_steps"] > 0  # rows of different adapters really shared decode steps
    assert len({refs[name][0] for name in refs}) > 1  # the adapters do change the output


def test_real_smollm2_mixed_batch_equals_alone(real_base, tmp_path):
    folder = train_tiny_lora(real_base, tmp_path / "voice", steps=1, rank=8, lr=2e-2, texts=("Arr, ahoy there!",))
    prompts = [encode(real_base.tokenizer, p) for p in PROMPTS[:2]]
    gen = Generator(real_base.model, real_base.tokenizer, max_batch=8)
    try:
        gen.register_adapter("voice", folder)
        sampling = SamplingSettings(max_new_tokens=8, **GREEDY)
        jobs = [(p, name) for name in ("voice", BASE_ADAPTER) for p in prompts]
        alone = [gen.submit(Request(p, sampling, name)).result() for p, name in jobs]
        together = [gen.submit(Request(p, sampling, name)) for p, name in jobs]
        assert [s.result() for s in together] == alone
    finally:
        gen.close()
    assert alone[:2] != alone[2:]  # the trained adapter changes SmolLM2's reply
    # and the base rows are what transformers' own generate says
    assert alone[2] == hf_greedy(real_base.model, real_base.tokenizer, prompts[0], 8)


def test_request_joins_running_batch_and_finishes_first(generator, tiny_base, references):
    prompts, refs = references
    gen = generator()
    alone = gen.submit(Request(prompts[2], SamplingSettings(max_new_tokens=60, **GREEDY))).result()
    long = gen.submit(Request(prompts[2], SamplingSettings(max_new_tokens=60, **GREEDY)))
    next(iter(long))  # the long reply is being decoded
    short = gen.submit(Request(prompts[0], SamplingSettings(max_new_tokens=3, **GREEDY)))
    short.result()
    assert long.finished_at is None  # the short one did not wait for the long one
    assert long.result() == alone  # and joining did not change the long one's tokens
    assert long.finish_reason == "length" and long.completion_tokens == 60
    assert short.first_token_at < long.finished_at and short.finished_at < long.finished_at


def test_cancelled_row_leaves_the_batch_and_others_continue(generator, references):
    prompts, refs = references
    gen = generator()
    keep = gen.submit(Request(prompts[1], SamplingSettings(max_new_tokens=40, **GREEDY)))
    drop = gen.submit(Request(prompts[2], SamplingSettings(max_new_tokens=40, **GREEDY)))
    next(iter(drop))
    drop.cancel()
    drop.result()
    assert drop.finish_reason == "cancelled" and drop.completion_tokens < 40
    expected = gen.submit(Request(prompts[1], SamplingSettings(max_new_tokens=40, **GREEDY))).result()
    assert keep.result() == expected and keep.finish_reason == "length"


def test_full_queue_is_busy_with_a_retry_hint(generator, references):
    prompts, _ = references
    gen = generator(max_queue=1, max_batch=1)
    running = gen.submit(Request(prompts[0], SamplingSettings(max_new_tokens=500, **GREEDY)))
    next(iter(running))
    waiting = gen.submit(Request(prompts[1], SamplingSettings(max_new_tokens=5, **GREEDY)))
    assert gen.queue_depth == 1
    with pytest.raises(GeneratorBusy) as busy:
        gen.submit(Request(prompts[1], SamplingSettings(max_new_tokens=5, **GREEDY)))
    assert busy.value.retry_after >= 1 and "retry" in str(busy.value)
    running.cancel()
    assert waiting.result() is not None and waiting.finish_reason in ("length", "stop")


def test_stop_string_ends_the_reply_and_is_trimmed(generator, references):
    prompts, _ = references
    gen = generator()
    sampling = dict(temperature=0, repetition_penalty=2.0, max_new_tokens=30)
    full = gen.submit(Request(prompts[1], SamplingSettings(**sampling))).result()
    cut, stop = next((i, full[i:i + k]) for k in range(2, 12) for i in range(1, len(full) - k)
                     if full.find(full[i:i + k]) == i and full[i:i + k].strip())
    stream = gen.submit(Request(prompts[1], SamplingSettings(stop=[stop], **sampling)))
    pieces = list(stream)
    assert "".join(pieces) == full[:cut] == stream.text
    assert stream.finish_reason == "stop" and stop not in stream.text


def test_sampled_row_is_reproducible_inside_a_batch(generator, references):
    prompts, _ = references
    gen = generator()
    sampling = SamplingSettings(temperature=0.9, top_p=0.9, max_new_tokens=12, seed=7)
    alone = gen.submit(Request(prompts[0], sampling)).result()
    crowd = [gen.submit(Request(p, SamplingSettings(temperature=1.0, max_new_tokens=20))) for p in prompts]
    again = gen.submit(Request(prompts[0], sampling))
    assert again.result() == alone
    for stream in crowd:
        stream.result()


def test_adapter_lru_is_bounded_and_reloads(generator, adapters, references):
    prompts, refs = references
    gen = generator(max_adapters=2)
    for name, folder in adapters.items():
        gen.register_adapter(name, folder)
    for name in ["a0", "a1", "hybrid", "a0"]:
        stream = gen.submit(Request(prompts[0], SamplingSettings(max_new_tokens=10, **GREEDY), name))
        assert stream.result() == refs[name][0]
        assert len(gen.loaded()["adapters"]) <= 2
    assert gen.stats["evicted"] >= 2


def test_adapter_replaced_while_serving(generator, adapters, references):
    prompts, refs = references
    gen = generator()
    gen.load_adapter("voice", adapters["a0"])
    assert gen.submit(Request(prompts[1], SamplingSettings(max_new_tokens=10, **GREEDY), "voice")).result() \
        == refs["a0"][1]
    seconds = gen.load_adapter("voice", adapters["a1"])  # swapped in between decode steps
    assert seconds > 0
    assert gen.submit(Request(prompts[1], SamplingSettings(max_new_tokens=10, **GREEDY), "voice")).result() \
        == refs["a1"][1]


def test_full_model_lru_is_bounded(generator, tiny_base, references):
    import torch

    prompts, _ = references
    gen = generator(max_models=2)

    def variant(seed):
        model = copy.deepcopy(tiny_base.model)
        torch.manual_seed(seed)
        with torch.no_grad():
            for param in model.model.layers.parameters():
                param.add_(torch.randn_like(param) * 0.05)
        return model

    models = {f"full:m{i}": variant(i) for i in range(3)}
    loads = []
    for name, model in models.items():
        gen.register_model(name, lambda n=name: loads.append(n) or models[n])
    expected = {name: hf_greedy(model, tiny_base.tokenizer, prompts[0], 8) for name, model in models.items()}
    for name in ["full:m0", "full:m1", "full:m2", "full:m0"]:
        together = [gen.submit(Request(prompts[0], SamplingSettings(max_new_tokens=8, **GREEDY), name)),
                    gen.submit(Request(prompts[0], SamplingSettings(max_new_tokens=8, **GREEDY)))]
        assert together[0].result() == expected[name]
        together[1].result()
        assert len(gen.loaded()["models"]) <= 2
    assert loads == ["full:m0", "full:m1", "full:m2", "full:m0"]  # m0 was evicted and loaded again


def test_unknown_and_pickled_adapters_fail_clearly(generator, references, tmp_path):
    from runtime.models.peft_files import AdapterLoadError

    prompts, _ = references
    gen = generator()
    stream = gen.submit(Request(prompts[0], SamplingSettings(max_new_tokens=4, **GREEDY), "nobody"))
    with pytest.raises(LookupError, match="nobody"):
        stream.result()
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "adapter_config.json").write_text("{}")
    (pickled / "adapter_model.bin").write_bytes(b"not loaded")
    with pytest.raises(AdapterLoadError, match="pickle"):
        gen.load_adapter("pickled", pickled)
    # the worker is still serving
    assert gen.submit(Request(prompts[0], SamplingSettings(max_new_tokens=2, **GREEDY))).result() is not None


def test_requests_arriving_together_are_prefilled_in_one_pass(generator, adapters, references):
    import threading

    prompts, refs = references
    gen = generator()
    for name, folder in adapters.items():
        gen.register_adapter(name, folder)
        gen.load_adapter(name)
    jobs = [(p, name) for name in ("a0", "a1", "hybrid", BASE_ADAPTER) for p in prompts[:2]]
    hold = threading.Event()
    gen._call(lambda: hold.wait(30), 5, wait=False)  # the worker is busy while all of them arrive
    before = dict(gen.stats)
    streams = [gen.submit(Request(p, SamplingSettings(max_new_tokens=10, **GREEDY), name)) for p, name in jobs]
    hold.set()
    texts = [s.result() for s in streams]
    assert gen.stats["prefill_passes"] - before["prefill_passes"] == 1
    assert gen.stats["prefill_rows"] - before["prefill_rows"] == len(jobs)
    assert texts == [refs[name][prompts.index(p)] for p, name in jobs]  # padding changed no token


def test_min_new_tokens_holds_off_the_end_of_sequence(generator, tiny_base, references):
    import torch

    prompts, _ = references
    gen = generator()
    with torch.inference_mode():
        first = int(tiny_base.model(input_ids=torch.tensor([prompts[0]])).logits[0, -1].argmax())
    gen.eos = {first}  # the greedy first token now ends the reply at once...
    plain = SamplingSettings(temperature=0, repetition_penalty=1.0, max_new_tokens=6)
    ended = gen.submit(Request(prompts[0], plain))
    held = gen.submit(Request(prompts[0], SamplingSettings(**{**plain.__dict__, "min_new_tokens": 6})))
    assert ended.result() == "" and ended.finish_reason == "stop" and ended.completion_tokens == 1
    held.result()  # ...unless min_new_tokens suppresses it
    assert held.finish_reason == "length" and held.completion_tokens == 6


def test_lora_scale_matches_peft_per_module_patterns(tiny_base):
    """Rank/alpha patterns by short name and by dotted path scale each module as PEFT does."""
    from peft import LoraConfig, get_peft_model

    from runtime.models.peft_files import lora_scale

    config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM",
                        rank_pattern={"model.layers.0.self_attn.q_proj": 4, "v_proj": 2},
                        alpha_pattern={"layers.1.self_attn.q_proj": 3})
    model = get_peft_model(copy.deepcopy(tiny_base.model), config)
    checked = 0
    for name, module in model.base_model.model.named_modules():
        if isinstance(getattr(module, "scaling", None), dict):  # LoRA layers (attention has a float `scaling`)
            assert lora_scale(config.to_dict(), name) == pytest.approx(module.scaling["default"]), name
            checked += 1
    assert checked == 2 * len(tiny_base.model.model.layers)
