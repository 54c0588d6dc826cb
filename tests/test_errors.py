"""One error base class: every error a user can fix is a PersonaeError, mapped once to exit codes and HTTP statuses."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import click
from click.testing import CliRunner

from runtime.cli.common import friendly_errors
from runtime.errors import Busy, Conflict, NotFound, PersonaeError, exit_code, http_status

# Errors that never reach a user: caught where they are raised, or a bug by definition.
INTERNAL = {"UnknownAdapter", "APIError", "UsageProblem"}  # UsageProblem: click's own


def project_exceptions():
    for package in ("runtime", "adapters", "plugins"):
        root = importlib.import_module(package)
        for info in pkgutil.walk_packages(root.__path__, package + "."):
            if info.name.endswith("__main__") or info.name.startswith("plugins.discord.bot"):
                continue
            module = importlib.import_module(info.name)
            for name, value in vars(module).items():
                if inspect.isclass(value) and issubclass(value, Exception) and value.__module__ == info.name:
                    yield info.name, value


def test_every_project_error_is_a_personae_error():
    found = dict(project_exceptions())
    assert len(found) >= 15
    stray = sorted(f"{module}.{cls.__name__}" for module, cls in found.items()
                   if cls.__name__ not in INTERNAL and not issubclass(cls, PersonaeError))
    assert not stray, f"errors a user sees that are not PersonaeErrors: {stray}"


def test_statuses_and_exit_codes_come_from_the_class():
    assert (exit_code(PersonaeError("x")), http_status(PersonaeError("x"))) == (2, 400)
    assert (exit_code(NotFound("x")), http_status(NotFound("x"))) == (2, 404)
    assert (exit_code(Conflict("x")), http_status(Conflict("x"))) == (3, 409)
    busy = Busy("wait", retry_after=7.4)
    assert (exit_code(busy), http_status(busy), busy.retry_after) == (3, 429, 7)
    assert (exit_code(KeyError("bug")), http_status(KeyError("bug"))) == (1, 500)


def test_the_cli_prints_one_line_with_the_errors_exit_code():
    @click.command()
    @click.argument("kind")
    @friendly_errors
    def command(kind):
        raise {"conflict": Conflict("pixel is already training; wait for it"), "missing": NotFound("no pixel@9")}[kind]

    busy = CliRunner().invoke(command, ["conflict"])
    assert busy.exit_code == 3 and busy.output == "Error: pixel is already training; wait for it\n"
    missing = CliRunner().invoke(command, ["missing"])
    assert missing.exit_code == 2 and missing.output == "Error: no pixel@9\n"


def test_a_real_command_refuses_an_unknown_character(isolated_environment):
    from runtime.cli import cli

    result = CliRunner().invoke(cli, ["characters", "show", "nobody-at-all"])
    assert result.exit_code == 2 and "nobody-at-all" in result.output and "Traceback" not in result.output
