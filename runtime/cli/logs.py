"""`personae logs` and `personae forget`: read and erase the conversation log."""

from __future__ import annotations

import json

import click

from runtime.cli.common import friendly_errors, store
from runtime.errors import PersonaeError


@click.command()
@click.option("-n", "--count", default=20, show_default=True, help="How many recent messages.")
@click.option("--search", "-q", help="Full-text search over message text.")
@click.option("--character", "-c", help="Only this character's conversations.")
@click.option("--json", "as_json", is_flag=True, help="Output JSON.")
@friendly_errors
def logs(count, search, character, as_json):
    """Show recent logged messages."""
    if character:
        from runtime.cli.common import character_id

        try:
            character = character_id(character)
        except PersonaeError:
            pass  # the log keeps characters whose cards are gone: filter by the id as given
    rows = store().recent(limit=count, search=search, character=character)
    if as_json:
        click.echo(json.dumps(rows, indent=2, ensure_ascii=False))
        return
    for row in rows:
        speaker = row["user_name"] or row["user_id"] if row["role"] == "user" else row["character"]
        stamp = row["created"][:19].replace("T", " ")
        click.echo(f"[{stamp}] #{row['id']} {row['platform']}/{row['channel']} {speaker}: {row['text']}")


@click.command()
@click.argument("user")
@click.option("--yes", is_flag=True, help="Don't ask for confirmation.")
@friendly_errors
def forget(user, yes):
    """Delete a user's logged messages and feedback, and plugins' data about them (and opt them out of training)."""
    if not yes:
        click.confirm(f"Delete every message and feedback of user {user!r}?", abort=True)
    from runtime.plugins import forget_user

    counts = forget_user(store(), user)
    click.echo(f"Deleted {counts['messages']} messages and {counts['feedback']} feedback rows of {user}")


commands = [logs, forget]
