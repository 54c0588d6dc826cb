"""The continuous-batching worker: one thread owns the models and decodes every reply a step at a time.

Each decode step runs all live rows of a model together. Requests that arrived during a step
are prefilled together in one left-padded forward pass, then their cache is stacked into the
running batch, so they join at the next step; finished or cancelled rows are cut out of the
cache between steps. On CPU the worker serves from a copy of the model whose Linear weights
are prepacked for oneDNN (runtime.generation.packed), which is what makes batched steps cheap there.
Rows carry their own position ids, sampling processors (transformers' LogitsProcessor
classes), random generator and adapter slot (runtime.generation.lora_batch), so a row's greedy output
does not depend on what else is in the batch.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from concurrent.futures import Future
from pathlib import Path

from runtime.generation.detok import Detokenizer, StopText
from runtime.generation.guard import DegenerationMonitor, known_words
from runtime.generation.kv_cache import new_cache
from runtime.generation.lora_batch import LoraBatch
from runtime.generation.packed import serving_copy
from runtime.generation.prefix_cache import PrefixCache
from runtime.generation.rows import Batch, Row, ready_to_resample
from runtime.generation.sampling import RowSampler
from runtime.generation.types import BASE_ADAPTER, GeneratorBusy, ReplyStream, Request
from runtime.models.peft_files import read_peft_adapter

log = logging.getLogger("personae.generator")


class UnknownAdapter(LookupError):
    """A request named weights the generator does not know."""


class BatchingGenerator:
    """Owns the model in one worker thread; requests from every platform go through its queue."""

    PREFILL_ROUNDS = 3  # prefill passes in a row before running rows get their next token

    def __init__(self, model, tokenizer, max_queue: int = 64, threads: int = 0, max_batch: int = 16,
                 max_adapters: int = 16, max_models: int = 2, pack: bool = True, prefix_cache_mb: int = 256):
        self.model = model
        self.pack = pack
        # What the worker runs: shares the model's tensors, Linear weights prepacked where supported.
        self.serving = serving_copy(model, max_batch) if pack else model
        self.tokenizer = tokenizer
        self.threads = threads
        self.max_batch = max(1, int(max_batch))
        self.max_adapters = max(1, int(max_adapters))
        self.max_models = max(1, int(max_models))
        self._queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self._control: collections.deque = collections.deque()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._pending: collections.deque = collections.deque()  # admitted later (no free adapter slot)
        self._batches: dict[str | None, Batch] = {None: Batch.of(self.serving)}
        self._admitting: list[Row] = []  # rows picked for the next prefill (their weights must stay)
        # Prompts' KV by weights, so a prompt repeating a stored prefix (the card, earlier turns) skips it.
        self.prefixes = PrefixCache(int(prefix_cache_mb) << 20) if prefix_cache_mb else None
        self._adapter_folders: dict[str, Path] = {}
        self._adapter_lru: collections.OrderedDict = collections.OrderedDict()  # loaded adapters
        self._model_loaders: dict[str, object] = {}
        self._models: collections.OrderedDict = collections.OrderedDict()  # loaded full models
        self._doomed: set[str] = set()  # unloads waiting for their last row to finish
        self._recent_seconds = 5.0  # moving estimate of one reply's time, for retry hints
        self.stats = {"load_seconds": {}, "adapter_bytes": {}, "steps": 0, "tokens": 0, "evicted": 0,
                      "mixed_steps": 0, "prefill_passes": 0, "prefill_rows": 0, "prefill_tokens": 0}
        self.eos = self._eos_ids(model, tokenizer)
        self._worker = threading.Thread(target=self._run, name="personae-generator", daemon=True)
        self._worker.start()

    # --- public API (any thread) ------------------------------------------------------------
    @property
    def queue_depth(self) -> int:
        """Requests waiting for the worker."""
        return self._queue.qsize() + len(self._pending)

    @property
    def active_rows(self) -> int:
        """Replies being decoded now."""
        return sum(len(b.rows) for b in self._batches.values())

    def submit(self, request: Request) -> ReplyStream:
        """Queue a request and return its stream; raise GeneratorBusy if the queue is full."""
        stream = ReplyStream(request)
        try:
            self._queue.put_nowait(stream)
        except queue.Full:
            raise self.refusal(coming=self._queue.maxsize) from None  # (busy whatever the queue holds now)
        self._wake.set()
        return stream

    def refusal(self, coming: int = 0) -> GeneratorBusy | None:
        """The busy error a submit would meet with `coming` requests ahead of it, or None (checked before work)."""
        waiting = self._queue.qsize()
        busy = waiting + coming >= self._queue.maxsize
        return GeneratorBusy(self._recent_seconds * ((waiting + 1) / self.max_batch + 1)) if busy else None

    def register_adapter(self, name: str, folder) -> None:
        """Make a LoRA folder known by name; it is loaded on first use (or by load_adapter)."""
        self._adapter_folders[name] = Path(folder)

    def load_adapter(self, name: str, folder=None, timeout: float = 120) -> float:
        """Load (or replace) an adapter between decode steps; returns the seconds it took."""
        if folder is not None:
            self.register_adapter(name, folder)
        return self._call(lambda: self._load_adapter(name), timeout)

    def unload_adapter(self, name: str, forget: bool = True, wait: bool = True) -> None:
        """Drop an adapter from memory (rows still using it keep it until they finish)."""
        if forget:
            self._adapter_folders.pop(name, None)
        self._call(lambda: self._drop_adapter(name), 60, wait)

    def register_model(self, name: str, loader) -> None:
        """Make a fully fine-tuned model known by name; `loader()` returns it (called on first use)."""
        self._model_loaders[name] = loader

    def load_model(self, name: str, loader=None, timeout: float = 600) -> None:
        """Load a full model now (in this thread) and hand it to the worker's bounded LRU."""
        if loader is not None:
            self.register_model(name, loader)
        if name not in self._models:
            model = self._model_loaders[name]()
            self._call(lambda: self._put_model(name, model), timeout)

    def unload_model(self, name: str, forget: bool = True, wait: bool = True) -> None:
        """Drop a full model from memory once no row uses it."""
        if forget:
            self._model_loaders.pop(name, None)
        self._call(lambda: self._drop_model(name), 60, wait)

    def knows(self, name: str) -> bool:
        """Whether a request may name these weights."""
        return name == BASE_ADAPTER or name in self._adapter_folders or name in self._model_loaders \
            or name in self._models

    def loaded(self) -> dict:
        """Names of the adapters and full models in memory now (LRU order, oldest first)."""
        return {"adapters": list(self._adapter_lru), "models": list(self._models)}

    def close(self) -> None:
        """Stop the worker; replies still running end as cancelled."""
        self._stopping.set()
        self._wake.set()
        self._worker.join(timeout=30)

    # --- worker-side plumbing -----------------------------------------------------------------
    def _call(self, function, timeout: float, wait: bool = True):
        """Run a function on the worker thread between decode steps (and wait for its result)."""
        if threading.current_thread() is self._worker:
            return function()
        if not self._worker.is_alive():
            raise RuntimeError("the generator is closed")
        future: Future = Future()
        self._control.append((function, future))
        self._wake.set()
        return future.result(timeout) if wait else None

    def _run_control(self) -> None:
        while self._control:
            function, future = self._control.popleft()
            try:
                future.set_result(function())
            except BaseException as error:  # noqa: BLE001 - handed to the caller
                future.set_exception(error)

    def _run(self) -> None:
        import torch

        if self.threads:
            torch.set_num_threads(self.threads)
        with torch.inference_mode():
            while not self._stopping.is_set():
                self._run_control()
                # Prefill first (as vLLM's scheduler does): requests that arrived during a prefill
                # are admitted before the next decode step, a few rounds at most so decoding goes on.
                for _ in range(self.PREFILL_ROUNDS):
                    if not self._admit():
                        break
                if not self.active_rows:
                    self._wake.wait(0.5)
                    self._wake.clear()
                    continue
                for batch in list(self._batches.values()):
                    if batch.rows:
                        self._step(batch)
            self._shutdown()

    def _shutdown(self) -> None:
        for batch in self._batches.values():
            for row in batch.rows:
                row.stream.finish("cancelled")
            batch.rows, batch.cache, batch.mask = [], None, None
        while self._pending:
            self._pending.popleft().stream.finish("cancelled")
        while True:
            try:
                self._queue.get_nowait().finish("cancelled")
            except queue.Empty:
                break
        while self._control:
            self._control.popleft()[1].set_exception(RuntimeError("the generator is closed"))
        for batch in self._batches.values():
            if batch.lora is not None:  # the shared model is plain again for whoever uses it next
                batch.lora.close()
                batch.lora = None

    # --- admission and prefill ---------------------------------------------------------------
    def _admit(self) -> int:
        """Prefill waiting requests into their model's batch while there is room (one forward per model).

        Returns how many requests were taken off the queue.
        """
        rows = self._admitting
        waiting = len(self._pending)
        while self.active_rows + len(rows) < self.max_batch:
            if waiting:
                stream, waiting = self._pending.popleft(), waiting - 1
            else:
                try:
                    stream = self._queue.get_nowait()
                except queue.Empty:
                    break
            if stream.cancelled.is_set():
                stream.finish("cancelled")
                continue
            try:
                row = self._new_row(stream)
            except Exception as error:  # one bad request must not stop the worker
                log.exception("request refused")
                stream.finish("error", error)
                continue
            if row is None:  # every adapter slot is busy: try again after a step
                self._pending.append(stream)
                if not waiting:
                    break
                continue
            rows.append(row)
        taken = len(rows)
        groups: dict[str | None, list[Row]] = {}
        for row in rows:
            groups.setdefault(row.model_key, []).append(row)
        for group in groups.values():
            try:
                self._prefill(group)
            except Exception as error:  # a failed prefill fails its rows, not the worker
                log.exception("prefill failed")
                self._fail(group, error)
        rows.clear()
        return taken

    def _new_row(self, stream: ReplyStream) -> Row | None:
        import torch

        request = stream.request
        name = request.adapter or BASE_ADAPTER
        if name == BASE_ADAPTER:
            key, adapter = None, BASE_ADAPTER
        elif name in self._models or name in self._model_loaders:
            key, adapter = name, BASE_ADAPTER
            if name not in self._models and not self._make_room_for_model():
                return None
            if name not in self._models:
                self._put_model(name, self._model_loaders[name]())
            self._models.move_to_end(name)
        elif name in self._adapter_folders:
            key, adapter = None, name
            if name not in self._adapter_lru:
                if not self._make_room_for_adapter():
                    return None
                self._load_adapter(name)
            self._adapter_lru.move_to_end(name)
        else:
            raise UnknownAdapter(f"no weights named {name!r} are loaded in the generator")
        sampling = request.sampling
        prompt = list(request.input_ids)
        if not prompt:
            raise ValueError("empty prompt")
        row = Row(stream, key, adapter)
        row.ids = torch.empty(len(prompt) + max(1, sampling.max_new_tokens), dtype=torch.long)
        row.ids[: len(prompt)] = torch.tensor(prompt, dtype=torch.long)
        row.length = row.prompt_length = len(prompt)
        row.sampler = RowSampler(sampling, len(prompt), self.eos, self.tokenizer, request.avoid)
        if sampling.guard and not row.sampler.greedy:
            row.guard = DegenerationMonitor(earlier=request.earlier, known=known_words(request.names))
        row.detok = Detokenizer(self.tokenizer)
        row.stop = StopText(list(sampling.stop or []))
        return row

    def _prefill(self, rows: list[Row]) -> None:
        """Prefill new rows of one model: from a stored prefix where one matches, the rest in one padded pass."""
        key = rows[0].model_key
        batch = self._batches[key]
        fresh = []
        for row in rows:
            start, prefix = (0, None)
            if self.prefixes is not None and batch.full_attention:
                start, prefix = self.prefixes.lookup((key, row.adapter), row.ids[: row.length])
            if prefix is None:
                fresh.append(row)
            else:
                self._prefill_rows(batch, [row], start, prefix)
        if fresh:
            self._prefill_rows(batch, fresh)

    def _prefill_rows(self, batch: Batch, rows: list[Row], start: int = 0, prefix=None) -> None:
        """One forward over the rows' prompts (left-padded; after `start` cached tokens for a single row)."""
        import torch

        cache = new_cache(batch.model, batch.full_attention)
        if prefix is not None:  # copied into the new cache's own buffers: the stored prefix stays as it is
            for index, (keys, values) in enumerate(prefix.layers):
                cache.update(keys[:, :, :start], values[:, :, :start], index)
        if batch.lora is not None:
            batch.lora.rows([row.adapter for row in rows])
        width = max(row.length for row in rows)
        input_ids = torch.zeros(len(rows), width - start, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for index, row in enumerate(rows):
            input_ids[index, width - row.length:] = row.ids[start: row.length]
            mask[index, width - row.length:] = 1
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)[:, start:]
        output = batch.model(input_ids=input_ids, attention_mask=mask if len(rows) > 1 else None,
                             position_ids=positions, past_key_values=cache, use_cache=True, logits_to_keep=1)
        self.stats["prefill_passes"] += 1
        self.stats["prefill_rows"] += len(rows)
        self.stats["prefill_tokens"] += int(mask.sum()) - start
        cache = output.past_key_values
        for index, row in enumerate(rows):
            prompt = row.length
            if prompt < width:  # padding holds zeros, as everywhere in the batch (masked out, never NaN)
                for layer in cache.layers:
                    layer.keys[index, :, : width - prompt] = 0
                    layer.values[index, :, : width - prompt] = 0
            if self.prefixes is not None and batch.full_attention:
                self.prefixes.store((row.model_key, row.adapter), row.ids[:prompt],
                                    [(layer.keys[index: index + 1, :, width - prompt:],
                                      layer.values[index: index + 1, :, width - prompt:]) for layer in cache.layers])
        self._sample(rows, output.logits)
        keep = [i for i, row in enumerate(rows) if not row.done]  # done already: EOS or a 1-token limit
        if not keep:
            return
        if len(keep) < len(rows):
            index = torch.tensor(keep, dtype=torch.long)
            for layer in cache.layers:
                layer.keys, layer.values = layer.keys.index_select(0, index), layer.values.index_select(0, index)
            mask = mask.index_select(0, index)
        self._merge(batch, cache, mask)
        batch.rows.extend(rows[i] for i in keep)

    def _merge(self, batch: Batch, cache, new_mask) -> None:
        """Stack new rows' cache (mask [rows, length]) into the batch, left-padding the shorter side."""
        import torch
        import torch.nn.functional as F

        if batch.cache is None or not batch.rows:
            batch.cache, batch.mask = cache, new_mask
            return
        length, current = new_mask.shape[1], batch.mask.shape[1]
        if length < current:
            for layer in cache.layers:
                layer.keys = F.pad(layer.keys, (0, 0, current - length, 0))
                layer.values = F.pad(layer.values, (0, 0, current - length, 0))
            new_mask = F.pad(new_mask, (current - length, 0))
        elif length > current:
            for layer in batch.cache.layers:
                layer.keys = F.pad(layer.keys, (0, 0, length - current, 0))
                layer.values = F.pad(layer.values, (0, 0, length - current, 0))
            batch.mask = F.pad(batch.mask, (length - current, 0))
        for mine, theirs in zip(batch.cache.layers, cache.layers):
            mine.keys = torch.cat([mine.keys, theirs.keys], dim=0)
            mine.values = torch.cat([mine.values, theirs.values], dim=0)
        batch.mask = torch.cat([batch.mask, new_mask], dim=0)

    # --- one decode step -------------------------------------------------------------------------
    def _step(self, batch: Batch) -> None:
        import torch

        for row in batch.rows:
            if row.stream.cancelled.is_set() and not row.done:
                row.done = True
                row.stream.finish("cancelled")
        self._drop_finished(batch)
        if not batch.rows:
            return
        rows = batch.rows
        tokens = torch.stack([row.ids[row.length - 1: row.length] for row in rows])
        positions = torch.tensor([[row.length - 1] for row in rows], dtype=torch.long)
        batch.mask = torch.cat([batch.mask, torch.ones(len(rows), 1, dtype=torch.long)], dim=1)
        if batch.lora is not None:
            names = [row.adapter for row in rows]
            batch.lora.rows(names)
            self.stats["mixed_steps"] += len(set(names)) > 1
        try:
            output = batch.model(input_ids=tokens, attention_mask=batch.mask, position_ids=positions,
                                 past_key_values=batch.cache, use_cache=True, logits_to_keep=1)
            self._sample(rows, output.logits)
        except Exception as error:  # a failed step fails its rows, not the worker
            log.exception("decode step failed")
            self._fail(rows, error)
        self.stats["steps"] += 1
        self.stats["tokens"] += len(rows)
        self._drop_finished(batch)

    def _drop_finished(self, batch: Batch) -> None:
        """Cut finished rows out of the batch and its cache; trim padding no row needs any more."""
        import torch

        keep = [i for i, row in enumerate(batch.rows) if not row.done]
        if len(keep) == len(batch.rows):
            return
        finished = [row for row in batch.rows if row.done]
        batch.rows = [batch.rows[i] for i in keep]
        if not keep:
            batch.cache, batch.mask = None, None
        else:
            index = torch.tensor(keep, dtype=torch.long)
            batch.mask = batch.mask.index_select(0, index)
            start = int(torch.nonzero(batch.mask.any(dim=0))[0])
            for layer in batch.cache.layers:
                layer.keys = layer.keys[:, :, start:].index_select(0, index)
                layer.values = layer.values[:, :, start:].index_select(0, index)
            batch.mask = batch.mask[:, start:]
        for row in finished:
            seconds = (row.stream.finished_at or time.perf_counter()) - row.stream.request.submitted
            self._recent_seconds = 0.8 * self._recent_seconds + 0.2 * seconds
        self._release_unused()

    def _sample(self, rows: list[Row], logits) -> None:
        """Pick and record each row's next token from the last position's logits."""
        last = logits[:, -1, :].float()
        for index, row in enumerate(rows):
            token = row.sampler.choose(row.ids[: row.length], last[index: index + 1])
            if row.sampler.scored is not None and token not in self.eos:
                row.stream.logprobs.append(row.sampler.scored)
            self._accept(row, token)

    @staticmethod
    def _fail(rows: list[Row], error: BaseException) -> None:
        """End every unfinished row with the error."""
        for row in rows:
            if not row.done:
                row.done = True
                row.stream.finish("error", error)

    def _accept(self, row: Row, token: int) -> None:
        """Record a sampled token; stream its text; finish the row at EOS, a stop string or the limit."""
        row.ids[row.length] = token
        row.length += 1
        stream = row.stream
        stream.completion_tokens = row.generated
        if token in self.eos:
            return self._finish(row, "stop")
        text = row.detok.add(token)
        shown = row.stop.feed(text)
        if shown:
            stream.push(shown)
        if row.stop.stopped:
            return self._finish(row, "stop", flush=False)
        if row.guard and row.guard.feed(text, row.sampler.last_probability):  # stopped where it went wrong
            return self._finish(row, "degenerate", flush=False)
        if row.length >= row.ids.shape[0]:  # ids hold the prompt and max_new_tokens (at least 1) more
            return self._finish(row, "length")

    def _finish(self, row: Row, reason: str, flush: bool = True) -> None:
        if flush:
            tail = row.stop.feed(row.detok.flush())
            if not row.stop.stopped:
                tail += row.stop.flush()
            if tail:
                row.stream.push(tail)
        row.done = True
        verdict = row.guard.finish() if row.guard else None  # also the tail, and a copy of an earlier reply
        if verdict:
            if ready_to_resample(row, verdict, self.tokenizer):  # nothing shown yet: once more, from the prompt
                return self._pending.append(row.stream)  # its prompt's KV is in the prefix cache
            row.stream.degenerate, reason = verdict.reason, "degenerate"  # never history or training data
        row.stream.finish(reason)

    # --- adapters and full models (worker thread) ----------------------------------------------
    def _in_use(self) -> set[str]:
        rows = [row for batch in self._batches.values() for row in batch.rows] + self._admitting
        names = {row.adapter for row in rows}
        names |= {row.model_key for row in rows if row.model_key}
        return names

    def _make_room(self, loaded, limit: int, drop) -> bool:
        """Evict the least recently used entry of an LRU that no running row uses; False if all are busy."""
        if len(loaded) < limit:
            return True
        busy = self._in_use()
        for name in loaded:
            if name not in busy:
                drop(name)
                self.stats["evicted"] += 1
                return True
        return False

    def _make_room_for_adapter(self) -> bool:
        return self._make_room(self._adapter_lru, self.max_adapters, self._drop_adapter)

    def _load_adapter(self, name: str) -> float:
        started = time.perf_counter()
        folder = self._adapter_folders.get(name)
        if folder is None:
            raise UnknownAdapter(f"no adapter named {name!r} is registered")
        batch = self._batches[None]
        adapter = read_peft_adapter(folder, name, self.model)  # checked against the plain model's modules
        self._doomed.discard(name)
        if name not in self._adapter_lru and not self._make_room_for_adapter():
            raise RuntimeError(f"all {self.max_adapters} adapter slots are in use; raise max_adapters")
        if batch.lora is None:
            batch.lora = LoraBatch(self.serving, capacity=self.max_adapters)
        nbytes = adapter.nbytes
        batch.lora.add(adapter)
        self._forget_prefixes(adapter=name)  # a replaced adapter computes other keys and values
        adapter.pairs.clear()  # the stacked copies are what is served; don't hold the weights twice
        adapter.replaced.clear()
        self._adapter_lru[name] = None
        self._adapter_lru.move_to_end(name)
        seconds = time.perf_counter() - started
        self.stats["load_seconds"][name] = seconds
        self.stats["adapter_bytes"][name] = nbytes
        self.stats["slot_bytes"] = batch.lora.slot_bytes()
        log.info("adapter %s loaded in %.3f s (%.1f MB)", name, seconds, nbytes / 1e6)
        return seconds

    def _drop_adapter(self, name: str) -> None:
        if name in self._in_use():
            self._doomed.add(name)
            return
        lora = self._batches[None].lora
        if lora is not None:
            lora.remove(name)
        self._adapter_lru.pop(name, None)
        self.stats["adapter_bytes"].pop(name, None)
        self._forget_prefixes(adapter=name)

    def _forget_prefixes(self, model_key=None, adapter=None) -> None:
        if self.prefixes is not None:
            self.prefixes.forget(model_key=model_key, adapter=adapter)

    def _release_unused(self) -> None:
        doomed = self._doomed
        if not doomed:
            return
        busy = self._in_use()
        for name in list(doomed):
            if name not in busy:
                doomed.discard(name)
                if name in self._models:
                    self._drop_model(name)
                else:
                    self._drop_adapter(name)

    def _make_room_for_model(self) -> bool:
        return self._make_room(self._models, self.max_models, self._drop_model)

    def _put_model(self, name: str, model) -> None:
        if name in self._models:  # loaded meanwhile by another request: rows may be running on it
            self._models.move_to_end(name)
            return
        if not self._make_room_for_model():
            raise RuntimeError(f"all {self.max_models} full-model slots are busy; raise max_models")
        model.eval()
        if self.pack:  # the generator owns this copy: its dense Linear weights can go once packed

            model = serving_copy(model, self.max_batch, keep_dense=False)
        self._doomed.discard(name)
        self._forget_prefixes(model_key=name)
        self._models[name] = model
        self._batches[name] = Batch.of(model)  # any batch left under this name has no rows

    def _drop_model(self, name: str) -> None:
        if name in self._in_use():
            self._doomed.add(name)
            return
        self._models.pop(name, None)
        self._forget_prefixes(model_key=name)
        batch = self._batches.get(name)
        if batch is not None and not batch.rows:
            del self._batches[name]

    @staticmethod
    def _eos_ids(model, tokenizer) -> set[int]:
        ids = set()
        configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        for value in (configured, tokenizer.eos_token_id):
            if isinstance(value, int):
                ids.add(value)
            elif value:
                ids.update(int(v) for v in value)
        return ids
