"""`personae config`: the resolved settings and where each came from."""

from __future__ import annotations

import json

import click

from runtime.cli.common import friendly_errors, settings


@click.command(name="config")
@click.option("--json", "as_json", is_flag=True, help="Output JSON.")
@friendly_errors
def config_command(as_json):
    """Show every setting, its value and where the value came from."""
    from runtime.config import config_path

    resolved = settings()
    rows = [{"name": n, "value": v, "source": s, "help": h} for n, v, h, s in resolved.public_items()]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(f"config file: {config_path() or '(none: ./personae.toml or $PERSONAE_CONFIG)'}")
    for row in rows:
        click.echo(f"{row['name']:20} = {row['value']!r:40} ({row['source']})")
    from runtime.models.precision import describe

    click.echo(describe(resolved))


commands = [config_command]
