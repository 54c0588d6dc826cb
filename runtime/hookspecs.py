"""The whole plugin contract of Personae: every hook a plugin may implement, and the shapes they exchange.

Hooks that take a `register` callback let plugins add things; the others pass data through for
plugins to change. `character` is always a runtime.characters.Character (`character_id` where only the id is known), `turn` a
runtime.chat.engine.Turn, `message` a logged row (dict), `store` the runtime.store.Store.
Built-in plugins (plugins/) use exactly this contract and the public `hookimpl`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Protocol, runtime_checkable

from pluggy import HookimplMarker, HookspecMarker

if TYPE_CHECKING:  # types only: the contract must not import the layers above it
    from collections.abc import Iterator

    from runtime.characters.card import Character
    from runtime.chat.engine import Engine, Turn
    from runtime.config import Settings
    from runtime.generation.types import ReplyStream, Request
    from runtime.store import Store

hookspec = HookspecMarker("personae")
hookimpl = HookimplMarker("personae")


@runtime_checkable
class Platform(Protocol):
    """Somewhere characters talk (Discord, HTTP): what `personae serve` starts, checks and stops."""

    name: str

    def wanted(self, settings: Settings, options: dict) -> bool:
        """Whether `personae serve` should start it with these settings and command-line options."""

    def check(self, settings: Settings, options: dict) -> list[str]:
        """Configuration problems, found without connecting anywhere (empty: ready)."""

    def run(self, engine: Engine, settings: Settings, options: dict) -> None:
        """Serve until stop() is called (runs in its own thread)."""

    def stop(self) -> None:
        """Ask run() to return."""


@runtime_checkable
class Generator(Protocol):
    """What a backend returns: the one owner of the model(s), serving every platform's requests."""

    def submit(self, request: Request) -> ReplyStream:
        """Queue a reply; raises GeneratorBusy when the queue is full."""

    def load_adapter(self, name: str, folder: Any) -> Any:
        """Make a PEFT LoRA folder servable under `name` (between decode steps)."""

    def unload_adapter(self, name: str, forget: bool = True, wait: bool = True) -> None:
        """Free an adapter."""

    def load_model(self, name: str, loader: Callable[[], Any] | None = None) -> None:
        """Make a fully fine-tuned model servable under `name`; `loader()` builds it in memory and
        `loader.materialise()` returns it as a plain model folder (for engines that load a folder)."""

    def unload_model(self, name: str, forget: bool = True, wait: bool = True) -> None:
        """Free a full model."""

    def knows(self, name: str) -> bool:
        """Whether weights of that name can be served now."""

    def close(self) -> None:
        """Stop serving; requests in flight end."""


# A backend is a factory: backend(settings, base) -> Generator, where base is the loaded
# runtime.models.base.BaseModel (its tokenizer builds every prompt, whoever generates).
Backend = Callable[["Settings", Any], Generator]


# --- Hooks that take a `register` callback: plugins add things --------------------------


@hookspec
def register_platforms(register: Callable[[Platform], None]) -> None:
    """Add platforms that `personae serve` can run: register(platform) with a Platform."""


@hookspec
def register_characters(register: Callable[[Character], None]) -> None:
    """Add characters: register(character) with a Character (e.g. from runtime.characters.load_card)."""


@hookspec
def register_commands(cli) -> None:
    """Add click commands or groups to the `personae` command line: cli.add_command(...)."""


@hookspec
def register_scorers(register: Callable[[str, Callable[..., dict]], None]) -> None:
    """Add persona-audit scorers: register(name, scorer) where scorer(reply, probe, context) -> dict."""


@hookspec
def register_backends(register: Callable[[str, Backend], None]) -> None:
    """Add generation backends: register(name, backend); the `backend` setting picks one (default 'local')."""


@hookspec
def register_jobs(register: Callable[[str, Callable[..., Any], Any], None]) -> None:
    """Add scheduled jobs run by `personae serve`: register(name, function, trigger) with an APScheduler trigger."""


# --- Hooks that data passes through: plugins change it --------------------------------


@hookspec
def prompt_messages(character: Character, messages: list[dict], turn: Turn) -> None:
    """Change the chat messages sent to the model for one turn, in place (list of role/content dicts)."""


@hookspec
def filter_reply(character: Character, reply, turn: Turn) -> None:
    """Change a finished reply before it is logged and shown: set reply.text."""


@hookspec
def message_logged(message: dict, store: Store) -> None:
    """Called after a message (user or character) is written to the log; message is its row."""


@hookspec
def curate_examples(character: Character, examples: list[dict]) -> None:
    """Change the training examples curated for a character, in place (list of chat-format dicts)."""


@hookspec
def version_promoted(character_id: str, version, previous) -> None:
    """Called after a character's weights version (registry Version) becomes active; previous may be None.

    The registry knows characters by id only, so this hook gets `character_id`, not a Character.
    """


@hookspec
def audit_alert(character: Character, report) -> None:
    """Called when a live audit finds a character under its alignment threshold (report: an AuditReport)."""


@hookspec
def user_forgotten(user_id: str, store: Store) -> None:
    """Called after a user asked to be forgotten (`personae forget`, Discord's /personae forget-me) and the log's
    rows of them are gone: delete everything your plugin keeps about `user_id` (its own tables in `store` too)."""


def iter_hookspecs() -> Iterator[str]:
    """The name of every hook in the contract (the coverage test walks these)."""
    return (name for name, value in globals().items() if getattr(value, "personae_spec", None) is not None)
