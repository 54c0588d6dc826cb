"""The llama.cpp backend's generator: the 4-bit GGUF base in llama.cpp, the runtime's own sampling and streaming.

One worker thread owns the llama.cpp model. Requests (token ids from the runtime's prompts) go to the
lane of their adapter (runtime.generation's Row, guard, detokeniser and stop strings per reply, so
replies read as the local backend's); each round decodes every lane's live rows together, so characters
on different LoRAs interleave token by token instead of waiting for one another, `parallel` lanes at a
time on their own share of the threads (a lone lane gets them all). Tokens are picked by llama.cpp's
own sampler chain in C (plugins.llamacpp.sampler) unless a request needs the runtime's Python sampler
(logprobs, response_format, DRY). Hybrid LoRAs (modules_to_save) and full fine-tunes are answered by
the local generator, and every stream says who served it (`served_by`).
"""

from __future__ import annotations

import collections
import json
import logging
import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

from plugins.llamacpp.lora_gguf import cached_lora
from plugins.llamacpp.native import Lane, LlamaCppError, Model
from plugins.llamacpp.sampler import ChainSampler, python_only
from runtime.generation.detok import Detokenizer, StopText
from runtime.generation.guard import DegenerationMonitor, known_words
from runtime.generation.rows import Row
from runtime.generation.sampling import RowSampler
from runtime.generation.types import BASE_ADAPTER, GeneratorBusy, ReplyStream

log = logging.getLogger("personae.llamacpp")

HYBRID = "hybrid version: llama.cpp LoRA has no modules_to_save"
FULL = "full version: llama.cpp serves a full fine-tune only as a GGUF of its own"


@dataclass
class LaneRow(Row):
    """A reply being decoded in a lane's slot."""

    lane: Lane | None = None
    slot: object = None
    last: int = 0  # the last token (the next decode's input)
    limit: int = 0  # prompt + max_new_tokens


class LlamaCppGenerator:
    """The Generator protocol over llama.cpp: lanes of LoRA contexts sharing one quantised model."""

    def __init__(self, settings, base, gguf: Path, threads: int, context: int, slots: int, lanes: int,
                 cache_dir: Path, parallel: int = 1, sampler: str = "llamacpp"):
        self.settings, self.base, self.tokenizer = settings, base, base.tokenizer
        self.model = Model(gguf, threads)
        self.context, self.slots, self.max_lanes = context, max(1, slots), max(1, lanes)
        self.parallel = max(1, min(parallel, threads))  # lanes decoded at once, each on threads // parallel
        self.native_sampling = sampler == "llamacpp"  # "python": every request takes the runtime's sampler
        self._pool = None
        self.cache_dir = cache_dir
        self.eos = eos_ids(base.model, base.tokenizer)
        self._queue: queue.Queue = queue.Queue(maxsize=settings.max_queue)
        self._pending: collections.deque = collections.deque()
        self._control: collections.deque = collections.deque()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._adapters: dict[str, Path] = {}  # name -> LoRA GGUF
        self._lanes: collections.OrderedDict = collections.OrderedDict()  # adapter name -> Lane (LRU order)
        self._local: dict[str, str] = {}  # name -> why the local generator serves it
        self._fallback = None
        self._lock = threading.Lock()
        self.stats = {"rounds": 0, "tokens": 0, "prefill_tokens": 0, "reused_tokens": 0, "chain_rows": 0,
                      "python_rows": 0, "parallel_rounds": 0}
        self._worker = threading.Thread(target=self._run, name="personae-llamacpp", daemon=True)
        self._worker.start()

    # --- weights (any thread) -------------------------------------------------------------

    def local(self):
        """The local generator for versions llama.cpp cannot serve (built on first need)."""
        with self._lock:
            if self._fallback is None:
                from runtime.chat.build import backends
                from runtime.plugins import get_plugin_manager

                self._fallback = backends(get_plugin_manager(self.settings.plugins_dir))["local"](
                    self.settings, self.base)
            return self._fallback

    def load_adapter(self, name: str, folder) -> None:
        """Convert a PEFT LoRA folder to a llama.cpp LoRA GGUF (once, cached); hybrid ones go to the local generator."""
        folder = Path(folder).resolve()
        config = json.loads((folder / "adapter_config.json").read_text())
        if config.get("modules_to_save"):
            self._local[name] = HYBRID
            log.warning("%s is served by the local generator, not llama.cpp (%s)", name, HYBRID)
            self.local().load_adapter(name, folder)
            return
        self._adapters[name] = cached_lora(folder, self.base.model, self.cache_dir)

    def unload_adapter(self, name: str, forget: bool = True, wait: bool = True) -> None:
        """Free an adapter's lane (after its last reply) and forget it."""
        if name in self._local:
            if forget:
                del self._local[name]
            self.local().unload_adapter(name, forget=forget, wait=wait)
            return
        if forget:
            self._adapters.pop(name, None)
        self._call(lambda: self._drop_lane(name), wait)

    def load_model(self, name: str, loader=None) -> None:
        """Full versions are served by the local generator."""
        self._local[name] = FULL
        log.warning("%s is served by the local generator, not llama.cpp (%s)", name, FULL)
        self.local().load_model(name, loader)

    def unload_model(self, name: str, forget: bool = True, wait: bool = True) -> None:
        if self._local.pop(name, None) is not None or not forget:
            self.local().unload_model(name, forget=forget, wait=wait)

    def lora_file(self, name: str) -> Path:
        """The llama.cpp LoRA GGUF an adapter name is served from."""
        return self._adapters[name]

    def knows(self, name: str) -> bool:
        if name in self._local:
            return self._fallback is not None and self._fallback.knows(name)
        return name == BASE_ADAPTER or name in self._adapters

    def where(self, name: str) -> str:
        """Which backend serves these weights: 'llamacpp' or 'local (why)'."""
        return f"local ({self._local[name]})" if name in self._local else "llamacpp"

    # --- requests (any thread) --------------------------------------------------------------

    def submit(self, request) -> ReplyStream:
        """Queue a reply; raise GeneratorBusy when the queue is full."""
        if self._stopping.is_set():
            raise RuntimeError("the llama.cpp backend is closed")
        if request.adapter in self._local:
            stream = self.local().submit(request)
            stream.served_by = {"backend": "local", "fallback": self._local[request.adapter]}
            return stream
        stream = ReplyStream(request)
        stream.served_by = {"backend": "llamacpp", "model": self.model.path.name}
        try:
            self._queue.put_nowait(stream)
        except queue.Full:
            raise GeneratorBusy(1 + self._queue.qsize() / 8) from None
        self._wake.set()
        return stream

    def close(self) -> None:
        """Stop the worker; replies in flight end as cancelled; free llama.cpp's memory."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        self._wake.set()
        self._worker.join(timeout=30)
        if self._fallback is not None:
            self._fallback.close()

    def _call(self, function, wait: bool = True, timeout: float = 60):
        """Run `function` on the worker thread between rounds."""
        if threading.current_thread() is self._worker:
            return function()
        future: Future = Future()
        self._control.append((function, future))
        self._wake.set()
        return future.result(timeout) if wait else None

    # --- the worker ------------------------------------------------------------------------

    def _run(self) -> None:
        import torch

        torch.set_num_threads(1)  # the Python sampler's few vector ops must not spin threads against llama.cpp's
        try:
            with torch.inference_mode():
                while not self._stopping.is_set():
                    try:
                        self._round()
                    except Exception:  # a bug in one round must not leave every later reply waiting
                        log.exception("llama.cpp worker round failed")
        finally:
            self._shutdown()

    def _round(self) -> None:
        """Control calls, admissions, then one token for every live row, lane after lane."""
        while self._control:
            function, future = self._control.popleft()
            try:
                future.set_result(function())
            except BaseException as error:  # noqa: BLE001 - handed to the caller
                future.set_exception(error)
        self._admit()
        work = [(lane, rows) for lane in list(self._lanes.values()) if (rows := self._live_rows(lane))]
        if not work:
            self._wake.wait(0.5)
            self._wake.clear()
            return
        if self.parallel > 1 and len(work) > 1:  # lanes side by side, each on its share of the threads
            threads = max(1, self.model.threads // min(self.parallel, len(work)))
            if self._pool is None:
                from concurrent.futures import ThreadPoolExecutor

                self._pool = ThreadPoolExecutor(self.parallel, thread_name_prefix="personae-llamacpp-lane")
            results = list(self._pool.map(lambda item: self._decode(*item, threads, rest=True), work))
            self.stats["parallel_rounds"] += 1
        else:
            results = [self._decode(lane, rows, self.model.threads, rest=len(work) > 1) for lane, rows in work]
        for (lane, rows), result in zip(work, results):
            self._advance(lane, rows, result)
        self.stats["rounds"] += 1

    def _shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
        for lane in self._lanes.values():
            for slot in lane.slots:
                if slot.row is not None:
                    _close_sampler(slot.row)
                    slot.row.stream.finish("cancelled")
            self._close_lane(lane)
        self._lanes.clear()
        for stream in list(self._pending):
            stream.finish("cancelled")
        while True:
            try:
                self._queue.get_nowait().finish("cancelled")
            except queue.Empty:
                break
        while self._control:
            self._control.popleft()[1].set_exception(RuntimeError("the llama.cpp backend is closed"))
        self.model.close()

    def _admit(self) -> None:
        """Start waiting requests in a free slot of their adapter's lane (prefill, first token)."""
        waiting = len(self._pending)
        while True:
            if waiting:
                stream, waiting = self._pending.popleft(), waiting - 1
            else:
                try:
                    stream = self._queue.get_nowait()
                except queue.Empty:
                    return
            if stream.cancelled.is_set():
                stream.finish("cancelled")
                continue
            try:
                placed = self._place(stream)
            except Exception as error:  # one bad request must not stop the worker
                log.exception("request refused")
                stream.finish("error", error)
                continue
            if placed is None:  # every slot (or lane) is busy: after a round
                self._pending.append(stream)
                if not waiting:
                    return
                continue
            self._prefill(*placed)

    def _place(self, stream: ReplyStream):
        """(lane, slot, reused tokens) for a request, making its lane if needed; None while all are busy."""
        name = stream.request.adapter or BASE_ADAPTER
        if name != BASE_ADAPTER and name not in self._adapters:
            raise LlamaCppError(f"no weights named {name!r} are loaded in the llama.cpp backend")
        lane = self._lanes.get(name)
        if lane is None:
            if len(self._lanes) >= self.max_lanes and not self._evict_idle_lane():
                return None
            adapter = None if name == BASE_ADAPTER else self.model.adapter(self._adapters[name])
            lane = Lane(self.model, adapter, self.slots, self.context)
            self._lanes[name] = lane
        self._lanes.move_to_end(name)
        found = lane.free_slot(list(stream.request.input_ids))
        return None if found is None else (lane, *found, stream)

    def _prefill(self, lane: Lane, slot, reused: int, stream: ReplyStream) -> None:
        """Decode the prompt past what the slot holds, in batch-sized pieces; sample the first token."""
        try:
            prompt = [int(token) for token in stream.request.input_ids]
            row = self._new_row(stream, lane, slot, prompt)
        except Exception as error:  # a malformed request fails alone
            lane.forget(slot)
            stream.finish("error", error)
            return
        slot.row = row
        try:
            lane.forget(slot, reused)
            lane.set_threads(self.model.threads)
            remaining = prompt[reused:]
            index = None
            for start in range(0, len(remaining), lane.n_batch):
                index = lane.decode([(slot, remaining[start:start + lane.n_batch])])[0]
            lane.rest()  # the round after this admission may be other lanes' (a lone lane's pool wakes once)
            self.stats["prefill_tokens"] += len(remaining)
            self.stats["reused_tokens"] += reused
            self._accept(row, self._choose(row, index))
        except Exception as error:
            log.exception("prefill failed")
            self._end(row, "error", error)

    def _new_row(self, stream: ReplyStream, lane: Lane, slot, prompt: list[int]) -> LaneRow:
        sampling = stream.request.sampling
        if not prompt:
            raise ValueError("empty prompt")
        row = LaneRow(stream, None, stream.request.adapter, lane=lane, slot=slot)
        row.length = row.prompt_length = len(prompt)
        row.limit = len(prompt) + max(1, sampling.max_new_tokens)
        if self.native_sampling and python_only(sampling) is None:
            row.sampler = ChainSampler(self.model.lib, self.model.n_vocab, sampling, prompt, self.eos)
            self.stats["chain_rows"] += 1
        else:  # the runtime's sampler, over a copy of each step's logits
            import torch

            row.ids = torch.empty(row.limit, dtype=torch.long)
            row.ids[: len(prompt)] = torch.tensor(prompt, dtype=torch.long)
            row.sampler = RowSampler(sampling, len(prompt), self.eos, self.tokenizer)  # the tokenizer: JSON masks
            self.stats["python_rows"] += 1
        if sampling.guard and not row.sampler.greedy:
            row.guard = DegenerationMonitor(known=known_words(stream.request.names))
            row.sampler.want_probability = True
        row.detok = Detokenizer(self.tokenizer)
        row.stop = StopText(list(sampling.stop or []))
        return row

    def _live_rows(self, lane: Lane) -> list[LaneRow]:
        """The lane's rows to decode this round (cancelled ones end here)."""
        rows = []
        for slot in lane.slots:
            row = slot.row
            if row is None:
                continue
            if row.stream.cancelled.is_set():
                self._end(row, "cancelled")
            else:
                rows.append(row)
        return rows

    def _decode(self, lane: Lane, rows: list[LaneRow], threads: int, rest: bool = False):
        """One token for every row of a lane in one llama_decode (any thread: C calls only, the GIL let go).

        `rest`: other lanes decode this round, so this lane's pool sleeps at once instead of polling their cores.
        Returns (output indices, tokens picked in C, None for Python-sampled rows) or the exception.
        """
        try:
            lane.set_threads(threads)
            indices = lane.decode([(row.slot, [row.last]) for row in rows])
            if rest:
                lane.rest()
            return indices, [row.sampler.choose(lane.ctx, index, self.model.n_vocab)
                             if isinstance(row.sampler, ChainSampler) else None
                             for row, index in zip(rows, indices)]
        except Exception as error:  # a failed step fails its rows, not the worker
            return error

    def _advance(self, lane: Lane, rows: list[LaneRow], result) -> None:
        """Stream (or finish) each row of a decoded lane; the Python-sampled rows pick their token here."""
        if isinstance(result, Exception):
            log.error("decode step failed", exc_info=result)
            for row in rows:
                self._end(row, "error", result)
            return
        self.stats["tokens"] += len(rows)
        for row, index, token in zip(rows, *result):
            self._accept(row, self._choose(row, index) if token is None else token)

    def _choose(self, row: LaneRow, index: int) -> int:
        """The row's next token from output `index` of its lane's last decode."""
        if isinstance(row.sampler, ChainSampler):
            return row.sampler.choose(row.lane.ctx, index, self.model.n_vocab)
        import torch

        logits = torch.from_numpy(row.lane.logits(index)).unsqueeze(0)
        token = row.sampler.choose(row.ids[: row.length], logits)
        if row.sampler.scored is not None and token not in self.eos:
            row.stream.logprobs.append(row.sampler.scored)
        row.ids[row.length] = token
        return token

    def _accept(self, row: LaneRow, token: int) -> None:
        """A row's new token: stream its text or finish the reply."""
        row.last = token
        row.length += 1
        stream = row.stream
        stream.completion_tokens = row.generated
        if token in self.eos:
            return self._end(row, "stop")
        text = row.detok.add(token)
        shown = row.stop.feed(text)
        if shown:
            stream.push(shown)
        if row.stop.stopped:
            return self._end(row, "stop", flush=False)
        verdict = row.guard.feed(text, row.sampler.last_probability) if row.guard else None
        if verdict:  # stopped where it went wrong, marked so it never becomes history or training data
            stream.degenerate = verdict.reason
            return self._end(row, "degenerate", flush=False)
        if row.length >= row.limit:
            return self._end(row, "length")

    def _end(self, row: LaneRow, reason: str, error: BaseException | None = None, flush: bool = True) -> None:
        """Finish a reply and free its slot (its cache stays for a next prompt with the same start)."""
        if flush and error is None and reason != "cancelled":
            tail = row.stop.feed(row.detok.flush())
            if not row.stop.stopped:
                tail += row.stop.flush()
            if tail:
                row.stream.push(tail)
        row.done = True
        _close_sampler(row)
        row.slot.row = None
        if error is not None or reason == "cancelled":
            row.lane.forget(row.slot)  # its cache may hold half a step
        row.stream.finish(reason, error)

    # --- lanes (worker thread) ----------------------------------------------------------------

    def _evict_idle_lane(self) -> bool:
        """Close the least recently used lane with no live row; False when every lane is busy."""
        for name, lane in self._lanes.items():
            if all(slot.row is None for slot in lane.slots):
                del self._lanes[name]
                self._close_lane(lane)
                return True
        return False

    def _drop_lane(self, name: str) -> None:
        lane = self._lanes.get(name)
        if lane is not None and all(slot.row is None for slot in lane.slots):
            del self._lanes[name]
            self._close_lane(lane)

    def _close_lane(self, lane: Lane) -> None:
        lane.close()
        if lane.adapter is not None:
            self.model.free_adapter(lane.adapter)


def _close_sampler(row: LaneRow) -> None:
    """Free a row's llama.cpp sampler chain (the Python sampler needs nothing)."""
    if isinstance(row.sampler, ChainSampler):
        row.sampler.close()


def eos_ids(model, tokenizer) -> set[int]:
    """The end-of-sequence ids of the model's generation config and tokenizer."""
    ids = set()
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (configured, tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif value:
            ids.update(int(v) for v in value)
    return ids
