"""Serving speed of one character's weights, measured the same way for every method (the production path)."""

from __future__ import annotations

import time
from dataclasses import replace

QUESTIONS = ("Tell me about yourself.", "What do you do all day?", "What is your favourite memory?",
             "Give me some advice.", "What scares you?", "Describe where you live.", "Tell me a short story.",
             "What makes you happy?")


def serving_speed(engine, character, version=None, *, requests: int = 8, new_tokens: int = 32) -> dict:
    """Decode tokens/s and mean first-token seconds of `requests` concurrent replies with the card's prompt.

    Every method goes through the same path: weights leased from the registry as chats lease them,
    the engine's generator (batched LoRA for adapters), greedy decoding of exactly `new_tokens` tokens
    (end-of-sequence suppressed), all requests submitted together, after one warm-up reply.
    """
    from runtime.characters.prompt import build_messages
    from runtime.generation.types import Request, SamplingSettings

    tokenizer = engine.base.tokenizer
    sampling = SamplingSettings(temperature=0, repetition_penalty=1.0, max_new_tokens=new_tokens,
                                min_new_tokens=new_tokens, guard=False)
    prompts = []
    for question in (QUESTIONS * (requests // len(QUESTIONS) + 1))[:requests]:
        messages = build_messages(character, [{"role": "user", "content": question}], tokenizer,
                                  engine.settings.context_tokens - new_tokens)
        prompts.append(list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                          return_dict=False)))
    lease = engine.weights_for(character, version)
    try:
        _drain([engine.generator.submit(Request(prompts[0], replace(sampling, max_new_tokens=2, min_new_tokens=2),
                                                lease.adapter))])  # loads the weights; not timed
        started = time.perf_counter()
        streams = [engine.generator.submit(Request(ids, sampling, lease.adapter)) for ids in prompts]
        _drain(streams)
        seconds = time.perf_counter() - started
    finally:
        lease.release()
    tokens = sum(stream.completion_tokens for stream in streams)
    first = [stream.first_token_at - stream.request.submitted for stream in streams if stream.first_token_at]
    return {"tokens_per_s": round(tokens / seconds, 2) if seconds else None, "tokens": tokens,
            "seconds": round(seconds, 3), "ttft_s": round(sum(first) / len(first), 4) if first else None,
            "prompt_tokens": round(sum(len(p) for p in prompts) / len(prompts), 1), "requests": requests}


def _drain(streams) -> None:
    for stream in streams:
        for _ in stream:
            pass
