"""`personae characters ...`: list, show, import and export characters."""

from __future__ import annotations

import json

import click

from runtime.cli.common import friendly_errors, settings


def _catalog():
    from runtime.characters.catalog import Catalog
    from runtime.plugins import get_plugin_manager

    config = settings()
    return Catalog(get_plugin_manager(config.plugins_dir), config.data_dir)


@click.group()
def characters():
    """List, show, import and export characters."""


@characters.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="Output JSON.")
@friendly_errors
def list_characters(as_json):
    """List the characters the runtime knows."""
    catalog = _catalog()
    rows = [
        {"id": c.id, "name": c.name, "source": c.source, "greeting": c.greetings()[:1]}
        for c in catalog.characters.values()
    ]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        for row in sorted(rows, key=lambda r: r["id"]):
            click.echo(f"{row['id']:24} {row['name']:28} {row['source']}")
    for problem in catalog.problems:
        click.echo(f"warning: {problem}", err=True)


@characters.command(name="show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Output the whole card as JSON.")
@friendly_errors
def show_character(name, as_json):
    """Show one character's card."""
    from runtime.characters import card_dict

    character = _catalog().get(name)
    if as_json:
        click.echo(json.dumps(card_dict(character), indent=2, ensure_ascii=False))
        return
    click.echo(f"{character.name} ({character.id}) from {character.source}")
    for label, value in [
        ("Description", character.description),
        ("Personality", character.personality),
        ("Scenario", character.scenario),
        ("First message", character.first_mes),
    ]:
        if value:
            click.echo(f"\n{label}:\n{value}")
    if character.alternate_greetings:
        click.echo(f"\nAlternate greetings: {len(character.alternate_greetings)}")
    if character.lore_entries():
        click.echo(f"Lorebook entries: {len(character.lore_entries())}")


@characters.command(name="import")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@friendly_errors
def import_character(path):
    """Import a Character Card (V1/V2/V3, JSON or PNG)."""
    character = _catalog().import_card(path)
    click.echo(f"Imported {character.name} as '{character.id}'")


@characters.command(name="export")
@click.argument("name")
@click.argument("path", type=click.Path(dir_okay=False))
@friendly_errors
def export_character(name, path):
    """Export a character as a card file (.json or .png)."""
    target = _catalog().export_card(name, path)
    click.echo(f"Wrote {target}")


commands = [characters]
