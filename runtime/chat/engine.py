"""One chat turn end to end: character, prompt, weights, generation, hooks, log."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

from runtime.characters.card import Character
from runtime.characters.prompt import build_messages
from runtime.chat.weights import WeightsLease
from runtime.errors import PersonaeError
from runtime.generation.types import Request, SamplingSettings
from runtime.models.base import fingerprint_folder, load_base_model, resolve_model_folder
from runtime.models.precision import resolve_dtype
from runtime.refs import WeightsRef


class NothingToRegenerate(PersonaeError, LookupError):
    """A re-roll asked for in a conversation without a reply yet."""


@dataclass
class Turn:
    """What a platform hands the engine: someone said something somewhere."""

    platform: str
    channel: str
    user_id: str
    text: str
    user_name: str = "User"
    character: Character | None = None  # resolved once by the platform; else the channel's binding or the default
    platform_message_id: str | None = None
    sampling: dict = field(default_factory=dict)  # per-request overrides (temperature, max_new_tokens, ...)
    version: int | str | None = None  # pin a weights version (3 or "base"), else the active one
    history: list[dict] | None = None  # role/content messages the client sent (OpenAI API); else the logged ones


@dataclass
class ReplyDraft:
    """A finished reply that filter_reply hooks may change."""

    text: str


class Reply:
    """A reply being generated: iterate it for text pieces; afterwards `.message` is its log row."""

    def __init__(self, engine, turn, character, weights, stream, user_message, prompt_tokens, swipe_of=None):
        self.engine, self.turn, self.character, self.weights = engine, turn, character, weights
        self.stream = stream
        self.user_message = user_message
        self.prompt_tokens = prompt_tokens
        self.swipe_of = swipe_of
        self.message: dict | None = None
        self._finalised = threading.Event()

    def __iter__(self):
        try:
            for piece in self.stream:
                yield piece
        finally:
            self._finalise()

    def result(self) -> str:
        """Wait for the whole reply; return its final (filtered) text."""
        for _ in self:
            pass
        return self.text

    @property
    def text(self) -> str:
        """The reply as logged (after filter_reply), or as streamed so far."""
        return self.message["text"] if self.message else self.stream.text

    def cancel(self) -> None:
        """The caller went away: stop generating; nothing is logged for this reply."""
        self.stream.cancel()

    def _finalise(self) -> None:
        if self._finalised.is_set():
            return
        self._finalised.set()
        self.weights.release()
        if self.stream.finish_reason in ("cancelled", "error", None):
            return
        self.message = self.engine.log_reply(self)


class Engine:
    """Runs chat turns for every platform over one store, catalog and generation backend."""

    def __init__(self, settings, pm, store, catalog, base=None, generator=None, weights=None, backend=None):
        """`backend(settings, base)` makes the generator on first use (see runtime.chat.build)."""
        self.settings, self.pm, self.store, self.catalog = settings, pm, store, catalog
        self._base, self._generator, self.weights, self._backend = base, generator, weights, backend
        self._lock = threading.Lock()

    # --- lazily built heavy parts --------------------------------------------------------

    @property
    def base(self):
        """The base model, loaded on first use."""
        with self._lock:
            if self._base is None:
                self._base = load_base_model(
                    self.settings.base_model, self.settings.cache_dir, resolve_dtype(self.settings),
                    self.settings.device,
                )
            return self._base

    @property
    def base_loaded(self):
        """The base model if it is loaded already, else None (never loads it)."""
        return self._base

    @property
    def generator(self):
        """The generator that owns the model, made by the backend on first use."""
        base = self.base
        with self._lock:
            if self._generator is None:
                if self._backend is None:
                    raise RuntimeError("this engine was built without a generation backend; use build_engine()")
                self._generator = self._backend(self.settings, base)
            return self._generator

    @property
    def generator_started(self):
        """The generator if it runs already, else None (never starts it)."""
        return self._generator

    @property
    def registry(self):
        """The adapter registry behind the character weights, or None for an engine without one."""
        return self.weights.registry if self.weights is not None else None

    def base_identity(self):
        """The base model's folder and fingerprint, without loading the model when it isn't loaded yet."""
        if self._base is not None:
            return Path(self._base.folder), self._base.fingerprint
        folder = resolve_model_folder(self.settings.base_model, self.settings.cache_dir)
        return folder, fingerprint_folder(folder)

    def close(self) -> None:
        """Stop the generator."""
        if self._generator is not None:
            self._generator.close()

    # --- one turn ----------------------------------------------------------------------

    def resolve_character(self, turn: Turn) -> Character:
        """The character that answers: the one the platform chose, bound to the channel, or the default."""
        if turn.character is not None:
            return turn.character
        bound = self.store.bound_characters(turn.platform, turn.channel, turn.user_id)
        if bound:
            return self.catalog.get(bound[0])
        return self.catalog.default(self.settings.default_character)

    def weights_for(self, character: Character, version: int | str | None = None) -> WeightsLease:
        """Lease the weights a character answers with now (base until the registry says otherwise)."""
        if self.weights is None:
            return WeightsLease()
        self.weights.adopt_packaged(character)
        return self.weights.acquire(WeightsRef(character.id, version))

    def greeting(self, character, user_name: str = "User", index: int = 0) -> str:
        """The character's first message (or an alternate greeting), with macros filled in."""
        greetings = character.greetings(user_name)
        return greetings[index % len(greetings)] if greetings else ""

    def log_greeting(self, turn: Turn, character) -> dict | None:
        """Log the first message of a new conversation so the history starts with it."""
        text = self.greeting(character, turn.user_name)
        if not text:
            return None
        conversation = self.store.conversation_id(turn.platform, turn.channel, character.id)
        if self.store.history(conversation, limit=1):
            return None
        return self.store.log_message(
            conversation_id=conversation, role="assistant", text=text, character=character.id,
            weights_version="card", platform=turn.platform, channel=turn.channel, meta={"greeting": True},
        )

    def reply(self, turn: Turn) -> Reply:
        """Log the user's message and start the character's reply (stream it by iterating)."""
        character = self.resolve_character(turn)
        self.store.ensure_user(turn.user_id, turn.user_name, turn.platform)
        conversation = self.store.conversation_id(turn.platform, turn.channel, character.id)
        history = (self.store.history(conversation, limit=self.settings.history_turns) if turn.history is None
                   else [{"role": m["role"], "text": m["content"]} for m in turn.history])
        user_message = self.store.log_message(
            conversation_id=conversation, role="user", text=turn.text, character=character.id,
            platform=turn.platform, channel=turn.channel, user_id=turn.user_id, user_name=turn.user_name,
            platform_message_id=turn.platform_message_id,
        )
        try:
            reply = self._start(turn, character, history + [user_message], user_message)
        except Exception:
            # Busy or refused: the message was never answered, and the user is told to send it again.
            self.store.delete_message(user_message["id"])
            raise
        self.pm.hook.message_logged(message=user_message, store=self.store)
        return reply

    def regenerate(self, turn: Turn) -> Reply:
        """Re-roll the last reply of the conversation (a swipe); both stay in the log."""
        character = self.resolve_character(turn)
        conversation = self.store.conversation_id(turn.platform, turn.channel, character.id)
        history = self.store.history(conversation, limit=self.settings.history_turns)
        last_reply = next((m for m in reversed(history) if m["role"] == "assistant"), None)
        if last_reply is None or last_reply.get("reply_to") is None:
            raise NothingToRegenerate("there is no reply to regenerate in this conversation yet")
        cut = history.index(last_reply)
        user_message = self.store.message(last_reply["reply_to"])
        return self._start(turn, character, history[:cut], user_message, swipe_of=last_reply["id"])

    def _start(self, turn, character, history, user_message, swipe_of=None) -> Reply:
        base = self.base
        budget = min(self.settings.context_tokens, base.context_length)
        sampling = SamplingSettings.from_sources(self.settings, character, **turn.sampling)
        # The model must not write the user's next line for them.
        sampling.stop = [*sampling.stop, f"\n{turn.user_name}:"]
        messages = build_messages(
            character,
            [{"role": m["role"], "content": m["text"]} for m in history],
            base.tokenizer,
            budget - sampling.max_new_tokens,
            user=turn.user_name,
        )
        self.pm.hook.prompt_messages(character=character, messages=messages, turn=turn)
        input_ids = list(base.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                            return_dict=False))
        weights = self.weights_for(character, turn.version)
        try:
            stream = self.generator.submit(Request(input_ids, sampling, weights.adapter))
        except Exception:
            weights.release()
            raise
        return Reply(self, turn, character, weights, stream, user_message, len(input_ids), swipe_of)

    def log_reply(self, reply: Reply) -> dict:
        """Filter the finished reply through the hooks and write it to the log."""
        stream = reply.stream
        draft = ReplyDraft(stream.text.strip())  # the generator cut it at any stop string
        self.pm.hook.filter_reply(character=reply.character, reply=draft, turn=reply.turn)
        ttft = stream.ttft
        message = self.store.log_message(
            conversation_id=reply.user_message["conversation_id"],
            role="assistant",
            text=draft.text,
            character=reply.character.id,
            weights_version=reply.weights.version,
            platform=reply.turn.platform,
            channel=reply.turn.channel,
            reply_to=reply.user_message["id"],
            swipe_of=reply.swipe_of,
            prompt_tokens=reply.prompt_tokens,
            completion_tokens=stream.completion_tokens,
            ttft_ms=round(ttft * 1000, 1) if ttft is not None else None,
            latency_ms=round((stream.finished_at - stream.request.submitted) * 1000, 1),
            meta={"finish_reason": stream.finish_reason, "backend": self.settings.backend, **stream.served_by},
        )
        self.pm.hook.message_logged(message=message, store=self.store)
        return message
