"""What every command group shares: settings, the engine, and clear errors."""

from __future__ import annotations

import functools
import sys

import click


class UsageProblem(click.ClickException):
    """A user error: one line on stderr, exit status 2."""

    exit_code = 2

    def show(self, file=None):
        click.echo(f"Error: {self.format_message()}", err=True)


# Errors that mean "the user's input or set-up is wrong", by module and class name, so that
# building the CLI doesn't import those modules (sqlite_utils alone costs ~0.8 s).
USER_ERRORS = {
    ("adapters.errors", "RegistryError"),  # pickles, mismatched or damaged adapters (and its subclasses)
    ("runtime.audit.compare", "CapabilityMissing"),
    ("runtime.audit.probes", "ProbeFileError"),
    ("runtime.audit.runner", "AuditError"),
    ("runtime.catalog", "UnknownCharacter"),
    ("runtime.characters", "CardError"),
    ("runtime.config", "ConfigError"),
    ("runtime.models", "ModelError"),
    ("runtime.scheduler", "ScheduleError"),
    ("runtime.store", "StoreError"),
    ("runtime.training.config", "TrainingError"),
    ("runtime.training.runs", "TrainingBusy"),
}


def is_user_error(error: BaseException) -> bool:
    """Whether an error (or one of its bases) is one of the runtime's user-facing errors."""
    return any((cls.__module__, cls.__name__) in USER_ERRORS for cls in type(error).__mro__)


def friendly_errors(function):
    """Turn the runtime's known errors into one-line messages with exit status 2."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except Exception as error:
            if is_user_error(error):
                raise UsageProblem(str(error)) from None
            raise

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
    from runtime.config import load_settings
    from runtime.engine import build_engine

    return build_engine(load_settings(overrides))


def is_interactive() -> bool:
    """Whether standard input is a person at a terminal."""
    return sys.stdin.isatty()
