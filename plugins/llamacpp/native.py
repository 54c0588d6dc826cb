"""llama.cpp through llama-cpp-python's C bindings: one model, lanes (contexts) that share its weights.

A lane is one llama_context with one LoRA set (llama.cpp applies LoRA per context, not per sequence):
its sequences (slots) decode together in one llama_decode, and each slot keeps the tokens it holds
in the KV cache, so a new prompt repeating a slot's start (the card, earlier turns) skips that part.
"""

from __future__ import annotations

import ctypes
import functools
import logging
from dataclasses import dataclass, field
from pathlib import Path

from runtime.errors import PersonaeError

log = logging.getLogger("personae.llamacpp")
# Why an OpenMP build is slow here: ggml's barriers (one after each op, hundreds per token) are libgomp's, and
# libgomp shares one count of pooled threads with torch (the same libgomp.so.1 is loaded once per
# process). Once torch has used several threads on any other thread (loading, training, the fp32 path),
# that count passes the core count and libgomp sleeps at every barrier instead of spinning: ~880
# voluntary context switches per token instead of ~3, half the decode speed (issue 17).
OPENMP_WARNING = ("llama.cpp is built with OpenMP: with torch in the same process its threads sleep at "
                  "every step and decode at about half speed; rebuild it without: `make llamacpp` (or "
                  "CMAKE_ARGS=\"-DGGML_OPENMP=OFF\" pip install --force-reinstall --no-deps --no-cache-dir "
                  "llama-cpp-python==0.3.36)")


class LlamaCppError(PersonaeError, RuntimeError):
    """llama.cpp refused a model, an adapter or a step; the message says which and what to do."""

    http_status = 500


def bindings():
    """The llama_cpp module, quiet (its C log goes to stderr only for errors)."""
    try:
        import llama_cpp
        from llama_cpp import _logger
    except ImportError:
        raise LlamaCppError("backend 'llamacpp' needs llama-cpp-python: run `make llamacpp` (it compiles "
                            "llama.cpp, ~10 min on 2 cores) or `CMAKE_ARGS=\"-DGGML_OPENMP=OFF\" pip install "
                            "llama-cpp-python==0.3.36`") from None
    _logger.set_verbose(False)
    return llama_cpp


class Model:
    """A GGUF model loaded once (weights memory-mapped); lanes and LoRA adapters hang off it."""

    def __init__(self, path: Path, threads: int):
        self.lib = bindings()
        self.lib.llama_backend_init()
        params = self.lib.llama_model_default_params()
        params.n_gpu_layers = 0
        self.handle = self.lib.llama_model_load_from_file(str(path).encode(), params)
        if not self.handle:
            raise LlamaCppError(f"llama.cpp could not load {path} (is it a GGUF model file?)")
        self.path, self.threads = path, threads
        self.n_vocab = self.lib.llama_vocab_n_tokens(self.lib.llama_model_get_vocab(self.handle))
        self.openmp = uses_openmp(self.lib)
        if self.openmp and threads > 1:
            log.warning(OPENMP_WARNING)

    def adapter(self, path: Path):
        """Load a LoRA GGUF made for this model."""
        handle = self.lib.llama_adapter_lora_init(self.handle, str(path).encode())
        if not handle:
            raise LlamaCppError(f"llama.cpp refused the LoRA {path} for {self.path.name}")
        return handle

    def free_adapter(self, handle) -> None:
        self.lib.llama_adapter_lora_free(handle)

    def close(self) -> None:
        if self.handle:
            self.lib.llama_model_free(self.handle)
            self.handle = None


def uses_openmp(lib) -> bool:
    """Whether this llama.cpp's CPU backend runs its threads on OpenMP (its system info says `OPENMP = 1`)."""
    return "OPENMP = 1" in lib.llama_print_system_info().decode(errors="replace")


@dataclass
class Slot:
    """One sequence of a lane: the tokens its KV cache holds, and the row using it (None: free)."""

    seq: int
    tokens: list = field(default_factory=list)
    row: object = None


class Lane:
    """One llama_context over the shared model with one LoRA (or none) and `slots` sequences."""

    def __init__(self, model: Model, adapter, slots: int, n_ctx: int, n_batch: int = 512):
        self.model, self.lib, self.adapter = model, model.lib, adapter
        params = self.lib.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = params.n_ubatch = n_batch
        params.n_seq_max = slots
        params.n_threads = params.n_threads_batch = model.threads
        params.kv_unified = True  # the slots share one pool of cells: a long chat can use what others don't
        params.no_perf = True
        params.flash_attn_type = 0  # off, as llama-cpp-python's Llama sets it
        params.n_outputs_max_per_seq = 0  # every position may ask for logits (perplexity)
        self.ctx = self.lib.llama_init_from_model(model.handle, params)
        if not self.ctx:
            raise LlamaCppError(f"llama.cpp could not make a context of {n_ctx} tokens; lower "
                                "[plugins.llamacpp] context")
        if adapter is not None:
            handles = (self.lib.llama_adapter_lora_p_ctypes * 1)(adapter)
            self.lib.llama_set_adapters_lora(self.ctx, handles, 1, (ctypes.c_float * 1)(1.0))
        self.memory = self.lib.llama_get_memory(self.ctx)
        self.pool = thread_pool(self.lib, self.ctx, model.threads)
        self.n_batch, self.threads = n_batch, model.threads
        self.batch = self.lib.llama_batch_init(n_batch, 0, 1)
        self.slots = [Slot(i) for i in range(slots)]

    def free_slot(self, prompt: list[int]) -> tuple[Slot, int] | None:
        """A free slot and how many of `prompt`'s first tokens its cache already holds (the most reused)."""
        best, best_common = None, -1
        for slot in self.slots:
            if slot.row is not None:
                continue
            common = 0
            for a, b in zip(slot.tokens, prompt):
                if a != b:
                    break
                common += 1
            if common > best_common:
                best, best_common = slot, common
        if best is None:
            return None
        return best, min(best_common, len(prompt) - 1)  # the last prompt token is decoded again for its logits

    def forget(self, slot: Slot, keep: int = 0) -> None:
        """Drop a slot's cached tokens past the first `keep`."""
        self.lib.llama_memory_seq_rm(self.memory, slot.seq, keep, -1)
        del slot.tokens[keep:]

    def forget_idle(self) -> None:
        """Free the cache of every slot no row uses (room for the ones that are decoding)."""
        for slot in self.slots:
            if slot.row is None and slot.tokens:
                self.forget(slot)

    def set_threads(self, threads: int) -> None:
        """How many CPU threads this context's decodes use (fewer when several lanes decode at once)."""
        if threads != self.threads:
            self.lib.llama_set_n_threads(self.ctx, threads, threads)
            self.threads = threads

    def rest(self) -> None:
        """Put this lane's pool to sleep now instead of after ggml's polling (~100 ms): another lane decodes next.

        Its next decode wakes it again (ggml resumes a paused pool at kickoff). A lone lane is left polling, so
        its workers catch the next token's graph without a wake-up.
        """
        if self.pool is not None:
            _ggml(self.lib, "ggml-cpu").ggml_threadpool_pause(self.pool)

    def decode(self, items: list[tuple[Slot, list[int]]]) -> list[int]:
        """Append tokens to slots in one llama_decode; the output index after each slot's last token."""
        total = sum(len(tokens) for _, tokens in items)
        if total > self.n_batch:
            raise ValueError(f"{total} tokens exceed the batch of {self.n_batch}")
        batch, index, outputs = self.batch, 0, []
        for slot, tokens in items:
            start = len(slot.tokens)
            for offset, token in enumerate(tokens):
                batch.token[index] = token
                batch.pos[index] = start + offset
                batch.n_seq_id[index] = 1
                batch.seq_id[index][0] = slot.seq
                batch.logits[index] = offset == len(tokens) - 1
                index += 1
            outputs.append(index - 1)
        batch.n_tokens = index
        status = self.lib.llama_decode(self.ctx, batch)
        if status == 1:  # no room in the KV cache: drop idle slots' caches and try once more
            self.forget_idle()
            status = self.lib.llama_decode(self.ctx, batch)
        if status != 0:
            raise LlamaCppError(f"llama.cpp failed a decode step (status {status}); the context "
                                f"([plugins.llamacpp] context) may be too small for {len(items)} chats")
        for slot, tokens in items:
            slot.tokens.extend(tokens)
        return outputs

    def logits(self, index: int):
        """Output `index`'s logits, a float32 view of llama.cpp's buffer (valid until this lane's next decode)."""
        return _floats(self.lib, self.ctx, index, self.model.n_vocab)

    def score(self, tokens: list[int]) -> list[float]:
        """Log-probabilities of tokens[1:] given what comes before each (perplexity), in a scratch slot."""
        import numpy as np

        if len(tokens) > self.n_batch:
            raise ValueError(f"{len(tokens)} tokens exceed the batch of {self.n_batch}")
        slot = self.slots[-1]
        self.forget(slot)
        batch = self.batch
        for index, token in enumerate(tokens):
            batch.token[index], batch.pos[index], batch.n_seq_id[index] = token, index, 1
            batch.seq_id[index][0], batch.logits[index] = slot.seq, True
        batch.n_tokens = len(tokens)
        if self.lib.llama_decode(self.ctx, batch) != 0:
            raise LlamaCppError("llama.cpp failed to score a text")
        scores = []
        for index, token in enumerate(tokens[1:]):
            logits = _floats(self.lib, self.ctx, index, self.model.n_vocab).astype(np.float64)
            top = logits.max()
            scores.append(float(logits[token] - top - np.log(np.exp(logits - top).sum())))
        self.lib.llama_memory_seq_rm(self.memory, slot.seq, -1, -1)
        return scores

    def close(self) -> None:
        if self.ctx:
            self.lib.llama_batch_free(self.batch)
            self.lib.llama_free(self.ctx)
            self.ctx = None
            if self.pool is not None:
                _ggml(self.lib, "ggml-cpu").ggml_threadpool_free(self.pool)


@functools.cache
def _ggml(lib, name: str):
    """One of llama-cpp-python's ggml libraries (already loaded with llama.cpp), one object: argtypes stay set."""
    return ctypes.CDLL(str(Path(lib.__file__).parent / "lib" / f"lib{name}.so"))


def thread_pool(lib, ctx, threads: int):
    """Attach a lasting ggml thread pool to a context, as llama-server does; None where it cannot (a build
    without these calls): llama.cpp then makes and joins its threads on every decode."""
    if threads < 2:
        return None
    try:
        base, cpu, llama = _ggml(lib, "ggml-base"), _ggml(lib, "ggml-cpu"), lib.llama_cpp._lib
        base.ggml_threadpool_params_default.argtypes = [ctypes.c_int]
        base.ggml_threadpool_params_default.restype = ThreadPoolParams
        cpu.ggml_threadpool_new.argtypes = [ctypes.POINTER(ThreadPoolParams)]
        cpu.ggml_threadpool_new.restype = ctypes.c_void_p
        cpu.ggml_threadpool_free.argtypes = cpu.ggml_threadpool_pause.argtypes = [ctypes.c_void_p]
        llama.llama_attach_threadpool.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    except (OSError, AttributeError):
        return None
    # ggml's defaults (poll 50): after a graph the workers spin ~100 ms for the next one, which is what keeps a
    # lone chat's tokens coming without a wake-up each; lanes that take turns put theirs to sleep (Lane.rest).
    params = base.ggml_threadpool_params_default(threads)
    pool = cpu.ggml_threadpool_new(ctypes.byref(params))
    if not pool:
        return None
    llama.llama_attach_threadpool(ctx, pool, pool)
    return pool


class ThreadPoolParams(ctypes.Structure):
    """ggml.h's `struct ggml_threadpool_params` (GGML_MAX_N_THREADS 512), passed by value."""

    _fields_ = [("cpumask", ctypes.c_bool * 512), ("n_threads", ctypes.c_int), ("prio", ctypes.c_int),
                ("poll", ctypes.c_uint32), ("strict_cpu", ctypes.c_bool), ("paused", ctypes.c_bool)]


def _floats(lib, ctx, index: int, n_vocab: int):
    """The logits row `index` as a numpy view of llama.cpp's buffer (valid until the context's next decode)."""
    import numpy as np

    pointer = lib.llama_get_logits_ith(ctx, index)
    return np.ctypeslib.as_array(ctypes.cast(pointer, ctypes.POINTER(ctypes.c_float)), shape=(n_vocab,))
