"""One chat turn end to end: character, prompt, weights, generation, hooks, log."""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path

from runtime.characters import macros
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
    client_owns_chat: bool = False  # the client keeps the chat (OpenAI API): re-sending the same messages re-rolls
    authors_note: str = ""  # SillyTavern's author's note: a system message `authors_note_depth` messages from the end
    authors_note_depth: int = 4
    prompt_addition: str = ""  # added to the character's instructions (a channel's prompt), inside the token budget


@dataclass
class ReplyDraft:
    """A finished reply that filter_reply hooks may change."""

    text: str


class SwipeChain:
    """Replies to one message logged as swipes of each other, so history and curation keep exactly one.

    Each reply, as it is logged, re-rolls the one logged before it (or the reply a regeneration replaces).
    """

    def __init__(self, swipe_of: int | None = None):
        self.last = swipe_of
        self.lock = threading.Lock()


class Reply:
    """A reply being generated: iterate it for text pieces; afterwards `.message` is its log row."""

    def __init__(self, engine, turn, character, weights, stream, user_message, prompt_tokens, chain=None):
        self.engine, self.turn, self.character, self.weights = engine, turn, character, weights
        self.stream = stream
        self.user_message = user_message
        self.prompt_tokens = prompt_tokens
        self.chain = chain or SwipeChain()
        self.message: dict | None = None
        self._finalised = threading.Event()

    def __iter__(self):
        try:
            for piece in self.stream:
                yield piece
        finally:
            self._finalise()

    def result(self) -> str:
        """Wait for the whole reply; return its final (filtered) text. Nothing was shown, so the guard may re-sample."""
        try:
            self.stream.result()
        finally:
            self._finalise()
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

    def greeting(self, character, user_name: str = "User", index: int = 0, group: list[str] = ()) -> str:
        """The character's first message (or an alternate greeting), with macros filled in.

        `group` names the characters of a group channel: V3 group_only_greetings lead, {{group}} names them.
        """
        with macros.active(macros.MacroContext(group=list(group))):
            greetings = character.greetings(user_name, group=bool(group))
        return greetings[index % len(greetings)] if greetings else ""

    def group_names(self, turn: Turn, character) -> list[str]:
        """Names of every character bound to the turn's channel when there are several (a group channel)."""
        bound = self.store.bound_characters(turn.platform, turn.channel, turn.user_id)
        if len(bound) < 2:
            return []
        names = []
        for cid in bound:
            try:
                names.append(self.catalog.get(cid).display_name)
            except KeyError:  # a binding to a character since removed
                continue
        return names if character.display_name in names else [character.display_name, *names]

    def log_greeting(self, turn: Turn, character) -> dict | None:
        """Log the first message of a new conversation so the history starts with it."""
        text = self.greeting(character, turn.user_name, group=self.group_names(turn, character))
        if not text:
            return None
        conversation = self.store.conversation_id(turn.platform, turn.channel, character.id)
        if self.store.history(conversation, limit=1, degenerate=True):
            return None
        return self.store.log_message(
            conversation_id=conversation, role="assistant", text=text, character=character.id,
            weights_version="card", platform=turn.platform, channel=turn.channel, meta={"greeting": True},
        )

    def reply(self, turn: Turn) -> Reply:
        """Log the user's message and start the character's reply (stream it by iterating)."""
        return self.replies(turn)[0]

    def replies(self, turn: Turn, n: int = 1) -> list[Reply]:
        """Log the user's message and start `n` replies to it, generated together (logged as swipes of each other).

        A client that sends the history itself and re-sends exactly the same messages is re-rolling:
        no new user message is logged and the new reply replaces the last one as a swipe.
        """
        character = self.resolve_character(turn)
        self.store.ensure_user(turn.user_id, turn.user_name, turn.platform)
        conversation = self.store.conversation_id(turn.platform, turn.channel, character.id)
        digest = None
        if turn.history is None:
            history = self.store.history(conversation, limit=self.settings.history_turns)
        else:
            history = [{"role": m["role"], "text": m["content"]} for m in turn.history]
        if turn.history is not None and turn.client_owns_chat:
            self._keep_chosen(conversation, history)
            digest = history_digest(turn.history, turn.text)
            resent = self._resent(conversation, digest)
            if resent is not None:
                user_message, swipe_of = resent
                return self._start(turn, character, history + [user_message], user_message, swipe_of, n,
                                   "swipe" if swipe_of else "normal")
        user_message = self.store.log_message(
            conversation_id=conversation, role="user", text=turn.text, character=character.id,
            platform=turn.platform, channel=turn.channel, user_id=turn.user_id, user_name=turn.user_name,
            platform_message_id=turn.platform_message_id, meta={"history_digest": digest} if digest else None,
        )
        try:
            replies = self._start(turn, character, history + [user_message], user_message, n=n)
        except Exception:
            # Busy or refused: the message was never answered, and the user is told to send it again.
            self.store.delete_message(user_message["id"])
            raise
        self.pm.hook.message_logged(message=user_message, store=self.store)
        return replies

    def _resent(self, conversation: int, digest: str):
        """(user message, reply it re-rolls or None) when the conversation's last turn had exactly this history."""
        last = self.store.history(conversation, limit=2)
        if last and last[-1]["role"] == "user":
            asked, answer = last[-1], None  # its reply never came (cancelled, failed): answer it now
        elif len(last) == 2 and last[0]["role"] == "user" and last[1].get("reply_to") == last[0]["id"]:
            asked, answer = last
        else:
            return None
        if _meta(asked).get("history_digest") != digest:
            return None
        return asked, (answer["id"] if answer else None)

    def _keep_chosen(self, conversation: int, history: list[dict]) -> None:
        """The client carries on from another logged version of the last reply (a swipe, one of n): keep that one."""
        if not history or history[-1]["role"] != "assistant":
            return
        last = self.store.history(conversation, limit=1)
        text = (history[-1]["text"] or "").strip()
        if not last or last[0]["role"] != "assistant" or not last[0].get("reply_to") or last[0]["text"] == text:
            return
        versions = self.store.query("select id, text from messages where conversation_id = ? and reply_to = ? "
                                    "and role = 'assistant' order by id", [conversation, last[0]["reply_to"]])
        chosen = next((m["id"] for m in versions if m["text"] == text), None)
        if chosen is not None:
            self.store.chain_swipes([m["id"] for m in versions if m["id"] != chosen] + [chosen])

    def regenerate(self, turn: Turn) -> Reply:
        """Re-roll the last reply of the conversation (a swipe); both stay in the log."""
        return self.regenerations(turn)[0]

    def regenerations(self, turn: Turn, n: int = 1) -> list[Reply]:
        """Re-roll the last reply of the conversation `n` times; every version stays in the log."""
        character = self.resolve_character(turn)
        conversation = self.store.conversation_id(turn.platform, turn.channel, character.id)
        history = self.store.history(conversation, limit=self.settings.history_turns, degenerate=True)
        last_reply = next((m for m in reversed(history) if m["role"] == "assistant"), None)
        if last_reply is None or last_reply.get("reply_to") is None:
            raise NothingToRegenerate("there is no reply to regenerate in this conversation yet")
        cut = history.index(last_reply)
        user_message = self.store.message(last_reply["reply_to"])
        earlier = [m for m in history[:cut] if _meta(m).get("finish_reason") != "degenerate"]
        if turn.history is not None:
            # The platform knows the thread the reply answered (a Discord reply chain): re-roll within it.
            earlier = [{"role": m["role"], "text": m["content"]} for m in turn.history] + [user_message]
        return self._start(turn, character, earlier, user_message, last_reply["id"], n, "regenerate")

    def _start(self, turn, character, history, user_message, swipe_of=None, n: int = 1,
               generation: str = "normal") -> list[Reply]:
        """Build the prompt and submit `n` replies; `generation` is SillyTavern's kind (normal, swipe, regenerate)."""
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
            group=self.group_names(turn, character),
            idle_since=_idle_since(history),
            authors_note=turn.authors_note,
            authors_note_depth=turn.authors_note_depth,
            addition=turn.prompt_addition,
            generation=generation,
        )
        self.pm.hook.prompt_messages(character=character, messages=messages, turn=turn)
        input_ids = list(base.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                            return_dict=False))
        # The guard's copy check: a reply that says one of these again is re-sampled or kept out of history.
        earlier = [m["text"] for m in history if m["role"] == "assistant" and m.get("text")]
        chain, replies = SwipeChain(swipe_of), []
        try:
            for index in range(n):
                # Submitted back to back, so the generator prefills and decodes them as one batch.
                seeded = index and sampling.seed is not None
                choice = replace(sampling, seed=(sampling.seed + index) % 2**63) if seeded else sampling
                weights = self.weights_for(character, turn.version)
                try:
                    stream = self.generator.submit(Request(input_ids, choice, weights.adapter, earlier=earlier,
                                                           names=[character.display_name, turn.user_name or ""]))
                except Exception:
                    weights.release()
                    raise
                replies.append(Reply(self, turn, character, weights, stream, user_message, len(input_ids), chain))
        except Exception:
            for started in replies:  # all or none: a busy generator refuses the whole request
                started.cancel()
                started.weights.release()
            raise
        return replies

    def log_reply(self, reply: Reply) -> dict:
        """Filter the finished reply through the hooks and write it to the log."""
        stream = reply.stream
        draft = ReplyDraft(stream.text.strip())  # the generator cut it at any stop string
        self.pm.hook.filter_reply(character=reply.character, reply=draft, turn=reply.turn)
        ttft = stream.ttft
        with reply.chain.lock:
            message = self._log_reply_row(reply, draft, stream, ttft, reply.chain.last)
            reply.chain.last = message["id"]
        self.pm.hook.message_logged(message=message, store=self.store)
        return message

    def _log_reply_row(self, reply, draft, stream, ttft, swipe_of) -> dict:
        return self.store.log_message(
            conversation_id=reply.user_message["conversation_id"],
            role="assistant",
            text=draft.text,
            character=reply.character.id,
            weights_version=reply.weights.version,
            platform=reply.turn.platform,
            channel=reply.turn.channel,
            reply_to=reply.user_message["id"],
            swipe_of=swipe_of,
            prompt_tokens=reply.prompt_tokens,
            completion_tokens=stream.completion_tokens,
            ttft_ms=round(ttft * 1000, 1) if ttft is not None else None,
            latency_ms=round((stream.finished_at - stream.request.submitted) * 1000, 1),
            meta={"finish_reason": stream.finish_reason, "backend": self.settings.backend, **stream.served_by,
                  **({"degenerate": stream.degenerate} if stream.degenerate else {}),
                  # JSON a client forced (response_format, a tool call): curation keeps it out of training.
                  **({"structured": True} if stream.request.sampling.response_format else {}),
                  **({"resampled": stream.resampled} if stream.resampled else {})},
        )


def history_digest(history: list[dict], text: str) -> str:
    """A fingerprint of the messages a client sent (history and the new message), to spot a re-sent request."""
    sent = [[m["role"], m["content"]] for m in history] + [["user", text]]
    return hashlib.sha256(json.dumps(sent, ensure_ascii=False).encode()).hexdigest()


def _meta(message: dict) -> dict:
    try:
        return json.loads(message.get("meta") or "{}") or {}
    except ValueError:
        return {}


def _idle_since(history: list[dict]):
    """When the user spoke before their newest message ({{idle_duration}}), or None."""
    from datetime import datetime

    spoken = [m.get("created") for m in history[:-1] if m.get("role") == "user" and m.get("created")]
    try:
        return datetime.fromisoformat(spoken[-1]) if spoken else None
    except (TypeError, ValueError):
        return None
