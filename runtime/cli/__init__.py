"""The `personae` command line: core command groups, plus commands that plugins add."""

from __future__ import annotations

import importlib

import click

# Core command modules, each exposing `commands` (a list of click commands or groups).
# They are imported when the CLI runs, and must not import torch at module level.
CORE_COMMAND_MODULES = (
    "runtime.cli.characters",
    "runtime.cli.logs",
    "runtime.cli.config",
    "runtime.cli.plugins",
    "runtime.cli.serve",
    "runtime.cli.adapters",
    "runtime.cli.training",
    "runtime.cli.bootstrap",
    "runtime.cli.audit",
)


class PersonaeGroup(click.Group):
    """A group that adds core and plugin commands on first use, not at import time."""

    _loaded = False

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        for name in CORE_COMMAND_MODULES:
            try:
                module = importlib.import_module(name)
            except ModuleNotFoundError as error:
                if error.name == name:  # a command group not built yet
                    continue
                raise
            for command in module.commands:
                self.add_command(command)
        from runtime.plugins import get_plugin_manager

        get_plugin_manager().hook.register_commands(cli=self)

    def list_commands(self, ctx):
        self._load()
        return super().list_commands(ctx)

    def get_command(self, ctx, name):
        self._load()
        return super().get_command(ctx, name)


@click.group(cls=PersonaeGroup)
@click.version_option(package_name="personae")
def cli():
    """Personae: character chatbots on one base model, with per-character weights.

    Start with `personae chat` for a console chat with a built-in character.
    """
