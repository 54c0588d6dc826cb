"""The generator: one worker owns the model; requests queue up and stream tokens back."""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field

BASE_ADAPTER = "__base__"  # PEFT's name for "no adapter" in mixed batches


class GeneratorBusy(RuntimeError):
    """The request queue is full; retry after `retry_after` seconds."""

    def __init__(self, retry_after: float):
        self.retry_after = max(1, round(retry_after))
        super().__init__(f"the model is busy ({self.retry_after} s until a slot frees up); please retry then")


@dataclass
class SamplingSettings:
    """How one reply is sampled."""

    temperature: float = 0.7
    top_p: float = 0.9
    repetition_penalty: float = 1.1
    max_new_tokens: int = 160
    stop: list[str] = field(default_factory=list)
    seed: int = 0

    @classmethod
    def from_sources(cls, settings, character=None, **overrides) -> "SamplingSettings":
        """Config defaults < the character's card < per-request overrides (None = not given)."""
        values = {
            "temperature": settings.temperature,
            "top_p": settings.top_p,
            "repetition_penalty": settings.repetition_penalty,
            "max_new_tokens": settings.max_new_tokens,
            "seed": settings.seed,
            "stop": [],
        }
        if character is not None:
            values.update({k: v for k, v in character.generation_settings().items() if k in values})
        values.update({k: v for k, v in overrides.items() if v is not None and k in values})
        if isinstance(values["stop"], str):
            values["stop"] = [values["stop"]]
        return cls(**values)


@dataclass
class Request:
    """One reply to generate."""

    input_ids: list[int]
    sampling: SamplingSettings
    adapter: str = BASE_ADAPTER  # adapter name in the model, or the bare base
    submitted: float = field(default_factory=time.perf_counter)


class ReplyStream:
    """Text pieces of one reply as they are made; iterate it, or cancel it."""

    _DONE = object()

    def __init__(self, request: Request):
        self.request = request
        self._pieces: queue.Queue = queue.Queue()
        self.cancelled = threading.Event()
        self.text = ""
        self.completion_tokens = 0
        self.first_token_at: float | None = None
        self.finished_at: float | None = None
        self.finish_reason: str | None = None
        self.error: BaseException | None = None

    # --- producer side (the worker) ---
    def push(self, piece: str) -> None:
        """Hand a new piece of text to the caller."""
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        self.text += piece
        self._pieces.put(piece)

    def finish(self, reason: str, error: BaseException | None = None) -> None:
        """Mark the reply complete (reason: stop, length, cancelled, error)."""
        self.finish_reason = reason
        self.error = error
        self.finished_at = time.perf_counter()
        self._pieces.put(self._DONE)

    # --- consumer side ---
    def cancel(self) -> None:
        """Stop generating this reply (the caller went away)."""
        self.cancelled.set()

    def __iter__(self):
        while True:
            piece = self._pieces.get()
            if piece is self._DONE:
                if self.error is not None:
                    raise self.error
                return
            yield piece

    def result(self) -> str:
        """Wait for the whole reply and return its text."""
        for _ in self:
            pass
        return self.text

    @property
    def ttft(self) -> float | None:
        """Seconds from submission to the first piece."""
        return None if self.first_token_at is None else self.first_token_at - self.request.submitted


class Generator:
    """Owns the model in one worker thread; requests from every platform go through its queue."""

    def __init__(self, model, tokenizer, max_queue: int = 64, threads: int = 0):
        self.model = model
        self.tokenizer = tokenizer
        self.threads = threads
        self._queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self._recent_seconds = 5.0  # moving estimate of one reply's time, for retry hints
        self._worker = threading.Thread(target=self._run, name="personae-generator", daemon=True)
        self._stopping = threading.Event()
        self._worker.start()

    @property
    def queue_depth(self) -> int:
        """Requests waiting for the worker."""
        return self._queue.qsize()

    def submit(self, request: Request) -> ReplyStream:
        """Queue a request and return its stream; raise GeneratorBusy if the queue is full."""
        stream = ReplyStream(request)
        try:
            self._queue.put_nowait(stream)
        except queue.Full:
            raise GeneratorBusy(self._recent_seconds * (self._queue.qsize() + 1)) from None
        return stream

    def close(self) -> None:
        """Stop the worker after the request in hand."""
        self._stopping.set()
        self._queue.put(None)
        self._worker.join(timeout=30)

    def _run(self) -> None:
        import torch

        if self.threads:
            torch.set_num_threads(self.threads)
        while not self._stopping.is_set():
            stream = self._queue.get()
            if stream is None:
                break
            if stream.cancelled.is_set():
                stream.finish("cancelled")
                continue
            started = time.perf_counter()
            try:
                self._generate(stream)
            except Exception as error:  # one bad request must not stop the worker
                stream.finish("error", error)
            self._recent_seconds = 0.7 * self._recent_seconds + 0.3 * (time.perf_counter() - started)

    def _generate(self, stream: ReplyStream) -> None:
        """Decode one request with transformers' generate, streaming text pieces."""
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList, TextStreamer

        request = stream.request
        sampling = request.sampling

        class Pieces(TextStreamer):
            def on_finalized_text(self, text: str, stream_end: bool = False):
                if text:
                    stream.push(text)
                    stream.completion_tokens = self.token_count

            def put(self, value):
                if self.next_tokens_are_prompt:
                    self.next_tokens_are_prompt = False
                    return
                self.token_count += value.numel()
                super().put(value)

        class Cancelled(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                return stream.cancelled.is_set()

        streamer = Pieces(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        streamer.token_count = 0
        input_ids = torch.tensor([request.input_ids], device=self.model.device)
        kwargs = dict(
            max_new_tokens=sampling.max_new_tokens,
            repetition_penalty=sampling.repetition_penalty,
            pad_token_id=self.tokenizer.pad_token_id,
            streamer=streamer,
            stopping_criteria=StoppingCriteriaList([Cancelled()]),
        )
        if sampling.stop:
            kwargs.update(stop_strings=sampling.stop, tokenizer=self.tokenizer)
        if sampling.temperature > 0:
            kwargs.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p)
            if sampling.seed:
                torch.manual_seed(sampling.seed)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if request.adapter != BASE_ADAPTER:
            kwargs["adapter_names"] = [request.adapter]
        with torch.inference_mode():
            output = self.model.generate(input_ids, attention_mask=torch.ones_like(input_ids), **kwargs)
        new_tokens = output.shape[1] - input_ids.shape[1]
        stream.completion_tokens = new_tokens
        if stream.cancelled.is_set():
            stream.finish("cancelled")
        else:
            stream.finish("length" if new_tokens >= sampling.max_new_tokens else "stop")
