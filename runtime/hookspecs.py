"""The whole plugin contract of Personae: every hook a plugin may implement."""

from __future__ import annotations

from pluggy import HookimplMarker, HookspecMarker

hookspec = HookspecMarker("personae")
hookimpl = HookimplMarker("personae")


# --- Hooks that take a `register` callback: plugins add things --------------------------


@hookspec
def register_platforms(register):
    """Add platforms that `personae serve` can run: register(platform).

    A platform has `name`, `wanted(settings, options) -> bool` (should serve start it?),
    `check(settings, options) -> list[str]` (configuration problems, without connecting),
    `run(engine, settings, options)` (blocks until stopped) and `stop()`.
    """


@hookspec
def register_characters(register):
    """Add characters: register(character) with a runtime.characters.Character."""


@hookspec
def register_commands(cli):
    """Add click commands or groups to the `personae` command line: cli.add_command(...)."""


@hookspec
def register_scorers(register):
    """Add persona-audit scorers: register(name, scorer) where scorer(reply, probe, context) -> dict."""


@hookspec
def register_backends(register):
    """Add generation backends: register(name, factory) where factory(settings) -> a generator."""


@hookspec
def register_jobs(register):
    """Add scheduled jobs: register(name, function, trigger) with an APScheduler trigger."""


# --- Hooks that data passes through: plugins change it --------------------------------


@hookspec
def prompt_messages(character, messages, turn):
    """Change the chat messages sent to the model for one turn, in place (list of role/content dicts)."""


@hookspec
def filter_reply(character, reply, turn):
    """Change a finished reply before it is logged and shown: set reply.text."""


@hookspec
def message_logged(message, store):
    """Called after a message (user or character) is written to the log; message is its row dict."""


@hookspec
def curate_examples(character, examples):
    """Change the training examples curated for a character, in place (list of chat-format dicts)."""


@hookspec
def version_promoted(character, version, previous):
    """Called after a character's weights version becomes active (previous may be None)."""


@hookspec
def audit_alert(character, report):
    """Called when a live audit finds a character under its alignment threshold."""
