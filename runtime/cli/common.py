"""What every command group shares: settings, the engine, and clear errors."""

from __future__ import annotations

import functools
import sys

import click

from runtime.errors import PersonaeError


class UsageProblem(click.ClickException):
    """A user error: one line on stderr, exit status 2 (or the PersonaeError's own)."""

    exit_code = 2

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code

    def show(self, file=None):
        click.echo(f"Error: {self.format_message()}", err=True)


def friendly_errors(function):
    """Turn errors the user can fix (PersonaeError) into one line and their exit status."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except PersonaeError as error:
            raise UsageProblem(str(error), error.exit_code) from None

    return wrapper


def settings():
    """The resolved settings (config file + environment)."""
    from runtime.config import load_settings

    return load_settings()


def store():
    """The SQLite log of the configured data directory."""
    from runtime.store import Store

    return Store(settings().db_path)


def engine(**overrides):
    """An engine for the configured runtime (the model loads on first use)."""
    from runtime.chat.build import build_engine
    from runtime.config import load_settings

    return build_engine(load_settings(overrides))


def is_interactive() -> bool:
    """Whether standard input is a person at a terminal."""
    return sys.stdin.isatty()


def catalog():
    """The catalog of every character (plugins and imported cards), without loading a model."""
    from runtime.characters.catalog import Catalog
    from runtime.plugins import get_plugin_manager

    config = settings()
    return Catalog(get_plugin_manager(config.plugins_dir), config.data_dir)


def character_id(name: str, registry=None) -> str:
    """A character's id from its id or display name, for every command (unknown: 'did you mean')."""
    also = sorted({v.character for v in registry.versions()}) if registry is not None else ()
    return catalog().resolve(name, also)


def weights_ref(text: str, registry=None) -> str:
    """'Captain Mirela Vance@2' -> 'captain-mirela-vance@2' (a name or id, then an optional @VERSION)."""
    name, at, version = text.rpartition("@")
    if not at or not (version.isdigit() or version == "base"):
        name, at, version = text, "", ""
    return character_id(name, registry) + (f"@{version}" if at else "")
