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
@click.option("--lore", "lore", type=click.Path(exists=True, dir_okay=False),
              help="Also attach this SillyTavern world-info (lorebook) JSON file.")
@friendly_errors
def import_character(path, lore):
    """Import a Character Card (V1/V2/V3: JSON, PNG or .charx)."""
    from runtime.characters import lorebook

    if lore:
        from runtime.characters.worldinfo import load_world_info

        load_world_info(lore)  # a bad lorebook fails before the card is imported
    catalog = _catalog()
    character = catalog.import_card(path)
    click.echo(f"Imported {character.name} as '{character.id}'")
    for warning in lorebook.unsupported(character.character_book):
        click.echo(f"warning: {warning}", err=True)
    if lore:
        _attach_lore(catalog, character.id, lore, replace=False)


@characters.command(name="import-lore")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.option("--to", "name", required=True, help="The character to attach the lorebook to.")
@click.option("--replace", is_flag=True, help="Replace the character's lorebook instead of adding to it.")
@friendly_errors
def import_lore(path, name, replace):
    """Attach a SillyTavern world-info (lorebook) JSON file to a character."""
    _attach_lore(_catalog(), name, path, replace)


def _attach_lore(catalog, name, path, replace):
    from runtime.characters.worldinfo import attach_file

    character, warnings = attach_file(catalog, name, path, replace)
    count = len((character.character_book or {}).get("entries") or [])
    click.echo(f"Attached {path} to '{character.id}': {count} lorebook entries now")
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)


@characters.command(name="export")
@click.argument("name")
@click.argument("path", type=click.Path(dir_okay=False))
@friendly_errors
def export_character(name, path):
    """Export a character as a card file (.json, .png or .charx)."""
    target = _catalog().export_card(name, path)
    click.echo(f"Wrote {target}")


commands = [characters]
