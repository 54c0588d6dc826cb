"""backend = "llamacpp" next to torch: a lone decode keeps llama.cpp's own threads spinning at its barriers even
after torch has run on several threads elsewhere in the process, lanes keep a lasting thread pool, and an OpenMP
build of llama.cpp (which shares libgomp with torch and then sleeps at every barrier, half the speed) is named
with its fix.

Counts, not timings: an OpenMP build with torch's extra threads alive makes ~880 voluntary context switches per
token on SmolLM2 (two per op barrier); llama.cpp's own threads make a few.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import resource
import threading

import pytest

pytestmark = [pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                                 reason="llama-cpp-python is not installed; `make llamacpp` compiles it"),
              pytest.mark.real_model]
TOKENS = 16


def test_an_openmp_build_is_named_with_its_fix_and_lanes_keep_a_thread_pool(caplog):
    from plugins.llamacpp.native import Lane, Model, bindings, uses_openmp
    from runtime.models.base import packaged_gguf

    info = bindings().llama_print_system_info().decode()
    assert uses_openmp(bindings()) == ("OPENMP = 1" in info) and "CPU" in info
    for threads in (1, 2):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="personae.llamacpp"):
            model = Model(packaged_gguf(), threads)
        lane = Lane(model, None, 1, 256)
        assert (lane.pool is not None) == (threads > 1)  # as llama-server: no threads made and joined per decode
        lane.close()
        model.close()
        warned = [r.getMessage() for r in caplog.records if "OpenMP" in r.getMessage()]
        if model.openmp and threads > 1:  # one thread never enters OpenMP: nothing to warn about
            assert len(warned) == 1 and "make llamacpp" in warned[0] and "-DGGML_OPENMP=OFF" in warned[0]
        else:
            assert warned == []


@pytest.fixture
def torch_threads_elsewhere():
    """A live thread that has run torch on two threads (as loading, training or the fp32 path do)."""
    import torch

    done, ready = threading.Event(), threading.Event()

    def work():
        before = torch.get_num_threads()
        torch.set_num_threads(2)
        matrix = torch.randn(256, 256)
        for _ in range(10):
            matrix @ matrix  # on OpenMP's team: its pooled thread stays while this one lives
        torch.set_num_threads(before)
        ready.set()
        done.wait()

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    ready.wait(60)
    yield
    done.set()
    thread.join()


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="llama.cpp's thread barriers need two cores")
def test_torch_threads_elsewhere_leave_a_lone_decode_spinning(make_engine, real_base, torch_threads_elsewhere):
    from runtime.generation.types import Request, SamplingSettings

    generator = make_engine(real_base, backend="llamacpp", threads=2).generator
    if generator.model.openmp:
        pytest.skip("llama.cpp is built with OpenMP (it sleeps at every barrier here): rebuild with `make llamacpp`")
    prompt = real_base.tokenizer.apply_chat_template([{"role": "user", "content": "Tell me about the sea."}],
                                                     add_generation_prompt=True, tokenize=True, return_dict=False)
    sampling = SamplingSettings(temperature=0, max_new_tokens=TOKENS, min_new_tokens=TOKENS)
    stream = generator.submit(Request(list(prompt), sampling))
    pieces = iter(stream)
    next(pieces)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw
    text = "".join(pieces)
    switches = (resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw - before) / (stream.completion_tokens - 1)
    assert stream.error is None and stream.completion_tokens == TOKENS and text.strip()
    assert generator.model.threads == 2
    assert switches < 100, f"{switches:.0f} voluntary context switches per token: llama.cpp's threads sleep"


def idle_cpu_seconds(seconds: float = 0.3) -> float:
    """CPU time the process burns while this thread sleeps (a polling pool's workers are what burns it)."""
    import time

    before = resource.getrusage(resource.RUSAGE_SELF)
    time.sleep(seconds)
    after = resource.getrusage(resource.RUSAGE_SELF)
    return (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="a pool's polling shows only with a second core")
def test_lanes_taking_turns_leave_no_pool_polling_for_the_next_one():
    """After a decode, ggml's workers poll ~100 ms for the next graph; a lane that rests leaves none polling, nor
    does one decoding on one thread beside another lane (the worker left out of the graph goes back to sleep) (a polling pool would burn ~0.1 CPU-s here; a busy machine can
    only make it burn less, so this fails only when a pool does poll)."""
    from plugins.llamacpp.native import Lane, Model
    from runtime.models.base import packaged_gguf

    model = Model(packaged_gguf(), 2)
    lanes = [Lane(model, None, 1, 256) for _ in range(2)]
    try:
        for lane in lanes:
            lane.decode([(lane.slots[0], [1, 2, 3, 4])])
            lane.rest()
        assert idle_cpu_seconds() < 0.03
        for lane in lanes:
            lane.set_threads(1)  # side by side: each lane on one thread
            lane.decode([(lane.slots[0], [5])])
        assert idle_cpu_seconds() < 0.03
        lanes[0].set_threads(2)  # alone again: both threads
        lanes[0].decode([(lanes[0].slots[0], [6])])
        lanes[0].rest()
        assert idle_cpu_seconds() < 0.03
    finally:
        for lane in lanes:
            lane.close()
        model.close()
