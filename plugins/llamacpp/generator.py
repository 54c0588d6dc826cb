"""The llama.cpp backend's generator: the 4-bit GGUF base in llama.cpp, the runtime's own sampling and streaming.

One worker thread owns the llama.cpp model. Requests (token ids from the runtime's prompts) go to the
lane of their adapter (runtime.generation's Row, RowSampler, guard, detokeniser and stop strings per
reply, so replies read as the local backend's); each round decodes every lane's live rows together,
lane after lane, so characters on different LoRAs interleave token by token instead of waiting for
one another. Hybrid LoRAs (modules_to_save) and full fine-tunes are answered by the local generator,
and every stream says who served it (`served_by`).
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
from runtime.generation.detok import Detokenizer, StopText
from runtime.generation.guard import DegenerationMonitor
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


class LlamaCppGenerator:
    """The Generator protocol over llama.cpp: lanes of LoRA contexts sharing one quantised model."""

    def __init__(self, settings, base, gguf: Path, threads: int, context: int, slots: int, lanes: int,
                 cache_dir: Path):
        self.settings, self.base, self.tokenizer = settings, base, base.tokenizer
        self.model = Model(gguf, threads)
        self.context, self.slots, self.max_lanes = context, max(1, slots), max(1, lanes)
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
        self.stats = {"rounds": 0, "tokens": 0, "prefill_tokens": 0, "reused_tokens": 0}
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
        live = [lane for lane in self._lanes.values() if any(s.row is not None for s in lane.slots)]
        if not live:
            self._wake.wait(0.5)
            self._wake.clear()
            return
        for lane in live:
            self._step(lane)
        self.stats["rounds"] += 1

    def _shutdown(self) -> None:
        for lane in self._lanes.values():
            for slot in lane.slots:
                if slot.row is not None:
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
            rest = prompt[reused:]
            logits = None
            for start in range(0, len(rest), lane.n_batch):
                logits = lane.decode([(slot, rest[start:start + lane.n_batch])])[0]
            self.stats["prefill_tokens"] += len(rest)
            self.stats["reused_tokens"] += reused
            self._sample(row, logits)
        except Exception as error:
            log.exception("prefill failed")
            self._end(row, "error", error)

    def _new_row(self, stream: ReplyStream, lane: Lane, slot, prompt: list[int]) -> LaneRow:
        import torch

        sampling = stream.request.sampling
        if not prompt:
            raise ValueError("empty prompt")
        row = LaneRow(stream, None, stream.request.adapter, lane=lane, slot=slot)
        row.ids = torch.empty(len(prompt) + max(1, sampling.max_new_tokens), dtype=torch.long)
        row.ids[: len(prompt)] = torch.tensor(prompt, dtype=torch.long)
        row.length = row.prompt_length = len(prompt)
        row.sampler = RowSampler(sampling, len(prompt), self.eos, self.tokenizer)  # the tokenizer: JSON masks
        if sampling.guard and not row.sampler.greedy:
            row.guard = DegenerationMonitor()
        row.detok = Detokenizer(self.tokenizer)
        row.stop = StopText(list(sampling.stop or []))
        return row

    def _step(self, lane: Lane) -> None:
        """One token for every live row of a lane, in one llama_decode."""
        rows = []
        for slot in lane.slots:
            row = slot.row
            if row is None:
                continue
            if row.stream.cancelled.is_set():
                self._end(row, "cancelled")
            else:
                rows.append(row)
        if not rows:
            return
        try:
            logits = lane.decode([(row.slot, [int(row.ids[row.length - 1])]) for row in rows])
        except Exception as error:  # a failed step fails its rows, not the worker
            log.exception("decode step failed")
            for row in rows:
                self._end(row, "error", error)
            return
        self.stats["tokens"] += len(rows)
        for row, row_logits in zip(rows, logits):
            self._sample(row, row_logits)

    def _sample(self, row: LaneRow, logits) -> None:
        """Pick the next token with the row's own sampler from llama.cpp's logits; stream or finish."""
        import torch

        token = row.sampler.choose(row.ids[: row.length], torch.from_numpy(logits).unsqueeze(0))
        if row.sampler.scored is not None and token not in self.eos:
            row.stream.logprobs.append(row.sampler.scored)
        row.ids[row.length] = token
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
        if row.length >= row.ids.shape[0]:
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
