"""Weights that ship inside a character plugin package (extensions.personae.weights)."""

from __future__ import annotations

from pathlib import Path

from adapters.errors import RegistryError


def weights_from_character(character) -> Path | None:
    """The weights folder a character ships (relative to its card file), or None if it ships none."""
    personae = (getattr(character, "extensions", None) or {}).get("personae") or {}
    relative = personae.get("weights")
    if not relative:
        return None
    source = Path(getattr(character, "source", "") or ".")
    anchor = source.parent if source.suffix else source
    folder = (anchor / relative).resolve()
    if not folder.is_relative_to(anchor.resolve()):
        # A card must not point its weights at /etc or ../..: only its own folder or package.
        raise RegistryError(f"{character.id}: its card's weights {relative!r} lie outside the card's own folder "
                            f"({anchor.resolve()}); fix extensions.personae.weights")
    if not folder.is_dir():
        raise RegistryError(f"{character.id}: its card says weights are in {relative!r}, but {folder} is not a "
                            "folder; reinstall the character package")
    return folder
