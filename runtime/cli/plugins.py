"""`personae plugins`, `install`, `uninstall`: what is loaded, and pip in the same environment."""

from __future__ import annotations

import json
import subprocess
import sys

import click


@click.command(name="plugins")
@click.option("--json", "as_json", is_flag=True, help="Output JSON.")
def plugins_command(as_json):
    """List loaded plugins and the hooks each implements."""
    from runtime.plugins import get_plugin_manager, load_errors, plugin_summaries

    rows = plugin_summaries(get_plugin_manager())
    if as_json:
        click.echo(json.dumps({"plugins": rows, "errors": [{"plugin": n, "error": e} for n, e in load_errors]}, indent=2))
        return
    for row in rows:
        version = f" {row['version']}" if row["version"] else ""
        click.echo(f"{row['name']}{version}: {', '.join(row['hooks']) or '(no hooks)'}")
    for name, error in load_errors:
        click.echo(f"BROKEN {name}: {error}", err=True)


def _pip(*args: str) -> None:
    """Run pip in the environment personae itself runs in."""
    completed = subprocess.run([sys.executable, "-m", "pip", *args])
    if completed.returncode:
        raise click.ClickException(f"pip {' '.join(args)} failed with exit status {completed.returncode}")


@click.command()
@click.argument("packages", nargs=-1)
@click.option("-U", "--upgrade", is_flag=True, help="Upgrade packages to the latest version.")
@click.option("-e", "--editable", help="Install a project in editable mode from this path.")
def install(packages, upgrade, editable):
    """Install plugin packages (characters, platforms, scorers) into personae's environment."""
    if not packages and not editable:
        raise click.UsageError("name at least one package, or -e PATH")
    args = ["install"] + (["--upgrade"] if upgrade else []) + (["--editable", editable] if editable else [])
    _pip(*args, *packages)


@click.command()
@click.argument("packages", nargs=-1, required=True)
@click.option("-y", "--yes", is_flag=True, help="Don't ask for confirmation.")
def uninstall(packages, yes):
    """Uninstall plugin packages from personae's environment."""
    _pip("uninstall", *packages, *(["-y"] if yes else []))


commands = [plugins_command, install, uninstall]
