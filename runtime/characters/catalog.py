"""Every character the runtime knows: from character plugins and from imported card files."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from runtime.characters.card import CardError, Character
from runtime.characters.card_files import load_card, save_card, shrunk_card_png
from runtime.characters.limits import printable
from runtime.errors import NotFound


class UnknownCharacter(NotFound, KeyError):
    """A character name nobody registered; the message lists the known ones."""

    def __init__(self, name: str, known: list[str], suggestions: list[str] | None = None):
        self.name, self.known, self.suggestions = name, known, suggestions or []
        super().__init__(name)

    def __str__(self) -> str:
        listed = ", ".join(self.known) or "none (install a character plugin or `personae characters import FILE`)"
        maybe = f"; did you mean {' or '.join(repr(s) for s in self.suggestions)}?" if self.suggestions else ""
        return f"unknown character {printable(self.name)!r}{maybe} Known characters: {listed}"


class Catalog:
    """Characters by id: plugin characters first, imported cards may add to or replace them."""

    def __init__(self, pm, data_dir: str | Path):
        self.pm = pm
        self.folder = Path(data_dir).expanduser() / "characters"
        self._characters: dict[str, Character] | None = None
        self.problems: list[str] = []

    def _load(self) -> dict[str, Character]:
        characters: dict[str, Character] = {}

        def register(character: Character) -> None:
            characters[character.id] = character

        self.pm.hook.register_characters(register=register)
        if self.folder.is_dir():
            for path in sorted(self.folder.iterdir()):
                if path.suffix.lower() not in {".json", ".png", ".charx"}:
                    continue
                try:
                    register(load_card(path))
                except CardError as error:
                    # One damaged file must not hide the other characters.
                    self.problems.append(str(error))
        return characters

    @property
    def characters(self) -> dict[str, Character]:
        """All characters, loaded on first use."""
        if self._characters is None:
            self._characters = self._load()
        return self._characters

    def reload(self) -> None:
        """Forget what was loaded (after an import)."""
        self._characters = None

    def names(self) -> list[str]:
        """Known character ids, sorted."""
        return sorted(self.characters)

    def get(self, name: str) -> Character:
        """A character by id or display name (case-insensitive); the error suggests near misses."""
        wanted = " ".join(name.split()).lower()
        for key, character in self.characters.items():
            if wanted in (key, " ".join(character.name.split()).lower(), key.replace("-", " ")):
                return character
        raise UnknownCharacter(name, self.names(), self.suggest(name))

    def resolve(self, name: str, also: list[str] | tuple = ()) -> str:
        """The id every command uses for a character given by id or display name.

        `also`: ids known elsewhere (e.g. registry versions of a character whose card was removed).
        """
        try:
            return self.get(name).id
        except UnknownCharacter:
            if name.strip() in also:
                return name.strip()
            raise UnknownCharacter(name, self.names(), self.suggest(name, also)) from None

    def suggest(self, name: str, also: list[str] | tuple = ()) -> list[str]:
        """Ids close to a misspelt id or name (difflib), best first."""
        import difflib

        wanted = " ".join(name.split()).lower()
        spellings = {cid: cid for cid in [*self.characters, *also]}
        spellings.update({c.name.lower(): cid for cid, c in self.characters.items()})
        close = difflib.get_close_matches(wanted, list(spellings), n=3, cutoff=0.6)
        return list(dict.fromkeys(spellings[c] for c in close))

    def default(self, preferred: str = "") -> Character:
        """The configured default character, else the first known one."""
        if preferred:
            return self.get(preferred)
        if not self.characters:
            raise UnknownCharacter("(default)", [])
        return self.characters[self.names()[0]]

    def import_card(self, path: str | Path) -> Character:
        """Validate a card file and copy it into the data directory (atomically)."""
        source = Path(path)
        character = load_card(source)  # raises CardError before anything is written
        self.folder.mkdir(parents=True, exist_ok=True)
        data = source.read_bytes()
        png = data[:8] == b"\x89PNG\r\n\x1a\n"
        # A large avatar is stored downscaled: every catalog load decodes it.
        payload = (shrunk_card_png(data) if png else None) or data
        suffix = ".png" if png else ".charx" if data[:4] == b"PK\x03\x04" else ".json"
        target = self.folder / f"{character.id}{suffix}"
        for stale in self.folder.glob(f"{character.id}.*"):
            if stale != target:
                stale.unlink()
        handle, temporary = tempfile.mkstemp(dir=self.folder, suffix=".part")
        try:
            with os.fdopen(handle, "wb") as out:
                out.write(payload)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)  # no tmp*.part left behind, whatever went wrong
            raise
        self.reload()
        return self.get(character.id)

    def export_card(self, name: str, path: str | Path) -> Path:
        """Write a character as a card file (.json or .png by suffix)."""
        character = self.get(name)
        target = Path(path)
        save_card(character, target)
        return target
