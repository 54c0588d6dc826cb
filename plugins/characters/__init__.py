"""The built-in character pack: every V3 PNG card in cards/ becomes a character."""

from __future__ import annotations

from pathlib import Path

from runtime.characters import load_card
from runtime.hookspecs import hookimpl

CARDS_DIR = Path(__file__).parent / "cards"


@hookimpl
def register_characters(register):
    """Register each built-in card (the PNG carries both the card and the avatar)."""
    for path in sorted(CARDS_DIR.glob("*.png")):
        register(load_card(path))
