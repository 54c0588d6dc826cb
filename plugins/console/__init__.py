"""The console platform: `personae chat [NAME]`, interactive or scripted through a pipe."""

from __future__ import annotations

import getpass
import sys

import click

from runtime.hookspecs import hookimpl

HELP = "Commands: /swap NAME (another character), /regen (re-roll the last reply), /new (fresh conversation), /exit"


@hookimpl
def register_commands(cli):
    cli.add_command(chat)


def _default_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry in some containers
        return "User"


class ConsoleChat:
    """One console session: a character, a conversation, and the commands between turns."""

    def __init__(self, engine, character, user_name: str, channel: str, sampling: dict, out=None):
        self.engine, self.character = engine, character
        self.user_name, self.channel, self.sampling = user_name, channel, sampling
        self.out = out or sys.stdout

    def turn(self, text: str, **extra):
        from runtime.chat.engine import Turn

        return Turn(platform="console", channel=self.channel, user_id=f"console:{self.user_name}", text=text,
                    user_name=self.user_name, character=self.character, sampling=self.sampling, **extra)

    def say(self, text: str = "", end: str = "\n") -> None:
        self.out.write(text + end)
        self.out.flush()

    def greet(self) -> None:
        """Show (and log, for a new conversation) the character's first message."""
        greeting = self.engine.greeting(self.character, self.user_name)
        self.engine.log_greeting(self.turn(""), self.character)
        if greeting:
            self.say(f"{self.character.name}: {greeting}")

    def stream(self, reply) -> None:
        """Print a reply as it is generated."""
        self.say(f"{self.character.name}: ", end="")
        for piece in reply:
            self.say(piece, end="")
        self.say()

    def handle(self, line: str) -> bool:
        """Act on one line of input; False when the session should end."""
        line = line.strip()
        if not line:
            return True
        if line in ("/exit", "/quit"):
            return False
        if line == "/help":
            self.say(HELP)
        elif line.startswith("/swap"):
            name = line[len("/swap"):].strip()
            if not name:
                self.say("usage: /swap NAME  — characters: " + ", ".join(self.engine.catalog.names()))
                return True
            try:
                self.character = self.engine.catalog.get(name)
            except KeyError as error:
                self.say(str(error))
                return True
            self.greet()
        elif line == "/regen":
            try:
                self.stream(self.engine.regenerate(self.turn("")))
            except LookupError as error:
                self.say(str(error))
        elif line == "/new":
            self.engine.store.new_conversation("console", self.channel, self.character.id)
            self.greet()
        elif line.startswith("/"):
            self.say(f"unknown command {line.split()[0]}. {HELP}")
        else:
            self.stream(self.engine.reply(self.turn(line)))
        return True


@click.command()
@click.argument("name", required=False)
@click.option("--user", "user_name", default=None, help="Your name in the conversation ({{user}}).")
@click.option("--channel", default="console", show_default=True, help="Conversation to continue.")
@click.option("--new", "new", is_flag=True, help="Start a fresh conversation.")
@click.option("--temperature", type=float, default=None, help="Sampling temperature (0 = greedy).")
@click.option("--max-tokens", type=int, default=None, help="Longest reply in tokens.")
def chat(name, user_name, channel, new, temperature, max_tokens):
    """Chat with a character in the terminal (reads one line per turn from a pipe, too)."""
    from rich.console import Console

    from runtime.characters.catalog import UnknownCharacter
    from runtime.cli.common import UsageProblem
    from runtime.cli.common import engine as make_engine

    try:
        engine = make_engine()
        character = engine.catalog.get(name) if name else engine.catalog.default(engine.settings.default_character)
    except UnknownCharacter as error:
        raise UsageProblem(str(error)) from None
    user_name = user_name or _default_user()
    sampling = {"temperature": temperature, "max_new_tokens": max_tokens}
    session = ConsoleChat(engine, character, user_name, channel, sampling)
    interactive = sys.stdin.isatty()
    status = Console(stderr=True)
    status.print("[dim]Loading the model…[/dim]")
    engine.generator  # load before the first turn so typing isn't met with a pause
    if new:
        engine.store.new_conversation("console", channel, character.id)
    if interactive:
        status.print(f"[dim]{HELP}[/dim]")
    session.greet()
    try:
        while True:
            if interactive:
                try:
                    line = click.prompt(click.style(user_name, bold=True), prompt_suffix=": ")
                except click.Abort:
                    break
            else:
                line = sys.stdin.readline()
                if not line:
                    break
            if not session.handle(line):
                break
    finally:
        engine.close()
